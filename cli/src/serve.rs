//! `stead serve`: stead-server, in process, on a built app, with SQLite for sync.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use stead_core::bundle::MANIFEST_FILE;

use crate::diag::Problem;

/// What `stead serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub dir: PathBuf,
    pub host: IpAddr,
    pub port: u16,
    /// The SQLite file (or `postgres://` URL) sync data goes to.
    pub database: String,
    /// Anyone may create spaces (right for a local server); otherwise nobody may.
    pub open_spaces: bool,
}

/// Checks that `dir` is a built app.
pub fn check_dir(dir: &Path) -> Result<(), Problem> {
    if !dir.join("index.html").is_file() || !dir.join(MANIFEST_FILE).is_file() {
        return Err(Problem::new(format!("{} is not a built Stead app (no index.html or {MANIFEST_FILE})", dir.display()))
            .help("run `stead build` in the app's folder first; it writes dist/"));
    }
    Ok(())
}

/// A running server: its address, and the handle to stop it.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// The URL to open: `localhost` rather than 127.0.0.1, so the page is a secure
    /// context by name and its origin matches what other tools print.
    pub fn url(&self) -> String {
        let host = if self.addr.ip().is_loopback() { "localhost".to_owned() } else { self.addr.ip().to_string() };
        format!("http://{host}:{}/", self.addr.port())
    }

    /// Stops the server and waits for it to finish the requests in flight.
    pub async fn stop(mut self) -> Result<(), Problem> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Problem::new(format!("the server stopped with an error: {e}"))),
            Err(e) => Err(Problem::new(format!("the server task failed: {e}"))),
        }
    }
}

/// Opens the database, binds the port and starts serving (on the current tokio runtime).
pub async fn start(opts: &ServeOptions) -> Result<Running, Problem> {
    if let Some(parent) = Path::new(&opts.database).parent()
        && !opts.database.contains("://")
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| Problem::new(format!("cannot create {}: {e}", parent.display())))?;
    }
    let limits = stead_server::Limits {
        creation: if opts.open_spaces { stead_server::SpaceCreation::Open } else { stead_server::SpaceCreation::Closed },
        ..stead_server::Limits::default()
    };
    let node: [u8; 16] = stead_core::env::Random::array(&mut stead_server::service::OsRandom);
    let database = opts.database.clone();
    let backend = tokio::task::spawn_blocking(move || stead_server::storage::open(&database, node))
        .await
        .map_err(|e| Problem::new(format!("cannot open the database: {e}")))?
        .map_err(|e| {
            Problem::new(format!("cannot open the database {}: {e}", opts.database)).help("pass another file with `--database PATH`")
        })?;
    let service = stead_server::Service::new(backend, limits);
    let listener = tokio::net::TcpListener::bind((opts.host, opts.port)).await.map_err(|e| {
        Problem::new(format!("cannot listen on {}:{}: {e}", opts.host, opts.port)).help("another program uses the port: pass `--port N`, or `--port 0` for any free one")
    })?;
    let addr = listener.local_addr().map_err(|e| Problem::new(format!("cannot read the listening address: {e}")))?;
    let config = stead_server::Config { bundle_dir: opts.dir.clone(), sync: Some(service), retired: false, http: Default::default(), registry: None };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(stead_server::serve(listener, config, async move {
        let _ = stopped.await;
    }));
    Ok(Running { addr, stop: Some(stop), task })
}
