//! SMART Backend Services on the simulated IIS: client registration from a JWKS (inline or by
//! URL), `/.well-known/smart-configuration`, a token endpoint that checks the client assertion
//! (signature with the registered key, `iss` = `sub` = a registered client, `aud` = this token
//! endpoint, `exp` in the future and at most five minutes ahead, `jti` not seen before, allowed
//! scopes), short-lived opaque access tokens, and the bearer check of the FHIR endpoints.
//!
//! Errors follow RFC 6749 §5.2 (`invalid_client`, `invalid_scope`, …) with an
//! `error_description` that says exactly which check failed, so the client's messages can be
//! tested end to end.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use rand::RngCore;
use serde_json::{Value, json};

use crate::net::auth::jwt::{UnverifiedJwt, unix_now};
use crate::net::auth::keys::{self, PublicKey};
use crate::net::auth::{AuthError, CLIENT_ASSERTION_TYPE, SigningAlg, SmartConfig};

/// Allowed clock difference for `exp`, in seconds.
const LEEWAY_SECS: u64 = 5;
/// The longest assertion lifetime accepted (SMART: five minutes).
const MAX_ASSERTION_SECS: u64 = 300;

/// A client registered with the simulated IIS.
#[derive(Clone, Debug, PartialEq)]
pub struct SimClient {
    pub client_id: String,
    /// The client's public JWKS (`{"keys": [...]}`); may be empty when `jwks_url` is set.
    pub jwks: Value,
    /// Fetch the client's JWKS from here at each token request (instead of / besides `jwks`).
    pub jwks_url: Option<String>,
    /// Space-separated scopes this client may be granted.
    pub scopes: String,
}

/// SMART Backend Services mode of the simulated IIS.
#[derive(Clone, Debug, PartialEq)]
pub struct SmartSimConfig {
    pub clients: Vec<SimClient>,
    /// Lifetime of issued access tokens (`expires_in`, whole seconds, at least 1).
    pub token_lifetime: Duration,
}

impl Default for SmartSimConfig {
    fn default() -> Self {
        SmartSimConfig {
            clients: Vec::new(),
            token_lifetime: Duration::from_secs(300),
        }
    }
}

/// Scopes the simulated IIS grants by default: Patient read/search, and the Group and
/// Immunization scopes later work will use.
pub const SIM_SCOPES: &str =
    "system/Patient.rs system/Group.rs system/Group.u system/Immunization.rs";

/// Generate an ES384 key pair in `key_dir` (or reuse the one already there) and return the
/// client side ([`SmartConfig`], pointing at the private key) and the registration to put in
/// [`SmartSimConfig::clients`]. For the "demo with SMART" profile.
pub fn demo_registration(
    key_dir: &Path,
    client_id: &str,
) -> Result<(SmartConfig, SimClient), AuthError> {
    let kid = "matchdesk-demo";
    let private = key_dir.join(format!("{kid}.private.pem"));
    let jwks_path = key_dir.join(format!("{kid}.jwks.json"));
    let (private, jwks_path) = if private.exists() && jwks_path.exists() {
        (private, jwks_path)
    } else {
        // Half a pair (an interrupted earlier run): start over.
        for p in [&private, &jwks_path] {
            if p.exists() {
                std::fs::remove_file(p).map_err(|source| AuthError::KeyWrite {
                    path: p.to_path_buf(),
                    source,
                })?;
            }
        }
        let g = keys::generate(SigningAlg::Es384, Some(kid), key_dir)?;
        (g.private_key, g.jwks)
    };
    // Prove the pair still loads and fits together.
    let loaded = keys::LoadedKey::from_file(&private, kid, Some(SigningAlg::Es384))?;
    let jwks = keys::read_jwks(&jwks_path)?;
    let registered = jwks
        .get("keys")
        .and_then(Value::as_array)
        .and_then(|k| k.first())
        .and_then(|k| PublicKey::from_jwk(k).ok());
    if registered.as_ref() != Some(loaded.public_key()) {
        return Err(AuthError::KeyFormat {
            path: jwks_path,
            problem: "it does not hold the public half of the demo key; delete both demo key files to make new ones".into(),
        });
    }
    let cfg = SmartConfig {
        client_id: client_id.to_string(),
        key_path: private,
        kid: kid.to_string(),
        alg: Some(SigningAlg::Es384),
        ..SmartConfig::default()
    };
    let client = SimClient {
        client_id: client_id.to_string(),
        jwks,
        jwks_url: None,
        scopes: SIM_SCOPES.to_string(),
    };
    Ok((cfg, client))
}

struct Issued {
    client_id: String,
    scopes: Vec<String>,
    expires: Instant,
}

/// Why a FHIR request was refused.
pub(crate) enum Denied {
    /// `401`: no, unknown, revoked or expired token.
    Unauthorized(String),
    /// `403`: the token lacks the scope.
    Forbidden(String),
}

/// The running SMART side of the simulated IIS.
pub(crate) struct SmartState {
    clients: HashMap<String, SimClient>,
    lifetime: Duration,
    pub(crate) token_url: String,
    issued: Mutex<HashMap<String, Issued>>,
    seen_jti: Mutex<HashMap<String, u64>>,
    http: reqwest::Client,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An OAuth error response.
pub(crate) struct OAuthReject {
    pub status: StatusCode,
    pub body: Value,
}

fn oauth(status: StatusCode, code: &str, description: impl Into<String>) -> OAuthReject {
    OAuthReject {
        status,
        body: json!({ "error": code, "error_description": description.into() }),
    }
}

fn invalid_client(description: impl Into<String>) -> OAuthReject {
    oauth(StatusCode::UNAUTHORIZED, "invalid_client", description)
}

impl SmartState {
    pub(crate) fn new(cfg: &SmartSimConfig, token_url: String) -> Result<SmartState, String> {
        let mut clients = HashMap::new();
        for c in &cfg.clients {
            if c.client_id.trim().is_empty() {
                return Err("a registered client has an empty client id".into());
            }
            let keys = c.jwks.get("keys").and_then(Value::as_array);
            match keys {
                Some(keys) => {
                    for k in keys {
                        PublicKey::from_jwk(k)
                            .map_err(|e| format!("client {:?}: {e}", c.client_id))?;
                    }
                }
                None if c.jwks_url.is_some() => {}
                None => {
                    return Err(format!(
                        "client {:?} has neither a JWKS nor a JWKS URL",
                        c.client_id
                    ));
                }
            }
            clients.insert(c.client_id.clone(), c.clone());
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("HTTP client for JWKS URLs: {e}"))?;
        Ok(SmartState {
            clients,
            lifetime: cfg.token_lifetime.max(Duration::from_secs(1)),
            token_url,
            issued: Mutex::new(HashMap::new()),
            seen_jti: Mutex::new(HashMap::new()),
            http,
        })
    }

    /// `/.well-known/smart-configuration`.
    pub(crate) fn smart_configuration(&self) -> Value {
        json!({
            "token_endpoint": self.token_url,
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported":
                SigningAlg::ALL.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            "grant_types_supported": ["client_credentials"],
            "scopes_supported": SIM_SCOPES.split_whitespace().collect::<Vec<_>>(),
            "capabilities": ["client-confidential-asymmetric"],
        })
    }

    /// Revoke every access token issued so far.
    pub(crate) fn revoke_all(&self) {
        lock(&self.issued).clear();
    }

    /// Check `Authorization: Bearer …`; the client id on success.
    pub(crate) fn check_bearer(&self, headers: &HeaderMap) -> Result<String, Denied> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .ok_or_else(|| {
                Denied::Unauthorized(
                    "This simulated IIS requires a SMART Backend Services access token (Authorization: Bearer).".into(),
                )
            })?;
        let mut issued = lock(&self.issued);
        let Some(t) = issued.get(token) else {
            return Err(Denied::Unauthorized(
                "The access token is not valid here (unknown or revoked); request a new one."
                    .into(),
            ));
        };
        if Instant::now() >= t.expires {
            issued.remove(token);
            return Err(Denied::Unauthorized(
                "The access token has expired; request a new one.".into(),
            ));
        }
        if !t.scopes.iter().any(|s| covers_patient_read(s)) {
            return Err(Denied::Forbidden(format!(
                "The access token's scopes ({}) do not allow reading Patients; $bulk-match needs system/Patient.rs.",
                t.scopes.join(" ")
            )));
        }
        Ok(t.client_id.clone())
    }

    /// The token endpoint: a form body in, an access token (or an OAuth error) out.
    pub(crate) async fn token(&self, body: &[u8]) -> Result<Value, OAuthReject> {
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(body).into_owned().collect();
        let get = |k: &str| form.get(k).map(|s| s.trim()).unwrap_or("");
        if get("grant_type") != "client_credentials" {
            return Err(oauth(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Only grant_type=client_credentials (SMART Backend Services) is supported.",
            ));
        }
        if get("client_assertion_type") != CLIENT_ASSERTION_TYPE
            || get("client_assertion").is_empty()
        {
            return Err(oauth(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!(
                    "client_assertion_type must be {CLIENT_ASSERTION_TYPE} and client_assertion a signed JWT."
                ),
            ));
        }
        let jwt = UnverifiedJwt::parse(get("client_assertion")).map_err(invalid_client)?;
        let iss = jwt.claim_str("iss").unwrap_or_default();
        let sub = jwt.claim_str("sub").unwrap_or_default();
        if iss.is_empty() || iss != sub {
            return Err(invalid_client(
                "The assertion's iss and sub must both be the client id.",
            ));
        }
        let Some(client) = self.clients.get(iss) else {
            return Err(invalid_client(format!(
                "The client id {iss:?} is not registered with this IIS."
            )));
        };
        let alg = jwt.alg().map_err(invalid_client)?;
        if let Some(typ) = jwt.header_str("typ")
            && !typ.eq_ignore_ascii_case("JWT")
        {
            return Err(invalid_client("The assertion's typ header must be JWT."));
        }
        let kid = jwt
            .header_str("kid")
            .filter(|k| !k.is_empty())
            .ok_or_else(|| invalid_client("The assertion's header has no kid."))?;
        let jwks = self.client_jwks(client, jwt.header_str("jku")).await?;
        let candidates: Vec<PublicKey> = jwks
            .iter()
            .filter(|k| k.get("kid").and_then(Value::as_str) == Some(kid))
            .filter_map(|k| PublicKey::from_jwk(k).ok())
            .filter(|k| k.fits(alg))
            .collect();
        if candidates.is_empty() {
            return Err(invalid_client(format!(
                "No {alg} key with kid {kid:?} is registered for this client."
            )));
        }
        if !candidates.iter().any(|k| jwt.verify(k).is_ok()) {
            return Err(invalid_client(format!(
                "The assertion's signature does not verify with the registered key {kid:?}; the private key does not match the registered public key."
            )));
        }
        let aud_ok = match jwt.claims.get("aud") {
            Some(Value::String(a)) => a == &self.token_url,
            Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(&self.token_url)),
            _ => false,
        };
        if !aud_ok {
            return Err(invalid_client(format!(
                "The assertion's aud must be this token endpoint, {}.",
                self.token_url
            )));
        }
        let now = unix_now();
        let exp = jwt
            .claim_u64("exp")
            .ok_or_else(|| invalid_client("The assertion has no exp."))?;
        if exp + LEEWAY_SECS <= now {
            return Err(invalid_client(
                "The assertion has expired (exp is in the past); check the client's clock.",
            ));
        }
        if exp > now + MAX_ASSERTION_SECS + LEEWAY_SECS {
            return Err(invalid_client(
                "The assertion's exp is more than five minutes ahead.",
            ));
        }
        let jti = jwt
            .claim_str("jti")
            .filter(|j| !j.is_empty())
            .ok_or_else(|| invalid_client("The assertion has no jti."))?;
        {
            let mut seen = lock(&self.seen_jti);
            seen.retain(|_, e| *e + LEEWAY_SECS > now);
            let key = format!("{iss}\u{0}{jti}");
            if seen.contains_key(&key) {
                return Err(invalid_client(
                    "The assertion's jti was already used (replay).",
                ));
            }
            seen.insert(key, exp);
        }
        let allowed: Vec<&str> = client.scopes.split_whitespace().collect();
        let requested: Vec<&str> = get("scope").split_whitespace().collect();
        if requested.is_empty() {
            return Err(oauth(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "No scope was requested; ask for system/Patient.rs.",
            ));
        }
        let refused: Vec<&str> = requested
            .iter()
            .copied()
            .filter(|s| !allowed.contains(s))
            .collect();
        if !refused.is_empty() {
            return Err(oauth(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                format!(
                    "Scope(s) not granted to this client: {}. Allowed: {}.",
                    refused.join(" "),
                    allowed.join(" ")
                ),
            ));
        }
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        {
            let mut issued = lock(&self.issued);
            let now_i = Instant::now();
            issued.retain(|_, t| t.expires > now_i);
            issued.insert(
                token.clone(),
                Issued {
                    client_id: iss.to_string(),
                    scopes: requested.iter().map(|s| s.to_string()).collect(),
                    expires: now_i + self.lifetime,
                },
            );
        }
        tracing::info!(
            lifetime_s = self.lifetime.as_secs(),
            "simulated IIS issued an access token"
        );
        Ok(json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.lifetime.as_secs(),
            "scope": requested.join(" "),
        }))
    }

    /// The keys registered for `client` (inline, and from its JWKS URL when it has one).
    async fn client_jwks(
        &self,
        client: &SimClient,
        jku: Option<&str>,
    ) -> Result<Vec<Value>, OAuthReject> {
        let mut keys: Vec<Value> = client
            .jwks
            .get("keys")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(jku) = jku
            && client.jwks_url.as_deref() != Some(jku)
        {
            return Err(invalid_client(format!(
                "The jku header {jku:?} is not the JWKS URL registered for this client."
            )));
        }
        if let Some(url) = &client.jwks_url {
            let fetched: Value = async {
                self.http
                    .get(url)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await
            }
            .await
            .map_err(|_| {
                invalid_client(format!(
                    "The client's registered JWKS URL {url} could not be read."
                ))
            })?;
            if let Some(more) = fetched.get("keys").and_then(Value::as_array) {
                keys.extend(more.iter().cloned());
            }
        }
        Ok(keys)
    }
}

/// Whether a scope lets its holder read or search Patients (SMART v2 `system/Patient.rs`-style
/// or v1 `system/Patient.read`, with `*` wildcards).
pub(crate) fn covers_patient_read(scope: &str) -> bool {
    let Some(rest) = scope.strip_prefix("system/") else {
        return false;
    };
    let Some((resource, perms)) = rest.split_once('.') else {
        return false;
    };
    if resource != "Patient" && resource != "*" {
        return false;
    }
    let perms = perms.split('?').next().unwrap_or_default();
    matches!(perms, "read" | "*")
        || (!perms.is_empty()
            && perms.chars().all(|c| "cruds".contains(c))
            && perms.chars().any(|c| c == 'r' || c == 's'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_scopes() {
        assert!(covers_patient_read("system/Patient.rs"));
        assert!(covers_patient_read("system/Patient.r"));
        assert!(covers_patient_read("system/Patient.read"));
        assert!(covers_patient_read("system/*.rs"));
        assert!(covers_patient_read("system/Patient.cruds"));
        assert!(!covers_patient_read("system/Patient.c"));
        assert!(!covers_patient_read("system/Immunization.rs"));
        assert!(!covers_patient_read("user/Patient.rs"));
        assert!(!covers_patient_read("system/Patient.write"));
    }

    #[test]
    fn demo_registration_makes_and_reuses_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, client) = demo_registration(dir.path(), "demo-client").unwrap();
        assert_eq!(cfg.client_id, "demo-client");
        assert_eq!(cfg.scopes, "system/Patient.rs");
        assert_eq!(client.client_id, "demo-client");
        assert!(cfg.key_path.exists());
        let (cfg2, client2) = demo_registration(dir.path(), "demo-client").unwrap();
        assert_eq!(cfg, cfg2);
        assert_eq!(client, client2);
    }
}
