//! [`test_connection`]: check a SMART server profile step by step, in words a person can act on.

use serde_json::Value;
use url::Url;

use super::SmartConfig;
use super::token::{SmartToken, transport_detail};
use crate::net::security::{HttpSettings, build_http_client, check_base_url, redact_url};

/// One step of a connection test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionStep {
    /// What was checked ("Private key", "Token endpoint", …).
    pub what: String,
    pub ok: bool,
    /// The finding, or what went wrong and what to do. Never a token or key material.
    pub detail: String,
}

/// The steps of [`test_connection`], in order; it stops at the first failure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionReport {
    pub steps: Vec<ConnectionStep>,
}

impl ConnectionReport {
    /// Whether every step passed (and there was at least one).
    pub fn ok(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.ok)
    }

    fn push(&mut self, what: &str, ok: bool, detail: impl Into<String>) -> bool {
        self.steps.push(ConnectionStep {
            what: what.to_string(),
            ok,
            detail: detail.into(),
        });
        ok
    }
}

/// Try a SMART server profile: the key file (readable, private, parsable), the token endpoint
/// (configured or discovered), a token request (granted scopes and lifetime), and an authorized
/// `GET [base]/metadata`. Sends no patient data.
pub async fn test_connection(fhir_base: &Url, cfg: &SmartConfig) -> ConnectionReport {
    let mut r = ConnectionReport::default();
    let src = match SmartToken::new(fhir_base, cfg) {
        Ok(s) => s,
        Err(e) => {
            r.push("Private key and settings", false, e.to_string());
            return r;
        }
    };
    let key = src.key();
    r.push(
        "Private key",
        true,
        format!(
            "{} key from {}, used for {} with key id {:?}; the file is private to you",
            key.public_key().describe(),
            cfg.key_path.display(),
            key.alg(),
            key.kid()
        ),
    );

    let ep = match src.endpoint().await {
        Ok(ep) => ep,
        Err(e) => {
            r.push("Token endpoint", false, e.to_string());
            return r;
        }
    };
    let mut detail = format!("{} ({})", redact_url(&ep.token_endpoint), ep.source);
    if !ep.algs.is_empty() {
        detail.push_str(&format!("; signing algorithms: {}", ep.algs.join(", ")));
    }
    if !ep.grant_types.is_empty() {
        detail.push_str(&format!("; grant types: {}", ep.grant_types.join(", ")));
    }
    r.push("Token endpoint", true, detail);

    let granted = match src.request_token(&ep).await {
        Ok(g) => g,
        Err(e) => {
            r.push("Access token", false, e.to_string());
            return r;
        }
    };
    let scope = granted
        .scope
        .clone()
        .unwrap_or_else(|| format!("not stated (asked for {})", cfg.scopes.trim()));
    let asked: Vec<&str> = cfg.scopes.split_whitespace().collect();
    let missing: Vec<&str> = match &granted.scope {
        Some(s) => {
            let got: Vec<&str> = s.split_whitespace().collect();
            asked.into_iter().filter(|a| !got.contains(a)).collect()
        }
        None => Vec::new(),
    };
    let mut detail = format!(
        "granted scopes: {scope}; valid for {} seconds",
        granted.lifetime.as_secs()
    );
    if !missing.is_empty() {
        detail.push_str(&format!(
            "; not granted: {} (matching may be refused; ask the IIS)",
            missing.join(" ")
        ));
    }
    r.push("Access token", true, detail);

    let answer = src.authorized_get("metadata", &granted.access_token).await;
    r.steps
        .push(metadata_step(answer, src.fhir_base(), true).await);
    r
}

/// Try a server without SMART: one `GET [base]/metadata`, with `token` as a bearer token when
/// one is configured (a fixed token from the environment). Sends no patient data.
pub async fn test_bearer_connection(fhir_base: &Url, token: Option<&str>) -> ConnectionReport {
    let mut r = ConnectionReport::default();
    let mut base = fhir_base.clone();
    base.set_query(None);
    base.set_fragment(None);
    if !base.path().ends_with('/') {
        let p = format!("{}/", base.path());
        base.set_path(&p);
    }
    if let Err(e) = check_base_url(&base) {
        r.push("Server address", false, e.to_string());
        return r;
    }
    let http = match build_http_client(&HttpSettings {
        user_agent: format!("matchdesk/{}", env!("CARGO_PKG_VERSION")),
        connect_timeout: std::time::Duration::from_secs(30),
        read_timeout: std::time::Duration::from_secs(60),
    }) {
        Ok(h) => h,
        Err(e) => {
            r.push("Request to the server", false, e.to_string());
            return r;
        }
    };
    let answer = match base.join("metadata") {
        Ok(url) => {
            let mut req = http
                .get(url)
                .header(reqwest::header::ACCEPT, "application/fhir+json")
                .timeout(std::time::Duration::from_secs(60));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send().await.map_err(|e| transport_detail(&e))
        }
        Err(e) => Err(format!("the address cannot be built: {e}")),
    };
    r.steps
        .push(metadata_step(answer, &base, token.is_some()).await);
    r
}

/// What the answer to `GET [base]/metadata` says, as a connection-test step. `with_token`: the
/// request carried a bearer token (so 401/403 are about that token).
async fn metadata_step(
    answer: Result<reqwest::Response, String>,
    base: &Url,
    with_token: bool,
) -> ConnectionStep {
    let what = if with_token {
        "Authorized request"
    } else {
        "Request to the server"
    };
    let step = |ok: bool, detail: String| ConnectionStep {
        what: what.to_string(),
        ok,
        detail,
    };
    let resp = match answer {
        Ok(resp) => resp,
        Err(e) => {
            return step(
                false,
                format!(
                    "could not reach {}metadata: {e}; check the server address and the network",
                    redact_url(base)
                ),
            );
        }
    };
    match resp.status().as_u16() {
        status @ 200..=299 => {
            let v: Option<Value> = resp.json().await.ok();
            let fhir = v
                .as_ref()
                .and_then(|v| v.get("fhirVersion"))
                .and_then(Value::as_str)
                .map(|f| format!(", FHIR {f}"))
                .unwrap_or_default();
            let is_cs = v
                .as_ref()
                .and_then(|v| v.get("resourceType"))
                .and_then(Value::as_str)
                == Some("CapabilityStatement");
            let accepted = if with_token {
                "the server accepted the token"
            } else {
                "the server answered"
            };
            step(
                true,
                if is_cs {
                    format!("{accepted} and sent its CapabilityStatement{fhir}")
                } else {
                    format!("{accepted} (answer {status})")
                },
            )
        }
        401 if with_token => step(
            false,
            "the FHIR server refused the token (401): it may have expired or belong to another server; check the sign-in settings and the server address".into(),
        ),
        401 => step(
            false,
            "the server wants sign-in (401): choose SMART Backend Services or an access token under Sign-in".into(),
        ),
        403 => step(
            false,
            "the FHIR server denied access (403); ask the IIS to grant your client the needed scopes".into(),
        ),
        s => step(
            false,
            format!(
                "{}metadata answered {s}; check the server address (it should be the FHIR base URL)",
                redact_url(base)
            ),
        ),
    }
}
