//! `bench-server`: stead-server against the Yjs WebSocket server under the same load
//! (BENCH.md, "Sync server"), run by `cargo xtask bench server`.
//!
//! `bench-server run` starts each server as its own process on 127.0.0.1 and measures, in
//! one run: ingest (one writer, a second client counting receipts), fan-out latency to
//! many receivers held by several `bench-server hold` child processes, and server RSS per
//! idle connection up to 10,000 sockets. The load generator is this Rust program for both
//! servers; the Yjs updates are made beforehand by yjs itself (`js/gen-updates.mjs`) and
//! Stead's entries by a real replica, so neither side's client-side encoding is timed.
#![deny(clippy::unwrap_used)]

mod stead;
mod yjs;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures::{SinkExt, StreamExt};
use stead_core::sync::Frame;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio_tungstenite::tungstenite::Message;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The key the n-th write sets (the same sequence as `gen-updates.mjs`): a pool of 10,000.
pub fn key_of(n: usize) -> usize {
    (n * 7919) % 10_000
}

pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

#[derive(Parser)]
#[command(about = "stead-server against the Yjs WebSocket server")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole benchmark: both servers, every workload, a table and a CSV.
    Run(RunArgs),
    /// Child process: holds connections, notes when updates arrive (driven through stdin).
    Hold(HoldArgs),
    /// Only the idle-connection memory workload, for one server: a quick look while
    /// working on per-connection memory.
    Memory(MemoryArgs),
}

#[derive(clap::Args)]
struct MemoryArgs {
    #[arg(long, value_enum)]
    target: Target,
    /// The stead-server binary (a release build); for `--target stead`.
    #[arg(long)]
    stead_server: Option<PathBuf>,
    /// Folder with node_modules (@y/websocket-server); for `--target yjs`.
    #[arg(long)]
    yjs_dir: Option<PathBuf>,
    #[arg(long)]
    quick: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The stead-server binary (a release build).
    #[arg(long)]
    stead_server: PathBuf,
    /// Folder with node_modules (@y/websocket-server, yjs) and gen-updates.mjs.
    #[arg(long)]
    yjs_dir: PathBuf,
    /// What ran as the anchor, for the output.
    #[arg(long, default_value = "@y/websocket-server 0.1.1, yjs 13.6.33, y-protocols 1.0.7")]
    yjs_versions: String,
    #[arg(long)]
    out: PathBuf,
    /// Smaller workloads, for a quick look.
    #[arg(long)]
    quick: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Stead,
    Yjs,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Stead => "stead",
            Target::Yjs => "yjs",
        }
    }
}

#[derive(clap::Args)]
struct HoldArgs {
    #[arg(long, value_enum)]
    target: Target,
    /// `ws://host:port/sync` (Stead) or `ws://host:port` (Yjs; the room is appended).
    #[arg(long)]
    url: String,
    #[arg(long)]
    conns: usize,
    /// This child's first connection number (spreads connections over spaces and rooms).
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Stead: lines `space replica signing-key`; connection n uses line n mod lines.
    #[arg(long)]
    identities: Option<PathBuf>,
    /// Stead: the writer whose entries are timed.
    #[arg(long)]
    writer: Option<String>,
    /// Yjs: connection n joins room `{room_prefix}{n mod rooms}`.
    #[arg(long, default_value = "room-")]
    room_prefix: String,
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Updates to time per connection; their receipt times go to `times`.
    #[arg(long, default_value_t = 0)]
    expect: usize,
    #[arg(long)]
    times: Option<PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (soft, hard) = raise_nofile()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Cmd::Run(a) => {
            eprintln!("  open files: soft limit {soft}, hard {hard}");
            rt.block_on(run(a))
        }
        Cmd::Hold(a) => rt.block_on(hold(a)),
        Cmd::Memory(a) => rt.block_on(memory_only(a)),
    }
}

/// Raises the soft limit on open files to the hard limit (children and servers inherit it).
fn raise_nofile() -> Result<(u64, u64)> {
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    rlimit::Resource::NOFILE.set(hard, hard)?;
    Ok(rlimit::Resource::NOFILE.get()?)
}

// ---------------------------------------------------------------------------------------
// Servers

/// A server process of one run, killed by its own PID when dropped.
struct Server {
    child: Child,
    pid: u32,
    /// `http://127.0.0.1:PORT`
    base: String,
}

impl Server {
    async fn stead(bin: &Path, dir: &Path) -> Result<Server> {
        let bundle = dir.join("bundle");
        std::fs::create_dir_all(&bundle)?;
        let mut child = Command::new(bin)
            .arg("--dir")
            .arg(&bundle)
            .arg("--database")
            .arg(dir.join("stead.sqlite3"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            // The per-connection rate limit guards against abuse; the ingest writer sends
            // thousands of frames a second on purpose. Every other limit stays default.
            .args(["--frames-per-sec", "10000000"])
            // Every bench client connects from 127.0.0.1: the per-address bounds, which
            // would stop 10,000 sockets from one address, are lifted.
            .args(["--max-connections-per-address", "0", "--max-unproven-per-address", "0", "--spaces", "open"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let line = first_line(&mut child).await?;
        let base = line.strip_prefix("listening on ").with_context(|| format!("stead-server said {line:?}"))?.to_owned();
        let pid = child.id().context("no pid")?;
        Ok(Server { child, pid, base })
    }

    async fn yjs(dir: &Path) -> Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut child = Command::new("node")
            .arg(dir.join("node_modules/@y/websocket-server/src/server.js"))
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start node")?;
        let line = first_line(&mut child).await?;
        anyhow::ensure!(line.contains("running at"), "the Yjs server said {line:?}");
        let pid = child.id().context("no pid")?;
        Ok(Server { child, pid, base: format!("http://127.0.0.1:{port}") })
    }

    fn ws(&self) -> String {
        self.base.replace("http://", "ws://")
    }

    /// Resident set size in bytes, from /proc.
    fn rss(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("no VmRSS")?;
        Ok(kb * 1024)
    }

    async fn stop(mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

async fn first_line(child: &mut Child) -> Result<String> {
    let out = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(out).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.context("the server did not start")??;
    // Keep reading (and dropping) what else it prints, so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    line.context("the server exited")
}

// ---------------------------------------------------------------------------------------
// Child processes that hold connections

struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Holder {
    fn spawn(args: Vec<String>) -> Result<Holder> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("hold")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a holder process")?;
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        Ok(Holder { child, stdin, lines })
    }

    async fn line(&mut self, prefix: &str) -> Result<Vec<usize>> {
        let line = tokio::time::timeout(Duration::from_secs(180), self.lines.next_line())
            .await
            .context("a holder did not answer")??
            .context("a holder exited")?;
        let rest = line.strip_prefix(prefix).with_context(|| format!("a holder said {line:?}"))?;
        Ok(rest.split_whitespace().filter_map(|n| n.parse().ok()).collect())
    }

    /// Waits until every connection is up or failed: (open, failed).
    async fn ready(&mut self) -> Result<(usize, usize)> {
        let v = self.line("ready").await?;
        Ok((v.first().copied().unwrap_or(0), v.get(1).copied().unwrap_or(0)))
    }

    async fn open(&mut self) -> Result<usize> {
        let stdin = self.stdin.as_mut().context("stdin")?;
        stdin.write_all(b"count\n").await?;
        stdin.flush().await?;
        Ok(self.line("open").await?.first().copied().unwrap_or(0))
    }

    /// Closes its connections; it writes its receipt times first.
    async fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        let _ = self.line("done").await;
        self.child.wait().await?;
        Ok(())
    }
}

async fn hold(a: HoldArgs) -> Result<()> {
    let total = a.conns * a.expect;
    let times: Arc<[AtomicU64]> = (0..total).map(|_| AtomicU64::new(0)).collect();
    let open = Arc::new(AtomicUsize::new(0));
    let settled = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Connect a few at a time: a burst of thousands of SYNs overflows the listen backlog.
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let identities = match &a.identities {
        Some(p) => std::fs::read_to_string(p)?.lines().map(stead::parse_identity).collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let writer = match &a.writer {
        Some(w) => Some(w.parse().map_err(|_| anyhow::anyhow!("bad writer id"))?),
        None => None,
    };
    for c in 0..a.conns {
        let n = a.offset + c;
        let (times, open, settled, failed, errors, gate) = (times.clone(), open.clone(), settled.clone(), failed.clone(), errors.clone(), gate.clone());
        let mut stop = stop_rx.clone();
        let (target, expect, base) = (a.target, a.expect, c * a.expect);
        let url = match target {
            Target::Stead => a.url.clone(),
            Target::Yjs => format!("{}/{}{}", a.url, a.room_prefix, n % a.rooms.max(1)),
        };
        let who = if target == Target::Stead {
            let w = identities.get(n % identities.len().max(1)).context("no identities for Stead")?.clone();
            Some(w)
        } else {
            None
        };
        tokio::spawn(async move {
            let result: Result<()> = async {
                let permit = gate.acquire_owned().await?;
                match (target, who) {
                    (Target::Stead, Some(who)) => {
                        let writer = writer.unwrap_or(who.replica);
                        let mut counter = stead::Counter { who, writer, next: 0, times: Some(times), base, limit: expect as u64 };
                        let connecting = stead::connect(&url, &mut counter, 256);
                        let (mut ws, mut sync) = tokio::time::timeout(Duration::from_secs(60), connecting).await.context("handshake timed out")??;
                        drop(permit);
                        open.fetch_add(1, Ordering::SeqCst);
                        settled.fetch_add(1, Ordering::SeqCst);
                        let r = loop {
                            tokio::select! {
                                msg = ws.next() => {
                                    if let Err(e) = stead::take(msg, &mut sync, &mut counter) {
                                        break Err(e);
                                    }
                                    if let Err(e) = stead::pump(&mut ws, &mut sync, &counter).await {
                                        break Err(e);
                                    }
                                }
                                _ = stop.changed() => break Ok(()),
                            }
                        };
                        open.fetch_sub(1, Ordering::SeqCst);
                        if let Err(e) = r
                            && errors.fetch_add(1, Ordering::SeqCst) < 3 {
                                eprintln!("  holder connection {n} dropped: {e:#}");
                            }
                        Ok(())
                    }
                    _ => {
                        let connecting = async {
                            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await?;
                            // The server greets every connection with sync step 1.
                            ws.next().await.context("closed before the greeting")??;
                            anyhow::Ok(ws)
                        };
                        let mut ws = tokio::time::timeout(Duration::from_secs(60), connecting).await.context("connect timed out")??;
                        drop(permit);
                        open.fetch_add(1, Ordering::SeqCst);
                        settled.fetch_add(1, Ordering::SeqCst);
                        let mut count = 0;
                        let r = loop {
                            tokio::select! {
                                msg = ws.next() => match msg {
                                    Some(Ok(Message::Binary(b))) => {
                                        if yjs::is_update(&b) {
                                            if count < expect
                                                && let Some(slot) = times.get(base + count) {
                                                    slot.store(now_us(), Ordering::Relaxed);
                                                }
                                            count += 1;
                                        }
                                    }
                                    Some(Ok(Message::Close(c))) => break Err(anyhow::anyhow!("closed by the server: {c:?}")),
                                    None => break Err(anyhow::anyhow!("closed by the server")),
                                    Some(Ok(_)) => {}
                                    Some(Err(e)) => break Err(e.into()),
                                },
                                _ = stop.changed() => break Ok(()),
                            }
                        };
                        open.fetch_sub(1, Ordering::SeqCst);
                        if let Err(e) = r
                            && errors.fetch_add(1, Ordering::SeqCst) < 3 {
                                eprintln!("  holder connection {n} dropped: {e:#}");
                            }
                        Ok(())
                    }
                }
            }
            .await;
            // A connection that came up and dropped later shows in the open count only.
            if let Err(e) = result {
                if errors.fetch_add(1, Ordering::SeqCst) < 3 {
                    eprintln!("  holder connection {n}: {e:#}");
                }
                failed.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    while settled.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) < a.conns {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("ready {} {}", open.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await? {
        if line.trim() == "count" {
            println!("open {}", open.load(Ordering::SeqCst));
        }
    }
    if let Some(path) = &a.times {
        let bytes: Vec<u8> = times.iter().flat_map(|t| t.load(Ordering::Relaxed).to_le_bytes()).collect();
        std::fs::write(path, bytes)?;
    }
    let _ = stop_tx.send(true);
    println!("done");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The run

struct Sizes {
    ingest_ops: usize,
    /// Stead with one entry per message pays one fsync'd commit per message: fewer of them.
    unbatched_entries: usize,
    receivers: usize,
    procs: usize,
    /// Fan-out passes: (updates, interval between them). BENCH.md's pass is 50/s; the full
    /// run adds a slower pass, since at 1,000 receivers 50/s can saturate this machine's 2
    /// cores (servers and receivers share them) and then measures a growing queue.
    fanout: Vec<(usize, Duration)>,
    memory_steps: Vec<usize>,
    spaces: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes { ingest_ops: 10_000, unbatched_entries: 300, receivers: 100, procs: 2, fanout: vec![(100, FANOUT_PERIOD)], memory_steps: vec![100, 500, 1000], spaces: 10 }
        } else {
            Sizes {
                ingest_ops: 100_000,
                unbatched_entries: 2_000,
                receivers: 1_000,
                procs: 4,
                fanout: vec![(1_000, FANOUT_PERIOD), (200, SUSTAINED_PERIOD)],
                memory_steps: vec![1_000, 5_000, 10_000],
                spaces: 100,
            }
        }
    }
}

const FANOUT_PERIOD: Duration = Duration::from_millis(20); // 50 updates/s
/// A rate both servers sustain with 1,000 receivers on 2 shared cores.
const SUSTAINED_PERIOD: Duration = Duration::from_millis(200); // 5 updates/s

/// A fan-out pass counts as saturated when latency grew past this (a queue, not a delivery time).
const SATURATED_MS: f64 = 1000.0;

/// One ingest measurement.
struct Ingest {
    label: String,
    messages: usize,
    entries: usize,
    ops: usize,
    /// First send to last receipt by the second client.
    secs: f64,
    /// First send to the last acknowledgement (Stead) or echo (Yjs).
    ack_secs: f64,
    /// Per message/frame: send to its ack (Stead) or echo (Yjs), in ms.
    ack_ms: Vec<f64>,
}

impl Ingest {
    fn per_sec(&self, n: usize) -> f64 {
        n as f64 / self.secs
    }
}

struct Latency {
    samples: Vec<f64>,
    missing: usize,
}

struct Memory {
    /// (open connections, RSS bytes)
    points: Vec<(usize, u64)>,
    held: usize,
    tried: usize,
}

impl Memory {
    /// Least-squares slope, bytes per connection.
    fn slope(&self) -> f64 {
        let n = self.points.len() as f64;
        let (sx, sy) = self.points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + *x as f64, b + *y as f64));
        let (mx, my) = (sx / n, sy / n);
        let (num, den) = self.points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
            let dx = *x as f64 - mx;
            (a + dx * (*y as f64 - my), b + dx * dx)
        });
        if den == 0.0 { 0.0 } else { num / den }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

async fn run(a: RunArgs) -> Result<()> {
    let sizes = Sizes::new(a.quick);
    let tmp = tempfile::Builder::new().prefix("stead-bench-server").tempdir()?;
    let http = reqwest::Client::new();

    eprintln!("  yjs: making {} updates with yjs (gen-updates.mjs)", sizes.ingest_ops);
    let updates_file = tmp.path().join("updates.bin");
    let status = Command::new("node").arg("gen-updates.mjs").arg(sizes.ingest_ops.to_string()).arg(&updates_file).current_dir(&a.yjs_dir).status().await?;
    anyhow::ensure!(status.success(), "gen-updates.mjs failed");
    let updates = yjs::read_updates(&updates_file)?;

    // Stead.
    eprintln!("\n  stead: ingest");
    let dir = tmp.path().join("stead-1");
    let server = Server::stead(&a.stead_server, &dir).await?;
    let mut stead_ingest = Vec::new();
    stead_ingest.push(stead_ingest_run(&server, &http, "1 op/entry, 1 entry/message", sizes.unbatched_entries, 1, 1).await?);
    stead_ingest.push(stead_ingest_run(&server, &http, "1 op/entry, ≤256 entries/message", sizes.ingest_ops, 1, 256).await?);
    stead_ingest.push(stead_ingest_run(&server, &http, "100 ops/entry, ≤256 entries/message", sizes.ingest_ops, 100, 256).await?);
    eprintln!("  stead: fan-out to {} receivers in {} processes", sizes.receivers, sizes.procs);
    let mut stead_fanout = Vec::new();
    for &(updates, period) in &sizes.fanout {
        eprintln!("    {updates} updates at {:.0}/s", 1.0 / period.as_secs_f64());
        stead_fanout.push(stead_fanout_run(&server, &http, &sizes, updates, period, tmp.path()).await?);
    }
    server.stop().await?;
    eprintln!("  stead: memory per idle connection");
    let server = Server::stead(&a.stead_server, &tmp.path().join("stead-2")).await?;
    let stead_mem = memory_run(Target::Stead, &server, &http, &sizes, tmp.path()).await?;
    server.stop().await?;

    // Yjs.
    eprintln!("\n  yjs: ingest");
    let server = Server::yjs(&a.yjs_dir).await?;
    let yjs_ingest = yjs_ingest_run(&server, &updates).await?;
    eprintln!("  yjs: fan-out to {} receivers in {} processes", sizes.receivers, sizes.procs);
    let mut yjs_fanout = Vec::new();
    for &(n, period) in &sizes.fanout {
        eprintln!("    {n} updates at {:.0}/s", 1.0 / period.as_secs_f64());
        yjs_fanout.push(yjs_fanout_run(&server, &updates, &sizes, n, period, tmp.path()).await?);
    }
    server.stop().await?;
    eprintln!("  yjs: memory per idle connection");
    let server = Server::yjs(&a.yjs_dir).await?;
    let yjs_mem = memory_run(Target::Yjs, &server, &http, &sizes, tmp.path()).await?;
    server.stop().await?;

    report(&a, &sizes, &stead_ingest, &yjs_ingest, &stead_fanout, &yjs_fanout, &stead_mem, &yjs_mem)
}

async fn stead_ingest_run(server: &Server, http: &reqwest::Client, label: &str, ops: usize, per_entry: usize, max_entries: usize) -> Result<Ingest> {
    let url = format!("{}/sync", server.ws());
    let space = stead::create_space(http, &server.base, 1).await?;
    let entries = stead::entries(&space, ops, per_entry)?;
    let n = entries.len();
    let reader = &space.readers[0];
    let mut counter = stead::Counter {
        who: stead::Who { space: space.id, replica: reader.replica, signing: reader.signing.clone() },
        writer: space.creator.replica,
        next: 0,
        times: None,
        base: 0,
        limit: 0,
    };
    let (mut rws, mut rsync) = stead::connect(&url, &mut counter, 256).await?;
    let receiving = tokio::spawn(async move {
        while (counter.next as usize) < n {
            let msg = tokio::time::timeout(Duration::from_secs(120), rws.next()).await.context("the receiver heard nothing for 120 s")?;
            stead::take(msg, &mut rsync, &mut counter)?;
            stead::pump(&mut rws, &mut rsync, &counter).await?;
        }
        anyhow::Ok(Instant::now())
    });

    let who = stead::Who { space: space.id, replica: space.creator.replica, signing: space.creator.signing.clone() };
    let mut writer = stead::Writer { who, entries, released: 0 };
    let (ws, mut sync) = stead::connect(&url, &mut writer, max_entries).await?;
    writer.released = n;
    let mut frames = Vec::new();
    let mut last = Vec::new();
    while let Some(f) = sync.generate(&writer) {
        if let Frame::Entries(es) = &f {
            last.push(es.last().map(|e| e.header.seq + 1).unwrap_or(0));
        }
        frames.push(f.encode());
    }
    let messages = frames.len();
    let (mut sink, mut stream) = ws.split();
    let t0 = Instant::now();
    let sending = tokio::spawn(async move {
        let mut sent = Vec::with_capacity(frames.len());
        for f in frames {
            sink.send(Message::Binary(f.into())).await?;
            sent.push(Instant::now());
        }
        anyhow::Ok((sent, sink))
    });
    let me = space.creator.replica;
    let mut acked_at = Vec::with_capacity(last.len());
    while acked_at.len() < last.len() {
        let msg = tokio::time::timeout(Duration::from_secs(120), stream.next()).await.context("no ack for 120 s")?;
        stead::take(msg, &mut sync, &mut writer)?;
        let acked = sync.acked().get(&me).copied().unwrap_or(0);
        while acked_at.len() < last.len() && acked >= last[acked_at.len()] {
            acked_at.push(Instant::now());
        }
    }
    let t_ack = Instant::now();
    let (sent, _sink) = sending.await??;
    let t_recv = receiving.await??;
    let ack_ms = sent.iter().zip(&acked_at).map(|(s, a)| a.saturating_duration_since(*s).as_secs_f64() * 1e3).collect();
    let r = Ingest {
        label: label.to_owned(),
        messages,
        entries: n,
        ops,
        secs: (t_recv - t0).as_secs_f64(),
        ack_secs: (t_ack - t0).as_secs_f64(),
        ack_ms,
    };
    eprintln!("    {label}: {} entries, {} ops in {} messages: {:.2} s ({:.0} entries/s, {:.0} ops/s)", r.entries, r.ops, r.messages, r.secs, r.per_sec(r.entries), r.per_sec(r.ops));
    Ok(r)
}

async fn yjs_connect(url: &str) -> Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.context("connecting to the Yjs server")?;
    ws.next().await.context("closed before the greeting")??;
    Ok(ws)
}

async fn yjs_ingest_run(server: &Server, updates: &[Vec<u8>]) -> Result<Ingest> {
    let url = format!("{}/ingest", server.ws());
    let n = updates.len();
    let mut counter = yjs_connect(&url).await?;
    let receiving = tokio::spawn(async move {
        let mut count = 0;
        while count < n {
            match tokio::time::timeout(Duration::from_secs(120), counter.next()).await.context("the receiver heard nothing for 120 s")? {
                Some(Ok(Message::Binary(b))) if yjs::is_update(&b) => count += 1,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the Yjs server closed the receiver"),
            }
        }
        anyhow::Ok(Instant::now())
    });
    let messages: Vec<Vec<u8>> = updates.iter().map(|u| yjs::update_message(u)).collect();
    let ws = yjs_connect(&url).await?;
    let (mut sink, mut stream) = ws.split();
    let t0 = Instant::now();
    let sending = tokio::spawn(async move {
        let mut sent = Vec::with_capacity(messages.len());
        for m in messages {
            sink.send(Message::Binary(m.into())).await?;
            sent.push(Instant::now());
        }
        anyhow::Ok((sent, sink))
    });
    // The server sends every update to every connection of the room, its writer included.
    let mut echoed = Vec::with_capacity(n);
    while echoed.len() < n {
        match tokio::time::timeout(Duration::from_secs(120), stream.next()).await.context("no echo for 120 s")? {
            Some(Ok(Message::Binary(b))) if yjs::is_update(&b) => echoed.push(Instant::now()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the Yjs server closed the writer"),
        }
    }
    let t_echo = Instant::now();
    let (sent, _sink) = sending.await??;
    let t_recv = receiving.await??;
    let ack_ms = sent.iter().zip(&echoed).map(|(s, a)| a.saturating_duration_since(*s).as_secs_f64() * 1e3).collect();
    let r = Ingest { label: "1 op/update, 1 update/message".into(), messages: n, entries: n, ops: n, secs: (t_recv - t0).as_secs_f64(), ack_secs: (t_echo - t0).as_secs_f64(), ack_ms };
    eprintln!("    {} updates: {:.2} s ({:.0} updates/s)", n, r.secs, r.per_sec(n));
    Ok(r)
}

/// Starts `procs` holders over `receivers` connections and waits until all are up.
async fn holders(receivers: usize, procs: usize, common: &[String], times_dir: Option<&Path>) -> Result<(Vec<Holder>, usize)> {
    let mut out = Vec::new();
    let per = receivers.div_ceil(procs);
    let mut offset = 0;
    while offset < receivers {
        let conns = per.min(receivers - offset);
        let mut args = common.to_vec();
        args.extend(["--conns".into(), conns.to_string(), "--offset".into(), offset.to_string()]);
        if let Some(d) = times_dir {
            args.extend(["--times".into(), d.join(format!("times-{offset}.bin")).display().to_string()]);
        }
        out.push(Holder::spawn(args)?);
        offset += conns;
    }
    let mut open = 0;
    for h in &mut out {
        let (ok, failed) = h.ready().await?;
        if failed > 0 {
            eprintln!("    a holder could not open {failed} of its connections");
        }
        open += ok;
    }
    Ok((out, open))
}

/// Receipt times written by the holders, in connection order.
fn read_times(dir: &Path, receivers: usize, procs: usize, expect: usize, send_us: &[u64]) -> Result<Latency> {
    let per = receivers.div_ceil(procs);
    let mut samples = Vec::with_capacity(receivers * expect);
    let mut missing = 0;
    let mut offset = 0;
    while offset < receivers {
        let bytes = std::fs::read(dir.join(format!("times-{offset}.bin")))?;
        for (i, chunk) in bytes.chunks_exact(8).enumerate() {
            let t = u64::from_le_bytes(chunk.try_into()?);
            let sent = send_us[i % expect];
            if t == 0 || sent == 0 {
                missing += 1;
            } else {
                samples.push(t.saturating_sub(sent) as f64 / 1e3);
            }
        }
        offset += per.min(receivers - offset);
    }
    Ok(Latency { samples: sorted(samples), missing })
}

async fn stead_fanout_run(server: &Server, http: &reqwest::Client, sizes: &Sizes, updates: usize, period: Duration, tmp: &Path) -> Result<Latency> {
    let dir = tmp.join(format!("fanout-stead-{}", period.as_millis()));
    std::fs::create_dir_all(&dir)?;
    let space = stead::create_space(http, &server.base, sizes.receivers).await?;
    let ids: Vec<String> = space.readers.iter().map(|d| stead::identity_line(space.id, d)).collect();
    std::fs::write(dir.join("ids.txt"), ids.join("\n"))?;
    let entries = stead::entries(&space, updates, 1)?;
    let url = format!("{}/sync", server.ws());
    let common = vec![
        "--target".into(),
        "stead".into(),
        "--url".into(),
        url.clone(),
        "--identities".into(),
        dir.join("ids.txt").display().to_string(),
        "--writer".into(),
        space.creator.replica.to_string(),
        "--expect".into(),
        updates.to_string(),
    ];
    let (hs, open) = holders(sizes.receivers, sizes.procs, &common, Some(&dir)).await?;
    eprintln!("    {open} receivers connected");
    let who = stead::Who { space: space.id, replica: space.creator.replica, signing: space.creator.signing.clone() };
    let mut writer = stead::Writer { who, entries, released: 0 };
    let (mut ws, mut sync) = stead::connect(&url, &mut writer, 256).await?;
    let mut send_us = vec![0u64; updates];
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let mut i = 0;
    let end = start + period * updates as u32 + Duration::from_secs(2);
    loop {
        let tick = start + period * i as u32;
        tokio::select! {
            _ = tokio::time::sleep_until(tick), if i < updates => {
                writer.released = i + 1;
                send_us[i] = now_us();
                stead::pump(&mut ws, &mut sync, &writer).await?;
                i += 1;
            }
            msg = ws.next() => {
                stead::take(msg, &mut sync, &mut writer)?;
            }
            _ = tokio::time::sleep_until(end) => break,
        }
    }
    for h in hs {
        h.finish().await?;
    }
    let lat = read_times(&dir, sizes.receivers, sizes.procs, updates, &send_us)?;
    eprintln!("    p50 {:.2} ms, p99 {:.2} ms, {} missing", percentile(&lat.samples, 0.5), percentile(&lat.samples, 0.99), lat.missing);
    Ok(lat)
}

async fn yjs_fanout_run(server: &Server, all: &[Vec<u8>], sizes: &Sizes, updates: usize, period: Duration, tmp: &Path) -> Result<Latency> {
    let dir = tmp.join(format!("fanout-yjs-{}", period.as_millis()));
    std::fs::create_dir_all(&dir)?;
    let common = vec![
        "--target".into(),
        "yjs".into(),
        "--url".into(),
        server.ws(),
        "--room-prefix".into(),
        format!("fanout{}-", period.as_millis()),
        "--rooms".into(),
        "1".into(),
        "--expect".into(),
        updates.to_string(),
    ];
    let (hs, open) = holders(sizes.receivers, sizes.procs, &common, Some(&dir)).await?;
    eprintln!("    {open} receivers connected");
    let mut ws = yjs_connect(&format!("{}/fanout{}-0", server.ws(), period.as_millis())).await?;
    let messages: Vec<Vec<u8>> = all.iter().take(updates).map(|u| yjs::update_message(u)).collect();
    let mut send_us = vec![0u64; updates];
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let end = start + period * updates as u32 + Duration::from_secs(2);
    let mut i = 0;
    loop {
        let tick = start + period * i as u32;
        tokio::select! {
            _ = tokio::time::sleep_until(tick), if i < messages.len() => {
                send_us[i] = now_us();
                ws.send(Message::Binary(messages[i].clone().into())).await?;
                i += 1;
            }
            msg = ws.next() => {
                if let Some(Err(e)) = msg {
                    return Err(e.into());
                }
            }
            _ = tokio::time::sleep_until(end) => break,
        }
    }
    for h in hs {
        h.finish().await?;
    }
    let lat = read_times(&dir, sizes.receivers, sizes.procs, updates, &send_us)?;
    eprintln!("    p50 {:.2} ms, p99 {:.2} ms, {} missing", percentile(&lat.samples, 0.5), percentile(&lat.samples, 0.99), lat.missing);
    Ok(lat)
}

async fn memory_only(a: MemoryArgs) -> Result<()> {
    let sizes = Sizes::new(a.quick);
    let tmp = tempfile::Builder::new().prefix("stead-bench-server").tempdir()?;
    let server = match a.target {
        Target::Stead => Server::stead(a.stead_server.as_deref().context("--stead-server is needed")?, tmp.path()).await?,
        Target::Yjs => Server::yjs(a.yjs_dir.as_deref().context("--yjs-dir is needed")?).await?,
    };
    let m = memory_run(a.target, &server, &reqwest::Client::new(), &sizes, tmp.path()).await?;
    server.stop().await?;
    println!("{}: {:.2} KB per idle connection; held {} of {} sockets", a.target.name(), m.slope() / 1024.0, m.held, m.tried);
    Ok(())
}

async fn memory_run(target: Target, server: &Server, http: &reqwest::Client, sizes: &Sizes, tmp: &Path) -> Result<Memory> {
    let dir = tmp.join(format!("memory-{}", target.name()));
    std::fs::create_dir_all(&dir)?;
    let mut common = vec!["--target".into(), target.name().into()];
    match target {
        Target::Stead => {
            let mut ids = Vec::new();
            for _ in 0..sizes.spaces {
                let s = stead::create_space(http, &server.base, 0).await?;
                ids.push(stead::identity_line(s.id, &s.creator));
            }
            std::fs::write(dir.join("ids.txt"), ids.join("\n"))?;
            common.extend(["--url".into(), format!("{}/sync", server.ws()), "--identities".into(), dir.join("ids.txt").display().to_string()]);
        }
        Target::Yjs => {
            common.extend(["--url".into(), server.ws(), "--room-prefix".into(), "mem".into(), "--rooms".into(), sizes.spaces.to_string()]);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut points = vec![(0, server.rss()?)];
    let mut hs: Vec<Holder> = Vec::new();
    let (mut prev, mut open) = (0, 0);
    for &step in &sizes.memory_steps {
        let mut args = common.clone();
        args.extend(["--conns".into(), (step - prev).to_string(), "--offset".into(), prev.to_string()]);
        let mut h = Holder::spawn(args)?;
        let (ok, failed) = h.ready().await?;
        if failed > 0 {
            eprintln!("    {failed} of {} connections failed", step - prev);
        }
        hs.push(h);
        open += ok;
        prev = step;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = server.rss()?;
        eprintln!("    {open} idle connections: RSS {:.1} MB", rss as f64 / 1048576.0);
        points.push((open, rss));
    }
    let mut held = 0;
    for h in &mut hs {
        held += h.open().await?;
    }
    for h in hs {
        h.finish().await?;
    }
    let tried = prev;
    Ok(Memory { points, held, tried })
}

// ---------------------------------------------------------------------------------------
// Output

#[allow(clippy::too_many_arguments)]
fn report(a: &RunArgs, sizes: &Sizes, si: &[Ingest], yi: &Ingest, sf: &[Latency], yf: &[Latency], sm: &Memory, ym: &Memory) -> Result<()> {
    let mut csv = String::from("server,workload,metric,value,unit\n");
    let mut row = |server: &str, workload: &str, metric: &str, value: f64, unit: &str| {
        csv.push_str(&format!("{server},\"{workload}\",{metric},{value},{unit}\n"));
    };
    for (server, ing) in si.iter().map(|i| ("stead", i)).chain([("yjs", yi)]) {
        let acks = sorted(ing.ack_ms.clone());
        row(server, &ing.label, "messages", ing.messages as f64, "count");
        row(server, &ing.label, "entries", ing.entries as f64, "count");
        row(server, &ing.label, "ops", ing.ops as f64, "count");
        row(server, &ing.label, "seconds_to_last_receipt", ing.secs, "s");
        row(server, &ing.label, "seconds_to_last_ack", ing.ack_secs, "s");
        row(server, &ing.label, "entries_per_s", ing.per_sec(ing.entries), "1/s");
        row(server, &ing.label, "ops_per_s", ing.per_sec(ing.ops), "1/s");
        row(server, &ing.label, "ack_p50", percentile(&acks, 0.5), "ms");
        row(server, &ing.label, "ack_p99", percentile(&acks, 0.99), "ms");
    }
    for (server, f, &(updates, period)) in sf.iter().map(|f| ("stead", f)).chain(yf.iter().map(|f| ("yjs", f))).zip(sizes.fanout.iter().cycle()).map(|((s, f), p)| (s, f, p)) {
        let w = format!("fan-out {} receivers, {updates} updates at {:.0}/s", sizes.receivers, 1.0 / period.as_secs_f64());
        row(server, &w, "p50", percentile(&f.samples, 0.5), "ms");
        row(server, &w, "p99", percentile(&f.samples, 0.99), "ms");
        row(server, &w, "max", percentile(&f.samples, 1.0), "ms");
        row(server, &w, "missing", f.missing as f64, "count");
    }
    for (server, m) in [("stead", sm), ("yjs", ym)] {
        let w = format!("idle connections over {} spaces/rooms", sizes.spaces);
        for (n, rss) in &m.points {
            row(server, &w, &format!("rss_at_{n}"), *rss as f64, "bytes");
        }
        row(server, &w, "bytes_per_connection", m.slope(), "bytes");
        row(server, &w, "sockets_held", m.held as f64, "count");
    }
    if let Some(parent) = a.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&a.out, csv)?;

    let y_rate = yi.per_sec(yi.ops);
    println!();
    println!("bench server{}: stead-server vs the Yjs WebSocket server ({}), same machine, same run", if a.quick { " --quick" } else { "" }, a.yjs_versions);
    println!("  Stead acks an entry only after its SQLite transaction committed (WAL, synchronous=FULL);");
    println!("  y-websocket-server keeps documents in memory only: nothing it acknowledges or relays is durable.");
    println!("  Load generator: Rust (tokio-tungstenite) for both servers; Yjs updates made beforehand by yjs");
    println!("  in node, Stead entries (signed, encrypted) beforehand by a real replica; receivers count without");
    println!("  applying. stead-server runs with --frames-per-sec raised (the per-connection abuse limit).");
    println!();
    println!("  ingest: one writer, a second client counts; first send to last receipt");
    for i in si {
        let acks = sorted(i.ack_ms.clone());
        println!(
            "    stead  {:<36} {:>7} entries {:>7} ops {:>6} msgs  {:>9.0} entries/s {:>10.0} ops/s  ack p50 {:.1} ms  ×{:.2} Yjs ops/s",
            i.label,
            i.entries,
            i.ops,
            i.messages,
            i.per_sec(i.entries),
            i.per_sec(i.ops),
            percentile(&acks, 0.5),
            i.per_sec(i.ops) / y_rate
        );
    }
    let yacks = sorted(yi.ack_ms.clone());
    println!(
        "    yjs    {:<36} {:>7} updates         {:>6} msgs  {:>9.0} updates/s                   echo p50 {:.1} ms (in memory)",
        yi.label,
        yi.entries,
        yi.messages,
        y_rate,
        percentile(&yacks, 0.5)
    );
    println!("    Stead batches as its client does under load: the sync protocol packs every entry not yet sent");
    println!("    into one frame (≤256), and an app may put many ops in one entry; the ack p50 above is the latency");
    println!("    a write sees from its frame's send to its durable ack.");
    println!();
    for (i, &(updates, period)) in sizes.fanout.iter().enumerate() {
        let (sf, yf) = (&sf[i], &yf[i]);
        let rate = 1.0 / period.as_secs_f64();
        println!("  fan-out: {} receivers in {} processes, {updates} updates at {rate:.0}/s (Stead: delivered after the commit)", sizes.receivers, sizes.procs);
        let mut saturated = Vec::new();
        for (name, f) in [("stead", sf), ("yjs", yf)] {
            let sat = percentile(&f.samples, 0.5) > SATURATED_MS || f.missing > 0;
            if sat {
                saturated.push(name);
            }
            println!(
                "    {name:<6} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms  ({} samples, {} missing){}",
                percentile(&f.samples, 0.5),
                percentile(&f.samples, 0.99),
                percentile(&f.samples, 1.0),
                f.samples.len(),
                f.missing,
                if sat { "  SATURATED" } else { "" }
            );
        }
        if saturated.is_empty() {
            println!(
                "    Stead/Yjs  p50 ×{:.2}  p99 ×{:.2} (Yjs: in memory, not durable)",
                percentile(&sf.samples, 0.5) / percentile(&yf.samples, 0.5),
                percentile(&sf.samples, 0.99) / percentile(&yf.samples, 0.99)
            );
        } else {
            println!(
                "    no ratio: {} could not keep up at {rate:.0}/s on this machine (p50 above {SATURATED_MS:.0} ms or updates missing),",
                saturated.join(" and ")
            );
            println!("    so the figures measure a growing queue, not delivery latency");
        }
        println!();
    }
    println!("  memory: server RSS with idle connections over {} spaces/rooms (least-squares slope)", sizes.spaces);
    for (name, m) in [("stead", sm), ("yjs", ym)] {
        let pts: Vec<String> = m.points.iter().map(|(n, r)| format!("{n}: {:.1} MB", *r as f64 / 1048576.0)).collect();
        println!("    {name:<6} {:>6.1} KB/connection; held {} of {} sockets  [{}]", m.slope() / 1024.0, m.held, m.tried, pts.join(", "));
    }
    let mem_ratio = sm.slope() / ym.slope();
    println!("    Stead/Yjs ×{mem_ratio:.2} per connection");
    println!();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!("  goals (issue 4):");
    println!("    ≥5× y-websocket throughput (Stead durable, Yjs in memory):");
    for i in si {
        let r = i.per_sec(i.ops) / y_rate;
        println!("      {:<36} ops/s ×{r:.2} — {}", i.label, verdict(r >= 5.0));
    }
    println!("    ≤1/3 its memory per connection: ×{mem_ratio:.2} — {}", verdict(mem_ratio <= 1.0 / 3.0));
    let target = *sizes.memory_steps.last().unwrap_or(&0);
    println!("    {target} sockets held: Stead {} — {}", sm.held, verdict(sm.held >= target));
    println!("  raw numbers: {}", a.out.display());
    Ok(())
}
