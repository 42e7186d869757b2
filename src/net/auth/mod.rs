//! SMART Backend Services authorization (OAuth 2.0 `client_credentials` with a signed JWT
//! assertion), as production Immunization Information Systems require for `$bulk-match`.
//!
//! * [`SmartConfig`]: what a server profile stores (client id, *path* of the private key, key id,
//!   algorithm, scopes, optional token endpoint). Private keys never go into the workspace.
//! * [`SmartToken`]: a [`TokenSource`](crate::net::TokenSource) that discovers the token endpoint
//!   (`[base]/.well-known/smart-configuration`), signs a one-time client assertion, requests an
//!   access token, caches it until shortly before it expires and renews it after a `401`.
//! * [`test_connection`]: the same steps one by one, with plain-language results for a person.
//! * [`keys`]: key loading (PEM or JWK, permission check), public JWKs and key generation.
//! * [`jwt`]: building and checking the compact JWS of the client assertion.
//!
//! Errors are [`AuthError`]s: what happened and what to check. They never contain a token, the
//! assertion or key material.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod connection;
pub mod jwt;
pub mod keys;
mod token;

pub use connection::{ConnectionReport, ConnectionStep, test_bearer_connection, test_connection};
pub use keys::{GeneratedKeys, LoadedKey, PublicKey};
pub use token::SmartToken;

/// The scope asked for when a profile names none: read and search Patients.
pub const DEFAULT_SCOPES: &str = "system/Patient.rs";

/// `client_assertion_type` of SMART Backend Services.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How a server profile authenticates with SMART Backend Services.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SmartConfig {
    /// The client id the IIS assigned at registration.
    pub client_id: String,
    /// The private key file (PEM or JWK). Only the path is stored, never the key.
    pub key_path: PathBuf,
    /// Key id (`kid`) registered with the IIS; empty = from the JWK file, else from the
    /// `<name>.jwks.json` that `matchdesk keys generate` wrote beside `<name>.private.pem`, else
    /// the key's RFC 7638 thumbprint.
    pub kid: String,
    /// Signing algorithm; `None` = inferred from the key (EC P-384 → ES384, P-521 → ES512,
    /// RSA → RS384).
    pub alg: Option<SigningAlg>,
    /// Space-separated scopes to request.
    pub scopes: String,
    /// Token endpoint; `None` = discover it from `[base]/.well-known/smart-configuration`.
    pub token_endpoint: Option<String>,
    /// Optional `jku` header: the URL of the client's public JWKS, for IIS that fetch keys there.
    pub jku: Option<String>,
}

impl Default for SmartConfig {
    fn default() -> Self {
        SmartConfig {
            client_id: String::new(),
            key_path: PathBuf::new(),
            kid: String::new(),
            alg: None,
            scopes: DEFAULT_SCOPES.to_string(),
            token_endpoint: None,
            jku: None,
        }
    }
}

/// JWS algorithms SMART Backend Services uses (ES384 and RS384 are required of servers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SigningAlg {
    #[serde(rename = "ES384")]
    Es384,
    #[serde(rename = "RS384")]
    Rs384,
    #[serde(rename = "ES512")]
    Es512,
    #[serde(rename = "RS512")]
    Rs512,
}

impl SigningAlg {
    pub const ALL: &'static [SigningAlg] = &[
        SigningAlg::Es384,
        SigningAlg::Rs384,
        SigningAlg::Es512,
        SigningAlg::Rs512,
    ];

    /// The JOSE name (`"ES384"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::Es384 => "ES384",
            SigningAlg::Rs384 => "RS384",
            SigningAlg::Es512 => "ES512",
            SigningAlg::Rs512 => "RS512",
        }
    }

    /// Whether the algorithm uses an RSA key (else an elliptic-curve key).
    pub fn is_rsa(self) -> bool {
        matches!(self, SigningAlg::Rs384 | SigningAlg::Rs512)
    }
}

impl fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SigningAlg {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SigningAlg::ALL
            .iter()
            .copied()
            .find(|a| a.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| AuthError::Config {
                message: format!(
                    "{:?} is not a supported signing algorithm; use one of ES384, RS384, ES512, RS512",
                    s.trim()
                ),
            })
    }
}

/// The `error` code of an OAuth 2.0 error response (RFC 6749 §5.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OAuthErrorKind {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    Other(String),
}

impl OAuthErrorKind {
    pub fn parse(code: &str) -> Self {
        match code.trim() {
            "invalid_request" => OAuthErrorKind::InvalidRequest,
            "invalid_client" => OAuthErrorKind::InvalidClient,
            "invalid_grant" => OAuthErrorKind::InvalidGrant,
            "unauthorized_client" => OAuthErrorKind::UnauthorizedClient,
            "unsupported_grant_type" => OAuthErrorKind::UnsupportedGrantType,
            "invalid_scope" => OAuthErrorKind::InvalidScope,
            other => OAuthErrorKind::Other(other.to_string()),
        }
    }

    pub fn code(&self) -> &str {
        match self {
            OAuthErrorKind::InvalidRequest => "invalid_request",
            OAuthErrorKind::InvalidClient => "invalid_client",
            OAuthErrorKind::InvalidGrant => "invalid_grant",
            OAuthErrorKind::UnauthorizedClient => "unauthorized_client",
            OAuthErrorKind::UnsupportedGrantType => "unsupported_grant_type",
            OAuthErrorKind::InvalidScope => "invalid_scope",
            OAuthErrorKind::Other(c) => c,
        }
    }

    /// What a user should check for this error.
    pub fn advice(&self) -> &'static str {
        match self {
            OAuthErrorKind::InvalidClient => {
                "check that the client id is exactly the one the IIS registered, that the IIS has your public key (JWKS) with the same key id (kid) and algorithm, that the key file is the private half of that key, that the token endpoint URL is right (it is the assertion's audience), and that this computer's clock is correct"
            }
            OAuthErrorKind::InvalidGrant => {
                "the signed assertion was refused: check this computer's clock, the key id (kid), the algorithm and the token endpoint URL against the IIS registration"
            }
            OAuthErrorKind::InvalidScope => {
                "ask the IIS which scopes your client was granted (for example system/Patient.rs) and request exactly those"
            }
            OAuthErrorKind::UnauthorizedClient => {
                "your client is not allowed to use SMART Backend Services (client_credentials); ask the IIS to enable it for your registration"
            }
            OAuthErrorKind::UnsupportedGrantType => {
                "the token endpoint does not support SMART Backend Services (client_credentials); check the token endpoint URL with the IIS"
            }
            OAuthErrorKind::InvalidRequest => {
                "the token endpoint did not understand the request; check the token endpoint URL and tell the IIS if it persists"
            }
            OAuthErrorKind::Other(_) => "check the server profile with the IIS",
        }
    }
}

impl fmt::Display for OAuthErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Everything that can go wrong with SMART Backend Services authorization. Messages say what
/// happened and what to do; none contains a token, an assertion or key material.
#[derive(Debug, Error)]
pub enum AuthError {
    #[error("the SMART settings are incomplete or wrong: {message}")]
    Config { message: String },
    #[error(
        "cannot read the private key file {}: {source}; check the key file path in the server profile",
        path.display()
    )]
    KeyRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the private key file {} can be read by other users of this computer (permissions {mode:03o}); make it private with `chmod 600 {}` and try again",
        path.display(), path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("the private key file {} cannot be used: {problem}", path.display())]
    KeyFormat { path: PathBuf, problem: String },
    #[error("could not write {}: {source}; check that the folder exists and is writable", path.display())]
    KeyWrite {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not create a key: {detail}")]
    KeyGen { detail: String },
    #[error("could not sign the client assertion: {detail}")]
    Signing { detail: String },
    #[error(
        "the server {server} has no SMART configuration ({detail}) and no token endpoint is configured; ask the IIS for its token endpoint URL and enter it in the server profile (--token-endpoint)"
    )]
    NoDiscovery { server: String, detail: String },
    #[error("the SMART configuration at {url} cannot be used: {problem}")]
    Discovery { url: String, problem: String },
    #[error(
        "the IIS does not accept {alg} signatures (it supports: {supported}); generate a key with one of those algorithms, or choose it in the server profile"
    )]
    AlgNotSupported { alg: SigningAlg, supported: String },
    #[error("the token endpoint {url} cannot be used: {problem}")]
    Endpoint { url: String, problem: String },
    #[error(
        "could not reach the token endpoint {url}: {detail}; check the network connection and the token endpoint URL"
    )]
    Unreachable { url: String, detail: String },
    #[error("the token endpoint {url} answered {status}: {message}; try again later")]
    TokenServer {
        url: String,
        status: u16,
        message: String,
    },
    #[error("the IIS refused the access token request ({kind}{}): {}", description_text(description), kind.advice())]
    OAuth {
        kind: OAuthErrorKind,
        description: Option<String>,
        status: u16,
    },
    #[error("the token endpoint's answer cannot be used: {what}")]
    BadTokenResponse { what: String },
}

fn description_text(d: &Option<String>) -> String {
    d.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
}

impl AuthError {
    /// Whether trying again later may help (network trouble, token endpoint 5xx/429). OAuth
    /// errors, key and configuration problems are permanent until someone fixes them.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AuthError::Unreachable { .. } | AuthError::TokenServer { .. }
        )
    }

    /// The OAuth error kind, for an OAuth error response.
    pub fn oauth_kind(&self) -> Option<&OAuthErrorKind> {
        match self {
            AuthError::OAuth { kind, .. } => Some(kind),
            _ => None,
        }
    }
}

impl From<AuthError> for crate::net::NetError {
    fn from(e: AuthError) -> Self {
        crate::net::NetError::Authorization(Box::new(e))
    }
}

#[cfg(test)]
mod tests;
