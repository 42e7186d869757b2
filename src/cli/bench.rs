//! `matchdesk bench`: the performance benchmarks, as figures printed (never as timed tests).
//!
//! Each measurement runs the real `matchdesk` binary as a child process, so a figure covers
//! exactly what a user's command does, and its peak resident memory is the child's own (read
//! from `/proc/self/status` `VmHWM` by the child when `MATCHDESK_PEAK_RSS` is set). Data is
//! generated once into the work folder and reused.
//!
//! 1. import of a generated 1,000,000-row cohort CSV (target ≤ 3 s, peak RSS ≤ 300 MB);
//! 2. ingest of 100,000 match Bundles served from loopback (target ≤ 2 s, memory flat in file
//!    size: also run with 20,000 for comparison);
//! 3. end to end: a 100,000-patient cohort against the simulated IIS holding 1,000,000 patients
//!    (target ≤ 60 s).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Args;

use matchdesk::domain::{Demographics, MatchOptions};
use matchdesk::engine::{Engine, EngineConfig};
use matchdesk::fhir::patient::to_patient;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Folder for generated data and workspaces (reused between runs).
    #[arg(long, default_value = "bench-out")]
    pub dir: PathBuf,
    /// Which benchmarks: import, ingest, e2e, review-frame (comma-separated), or all.
    #[arg(long, default_value = "all")]
    pub only: String,
    /// Bundle counts for the ingest benchmark (memory should plateau as the count grows).
    #[arg(long, default_value = "20000,100000", value_delimiter = ',')]
    pub ingest_sizes: Vec<usize>,
    /// Scale every size down by this factor (e.g. 10 for a quick smoke run).
    #[arg(long, default_value_t = 1)]
    pub scale_down: usize,
}

struct Measured {
    secs: f64,
    peak_rss_mb: Option<f64>,
    stdout: String,
}

fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("finding the matchdesk executable")
}

/// Run `matchdesk ARGS` as a child and measure it.
fn measure(args: &[&str]) -> Result<Measured> {
    // Let the previous step's dirty pages reach the disk first, so its write-back does not
    // land in this measurement (best effort; `sync` is absent on some systems).
    let _ = Command::new("sync").status();
    let start = Instant::now();
    let out = Command::new(exe()?)
        .args(args)
        .env("MATCHDESK_PEAK_RSS", "1")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running matchdesk {}", args.join(" ")))?;
    let secs = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap_or(-1);
    if code != 0 && code != i32::from(super::EXIT_PARTIAL) {
        bail!("matchdesk {} failed ({code}): {stderr}", args.join(" "));
    }
    let peak_rss_mb = stderr
        .lines()
        .find_map(|l| l.strip_prefix("matchdesk-peak-rss-kb: "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0);
    Ok(Measured {
        secs,
        peak_rss_mb,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

fn fresh(path: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

fn ensure_data(
    dir: &Path,
    patients: usize,
    cohort: usize,
    tag: &str,
) -> Result<(PathBuf, PathBuf)> {
    let reg = dir.join(format!("registry-{tag}.csv"));
    let coh = dir.join(format!("cohort-{tag}.csv"));
    if !reg.exists() || !coh.exists() {
        eprintln!("generating {patients} registry patients and a {cohort}-row cohort ...");
        let m = measure(&[
            "generate",
            "--patients",
            &patients.to_string(),
            "--seed",
            "42",
            "--registry-out",
            &reg.to_string_lossy(),
            "--cohort-out",
            &coh.to_string_lossy(),
            "--cohort-size",
            &cohort.to_string(),
            "--truth-out",
            &dir.join(format!("truth-{tag}.csv")).to_string_lossy(),
        ])?;
        eprintln!("  generated in {:.1}s", m.secs);
    }
    Ok((reg, coh))
}

fn rss(m: &Measured) -> String {
    m.peak_rss_mb
        .map(|r| format!("{r:.0} MB"))
        .unwrap_or_else(|| "n/a".into())
}

pub async fn run(a: BenchArgs) -> Result<u8> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let k = a.scale_down.max(1);
    let want = |name: &str| a.only == "all" || a.only.split(',').any(|s| s.trim() == name);
    println!(
        "matchdesk benchmarks ({} cores){}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        if k > 1 {
            format!(", scaled down {k}x")
        } else {
            String::new()
        }
    );

    if want("review-frame") {
        let rows = 1_000_000 / k;
        let dir = a.dir.join("review-frame");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let stats = tokio::task::spawn_blocking(move || matchdesk::ui::bench::run(&dir, rows, 600))
            .await
            .context("the review-frame benchmark stopped")?;
        println!(
            "review-frame: {} queue rows, {} frames scrolling: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms of frame logic (target: p99 ≤ 8 ms); a filter+search+sort rebuild takes {:.0} ms",
            stats.rows, stats.frames, stats.p50_ms, stats.p99_ms, stats.max_ms, stats.rebuild_ms
        );
    }

    if want("import") {
        let n = 1_000_000 / k;
        let (_, coh) = ensure_data(&a.dir, n, n, &format!("import-{n}"))?;
        let db = a.dir.join("bench-import.matchdesk");
        fresh(&db)?;
        let m = measure(&[
            "import",
            "--db",
            &db.to_string_lossy(),
            &coh.to_string_lossy(),
        ])?;
        println!(
            "import: {n} rows in {:.2} s ({:.0} rows/s), peak RSS {} (targets: ≤ 3 s, ≤ 300 MB)",
            m.secs,
            n as f64 / m.secs,
            rss(&m)
        );
        let m2 = measure(&[
            "import",
            "--db",
            &db.to_string_lossy(),
            &coh.to_string_lossy(),
        ])?;
        println!(
            "re-import of the same file (diff against {n} stored rows): {:.2} s, peak RSS {}",
            m2.secs,
            rss(&m2)
        );
    }

    if want("ingest") {
        for n in a.ingest_sizes.iter().map(|n| (n / k).max(1)) {
            let m = bench_ingest(&a.dir, n).await?;
            println!(
                "ingest: {n} match Bundles in {:.2} s ({:.0} bundles/s), peak RSS {} (target for 100,000: ≤ 2 s, flat memory)",
                m.secs,
                n as f64 / m.secs,
                rss(&m)
            );
        }
    }

    if want("e2e") {
        let (reg_n, coh_n) = (1_000_000 / k, 100_000 / k);
        let (_, coh) = ensure_data(&a.dir, reg_n, coh_n, &format!("e2e-{reg_n}-{coh_n}"))?;
        let start_sim = Instant::now();
        let mut sim = Command::new(exe()?)
            .args([
                "sim",
                "--listen",
                "127.0.0.1:0",
                "--patients",
                &reg_n.to_string(),
                "--seed",
                "42",
                "--min-poll-interval-ms",
                "200",
                "--retry-after",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .context("starting the simulated IIS")?;
        let stdout = sim
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from the simulated IIS"))?;
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .context("reading the simulated IIS's URL")?;
        let base = first.trim().to_string();
        if base.is_empty() {
            let _ = sim.kill();
            bail!("the simulated IIS printed no URL");
        }
        println!(
            "simulated IIS with {reg_n} patients ready in {:.1} s at {base}",
            start_sim.elapsed().as_secs_f64()
        );
        let db = a.dir.join("bench-e2e.matchdesk");
        fresh(&db)?;
        let res = measure(&[
            "match",
            "--db",
            &db.to_string_lossy(),
            "--server",
            &base,
            "--chunk-size",
            "2000",
            "--concurrency",
            "2",
            "--plain",
            &coh.to_string_lossy(),
        ]);
        let _ = sim.kill();
        let _ = sim.wait();
        let m = res?;
        let summary = m
            .stdout
            .lines()
            .find(|l| l.starts_with("rows:"))
            .unwrap_or("")
            .to_string();
        let quality = auto_match_quality(&a.dir, &db, &format!("e2e-{reg_n}-{coh_n}"))
            .unwrap_or_else(|e| format!("(could not score against the truth file: {e})"));
        println!(
            "end to end: {coh_n}-patient cohort against {reg_n} registry patients in {:.1} s, client peak RSS {} (target ≤ 60 s)\n  {summary}\n  {quality}",
            m.secs,
            rss(&m)
        );
    }
    Ok(0)
}

/// Compare the run's results with the generator's ground truth: how many auto-matches point at
/// the true registry record, and how many in-registry rows were auto-matched.
fn auto_match_quality(dir: &Path, db: &Path, tag: &str) -> Result<String> {
    let out = dir.join("e2e-export");
    measure(&[
        "report",
        "--db",
        &db.to_string_lossy(),
        "--export",
        &out.to_string_lossy(),
    ])?;
    let mut truth = std::collections::HashMap::new();
    let mut r = csv::Reader::from_path(dir.join(format!("truth-{tag}.csv")))?;
    for rec in r.records() {
        let rec = rec?;
        truth.insert(
            rec.get(0).unwrap_or("").to_string(),
            rec.get(1).unwrap_or("").to_string(),
        );
    }
    let (mut auto, mut right, mut in_registry) = (0u64, 0u64, 0u64);
    let mut r = csv::Reader::from_path(out.join("results.csv"))?;
    for rec in r.records() {
        let rec = rec?;
        let sid = rec.get(0).unwrap_or("");
        let t = truth.get(sid).map(String::as_str).unwrap_or("");
        if !t.is_empty() {
            in_registry += 1;
        }
        if rec.get(1) == Some("auto_match") {
            auto += 1;
            if rec.get(2) == Some(t) && !t.is_empty() {
                right += 1;
            }
        }
    }
    Ok(format!(
        "auto-match precision {:.2}% ({right} of {auto} point at the true record); {:.1}% of the {in_registry} in-registry rows auto-matched",
        100.0 * right as f64 / auto.max(1) as f64,
        100.0 * right as f64 / in_registry.max(1) as f64
    ))
}

/// Ingest benchmark: a workspace with `n` rows in one submitted chunk whose status URL answers
/// at once with a manifest pointing at a pregenerated ndjson file on a loopback server; the
/// child `matchdesk match` resumes the job, downloads and ingests.
async fn bench_ingest(dir: &Path, n: usize) -> Result<Measured> {
    let (_, coh) = ensure_data(dir, n.max(1000), n, &format!("ingest-{n}"))?;
    let ndjson = dir.join(format!("bundles-{n}.ndjson"));
    let db = dir.join(format!("bench-ingest-{n}.matchdesk"));
    fresh(&db)?;
    let engine = Engine::open(
        &db,
        EngineConfig {
            chunk_size: n,
            ..EngineConfig::default()
        },
    )?;
    let name = coh
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let imported = engine.import(&coh, None, Some(&name))?;

    // Serve: status → manifest, file → bundles, DELETE → 202.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let base = format!("http://{addr}");
    let job = engine
        .store()?
        .create_job(
            imported.cohort_id,
            &base,
            &MatchOptions::default(),
            n,
            "bench",
        )?
        .ok_or_else(|| anyhow!("no rows to put in the ingest benchmark job"))?;
    let chunk = engine
        .store()?
        .chunks(job.id)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no chunk"))?;
    let patients = engine.store()?.chunk_patients(chunk.id)?;
    if !ndjson.exists() {
        write_bundles(
            &ndjson,
            &patients
                .iter()
                .map(|p| (p.source_id.clone(), p.normalized.clone()))
                .collect::<Vec<_>>(),
        )?;
    }
    engine
        .store()?
        .chunk_submitted(chunk.id, &format!("{base}/status/1"))?;
    drop(engine);
    let body = axum::body::Bytes::from(std::fs::read(&ndjson)?);
    let manifest = serde_json::json!({
        "transactionTime": "2026-01-01T00:00:00Z",
        "request": format!("{base}/Patient/$bulk-match"),
        "requiresAccessToken": false,
        "output": [{"type": "Bundle", "url": format!("{base}/file.ndjson")}],
        "error": []
    })
    .to_string();
    let app = Router::new()
        .route(
            "/status/1",
            get(move || {
                let m = manifest.clone();
                async move {
                    let mut h = HeaderMap::new();
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    (StatusCode::OK, h, m)
                }
            })
            .delete(|| async { StatusCode::ACCEPTED }),
        )
        .route(
            "/file.ndjson",
            get(move || {
                let b = body.clone();
                async move {
                    let mut h = HeaderMap::new();
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/fhir+ndjson"),
                    );
                    (StatusCode::OK, h, b).into_response()
                }
            }),
        );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let db_s = db.to_string_lossy().into_owned();
    if std::env::var_os("MATCHDESK_BENCH_PREPARE_ONLY").is_some() {
        // For profiling: leave the prepared workspace and serve until interrupted.
        println!(
            "prepared; run: matchdesk match --db {db_s} --server {base} --name {name} --plain {}",
            coh.display()
        );
        let _ = tokio::signal::ctrl_c().await;
        server.abort();
        bail!("interrupted");
    }
    let coh_s = coh.to_string_lossy().into_owned();
    let name_s = name.clone();
    let m = tokio::task::spawn_blocking(move || {
        measure(&[
            "match", "--db", &db_s, "--server", &base, "--name", &name_s, "--plain", &coh_s,
        ])
    })
    .await??;
    server.abort();
    Ok(m)
}

/// Write one match Bundle per patient: the submitted person as a certain candidate, plus a
/// possible namesake every third row, out of score order every seventh.
fn write_bundles(path: &Path, patients: &[(String, Demographics)]) -> Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (i, (id, d)) in patients.iter().enumerate() {
        let mut entries = vec![entry(&format!("IIS{i}"), d, 0.97, "certain")];
        if i % 3 == 0 {
            let mut other = d.clone();
            other.given = Some("ALEX".into());
            entries.push(entry(&format!("IISX{i}"), &other, 0.6, "possible"));
        }
        if i % 7 == 0 {
            entries.reverse();
        }
        let bundle = serde_json::json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "meta": {"extension": [{
                "url": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/match-resource",
                "valueReference": {"reference": format!("Patient/{id}")}
            }]},
            "total": entries.len(),
            "entry": entries,
        });
        serde_json::to_writer(&mut w, &bundle)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

fn entry(id: &str, d: &Demographics, score: f64, grade: &str) -> serde_json::Value {
    serde_json::json!({
        "fullUrl": format!("Patient/{id}"),
        "resource": to_patient(id, d),
        "search": {
            "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/match-grade", "valueCode": grade}],
            "mode": "match",
            "score": score
        }
    })
}
