//! The workbench driven end to end through egui_kittest, by accessible labels and keys: the real
//! app (backend + engine + the embedded simulated IIS on loopback + a real SQLite file).
//!
//! Flow: import the sample cohort → run the match → review an ambiguous row by keyboard →
//! accept → undo → accept again → approve the Group addition as coordinator → the member is in
//! the Group and in the audit log → a re-import without that row proposes its removal →
//! approved, the member is gone. Image snapshots of every screen are taken on the way.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::{Harness, SnapshotOptions};

use matchdesk::app::{Reviewer, Role, StartOptions};
use matchdesk::domain::{Outcome, ReviewReason};
use matchdesk::store::{DecisionKind, Store};
use matchdesk::ui::{MatchdeskApp, Persisted, ReviewFilter};

fn options(dir: &Path) -> StartOptions {
    let mut o = StartOptions::new(dir.join("ws.matchdesk"), dir.to_path_buf());
    o.fast = true;
    o.demo_rate = None;
    o.reviewer = Reviewer {
        name: "rita".into(),
        role: Role::Reviewer,
    };
    o
}

fn harness(dir: &Path) -> Harness<'static, MatchdeskApp> {
    let opts = options(dir);
    Harness::builder()
        .with_size([1400.0, 900.0])
        .build_eframe(move |_cc| MatchdeskApp::new(opts, Persisted::default(), Arc::new(|| {})))
}

/// Step frames until `cond` holds (the backend answers asynchronously).
#[track_caller]
fn wait(h: &mut Harness<'static, MatchdeskApp>, what: &str, cond: impl Fn(&MatchdeskApp) -> bool) {
    let start = Instant::now();
    loop {
        h.step();
        if cond(h.state()) {
            h.step();
            h.step();
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(15));
    }
}

/// Step frames until a widget labelled exactly `label` is on screen.
#[track_caller]
fn wait_for_label(h: &mut Harness<'static, MatchdeskApp>, label: &str, what: &str) {
    let start = Instant::now();
    while h.query_by_label(label).is_none() {
        h.step();
        std::thread::sleep(Duration::from_millis(15));
        assert!(start.elapsed() < Duration::from_secs(30), "{what}");
    }
}

/// Step frames until a widget whose label contains `text` is on screen.
#[track_caller]
fn wait_for_text(h: &mut Harness<'static, MatchdeskApp>, text: &str, what: &str) {
    let start = Instant::now();
    while h.query_by_label_contains(text).is_none() {
        h.step();
        std::thread::sleep(Duration::from_millis(15));
        assert!(start.elapsed() < Duration::from_secs(30), "{what}");
    }
}

/// On Match runs, press Start and step until the run has ended; its view.
fn start_run_and_wait(h: &mut Harness<'static, MatchdeskApp>) -> matchdesk::app::RunView {
    nav(h, "Match runs");
    h.get_by_label("▶ Start matching").click();
    wait(h, "the run to finish", |a| {
        a.snap
            .runs
            .first()
            .is_some_and(|r| !r.active && r.job.state != matchdesk::domain::JobState::Running)
    });
    h.state().snap.runs[0].clone()
}

fn snapshot(h: &mut Harness<'static, MatchdeskApp>, name: &str) {
    // Timestamps and elapsed times differ between runs; the layout must not.
    let opts = SnapshotOptions::default().max_failed_pixels(25_000);
    h.snapshot_options(name, &opts);
}

/// Click the navigation (or tab) button whose label starts with `label` (labels carry counts).
fn nav(h: &mut Harness<'static, MatchdeskApp>, label: &str) {
    // Like a user, move the pointer onto the button for a frame before pressing it: a tooltip
    // left over from the previous click must be gone (it would catch the press otherwise).
    find_button(h, label).hover();
    h.step();
    find_button(h, label).click();
    h.step();
    h.step();
}

fn find_button<'h>(
    h: &'h Harness<'static, MatchdeskApp>,
    label: &'h str,
) -> egui_kittest::Node<'h> {
    h.query_all_by_label_contains(label)
        .find(|n| {
            n.accesskit_node().role() != egui::accesskit::Role::Label
                && n.accesskit_node()
                    .label()
                    .is_some_and(|l| l.starts_with(label))
        })
        .unwrap_or_else(|| {
            let seen: Vec<String> = h
                .query_all_by_label_contains("")
                .filter_map(|n| n.accesskit_node().label())
                .collect();
            panic!("no button {label:?}; the screen shows: {seen:?}")
        })
}

#[test]
fn whole_flow_import_match_review_approve_undo_and_removal_by_reimport() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    wait(&mut h, "the workspace and demo IIS", |a| {
        a.snap.ready && a.snap.demo.is_some() && !a.snap.profiles.is_empty()
    });
    // First run: the welcome hint says what to do.
    h.get_by_label_contains("Welcome to matchdesk");
    snapshot(&mut h, "01_first_run");

    // Import the sample cohort: preview + mapping, check, import.
    h.get_by_label("Use the sample cohort").click();
    wait(&mut h, "the preview", |_| true);
    wait(&mut h, "the mapping table", |a| a.snap.ready);
    wait_for_label(&mut h, "Check file", "no preview");
    snapshot(&mut h, "02_mapping");
    h.get_by_label("Check file").click();
    wait_for_text(&mut h, "rows have problems", "no check result");
    h.get_by_label_contains("4 rows have problems");
    h.get_by_label("Import").click();
    wait(&mut h, "the import", |a| !a.snap.cohorts.is_empty());
    let cohort_id = h.state().snap.cohorts[0].id;
    assert_eq!(h.state().snap.cohorts[0].active_rows, 240);
    assert_eq!(h.state().snap.cohorts[0].bad_rows, 4);
    // The validation report lists the bad rows with their lines.
    wait_for_label(&mut h, "Validation report", "no report");
    h.get_by_label_contains("is not a real date");
    snapshot(&mut h, "03_cohorts");

    // Match against the embedded demo IIS.
    let run = start_run_and_wait(&mut h);
    // The demo IIS garbles a few result lines on purpose: those rows are errors, the rest done.
    assert!(
        matches!(
            run.job.state,
            matchdesk::domain::JobState::Completed
                | matchdesk::domain::JobState::CompletedWithErrors
        ),
        "{:?} {:?}",
        run.job.last_error,
        run.chunks
    );
    assert_eq!(run.done_rows, 240);
    wait(&mut h, "the queue", |a| {
        a.review.queue.as_ref().is_some_and(|q| q.rows.len() == 240)
    });
    let q = h.state().review.queue.as_ref().unwrap();
    // The sample produces every outcome.
    for o in [
        Outcome::AutoMatch,
        Outcome::Review(ReviewReason::SeveralCandidates),
        Outcome::Review(ReviewReason::Probable),
        Outcome::Review(ReviewReason::Possible),
        Outcome::NoMatch,
        Outcome::Error,
    ] {
        assert!(
            q.rows.iter().any(|r| r.outcome == o),
            "no {o:?} in the sample run"
        );
    }
    snapshot(&mut h, "04_runs");

    // Review: the "several candidates" tab, first row, by keyboard.
    nav(&mut h, "Review queue");
    nav(&mut h, "Several candidates (");
    h.step();
    wait(&mut h, "the side-by-side detail", |a| {
        a.review.filter == ReviewFilter::Several && a.review.selected_row_id().is_some()
    });
    wait_for_text(&mut h, "Accept 2", "no detail");
    h.get_by_label("Submitted record");
    h.get_by_label("Candidate 2");
    snapshot(&mut h, "05_review");
    // The same screen in the dark theme: every mark keeps its symbol and stays readable.
    h.state_mut().persisted.dark = true;
    h.step();
    h.step();
    snapshot(&mut h, "05_review_dark");
    h.state_mut().persisted.dark = false;
    h.step();
    h.step();
    let row_id = h.state().review.selected_row_id().unwrap();
    h.key_press(egui::Key::Num2);
    let decided = |a: &MatchdeskApp, want: Option<DecisionKind>| {
        a.review
            .queue
            .as_ref()
            .and_then(|q| q.rows.iter().find(|r| r.row_id == row_id))
            .is_some_and(|r| r.decision == want)
    };
    wait(&mut h, "the accept to be saved", |a| {
        decided(a, Some(DecisionKind::Accept))
    });
    // The accepted row left the "to do" tab; the selection moved on.
    assert_ne!(h.state().review.selected_row_id(), Some(row_id));

    // Undo (U) restores it; accept again with the visible button's key.
    h.key_press(egui::Key::U);
    wait(&mut h, "the undo", |a| decided(a, None));
    assert_eq!(h.state().review.selected_row_id(), Some(row_id));
    wait(&mut h, "the detail again", |a| {
        a.review.selected_row_id() == Some(row_id)
    });
    wait_for_text(&mut h, "Accept 2", "no detail after undo");
    h.key_press(egui::Key::Num2);
    wait(&mut h, "the second accept", |a| {
        decided(a, Some(DecisionKind::Accept))
    });

    let db = dir.path().join("ws.matchdesk");
    let accepted_iis = {
        let store = Store::open(&db).unwrap();
        let d = store.row_detail(row_id).unwrap();
        d.candidates[1].iis_id.clone()
    };

    // As a reviewer, approving is refused with a message that says what to do.
    nav(&mut h, "Group");
    h.get_by_label_contains("Only a coordinator approves");
    snapshot(&mut h, "06_group_pending");

    // Become coordinator and approve every pending addition.
    nav(&mut h, "Settings");
    h.get_by_label("Coordinator").click();
    h.step();
    h.get_by_label("Save name and role").click();
    wait(&mut h, "the role", |a| {
        a.snap.reviewer.role == Role::Coordinator
    });
    snapshot(&mut h, "07_settings");
    nav(&mut h, "Group");
    wait_for_text(&mut h, "Approve all (", "no pending changes");
    nav(&mut h, "Approve all (");
    wait(&mut h, "the member", |a| {
        a.snap
            .group
            .as_ref()
            .is_some_and(|g| g.members.iter().any(|m| m.iis_id == accepted_iis))
    });
    nav(&mut h, "Members (");
    h.step();
    snapshot(&mut h, "08_group_members");

    // The audit log has the decision, its undo and the approval.
    nav(&mut h, "Audit log");
    wait(&mut h, "the audit log", |a| {
        let actions: Vec<&str> = a.snap.audit.iter().map(|e| e.action.as_str()).collect();
        actions.contains(&"decision_accept")
            && actions.contains(&"decision_undone")
            && actions.contains(&"group_add_approved")
    });
    snapshot(&mut h, "09_audit");

    // Re-import without the accepted row: the difference is shown first, then the removal is
    // proposed and approved.
    let source_id = {
        let store = Store::open(&db).unwrap();
        store.row_detail(row_id).unwrap().source_id
    };
    let sample = std::fs::read_to_string(dir.path().join("sample-cohort.csv")).unwrap();
    let kept: Vec<&str> = sample
        .lines()
        .filter(|l| !l.starts_with(&format!("\"{source_id}\"")))
        .collect();
    assert_eq!(kept.len(), sample.lines().count() - 1);
    let v2 = dir.path().join("v2");
    std::fs::create_dir_all(&v2).unwrap();
    let v2_file = v2.join("sample-cohort.csv");
    std::fs::write(&v2_file, kept.join("\n") + "\n").unwrap();
    h.state_mut().open_file(v2_file);
    wait_for_label(&mut h, "Check file", "no preview of v2");
    h.get_by_label("Check file").click();
    wait_for_text(
        &mut h,
        "Rows no longer in the file: 1",
        "no re-import difference",
    );
    snapshot(&mut h, "10_reimport_difference");
    h.get_by_label("Apply re-import").click();
    wait(&mut h, "the proposed removal", |a| {
        a.snap.group.as_ref().is_some_and(|g| {
            g.pending
                .iter()
                .any(|c| c.iis_id == accepted_iis && c.kind == matchdesk::store::ChangeKind::Remove)
        })
    });
    nav(&mut h, "Group");
    nav(&mut h, "Pending changes (");
    h.step();
    nav(&mut h, "Approve all (");
    wait(&mut h, "the removal", |a| {
        a.snap
            .group
            .as_ref()
            .is_some_and(|g| !g.members.iter().any(|m| m.iis_id == accepted_iis))
    });
    drop(h);

    // What the UI showed is what the workspace holds.
    let store = Store::open(&db).unwrap();
    let cohort = store.cohorts().unwrap()[0].clone();
    assert_eq!(cohort.id, cohort_id);
    let audit = store.audit_entries(10_000).unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "group_remove_approved" && e.actor == "rita")
    );
}

#[test]
fn restart_resumes_an_interrupted_run_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // A slow demo IIS so the run is still going when the app closes.
    let mut opts = options(dir.path());
    opts.demo_rate = Some(40);
    let o2 = opts.clone();
    let mut h = Harness::builder()
        .with_size([1400.0, 900.0])
        .build_eframe(move |_cc| MatchdeskApp::new(o2, Persisted::default(), Arc::new(|| {})));
    wait(&mut h, "ready", |a| a.snap.ready && a.snap.demo.is_some());
    let sample = h.state().snap.demo.clone().unwrap().1;
    h.state_mut().open_file(sample);
    wait_for_label(&mut h, "Check file", "no preview");
    h.get_by_label("Check file").click();
    wait_for_text(&mut h, "rows are good", "no check result");
    h.get_by_label("Import").click();
    wait(&mut h, "import", |a| !a.snap.cohorts.is_empty());
    nav(&mut h, "Match runs");
    h.get_by_label("▶ Start matching").click();
    wait(&mut h, "the run to start", |a| {
        a.snap.runs.iter().any(|r| r.active)
    });
    // Close the app mid-run (the backend interrupts, leaving the job resumable).
    drop(h);

    // A new app on the same workspace picks the run up by itself. The demo IIS is a new
    // process-local server, so the unfinished chunks are resubmitted to it.
    let mut opts = options(dir.path());
    opts.demo_rate = None;
    let mut h = Harness::builder()
        .with_size([1400.0, 900.0])
        .build_eframe(move |_cc| MatchdeskApp::new(opts, Persisted::default(), Arc::new(|| {})));
    wait(&mut h, "the resumed run to finish", |a| {
        a.snap
            .runs
            .iter()
            .any(|r| r.resumed && !r.active && r.job.state != matchdesk::domain::JobState::Running)
    });
    nav(&mut h, "Match runs");
    h.get_by_label_contains("resumed after a restart");
    let r = &h.state().snap.runs[0];
    assert_eq!(r.done_rows, 240);
}

/// The demo IIS in SMART mode: the demo profile signs in with its generated key. The profile
/// form's "Test connection" walks discovery → token → request, and a whole run goes through
/// with tokens (the demo IIS answers 401 to any request without one).
#[test]
fn smart_sign_in_test_connection_and_a_run_through_the_gui() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.demo_smart = true;
    let mut h = Harness::builder()
        .with_size([1400.0, 900.0])
        .build_eframe(move |_cc| MatchdeskApp::new(opts, Persisted::default(), Arc::new(|| {})));
    wait(&mut h, "the workspace and demo IIS", |a| {
        a.snap.ready && a.snap.demo.is_some() && !a.snap.profiles.is_empty()
    });
    let profile = h.state().snap.profiles[0].clone();
    let matchdesk::app::ProfileAuth::Smart(cfg) = &profile.auth else {
        panic!("the demo profile does not use SMART: {:?}", profile.auth)
    };
    // The private key lives beside the workspace, readable only by the user; the workspace
    // keeps only its path.
    assert!(cfg.key_path.starts_with(dir.path().join("keys")));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cfg.key_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key file mode {mode:o}");
    }
    let key_text = std::fs::read_to_string(&cfg.key_path).unwrap();
    let db_bytes = std::fs::read(dir.path().join("ws.matchdesk")).unwrap();
    let body: String = key_text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(
        !String::from_utf8_lossy(&db_bytes).contains(&body[..40]),
        "the private key is in the workspace"
    );

    nav(&mut h, "Settings");
    h.get_by_label("Edit Demo IIS (built in)").click();
    h.step();
    h.step();
    h.get_by_label_contains("SMART Backend Services");
    h.get_by_label("Test connection").click();
    let start = Instant::now();
    while h
        .query_by_label_contains("Connection test passed")
        .is_none()
    {
        h.step();
        std::thread::sleep(Duration::from_millis(15));
        assert!(
            h.query_by_label_contains("Connection test failed")
                .is_none(),
            "the connection test failed"
        );
        assert!(start.elapsed() < Duration::from_secs(30), "no test result");
    }
    h.get_by_label("✔ Access token");
    snapshot(&mut h, "11_settings_smart");

    // "Generate a key pair…" (the folder comes from the native dialog, here sent directly):
    // the new private key lands in the form, private to the user, with its public JWKS beside it.
    let keys = dir.path().join("my-keys");
    std::fs::create_dir_all(&keys).unwrap();
    h.state().send(matchdesk::app::Command::GenerateKeys {
        alg: matchdesk::net::SigningAlg::Rs384,
        dir: keys.clone(),
    });
    let shown = keys.display().to_string();
    wait_for_text(&mut h, &shown, "the generated key in the form");
    wait_for_text(&mut h, "Give ", "the notice about the public key set");
    let pem: Vec<_> = std::fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(pem.len(), 2, "{pem:?}");
    let jwks = pem
        .iter()
        .find(|p| p.to_string_lossy().ends_with(".jwks.json"))
        .unwrap();
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(jwks).unwrap()).unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "RS384");
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "the JWKS holds a private part"
    );
    h.get_by_label("Cancel").click();
    h.step();

    // A run: import the sample cohort and match it with SMART sign-in.
    nav(&mut h, "Cohorts");
    h.get_by_label("Use the sample cohort").click();
    wait_for_label(&mut h, "Check file", "no preview");
    h.get_by_label("Check file").click();
    wait_for_text(&mut h, "rows have problems", "no check result");
    h.get_by_label("Import").click();
    wait(&mut h, "the import", |a| !a.snap.cohorts.is_empty());
    let run = start_run_and_wait(&mut h);
    assert_eq!(run.done_rows, 240, "{:?}", run.job.last_error);
    assert!(run.outcomes.auto_match > 100, "{:?}", run.outcomes);
}
