//! The `/sync` WebSocket: stead-core's sync protocol against the database.
//!
//! Each connection is one task holding its [`Sync`]. Entries frames — with every frame
//! that has already arrived behind them, so one transaction covers them all — go to
//! [`Service::commit`], which verifies each entry (membership, seq continuity, prev hash,
//! signature) and inserts it inside a transaction, grouped with other connections' writes
//! on SQLite. Only after the commit does the connection ask its `Sync` for the frames to
//! send, the coalesced `Ack`s among them, so an `Ack` always names committed entries.
//! Stored entries are published to the other connections of the space (on SQLite just
//! before the commit's fsync, see `commit::commit_group`), which send them
//! on from their own `Sync` (each knows what its peer has, so nothing is sent twice on
//! purpose). Other frames are taken in, and frames generated from memory (the space's
//! version vector, entries just published), on the connection's task; what needs the
//! database (the vector of a space just become active here, older entries) is generated
//! on tokio's blocking pool.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::{self, Message};
use stead_core::env::{Clock, SystemClock};
use stead_core::ids::{ReplicaId, SpaceId};
use stead_core::log::{Entry, Limits as EntryLimits, VersionVector};
use stead_core::membership::Membership;
use stead_core::sync::{Frame, Sync, SyncConfig, SyncPeer, check_member, code};

use crate::commit::{Ctx, Prechecked, Write, entries_in, precheck};
use tokio::sync::broadcast;

use crate::listen::{Peer, Permit};
use crate::service::{Note, OsRandom, Registration, Service};
use crate::socket::Socket;

/// Frames generated per step at most; the rest follow once these are on the wire.
const FRAMES_PER_STEP: usize = 16;
/// Frames a connection may send before its proof: its hello and proof, and a few more
/// a client may pipeline behind them.
const HANDSHAKE_FRAMES: usize = 8;
/// Pings and pongs a connection may send before its proof: each ping costs a pong, so
/// an unproven socket may not make the server write at will.
const HANDSHAKE_CONTROL_FRAMES: usize = 16;
/// How long a closing connection waits for the peer's Close (see [`close`]).
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Entries read during a commit that are checked together, ahead of the next commit.
const AHEAD_CHECK_ENTRIES: usize = 32;
/// Frames read ahead into one commit at most: with [`MAX_DRAIN_BYTES`] and the entries
/// bound (four batches), what a client can make one connection hold before its next
/// commit. One-entry frames batch up to the entries bound, so one fsync covers many.
const MAX_DRAIN_FRAMES: usize = 4096;
/// Bytes of frames read ahead into one commit at most (two of the largest frames).
const MAX_DRAIN_BYTES: usize = 8 << 20;

/// The space as committed: what the connection sends from.
struct ReadPeer<'a> {
    ctx: &'a Ctx,
    vector: &'a VersionVector,
    /// Entries other connections committed (or relayed before their commit) that `vector`
    /// may not count yet, to send without reading them back (see [`keep_uncommitted`]).
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
    /// The space's vector, and past it the entries relayed before their commit (in
    /// `recent`, contiguous with it).
    fn sync_vector(&self) -> VersionVector {
        let mut vector = self.vector.clone();
        for e in self.recent.iter().flat_map(|n| n.entries.iter()) {
            let next = vector.get(&e.header.replica).copied().unwrap_or(0);
            if next == e.header.seq {
                vector.insert(e.header.replica, next + 1);
            }
        }
        vector
    }
    /// The space's vector alone: what the `Vector` frame says is stored. A client counts
    /// its own entries in it as acknowledged, and relayed entries are not on disk until
    /// their commit's fsync; a power cut in between would lose entries acknowledged so.
    fn sync_stored_vector(&self) -> VersionVector {
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
    frames: Vec<Bytes>,
    /// More frames are ready to generate.
    more: bool,
    /// The connection must close after sending `frames`.
    close: bool,
    /// Some entries are only in the database; generate again where it may be read.
    needed_db: bool,
}

/// Keeps of a step's notes those with entries the space's `vector` does not count yet:
/// entries relayed before their commit, or committed by a writer whose connection has not
/// advanced the vector yet.
///
/// Until the vector counts them they are in neither the vector nor (maybe) the database, so
/// a later step could not find them there, and nothing would wake it once they are counted:
/// the next entries of the same chain, relayed through another connection (one commit
/// group may hold a writer's entries and the same chain's earlier entries that another
/// device uploaded after a restart), would not be contiguous with the vector and would be
/// dropped unsent; and a connection whose peer had not sent its vector yet would drop them
/// all. Kept here, the next step finds them where the ones it got before left off. Once
/// the vector counts them, the database has them.
fn keep_uncommitted(notes: &mut Vec<Note>, vector: Option<&VersionVector>) {
    let Some(vector) = vector else { return };
    notes.retain(|n| n.entries.iter().any(|e| vector.get(&e.header.replica).is_none_or(|next| *next <= e.header.seq)));
}

fn generate(ctx: &Ctx, sync: &mut Sync, vector: &VersionVector, recent: &[Note], db: bool, out: &mut Out) {
    let peer = ReadPeer { ctx, vector, recent, db, needed_db: Cell::new(false) };
    out.more = false;
    while let Some(f) = sync.generate(&peer) {
        if let Frame::Error { code: c, .. } = &f {
            ctx.service.metrics.reject_code(*c);
        }
        out.frames.push(encode(&f, recent));
        if out.frames.len() >= FRAMES_PER_STEP {
            out.more = true;
            break;
        }
    }
    out.needed_db = peer.needed_db.get();
    out.close = sync.is_closed();
}

/// `frame` encoded; an `Entries` frame that holds exactly one note's entries (in a
/// fan-out, what every receiver sends) is encoded once, by the first connection to send
/// it, and shared by the rest.
fn encode(frame: &Frame, recent: &[Note]) -> Bytes {
    if let Frame::Entries(entries) = frame
        && let Some(note) = recent.iter().find(|n| n.entries == *entries)
    {
        return note.frame.get_or_init(|| frame.encode().into()).clone();
    }
    frame.encode().into()
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
    Message(Option<Result<Message, tungstenite::Error>>),
    Note(Result<Note, broadcast::error::RecvError>),
}

/// Whether a connection goes on after a step.
type Flow = std::ops::ControlFlow<()>;
const GO: Flow = Flow::Continue(());
const STOP: Flow = Flow::Break(());

/// Sends one message, giving up after the send timeout; `false` ends the connection.
async fn send(service: &Service, socket: &mut Socket, msg: Message) -> bool {
    // Most sends complete at once (the kernel has room): the timer is set only for one
    // that waits.
    let mut sending = std::pin::pin!(socket.send(msg));
    let done = std::future::poll_fn(|cx| Poll::Ready(sending.as_mut().poll(cx))).await;
    let result = match done {
        Poll::Ready(r) => Ok(r),
        Poll::Pending => tokio::time::timeout(service.limits.send_timeout, sending).await,
    };
    match result {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            // The peer stopped reading: it is too slow, and the socket has no room to say so.
            service.metrics.reject("too_slow");
            false
        }
    }
}

/// Sends `msg` (an error frame) and closes the socket.
async fn send_and_close(service: &Service, socket: &mut Socket, msg: Message) {
    if send(service, socket, msg).await {
        close(socket).await;
    }
}

/// Closes as RFC 6455 (section 7.1.1) asks: after the Close frame, what the peer still
/// sends is read and dropped until its own Close, for at most [`CLOSE_LINGER`]. A socket
/// dropped with unread input makes the kernel answer with a reset, and a reset can
/// discard the error frame before the peer has read it.
async fn close(socket: &mut Socket) {
    if socket.close().await.is_ok() {
        let _ = tokio::time::timeout(CLOSE_LINGER, async { while let Some(Ok(_)) = socket.next().await {} }).await;
    }
}

/// `GET /sync`: the WebSocket handshake (RFC 6455, section 4.2.2), answered here rather
/// than by axum's `ws` extractor so that each connection's task is [`connection`] itself,
/// with nothing of the handshake kept alongside it for the connection's life.
pub(crate) async fn upgrade(State(service): State<Arc<Service>>, mut req: Request) -> Response {
    let peer = req.extensions().get::<Peer>().cloned();
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return (StatusCode::UPGRADE_REQUIRED, [(header::UPGRADE, "websocket")], "/sync is a WebSocket\n").into_response();
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return (StatusCode::BAD_REQUEST, [(header::SEC_WEBSOCKET_VERSION, "13")], "only WebSocket version 13 is spoken\n").into_response();
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return (StatusCode::BAD_REQUEST, "the Sec-WebSocket-Key header is missing\n").into_response();
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(connection(service, on_upgrade, peer));
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, header::HeaderValue::from_str(&accept).expect("base64 is a valid header value"));
    response
}

/// Serves one `/sync` socket, once upgraded, until it closes.
///
/// Most connections are idle most of the time, and a task's future is allocated at its
/// largest state for the task's life. So the task holds only its [`Conn`] and the wait for
/// the next event; opening, each step and each event are futures of their own, on the
/// heap only while they run.
pub(crate) async fn connection(service: Arc<Service>, on_upgrade: OnUpgrade, peer: Option<Peer>) {
    let _active = service.enter();
    let opening = Box::pin(Conn::open(service, on_upgrade, peer));
    let Some(mut conn) = opening.await else { return };
    loop {
        let stepping = Box::pin(conn.step());
        if stepping.await.is_break() {
            return;
        }
        let event = match conn.held.take() {
            Some(m) => Event::Message(*m),
            None => match conn.socket.sleep() {
                Some(m) => Event::Message(m),
                None => {
                    let c = &mut conn;
                    tokio::select! {
                        m = c.socket.next() => Event::Message(m),
                        n = c.reg.recv() => Event::Note(n),
                    }
                }
            },
        };
        // A fan-out's note: kept here, without a future of its own for `handle`.
        let event = match event {
            Event::Note(Ok(n)) if !n.shutdown && n.members.is_none() => {
                conn.keep(n);
                continue;
            }
            event => event,
        };
        let handling = Box::pin(conn.handle(event));
        if handling.await.is_break() {
            return;
        }
    }
}

/// One `/sync` connection past its hello.
struct Conn {
    service: Arc<Service>,
    /// Asleep while the connection waits with nothing buffered (see [`Socket`]).
    socket: Socket,
    reg: Registration,
    space: SpaceId,
    /// Taken while a step works on it (on the blocking pool or in a commit).
    state: Option<(Ctx, Sync)>,
    rate: Rate,
    /// Frames received and not yet taken in.
    input: Vec<Bytes>,
    /// Entries of other connections taken in since the last generation, and earlier ones
    /// the space's vector does not count yet (see [`keep_uncommitted`]).
    recent: Vec<Note>,
    /// A message met while taking in what had arrived, handled on the next round.
    held: Option<Box<Option<Result<Message, tungstenite::Error>>>>,
    ack_started: Option<Instant>,
    /// Checks of the Entries frames in `input`, started as they arrived during a commit.
    ahead: Vec<tokio::task::JoinHandle<Prechecked>>,
    /// A limit broken by a frame read during a commit: the connection closes after it.
    refused: Option<Box<(u16, String)>>,
    /// This socket's place among its address's connections (see `listen`).
    _peer: Option<Arc<Permit>>,
}

impl Conn {
    /// Runs the handshake (hellos, then proofs) and registers the connection in its space;
    /// `None` when the connection ended (with an error frame where one applies).
    ///
    /// A connection takes a place in its space only once it has proven membership: the
    /// space id is in every invite link, so an outsider must not be able to fill the
    /// space's places by saying hello. Until then it counts against its address's unproven
    /// connections, and it has `Limits::proof_timeout` from the upgrade to finish.
    async fn open(service: Arc<Service>, on_upgrade: OnUpgrade, peer: Option<Peer>) -> Option<Conn> {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("the /sync upgrade failed: {e}");
                return None;
            }
        };
        let deadline = tokio::time::Instant::now() + service.limits.proof_timeout;
        service.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
        let mut socket = Socket::new(upgraded, service.clone());
        let refuse = |reason: &'static str, code: u16, message: String| {
            if !reason.is_empty() {
                service.metrics.reject(reason);
            }
            error_frame(code, message)
        };
        if service.is_shutting_down() {
            send_and_close(&service, &mut socket, refuse("", code::SHUTTING_DOWN, "the server is shutting down".into())).await;
            return None;
        }
        let Some(_unproven) = service.unproven(peer.as_ref().map(|p| p.addr.ip())) else {
            let message = "too many connections from this address have not proven membership yet".into();
            send_and_close(&service, &mut socket, refuse("busy", code::BUSY, message)).await;
            return None;
        };

        // The hello names the space; nothing else is accepted before it.
        let first = match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => b,
            _ => return None,
        };
        let limits = EntryLimits { max_payload: service.limits.max_payload };
        let space = match Frame::decode(&first, &limits) {
            Ok(Frame::Hello { space, .. }) => space,
            Ok(_) => {
                send_and_close(&service, &mut socket, refuse("unexpected", code::UNEXPECTED, "the first frame must be a hello".into())).await;
                return None;
            }
            Err(e) => {
                send_and_close(&service, &mut socket, refuse("bad_frame", code::BAD_FRAME, e.to_string())).await;
                return None;
            }
        };
        let svc = service.clone();
        let (members_version, members) = match tokio::task::spawn_blocking(move || svc.members(space)).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => {
                send_and_close(&service, &mut socket, refuse("unauthorized", code::UNAUTHORIZED, "unknown space".into())).await;
                return None;
            }
            other => {
                tracing::error!("loading the membership of {space} failed: {other:?}");
                send_and_close(&service, &mut socket, refuse("", code::INTERNAL, "the server could not load the space".into())).await;
                return None;
            }
        };
        let config = SyncConfig { require_member: true, limits, ..SyncConfig::default() };
        let mut sync = Sync::new(config, &mut OsRandom);
        let ctx = Ctx { space, members, members_version, server: service.id, service: service.clone() };

        // Hellos and proofs cross; the peer's frames are taken in until its proof. Nothing
        // here reads the database or the space's vector: `Sync` sends neither before.
        let mut received = first;
        let mut frames_left = HANDSHAKE_FRAMES;
        let mut control_left = HANDSHAKE_CONTROL_FRAMES;
        loop {
            let empty = VersionVector::new();
            let mut local = ReadPeer { ctx: &ctx, vector: &empty, recent: &[], db: false, needed_db: Cell::new(false) };
            if let Err(e) = sync.receive(&received, &mut local, SystemClock.now_ms()) {
                tracing::debug!(%space, "handshake frame refused: {e}");
            }
            if sync.peer_proven() {
                break;
            }
            while let Some(f) = sync.generate(&local) {
                if let Frame::Error { code: c, .. } = &f {
                    service.metrics.reject_code(*c);
                }
                if !send(&service, &mut socket, Message::Binary(f.encode().into())).await {
                    return None;
                }
            }
            if sync.is_closed() {
                close(&mut socket).await;
                return None;
            }
            frames_left -= 1;
            received = loop {
                match tokio::time::timeout_at(deadline, socket.next()).await {
                    Ok(Some(Ok(Message::Binary(b)))) if frames_left > 0 => break b,
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) if control_left > 0 => control_left -= 1,
                    Ok(Some(Ok(Message::Binary(_) | Message::Ping(_) | Message::Pong(_)))) => {
                        let message = "too many frames before the proof".into();
                        send_and_close(&service, &mut socket, refuse("unexpected", code::UNEXPECTED, message)).await;
                        return None;
                    }
                    Err(_) => {
                        let message = format!("no proof of membership within {} ms", service.limits.proof_timeout.as_millis());
                        send_and_close(&service, &mut socket, refuse("unauthorized", code::UNAUTHORIZED, message)).await;
                        return None;
                    }
                    Ok(_) => return None,
                }
            };
        }

        let Some(reg) = service.register(space) else {
            send_and_close(&service, &mut socket, refuse("busy", code::BUSY, "too many connections to this space".into())).await;
            return None;
        };
        // Checked again once registered: a shutdown that began before the registration sent
        // its note to the connections registered then, not to this one.
        if service.is_shutting_down() {
            send_and_close(&service, &mut socket, refuse("", code::SHUTTING_DOWN, "the server is shutting down".into())).await;
            return None;
        }
        let rate = Rate {
            tokens: service.limits.frames_burst as f64,
            last: Instant::now(),
            per_sec: service.limits.frames_per_sec as f64,
            burst: service.limits.frames_burst as f64,
        };
        Some(Conn {
            service,
            socket,
            reg,
            space,
            state: Some((ctx, sync)),
            rate,
            input: Vec::new(),
            recent: Vec::new(),
            held: None,
            ack_started: None,
            ahead: Vec::new(),
            refused: None,
            _peer: peer.map(|p| p.permit),
        })
    }

    async fn send(&mut self, msg: Message) -> bool {
        send(&self.service, &mut self.socket, msg).await
    }

    /// Sends an error frame and closes.
    async fn fail(&mut self, code: u16, message: impl Into<String>) -> Flow {
        // Boxed: closing lingers on a timer, and every step and note would carry its future.
        Box::pin(send_and_close(&self.service, &mut self.socket, error_frame(code, message))).await;
        STOP
    }

    /// Takes in what arrived and sends what follows from it, until there is nothing left
    /// to do but wait.
    async fn step(&mut self) -> Flow {
        let space = self.space;
        loop {
            // Take in what arrived: entries in a durable transaction, anything else here.
            // Its future is most of a step's (a commit holds the write and its checks),
            // and a step whose future is under the allocator's small sizes costs a
            // receiver in a fan-out less: the step is allocated for every note.
            if !self.input.is_empty() && Box::pin(self.take_in()).await.is_break() {
                return STOP;
            }

            // Generate what to send: from memory here, or on the blocking pool when the
            // space's vector or some entries must be read from the database.
            let mut out = Out::default();
            let view = self.service.view(space);
            // A commit advances the vector and queues its note under the hub's lock, so
            // every entry the vector read here counts is in a note queued by now: taken in
            // before generating, those entries go from memory rather than from the database
            // (a connection woken by its peer's frame would otherwise see the vector ahead
            // of its notes and read them back). A connection woken by a note has most
            // often taken every note sent by then, and the count says so.
            if self.reg.may_hold_notes(&view) {
                let queued = self.reg.try_recv();
                if self.take_notes(queued).await.is_break() {
                    return STOP;
                }
            }
            let vector = view.vector;
            let (ctx, sync) = self.state.as_mut().expect("the state is here between steps");
            if let Some(v) = &vector {
                generate(ctx, sync, v, &self.recent, false, &mut out);
            }
            if vector.is_none() || (out.needed_db && !out.more && !out.close) {
                let (ctx, mut sync) = self.state.take().expect("the state is here between steps");
                let notes = std::mem::take(&mut self.recent);
                let generating = tokio::task::spawn_blocking(move || {
                    let loaded = ctx.service.load_vector(ctx.space);
                    if let Ok(v) = &loaded {
                        generate(&ctx, &mut sync, v, &notes, true, &mut out);
                    }
                    (ctx, sync, notes, out, loaded.err())
                });
                let Ok((ctx, sync, notes, o, failed)) = generating.await else {
                    tracing::error!("a sync step panicked");
                    return STOP;
                };
                (self.state, self.recent, out) = (Some((ctx, sync)), notes, o);
                if let Some(e) = failed {
                    tracing::error!(%space, "reading the version vector failed: {e}");
                    return self.fail(code::INTERNAL, "the server could not load the space").await;
                }
            }
            let n_out = out.frames.len();
            for frame in out.frames {
                if !self.send(Message::Binary(frame)).await {
                    return STOP;
                }
            }
            if n_out > 0
                && !out.close
                && let Some(t) = self.ack_started.take()
            {
                self.service.metrics.observe_ack(t.elapsed());
            }
            if out.close {
                Box::pin(close(&mut self.socket)).await;
                return STOP;
            }
            if out.more {
                continue;
            }
            if !self.recent.is_empty() {
                // The vector this step read: an older one only keeps more notes, which
                // the next step drops, and the fan-out's steps take the hub's lock once.
                let counted = vector.or_else(|| self.service.vector(space));
                keep_uncommitted(&mut self.recent, counted.as_deref());
            }
            if let Some((c, m)) = self.refused.take().map(|r| *r) {
                self.service.metrics.reject_code(c);
                return self.fail(c, m).await;
            }
            if self.input.is_empty() {
                return GO;
            }
            // Frames arrived during the commit: take them in before waiting for more.
        }
    }

    /// Takes in the frames of `input`: entries in a durable transaction, anything else here.
    async fn take_in(&mut self) -> Flow {
        let space = self.space;
        let frames = std::mem::take(&mut self.input);
        let (ctx, mut sync) = self.state.take().expect("the state is back after each step");
        if !frames.iter().any(|f| f.first() == Some(&3)) {
            let empty = VersionVector::new();
            let mut peer = ReadPeer { ctx: &ctx, vector: &empty, recent: &[], db: false, needed_db: Cell::new(false) };
            for f in &frames {
                if let Err(e) = sync.receive(f, &mut peer, SystemClock.now_ms()) {
                    tracing::debug!(%space, "frame refused: {e}");
                }
            }
            self.state = Some((ctx, sync));
            return GO;
        }
        let quota = self.service.limits.max_entries_per_space;
        let incoming: u64 = frames.iter().map(|f| entries_in(f) as u64).sum();
        if let Some(stored) = self.service.entries_in(space)
            && stored.saturating_add(incoming) > quota
        {
            self.service.metrics.reject_quota("entries");
            self.state = Some((ctx, sync));
            return self.fail(code::TOO_LARGE, format!("the space's quota of {quota} entries is full")).await;
        }
        self.ack_started = Some(Instant::now());
        // Signatures are checked off the committer, many writes at once.
        let checked = if !self.ahead.is_empty() {
            let mut parts = Vec::with_capacity(self.ahead.len());
            for task in std::mem::take(&mut self.ahead) {
                parts.push(task.await.unwrap_or_default());
            }
            Prechecked::join(parts)
        } else {
            precheck(&ctx, &frames).await
        };
        let check_ctx = ctx.clone();
        let write = Write { ctx, sync, frames, checked, now_ms: SystemClock.now_ms(), conn: self.reg.id, stored: Vec::new(), relayed: None, failed: None };
        let service = self.service.clone();
        let mut committing = std::pin::pin!(service.commit(write));
        // While it commits, take in what the client pipelined behind it and start checking
        // its signatures, so the next commit finds them checked: the committer and the
        // checks then run at the same time.
        let mut entries = 0;
        // Entries frames read and not yet handed to a check: checked in groups, so each
        // member's signatures are checked in batches even when each frame holds one entry.
        let mut unchecked: Vec<Bytes> = Vec::new();
        let mut unchecked_entries = 0;
        let check_ahead = |frames: Vec<Bytes>| {
            let c = check_ctx.clone();
            tokio::spawn(async move { precheck(&c, &frames).await })
        };
        let mut bytes = 0;
        let committed = loop {
            let reading = self.held.is_none() && self.refused.is_none() && self.may_drain(entries, bytes);
            tokio::select! {
                biased;
                w = &mut committing => break w,
                m = self.socket.next(), if reading => match m {
                    Some(Ok(Message::Binary(b))) => {
                        self.service.metrics.frames_received.fetch_add(1, Ordering::Relaxed);
                        if let Some(r) = check_limits(&self.service, &b, &mut self.rate) {
                            self.refused = Some(Box::new(r));
                        } else {
                            if b.first() == Some(&3) {
                                unchecked_entries += entries_in(&b);
                                unchecked.push(b.clone());
                                if unchecked_entries >= AHEAD_CHECK_ENTRIES {
                                    self.ahead.push(check_ahead(std::mem::take(&mut unchecked)));
                                    unchecked_entries = 0;
                                }
                            }
                            entries += entries_in(&b);
                            bytes += b.len();
                            self.input.push(b);
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => self.held = Some(Box::new(other)),
                },
            }
        };
        if !unchecked.is_empty() {
            self.ahead.push(check_ahead(unchecked));
        }
        let Some(w) = committed else {
            tracing::error!(%space, "the commit was abandoned");
            return STOP;
        };
        if let Some(message) = &w.failed {
            tracing::error!(%space, "commit failed: {message}");
            self.service.metrics.reject_code(code::INTERNAL);
            return self.fail(code::INTERNAL, "the server could not store the entries").await;
        }
        if let Some(advanced) = &w.relayed {
            self.service.committed(space, advanced);
        } else if !w.stored.is_empty() {
            self.service.publish(space, Some(self.reg.id), w.stored);
        }
        self.state = Some((w.ctx, w.sync));
        GO
    }

    /// Whether more frames may be read into `input` before the next commit, which holds
    /// `entries` entries in `bytes` bytes of frames so far.
    fn may_drain(&self, entries: usize, bytes: usize) -> bool {
        self.input.len() < MAX_DRAIN_FRAMES && bytes < MAX_DRAIN_BYTES && entries < 4 * self.service.limits.max_batch_entries
    }

    /// Takes one received frame in; `STOP` after closing the connection when it breaks a limit.
    async fn accept(&mut self, b: Bytes) -> Flow {
        self.service.metrics.frames_received.fetch_add(1, Ordering::Relaxed);
        if let Some((c, m)) = check_limits(&self.service, &b, &mut self.rate) {
            self.service.metrics.reject_code(c);
            return self.fail(c, m).await;
        }
        self.input.push(b);
        GO
    }

    /// Handles what woke the connection.
    async fn handle(&mut self, event: Event) -> Flow {
        match event {
            Event::Message(Some(Ok(Message::Binary(b)))) => {
                self.accept(b).await?;
                // Take in what else has already arrived, so one transaction (one fsync)
                // covers a client's pipelined frames.
                let mut entries = self.input.iter().map(|f| entries_in(f)).sum::<usize>();
                let mut bytes = self.input.iter().map(Bytes::len).sum::<usize>();
                while self.may_drain(entries, bytes) {
                    match self.socket.try_next() {
                        None => break,
                        Some(Some(Ok(Message::Binary(b)))) => {
                            entries += entries_in(&b);
                            bytes += b.len();
                            self.accept(b).await?;
                        }
                        Some(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                        Some(other) => {
                            self.held = Some(Box::new(other));
                            break;
                        }
                    }
                }
                GO
            }
            Event::Message(Some(Ok(Message::Text(_)))) => {
                self.service.metrics.reject("bad_frame");
                self.fail(code::BAD_FRAME, "frames are binary").await
            }
            // Pings and pongs carry nothing for the protocol; a close is followed by the end.
            Event::Message(Some(Ok(_))) => GO,
            Event::Message(Some(Err(e))) => {
                let text = e.to_string();
                if text.contains("too long") || text.contains("too big") || text.contains("size") {
                    self.service.metrics.reject("too_large");
                }
                tracing::debug!("socket error: {e}");
                STOP
            }
            Event::Message(None) => STOP,
            // Only this one: the step that follows reads the vector and then takes in the
            // notes queued behind it, which it would have to ask for again anyway.
            Event::Note(Ok(n)) => self.take_note(n).await,
            // More than `Limits::queue` notes went by unread: this connection is too slow.
            Event::Note(Err(broadcast::error::RecvError::Lagged(_))) => self.too_slow().await,
            Event::Note(Err(broadcast::error::RecvError::Closed)) => STOP,
        }
    }

    /// Takes in `first` and every note queued behind it, in order; `STOP` after closing
    /// when one of them ends the connection.
    async fn take_notes(&mut self, first: Result<Note, broadcast::error::TryRecvError>) -> Flow {
        let mut next = first;
        loop {
            match next {
                Ok(n) => self.take_note(n).await?,
                Err(broadcast::error::TryRecvError::Lagged(_)) => return self.too_slow().await,
                Err(_) => return GO,
            }
            next = self.reg.try_recv();
        }
    }

    /// Takes in one note; `STOP` after closing when it ends the connection.
    async fn take_note(&mut self, n: Note) -> Flow {
        if n.shutdown {
            return self.fail(code::SHUTTING_DOWN, "the server is shutting down").await;
        }
        if let Some(members) = &n.members {
            if self.members_changed(members.clone()) {
                self.service.metrics.reject("unauthorized");
                return self.fail(code::UNAUTHORIZED, "this device was removed from the space").await;
            }
        } else {
            self.keep(n);
        }
        GO
    }

    /// Keeps a note of entries to send, unless they are this connection's own.
    fn keep(&mut self, n: Note) {
        if n.from != Some(self.reg.id) {
            self.recent.push(n);
        }
    }

    /// Takes in a new membership of the space; `true` when the peer is no longer an
    /// active member, and the connection must close at once: nothing noted after the
    /// change, nor anything read from the database, may reach it.
    fn members_changed(&mut self, (version, members): (i64, Arc<Membership>)) -> bool {
        let (ctx, sync) = self.state.as_mut().expect("the state is here between steps");
        if version <= ctx.members_version {
            return false;
        }
        let removed = sync.peer().is_none_or(|peer| !members.is_active(peer));
        ctx.members = members;
        ctx.members_version = version;
        removed
    }

    async fn too_slow(&mut self) -> Flow {
        self.service.metrics.reject("too_slow");
        self.fail(code::TOO_SLOW, "this connection fell behind; reconnect to catch up").await
    }
}

#[cfg(test)]
mod tests {
    /// The size of the future a function returns, without calling it.
    fn returned_size<F, A, B, C, R>(_: F) -> usize
    where
        F: FnOnce(A, B, C) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// Every connection's task holds this future at its largest for the connection's
    /// life, idle or not: it is most of what an idle connection costs. Beyond the
    /// connection's own state it should hold little more than the wait for the next event;
    /// it was 3.7 KB in all before opening, steps and events became futures of their own.
    #[test]
    fn an_idle_connection_task_stays_small() {
        let n = returned_size(super::connection);
        let conn = std::mem::size_of::<super::Conn>();
        assert!(n <= conn + 384, "the connection future is {n} bytes, {conn} of them its Conn; box what a rare await holds");
    }

    /// A step is allocated for every note a fan-out's receiver sends on. glibc's malloc
    /// serves blocks up to 1,032 bytes from a per-thread cache; a larger one goes through
    /// its arena, lock and all (the commit inside `take_in` made the step 2.7 KB).
    #[test]
    fn a_step_is_a_small_allocation() {
        fn step_size<'a, R>(_: impl FnOnce(&'a mut super::Conn) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let n = step_size(super::Conn::step);
        assert!(n <= 1024, "a step's future is {n} bytes; box what a rare await holds");
    }

    use std::sync::Arc;

    use axum::body::Bytes;
    use stead_core::env::{Clock, SeededRandom, SystemClock};
    use stead_core::ids::RecordId;
    use stead_core::log::{Entry, Limits as EntryLimits, VersionVector};
    use stead_core::ops::{Op, Value};
    use stead_core::replica::Replica;
    use stead_core::sync::{Frame, Sync, SyncConfig};
    use stead_core::testing::Space;

    use super::{Ctx, Note, Out, ReadPeer, generate, keep_uncommitted};
    use crate::commit::{Prechecked, Write, commit_group};
    use crate::service::{Limits, Registration, Service};

    /// One connection's side of the server, driven as `Conn::step` drives it, and its
    /// peer: a device syncing as the client engine does.
    struct Receiver {
        service: Arc<Service>,
        ctx: Ctx,
        reg: Registration,
        sync: Sync,
        recent: Vec<Note>,
        device: Replica,
        client: Sync,
        /// The device's frames not yet delivered to the server.
        to_server: Vec<Vec<u8>>,
        /// The `Vector` frames the server sent, in order.
        vectors: Vec<VersionVector>,
        /// The frames of the last step, as they went to the socket.
        sent: Vec<Bytes>,
    }

    impl Receiver {
        fn new(service: &Arc<Service>, fixture: &Space, device: usize, rng: &mut SeededRandom) -> Receiver {
            let ctx = Ctx {
                space: fixture.space,
                members: Arc::new(fixture.members.clone()),
                members_version: 1,
                server: service.id,
                service: service.clone(),
            };
            let reg = service.register(fixture.space).expect("registered");
            let sync = Sync::new(SyncConfig::default(), rng);
            let client = Sync::new(SyncConfig::client(), rng);
            let device = fixture.open(device);
            Receiver { service: service.clone(), ctx, reg, sync, recent: Vec::new(), device, client, to_server: Vec::new(), vectors: Vec::new(), sent: Vec::new() }
        }

        /// Delivers the device's frames to the server, as far as the first `Vector` if
        /// `hold_vector`; an Entries frame is committed as `Conn::take_in` commits it.
        fn deliver(&mut self, hold_vector: bool) {
            while let Some(f) = self.client.generate(&self.device) {
                self.to_server.push(f.encode());
            }
            let empty = Default::default();
            while !self.to_server.is_empty() {
                if hold_vector && self.to_server[0].first() == Some(&2) {
                    return;
                }
                let f = self.to_server.remove(0);
                if f.first() == Some(&3) {
                    self.commit(f);
                    continue;
                }
                let mut peer = ReadPeer { ctx: &self.ctx, vector: &empty, recent: &[], db: false, needed_db: Default::default() };
                self.sync.receive(&f, &mut peer, SystemClock.now_ms()).expect("the server takes the frame in");
            }
        }

        /// Commits an Entries frame of the device in a group of its own.
        fn commit(&mut self, frame: Vec<u8>) {
            let write = Write {
                ctx: self.ctx.clone(),
                sync: self.sync.clone(),
                frames: vec![frame.into()],
                checked: Prechecked::default(),
                now_ms: SystemClock.now_ms(),
                conn: self.reg.id,
                stored: Vec::new(),
                relayed: None,
                failed: None,
            };
            let mut group = [write];
            commit_group(&self.service, &mut group);
            let [w] = group;
            assert_eq!(w.failed, None);
            if let Some(relayed) = &w.relayed {
                self.service.committed(self.ctx.space, relayed);
            }
            self.sync = w.sync;
        }

        /// One step of the connection: the space's vector, the notes queued, what they
        /// generate (sent to the device), and the notes kept for the next step. Returns the
        /// entries sent.
        fn step(&mut self) -> Vec<(u64, u64)> {
            let vector = self.service.load_vector(self.ctx.space).expect("the vector");
            while let Ok(n) = self.reg.rx.try_recv() {
                if n.from != Some(self.reg.id) {
                    self.recent.push(n);
                }
            }
            let mut out = Out::default();
            generate(&self.ctx, &mut self.sync, &vector, &self.recent, true, &mut out);
            keep_uncommitted(&mut self.recent, self.service.vector(self.ctx.space).as_deref());
            let mut sent = Vec::new();
            for f in &out.frames {
                match Frame::decode(f, &EntryLimits::default()) {
                    Ok(Frame::Entries(es)) => sent.push((es[0].header.seq, es[es.len() - 1].header.seq)),
                    Ok(Frame::Vector(v)) => self.vectors.push(v),
                    _ => {}
                }
                self.client.receive(f, &mut self.device, SystemClock.now_ms()).expect("the device takes the frame in");
            }
            self.sent = out.frames;
            sent
        }
    }

    fn service() -> (tempfile::TempDir, Arc<Service>) {
        let dir = tempfile::tempdir().expect("a folder");
        let db = dir.path().join("stead.sqlite3");
        let backend = crate::storage::open(db.to_str().expect("a UTF-8 path"), [0; 16]).expect("SQLite");
        (dir, Service::new(backend, Limits::default()))
    }

    /// `n` entries written by device `i` of `fixture`.
    fn writes(fixture: &Space, i: usize, n: i64, rng: &mut SeededRandom) -> Vec<Entry> {
        let mut writer = fixture.open(i);
        (0..n)
            .map(|k| {
                let op = Op::Set { collection: "log".into(), record: RecordId([1; 16]), field: "n".into(), value: Value::Int(k) };
                writer.commit(vec![op], SystemClock.now_ms(), rng).expect("a write")
            })
            .collect()
    }

    /// The race behind a receiver left without a device's last writes after a power cut
    /// (`crash`, about 1 run in 44): one commit group held the writer's own upload and,
    /// ahead of it, the chain's previous entry uploaded by another device that had it
    /// relayed before the cut. Each write is relayed on its own. The receiver sent the
    /// first relay in one step and met the second in the next, both before any commit
    /// advanced the space's vector: not contiguous with the vector, the second was dropped
    /// unsent, and the commits wake no one.
    #[test]
    fn a_chain_relayed_in_two_writes_of_one_commit_reaches_a_receiver_that_steps_between_them() {
        let mut rng = SeededRandom::new(7);
        let fixture = Space::new(3, &mut rng);
        let entries = writes(&fixture, 0, 4, &mut rng);
        let writer = fixture.identities[0].replica;
        let (_dir, service) = service();
        let uploader = service.register(fixture.space).expect("registered");
        let own = service.register(fixture.space).expect("registered");
        let mut receiver = Receiver::new(&service, &fixture, 2, &mut rng);
        for _ in 0..4 {
            receiver.deliver(false);
            receiver.step();
        }
        assert!(receiver.sync.knows_peer_vector());

        let first = service.relay(fixture.space, uploader.id, entries[..1].to_vec());
        assert_eq!(receiver.step(), [(0, 0)]);
        let rest = service.relay(fixture.space, own.id, entries[1..].to_vec());
        assert_eq!(receiver.step(), [(1, 3)], "the writer's own entries, relayed after the first");
        service.committed(fixture.space, &first);
        service.committed(fixture.space, &rest);
        assert!(receiver.reg.rx.try_recv().is_err(), "the commits wake no one: a receiver that dropped them would stay behind");
        assert_eq!(receiver.device.version_vector().get(&writer), Some(&4));
    }

    /// Entries relayed to a connection before its peer said what it holds cannot be sent
    /// then: they are sent once it has, whether or not they were committed meanwhile.
    #[test]
    fn entries_relayed_before_the_peer_vector_are_sent_once_it_comes() {
        let mut rng = SeededRandom::new(8);
        let fixture = Space::new(3, &mut rng);
        let entries = writes(&fixture, 0, 3, &mut rng);
        let writer = fixture.identities[0].replica;
        for commit_first in [false, true] {
            let (_dir, service) = service();
            let other = service.register(fixture.space).expect("registered");
            let mut receiver = Receiver::new(&service, &fixture, 2, &mut rng);
            for _ in 0..4 {
                receiver.deliver(true);
                receiver.step();
            }
            assert!(receiver.sync.peer_proven() && !receiver.sync.knows_peer_vector());
            let relayed = service.relay(fixture.space, other.id, entries.clone());
            assert_eq!(receiver.step(), [], "nothing is sent before the peer's vector");
            if commit_first {
                // Stored as the commit stores them: the step reads them from the database.
                let mut tx = service.backend.begin().expect("a transaction");
                for e in &entries {
                    tx.insert(e, &stead_core::log::check_entry(e, fixture.space, &fixture.members, &EntryLimits::default()).expect("valid").hash()).expect("stored");
                }
                tx.commit().expect("committed");
                service.committed(fixture.space, &relayed);
                assert_eq!(receiver.step(), []);
                assert!(receiver.recent.is_empty(), "the space's vector counts them now: the note is let go");
            }
            receiver.deliver(false);
            assert_eq!(receiver.step(), [(0, 2)], "committed first: {commit_first}");
            assert_eq!(receiver.device.version_vector().get(&writer), Some(&3));
        }
    }

    /// In a fan-out every receiver sends the same `Entries` frame: it is encoded once, by
    /// the first, and the rest send those bytes. A receiver whose frame holds more than
    /// one note (it was behind) encodes its own, and every device gets every entry.
    #[test]
    fn receivers_of_one_relayed_write_share_its_encoded_frame() {
        let mut rng = SeededRandom::new(10);
        let fixture = Space::new(3, &mut rng);
        let mut entries = writes(&fixture, 0, 5, &mut rng);
        let more = entries.split_off(4);
        let writer = fixture.identities[0].replica;
        let (_dir, service) = service();
        let uploader = service.register(fixture.space).expect("registered");
        let mut watcher = service.register(fixture.space).expect("registered");
        let mut ahead = Receiver::new(&service, &fixture, 1, &mut rng);
        let mut also = Receiver::new(&service, &fixture, 1, &mut rng);
        let mut behind = Receiver::new(&service, &fixture, 2, &mut rng);
        for _ in 0..4 {
            for r in [&mut ahead, &mut also, &mut behind] {
                r.deliver(false);
                r.step();
            }
        }
        let only = |r: &Receiver| {
            assert_eq!(r.sent.len(), 1);
            r.sent[0].clone()
        };

        service.relay(fixture.space, uploader.id, entries[..1].to_vec());
        assert_eq!(ahead.step(), [(0, 0)]);
        let first = watcher.rx.try_recv().expect("the first note");
        service.relay(fixture.space, uploader.id, entries[1..].to_vec());
        let second = watcher.rx.try_recv().expect("the second note");
        assert_eq!(ahead.step(), [(1, 3)]);
        assert_eq!(also.step(), [(0, 3)], "behind by a note as well: one frame of both");
        assert_eq!(behind.step(), [(0, 3)]);
        let shared = second.frame.get().expect("the second note's frame, encoded by its first sender").clone();
        assert_eq!(only(&ahead).as_ptr(), shared.as_ptr(), "the first sender's bytes are the note's");
        assert_eq!(shared, Frame::Entries(entries[1..].to_vec()).encode());
        assert!(first.frame.get().is_some(), "the first note's frame, encoded by its one sender");
        let (a, b) = (only(&also), only(&behind));
        assert_ne!(a.as_ptr(), b.as_ptr(), "a frame of two notes is each connection's own");
        assert_eq!(a, b);
        assert_eq!(a, Frame::Entries(entries.clone()).encode());

        // The next write reaches all three as the same bytes.
        service.relay(fixture.space, uploader.id, more);
        let third = watcher.rx.try_recv().expect("the third note");
        for r in [&mut ahead, &mut also, &mut behind] {
            assert_eq!(r.step(), [(4, 4)]);
            assert_eq!(Some(only(r).as_ptr()), third.frame.get().map(|b| b.as_ptr()));
            assert_eq!(r.device.version_vector().get(&writer), Some(&5));
        }
    }

    /// A device's own entries, uploaded by another device that had them relayed (its own
    /// connection was lost before their `Ack`), are relayed again before their commit, and
    /// its new connection says hello in between. The client engine counts its own entries
    /// in the server's `Vector` as acknowledged, so that frame must not count them: a power
    /// cut before the fsync would lose entries the device believes stored, and its kill
    /// switch and pending count rely on that. The device sends them back instead; taken in
    /// once the other device's commit is through, they are duplicates, relayed to no one,
    /// and their `Ack` follows that commit.
    #[test]
    fn the_vector_frame_counts_only_committed_entries() {
        let mut rng = SeededRandom::new(9);
        let fixture = Space::new(3, &mut rng);
        let writer = fixture.identities[0].replica;
        let (_dir, service) = service();
        let uploader = service.register(fixture.space).expect("registered");
        let mut observer = service.register(fixture.space).expect("registered");
        let mut own = Receiver::new(&service, &fixture, 0, &mut rng);
        let entries: Vec<Entry> = (0..3)
            .map(|k| {
                let op = Op::Set { collection: "log".into(), record: RecordId([1; 16]), field: "n".into(), value: Value::Int(k) };
                own.device.commit(vec![op], SystemClock.now_ms(), &mut rng).expect("a write")
            })
            .collect();
        // What the engine counts as acknowledged: its `Ack`s and its own seq in the vector.
        let acked = |r: &Receiver| {
            let vectors = r.vectors.iter().filter_map(|v| v.get(&writer).copied());
            vectors.chain(r.client.acked().get(&writer).copied()).max().unwrap_or(0)
        };

        let relayed = service.relay(fixture.space, uploader.id, entries.clone());
        for _ in 0..2 {
            own.deliver(false);
            own.step();
        }
        assert!(own.sync.knows_peer_vector() && own.client.knows_peer_vector());
        assert_eq!(own.recent.len(), 1, "the relayed entries are at hand, to send from memory");
        assert_eq!(own.vectors.len(), 1);
        assert_eq!(acked(&own), 0, "relayed, not committed: not acknowledged");

        // The other device's commit.
        let mut tx = service.backend.begin().expect("a transaction");
        for e in &entries {
            tx.insert(e, &stead_core::log::check_entry(e, fixture.space, &fixture.members, &EntryLimits::default()).expect("valid").hash()).expect("stored");
        }
        tx.commit().expect("committed");
        service.committed(fixture.space, &relayed);
        while observer.rx.try_recv().is_ok() {}

        // The device sends back what the vector left out: duplicates, acknowledged now.
        own.deliver(false);
        assert!(observer.rx.try_recv().is_err(), "duplicates are relayed to no one");
        assert_eq!(own.step(), []);
        assert_eq!(acked(&own), 3);
        for _ in 0..2 {
            own.deliver(false);
            assert_eq!(own.step(), [], "nothing more goes either way");
        }
        assert!(own.to_server.is_empty());

        // A later connection's vector counts them.
        let mut again = Receiver::new(&service, &fixture, 0, &mut rng);
        for _ in 0..2 {
            again.deliver(false);
            again.step();
        }
        assert_eq!(again.vectors.first().and_then(|v| v.get(&writer)), Some(&3));
    }
}
