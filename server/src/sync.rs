//! The `/sync` WebSocket: stead-core's sync protocol against the database.
//!
//! Each connection is one task holding its [`Sync`]. Entries frames — with every frame
//! that has already arrived behind them, so one transaction covers them all — go to
//! [`Service::commit`], which verifies each entry (membership, seq continuity, prev hash,
//! signature) and inserts it inside a transaction, grouped with other connections' writes
//! on SQLite. Only after the commit does the connection ask its `Sync` for the frames to
//! send, the coalesced `Ack`s among them, so an `Ack` always names committed entries.
//! Committed entries are published to the other connections of the space, which send them
//! on from their own `Sync` (each knows what its peer has, so nothing is sent twice on
//! purpose). Other frames are taken in, and frames generated from memory (the space's
//! version vector, entries just published), on the connection's task; what needs the
//! database (the vector of a space just become active here, older entries) is generated
//! on tokio's blocking pool.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket};
use futures::{FutureExt, SinkExt, StreamExt};
use stead_core::env::{Clock, SystemClock};
use stead_core::ids::{ReplicaId, SpaceId};
use stead_core::log::{Entry, Limits as EntryLimits, VersionVector};
use stead_core::sync::{Frame, Sync, SyncConfig, SyncPeer, check_member, code};

use crate::commit::{Ctx, Prechecked, Write, entries_in, precheck};
use tokio::sync::broadcast;

use crate::service::{Note, OsRandom, Service};

/// Frames generated per step at most; the rest follow once these are on the wire.
const FRAMES_PER_STEP: usize = 16;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames taken into one step at most, beyond the one that woke the connection.
const MAX_DRAIN_FRAMES: usize = 64;

/// The space as committed: what the connection sends from.
struct ReadPeer<'a> {
    ctx: &'a Ctx,
    vector: &'a VersionVector,
    /// Entries just committed by other connections, to send without reading them back.
    recent: &'a [Note],
    /// Whether this peer may read the database (it runs on the blocking pool). When it may
    /// not, a read that was needed is noted in `needed_db` and the entries are left for a
    /// step that may: `Sync` skips a replica whose read came back empty.
    db: bool,
    needed_db: Cell<bool>,
}

impl SyncPeer for ReadPeer<'_> {
    fn sync_space(&self) -> SpaceId {
        self.ctx.space
    }
    fn sync_replica(&self) -> ReplicaId {
        self.ctx.server
    }
    fn sync_vector(&self) -> VersionVector {
        self.vector.clone()
    }
    fn sync_entries(&self, replica: ReplicaId, from_seq: u64, max_entries: usize, max_bytes: usize) -> stead_core::Result<Vec<Entry>> {
        let mut out: Vec<Entry> = Vec::new();
        let mut next = from_seq;
        let mut bytes = 0;
        for e in self.recent.iter().flat_map(|n| n.entries.iter()) {
            if e.header.replica == replica && e.header.seq == next && out.len() < max_entries && bytes < max_bytes {
                bytes += e.encoded_len();
                out.push(e.clone());
                next += 1;
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        if !self.db {
            self.needed_db.set(true);
            return Ok(out);
        }
        Ok(self.ctx.service.backend.read(self.ctx.space, replica, from_seq, max_entries, max_bytes)?)
    }
    fn sync_ingest(&mut self, _entry: Entry, _now_ms: u64) -> stead_core::Result<bool> {
        Err(stead_core::Error::Storage("entries arrive only inside a transaction".into()))
    }
    fn sync_sign(&self, msg: &[u8]) -> [u8; 64] {
        self.ctx.sign(msg)
    }
    fn sync_check_member(&self, replica: ReplicaId, msg: &[u8], sig: &[u8; 64]) -> bool {
        check_member(&self.ctx.members, replica, msg, sig)
    }
}

/// What one generation produced.
#[derive(Default)]
struct Out {
    frames: Vec<Vec<u8>>,
    /// More frames are ready to generate.
    more: bool,
    /// The connection must close after sending `frames`.
    close: bool,
    /// Some entries are only in the database; generate again where it may be read.
    needed_db: bool,
    /// A vector was sent, which `Sync` does only once the peer proved membership.
    proven: bool,
}

fn generate(ctx: &Ctx, sync: &mut Sync, vector: &VersionVector, recent: &[Note], db: bool, out: &mut Out) {
    let peer = ReadPeer { ctx, vector, recent, db, needed_db: Cell::new(false) };
    out.more = false;
    while let Some(f) = sync.generate(&peer) {
        if let Frame::Error { code: c, .. } = &f {
            ctx.service.metrics.reject_code(*c);
        }
        out.proven |= matches!(f, Frame::Vector(_));
        out.frames.push(f.encode());
        if out.frames.len() >= FRAMES_PER_STEP {
            out.more = true;
            break;
        }
    }
    out.needed_db = peer.needed_db.get();
    out.close = sync.is_closed();
}

/// A token bucket on received frames.
struct Rate {
    tokens: f64,
    last: Instant,
    per_sec: f64,
    burst: f64,
}

impl Rate {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.per_sec).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn error_frame(code: u16, message: impl Into<String>) -> Message {
    Message::Binary(Frame::Error { code, message: message.into() }.encode().into())
}

/// Checks a received message against the limits; `Some` is the error to close with.
fn check_limits(service: &Service, bytes: &[u8], rate: &mut Rate) -> Option<(u16, String)> {
    let limits = &service.limits;
    if bytes.len() > limits.max_frame_bytes {
        return Some((code::TOO_LARGE, format!("frame of {} bytes is above the limit of {}", bytes.len(), limits.max_frame_bytes)));
    }
    let n = entries_in(bytes);
    if n > limits.max_batch_entries {
        return Some((code::TOO_LARGE, format!("batch of {n} entries is above the limit of {}", limits.max_batch_entries)));
    }
    if !rate.allow() {
        return Some((code::RATE_LIMITED, format!("more than {} frames per second", limits.frames_per_sec)));
    }
    None
}


/// What woke a waiting connection.
enum Event {
    Message(Option<Result<Message, axum::Error>>),
    Note(Result<Note, broadcast::error::RecvError>),
    Shutdown,
}

/// Serves one upgraded `/sync` socket until it closes.
pub(crate) async fn connection(service: Arc<Service>, socket: WebSocket) {
    let _active = service.enter();
    service.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    let send_timeout = service.limits.send_timeout;
    macro_rules! send {
        ($msg:expr) => {{
            // Boxed in a statement of its own, like every rarely awaited future here, so
            // it takes no room in the task of an idle connection.
            let sending = Box::pin(tokio::time::timeout(send_timeout, sink.send($msg)));
            match sending.await {
                Ok(Ok(())) => true,
                Ok(Err(_)) => false,
                Err(_) => {
                    // The peer stopped reading: it is too slow, and the socket has no room to say so.
                    service.metrics.reject("too_slow");
                    false
                }
            }
        }};
    }
    let mut shutdown = service.shutdown_signal();
    if service.is_shutting_down() {
        let _ = send!(error_frame(code::SHUTTING_DOWN, "the server is shutting down"));
        return;
    }

    // The hello names the space; nothing else is accepted before it.
    let hello = Box::pin(tokio::time::timeout(HELLO_TIMEOUT, stream.next()));
    let first = match hello.await {
        Ok(Some(Ok(Message::Binary(b)))) => b,
        _ => return,
    };
    let limits = EntryLimits { max_payload: service.limits.max_payload };
    let space = match Frame::decode(&first, &limits) {
        Ok(Frame::Hello { space, .. }) => space,
        Ok(_) => {
            service.metrics.reject("unexpected");
            let _ = send!(error_frame(code::UNEXPECTED, "the first frame must be a hello"));
            return;
        }
        Err(e) => {
            service.metrics.reject("bad_frame");
            let _ = send!(error_frame(code::BAD_FRAME, e.to_string()));
            return;
        }
    };
    let svc = service.clone();
    let loading = tokio::task::spawn_blocking(move || svc.members(space));
    let members = loading.await;
    let (members_version, members) = match members {
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => {
            service.metrics.reject("unauthorized");
            let _ = send!(error_frame(code::UNAUTHORIZED, "unknown space"));
            return;
        }
        other => {
            tracing::error!("loading the membership of {space} failed: {other:?}");
            let _ = send!(error_frame(code::INTERNAL, "the server could not load the space"));
            return;
        }
    };
    let Some(mut reg) = service.register(space) else {
        service.metrics.reject("busy");
        let _ = send!(error_frame(code::BUSY, "too many connections to this space"));
        return;
    };
    let conn_id = reg.id;
    let config = SyncConfig { require_member: true, limits, ..SyncConfig::default() };
    let sync = Sync::new(config, &mut OsRandom);
    let ctx = Ctx { space, members, members_version, server: service.id, service: service.clone() };
    let mut state = Some((ctx, sync));
    let mut rate = Rate {
        tokens: service.limits.frames_burst as f64,
        last: Instant::now(),
        per_sec: service.limits.frames_per_sec as f64,
        burst: service.limits.frames_burst as f64,
    };

    let mut input: Vec<Bytes> = vec![first];
    let mut recent: Vec<Note> = Vec::new();
    // A message met while taking in what had arrived, handled on the next round.
    let mut held: Option<Option<Result<Message, axum::Error>>> = None;
    let mut ack_started: Option<Instant> = None;
    // The peer proved it is a member (see `Out::proven`).
    let mut proven = false;
    // Checks of the Entries frames in `input`, started as they arrived during a commit.
    let mut ahead: Vec<tokio::task::JoinHandle<Prechecked>> = Vec::new();
    // A limit broken by a frame read during a commit: the connection closes after it.
    let mut refused: Option<(u16, String)> = None;
    loop {
        // Take in what arrived: entries in a durable transaction, anything else here.
        if !input.is_empty() {
            let frames = std::mem::take(&mut input);
            let (mut ctx, mut sync) = state.take().expect("the state is back after each step");
            if frames.iter().any(|f| f.first() == Some(&3)) {
                ack_started = Some(Instant::now());
                // Signatures are checked off the committer, many writes at once; only once
                // the peer has proven membership, so a stranger costs no signature checks.
                let checked = if !ahead.is_empty() {
                    let mut parts = Vec::with_capacity(ahead.len());
                    for task in std::mem::take(&mut ahead) {
                        parts.push(task.await.unwrap_or_default());
                    }
                    Prechecked::join(parts)
                } else if proven {
                    let checking = Box::pin(precheck(&ctx, &frames));
                    checking.await
                } else {
                    Prechecked::default()
                };
                let check_ctx = ctx.clone();
                let write = Write { ctx, sync, frames, checked, now_ms: SystemClock.now_ms(), stored: Vec::new(), failed: None };
                let mut committing = Box::pin(service.commit(write));
                // While it commits, take in what the client pipelined behind it and start
                // checking its signatures, so the next commit finds them checked: the
                // committer and the checks then run at the same time.
                let mut entries = 0;
                let committed = loop {
                    let reading = proven
                        && held.is_none()
                        && refused.is_none()
                        && input.len() <= MAX_DRAIN_FRAMES
                        && entries < 4 * service.limits.max_batch_entries;
                    tokio::select! {
                        biased;
                        w = &mut committing => break w,
                        m = stream.next(), if reading => match m {
                            Some(Ok(Message::Binary(b))) => {
                                service.metrics.frames_received.fetch_add(1, Ordering::Relaxed);
                                if let Some(r) = check_limits(&service, &b, &mut rate) {
                                    refused = Some(r);
                                } else {
                                    if b.first() == Some(&3) {
                                        let (c, f) = (check_ctx.clone(), b.clone());
                                        ahead.push(tokio::spawn(async move { precheck(&c, std::slice::from_ref(&f)).await }));
                                    }
                                    entries += entries_in(&b);
                                    input.push(b);
                                }
                            }
                            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                            other => held = Some(other),
                        },
                    }
                };
                let Some(w) = committed else {
                    tracing::error!(%space, "the commit was abandoned");
                    return;
                };
                if let Some(message) = &w.failed {
                    tracing::error!(%space, "commit failed: {message}");
                    service.metrics.reject_code(code::INTERNAL);
                    let _ = send!(error_frame(code::INTERNAL, "the server could not store the entries"));
                    let _ = sink.close().await;
                    return;
                }
                if !w.stored.is_empty() {
                    service.publish(space, Some(conn_id), w.stored);
                }
                (ctx, sync) = (w.ctx, w.sync);
            } else {
                let empty = VersionVector::new();
                let mut peer = ReadPeer { ctx: &ctx, vector: &empty, recent: &[], db: false, needed_db: Cell::new(false) };
                for f in &frames {
                    if let Err(e) = sync.receive(f, &mut peer, SystemClock.now_ms()) {
                        tracing::debug!(%space, "frame refused: {e}");
                    }
                }
            }
            state = Some((ctx, sync));
        }

        // Generate what to send: from memory here, or on the blocking pool when the space's
        // vector or some entries must be read from the database.
        let mut out = Out::default();
        let (ctx, sync) = state.as_mut().expect("the state is here between steps");
        let vector = service.vector(space);
        if let Some(v) = &vector {
            generate(ctx, sync, v, &recent, false, &mut out);
        }
        if vector.is_none() || (out.needed_db && !out.more && !out.close) {
            let (ctx, mut sync) = state.take().expect("the state is here between steps");
            let notes = std::mem::take(&mut recent);
            let generating = tokio::task::spawn_blocking(move || {
                let loaded = ctx.service.load_vector(ctx.space);
                if let Ok(v) = &loaded {
                    generate(&ctx, &mut sync, v, &notes, true, &mut out);
                }
                (ctx, sync, notes, out, loaded.err())
            });
            let joined = generating.await;
            let Ok((ctx, sync, notes, o, failed)) = joined else {
                tracing::error!("a sync step panicked");
                return;
            };
            (state, recent, out) = (Some((ctx, sync)), notes, o);
            if let Some(e) = failed {
                tracing::error!(%space, "reading the version vector failed: {e}");
                let _ = send!(error_frame(code::INTERNAL, "the server could not load the space"));
                return;
            }
        }
        proven |= out.proven;
        let n_out = out.frames.len();
        for frame in out.frames {
            if !send!(Message::Binary(frame.into())) {
                return;
            }
        }
        if n_out > 0 && !out.close
            && let Some(t) = ack_started.take()
        {
            service.metrics.observe_ack(t.elapsed());
        }
        if out.close {
            let _ = sink.close().await;
            return;
        }
        if out.more {
            continue;
        }
        recent.clear();
        if let Some((c, m)) = refused.take() {
            service.metrics.reject_code(c);
            let _ = send!(error_frame(c, m));
            let _ = sink.close().await;
            return;
        }
        if !input.is_empty() {
            // Frames arrived during the commit: take them in before waiting for more.
            continue;
        }

        // Wait for the next thing to do.
        let event = match held.take() {
            Some(m) => Event::Message(m),
            None => tokio::select! {
                m = stream.next() => Event::Message(m),
                n = reg.rx.recv() => Event::Note(n),
                _ = shutdown.changed() => Event::Shutdown,
            },
        };
        // Takes one received frame in, or closes the connection when it breaks a limit.
        macro_rules! accept {
            ($b:expr) => {{
                let b: Bytes = $b;
                service.metrics.frames_received.fetch_add(1, Ordering::Relaxed);
                if let Some((c, m)) = check_limits(&service, &b, &mut rate) {
                    service.metrics.reject_code(c);
                    let _ = send!(error_frame(c, m));
                    let _ = sink.close().await;
                    return;
                }
                input.push(b);
            }};
        }
        match event {
            Event::Message(Some(Ok(Message::Binary(b)))) => {
                accept!(b);
                // Take in what else has already arrived, so one transaction (one fsync)
                // covers a client's pipelined frames.
                let mut entries = input.iter().map(|f| entries_in(f)).sum::<usize>();
                while input.len() <= MAX_DRAIN_FRAMES && entries < 4 * service.limits.max_batch_entries {
                    match stream.next().now_or_never() {
                        None => break,
                        Some(Some(Ok(Message::Binary(b)))) => {
                            entries += entries_in(&b);
                            accept!(b);
                        }
                        Some(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                        Some(other) => {
                            held = Some(other);
                            break;
                        }
                    }
                }
            }
            Event::Message(Some(Ok(Message::Text(_)))) => {
                service.metrics.reject("bad_frame");
                let _ = send!(error_frame(code::BAD_FRAME, "frames are binary"));
                return;
            }
            // Pings and pongs carry nothing for the protocol; a close is followed by the end.
            Event::Message(Some(Ok(_))) => {}
            Event::Message(Some(Err(e))) => {
                let text = e.to_string();
                if text.contains("too long") || text.contains("too big") || text.contains("size") {
                    service.metrics.reject("too_large");
                }
                tracing::debug!("socket error: {e}");
                return;
            }
            Event::Message(None) => return,
            Event::Note(Ok(n)) => {
                let mut next = Ok(n);
                loop {
                    match next {
                        Ok(n) => {
                            if n.from != Some(conn_id) {
                                recent.push(n);
                            }
                        }
                        Err(broadcast::error::TryRecvError::Lagged(_)) => {
                            service.metrics.reject("too_slow");
                            let _ = send!(error_frame(code::TOO_SLOW, "this connection fell behind; reconnect to catch up"));
                            return;
                        }
                        Err(_) => break,
                    }
                    next = reg.rx.try_recv();
                }
            }
            Event::Note(Err(broadcast::error::RecvError::Lagged(_))) => {
                // More than `Limits::queue` notes went by unread: this connection is too slow.
                service.metrics.reject("too_slow");
                let _ = send!(error_frame(code::TOO_SLOW, "this connection fell behind; reconnect to catch up"));
                return;
            }
            Event::Note(Err(broadcast::error::RecvError::Closed)) => return,
            Event::Shutdown => {
                let _ = send!(error_frame(code::SHUTTING_DOWN, "the server is shutting down"));
                let _ = sink.close().await;
                return;
            }
        }
    }
}
