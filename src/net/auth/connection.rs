//! [`test_connection`]: check a SMART server profile step by step, in words a person can act on.

use serde_json::Value;
use url::Url;

use super::SmartConfig;
use super::token::SmartToken;
use crate::net::security::redact_url;

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

    match src.authorized_get("metadata", &granted.access_token).await {
        Err(e) => {
            r.push(
                "Authorized request",
                false,
                format!(
                    "could not reach {}metadata: {e}; check the server address and the network",
                    redact_url(src.fhir_base())
                ),
            );
        }
        Ok(resp) => {
            let status = resp.status().as_u16();
            match status {
                200..=299 => {
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
                    r.push(
                        "Authorized request",
                        true,
                        if is_cs {
                            format!("the server accepted the token and sent its CapabilityStatement{fhir}")
                        } else {
                            format!("the server accepted the token (answer {status})")
                        },
                    );
                }
                401 => {
                    r.push(
                        "Authorized request",
                        false,
                        "the FHIR server refused the new token (401); the token endpoint may belong to another server: check the token endpoint and the server address",
                    );
                }
                403 => {
                    r.push(
                        "Authorized request",
                        false,
                        "the FHIR server accepted the token but denied access (403); ask the IIS to grant your client the needed scopes",
                    );
                }
                s => {
                    r.push(
                        "Authorized request",
                        false,
                        format!(
                            "{}metadata answered {s}; check the server address (it should be the FHIR base URL)",
                            redact_url(src.fhir_base())
                        ),
                    );
                }
            }
        }
    }
    r
}
