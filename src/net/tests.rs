//! HTTP behaviour of [`BulkMatchClient`] against real servers on loopback.
//!
//! Each test starts a tiny axum server on `127.0.0.1:0` whose *script* decides the answer to
//! every request (by path and call number) and which records what the client sent. Where axum
//! cannot misbehave the way a broken network does (a connection dropped before any answer), a raw
//! TCP listener is used instead. Backoff and poll intervals are configured in milliseconds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use url::Url;

use crate::domain::{Demographics, MatchOptions, Sex};
use crate::net::*;

// ---------------------------------------------------------------------------------------------
// Scripted loopback server
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Rec {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Rec {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

type Script = dyn Fn(&Rec, usize) -> Response + Send + Sync;

struct TestServer {
    base: String,
    log: Arc<Mutex<Vec<Rec>>>,
    /// Content-Encoding of each response as it left the server.
    encodings: Arc<Mutex<Vec<Option<String>>>>,
}

impl TestServer {
    fn requests(&self) -> Vec<Rec> {
        self.log.lock().unwrap().clone()
    }
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

async fn start(script: impl Fn(&Rec, usize) -> Response + Send + Sync + 'static) -> TestServer {
    start_with(script, false).await
}

async fn start_with(
    script: impl Fn(&Rec, usize) -> Response + Send + Sync + 'static,
    gzip: bool,
) -> TestServer {
    let script: Arc<Script> = Arc::new(script);
    let log: Arc<Mutex<Vec<Rec>>> = Arc::default();
    let encodings: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let log2 = log.clone();
    let handler = move |req: Request| {
        let script = script.clone();
        let log = log2.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let rec = Rec {
                method: parts.method.to_string(),
                path: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                headers: parts.headers,
                body,
            };
            let n = {
                let mut l = log.lock().unwrap();
                l.push(rec.clone());
                l.len() - 1
            };
            script(&rec, n)
        }
    };
    let mut router = Router::new().fallback(handler);
    if gzip {
        router = router.layer(tower_http::compression::CompressionLayer::new());
    }
    let enc = encodings.clone();
    router = router.layer(axum::middleware::map_response(move |resp: Response| {
        let enc = enc.clone();
        async move {
            enc.lock().unwrap().push(
                resp.headers()
                    .get("content-encoding")
                    .map(|v| v.to_str().unwrap().to_string()),
            );
            resp
        }
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    TestServer {
        base: format!("http://{addr}"),
        log,
        encodings,
    }
}

fn resp(status: u16, headers: &[(&str, &str)], body: impl Into<Body>) -> Response {
    let mut r = (StatusCode::from_u16(status).unwrap(), body.into()).into_response();
    for (k, v) in headers {
        r.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    r
}

fn accepted(location: &str) -> Response {
    resp(202, &[("content-location", location)], "")
}

fn manifest_json(file_url: &str, requires_token: bool) -> String {
    json!({
        "transactionTime": "2024-05-01T12:00:00Z",
        "request": "http://x/fhir/Patient/$bulk-match",
        "requiresAccessToken": requires_token,
        "output": [{"type": "Bundle", "url": file_url}],
        "error": []
    })
    .to_string()
}

fn test_config() -> ClientConfig {
    ClientConfig {
        retry: RetryConfig {
            max_retries: 3,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            base: 2.0,
            retry_timeout: Duration::from_secs(20),
        },
        poll: PollConfig {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
            max_wait: Duration::from_secs(20),
        },
        request_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_secs(10),
        rng_seed: Some(42),
        ..ClientConfig::default()
    }
}

fn client(server: &TestServer) -> BulkMatchClient {
    BulkMatchClient::new(&server.url("/fhir"), test_config()).unwrap()
}

fn client_with_token(server: &TestServer, token: &str) -> BulkMatchClient {
    let cfg = ClientConfig {
        token: Some(Arc::new(StaticToken::new(token))),
        ..test_config()
    };
    BulkMatchClient::new(&server.url("/fhir"), cfg).unwrap()
}

fn patients() -> Vec<(String, Demographics)> {
    vec![
        (
            "row-1".to_string(),
            Demographics {
                given: Some("ANA".into()),
                family: Some("SILVA".into()),
                birth_date: NaiveDate::from_ymd_opt(2019, 4, 2),
                sex: Some(Sex::Female),
                ..Default::default()
            },
        ),
        (
            "row-2".to_string(),
            Demographics {
                given: Some("BO".into()),
                family: Some("LEE".into()),
                ..Default::default()
            },
        ),
    ]
}

async fn collect_lines(
    c: &BulkMatchClient,
    url: &str,
    requires_token: bool,
) -> Result<(Vec<(u64, String)>, DownloadStats), NetError> {
    let mut lines = Vec::new();
    let stats = c
        .download_lines(url, requires_token, &mut |n, l| {
            lines.push((n, String::from_utf8(l.to_vec()).unwrap()));
            Ok(())
        })
        .await?;
    Ok((lines, stats))
}

// ---------------------------------------------------------------------------------------------
// Kick-off
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn kick_off_sends_parameters_and_headers_and_resolves_relative_location() {
    let s = start(|_, _| accepted("/fhir/status/job-1")).await;
    let c = client(&s);
    let opts = MatchOptions {
        only_single_match: true,
        only_certain_matches: false,
        count: Some(3),
        output_format: Some("application/fhir+ndjson".into()),
    };
    let k = c.kick_off(&patients(), &opts).await.unwrap();
    assert_eq!(k.status_url.as_str(), s.url("/fhir/status/job-1"));

    let reqs = s.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/fhir/Patient/$bulk-match");
    assert_eq!(r.header("prefer").as_deref(), Some("respond-async"));
    assert_eq!(r.header("accept").as_deref(), Some("application/fhir+json"));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/fhir+json")
    );
    assert!(r.header("user-agent").unwrap().starts_with("matchdesk/"));
    assert!(r.header("authorization").is_none());

    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["resourceType"], "Parameters");
    let params = body["parameter"].as_array().unwrap();
    let resources: Vec<&Value> = params
        .iter()
        .filter(|p| p["name"] == "resource")
        .map(|p| &p["resource"])
        .collect();
    assert_eq!(resources.len(), 2);
    assert_eq!(resources[0]["resourceType"], "Patient");
    assert_eq!(resources[0]["id"], "row-1");
    assert_eq!(resources[1]["id"], "row-2");
    let param = |name: &str| params.iter().find(|p| p["name"] == name).cloned();
    assert_eq!(param("onlySingleMatch").unwrap()["valueBoolean"], true);
    assert_eq!(param("onlyCertainMatches").unwrap()["valueBoolean"], false);
    assert_eq!(param("count").unwrap()["valueInteger"], 3);
    assert_eq!(
        param("_outputFormat").unwrap()["valueString"],
        "application/fhir+ndjson"
    );

    // No count / format: the parameters are left out.
    let opts = MatchOptions {
        count: None,
        output_format: None,
        ..MatchOptions::default()
    };
    c.kick_off(&patients()[..1], &opts).await.unwrap();
    let body: Value = serde_json::from_slice(&s.requests()[1].body).unwrap();
    let names: Vec<&str> = body["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["resource", "onlySingleMatch", "onlyCertainMatches"]);

    assert!(matches!(
        c.kick_off(&[], &opts).await,
        Err(NetError::NothingToSend)
    ));
}

#[tokio::test]
async fn kick_off_413_is_too_large_and_not_retried() {
    let s = start(|_, _| resp(413, &[], outcome("too-costly", "at most 1000 patients"))).await;
    let err = client(&s)
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap_err();
    match &err {
        NetError::TooLarge {
            sent, limit_hint, ..
        } => {
            assert_eq!(*sent, 2);
            assert!(limit_hint.as_deref().unwrap().contains("at most 1000"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!err.is_retryable());
    assert_eq!(s.requests().len(), 1);
}

#[tokio::test]
async fn kick_off_429_honours_retry_after_seconds() {
    let s = start(|_, n| {
        if n == 0 {
            resp(
                429,
                &[("retry-after", "1")],
                outcome("throttled", "slow down"),
            )
        } else {
            accepted("/fhir/status/1")
        }
    })
    .await;
    let t = Instant::now();
    client(&s)
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap();
    // Our own backoff is at most 20 ms: a wait near a second can only be the server's.
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(s.requests().len(), 2);
}

#[tokio::test]
async fn kick_off_429_honours_retry_after_http_date() {
    let s = start(|_, n| {
        if n == 0 {
            let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
            resp(429, &[("retry-after", &at)], "")
        } else {
            accepted("/fhir/status/1")
        }
    })
    .await;
    let t = Instant::now();
    client(&s)
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap();
    // The date has second precision: now + 2 s, truncated, is at least ~1 s away.
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(s.requests().len(), 2);
}

#[tokio::test]
async fn kick_off_429_forever_gives_up_as_throttled() {
    let s = start(|_, _| resp(429, &[("retry-after", "0")], "")).await;
    let err = client(&s)
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, NetError::Throttled { retries: 3, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("after 3 retries"), "{err}");
    assert_eq!(s.requests().len(), 4);
}

#[tokio::test]
async fn kick_off_falls_back_on_accept_and_remembers_it() {
    let s = start(|r, _| match r.header("accept").as_deref() {
        Some("application/fhir+json" | "application/fhir+ndjson") => resp(
            400,
            &[("content-type", "application/fhir+json")],
            outcome("invalid", "Unsupported Accept header value"),
        ),
        _ => accepted("/fhir/status/7"),
    })
    .await;
    let c = client(&s);
    assert_eq!(c.accept_mode(), AcceptMode::FhirJson);
    c.kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap();
    let accepts: Vec<Option<String>> = s.requests().iter().map(|r| r.header("accept")).collect();
    assert_eq!(
        accepts,
        [
            Some("application/fhir+json".to_string()),
            Some("application/fhir+ndjson".to_string()),
            Some("*/*".to_string())
        ]
    );
    // Remembered, shared with clones, and used first next time.
    let clone = c.clone();
    assert_eq!(clone.accept_mode(), AcceptMode::Any);
    clone
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap();
    assert_eq!(s.requests().len(), 4);
    assert_eq!(s.requests()[3].header("accept").as_deref(), Some("*/*"));
    assert_eq!(
        AcceptMode::from_key(c.accept_mode().key()),
        Some(AcceptMode::Any)
    );
}

#[tokio::test]
async fn kick_off_accept_fallback_that_never_works_returns_the_first_error() {
    let s = start(|r, _| {
        let text = format!("not acceptable: {:?}", r.header("accept"));
        resp(400, &[], outcome("invalid", &text))
    })
    .await;
    let c = client(&s);
    c.set_accept_mode(AcceptMode::FhirNdjson);
    let err = c
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap_err();
    assert_eq!(s.requests().len(), 3);
    match err {
        NetError::Rejected {
            status, message, ..
        } => {
            assert_eq!(status, 400);
            assert!(message.contains("fhir+ndjson"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(c.accept_mode(), AcceptMode::FhirNdjson);
}

#[tokio::test]
async fn kick_off_other_400_is_rejected_with_server_text_at_once() {
    let s = start(|_, _| resp(400, &[], outcome(4000, "birthDate is required"))).await;
    let err = client(&s)
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap_err();
    assert_eq!(s.requests().len(), 1);
    match &err {
        NetError::Rejected {
            status,
            issues,
            message,
        } => {
            assert_eq!(*status, 400);
            assert_eq!(issues[0].code, "4000");
            assert!(message.contains("birthDate is required"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!err.is_retryable());
}

/// An OperationOutcome with a numeric code (deviant servers) and only `diagnostics`.
fn outcome_num(code: i64, text: &str) -> String {
    json!({"resourceType": "OperationOutcome",
           "issue": [{"severity": "error", "code": code, "diagnostics": text}]})
    .to_string()
}

/// An OperationOutcome with one error issue.
fn outcome<C: serde::Serialize>(code: C, text: &str) -> String {
    let code = json!(code);
    if let Some(n) = code.as_i64() {
        return outcome_num(n, text);
    }
    json!({"resourceType": "OperationOutcome",
           "issue": [{"severity": "error", "code": code, "details": {"text": text}}]})
    .to_string()
}

#[tokio::test]
async fn kick_off_retries_5xx_then_succeeds() {
    let s = start(|_, n| match n {
        0 => resp(503, &[], "<html>Service Unavailable</html>"),
        1 => resp(500, &[], outcome("exception", "boom")),
        _ => accepted("https://127.0.0.1:9/fhir/status/3"),
    })
    .await;
    let k = client(&s)
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap();
    assert_eq!(k.status_url.as_str(), "https://127.0.0.1:9/fhir/status/3");
    assert_eq!(s.requests().len(), 3);
}

#[tokio::test]
async fn kick_off_gives_up_after_n_retries_with_the_server_text() {
    let s = start(|_, _| resp(500, &[], outcome("exception", "database down"))).await;
    let err = client(&s)
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("after 3 retries"), "{msg}");
    assert!(msg.contains("database down"), "{msg}");
    assert!(msg.contains("500"), "{msg}");
    assert!(err.is_retryable());
    assert_eq!(s.requests().len(), 4);
}

#[tokio::test]
async fn kick_off_without_content_location_is_a_bad_response() {
    let s = start(|_, _| resp(202, &[], "")).await;
    let err = client(&s)
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::BadResponse { .. }));
    assert!(err.to_string().contains("Content-Location"), "{err}");
}

#[tokio::test]
async fn kick_off_413_without_outcome_has_no_hint() {
    let s = start(|_, _| resp(413, &[], "<html>too big</html>")).await;
    let err = client(&s)
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::TooLarge {
                limit_hint: None,
                sent: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("send fewer patients"), "{err}");
}

fn assert_send<T: Send>(_: &T) {}

#[test]
fn client_futures_are_send_so_the_engine_can_spawn_them() {
    let c = BulkMatchClient::new("http://127.0.0.1:1/fhir", ClientConfig::default()).unwrap();
    let p = patients();
    let o = MatchOptions::default();
    let u = Url::parse("http://127.0.0.1:1/status").unwrap();
    let cancel = CancelFlag::new();
    let mut on_poll = |_: PollEvent| {};
    let mut on_line = |_: u64, _: &[u8]| Ok(());
    assert_send(&c.kick_off(&p, &o));
    assert_send(&c.poll_once(&u));
    assert_send(&c.wait_for_manifest(&u, &mut on_poll, &cancel));
    assert_send(&c.delete(&u));
    assert_send(&c.download_lines("f.ndjson", true, &mut on_line));
    fn assert_sync<T: Send + Sync + Clone>(_: &T) {}
    assert_sync(&c);
}

#[tokio::test]
async fn kick_off_refuses_an_insecure_status_url() {
    let s = start(|_, _| accepted("http://iis.example.org/status/1")).await;
    let err = client(&s)
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Insecure { .. }), "{err:?}");
}

/// A raw TCP server for breakage axum cannot produce. Connection `i` reads one request and
/// gets `answers[i]` (the last one for later connections) written verbatim, then is closed; an
/// empty answer closes the connection without a reply.
async fn raw_server(answers: Vec<Vec<u8>>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let conns2 = conns.clone();
    let answers = Arc::new(answers);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = conns2.fetch_add(1, Ordering::SeqCst);
            let answer = answers[n.min(answers.len() - 1)].clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = Vec::new();
                // Read the head and the body (Content-Length) of one request.
                loop {
                    let Ok(k) = sock.read(&mut buf).await else {
                        return;
                    };
                    if k == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..k]);
                    if let Some(head_end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse().unwrap())
                            .unwrap_or(0);
                        if got.len() >= head_end + 4 + len {
                            break;
                        }
                    }
                }
                if !answer.is_empty() {
                    let _ = sock.write_all(&answer).await;
                    let _ = sock.shutdown().await;
                }
            });
        }
    });
    (format!("http://{addr}"), conns)
}

#[tokio::test]
async fn kick_off_retries_a_dropped_connection() {
    let ok = b"HTTP/1.1 202 Accepted\r\nContent-Location: /fhir/status/9\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let (base, conns) = raw_server(vec![vec![], vec![], ok.to_vec()]).await;
    let c = BulkMatchClient::new(&format!("{base}/fhir"), test_config()).unwrap();
    let k = c
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap();
    assert_eq!(k.status_url.as_str(), format!("{base}/fhir/status/9"));
    assert_eq!(conns.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn connection_refused_gives_up_with_retries_in_the_message() {
    // Bind, then free the port so nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = BulkMatchClient::new(&format!("http://127.0.0.1:{port}/fhir"), test_config()).unwrap();
    let err = c
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, NetError::Connect { retries: 3, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("after 3 retries"), "{err}");
    assert!(err.is_retryable());
}

// ---------------------------------------------------------------------------------------------
// Status polling
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn poll_once_maps_statuses() {
    let s = start(|r, _| match r.path.as_str() {
        "/s/running" => resp(
            202,
            &[
                ("x-progress", "\u{201c}50% complete\u{201d}"),
                ("retry-after", "7"),
            ],
            "",
        ),
        "/s/throttled" => resp(
            429,
            &[("retry-after", "3")],
            outcome("throttled", "too often"),
        ),
        "/s/done" => resp(
            200,
            &[
                ("expires", "Mon, 22 Jul 2019 23:59:59 GMT"),
                ("content-type", "application/json"),
            ],
            manifest_json("https://files.example/f1.ndjson", true),
        ),
        "/s/gone" => resp(404, &[], outcome("not-found", "no such job")),
        "/s/bad" => resp(400, &[], outcome("invalid", "job failed: bad input")),
        "/s/busy" => resp(503, &[], ""),
        "/s/transient" => resp(409, &[], outcome("lock-error", "try later")),
        "/s/garbage" => resp(200, &[], "<html>login</html>"),
        _ => resp(500, &[], ""),
    })
    .await;
    let c = client(&s);
    let u = |p: &str| Url::parse(&s.url(p)).unwrap();

    assert_eq!(
        c.poll_once(&u("/s/running")).await.unwrap(),
        PollStatus::InProgress {
            progress: Some("50% complete".into()),
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert_eq!(
        c.poll_once(&u("/s/throttled")).await.unwrap(),
        PollStatus::InProgress {
            progress: None,
            retry_after: Some(Duration::from_secs(3))
        }
    );
    match c.poll_once(&u("/s/done")).await.unwrap() {
        PollStatus::Complete { manifest, expires } => {
            assert!(manifest.requires_access_token);
            assert_eq!(manifest.output[0].url, "https://files.example/f1.ndjson");
            assert_eq!(
                expires,
                Some(httpdate::parse_http_date("Mon, 22 Jul 2019 23:59:59 GMT").unwrap())
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let gone = c.poll_once(&u("/s/gone")).await.unwrap_err();
    assert!(matches!(gone, NetError::Gone { status: 404, .. }));
    let bad = c.poll_once(&u("/s/bad")).await.unwrap_err();
    assert!(matches!(bad, NetError::Rejected { status: 400, .. }));
    assert!(bad.to_string().contains("job failed: bad input"));
    assert!(!bad.is_retryable());
    assert!(c.poll_once(&u("/s/busy")).await.unwrap_err().is_retryable());
    assert!(
        c.poll_once(&u("/s/transient"))
            .await
            .unwrap_err()
            .is_retryable()
    );
    let garbage = c.poll_once(&u("/s/garbage")).await.unwrap_err();
    assert!(matches!(garbage, NetError::BadResponse { .. }));
    assert!(
        s.requests()
            .iter()
            .all(|r| r.header("accept").as_deref() == Some("application/json"))
    );
}

#[tokio::test]
async fn wait_for_manifest_reports_progress_then_completes() {
    let file = "https://files.example/out/1.ndjson";
    let s = start(move |_, n| match n {
        0 => resp(202, &[("x-progress", "10% complete")], ""),
        1 => resp(202, &[("x-progress", "\"60% complete\"")], ""),
        2 => resp(429, &[("retry-after", "0")], ""),
        _ => resp(200, &[], manifest_json(file, false)),
    })
    .await;
    let c = client(&s);
    let mut events = Vec::new();
    let done = c
        .wait_for_manifest(
            &Url::parse(&s.url("/status/1")).unwrap(),
            &mut |e| events.push(e),
            &CancelFlag::new(),
        )
        .await
        .unwrap();
    assert_eq!(done.manifest.output[0].url, file);
    let progress: Vec<Option<String>> = events
        .iter()
        .filter_map(|e| match e {
            PollEvent::InProgress { progress, .. } => Some(progress.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        progress,
        [
            Some("10% complete".to_string()),
            Some("60% complete".to_string()),
            None
        ]
    );
    assert_eq!(events.last(), Some(&PollEvent::Complete { files: 1 }));
    // A Retry-After of 0 is floored at poll.initial.
    match &events[2] {
        PollEvent::InProgress { next_poll, .. } => assert!(*next_poll >= Duration::from_millis(5)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(s.requests().len(), 4);
}

#[tokio::test]
async fn wait_for_manifest_survives_transient_failures_and_gives_up_on_a_streak() {
    // 2 failures, progress, 3 failures, done: never more than 3 in a row → success.
    let s = start(|_, n| match n {
        0 | 1 | 3 | 4 | 5 => resp(500, &[], outcome("exception", "hiccup")),
        2 => resp(202, &[], ""),
        _ => resp(200, &[], manifest_json("https://f.example/1", false)),
    })
    .await;
    let mut retries = 0;
    client(&s)
        .wait_for_manifest(
            &Url::parse(&s.url("/status/1")).unwrap(),
            &mut |e| {
                if matches!(e, PollEvent::Retrying { .. }) {
                    retries += 1;
                }
            },
            &CancelFlag::new(),
        )
        .await
        .unwrap();
    assert_eq!(retries, 5);

    let s = start(|_, _| resp(502, &[], "Bad Gateway")).await;
    let err = client(&s)
        .wait_for_manifest(
            &Url::parse(&s.url("/status/1")).unwrap(),
            &mut |_| {},
            &CancelFlag::new(),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("the server's status endpoint failed 4 times in a row"),
        "{msg}"
    );
    assert!(msg.contains("502"), "{msg}");
    assert_eq!(s.requests().len(), 4);
}

#[tokio::test]
async fn wait_for_manifest_stops_on_gone() {
    let s = start(|_, _| resp(404, &[], outcome("not-found", "deleted"))).await;
    let err = client(&s)
        .wait_for_manifest(
            &Url::parse(&s.url("/status/1")).unwrap(),
            &mut |_| {},
            &CancelFlag::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Gone { .. }));
    assert_eq!(s.requests().len(), 1);
}

#[tokio::test]
async fn expired_manifest_is_repolled_once() {
    let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(3600));
    let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
    let s = start(move |_, n| {
        if n == 0 {
            resp(
                200,
                &[("expires", &past)],
                manifest_json("https://f.example/old", false),
            )
        } else {
            resp(
                200,
                &[("expires", &future)],
                manifest_json("https://f.example/new", false),
            )
        }
    })
    .await;
    let mut events = Vec::new();
    let done = client(&s)
        .wait_for_manifest(
            &Url::parse(&s.url("/status/1")).unwrap(),
            &mut |e| events.push(e),
            &CancelFlag::new(),
        )
        .await
        .unwrap();
    assert_eq!(done.manifest.output[0].url, "https://f.example/new");
    assert_eq!(events[0], PollEvent::ManifestExpired);
    assert_eq!(s.requests().len(), 2);

    // A server that keeps sending an expired manifest: one re-poll, then it is used anyway.
    let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(3600));
    let s = start(move |_, _| {
        resp(
            200,
            &[("expires", &past)],
            manifest_json("https://f.example/old", false),
        )
    })
    .await;
    let done = client(&s)
        .wait_for_manifest(
            &Url::parse(&s.url("/status/1")).unwrap(),
            &mut |_| {},
            &CancelFlag::new(),
        )
        .await
        .unwrap();
    assert_eq!(done.manifest.output[0].url, "https://f.example/old");
    assert!(done.expires.unwrap() < SystemTime::now());
    assert_eq!(s.requests().len(), 2);
}

#[tokio::test]
async fn wait_for_manifest_can_be_cancelled_while_sleeping() {
    let s = start(|_, _| resp(202, &[("retry-after", "30")], "")).await;
    let c = client(&s);
    let cancel = CancelFlag::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c2.cancel();
    });
    let t = Instant::now();
    let err = c
        .wait_for_manifest(
            &Url::parse(&s.url("/status/1")).unwrap(),
            &mut |_| {},
            &cancel,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Cancelled));
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn wait_for_manifest_gives_up_after_max_wait() {
    let s = start(|_, _| resp(202, &[], "")).await;
    let cfg = ClientConfig {
        poll: PollConfig {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(10),
            max_wait: Duration::from_millis(150),
        },
        ..test_config()
    };
    let c = BulkMatchClient::new(&s.url("/fhir"), cfg).unwrap();
    let err = c
        .wait_for_manifest(
            &Url::parse(&s.url("/status/1")).unwrap(),
            &mut |_| {},
            &CancelFlag::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::WaitTimeout { .. }), "{err:?}");
    assert!(s.requests().len() >= 3);
}

// ---------------------------------------------------------------------------------------------
// Delete
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn delete_accepts_success_and_already_gone() {
    let s = start(|r, n| match (r.path.as_str(), n) {
        ("/s/a", _) => resp(202, &[], ""),
        ("/s/b", _) => resp(404, &[], outcome("not-found", "gone")),
        ("/s/c", 2) => resp(503, &[], ""),
        ("/s/c", _) => resp(204, &[], ""),
        _ => resp(400, &[], outcome("invalid", "cannot delete a running job")),
    })
    .await;
    let c = client(&s);
    let u = |p: &str| Url::parse(&s.url(p)).unwrap();
    c.delete(&u("/s/a")).await.unwrap();
    c.delete(&u("/s/b")).await.unwrap();
    c.delete(&u("/s/c")).await.unwrap();
    let err = c.delete(&u("/s/d")).await.unwrap_err();
    assert!(err.to_string().contains("cannot delete a running job"));
    let reqs = s.requests();
    assert_eq!(reqs.len(), 5);
    assert!(reqs.iter().all(|r| r.method == "DELETE"));
}

// ---------------------------------------------------------------------------------------------
// Downloads
// ---------------------------------------------------------------------------------------------

fn ndjson(n: usize) -> String {
    (1..=n)
        .map(|i| {
            format!(
                "{{\"resourceType\":\"Bundle\",\"n\":{i},\"pad\":\"{}\"}}\n",
                "x".repeat(i % 17)
            )
        })
        .collect()
}

/// A body that delivers `head` and then breaks off (the connection is aborted mid-body). The
/// pause lets the server flush the response head and the first chunk before the error; without
/// it, hyper meets the error before sending anything and the client sees a dropped connection.
fn broken_body(head: Vec<u8>) -> Body {
    let stream = futures_util::stream::unfold(0u8, move |state| {
        let head = head.clone();
        async move {
            match state {
                0 => Some((Ok(Bytes::from(head)), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Some((Err(std::io::Error::other("connection cut")), 2))
                }
                _ => None,
            }
        }
    });
    Body::from_stream(stream)
}

/// A body delivered in `chunk`-byte pieces (each its own HTTP chunk).
fn chunked_body(data: String, chunk: usize) -> Body {
    let pieces: Vec<Result<Bytes, std::io::Error>> = data
        .into_bytes()
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Body::from_stream(futures_util::stream::iter(pieces))
}

#[tokio::test]
async fn download_streams_lines_split_across_chunks() {
    let mut data = ndjson(200);
    data.insert_str(0, "\r\n"); // a blank first line: skipped, but numbering keeps counting it
    data.push_str("{\"last\":true}"); // a final line without newline
    let body = data.clone();
    let s = start(move |_, _| {
        resp(
            200,
            &[("content-type", "application/fhir+ndjson")],
            chunked_body(body.clone(), 5),
        )
    })
    .await;
    let (lines, stats) = collect_lines(&client(&s), &s.url("/files/1.ndjson"), false)
        .await
        .unwrap();
    assert_eq!(lines.len(), 201);
    assert_eq!(lines[0].0, 2);
    assert!(lines[0].1.contains("\"n\":1,"));
    assert_eq!(lines[199].0, 201);
    assert_eq!(lines[200], (202, "{\"last\":true}".to_string()));
    assert!(
        lines
            .iter()
            .all(|(_, l)| !l.ends_with('\r') && !l.contains('\n'))
    );
    assert_eq!(stats.lines, 201);
    assert_eq!(stats.bytes, data.len() as u64);
    assert_eq!(stats.retries, 0);
    assert_eq!(
        s.requests()[0].header("accept").as_deref(),
        Some("application/fhir+ndjson")
    );
}

#[tokio::test]
async fn download_is_gzip_decoded_transparently() {
    let data = ndjson(500);
    let body = data.clone();
    let s = start_with(
        move |_, _| {
            resp(
                200,
                &[("content-type", "application/fhir+ndjson")],
                body.clone(),
            )
        },
        true,
    )
    .await;
    let (lines, stats) = collect_lines(&client(&s), &s.url("/files/1.ndjson"), false)
        .await
        .unwrap();
    assert_eq!(lines.len(), 500);
    assert_eq!(stats.bytes, data.len() as u64);
    assert!(
        s.requests()[0]
            .header("accept-encoding")
            .unwrap()
            .contains("gzip")
    );
    assert_eq!(s.encodings.lock().unwrap()[0].as_deref(), Some("gzip"));
}

/// Download `url`, recording for each delivered line how many requests the server had seen.
async fn lines_with_attempt(
    c: &BulkMatchClient,
    url: &str,
    s: &TestServer,
) -> Result<(Vec<(u64, usize)>, DownloadStats), NetError> {
    let mut seen = Vec::new();
    let log = s.log.clone();
    let stats = c
        .download_lines(url, false, &mut |n, l| {
            let text = std::str::from_utf8(l).unwrap();
            assert!(text.contains(&format!("\"n\":{n},")), "line {n}: {text}");
            seen.push((n, log.lock().unwrap().len()));
            Ok(())
        })
        .await?;
    Ok((seen, stats))
}

#[tokio::test]
async fn truncated_download_is_retried_without_duplicates() {
    let full = ndjson(50);
    let cut = full.len() * 2 / 3 + 3; // mid-line
    let s = start(move |_, n| {
        if n == 0 {
            resp(200, &[], broken_body(full.as_bytes()[..cut].to_vec()))
        } else {
            resp(200, &[], full.clone())
        }
    })
    .await;
    let (seen, stats) = lines_with_attempt(&client(&s), &s.url("/files/1.ndjson"), &s)
        .await
        .unwrap();
    let numbers: Vec<u64> = seen.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (1..=50).collect::<Vec<u64>>());
    // The first attempt really delivered lines before it broke; the second delivered the rest.
    let first = seen.iter().filter(|(_, req)| *req == 1).count();
    assert!(
        first > 20 && first < 50,
        "{first} lines from the first attempt"
    );
    assert_eq!(stats.retries, 1);
    assert_eq!(stats.lines, 50);
    assert_eq!(s.requests().len(), 2);
}

#[tokio::test]
async fn download_shorter_than_its_content_length_is_retried() {
    let full = ndjson(30);
    let partial = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+ndjson\r\nContent-Length: {}\r\n\r\n{}",
        full.len(),
        &full[..full.len() / 2]
    );
    let complete = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{full}",
        full.len()
    );
    let (base, conns) = raw_server(vec![partial.into_bytes(), complete.into_bytes()]).await;
    let c = BulkMatchClient::new(&format!("{base}/fhir"), test_config()).unwrap();
    let (lines, stats) = collect_lines(&c, &format!("{base}/f.ndjson"), false)
        .await
        .unwrap();
    let numbers: Vec<u64> = lines.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (1..=30).collect::<Vec<u64>>());
    assert_eq!(stats.retries, 1);
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn download_that_keeps_breaking_but_progresses_is_not_abandoned() {
    // Each attempt gets 8 lines further than the previous one before the connection breaks:
    // 5 breaks, more than max_retries (3), yet the download completes.
    let full = ndjson(60);
    let line_len: Vec<usize> = full.split_inclusive('\n').map(str::len).collect();
    let s = start(move |_, n| {
        if n < 5 {
            let cut: usize = line_len[..8 * (n + 1)].iter().sum::<usize>() + 2;
            resp(200, &[], broken_body(full.as_bytes()[..cut].to_vec()))
        } else {
            resp(200, &[], full.clone())
        }
    })
    .await;
    let (seen, stats) = lines_with_attempt(&client(&s), &s.url("/files/1.ndjson"), &s)
        .await
        .unwrap();
    let numbers: Vec<u64> = seen.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (1..=60).collect::<Vec<u64>>());
    // Attempt k (1-based) contributed lines 8(k-1)+1 ..= 8k.
    for (n, req) in &seen[..40] {
        assert_eq!(*req as u64, (n - 1) / 8 + 1, "line {n}");
    }
    assert_eq!(stats.retries, 5);

    // Without progress, the budget runs out: max_retries (3) restarts, then the error.
    let s = start(|_, _| resp(200, &[], broken_body(b"{\"a\":1}\n{\"par".to_vec()))).await;
    let mut seen = Vec::new();
    let err = client(&s)
        .download_lines(&s.url("/f"), false, &mut |n, _| {
            seen.push(n);
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(err.is_retryable());
    assert!(err.to_string().contains("broke off"), "{err}");
    assert!(err.to_string().contains("after 3 retries"), "{err}");
    assert_eq!(seen, [1]);
    // The first attempt delivers line 1; the 3 retries after it make no progress.
    assert_eq!(s.requests().len(), 4);
}

#[tokio::test]
async fn download_of_expired_file_says_expired() {
    let s = start(|r, _| {
        if r.path.contains("404") {
            resp(404, &[], "")
        } else {
            resp(410, &[], outcome("expired", "file expired"))
        }
    })
    .await;
    let c = client(&s);
    for p in ["/files/404.ndjson", "/files/410.ndjson?sig=secret"] {
        let err = collect_lines(&c, &s.url(p), false).await.unwrap_err();
        assert!(matches!(err, NetError::Expired { .. }), "{err:?}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
    assert_eq!(s.requests().len(), 2);
}

#[tokio::test]
async fn download_5xx_is_retried_and_callback_errors_stop_it() {
    let s = start(|_, n| {
        if n == 0 {
            resp(503, &[("retry-after", "0")], "")
        } else {
            resp(200, &[], ndjson(3))
        }
    })
    .await;
    let c = client(&s);
    let (lines, stats) = collect_lines(&c, &s.url("/f"), false).await.unwrap();
    assert_eq!((lines.len(), stats.retries), (3, 1));

    let err = c
        .download_lines(&s.url("/f"), false, &mut |n, _| {
            if n == 2 {
                Err(NetError::Ingest {
                    line: n,
                    message: "not a Bundle".into(),
                })
            } else {
                Ok(())
            }
        })
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Ingest { line: 2, .. }));
    assert_eq!(s.requests().len(), 3);
}

#[tokio::test]
async fn download_rejects_an_overlong_line() {
    let s = start(|_, _| resp(200, &[], format!("{{}}\n{}\n", "y".repeat(5000)))).await;
    let cfg = ClientConfig {
        max_line_bytes: 1024,
        ..test_config()
    };
    let c = BulkMatchClient::new(&s.url("/fhir"), cfg).unwrap();
    let err = collect_lines(&c, &s.url("/f"), false).await.unwrap_err();
    assert!(
        matches!(
            err,
            NetError::LineTooLong {
                line: 2,
                limit: 1024,
                ..
            }
        ),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Tokens and transport security
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn token_goes_only_to_the_base_origin_and_only_when_required() {
    let other = start(|_, _| resp(200, &[], ndjson(2))).await;
    let other_base = other.base.clone();
    let fhir = start(move |r, _| match r.path.as_str() {
        "/fhir/Patient/$bulk-match" => accepted("/fhir/status/1"),
        "/fhir/status/1" => resp(200, &[], manifest_json("/files/1.ndjson", true)),
        "/redirect" => resp(
            302,
            &[("location", &format!("{other_base}/signed?sig=1"))],
            "",
        ),
        _ => resp(200, &[], ndjson(2)),
    })
    .await;
    let c = client_with_token(&fhir, "secret-token");
    let auth = |s: &TestServer, i: usize| s.requests()[i].header("authorization");

    let k = c
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap();
    assert_eq!(auth(&fhir, 0).as_deref(), Some("Bearer secret-token"));
    c.poll_once(&k.status_url).await.unwrap();
    assert_eq!(auth(&fhir, 1).as_deref(), Some("Bearer secret-token"));

    // Same origin, requiresAccessToken = true → token.
    collect_lines(&c, &fhir.url("/files/1.ndjson"), true)
        .await
        .unwrap();
    assert_eq!(auth(&fhir, 2).as_deref(), Some("Bearer secret-token"));
    // Same origin, requiresAccessToken = false → no token.
    collect_lines(&c, &fhir.url("/files/1.ndjson"), false)
        .await
        .unwrap();
    assert_eq!(auth(&fhir, 3), None);
    // Another origin (another port), even with requiresAccessToken = true → no token.
    collect_lines(&c, &other.url("/files/1.ndjson"), true)
        .await
        .unwrap();
    assert_eq!(auth(&other, 0), None);
    // A same-origin file that redirects to another origin: token to the first hop only.
    let (lines, _) = collect_lines(&c, &fhir.url("/redirect"), true)
        .await
        .unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!(auth(&fhir, 4).as_deref(), Some("Bearer secret-token"));
    assert_eq!(other.requests()[1].path, "/signed?sig=1");
    assert_eq!(auth(&other, 1), None);
    // A status URL on another origin gets no token either.
    c.poll_once(&Url::parse(&other.url("/status/x")).unwrap())
        .await
        .ok();
    assert_eq!(auth(&other, 2), None);
}

struct RotatingToken {
    calls: AtomicUsize,
    invalidations: AtomicUsize,
}

impl TokenSource for RotatingToken {
    fn token(&self) -> BoxFuture<'_, Result<Option<String>, NetError>> {
        let n = self.invalidations.load(Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(Some(format!("t{n}"))) })
    }
    fn invalidate(&self) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_401_refreshes_the_token_once() {
    let s = start(|r, _| match r.header("authorization").as_deref() {
        Some("Bearer t1") => accepted("/fhir/status/1"),
        _ => resp(401, &[], outcome("login", "token expired")),
    })
    .await;
    let src = Arc::new(RotatingToken {
        calls: AtomicUsize::new(0),
        invalidations: AtomicUsize::new(0),
    });
    let cfg = ClientConfig {
        token: Some(src.clone()),
        ..test_config()
    };
    let c = BulkMatchClient::new(&s.url("/fhir"), cfg).unwrap();
    c.kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap();
    assert_eq!(src.invalidations.load(Ordering::SeqCst), 1);
    assert_eq!(s.requests().len(), 2);

    // A token the server never accepts: one refresh, then an Auth error (no loop).
    let s = start(|_, _| resp(401, &[], outcome("login", "invalid token"))).await;
    let cfg = ClientConfig {
        token: Some(Arc::new(StaticToken::new("nope-secret"))),
        ..test_config()
    };
    let c = BulkMatchClient::new(&s.url("/fhir"), cfg).unwrap();
    let err = c
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Auth { status: 401, .. }), "{err:?}");
    assert!(!err.to_string().contains("nope-secret"));
    assert_eq!(s.requests().len(), 2);
}

#[tokio::test]
async fn https_is_required_except_for_loopback() {
    let err = BulkMatchClient::new("http://iis.example.org/fhir", test_config()).unwrap_err();
    assert!(matches!(err, NetError::Insecure { .. }));
    assert!(BulkMatchClient::new("https://iis.example.org/fhir", test_config()).is_ok());
    assert!(BulkMatchClient::new("http://localhost:8080/fhir", test_config()).is_ok());
    assert!(matches!(
        BulkMatchClient::new("not a url", test_config()),
        Err(NetError::InvalidUrl { .. })
    ));
    let c = BulkMatchClient::new("http://127.0.0.1:9/fhir", test_config()).unwrap();
    assert_eq!(c.base_url().as_str(), "http://127.0.0.1:9/fhir/");
    let err = collect_lines(&c, "http://files.example.org/1.ndjson?sig=x", false)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Insecure { .. }));
    assert!(!err.to_string().contains("sig=x"));
    let err = c
        .poll_once(&Url::parse("http://iis.example.org/status/1").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Insecure { .. }));
}
