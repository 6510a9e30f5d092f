//! `sitesync-relay`: the cloud relay, and the organisation/token tool that
//! manages its credentials. `sitesync-relay --help` explains every command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use sitesync_relay::orgs::Orgs;
use sitesync_relay::{Relay, RelayConfig, run};
use sitesync_sync::link::now_ms;
use sitesync_sync::link::{LinkTiming, shutdown_signal};
use sitesync_sync::tls;
use tokio::net::TcpListener;
use uuid::Uuid;

/// The sitesync relay: stores and forwards every project's documents between
/// devices that are never online at the same time, and issues the tokens
/// devices present.
///
/// Typical first run:
///   sitesync-relay org create acme --data-dir ./relay
///   sitesync-relay token create --org acme --data-dir ./relay   (once per device)
///   sitesync-relay serve --listen 127.0.0.1:7800 --data-dir ./relay
///
/// Logs go to stderr. SITESYNC_LOG sets what is logged, as a tracing filter
/// (default: info,automerge=warn; e.g. SITESYNC_LOG=debug).
#[derive(Parser, Debug)]
#[command(name = "sitesync-relay", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct DataDir {
    /// The relay's data directory: `store/` (documents) and `orgs/`
    /// (organisation keys and revocations, mode 0600).
    #[arg(long, env = "SITESYNC_RELAY_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve devices: WebSocket at `/`, `GET /healthz`, `GET /metrics`.
    Serve {
        /// Address to listen on. Port 0 picks a free port (printed at start).
        #[arg(long, env = "SITESYNC_RELAY_LISTEN", default_value = "127.0.0.1:7800")]
        listen: SocketAddr,
        #[command(flatten)]
        data: DataDir,
        /// Devices connected at most: more are refused (503) until others
        /// close. Open sockets (upgraded or not) are capped at this plus 64,
        /// counted as they are accepted; past that a socket is closed at
        /// once (sitesync_relay_refused_total{reason="connection_limit"}).
        #[arg(long, default_value_t = 10_000)]
        max_connections: usize,
        /// Time a client has to send its HTTP request headers (a socket
        /// trickling bytes gives its slot back after this).
        #[arg(long, default_value_t = 10_000, value_name = "MS")]
        header_timeout_ms: u64,
        /// PEM certificate chain: serve wss:// (needs --tls-key). Without
        /// it the relay speaks plain ws://, for loopback and tests only.
        #[arg(
            long,
            env = "SITESYNC_RELAY_TLS_CERT",
            value_name = "FILE",
            requires = "tls_key"
        )]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(
            long,
            env = "SITESYNC_RELAY_TLS_KEY",
            value_name = "FILE",
            requires = "tls_cert"
        )]
        tls_key: Option<PathBuf>,
        /// How often to ping each device (latency, liveness, revocation).
        #[arg(long, default_value_t = 5000, value_name = "MS")]
        ping_interval_ms: u64,
        /// Most documents (one per drawing, one per project) kept decoded
        /// in memory, ~120 KB each for a drawing of 50 components; others
        /// load from the store when a change arrives (2–3 ms each, on the
        /// way to every device). Size it to the drawings devices work on.
        /// Per organisation: each keeps its documents in its own store
        /// (`<data-dir>/spaces/<org>/`).
        #[arg(
            long,
            env = "SITESYNC_RELAY_MAX_CACHED_DOCUMENTS",
            default_value_t = sitesync_relay::DEFAULT_MAX_CACHED as u64,
            value_name = "N",
            value_parser = clap::value_parser!(u64).range(1..)
        )]
        max_cached_documents: u64,
        /// Most memory, in MiB, the decoded documents of every
        /// organisation may take together (estimated from their operations
        /// and changes: a drawing of 50 components ~90 KB, one with 5,000
        /// writes of history ~2.5 MB). An organisation whose change goes
        /// over evicts its own least recently used documents; the relay
        /// then empties the caches of the organisations idle longest
        /// (counted in sitesync_relay_spaces_shed_total). Memory stays
        /// bounded however many organisations are active.
        #[arg(
            long,
            env = "SITESYNC_RELAY_MAX_CACHE_MB",
            default_value_t = (sitesync_sync::RepoConfig::default().max_cached_bytes >> 20) as u64,
            value_name = "MIB",
            value_parser = clap::value_parser!(u64).range(1..)
        )]
        max_cache_mb: u64,
        /// Most documents (one per drawing, one per project) one
        /// organisation may keep on this relay. Past it, a change that
        /// would add one is refused (its connection closes with
        /// quota_exceeded, counted in sitesync_relay_refused_total); changes
        /// to documents held go on.
        #[arg(
            long,
            env = "SITESYNC_RELAY_MAX_DOCUMENTS_PER_ORG",
            default_value_t = sitesync_relay::spaces::Quota::default().max_documents as u64,
            value_name = "N",
            value_parser = clap::value_parser!(u64).range(1..)
        )]
        max_documents_per_org: u64,
        /// Most megabytes one organisation's store may take on disk. Past
        /// it, every change is refused (quota_exceeded) until an operator
        /// raises it.
        #[arg(
            long,
            env = "SITESYNC_RELAY_MAX_MB_PER_ORG",
            default_value_t = sitesync_relay::spaces::Quota::default().max_bytes >> 20,
            value_name = "MB",
            value_parser = clap::value_parser!(u64).range(1..)
        )]
        max_mb_per_org: u64,
        /// Frames a second one organisation's devices may send together
        /// (bursts of twice as many). Past it the relay paces them (reads
        /// their next frames later) instead of dropping anything; counted
        /// in sitesync_relay_paced_frames_total.
        #[arg(
            long,
            env = "SITESYNC_RELAY_MAX_MESSAGES_PER_SECOND_PER_ORG",
            default_value_t = sitesync_relay::spaces::Quota::default().max_messages_per_second,
            value_name = "N",
            value_parser = clap::value_parser!(u32).range(1..)
        )]
        max_messages_per_second_per_org: u32,
    },
    /// Manage organisations.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// Issue and revoke device tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand, Debug)]
enum OrgCommand {
    /// Create an organisation and its ed25519 signing key.
    Create {
        /// Letters, digits, '-' and '_'.
        name: String,
        #[command(flatten)]
        data: DataDir,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Issue a token for one device; the token is the last line of output.
    Create {
        /// The organisation whose key signs the token (see `org create`).
        #[arg(long)]
        org: String,
        /// A project the token covers (repeatable). None: every project of
        /// the organisation, including ones created later.
        #[arg(long = "project", value_name = "ID")]
        projects: Vec<Uuid>,
        /// Lifetime (`90d`, `12h`, `30m`) or an RFC 3339 expiry time.
        #[arg(long, default_value = "90d")]
        expires: String,
        #[command(flatten)]
        data: DataDir,
    },
    /// Revoke a token by its id: it is refused from now on, and connections
    /// using it are dropped.
    Revoke {
        /// The token id `token create` printed.
        id: Uuid,
        /// The organisation that issued it.
        #[arg(long)]
        org: String,
        #[command(flatten)]
        data: DataDir,
    },
}

/// Parses `--expires` into an absolute time (ms since the epoch).
fn expiry(spec: &str, now_ms: i64) -> anyhow::Result<i64> {
    let spec = spec.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(spec) {
        return Ok(t.timestamp_millis());
    }
    let (n, unit) = spec.split_at(spec.find(|c: char| !c.is_ascii_digit()).unwrap_or(spec.len()));
    let n: i64 =
        n.parse().ok().filter(|n| *n > 0).with_context(|| {
            format!("--expires {spec:?}: expected e.g. 90d, 12h, 30m or an RFC 3339 time")
        })?;
    let unit_ms = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        _ => bail!("--expires {spec:?}: the unit must be d, h or m"),
    };
    Ok(now_ms + n * unit_ms)
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
    match Cli::parse().command {
        Command::Org {
            command: OrgCommand::Create { name, data },
        } => {
            let org = Orgs::new(&data.data_dir).create(&name, rand::random())?;
            println!(
                "created organization {name:?} in {}",
                data.data_dir.join("orgs").display()
            );
            println!("  public key: {}", hex(&org.public()));
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    org,
                    projects,
                    expires,
                    data,
                },
        } => {
            let key = Orgs::new(&data.data_dir).load(&org)?;
            let expires_at = expiry(&expires, now_ms())?;
            if expires_at <= now_ms() {
                bail!("--expires {expires:?} is in the past");
            }
            let id = Uuid::new_v4();
            let token = key.issue(id, &projects, expires_at, rand::random());
            println!("token {id} for organization {org:?}");
            match projects.as_slice() {
                [] => println!("  projects: all of the organization's"),
                ps => println!(
                    "  projects: {}",
                    ps.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
                ),
            }
            let at = chrono::DateTime::from_timestamp_millis(expires_at).unwrap_or_default();
            println!(
                "  expires: {}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            println!("  pass it to a daemon as --token (or SITESYNC_TOKEN); keep it secret:");
            println!("{}", token.encode());
        }
        Command::Token {
            command: TokenCommand::Revoke { id, org, data },
        } => {
            Orgs::new(&data.data_dir).revoke(&org, id)?;
            println!("revoked token {id} of organization {org:?}");
        }
        Command::Serve {
            listen,
            data,
            max_connections,
            header_timeout_ms,
            ping_interval_ms,
            tls_cert,
            tls_key,
            max_cached_documents,
            max_cache_mb,
            max_documents_per_org,
            max_mb_per_org,
            max_messages_per_second_per_org,
        } => {
            std::fs::create_dir_all(&data.data_dir)
                .with_context(|| format!("creating {}", data.data_dir.display()))?;
            let ping_every = Duration::from_millis(ping_interval_ms.max(10));
            let config = RelayConfig {
                max_connections,
                max_cached: max_cached_documents as usize,
                max_cache_bytes: (max_cache_mb as usize).saturating_mul(1 << 20),
                timing: LinkTiming::from_ping(ping_every),
                header_read_timeout: Duration::from_millis(header_timeout_ms.max(1)),
                quota: sitesync_relay::spaces::Quota {
                    max_documents: max_documents_per_org as usize,
                    max_bytes: max_mb_per_org.saturating_mul(1 << 20),
                    max_messages_per_second: max_messages_per_second_per_org,
                },
            };
            let relay = Relay::open(&data.data_dir, config)?;
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            let addr = listener.local_addr()?;
            let version = env!("CARGO_PKG_VERSION");
            match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => {
                    let config = tls::server_config(&cert, &key)?;
                    println!("sitesync-relay {version} listening on wss://{addr}");
                    println!("  data directory: {}", data.data_dir.display());
                    let listener = sitesync_sync::link::without_nagle(listener);
                    run(listener, Some(config), relay, shutdown_signal()).await?;
                }
                _ => {
                    if !addr.ip().is_loopback() {
                        tracing::warn!(
                            "serving plain ws:// on a non-loopback address; use --tls-cert/--tls-key"
                        );
                    }
                    println!("sitesync-relay {version} listening on ws://{addr}");
                    println!("  data directory: {}", data.data_dir.display());
                    let listener = sitesync_sync::link::without_nagle(listener);
                    run(listener, None, relay, shutdown_signal()).await?;
                }
            }
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_accepts_durations_and_times() {
        assert_eq!(expiry("2d", 0).unwrap(), 2 * 86_400_000);
        assert_eq!(expiry("30m", 5).unwrap(), 5 + 30 * 60_000);
        assert_eq!(expiry("1970-01-01T00:00:01Z", 0).unwrap(), 1000);
        for bad in ["", "d", "0d", "5y", "-3d", "soon"] {
            assert!(expiry(bad, 0).is_err(), "{bad}");
        }
    }
}
