//! `stead-server`: serves a built Stead app.
//!
//! Run with `stead-server --dir dist --port 8080`; `--port 0` picks a free port. The first
//! line on stdout is `listening on http://ADDR`, which scripts and tests read.

use std::{io::Write, net::IpAddr, path::PathBuf};

use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "Serve a built Stead app")]
struct Args {
    /// The built app folder (holds index.html and stead-bundle.json).
    #[arg(long, default_value = "dist")]
    dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    anyhow::ensure!(args.dir.is_dir(), "bundle folder {} does not exist", args.dir.display());
    let listener = tokio::net::TcpListener::bind((args.host, args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;
    tracing::info!(dir = %args.dir.display(), "serving");
    stead_server::serve(listener, stead_server::Config { bundle_dir: args.dir }, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
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
