//! The client assertion: a one-time JWT signed with the client's private key (SMART Backend
//! Services), and the reading side the simulated IIS uses to check one.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde_json::{Map, Value, json};

use super::keys::{LoadedKey, PublicKey};
use super::{AuthError, SigningAlg};

/// How far ahead the assertion's `exp` lies (SMART: at most five minutes).
pub const ASSERTION_LIFETIME_SECS: u64 = 240;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh unguessable `jti` (128 random bits, hex).
pub fn new_jti() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Build and sign the client assertion for `token_endpoint` at `now` (Unix seconds).
/// Header: `alg`, `kid`, `typ: "JWT"`, optional `jku`; claims: `iss` = `sub` = `client_id`,
/// `aud` = `token_endpoint`, `exp` = now + [`ASSERTION_LIFETIME_SECS`], `iat`, unique `jti`.
pub fn client_assertion(
    key: &LoadedKey,
    client_id: &str,
    token_endpoint: &str,
    jku: Option<&str>,
    now: u64,
) -> Result<String, AuthError> {
    let mut header = Map::new();
    header.insert("alg".into(), key.alg().as_str().into());
    header.insert("kid".into(), key.kid().into());
    header.insert("typ".into(), "JWT".into());
    if let Some(j) = jku.map(str::trim).filter(|j| !j.is_empty()) {
        header.insert("jku".into(), j.into());
    }
    let claims = json!({
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint,
        "exp": now + ASSERTION_LIFETIME_SECS,
        "iat": now,
        "jti": new_jti(),
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(Value::Object(header).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key.sign(input.as_bytes())?;
    Ok(format!("{input}.{sig}"))
}

/// A compact JWS split into its decoded header and claims, not yet verified.
#[derive(Clone, Debug)]
pub struct UnverifiedJwt {
    pub header: Value,
    pub claims: Value,
    signing_input: String,
    signature: String,
}

impl UnverifiedJwt {
    /// Split and decode `token`; errors say what is malformed.
    pub fn parse(token: &str) -> Result<UnverifiedJwt, String> {
        let mut parts = token.trim().split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("the assertion is not a JWT (three base64url parts)".into());
        };
        let json = |part: &str, what: &str| -> Result<Value, String> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| format!("the JWT {what} is not base64url"))?;
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|_| format!("the JWT {what} is not JSON"))?;
            if v.is_object() {
                Ok(v)
            } else {
                Err(format!("the JWT {what} is not a JSON object"))
            }
        };
        Ok(UnverifiedJwt {
            header: json(h, "header")?,
            claims: json(c, "claims")?,
            signing_input: format!("{h}.{c}"),
            signature: s.to_string(),
        })
    }

    /// The header's `alg`, if it is one of ours.
    pub fn alg(&self) -> Result<SigningAlg, String> {
        let a = self
            .header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or("the JWT header has no alg")?;
        a.parse::<SigningAlg>()
            .map_err(|_| format!("the algorithm {a:?} is not accepted"))
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header.get(name).and_then(Value::as_str)
    }

    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    pub fn claim_u64(&self, name: &str) -> Option<u64> {
        self.claims.get(name).and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        })
    }

    /// Check the signature with `key` for the header's algorithm.
    pub fn verify(&self, key: &PublicKey) -> Result<(), String> {
        key.verify(self.alg()?, self.signing_input.as_bytes(), &self.signature)
    }
}
