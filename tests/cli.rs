//! The command-line contract, driven through the real `matchdesk` binary: the first line of
//! `sim`, `generate`, `import` with bad rows (exit 3), `match` resuming, `report --json` and
//! `--export`, and the SMART commands (`keys generate`, `sim --smart-jwks`, `test-connection`,
//! `match --auth smart`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_matchdesk");

struct Sim(Child, String);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sim(registry: &Path, extra: &[&str]) -> Sim {
    let mut child = Command::new(BIN)
        .args(["sim", "--listen", "127.0.0.1:0", "--registry"])
        .arg(registry)
        .args(["--min-poll-interval-ms", "5", "--retry-after", "0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sim");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    let url = line.trim().to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/fhir"),
        "{url:?}"
    );
    Sim(child, url)
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run matchdesk");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn generate_sim_match_report_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let (code, _, err) = run(&[
        "generate",
        "--patients",
        "2000",
        "--seed",
        "5",
        "--registry-out",
        &p("reg.csv"),
        "--cohort-out",
        &p("coh.csv"),
        "--cohort-size",
        "150",
        "--truth-out",
        &p("truth.csv"),
    ]);
    assert_eq!(code, 0, "{err}");
    let truth = std::fs::read_to_string(p("truth.csv")).unwrap();
    assert_eq!(truth.lines().count(), 151);

    let sim = start_sim(&dir.path().join("reg.csv"), &[]);
    let (code, out, err) = run(&[
        "match",
        "--db",
        &p("ws.db"),
        "--server",
        &sim.1,
        "--chunk-size",
        "60",
        "--plain",
        &p("coh.csv"),
    ]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("imported cohort"), "{out}");
    assert!(out.contains("job 1: completed"), "{out}");

    // Again: nothing to do, nothing submitted.
    let (code, out, _) = run(&[
        "match",
        "--db",
        &p("ws.db"),
        "--server",
        &sim.1,
        "--plain",
        &p("coh.csv"),
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("already imported and unchanged"), "{out}");
    assert!(out.contains("nothing to match"), "{out}");

    let (code, out, _) = run(&[
        "report",
        "--db",
        &p("ws.db"),
        "--json",
        "--export",
        &p("out"),
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["rows"], 150);
    assert_eq!(v["bad_rows"], 0);
    let o = &v["outcomes"];
    let total: u64 = ["auto_match", "review", "no_match", "error"]
        .iter()
        .map(|k| o[k].as_u64().expect(k))
        .sum();
    assert_eq!(total, 150);
    assert_eq!(v["jobs"].as_array().unwrap().len(), 1);
    let results = std::fs::read_to_string(p("out/results.csv")).unwrap();
    assert!(
        results.starts_with("source_id,outcome,best_candidate_id,best_score,best_grade,candidates")
    );
    assert_eq!(results.lines().count(), 151);
    assert!(dir.path().join("out/bad_rows.csv").exists());
}

#[test]
fn bad_rows_are_reported_with_lines_and_exit_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("clinic.csv");
    std::fs::write(
        &csv,
        "MRN,First Name,Last Name,DOB,Phone\n\
         A1,Ana,Lopez,03/04/2015,555-123-4567\n\
         A2,Ben,,01/02/2016,\n\
         A3,Cy,Dunn,02/30/2019,\n\
         A4,Di,Eve,01/01/2090,\n\
         A1,Ed,Fox,05/06/2017,\n\
         A6,Flo,Gee,2018-07-08,12\n",
    )
    .unwrap();
    let db = dir.path().join("ws.db");
    let (code, out, err) = run(&[
        "import",
        "--db",
        &db.to_string_lossy(),
        &csv.to_string_lossy(),
    ]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("2 good rows, 4 bad rows, 1 warnings"), "{out}");
    let export = dir.path().join("out");
    let (code, _, _) = run(&[
        "report",
        "--db",
        &db.to_string_lossy(),
        "--export",
        &export.to_string_lossy(),
    ]);
    assert_eq!(code, 0);
    let bad = std::fs::read_to_string(export.join("bad_rows.csv")).unwrap();
    // Each bad row by its line number in the file (the header is line 1).
    for line in ["3", "4", "5", "6"] {
        assert!(
            bad.lines().any(|l| l.split(',').nth(1) == Some(line)),
            "line {line} missing:\n{bad}"
        );
    }
    assert!(
        bad.lines()
            .any(|l| l.contains(",7,") && l.contains("warning")),
        "{bad}"
    );
}

#[test]
fn unknown_fault_switch_is_a_clear_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&[
        "sim",
        "--patients",
        "100",
        "--faults",
        "gremlins=1",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("gremlins"), "{err}");
    drop(dir);
}

#[cfg(unix)]
#[test]
fn workspace_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("c.csv");
    std::fs::write(
        &csv,
        "MRN,First Name,Last Name,DOB\nA1,Ana,Lopez,2015-03-04\n",
    )
    .unwrap();
    let db = dir.path().join("ws.db");
    let (code, _, err) = run(&[
        "import",
        "--db",
        &db.to_string_lossy(),
        &csv.to_string_lossy(),
    ]);
    assert_eq!(code, 0, "{err}");
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn keys_generate_sim_with_smart_test_connection_and_match() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let (code, out, err) = run(&[
        "generate",
        "--patients",
        "400",
        "--seed",
        "5",
        "--registry-out",
        &p("registry.csv"),
        "--cohort-out",
        &p("cohort.csv"),
        "--cohort-size",
        "30",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&["keys", "generate", "--kid", "clinic", "--out", &p("keys")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("clinic.private.pem") && out.contains("clinic.jwks.json"),
        "{out}"
    );
    let key = p("keys/clinic.private.pem");
    let sim = start_sim(
        &dir.path().join("registry.csv"),
        &[
            "--smart-jwks",
            &p("keys/clinic.jwks.json"),
            "--smart-client-id",
            "clinic-app",
            "--files-need-token",
        ],
    );
    let (code, out, err) = run(&[
        "test-connection",
        "--server",
        &sim.1,
        "--client-id",
        "clinic-app",
        "--key",
        &key,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("[ok  ]").count(), 4, "{out}");
    assert!(
        out.contains("key id \"clinic\""),
        "kid from the JWKS beside the key: {out}"
    );

    // Without authorization the match fails (exit 1); with it, it completes.
    let (code, _, _) = run(&[
        "match",
        "--db",
        &p("a.db"),
        "--server",
        &sim.1,
        "--plain",
        &p("cohort.csv"),
    ]);
    assert_eq!(code, 1);
    let (code, out, err) = run(&[
        "match",
        "--db",
        &p("b.db"),
        "--server",
        &sim.1,
        "--plain",
        "--auth",
        "smart",
        "--client-id",
        "clinic-app",
        "--key",
        &key,
        &p("cohort.csv"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("completed"), "{out}");

    // A wrong client id: the failing step and the advice are printed, exit 1.
    let (code, out, _) = run(&[
        "test-connection",
        "--server",
        &sim.1,
        "--client-id",
        "someone",
        "--key",
        &key,
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains("[FAIL] Access token") && out.contains("invalid_client"),
        "{out}"
    );
}
