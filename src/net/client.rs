//! [`BulkMatchClient`]: the `$bulk-match` asynchronous request pattern over HTTP.
//!
//! Kick-off (`POST {base}/Patient/$bulk-match`), status polling, result download and job
//! deletion, each with the retry behaviour the spec and real servers call for: 429 honours
//! `Retry-After`, 5xx and connection failures back off with jitter, 413 goes straight back to the
//! engine (which halves the chunk), a 400 that blames the `Accept` header triggers a one-time
//! fallback that is remembered for the server, a 401 refreshes the token once. Downloads are
//! streamed line by line with bounded memory and restart transparently after a broken
//! connection, skipping lines already delivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LOCATION, CONTENT_TYPE, EXPIRES, HeaderMap, HeaderValue,
    LOCATION, RETRY_AFTER,
};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tracing::{debug, info, warn};
use url::Url;

use crate::domain::{Demographics, MatchOptions, RowIssue};
use crate::fhir::manifest::parse_manifest;
use crate::fhir::outcome::{is_transient, parse_issues, summary, truncate_chars};
use crate::fhir::patient::to_patient;
use crate::net::lines::LineSplitter;
use crate::net::retry::{Backoff, Jitter, parse_retry_after};
use crate::net::security::{
    HttpSettings, build_http_client, check_base_url, origin_text, redact_url, same_origin,
};
use crate::net::{
    AcceptMode, CancelFlag, ClientConfig, Completed, DownloadStats, KickOff, LineSink, NetError,
    PollEvent, PollStatus,
};

/// Largest error or manifest body read into memory.
const MAX_SMALL_BODY: usize = 16 * 1024 * 1024;
/// Cross-origin redirects followed by hand for downloads.
const MAX_DOWNLOAD_REDIRECTS: usize = 5;

/// A client for one FHIR server. Cheap to clone; clones share the connection pool, the token
/// source and the remembered `Accept` mode.
#[derive(Clone)]
pub struct BulkMatchClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    kickoff_url: Url,
    cfg: ClientConfig,
    accept: AtomicU8,
    seed_counter: AtomicU64,
}

impl std::fmt::Debug for BulkMatchClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkMatchClient")
            .field("base", &redact_url(&self.inner.base))
            .field("accept_mode", &self.accept_mode())
            .finish_non_exhaustive()
    }
}

/// What one attempt of a retried request concluded.
enum Attempt<T> {
    Done(T),
    Retry {
        err: NetError,
        after: Option<Duration>,
    },
}

/// The retry budget of one logical request.
struct RetryState<'a> {
    cfg: &'a crate::net::RetryConfig,
    backoff: Backoff,
    start: Instant,
    /// Retries since the start (or since the last progress, see [`RetryState::progress_made`]).
    retries: u32,
    /// Retries in all.
    total: u32,
}

impl RetryState<'_> {
    /// Wait before the next attempt, or give up with `err` (annotated with the retry count).
    async fn pause(&mut self, err: NetError, after: Option<Duration>) -> Result<(), NetError> {
        let delay = after.unwrap_or_else(|| self.backoff.next_delay());
        if self.retries >= self.cfg.max_retries
            || self.start.elapsed() + delay > self.cfg.retry_timeout
        {
            return Err(err.with_retries(self.retries));
        }
        self.retries += 1;
        self.total += 1;
        debug!(
            retry = self.retries,
            delay_ms = delay.as_millis() as u64,
            "retrying after a transient failure"
        );
        tokio::time::sleep(delay).await;
        Ok(())
    }

    /// The failed attempt still got further than any before it (a long download that broke
    /// off): start a fresh budget, so a big file on a flaky line is not abandoned.
    fn progress_made(&mut self) {
        self.start = Instant::now();
        self.retries = 0;
        self.backoff.reset();
    }
}

/// The body of an error response, digested.
struct ErrorBody {
    issues: Vec<RowIssue>,
    /// The OperationOutcome summary, a snippet of a text body, or the status reason phrase.
    message: String,
    /// Whether `message` came from the body (not just the reason phrase).
    from_body: bool,
    mentions_accept: bool,
}

enum KickOutcome {
    Accepted(KickOff),
    /// A 400/406 that may be caused by the `Accept` header.
    AcceptRejected(NetError),
}

impl BulkMatchClient {
    /// A client for the FHIR base URL `base_url` (e.g. `https://iis.example.org/fhir`).
    /// Refuses plain HTTP except to loopback hosts.
    pub fn new(base_url: &str, cfg: ClientConfig) -> Result<Self, NetError> {
        let mut base = Url::parse(base_url.trim()).map_err(|e| NetError::InvalidUrl {
            url: base_url.split('?').next().unwrap_or_default().to_string(),
            problem: e.to_string(),
        })?;
        check_base_url(&base)?;
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let kickoff_url = base
            .join("Patient/$bulk-match")
            .map_err(|e| NetError::InvalidUrl {
                url: redact_url(&base),
                problem: e.to_string(),
            })?;
        let http = build_http_client(&HttpSettings {
            user_agent: cfg.user_agent.clone(),
            connect_timeout: cfg.connect_timeout,
            read_timeout: cfg.read_timeout,
        })?;
        let accept = AtomicU8::new(cfg.accept_mode as u8);
        Ok(BulkMatchClient {
            inner: Arc::new(Inner {
                http,
                base,
                kickoff_url,
                cfg,
                accept,
                seed_counter: AtomicU64::new(0),
            }),
        })
    }

    /// The FHIR base URL (always ending in `/`).
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// The kick-off `Accept` mode currently in use (persist it per server).
    pub fn accept_mode(&self) -> AcceptMode {
        AcceptMode::from_u8(self.inner.accept.load(Ordering::Relaxed))
    }

    /// Set the kick-off `Accept` mode (e.g. restored from the workspace).
    pub fn set_accept_mode(&self, mode: AcceptMode) {
        self.inner.accept.store(mode as u8, Ordering::Relaxed);
    }

    fn backoff(&self) -> Backoff {
        let cfg = &self.inner.cfg.retry;
        match self.inner.cfg.rng_seed {
            Some(seed) => {
                let n = self.inner.seed_counter.fetch_add(1, Ordering::Relaxed);
                Backoff::new_with_rng(
                    cfg,
                    Box::new(ChaCha8Rng::seed_from_u64(seed.wrapping_add(n))),
                )
            }
            None => Backoff::new(cfg),
        }
    }

    fn retry_state(&self) -> RetryState<'_> {
        RetryState {
            cfg: &self.inner.cfg.retry,
            backoff: self.backoff(),
            start: Instant::now(),
            retries: 0,
            total: 0,
        }
    }

    fn poll_backoff(&self) -> Backoff {
        let p = &self.inner.cfg.poll;
        let rng: Box<dyn rand::RngCore + Send> = match self.inner.cfg.rng_seed {
            Some(seed) => Box::new(ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_F011)),
            None => Box::new(ChaCha8Rng::from_rng(&mut rand::rng())),
        };
        Backoff::curve(p.initial, p.max, 1.5, Jitter::Equal, rng)
    }

    /// Whether requests to `url` may carry the bearer token: only the FHIR base's origin.
    fn token_allowed(&self, url: &Url) -> bool {
        same_origin(url, &self.inner.base)
    }

    async fn current_token(&self) -> Result<Option<String>, NetError> {
        match &self.inner.cfg.token {
            Some(src) => src.token().await,
            None => Ok(None),
        }
    }

    /// Send a request built by `build`, with the bearer token when `with_token`; on a 401 with a
    /// token, invalidate it once and send again.
    async fn send(
        &self,
        url: &Url,
        with_token: bool,
        build: &(dyn Fn() -> RequestBuilder + Send + Sync),
    ) -> Result<Response, NetError> {
        let mut refreshed = false;
        loop {
            let token = if with_token {
                self.current_token().await?
            } else {
                None
            };
            let mut rb = build();
            if let Some(t) = &token {
                let mut v =
                    HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| NetError::Auth {
                        status: 0,
                        message:
                            "the access token contains characters not allowed in an HTTP header"
                                .to_string(),
                    })?;
                v.set_sensitive(true);
                rb = rb.header(AUTHORIZATION, v);
            }
            let resp = rb.send().await.map_err(|e| transport_error(url, e))?;
            if resp.status() == StatusCode::UNAUTHORIZED
                && token.is_some()
                && !refreshed
                && let Some(src) = &self.inner.cfg.token
            {
                info!("server answered 401; refreshing the access token once");
                src.invalidate();
                refreshed = true;
                continue;
            }
            return Ok(resp);
        }
    }

    // ----------------------------------------------------------------------------------------
    // Kick-off
    // ----------------------------------------------------------------------------------------

    /// Submit `patients` (`(id, demographics)`; the id comes back in each match Bundle) with
    /// `opts`. Returns the status URL to poll.
    ///
    /// `413` → [`NetError::TooLarge`] at once (split the chunk and resubmit); `429`, `5xx` and
    /// connection failures are retried with backoff. Note a retried kick-off whose first attempt
    /// reached the server before the connection broke may leave an orphan job there.
    pub async fn kick_off(
        &self,
        patients: &[(String, Demographics)],
        opts: &MatchOptions,
    ) -> Result<KickOff, NetError> {
        if patients.is_empty() {
            return Err(NetError::NothingToSend);
        }
        let body = kickoff_body(patients, opts)?;
        let first = self.accept_mode();
        let modes =
            std::iter::once(first).chain(AcceptMode::ALL.into_iter().filter(|m| *m != first));
        let mut first_err: Option<NetError> = None;
        for mode in modes {
            let mut rs = self.retry_state();
            let outcome = loop {
                match self.kick_off_attempt(&body, patients.len(), mode).await? {
                    Attempt::Done(o) => break o,
                    Attempt::Retry { err, after } => rs.pause(err, after).await?,
                }
            };
            match outcome {
                KickOutcome::Accepted(k) => {
                    if mode != first {
                        info!(
                            mode = mode.key(),
                            "kick-off accepted with a fallback Accept header; remembering it"
                        );
                        self.set_accept_mode(mode);
                    }
                    return Ok(k);
                }
                KickOutcome::AcceptRejected(err) => {
                    warn!(
                        mode = mode.key(),
                        "kick-off rejected, possibly because of the Accept header; trying another"
                    );
                    first_err.get_or_insert(err);
                }
            }
        }
        Err(first_err.unwrap_or(NetError::BadResponse {
            what: "the kick-off was rejected with every Accept header".to_string(),
        }))
    }

    async fn kick_off_attempt(
        &self,
        body: &[u8],
        sent: usize,
        mode: AcceptMode,
    ) -> Result<Attempt<KickOutcome>, NetError> {
        let url = &self.inner.kickoff_url;
        let build = || {
            self.inner
                .http
                .post(url.clone())
                .timeout(self.inner.cfg.request_timeout)
                .header("Prefer", "respond-async")
                .header(ACCEPT, mode.header_value())
                .header(CONTENT_TYPE, "application/fhir+json")
                .body(body.to_vec())
        };
        let resp = match self.send(url, true, &build).await {
            Ok(r) => r,
            Err(e) if e.is_retryable() => {
                return Ok(Attempt::Retry {
                    err: e,
                    after: None,
                });
            }
            Err(e) => return Err(e),
        };
        let status = resp.status();
        debug!(
            status = status.as_u16(),
            patients = sent,
            "kick-off answered"
        );
        if status.is_success() {
            let loc = header_str(resp.headers(), CONTENT_LOCATION)
                .or_else(|| header_str(resp.headers(), LOCATION))
                .ok_or_else(|| NetError::BadResponse {
                    what: format!(
                        "the server accepted the request ({}) but sent no Content-Location header, so the job cannot be followed",
                        status.as_u16()
                    ),
                })?;
            let status_url = url.join(loc.trim()).map_err(|e| NetError::BadResponse {
                what: format!("the Content-Location of the job is not a usable URL ({e})"),
            })?;
            check_base_url(&status_url)?;
            return Ok(Attempt::Done(KickOutcome::Accepted(KickOff { status_url })));
        }
        let retry_after = retry_after(resp.headers());
        let eb = read_error_body(resp).await;
        match status.as_u16() {
            413 => Err(NetError::TooLarge {
                sent,
                bytes: body.len(),
                limit_hint: eb.from_body.then(|| eb.message.clone()),
            }),
            429 => Ok(Attempt::Retry {
                err: NetError::Throttled {
                    retries: 0,
                    retry_after,
                },
                after: retry_after,
            }),
            401 | 403 => Err(auth_error(status, &eb)),
            406 => Ok(Attempt::Done(KickOutcome::AcceptRejected(rejected(
                status, eb,
            )))),
            400 if eb.mentions_accept => Ok(Attempt::Done(KickOutcome::AcceptRejected(rejected(
                status, eb,
            )))),
            s if s >= 500 || is_transient(&eb.issues) => Ok(Attempt::Retry {
                err: server_error(status, &eb),
                after: retry_after,
            }),
            300..=399 => Err(NetError::BadResponse {
                what: format!(
                    "the kick-off was redirected ({}) to another address; configure the final FHIR base URL",
                    status.as_u16()
                ),
            }),
            _ => Err(rejected(status, eb)),
        }
    }

    // ----------------------------------------------------------------------------------------
    // Status polling
    // ----------------------------------------------------------------------------------------

    /// One request to the status URL.
    ///
    /// `202` → in progress; `429` → in progress with the server's `Retry-After`; `200` → the
    /// manifest; `404`/`410` → [`NetError::Gone`]; `5xx`, transient OperationOutcomes and
    /// connection errors → a retryable error; other `4xx` → a fatal error with the server's text.
    pub async fn poll_once(&self, status_url: &Url) -> Result<PollStatus, NetError> {
        check_base_url(status_url)?;
        let build = || {
            self.inner
                .http
                .get(status_url.clone())
                .timeout(self.inner.cfg.request_timeout)
                .header(ACCEPT, "application/json")
        };
        let resp = self
            .send(status_url, self.token_allowed(status_url), &build)
            .await?;
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        match status.as_u16() {
            202 => Ok(PollStatus::InProgress {
                progress: progress_text(resp.headers()),
                retry_after,
            }),
            200 => {
                let expires = header_str(resp.headers(), EXPIRES)
                    .and_then(|s| httpdate::parse_http_date(s.trim()).ok());
                // A manifest cut off in transit is a (retryable) Connect/Timeout error.
                let body = read_limited(resp, MAX_SMALL_BODY).await?;
                let manifest = parse_manifest(&body).map_err(|e| NetError::BadResponse {
                    what: format!("the job is complete but its manifest cannot be read: {e}"),
                })?;
                Ok(PollStatus::Complete { manifest, expires })
            }
            429 => Ok(PollStatus::InProgress {
                progress: None,
                retry_after,
            }),
            404 | 410 => Err(NetError::Gone {
                url: redact_url(status_url),
                status: status.as_u16(),
            }),
            s => {
                let eb = read_error_body(resp).await;
                if s == 401 || s == 403 {
                    Err(auth_error(status, &eb))
                } else if s >= 500 || is_transient(&eb.issues) {
                    Err(server_error(status, &eb))
                } else if status.is_client_error() {
                    Err(rejected(status, eb))
                } else {
                    Err(NetError::BadResponse {
                        what: format!(
                            "the status URL answered {s}, which the protocol does not use"
                        ),
                    })
                }
            }
        }
    }

    /// Poll `status_url` until the job completes, reporting each step to `progress`.
    ///
    /// Intervals follow an exponential curve with jitter from `poll.initial` to `poll.max`; a
    /// server's `Retry-After` is honoured (never below `poll.initial`). Transient failures are
    /// retried up to `retry.max_retries` times in a row. A manifest whose `Expires` is already
    /// past is re-polled once; after that it is returned anyway (downloads will tell).
    pub async fn wait_for_manifest(
        &self,
        status_url: &Url,
        progress: &mut (dyn FnMut(PollEvent) + Send),
        cancel: &CancelFlag,
    ) -> Result<Completed, NetError> {
        let poll = &self.inner.cfg.poll;
        let start = Instant::now();
        let mut interval = self.poll_backoff();
        let mut retry_backoff = self.backoff();
        let mut failures: u32 = 0;
        let mut repolled_expired = false;
        loop {
            if cancel.is_cancelled() {
                return Err(NetError::Cancelled);
            }
            let result = tokio::select! {
                r = self.poll_once(status_url) => r,
                _ = cancel.cancelled() => return Err(NetError::Cancelled),
            };
            let delay = match result {
                Ok(PollStatus::Complete { manifest, expires }) => {
                    let expired = expires.is_some_and(|e| e <= SystemTime::now());
                    if expired && !repolled_expired {
                        repolled_expired = true;
                        progress(PollEvent::ManifestExpired);
                        poll.initial
                    } else {
                        if expired {
                            warn!("the server keeps sending an expired manifest; using it anyway");
                        }
                        progress(PollEvent::Complete {
                            files: manifest.output.len(),
                        });
                        return Ok(Completed { manifest, expires });
                    }
                }
                Ok(PollStatus::InProgress {
                    progress: text,
                    retry_after,
                }) => {
                    failures = 0;
                    retry_backoff.reset();
                    // Advance our own curve either way, so a server that stops sending
                    // Retry-After is not polled at the initial rate again.
                    let own = interval.next_delay();
                    let next = retry_after.map_or(own, |ra| ra.max(poll.initial));
                    progress(PollEvent::InProgress {
                        progress: text,
                        next_poll: next,
                    });
                    next
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    if failures > self.inner.cfg.retry.max_retries {
                        return Err(NetError::StatusFailing {
                            times: failures,
                            last: Box::new(e),
                        });
                    }
                    let next = retry_backoff.next_delay();
                    progress(PollEvent::Retrying {
                        failures,
                        next_poll: next,
                        error: e.to_string(),
                    });
                    next
                }
                Err(e) => return Err(e),
            };
            let waited = start.elapsed();
            if waited >= poll.max_wait {
                return Err(NetError::WaitTimeout { waited });
            }
            cancel.sleep(delay.min(poll.max_wait - waited)).await?;
            if start.elapsed() >= poll.max_wait {
                return Err(NetError::WaitTimeout {
                    waited: start.elapsed(),
                });
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Delete
    // ----------------------------------------------------------------------------------------

    /// Ask the server to cancel the job or drop its files. `404`/`410` count as success (the job
    /// is already gone).
    pub async fn delete(&self, status_url: &Url) -> Result<(), NetError> {
        check_base_url(status_url)?;
        let mut rs = self.retry_state();
        loop {
            match self.delete_attempt(status_url).await? {
                Attempt::Done(()) => return Ok(()),
                Attempt::Retry { err, after } => rs.pause(err, after).await?,
            }
        }
    }

    async fn delete_attempt(&self, status_url: &Url) -> Result<Attempt<()>, NetError> {
        let build = || {
            self.inner
                .http
                .delete(status_url.clone())
                .timeout(self.inner.cfg.request_timeout)
                .header(ACCEPT, "application/fhir+json")
        };
        let resp = match self
            .send(status_url, self.token_allowed(status_url), &build)
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_retryable() => {
                return Ok(Attempt::Retry {
                    err: e,
                    after: None,
                });
            }
            Err(e) => return Err(e),
        };
        let status = resp.status();
        if status.is_success() || matches!(status.as_u16(), 404 | 410) {
            debug!(status = status.as_u16(), "job deleted");
            return Ok(Attempt::Done(()));
        }
        let ra = retry_after(resp.headers());
        let eb = read_error_body(resp).await;
        match status.as_u16() {
            429 => Ok(Attempt::Retry {
                err: NetError::Throttled {
                    retries: 0,
                    retry_after: ra,
                },
                after: ra,
            }),
            401 | 403 => Err(auth_error(status, &eb)),
            s if s >= 500 || is_transient(&eb.issues) => Ok(Attempt::Retry {
                err: server_error(status, &eb),
                after: ra,
            }),
            _ => Err(rejected(status, eb)),
        }
    }

    // ----------------------------------------------------------------------------------------
    // Download
    // ----------------------------------------------------------------------------------------

    /// Stream the ndjson file at `file_url`, calling `on_line(line_number, line)` for every
    /// non-blank line (1-based numbers counting every line of the file; no `\n`/`\r`).
    ///
    /// The bearer token is sent only if `requires_access_token` and the file is on the FHIR
    /// base's origin. A broken-off or failed attempt is restarted from the beginning, and lines
    /// already delivered are skipped, so `on_line` sees each line exactly once (this assumes
    /// the server sends the same file again, which the bulk data pattern guarantees until the
    /// file expires). The retry budget starts afresh whenever an attempt got further than the
    /// previous ones, so a large file on a flaky connection is not abandoned. `404`/`410` →
    /// [`NetError::Expired`] (poll again for a fresh manifest). An error returned by `on_line`
    /// stops the download and is returned as is.
    pub async fn download_lines(
        &self,
        file_url: &str,
        requires_access_token: bool,
        on_line: &mut LineSink<'_>,
    ) -> Result<DownloadStats, NetError> {
        let url = self
            .inner
            .base
            .join(file_url.trim())
            .map_err(|e| NetError::InvalidUrl {
                url: file_url.split('?').next().unwrap_or_default().to_string(),
                problem: e.to_string(),
            })?;
        check_base_url(&url)?;
        let same = self.token_allowed(&url);
        if requires_access_token && !same {
            warn!(
                file_origin = %origin_text(&url),
                "the manifest requires the access token for a file on another origin; not sending it there"
            );
        }
        let with_token = requires_access_token && same;
        let mut stats = DownloadStats::default();
        let mut delivered: u64 = 0;
        let mut suspect_tail: Option<u64> = None;
        let mut rs = self.retry_state();
        loop {
            let before = delivered;
            let attempt = self
                .download_attempt(
                    &url,
                    with_token,
                    &mut delivered,
                    &mut suspect_tail,
                    &mut stats,
                    on_line,
                )
                .await?;
            match attempt {
                Attempt::Done(()) => {
                    stats.retries = rs.total;
                    debug!(
                        lines = stats.lines,
                        bytes = stats.bytes,
                        retries = stats.retries,
                        "download complete"
                    );
                    return Ok(stats);
                }
                Attempt::Retry { err, after } => {
                    warn!(
                        delivered_lines = delivered,
                        "download attempt failed; restarting"
                    );
                    if delivered > before {
                        rs.progress_made();
                    }
                    rs.pause(err, after).await?;
                }
            }
        }
    }

    async fn download_attempt(
        &self,
        start_url: &Url,
        with_token: bool,
        delivered: &mut u64,
        suspect_tail: &mut Option<u64>,
        stats: &mut DownloadStats,
        on_line: &mut LineSink<'_>,
    ) -> Result<Attempt<()>, NetError> {
        let mut url = start_url.clone();
        let mut hops = 0usize;
        let resp = loop {
            let token_here = with_token && self.token_allowed(&url);
            let build = || {
                self.inner
                    .http
                    .get(url.clone())
                    .header(ACCEPT, "application/fhir+ndjson")
            };
            let resp = match self.send(&url, token_here, &build).await {
                Ok(r) => r,
                Err(e) if e.is_retryable() => {
                    return Ok(Attempt::Retry {
                        err: e,
                        after: None,
                    });
                }
                Err(e) => return Err(e),
            };
            // Same-origin redirects were followed by the HTTP client; a redirect to another
            // origin (typically a signed storage URL) is followed here, without the token.
            if resp.status().is_redirection()
                && let Some(loc) = header_str(resp.headers(), LOCATION)
            {
                hops += 1;
                if hops > MAX_DOWNLOAD_REDIRECTS {
                    return Err(NetError::BadResponse {
                        what: format!(
                            "the download of {} redirected too often",
                            redact_url(start_url)
                        ),
                    });
                }
                let next = url.join(loc.trim()).map_err(|e| NetError::BadResponse {
                    what: format!(
                        "a redirect for {} is not a usable URL ({e})",
                        redact_url(start_url)
                    ),
                })?;
                check_base_url(&next)?;
                debug!(to_origin = %origin_text(&next), "following a download redirect");
                url = next;
                continue;
            }
            break resp;
        };
        let status = resp.status();
        if status != StatusCode::OK && status.is_success() {
            debug!(
                status = status.as_u16(),
                "download answered a 2xx other than 200"
            );
        }
        if !status.is_success() {
            let ra = retry_after(resp.headers());
            let s = status.as_u16();
            if matches!(s, 404 | 410) {
                return Err(NetError::Expired {
                    url: redact_url(start_url),
                    status: s,
                });
            }
            let eb = read_error_body(resp).await;
            return match s {
                429 => Ok(Attempt::Retry {
                    err: NetError::Throttled {
                        retries: 0,
                        retry_after: ra,
                    },
                    after: ra,
                }),
                401 | 403 => Err(auth_error(status, &eb)),
                s if s >= 500 || is_transient(&eb.issues) => Ok(Attempt::Retry {
                    err: server_error(status, &eb),
                    after: ra,
                }),
                _ => Err(rejected(status, eb)),
            };
        }

        let shown = redact_url(start_url);
        let mut splitter = LineSplitter::new(self.inner.cfg.max_line_bytes, shown.clone());
        let mut deliver = |n: u64, line: &[u8]| -> Result<(), NetError> {
            if n <= *delivered {
                return Ok(());
            }
            *delivered = n;
            if line.trim_ascii().is_empty() {
                return Ok(());
            }
            stats.lines += 1;
            on_line(n, line)
        };
        let mut bytes: u64 = 0;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    bytes += c.len() as u64;
                    splitter.feed(&c, &mut deliver)?;
                }
                Err(e) => {
                    let e = e.without_url();
                    let err = if e.is_timeout() {
                        NetError::Timeout {
                            url: shown,
                            retries: 0,
                        }
                    } else {
                        NetError::Interrupted {
                            url: shown,
                            bytes,
                            detail: error_chain(&e),
                            retries: 0,
                        }
                    };
                    return Ok(Attempt::Retry { err, after: None });
                }
            }
        }
        // A body that ends without a final newline in the middle of a JSON value was most
        // likely cut short (a server or proxy that streams without Content-Length cannot signal
        // it otherwise): download again. If the same tail comes back twice, it is what the
        // server means to send; deliver it and let the consumer judge the line.
        let tail = splitter.pending();
        if !tail.trim_ascii().is_empty()
            && serde_json::from_slice::<serde::de::IgnoredAny>(tail).is_err()
        {
            let tail_line = splitter.lines_seen() + 1;
            if *suspect_tail != Some(tail_line) {
                *suspect_tail = Some(tail_line);
                return Ok(Attempt::Retry {
                    err: NetError::Interrupted {
                        url: shown,
                        bytes,
                        detail: format!("the file ended in the middle of line {tail_line}"),
                        retries: 0,
                    },
                    after: None,
                });
            }
        }
        splitter.finish(&mut deliver)?;
        stats.bytes = bytes;
        Ok(Attempt::Done(()))
    }
}

/// The kick-off `Parameters` resource.
fn kickoff_body(
    patients: &[(String, Demographics)],
    opts: &MatchOptions,
) -> Result<Vec<u8>, NetError> {
    let mut params: Vec<Value> = Vec::with_capacity(patients.len() + 4);
    for (id, d) in patients {
        params.push(json!({"name": "resource", "resource": to_patient(id, d)}));
    }
    params.push(json!({"name": "onlySingleMatch", "valueBoolean": opts.only_single_match}));
    params.push(json!({"name": "onlyCertainMatches", "valueBoolean": opts.only_certain_matches}));
    if let Some(c) = opts.count {
        params.push(json!({"name": "count", "valueInteger": c}));
    }
    if let Some(f) = &opts.output_format {
        params.push(json!({"name": "_outputFormat", "valueString": f}));
    }
    serde_json::to_vec(&json!({"resourceType": "Parameters", "parameter": params})).map_err(|e| {
        NetError::BadResponse {
            what: format!("could not encode the kick-off request: {e}"),
        }
    })
}

fn header_str(h: &HeaderMap, name: reqwest::header::HeaderName) -> Option<&str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.trim().is_empty())
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(RETRY_AFTER)
        .and_then(|v| parse_retry_after(v, SystemTime::now()))
}

/// `X-Progress`, without quotes or control characters, at most 100 characters.
fn progress_text(h: &HeaderMap) -> Option<String> {
    let raw = h.get("x-progress")?;
    let text = String::from_utf8_lossy(raw.as_bytes());
    let cleaned: String = text
        .trim()
        .trim_matches(|c| matches!(c, '"' | '\'' | '“' | '”'))
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let cleaned = cleaned.trim();
    (!cleaned.is_empty()).then(|| truncate_chars(cleaned.to_string(), 100))
}

/// A reqwest error with its causes (`error sending request: connection refused`), no URL.
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        src = s.source();
    }
    out
}

fn transport_error(url: &Url, e: reqwest::Error) -> NetError {
    let e = e.without_url();
    if e.is_timeout() {
        NetError::Timeout {
            url: redact_url(url),
            retries: 0,
        }
    } else {
        NetError::Connect {
            url: redact_url(url),
            detail: error_chain(&e),
            retries: 0,
        }
    }
}

/// Read at most `limit` bytes of a body.
async fn read_limited(resp: Response, limit: usize) -> Result<Vec<u8>, NetError> {
    let url = redact_url(resp.url());
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            let e = e.without_url();
            if e.is_timeout() {
                NetError::Timeout {
                    url: url.clone(),
                    retries: 0,
                }
            } else {
                NetError::Connect {
                    url: url.clone(),
                    detail: error_chain(&e),
                    retries: 0,
                }
            }
        })?;
        if out.len() + chunk.len() > limit {
            return Err(NetError::BadResponse {
                what: format!("the answer from {url} is larger than {limit} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Read an error response: its OperationOutcome issues if it has one, else a snippet of text.
async fn read_error_body(resp: Response) -> ErrorBody {
    let reason = resp
        .status()
        .canonical_reason()
        .unwrap_or("unexpected status")
        .to_string();
    let body = read_limited(resp, 1024 * 1024).await.unwrap_or_default();
    let issues = serde_json::from_slice::<Value>(&body)
        .map(|v| parse_issues(&v))
        .unwrap_or_default();
    let text_lower;
    let mut from_body = true;
    let message = if issues.is_empty() {
        let text = String::from_utf8_lossy(&body);
        let one_line: String = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        text_lower = one_line.to_ascii_lowercase();
        if one_line.is_empty() || one_line.starts_with('<') {
            from_body = false;
            reason
        } else {
            truncate_chars(one_line, 300)
        }
    } else {
        let s = summary(&issues);
        text_lower = s.to_ascii_lowercase();
        s
    };
    ErrorBody {
        from_body,
        mentions_accept: text_lower.contains("accept"),
        issues,
        message,
    }
}

fn rejected(status: StatusCode, eb: ErrorBody) -> NetError {
    NetError::Rejected {
        status: status.as_u16(),
        issues: eb.issues,
        message: eb.message,
    }
}

fn server_error(status: StatusCode, eb: &ErrorBody) -> NetError {
    NetError::Server {
        status: status.as_u16(),
        message: eb.message.clone(),
        retries: 0,
    }
}

fn auth_error(status: StatusCode, eb: &ErrorBody) -> NetError {
    NetError::Auth {
        status: status.as_u16(),
        message: eb.message.clone(),
    }
}
