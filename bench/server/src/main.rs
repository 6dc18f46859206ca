//! `bench-server`: stead-server against the Yjs WebSocket server under the same load
//! (BENCH.md, "Sync server"), run by `cargo xtask bench server`.
//!
//! `bench-server run` measures, each sample on a fresh server process on 127.0.0.1 and the
//! systems in the interleaved order of `stead_bench_harness::order`: ingest (after one
//! unrecorded warm-up pass of each system) of the same count of one-op writes (Stead batched as its sync sends, Stead and Yjs one write per
//! message) with the same messages through `bench-server null`, a protocol-free relay whose
//! rate is the load generator's ceiling; latency from an app's write to its ack at a steady
//! rate; fan-out latency and server CPU per delivery at 50/s and 5/s to many receivers held
//! by several single-threaded `bench-server hold` processes; fan-out p50/p99 at 50/s against
//! the receiver count (100 to 10,000), with the null relay's floor at each count; and server
//! RSS per idle connection up to 10,000 sockets. The load generator is this Rust program for both
//! servers (TCP_NODELAY, no flush per message, reads and writes in separate tasks); the Yjs
//! updates are made beforehand by yjs itself (`js/gen-updates.mjs`) and Stead's entries by
//! a real replica, so neither side's client-side encoding is timed. Results go through the
//! shared harness: a table of medians and ranges, `server.csv` and `server.json`.
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
use stead_bench_harness::stats::percentile;
use stead_bench_harness::{Better, Curve, Environment, Key, RatioSpec, SuiteResult, order::{interleaved, warmed_up}};

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
    /// The null server the load generator is calibrated against: relays each message to
    /// the other connections on the same path, nothing else.
    Null,
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
    /// The folder for server.csv and server.json.
    #[arg(long)]
    out: PathBuf,
    /// Smaller workloads and fewer repetitions, for a quick look.
    #[arg(long)]
    quick: bool,
    /// Repetitions per system (default 5; 3 with --quick).
    #[arg(long)]
    reps: Option<usize>,
    /// Only these workloads (ingest, paced, fanout, clients, memory); all when none is given.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Receiver counts of the fan-out-against-clients curve, instead of the size's default
    /// (100, 1,000, 3,000, 10,000; 100, 500 with --quick).
    #[arg(long, value_delimiter = ',')]
    clients: Vec<usize>,
    /// One-op writes per ingest pass, instead of the size's default (100,000; 5,000 with --quick).
    #[arg(long)]
    ingest_ops: Option<usize>,
    /// Only these systems (null, stead, stead-batched, stead-single, yjs), for a quick
    /// before/after of one server while working on it; all when none is given.
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Only the fan-out passes at these rates per second (50, 5); all when none is given.
    #[arg(long, value_delimiter = ',')]
    fanout_rates: Vec<u32>,
}

impl RunArgs {
    fn wants(&self, workload: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|w| w == workload)
    }

    fn runs(&self, system: &str) -> bool {
        self.systems.is_empty() || self.systems.iter().any(|s| s == system)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Stead,
    Yjs,
    /// The null relay: no handshake, every message counts.
    Null,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Stead => "stead",
            Target::Yjs => "yjs",
            Target::Null => "null",
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
    // Holders are light receivers: one thread each, as a browser tab's client would be.
    let rt = match cli.command {
        Cmd::Hold(_) => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
    };
    match cli.command {
        Cmd::Run(a) => {
            eprintln!("  open files: soft limit {soft}, hard {hard}");
            rt.block_on(run(a))
        }
        Cmd::Hold(a) => rt.block_on(hold(a)),
        Cmd::Memory(a) => rt.block_on(memory_only(a)),
        Cmd::Null => rt.block_on(null_server()),
    }
}

/// Connects with Nagle's algorithm off, as both servers' real clients should be measured.
pub async fn ws_connect(url: &str) -> Result<Ws> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await.with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

/// A WebSocket relay with no protocol: every binary message goes to the other connections
/// on the same path. Prints `listening on http://127.0.0.1:PORT` like stead-server.
// The handshake callback's error type is tungstenite's, large or not.
#[allow(clippy::result_large_err)]
async fn null_server() -> Result<()> {
    use std::collections::HashMap;
    use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
    type Rooms = Arc<std::sync::Mutex<HashMap<String, Vec<(usize, UnboundedSender<Message>)>>>>;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on http://{}", listener.local_addr()?);
    let rooms: Rooms = Arc::default();
    let mut next = 0usize;
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        next += 1;
        let (id, rooms) = (next, rooms.clone());
        tokio::spawn(async move {
            let mut path = String::new();
            let callback = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                path = req.uri().path().to_owned();
                Ok(resp)
            };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else { return };
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = unbounded_channel::<Message>();
            rooms.lock().map(|mut r| r.entry(path.clone()).or_default().push((id, tx))).ok();
            let writer = tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                    // Flush only when nothing else is queued: no per-message flush.
                    while let Ok(m) = rx.try_recv() {
                        if sink.feed(m).await.is_err() {
                            return;
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
            });
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Binary(b) = msg
                    && let Ok(r) = rooms.lock()
                {
                    for (other, tx) in r.get(&path).into_iter().flatten() {
                        if *other != id {
                            let _ = tx.send(Message::Binary(b.clone()));
                        }
                    }
                }
            }
            if let Ok(mut r) = rooms.lock()
                && let Some(v) = r.get_mut(&path)
            {
                v.retain(|(o, _)| *o != id);
            }
            writer.abort();
        });
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
            // Fan-out to 10,000 receivers makes each a member of one space: 10,000 membership
            // events, past the default bounds (4,096 events, 1 MiB) that guard against abuse.
            .args(["--max-membership-events", "100000", "--max-membership-bytes", "67108864"])
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

    async fn null() -> Result<Server> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("null")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the null server")?;
        let line = first_line(&mut child).await?;
        let base = line.strip_prefix("listening on ").with_context(|| format!("the null server said {line:?}"))?.to_owned();
        let pid = child.id().context("no pid")?;
        Ok(Server { child, pid, base })
    }

    /// User plus system CPU seconds the process has used, from /proc/PID/stat.
    fn cpu_secs(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the command name (which may hold spaces) start at field 3.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).context("bad /proc stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11).context("no utime")?.parse::<f64>()? + f.get(12).context("no stime")?.parse::<f64>()?;
        Ok(ticks / clock_ticks())
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

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
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
            Target::Yjs | Target::Null => format!("{}/{}{}", a.url, a.room_prefix, n % a.rooms.max(1)),
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
                            let mut ws = ws_connect(&url).await?;
                            if target == Target::Yjs {
                                yjs::handshake(&mut ws).await?;
                            }
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
                                        if target == Target::Null || yjs::is_update(&b) {
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
    /// One-op writes in every ingest pass, the same count for both servers.
    ingest_ops: usize,
    receivers: usize,
    procs: usize,
    /// Fan-out passes: (updates, interval between them). BENCH.md's pass is 50/s; the slower
    /// pass shows delivery when neither server is near saturation on 2 shared cores. Both
    /// are always reported.
    fanout: Vec<(usize, Duration)>,
    memory_steps: Vec<usize>,
    /// Fan-out p99 against clients: receiver counts, and updates per pass at 50/s.
    clients: Vec<usize>,
    clients_updates: usize,
    spaces: usize,
    /// Steady writes: how many, at what rate per second.
    paced_writes: usize,
    paced_rate: f64,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                ingest_ops: 5_000,
                receivers: 100,
                procs: 2,
                fanout: vec![(100, FANOUT_PERIOD), (15, SUSTAINED_PERIOD)],
                memory_steps: vec![100, 500, 1000],
                clients: vec![100, 500],
                clients_updates: 50,
                spaces: 10,
                paced_writes: 2_000,
                paced_rate: 1000.0,
            }
        } else {
            Sizes {
                ingest_ops: 100_000,
                receivers: 1_000,
                procs: 4,
                fanout: vec![(1_000, FANOUT_PERIOD), (200, SUSTAINED_PERIOD)],
                memory_steps: vec![1_000, 5_000, 10_000],
                clients: vec![100, 1_000, 3_000, 10_000],
                clients_updates: 250,
                spaces: 100,
                paced_writes: 10_000,
                paced_rate: 1000.0,
            }
        }
    }
}

const FANOUT_PERIOD: Duration = Duration::from_millis(20); // 50 updates/s
const SUSTAINED_PERIOD: Duration = Duration::from_millis(200); // 5 updates/s

/// A fan-out pass counts as saturated when latency grew past this (a queue, not a delivery time).
const SATURATED_MS: f64 = 1000.0;

/// One ingest measurement.
struct Ingest {
    messages: usize,
    entries: usize,
    ops: usize,
    /// First send to last receipt by the second client.
    secs: f64,
    /// Per message/frame: send to its ack (Stead) or echo (Yjs), in ms.
    ack_ms: Vec<f64>,
}

impl Ingest {
    fn per_sec(&self, n: usize) -> f64 {
        n as f64 / self.secs
    }
}

/// One fan-out pass: `updates` sent one per `period` to `receivers` connections held by
/// `procs` processes.
#[derive(Clone, Copy)]
struct Pass {
    receivers: usize,
    procs: usize,
    updates: usize,
    period: Duration,
}

struct Latency {
    samples: Vec<f64>,
    missing: usize,
    /// Each missing delivery's age when the pass ended, in ms: a lower bound of its latency.
    censored: Vec<f64>,
    /// Server CPU seconds (user + system) from the first send to the end of the pass.
    cpu: f64,
}

impl Latency {
    /// Every expected delivery, the missing ones at their age when the pass ended: the
    /// percentiles of a saturated pass as lower bounds instead of those of the lucky few.
    fn with_missing(&self) -> Vec<f64> {
        sorted(self.samples.iter().chain(&self.censored).copied().collect())
    }
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

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// "name version, name version" as (name, version) pairs.
fn anchors(list: &str) -> Vec<(String, String)> {
    list.split(',')
        .filter_map(|a| a.trim().rsplit_once(' ').map(|(n, v)| (n.to_owned(), v.to_owned())))
        .collect()
}

/// The ingest systems, in round order: the null server calibrates the load generator.
const INGEST: [&str; 4] = ["null", "stead-batched", "stead-single", "yjs"];
const TWO: [&str; 2] = ["stead", "yjs"];
/// The fan-out systems, in round order: the null relay gives the generator's delivery floor.
const FANOUT: [&str; 3] = ["null", "stead", "yjs"];
const NOT_DURABLE: &str = "Yjs: in memory only, not durable";

async fn run(a: RunArgs) -> Result<()> {
    let started = Instant::now();
    let mut sizes = Sizes::new(a.quick);
    if let Some(n) = a.ingest_ops {
        sizes.ingest_ops = n;
    }
    if !a.clients.is_empty() {
        sizes.clients = a.clients.clone();
    }
    let reps = a.reps.unwrap_or(if a.quick { 3 } else { 5 });
    let mut r = SuiteResult::new("server", a.quick, reps, Environment::detect(anchors(&a.yjs_versions)));
    let tmp = tempfile::Builder::new().prefix("stead-bench-server").tempdir()?;
    let http = reqwest::Client::new();

    eprintln!("  yjs: making {} updates with yjs (gen-updates.mjs)", sizes.ingest_ops);
    let updates_file = tmp.path().join("updates.bin");
    let status = Command::new("node").arg("gen-updates.mjs").arg(sizes.ingest_ops.to_string()).arg(&updates_file).current_dir(&a.yjs_dir).status().await?;
    anyhow::ensure!(status.success(), "gen-updates.mjs failed");
    let updates = yjs::read_updates(&updates_file)?;

    // Ingest, with the generator's ceiling: every sample on a fresh server process.
    if a.wants("ingest") {
        let w = "ingest";
        // A warm-up pass of each system first, not recorded: in a full run Stead's
        // single-message rounds sped up one after another (4.24 s to 2.95 s).
        for (round, s) in warmed_up(INGEST.len(), reps) {
            let system = INGEST[s];
            if !a.runs(system) {
                continue;
            }
            let dir = tmp.path().join(format!("ingest-{}-{system}", round.map_or("warm-up".to_owned(), |r| r.to_string())));
            let i = match system {
                "null" => {
                    let server = Server::null().await?;
                    let i = relay_ingest_run(&server, &updates, false).await?;
                    server.stop().await?;
                    i
                }
                "yjs" => {
                    let server = Server::yjs(&a.yjs_dir).await?;
                    let i = relay_ingest_run(&server, &updates, true).await?;
                    server.stop().await?;
                    i
                }
                _ => {
                    let server = Server::stead(&a.stead_server, &dir).await?;
                    let max_entries = if system == "stead-batched" { 256 } else { 1 };
                    let i = stead_ingest_run(&server, &http, sizes.ingest_ops, max_entries).await?;
                    server.stop().await?;
                    i
                }
            };
            let Some(round) = round else {
                eprintln!("    warm-up {system:<14} {} ops in {} messages: {:.3} s (not recorded)", i.ops, i.messages, i.secs);
                continue;
            };
            let acks = sorted(i.ack_ms.clone());
            eprintln!("    round {round} {system:<14} {} ops in {} messages: {:.3} s, {:.0} ops/s", i.ops, i.messages, i.secs, i.per_sec(i.ops));
            r.add(w, "ops/s", system, round, i.per_sec(i.ops), "1/s");
            r.add(w, "ops per message", system, round, i.ops as f64 / i.messages as f64, "ops");
            r.add(w, "entries", system, round, i.entries as f64, "count");
            if system != "null" {
                r.add(w, "ack p50", system, round, percentile(&acks, 0.5), "ms");
                r.add(w, "ack p99", system, round, percentile(&acks, 0.99), "ms");
            }
        }
    }

    // Steady writes: the latency an app sees from its write to the ack, batching included.
    if a.wants("paced") {
        let w = format!("writes at {:.0}/s", sizes.paced_rate);
        for (round, s) in interleaved(TWO.len(), reps) {
            let system = TWO[s];
            let (target, server) = if system == "stead" {
                (Target::Stead, Server::stead(&a.stead_server, &tmp.path().join(format!("paced-{round}"))).await?)
            } else {
                (Target::Yjs, Server::yjs(&a.yjs_dir).await?)
            };
            let lat = paced_run(target, &server, &http, &updates, sizes.paced_writes, sizes.paced_rate).await?;
            server.stop().await?;
            let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
            eprintln!("    {w} round {round} {system:<6} write to ack p50 {p50:.2} ms, p99 {p99:.2} ms");
            r.add(&w, "write to ack p50", system, round, p50, "ms");
            r.add(&w, "write to ack p99", system, round, p99, "ms");
        }
    }

    // Fan-out, at both rates.
    let mut saturated = Vec::new();
    if a.wants("fanout") {
        eprintln!("  fan-out to {} receivers in {} processes", sizes.receivers, sizes.procs);
        for &(updates_n, period) in &sizes.fanout {
            let rate = 1.0 / period.as_secs_f64();
            if !a.fanout_rates.is_empty() && !a.fanout_rates.contains(&(rate.round() as u32)) {
                continue;
            }
            let w = format!("fan-out {rate:.0}/s");
            for (round, s) in interleaved(FANOUT.len(), reps) {
                let system = FANOUT[s];
                if !a.runs(system) {
                    continue;
                }
                let dir = tmp.path().join(format!("fanout-{rate:.0}-{round}-{system}"));
                let pass = Pass { receivers: sizes.receivers, procs: sizes.procs, updates: updates_n, period };
                let lat = fanout_pass(system, &a, &http, &updates, pass, &dir).await?;
                let (p50, p99) = (percentile(&lat.samples, 0.5), percentile(&lat.samples, 0.99));
                let cpu_per_k = lat.cpu / lat.samples.len().max(1) as f64 * 1000.0;
                eprintln!(
                    "    {w} round {round} {system:<6} p50 {p50:.2} ms, p99 {p99:.2} ms, {} missing, {:.3} CPU s per 1,000 deliveries",
                    lat.missing, cpu_per_k
                );
                if p50 > SATURATED_MS || lat.missing > 0 {
                    saturated.push(format!("{w} round {round} {system}"));
                }
                r.add(&w, "p50", system, round, p50, "ms");
                r.add(&w, "p99", system, round, p99, "ms");
                r.add(&w, "max", system, round, percentile(&lat.samples, 1.0), "ms");
                r.add(&w, "missing", system, round, lat.missing as f64, "count");
                r.add(&w, "CPU s per 1000 deliveries", system, round, cpu_per_k, "s");
            }
        }
    }

    // Fan-out p99 against clients: the 50/s pass at each receiver count, every (count,
    // system) pair once per round in the interleaved order, each on a fresh server.
    let mut clients = Vec::new();
    if a.wants("clients") {
        let t = Instant::now();
        // The server holds every receiver's socket, each holder its share: stay clear of the open-file limit.
        let (nofile, _) = rlimit::Resource::NOFILE.get()?;
        let (fit, over): (Vec<usize>, Vec<usize>) = sizes.clients.iter().copied().partition(|&n| (n + 1_000) as u64 <= nofile);
        if !over.is_empty() {
            let line = format!("fan-out against clients: {over:?} receivers left out: the open-file limit is {nofile}");
            eprintln!("  {line}");
            r.notes.push(line);
        }
        let period = FANOUT_PERIOD;
        let rate = 1.0 / period.as_secs_f64();
        eprintln!("  fan-out p99 against clients: {:?} receivers in {} processes, {} updates at {rate:.0}/s per pass", fit, sizes.procs, sizes.clients_updates);
        for (round, k) in interleaved(fit.len() * FANOUT.len(), reps) {
            let (n, system) = (fit[k / FANOUT.len()], FANOUT[k % FANOUT.len()]);
            let w = format!("fan-out {rate:.0}/s, {n} receivers");
            let dir = tmp.path().join(format!("clients-{n}-{round}-{system}"));
            let pass = Pass { receivers: n, procs: sizes.procs, updates: sizes.clients_updates, period };
            let lat = fanout_pass(system, &a, &http, &updates, pass, &dir).await?;
            let all = lat.with_missing();
            let (p50, p99) = (percentile(&all, 0.5), percentile(&all, 0.99));
            let bound = if lat.missing > 0 { " (lower bounds: missing counted at their age when the pass ended)" } else { "" };
            eprintln!("    {w} round {round} {system:<6} p50 {p50:.2} ms, p99 {p99:.2} ms, {} missing{bound}", lat.missing);
            if p50 > SATURATED_MS || lat.missing > 0 {
                saturated.push(format!("{w} round {round} {system}"));
            }
            r.add(&w, "p50", system, round, p50, "ms");
            r.add(&w, "p99", system, round, p99, "ms");
            r.add(&w, "missing", system, round, lat.missing as f64, "count");
        }
        clients = fit;
        eprintln!("  fan-out against clients took {:.0} s", t.elapsed().as_secs_f64());
    }

    // Idle connections: server RSS as they grow.
    let mut rss: Vec<Vec<(usize, u64)>> = vec![Vec::new(), Vec::new()];
    if a.wants("memory") {
        eprintln!("  memory per idle connection over {} spaces/rooms", sizes.spaces);
        for (round, s) in interleaved(TWO.len(), reps) {
            let system = TWO[s];
            let (target, server) = if system == "stead" {
                (Target::Stead, Server::stead(&a.stead_server, &tmp.path().join(format!("memory-{round}"))).await?)
            } else {
                (Target::Yjs, Server::yjs(&a.yjs_dir).await?)
            };
            let m = memory_run(target, &server, &http, &sizes, &tmp.path().join(format!("memory-{round}-{system}"))).await?;
            server.stop().await?;
            eprintln!("    round {round} {system:<6} {:.2} KB per connection, held {} of {}", m.slope() / 1024.0, m.held, m.tried);
            r.add("memory", "KB per idle connection", system, round, m.slope() / 1024.0, "KB");
            r.add("memory", "sockets held", system, round, m.held as f64, "count");
            rss[s].extend(m.points);
        }
    }

    let ratio = |name: String, w: &str, metric: &str, num: &str, den: &str, better: Better, goal: Option<f64>, note: &str| RatioSpec {
        name,
        num: Key::new(w, metric, num),
        den: Key::new(w, metric, den),
        better,
        goal,
        note: note.into(),
    };
    r.ratio(ratio("ingest ops/s, stead batched / yjs".into(), "ingest", "ops/s", "stead-batched", "yjs", Better::Higher, Some(5.0), NOT_DURABLE));
    r.ratio(ratio("ingest ops/s, one write per message, stead / yjs".into(), "ingest", "ops/s", "stead-single", "yjs", Better::Higher, Some(2.0), NOT_DURABLE));
    for system in ["stead-batched", "stead-single", "yjs"] {
        r.ratio(ratio(
            format!("ingest ops/s, {system} / null server (generator ceiling)"),
            "ingest",
            "ops/s",
            system,
            "null",
            Better::Higher,
            None,
            "near 1 would measure the generator",
        ));
    }
    let w = format!("writes at {:.0}/s", sizes.paced_rate);
    for metric in ["write to ack p50", "write to ack p99"] {
        r.ratio(ratio(format!("{w}: {metric}, stead / yjs"), &w, metric, "stead", "yjs", Better::Lower, None, "Stead: durable ack; Yjs: echo"));
    }
    for &(_, period) in &sizes.fanout {
        let w = format!("fan-out {:.0}/s", 1.0 / period.as_secs_f64());
        for metric in ["p50", "p99", "CPU s per 1000 deliveries"] {
            r.ratio(ratio(format!("{w}: {metric}, stead / yjs"), &w, metric, "stead", "yjs", Better::Lower, Some(1.0), NOT_DURABLE));
        }
        if let Some(floor) = r.summary(&Key::new(&w, "p50", "null")) {
            r.notes.push(format!(
                "{w}: the generator's delivery floor through the null relay, same receivers: p50 median {:.2} ms ({:.2} – {:.2})",
                floor.median, floor.min, floor.max
            ));
        }
    }
    r.ratio(ratio("memory per idle connection, stead / yjs".into(), "memory", "KB per idle connection", "stead", "yjs", Better::Lower, Some(1.0 / 3.0), ""));

    if a.wants("memory") {
        // RSS against connections: the median at each step over the repetitions.
        let mut series = Vec::new();
        for (s, name) in TWO.iter().enumerate() {
            let mut steps: Vec<usize> = rss[s].iter().map(|p| p.0).collect();
            steps.sort();
            steps.dedup();
            let pts = steps
                .iter()
                .filter_map(|&n| {
                    let v: Vec<f64> = rss[s].iter().filter(|p| p.0 == n).map(|p| p.1 as f64 / 1048576.0).collect();
                    stead_bench_harness::stats::median(&v).map(|m| (n as f64, m))
                })
                .collect();
            series.push((name.to_string(), pts));
        }
        r.curves.push(Curve { name: "server RSS with idle connections".into(), x_label: "open connections".into(), y_label: "RSS (MB)".into(), series });
    }

    r.notes.push(format!(
        "ingest: {} one-op writes per pass for every system; one writer, a second client counts; first send to last receipt. \
         stead-batched packs ≤ 256 entries (1 op each) per message as its sync does under load; stead-single and Yjs send one write per message. \
         Senders feed without a flush per message, TCP_NODELAY on, reading and writing in separate tasks.",
        sizes.ingest_ops
    ));
    if let Some(ceiling) = r.summary(&Key::new("ingest", "ops/s", "null")) {
        let fastest = ["stead-batched", "stead-single", "yjs"]
            .iter()
            .filter_map(|s| r.summary(&Key::new("ingest", "ops/s", s)).map(|x| (s, x.max)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let mut line = format!(
            "load generator ceiling (null relay, same messages): median {:.0} msgs/s ({:.0} – {:.0})",
            ceiling.median, ceiling.min, ceiling.max
        );
        if let Some((s, best)) = fastest
            && best > ceiling.min / 2.0
        {
            line.push_str(&format!("; WARNING: {s} reached {best:.0}/s, over half the ceiling: its ratio partly measures the generator"));
        }
        eprintln!("  {line}");
        r.notes.insert(0, line);
    }
    r.notes.push("Stead acks a write only after its SQLite transaction committed (WAL, synchronous=FULL); the Yjs WebSocket server keeps documents in memory only: nothing it acknowledges or relays is durable".into());
    if !clients.is_empty() {
        let rate = 1.0 / FANOUT_PERIOD.as_secs_f64();
        let mut p99s = Vec::new();
        for metric in ["p99", "p50"] {
            let series: Vec<(String, Vec<(f64, f64)>)> = FANOUT
                .iter()
                .map(|&system| {
                    let pts = clients
                        .iter()
                        .filter_map(|&n| r.summary(&Key::new(&format!("fan-out {rate:.0}/s, {n} receivers"), metric, system)).map(|s| (n as f64, s.median)))
                        .collect();
                    let name = if system == "null" { "null relay (generator floor)".to_owned() } else { system.to_owned() };
                    (name, pts)
                })
                .collect();
            if metric == "p99" {
                p99s = series.clone();
            }
            r.curves.push(Curve {
                name: format!("fan-out {metric} at {rate:.0} updates/s against receivers ({} updates per pass)", sizes.clients_updates),
                x_label: "receivers on one space/document".into(),
                y_label: format!("{metric} delivery latency (ms)"),
                series,
            });
        }
        let mut line = format!("fan-out p99 against receivers at {rate:.0}/s (median of {reps}):");
        for (system, pts) in &p99s {
            let pts: Vec<String> = pts.iter().map(|(n, ms)| format!("{n:.0}: {ms:.1} ms")).collect();
            line.push_str(&format!(" {system} {};", pts.join(", ")));
        }
        eprintln!("  {line}");
        r.notes.push(line);
        r.notes.push(format!(
            "fan-out against clients: receivers {clients:?} in {} single-threaded processes, {} updates at {rate:.0}/s per pass, one fresh server per pass; \
             Stead's space has every receiver as a member (its membership limits raised for the bench); the null relay is the generator's floor at that count; \
             a delivery still missing 2 s after the last send counts at its age then, so a saturated point (listed below) is a lower bound",
            sizes.procs, sizes.clients_updates
        ));
    }
    r.notes.push(format!(
        "writes at {0:.0}/s: {1} one-op writes, each due at its own time; the sender wakes every 1 ms and sends all that is due \
         (Stead packs them into one frame, Yjs one message each); latency from when a write was due to its durable ack (Stead) or echo (Yjs)",
        sizes.paced_rate, sizes.paced_writes
    ));
    r.notes.push("ack p50/p99: from a message's send to its durable ack (Stead) or its echo (Yjs); `ops per message` is the batch size".into());
    r.notes.push("ingest: one warm-up pass of each system ran before the recorded rounds and is not recorded".into());
    r.notes.push(format!(
        "fan-out: {} receivers in {} single-threaded processes, passes {:?}; CPU: the server's user+system seconds from /proc/PID/stat per 1,000 deliveries",
        sizes.receivers,
        sizes.procs,
        sizes.fanout.iter().map(|(n, p)| format!("{n} updates at {:.0}/s", 1.0 / p.as_secs_f64())).collect::<Vec<_>>()
    ));
    r.notes.push(format!("memory: RSS at {:?} idle connections; Yjs holders finish the sync handshake both ways", sizes.memory_steps));
    if !saturated.is_empty() {
        r.notes.push(format!(
            "SATURATED (p50 above {SATURATED_MS:.0} ms or updates missing: a growing queue, not delivery latency): {}",
            saturated.join(", ")
        ));
    }
    r.seconds = started.elapsed().as_secs_f64();
    r.finish(&a.out)
}

async fn stead_ingest_run(server: &Server, http: &reqwest::Client, ops: usize, max_entries: usize) -> Result<Ingest> {
    let url = format!("{}/sync", server.ws());
    let space = stead::create_space(http, &server.base, 1).await?;
    let entries = stead::entries(&space, ops, 1)?;
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
            let msg = tokio::time::timeout(Duration::from_secs(300), rws.next()).await.context("the receiver heard nothing for 300 s")?;
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
    let (sink, mut stream) = ws.split();
    let t0 = Instant::now();
    let sending = tokio::spawn(send_all(sink, frames));
    let me = space.creator.replica;
    let mut acked_at = Vec::with_capacity(last.len());
    while acked_at.len() < last.len() {
        let msg = tokio::time::timeout(Duration::from_secs(300), stream.next()).await.context("no ack for 300 s")?;
        stead::take(msg, &mut sync, &mut writer)?;
        let acked = sync.acked().get(&me).copied().unwrap_or(0);
        while acked_at.len() < last.len() && acked >= last[acked_at.len()] {
            acked_at.push(Instant::now());
        }
    }
    let sent = sending.await??;
    let t_recv = receiving.await??;
    let ack_ms = sent.iter().zip(&acked_at).map(|(s, a)| a.saturating_duration_since(*s).as_secs_f64() * 1e3).collect();
    Ok(Ingest { messages, entries: n, ops, secs: (t_recv - t0).as_secs_f64(), ack_ms })
}

/// Writes at a steady rate, as an app would: each write is due at `start + k / rate` and
/// sent at the next 1 ms tick with every other write then due (Stead's sync packs them into
/// one frame; Yjs sends one message per update). Latency runs from the moment a write was
/// due (the app wrote) to its durable ack (Stead) or its echo (Yjs), so batching and any
/// queueing count in full.
async fn paced_run(target: Target, server: &Server, http: &reqwest::Client, updates: &[Vec<u8>], writes: usize, rate: f64) -> Result<Vec<f64>> {
    let due = |k: usize, start: tokio::time::Instant| start + Duration::from_secs_f64(k as f64 / rate);
    let mut done: Vec<Option<tokio::time::Instant>> = vec![None; writes];
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let start;
    match target {
        Target::Stead => {
            let url = format!("{}/sync", server.ws());
            let space = stead::create_space(http, &server.base, 0).await?;
            let entries = stead::entries(&space, writes, 1)?;
            let who = stead::Who { space: space.id, replica: space.creator.replica, signing: space.creator.signing.clone() };
            let me = who.replica;
            let mut writer = stead::Writer { who, entries, released: 0 };
            let (mut ws, mut sync) = stead::connect(&url, &mut writer, 256).await?;
            start = tokio::time::Instant::now() + Duration::from_millis(100);
            let mut acked_n = 0;
            let deadline = due(writes, start) + Duration::from_secs(30);
            while acked_n < writes {
                tokio::select! {
                    _ = tick.tick() => {
                        let now = tokio::time::Instant::now();
                        // Writes 0..n are due: write k is due at start + k / rate.
                        let n = if now < start { 0 } else { ((now - start).as_secs_f64() * rate) as usize + 1 }.min(writes);
                        if n > writer.released {
                            writer.released = n;
                            stead::pump(&mut ws, &mut sync, &writer).await?;
                        }
                        anyhow::ensure!(now < deadline, "acks stopped: {acked_n} of {writes}");
                    }
                    msg = ws.next() => {
                        stead::take(msg, &mut sync, &mut writer)?;
                        let acked = sync.acked().get(&me).copied().unwrap_or(0) as usize;
                        let now = tokio::time::Instant::now();
                        while acked_n < acked.min(writes) {
                            done[acked_n] = Some(now);
                            acked_n += 1;
                        }
                    }
                }
            }
        }
        Target::Null => bail!("the null relay echoes nothing back to a writer: no paced writes through it"),
        Target::Yjs => {
            let ws = yjs_connect(&format!("{}/paced", server.ws())).await?;
            let (mut sink, mut stream) = ws.split();
            start = tokio::time::Instant::now() + Duration::from_millis(100);
            let (mut sent, mut echoed) = (0, 0);
            let deadline = due(writes, start) + Duration::from_secs(30);
            while echoed < writes {
                tokio::select! {
                    _ = tick.tick() => {
                        let now = tokio::time::Instant::now();
                        let before = sent;
                        while sent < writes && due(sent, start) <= now {
                            sink.feed(Message::Binary(yjs::update_message(&updates[sent % updates.len()]).into())).await?;
                            sent += 1;
                        }
                        if sent > before {
                            sink.flush().await?;
                        }
                        anyhow::ensure!(now < deadline, "echoes stopped: {echoed} of {writes}");
                    }
                    msg = stream.next() => match msg {
                        Some(Ok(Message::Binary(b))) if yjs::is_update(&b) => {
                            done[echoed] = Some(tokio::time::Instant::now());
                            echoed += 1;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e.into()),
                        None => bail!("the Yjs server closed the writer"),
                    },
                }
            }
        }
    }
    Ok(sorted(done.iter().enumerate().filter_map(|(k, t)| t.map(|t| t.saturating_duration_since(due(k, start)).as_secs_f64() * 1e3)).collect()))
}

/// Feeds every message without a flush per message, then flushes once: tungstenite writes
/// out as its buffer fills. Returns when each message was handed over.
async fn send_all(mut sink: futures::stream::SplitSink<Ws, Message>, messages: Vec<Vec<u8>>) -> Result<Vec<Instant>> {
    let mut sent = Vec::with_capacity(messages.len());
    for m in messages {
        sink.feed(Message::Binary(m.into())).await?;
        sent.push(Instant::now());
    }
    sink.flush().await?;
    // Keep the socket open until the caller has what it waits for.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(600)).await;
        drop(sink);
    });
    Ok(sent)
}

/// Connects as a y-websocket client does: the sync handshake done both ways.
async fn yjs_connect(url: &str) -> Result<Ws> {
    let mut ws = ws_connect(url).await?;
    yjs::handshake(&mut ws).await?;
    Ok(ws)
}

/// Ingest through a relay: the Yjs server (`yjs`: handshake first, the writer's own
/// updates echoed back to it) or the null server (no protocol, no echo).
async fn relay_ingest_run(server: &Server, updates: &[Vec<u8>], yjs: bool) -> Result<Ingest> {
    let url = format!("{}/ingest", server.ws());
    let n = updates.len();
    let connect = |url: String| async move { if yjs { yjs_connect(&url).await } else { ws_connect(&url).await } };
    let mut counter = connect(url.clone()).await?;
    let receiving = tokio::spawn(async move {
        let mut count = 0;
        while count < n {
            match tokio::time::timeout(Duration::from_secs(300), counter.next()).await.context("the receiver heard nothing for 300 s")? {
                Some(Ok(Message::Binary(b))) if !yjs || yjs::is_update(&b) => count += 1,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the server closed the receiver"),
            }
        }
        anyhow::Ok(Instant::now())
    });
    let messages: Vec<Vec<u8>> = updates.iter().map(|u| yjs::update_message(u)).collect();
    let ws = connect(url).await?;
    let (sink, mut stream) = ws.split();
    let t0 = Instant::now();
    let sending = tokio::spawn(send_all(sink, messages));
    // The Yjs server sends every update to every connection of the room, its writer included.
    let mut echoed = Vec::with_capacity(n);
    while yjs && echoed.len() < n {
        match tokio::time::timeout(Duration::from_secs(300), stream.next()).await.context("no echo for 300 s")? {
            Some(Ok(Message::Binary(b))) if yjs::is_update(&b) => echoed.push(Instant::now()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the Yjs server closed the writer"),
        }
    }
    let sent = sending.await??;
    let t_recv = receiving.await??;
    let ack_ms = sent.iter().zip(&echoed).map(|(s, a)| a.saturating_duration_since(*s).as_secs_f64() * 1e3).collect();
    Ok(Ingest { messages: n, entries: n, ops: n, secs: (t_recv - t0).as_secs_f64(), ack_ms })
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

/// Receipt times written by the holders, in connection order; `end_us` is when the pass ended.
fn read_times(dir: &Path, receivers: usize, procs: usize, expect: usize, send_us: &[u64], end_us: u64) -> Result<Latency> {
    let per = receivers.div_ceil(procs);
    let mut samples = Vec::with_capacity(receivers * expect);
    let mut missing = 0;
    let mut censored = Vec::new();
    let mut offset = 0;
    while offset < receivers {
        let bytes = std::fs::read(dir.join(format!("times-{offset}.bin")))?;
        for (i, chunk) in bytes.chunks_exact(8).enumerate() {
            let t = u64::from_le_bytes(chunk.try_into()?);
            let sent = send_us[i % expect];
            if t == 0 || sent == 0 {
                missing += 1;
                if sent != 0 {
                    censored.push(end_us.saturating_sub(sent) as f64 / 1e3);
                }
            } else {
                samples.push(t.saturating_sub(sent) as f64 / 1e3);
            }
        }
        offset += per.min(receivers - offset);
    }
    Ok(Latency { samples: sorted(samples), missing, censored, cpu: 0.0 })
}

/// One fan-out pass of `system` (`null`, `stead` or `yjs`) on a fresh server process.
async fn fanout_pass(system: &str, a: &RunArgs, http: &reqwest::Client, all: &[Vec<u8>], pass: Pass, dir: &Path) -> Result<Latency> {
    std::fs::create_dir_all(dir)?;
    let (server, lat) = match system {
        "stead" => {
            let server = Server::stead(&a.stead_server, &dir.join("server")).await?;
            let l = stead_fanout_run(&server, http, pass, dir).await;
            (server, l)
        }
        "yjs" => {
            let server = Server::yjs(&a.yjs_dir).await?;
            let l = yjs_fanout_run(Target::Yjs, &server, all, pass, dir).await;
            (server, l)
        }
        _ => {
            let server = Server::null().await?;
            let l = yjs_fanout_run(Target::Null, &server, all, pass, dir).await;
            (server, l)
        }
    };
    server.stop().await?;
    lat
}

async fn stead_fanout_run(server: &Server, http: &reqwest::Client, pass: Pass, tmp: &Path) -> Result<Latency> {
    let Pass { receivers, procs, updates, period } = pass;
    let dir = tmp.join(format!("fanout-stead-{}", period.as_millis()));
    std::fs::create_dir_all(&dir)?;
    let space = stead::create_space(http, &server.base, receivers).await?;
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
    let (hs, open) = holders(receivers, procs, &common, Some(&dir)).await?;
    eprintln!("    {open} receivers connected");
    let who = stead::Who { space: space.id, replica: space.creator.replica, signing: space.creator.signing.clone() };
    let mut writer = stead::Writer { who, entries, released: 0 };
    let (mut ws, mut sync) = stead::connect(&url, &mut writer, 256).await?;
    let mut send_us = vec![0u64; updates];
    let cpu0 = server.cpu_secs()?;
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
    let end_us = now_us();
    let cpu = server.cpu_secs()? - cpu0;
    for h in hs {
        h.finish().await?;
    }
    let mut lat = read_times(&dir, receivers, procs, updates, &send_us, end_us)?;
    lat.cpu = cpu;
    eprintln!("    p50 {:.2} ms, p99 {:.2} ms, {} missing", percentile(&lat.samples, 0.5), percentile(&lat.samples, 0.99), lat.missing);
    Ok(lat)
}

/// Fan-out through the Yjs server, or through the null relay (`target` Null: the load
/// generator's own delivery floor, with the same messages and receivers).
async fn yjs_fanout_run(target: Target, server: &Server, all: &[Vec<u8>], pass: Pass, tmp: &Path) -> Result<Latency> {
    let Pass { receivers, procs, updates, period } = pass;
    let dir = tmp.join(format!("fanout-{}-{}", target.name(), period.as_millis()));
    std::fs::create_dir_all(&dir)?;
    let common = vec![
        "--target".into(),
        target.name().into(),
        "--url".into(),
        server.ws(),
        "--room-prefix".into(),
        format!("fanout{}-", period.as_millis()),
        "--rooms".into(),
        "1".into(),
        "--expect".into(),
        updates.to_string(),
    ];
    let (hs, open) = holders(receivers, procs, &common, Some(&dir)).await?;
    eprintln!("    {open} receivers connected");
    let url = format!("{}/fanout{}-0", server.ws(), period.as_millis());
    let mut ws = if target == Target::Null { ws_connect(&url).await? } else { yjs_connect(&url).await? };
    let messages: Vec<Vec<u8>> = all.iter().take(updates).map(|u| yjs::update_message(u)).collect();
    let mut send_us = vec![0u64; updates];
    let cpu0 = server.cpu_secs()?;
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
    let end_us = now_us();
    let cpu = server.cpu_secs()? - cpu0;
    for h in hs {
        h.finish().await?;
    }
    let mut lat = read_times(&dir, receivers, procs, updates, &send_us, end_us)?;
    lat.cpu = cpu;
    eprintln!("    p50 {:.2} ms, p99 {:.2} ms, {} missing", percentile(&lat.samples, 0.5), percentile(&lat.samples, 0.99), lat.missing);
    Ok(lat)
}

async fn memory_only(a: MemoryArgs) -> Result<()> {
    let sizes = Sizes::new(a.quick);
    let tmp = tempfile::Builder::new().prefix("stead-bench-server").tempdir()?;
    let server = match a.target {
        Target::Stead => Server::stead(a.stead_server.as_deref().context("--stead-server is needed")?, tmp.path()).await?,
        Target::Yjs => Server::yjs(a.yjs_dir.as_deref().context("--yjs-dir is needed")?).await?,
        Target::Null => Server::null().await?,
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
        Target::Yjs | Target::Null => {
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


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_versions_from_the_xtask_line() {
        let got = anchors("@y/websocket-server 0.1.1, yjs 13.6.33, node v20.20.2");
        let want = [("@y/websocket-server", "0.1.1"), ("yjs", "13.6.33"), ("node", "v20.20.2")];
        assert_eq!(got, want.map(|(n, v)| (n.to_owned(), v.to_owned())).to_vec());
    }

    #[test]
    fn missing_deliveries_count_at_their_age_when_the_pass_ended() {
        let dir = tempfile::tempdir().expect("dir");
        // Two receivers, two updates sent at 1.00 s and 1.02 s; receiver 0 never got the second.
        let times: Vec<u8> = [1_001_000u64, 0, 1_003_000, 1_022_000].iter().flat_map(|t| t.to_le_bytes()).collect();
        std::fs::write(dir.path().join("times-0.bin"), times).expect("write");
        let lat = read_times(dir.path(), 2, 1, 2, &[1_000_000, 1_020_000], 1_100_000).expect("read");
        assert_eq!((lat.samples.clone(), lat.missing), (vec![1.0, 2.0, 3.0], 1));
        assert_eq!(lat.with_missing(), vec![1.0, 2.0, 3.0, 80.0]);
    }

    #[test]
    fn memory_slope_is_bytes_per_connection() {
        let m = Memory { points: vec![(0, 1_000_000), (1_000, 3_000_000), (2_000, 5_000_000)], held: 2_000, tried: 2_000 };
        assert!((m.slope() - 2_000.0).abs() < 1e-9);
    }
}
