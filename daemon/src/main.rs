//! `sitesync-daemon`: runs the durable local store and the localhost HTTP
//! API. `sitesync-daemon --help` explains every option.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use sitesync_daemon::api::auth;
use sitesync_daemon::jobs::{Jobs, JobsConfig};
use sitesync_daemon::replication::{Replication, SyncTiming, listen_for_peers};
use sitesync_daemon::{AppState, CacheLimits, open_service, run, seed};
use sitesync_sync::accept::Limits;
use sitesync_sync::credentials::Token;
use sitesync_sync::link::{LinkTiming, shutdown_signal};
use std::time::Duration;
use tokio::net::TcpListener;

/// The sitesync daemon: keeps this laptop's copy of every project and serves
/// the local HTTP API (see docs/http.md) on 127.0.0.1.
///
/// On first start it creates its store and an API token in the data
/// directory; it prints where the token file is, never the token. Send it as
/// `Authorization: Bearer <token>` on every request but GET /v1/health.
///
/// People use the field app at http://127.0.0.1:7700/. The daemon prints a
/// one-time URL that signs a browser in (it works once, for 5 minutes);
/// `sitesync-daemon open` prints and opens a new one for the daemon running
/// on the same data directory.
///
/// Logs go to stderr. SITESYNC_LOG sets what is logged, as a tracing filter
/// (default: info,automerge=warn; e.g. SITESYNC_LOG=debug).
#[derive(Parser, Debug)]
#[command(name = "sitesync-daemon", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Where the store and the API token live. Default: the platform data
    /// directory (Linux: ~/.local/share/sitesync).
    #[arg(long, global = true, env = "SITESYNC_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Address of the HTTP API. Port 0 picks a free port (printed at start).
    #[arg(
        long,
        env = "SITESYNC_LISTEN",
        default_value = "127.0.0.1:7700",
        value_name = "ADDR"
    )]
    listen: SocketAddr,

    /// Allow a --listen address other than loopback. The API token still
    /// applies, but anyone on the network can try it: prefer loopback.
    #[arg(long, env = "SITESYNC_ALLOW_REMOTE")]
    allow_remote: bool,

    /// A browser origin (e.g. http://localhost:5173) allowed to call the API.
    /// Repeatable; none by default.
    #[arg(
        long = "allow-origin",
        env = "SITESYNC_ALLOW_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    allow_origin: Vec<String>,

    /// The person recorded in changes when a request has no X-User header.
    /// Default: $USER.
    #[arg(long, env = "SITESYNC_USER", value_name = "NAME")]
    user: Option<String>,

    /// A name for this device, shown to peers. Default: the hostname.
    #[arg(long, env = "SITESYNC_DEVICE_NAME", value_name = "NAME")]
    device_name: Option<String>,

    /// This device's sync token (from `sitesync-relay token create`). Needed
    /// for --relay, --peer and --peer-listen; it names the organisation this
    /// daemon trusts. Prefer --token-file so it never shows in `ps`.
    #[arg(long, env = "SITESYNC_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Read the sync token from this file instead.
    #[arg(
        long,
        env = "SITESYNC_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,

    /// A relay to sync through, e.g. ws://relay.example:7800 (repeatable).
    #[arg(
        long = "relay",
        env = "SITESYNC_RELAY",
        value_name = "URL",
        value_delimiter = ','
    )]
    relays: Vec<String>,

    /// An extra CA certificate (PEM) to trust for wss:// relays, besides the
    /// platform's roots — for a relay whose certificate a private CA signed.
    #[arg(
        long = "relay-ca",
        env = "SITESYNC_RELAY_CA",
        value_name = "FILE",
        value_delimiter = ','
    )]
    relay_ca: Vec<PathBuf>,

    /// Another daemon's --peer-listen address to sync with directly on the
    /// LAN, e.g. wss://10.0.0.7:7701 (repeatable). LAN links are always
    /// TLS; the peer's certificate is its own, made at its start, and the
    /// handshake is bound to the TLS session, so nobody in between can read
    /// or change what passes.
    #[arg(
        long = "peer",
        env = "SITESYNC_PEER",
        value_name = "URL",
        value_delimiter = ','
    )]
    peers: Vec<String>,

    /// Accept LAN peers (other daemons of the same organisation) on this
    /// address, e.g. 0.0.0.0:7701, over TLS (they dial wss://). Off by
    /// default.
    #[arg(long, env = "SITESYNC_PEER_LISTEN", value_name = "ADDR")]
    peer_listen: Option<SocketAddr>,

    /// How often to ping each peer (latency, liveness).
    #[arg(
        long,
        env = "SITESYNC_SYNC_PING_MS",
        default_value_t = 5000,
        value_name = "MS"
    )]
    sync_ping_ms: u64,

    /// First reconnect delay; it doubles per failed attempt, capped at 30 s.
    #[arg(
        long,
        env = "SITESYNC_RECONNECT_MIN_MS",
        default_value_t = 1000,
        value_name = "MS"
    )]
    reconnect_min_ms: u64,

    /// How long finished jobs (imports, exports) and their files are kept.
    #[arg(
        long,
        env = "SITESYNC_JOB_RETENTION_SECS",
        default_value_t = 7 * 24 * 3600,
        value_name = "SECS"
    )]
    job_retention_secs: u64,

    /// Least time between two progress events of one job (job.updated).
    #[arg(
        long,
        env = "SITESYNC_JOB_EVENT_INTERVAL_MS",
        default_value_t = 250,
        value_name = "MS"
    )]
    job_event_interval_ms: u64,

    /// Most documents (one per drawing) kept decoded in memory. A drawing
    /// of 50 components takes about 100 KB decoded, so the default holds a
    /// 100,000-component project (2,000 drawings) whole in ~200 MB; others
    /// reload from the store on use (~1–2 ms each). Lower it on a machine
    /// short of memory; raise it for larger projects in daily use.
    #[arg(
        long,
        env = "SITESYNC_MAX_CACHED_DOCUMENTS",
        default_value_t = sitesync_sync::RepoConfig::default().max_cached as u64,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    max_cached_documents: u64,

    /// Most memory, in MiB, the documents kept decoded may take together
    /// (estimated from their operations and changes: a drawing of 50
    /// components ~90 KB, one with 5,000 writes of history ~2.5 MB). The
    /// least recently used are evicted past it, as past
    /// --max-cached-documents; whichever binds first.
    #[arg(
        long,
        env = "SITESYNC_MAX_CACHE_MB",
        default_value_t = (sitesync_sync::RepoConfig::default().max_cached_bytes >> 20) as u64,
        value_name = "MIB",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    max_cache_mb: u64,

    /// Largest file an import accepts, in MiB.
    #[arg(
        long,
        env = "SITESYNC_MAX_IMPORT_MB",
        default_value_t = 1024,
        value_name = "MIB"
    )]
    max_import_mb: u64,

    /// Open connections to the API at most (requests and event streams);
    /// past it a new socket is closed at once
    /// (sitesync_connections_refused_total).
    #[arg(
        long,
        env = "SITESYNC_MAX_CONNECTIONS",
        default_value_t = 256,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    max_connections: u64,

    /// LAN peers connected to --peer-listen at most (sockets still
    /// handshaking included); past it a new socket is closed at once and
    /// counted in sitesync_peers_refused_total.
    #[arg(
        long,
        env = "SITESYNC_MAX_PEERS",
        default_value_t = 64,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    max_peers: u64,

    /// Time a client (an app, or a LAN peer) has to send its HTTP request
    /// headers; a socket trickling bytes gives its slot back after this.
    #[arg(
        long,
        env = "SITESYNC_HEADER_TIMEOUT_MS",
        default_value_t = 10_000,
        value_name = "MS",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    header_timeout_ms: u64,

    /// Seed, once, a realistic demo project (6 drawings, 150 components,
    /// real rules of credit, some progress).
    #[arg(long, env = "SITESYNC_DEMO")]
    demo: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Signs a browser in to the field app of the daemon running on this
    /// data directory: prints a one-time URL (it works once, for 5 minutes)
    /// and opens it in the default browser when there is one.
    Open {
        /// Only print the URL; do not start a browser.
        #[arg(long)]
        no_browser: bool,
    },
}

/// The running daemon's API address, written at start so `open` finds it.
const URL_FILE: &str = "daemon-url";

fn write_url_file(data_dir: &std::path::Path, url: &str) -> anyhow::Result<()> {
    let path = data_dir.join(URL_FILE);
    let tmp = data_dir.join(format!(".{URL_FILE}.tmp"));
    std::fs::write(&tmp, url).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `sitesync-daemon open`: asks the running daemon for a sign-in URL.
fn open(data_dir: &std::path::Path, no_browser: bool) -> anyhow::Result<()> {
    let url_path = data_dir.join(URL_FILE);
    let base = std::fs::read_to_string(&url_path).with_context(|| {
        format!(
            "no daemon has run on {} ({} is missing): start `sitesync-daemon` first",
            data_dir.display(),
            url_path.display()
        )
    })?;
    let token_path = data_dir.join(auth::TOKEN_FILE);
    let token =
        std::fs::read_to_string(&token_path).with_context(|| format!("reading {}", token_path.display()))?;
    let endpoint = format!("{}/v1/session/links", base.trim());
    let mut answer = ureq::post(&endpoint)
        .header("Authorization", &format!("Bearer {}", token.trim()))
        .send_empty()
        .with_context(|| {
            format!(
                "asking the daemon at {} for a sign-in URL (is it running?)",
                base.trim()
            )
        })?;
    let body: serde_json::Value = answer
        .body_mut()
        .read_json()
        .context("reading the daemon's answer")?;
    let url = body["url"].as_str().context("the daemon's answer has no url")?;
    println!("{url}");
    if !no_browser {
        let opener = if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        };
        if std::process::Command::new(opener)
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .is_err()
        {
            eprintln!("(no {opener} here: open the URL above in a browser)");
        }
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "this-device".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            sitesync_sync::log_filter(std::env::var("SITESYNC_LOG").ok().as_deref())
                .map_err(anyhow::Error::msg)?,
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();

    if !cli.listen.ip().is_loopback() && !cli.allow_remote {
        bail!(
            "--listen {} is not a loopback address; the API is meant for apps on this machine. \
             Pass --allow-remote if you really want it reachable from the network.",
            cli.listen
        );
    }
    let data_dir = match cli.data_dir {
        Some(d) => d,
        None => dirs::data_dir()
            .context("no platform data directory; pass --data-dir")?
            .join("sitesync"),
    };
    if let Some(Command::Open { no_browser }) = cli.command {
        return open(&data_dir, no_browser);
    }
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", data_dir.display()))?;
    }

    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => Some(Token::parse(t).context("--token")?),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            Some(Token::parse(&text).with_context(|| format!("the token in {}", f.display()))?)
        }
        (None, None) => None,
    };
    if token.is_none() && (!cli.relays.is_empty() || !cli.peers.is_empty() || cli.peer_listen.is_some()) {
        bail!(
            "--relay, --peer and --peer-listen need this device's sync token: pass --token or --token-file \
             (issue one with `sitesync-relay token create --org NAME --data-dir DIR`)"
        );
    }
    let service = Arc::new(open_service(
        &data_dir,
        CacheLimits {
            documents: cli.max_cached_documents as usize,
            bytes: (cli.max_cache_mb as usize).saturating_mul(1 << 20),
        },
    )?);
    // Another device's changes are indexed on the service's own thread,
    // which ends when the service is dropped.
    service
        .start_indexer()
        .context("starting the thread that indexes other devices' changes")?;
    let ping_every = Duration::from_millis(cli.sync_ping_ms.max(10));
    let timing = SyncTiming {
        link: LinkTiming::from_ping(ping_every),
        reconnect_min: Duration::from_millis(cli.reconnect_min_ms.max(10)),
        reconnect_max: Duration::from_secs(30),
    };
    let device_name = cli.device_name.clone().unwrap_or_else(hostname);
    let tls = sitesync_sync::tls::ClientTls::new(&cli.relay_ca).context("--relay-ca")?;
    let replication = Replication::new(service.clone(), token, device_name.clone(), timing, tls);
    {
        let svc = service.clone();
        tokio::task::spawn_blocking(move || svc.migrate_store())
            .await?
            .map_err(|e| anyhow::anyhow!("preparing documents for sync: {e}"))?;
    }
    if cli.demo {
        let svc = service.clone();
        let seeded = tokio::task::spawn_blocking(move || seed::seed_demo(&svc))
            .await?
            .map_err(|e| anyhow::anyhow!("seeding the demo project: {e}"))?;
        if seeded {
            tracing::info!("seeded the demo project");
        }
    }
    let jobs = Jobs::open(
        service.clone(),
        &data_dir.join("jobs"),
        JobsConfig {
            event_interval: Duration::from_millis(cli.job_event_interval_ms),
            retention: Duration::from_secs(cli.job_retention_secs),
        },
    )
    .context("opening the job table")?;
    // The token exists on disk before the daemon listens.
    let (token, token_path) = auth::ensure_token(&data_dir).context("writing the API token")?;
    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let addr = listener.local_addr()?;
    let extra_host = cli.allow_remote.then(|| addr.to_string());
    let header_read_timeout = Duration::from_millis(cli.header_timeout_ms);
    let mut metrics = sitesync_daemon::metrics::Metrics::default();
    metrics.register_sync(replication.counters());
    let state = Arc::new(AppState {
        service,
        token,
        logins: Default::default(),
        cookie_name: sitesync_daemon::api::app::cookie_name(addr.port()),
        allowed_hosts: auth::allowed_hosts(addr.port(), extra_host),
        allowed_origins: cli.allow_origin,
        default_user: cli
            .user
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".into()),
        device_name,
        metrics,
        replication: replication.clone(),
        jobs,
        max_import_bytes: cli.max_import_mb.saturating_mul(1024 * 1024),
        http_limits: Limits {
            max_connections: cli.max_connections as usize,
            header_read_timeout,
        },
    });
    println!(
        "sitesync-daemon {} listening on http://{addr}",
        env!("CARGO_PKG_VERSION")
    );
    println!("  data directory: {}", data_dir.display());
    println!("  API token file: {}", token_path.display());
    // The app's sign-in, good once and for five minutes; never the token.
    let login = sitesync_daemon::api::app::login_url(&state, &state.allowed_hosts[0]);
    println!("  open the app: {login}");
    write_url_file(&data_dir, &format!("http://{addr}"))?;
    if let Some(addr) = cli.peer_listen {
        let limits = Limits {
            max_connections: cli.max_peers as usize,
            header_read_timeout,
        };
        let bound = listen_for_peers(replication.clone(), addr, limits)
            .await
            .with_context(|| format!("binding --peer-listen {addr}"))?;
        println!("  LAN peers: wss://{bound}");
    }
    for url in &cli.relays {
        replication
            .add_peer(url, None, "relay")
            .with_context(|| format!("--relay {url}"))?;
    }
    for url in &cli.peers {
        replication
            .add_peer(url, None, "lan")
            .with_context(|| format!("--peer {url}"))?;
    }
    run(listener, state, shutdown_signal()).await?;
    Ok(())
}
