//! The HTTP front end of the simulated IIS: a conformant FHIR `Patient/$bulk-match` provider
//! (kick-off, status polling, DELETE, output files) built on axum, with the fault switches of
//! [`crate::sim::faults`] applied on request.
//!
//! It exists for demos, staff training and as the independent test peer of the client in
//! [`crate::net`]: the FHIR JSON it sends (OperationOutcome, manifest, match Bundles) is built
//! here, not with the client's parsers, so the two sides check each other. Matching itself is
//! [`crate::sim::registry`]'s job; this module runs it in the background (blocking threads,
//! parallel over the cores), keeps the finished ndjson files in memory until they expire or the
//! client deletes the job, and counts what clients do ([`SimStats`]) so tests can assert on
//! client behaviour (polling rate, DELETE, token scoping).
//!
//! Endpoints under `{base}` (= `http://HOST:PORT/fhir`):
//! `POST Patient/$bulk-match`, `GET|DELETE $bulk-match-status/{job}`,
//! `GET $bulk-match-output/{job}/{n}.ndjson`, `GET metadata`; in SMART mode also
//! `GET .well-known/smart-configuration` and `POST /auth/token` (see [`crate::sim::auth`]).
//! See `docs/SIMULATED_IIS.md`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, SecondsFormat, Utc};
use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_http::compression::CompressionLayer;

use crate::domain::Demographics;
use crate::fhir::patient::{from_patient, to_patient};
use crate::matching::GradeThresholds;
use crate::sim::auth::{Denied, SmartSimConfig, SmartState};
use crate::sim::faults::{FaultDice, Faults};
use crate::sim::registry::{Registry, SearchOptions};

/// The extension url that ties a match Bundle to the submitted Patient.
pub const MATCH_RESOURCE_URL: &str =
    "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/match-resource";
/// The extension url of the match grade on `entry.search`.
pub const MATCH_GRADE_URL: &str = "http://hl7.org/fhir/StructureDefinition/match-grade";
/// Output formats the kick-off accepts in `_outputFormat`.
pub const OUTPUT_FORMATS: [&str; 3] = ["application/fhir+ndjson", "application/ndjson", "ndjson"];

const FHIR_JSON: &str = "application/fhir+json";
const FHIR_NDJSON: &str = "application/fhir+ndjson";
/// Size of the slices an output file is streamed in.
const STREAM_CHUNK: usize = 64 * 1024;

/// How the simulated IIS behaves. `SimConfig::default()` is a well-behaved server with the limits
/// documented in `docs/SIMULATED_IIS.md`.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Maximum Patient resources per kick-off; above it the kick-off gets `413`.
    pub resource_limit: usize,
    /// Status polls of one job closer together than this get `429` + `Retry-After`.
    pub min_poll_interval: Duration,
    /// `Retry-After` (seconds) sent with `202` in-progress status responses.
    pub retry_after_secs: u64,
    /// Match Bundles per output file; a larger job's manifest lists several files.
    pub bundles_per_file: usize,
    /// How long finished files stay available (the `Expires` header).
    pub expires_after: Duration,
    /// Patients matched per second; `None` = as fast as the cores allow.
    pub processing_rate: Option<usize>,
    pub faults: Faults,
    pub thresholds: GradeThresholds,
    /// If set, kick-off, status and DELETE (and files, when `requires_access_token`) need
    /// `Authorization: Bearer <token>`, else `401`.
    pub require_token: Option<String>,
    /// The `requiresAccessToken` value of the manifest; file downloads demand the token only
    /// when this is `true` (and `require_token` is set).
    pub requires_access_token: bool,
    /// Advertise output files under this base instead of the server's own (it must route to this
    /// server's `/$bulk-match-output/...` handler, e.g. `http://localhost:PORT/fhir` — another
    /// origin on the same listener — or a reverse proxy).
    pub file_base_url: Option<String>,
    /// Serve output files from a second listener (same IP, free port, path `/files`) and
    /// advertise that origin in manifests. Overrides `file_base_url`.
    pub separate_file_listener: bool,
    /// SMART Backend Services mode: registered clients and token lifetime. When set, kick-off,
    /// status and DELETE (and files, when `requires_access_token`) need an access token from
    /// this server's token endpoint (`require_token` is then ignored), and a job belongs to the
    /// client that started it (others get `404`).
    pub smart: Option<SmartSimConfig>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            resource_limit: 2_000,
            min_poll_interval: Duration::from_millis(500),
            retry_after_secs: 1,
            bundles_per_file: 1_000,
            expires_after: Duration::from_secs(3600),
            processing_rate: None,
            faults: Faults::default(),
            thresholds: GradeThresholds::default(),
            require_token: None,
            requires_access_token: false,
            file_base_url: None,
            separate_file_listener: false,
            smart: None,
        }
    }
}

/// Why the simulated IIS could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(
        "the simulated IIS could not listen on {addr}: {source}; pick another port (0 = any free port) or stop the program using it"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the simulated IIS could not read the address it is listening on: {0}")]
    LocalAddr(std::io::Error),
    #[error("invalid simulated IIS configuration: {0}")]
    Config(String),
}

/// What clients did to the server so far (counters since start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Kick-off requests received (accepted or not).
    pub kickoffs: u64,
    /// Kick-offs that created a job (`202`).
    pub jobs_accepted: u64,
    /// Status polls received (GET on a status URL).
    pub status_polls: u64,
    /// `429` responses sent (poll-rate throttling and injected storms).
    pub throttled_429: u64,
    /// DELETE requests received.
    pub deletes: u64,
    /// Output file requests received.
    pub file_requests: u64,
    /// Requests of any kind that carried an `Authorization` header.
    pub requests_with_authorization: u64,
    /// Output file requests that carried an `Authorization` header.
    pub file_requests_with_authorization: u64,
    /// `401` responses sent.
    pub unauthorized_401: u64,
    /// Injected `5xx` responses (including transient OperationOutcomes).
    pub injected_errors: u64,
    /// Connections deliberately dropped.
    pub dropped_connections: u64,
    /// Output files deliberately cut short.
    pub truncated_files: u64,
    /// Token endpoint requests received (SMART mode).
    pub token_requests: u64,
    /// Access tokens issued (SMART mode).
    pub tokens_issued: u64,
    /// `403` responses sent (token without the needed scope).
    pub forbidden_403: u64,
}

#[derive(Default)]
struct Counters {
    kickoffs: AtomicU64,
    jobs_accepted: AtomicU64,
    status_polls: AtomicU64,
    throttled_429: AtomicU64,
    deletes: AtomicU64,
    file_requests: AtomicU64,
    requests_with_authorization: AtomicU64,
    file_requests_with_authorization: AtomicU64,
    unauthorized_401: AtomicU64,
    injected_errors: AtomicU64,
    dropped_connections: AtomicU64,
    truncated_files: AtomicU64,
    token_requests: AtomicU64,
    tokens_issued: AtomicU64,
    forbidden_403: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> SimStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimStats {
            kickoffs: g(&self.kickoffs),
            jobs_accepted: g(&self.jobs_accepted),
            status_polls: g(&self.status_polls),
            throttled_429: g(&self.throttled_429),
            deletes: g(&self.deletes),
            file_requests: g(&self.file_requests),
            requests_with_authorization: g(&self.requests_with_authorization),
            file_requests_with_authorization: g(&self.file_requests_with_authorization),
            unauthorized_401: g(&self.unauthorized_401),
            injected_errors: g(&self.injected_errors),
            dropped_connections: g(&self.dropped_connections),
            truncated_files: g(&self.truncated_files),
            token_requests: g(&self.token_requests),
            tokens_issued: g(&self.tokens_issued),
            forbidden_403: g(&self.forbidden_403),
        }
    }
}

struct OutputFile {
    bytes: Bytes,
    count: usize,
}

struct JobOutput {
    files: Vec<OutputFile>,
    completed_at: SystemTime,
}

struct Job {
    transaction_time: DateTime<Utc>,
    total: usize,
    processed: AtomicUsize,
    cancelled: AtomicBool,
    last_poll: Mutex<Option<Instant>>,
    output: OnceLock<JobOutput>,
    failure: OnceLock<String>,
    complete_polls: AtomicU64,
    downloaded: Mutex<HashSet<usize>>,
    /// The SMART client that started the job (SMART mode).
    owner: Option<String>,
}

struct AppState {
    registry: Arc<Registry>,
    cfg: SimConfig,
    base_url: String,
    file_base_url: String,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    counters: Counters,
    dice: FaultDice,
    smart: Option<SmartState>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running simulated IIS. Dropping it (or [`SimServer::shutdown`]) stops the listeners.
pub struct SimServer {
    /// FHIR base, e.g. `http://127.0.0.1:PORT/fhir`.
    pub base_url: String,
    /// Base under which output files are advertised (the FHIR base unless configured otherwise).
    pub file_base_url: String,
    /// The address the FHIR listener is bound to.
    pub local_addr: SocketAddr,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimServer {
    /// The kick-off URL, `{base}/Patient/$bulk-match`.
    pub fn kickoff_url(&self) -> String {
        format!("{}/Patient/$bulk-match", self.base_url)
    }

    /// Counters of what clients did so far.
    pub fn stats(&self) -> SimStats {
        self.state.counters.snapshot()
    }

    /// Jobs currently held (running or finished, not yet deleted or expired).
    pub fn job_count(&self) -> usize {
        lock(&self.state.jobs).len()
    }

    /// The token endpoint (SMART mode), e.g. `http://127.0.0.1:PORT/auth/token`.
    pub fn token_url(&self) -> Option<String> {
        self.state.smart.as_ref().map(|s| s.token_url.clone())
    }

    /// Revoke every access token issued so far (SMART mode): the next request with one gets
    /// `401`.
    pub fn revoke_tokens(&self) {
        if let Some(s) = &self.state.smart {
            s.revoke_all();
        }
    }

    /// Stop accepting connections, let in-flight requests finish (at most 5 s), then return.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for mut task in std::mem::take(&mut self.tasks) {
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }

    /// Serve until the listeners fail (for the CLI: run this inside `tokio::select!` with ctrl-c).
    pub async fn wait(mut self) {
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Bind `listen` (port 0 picks a free port), spawn the server and return at once.
pub async fn start(
    registry: Arc<Registry>,
    cfg: SimConfig,
    listen: SocketAddr,
) -> Result<SimServer, SimError> {
    if cfg.resource_limit == 0 || cfg.bundles_per_file == 0 {
        return Err(SimError::Config(
            "resource_limit and bundles_per_file must be at least 1".into(),
        ));
    }
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| SimError::Bind {
            addr: listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(SimError::LocalAddr)?;
    let base_url = format!("http://{}/fhir", advertised(local_addr));

    let mut file_listener = None;
    let file_base_url = if cfg.separate_file_listener {
        let addr = SocketAddr::new(local_addr.ip(), 0);
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        let fa = l.local_addr().map_err(SimError::LocalAddr)?;
        file_listener = Some(l);
        format!("http://{}/files", advertised(fa))
    } else {
        cfg.file_base_url
            .clone()
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| base_url.clone())
    };

    let smart = match &cfg.smart {
        Some(sc) => Some(
            SmartState::new(sc, format!("http://{}/auth/token", advertised(local_addr)))
                .map_err(SimError::Config)?,
        ),
        None => None,
    };
    let state = Arc::new(AppState {
        registry,
        smart,
        dice: FaultDice::new(cfg.faults.seed),
        cfg,
        base_url: base_url.clone(),
        file_base_url: file_base_url.clone(),
        jobs: Mutex::new(HashMap::new()),
        counters: Counters::default(),
    });

    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(spawn_serve(
        listener,
        router(state.clone()),
        stop_rx.clone(),
    ));
    if let Some(l) = file_listener {
        tasks.push(spawn_serve(l, file_router(state.clone()), stop_rx));
    }
    tracing::info!(port = local_addr.port(), "simulated IIS listening");
    Ok(SimServer {
        base_url,
        file_base_url,
        local_addr,
        state,
        stop,
        tasks,
    })
}

/// The address to put in URLs: a wildcard bind is advertised as loopback.
fn advertised(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

fn spawn_serve(
    listener: TcpListener,
    app: Router,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let signal = async move {
            // Resolves when `true` is sent or the sender (the SimServer) is dropped.
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
        {
            tracing::error!(error = %e, "simulated IIS listener failed");
        }
    })
}

fn body_limit(cfg: &SimConfig) -> usize {
    // Generous: about 16 KiB per allowed Patient, at least 16 MiB.
    cfg.resource_limit
        .saturating_mul(16 * 1024)
        .max(16 * 1024 * 1024)
}

fn file_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/$bulk-match-output/{job}/{file}", get(download))
        .layer(CompressionLayer::new())
}

/// The axum router of the FHIR listener (everything under `/fhir`).
fn router(state: Arc<AppState>) -> Router {
    let limit = body_limit(&state.cfg);
    let fhir = Router::new()
        .route("/Patient/$bulk-match", post(kickoff))
        .route("/$bulk-match-status/{job}", get(status).delete(delete_job))
        .route("/metadata", get(metadata))
        .route("/.well-known/smart-configuration", get(smart_configuration))
        .merge(file_routes());
    Router::new()
        .nest("/fhir", fhir)
        .route("/auth/token", post(token_endpoint))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(state.clone(), slow))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The router of the separate file listener (files under `/files`).
fn file_router(state: Arc<AppState>) -> Router {
    Router::new()
        .nest("/files", file_routes())
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(state.clone(), slow))
        .with_state(state)
}

async fn slow(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let ms = st.cfg.faults.slow_ms;
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    next.run(req).await
}

async fn unknown_route(State(st): State<Arc<AppState>>) -> Response {
    st.outcome(
        StatusCode::NOT_FOUND,
        "not-found",
        "No such endpoint on this simulated IIS. The FHIR base is /fhir; the operation is POST /fhir/Patient/$bulk-match.",
    )
}

async fn wrong_method(State(st): State<Arc<AppState>>) -> Response {
    st.outcome(
        StatusCode::METHOD_NOT_ALLOWED,
        "not-supported",
        "This endpoint does not support that HTTP method: kick-off is POST, status is GET or DELETE, files are GET.",
    )
}

// ---------------------------------------------------------------------------------------------
// OperationOutcome responses
// ---------------------------------------------------------------------------------------------

/// A stable numeric stand-in for an IssueType code, for the `numeric-codes` fault.
fn numeric_code(code: &str) -> u32 {
    const CODES: [&str; 14] = [
        "invalid",
        "required",
        "processing",
        "not-found",
        "too-costly",
        "throttled",
        "transient",
        "exception",
        "incomplete",
        "informational",
        "security",
        "login",
        "expired",
        "not-supported",
    ];
    CODES
        .iter()
        .position(|c| *c == code)
        .map_or(0, |i| i as u32 + 1)
}

fn severity_for(code: &str) -> &'static str {
    match code {
        "informational" => "information",
        _ => "error",
    }
}

/// An OperationOutcome with one issue.
fn outcome_json(code: &str, text: &str, numeric: bool) -> Value {
    let code_value = if numeric {
        json!(numeric_code(code))
    } else {
        json!(code)
    };
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": severity_for(code),
            "code": code_value,
            "details": { "text": text }
        }]
    })
}

fn json_response(status: StatusCode, content_type: &'static str, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        bytes,
    )
        .into_response()
}

fn retry_after(secs: u64) -> (HeaderName, HeaderValue) {
    (header::RETRY_AFTER, HeaderValue::from(secs.max(1)))
}

impl AppState {
    fn outcome(&self, status: StatusCode, code: &str, text: &str) -> Response {
        json_response(
            status,
            FHIR_JSON,
            &outcome_json(code, text, self.cfg.faults.numeric_issue_codes),
        )
    }

    fn throttled(&self, secs: u64, text: &str) -> Response {
        bump(&self.counters.throttled_429);
        let mut r = self.outcome(StatusCode::TOO_MANY_REQUESTS, "throttled", text);
        let (k, v) = retry_after(secs);
        r.headers_mut().insert(k, v);
        r
    }

    /// A response whose body fails at once: hyper aborts the connection without a complete
    /// response, which the client sees as a connection error.
    fn dropped(&self) -> Response {
        bump(&self.counters.dropped_connections);
        let stream = futures_util::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "simulated dropped connection",
            ))
        });
        Response::new(Body::from_stream(stream))
    }

    fn injected_error(&self) -> Response {
        bump(&self.counters.injected_errors);
        let (status, text) = match self.dice.below(3) {
            0 => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Simulated internal server error. Retry later.",
            ),
            1 => (
                StatusCode::BAD_GATEWAY,
                "Simulated bad gateway. Retry later.",
            ),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Simulated service unavailable. Retry later.",
            ),
        };
        let mut r = self.outcome(status, "exception", text);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let (k, v) = retry_after(1);
            r.headers_mut().insert(k, v);
        }
        r
    }

    /// Count an `Authorization` header and check it where one is required: `Ok(Some(client))`
    /// for a SMART client, `Ok(None)` when no check applies or the static token matched,
    /// `Err(response)` (`401`/`403`) to refuse the request.
    fn authorize(
        &self,
        headers: &HeaderMap,
        is_file: bool,
    ) -> Result<Option<String>, Box<Response>> {
        let presented = headers.get(header::AUTHORIZATION);
        if presented.is_some() {
            bump(&self.counters.requests_with_authorization);
            if is_file {
                bump(&self.counters.file_requests_with_authorization);
            }
        }
        if is_file && !self.cfg.requires_access_token {
            return Ok(None);
        }
        if let Some(smart) = &self.smart {
            return match smart.check_bearer(headers) {
                Ok(client) => Ok(Some(client)),
                Err(Denied::Unauthorized(text)) => {
                    bump(&self.counters.unauthorized_401);
                    let mut r = self.outcome(StatusCode::UNAUTHORIZED, "login", &text);
                    let challenge = if presented.is_some() {
                        "Bearer error=\"invalid_token\""
                    } else {
                        "Bearer"
                    };
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static(challenge),
                    );
                    Err(Box::new(r))
                }
                Err(Denied::Forbidden(text)) => {
                    bump(&self.counters.forbidden_403);
                    let mut r = self.outcome(StatusCode::FORBIDDEN, "forbidden", &text);
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
                    );
                    Err(Box::new(r))
                }
            };
        }
        let Some(token) = self.cfg.require_token.as_ref() else {
            return Ok(None);
        };
        let ok = presented
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .is_some_and(|t| t == token);
        if ok {
            return Ok(None);
        }
        bump(&self.counters.unauthorized_401);
        let mut r = self.outcome(
            StatusCode::UNAUTHORIZED,
            "login",
            "This simulated IIS requires `Authorization: Bearer <token>` with the configured token.",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Err(Box::new(r))
    }

    /// A job visible to `client`: another SMART client's job is as good as unknown.
    fn owned_job(&self, id: &str, client: &Option<String>) -> Option<Arc<Job>> {
        let job = self.job(id)?;
        match (&job.owner, client) {
            (Some(owner), Some(c)) if owner != c => None,
            _ => Some(job),
        }
    }

    /// Look a job up; `None` if unknown, deleted or expired (expired jobs are removed).
    fn job(&self, id: &str) -> Option<Arc<Job>> {
        let mut jobs = lock(&self.jobs);
        let job = jobs.get(id)?.clone();
        if self.is_expired(&job) {
            job.cancelled.store(true, Ordering::Relaxed);
            jobs.remove(id);
            return None;
        }
        Some(job)
    }

    fn is_expired(&self, job: &Job) -> bool {
        job.output
            .get()
            .and_then(|o| o.completed_at.elapsed().ok())
            .is_some_and(|age| age > self.cfg.expires_after)
    }

    fn purge_expired(&self) {
        let mut jobs = lock(&self.jobs);
        jobs.retain(|_, j| !self.is_expired(j));
    }

    fn job_gone(&self) -> Response {
        self.outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such $bulk-match job: it never existed, was deleted, or its files expired. Submit the patients again.",
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Kick-off
// ---------------------------------------------------------------------------------------------

/// A validation failure of the kick-off request.
struct Reject {
    status: StatusCode,
    code: &'static str,
    text: String,
}

fn bad(text: impl Into<String>) -> Reject {
    Reject {
        status: StatusCode::BAD_REQUEST,
        code: "invalid",
        text: text.into(),
    }
}

struct KickOff {
    patients: Vec<(String, Demographics)>,
    only_single_match: bool,
    only_certain_matches: bool,
    count: Option<u32>,
}

fn param_bool(p: &Value, name: &str, index: usize) -> Result<bool, Reject> {
    p.get("valueBoolean")
        .and_then(Value::as_bool)
        .ok_or_else(|| {
            bad(format!(
                "Parameters.parameter[{index}] ({name}) needs a valueBoolean (true or false)."
            ))
        })
}

fn parse_kickoff(body: &[u8], limit: usize) -> Result<KickOff, Reject> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("The request body is not valid JSON: {e}.")))?;
    if v.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad(
            "The request body must be a FHIR Parameters resource (resourceType \"Parameters\").",
        ));
    }
    let params = v
        .get("parameter")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("Parameters.parameter is missing or not an array."))?;
    let resources = params
        .iter()
        .filter(|p| p.get("name").and_then(Value::as_str) == Some("resource"))
        .count();
    if resources == 0 {
        return Err(bad(
            "The request has no `resource` parameter; send at least one Patient.",
        ));
    }
    if resources > limit {
        return Err(Reject {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "too-costly",
            text: format!(
                "This server accepts at most {limit} Patient resources per $bulk-match request; this request has {resources}. Split it into requests of at most {limit} and submit them one after another."
            ),
        });
    }
    let mut k = KickOff {
        patients: Vec::with_capacity(resources),
        only_single_match: false,
        only_certain_matches: false,
        count: None,
    };
    for (i, p) in params.iter().enumerate() {
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        match name {
            "resource" => {
                let r = p.get("resource").ok_or_else(|| {
                    bad(format!(
                        "Parameters.parameter[{i}] (resource) has no `resource` element."
                    ))
                })?;
                if r.get("resourceType").and_then(Value::as_str) != Some("Patient") {
                    return Err(bad(format!(
                        "Parameters.parameter[{i}].resource is not a Patient; only Patient resources can be matched."
                    )));
                }
                let id = r
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        bad(format!(
                            "Parameters.parameter[{i}].resource (Patient #{}) has no id; every submitted Patient needs an id unique in the source system.",
                            k.patients.len() + 1
                        ))
                    })?;
                k.patients.push((id.to_string(), from_patient(r)));
            }
            "onlySingleMatch" => k.only_single_match = param_bool(p, name, i)?,
            "onlyCertainMatches" => k.only_certain_matches = param_bool(p, name, i)?,
            "count" => {
                let n = p
                    .get("valueInteger")
                    .and_then(Value::as_u64)
                    .filter(|n| (1..=u64::from(u32::MAX)).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "Parameters.parameter[{i}] (count) needs a positive valueInteger."
                        ))
                    })?;
                k.count = Some(n as u32);
            }
            "_outputFormat" => {
                let f = p.get("valueString").and_then(Value::as_str).unwrap_or("");
                if !OUTPUT_FORMATS.contains(&f.trim()) {
                    return Err(bad(format!(
                        "_outputFormat `{f}` is not supported; use one of {}.",
                        OUTPUT_FORMATS.join(", ")
                    )));
                }
            }
            // Unknown parameters are ignored, as FHIR servers commonly do.
            _ => {}
        }
    }
    Ok(k)
}

async fn kickoff(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    bump(&st.counters.kickoffs);
    let faults = &st.cfg.faults;
    if st.dice.chance(faults.drop_rate) {
        return st.dropped();
    }
    let client = match st.authorize(&headers, false) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if st.dice.chance(faults.storm_429) {
        return st.throttled(
            1,
            "Too many requests (simulated storm). Retry after the Retry-After delay.",
        );
    }
    let prefer = headers
        .get_all(header::HeaderName::from_static("prefer"))
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("respond-async"));
    if !prefer {
        return st.outcome(
            StatusCode::BAD_REQUEST,
            "invalid",
            "$bulk-match is asynchronous only: send the header `Prefer: respond-async`.",
        );
    }
    if faults.accept_strict {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if accept
            .to_ascii_lowercase()
            .contains("application/fhir+json")
        {
            return st.outcome(
                StatusCode::BAD_REQUEST,
                "not-supported",
                "Accept: application/fhir+json is not supported here (simulated deviation); send Accept: application/fhir+ndjson or no Accept header.",
            );
        }
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let status = e.status();
            let text = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!(
                    "The request body is larger than this server's limit of {} bytes. Split the request into smaller ones.",
                    body_limit(&st.cfg)
                )
            } else {
                format!("The request body could not be read: {e}")
            };
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "too-costly"
            } else {
                "invalid"
            };
            return st.outcome(status, code, &text);
        }
    };
    // Parsing thousands of Patients is CPU work: keep it off the async workers.
    let limit = st.cfg.resource_limit;
    let k = match tokio::task::spawn_blocking(move || parse_kickoff(&body, limit)).await {
        Ok(Ok(k)) => k,
        Ok(Err(r)) => return st.outcome(r.status, r.code, &r.text),
        Err(e) => {
            return st.outcome(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                &format!("The kick-off could not be processed: {e}"),
            );
        }
    };
    st.purge_expired();

    let id = new_job_id();
    let job = Arc::new(Job {
        transaction_time: Utc::now(),
        total: k.patients.len(),
        processed: AtomicUsize::new(0),
        cancelled: AtomicBool::new(false),
        last_poll: Mutex::new(None),
        output: OnceLock::new(),
        failure: OnceLock::new(),
        complete_polls: AtomicU64::new(0),
        downloaded: Mutex::new(HashSet::new()),
        owner: client,
    });
    lock(&st.jobs).insert(id.clone(), job.clone());
    bump(&st.counters.jobs_accepted);
    tracing::info!(
        patients = job.total,
        "simulated IIS accepted a $bulk-match job"
    );

    let opts = SearchOptions {
        only_single_match: k.only_single_match,
        only_certain_matches: k.only_certain_matches,
        count: k.count,
        thresholds: st.cfg.thresholds,
    };
    let render = Render {
        base_url: st.base_url.clone(),
        faults: st.cfg.faults.clone(),
        seed: st.dice.fork().next_u64(),
    };
    let state = st.clone();
    let worker_job = job.clone();
    tokio::spawn(async move {
        let j = worker_job.clone();
        let registry = state.registry.clone();
        let per_file = state.cfg.bundles_per_file;
        let rate = state.cfg.processing_rate;
        let result = tokio::task::spawn_blocking(move || {
            process(&registry, &j, &k.patients, &opts, &render, per_file, rate)
        })
        .await;
        let outcome = match result {
            Ok(Ok(files)) => Ok(files),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("matching task failed: {e}")),
        };
        match outcome {
            Ok(files) => {
                let _ = worker_job.output.set(JobOutput {
                    files,
                    completed_at: SystemTime::now(),
                });
            }
            Err(e) => {
                if !worker_job.cancelled.load(Ordering::Relaxed) {
                    tracing::error!(error = %e, "simulated IIS job failed");
                }
                let _ = worker_job.failure.set(e);
            }
        }
    });

    let location = format!("{}/$bulk-match-status/{id}", st.base_url);
    let mut r = st.outcome(
        StatusCode::ACCEPTED,
        "informational",
        &format!(
            "Accepted {} Patient resources for matching; poll the Content-Location URL for status.",
            job.total
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::CONTENT_LOCATION, v);
    }
    r
}

/// 128 random bits as hex, from the OS-seeded thread generator (unguessable, not from the fault
/// seed).
fn new_job_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Status, DELETE
// ---------------------------------------------------------------------------------------------

async fn status(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    bump(&st.counters.status_polls);
    let faults = &st.cfg.faults;
    if st.dice.chance(faults.drop_rate) {
        return st.dropped();
    }
    let client = match st.authorize(&headers, false) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if st.dice.chance(faults.storm_429) {
        return st.throttled(
            1,
            "Too many requests (simulated storm). Retry after the Retry-After delay.",
        );
    }
    if st.dice.chance(faults.error_rate) {
        return st.injected_error();
    }
    if st.dice.chance(faults.transient_outcome_rate) {
        bump(&st.counters.injected_errors);
        return st.outcome(
            StatusCode::INTERNAL_SERVER_ERROR,
            "transient",
            "A transient problem prevented reporting the status; the job itself is fine. Poll again later.",
        );
    }
    let Some(job) = st.owned_job(&id, &client) else {
        return st.job_gone();
    };

    // Poll-rate accounting per job.
    {
        let now = Instant::now();
        let mut last = lock(&job.last_poll);
        let too_fast = last.is_some_and(|t| now.duration_since(t) < st.cfg.min_poll_interval);
        *last = Some(now);
        if too_fast {
            drop(last);
            let secs = st.cfg.min_poll_interval.as_secs_f64().ceil() as u64;
            return st.throttled(
                secs,
                &format!(
                    "Status polled too often: wait at least {} ms between polls (see Retry-After).",
                    st.cfg.min_poll_interval.as_millis()
                ),
            );
        }
    }

    if let Some(reason) = job.failure.get()
        && job.output.get().is_none()
    {
        return st.outcome(
            StatusCode::INTERNAL_SERVER_ERROR,
            "processing",
            &format!("The match job failed: {reason}"),
        );
    }
    let Some(output) = job.output.get() else {
        let done = job.processed.load(Ordering::Relaxed).min(job.total);
        let progress = format!("matched {done} of {} patients", job.total);
        let mut r = StatusCode::ACCEPTED.into_response();
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&progress) {
            h.insert(HeaderName::from_static("x-progress"), v);
        }
        let (k, v) = retry_after(st.cfg.retry_after_secs);
        h.insert(k, v);
        return r;
    };
    manifest_response(&st, &id, &job, output)
}

fn manifest_response(st: &AppState, id: &str, job: &Job, output: &JobOutput) -> Response {
    let faults = &st.cfg.faults;
    let first_complete = job.complete_polls.fetch_add(1, Ordering::Relaxed) == 0;
    let expires = if faults.expired_first && first_complete {
        SystemTime::now() - Duration::from_secs(3600)
    } else {
        output.completed_at + st.cfg.expires_after
    };
    let transaction_time = if faults.http_date_transaction_time {
        httpdate::fmt_http_date(SystemTime::from(job.transaction_time))
    } else {
        job.transaction_time
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    };
    let files: Vec<Value> = output
        .files
        .iter()
        .enumerate()
        .map(|(n, f)| {
            json!({
                "type": "Bundle",
                "url": format!("{}/$bulk-match-output/{id}/{}.ndjson", st.file_base_url, n + 1),
                "count": f.count,
            })
        })
        .collect();
    let manifest = json!({
        "transactionTime": transaction_time,
        "request": format!("{}/Patient/$bulk-match", st.base_url),
        "requiresAccessToken": st.cfg.requires_access_token,
        "output": files,
        "error": [],
    });
    let mut r = json_response(StatusCode::OK, "application/json", &manifest);
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(expires)) {
        r.headers_mut().insert(header::EXPIRES, v);
    }
    r
}

async fn delete_job(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    bump(&st.counters.deletes);
    let client = match st.authorize(&headers, false) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if st.owned_job(&id, &client).is_none() {
        return st.job_gone();
    }
    let removed = lock(&st.jobs).remove(&id);
    match removed {
        Some(job) => {
            job.cancelled.store(true, Ordering::Relaxed);
            st.outcome(
                StatusCode::ACCEPTED,
                "informational",
                "The job was cancelled or its files deleted.",
            )
        }
        None => st.job_gone(),
    }
}

// ---------------------------------------------------------------------------------------------
// CapabilityStatement, SMART configuration, token endpoint
// ---------------------------------------------------------------------------------------------

/// `GET metadata`: a small CapabilityStatement. Public; but a bearer token presented in SMART
/// mode must be valid (`401` otherwise), so a connection test can prove its token works.
async fn metadata(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    // The CapabilityStatement is public, but a token that is presented must be valid (so a
    // client's connection test finds out about a wrong one).
    if st.smart.is_none()
        && st.cfg.require_token.is_some()
        && headers.contains_key(header::AUTHORIZATION)
        && let Err(r) = st.authorize(&headers, false)
    {
        return *r;
    }
    if let Some(smart) = &st.smart
        && headers.contains_key(header::AUTHORIZATION)
    {
        bump(&st.counters.requests_with_authorization);
        if let Err(Denied::Unauthorized(text)) = smart.check_bearer(&headers) {
            bump(&st.counters.unauthorized_401);
            let mut r = st.outcome(StatusCode::UNAUTHORIZED, "login", &text);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            return r;
        }
    }
    let mut security = json!({
        "description": "No authorization required (simulated IIS without SMART mode)."
    });
    if let Some(smart) = &st.smart {
        security = json!({
            "service": [{
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"
                }]
            }],
            "extension": [{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [{ "url": "token", "valueUri": smart.token_url }]
            }],
            "description": "SMART Backend Services (client_credentials with a signed JWT assertion)."
        });
    }
    let body = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        "kind": "instance",
        "software": { "name": "matchdesk simulated IIS", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "Simulated Immunization Information System", "url": st.base_url },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [{
            "mode": "server",
            "security": security,
            "resource": [{
                "type": "Patient",
                "operation": [{
                    "name": "bulk-match",
                    "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/bulk-match"
                }]
            }]
        }]
    });
    json_response(StatusCode::OK, FHIR_JSON, &body)
}

/// `GET .well-known/smart-configuration` (SMART mode only; `404` otherwise).
async fn smart_configuration(State(st): State<Arc<AppState>>) -> Response {
    match &st.smart {
        Some(smart) => json_response(
            StatusCode::OK,
            "application/json",
            &smart.smart_configuration(),
        ),
        None => st.outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            "This simulated IIS runs without SMART Backend Services (start it with a registered client to enable them).",
        ),
    }
}

/// `POST /auth/token`: SMART Backend Services token requests.
async fn token_endpoint(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    bump(&st.counters.token_requests);
    let Some(smart) = &st.smart else {
        return st.outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            "This simulated IIS runs without SMART Backend Services.",
        );
    };
    let (status, v) = match smart.token(&body).await {
        Ok(v) => {
            bump(&st.counters.tokens_issued);
            (StatusCode::OK, v)
        }
        Err(rej) => (rej.status, rej.body),
    };
    let mut r = json_response(status, "application/json", &v);
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

// ---------------------------------------------------------------------------------------------
// Output files
// ---------------------------------------------------------------------------------------------

async fn download(
    State(st): State<Arc<AppState>>,
    Path((id, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    bump(&st.counters.file_requests);
    let faults = &st.cfg.faults;
    if st.dice.chance(faults.drop_rate) {
        return st.dropped();
    }
    let client = match st.authorize(&headers, true) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if st.dice.chance(faults.error_rate) {
        return st.injected_error();
    }
    let Some(job) = st.owned_job(&id, &client) else {
        return st.job_gone();
    };
    let file_no = file
        .strip_suffix(".ndjson")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n >= 1);
    let Some(output) = job.output.get() else {
        return st.outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            "The job's files are not ready yet; poll the status URL until it returns the manifest.",
        );
    };
    let Some((index, f)) = file_no.and_then(|n| output.files.get(n - 1).map(|f| (n - 1, f))) else {
        return st.outcome(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!(
                "No output file `{file}` in this job; it has {} file(s), named 1.ndjson onwards.",
                output.files.len()
            ),
        );
    };
    let mut bytes = f.bytes.clone();
    let first_download = lock(&job.downloaded).insert(index);
    if faults.truncate_files && first_download && !bytes.is_empty() {
        bump(&st.counters.truncated_files);
        bytes = bytes.slice(..truncation_point(&bytes));
    }
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..bytes.len())
        .step_by(STREAM_CHUNK)
        .map(|start| Ok(bytes.slice(start..(start + STREAM_CHUNK).min(bytes.len()))))
        .collect();
    let mut r = Response::new(Body::from_stream(futures_util::stream::iter(chunks)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_NDJSON));
    r
}

/// Where to cut a file for the `truncate` fault: in the middle of the line that spans the middle
/// of the file (never at a line boundary, so the last line is incomplete).
fn truncation_point(bytes: &[u8]) -> usize {
    let mid = bytes.len() / 2;
    let line_start = bytes[..mid]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let line_end = bytes[mid..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(bytes.len(), |p| mid + p);
    (line_start + (line_end - line_start) / 2).max(line_start + 1)
}

// ---------------------------------------------------------------------------------------------
// Matching and rendering (blocking threads)
// ---------------------------------------------------------------------------------------------

/// What a rendering thread needs besides the registry.
struct Render {
    base_url: String,
    faults: Faults,
    seed: u64,
}

/// A patient with too little data to match: needs a family name or a birth date, and at least
/// two identifying fields in all.
pub fn too_little_data(d: &Demographics) -> bool {
    let has = |s: &Option<String>| s.as_deref().is_some_and(|v| !v.trim().is_empty());
    if !has(&d.family) && d.birth_date.is_none() {
        return true;
    }
    let fields = [
        has(&d.given),
        has(&d.family),
        d.birth_date.is_some(),
        has(&d.phone),
        has(&d.email),
        has(&d.ssn),
        has(&d.medicaid_id),
        has(&d.address_line1),
        has(&d.postal_code),
        has(&d.mothers_maiden_name),
    ];
    fields.iter().filter(|x| **x).count() < 2
}

/// SplitMix64: a per-line random number derived from the job seed and the line index, so
/// parallel threads make the same decisions as a single one.
fn line_random(seed: u64, index: usize) -> u64 {
    let mut z = seed.wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Serialize `v` as JSON onto `out`.
fn put<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) -> Result<(), String> {
    serde_json::to_writer(&mut *out, v).map_err(|e| format!("could not serialize JSON: {e}"))
}

/// Append one `search.mode = outcome` entry.
fn put_outcome_entry(
    out: &mut Vec<u8>,
    code: &str,
    text: &str,
    numeric: bool,
) -> Result<(), String> {
    out.extend_from_slice(b"{\"resource\":");
    put(out, &outcome_json(code, text, numeric))?;
    out.extend_from_slice(b",\"search\":{\"mode\":\"outcome\"}}");
    Ok(())
}

/// Append one match Bundle (one ndjson line, with its newline) for a submitted patient.
///
/// The envelope is written directly (field order as in the spec's example); only the Patient and
/// OperationOutcome resources go through `serde_json::Value`. This is the hot path of a large job.
fn render_bundle(
    out: &mut Vec<u8>,
    registry: &Registry,
    submitted_id: &str,
    query: &Demographics,
    opts: &SearchOptions,
    r: &Render,
    line_index: usize,
) -> Result<(), String> {
    let f = &r.faults;
    let incomplete = too_little_data(query);
    let mut hits = if incomplete {
        Vec::new()
    } else {
        registry.search(query, opts)
    };
    if f.shuffle_entries && hits.len() > 1 {
        let mut rng = ChaCha8Rng::seed_from_u64(line_random(r.seed ^ 0x5348_5546, line_index));
        let before: Vec<usize> = hits.iter().map(|h| h.index).collect();
        hits.shuffle(&mut rng);
        if hits.iter().map(|h| h.index).eq(before.iter().copied()) {
            hits.reverse();
        }
    }
    let outcomes = usize::from(hits.is_empty());
    let total = hits.len() + if f.total_counts_outcomes { outcomes } else { 0 };

    let start = out.len();
    out.extend_from_slice(
        b"{\"resourceType\":\"Bundle\",\"type\":\"searchset\",\"meta\":{\"extension\":[{\"url\":\"",
    );
    out.extend_from_slice(MATCH_RESOURCE_URL.as_bytes());
    out.extend_from_slice(b"\",\"valueReference\":{\"reference\":");
    put(out, &format!("Patient/{submitted_id}"))?;
    out.extend_from_slice(b"}}]},\"total\":");
    put(out, &total)?;
    out.extend_from_slice(b",\"entry\":[");
    for (k, hit) in hits.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        let d = registry.patient(hit.index);
        let fallback;
        let iis_id = match d.iis_id.as_deref() {
            Some(id) => id,
            None => {
                fallback = format!("iis-{}", hit.index);
                &fallback
            }
        };
        out.extend_from_slice(b"{\"fullUrl\":");
        if f.relative_full_urls {
            put(out, &format!("Patient/{iis_id}"))?;
        } else {
            put(out, &format!("{}/Patient/{iis_id}", r.base_url))?;
        }
        out.extend_from_slice(b",\"resource\":");
        put(out, &to_patient(iis_id, d))?;
        out.extend_from_slice(b",\"search\":{\"extension\":[{\"url\":\"");
        out.extend_from_slice(MATCH_GRADE_URL.as_bytes());
        out.extend_from_slice(b"\",\"valueCode\":\"");
        out.extend_from_slice(hit.grade.code().as_bytes());
        out.extend_from_slice(b"\"}],\"mode\":\"match\",\"score\":");
        put(
            out,
            &((hit.score.clamp(0.0, 1.0) * 1000.0).round() / 1000.0),
        )?;
        out.extend_from_slice(b"}}");
    }
    if incomplete {
        put_outcome_entry(
            out,
            "incomplete",
            "Too little data to match: send at least a family name or a birth date, plus one more identifying field.",
            f.numeric_issue_codes,
        )?;
    } else if hits.is_empty() {
        put_outcome_entry(
            out,
            "informational",
            "No patient in the registry matched. Check the spelling of the name and the birth date, or add more identifiers.",
            f.numeric_issue_codes,
        )?;
    }
    out.extend_from_slice(b"]}");

    if f.malformed_rate > 0.0 {
        let roll = line_random(r.seed ^ 0x4D41_4C46, line_index);
        let p = (roll >> 11) as f64 / (1u64 << 53) as f64;
        if p < f.malformed_rate {
            let garbage: Vec<u8> = match roll % 3 {
                0 => out[start..start + (out.len() - start) / 2].to_vec(),
                1 => b"<html><body><h1>502 Bad Gateway</h1></body></html>".to_vec(),
                _ => b"{\"resourceType\":\"Bundle\",\"type\":searchset,,}".to_vec(),
            };
            out.truncate(start);
            out.extend_from_slice(&garbage);
        }
    }
    out.push(b'\n');
    Ok(())
}

/// Match and render a contiguous run of submitted patients (`first` = index of the first one in
/// the job) into ndjson lines.
fn render_range(
    registry: &Registry,
    job: &Job,
    patients: &[(String, Demographics)],
    first: usize,
    opts: &SearchOptions,
    r: &Render,
    pace: Option<(Instant, usize)>,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(patients.len() * 1024);
    for (k, (id, d)) in patients.iter().enumerate() {
        if job.cancelled.load(Ordering::Relaxed) {
            return Err("the job was cancelled".into());
        }
        if let Some((start, rate)) = pace {
            let due = start + Duration::from_secs_f64((first + k) as f64 / rate as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        render_bundle(&mut out, registry, id, d, opts, r, first + k)?;
        job.processed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(out)
}

/// Run a whole job: files of `per_file` bundles each, every file split across the cores unless
/// a processing rate is set.
fn process(
    registry: &Registry,
    job: &Job,
    patients: &[(String, Demographics)],
    opts: &SearchOptions,
    r: &Render,
    per_file: usize,
    rate: Option<usize>,
) -> Result<Vec<OutputFile>, String> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let pace = rate.map(|r| (Instant::now(), r.max(1)));
    let mut files = Vec::with_capacity(patients.len().div_ceil(per_file));
    for (f, chunk) in patients.chunks(per_file).enumerate() {
        let first = f * per_file;
        let bytes = if pace.is_some() || threads == 1 || chunk.len() < 64 {
            render_range(registry, job, chunk, first, opts, r, pace)?
        } else {
            let part = chunk.len().div_ceil(threads);
            let parts: Vec<Result<Vec<u8>, String>> = std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .chunks(part)
                    .enumerate()
                    .map(|(i, sub)| {
                        s.spawn(move || {
                            render_range(registry, job, sub, first + i * part, opts, r, None)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err("a matching thread panicked".into()))
                    })
                    .collect()
            });
            let mut bytes = Vec::with_capacity(parts.iter().flatten().map(Vec::len).sum());
            for p in parts {
                bytes.extend_from_slice(&p?);
            }
            bytes
        };
        files.push(OutputFile {
            bytes: Bytes::from(bytes),
            count: chunk.len(),
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MatchGrade, Sex};
    use chrono::NaiveDate;

    const GIVEN: [&str; 12] = [
        "Olivia", "Liam", "Emma", "Noah", "Ava", "Elijah", "Sophia", "Lucas", "Mia", "Mateo",
        "Amelia", "Levi",
    ];
    const FAMILY: [&str; 10] = [
        "Garcia",
        "Nguyen",
        "Okafor",
        "Smith",
        "Kowalski",
        "Haddad",
        "Johansson",
        "Patel",
        "Reyes",
        "Whitfield",
    ];

    fn person(i: usize) -> Demographics {
        Demographics {
            given: Some(GIVEN[i % GIVEN.len()].to_string()),
            family: Some(FAMILY[(i / GIVEN.len()) % FAMILY.len()].to_string()),
            birth_date: NaiveDate::from_ymd_opt(
                2000 + (i % 20) as i32,
                1 + (i % 12) as u32,
                1 + (i % 28) as u32,
            ),
            sex: Some(if i.is_multiple_of(2) {
                Sex::Female
            } else {
                Sex::Male
            }),
            postal_code: Some(format!("{:05}", 10_000 + i * 7)),
            phone: Some(format!("555{:07}", 1_000_000 + i * 13)),
            iis_id: Some(format!("IIS{:06}", i)),
            ..Demographics::default()
        }
    }

    /// 120 distinct people plus a near-duplicate of person 0 (same family, birth date and
    /// address, another given name), so a query for person 0 has candidates of different scores.
    fn registry() -> Arc<Registry> {
        let mut v: Vec<Demographics> = (0..120).map(person).collect();
        let mut sib = person(0);
        sib.given = Some("Olive".into());
        sib.iis_id = Some("IIS-SIB".into());
        v.push(sib);
        Arc::new(Registry::new(v))
    }

    fn fast_cfg() -> SimConfig {
        SimConfig {
            min_poll_interval: Duration::ZERO,
            ..SimConfig::default()
        }
    }

    async fn serve(cfg: SimConfig) -> SimServer {
        start(registry(), cfg, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap()
    }

    fn params(patients: &[Value], extra: &[Value]) -> Value {
        let mut p: Vec<Value> = patients
            .iter()
            .map(|r| json!({"name": "resource", "resource": r}))
            .collect();
        p.extend_from_slice(extra);
        json!({"resourceType": "Parameters", "parameter": p})
    }

    /// Submitted patient `sub-{i}` with the demographics of registry person `i`.
    fn query(i: usize) -> Value {
        let mut d = person(i);
        d.iis_id = None;
        to_patient(&format!("sub-{i}"), &d)
    }

    fn incomplete(id: &str) -> Value {
        json!({"resourceType": "Patient", "id": id, "name": [{"given": ["Ava"]}]})
    }

    async fn kick(c: &reqwest::Client, srv: &SimServer, body: &Value) -> reqwest::Response {
        c.post(srv.kickoff_url())
            .header("Prefer", "respond-async")
            .header("Accept", "application/fhir+json")
            .header("Content-Type", "application/fhir+json")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn kick_ok(c: &reqwest::Client, srv: &SimServer, body: &Value) -> String {
        let r = kick(c, srv, body).await;
        assert_eq!(r.status(), 202);
        r.headers()["content-location"]
            .to_str()
            .unwrap()
            .to_string()
    }

    async fn wait_complete(c: &reqwest::Client, url: &str) -> reqwest::Response {
        for _ in 0..500 {
            let r = c.get(url).send().await.unwrap();
            if r.status() == 200 {
                return r;
            }
            assert_eq!(r.status(), 202, "unexpected status while polling");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("job did not complete");
    }

    async fn manifest(c: &reqwest::Client, url: &str) -> Value {
        wait_complete(c, url).await.json().await.unwrap()
    }

    fn lines(body: &str) -> Vec<Value> {
        body.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn issue_code(oo: &Value) -> Value {
        assert_eq!(oo["resourceType"], "OperationOutcome");
        oo["issue"][0]["code"].clone()
    }

    async fn outcome_of(r: reqwest::Response) -> Value {
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "application/fhir+json"
        );
        r.json().await.unwrap()
    }

    #[tokio::test]
    async fn kickoff_returns_202_with_absolute_content_location() {
        let srv = serve(fast_cfg()).await;
        let c = reqwest::Client::new();
        let r = kick(&c, &srv, &params(&[query(1)], &[])).await;
        assert_eq!(r.status(), 202);
        let loc = r.headers()["content-location"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            loc.starts_with(&format!("{}/$bulk-match-status/", srv.base_url)),
            "{loc}"
        );
        let id = loc.rsplit('/').next().unwrap();
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|ch| ch.is_ascii_hexdigit()));
        let oo = outcome_of(r).await;
        assert_eq!(oo["issue"][0]["severity"], "information");
        let loc2 = kick_ok(&c, &srv, &params(&[query(1)], &[])).await;
        assert_ne!(loc, loc2, "job ids must differ");
        assert_eq!(srv.stats().kickoffs, 2);
        assert_eq!(srv.stats().jobs_accepted, 2);
    }

    #[tokio::test]
    async fn kickoff_rejections_are_operation_outcomes() {
        let srv = serve(SimConfig {
            resource_limit: 3,
            ..fast_cfg()
        })
        .await;
        let c = reqwest::Client::new();
        // Over the limit: 413 stating the limit.
        let four: Vec<Value> = (0..4).map(query).collect();
        let r = kick(&c, &srv, &params(&four, &[])).await;
        assert_eq!(r.status(), 413);
        let oo = outcome_of(r).await;
        let text = oo["issue"][0]["details"]["text"].as_str().unwrap();
        assert!(
            text.contains("at most 3") && text.contains("has 4"),
            "{text}"
        );
        // Exactly at the limit is fine.
        kick_ok(&c, &srv, &params(&four[..3], &[])).await;
        // Missing Prefer: 400.
        let r = c
            .post(srv.kickoff_url())
            .json(&params(&[query(1)], &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let oo = outcome_of(r).await;
        assert!(
            oo["issue"][0]["details"]["text"]
                .as_str()
                .unwrap()
                .contains("Prefer")
        );
        // Patient without id: 400.
        let no_id = json!({"resourceType": "Patient", "name": [{"family": "Reyes"}]});
        let r = kick(&c, &srv, &params(&[query(1), no_id], &[])).await;
        assert_eq!(r.status(), 400);
        let text = outcome_of(r).await["issue"][0]["details"]["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            text.contains("parameter[1]") && text.contains("no id"),
            "{text}"
        );
        // Bad output format: 400; the three spellings of ndjson are accepted.
        let fmt = |f: &str| json!({"name": "_outputFormat", "valueString": f});
        let r = kick(&c, &srv, &params(&[query(1)], &[fmt("text/csv")])).await;
        assert_eq!(r.status(), 400);
        for f in OUTPUT_FORMATS {
            kick_ok(&c, &srv, &params(&[query(1)], &[fmt(f)])).await;
        }
        // Not JSON, not Parameters, no resource.
        let r = c
            .post(srv.kickoff_url())
            .header("Prefer", "respond-async")
            .body("{nope")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert!(
            outcome_of(r).await["issue"][0]["details"]["text"]
                .as_str()
                .unwrap()
                .contains("column")
        );
        let r = kick(&c, &srv, &json!({"resourceType": "Bundle"})).await;
        assert_eq!(r.status(), 400);
        let r = kick(&c, &srv, &params(&[], &[])).await;
        assert_eq!(r.status(), 400);
        // The CapabilityStatement exists (public).
        let r = c
            .get(format!("{}/metadata", srv.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.json::<Value>().await.unwrap()["resourceType"],
            "CapabilityStatement"
        );
        // Unknown route: 404 OperationOutcome.
        let r = c
            .get(format!("{}/Observation", srv.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(issue_code(&outcome_of(r).await), "not-found");
        // Wrong method: 405 OperationOutcome.
        let r = c.get(srv.kickoff_url()).send().await.unwrap();
        assert_eq!(r.status(), 405);
        assert_eq!(issue_code(&outcome_of(r).await), "not-supported");
    }

    #[tokio::test]
    async fn in_progress_polls_show_progress_and_too_fast_polls_get_429() {
        let srv = serve(SimConfig {
            processing_rate: Some(20),
            retry_after_secs: 3,
            ..SimConfig::default()
        })
        .await;
        let c = reqwest::Client::new();
        let patients: Vec<Value> = (0..60).map(query).collect();
        let loc = kick_ok(&c, &srv, &params(&patients, &[])).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = c.get(&loc).send().await.unwrap();
        assert_eq!(r.status(), 202);
        let progress = r.headers()["x-progress"].to_str().unwrap().to_string();
        assert!(progress.len() < 100);
        assert!(
            progress.starts_with("matched ") && progress.ends_with(" of 60 patients"),
            "{progress}"
        );
        let done: usize = progress.split(' ').nth(1).unwrap().parse().unwrap();
        assert!((1..60).contains(&done), "{progress}");
        assert_eq!(r.headers()["retry-after"], "3");
        // Immediately again: throttled.
        let r = c.get(&loc).send().await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(issue_code(&outcome_of(r).await), "throttled");
        assert_eq!(srv.stats().throttled_429, 1);
        // After the interval: 202 again, with more progress.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let r = c.get(&loc).send().await.unwrap();
        assert_eq!(r.status(), 202);
        let later: usize = r.headers()["x-progress"]
            .to_str()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert!(later > done);
        // Cancel the running job.
        let r = c.delete(&loc).send().await.unwrap();
        assert_eq!(r.status(), 202);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let r = c.get(&loc).send().await.unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(issue_code(&outcome_of(r).await), "not-found");
        assert_eq!(srv.stats().deletes, 1);
        assert_eq!(srv.stats().status_polls, 4);
        assert_eq!(srv.job_count(), 0);
    }

    #[tokio::test]
    async fn complete_manifest_lists_several_files_with_counts() {
        let srv = serve(SimConfig {
            bundles_per_file: 2,
            ..fast_cfg()
        })
        .await;
        let c = reqwest::Client::new();
        let patients: Vec<Value> = (0..5).map(query).collect();
        let loc = kick_ok(&c, &srv, &params(&patients, &[])).await;
        let r = wait_complete(&c, &loc).await;
        assert_eq!(r.headers()["content-type"], "application/json");
        let expires = httpdate::parse_http_date(r.headers()["expires"].to_str().unwrap()).unwrap();
        let ahead = expires.duration_since(SystemTime::now()).unwrap();
        assert!(
            ahead > Duration::from_secs(3500) && ahead <= Duration::from_secs(3600),
            "{ahead:?}"
        );
        let m: Value = r.json().await.unwrap();
        let tt = m["transactionTime"].as_str().unwrap();
        let tt = DateTime::parse_from_rfc3339(tt).unwrap();
        assert!((Utc::now() - tt.with_timezone(&Utc)).num_seconds().abs() < 60);
        assert_eq!(m["request"], srv.kickoff_url());
        assert_eq!(m["requiresAccessToken"], false);
        assert_eq!(m["error"], json!([]));
        let out = m["output"].as_array().unwrap();
        assert_eq!(out.len(), 3);
        let counts: Vec<u64> = out.iter().map(|o| o["count"].as_u64().unwrap()).collect();
        assert_eq!(counts, vec![2, 2, 1]);
        let mut refs = Vec::new();
        for o in out {
            assert_eq!(o["type"], "Bundle");
            let url = o["url"].as_str().unwrap();
            assert!(url.starts_with(&format!("{}/$bulk-match-output/", srv.base_url)));
            let body = c.get(url).send().await.unwrap().text().await.unwrap();
            for b in lines(&body) {
                refs.push(
                    b["meta"]["extension"][0]["valueReference"]["reference"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
        }
        let expected: Vec<String> = (0..5).map(|i| format!("Patient/sub-{i}")).collect();
        assert_eq!(
            refs, expected,
            "one bundle per patient, in submission order"
        );
    }

    #[tokio::test]
    async fn files_hold_searchset_bundles_with_grades_scores_and_outcomes() {
        let srv = serve(fast_cfg()).await;
        let c = reqwest::Client::new();
        // 150 patients: large enough to be split across threads; order must survive.
        let mut patients: Vec<Value> = (0..149).map(|i| query(i % 120)).collect();
        patients.insert(7, incomplete("thin-1"));
        let extra = [json!({"name": "count", "valueInteger": 3})];
        let loc = kick_ok(&c, &srv, &params(&patients, &extra)).await;
        let m = manifest(&c, &loc).await;
        let url = m["output"][0]["url"].as_str().unwrap();
        let r = c.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/fhir+ndjson");
        let body = r.text().await.unwrap();
        assert!(body.ends_with('\n'));
        let bundles = lines(&body);
        assert_eq!(bundles.len(), 150);
        for (k, b) in bundles.iter().enumerate() {
            assert_eq!(b["resourceType"], "Bundle");
            assert_eq!(b["type"], "searchset");
            let ext = &b["meta"]["extension"][0];
            assert_eq!(ext["url"], MATCH_RESOURCE_URL);
            let want = match k {
                7 => "Patient/thin-1".to_string(),
                k if k < 7 => format!("Patient/sub-{k}"),
                k => format!("Patient/sub-{}", (k - 1) % 120),
            };
            assert_eq!(ext["valueReference"]["reference"], want.as_str());
            let entries = b["entry"].as_array().unwrap();
            if k == 7 {
                assert_eq!(b["total"], 0);
                assert_eq!(entries.len(), 1);
                assert_eq!(entries[0]["search"]["mode"], "outcome");
                let oo = &entries[0]["resource"];
                assert_eq!(oo["issue"][0]["severity"], "error");
                assert_eq!(issue_code(oo), "incomplete");
                continue;
            }
            let matches: Vec<&Value> = entries
                .iter()
                .filter(|e| e["search"]["mode"] == "match")
                .collect();
            assert_eq!(b["total"].as_u64().unwrap() as usize, matches.len());
            assert!(!matches.is_empty() && matches.len() <= 3, "bundle {k}");
            let scores: Vec<f64> = matches
                .iter()
                .map(|e| e["search"]["score"].as_f64().unwrap())
                .collect();
            assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
            assert!(
                scores.windows(2).all(|w| w[0] >= w[1]),
                "ordered by score: {scores:?}"
            );
            for e in &matches {
                let g = &e["search"]["extension"][0];
                assert_eq!(g["url"], MATCH_GRADE_URL);
                assert!(MatchGrade::parse(g["valueCode"].as_str().unwrap()).is_some());
                let id = e["resource"]["id"].as_str().unwrap();
                assert_eq!(e["resource"]["resourceType"], "Patient");
                assert_eq!(
                    e["fullUrl"],
                    format!("{}/Patient/{id}", srv.base_url).as_str()
                );
            }
            // The best candidate is the registry person the query was copied from.
            let src = if k < 7 { k } else { k - 1 } % 120;
            assert_eq!(
                matches[0]["resource"]["id"],
                format!("IIS{src:06}").as_str()
            );
            assert_eq!(matches[0]["search"]["extension"][0]["valueCode"], "certain");
        }
    }

    #[tokio::test]
    async fn files_are_gzipped_when_asked() {
        let srv = serve(fast_cfg()).await;
        let c = reqwest::Client::new();
        let loc = kick_ok(&c, &srv, &params(&[query(3), query(4)], &[])).await;
        let url = manifest(&c, &loc).await["output"][0]["url"]
            .as_str()
            .unwrap()
            .to_string();
        let raw = reqwest::Client::builder().no_gzip().build().unwrap();
        let plain = raw.get(&url).send().await.unwrap().bytes().await.unwrap();
        let r = raw
            .get(&url)
            .header("Accept-Encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["content-encoding"], "gzip");
        assert_eq!(r.headers()["content-type"], "application/fhir+ndjson");
        let gz = r.bytes().await.unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        assert_ne!(gz, plain);
        // The automatic client decompresses to the same content.
        let auto = c.get(&url).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(auto, plain);
    }

    #[tokio::test]
    async fn delete_removes_status_and_files() {
        let srv = serve(fast_cfg()).await;
        let c = reqwest::Client::new();
        let loc = kick_ok(&c, &srv, &params(&[query(2)], &[])).await;
        let url = manifest(&c, &loc).await["output"][0]["url"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
        let r = c.delete(&loc).send().await.unwrap();
        assert_eq!(r.status(), 202);
        let r = c.get(&loc).send().await.unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(issue_code(&outcome_of(r).await), "not-found");
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 404);
        outcome_of(r).await;
        assert_eq!(c.delete(&loc).send().await.unwrap().status(), 404);
        let unknown = format!("{}/$bulk-match-status/00ff", srv.base_url);
        assert_eq!(c.get(&unknown).send().await.unwrap().status(), 404);
        let missing_file = url.replace("/1.ndjson", "/9.ndjson");
        assert_eq!(c.get(&missing_file).send().await.unwrap().status(), 404);
    }

    #[tokio::test]
    async fn expired_jobs_are_gone() {
        let srv = serve(SimConfig {
            expires_after: Duration::from_millis(200),
            ..fast_cfg()
        })
        .await;
        let c = reqwest::Client::new();
        let loc = kick_ok(&c, &srv, &params(&[query(2)], &[])).await;
        let url = manifest(&c, &loc).await["output"][0]["url"]
            .as_str()
            .unwrap()
            .to_string();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(c.get(&url).send().await.unwrap().status(), 404);
        assert_eq!(c.get(&loc).send().await.unwrap().status(), 404);
    }

    #[tokio::test]
    async fn bearer_token_is_required_and_counted() {
        let srv = serve(SimConfig {
            require_token: Some("s3cret".into()),
            requires_access_token: false,
            separate_file_listener: true,
            ..fast_cfg()
        })
        .await;
        assert_ne!(srv.file_base_url, srv.base_url);
        assert!(srv.file_base_url.ends_with("/files"));
        let c = reqwest::Client::new();
        let body = params(&[query(5)], &[]);
        let r = kick(&c, &srv, &body).await;
        assert_eq!(r.status(), 401);
        assert_eq!(issue_code(&outcome_of(r).await), "login");
        let r = c
            .post(srv.kickoff_url())
            .header("Prefer", "respond-async")
            .bearer_auth("wrong")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = c
            .post(srv.kickoff_url())
            .header("Prefer", "respond-async")
            .bearer_auth("s3cret")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let loc = r.headers()["content-location"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(c.get(&loc).send().await.unwrap().status(), 401);
        let m: Value = loop {
            let r = c.get(&loc).bearer_auth("s3cret").send().await.unwrap();
            if r.status() == 200 {
                break r.json().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(m["requiresAccessToken"], false);
        let url = m["output"][0]["url"].as_str().unwrap();
        assert!(url.starts_with(&srv.file_base_url), "{url}");
        // requiresAccessToken=false: the file server needs no token.
        let r = c.get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(lines(&r.text().await.unwrap()).len(), 1);
        let s = srv.stats();
        assert_eq!(s.file_requests, 1);
        assert_eq!(s.file_requests_with_authorization, 0);
        assert_eq!(s.unauthorized_401, 3);
        assert!(s.requests_with_authorization >= 3);
        assert_eq!(c.delete(&loc).send().await.unwrap().status(), 401);
        assert_eq!(
            c.delete(&loc)
                .bearer_auth("s3cret")
                .send()
                .await
                .unwrap()
                .status(),
            202
        );
    }

    #[tokio::test]
    async fn files_need_the_token_when_the_manifest_says_so() {
        let srv = serve(SimConfig {
            require_token: Some("tok".into()),
            requires_access_token: true,
            ..fast_cfg()
        })
        .await;
        let c = reqwest::Client::new();
        let r = c
            .post(srv.kickoff_url())
            .header("Prefer", "respond-async")
            .bearer_auth("tok")
            .json(&params(&[query(5)], &[]))
            .send()
            .await
            .unwrap();
        let loc = r.headers()["content-location"]
            .to_str()
            .unwrap()
            .to_string();
        let m: Value = loop {
            let r = c.get(&loc).bearer_auth("tok").send().await.unwrap();
            if r.status() == 200 {
                break r.json().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(m["requiresAccessToken"], true);
        let url = m["output"][0]["url"].as_str().unwrap();
        assert_eq!(c.get(url).send().await.unwrap().status(), 401);
        assert_eq!(
            c.get(url).bearer_auth("tok").send().await.unwrap().status(),
            200
        );
        assert_eq!(srv.stats().file_requests_with_authorization, 1);
    }

    fn with_faults(spec: &str) -> SimConfig {
        SimConfig {
            faults: spec.parse().unwrap(),
            ..fast_cfg()
        }
    }

    #[tokio::test]
    async fn fault_5xx_and_transient_on_status_and_files() {
        let srv = serve(with_faults("5xx=1")).await;
        let c = reqwest::Client::new();
        let loc = kick_ok(&c, &srv, &params(&[query(1)], &[])).await;
        let r = c.get(&loc).send().await.unwrap();
        assert!(r.status().is_server_error());
        assert_eq!(issue_code(&outcome_of(r).await), "exception");
        let id = loc.rsplit('/').next().unwrap();
        let r = c
            .get(format!("{}/$bulk-match-output/{id}/1.ndjson", srv.base_url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_server_error());
        assert_eq!(srv.stats().injected_errors, 2);

        let srv = serve(with_faults("transient=1")).await;
        let loc = kick_ok(&c, &srv, &params(&[query(1)], &[])).await;
        let r = c.get(&loc).send().await.unwrap();
        assert_eq!(r.status(), 500);
        assert_eq!(issue_code(&outcome_of(r).await), "transient");
    }

    #[tokio::test]
    async fn fault_drop_makes_the_client_see_a_connection_error() {
        let srv = serve(with_faults("drop=1")).await;
        let c = reqwest::Client::new();
        let sent = c
            .post(srv.kickoff_url())
            .header("Prefer", "respond-async")
            .json(&params(&[query(1)], &[]))
            .send()
            .await;
        match sent {
            Err(e) => assert!(!e.is_status(), "{e}"),
            Ok(r) => panic!(
                "got a response ({}) instead of a dropped connection",
                r.status()
            ),
        }
        assert_eq!(srv.stats().dropped_connections, 1);
        // The server keeps serving after a drop.
        let sent = c
            .get(format!("{}/$bulk-match-status/x", srv.base_url))
            .send()
            .await;
        assert!(sent.is_err());
        assert_eq!(srv.stats().dropped_connections, 2);
    }

    #[tokio::test]
    async fn fault_slow_delays_responses() {
        let srv = serve(with_faults("slow=300ms")).await;
        let c = reqwest::Client::new();
        let t = Instant::now();
        let r = c
            .get(format!("{}/$bulk-match-status/none", srv.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert!(t.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn fault_429_storm_on_kickoff_and_status() {
        let srv = serve(with_faults("429=1")).await;
        let c = reqwest::Client::new();
        let r = kick(&c, &srv, &params(&[query(1)], &[])).await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(issue_code(&outcome_of(r).await), "throttled");
        let r = c
            .get(format!("{}/$bulk-match-status/abc", srv.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(srv.stats().throttled_429, 2);
    }

    async fn one_file(srv: &SimServer, patients: &[Value]) -> (String, Value) {
        let c = reqwest::Client::new();
        let loc = kick_ok(&c, srv, &params(patients, &[])).await;
        let r = wait_complete(&c, &loc).await;
        let m: Value = r.json().await.unwrap();
        let url = m["output"][0]["url"].as_str().unwrap().to_string();
        (url, m)
    }

    #[tokio::test]
    async fn fault_malformed_replaces_lines_with_garbage() {
        let srv = serve(with_faults("malformed=1")).await;
        let patients: Vec<Value> = (0..10).map(query).collect();
        let (url, _) = one_file(&srv, &patients).await;
        let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
        assert_eq!(body.lines().count(), 10);
        for l in body.lines() {
            assert!(serde_json::from_str::<Value>(l).is_err(), "{l}");
        }
        let srv = serve(with_faults("malformed=0.5,seed=3")).await;
        let patients: Vec<Value> = (0..40).map(query).collect();
        let (url, _) = one_file(&srv, &patients).await;
        let body = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let bad = body
            .lines()
            .filter(|l| serde_json::from_str::<Value>(l).is_err())
            .count();
        assert!((5..=35).contains(&bad), "{bad} of 40");
    }

    #[tokio::test]
    async fn fault_truncate_cuts_the_first_download_only() {
        let srv = serve(with_faults("truncate")).await;
        let patients: Vec<Value> = (0..6).map(query).collect();
        let (url, _) = one_file(&srv, &patients).await;
        let first = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let second = reqwest::get(&url).await.unwrap().text().await.unwrap();
        assert!(first.len() < second.len());
        assert!(second.starts_with(&first));
        assert!(!first.ends_with('\n'));
        let last = first.lines().last().unwrap();
        assert!(serde_json::from_str::<Value>(last).is_err());
        assert_eq!(lines(&second).len(), 6);
        assert_eq!(srv.stats().truncated_files, 1);
    }

    #[tokio::test]
    async fn fault_accept_strict_rejects_fhir_json_accept() {
        let srv = serve(with_faults("accept-strict")).await;
        let c = reqwest::Client::new();
        let body = params(&[query(1)], &[]);
        let r = kick(&c, &srv, &body).await;
        assert_eq!(r.status(), 400);
        outcome_of(r).await;
        let r = c
            .post(srv.kickoff_url())
            .header("Prefer", "respond-async")
            .header("Accept", "application/fhir+ndjson")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let r = c
            .post(srv.kickoff_url())
            .header("Prefer", "respond-async")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }

    #[tokio::test]
    async fn fault_expired_first_and_http_date() {
        let srv = serve(with_faults("expired-first,http-date")).await;
        let c = reqwest::Client::new();
        let loc = kick_ok(&c, &srv, &params(&[query(1)], &[])).await;
        let r = wait_complete(&c, &loc).await;
        let exp = httpdate::parse_http_date(r.headers()["expires"].to_str().unwrap()).unwrap();
        assert!(exp < SystemTime::now());
        let m: Value = r.json().await.unwrap();
        let tt = m["transactionTime"].as_str().unwrap();
        assert!(httpdate::parse_http_date(tt).is_ok(), "{tt}");
        assert!(DateTime::parse_from_rfc3339(tt).is_err());
        let r = c.get(&loc).send().await.unwrap();
        let exp = httpdate::parse_http_date(r.headers()["expires"].to_str().unwrap()).unwrap();
        assert!(exp > SystemTime::now());
    }

    #[tokio::test]
    async fn fault_numeric_codes_total_outcomes_relative_urls() {
        let srv = serve(with_faults("numeric-codes,total-outcomes,relative-urls")).await;
        let c = reqwest::Client::new();
        let r = c
            .post(srv.kickoff_url())
            .json(&params(&[query(1)], &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert!(issue_code(&outcome_of(r).await).is_number());
        let (url, _) = one_file(&srv, &[query(1), incomplete("thin")]).await;
        let b = lines(&c.get(&url).send().await.unwrap().text().await.unwrap());
        let full = b[0]["entry"][0]["fullUrl"].as_str().unwrap();
        assert!(full.starts_with("Patient/"), "{full}");
        assert_eq!(b[1]["total"], 1, "the outcome entry is counted");
        assert!(b[1]["entry"][0]["resource"]["issue"][0]["code"].is_number());
    }

    #[tokio::test]
    async fn fault_shuffle_puts_entries_out_of_score_order() {
        let srv = serve(with_faults("shuffle,seed=5")).await;
        let c = reqwest::Client::new();
        let (url, _) = one_file(&srv, &[query(0)]).await;
        let b = &lines(&c.get(&url).send().await.unwrap().text().await.unwrap())[0];
        let scores: Vec<f64> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| e["search"]["score"].as_f64().unwrap())
            .collect();
        assert!(scores.len() >= 2, "{scores:?}");
        assert!(
            scores.windows(2).any(|w| w[0] < w[1]),
            "not shuffled: {scores:?}"
        );
        // Without the fault the same query comes back ordered.
        let srv = serve(fast_cfg()).await;
        let (url, _) = one_file(&srv, &[query(0)]).await;
        let b = &lines(&c.get(&url).send().await.unwrap().text().await.unwrap())[0];
        let scores: Vec<f64> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["search"]["score"].as_f64().unwrap())
            .collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]));
    }

    #[tokio::test]
    async fn generated_registry_patients_find_themselves() {
        let reg = Arc::new(Registry::generate(500, 1));
        let srv = start(reg.clone(), fast_cfg(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let c = reqwest::Client::new();
        let picks: Vec<usize> = (0..500).step_by(25).collect();
        let patients: Vec<Value> = picks
            .iter()
            .map(|&i| {
                let mut d = reg.patient(i).clone();
                d.iis_id = None;
                to_patient(&format!("q{i}"), &d)
            })
            .collect();
        let loc = kick_ok(&c, &srv, &params(&patients, &[])).await;
        let url = manifest(&c, &loc).await["output"][0]["url"]
            .as_str()
            .unwrap()
            .to_string();
        let bundles = lines(&c.get(&url).send().await.unwrap().text().await.unwrap());
        assert_eq!(bundles.len(), picks.len());
        let mut certain = 0;
        for (b, &i) in bundles.iter().zip(&picks) {
            let want = reg.patient(i).iis_id.clone().unwrap();
            let ids: Vec<&str> = b["entry"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["resource"]["id"].as_str())
                .collect();
            assert!(ids.contains(&want.as_str()), "{want} not among {ids:?}");
            if b["entry"][0]["search"]["extension"][0]["valueCode"] == "certain" {
                certain += 1;
            }
        }
        // Exact copies are mostly `certain` (sparse registry records may grade lower).
        assert!(
            certain * 10 >= picks.len() * 8,
            "{certain} of {}",
            picks.len()
        );
    }

    /// Throughput probe: `cargo test --lib sim::server -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore]
    async fn throughput_probe() {
        let t = Instant::now();
        let reg = Arc::new(Registry::generate(100_000, 7));
        eprintln!("registry: {:?}", t.elapsed());
        let srv = start(
            reg.clone(),
            SimConfig {
                resource_limit: 10_000,
                ..fast_cfg()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let c = reqwest::Client::new();
        let patients: Vec<Value> = (0..10_000)
            .map(|i| to_patient(&format!("q{i}"), reg.patient(i * 7)))
            .collect();
        let body = serde_json::to_vec(&params(&patients, &[])).unwrap();
        let t = Instant::now();
        let k = parse_kickoff(&body, 10_000).ok().unwrap();
        eprintln!(
            "server-side parse of {} patients: {:?}",
            k.patients.len(),
            t.elapsed()
        );
        let t = Instant::now();
        let loc = kick_ok(&c, &srv, &params(&patients, &[])).await;
        eprintln!("kick-off accepted: {:?}", t.elapsed());
        let m = manifest(&c, &loc).await;
        eprintln!("10k matched: {:?}", t.elapsed());
        let mut bytes = 0;
        for o in m["output"].as_array().unwrap() {
            bytes += c
                .get(o["url"].as_str().unwrap())
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len();
        }
        eprintln!("downloaded {bytes} bytes: {:?}", t.elapsed());
        let t = Instant::now();
        let opts = SearchOptions::default();
        let hits: usize = (0..10_000)
            .map(|i| reg.search(reg.patient(i * 7), &opts).len())
            .sum();
        eprintln!("search alone, one thread: {hits} hits in {:?}", t.elapsed());
    }

    #[tokio::test]
    async fn shutdown_stops_the_listener() {
        let srv = serve(fast_cfg()).await;
        let url = format!("{}/$bulk-match-status/x", srv.base_url);
        let c = reqwest::Client::new();
        assert_eq!(c.get(&url).send().await.unwrap().status(), 404);
        srv.shutdown().await;
        let fresh = reqwest::Client::new();
        assert!(fresh.get(&url).send().await.is_err());
    }

    #[test]
    fn truncation_point_is_inside_a_line() {
        let data = b"aaaa\nbbbbbbbb\ncccc\n";
        let p = truncation_point(data);
        assert!(p > 0 && p < data.len());
        assert_ne!(data[p - 1], b'\n');
        let one = b"{\"x\":1}\n";
        let p = truncation_point(one);
        assert!(p > 0 && p < one.len() - 1);
    }

    #[test]
    fn thin_patients_are_incomplete() {
        let mut d = Demographics {
            given: Some("Ava".into()),
            ..Demographics::default()
        };
        assert!(too_little_data(&d));
        d.family = Some("Reyes".into());
        assert!(!too_little_data(&d));
        let only_dob = Demographics {
            birth_date: NaiveDate::from_ymd_opt(2001, 2, 3),
            ..Demographics::default()
        };
        assert!(too_little_data(&only_dob));
    }
}
