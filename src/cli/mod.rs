//! The command-line interface. Scripts and automated processes depend on it: flags, the first
//! line printed by `sim`, the JSON of `report --json` and the exit codes are a contract.
//!
//! Exit codes: 0 success; 1 failure; 2 wrong usage; 3 partial success (some rows or chunks
//! failed, or the cohort had bad rows); 4 interrupted (run the same command again to resume).

mod bench;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use matchdesk::domain::{JobState, MatchOptions};
use matchdesk::engine::{DEFAULT_CHUNK_SIZE, Engine, EngineConfig, EventSink, JobEvent};
use matchdesk::import::Mapping;
use matchdesk::matching::TriageRules;
use matchdesk::net::auth::{self, SigningAlg, SmartConfig, SmartToken};
use matchdesk::net::{CancelFlag, StaticToken, TokenSource};
use matchdesk::sim::{self, faults::Faults, registry::Registry, server::SimConfig};

/// Exit code: some rows or chunks failed, or the cohort had bad rows.
pub const EXIT_PARTIAL: u8 = 3;
/// Exit code: interrupted; the same command resumes.
pub const EXIT_INTERRUPTED: u8 = 4;

#[derive(Parser, Debug)]
#[command(
    name = "matchdesk",
    version,
    about = "Match a clinic's or payer's patients to a state Immunization Information System with FHIR $bulk-match",
    long_about = "matchdesk imports a cohort file (CSV or FHIR Patient ndjson), submits it to an IIS's \
                  Patient/$bulk-match operation, stores every candidate in a workspace file and sorts \
                  each row into auto-match, review, no match or error.\n\n\
                  Exit codes: 0 success, 1 failure, 2 wrong usage, 3 partial success (some rows failed), \
                  4 interrupted (run the same command again to resume)."
)]
struct Cli {
    /// Without a command, the workbench window opens.
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    gui: GuiArgs,
    /// Log level for diagnostics on stderr (error, warn, info, debug). Logs never contain patient data.
    #[arg(long, global = true, default_value = "warn", env = "MATCHDESK_LOG")]
    log: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the simulated IIS until interrupted; prints its FHIR base URL on the first line.
    Sim(SimArgs),
    /// Write a synthetic registry and a corrupted cohort drawn from it (for tests, demos, training).
    Generate(GenerateArgs),
    /// Import (or re-import) a cohort file into the workspace.
    Import(ImportArgs),
    /// Import if needed, submit to the server, wait, download, triage; resumes unfinished work.
    Match(MatchArgs),
    /// Counts per outcome and per job; optionally export results.csv and bad_rows.csv.
    Report(ReportArgs),
    /// Cancel a match job: delete it on the server and mark it cancelled.
    Cancel(CancelArgs),
    /// Run the performance benchmarks and print the figures (see docs/PERFORMANCE.md).
    Bench(bench::BenchArgs),
    /// Key pairs for SMART Backend Services (see docs/AUTH.md).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check SMART Backend Services settings step by step against a server (sends no patient data).
    TestConnection(TestConnectionArgs),
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Generate a key pair: <kid>.private.pem (readable only by you) and <kid>.jwks.json (the
    /// public key set to give the IIS when registering).
    Generate(KeysGenerateArgs),
}

#[derive(Args, Debug)]
struct KeysGenerateArgs {
    /// Signing algorithm: es384 (default), rs384, es512 or rs512.
    #[arg(long, default_value = "es384")]
    alg: String,
    /// Key id (default: the key's RFC 7638 thumbprint).
    #[arg(long)]
    kid: Option<String>,
    /// Folder to write the two files into (created if missing).
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AuthMode {
    /// SMART Backend Services: a signed assertion with your private key buys an access token.
    Smart,
}

/// SMART Backend Services settings of a server profile.
#[derive(Args, Debug, Default, Clone)]
struct SmartArgs {
    /// Client id the IIS assigned at registration.
    #[arg(long, env = "MATCHDESK_CLIENT_ID")]
    client_id: Option<String>,
    /// Private key file (PEM or JWK), readable only by you (chmod 600).
    #[arg(long, env = "MATCHDESK_KEY")]
    key: Option<PathBuf>,
    /// Key id (kid) registered with the IIS (default: from a JWK file, else the key's thumbprint).
    #[arg(long)]
    kid: Option<String>,
    /// Signing algorithm (default: from the key: ES384 for P-384, ES512 for P-521, RS384 for RSA).
    #[arg(long)]
    alg: Option<String>,
    /// Space-separated scopes to request.
    #[arg(long, default_value = auth::DEFAULT_SCOPES)]
    scope: String,
    /// Token endpoint (default: discovered from [server]/.well-known/smart-configuration).
    #[arg(long)]
    token_endpoint: Option<String>,
    /// Optional `jku` header: where the IIS can fetch your public JWKS.
    #[arg(long)]
    jku: Option<String>,
}

impl SmartArgs {
    fn config(&self) -> Result<SmartConfig> {
        let client_id = self
            .client_id
            .clone()
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| {
                anyhow!("SMART authorization needs --client-id (the client id the IIS gave you)")
            })?;
        let key_path = self.key.clone().ok_or_else(|| {
            anyhow!("SMART authorization needs --key (your private key file; create one with `matchdesk keys generate`)")
        })?;
        let alg = self
            .alg
            .as_deref()
            .map(str::parse::<SigningAlg>)
            .transpose()?;
        Ok(SmartConfig {
            client_id,
            key_path,
            kid: self.kid.clone().unwrap_or_default(),
            alg,
            scopes: self.scope.clone(),
            token_endpoint: self.token_endpoint.clone().filter(|t| !t.trim().is_empty()),
            jku: self.jku.clone().filter(|t| !t.trim().is_empty()),
        })
    }
}

/// How match and cancel authenticate: a token from the environment, or SMART.
#[derive(Args, Debug)]
struct AuthArgs {
    /// Name of an environment variable holding a bearer token for this server.
    #[arg(long, conflicts_with = "auth")]
    token_env: Option<String>,
    /// Authorization scheme: `smart` (SMART Backend Services; needs --client-id and --key).
    #[arg(long, value_enum)]
    auth: Option<AuthMode>,
    #[command(flatten)]
    smart: SmartArgs,
}

impl AuthArgs {
    /// The token source for the FHIR base `server`, if any.
    fn token_source(&self, server: &str) -> Result<Option<Arc<dyn TokenSource>>> {
        if let Some(var) = &self.token_env {
            let t = std::env::var(var).with_context(|| {
                format!("the environment variable {var} (from --token-env) is not set")
            })?;
            return Ok(Some(Arc::new(StaticToken::new(t))));
        }
        match self.auth {
            Some(AuthMode::Smart) => {
                let cfg = self.smart.config()?;
                let base = url::Url::parse(server.trim())
                    .with_context(|| format!("the server address {server:?} is not a URL"))?;
                let src = SmartToken::new(&base, &cfg)?;
                Ok(Some(Arc::new(src)))
            }
            None => {
                if self.smart.client_id.is_some() && self.smart.key.is_some() {
                    bail!(
                        "--client-id and --key are set but not --auth smart; add --auth smart to use SMART Backend Services"
                    );
                }
                Ok(None)
            }
        }
    }
}

#[derive(Args, Debug)]
struct TestConnectionArgs {
    /// FHIR base URL of the IIS.
    #[arg(long, env = "MATCHDESK_SERVER")]
    server: String,
    #[command(flatten)]
    smart: SmartArgs,
}

#[derive(Args, Debug)]
struct DbArg {
    /// Workspace file (default: a workspace under your data directory).
    #[arg(long, env = "MATCHDESK_DB")]
    db: Option<PathBuf>,
}

impl DbArg {
    fn path(&self) -> Result<PathBuf> {
        match &self.db {
            Some(p) => Ok(p.clone()),
            None => default_db(),
        }
    }
}

/// Options of the workbench (no command given).
#[derive(Args, Debug)]
struct GuiArgs {
    /// Workspace file (default: a workspace under your data directory).
    #[arg(long, env = "MATCHDESK_DB")]
    db: Option<PathBuf>,
    /// A FHIR server base URL to add as a server profile, e.g. https://iis.example.gov/fhir.
    #[arg(long)]
    server: Option<String>,
    /// Do not start the built-in demo IIS.
    #[arg(long)]
    no_demo: bool,
    /// Run the built-in demo IIS with SMART Backend Services sign-in switched on (the demo
    /// profile gets its own key pair under the data directory's `keys` folder).
    #[arg(long, conflicts_with = "no_demo")]
    demo_smart: bool,
}

/// The default workspace: `<data dir>/matchdesk/workspace.matchdesk`.
pub fn default_db() -> Result<PathBuf> {
    let dirs =
        directories::ProjectDirs::from("org", "matchdesk", "matchdesk").ok_or_else(|| {
            anyhow!("could not find your home directory for the default workspace; pass --db FILE")
        })?;
    Ok(dirs.data_dir().join("workspace.matchdesk"))
}

#[derive(Args, Debug)]
struct SimArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Size of the generated registry (ignored with --registry).
    #[arg(long, default_value_t = 5000)]
    patients: usize,
    /// Seed of the generated registry.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Load the registry from a CSV or FHIR Patient ndjson file instead of generating it.
    #[arg(long)]
    registry: Option<PathBuf>,
    /// Column mapping for --registry (must map a column to iis_id).
    #[arg(long, requires = "registry")]
    mapping: Option<PathBuf>,
    /// Fault injection, e.g. "5xx=0.1,drop=0.05,429=0.2,truncate,accept-strict" (see docs/SIMULATED_IIS.md).
    #[arg(long)]
    faults: Option<String>,
    /// Most Patient resources per kick-off; larger requests get 413.
    #[arg(long, default_value_t = 2000)]
    resource_limit: usize,
    /// Polls of one job closer together than this (milliseconds) get 429.
    #[arg(long, default_value_t = 500)]
    min_poll_interval_ms: u64,
    /// Retry-After seconds sent while a job is in progress.
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// Patients matched per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<usize>,
    /// Require this bearer token on every request (a simple stand-in for SMART auth).
    #[arg(long, env = "MATCHDESK_SIM_TOKEN", conflicts_with = "smart_jwks")]
    require_token: Option<String>,
    /// SMART Backend Services mode: the registered client's public JWKS (a file, or an
    /// http(s) URL the sim fetches at each token request).
    #[arg(long, requires = "smart_client_id")]
    smart_jwks: Option<String>,
    /// SMART Backend Services mode: the registered client's id.
    #[arg(long, requires = "smart_jwks")]
    smart_client_id: Option<String>,
    /// Scopes the registered client may be granted.
    #[arg(long, default_value = sim::auth::SIM_SCOPES)]
    smart_scopes: String,
    /// Lifetime of issued access tokens in seconds (short ones exercise renewal).
    #[arg(long, default_value_t = 300)]
    token_lifetime: u64,
    /// Output files need the access token too (requiresAccessToken=true in manifests).
    #[arg(long)]
    files_need_token: bool,
}

#[derive(Args, Debug)]
struct GenerateArgs {
    #[arg(long)]
    patients: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long)]
    registry_out: PathBuf,
    #[arg(long)]
    cohort_out: PathBuf,
    #[arg(long)]
    cohort_size: usize,
    /// Write the true links (local_id → iis_id) here.
    #[arg(long)]
    truth_out: Option<PathBuf>,
    /// Share of cohort rows for people not in the registry.
    #[arg(long, default_value_t = 0.1)]
    not_in_registry: f64,
    /// Share of in-registry rows with at least one corruption.
    #[arg(long, default_value_t = 0.3)]
    corruption: f64,
}

#[derive(Args, Debug)]
struct ImportArgs {
    #[command(flatten)]
    db: DbArg,
    /// Column mapping file (JSON, see docs/MAPPING.md); default: map headers automatically.
    #[arg(long)]
    mapping: Option<PathBuf>,
    /// Cohort name (default: the file name without extension). Re-importing under the same name
    /// computes the difference with the previous version.
    #[arg(long)]
    name: Option<String>,
    /// The cohort file (CSV, TSV, pipe- or semicolon-separated, or FHIR Patient ndjson).
    cohort: PathBuf,
}

#[derive(Args, Debug)]
struct MatchArgs {
    #[command(flatten)]
    db: DbArg,
    /// FHIR base URL of the IIS (https, or http on this computer only).
    #[arg(long, env = "MATCHDESK_SERVER")]
    server: String,
    #[arg(long)]
    mapping: Option<PathBuf>,
    #[arg(long)]
    name: Option<String>,
    /// Patients per kick-off (a 413 from the server halves it automatically).
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
    chunk_size: usize,
    /// Kick-offs in flight at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Ask the server for only the single most appropriate match per patient.
    #[arg(long)]
    only_single_match: bool,
    /// Ask the server for certain matches only.
    #[arg(long)]
    only_certain_matches: bool,
    /// Most candidates per patient (0: let the server decide).
    #[arg(long, default_value_t = 5)]
    count: u32,
    /// `_outputFormat` to request.
    #[arg(long, default_value = "application/fhir+ndjson")]
    output_format: String,
    /// Triage rules (JSON, see docs/MATCHING.md) for this server.
    #[arg(long)]
    rules: Option<PathBuf>,
    #[command(flatten)]
    auth: AuthArgs,
    /// Don't draw progress bars (plain lines), even on a terminal.
    #[arg(long)]
    plain: bool,
    /// The cohort file.
    cohort: PathBuf,
}

#[derive(Args, Debug)]
struct ReportArgs {
    #[command(flatten)]
    db: DbArg,
    /// Print one JSON object (for scripts).
    #[arg(long)]
    json: bool,
    /// Write results.csv and bad_rows.csv into this folder.
    #[arg(long)]
    export: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct CancelArgs {
    #[command(flatten)]
    db: DbArg,
    /// The job number (see `matchdesk report`).
    #[arg(long)]
    job: i64,
    #[command(flatten)]
    auth: AuthArgs,
    /// Why (recorded in the audit log).
    #[arg(long)]
    why: Option<String>,
}

/// Parse arguments, run, map the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    if cli.command.is_none() {
        return match gui(cli.gui) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    if std::env::var_os("MATCHDESK_PEAK_RSS").is_some()
        && let Some(kb) = peak_rss_kb()
    {
        eprintln!("matchdesk-peak-rss-kb: {kb}");
    }
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), for the benchmarks.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Open the workbench window.
fn gui(a: GuiArgs) -> Result<()> {
    let explicit_db = a.db.is_some();
    let db = match a.db {
        Some(p) => p,
        None => default_db()?,
    };
    let data_dir = db
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut opts = matchdesk::app::StartOptions::new(db, data_dir);
    opts.server = a.server;
    opts.demo = !a.no_demo;
    opts.demo_smart = a.demo_smart;
    let native = eframe::NativeOptions {
        viewport: eframe::egui::ViewportBuilder::default()
            .with_title("matchdesk")
            .with_inner_size([1280.0, 820.0])
            .with_min_inner_size([900.0, 600.0])
            .with_drag_and_drop(true),
        persist_window: true,
        ..Default::default()
    };
    eframe::run_native(
        "matchdesk",
        native,
        Box::new(move |cc| {
            Ok(Box::new(matchdesk::ui::MatchdeskApp::from_creation_context(
                cc,
                opts,
                explicit_db,
            )))
        }),
    )
    .map_err(|e| anyhow!("the window could not open: {e}. On Linux matchdesk needs a desktop session (X11 or Wayland) with OpenGL."))
}

async fn run(cli: Cli) -> Result<u8> {
    let Some(command) = cli.command else {
        return Ok(0);
    };
    match command {
        Command::Sim(a) => sim_cmd(a).await,
        Command::Generate(a) => generate_cmd(a),
        Command::Import(a) => import_cmd(a).await,
        Command::Match(a) => match_cmd(a).await,
        Command::Report(a) => report_cmd(a),
        Command::Cancel(a) => cancel_cmd(a).await,
        Command::Bench(a) => bench::run(a).await,
        Command::Keys(KeysCommand::Generate(a)) => keys_generate_cmd(a),
        Command::TestConnection(a) => test_connection_cmd(a).await,
    }
}

async fn sim_cmd(a: SimArgs) -> Result<u8> {
    let faults: Faults = match &a.faults {
        Some(spec) => spec.parse().map_err(|e| anyhow!("--faults: {e}"))?,
        None => Faults::default(),
    };
    let registry = match &a.registry {
        Some(path) => {
            let mapping = a
                .mapping
                .as_deref()
                .map(Mapping::load)
                .transpose()
                .context("reading the registry mapping")?;
            let path = path.clone();
            tokio::task::spawn_blocking(move || Registry::load(&path, mapping.as_ref()))
                .await
                .context("loading the registry")??
        }
        None => {
            let (n, seed) = (a.patients, a.seed);
            tokio::task::spawn_blocking(move || Registry::generate(n, seed))
                .await
                .context("generating the registry")?
        }
    };
    let smart = match (&a.smart_jwks, &a.smart_client_id) {
        (Some(jwks), Some(client_id)) => {
            let is_url = jwks.starts_with("https://") || jwks.starts_with("http://");
            let (jwks, jwks_url) = if is_url {
                (serde_json::json!({ "keys": [] }), Some(jwks.clone()))
            } else {
                (auth::keys::read_jwks(Path::new(jwks))?, None)
            };
            Some(sim::auth::SmartSimConfig {
                clients: vec![sim::auth::SimClient {
                    client_id: client_id.clone(),
                    jwks,
                    jwks_url,
                    scopes: a.smart_scopes.clone(),
                }],
                token_lifetime: Duration::from_secs(a.token_lifetime.max(1)),
            })
        }
        _ => None,
    };
    let cfg = SimConfig {
        resource_limit: a.resource_limit,
        min_poll_interval: Duration::from_millis(a.min_poll_interval_ms),
        retry_after_secs: a.retry_after,
        processing_rate: a.rate,
        faults,
        requires_access_token: a.require_token.is_some() || a.files_need_token,
        require_token: a.require_token,
        smart,
        ..SimConfig::default()
    };
    let patients = registry.len();
    let server = sim::server::start(Arc::new(registry), cfg, a.listen)
        .await
        .context("starting the simulated IIS")?;
    // The first line of output is the contract: the FHIR base URL.
    println!("{}", server.base_url);
    eprintln!(
        "simulated IIS with {patients} patients; kick-off at {}; press Ctrl-C to stop",
        server.kickoff_url()
    );
    if let Some(t) = server.token_url() {
        eprintln!(
            "SMART Backend Services on: token endpoint {t}, discovery at {}/.well-known/smart-configuration",
            server.base_url
        );
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = wait_forever() => {}
    }
    server.shutdown().await;
    Ok(0)
}

async fn wait_forever() {
    std::future::pending::<()>().await
}

fn generate_cmd(a: GenerateArgs) -> Result<u8> {
    if a.patients == 0 {
        bail!("--patients must be at least 1");
    }
    let started = Instant::now();
    let registry = sim::generate::registry(&sim::generate::GenConfig::new(a.patients, a.seed));
    let cohort = sim::generate::cohort(
        &registry,
        &sim::generate::CohortConfig {
            size: a.cohort_size,
            not_in_registry_fraction: a.not_in_registry.clamp(0.0, 1.0),
            corruption_rate: a.corruption.clamp(0.0, 1.0),
            seed: a.seed.wrapping_add(1),
        },
    );
    sim::generate::write_registry_csv(&a.registry_out, &registry)
        .with_context(|| format!("writing {}", a.registry_out.display()))?;
    sim::generate::write_cohort_csv(&a.cohort_out, &cohort)
        .with_context(|| format!("writing {}", a.cohort_out.display()))?;
    if let Some(t) = &a.truth_out {
        sim::generate::write_truth_csv(t, &cohort)
            .with_context(|| format!("writing {}", t.display()))?;
    }
    eprintln!(
        "wrote {} registry patients and {} cohort rows in {:.1}s",
        registry.len(),
        cohort.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}

fn open_engine(db: &Path, cfg: EngineConfig) -> Result<Engine> {
    Engine::open(db, cfg).with_context(|| format!("opening the workspace {}", db.display()))
}

fn load_mapping(path: Option<&Path>) -> Result<Option<Mapping>> {
    path.map(Mapping::load)
        .transpose()
        .context("reading the mapping file")
}

fn print_import(r: &matchdesk::engine::ImportResult) {
    let s = &r.summary;
    println!(
        "imported {}: {} good rows, {} bad rows, {} warnings ({}, {})",
        r.cohort_id_label(),
        s.good_rows,
        s.bad_rows,
        s.warnings,
        s.format,
        s.encoding
    );
    if r.diff.reimport {
        println!(
            "compared with the previous import: {} new, {} changed, {} unchanged, {} left the cohort, {} kept as before because they are bad in this file",
            r.diff.new_rows,
            r.diff.changed_rows,
            r.diff.unchanged_rows,
            r.diff.left_rows,
            r.diff.now_bad_rows
        );
    }
    if s.bad_rows > 0 {
        println!(
            "bad rows were kept out of matching; see them with `matchdesk report --export DIR` (bad_rows.csv)"
        );
    }
}

trait CohortLabel {
    fn cohort_id_label(&self) -> String;
}

impl CohortLabel for matchdesk::engine::ImportResult {
    fn cohort_id_label(&self) -> String {
        format!("cohort {} (version {})", self.cohort_id, self.version_id)
    }
}

async fn import_cmd(a: ImportArgs) -> Result<u8> {
    let db = a.db.path()?;
    let mapping = load_mapping(a.mapping.as_deref())?;
    let engine = open_engine(&db, EngineConfig::default())?;
    let path = a.cohort.clone();
    let name = a.name.clone();
    let result = tokio::task::spawn_blocking(move || {
        engine.import(&path, mapping.as_ref(), name.as_deref())
    })
    .await
    .context("import task")?
    .with_context(|| format!("importing {}", a.cohort.display()))?;
    print_import(&result);
    Ok(if result.summary.bad_rows > 0 {
        EXIT_PARTIAL
    } else {
        0
    })
}

async fn match_cmd(a: MatchArgs) -> Result<u8> {
    let db = a.db.path()?;
    let mapping = load_mapping(a.mapping.as_deref())?;
    let rules: TriageRules = match &a.rules {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid triage rules JSON", p.display()))?
        }
        None => TriageRules::default(),
    };
    let token = a.auth.token_source(&a.server)?;
    let cfg = EngineConfig {
        chunk_size: a.chunk_size.max(1),
        concurrency: a.concurrency.max(1),
        options: MatchOptions {
            only_single_match: a.only_single_match,
            only_certain_matches: a.only_certain_matches,
            count: (a.count > 0).then_some(a.count),
            output_format: Some(a.output_format.clone()),
        },
        rules,
        ..EngineConfig::default()
    };
    let engine = open_engine(&db, cfg)?;
    let name = match &a.name {
        Some(n) => n.clone(),
        None => a
            .cohort
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cohort".into()),
    };
    // Import if the cohort is new or the file changed since its last import.
    let (existing, needs_import) = engine.needs_import(&name, &a.cohort)?;
    let cohort_id = if needs_import {
        let e2 = engine.clone();
        let path = a.cohort.clone();
        let n2 = name.clone();
        let result =
            tokio::task::spawn_blocking(move || e2.import(&path, mapping.as_ref(), Some(&n2)))
                .await
                .context("import task")?
                .with_context(|| format!("importing {}", a.cohort.display()))?;
        print_import(&result);
        result.cohort_id
    } else {
        let c = existing.ok_or_else(|| anyhow!("cohort disappeared"))?;
        println!("cohort {name:?} is already imported and unchanged; continuing its matching");
        c.id
    };

    let cancel = CancelFlag::new();
    let c2 = cancel.clone();
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let i2 = interrupted.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            i2.store(true, std::sync::atomic::Ordering::SeqCst);
            c2.cancel();
        }
    });
    let fancy = !a.plain && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = Progress::new(fancy);
    let sink: EventSink = {
        let p = progress.clone();
        Arc::new(move |e| p.event(e))
    };
    let started = Instant::now();
    let jobs = engine
        .run_cohort(cohort_id, &a.server, token, sink, cancel.clone())
        .await
        .context("matching")?;
    progress.finish();
    if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
        println!("interrupted; the work so far is saved. Run the same command again to resume.");
        return Ok(EXIT_INTERRUPTED);
    }
    let report = engine.store()?.report()?;
    if jobs.is_empty() {
        println!("nothing to match: every row of this cohort already has an outcome");
    }
    for (id, state) in &jobs {
        println!("job {id}: {}", state.key());
    }
    print_outcomes(&report);
    eprintln!("took {:.1}s", started.elapsed().as_secs_f64());
    let partial = jobs.iter().any(|(_, s)| {
        matches!(
            s,
            JobState::CompletedWithErrors | JobState::Failed | JobState::Cancelled
        )
    }) || report.bad_rows > 0
        || report.outcomes.error > 0;
    let all_failed = !jobs.is_empty() && jobs.iter().all(|(_, s)| *s == JobState::Failed);
    Ok(if all_failed {
        1
    } else if partial {
        EXIT_PARTIAL
    } else {
        0
    })
}

fn print_outcomes(r: &matchdesk::store::Report) {
    println!(
        "rows: {}  bad rows: {}  auto-match: {}  review: {}  no match: {}  error: {}  not yet matched: {}",
        r.rows,
        r.bad_rows,
        r.outcomes.auto_match,
        r.outcomes.review,
        r.outcomes.no_match,
        r.outcomes.error,
        r.pending
    );
    if !r.review_reasons.is_empty() {
        let parts: Vec<String> = r
            .review_reasons
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!("review by reason: {}", parts.join(", "));
    }
}

fn report_cmd(a: ReportArgs) -> Result<u8> {
    let db = a.db.path()?;
    if !db.exists() {
        bail!(
            "there is no workspace at {}; import a cohort first (matchdesk import --db {} FILE)",
            db.display(),
            db.display()
        );
    }
    let engine = open_engine(&db, EngineConfig::default())?;
    let store = engine.store()?;
    let report = store.report()?;
    if let Some(dir) = &a.export {
        store.export(dir)?;
        if !a.json {
            println!(
                "wrote {} and {}",
                dir.join("results.csv").display(),
                dir.join("bad_rows.csv").display()
            );
        }
    }
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_outcomes(&report);
        for j in &report.jobs {
            println!(
                "job {} [{}] cohort {:?} on {}: {} rows in {} chunks ({} done, {} failed); auto {} review {} no-match {} error {}{}",
                j.id,
                j.state,
                j.cohort,
                j.server,
                j.rows,
                j.chunks,
                j.chunks_done,
                j.chunks_failed,
                j.outcomes.auto_match,
                j.outcomes.review,
                j.outcomes.no_match,
                j.outcomes.error,
                j.last_error
                    .as_deref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(0)
}

async fn cancel_cmd(a: CancelArgs) -> Result<u8> {
    let db = a.db.path()?;
    let engine = open_engine(&db, EngineConfig::default())?;
    let server = engine.store()?.job(a.job)?.server_url;
    let token = a.auth.token_source(&server)?;
    engine.cancel_job(a.job, token, a.why.as_deref()).await?;
    println!("job {} cancelled", a.job);
    Ok(0)
}

fn keys_generate_cmd(a: KeysGenerateArgs) -> Result<u8> {
    let alg: SigningAlg = a.alg.parse()?;
    let g = auth::keys::generate(alg, a.kid.as_deref(), &a.out)?;
    println!("generated a {} key pair with key id {}", g.alg, g.kid);
    println!(
        "private key (keep it secret, readable only by you): {}",
        g.private_key.display()
    );
    println!(
        "public key set (give this to the IIS when registering): {}",
        g.jwks.display()
    );
    println!(
        "next: register {} with the IIS, then: matchdesk test-connection --server URL --client-id ID --key {} --kid {}",
        g.jwks.display(),
        g.private_key.display(),
        g.kid
    );
    Ok(0)
}

async fn test_connection_cmd(a: TestConnectionArgs) -> Result<u8> {
    let cfg = a.smart.config()?;
    let base = url::Url::parse(a.server.trim())
        .with_context(|| format!("the server address {:?} is not a URL", a.server))?;
    let report = auth::test_connection(&base, &cfg).await;
    for step in &report.steps {
        let mark = if step.ok { "ok  " } else { "FAIL" };
        println!("[{mark}] {}: {}", step.what, step.detail);
    }
    if report.ok() {
        println!("the connection works");
        Ok(0)
    } else {
        Ok(1)
    }
}

/// Renders [`JobEvent`]s as progress bars on a terminal, or as plain lines otherwise.
#[derive(Clone)]
struct Progress {
    inner: Arc<Mutex<ProgressState>>,
}

struct ProgressState {
    fancy: bool,
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Progress {
    fn new(fancy: bool) -> Progress {
        Progress {
            inner: Arc::new(Mutex::new(ProgressState {
                fancy,
                bar: None,
                started: Instant::now(),
            })),
        }
    }

    fn event(&self, e: JobEvent) {
        let Ok(mut st) = self.inner.lock() else {
            return;
        };
        let t = st.started.elapsed().as_secs_f64();
        match e {
            JobEvent::JobStarted { job_id, rows, chunks, resumed, done_rows } => {
                let verb = if resumed { "resuming" } else { "starting" };
                if st.fancy {
                    let bar = ProgressBar::new(rows);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} rows (eta {eta}) {wide_msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar.set_prefix(format!("job {job_id}"));
                    bar.set_position(done_rows);
                    bar.set_message(format!("{verb}: {chunks} chunk(s)"));
                    st.bar = Some(bar);
                } else {
                    println!("[{t:7.1}s] job {job_id}: {verb}, {rows} rows in {chunks} chunk(s)");
                }
            }
            JobEvent::ChunkSubmitted { chunk_id, rows, .. } => {
                st.line(t, &format!("chunk {chunk_id}: submitted {rows} patients"));
            }
            JobEvent::ChunkProgress { chunk_id, text, .. } => {
                st.line(t, &format!("chunk {chunk_id}: {text}"));
            }
            JobEvent::ChunkSplit { chunk_id, new_chunk_id, kept, .. } => st.line(
                t,
                &format!("chunk {chunk_id}: server said too large; keeping {kept}, rest moved to chunk {new_chunk_id}"),
            ),
            JobEvent::Retrying { chunk_id, message, .. } => {
                st.line(t, &format!("chunk {chunk_id}: will retry: {message}"));
            }
            JobEvent::RowsIngested { rows, .. } => {
                if let Some(bar) = &st.bar {
                    bar.inc(rows);
                }
            }
            JobEvent::BadLine { chunk_id, line, message, .. } => {
                st.line(t, &format!("chunk {chunk_id}: skipped result line {line}: {message}"));
            }
            JobEvent::ChunkFinished { chunk_id, state, error, .. } => {
                let msg = match error {
                    Some(e) => format!("chunk {chunk_id}: {} — {e}", state.key()),
                    None => format!("chunk {chunk_id}: {}", state.key()),
                };
                st.line(t, &msg);
            }
            JobEvent::JobFinished { job_id, state } => {
                if let Some(bar) = st.bar.take() {
                    bar.finish_with_message(state.key().to_string());
                } else {
                    println!("[{t:7.1}s] job {job_id}: {}", state.key());
                }
            }
        }
    }

    fn finish(&self) {
        if let Ok(mut st) = self.inner.lock()
            && let Some(bar) = st.bar.take()
        {
            bar.abandon();
        }
    }
}

impl ProgressState {
    fn line(&self, t: f64, msg: &str) {
        match &self.bar {
            Some(bar) if self.fancy => bar.set_message(msg.to_string()),
            _ => println!("[{t:7.1}s] {msg}"),
        }
    }
}
