//! [`SmartToken`]: access tokens from a SMART Backend Services token endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use reqwest::StatusCode;
use reqwest::header::ACCEPT;
use serde_json::Value;
use tokio::sync::Mutex;
use tracing::{debug, info};
use url::Url;

use super::jwt::{client_assertion, unix_now};
use super::keys::LoadedKey;
use super::{AuthError, CLIENT_ASSERTION_TYPE, OAuthErrorKind, SmartConfig};
use crate::fhir::outcome::truncate_chars;
use crate::net::NetError;
use crate::net::security::{
    HttpSettings, TokenSource, build_http_client, check_base_url, redact_url,
};

/// Largest discovery or token response read.
const MAX_BODY: usize = 1024 * 1024;
/// Token lifetime assumed when the server sends no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// What discovery (or the profile) says about the authorization server.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Endpoint {
    pub token_endpoint: Url,
    /// How it was found, for people ("configured", "discovered at …").
    pub source: String,
    /// `token_endpoint_auth_signing_alg_values_supported`, if the server said.
    pub algs: Vec<String>,
    /// `grant_types_supported`, if the server said.
    pub grant_types: Vec<String>,
}

/// A granted access token.
#[derive(Clone)]
pub(crate) struct Granted {
    pub access_token: String,
    pub lifetime: Duration,
    pub scope: Option<String>,
    pub obtained: Instant,
}

impl Granted {
    /// Renew this long before the token expires: a tenth of its lifetime, at most 30 s.
    fn fresh(&self) -> bool {
        let margin = (self.lifetime / 10).min(Duration::from_secs(30));
        self.obtained.elapsed() + margin < self.lifetime
    }
}

#[derive(Default)]
struct State {
    endpoint: Option<Endpoint>,
    token: Option<Granted>,
}

/// A [`TokenSource`] for SMART Backend Services: discovers the token endpoint on first use,
/// signs a one-time client assertion per token request, caches the token until shortly before
/// it expires, and fetches a new one after [`invalidate`](TokenSource::invalidate) (a `401`).
/// Concurrent callers share one token request. Cheap to clone.
#[derive(Clone)]
pub struct SmartToken {
    inner: Arc<Inner>,
}

struct Inner {
    fhir_base: Url,
    cfg: SmartConfig,
    key: LoadedKey,
    http: reqwest::Client,
    state: Mutex<State>,
    stale: AtomicBool,
}

impl std::fmt::Debug for SmartToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmartToken")
            .field("fhir_base", &redact_url(&self.inner.fhir_base))
            .field("client_id", &self.inner.cfg.client_id)
            .field("kid", &self.inner.key.kid())
            .field("alg", &self.inner.key.alg())
            .finish_non_exhaustive()
    }
}

impl SmartToken {
    /// Check the settings and load the private key (refusing a key file others can read).
    /// Nothing is sent until the first [`token`](TokenSource::token).
    pub fn new(fhir_base: &Url, cfg: &SmartConfig) -> Result<SmartToken, AuthError> {
        let mut cfg = cfg.clone();
        cfg.client_id = cfg.client_id.trim().to_string();
        if cfg.client_id.is_empty() {
            return Err(AuthError::Config {
                message:
                    "the client id is empty; enter the client id the IIS gave you at registration"
                        .into(),
            });
        }
        if cfg.scopes.trim().is_empty() {
            cfg.scopes = super::DEFAULT_SCOPES.to_string();
        }
        let mut base = fhir_base.clone();
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        check_base_url(&base).map_err(|e| AuthError::Config {
            message: e.to_string(),
        })?;
        if let Some(ep) = cfg.token_endpoint.as_deref().map(str::trim) {
            if ep.is_empty() {
                cfg.token_endpoint = None;
            } else {
                parse_endpoint(ep)?;
            }
        }
        let key = LoadedKey::from_file(&cfg.key_path, &cfg.kid, cfg.alg)?;
        let http = build_http_client(&HttpSettings {
            user_agent: format!("matchdesk/{}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        })
        .map_err(|e| AuthError::Config {
            message: e.to_string(),
        })?;
        Ok(SmartToken {
            inner: Arc::new(Inner {
                fhir_base: base,
                cfg,
                key,
                http,
                state: Mutex::new(State::default()),
                stale: AtomicBool::new(false),
            }),
        })
    }

    /// The loaded key (algorithm, key id, public JWK).
    pub fn key(&self) -> &LoadedKey {
        &self.inner.key
    }

    /// The FHIR base this source belongs to (ending in `/`).
    pub fn fhir_base(&self) -> &Url {
        &self.inner.fhir_base
    }

    /// A valid access token: the cached one, or a new one from the token endpoint.
    pub async fn access_token(&self) -> Result<String, AuthError> {
        let mut st = self.inner.state.lock().await;
        let stale = self.inner.stale.swap(false, Ordering::SeqCst);
        if !stale && let Some(t) = st.token.as_ref().filter(|t| t.fresh()) {
            return Ok(t.access_token.clone());
        }
        st.token = None;
        let ep = match &st.endpoint {
            Some(e) => e.clone(),
            None => {
                let e = self.endpoint().await?;
                st.endpoint = Some(e.clone());
                e
            }
        };
        let granted = self.request_token(&ep).await?;
        let token = granted.access_token.clone();
        st.token = Some(granted);
        Ok(token)
    }

    /// Where to ask for tokens: the configured endpoint, or discovery.
    pub(crate) async fn endpoint(&self) -> Result<Endpoint, AuthError> {
        if let Some(ep) = &self.inner.cfg.token_endpoint {
            return Ok(Endpoint {
                token_endpoint: parse_endpoint(ep)?,
                source: "configured in the server profile".into(),
                algs: Vec::new(),
                grant_types: Vec::new(),
            });
        }
        self.discover().await
    }

    /// Read `[base]/.well-known/smart-configuration`.
    async fn discover(&self) -> Result<Endpoint, AuthError> {
        let server = redact_url(&self.inner.fhir_base);
        let url = self
            .inner
            .fhir_base
            .join(".well-known/smart-configuration")
            .map_err(|e| AuthError::Config {
                message: format!("the server address cannot be used: {e}"),
            })?;
        let shown = redact_url(&url);
        let resp = send_json(self.inner.http.get(url.clone()), &shown).await?;
        let status = resp.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(AuthError::TokenServer {
                url: shown,
                status: status.as_u16(),
                message: "the SMART configuration is temporarily unavailable".into(),
            });
        }
        if !status.is_success() {
            return Err(AuthError::NoDiscovery {
                server,
                detail: format!("{shown} answered {}", status.as_u16()),
            });
        }
        let body = read_body(resp, &shown).await?;
        let v: Value = serde_json::from_slice(&body).map_err(|_| AuthError::NoDiscovery {
            server: server.clone(),
            detail: format!("{shown} did not return JSON"),
        })?;
        let bad = |problem: String| AuthError::Discovery {
            url: shown.clone(),
            problem,
        };
        let ep = v
            .get("token_endpoint")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::NoDiscovery {
                server: server.clone(),
                detail: format!("{shown} names no token_endpoint"),
            })?;
        let token_endpoint = parse_endpoint(ep).map_err(|e| bad(e.to_string()))?;
        let list = |name: &str| -> Vec<String> {
            v.get(name)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let algs = list("token_endpoint_auth_signing_alg_values_supported");
        let grant_types = list("grant_types_supported");
        let alg = self.inner.key.alg();
        if !algs.is_empty() && !algs.iter().any(|a| a.eq_ignore_ascii_case(alg.as_str())) {
            return Err(AuthError::AlgNotSupported {
                alg,
                supported: algs.join(", "),
            });
        }
        if !grant_types.is_empty() && !grant_types.iter().any(|g| g == "client_credentials") {
            return Err(bad(
                "the server does not offer SMART Backend Services (no client_credentials grant); ask the IIS how system clients authenticate".into(),
            ));
        }
        debug!(endpoint = %redact_url(&token_endpoint), "discovered the token endpoint");
        Ok(Endpoint {
            token_endpoint,
            source: format!("discovered at {shown}"),
            algs,
            grant_types,
        })
    }

    /// Sign an assertion and exchange it for an access token.
    pub(crate) async fn request_token(&self, ep: &Endpoint) -> Result<Granted, AuthError> {
        let cfg = &self.inner.cfg;
        let aud = ep.token_endpoint.as_str();
        let assertion = client_assertion(
            &self.inner.key,
            &cfg.client_id,
            aud,
            cfg.jku.as_deref(),
            unix_now(),
        )?;
        let scopes = cfg.scopes.split_whitespace().collect::<Vec<_>>().join(" ");
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", scopes.as_str()),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", assertion.as_str()),
        ];
        let shown = redact_url(&ep.token_endpoint);
        let started = Instant::now();
        let resp = send_json(
            self.inner.http.post(ep.token_endpoint.clone()).form(&form),
            &shown,
        )
        .await?;
        let status = resp.status();
        let body = read_body(resp, &shown).await?;
        let v: Option<Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            if let Some(code) = v
                .as_ref()
                .and_then(|v| v.get("error"))
                .and_then(Value::as_str)
            {
                let description = v
                    .as_ref()
                    .and_then(|v| v.get("error_description"))
                    .and_then(Value::as_str)
                    .map(|d| truncate_chars(d.trim().trim_end_matches('.').to_string(), 300))
                    .filter(|d| !d.is_empty());
                return Err(AuthError::OAuth {
                    kind: OAuthErrorKind::parse(code),
                    description,
                    status: status.as_u16(),
                });
            }
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                return Err(AuthError::TokenServer {
                    url: shown,
                    status: status.as_u16(),
                    message: status
                        .canonical_reason()
                        .unwrap_or("server error")
                        .to_string(),
                });
            }
            return Err(AuthError::BadTokenResponse {
                what: format!(
                    "it answered {} without an OAuth error code; check the token endpoint URL",
                    status.as_u16()
                ),
            });
        }
        let v = v.ok_or_else(|| AuthError::BadTokenResponse {
            what: "it is not JSON".into(),
        })?;
        let access_token = v
            .get("access_token")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AuthError::BadTokenResponse {
                what: "it contains no access_token".into(),
            })?
            .to_string();
        if let Some(tt) = v.get("token_type").and_then(Value::as_str)
            && !tt.eq_ignore_ascii_case("bearer")
        {
            return Err(AuthError::BadTokenResponse {
                what: format!("the token type is {tt:?}, not bearer"),
            });
        }
        let lifetime = v
            .get("expires_in")
            .and_then(|e| e.as_u64().or_else(|| e.as_str()?.trim().parse().ok()))
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LIFETIME);
        let scope = v.get("scope").and_then(Value::as_str).map(str::to_string);
        info!(
            lifetime_s = lifetime.as_secs(),
            "obtained a SMART access token"
        );
        Ok(Granted {
            access_token,
            lifetime,
            scope,
            obtained: started,
        })
    }

    /// `GET [base]path` with the access token (for the connection test).
    pub(crate) async fn authorized_get(
        &self,
        path: &str,
        token: &str,
    ) -> Result<reqwest::Response, String> {
        let url = self
            .inner
            .fhir_base
            .join(path)
            .map_err(|e| format!("the address cannot be built: {e}"))?;
        self.inner
            .http
            .get(url)
            .header(ACCEPT, "application/fhir+json")
            .bearer_auth(token)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| transport_detail(&e))
    }
}

impl TokenSource for SmartToken {
    fn token(&self) -> BoxFuture<'_, Result<Option<String>, NetError>> {
        Box::pin(async move { Ok(Some(self.access_token().await?)) })
    }

    fn invalidate(&self) {
        self.inner.stale.store(true, Ordering::SeqCst);
    }
}

/// A token endpoint URL: absolute, https (http only to this computer), no credentials.
fn parse_endpoint(s: &str) -> Result<Url, AuthError> {
    let url = Url::parse(s.trim()).map_err(|e| AuthError::Endpoint {
        url: s.split('?').next().unwrap_or_default().to_string(),
        problem: format!("it is not a URL ({e})"),
    })?;
    check_base_url(&url).map_err(|e| AuthError::Endpoint {
        url: redact_url(&url),
        problem: match e {
            NetError::Insecure { .. } => {
                "the client's signed assertion may only be sent over https (plain http only to this computer)".into()
            }
            other => other.to_string(),
        },
    })?;
    Ok(url)
}

/// What went wrong with a request, without the URL (which may carry credentials).
/// Send a request that expects JSON back (discovery, token), with a one-minute limit; a transport
/// failure names the redacted URL.
async fn send_json(
    req: reqwest::RequestBuilder,
    shown: &str,
) -> Result<reqwest::Response, AuthError> {
    req.header(ACCEPT, "application/json")
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| AuthError::Unreachable {
            url: shown.to_string(),
            detail: transport_detail(&e),
        })
}

pub(super) fn transport_detail(e: &reqwest::Error) -> String {
    let mut msg = if e.is_timeout() {
        "no answer in time"
    } else if e.is_connect() {
        "the connection failed"
    } else {
        "the request failed"
    }
    .to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

async fn read_body(resp: reqwest::Response, shown: &str) -> Result<Vec<u8>, AuthError> {
    let mut resp = resp;
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if out.len() + c.len() > MAX_BODY {
                    return Err(AuthError::BadTokenResponse {
                        what: format!("the answer of {shown} is too large"),
                    });
                }
                out.extend_from_slice(&c);
            }
            Ok(None) => return Ok(out),
            Err(e) => {
                return Err(AuthError::Unreachable {
                    url: shown.to_string(),
                    detail: transport_detail(&e),
                });
            }
        }
    }
}
