//! The embedded demo IIS: the simulated IIS started in-process on a loopback port with a few
//! thousand synthetic patients, and the sample cohort shipped in `assets/` that exercises every
//! outcome against it (automatic matches, several candidates, probable and possible grades, no
//! match, a few result lines the "server" garbles into errors, and bad rows).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::backend::StartOptions;
use crate::sim::faults::Faults;
use crate::sim::registry::Registry;
use crate::sim::server::{SimConfig, SimServer, start as start_sim};

/// Patients in the demo registry.
pub const DEMO_PATIENTS: usize = 3000;
/// The seed the sample cohort was generated with (`matchdesk generate --patients 3000 --seed 7`).
pub const DEMO_SEED: u64 = 7;
/// The sample cohort: 240 rows drawn from the demo registry (with typos, nicknames, moved
/// addresses, people the registry does not hold) plus four bad rows.
pub const SAMPLE_COHORT: &[u8] = include_bytes!("../../assets/sample-cohort.csv");
/// The file name the sample is written under in the data directory.
pub const SAMPLE_FILE_NAME: &str = "sample-cohort.csv";

/// A few garbled result lines, so the demo shows what an error row looks like.
pub fn demo_faults() -> Faults {
    "malformed=0.02,seed=3".parse().unwrap_or_default()
}

/// Write the sample cohort into `dir` (if it is not there already) and return its path.
pub fn write_sample(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(SAMPLE_FILE_NAME);
    let same = std::fs::read(&path).is_ok_and(|b| b == SAMPLE_COHORT);
    if !same {
        std::fs::write(&path, SAMPLE_COHORT)?;
    }
    Ok(path)
}

/// Start the demo IIS and write the sample cohort.
/// The demo listens on `port` when it is free (so runs interrupted by a restart find the same
/// address), else on any free port.
/// With `opts.demo_smart` the demo IIS requires SMART Backend Services sign-in and the returned
/// [`SmartConfig`](crate::net::SmartConfig) is the demo profile's (a key pair under
/// `data_dir/keys`, made once and reused).
pub async fn start(
    opts: &StartOptions,
    port: Option<u16>,
) -> Result<(SimServer, PathBuf, Option<crate::net::SmartConfig>), String> {
    let n = opts.demo_patients;
    let registry = tokio::task::spawn_blocking(move || Registry::generate(n, DEMO_SEED))
        .await
        .map_err(|e| e.to_string())?;
    let (smart, client) = if opts.demo_smart {
        let key_dir = opts.data_dir.join("keys");
        let (cfg, client) = crate::sim::auth::demo_registration(&key_dir, "matchdesk-demo")
            .map_err(|e| format!("could not set up the demo's SMART sign-in: {e}"))?;
        (
            Some(crate::sim::auth::SmartSimConfig {
                clients: vec![client],
                ..Default::default()
            }),
            Some(cfg),
        )
    } else {
        (None, None)
    };
    let cfg = SimConfig {
        smart,
        processing_rate: opts.demo_rate,
        faults: opts.demo_faults.clone(),
        min_poll_interval: if opts.fast {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(500)
        },
        retry_after_secs: if opts.fast { 0 } else { 1 },
        ..SimConfig::default()
    };
    let registry = Arc::new(registry);
    let preferred = match port {
        Some(p) => start_sim(
            registry.clone(),
            cfg.clone(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, p)),
        )
        .await
        .ok(),
        None => None,
    };
    let server = match preferred {
        Some(s) => s,
        None => start_sim(registry, cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .map_err(|e| e.to_string())?,
    };
    let sample = write_sample(&opts.data_dir).map_err(|e| {
        format!(
            "could not write the sample cohort to {}: {e}",
            opts.data_dir.display()
        )
    })?;
    Ok((server, sample, client))
}
