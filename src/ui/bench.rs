//! The review screen's per-frame cost with a very large queue (`matchdesk bench --only
//! review-frame`). A real [`MatchdeskApp`] (its backend on a scratch workspace, no demo IIS) gets
//! a synthetic queue of `rows` rows and a three-candidate detail; then frames are run headless
//! through `egui::Context::run_ui` + `tessellate` while the table scrolls by mouse wheel, and the
//! time of each frame's logic is recorded. Rendering on the GPU is not included.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::{MatchdeskApp, Persisted, Screen};
use crate::app::{DetailView, StartOptions};
use crate::domain::{Candidate, Demographics, MatchGrade, Outcome, ReviewReason, Sex};
use crate::matching::{TriageRules, local_check};
use crate::store::{QueueRow, RowDetail};

/// Frame-time percentiles in milliseconds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FrameStats {
    pub rows: usize,
    pub frames: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Time to rebuild the view after a filter change (one-off, not per frame).
    pub rebuild_ms: f64,
}

fn synthetic_queue(rows: usize) -> Vec<QueueRow> {
    let outcomes = [
        Outcome::Review(ReviewReason::SeveralCandidates),
        Outcome::Review(ReviewReason::Probable),
        Outcome::Review(ReviewReason::Possible),
        Outcome::NoMatch,
        Outcome::Error,
        Outcome::AutoMatch,
    ];
    (0..rows)
        .map(|i| QueueRow {
            row_id: i as i64 + 1,
            cohort_id: 1,
            line: i as u32 + 2,
            outcome: outcomes[i % outcomes.len()],
            best_score: Some(0.5 + (i % 50) as f32 / 100.0),
            candidates: (i % 4) as u16,
            decision: None,
            source_id: format!("MRN{i:08}").into_boxed_str(),
            name: format!("FAMILY{}, GIVEN{}", i % 9973, i % 101).into_boxed_str(),
            birth_date: format!("20{:02}-0{}-1{}", i % 24, 1 + i % 9, i % 10).into_boxed_str(),
        })
        .collect()
}

fn person(i: usize) -> Demographics {
    Demographics {
        given: Some(if i == 0 { "WILLIAM" } else { "BILL" }.into()),
        family: Some("JOHNSON".into()),
        birth_date: chrono::NaiveDate::from_ymd_opt(2012, 3, 4 + i as u32),
        sex: Some(Sex::Male),
        phone: Some("5035550100".into()),
        address_line1: Some(format!("{} MAIN ST", 100 + i)),
        city: Some("PORTLAND".into()),
        state: Some("OR".into()),
        postal_code: Some("97201".into()),
        ..Default::default()
    }
}

/// Run the benchmark with a scratch workspace in `dir`.
pub fn run(dir: &Path, rows: usize, frames: usize) -> FrameStats {
    let mut opts = StartOptions::new(dir.join("bench.matchdesk"), dir.to_path_buf());
    opts.demo = false;
    let mut app = MatchdeskApp::new(opts, Persisted::default(), Arc::new(|| {}));
    app.snap.ready = true;
    app.persisted.screen = Screen::Review;
    app.persisted.cohort_id = Some(1);
    app.persisted.dismissed_hint = true;
    app.review.set_queue(1, Arc::new(synthetic_queue(rows)));
    let submitted = person(0);
    let candidates: Vec<Candidate> = (1..4)
        .map(|i| Candidate {
            rank: i as u32,
            iis_id: format!("IIS{i}"),
            score: Some(0.9 - i as f64 * 0.05),
            grade: Some(MatchGrade::Probable),
            full_url: None,
            demographics: person(i),
        })
        .collect();
    let rules = TriageRules::default();
    let checks = candidates
        .iter()
        .map(|c| local_check(&submitted, &c.demographics, &rules))
        .collect();
    let selected = app.review.selected_row_id().unwrap_or(1);
    app.review.set_detail(Arc::new(DetailView {
        detail: RowDetail {
            row_id: selected,
            cohort_id: 1,
            source_id: "MRN00000000".into(),
            line: 2,
            original: submitted.clone(),
            submitted,
            outcome: Some(Outcome::Review(ReviewReason::SeveralCandidates)),
            candidates,
            issues: Vec::new(),
            decisions: Vec::new(),
        },
        checks,
    }));

    let ctx = egui::Context::default();
    let screen = egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(1400.0, 900.0));
    let mut times = Vec::with_capacity(frames);
    let warmup = 20;
    for f in 0..frames + warmup {
        let mut input = egui::RawInput {
            screen_rect: Some(screen),
            time: Some(f as f64 / 60.0),
            ..Default::default()
        };
        // Pointer over the table; scroll down a few rows each frame.
        input
            .events
            .push(egui::Event::PointerMoved(egui::pos2(700.0, 250.0)));
        input.events.push(egui::Event::MouseWheel {
            unit: egui::MouseWheelUnit::Point,
            delta: egui::vec2(0.0, -90.0),
            phase: egui::TouchPhase::Move,
            source: egui::MouseWheelSource::Unknown,
            modifiers: egui::Modifiers::default(),
        });
        let start = Instant::now();
        let out = ctx.run_ui(input, |ui| app.frame_ui(ui));
        let prims = ctx.tessellate(out.shapes, out.pixels_per_point);
        let elapsed = start.elapsed().as_secs_f64() * 1000.0;
        std::hint::black_box(prims);
        if f >= warmup {
            times.push(elapsed);
        }
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let start = Instant::now();
    if let Some(q) = &mut app.review.queue {
        q.rebuild(
            super::ReviewFilter::Probable,
            "FAMILY12",
            super::review::SortKey::Score,
            true,
        );
    }
    let rebuild_ms = start.elapsed().as_secs_f64() * 1000.0;
    FrameStats {
        rows,
        frames,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: times.last().copied().unwrap_or(0.0),
        rebuild_ms,
    }
}
