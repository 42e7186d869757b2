//! HTTP side of `Patient/$bulk-match`: the async request pattern, retries, token scoping and
//! streaming downloads.
//!
//! [`BulkMatchClient`] speaks the protocol of the spec (kick-off → poll the status URL →
//! download the ndjson files → DELETE the job). It owns everything that touches the network and
//! nothing else: chunking, persistence and triage are the engine's. Sub-modules:
//!
//! * [`retry`]: retry policy, jittered backoff, `Retry-After` parsing;
//! * [`security`]: HTTPS enforcement (plain HTTP only to loopback), token scoping by origin,
//!   URL redaction, the [`TokenSource`] abstraction;
//! * [`lines`]: incremental, memory-bounded ndjson line splitting;
//! * [`client`]: the client itself;
//! * [`auth`]: SMART Backend Services authorization (signed client assertions, access tokens,
//!   key generation, connection test).
//!
//! Errors are [`NetError`]s whose messages tell a user what happened and what to do; they never
//! contain tokens, URL query strings (signed URLs carry credentials there) or patient data.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use thiserror::Error;
use tokio::sync::Notify;
use url::Url;

use crate::domain::RowIssue;
use crate::fhir::manifest::Manifest;

pub mod auth;
pub mod client;
pub mod lines;
pub mod retry;
pub mod security;
#[cfg(test)]
mod tests;

pub use auth::{AuthError, SigningAlg, SmartConfig, SmartToken};
pub use client::BulkMatchClient;
pub use retry::{Backoff, Jitter, RetryConfig, parse_retry_after};
pub use security::{StaticToken, TokenSource, check_base_url, redact_url, same_origin};

/// Everything that can go wrong talking to a `$bulk-match` server.
#[derive(Debug, Error)]
pub enum NetError {
    #[error(
        "refusing to send patient data to {url} over plain HTTP; use an https:// address (plain http is allowed only for this computer: localhost, 127.0.0.1, ::1)"
    )]
    Insecure { url: String },
    #[error("the address {url} cannot be used: {problem}")]
    InvalidUrl { url: String, problem: String },
    #[error("could not set up the HTTP client: {message}")]
    Setup { message: String },
    #[error("there are no patients to submit")]
    NothingToSend,
    #[error(
        "could not reach {url}{}: {detail}; check the server address and the network connection",
        retried(*retries)
    )]
    Connect {
        url: String,
        detail: String,
        retries: u32,
    },
    #[error(
        "{url} did not answer in time{}; the server may be overloaded, try again later",
        retried(*retries)
    )]
    Timeout { url: String, retries: u32 },
    #[error("the download of {url} broke off after {bytes} bytes{}: {detail}", retried(*retries))]
    Interrupted {
        url: String,
        bytes: u64,
        detail: String,
        retries: u32,
    },
    #[error(
        "the server refused the request as too large (413 Content Too Large) for {sent} patients ({bytes} bytes){}; send fewer patients per request",
        hint(limit_hint)
    )]
    TooLarge {
        sent: usize,
        bytes: usize,
        limit_hint: Option<String>,
    },
    #[error(
        "the server kept answering 429 Too Many Requests{}; wait a while and try again",
        retried(*retries)
    )]
    Throttled {
        retries: u32,
        retry_after: Option<Duration>,
    },
    #[error("the server rejected the request ({status}): {message}")]
    Rejected {
        status: u16,
        issues: Vec<RowIssue>,
        message: String,
    },
    #[error(
        "the server no longer knows this match job (it answered {status} at {url}); it was deleted or expired, submit the patients again"
    )]
    Gone { url: String, status: u16 },
    #[error(
        "the result file {url} is no longer available ({status}); ask the server for a fresh manifest"
    )]
    Expired { url: String, status: u16 },
    #[error("the server answered {status}: {message}{}", retried(*retries))]
    Server {
        status: u16,
        message: String,
        retries: u32,
    },
    #[error("the server's answer could not be used: {what}")]
    BadResponse { what: String },
    #[error("cancelled")]
    Cancelled,
    #[error(
        "the server refused the credentials ({status}): {message}; check the access token and its scopes"
    )]
    Auth { status: u16, message: String },
    /// Getting an access token failed (SMART Backend Services): the key, the settings, the
    /// token endpoint or an OAuth error. Retryable only when the token endpoint was unreachable
    /// or overloaded.
    #[error(transparent)]
    Authorization(Box<auth::AuthError>),
    #[error("the server's status endpoint failed {times} times in a row: {last}")]
    StatusFailing { times: u32, last: Box<NetError> },
    #[error(
        "the server did not finish the match job within {} minutes; it may still be working, resume later",
        waited.as_secs() / 60
    )]
    WaitTimeout { waited: Duration },
    #[error(
        "line {line} of {url} is longer than {limit} bytes; the file is not ndjson or is corrupt"
    )]
    LineTooLong {
        url: String,
        line: u64,
        limit: usize,
    },
    #[error("line {line} of the result file: {message}")]
    Ingest { line: u64, message: String },
}

fn retried(n: u32) -> String {
    match n {
        0 => String::new(),
        1 => " after 1 retry".to_string(),
        n => format!(" after {n} retries"),
    }
}

fn hint(h: &Option<String>) -> String {
    h.as_ref()
        .map(|h| format!(" (server says: {h})"))
        .unwrap_or_default()
}

impl NetError {
    /// Whether the same request might succeed later (connection trouble, timeouts, 429, 5xx and
    /// transient server errors). Exhausted retries keep the classification: the *engine* may
    /// still try again on a longer time scale.
    pub fn is_retryable(&self) -> bool {
        match self {
            NetError::Authorization(e) => e.is_transient(),
            _ => matches!(
                self,
                NetError::Connect { .. }
                    | NetError::Timeout { .. }
                    | NetError::Interrupted { .. }
                    | NetError::Throttled { .. }
                    | NetError::Server { .. }
            ),
        }
    }

    /// The same error, recording how many retries preceded it.
    pub fn with_retries(mut self, n: u32) -> Self {
        match &mut self {
            NetError::Connect { retries, .. }
            | NetError::Timeout { retries, .. }
            | NetError::Interrupted { retries, .. }
            | NetError::Throttled { retries, .. }
            | NetError::Server { retries, .. } => *retries = n,
            _ => {}
        }
        self
    }
}

/// Which `Accept` header the kick-off uses. Servers disagree; the client falls back on a `400`
/// that blames the header and remembers what worked (persist it per server via
/// [`AcceptMode::key`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AcceptMode {
    /// `Accept: application/fhir+json` (what the spec says).
    FhirJson = 0,
    /// `Accept: application/fhir+ndjson` (what some servers insist on).
    FhirNdjson = 1,
    /// `Accept: */*`: no preference. RFC 9110 treats this like an absent header; it is also
    /// what the HTTP stack sends by default, so a header cannot be truly omitted.
    Any = 2,
}

impl AcceptMode {
    pub const ALL: [AcceptMode; 3] = [
        AcceptMode::FhirJson,
        AcceptMode::FhirNdjson,
        AcceptMode::Any,
    ];

    pub fn key(self) -> &'static str {
        match self {
            AcceptMode::FhirJson => "fhir_json",
            AcceptMode::FhirNdjson => "fhir_ndjson",
            AcceptMode::Any => "any",
        }
    }

    pub fn from_key(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.key() == s)
    }

    /// The header value.
    pub fn header_value(self) -> &'static str {
        match self {
            AcceptMode::FhirJson => "application/fhir+json",
            AcceptMode::FhirNdjson => "application/fhir+ndjson",
            AcceptMode::Any => "*/*",
        }
    }

    /// The inverse of `mode as u8` (unknown values give the spec's default, `FhirJson`).
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => AcceptMode::FhirNdjson,
            2 => AcceptMode::Any,
            _ => AcceptMode::FhirJson,
        }
    }
}

/// How often to poll a job's status URL.
#[derive(Clone, Debug, PartialEq)]
pub struct PollConfig {
    /// First interval (also the floor under a server's `Retry-After`).
    pub initial: Duration,
    /// Largest interval of our own backoff (a server's `Retry-After` may ask for more).
    pub max: Duration,
    /// Give up waiting for a job after this long.
    pub max_wait: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            max_wait: Duration::from_secs(24 * 3600),
        }
    }
}

/// Configuration of a [`BulkMatchClient`].
#[derive(Clone)]
pub struct ClientConfig {
    pub retry: RetryConfig,
    /// Bearer tokens for the FHIR base origin; `None` sends no `Authorization`.
    pub token: Option<Arc<dyn TokenSource>>,
    pub poll: PollConfig,
    pub user_agent: String,
    pub connect_timeout: Duration,
    /// Whole-request limit for kick-off, status and delete requests (not downloads).
    pub request_timeout: Duration,
    /// Longest silence while reading any response (downloads included).
    pub read_timeout: Duration,
    /// Longest accepted ndjson line.
    pub max_line_bytes: usize,
    /// The kick-off `Accept` mode to start with (a remembered per-server value).
    pub accept_mode: AcceptMode,
    /// Seed for backoff jitter; `None` draws from the OS. Tests set it for determinism.
    pub rng_seed: Option<u64>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            retry: RetryConfig::default(),
            token: None,
            poll: PollConfig::default(),
            user_agent: format!("matchdesk/{}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(300),
            read_timeout: Duration::from_secs(120),
            max_line_bytes: 64 * 1024 * 1024,
            accept_mode: AcceptMode::FhirJson,
            rng_seed: None,
        }
    }
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("retry", &self.retry)
            .field("token", &self.token.as_ref().map(|_| "<configured>"))
            .field("poll", &self.poll)
            .field("user_agent", &self.user_agent)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("max_line_bytes", &self.max_line_bytes)
            .field("accept_mode", &self.accept_mode)
            .field("rng_seed", &self.rng_seed)
            .finish()
    }
}

/// An accepted kick-off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KickOff {
    /// Where to poll (absolute; resolved against the kick-off URL if the server sent it relative).
    pub status_url: Url,
}

/// One answer of the status URL.
#[derive(Clone, Debug, PartialEq)]
pub enum PollStatus {
    /// Still working (`202`), or "poll less often" (`429`).
    InProgress {
        /// `X-Progress`, cleaned up and at most 100 characters.
        progress: Option<String>,
        retry_after: Option<Duration>,
    },
    /// Done (`200`).
    Complete {
        manifest: Manifest,
        /// When the files stop being available (`Expires`).
        expires: Option<SystemTime>,
    },
}

/// A finished job, as returned by [`BulkMatchClient::wait_for_manifest`].
#[derive(Clone, Debug, PartialEq)]
pub struct Completed {
    pub manifest: Manifest,
    pub expires: Option<SystemTime>,
}

/// What [`BulkMatchClient::wait_for_manifest`] reports while it waits.
#[derive(Clone, Debug, PartialEq)]
pub enum PollEvent {
    /// The job is running; the next poll is in `next_poll`.
    InProgress {
        progress: Option<String>,
        next_poll: Duration,
    },
    /// The status request failed transiently (`failures` in a row); trying again in `next_poll`.
    Retrying {
        failures: u32,
        next_poll: Duration,
        error: String,
    },
    /// The manifest's `Expires` was already in the past; polling once more for a fresh one.
    ManifestExpired,
    /// The manifest arrived, listing `files` output files.
    Complete { files: usize },
}

/// The per-line callback of [`BulkMatchClient::download_lines`]: `(1-based line number, line)`.
pub type LineSink<'a> = dyn FnMut(u64, &[u8]) -> Result<(), NetError> + Send + 'a;

/// Result of a download.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DownloadStats {
    /// Non-blank lines handed to the callback (each exactly once).
    pub lines: u64,
    /// Bytes (after gzip decoding) of the attempt that completed.
    pub bytes: u64,
    /// Restarts after a broken-off or failed attempt.
    pub retries: u32,
}

/// A cancellation flag shared between the engine (or UI) and a waiting client call.
#[derive(Clone, Debug, Default)]
pub struct CancelFlag {
    flag: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl CancelFlag {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask every waiter to stop; they return [`NetError::Cancelled`] promptly.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Resolves once [`cancel`](Self::cancel) has been called (immediately if it already was).
    pub async fn cancelled(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_cancelled() {
            return;
        }
        notified.await;
    }

    /// Sleep for `d`, or return `Err(Cancelled)` as soon as the flag is raised.
    pub async fn sleep(&self, d: Duration) -> Result<(), NetError> {
        if self.is_cancelled() {
            return Err(NetError::Cancelled);
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.cancelled() => Err(NetError::Cancelled),
        }
    }
}
