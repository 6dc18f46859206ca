//! Test harness: real `stead-server` processes, a real PostgreSQL, clients and raw peers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use stead_client::{Client, ClientConfig};
use stead_core::env::SeededRandom;
use stead_core::log::Limits;
use stead_core::replica::Replica;
use stead_core::sync::{Frame, Sync, SyncConfig};
use tokio_tungstenite::tungstenite::Message;

/// Where sync data lives in a test.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Db {
    pub fn name(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    pub fn arg(&self) -> String {
        match self {
            Db::Sqlite(p) => p.display().to_string(),
            Db::Postgres(url) => url.clone(),
        }
    }

    /// Replica (hex) → next seq stored, read straight from the database.
    pub fn stored(&self) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        off_runtime(|| self.stored_blocking())
    }

    fn stored_blocking(&self) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        let mut out = std::collections::BTreeMap::new();
        match self {
            Db::Sqlite(p) => {
                // Read-only: a writing connection that closes last checkpoints the WAL and
                // deletes it, and a server restarted after a kill would never recover its
                // own WAL.
                let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let conn = rusqlite::Connection::open_with_flags(p, flags)?;
                let mut stmt = conn.prepare("SELECT replica, MAX(seq) FROM entries GROUP BY replica")?;
                let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))?;
                for r in rows {
                    let (rid, max) = r?;
                    out.insert(hex::encode(rid), max as u64 + 1);
                }
            }
            Db::Postgres(url) => {
                let mut c = postgres::Client::connect(url, postgres::NoTls)?;
                for r in c.query("SELECT replica, MAX(seq) FROM entries GROUP BY replica", &[])? {
                    let (rid, max): (Vec<u8>, i64) = (r.get(0), r.get(1));
                    out.insert(hex::encode(rid), max as u64 + 1);
                }
            }
        }
        Ok(out)
    }
}

/// Runs blocking database code on a plain thread: the `postgres` client starts its own
/// runtime, which tokio forbids inside another.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("the blocking helper panicked"))
}

/// A running `stead-server` process.
pub struct Server {
    pub base: String,
    pub port: u16,
    child: Child,
    _bundle: tempfile::TempDir,
}

impl Server {
    pub fn start(db: &Db, extra: &[&str]) -> anyhow::Result<Server> {
        Server::start_on(db, 0, extra)
    }

    pub fn start_on(db: &Db, port: u16, extra: &[&str]) -> anyhow::Result<Server> {
        let bundle = tempfile::tempdir()?;
        std::fs::write(bundle.path().join("index.html"), "<h1>app</h1>")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Command::new(env!("CARGO_BIN_EXE_stead-server"))
                .args(["--dir", &bundle.path().display().to_string(), "--port", &port.to_string(), "--database", &db.arg()])
                .args(if extra.contains(&"--spaces") { &[][..] } else { &["--spaces", "open"][..] })
                .args(extra)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting stead-server")?;
            let mut line = String::new();
            BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
            if let Some(addr) = line.trim().strip_prefix("listening on ") {
                let port = addr.rsplit(':').next().unwrap_or("0").parse()?;
                return Ok(Server { base: addr.to_owned(), port, child, _bundle: bundle });
            }
            let _ = child.wait();
            // A port reused right after a kill may still be held for a moment.
            if Instant::now() > deadline {
                bail!("stead-server did not start: {line:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ws(&self) -> String {
        format!("{}/sync", self.base.replace("http://", "ws://"))
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit; returns whether it exited cleanly and how long it took.
    pub fn terminate(mut self) -> anyhow::Result<(bool, Duration)> {
        let started = Instant::now();
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        let status = self.child.wait()?;
        Ok((status.success(), started.elapsed()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pg_bin(name: &str) -> PathBuf {
    for dir in ["/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Runs a PostgreSQL tool as the `postgres` user when we are root (it refuses root).
fn pg_command(name: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(name));
        c
    } else {
        Command::new(pg_bin(name))
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A throwaway PostgreSQL cluster in a temp folder, on a free port of 127.0.0.1.
pub struct Pg {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
    next_db: std::sync::atomic::AtomicU32,
}

impl Pg {
    pub fn start() -> anyhow::Result<Pg> {
        off_runtime(Pg::start_blocking)
    }

    fn start_blocking() -> anyhow::Result<Pg> {
        let dir = tempfile::Builder::new().prefix("stead-pg").tempdir()?;
        let data = dir.path().join("data");
        if is_root() {
            if !Command::new("id").arg("postgres").output()?.status.success() {
                Command::new("useradd").args(["--system", "--no-create-home", "postgres"]).status()?;
            }
            Command::new("chown").args(["postgres", &dir.path().display().to_string()]).status()?;
        }
        let out = pg_command("initdb")
            .args(["-D", &data.display().to_string(), "-A", "trust", "-U", "postgres", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .context("running initdb (is PostgreSQL installed?)")?;
        anyhow::ensure!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port()?;
        let child = pg_command("postgres")
            .args(["-D", &data.display().to_string(), "-p", &port.to_string(), "-h", "127.0.0.1", "-k", &dir.path().display().to_string()])
            .args(["-c", "max_connections=300", "-c", "shared_buffers=32MB"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("postgres.log"))?)
            .spawn()
            .context("starting postgres")?;
        let pg = Pg { port, dir, child, next_db: 0.into() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while postgres::Client::connect(&pg.url("postgres"), postgres::NoTls).is_err() {
            let log = std::fs::read_to_string(pg.dir.path().join("postgres.log")).unwrap_or_default();
            anyhow::ensure!(Instant::now() < deadline, "postgres did not come up: {log}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(pg)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A fresh, empty database.
    pub fn database(&self) -> anyhow::Result<Db> {
        off_runtime(|| self.database_blocking())
    }

    fn database_blocking(&self) -> anyhow::Result<Db> {
        let n = self.next_db.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("stead_{n}");
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)?;
        c.batch_execute(&format!("CREATE DATABASE {name}"))?;
        Ok(Db::Postgres(self.url(&name)))
    }

    /// `pg_dump` of a database, as text.
    pub fn dump(&self, db: &Db) -> anyhow::Result<Vec<u8>> {
        let Db::Postgres(url) = db else { bail!("not a postgres database") };
        let out = pg_command("pg_dump").arg(url).output()?;
        anyhow::ensure!(out.status.success(), "pg_dump failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(out.stdout)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        // The postmaster's own pid (runuser may sit between us and it): SIGINT is a fast shutdown.
        let pid = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned));
        if let Some(pid) = pid {
            let _ = Command::new("kill").args(["-INT", &pid]).status();
        }
        let _ = self.child.wait();
    }
}

/// A client in its own temp folder.
pub struct TestClient {
    pub client: Client,
    pub dir: tempfile::TempDir,
}

pub fn config(dir: &Path, server: &Server) -> ClientConfig {
    let mut c = ClientConfig::new(dir, server.base.clone());
    c.fsync = false;
    c.backoff_min = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(500);
    c
}

/// One creator and `n - 1` invited devices, all connected.
pub async fn clients(server: &Server, n: usize) -> anyhow::Result<Vec<TestClient>> {
    let dir = tempfile::tempdir()?;
    let first = Client::create(config(dir.path(), server)).await?;
    let space = first.space();
    let mut out = vec![TestClient { client: first, dir }];
    for _ in 1..n {
        out.push(invite(server, &out[0].client, space).await?);
    }
    Ok(out)
}

pub async fn invite(server: &Server, by: &Client, space: stead_core::ids::SpaceId) -> anyhow::Result<TestClient> {
    let dir = tempfile::tempdir()?;
    let device = stead_client::Device::load_or_create(dir.path())?;
    by.invite(&device.card()).await?;
    let client = Client::join(config(dir.path(), server), space).await?;
    Ok(TestClient { client, dir })
}

/// Waits until every client holds the same version vector, equal to `expected` if given.
pub async fn converge(clients: &[&Client], timeout: Duration) -> anyhow::Result<stead_core::log::VersionVector> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut union = stead_core::log::VersionVector::new();
        let mut vectors = Vec::new();
        for c in clients {
            let v = c.vector().await?;
            for (r, n) in &v {
                let u = union.entry(*r).or_insert(0);
                *u = (*u).max(*n);
            }
            vectors.push(v);
        }
        if vectors.iter().all(|v| *v == union) {
            return Ok(union);
        }
        if Instant::now() > deadline {
            // How each client stands says which side stalled: never connected, connected
            // and not sent to, or refusing what it got.
            let states: Vec<_> = clients.iter().map(|c| c.status()).map(|s| (s.connected, s.connects, s.rejected)).collect();
            bail!("no convergence: {vectors:?}; (connected, connects, rejected) {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A hand-driven protocol peer: a real replica's handshake, then arbitrary bytes.
pub struct RawPeer {
    pub ws: Ws,
    pub sync: Sync,
    pub hello: Vec<u8>,
    pub proof: Vec<u8>,
}

pub async fn connect(server: &Server) -> anyhow::Result<Ws> {
    Ok(tokio_tungstenite::connect_async(server.ws()).await?.0)
}

impl RawPeer {
    /// Handshakes as `replica` and waits for the server's vector.
    pub async fn handshake(server: &Server, replica: &mut Replica, seed: u64) -> anyhow::Result<(RawPeer, Frame)> {
        let mut ws = connect(server).await?;
        let mut sync = Sync::new(SyncConfig::client(), &mut SeededRandom::new(seed));
        let (mut hello, mut proof) = (Vec::new(), Vec::new());
        loop {
            while let Some(f) = sync.generate(replica) {
                let bytes = f.encode();
                match f {
                    Frame::Hello { .. } => hello = bytes.clone(),
                    Frame::Proof { .. } => proof = bytes.clone(),
                    _ => {}
                }
                ws.send(Message::Binary(bytes.into())).await?;
            }
            let frame = recv(&mut ws).await?;
            sync.receive(&frame.encode(), replica, now()).ok();
            if let Frame::Vector(_) | Frame::Error { .. } = frame {
                return Ok((RawPeer { ws, sync, hello, proof }, frame));
            }
        }
    }

    /// A connection driven by hand as `c`'s device (beside its engine's own, unless that
    /// was interrupted).
    pub async fn as_device(server: &Server, c: &TestClient, seed: u64) -> anyhow::Result<(RawPeer, Frame)> {
        let mut replica = device_replica(c).await?;
        RawPeer::handshake(server, &mut replica, seed).await
    }

    pub async fn send(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.ws.send(Message::Binary(bytes.into())).await?;
        Ok(())
    }
}

/// A replica in memory with `c`'s device identity and space key (from its `space.json`),
/// to write entries by hand.
pub async fn device_replica(c: &TestClient) -> anyhow::Result<Replica> {
    let members = c.client.read(|r| r.members().clone()).await?;
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(c.dir.path().join("space.json"))?)?;
    let key: [u8; 32] = hex::decode(file["key"].as_str().context("no key in space.json")?)?.try_into().map_err(|_| anyhow::anyhow!("bad key"))?;
    let identity = stead_core::replica::Identity {
        space: c.client.space(),
        replica: c.client.replica(),
        signing: c.client.device().signing.clone(),
        agreement: c.client.device().agreement,
        space_key: stead_core::crypto::SpaceKey(key),
    };
    Ok(Replica::open(identity, members, Box::new(stead_core::store::MemStore::new()), Default::default())?)
}

pub fn now() -> u64 {
    stead_core::env::Clock::now_ms(&stead_core::env::SystemClock)
}

/// The next protocol frame from the server (5 s at most).
pub async fn recv(ws: &mut Ws) -> anyhow::Result<Frame> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.context("no frame within 5 s")?;
        match msg {
            Some(Ok(Message::Binary(b))) => return Ok(Frame::decode(&b, &Limits { max_payload: usize::MAX })?),
            Some(Ok(Message::Close(_))) | None => bail!("closed"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("socket error: {e}"),
        }
    }
}

/// Clients each committing a counter increment and a field every 2 ms until stopped: the
/// load the durability tests crash the server under. Every client sees every write once
/// everything converged, so the counter equals the number of writes.
pub struct WriteLoad {
    pub clients: Vec<std::sync::Arc<TestClient>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    written: std::sync::Arc<std::sync::atomic::AtomicI64>,
    writers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl WriteLoad {
    pub async fn start(server: &Server, n: usize) -> anyhow::Result<WriteLoad> {
        use std::sync::atomic::Ordering;
        use stead_core::ids::RecordId;
        use stead_core::ops::{Op, Value};
        let clients: Vec<_> = clients(server, n).await?.into_iter().map(std::sync::Arc::new).collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let written = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
        let mut writers = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            let (c, stop, written) = (c.clone(), stop.clone(), written.clone());
            writers.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let ops = vec![
                        Op::CounterAdd { collection: "stats".into(), record: RecordId([0; 16]), field: "writes".into(), delta: 1 },
                        Op::Set { collection: "log".into(), record: RecordId([i as u8; 16]), field: "n".into(), value: Value::Int(n as i64) },
                    ];
                    c.client.commit(ops).await?;
                    written.fetch_add(1, Ordering::SeqCst);
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                anyhow::Ok(())
            }));
        }
        Ok(WriteLoad { clients, stop, written, writers })
    }

    /// Each client's replica and the entries the server has acknowledged to it.
    pub fn acked(&self) -> Vec<(stead_core::ids::ReplicaId, u64)> {
        self.clients.iter().map(|c| (c.client.replica(), c.client.status().acked)).collect()
    }

    /// Waits until more than `before` entries are acknowledged in all: each round of a
    /// crash test must see acks of its own, or a server that came back and never
    /// acknowledged again would pass on the earlier rounds' acks.
    pub async fn wait_acks_past(&self, before: u64, round: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.acked().iter().map(|(_, a)| a).sum::<u64>() <= before {
            anyhow::ensure!(Instant::now() < deadline, "round {round}: no write was acknowledged within 20 s of the restart");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stops writing, waits for every write to be acknowledged and every client to
    /// converge, and checks each write was applied exactly once; returns how many there were.
    pub async fn finish(self) -> anyhow::Result<i64> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for w in self.writers {
            w.await??;
        }
        for c in &self.clients {
            c.client.wait_acked(Duration::from_secs(30)).await?;
        }
        let refs: Vec<_> = self.clients.iter().map(|c| &c.client).collect();
        converge(&refs, Duration::from_secs(30)).await?;
        let total = self.written.load(std::sync::atomic::Ordering::SeqCst);
        for c in &self.clients {
            let record = stead_core::ids::RecordId([0; 16]);
            let n = c.client.read(move |r| r.get("stats", record).and_then(|s| s.field("writes")).map(|f| f.counter_value())).await?;
            anyhow::ensure!(n == Some(total), "every write applied exactly once on {}: {n:?} of {total}", c.client.replica());
        }
        Ok(total)
    }
}
