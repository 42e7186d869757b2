//! The real engine and client against the real simulated IIS over loopback HTTP, on real
//! workspace files: the happy path, every protocol behaviour of the spec the engine relies on,
//! each fault switch, cancel, re-import, and a restart in the middle of a job.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Fixture, fast_engine, fast_sim, open, recorder};
use matchdesk::domain::{ChunkState, JobState};
use matchdesk::engine::{Engine, JobEvent, no_events};
use matchdesk::net::{CancelFlag, StaticToken, TokenSource};
use matchdesk::sim::faults::Faults;
use matchdesk::sim::server::SimConfig;

/// source id → (outcome, best candidate) for every triaged row.
fn outcomes(engine: &Engine) -> HashMap<String, (String, Option<String>)> {
    engine
        .store()
        .unwrap()
        .results()
        .unwrap()
        .into_iter()
        .map(|r| (r.source_id, (r.outcome, r.best_candidate_id)))
        .collect()
}

async fn run(engine: &Engine, f: &Fixture, base: &str) -> Vec<(i64, JobState)> {
    let imported = engine.import(&f.cohort, None, Some("cohort")).unwrap();
    engine
        .run_cohort(
            imported.cohort_id,
            base,
            None,
            no_events(),
            CancelFlag::new(),
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_every_row_gets_one_outcome_and_auto_matches_are_right() {
    let f = Fixture::new(3000, 400, 11);
    let sim = f.sim(fast_sim()).await;
    let engine = open(&f, fast_engine(150));
    let jobs = run(&engine, &f, &sim.base_url).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].1, JobState::Completed);

    let report = engine.store().unwrap().report().unwrap();
    let o = &report.outcomes;
    assert_eq!(report.rows, 400);
    assert_eq!(o.auto_match + o.review + o.no_match + o.error, 400, "{o:?}");
    assert_eq!(o.error, 0);
    assert!(o.auto_match > 200, "{o:?}");
    assert!(o.no_match > 0 && o.review > 0, "{o:?}");

    // Auto-matches must be right: compare with the generator's ground truth.
    let results = outcomes(&engine);
    let (mut auto, mut wrong) = (0, 0);
    for (sid, (outcome, best)) in &results {
        if outcome == "auto_match" {
            auto += 1;
            if f.truth.get(sid).cloned().flatten() != *best {
                wrong += 1;
            }
        }
    }
    assert!(
        wrong * 100 <= auto,
        "{wrong} of {auto} auto-matches are wrong"
    );

    // The server-side jobs were cleaned up after their files were stored.
    let stats = sim.stats();
    assert_eq!(stats.jobs_accepted, 3);
    assert_eq!(stats.deletes, 3);
    let job = engine.store().unwrap().jobs(None).unwrap()[0].clone();
    assert!(
        engine
            .store()
            .unwrap()
            .chunks(job.id)
            .unwrap()
            .iter()
            .all(|c| c.state == ChunkState::Done)
    );

    // Running again has nothing left to do and submits nothing.
    let imported = engine.import(&f.cohort, None, Some("cohort")).unwrap();
    assert_eq!(imported.diff.unchanged_rows, 400);
    let again = engine
        .run_cohort(
            imported.cohort_id,
            &sim.base_url,
            None,
            no_events(),
            CancelFlag::new(),
        )
        .await
        .unwrap();
    assert!(again.is_empty());
    assert_eq!(sim.stats().kickoffs, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_kickoff_is_split_until_it_fits() {
    let f = Fixture::new(2000, 250, 12);
    let sim = f
        .sim(SimConfig {
            resource_limit: 60,
            ..fast_sim()
        })
        .await;
    let engine = open(&f, fast_engine(250));
    let (sink, log) = recorder();
    let imported = engine.import(&f.cohort, None, None).unwrap();
    let jobs = engine
        .run_cohort(
            imported.cohort_id,
            &sim.base_url,
            None,
            sink,
            CancelFlag::new(),
        )
        .await
        .unwrap();
    assert_eq!(jobs[0].1, JobState::Completed);
    let splits = log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, JobEvent::ChunkSplit { .. }))
        .count();
    assert!(
        splits >= 2,
        "250 rows against a limit of 60 need at least two halvings, saw {splits}"
    );
    let chunks = engine.store().unwrap().chunks(jobs[0].0).unwrap();
    assert!(chunks.iter().all(|c| c.row_count <= 60));
    assert_eq!(chunks.iter().map(|c| c.row_count).sum::<u64>(), 250);
    assert_eq!(engine.store().unwrap().results().unwrap().len(), 250);
}

/// Every fault switch: the job still completes, and every row gets exactly the outcome a
/// well-behaved server gives (the cosmetic deviations must not change any decision).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_switch_is_survived_with_identical_outcomes() {
    let f = Fixture::new(2000, 160, 13);
    let clean = {
        let sim = f.sim(fast_sim()).await;
        let engine = Engine::open(&f.dir.path().join("clean.db"), fast_engine(80)).unwrap();
        let jobs = run(&engine, &f, &sim.base_url).await;
        assert_eq!(jobs[0].1, JobState::Completed);
        outcomes(&engine)
    };
    assert_eq!(clean.len(), 160);

    let specs = [
        "5xx=0.3",
        "drop=0.2",
        "slow=30ms",
        "429=0.4",
        "truncate",
        "accept-strict",
        "expired-first",
        "http-date",
        "numeric-codes",
        "total-outcomes",
        "relative-urls",
        "shuffle",
        "transient=0.4",
    ];
    for base in specs {
        // A run makes only a handful of requests, so a probabilistic switch can miss them all.
        // Every run must give the clean outcomes; the fault must fire in at least one of up
        // to six seeds (a miss in all six is ~1 in 10^4 for the lowest rate here).
        let mut exercised = false;
        for seed in 1..=6u64 {
            let spec = format!("{base},seed={seed}");
            let faults: Faults = spec.parse().unwrap();
            let sim = f
                .sim(SimConfig {
                    faults,
                    ..fast_sim()
                })
                .await;
            let db = f
                .dir
                .path()
                .join(format!("{}.db", spec.replace([',', '=', '.'], "_")));
            let engine = Engine::open(&db, fast_engine(80)).unwrap();
            let jobs = run(&engine, &f, &sim.base_url).await;
            assert_eq!(jobs.len(), 1, "{spec}");
            assert_eq!(
                jobs[0].1,
                JobState::Completed,
                "{spec}: {:?}",
                engine.store().unwrap().report().unwrap().jobs
            );
            let got = outcomes(&engine);
            let diffs: Vec<_> = clean
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(*v))
                .take(3)
                .collect();
            assert!(
                diffs.is_empty(),
                "{spec}: outcomes differ from a clean server, e.g. {diffs:?}"
            );
            let stats = sim.stats();
            exercised = match base {
                s if s.starts_with("5xx") || s.starts_with("transient") => {
                    stats.injected_errors > 0
                }
                s if s.starts_with("drop") => stats.dropped_connections > 0,
                s if s.starts_with("429") => stats.throttled_429 > 0,
                "truncate" => stats.truncated_files > 0,
                // The working Accept mode was remembered for this server.
                "accept-strict" => {
                    engine
                        .store()
                        .unwrap()
                        .server_accept_mode(&sim.base_url)
                        .unwrap()
                        != 0
                }
                _ => true,
            };
            if exercised {
                break;
            }
        }
        assert!(exercised, "{base}: the fault never fired in six runs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_fail_only_their_rows() {
    let f = Fixture::new(2000, 300, 14);
    let sim = f
        .sim(SimConfig {
            faults: "malformed=0.05,seed=9".parse().unwrap(),
            ..fast_sim()
        })
        .await;
    let engine = open(&f, fast_engine(150));
    let jobs = run(&engine, &f, &sim.base_url).await;
    assert_eq!(jobs[0].1, JobState::CompletedWithErrors);
    let store = engine.store().unwrap();
    let bad = store.ingest_errors(jobs[0].0).unwrap();
    assert!(!bad.is_empty());
    assert!(
        bad.iter()
            .all(|(_, _, line, msg)| *line >= 1 && msg.contains("line")),
        "{bad:?}"
    );
    let report = store.report().unwrap();
    assert_eq!(report.outcomes.error as usize, bad.len());
    let o = &report.outcomes;
    assert_eq!(o.auto_match + o.review + o.no_match + o.error, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_job_resumes_without_resubmitting_or_duplicating() {
    let f = Fixture::new(3000, 400, 15);
    // Slow processing so the job is surely in flight when the engine is killed.
    let sim = f
        .sim(SimConfig {
            processing_rate: Some(400),
            ..fast_sim()
        })
        .await;
    let engine = open(&f, fast_engine(100));
    let imported = engine.import(&f.cohort, None, None).unwrap();
    let cohort_id = imported.cohort_id;
    let (sink, log) = recorder();
    let e2 = engine.clone();
    let url = sim.base_url.clone();
    let task = tokio::spawn(async move {
        e2.run_cohort(cohort_id, &url, None, sink, CancelFlag::new())
            .await
    });
    // Wait until at least one chunk is fully stored and others are submitted, then kill.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done = log
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, JobEvent::ChunkFinished { .. }))
            .count();
        if done >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no chunk finished in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    let _ = task.await;
    drop(engine);
    // Let a kick-off that reached the server just before the kill be counted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let submitted_before = sim.stats().jobs_accepted;

    // A new engine on the same file picks the job up.
    let engine = open(&f, fast_engine(100));
    let jobs = engine.store().unwrap().jobs(None).unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].state, JobState::Running);
    let chunks_before = engine.store().unwrap().chunks(jobs[0].id).unwrap();
    let in_flight = chunks_before
        .iter()
        .filter(|c| c.state == ChunkState::Submitted)
        .count() as u64;
    let pending = chunks_before
        .iter()
        .filter(|c| c.state == ChunkState::Pending)
        .count() as u64;
    let (sink, log) = recorder();
    let resumed = engine
        .run_cohort(cohort_id, &sim.base_url, None, sink, CancelFlag::new())
        .await
        .unwrap();
    assert_eq!(resumed, vec![(jobs[0].id, JobState::Completed)]);
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, JobEvent::JobStarted { resumed: true, .. }))
    );
    // Submitted chunks were polled again, not resubmitted: only pending ones were kicked off.
    assert_eq!(
        sim.stats().jobs_accepted,
        submitted_before + pending,
        "in flight at kill: {in_flight}"
    );
    let results = engine.store().unwrap().results().unwrap();
    assert_eq!(results.len(), 400, "every row exactly once");
    let mut ids: Vec<_> = results.iter().map(|r| r.source_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 400);

    // Same outcomes as an uninterrupted run.
    let clean_sim = f.sim(fast_sim()).await;
    let clean = Engine::open(&f.dir.path().join("clean.db"), fast_engine(100)).unwrap();
    run(&clean, &f, &clean_sim.base_url).await;
    assert_eq!(outcomes(&clean), outcomes(&engine));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_deletes_server_jobs_and_marks_the_job_cancelled() {
    let f = Fixture::new(2000, 300, 16);
    let sim = f
        .sim(SimConfig {
            processing_rate: Some(50),
            ..fast_sim()
        })
        .await;
    let engine = open(&f, fast_engine(100));
    let imported = engine.import(&f.cohort, None, None).unwrap();
    let cancel = CancelFlag::new();
    let (sink, log) = recorder();
    let e2 = engine.clone();
    let url = sim.base_url.clone();
    let c2 = cancel.clone();
    let task = tokio::spawn(async move {
        e2.run_cohort(imported.cohort_id, &url, None, sink, c2)
            .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !log
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, JobEvent::ChunkSubmitted { .. }))
    {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Interrupt (the run returns promptly, resumable), then cancel for good.
    cancel.cancel();
    let interrupted = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(interrupted[0].1, JobState::Running);
    let job_id = interrupted[0].0;
    engine.cancel_job(job_id, None, Some("test")).await.unwrap();
    assert!(sim.stats().deletes >= 1);
    assert_eq!(sim.job_count(), 0, "every server-side job was deleted");
    let job = engine.store().unwrap().job(job_id).unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    let audit = engine.store().unwrap().audit_entries(100).unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "job_cancelled" && a.why.as_deref() == Some("test"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reimport_rematches_only_new_and_changed_rows() {
    let f = Fixture::new(2000, 200, 17);
    let sim = f.sim(fast_sim()).await;
    let engine = open(&f, fast_engine(100));
    run(&engine, &f, &sim.base_url).await;
    let kickoffs = sim.stats().jobs_accepted;

    // New version: drop 10 rows, change one address, add nothing.
    let text = std::fs::read_to_string(&f.cohort).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let header = lines.remove(0);
    let kept: Vec<String> = lines[10..].to_vec();
    let mut changed = kept.clone();
    changed[0] = changed[0].replacen(",\"", ",\"X", 1);
    let v2 = f.dir.path().join("cohort-v2.csv");
    std::fs::write(&v2, format!("{header}\n{}\n", changed.join("\n"))).unwrap();
    let imported = engine.import(&v2, None, Some("cohort")).unwrap();
    assert!(imported.diff.reimport);
    assert_eq!(imported.diff.left_rows, 10);
    assert_eq!(imported.diff.changed_rows, 1);
    assert_eq!(imported.diff.unchanged_rows, 189);
    let left = engine
        .store()
        .unwrap()
        .left_rows(imported.cohort_id)
        .unwrap();
    assert_eq!(left.len(), 10);

    let jobs = engine
        .run_cohort(
            imported.cohort_id,
            &sim.base_url,
            None,
            no_events(),
            CancelFlag::new(),
        )
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(sim.stats().jobs_accepted, kickoffs + 1);
    let chunks = engine.store().unwrap().chunks(jobs[0].0).unwrap();
    assert_eq!(
        chunks.iter().map(|c| c.row_count).sum::<u64>(),
        1,
        "only the changed row is resubmitted"
    );
    assert_eq!(engine.store().unwrap().report().unwrap().rows, 190);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_is_required_and_sent_only_where_it_belongs() {
    let f = Fixture::new(1500, 60, 18);
    let sim = f
        .sim(SimConfig {
            require_token: Some("s3cret".into()),
            requires_access_token: false,
            ..fast_sim()
        })
        .await;
    // Without a token: the chunk fails with an authorization message; nothing is lost.
    let engine = Engine::open(&f.dir.path().join("notoken.db"), fast_engine(60)).unwrap();
    let jobs = run(&engine, &f, &sim.base_url).await;
    assert_eq!(jobs[0].1, JobState::Failed);
    let report = engine.store().unwrap().report().unwrap();
    let err = report.jobs[0].last_error.clone().unwrap_or_default();
    assert!(
        err.contains("401") || err.to_lowercase().contains("credential"),
        "{err}"
    );
    assert_eq!(
        report.pending, 60,
        "rows stay unmatched, ready for another run"
    );

    // With the token: works; files (requiresAccessToken=false) are fetched without it.
    let engine = open(&f, fast_engine(60));
    let imported = engine.import(&f.cohort, None, None).unwrap();
    let token: Arc<dyn TokenSource> = Arc::new(StaticToken::new("s3cret"));
    let before = sim.stats();
    let jobs = engine
        .run_cohort(
            imported.cohort_id,
            &sim.base_url,
            Some(token),
            no_events(),
            CancelFlag::new(),
        )
        .await
        .unwrap();
    assert_eq!(jobs[0].1, JobState::Completed);
    let after = sim.stats();
    assert!(after.file_requests > before.file_requests);
    assert_eq!(
        after.file_requests_with_authorization,
        before.file_requests_with_authorization
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_remote_server_is_refused() {
    let f = Fixture::new(500, 20, 19);
    let engine = open(&f, fast_engine(20));
    let imported = engine.import(&f.cohort, None, None).unwrap();
    let err = engine
        .run_cohort(
            imported.cohort_id,
            "http://iis.example.org/fhir",
            None,
            no_events(),
            CancelFlag::new(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("https"), "{err}");
}

/// A server that accepts every kick-off and then forgets it (404 on status): the engine
/// resubmits a bounded number of times, then fails the chunk with a message that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_forgets_requests_is_given_up_on() {
    use axum::Router;
    use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
    use axum::routing::{get, post};
    use std::sync::atomic::{AtomicU64, Ordering};

    let kickoffs = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/fhir", listener.local_addr().unwrap());
    let k2 = kickoffs.clone();
    let status_url = format!("{base}/status/1");
    let app = Router::new()
        .route(
            "/fhir/Patient/$bulk-match",
            post(move || {
                let k = k2.clone();
                let loc = status_url.clone();
                async move {
                    k.fetch_add(1, Ordering::SeqCst);
                    let mut h = HeaderMap::new();
                    h.insert(header::CONTENT_LOCATION, HeaderValue::from_str(&loc).unwrap());
                    (StatusCode::ACCEPTED, h)
                }
            }),
        )
        .route(
            "/fhir/status/1",
            get(|| async {
                (
                    StatusCode::NOT_FOUND,
                    [(header::CONTENT_TYPE, "application/fhir+json")],
                    r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found","diagnostics":"no such job"}]}"#,
                )
            }),
        );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let f = Fixture::new(300, 10, 20);
    let mut cfg = fast_engine(10);
    cfg.max_chunk_attempts = 3;
    let engine = open(&f, cfg);
    let jobs = run(&engine, &f, &base).await;
    server.abort();
    assert_eq!(jobs[0].1, JobState::Failed);
    assert_eq!(kickoffs.load(Ordering::SeqCst), 3, "bounded resubmission");
    let report = engine.store().unwrap().report().unwrap();
    let err = report.jobs[0].last_error.clone().unwrap_or_default();
    assert!(err.contains("gave up after 3 attempts"), "{err}");
    assert_eq!(report.pending, 10, "the rows are kept for another run");
}
