//! Shared fixtures for the integration tests: a generated registry served by the real simulated
//! IIS on loopback, a cohort CSV drawn from it with its ground truth, and an engine on a real
//! workspace file with millisecond-scale retry and polling so tests run quickly.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use matchdesk::engine::{Engine, EngineConfig, EventSink, JobEvent};
use matchdesk::net::{PollConfig, RetryConfig};
use matchdesk::sim::generate::{self, CohortConfig, GenConfig};
use matchdesk::sim::registry::Registry;
use matchdesk::sim::server::{self, SimConfig, SimServer};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub cohort: PathBuf,
    /// local id → true IIS id (None: not in the registry).
    pub truth: HashMap<String, Option<String>>,
    pub registry: Arc<Registry>,
}

impl Fixture {
    /// A registry of `patients` and a cohort of `cohort` rows drawn from it.
    pub fn new(patients: usize, cohort: usize, seed: u64) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let reg = generate::registry(&GenConfig::new(patients, seed));
        let entries = generate::cohort(
            &reg,
            &CohortConfig {
                size: cohort,
                seed: seed + 1,
                ..CohortConfig::default()
            },
        );
        let cohort_path = dir.path().join("cohort.csv");
        generate::write_cohort_csv(&cohort_path, &entries).expect("write cohort");
        let truth = entries
            .iter()
            .map(|e| {
                (
                    e.record.local_id.clone().unwrap_or_default(),
                    e.truth.clone(),
                )
            })
            .collect();
        Fixture {
            dir,
            cohort: cohort_path,
            truth,
            registry: Arc::new(Registry::new(reg)),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("ws.matchdesk")
    }

    pub async fn sim(&self, cfg: SimConfig) -> SimServer {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        server::start(self.registry.clone(), cfg, addr)
            .await
            .expect("start simulated IIS")
    }
}

/// A well-behaved simulated IIS tuned for fast tests.
pub fn fast_sim() -> SimConfig {
    SimConfig {
        min_poll_interval: Duration::from_millis(5),
        retry_after_secs: 0,
        ..SimConfig::default()
    }
}

/// Engine settings with quick retries and polling.
pub fn fast_engine(chunk_size: usize) -> EngineConfig {
    EngineConfig {
        chunk_size,
        concurrency: 2,
        chunk_retry_pause: Duration::from_millis(20),
        max_chunk_attempts: 8,
        retry: RetryConfig {
            max_retries: 8,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            base: 2.0,
            retry_timeout: Duration::from_secs(60),
        },
        poll: PollConfig {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
            max_wait: Duration::from_secs(120),
        },
        request_timeout: Duration::from_secs(30),
        actor: "test".into(),
        ..EngineConfig::default()
    }
}

pub fn open(f: &Fixture, cfg: EngineConfig) -> Engine {
    Engine::open(&f.db(), cfg).expect("open workspace")
}

/// An event sink that records everything.
pub fn recorder() -> (EventSink, Arc<Mutex<Vec<JobEvent>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l2 = log.clone();
    (
        Arc::new(move |e| {
            if let Ok(mut v) = l2.lock() {
                v.push(e);
            }
        }),
        log,
    )
}
