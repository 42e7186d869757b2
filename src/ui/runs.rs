//! Match runs: choose cohort, server and options; start; watch a progress bar per run and per
//! chunk with the server's `X-Progress` text, elapsed time and an ETA; cancel. Runs interrupted
//! by a restart are resumed by the backend and marked as such. Each run has a summary with
//! counts per outcome and a histogram of best scores.

use egui_plot::{Bar, BarChart, Plot};

use super::{MatchdeskApp, Screen, labelled, tokens};
use crate::app::{Command, RunNote, RunView};
use crate::domain::{ChunkState, JobState};

#[derive(Default)]
pub struct RunsView {
    /// Per-run options on the form (defaults from the chosen profile).
    only_single: bool,
    only_certain: bool,
    count: u32,
    initialized_from: Option<String>,
    confirm_cancel: Option<i64>,
}

fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

pub fn show(app: &mut MatchdeskApp, ui: &mut egui::Ui) {
    start_form(app, ui);
    ui.add_space(8.0);
    ui.separator();
    let runs = app.snap.runs.clone();
    if runs.is_empty() {
        ui.label("No runs yet. Choose a cohort and a server above and press Start.");
        return;
    }
    if runs.iter().any(|r| r.active) {
        // Elapsed time and ETA move even between backend updates.
        ui.ctx()
            .request_repaint_after(std::time::Duration::from_millis(500));
    }
    egui::ScrollArea::vertical().id_salt("runs").show(ui, |ui| {
        for r in runs.iter() {
            run_ui(app, ui, r);
            ui.add_space(6.0);
        }
    });
    if let Some(job_id) = app.runs.confirm_cancel {
        let mut close = false;
        egui::Modal::new(egui::Id::unique("confirm_cancel")).show(ui.ctx(), |ui| {
            ui.heading(format!("Cancel run {job_id}?"));
            ui.label("The server is asked to stop and delete its copy of the request. Rows that already have results keep them; the others can be matched in a new run.");
            ui.horizontal(|ui| {
                if ui.button("Yes, cancel the run").clicked() {
                    app.send(Command::CancelRun { job_id });
                    close = true;
                }
                if ui.button("Keep running").clicked() {
                    close = true;
                }
            });
        });
        if close {
            app.runs.confirm_cancel = None;
        }
    }
}

fn start_form(app: &mut MatchdeskApp, ui: &mut egui::Ui) {
    let t = tokens::of(ui);
    let cohorts = app.snap.cohorts.clone();
    let profiles = app.snap.profiles.clone();
    if cohorts.is_empty() {
        ui.label("Import a cohort first (Cohorts screen).");
        if ui.button("Go to Cohorts").clicked() {
            app.persisted.screen = Screen::Cohorts;
        }
        return;
    }
    if profiles.is_empty() {
        ui.colored_label(
            t.warning,
            "⚠ No server is set up. Add a server profile on the Settings screen.",
        );
        if ui.button("Go to Settings").clicked() {
            app.persisted.screen = Screen::Settings;
        }
        return;
    }
    // Options start from the profile's defaults whenever another profile is chosen.
    if app.runs.initialized_from != app.persisted.profile
        && let Some(p) = profiles
            .iter()
            .find(|p| Some(&p.name) == app.persisted.profile.as_ref())
    {
        app.runs.only_single = p.options.only_single_match;
        app.runs.only_certain = p.options.only_certain_matches;
        app.runs.count = p.options.count.unwrap_or(0);
        app.runs.initialized_from = Some(p.name.clone());
    }
    let mut select_cohort = None;
    egui::Grid::new("start_form").num_columns(2).spacing([12.0, 6.0]).show(ui, |ui| {
        ui.label("Cohort");
        let current = app
            .persisted
            .cohort_id
            .and_then(|id| cohorts.iter().find(|c| c.id == id));
        egui::ComboBox::from_id_salt("run_cohort")
            .selected_text(current.map(|c| c.name.as_str()).unwrap_or("choose…"))
            .show_ui(ui, |ui| {
                for c in cohorts.iter() {
                    if ui
                        .selectable_label(Some(c.id) == app.persisted.cohort_id, format!("{} ({} rows)", c.name, c.active_rows))
                        .clicked()
                    {
                        select_cohort = Some(c.id);
                    }
                }
            });
        ui.end_row();
        ui.label("Server");
        egui::ComboBox::from_id_salt("run_server")
            .selected_text(app.persisted.profile.clone().unwrap_or_else(|| "choose…".into()))
            .show_ui(ui, |ui| {
                for p in profiles.iter() {
                    ui.selectable_value(&mut app.persisted.profile, Some(p.name.clone()), format!("{} — {}", p.name, p.base_url));
                }
            });
        ui.end_row();
        ui.label("Options");
        ui.horizontal(|ui| {
            ui.checkbox(&mut app.runs.only_single, "Only single matches")
                .on_hover_text("onlySingleMatch: the IIS returns a candidate only when exactly one is clear");
            ui.checkbox(&mut app.runs.only_certain, "Only certain matches")
                .on_hover_text("onlyCertainMatches: the IIS returns only candidates it grades certain");
            labelled(ui, "Candidates per patient (0 = server default)", |ui| {
                ui.add(egui::DragValue::new(&mut app.runs.count).range(0..=50))
            });
        });
        ui.end_row();
    });
    if let Some(id) = select_cohort {
        app.select_cohort(id);
    }
    let running_here = app.persisted.cohort_id.is_some_and(|id| {
        app.snap
            .runs
            .iter()
            .any(|r| r.active && r.job.cohort_id == id)
    });
    ui.horizontal(|ui| {
        let can = app.persisted.cohort_id.is_some() && app.persisted.profile.is_some() && !running_here;
        if ui
            .add_enabled(can, egui::Button::new("▶ Start matching"))
            .on_disabled_hover_text("This cohort is being matched now")
            .clicked()
            && let (Some(cohort_id), Some(profile)) = (app.persisted.cohort_id, app.persisted.profile.clone())
        {
            // Per-run options override the profile's defaults.
            let mut p = profiles.iter().find(|p| p.name == profile).cloned().unwrap_or_default();
            p.options.only_single_match = app.runs.only_single;
            p.options.only_certain_matches = app.runs.only_certain;
            p.options.count = (app.runs.count > 0).then_some(app.runs.count);
            app.send(Command::SaveProfile(Box::new(p)));
            app.send(Command::StartRun { cohort_id, profile });
        }
        ui.colored_label(t.muted, "Rows that already have a result are not sent again; an interrupted run continues where it stopped.");
    });
}

fn run_ui(app: &mut MatchdeskApp, ui: &mut egui::Ui, r: &RunView) {
    let t = tokens::of(ui);
    egui::Frame::group(ui.style()).show(ui, |ui| {
        ui.set_width(ui.available_width());
        ui.horizontal(|ui| {
            ui.strong(format!("Run {} — {}", r.job.id, r.cohort));
            ui.colored_label(t.muted, &r.job.server_url);
            let (sym, color, word) = match r.job.state {
                JobState::Running if r.active => ("•", t.accent, "running"),
                JobState::Running => ("⏸", t.warning, "interrupted — will resume"),
                JobState::Completed => ("✔", t.ok, "finished"),
                JobState::CompletedWithErrors => ("⚠", t.warning, "finished with failures"),
                JobState::Failed => ("✖", t.error, "failed"),
                JobState::Cancelled => ("■", t.muted, "cancelled"),
            };
            ui.colored_label(color, format!("{sym} {word}"));
            if r.resumed {
                ui.colored_label(t.accent, "↺ resumed after a restart");
            }
            if r.job.state == JobState::Running && ui.button("Cancel run").clicked() {
                app.runs.confirm_cancel = Some(r.job.id);
            }
        });
        let total = r.total_rows.max(1);
        // Rows the server reports as matched in chunks it is still working on: results arrive
        // only when a chunk completes, so without this a one-chunk run would sit at 0 until done.
        let in_flight: f64 = r
            .chunks
            .iter()
            .filter(|c| c.state == ChunkState::Submitted)
            .filter_map(|c| {
                let text = r
                    .progress
                    .iter()
                    .find(|(id, _)| *id == c.id)
                    .map(|(_, s)| s.as_str())
                    .or(c.progress.as_deref())?;
                Some(f64::from(progress_fraction(text)?) * c.row_count as f64)
            })
            .sum();
        let working = (in_flight as u64).min(r.total_rows.saturating_sub(r.done_rows));
        let frac = (r.done_rows + working) as f32 / total as f32;
        let mut text = format!("{} of {} rows", r.done_rows, r.total_rows);
        if working > 0 {
            text.push_str(&format!(" saved, about {working} more matched by the server"));
        }
        if let Some(secs) = r.active_secs {
            text.push_str(&format!(" · elapsed {}", fmt_secs(secs)));
            let progressed = r.done_rows + working;
            let done_here = progressed.saturating_sub(r.done_at_start);
            if done_here > 0 && progressed < r.total_rows {
                let rate = done_here as f64 / secs.max(0.001);
                let left = (r.total_rows - progressed) as f64 / rate;
                text.push_str(&format!(" · about {} left", fmt_secs(left)));
            } else if r.done_rows < r.total_rows {
                text.push_str(" · waiting for the server");
            }
        }
        ui.add(egui::ProgressBar::new(frac).text(text));
        if let Some(e) = &r.job.last_error {
            ui.colored_label(t.error, format!("✖ {e}"));
        }
        // Bad result lines are summed up in one line (a garbled file can have thousands); the
        // last three retries are listed as they happen.
        if let Some(example) = r.notes.iter().rev().find_map(|n| match n {
            RunNote::BadLine(m) => Some(m),
            RunNote::Retrying(_) => None,
        }) {
            let lines = match r.bad_lines {
                1 => "One line of the server's answer".to_string(),
                n => format!("{n} lines of the server's answer"),
            };
            ui.colored_label(
                t.warning,
                format!("⚠ {lines} could not be used; those rows are under Error in the Review queue, where they can be corrected and sent again. Last problem: {example}."),
            );
        }
        for n in r
            .notes
            .iter()
            .rev()
            .filter_map(|n| match n {
                RunNote::Retrying(m) => Some(m),
                RunNote::BadLine(_) => None,
            })
            .take(3)
        {
            ui.colored_label(t.warning, format!("⚠ Trying again: {n}"));
        }
        let done = r.chunks.iter().filter(|c| c.state.is_terminal()).count();
        egui::CollapsingHeader::new(format!("Chunks ({done} of {} done)", r.chunks.len()))
            .id_salt(("chunks", r.job.id))
            .default_open(r.chunks.len() <= 12)
            .show(ui, |ui| {
                egui::Grid::new(("chunk_grid", r.job.id))
                    .striped(true)
                    .show(ui, |ui| {
                        ui.strong("Chunk");
                        ui.strong("Rows");
                        ui.strong("State");
                        ui.strong("Progress");
                        ui.strong("Server progress / problem");
                        ui.end_row();
                        for c in r.chunks.iter().take(200) {
                            ui.label(c.id.to_string());
                            ui.label(c.row_count.to_string());
                            let (color, word) = match c.state {
                                ChunkState::Pending => (t.muted, "waiting"),
                                ChunkState::Submitted => (t.accent, "server working"),
                                ChunkState::Downloading => (t.accent, "downloading"),
                                ChunkState::Ingested => (t.ok, "results saved"),
                                ChunkState::Done => (t.ok, "✔ done"),
                                ChunkState::Failed => (t.error, "✖ failed"),
                                ChunkState::Cancelled => (t.muted, "cancelled"),
                            };
                            ui.colored_label(color, word);
                            let live = r
                                .progress
                                .iter()
                                .find(|(id, _)| *id == c.id)
                                .map(|(_, s)| s.as_str());
                            // X-Progress is free text; when it reads "N of M" or "N%", the bar
                            // follows it while the server works.
                            let frac = match c.state {
                                ChunkState::Pending => Some(0.0),
                                ChunkState::Submitted => {
                                    live.or(c.progress.as_deref()).and_then(progress_fraction)
                                }
                                ChunkState::Downloading => Some(0.95),
                                ChunkState::Ingested | ChunkState::Done => Some(1.0),
                                ChunkState::Failed | ChunkState::Cancelled => None,
                            };
                            match frac {
                                Some(f) => {
                                    ui.add(
                                        egui::ProgressBar::new(f)
                                            .desired_width(120.0)
                                            .desired_height(10.0),
                                    );
                                }
                                None if c.state == ChunkState::Submitted => {
                                    ui.spinner();
                                }
                                None => {
                                    ui.label("");
                                }
                            }
                            match (&c.last_error, live.or(c.progress.as_deref())) {
                                (Some(e), _) if c.state == ChunkState::Failed => {
                                    ui.colored_label(t.error, e);
                                }
                                (_, Some(p)) => {
                                    ui.label(p);
                                }
                                _ => {
                                    ui.label("");
                                }
                            }
                            ui.end_row();
                        }
                    });
                if r.chunks.len() > 200 {
                    ui.label(format!("… and {} more chunks", r.chunks.len() - 200));
                }
            });
        if r.done_rows > 0 {
            summary_ui(ui, r);
        }
    });
}

fn summary_ui(ui: &mut egui::Ui, r: &RunView) {
    let t = tokens::of(ui);
    ui.horizontal(|ui| {
        ui.colored_label(t.ok, format!("✔ matched: {}", r.outcomes.auto_match));
        ui.colored_label(t.near, format!("? to review: {}", r.outcomes.review));
        ui.colored_label(t.muted, format!("○ no match: {}", r.outcomes.no_match));
        ui.colored_label(t.error, format!("✖ errors: {}", r.outcomes.error));
    });
    if r.histogram.iter().any(|&n| n > 0) {
        let bars: Vec<Bar> = r
            .histogram
            .iter()
            .enumerate()
            .map(|(i, &n)| Bar::new(i as f64 * 0.05 + 0.025, n as f64).width(0.045))
            .collect();
        let chart = BarChart::new("Best score", bars).color(t.accent);
        Plot::new(("hist", r.job.id))
            .height(120.0)
            .allow_zoom(false)
            .allow_drag(false)
            .allow_scroll(false)
            .x_axis_label("best candidate score")
            .y_axis_label("rows")
            .include_x(0.0)
            .include_x(1.0)
            .show(ui, |p| p.bar_chart(chart));
    }
}

/// The fraction a server's free-text progress reports: "matched 120 of 240 patients" → 0.5,
/// "42%" → 0.42, "12/48" → 0.25. `None` when the text has no such figure.
pub fn progress_fraction(text: &str) -> Option<f32> {
    let nums: Vec<(usize, f64)> = {
        let mut out = Vec::new();
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_digit() {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_digit()
                        || (b[i] == b'.' && i + 1 < b.len() && b[i + 1].is_ascii_digit()))
                {
                    i += 1;
                }
                if let Ok(v) = text[start..i].parse::<f64>() {
                    out.push((i, v));
                }
            } else {
                i += 1;
            }
        }
        out
    };
    // "N%"
    for &(end, v) in &nums {
        if text[end..].trim_start().starts_with('%') {
            return Some((v / 100.0).clamp(0.0, 1.0) as f32);
        }
    }
    // "N of M" or "N/M"
    for w in nums.windows(2) {
        let (end, n) = w[0];
        let m = w[1].1;
        let between = text[end..].trim_start();
        if (between.starts_with("of ") || between.starts_with('/')) && m > 0.0 {
            return Some((n / m).clamp(0.0, 1.0) as f32);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::progress_fraction;

    #[test]
    fn server_progress_texts_become_fractions() {
        assert_eq!(progress_fraction("matched 120 of 240 patients"), Some(0.5));
        assert_eq!(progress_fraction("42% done"), Some(0.42));
        assert_eq!(progress_fraction("42 %"), Some(0.42));
        assert_eq!(progress_fraction("12/48 batches"), Some(0.25));
        assert_eq!(progress_fraction("12.5%"), Some(0.125));
        // More than done is shown as done; nothing numeric is nothing.
        assert_eq!(progress_fraction("300 of 240"), Some(1.0));
        assert_eq!(progress_fraction("in progress"), None);
        assert_eq!(progress_fraction("0 of 0"), None);
        assert_eq!(progress_fraction("step 3"), None);
        assert_eq!(progress_fraction("vérifié 3 of 4"), Some(0.75));
    }
}
