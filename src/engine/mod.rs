//! The engine: imports cohorts and runs match jobs, resuming them after any interruption.
//!
//! It owns the *workflow* — file → rows → chunks → kick-off → poll → download → ingest → triage →
//! cleanup — and nothing else: parsing lives in [`crate::import`] and [`crate::fhir`], HTTP in
//! [`crate::net`], persistence in [`crate::store`], decisions in [`crate::matching`]. Every step
//! is recorded in the store before the next begins, so a job can be picked up from the
//! workspace file alone: a chunk whose status URL is known is polled again (never resubmitted), a
//! half-ingested file is downloaded again and its already-stored lines skipped, and results are
//! written per row so that re-ingesting never duplicates candidates.
//!
//! Callers (CLI, GUI) observe a run through [`JobEvent`]s and stop it with a
//! [`CancelFlag`](crate::net::CancelFlag): an *interrupt* leaves the job resumable; a *cancel*
//! ([`Engine::cancel_job`]) also DELETEs the server-side jobs.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tracing::{info, warn};
use url::Url;

use crate::domain::{ChunkState, Demographics, JobState, MatchOptions};
use crate::fhir::bundle::parse_match_bundle;
use crate::fhir::manifest::{Manifest, parse_manifest};
use crate::import::{self, ImportError, ImportItem, ImportSummary, Mapping};
use crate::matching::{self, TriageRules};
use crate::net::{
    AcceptMode, BulkMatchClient, CancelFlag, ClientConfig, NetError, PollConfig, PollEvent,
    PollStatus, RetryConfig, TokenSource,
};
use crate::store::{
    ChunkInfo, ImportDiff, JobInfo, ProblemRow, RowResult, Store, StoreError, VersionMeta,
};

/// Default patients per kick-off. The simulated IIS accepts 2,000; real servers document
/// their own limit, and a `413` halves the chunk automatically.
pub const DEFAULT_CHUNK_SIZE: usize = 1000;

/// How a run behaves. Persisted per server profile by the GUI later; the CLI builds it from flags.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// Patients per kick-off request.
    pub chunk_size: usize,
    /// Chunks in flight at once against one server.
    pub concurrency: usize,
    pub options: MatchOptions,
    pub rules: TriageRules,
    /// Attempts per chunk (kick-off or polling failures) before the chunk is given up.
    pub max_chunk_attempts: u32,
    /// Pause before retrying a chunk whose attempt failed.
    #[serde(with = "secs_f64")]
    pub chunk_retry_pause: Duration,
    /// Who is acting, for the audit log.
    pub actor: String,
    #[serde(skip)]
    pub retry: RetryConfig,
    #[serde(skip)]
    pub poll: PollConfig,
    /// Per-request timeout for kick-off, status and delete.
    #[serde(with = "secs_f64")]
    pub request_timeout: Duration,
}

mod secs_f64 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Ok(Duration::from_secs_f64(v.clamp(0.0, 86_400.0)))
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            chunk_size: DEFAULT_CHUNK_SIZE,
            concurrency: 2,
            options: MatchOptions::default(),
            rules: TriageRules::default(),
            max_chunk_attempts: 5,
            chunk_retry_pause: Duration::from_secs(5),
            actor: default_actor(),
            retry: RetryConfig::default(),
            poll: PollConfig::default(),
            request_timeout: Duration::from_secs(300),
        }
    }
}

/// The OS user name, for the audit log.
pub fn default_actor() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("{0}")]
    Invalid(String),
    #[error("the workspace is busy in another task that failed; restart matchdesk")]
    Poisoned,
}

/// What a run reports as it goes. Sent from engine tasks; keep handlers quick.
#[derive(Clone, Debug, PartialEq)]
pub enum JobEvent {
    /// A job is starting (or resuming: `resumed`), with how many rows it covers.
    JobStarted {
        job_id: i64,
        rows: u64,
        chunks: usize,
        resumed: bool,
        /// Rows already ingested (when resuming).
        done_rows: u64,
    },
    ChunkSubmitted {
        job_id: i64,
        chunk_id: i64,
        rows: u64,
    },
    /// The server's `X-Progress` text (or our own description of the wait).
    ChunkProgress {
        job_id: i64,
        chunk_id: i64,
        text: String,
    },
    /// A `413` split a chunk in two.
    ChunkSplit {
        job_id: i64,
        chunk_id: i64,
        new_chunk_id: i64,
        kept: usize,
    },
    /// A transient failure; the engine will try again.
    Retrying {
        job_id: i64,
        chunk_id: i64,
        message: String,
    },
    /// Results for `rows` more rows were stored.
    RowsIngested {
        job_id: i64,
        chunk_id: i64,
        rows: u64,
    },
    /// A line of a result file could not be used (the rest of the file goes on).
    BadLine {
        job_id: i64,
        chunk_id: i64,
        line: u64,
        message: String,
    },
    ChunkFinished {
        job_id: i64,
        chunk_id: i64,
        state: ChunkState,
        error: Option<String>,
    },
    JobFinished {
        job_id: i64,
        state: JobState,
    },
}

/// A sink for [`JobEvent`]s.
pub type EventSink = Arc<dyn Fn(JobEvent) + Send + Sync>;

/// An event sink that drops everything.
pub fn no_events() -> EventSink {
    Arc::new(|_| {})
}

/// The result of importing a cohort file.
#[derive(Clone, Debug)]
pub struct ImportResult {
    pub cohort_id: i64,
    pub version_id: i64,
    pub summary: ImportSummary,
    pub diff: ImportDiff,
}

/// The engine. Cheap to clone; all clones share one workspace.
#[derive(Clone)]
pub struct Engine {
    store: Arc<Mutex<Store>>,
    cfg: Arc<EngineConfig>,
}

impl Engine {
    /// Open the workspace at `db` with `cfg`.
    pub fn open(db: &Path, cfg: EngineConfig) -> Result<Engine, EngineError> {
        let store = Store::open(db)?;
        Ok(Engine {
            store: Arc::new(Mutex::new(store)),
            cfg: Arc::new(cfg),
        })
    }

    /// The same workspace with other settings (a server profile's chunk size, rules, ...).
    pub fn with_config(&self, cfg: EngineConfig) -> Engine {
        Engine {
            store: self.store.clone(),
            cfg: Arc::new(cfg),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Exclusive access to the workspace (for reports). Do not hold it across an `.await`.
    pub fn store(&self) -> Result<MutexGuard<'_, Store>, EngineError> {
        self.store.lock().map_err(|_| EngineError::Poisoned)
    }

    /// Import (or re-import) a cohort file. The cohort is named after the file unless `name` is
    /// given. Runs synchronously: call it from a blocking context in async code.
    pub fn import(
        &self,
        path: &Path,
        mapping: Option<&Mapping>,
        name: Option<&str>,
    ) -> Result<ImportResult, EngineError> {
        self.import_with(path, mapping, name, false)
    }

    /// What importing `path` would do (counts, bad rows and the difference to the cohort's
    /// current version) without changing the workspace.
    pub fn import_dry_run(
        &self,
        path: &Path,
        mapping: Option<&Mapping>,
        name: Option<&str>,
    ) -> Result<ImportResult, EngineError> {
        self.import_with(path, mapping, name, true)
    }

    fn import_with(
        &self,
        path: &Path,
        mapping: Option<&Mapping>,
        name: Option<&str>,
        dry_run: bool,
    ) -> Result<ImportResult, EngineError> {
        let name = match name {
            Some(n) => n.to_string(),
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "cohort".to_string()),
        };
        // Two stages on the two cores: a reader thread parses, validates, normalizes and
        // encodes rows in batches; this thread writes them in one transaction.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<ImportMsg>>(8);
        let reader = {
            let path = path.to_path_buf();
            let mapping = mapping.cloned();
            std::thread::Builder::new()
                .name("matchdesk-import-reader".into())
                .spawn(move || read_in_batches(&path, mapping.as_ref(), tx))
                .map_err(|e| EngineError::Invalid(format!("could not start the import: {e}")))?
        };
        let mut store = self.store()?;
        let mut writer = store.begin_import(&name, &path.to_string_lossy())?;
        let mut write_error: Option<StoreError> = None;
        for batch in rx.iter() {
            for msg in batch {
                let res = match msg {
                    ImportMsg::Good(row, warnings) => writer.add_encoded(row, &warnings),
                    ImportMsg::Bad(problems, source_id) => {
                        writer.add_bad(&problems, source_id.as_deref())
                    }
                };
                if let Err(e) = res {
                    write_error = Some(e);
                    break;
                }
            }
            if write_error.is_some() {
                break;
            }
        }
        drop(rx);
        let read = reader
            .join()
            .map_err(|_| EngineError::Invalid("the import stopped unexpectedly".into()))?;
        if let Some(e) = write_error {
            return Err(e.into());
        }
        let summary = read?;
        let meta = VersionMeta {
            fingerprint: file_fingerprint(path).unwrap_or_default(),
            format: summary.format.clone(),
            encoding: summary.encoding.clone(),
            mapping_json: serde_json::json!({
                "columns": summary.mapping.columns.iter().map(|(h, f)| (h.clone(), serde_json::Value::from(f.key()))).collect::<serde_json::Map<String, serde_json::Value>>(),
                "required": summary.mapping.required.iter().map(|f| f.key()).collect::<Vec<_>>(),
            })
            .to_string(),
            good_rows: summary.good_rows,
            bad_rows: summary.bad_rows,
            warnings: summary.warnings,
        };
        if dry_run {
            let done = writer.finish_dry_run(&meta, &self.cfg.actor)?;
            return Ok(ImportResult {
                cohort_id: done.cohort_id,
                version_id: done.version_id,
                summary,
                diff: done.diff,
            });
        }
        let done = writer.finish(&meta, &self.cfg.actor)?;
        info!(
            good = summary.good_rows,
            bad = summary.bad_rows,
            warnings = summary.warnings,
            new = done.diff.new_rows,
            changed = done.diff.changed_rows,
            left = done.diff.left_rows,
            "cohort imported"
        );
        Ok(ImportResult {
            cohort_id: done.cohort_id,
            version_id: done.version_id,
            summary,
            diff: done.diff,
        })
    }

    /// The cohort named `name`, and whether `path` differs from what it was last imported from
    /// (or the cohort does not exist yet).
    pub fn needs_import(
        &self,
        name: &str,
        path: &Path,
    ) -> Result<(Option<crate::store::CohortInfo>, bool), EngineError> {
        let store = self.store()?;
        let Some(cohort) = store.cohort_by_name(name)? else {
            return Ok((None, true));
        };
        let current = store.current_fingerprint(cohort.id)?;
        let now = file_fingerprint(path).map_err(|source| {
            EngineError::Import(ImportError::Io {
                path: path.to_path_buf(),
                source,
            })
        })?;
        Ok((Some(cohort), current.as_deref() != Some(now.as_str())))
    }

    fn client_for(
        &self,
        server_url: &str,
        token: Option<Arc<dyn TokenSource>>,
    ) -> Result<BulkMatchClient, EngineError> {
        let mode = self.store()?.server_accept_mode(server_url)?;
        let cfg = ClientConfig {
            retry: self.cfg.retry.clone(),
            poll: self.cfg.poll.clone(),
            token,
            request_timeout: self.cfg.request_timeout,
            accept_mode: AcceptMode::from_u8(mode),
            ..ClientConfig::default()
        };
        Ok(BulkMatchClient::new(server_url, cfg)?)
    }

    /// Match a cohort against a server: first resume this cohort's unfinished jobs on that
    /// server, then create a job for the rows that still have no outcome. Returns the jobs run
    /// with their final states. An interrupt (`cancel` raised) leaves the jobs resumable.
    pub async fn run_cohort(
        &self,
        cohort_id: i64,
        server_url: &str,
        token: Option<Arc<dyn TokenSource>>,
        events: EventSink,
        cancel: CancelFlag,
    ) -> Result<Vec<(i64, JobState)>, EngineError> {
        let client = self.client_for(server_url, token)?;
        let mut results = Vec::new();
        let unfinished: Vec<JobInfo> = self
            .store()?
            .jobs(Some(cohort_id))?
            .into_iter()
            .filter(|j| j.state == JobState::Running && j.server_url == server_url)
            .rev()
            .collect();
        for job in unfinished {
            let state = self
                .run_job_with(&client, job.id, true, &events, &cancel)
                .await?;
            results.push((job.id, state));
            if cancel.is_cancelled() {
                return Ok(results);
            }
        }
        let created = self.store()?.create_job(
            cohort_id,
            server_url,
            &self.cfg.options,
            self.cfg.chunk_size,
            &self.cfg.actor,
        )?;
        if let Some(job) = created {
            let state = self
                .run_job_with(&client, job.id, false, &events, &cancel)
                .await?;
            results.push((job.id, state));
        }
        Ok(results)
    }

    /// Resume every unfinished job in the workspace (on their own servers).
    pub async fn resume_all(
        &self,
        token: Option<Arc<dyn TokenSource>>,
        events: EventSink,
        cancel: CancelFlag,
    ) -> Result<Vec<(i64, JobState)>, EngineError> {
        let jobs: Vec<JobInfo> = self
            .store()?
            .jobs(None)?
            .into_iter()
            .filter(|j| j.state == JobState::Running)
            .rev()
            .collect();
        let mut out = Vec::new();
        for job in jobs {
            let client = self.client_for(&job.server_url, token.clone())?;
            let state = self
                .run_job_with(&client, job.id, true, &events, &cancel)
                .await?;
            out.push((job.id, state));
            if cancel.is_cancelled() {
                break;
            }
        }
        Ok(out)
    }

    /// Cancel a job: DELETE its server-side jobs (best effort) and mark it cancelled.
    pub async fn cancel_job(
        &self,
        job_id: i64,
        token: Option<Arc<dyn TokenSource>>,
        why: Option<&str>,
    ) -> Result<(), EngineError> {
        let job = self.store()?.job(job_id)?;
        let chunks = self.store()?.chunks(job_id)?;
        let client = self.client_for(&job.server_url, token)?;
        for c in chunks {
            if matches!(
                c.state,
                ChunkState::Submitted | ChunkState::Downloading | ChunkState::Ingested
            ) && let Some(url) = c.status_url.as_deref().and_then(|u| Url::parse(u).ok())
                && let Err(e) = client.delete(&url).await
            {
                warn!(chunk = c.id, error = %e, "could not delete a server-side job while cancelling");
            }
        }
        self.store()?.cancel_job(job_id, &self.cfg.actor, why)?;
        Ok(())
    }

    /// Run (or resume) one job to the end, an interrupt, or a failure.
    async fn run_job_with(
        &self,
        client: &BulkMatchClient,
        job_id: i64,
        resumed: bool,
        events: &EventSink,
        cancel: &CancelFlag,
    ) -> Result<JobState, EngineError> {
        let (job, chunks) = {
            let store = self.store()?;
            (store.job(job_id)?, store.chunks(job_id)?)
        };
        let rows: u64 = chunks.iter().map(|c| c.row_count).sum();
        let done_rows: u64 = chunks
            .iter()
            .filter(|c| c.state.is_terminal())
            .map(|c| c.row_count)
            .sum();
        events(JobEvent::JobStarted {
            job_id,
            rows,
            chunks: chunks.len(),
            resumed,
            done_rows,
        });
        if resumed {
            info!(job = job_id, chunks = chunks.len(), "resuming match job");
        }
        let options = job.options.clone();
        let mut queue: Vec<i64> = chunks
            .iter()
            .filter(|c| {
                !matches!(
                    c.state,
                    ChunkState::Done | ChunkState::Failed | ChunkState::Cancelled
                )
            })
            .map(|c| c.id)
            .rev()
            .collect();
        let mut tasks: JoinSet<Result<Vec<i64>, EngineError>> = JoinSet::new();
        let concurrency = self.cfg.concurrency.max(1);
        let mut first_error: Option<EngineError> = None;
        loop {
            while tasks.len() < concurrency && !cancel.is_cancelled() {
                let Some(chunk_id) = queue.pop() else { break };
                let engine = self.clone();
                let client = client.clone();
                let events = events.clone();
                let cancel = cancel.clone();
                let options = options.clone();
                tasks.spawn(async move {
                    engine
                        .process_chunk(&client, job_id, chunk_id, &options, &events, &cancel)
                        .await
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            match joined {
                Ok(Ok(new_chunks)) => queue.extend(new_chunks),
                Ok(Err(e)) => {
                    // A store failure: stop scheduling new work, let running chunks finish.
                    warn!(job = job_id, error = %e, "a chunk task failed");
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                    cancel.cancel();
                }
                Err(join) => {
                    warn!(job = job_id, error = %join, "a chunk task panicked");
                    if first_error.is_none() {
                        first_error = Some(EngineError::Invalid(format!(
                            "an internal error stopped job {job_id}; it will resume on the next run"
                        )));
                    }
                    cancel.cancel();
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        // Persist the Accept mode that worked for this server.
        let mode = client.accept_mode() as u8;
        self.store()?
            .set_server_accept_mode(&job.server_url, mode)?;
        if cancel.is_cancelled() {
            return Ok(JobState::Running);
        }
        let state = self.store()?.finish_job(job_id)?;
        events(JobEvent::JobFinished { job_id, state });
        Ok(state)
    }

    /// Drive one chunk through its states. Returns chunks created by a `413` split.
    async fn process_chunk(
        &self,
        client: &BulkMatchClient,
        job_id: i64,
        chunk_id: i64,
        options: &MatchOptions,
        events: &EventSink,
        cancel: &CancelFlag,
    ) -> Result<Vec<i64>, EngineError> {
        let mut created = Vec::new();
        loop {
            if cancel.is_cancelled() {
                return Ok(created);
            }
            let chunk = self.chunk(job_id, chunk_id)?;
            if chunk.state == ChunkState::Pending && chunk.attempts >= self.cfg.max_chunk_attempts {
                // E.g. a server that accepts the kick-off and then forgets the request every time.
                let why = format!(
                    "gave up after {} attempts: {}",
                    chunk.attempts,
                    chunk
                        .last_error
                        .as_deref()
                        .unwrap_or("the server did not keep the request")
                );
                self.fail_chunk(job_id, chunk_id, why, events)?;
                return Ok(created);
            }
            let step = match chunk.state {
                ChunkState::Pending => {
                    self.submit(client, &chunk, options, events, &mut created)
                        .await
                }
                ChunkState::Submitted => self.wait(client, &chunk, events, cancel).await,
                ChunkState::Downloading => self.download(client, &chunk, events, cancel).await,
                ChunkState::Ingested => {
                    if let Some(url) = chunk.status_url.as_deref().and_then(|u| Url::parse(u).ok())
                        && let Err(e) = client.delete(&url).await
                    {
                        // The results are safe; a server that keeps the files is not our failure.
                        warn!(chunk = chunk_id, error = %e, "could not delete the completed server-side job");
                    }
                    self.store()?
                        .set_chunk_state(chunk_id, ChunkState::Done, None)?;
                    events(JobEvent::ChunkFinished {
                        job_id,
                        chunk_id,
                        state: ChunkState::Done,
                        error: None,
                    });
                    return Ok(created);
                }
                ChunkState::Done | ChunkState::Failed | ChunkState::Cancelled => {
                    return Ok(created);
                }
            };
            match step {
                Ok(()) => {}
                Err(EngineError::Net(NetError::Cancelled)) => return Ok(created),
                Err(EngineError::Net(e)) => {
                    let message = e.to_string();
                    let attempts = self.store()?.chunk_attempt_failed(chunk_id, &message)?;
                    if !e.is_retryable()
                        && !matches!(e, NetError::Gone { .. } | NetError::Expired { .. })
                        || attempts >= self.cfg.max_chunk_attempts
                    {
                        let why = if attempts >= self.cfg.max_chunk_attempts {
                            format!("gave up after {attempts} attempts: {message}")
                        } else {
                            message
                        };
                        self.fail_chunk(job_id, chunk_id, why, events)?;
                        return Ok(created);
                    }
                    events(JobEvent::Retrying {
                        job_id,
                        chunk_id,
                        message: format!("attempt {attempts} failed: {message}"),
                    });
                    if cancel.sleep(self.cfg.chunk_retry_pause).await.is_err() {
                        return Ok(created);
                    }
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Give a chunk up: record why and tell the caller. Its rows stay without an outcome, so
    /// the next run submits them again.
    fn fail_chunk(
        &self,
        job_id: i64,
        chunk_id: i64,
        why: String,
        events: &EventSink,
    ) -> Result<(), EngineError> {
        self.store()?
            .set_chunk_state(chunk_id, ChunkState::Failed, Some(&why))?;
        events(JobEvent::ChunkFinished {
            job_id,
            chunk_id,
            state: ChunkState::Failed,
            error: Some(why),
        });
        Ok(())
    }

    fn chunk(&self, job_id: i64, chunk_id: i64) -> Result<ChunkInfo, EngineError> {
        self.store()?
            .chunks(job_id)?
            .into_iter()
            .find(|c| c.id == chunk_id)
            .ok_or_else(|| {
                EngineError::Invalid(format!("chunk {chunk_id} of job {job_id} is missing"))
            })
    }

    async fn submit(
        &self,
        client: &BulkMatchClient,
        chunk: &ChunkInfo,
        options: &MatchOptions,
        events: &EventSink,
        created: &mut Vec<i64>,
    ) -> Result<(), EngineError> {
        let patients = self.store()?.chunk_patients(chunk.id)?;
        if patients.is_empty() {
            self.store()?.finish_chunk(chunk.job_id, chunk.id)?;
            return Ok(());
        }
        let pairs: Vec<(String, Demographics)> = patients
            .into_iter()
            .map(|p| (p.source_id, p.normalized))
            .collect();
        match client.kick_off(&pairs, options).await {
            Ok(k) => {
                self.store()?
                    .chunk_submitted(chunk.id, k.status_url.as_str())?;
                events(JobEvent::ChunkSubmitted {
                    job_id: chunk.job_id,
                    chunk_id: chunk.id,
                    rows: pairs.len() as u64,
                });
                Ok(())
            }
            Err(NetError::TooLarge { .. }) if pairs.len() > 1 => {
                let keep = pairs.len() / 2;
                let new_id = self.store()?.split_chunk(chunk.id, keep)?;
                info!(
                    chunk = chunk.id,
                    kept = keep,
                    new_chunk = new_id,
                    "server said 413; split the chunk"
                );
                events(JobEvent::ChunkSplit {
                    job_id: chunk.job_id,
                    chunk_id: chunk.id,
                    new_chunk_id: new_id,
                    kept: keep,
                });
                created.push(new_id);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn wait(
        &self,
        client: &BulkMatchClient,
        chunk: &ChunkInfo,
        events: &EventSink,
        cancel: &CancelFlag,
    ) -> Result<(), EngineError> {
        let Some(url) = chunk.status_url.as_deref().and_then(|u| Url::parse(u).ok()) else {
            self.store()?
                .chunk_reset(chunk.id, "the status address was missing; submitting again")?;
            return Ok(());
        };
        let store = self.store.clone();
        let (job_id, chunk_id) = (chunk.job_id, chunk.id);
        let ev = events.clone();
        let mut last_text = chunk.progress.clone();
        let mut on_poll = move |e: PollEvent| {
            let text = match e {
                PollEvent::InProgress { progress, .. } => {
                    progress.unwrap_or_else(|| "the server is working".to_string())
                }
                PollEvent::Retrying {
                    failures, error, ..
                } => {
                    ev(JobEvent::Retrying {
                        job_id,
                        chunk_id,
                        message: format!("status check failed ({failures} in a row): {error}"),
                    });
                    return;
                }
                PollEvent::ManifestExpired => {
                    "results had already expired; asking again".to_string()
                }
                PollEvent::Complete { files } => format!("complete: {files} result file(s)"),
            };
            if last_text.as_deref() != Some(text.as_str()) {
                if let Ok(mut s) = store.lock()
                    && let Err(err) = s.chunk_progress(chunk_id, &text)
                {
                    warn!(chunk = chunk_id, error = %err, "could not save progress");
                }
                ev(JobEvent::ChunkProgress {
                    job_id,
                    chunk_id,
                    text: text.clone(),
                });
                last_text = Some(text);
            }
        };
        match client.wait_for_manifest(&url, &mut on_poll, cancel).await {
            Ok(done) => {
                self.record_manifest(chunk.id, &done.manifest)?;
                Ok(())
            }
            Err(NetError::Gone { .. }) => {
                self.store()?.chunk_reset(
                    chunk.id,
                    "the server no longer knows this request (404); submitting it again",
                )?;
                events(JobEvent::Retrying {
                    job_id,
                    chunk_id,
                    message: "the server forgot the request; submitting it again".into(),
                });
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn record_manifest(&self, chunk_id: i64, manifest: &Manifest) -> Result<(), EngineError> {
        let json = serde_json::json!({
            "transactionTime": manifest.transaction_time.map(|t| t.to_rfc3339()),
            "request": manifest.request,
            "requiresAccessToken": manifest.requires_access_token,
            "output": manifest.output.iter().map(|o| serde_json::json!({"type": o.type_, "url": o.url, "count": o.count})).collect::<Vec<_>>(),
            "error": manifest.error.iter().map(|o| serde_json::json!({"type": o.type_, "url": o.url})).collect::<Vec<_>>(),
        })
        .to_string();
        let urls: Vec<String> = manifest.output.iter().map(|o| o.url.clone()).collect();
        self.store()?.chunk_manifest(chunk_id, &json, &urls)?;
        Ok(())
    }

    async fn download(
        &self,
        client: &BulkMatchClient,
        chunk: &ChunkInfo,
        events: &EventSink,
        cancel: &CancelFlag,
    ) -> Result<(), EngineError> {
        let manifest = chunk
            .manifest_json
            .as_deref()
            .map(|m| parse_manifest(m.as_bytes()))
            .transpose()
            .map_err(|e| EngineError::Invalid(format!("stored manifest is unreadable: {e}")))?;
        let requires_token = manifest.map(|m| m.requires_access_token).unwrap_or(true);
        for file in chunk.files.iter().filter(|f| !f.done) {
            if cancel.is_cancelled() {
                return Err(NetError::Cancelled.into());
            }
            // Two stages: this task downloads and parses lines; a writer thread looks the rows
            // up, triages and stores them in batches. Memory stays flat whatever the file size.
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<ParsedLine>>(4);
            let writer = {
                let ctx = WriterCtx {
                    store: self.store.clone(),
                    rules: self.cfg.rules.clone(),
                    job_id: chunk.job_id,
                    chunk_id: chunk.id,
                    file_seq: file.seq,
                    events: events.clone(),
                };
                std::thread::Builder::new()
                    .name("matchdesk-ingest".into())
                    .spawn(move || ctx.run(rx))
                    .map_err(|e| EngineError::Invalid(format!("could not start ingest: {e}")))?
            };
            let skip_through = file.lines;
            let mut batch: Vec<ParsedLine> = Vec::with_capacity(BATCH);
            let mut last_line = skip_through;
            let result = client
                .download_lines(&file.url, requires_token, &mut |n, line| {
                    if n <= skip_through {
                        return Ok(());
                    }
                    last_line = n;
                    batch.push(ParsedLine {
                        line: n,
                        bundle: parse_match_bundle(line).map_err(|e| e.to_string()),
                    });
                    if batch.len() >= BATCH {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                        tx.send(full).map_err(|_| NetError::Ingest {
                            line: n,
                            message: "storing results stopped".into(),
                        })?;
                    }
                    Ok(())
                })
                .await;
            if !batch.is_empty() {
                let _ = tx.send(batch);
            }
            drop(tx);
            let written = tokio::task::spawn_blocking(move || writer.join())
                .await
                .map_err(|e| EngineError::Invalid(format!("ingest task failed: {e}")))?
                .map_err(|_| EngineError::Invalid("storing results stopped unexpectedly".into()))?;
            // A store failure explains any download error it caused.
            written?;
            match result {
                Ok(stats) => {
                    let total = stats.lines.max(last_line);
                    self.store()?.file_done(chunk.id, file.seq, total)?;
                }
                Err(NetError::Expired { .. }) => {
                    return self.refresh_manifest(client, chunk, events).await;
                }
                // Keep what was ingested; the next attempt skips it.
                Err(e) => return Err(e.into()),
            }
        }
        let missing = self.store()?.finish_chunk(chunk.job_id, chunk.id)?;
        if missing > 0 {
            warn!(
                chunk = chunk.id,
                rows = missing,
                "the server returned no result for some rows"
            );
        }
        Ok(())
    }

    /// Result files expired: ask the status URL for a fresh manifest, or resubmit if the server
    /// has forgotten the job.
    async fn refresh_manifest(
        &self,
        client: &BulkMatchClient,
        chunk: &ChunkInfo,
        events: &EventSink,
    ) -> Result<(), EngineError> {
        let Some(url) = chunk.status_url.as_deref().and_then(|u| Url::parse(u).ok()) else {
            self.store()?.chunk_reset(
                chunk.id,
                "result files expired and no status address is known",
            )?;
            return Ok(());
        };
        events(JobEvent::ChunkProgress {
            job_id: chunk.job_id,
            chunk_id: chunk.id,
            text: "result files expired; asking the server for fresh links".into(),
        });
        match client.poll_once(&url).await {
            Ok(PollStatus::Complete { manifest, .. }) => {
                self.record_manifest(chunk.id, &manifest)?;
                Err(NetError::Expired {
                    url: crate::net::redact_url(&url),
                    status: 410,
                }
                .into())
            }
            Ok(PollStatus::InProgress { .. }) => {
                self.store()?
                    .chunk_reset(chunk.id, "the server restarted the request")?;
                Ok(())
            }
            Err(NetError::Gone { .. }) => {
                self.store()?.chunk_reset(
                    chunk.id,
                    "result files expired and the server forgot the request; submitting again",
                )?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

const BATCH: usize = 500;

/// One downloaded line, parsed (or why it could not be).
struct ParsedLine {
    line: u64,
    bundle: Result<crate::fhir::bundle::MatchBundle, String>,
}

/// The writer stage of an ingest: rows looked up by submitted id, triaged, stored per batch.
struct WriterCtx {
    store: Arc<Mutex<Store>>,
    rules: TriageRules,
    job_id: i64,
    chunk_id: i64,
    file_seq: i64,
    events: EventSink,
}

impl WriterCtx {
    fn lock(&self) -> Result<MutexGuard<'_, Store>, StoreError> {
        self.store.lock().map_err(|_| {
            StoreError::Corrupt("the workspace lock was poisoned by a failed task".into())
        })
    }

    fn run(self, rx: std::sync::mpsc::Receiver<Vec<ParsedLine>>) -> Result<(), StoreError> {
        let mut results: Vec<RowResult> = Vec::with_capacity(BATCH);
        let mut bad: Vec<(u64, String)> = Vec::new();
        for batch in rx.iter() {
            let Some(last_line) = batch.last().map(|p| p.line) else {
                continue;
            };
            let ids: Vec<&str> = batch
                .iter()
                .filter_map(|p| p.bundle.as_ref().ok().map(|b| b.submitted_id.as_str()))
                .collect();
            let rows = self.lock()?.chunk_rows_by_source(self.chunk_id, &ids)?;
            let mut rows = rows.into_iter();
            results.clear();
            bad.clear();
            for parsed in batch {
                match parsed.bundle {
                    Ok(bundle) => match rows.next().flatten() {
                        Some((row_id, submitted)) => {
                            let outcome = matching::triage(
                                &submitted,
                                &bundle.candidates,
                                &bundle.issues,
                                &self.rules,
                            );
                            results.push(RowResult {
                                row_id,
                                candidates: bundle.candidates,
                                issues: bundle.issues,
                                outcome,
                            });
                        }
                        None => self.bad_line(
                            &mut bad,
                            parsed.line,
                            "the match Bundle refers to a patient that was not in this request"
                                .into(),
                        ),
                    },
                    Err(message) => self.bad_line(&mut bad, parsed.line, message),
                }
            }
            self.lock()?.ingest_batch(
                self.job_id,
                self.chunk_id,
                self.file_seq,
                last_line,
                &results,
                &bad,
            )?;
            if !results.is_empty() {
                (self.events)(JobEvent::RowsIngested {
                    job_id: self.job_id,
                    chunk_id: self.chunk_id,
                    rows: results.len() as u64,
                });
            }
        }
        Ok(())
    }

    fn bad_line(&self, bad: &mut Vec<(u64, String)>, n: u64, message: String) {
        warn!(
            chunk = self.chunk_id,
            file = self.file_seq,
            line = n,
            "unusable line in a result file"
        );
        (self.events)(JobEvent::BadLine {
            job_id: self.job_id,
            chunk_id: self.chunk_id,
            line: n,
            message: message.clone(),
        });
        bad.push((
            n,
            format!("file {}, line {n}: {message}", self.file_seq + 1),
        ));
    }
}

/// Size and modification time of a file: enough to notice that a cohort file was replaced.
pub fn file_fingerprint(path: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(format!("{}:{mtime}", meta.len()))
}

/// One imported row on its way from the reader thread to the writer.
enum ImportMsg {
    Good(crate::store::EncodedRow, Vec<ProblemRow>),
    /// A bad row's problems and, when the file gave it one, its own id.
    Bad(Vec<ProblemRow>, Option<String>),
}

const IMPORT_BATCH: usize = 2048;

/// The reader stage of an import: stream the file and send encoded rows in batches.
fn read_in_batches(
    path: &Path,
    mapping: Option<&Mapping>,
    tx: std::sync::mpsc::SyncSender<Vec<ImportMsg>>,
) -> Result<ImportSummary, ImportError> {
    let mut batch: Vec<ImportMsg> = Vec::with_capacity(IMPORT_BATCH);
    let stopped = |line: u64| ImportError::Sink {
        line,
        message: "the workspace stopped accepting rows".into(),
    };
    let mut sink = |item: ImportItem| -> Result<(), ImportError> {
        let line = match &item {
            ImportItem::Good(r) => r.line,
            ImportItem::Bad { line, .. } => *line,
        };
        batch.push(match item {
            ImportItem::Good(row) => ImportMsg::Good(
                crate::store::EncodedRow::new(
                    row.line,
                    row.source_id,
                    &row.original,
                    &row.normalized,
                ),
                row.warnings.iter().map(to_problem_row).collect(),
            ),
            ImportItem::Bad {
                problems, original, ..
            } => ImportMsg::Bad(
                problems.iter().map(to_problem_row).collect(),
                original
                    .local_id
                    .as_deref()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            ),
        });
        if batch.len() >= IMPORT_BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(IMPORT_BATCH));
            tx.send(full).map_err(|_| stopped(line))?;
        }
        Ok(())
    };
    let summary = import::read_cohort(path, mapping, &mut sink)?;
    if !batch.is_empty() {
        tx.send(batch).map_err(|_| stopped(0))?;
    }
    Ok(summary)
}

fn to_problem_row(p: &import::RowProblem) -> ProblemRow {
    ProblemRow {
        line: p.line,
        column: p.column.clone(),
        value: p.value.clone(),
        reason: p.reason.clone(),
        severity: p.severity.key().to_string(),
    }
}
