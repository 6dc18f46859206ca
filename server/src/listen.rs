//! Accepting connections: HTTP/1.1 through hyper, with the limits that keep a few
//! hostile clients from holding every file descriptor.
//!
//! A client that sends half a request and then nothing (slow-loris) is closed once its
//! header deadline passes, and one that stalls its body once no byte came for the body's
//! idle time. Connections are counted by the address they come from, for their whole
//! life, upgraded `/sync` sockets included: past [`HttpLimits::max_connections_per_address`]
//! more connections from that address are closed as soon as they are accepted, and past
//! [`HttpLimits::max_connections`] from anywhere. IPv6 clients count by their /64, the
//! smallest block one subscriber is usually given.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tower::Service as _;

/// Bounds on the server's connections.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Open connections at most, from everywhere; 0 for no bound.
    pub max_connections: usize,
    /// Open connections at most from one address (an IPv6 /64); 0 for no bound.
    pub max_connections_per_address: usize,
    /// How long a client has to send a request's whole header, from the moment the server
    /// starts waiting for it (an idle keep-alive connection is waiting too).
    pub header_timeout: Duration,
    /// How long a request body may go without sending a byte.
    pub body_idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 50_000,
            max_connections_per_address: 256,
            header_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(15),
        }
    }
}

/// What the limits have done, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct ConnStats {
    open: AtomicUsize,
    refused_address: AtomicU64,
    refused_total: AtomicU64,
}

impl ConnStats {
    /// Appends these counts to `/metrics` text.
    pub(crate) fn render(&self, o: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(o, "# HELP stead_http_connections Open TCP connections, upgraded sockets included.\n# TYPE stead_http_connections gauge");
        let _ = writeln!(o, "stead_http_connections {}", self.open.load(Ordering::Relaxed));
        let _ = writeln!(o, "# HELP stead_http_refused_total Connections closed on accept, by the bound they met.\n# TYPE stead_http_refused_total counter");
        let _ = writeln!(o, "stead_http_refused_total{{bound=\"per_address\"}} {}", self.refused_address.load(Ordering::Relaxed));
        let _ = writeln!(o, "stead_http_refused_total{{bound=\"total\"}} {}", self.refused_total.load(Ordering::Relaxed));
    }
}

/// The address a connection is counted under: IPv4 as it is, IPv6 by its /64 (an
/// IPv4-mapped IPv6 address as the IPv4 address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct AddressKey(IpAddr);

impl AddressKey {
    pub(crate) fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(_) => AddressKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    AddressKey(IpAddr::V6(bits.into()))
                }
            },
        }
    }
}

/// Counts open connections per address.
#[derive(Debug)]
pub(crate) struct Gate {
    limits: HttpLimits,
    per_address: Mutex<HashMap<AddressKey, usize>>,
    pub(crate) stats: ConnStats,
}

/// One admitted connection; uncounted when the last holder drops it (the HTTP connection
/// and, after an upgrade, the `/sync` socket).
#[derive(Debug)]
pub(crate) struct Permit {
    gate: Arc<Gate>,
    key: AddressKey,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.stats.open.fetch_sub(1, Ordering::Relaxed);
        let mut map = self.gate.per_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl Gate {
    pub(crate) fn new(limits: HttpLimits) -> Arc<Gate> {
        Arc::new(Gate { limits, per_address: Mutex::new(HashMap::new()), stats: ConnStats::default() })
    }

    /// Counts a new connection from `ip`, unless a bound is reached.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let key = AddressKey::of(ip);
        let mut map = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        let max_total = self.limits.max_connections;
        if max_total != 0 && self.stats.open.load(Ordering::Relaxed) >= max_total {
            self.stats.refused_total.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let n = map.entry(key).or_insert(0);
        let max = self.limits.max_connections_per_address;
        if max != 0 && *n >= max {
            self.stats.refused_address.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        Some(Permit { gate: self.clone(), key })
    }
}

/// Who a request came from, in its extensions: the address and the connection's permit
/// (which an upgraded socket keeps).
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    pub(crate) permit: Arc<Permit>,
}

/// Errors of `accept` that concern one connection only, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
}

/// Accepts and serves connections until `shutdown` resolves, then stops accepting, runs
/// `drain` (which closes the sync connections) and lets the HTTP connections finish their
/// requests in flight, for at most `grace`.
pub(crate) async fn run(
    listener: tokio::net::TcpListener,
    app: Router,
    gate: Arc<Gate>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(gate.limits.header_timeout);
    // Each connection's task holds a sender; once the listener stops and the last task
    // ends, `tasks_done` yields `None`.
    let (task_alive, mut tasks_done) = tokio::sync::mpsc::channel::<()>(1);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, say: wait for some to close rather than spin.
                    tracing::error!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(permit) = gate.admit(addr.ip()) else {
            // Dropped unread: the kernel closes it, and nothing of it is kept.
            tracing::debug!(%addr, "connection refused: too many connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let peer = Peer { addr, permit: Arc::new(permit) };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer.addr));
            req.extensions_mut().insert(peer.clone());
            let mut app = app.clone();
            async move { Ok::<_, Infallible>(app.call(req.map(axum::body::Body::new)).await.unwrap_or_else(|e| match e {})) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
        let (alive, mut stopping) = (task_alive.clone(), stopping.clone());
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = async { drop(stopping.wait_for(|s| *s).await) } => {
                    // Finish the request in flight, then close instead of keeping alive.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%addr, "connection ended: {e}");
            }
            drop(alive);
        });
    }
    drop(listener);
    drain.await;
    stop.send_replace(true);
    drop(task_alive);
    if tokio::time::timeout(grace, tasks_done.recv()).await.is_err() {
        tracing::warn!("HTTP connections still open after the grace period");
    }
    Ok(())
}
