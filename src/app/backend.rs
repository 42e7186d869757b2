//! The backend: a thread with a tokio runtime that owns the [`Engine`], runs [`Command`]s in
//! order, runs match jobs in their own tasks, and sends [`Update`]s to the UI.
//!
//! Commands run one after another so that decisions and their undo apply in the order they were
//! made; match runs and their progress reporting run beside them. Every store call happens on a
//! blocking-pool thread, never on the UI thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::warn;

use super::{
    Command, DetailView, GroupView, ImportCheck, Place, ProfileAuth, Reviewer, Role, RunView,
    ServerProfile, Update, demo,
};
use crate::domain::JobState;
use crate::engine::{Engine, EngineConfig, EngineError, EventSink, JobEvent};
use crate::net::{CancelFlag, PollConfig, RetryConfig, StaticToken, TokenSource};
use crate::sim::faults::Faults;
use crate::store::StoreError;

/// The name of the profile that points at the embedded demo IIS.
pub const DEMO_PROFILE: &str = "Demo IIS (built in)";
/// The name of the profile made from `--server`.
pub const CLI_PROFILE: &str = "Server from the command line";

/// How to start the backend.
#[derive(Clone, Debug)]
pub struct StartOptions {
    /// The workspace file.
    pub db: PathBuf,
    /// A server to add as a profile (`--server`).
    pub server: Option<String>,
    /// Start the embedded demo IIS and put the sample cohort in `data_dir`.
    pub demo: bool,
    /// Where the sample cohort file is written.
    pub data_dir: PathBuf,
    pub reviewer: Reviewer,
    /// Patients in the demo registry.
    pub demo_patients: usize,
    /// Patients per second the demo IIS matches (`None`: as fast as it can).
    pub demo_rate: Option<usize>,
    /// Faults of the demo IIS (a few malformed result lines show the error outcome).
    pub demo_faults: Faults,
    /// Shorter polling and retry pauses (tests).
    pub fast: bool,
    /// Run the demo IIS with SMART Backend Services sign-in switched on; the demo profile
    /// gets a generated key pair (kept under `data_dir/keys`, readable only by the user).
    pub demo_smart: bool,
}

impl StartOptions {
    pub fn new(db: PathBuf, data_dir: PathBuf) -> StartOptions {
        StartOptions {
            db,
            server: None,
            demo: true,
            data_dir,
            reviewer: Reviewer::default(),
            demo_patients: demo::DEMO_PATIENTS,
            demo_rate: Some(150),
            demo_faults: demo::demo_faults(),
            fast: false,
            demo_smart: false,
        }
    }
}

/// A repaint request for the UI (`egui::Context::request_repaint`), kept abstract here.
pub type Repaint = Arc<dyn Fn() + Send + Sync>;

/// The UI's handle on the backend.
pub struct Backend {
    tx: mpsc::UnboundedSender<Command>,
    rx: std::sync::mpsc::Receiver<Update>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    /// Start the backend thread. Startup problems arrive as [`Update::Error`]s.
    pub fn start(opts: StartOptions, repaint: Repaint) -> Backend {
        let (tx, cmd_rx) = mpsc::unbounded_channel();
        let (out_tx, rx) = std::sync::mpsc::channel();
        let out = Out {
            tx: out_tx,
            repaint,
        };
        let thread = std::thread::Builder::new()
            .name("matchdesk-backend".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        out.error(
                            Place::App,
                            format!("matchdesk could not start its background worker: {e}"),
                        );
                        return;
                    }
                };
                rt.block_on(run(opts, cmd_rx, out));
                rt.shutdown_timeout(Duration::from_secs(2));
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!("could not start the backend thread: {e}");
                None
            }
        };
        Backend { tx, rx, thread }
    }

    /// Queue a command. Never blocks.
    pub fn send(&self, cmd: Command) {
        if self.tx.send(cmd).is_err() {
            warn!("the backend has stopped; a command was dropped");
        }
    }

    /// The next update, if one is waiting. Never blocks.
    pub fn try_recv(&self) -> Option<Update> {
        self.rx.try_recv().ok()
    }

    /// Wait up to `timeout` for the next update (tests).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Update> {
        self.rx.recv_timeout(timeout).ok()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // Closing the command channel ends the loop; running jobs stay resumable.
        let (tx, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone)]
struct Out {
    tx: std::sync::mpsc::Sender<Update>,
    repaint: Repaint,
}

impl Out {
    fn send(&self, u: Update) {
        let _ = self.tx.send(u);
        (self.repaint)();
    }
    fn error(&self, place: Place, text: impl Into<String>) {
        self.send(Update::Error {
            place,
            text: text.into(),
        });
    }
    fn notice(&self, place: Place, text: impl Into<String>) {
        self.send(Update::Notice {
            place,
            text: text.into(),
        });
    }
}

/// Live state of runs this process works on (what the store does not know).
#[derive(Default)]
struct Live {
    runs: HashMap<i64, LiveRun>,
}

struct LiveRun {
    cohort_id: i64,
    resumed: bool,
    started: Instant,
    done_at_start: u64,
    active: bool,
    progress: Vec<(i64, String)>,
    notes: Vec<super::RunNote>,
    bad_lines: u64,
}

struct Ctx {
    engine: Engine,
    opts: StartOptions,
    out: Out,
    reviewer: Reviewer,
    profiles: Vec<ServerProfile>,
    live: Arc<Mutex<Live>>,
    dirty: Arc<AtomicBool>,
    /// Running tasks per cohort, with their cancel flags.
    tasks: HashMap<i64, (CancelFlag, tokio::task::JoinHandle<()>)>,
    current_cohort: Option<i64>,
    _demo: Option<crate::sim::server::SimServer>,
}

/// Run `f` with the store on the blocking pool.
async fn blocking<T: Send + 'static>(
    engine: &Engine,
    f: impl FnOnce(&Engine) -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || f(&engine))
        .await
        .map_err(|e| EngineError::Invalid(format!("a background task failed: {e}")))?
}

fn user_text(e: &EngineError) -> String {
    match e {
        EngineError::Store(StoreError::Refused(t)) => t.clone(),
        e => e.to_string(),
    }
}

async fn run(opts: StartOptions, mut rx: mpsc::UnboundedReceiver<Command>, out: Out) {
    let mut cfg = EngineConfig {
        actor: opts.reviewer.name.clone(),
        ..EngineConfig::default()
    };
    if opts.fast {
        fast(&mut cfg);
    }
    if let Some(dir) = opts.db.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        out.error(
            Place::App,
            format!(
                "could not create the workspace folder {}: {e}. Choose another with --db.",
                dir.display()
            ),
        );
        return;
    }
    let engine = match Engine::open(&opts.db, cfg) {
        Ok(e) => e,
        Err(e) => {
            out.error(Place::App, e.to_string());
            return;
        }
    };
    let mut demo_url = None;
    let mut demo_auth = ProfileAuth::None;
    let mut demo_server = None;
    let mut sample = None;
    if opts.demo {
        let port = engine
            .store()
            .ok()
            .and_then(|s| s.profiles().ok())
            .and_then(|ps| ps.into_iter().find(|(n, _)| n == DEMO_PROFILE))
            .and_then(|(_, j)| serde_json::from_str::<ServerProfile>(&j).ok())
            .and_then(|p| url::Url::parse(&p.base_url).ok())
            .and_then(|u| u.port());
        match demo::start(&opts, port).await {
            Ok((server, path, smart)) => {
                demo_url = Some(server.base_url.to_string());
                if let Some(cfg) = smart {
                    demo_auth = ProfileAuth::Smart(cfg);
                }
                sample = Some(path);
                demo_server = Some(server);
            }
            Err(e) => out.error(
                Place::App,
                format!("the built-in demo IIS could not start: {e}. Real servers still work."),
            ),
        }
    }
    let mut ctx = Ctx {
        engine,
        reviewer: opts.reviewer.clone(),
        opts,
        out: out.clone(),
        profiles: Vec::new(),
        live: Arc::new(Mutex::new(Live::default())),
        dirty: Arc::new(AtomicBool::new(false)),
        tasks: HashMap::new(),
        current_cohort: None,
        _demo: demo_server,
    };
    let demo = demo_url.as_deref().map(|u| (u, demo_auth));
    if let Err(e) = ctx.setup_profiles(demo).await {
        out.error(Place::Settings, user_text(&e));
    }
    out.send(Update::Ready {
        workspace: ctx.opts.db.clone(),
        demo: demo_url.clone().zip(sample),
    });
    out.send(Update::Reviewer(ctx.reviewer.clone()));
    ctx.send_cohorts().await;
    ctx.send_runs().await;
    ctx.resume_unfinished().await;

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                ctx.handle(cmd).await;
            }
            _ = tick.tick() => {
                ctx.reap_finished().await;
                if ctx.dirty.swap(false, Ordering::Relaxed) {
                    ctx.send_runs().await;
                }
            }
        }
    }
    // Leave running jobs resumable: interrupt them, do not cancel them on the server.
    for (flag, handle) in ctx.tasks.into_values() {
        flag.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(3), handle).await;
    }
}

fn fast(cfg: &mut EngineConfig) {
    cfg.chunk_retry_pause = Duration::from_millis(20);
    cfg.retry = RetryConfig {
        max_retries: 8,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        base: 2.0,
        retry_timeout: Duration::from_secs(60),
    };
    cfg.poll = PollConfig {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
        max_wait: Duration::from_secs(120),
    };
}

impl Ctx {
    fn actor(&self) -> String {
        self.reviewer.name.clone()
    }

    fn engine_for(&self, profile: &ServerProfile) -> Engine {
        let base = self.engine.config();
        let mut cfg = EngineConfig {
            chunk_size: profile.chunk_size.max(1),
            concurrency: profile.concurrency.max(1),
            options: profile.options.clone(),
            rules: profile.rules.clone(),
            actor: self.actor(),
            ..base.clone()
        };
        if self.opts.fast {
            fast(&mut cfg);
        }
        self.engine.with_config(cfg)
    }

    fn token_for(&self, profile: &ServerProfile) -> Result<Option<Arc<dyn TokenSource>>, String> {
        match &profile.auth {
            ProfileAuth::None => Ok(None),
            ProfileAuth::Smart(cfg) => {
                let base = url::Url::parse(profile.base_url.trim()).map_err(|e| {
                    format!(
                        "the profile \"{}\" has an address that is not a web address: {e}",
                        profile.name
                    )
                })?;
                match crate::net::SmartToken::new(&base, cfg) {
                    Ok(t) => Ok(Some(Arc::new(t))),
                    Err(e) => Err(format!(
                        "the profile \"{}\" cannot sign in: {e}",
                        profile.name
                    )),
                }
            }
            ProfileAuth::BearerFromEnv { variable } => match std::env::var(variable) {
                Ok(t) if !t.trim().is_empty() => Ok(Some(Arc::new(StaticToken::new(t.trim())))),
                _ => Err(format!(
                    "the profile \"{}\" takes its access token from the environment variable {variable}, which is not set. Set it before starting matchdesk, or change the profile's sign-in on the Settings screen.",
                    profile.name
                )),
            },
        }
    }

    fn profile_for_url(&self, url: &str) -> Option<&ServerProfile> {
        self.profiles.iter().find(|p| p.base_url == url)
    }

    /// Create or update the demo profile (its address and, as the demo IIS was started with or
    /// without SMART sign-in, its auth) and the `--server` profile.
    async fn setup_profiles(
        &mut self,
        demo: Option<(&str, ProfileAuth)>,
    ) -> Result<(), EngineError> {
        let mut wanted = Vec::new();
        if let Some((url, auth)) = demo {
            wanted.push((DEMO_PROFILE, url.to_string(), Some(auth)));
        }
        if let Some(url) = &self.opts.server {
            let parsed = url::Url::parse(url).map_err(|e| {
                EngineError::Invalid(format!("--server {url} is not a web address: {e}"))
            })?;
            crate::net::check_base_url(&parsed)?;
            wanted.push((CLI_PROFILE, url.clone(), None));
        }
        let actor = self.actor();
        let profiles = blocking(&self.engine, move |e| {
            let mut store = e.store()?;
            let existing = store.profiles()?;
            for (name, url, auth) in wanted {
                let mut p = existing
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, j)| serde_json::from_str::<ServerProfile>(j).ok())
                    .unwrap_or_else(|| ServerProfile {
                        name: name.to_string(),
                        ..ServerProfile::default()
                    });
                let auth_changed = auth.as_ref().is_some_and(|a| *a != p.auth);
                if p.base_url != url || auth_changed {
                    p.base_url = url;
                    if let Some(a) = auth {
                        p.auth = a;
                    }
                    let json = serde_json::to_string(&p)
                        .map_err(|e| EngineError::Invalid(e.to_string()))?;
                    store.save_profile(name, &json, &actor)?;
                }
            }
            let mut out = Vec::new();
            for (_, json) in store.profiles()? {
                if let Ok(p) = serde_json::from_str::<ServerProfile>(&json) {
                    out.push(p);
                }
            }
            Ok(out)
        })
        .await?;
        self.profiles = profiles;
        self.out
            .send(Update::Profiles(Arc::new(self.profiles.clone())));
        Ok(())
    }

    async fn send_cohorts(&self) {
        match blocking(&self.engine, |e| Ok(e.store()?.cohorts()?)).await {
            Ok(c) => self.out.send(Update::Cohorts(Arc::new(c))),
            Err(e) => self.out.error(Place::Cohorts, user_text(&e)),
        }
    }

    async fn send_runs(&self) {
        let live = self.live.clone();
        let res = blocking(&self.engine, move |e| {
            let store = e.store()?;
            let cohorts: HashMap<i64, String> = store
                .cohorts()?
                .into_iter()
                .map(|c| (c.id, c.name))
                .collect();
            let mut out = Vec::new();
            for job in store.jobs(None)? {
                let chunks = store.chunks(job.id)?;
                let p = store.job_progress(job.id)?;
                let live = live.lock().map_err(|_| EngineError::Poisoned)?;
                let l = live.runs.get(&job.id);
                out.push(RunView {
                    cohort: cohorts.get(&job.cohort_id).cloned().unwrap_or_default(),
                    chunks,
                    done_rows: p.done_rows,
                    total_rows: p.total_rows,
                    outcomes: p.outcomes,
                    histogram: p.histogram,
                    resumed: l.is_some_and(|l| l.resumed),
                    active: l.is_some_and(|l| l.active),
                    active_secs: l
                        .filter(|l| l.active)
                        .map(|l| l.started.elapsed().as_secs_f64()),
                    done_at_start: l.map(|l| l.done_at_start).unwrap_or(0),
                    progress: l.map(|l| l.progress.clone()).unwrap_or_default(),
                    notes: l.map(|l| l.notes.clone()).unwrap_or_default(),
                    bad_lines: l.map(|l| l.bad_lines).unwrap_or(0),
                    job,
                });
            }
            Ok(out)
        })
        .await;
        match res {
            Ok(r) => self.out.send(Update::Runs(Arc::new(r))),
            Err(e) => self.out.error(Place::Runs, user_text(&e)),
        }
    }

    fn events(&self, cohort_id: i64) -> EventSink {
        let live = self.live.clone();
        let dirty = self.dirty.clone();
        let out = self.out.clone();
        Arc::new(move |ev: JobEvent| {
            if let Ok(mut live) = live.lock() {
                match &ev {
                    JobEvent::JobStarted {
                        job_id,
                        resumed,
                        done_rows,
                        ..
                    } => {
                        live.runs.insert(
                            *job_id,
                            LiveRun {
                                cohort_id,
                                resumed: *resumed,
                                started: Instant::now(),
                                done_at_start: *done_rows,
                                active: true,
                                progress: Vec::new(),
                                notes: Vec::new(),
                                bad_lines: 0,
                            },
                        );
                    }
                    JobEvent::ChunkProgress {
                        job_id,
                        chunk_id,
                        text,
                    } => {
                        if let Some(r) = live.runs.get_mut(job_id) {
                            match r.progress.iter_mut().find(|(c, _)| c == chunk_id) {
                                Some(slot) => slot.1 = text.clone(),
                                None => r.progress.push((*chunk_id, text.clone())),
                            }
                        }
                    }
                    JobEvent::Retrying {
                        job_id, message, ..
                    }
                    | JobEvent::BadLine {
                        job_id, message, ..
                    } => {
                        let bad = matches!(ev, JobEvent::BadLine { .. });
                        let note = if bad {
                            super::RunNote::BadLine(message.clone())
                        } else {
                            super::RunNote::Retrying(message.clone())
                        };
                        if let Some(r) = live.runs.get_mut(job_id) {
                            r.bad_lines += u64::from(bad);
                            r.notes.push(note);
                            if r.notes.len() > 20 {
                                r.notes.remove(0);
                            }
                        }
                    }
                    JobEvent::JobFinished { job_id, .. } => {
                        if let Some(r) = live.runs.get_mut(job_id) {
                            r.active = false;
                        }
                    }
                    _ => {}
                }
            }
            dirty.store(true, Ordering::Relaxed);
            out.send(Update::Event(ev));
        })
    }

    /// Pick up jobs that were running when matchdesk last stopped.
    async fn resume_unfinished(&mut self) {
        let jobs = match blocking(&self.engine, |e| Ok(e.store()?.jobs(None)?)).await {
            Ok(j) => j,
            Err(e) => {
                self.out.error(Place::Runs, user_text(&e));
                return;
            }
        };
        let mut cohorts: Vec<(i64, String)> = jobs
            .iter()
            .filter(|j| j.state == JobState::Running)
            .map(|j| (j.cohort_id, j.server_url.clone()))
            .collect();
        cohorts.dedup();
        for (cohort_id, url) in cohorts {
            let Some(profile) = self.profile_for_url(&url).cloned().or_else(|| {
                // A server without a profile (e.g. started from the CLI): resume with defaults.
                Some(ServerProfile {
                    name: url.clone(),
                    base_url: url.clone(),
                    ..ServerProfile::default()
                })
            }) else {
                continue;
            };
            if self.tasks.contains_key(&cohort_id) {
                continue;
            }
            self.out.notice(
                Place::Runs,
                "A match run that was interrupted when matchdesk closed is being resumed.",
            );
            self.spawn_run(cohort_id, &profile);
        }
    }

    fn spawn_run(&mut self, cohort_id: i64, profile: &ServerProfile) {
        let token = match self.token_for(profile) {
            Ok(t) => t,
            Err(msg) => {
                self.out.error(Place::Runs, msg);
                return;
            }
        };
        let engine = self.engine_for(profile);
        let cancel = CancelFlag::new();
        let events = self.events(cohort_id);
        let out = self.out.clone();
        let url = profile.base_url.clone();
        let flag = cancel.clone();
        let dirty = self.dirty.clone();
        let handle = tokio::spawn(async move {
            let res = engine
                .run_cohort(cohort_id, &url, token, events, flag.clone())
                .await;
            match res {
                Ok(jobs) => {
                    if jobs.is_empty() {
                        out.notice(
                            Place::Runs,
                            "Every row of this cohort already has a result; nothing to send.",
                        );
                    }
                    for (id, state) in jobs {
                        match state {
                            JobState::Completed => {
                                out.notice(Place::Runs, format!("Run {id} finished."))
                            }
                            JobState::CompletedWithErrors => out.error(
                                Place::Runs,
                                format!(
                                    "Run {id} finished, but not every row got a usable answer: those rows are under Error in the Review queue, where they can be corrected and sent again. If a part of the run failed (marked ✖ below), Start matching sends it again."
                                ),
                            ),
                            JobState::Failed => out.error(
                                Place::Runs,
                                format!(
                                    "Run {id} failed. See the chunk errors below; start the run again to retry."
                                ),
                            ),
                            _ => {}
                        }
                    }
                }
                Err(e) => out.error(
                    Place::Runs,
                    format!("The match run stopped: {}", user_text(&e)),
                ),
            }
            let actor = engine.config().actor.clone();
            let proposed = blocking(&engine, move |e| {
                Ok(e.store()?.propose_group_changes(cohort_id, &actor)?)
            })
            .await;
            if let Err(e) = proposed {
                out.error(Place::Group, user_text(&e));
            }
            dirty.store(true, Ordering::Relaxed);
        });
        self.tasks.insert(cohort_id, (cancel, handle));
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Forget finished run tasks and refresh what they changed.
    async fn reap_finished(&mut self) {
        let done: Vec<i64> = self
            .tasks
            .iter()
            .filter(|(_, (_, h))| h.is_finished())
            .map(|(c, _)| *c)
            .collect();
        for cohort_id in done {
            self.tasks.remove(&cohort_id);
            if let Ok(mut live) = self.live.lock() {
                for r in live.runs.values_mut() {
                    if r.cohort_id == cohort_id {
                        r.active = false;
                    }
                }
            }
            self.send_runs().await;
            if self.current_cohort == Some(cohort_id) {
                self.send_queue(cohort_id).await;
                self.send_group(cohort_id).await;
            }
        }
    }

    async fn send_queue(&self, cohort_id: i64) {
        match blocking(&self.engine, move |e| Ok(e.store()?.queue(cohort_id)?)).await {
            Ok(rows) => self.out.send(Update::Queue {
                cohort_id,
                rows: Arc::new(rows),
            }),
            Err(e) => self.out.error(Place::Review, user_text(&e)),
        }
    }

    async fn send_group(&self, cohort_id: i64) {
        let res = blocking(&self.engine, move |e| {
            let mut store = e.store()?;
            let group = store.group_for_cohort(cohort_id)?;
            Ok(GroupView {
                members: store.members(group.id)?,
                pending: store.group_changes(group.id, true, 1_000_000)?,
                history: store.group_changes(group.id, false, 5_000)?,
                group,
            })
        })
        .await;
        match res {
            Ok(g) => self.out.send(Update::Group(Arc::new(g))),
            Err(e) => self.out.error(Place::Group, user_text(&e)),
        }
    }

    async fn send_problems(&self, cohort_id: i64) {
        let res = blocking(&self.engine, move |e| {
            let store = e.store()?;
            let version = store
                .cohorts()?
                .into_iter()
                .find(|c| c.id == cohort_id)
                .and_then(|c| c.current_version);
            match version {
                Some(v) => Ok(store.import_problems(v)?),
                None => Ok(Vec::new()),
            }
        })
        .await;
        match res {
            Ok(p) => self.out.send(Update::Problems {
                cohort_id,
                problems: Arc::new(p),
            }),
            Err(e) => self.out.error(Place::Cohorts, user_text(&e)),
        }
    }

    /// The side-by-side detail of a row. Its local checks use the rules of the server profile
    /// whose run triaged the row (the rules that put it in the queue), else the defaults.
    async fn send_detail(&self, row_id: i64) {
        let default_rules = self.engine.config().rules.clone();
        let by_server: HashMap<String, crate::matching::TriageRules> = self
            .profiles
            .iter()
            .map(|p| (p.base_url.clone(), p.rules.clone()))
            .collect();
        let res = blocking(&self.engine, move |e| {
            let store = e.store()?;
            let detail = store.row_detail(row_id)?;
            let rules = store
                .triaged_by(row_id)?
                .and_then(|url| by_server.get(&url).cloned())
                .unwrap_or(default_rules);
            let checks = detail
                .candidates
                .iter()
                .map(|c| crate::matching::local_check(&detail.submitted, &c.demographics, &rules))
                .collect();
            Ok(DetailView { detail, checks })
        })
        .await;
        match res {
            Ok(d) => self.out.send(Update::Detail(Arc::new(d))),
            Err(e) => self.out.error(Place::Review, user_text(&e)),
        }
    }

    async fn send_audit(&self, filter: crate::store::AuditFilter) {
        match blocking(&self.engine, move |e| {
            Ok(e.store()?.audit_search(&filter)?)
        })
        .await
        {
            Ok(a) => self.out.send(Update::Audit(Arc::new(a))),
            Err(e) => self.out.error(Place::Audit, user_text(&e)),
        }
    }

    fn require_coordinator(&self) -> bool {
        if self.reviewer.role == Role::Coordinator {
            return true;
        }
        self.out.error(
            Place::Group,
            "Only a coordinator can approve or reject Group changes. If that is your job, choose the Coordinator role on the Settings screen.",
        );
        false
    }

    async fn handle(&mut self, cmd: Command) {
        let actor = self.actor();
        match cmd {
            Command::PreviewFile { path } => {
                let p = path.clone();
                match tokio::task::spawn_blocking(move || crate::import::preview(&p, 20)).await {
                    Ok(Ok(preview)) => self.out.send(Update::Preview {
                        path,
                        preview: Arc::new(preview),
                    }),
                    Ok(Err(e)) => self.out.error(Place::Cohorts, e.to_string()),
                    Err(e) => self.out.error(Place::Cohorts, e.to_string()),
                }
            }
            Command::CheckImport {
                path,
                mapping,
                name,
            }
            | Command::Import {
                path,
                mapping,
                name,
            } if name.trim().is_empty() || !path.exists() => {
                let _ = mapping;
                if name.trim().is_empty() {
                    self.out
                        .error(Place::Cohorts, "Give the cohort a name before importing.");
                } else {
                    self.out.error(
                        Place::Cohorts,
                        format!(
                            "The file {} is no longer there. Open it again.",
                            path.display()
                        ),
                    );
                }
            }
            Command::CheckImport {
                path,
                mapping,
                name,
            } => {
                let (p, n) = (path.clone(), name.clone());
                let res = blocking(&self.engine, move |e| {
                    let exists = e.store()?.cohort_by_name(&n)?.is_some();
                    Ok((e.import_dry_run(&p, Some(&mapping), Some(&n))?, exists))
                })
                .await;
                match res {
                    Ok((r, reimport)) => {
                        self.out.send(Update::ImportChecked(Arc::new(ImportCheck {
                            path,
                            name,
                            good_rows: r.summary.good_rows,
                            bad_rows: r.summary.bad_rows,
                            warnings: r.summary.warnings,
                            diff: r.diff,
                            reimport,
                        })))
                    }
                    Err(e) => self.out.error(Place::Cohorts, user_text(&e)),
                }
            }
            Command::Import {
                path,
                mapping,
                name,
            } => {
                let (p, n) = (path.clone(), name.clone());
                let engine = self.engine.with_config(EngineConfig {
                    actor: actor.clone(),
                    ..self.engine.config().clone()
                });
                let res = blocking(&engine, move |e| {
                    let exists = e.store()?.cohort_by_name(&n)?.is_some();
                    let r = e.import(&p, Some(&mapping), Some(&n))?;
                    // A re-import may make Group members leave.
                    e.store()?
                        .propose_group_changes(r.cohort_id, &e.config().actor)?;
                    Ok((r, exists))
                })
                .await;
                match res {
                    Ok((r, reimport)) => {
                        let check = Arc::new(ImportCheck {
                            path,
                            name: name.clone(),
                            good_rows: r.summary.good_rows,
                            bad_rows: r.summary.bad_rows,
                            warnings: r.summary.warnings,
                            diff: r.diff,
                            reimport,
                        });
                        self.out.send(Update::Imported {
                            cohort_id: r.cohort_id,
                            check,
                        });
                        self.out.notice(
                            Place::Cohorts,
                            format!(
                                "Imported \"{name}\": {} rows ready to match, {} bad rows kept aside.",
                                r.summary.good_rows, r.summary.bad_rows
                            ),
                        );
                        self.send_cohorts().await;
                        self.select(r.cohort_id).await;
                    }
                    Err(e) => self.out.error(
                        Place::Cohorts,
                        format!("Nothing was imported: {}", user_text(&e)),
                    ),
                }
            }
            Command::SelectCohort { cohort_id } => self.select(cohort_id).await,
            Command::ExportBadRows { cohort_id, path } => {
                let p = path.clone();
                let res = blocking(&self.engine, move |e| {
                    let store = e.store()?;
                    let version = store
                        .cohorts()?
                        .into_iter()
                        .find(|c| c.id == cohort_id)
                        .and_then(|c| c.current_version)
                        .ok_or_else(|| {
                            EngineError::Invalid("the cohort has no import yet".into())
                        })?;
                    let problems = store.import_problems(version)?;
                    write_csv(
                        &p,
                        &["line", "column", "value", "reason", "severity"],
                        problems.iter().map(|r| {
                            vec![
                                r.line.to_string(),
                                r.column.clone().unwrap_or_default(),
                                r.value.clone().unwrap_or_default(),
                                r.reason.clone(),
                                r.severity.clone(),
                            ]
                        }),
                    )?;
                    Ok(problems.len())
                })
                .await;
                match res {
                    Ok(n) => self.out.notice(
                        Place::Cohorts,
                        format!("Saved {n} problems to {}.", path.display()),
                    ),
                    Err(e) => self.out.error(Place::Cohorts, user_text(&e)),
                }
            }
            Command::StartRun { cohort_id, profile } => {
                if self.tasks.contains_key(&cohort_id) {
                    self.out.error(
                        Place::Runs,
                        "This cohort is already being matched. Wait for the run to finish, or cancel it.",
                    );
                    return;
                }
                let Some(p) = self.profiles.iter().find(|p| p.name == profile).cloned() else {
                    self.out.error(
                        Place::Runs,
                        format!("There is no server profile named \"{profile}\". Add one on the Settings screen."),
                    );
                    return;
                };
                self.spawn_run(cohort_id, &p);
                self.send_runs().await;
            }
            Command::CancelRun { job_id } => {
                let job = match blocking(&self.engine, move |e| Ok(e.store()?.job(job_id)?)).await {
                    Ok(j) => j,
                    Err(e) => {
                        self.out.error(Place::Runs, user_text(&e));
                        return;
                    }
                };
                if let Some((flag, handle)) = self.tasks.remove(&job.cohort_id) {
                    flag.cancel();
                    let _ = tokio::time::timeout(Duration::from_secs(30), handle).await;
                }
                let token = self
                    .profile_for_url(&job.server_url)
                    .and_then(|p| self.token_for(p).ok())
                    .flatten();
                let engine = self.engine.with_config(EngineConfig {
                    actor: actor.clone(),
                    ..self.engine.config().clone()
                });
                match engine
                    .cancel_job(job_id, token, Some("cancelled in the workbench"))
                    .await
                {
                    Ok(()) => self.out.notice(
                        Place::Runs,
                        format!(
                            "Run {job_id} was cancelled. Rows that already have results keep them."
                        ),
                    ),
                    Err(e) => self.out.error(Place::Runs, user_text(&e)),
                }
                if let Ok(mut live) = self.live.lock()
                    && let Some(r) = live.runs.get_mut(&job_id)
                {
                    r.active = false;
                }
                self.send_runs().await;
            }
            Command::LoadDetail { row_id } => self.send_detail(row_id).await,
            Command::Decide {
                row_id,
                kind,
                rank,
                note,
            } => {
                let a = actor.clone();
                let res = blocking(&self.engine, move |e| {
                    Ok(e.store()?.decide(row_id, kind, rank, note.as_deref(), &a)?)
                })
                .await;
                match res {
                    Ok(d) => {
                        self.out.send(Update::RowDecision {
                            row_id,
                            decision: Some(d.kind),
                        });
                        self.send_detail(row_id).await;
                        if let Some(c) = self.current_cohort {
                            self.send_group(c).await;
                        }
                    }
                    Err(e) => self.out.error(
                        Place::Review,
                        format!("The decision was not saved: {}", user_text(&e)),
                    ),
                }
            }
            Command::Undo => {
                let a = actor.clone();
                let res = blocking(&self.engine, move |e| {
                    let undone = e.store()?.undo_last_decision(&a)?;
                    let current = match &undone {
                        Some(d) => e
                            .store()?
                            .row_detail(d.row_id)?
                            .decisions
                            .into_iter()
                            .find(|x| x.undone_at.is_none())
                            .map(|x| x.kind),
                        None => None,
                    };
                    Ok((undone, current))
                })
                .await;
                match res {
                    Ok((Some(d), current)) => {
                        self.out.send(Update::RowDecision {
                            row_id: d.row_id,
                            decision: current,
                        });
                        self.out.send(Update::Undone(d.clone()));
                        self.out.notice(
                            Place::Review,
                            format!("Undid: {} (row {}).", d.kind.label(), d.row_id),
                        );
                        self.send_detail(d.row_id).await;
                        if let Some(c) = self.current_cohort {
                            self.send_group(c).await;
                        }
                    }
                    Ok((None, _)) => self
                        .out
                        .notice(Place::Review, "There is nothing of yours left to undo."),
                    Err(e) => self
                        .out
                        .error(Place::Review, format!("Could not undo: {}", user_text(&e))),
                }
            }
            Command::BulkPreview {
                cohort_id,
                min_score,
            } => {
                match blocking(&self.engine, move |e| {
                    Ok(e.store()?.bulk_accept_preview(cohort_id, min_score, 10)?)
                })
                .await
                {
                    Ok(p) => self.out.send(Update::BulkPreview(Arc::new(p))),
                    Err(e) => self.out.error(Place::Review, user_text(&e)),
                }
            }
            Command::BulkAccept {
                cohort_id,
                min_score,
            } => {
                let a = actor.clone();
                match blocking(&self.engine, move |e| {
                    Ok(e.store()?.bulk_accept(cohort_id, min_score, &a)?)
                })
                .await
                {
                    Ok(n) => {
                        self.out.notice(
                            Place::Review,
                            format!("Accepted {n} rows at score ≥ {min_score:.2}. Their Group additions wait for a coordinator."),
                        );
                        self.send_queue(cohort_id).await;
                        self.send_group(cohort_id).await;
                    }
                    Err(e) => self.out.error(Place::Review, user_text(&e)),
                }
            }
            Command::Resubmit {
                row_id,
                corrected,
                why,
                profile,
            } => {
                let a = actor.clone();
                let res = blocking(&self.engine, move |e| {
                    let mut store = e.store()?;
                    store.edit_row_for_resubmit(row_id, &corrected, Some(&why), &a)?;
                    Ok(store.row_detail(row_id)?.cohort_id)
                })
                .await;
                match res {
                    Ok(cohort_id) => {
                        self.out.notice(
                            Place::Review,
                            "Saved the corrected record; it is being matched again.",
                        );
                        self.send_queue(cohort_id).await;
                        if let Some(p) = self.profiles.iter().find(|p| p.name == profile).cloned() {
                            if !self.tasks.contains_key(&cohort_id) {
                                self.spawn_run(cohort_id, &p);
                            }
                        } else {
                            self.out.error(
                                Place::Review,
                                "The corrected record is saved but no server was chosen; start a run on the Match runs screen.",
                            );
                        }
                    }
                    Err(e) => self.out.error(Place::Review, user_text(&e)),
                }
            }
            Command::DecideChanges {
                cohort_id,
                ids,
                approve,
                reason,
            } => {
                if !self.require_coordinator() {
                    return;
                }
                let a = actor.clone();
                match blocking(&self.engine, move |e| {
                    Ok(e.store()?
                        .decide_group_changes(&ids, approve, reason.as_deref(), &a)?)
                })
                .await
                {
                    Ok(n) => {
                        self.out.notice(
                            Place::Group,
                            format!(
                                "{} {n} change{}.",
                                if approve { "Approved" } else { "Rejected" },
                                if n == 1 { "" } else { "s" }
                            ),
                        );
                        self.send_group(cohort_id).await;
                    }
                    Err(e) => self.out.error(Place::Group, user_text(&e)),
                }
            }
            Command::ProposeRemoval {
                cohort_id,
                iis_id,
                reason,
            } => {
                let a = actor.clone();
                match blocking(&self.engine, move |e| {
                    let mut store = e.store()?;
                    let g = store.group_for_cohort(cohort_id)?;
                    Ok(store.propose_removal(g.id, &iis_id, &reason, &a)?)
                })
                .await
                {
                    Ok(_) => {
                        self.out.notice(
                            Place::Group,
                            "The removal is proposed; a coordinator approves it under Pending changes.",
                        );
                        self.send_group(cohort_id).await;
                    }
                    Err(e) => self.out.error(Place::Group, user_text(&e)),
                }
            }
            Command::SetIisGroupId {
                cohort_id,
                iis_group_id,
            } => {
                let a = actor.clone();
                match blocking(&self.engine, move |e| {
                    let mut store = e.store()?;
                    let g = store.group_for_cohort(cohort_id)?;
                    Ok(store.set_iis_group_id(
                        g.id,
                        iis_group_id
                            .as_deref()
                            .map(str::trim)
                            .filter(|s| !s.is_empty()),
                        &a,
                    )?)
                })
                .await
                {
                    Ok(()) => {
                        self.out.notice(Place::Group, "Saved the IIS Group id.");
                        self.send_group(cohort_id).await;
                    }
                    Err(e) => self.out.error(Place::Group, user_text(&e)),
                }
            }
            Command::ExportGroup {
                cohort_id,
                path,
                fhir,
            } => {
                let p = path.clone();
                let res = blocking(&self.engine, move |e| {
                    let mut store = e.store()?;
                    let g = store.group_for_cohort(cohort_id)?;
                    let members = store.members(g.id)?;
                    if fhir {
                        super::group_export::write_fhir(&p, &g, &members)
                    } else {
                        super::group_export::write_csv(&p, &members)
                    }
                    .map_err(|source| StoreError::Export {
                        path: p.clone(),
                        source,
                    })?;
                    Ok(members.len())
                })
                .await;
                match res {
                    Ok(n) => self.out.notice(
                        Place::Group,
                        format!("Saved {n} members to {}.", path.display()),
                    ),
                    Err(e) => self.out.error(Place::Group, user_text(&e)),
                }
            }
            Command::LoadAudit(filter) => self.send_audit(filter).await,
            Command::ExportAudit { filter, path } => {
                let p = path.clone();
                let res = blocking(&self.engine, move |e| {
                    let entries = e.store()?.audit_search(&filter)?;
                    write_csv(
                        &p,
                        &[
                            "id",
                            "at",
                            "actor",
                            "action",
                            "entity",
                            "entity_id",
                            "details",
                            "why",
                        ],
                        entries.iter().map(|a| {
                            vec![
                                a.id.to_string(),
                                a.at.clone(),
                                a.actor.clone(),
                                a.action.clone(),
                                a.entity.clone(),
                                a.entity_id.clone().unwrap_or_default(),
                                a.details.clone().unwrap_or_default(),
                                a.why.clone().unwrap_or_default(),
                            ]
                        }),
                    )?;
                    Ok(entries.len())
                })
                .await;
                match res {
                    Ok(n) => self.out.notice(
                        Place::Audit,
                        format!("Saved {n} audit entries to {}.", path.display()),
                    ),
                    Err(e) => self.out.error(Place::Audit, user_text(&e)),
                }
            }
            Command::GenerateKeys { alg, dir } => {
                let res = tokio::task::spawn_blocking(move || {
                    crate::net::auth::keys::generate(alg, None, &dir)
                })
                .await;
                match res {
                    Ok(Ok(g)) => {
                        self.out.notice(
                            Place::Settings,
                            format!(
                                "Made a {} key pair \"{}\". Give {} to the IIS when it registers matchdesk; keep {} private.",
                                g.alg, g.kid, g.jwks.display(), g.private_key.display()
                            ),
                        );
                        self.out.send(Update::KeysGenerated(g));
                    }
                    Ok(Err(e)) => self.out.error(Place::Settings, e.to_string()),
                    Err(e) => self
                        .out
                        .error(Place::Settings, format!("could not make the key pair: {e}")),
                }
            }
            Command::TestConnection(profile) => {
                let out = self.out.clone();
                let name = profile.name.clone();
                tokio::spawn(async move {
                    let report = test_profile_connection(&profile).await;
                    out.send(Update::ConnectionTested {
                        profile: name,
                        report,
                    });
                });
            }
            Command::SaveProfile(profile) => {
                let problems = profile.problems();
                if !problems.is_empty() {
                    self.out.error(Place::Settings, problems.join(" "));
                    return;
                }
                let json = match serde_json::to_string(&*profile) {
                    Ok(j) => j,
                    Err(e) => {
                        self.out.error(Place::Settings, e.to_string());
                        return;
                    }
                };
                let name = profile.name.clone();
                let a = actor.clone();
                match blocking(&self.engine, move |e| {
                    Ok(e.store()?.save_profile(&name, &json, &a)?)
                })
                .await
                {
                    Ok(()) => {
                        self.profiles.retain(|p| p.name != profile.name);
                        self.profiles.push(*profile);
                        self.profiles.sort_by(|a, b| a.name.cmp(&b.name));
                        self.out
                            .send(Update::Profiles(Arc::new(self.profiles.clone())));
                        self.out
                            .notice(Place::Settings, "Saved the server profile.");
                    }
                    Err(e) => self.out.error(Place::Settings, user_text(&e)),
                }
            }
            Command::DeleteProfile(name) => {
                let n = name.clone();
                let a = actor.clone();
                match blocking(&self.engine, move |e| {
                    Ok(e.store()?.delete_profile(&n, &a)?)
                })
                .await
                {
                    Ok(()) => {
                        self.profiles.retain(|p| p.name != name);
                        self.out
                            .send(Update::Profiles(Arc::new(self.profiles.clone())));
                    }
                    Err(e) => self.out.error(Place::Settings, user_text(&e)),
                }
            }
            Command::SetReviewer(r) => {
                if r.name.trim().is_empty() {
                    self.out.error(
                        Place::Settings,
                        "Enter your name: it goes into the audit log.",
                    );
                    return;
                }
                self.reviewer = r.clone();
                self.out.send(Update::Reviewer(r));
            }
        }
    }

    async fn select(&mut self, cohort_id: i64) {
        self.current_cohort = Some(cohort_id);
        self.send_problems(cohort_id).await;
        self.send_queue(cohort_id).await;
        self.send_group(cohort_id).await;
    }
}

/// Write a CSV file with a header.
fn write_csv(
    path: &Path,
    header: &[&str],
    rows: impl Iterator<Item = Vec<String>>,
) -> Result<(), EngineError> {
    let err = |e: std::io::Error| {
        EngineError::Store(StoreError::Export {
            path: path.to_path_buf(),
            source: e,
        })
    };
    let mut w = csv::Writer::from_path(path).map_err(|e| err(std::io::Error::other(e)))?;
    w.write_record(header)
        .map_err(|e| err(std::io::Error::other(e)))?;
    for r in rows {
        w.write_record(&r)
            .map_err(|e| err(std::io::Error::other(e)))?;
    }
    w.flush().map_err(err)
}

/// Check a profile's sign-in the way a run would use it: for SMART, discovery, a token request
/// and one authorized request; otherwise one request to `[base]/metadata`.
async fn test_profile_connection(profile: &ServerProfile) -> crate::net::auth::ConnectionReport {
    use crate::net::auth::{ConnectionReport, ConnectionStep};
    let base = match url::Url::parse(profile.base_url.trim()) {
        Ok(u) => u,
        Err(e) => {
            return ConnectionReport {
                steps: vec![ConnectionStep {
                    what: "Server address".into(),
                    ok: false,
                    detail: format!(
                        "\"{}\" is not a web address ({e}).",
                        profile.base_url.trim()
                    ),
                }],
            };
        }
    };
    if let Err(e) = crate::net::check_base_url(&base) {
        return ConnectionReport {
            steps: vec![ConnectionStep {
                what: "Server address".into(),
                ok: false,
                detail: e.to_string(),
            }],
        };
    }
    match &profile.auth {
        ProfileAuth::Smart(cfg) => crate::net::auth::test_connection(&base, cfg).await,
        other => {
            let mut steps = Vec::new();
            let token = match other {
                ProfileAuth::BearerFromEnv { variable } => match std::env::var(variable) {
                    Ok(t) if !t.trim().is_empty() => {
                        steps.push(ConnectionStep {
                            what: "Access token".into(),
                            ok: true,
                            detail: format!("read from the environment variable {variable}"),
                        });
                        Some(t.trim().to_string())
                    }
                    _ => {
                        steps.push(ConnectionStep {
                            what: "Access token".into(),
                            ok: false,
                            detail: format!("the environment variable {variable} is not set; set it before starting matchdesk"),
                        });
                        return ConnectionReport { steps };
                    }
                },
                _ => None,
            };
            steps.extend(
                crate::net::auth::test_bearer_connection(&base, token.as_deref())
                    .await
                    .steps,
            );
            ConnectionReport { steps }
        }
    }
}
