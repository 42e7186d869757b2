//! Transport security and token scoping.
//!
//! Patient demographics leave the building only over HTTPS (TLS 1.2 or newer, rustls); plain
//! HTTP is allowed for loopback hosts only (the bundled simulated IIS, local tests). A bearer
//! token belongs to the FHIR base URL's origin (scheme, host, port): it is sent there, to file
//! URLs only when the manifest says `requiresAccessToken` *and* the file is on that origin, and
//! never across a redirect to another origin. URLs are redacted (no query string, no user info)
//! before they appear in errors or logs, because signed file URLs carry credentials there.
//! [`TokenSource`] abstracts where tokens come from (a static token, or SMART Backend Services:
//! [`crate::net::auth::SmartToken`]).

use std::net::IpAddr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use url::{Host, Url};

use crate::net::NetError;

/// Whether the URL's host is this computer: `localhost`, `127.0.0.0/8` or `::1`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => {
            let d = d.trim_end_matches('.');
            d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost")
        }
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => {
            ip.is_loopback()
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| IpAddr::V4(v4).is_loopback())
        }
        None => false,
    }
}

/// Refuse URLs patient data must not be sent to: anything but `https`, except `http` to a
/// loopback host; URLs with embedded credentials; URLs without a host.
pub fn check_base_url(url: &Url) -> Result<(), NetError> {
    if url.host().is_none() {
        return Err(NetError::InvalidUrl {
            url: redact_url(url),
            problem: "it has no host name".to_string(),
        });
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(NetError::InvalidUrl {
            url: redact_url(url),
            problem: "it contains a user name or password; configure credentials as an access token instead".to_string(),
        });
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(NetError::Insecure {
            url: redact_url(url),
        }),
        other => Err(NetError::InvalidUrl {
            url: redact_url(url),
            problem: format!("the scheme {other:?} is not supported; use https://"),
        }),
    }
}

/// Whether two URLs share an origin (scheme, host and effective port).
pub fn same_origin(a: &Url, b: &Url) -> bool {
    a.origin() == b.origin()
}

/// A URL safe for messages and logs: scheme, host, port and path only.
pub fn redact_url(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    // Cannot fail for URLs with a host; ignore for those without.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// A URL's origin for log lines (`https://iis.example.org:8443`).
pub fn origin_text(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// Where bearer tokens come from. `token()` returns `None` when no authorization is configured.
/// After a `401`, the client calls `invalidate()` once and asks again, so a refreshing source
/// (SMART backend services) can fetch a new token.
pub trait TokenSource: Send + Sync {
    fn token(&self) -> BoxFuture<'_, Result<Option<String>, NetError>>;
    fn invalidate(&self);
}

/// A fixed bearer token (pasted by the user or read from the environment).
#[derive(Clone)]
pub struct StaticToken(String);

impl StaticToken {
    pub fn new(token: impl Into<String>) -> Self {
        StaticToken(token.into())
    }
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

impl TokenSource for StaticToken {
    fn token(&self) -> BoxFuture<'_, Result<Option<String>, NetError>> {
        let t = self.0.trim();
        let t = (!t.is_empty()).then(|| t.to_string());
        Box::pin(async move { Ok(t) })
    }
    fn invalidate(&self) {}
}

/// Timeouts and identity of the underlying HTTP client.
#[derive(Clone, Debug)]
pub(crate) struct HttpSettings {
    pub user_agent: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

/// Build the reqwest client: rustls with TLS ≥ 1.2, gzip, timeouts, a User-Agent, no Referer,
/// and redirects followed only within the origin of the first URL (reqwest also strips
/// `Authorization` on cross-origin hops; we do not even follow them — the caller decides).
pub(crate) fn build_http_client(s: &HttpSettings) -> Result<reqwest::Client, NetError> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt
            .previous()
            .first()
            .is_some_and(|first| same_origin(first, attempt.url()));
        if attempt.previous().len() > 5 {
            attempt.error("more than 5 redirects")
        } else if same {
            attempt.follow()
        } else {
            attempt.stop()
        }
    });
    reqwest::Client::builder()
        .user_agent(s.user_agent.clone())
        .tls_version_min(reqwest::tls::Version::TLS_1_2)
        .gzip(true)
        .connect_timeout(s.connect_timeout)
        .read_timeout(s.read_timeout)
        .redirect(policy)
        .referer(false)
        .build()
        .map_err(|e| NetError::Setup {
            message: e.without_url().to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn https_required_except_loopback() {
        assert!(check_base_url(&u("https://iis.example.org/fhir")).is_ok());
        assert!(check_base_url(&u("http://127.0.0.1:8080/fhir")).is_ok());
        assert!(check_base_url(&u("http://127.1.2.3/fhir")).is_ok());
        assert!(check_base_url(&u("http://localhost:3000/")).is_ok());
        assert!(check_base_url(&u("http://[::1]:3000/")).is_ok());
        assert!(check_base_url(&u("http://[::ffff:127.0.0.1]:3000/")).is_ok());
        let e = check_base_url(&u("http://iis.example.org/fhir?x=1")).unwrap_err();
        assert!(matches!(e, NetError::Insecure { .. }));
        assert!(e.to_string().contains("https"), "{e}");
        assert!(!e.to_string().contains("x=1"), "{e}");
        assert!(check_base_url(&u("http://10.0.0.5/fhir")).is_err());
        assert!(check_base_url(&u("http://localhost.evil.com/")).is_err());
        assert!(matches!(
            check_base_url(&u("ftp://iis.example.org/")),
            Err(NetError::InvalidUrl { .. })
        ));
        let e = check_base_url(&u("https://user:secret@iis.example.org/")).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn origins_and_redaction() {
        assert!(same_origin(
            &u("https://a.example/fhir"),
            &u("https://a.example:443/files/1")
        ));
        assert!(!same_origin(
            &u("https://a.example/"),
            &u("https://b.example/")
        ));
        assert!(!same_origin(
            &u("https://a.example/"),
            &u("http://a.example/")
        ));
        assert!(!same_origin(
            &u("https://a.example/"),
            &u("https://a.example:8443/")
        ));
        assert_eq!(
            redact_url(&u(
                "https://u:p@s3.example/b/f.ndjson?X-Amz-Signature=abc#x"
            )),
            "https://s3.example/b/f.ndjson"
        );
        assert_eq!(
            origin_text(&u("https://a.example:8443/x?y")),
            "https://a.example:8443"
        );
    }

    #[tokio::test]
    async fn static_token_hides_itself() {
        let t = StaticToken::new(" tok-123 ");
        assert_eq!(t.token().await.unwrap().as_deref(), Some("tok-123"));
        assert!(!format!("{t:?}").contains("tok-123"));
        assert_eq!(StaticToken::new("  ").token().await.unwrap(), None);
    }
}
