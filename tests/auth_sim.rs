//! SMART Backend Services end to end: the real client ([`SmartToken`], [`BulkMatchClient`], the
//! engine) against the real simulated IIS in SMART mode over loopback HTTP. Keys are generated
//! for each test; nothing is mocked.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Fixture, fast_engine, fast_sim, open};
use matchdesk::domain::{Demographics, JobState, MatchOptions, Sex};
use matchdesk::engine::{Engine, no_events};
use matchdesk::net::auth::jwt::{UnverifiedJwt, client_assertion, unix_now};
use matchdesk::net::auth::keys::{self, LoadedKey};
use matchdesk::net::auth::{
    AuthError, CLIENT_ASSERTION_TYPE, OAuthErrorKind, SigningAlg, SmartConfig, SmartToken,
    test_bearer_connection, test_connection,
};
use matchdesk::net::{
    BulkMatchClient, CancelFlag, ClientConfig, NetError, PollConfig, PollStatus, RetryConfig,
    StaticToken, TokenSource,
};
use matchdesk::sim::auth::{SimClient, SmartSimConfig, demo_registration};
use matchdesk::sim::server::{SimConfig, SimServer};
use serde_json::Value;
use url::Url;

/// A client key pair in `dir` and its registration (all scopes of the sim unless `scopes`).
fn register(
    dir: &Path,
    client_id: &str,
    alg: SigningAlg,
    scopes: Option<&str>,
) -> (SmartConfig, SimClient) {
    let g = keys::generate(alg, Some(&format!("{client_id}-key")), dir).unwrap();
    let cfg = SmartConfig {
        client_id: client_id.into(),
        key_path: g.private_key.clone(),
        kid: g.kid.clone(),
        alg: Some(alg),
        ..SmartConfig::default()
    };
    let client = SimClient {
        client_id: client_id.into(),
        jwks: keys::read_jwks(&g.jwks).unwrap(),
        jwks_url: None,
        scopes: scopes
            .unwrap_or(matchdesk::sim::auth::SIM_SCOPES)
            .to_string(),
    };
    (cfg, client)
}

fn smart_sim(clients: Vec<SimClient>, lifetime: Duration, files_need_token: bool) -> SimConfig {
    SimConfig {
        smart: Some(SmartSimConfig {
            clients,
            token_lifetime: lifetime,
        }),
        requires_access_token: files_need_token,
        ..fast_sim()
    }
}

fn base(sim: &SimServer) -> Url {
    Url::parse(&sim.base_url).unwrap()
}

fn source(sim: &SimServer, cfg: &SmartConfig) -> Arc<SmartToken> {
    Arc::new(SmartToken::new(&base(sim), cfg).unwrap())
}

async fn run_with(
    engine: &Engine,
    f: &Fixture,
    sim: &SimServer,
    token: Arc<dyn TokenSource>,
) -> Vec<(i64, JobState)> {
    let imported = engine.import(&f.cohort, None, Some("cohort")).unwrap();
    engine
        .run_cohort(
            imported.cohort_id,
            &sim.base_url,
            Some(token),
            no_events(),
            CancelFlag::new(),
        )
        .await
        .unwrap()
}

fn client(sim: &SimServer, token: Arc<dyn TokenSource>) -> BulkMatchClient {
    let cfg = ClientConfig {
        token: Some(token),
        retry: RetryConfig {
            max_retries: 3,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            base: 2.0,
            retry_timeout: Duration::from_secs(20),
        },
        poll: PollConfig {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
            max_wait: Duration::from_secs(60),
        },
        rng_seed: Some(1),
        ..ClientConfig::default()
    };
    BulkMatchClient::new(&sim.base_url, cfg).unwrap()
}

fn patients() -> Vec<(String, Demographics)> {
    vec![(
        "p1".into(),
        Demographics {
            family: Some("Rivera".into()),
            given: Some("Ana".into()),
            birth_date: chrono::NaiveDate::from_ymd_opt(2015, 3, 4),
            sex: Some(Sex::Female),
            ..Demographics::default()
        },
    )]
}

async fn wait_done(c: &BulkMatchClient, status: &Url) {
    for _ in 0..500 {
        match c.poll_once(status).await.unwrap() {
            PollStatus::Complete { .. } => return,
            PollStatus::InProgress { .. } => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!("job did not finish");
}

fn oauth_kind(e: &AuthError) -> OAuthErrorKind {
    e.oauth_kind()
        .cloned()
        .unwrap_or_else(|| panic!("not an OAuth error: {e:?}"))
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es384_happy_path_discovers_gets_one_token_and_matches_a_cohort() {
    let f = Fixture::new(1500, 120, 31);
    let (cfg, reg) = register(f.dir.path(), "clinic-es", SigningAlg::Es384, None);
    let sim = f
        .sim(smart_sim(vec![reg], Duration::from_secs(300), true))
        .await;
    let engine = open(&f, fast_engine(40));
    let jobs = run_with(&engine, &f, &sim, source(&sim, &cfg)).await;
    assert_eq!(jobs[0].1, JobState::Completed, "{jobs:?}");
    assert_eq!(engine.store().unwrap().report().unwrap().pending, 0);
    let s = sim.stats();
    assert_eq!(
        s.tokens_issued, 1,
        "one cached token serves all requests: {s:?}"
    );
    assert_eq!(s.unauthorized_401, 0);
    assert_eq!(s.jobs_accepted, 3);
    // requiresAccessToken=true and same origin: every file request carried the token.
    assert!(s.file_requests > 0);
    assert_eq!(s.file_requests_with_authorization, s.file_requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs384_happy_path_with_a_configured_token_endpoint() {
    let f = Fixture::new(1500, 60, 32);
    let (mut cfg, reg) = register(f.dir.path(), "clinic-rs", SigningAlg::Rs384, None);
    let sim = f
        .sim(smart_sim(vec![reg], Duration::from_secs(300), false))
        .await;
    cfg.token_endpoint = sim.token_url();
    let engine = open(&f, fast_engine(60));
    let jobs = run_with(&engine, &f, &sim, source(&sim, &cfg)).await;
    assert_eq!(jobs[0].1, JobState::Completed, "{jobs:?}");
    assert_eq!(sim.stats().tokens_issued, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es512_and_rs512_get_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (c1, r1) = register(dir.path(), "c512", SigningAlg::Es512, None);
    let (c2, r2) = register(dir.path(), "r512", SigningAlg::Rs512, None);
    let f = Fixture::new(200, 5, 33);
    let sim = f
        .sim(smart_sim(vec![r1, r2], Duration::from_secs(300), false))
        .await;
    for cfg in [c1, c2] {
        let t = source(&sim, &cfg).access_token().await.unwrap();
        assert!(!t.is_empty());
    }
    assert_eq!(sim.stats().tokens_issued, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_renewed_during_a_job() {
    let f = Fixture::new(1500, 60, 34);
    let (cfg, reg) = register(f.dir.path(), "clinic", SigningAlg::Es384, None);
    let sim = f
        .sim(SimConfig {
            processing_rate: Some(25),
            ..smart_sim(vec![reg], Duration::from_secs(1), true)
        })
        .await;
    let engine = open(&f, fast_engine(60));
    let jobs = run_with(&engine, &f, &sim, source(&sim, &cfg)).await;
    assert_eq!(jobs[0].1, JobState::Completed, "{jobs:?}");
    let s = sim.stats();
    // The job took about 2.4 s with 1 s tokens: renewed on the way.
    assert!(s.tokens_issued >= 2, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_replaced_once_and_an_expired_static_token_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, reg) = register(dir.path(), "clinic", SigningAlg::Es384, None);
    let f = Fixture::new(300, 5, 35);
    let sim = f
        .sim(smart_sim(
            vec![reg.clone()],
            Duration::from_secs(300),
            false,
        ))
        .await;
    let src = source(&sim, &cfg);
    let c = client(&sim, src.clone());
    let k = c
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap();
    assert_eq!(sim.stats().tokens_issued, 1);
    sim.revoke_tokens();
    wait_done(&c, &k.status_url).await;
    let s = sim.stats();
    assert_eq!(s.unauthorized_401, 1, "{s:?}");
    assert_eq!(s.tokens_issued, 2, "{s:?}");

    // A token that has expired, with nothing to renew it: one 401, one retry, then a clear
    // error (no endless loop).
    let sim = f
        .sim(smart_sim(vec![reg], Duration::from_secs(1), false))
        .await;
    let src = source(&sim, &cfg);
    let old = src.access_token().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let before = sim.stats();
    let c = client(&sim, Arc::new(StaticToken::new(old.clone())));
    let err = c
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Auth { status: 401, .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(!err.to_string().contains(&old));
    let after = sim.stats();
    assert_eq!(after.kickoffs - before.kickoffs, 2);
    assert_eq!(after.unauthorized_401 - before.unauthorized_401, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_audience_is_refused_with_advice_and_not_retried() {
    let f = Fixture::new(300, 30, 36);
    let (mut cfg, reg) = register(f.dir.path(), "clinic", SigningAlg::Es384, None);
    let sim = f
        .sim(smart_sim(vec![reg], Duration::from_secs(300), false))
        .await;
    // Same server, another spelling of its address: the assertion's aud no longer matches.
    let token_url = sim.token_url().unwrap();
    cfg.token_endpoint = Some(token_url.replace("127.0.0.1", "localhost"));
    let err = source(&sim, &cfg).access_token().await.unwrap_err();
    assert_eq!(oauth_kind(&err), OAuthErrorKind::InvalidClient);
    let msg = err.to_string();
    assert!(msg.contains("aud"), "{msg}");
    assert!(msg.contains("token endpoint URL"), "advice: {msg}");

    // Through the engine: the chunk fails at once with that message; no kick-off was sent.
    let engine = open(&f, fast_engine(30));
    let jobs = run_with(&engine, &f, &sim, source(&sim, &cfg)).await;
    assert_eq!(jobs[0].1, JobState::Failed);
    let report = engine.store().unwrap().report().unwrap();
    let last = report.jobs[0].last_error.clone().unwrap_or_default();
    assert!(last.contains("invalid_client"), "{last}");
    assert!(!last.contains("gave up after"), "not retried: {last}");
    let s = sim.stats();
    assert_eq!(s.kickoffs, 0);
    assert_eq!(s.token_requests, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_iis_does_not_know_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, reg) = register(dir.path(), "clinic", SigningAlg::Es384, None);
    // Same kid, another key.
    let other_dir = dir.path().join("other");
    let (mut wrong, _) = register(&other_dir, "clinic", SigningAlg::Es384, None);
    wrong.kid = cfg.kid.clone();
    let f = Fixture::new(200, 5, 37);
    let sim = f
        .sim(smart_sim(vec![reg], Duration::from_secs(300), false))
        .await;
    let err = source(&sim, &wrong).access_token().await.unwrap_err();
    assert_eq!(oauth_kind(&err), OAuthErrorKind::InvalidClient);
    assert!(err.to_string().contains("signature"), "{err}");
    // An unknown kid and an unknown client id are refused too.
    let mut unknown_kid = cfg.clone();
    unknown_kid.kid = "nope".into();
    let err = source(&sim, &unknown_kid).access_token().await.unwrap_err();
    assert!(err.to_string().contains("kid"), "{err}");
    let mut unknown_client = cfg.clone();
    unknown_client.client_id = "stranger".into();
    let err = source(&sim, &unknown_client)
        .access_token()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not registered"), "{err}");
    // The right key works.
    assert!(source(&sim, &cfg).access_token().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_scopes_are_refused_at_the_token_endpoint_or_with_403() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, reg) = register(
        dir.path(),
        "imm-only",
        SigningAlg::Es384,
        Some("system/Immunization.rs"),
    );
    let f = Fixture::new(200, 5, 38);
    let sim = f
        .sim(smart_sim(vec![reg], Duration::from_secs(300), false))
        .await;
    // Asking for system/Patient.rs: invalid_scope, with advice.
    let err = source(&sim, &cfg).access_token().await.unwrap_err();
    assert_eq!(oauth_kind(&err), OAuthErrorKind::InvalidScope);
    assert!(err.to_string().contains("system/Patient.rs"), "{err}");
    let n: NetError = err.into();
    assert!(!n.is_retryable());

    // A token with only an Immunization scope: the kick-off gets 403.
    let mut imm = cfg.clone();
    imm.scopes = "system/Immunization.rs".into();
    let c = client(&sim, source(&sim, &imm));
    let err = c
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Auth { status: 403, .. }), "{err:?}");
    assert!(err.to_string().contains("scope"), "{err}");
    assert_eq!(sim.stats().forbidden_403, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_on_another_origin_never_get_the_token() {
    let f = Fixture::new(1500, 40, 39);
    let (cfg, reg) = register(f.dir.path(), "clinic", SigningAlg::Es384, None);
    let sim = f
        .sim(SimConfig {
            separate_file_listener: true,
            ..smart_sim(vec![reg], Duration::from_secs(300), true)
        })
        .await;
    assert_ne!(
        Url::parse(&sim.file_base_url).unwrap().origin(),
        base(&sim).origin()
    );
    let engine = open(&f, fast_engine(40));
    let jobs = run_with(&engine, &f, &sim, source(&sim, &cfg)).await;
    let s = sim.stats();
    assert!(
        s.requests_with_authorization > 0,
        "the FHIR server got the token"
    );
    assert!(s.file_requests > 0);
    assert_eq!(
        s.file_requests_with_authorization, 0,
        "the token never went to the other origin: {s:?}"
    );
    // The file server insisted on a token, so the chunk could not complete.
    assert_ne!(jobs[0].1, JobState::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_need_no_token_get_none() {
    let f = Fixture::new(1500, 40, 40);
    let (cfg, reg) = register(f.dir.path(), "clinic", SigningAlg::Es384, None);
    let sim = f
        .sim(smart_sim(vec![reg], Duration::from_secs(300), false))
        .await;
    let engine = open(&f, fast_engine(40));
    let jobs = run_with(&engine, &f, &sim, source(&sim, &cfg)).await;
    assert_eq!(jobs[0].1, JobState::Completed);
    let s = sim.stats();
    assert!(s.file_requests > 0);
    assert_eq!(s.file_requests_with_authorization, 0, "{s:?}");
    assert!(s.requests_with_authorization > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_belongs_to_the_client_that_started_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, ra) = register(dir.path(), "clinic-a", SigningAlg::Es384, None);
    let (b, rb) = register(dir.path(), "clinic-b", SigningAlg::Es384, None);
    let f = Fixture::new(300, 5, 41);
    let sim = f
        .sim(smart_sim(vec![ra, rb], Duration::from_secs(300), true))
        .await;
    let ca = client(&sim, source(&sim, &a));
    let cb = client(&sim, source(&sim, &b));
    let k = ca
        .kick_off(&patients(), &MatchOptions::default())
        .await
        .unwrap();
    let err = cb.poll_once(&k.status_url).await.unwrap_err();
    assert!(matches!(err, NetError::Gone { status: 404, .. }), "{err:?}");
    // B's DELETE finds nothing (404, which the client treats as already gone): the job stays.
    cb.delete(&k.status_url).await.unwrap();
    assert_eq!(sim.job_count(), 1);
    wait_done(&ca, &k.status_url).await;
    ca.delete(&k.status_url).await.unwrap();
    assert_eq!(sim.job_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_token_get_401_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (_, reg) = register(dir.path(), "clinic", SigningAlg::Es384, None);
    let f = Fixture::new(200, 5, 42);
    let sim = f
        .sim(smart_sim(vec![reg], Duration::from_secs(300), true))
        .await;
    let http = reqwest::Client::new();
    let r = http
        .post(sim.kickoff_url())
        .header("Prefer", "respond-async")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for url in [
        format!("{}/$bulk-match-status/abc", sim.base_url),
        format!("{}/$bulk-match-output/abc/1.ndjson", sim.base_url),
    ] {
        assert_eq!(http.get(&url).send().await.unwrap().status(), 401, "{url}");
        let r = http.get(&url).bearer_auth("made-up").send().await.unwrap();
        assert_eq!(r.status(), 401, "{url}");
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
    }
    let r = http
        .delete(format!("{}/$bulk-match-status/abc", sim.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Metadata and discovery are public.
    let r = http
        .get(format!("{}/metadata", sim.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let conf: Value = http
        .get(format!("{}/.well-known/smart-configuration", sim.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(conf["token_endpoint"], sim.token_url().unwrap());
    assert!(
        conf["token_endpoint_auth_signing_alg_values_supported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "ES384")
    );
    assert_eq!(conf["grant_types_supported"][0], "client_credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assertions_cannot_be_replayed_or_live_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, reg) = register(dir.path(), "clinic", SigningAlg::Es384, None);
    let f = Fixture::new(200, 5, 43);
    let sim = f
        .sim(smart_sim(vec![reg], Duration::from_secs(300), false))
        .await;
    let token_url = sim.token_url().unwrap();
    let key = LoadedKey::from_file(&cfg.key_path, &cfg.kid, cfg.alg).unwrap();
    let http = reqwest::Client::new();
    let ask = |assertion: String| {
        let http = http.clone();
        let token_url = token_url.clone();
        async move {
            let r = http
                .post(&token_url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("scope", "system/Patient.rs"),
                    ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                    ("client_assertion", assertion.as_str()),
                ])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let a = client_assertion(&key, "clinic", &token_url, None, unix_now()).unwrap();
    let (status, body) = ask(a.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["scope"], "system/Patient.rs");
    assert_eq!(body["expires_in"], 300);
    let (status, body) = ask(a).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_client");
    assert!(body["error_description"].as_str().unwrap().contains("jti"));

    // exp far ahead (an assertion built "ten minutes from now" expires 14 minutes from now).
    let far = client_assertion(&key, "clinic", &token_url, None, unix_now() + 600).unwrap();
    let (status, body) = ask(far).await;
    assert_eq!(status, 401);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("five minutes")
    );
    // exp in the past.
    let old = client_assertion(&key, "clinic", &token_url, None, unix_now() - 600).unwrap();
    let (_, body) = ask(old).await;
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    // The assertion really carries what the sim checked.
    let a = client_assertion(&key, "clinic", &token_url, None, unix_now()).unwrap();
    let p = UnverifiedJwt::parse(&a).unwrap();
    assert_eq!(p.claim_str("aud"), Some(token_url.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_test_walks_the_steps_and_explains_failures() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, reg) = demo_registration(dir.path(), "demo-client").unwrap();
    let f = Fixture::new(200, 5, 44);
    let sim = f
        .sim(smart_sim(vec![reg], Duration::from_secs(300), false))
        .await;
    let report = test_connection(&base(&sim), &cfg).await;
    assert!(report.ok(), "{report:#?}");
    let whats: Vec<&str> = report.steps.iter().map(|s| s.what.as_str()).collect();
    assert_eq!(
        whats,
        [
            "Private key",
            "Token endpoint",
            "Access token",
            "Authorized request"
        ]
    );
    assert!(report.steps[2].detail.contains("system/Patient.rs"));
    assert!(report.steps[2].detail.contains("300 seconds"));
    assert!(report.steps[3].detail.contains("CapabilityStatement"));
    for s in &report.steps {
        assert!(!s.detail.contains("BEGIN"), "no key material");
    }

    // A wrong client id: fails at the token step, with the OAuth advice.
    let mut wrong = cfg.clone();
    wrong.client_id = "nobody".into();
    let report = test_connection(&base(&sim), &wrong).await;
    assert!(!report.ok());
    let last = report.steps.last().unwrap();
    assert_eq!(last.what, "Access token");
    assert!(last.detail.contains("client id"), "{}", last.detail);

    // A server without SMART: discovery fails with what to do.
    let plain = f.sim(fast_sim()).await;
    let report = test_connection(&base(&plain), &cfg).await;
    let last = report.steps.last().unwrap();
    assert!(!last.ok);
    assert_eq!(last.what, "Token endpoint");
    assert!(last.detail.contains("--token-endpoint"), "{}", last.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_test_without_smart_checks_a_bearer_token_against_metadata() {
    let f = Fixture::new(50, 5, 45);
    let sim = f
        .sim(SimConfig {
            require_token: Some("s3cret".into()),
            ..fast_sim()
        })
        .await;
    let with = test_bearer_connection(&base(&sim), Some("s3cret")).await;
    assert!(with.ok(), "{with:#?}");
    assert_eq!(with.steps[0].what, "Authorized request");
    assert!(with.steps[0].detail.contains("CapabilityStatement"));

    let wrong = test_bearer_connection(&base(&sim), Some("guess")).await;
    assert!(!wrong.ok());
    assert!(wrong.steps[0].detail.contains("401"), "{wrong:#?}");

    // Without a token only the public CapabilityStatement is asked for: it answers.
    let none = test_bearer_connection(&base(&sim), None).await;
    assert!(none.ok(), "{none:#?}");
    assert_eq!(none.steps[0].what, "Request to the server");
    assert!(none.steps[0].detail.contains("the server answered"));

    // A wrong address: the step says to check it.
    let mut wrong_base = base(&sim);
    wrong_base.set_path("/nothing-here/");
    let lost = test_bearer_connection(&wrong_base, Some("s3cret")).await;
    assert!(!lost.ok());
    assert!(lost.steps[0].detail.contains("FHIR base URL"), "{lost:#?}");
}
