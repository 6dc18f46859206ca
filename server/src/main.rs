//! `stead-server`: serves a built Stead app and syncs its spaces.
//!
//! Run with `stead-server --dir dist --port 8080`; `--port 0` picks a free port. The first
//! line on stdout is `listening on http://ADDR`, which scripts and tests read. Sync data
//! goes to `--database` (a SQLite file, created on first start, or `postgres://...`).
//! With `--apps-domain DOMAIN` it also hosts published apps, each at `{app}.DOMAIN`
//! (`REGISTRY.md`).

use std::{io::Write, net::IpAddr, path::PathBuf};

use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "Serve a built Stead app")]
struct Args {
    /// The built app folder (holds index.html and stead-bundle.json); without it, and
    /// with no `dist` folder here, only sync is served.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Sync storage: a SQLite file path (created and migrated on first start) or a
    /// `postgres://` URL (several nodes may share one database).
    #[arg(long, default_value = "stead.sqlite3")]
    database: String,
    /// Serve the bundle only, with no sync routes.
    #[arg(long)]
    no_sync: bool,
    /// The kill switch: answer `410 Gone` for the bundle manifest, so every installed
    /// service worker of the app deletes its stored files and unregisters.
    #[arg(long)]
    retire: bool,
    /// Largest sync frame in bytes.
    #[arg(long, default_value_t = stead_server::Limits::default().max_frame_bytes)]
    max_frame_bytes: usize,
    /// Most entries in one sync frame.
    #[arg(long, default_value_t = stead_server::Limits::default().max_batch_entries)]
    max_batch_entries: usize,
    /// Sync frames per second one connection may send on average.
    #[arg(long, default_value_t = stead_server::Limits::default().frames_per_sec)]
    frames_per_sec: u32,
    /// Most connections to one space.
    #[arg(long, default_value_t = stead_server::Limits::default().max_conns_per_space)]
    max_conns_per_space: usize,
    /// `/sync` connections from one address (an IPv6 /64) still proving membership at
    /// once; 0 for no bound.
    #[arg(long, default_value_t = stead_server::Limits::default().max_unproven_per_address)]
    max_unproven_per_address: usize,
    /// How long a new `/sync` connection has to prove membership, in ms.
    #[arg(long, default_value_t = stead_server::Limits::default().proof_timeout.as_millis() as u64)]
    proof_timeout_ms: u64,
    /// Open connections at most (HTTP and sync sockets); 0 for no bound.
    #[arg(long, default_value_t = stead_server::HttpLimits::default().max_connections)]
    max_connections: usize,
    /// Open connections at most from one address (an IPv6 /64); 0 for no bound.
    #[arg(long, default_value_t = stead_server::HttpLimits::default().max_connections_per_address)]
    max_connections_per_address: usize,
    /// How long a client has to send a request's header, in ms.
    #[arg(long, default_value_t = stead_server::HttpLimits::default().header_timeout.as_millis() as u64)]
    header_timeout_ms: u64,
    /// How long a request body may go without sending a byte, in ms.
    #[arg(long, default_value_t = stead_server::HttpLimits::default().body_idle_timeout.as_millis() as u64)]
    body_idle_timeout_ms: u64,
    /// Change notifications a connection may have pending before it is cut off as too slow.
    #[arg(long, default_value_t = stead_server::Limits::default().queue)]
    queue: usize,
    /// How long one send to a sync client may take before it counts as too slow, in ms.
    #[arg(long, default_value_t = stead_server::Limits::default().send_timeout.as_millis() as u64)]
    send_timeout_ms: u64,
    /// Who may create spaces: `open` (anyone), `token` (whoever sends a token of
    /// `--creation-tokens-file` in the `Stead-Creation-Token` header) or `closed`.
    #[arg(long, value_enum, default_value_t = Creation::Closed)]
    spaces: Creation,
    /// A file of space creation tokens, one per line (with `--spaces token`).
    #[arg(long)]
    creation_tokens_file: Option<PathBuf>,
    /// Entries of one space at most.
    #[arg(long, default_value_t = stead_server::Limits::default().max_entries_per_space)]
    max_entries_per_space: u64,
    /// A space's blobs in all, in bytes.
    #[arg(long, default_value_t = stead_server::Limits::default().max_blob_bytes_per_space)]
    max_blob_bytes_per_space: u64,
    /// Events of a space's membership log at most.
    #[arg(long, default_value_t = stead_server::Limits::default().max_membership_events)]
    max_membership_events: usize,
    /// Largest membership log in bytes.
    #[arg(long, default_value_t = stead_server::Limits::default().max_membership_bytes)]
    max_membership_bytes: usize,
    /// How far ahead of the server's clock an entry's time may be, in ms.
    #[arg(long, default_value_t = stead_server::Limits::default().max_clock_drift_ms)]
    max_clock_drift_ms: u64,
    /// The longest an invite may stay open, in days: joins after an invite's expiry are
    /// refused, and so are invites set to last longer.
    #[arg(long, default_value_t = 30)]
    max_invite_days: u64,
    /// A file holding the token `/metrics` asks for (`Authorization: Bearer <token>`);
    /// without it `/metrics` answers loopback clients only.
    #[arg(long)]
    metrics_token_file: Option<PathBuf>,
    /// Largest blob in bytes.
    #[arg(long, default_value_t = stead_server::Limits::default().max_blob_bytes)]
    max_blob_bytes: usize,
    /// Host the app registry under this domain: each published app is served at
    /// `{app}.{domain}` (`localhost` locally; behind a wildcard DNS name and TLS in
    /// production, see DEPLOY.md), publishers use `/_registry/v1/`. Needs sync storage.
    #[arg(long)]
    apps_domain: Option<String>,
    /// Who may claim a new app name: `open` (anyone), `token` (whoever sends a token of
    /// `--publish-tokens-file` in the `Stead-Publish-Token` header) or `closed`. Apps
    /// already here are published to by their own key alone.
    #[arg(long, value_enum, default_value_t = Creation::Closed)]
    new_apps: Creation,
    /// A file of publish tokens, one per line (with `--new-apps token`).
    #[arg(long)]
    publish_tokens_file: Option<PathBuf>,
    /// Stead's service worker script for the catalog at the bare host (`stead-sw.js` of an
    /// app built with this version of Stead): with it the catalog installs and works
    /// offline. Default: `--dir`'s `stead-sw.js`, when there is one.
    #[arg(long)]
    catalog_worker: Option<PathBuf>,
    /// Largest file of a published app, in bytes.
    #[arg(long, default_value_t = stead_server::RegistryConfig::new("localhost").max_file_bytes)]
    max_app_file_bytes: u64,
    /// Bytes of the distinct files an app's kept versions list, at most.
    #[arg(long, default_value_t = stead_server::RegistryConfig::new("localhost").max_app_bytes)]
    max_app_bytes: u64,
    /// Versions kept per app: publishing past it drops the oldest (never the current).
    #[arg(long, default_value_t = stead_server::RegistryConfig::new("localhost").max_versions)]
    max_app_versions: usize,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

/// `--spaces`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Creation {
    Open,
    Token,
    Closed,
}

/// The creation policy the flags ask for.
fn creation(args: &Args) -> anyhow::Result<stead_server::SpaceCreation> {
    policy(args.spaces, args.creation_tokens_file.as_ref(), "--spaces token needs --creation-tokens-file")
}

/// A creation policy (of spaces or of app names) from its flags.
fn policy(creation: Creation, tokens_file: Option<&PathBuf>, missing: &'static str) -> anyhow::Result<stead_server::SpaceCreation> {
    use stead_server::SpaceCreation;
    Ok(match creation {
        Creation::Open => SpaceCreation::Open,
        Creation::Closed => SpaceCreation::Closed,
        Creation::Token => {
            let path = tokens_file.context(missing)?;
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let tokens: Vec<&str> = text.lines().map(str::trim).filter(|t| !t.is_empty() && !t.starts_with('#')).collect();
            anyhow::ensure!(!tokens.is_empty(), "{} holds no tokens", path.display());
            for t in &tokens {
                anyhow::ensure!(t.len() >= 16, "tokens must be at least 16 characters long");
            }
            SpaceCreation::Token(tokens.iter().map(|t| stead_server::service::token_hash(t)).collect())
        }
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: piped into a file or a journal they are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let dir = match &args.dir {
        Some(dir) => {
            anyhow::ensure!(dir.is_dir(), "bundle folder {} does not exist", dir.display());
            dir.clone()
        }
        None => PathBuf::from("dist"),
    };
    anyhow::ensure!(!args.no_sync || dir.is_dir(), "bundle folder {} does not exist", dir.display());
    anyhow::ensure!(!args.no_sync || args.apps_domain.is_none(), "--apps-domain needs sync storage: drop --no-sync");
    // With the registry the bare host is the catalog: there is no one app to withdraw.
    anyhow::ensure!(!args.retire || args.apps_domain.is_none(), "--retire withdraws the --dir app, which --apps-domain does not serve: drop one of them");
    let mut registry = None;
    let sync = if args.no_sync {
        None
    } else {
        let defaults = stead_server::Limits::default();
        let limits = stead_server::Limits {
            max_frame_bytes: args.max_frame_bytes,
            max_batch_entries: args.max_batch_entries,
            frames_per_sec: args.frames_per_sec,
            frames_burst: args.frames_per_sec.saturating_mul(2),
            max_conns_per_space: args.max_conns_per_space,
            max_unproven_per_address: args.max_unproven_per_address,
            proof_timeout: std::time::Duration::from_millis(args.proof_timeout_ms),
            queue: args.queue,
            max_blob_bytes: args.max_blob_bytes,
            max_entries_per_space: args.max_entries_per_space,
            max_blob_bytes_per_space: args.max_blob_bytes_per_space,
            max_membership_events: args.max_membership_events,
            max_membership_bytes: args.max_membership_bytes,
            max_clock_drift_ms: args.max_clock_drift_ms,
            max_invite_ms: args.max_invite_days * 24 * 3600 * 1000,
            creation: creation(&args)?,
            metrics_token: match &args.metrics_token_file {
                Some(path) => {
                    let token = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                    anyhow::ensure!(token.trim().len() >= 16, "the metrics token must be at least 16 characters long");
                    Some(stead_server::service::token_hash(&token))
                }
                None => None,
            },
            send_timeout: std::time::Duration::from_millis(args.send_timeout_ms),
            ..defaults
        };
        let node: [u8; 16] = stead_core::env::Random::array(&mut stead_server::service::OsRandom);
        let database = args.database.clone();
        let backend = tokio::task::spawn_blocking(move || stead_server::storage::open(&database, node))
            .await?
            .with_context(|| format!("cannot open the database {}", redact(&args.database)))?;
        tracing::info!(backend = backend.kind(), "sync storage ready");
        if let Some(domain) = &args.apps_domain {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            stead_server::registry::check_domain(&domain).map_err(anyhow::Error::msg)?;
            let config = stead_server::RegistryConfig {
                new_apps: policy(args.new_apps, args.publish_tokens_file.as_ref(), "--new-apps token needs --publish-tokens-file")?,
                max_file_bytes: args.max_app_file_bytes,
                max_app_bytes: args.max_app_bytes,
                max_versions: args.max_app_versions.max(1),
                catalog_worker: catalog_worker(args.catalog_worker.as_deref(), &dir)?,
                ..stead_server::RegistryConfig::new(&domain)
            };
            tracing::info!(domain, "app registry on");
            registry = Some(stead_server::Registry::new(backend.clone(), config));
        }
        Some(stead_server::Service::new(backend, limits))
    };
    let listener = tokio::net::TcpListener::bind((args.host, args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    tracing::info!(dir = %dir.display(), "serving");
    let http = stead_server::HttpLimits {
        max_connections: args.max_connections,
        max_connections_per_address: args.max_connections_per_address,
        header_timeout: std::time::Duration::from_millis(args.header_timeout_ms),
        body_idle_timeout: std::time::Duration::from_millis(args.body_idle_timeout_ms),
    };
    let config = stead_server::Config { bundle_dir: dir, sync, retired: args.retire, http, registry };
    stead_server::serve(listener, config, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// The catalog's worker script: the one named, else the bundle folder's if it has one.
fn catalog_worker(named: Option<&std::path::Path>, dir: &std::path::Path) -> anyhow::Result<Option<Vec<u8>>> {
    match named {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read the catalog's worker {}", path.display()))?;
            anyhow::ensure!(!bytes.is_empty(), "the catalog's worker {} is empty", path.display());
            Ok(Some(bytes))
        }
        None => Ok(std::fs::read(dir.join(stead_core::bundle::WORKER_SCRIPT)).ok().filter(|b| !b.is_empty())),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}
