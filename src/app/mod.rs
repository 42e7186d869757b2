//! The workbench's logic, without drawing: typed [`Command`]s from the UI, the [`backend`] that
//! runs them on the engine (its own thread with a tokio runtime), and the [`Update`]s it sends
//! back — immutable snapshots the UI draws from.
//!
//! Nothing here depends on egui, so the logic is testable without a window, and the UI never
//! touches SQLite or the network: it sends a command and draws whatever snapshot it has. Every
//! update that changes what is on screen ends with a repaint request, so progress shows without
//! user input.

pub mod backend;
pub mod demo;
pub mod group_export;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::{Demographics, MatchOptions};
use crate::engine::{EngineConfig, JobEvent};
use crate::import::{Mapping, Preview};
use crate::matching::{LocalCheck, TriageRules};
use crate::store::{
    AuditEntry, AuditFilter, BulkAcceptPreview, ChunkInfo, CohortInfo, DecisionInfo, DecisionKind,
    GroupChange, GroupInfo, ImportDiff, JobInfo, Member, OutcomeCounts, ProblemRow, QueueRow,
    RowDetail,
};

pub use backend::{Backend, StartOptions};

/// What a person may do. Only a coordinator approves or rejects Group changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Reviewer,
    Coordinator,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Reviewer => "Reviewer",
            Role::Coordinator => "Coordinator",
        }
    }
}

/// Who is working: recorded in the audit log with every action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reviewer {
    pub name: String,
    pub role: Role,
}

impl Default for Reviewer {
    fn default() -> Self {
        Reviewer {
            name: crate::engine::default_actor(),
            role: Role::Reviewer,
        }
    }
}

/// How matchdesk authenticates to a server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProfileAuth {
    /// No `Authorization` header (the demo IIS, test servers).
    #[default]
    None,
    /// A bearer token read from an environment variable when a run starts (never stored).
    BearerFromEnv { variable: String },
    /// SMART Backend Services: a signed client assertion is exchanged for short-lived tokens.
    /// The profile keeps the *path* of the private key, never the key itself.
    Smart(crate::net::SmartConfig),
}

/// A server and how to run matches against it. Stored in the workspace (no secrets).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerProfile {
    pub name: String,
    /// The FHIR base URL, e.g. `https://iis.example.gov/fhir`.
    pub base_url: String,
    /// Patients per kick-off.
    pub chunk_size: usize,
    /// Kick-offs in flight at once.
    pub concurrency: usize,
    pub options: MatchOptions,
    /// Thresholds and field rules for automatic acceptance.
    pub rules: TriageRules,
    pub auth: ProfileAuth,
}

impl Default for ServerProfile {
    fn default() -> Self {
        let cfg = EngineConfig::default();
        ServerProfile {
            name: String::new(),
            base_url: String::new(),
            chunk_size: cfg.chunk_size,
            concurrency: cfg.concurrency,
            options: cfg.options,
            rules: cfg.rules,
            auth: ProfileAuth::None,
        }
    }
}

impl ServerProfile {
    /// Problems that stop this profile from being saved, in words.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.name.trim().is_empty() {
            out.push("Give the profile a name.".to_string());
        }
        match url::Url::parse(self.base_url.trim()) {
            Ok(u) => {
                if let Err(e) = crate::net::check_base_url(&u) {
                    out.push(e.to_string());
                }
            }
            Err(e) => out.push(format!(
                "\"{}\" is not a web address ({e}); it looks like https://iis.example.gov/fhir.",
                self.base_url.trim()
            )),
        }
        if !(1..=100_000).contains(&self.chunk_size) {
            out.push("Chunk size must be between 1 and 100,000 patients.".to_string());
        }
        if !(1..=16).contains(&self.concurrency) {
            out.push("Concurrency must be between 1 and 16.".to_string());
        }
        if !(0.0..=1.0).contains(&self.rules.local_min_score) {
            out.push("The local score threshold must be between 0 and 1.".to_string());
        }
        match &self.auth {
            ProfileAuth::None => {}
            ProfileAuth::BearerFromEnv { variable } => {
                if variable.trim().is_empty() {
                    out.push(
                        "Enter the name of the environment variable that holds the access token."
                            .to_string(),
                    );
                }
            }
            ProfileAuth::Smart(s) => {
                if s.client_id.trim().is_empty() {
                    out.push(
                        "Enter the client id the IIS gave you when it registered matchdesk."
                            .to_string(),
                    );
                }
                if s.key_path.as_os_str().is_empty() {
                    out.push("Choose the private key file (made with \"Generate a key pair…\" or `matchdesk keys generate`).".to_string());
                }
                if s.scopes.trim().is_empty() {
                    out.push(format!(
                        "Enter the scopes to ask for (usually {}).",
                        crate::net::auth::DEFAULT_SCOPES
                    ));
                }
                if let Some(t) = s.token_endpoint.as_deref().filter(|t| !t.trim().is_empty()) {
                    match url::Url::parse(t.trim()) {
                        Ok(u) => {
                            if let Err(e) = crate::net::check_base_url(&u) {
                                out.push(format!("Token endpoint: {e}"));
                            }
                        }
                        Err(e) => out.push(format!("The token endpoint \"{}\" is not a web address ({e}); leave it empty to find it on the server.", t.trim())),
                    }
                }
            }
        }
        out
    }
}

/// The screen an error or notice belongs to, so it is shown where it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Place {
    Cohorts,
    Runs,
    Review,
    Group,
    Audit,
    Settings,
    /// Startup and anything not tied to a screen.
    App,
}

/// What the UI asks the backend to do.
#[derive(Clone, Debug)]
pub enum Command {
    /// Read the first rows of a file and propose a mapping.
    PreviewFile {
        path: PathBuf,
    },
    /// Import with `mapping` but change nothing: counts, bad rows and, for a re-import, the
    /// difference to the current version.
    CheckImport {
        path: PathBuf,
        mapping: Mapping,
        name: String,
    },
    Import {
        path: PathBuf,
        mapping: Mapping,
        name: String,
    },
    /// Make a cohort current: loads its problems, runs, queue and Group.
    SelectCohort {
        cohort_id: i64,
    },
    ExportBadRows {
        cohort_id: i64,
        path: PathBuf,
    },
    StartRun {
        cohort_id: i64,
        profile: String,
    },
    CancelRun {
        job_id: i64,
    },
    LoadDetail {
        row_id: i64,
    },
    Decide {
        row_id: i64,
        kind: DecisionKind,
        /// 1-based candidate rank for `Accept`.
        rank: Option<u32>,
        note: Option<String>,
    },
    Undo,
    BulkPreview {
        cohort_id: i64,
        min_score: f64,
    },
    BulkAccept {
        cohort_id: i64,
        min_score: f64,
    },
    /// Save corrected demographics and match the row again with `profile`.
    Resubmit {
        row_id: i64,
        corrected: Box<Demographics>,
        why: String,
        profile: String,
    },
    DecideChanges {
        cohort_id: i64,
        ids: Vec<i64>,
        approve: bool,
        reason: Option<String>,
    },
    ProposeRemoval {
        cohort_id: i64,
        iis_id: String,
        reason: String,
    },
    SetIisGroupId {
        cohort_id: i64,
        iis_group_id: Option<String>,
    },
    ExportGroup {
        cohort_id: i64,
        path: PathBuf,
        fhir: bool,
    },
    LoadAudit(AuditFilter),
    ExportAudit {
        filter: AuditFilter,
        path: PathBuf,
    },
    SaveProfile(Box<ServerProfile>),
    /// Check a (possibly unsaved) profile's sign-in: discovery, token request, one request.
    TestConnection(Box<ServerProfile>),
    /// Make a key pair for SMART sign-in in `dir`: a private key (readable only by the user)
    /// and the public JWKS to give the IIS.
    GenerateKeys {
        alg: crate::net::SigningAlg,
        dir: PathBuf,
    },
    DeleteProfile(String),
    SetReviewer(Reviewer),
}

/// A run as the Match runs screen shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct RunView {
    pub job: JobInfo,
    pub cohort: String,
    pub chunks: Vec<ChunkInfo>,
    /// Rows with a result so far.
    pub done_rows: u64,
    pub total_rows: u64,
    pub outcomes: OutcomeCounts,
    /// Rows per best-score bin of width 0.05 (20 bins, 0.00–1.00).
    pub histogram: Vec<u64>,
    /// The run was picked up again after matchdesk restarted.
    pub resumed: bool,
    /// The run is being worked on by this process now.
    pub active: bool,
    /// Seconds since the run started (or resumed) in this process, for the ETA.
    pub active_secs: Option<f64>,
    /// Rows done when this process started working on it.
    pub done_at_start: u64,
    /// The last `X-Progress` text per chunk id.
    pub progress: Vec<(i64, String)>,
    /// Recent problems the run worked around, newest last.
    pub notes: Vec<RunNote>,
    /// Result lines that could not be used in this process's work on the run.
    pub bad_lines: u64,
}

/// Something a run met and dealt with, for the Match runs screen.
#[derive(Clone, Debug, PartialEq)]
pub enum RunNote {
    /// A request is being retried (server busy, network trouble): no action needed.
    Retrying(String),
    /// One line of a result file could not be used; its row became an error.
    BadLine(String),
}

/// A row with everything the side-by-side comparison needs, computed off the UI thread.
#[derive(Clone, Debug, PartialEq)]
pub struct DetailView {
    pub detail: RowDetail,
    /// One local check per candidate (same order as `detail.candidates`).
    pub checks: Vec<LocalCheck>,
}

/// The Group screen's data for one cohort.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupView {
    pub group: GroupInfo,
    pub members: Vec<Member>,
    pub pending: Vec<GroupChange>,
    pub history: Vec<GroupChange>,
}

/// The result of checking (dry-running) an import.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportCheck {
    pub path: PathBuf,
    pub name: String,
    pub good_rows: u64,
    pub bad_rows: u64,
    pub warnings: u64,
    pub diff: ImportDiff,
    /// The cohort exists already: this would be a new version.
    pub reimport: bool,
}

/// What the backend sends the UI.
#[derive(Clone, Debug)]
pub enum Update {
    /// [`Command::GenerateKeys`] succeeded.
    KeysGenerated(crate::net::auth::keys::GeneratedKeys),
    /// The result of [`Command::TestConnection`] for the profile named `profile`.
    ConnectionTested {
        profile: String,
        report: crate::net::auth::ConnectionReport,
    },
    /// The workspace is open.
    Ready {
        workspace: PathBuf,
        /// The embedded demo IIS, when running: its base URL and the sample cohort file.
        demo: Option<(String, PathBuf)>,
    },
    Cohorts(Arc<Vec<CohortInfo>>),
    Profiles(Arc<Vec<ServerProfile>>),
    Reviewer(Reviewer),
    Preview {
        path: PathBuf,
        preview: Arc<Preview>,
    },
    ImportChecked(Arc<ImportCheck>),
    Imported {
        cohort_id: i64,
        check: Arc<ImportCheck>,
    },
    Problems {
        cohort_id: i64,
        problems: Arc<Vec<ProblemRow>>,
    },
    Runs(Arc<Vec<RunView>>),
    Queue {
        cohort_id: i64,
        rows: Arc<Vec<QueueRow>>,
    },
    /// One row's decision changed (a decision, an undo or a bulk accept): patch the queue.
    RowDecision {
        row_id: i64,
        decision: Option<DecisionKind>,
    },
    Detail(Arc<DetailView>),
    Undone(DecisionInfo),
    BulkPreview(Arc<BulkAcceptPreview>),
    Group(Arc<GroupView>),
    Audit(Arc<Vec<AuditEntry>>),
    /// Something worked; say so where it happened.
    Notice {
        place: Place,
        text: String,
    },
    /// Something failed; what happened and what to do, where it happened.
    Error {
        place: Place,
        text: String,
    },
    /// A run event, for live progress text.
    Event(JobEvent),
}
