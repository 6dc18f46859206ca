//! The `/sync` WebSocket: stead-core's sync protocol against the database.
//!
//! A connection's [`Sync`] state machine is driven on tokio's blocking pool, one received
//! frame at a time. An Entries frame runs inside one database transaction: each entry is
//! verified (membership, seq continuity, prev hash, signature) against the chain tips
//! read in that transaction and inserted; the transaction commits; only then does the
//! connection ask its `Sync` for the frames to send, the coalesced `Ack`s among them. So
//! an `Ack` always names committed entries. Committed entries are published to the other
//! connections of the space, which send them on from their own `Sync` (each knows what
//! its peer has, so nothing is sent twice on purpose).

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use ed25519_dalek::Signer;
use futures::{SinkExt, StreamExt};
use stead_core::codec::Reader;
use stead_core::env::{Clock, SystemClock};
use stead_core::ids::{ReplicaId, SpaceId};
use stead_core::log::{ChainTip, Entry, Limits as EntryLimits, Verified, VersionVector, verify_entry};
use stead_core::membership::Membership;
use stead_core::sync::{Frame, Sync, SyncConfig, SyncPeer, check_member, code};

use crate::service::{Note, OsRandom, Service};
use crate::storage::{Backend, WriteTx};

/// Frames generated per step at most; the rest follow once these are on the wire.
const FRAMES_PER_STEP: usize = 16;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What a connection knows about its space.
#[derive(Clone)]
struct Ctx {
    space: SpaceId,
    members: Arc<Membership>,
    members_version: i64,
    server: ReplicaId,
    service: Arc<Service>,
}

impl Ctx {
    fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.service.signing.sign(msg).to_bytes()
    }
}

/// The database as seen between transactions: what the connection sends from.
struct ReadPeer<'a> {
    ctx: &'a Ctx,
    backend: &'a dyn Backend,
    vector: OnceCell<VersionVector>,
    /// Entries just committed by other connections, to send without reading them back.
    recent: &'a [Note],
}

impl SyncPeer for ReadPeer<'_> {
    fn sync_space(&self) -> SpaceId {
        self.ctx.space
    }
    fn sync_replica(&self) -> ReplicaId {
        self.ctx.server
    }
    fn sync_vector(&self) -> VersionVector {
        self.vector
            .get_or_init(|| {
                self.backend.vector(self.ctx.space).unwrap_or_else(|e| {
                    tracing::error!("reading the version vector failed: {e}");
                    VersionVector::new()
                })
            })
            .clone()
    }
    fn sync_entries(&self, replica: ReplicaId, from_seq: u64, max_entries: usize, max_bytes: usize) -> stead_core::Result<Vec<Entry>> {
        let mut out: Vec<Entry> = Vec::new();
        let mut next = from_seq;
        let mut bytes = 0;
        for e in self.recent.iter().flat_map(|n| n.iter()) {
            if e.header.replica == replica && e.header.seq == next && out.len() < max_entries && bytes < max_bytes {
                bytes += e.encoded_len();
                out.push(e.clone());
                next += 1;
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        Ok(self.backend.read(self.ctx.space, replica, from_seq, max_entries, max_bytes)?)
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

/// One write transaction: verifies entries against the tips it reads and inserts them.
struct TxPeer<'a> {
    ctx: &'a Ctx,
    members: Arc<Membership>,
    tx: Box<dyn WriteTx>,
    tips: BTreeMap<ReplicaId, Option<ChainTip>>,
    limits: EntryLimits,
    stored: Vec<Entry>,
}

impl SyncPeer for TxPeer<'_> {
    fn sync_space(&self) -> SpaceId {
        self.ctx.space
    }
    fn sync_replica(&self) -> ReplicaId {
        self.ctx.server
    }
    fn sync_vector(&self) -> VersionVector {
        self.tips.iter().filter_map(|(r, t)| t.map(|t| (*r, t.next_seq))).collect()
    }
    fn sync_entries(&self, _: ReplicaId, _: u64, _: usize, _: usize) -> stead_core::Result<Vec<Entry>> {
        Ok(Vec::new())
    }
    fn sync_ingest(&mut self, entry: Entry, _now_ms: u64) -> stead_core::Result<bool> {
        let rid = entry.header.replica;
        if !self.tips.contains_key(&rid) {
            let tip = self.tx.tip(rid)?;
            self.tips.insert(rid, tip);
        }
        let tip = self.tips[&rid];
        let tx = &mut self.tx;
        let (verdict, hash) = verify_entry(&entry, self.ctx.space, &self.members, tip.as_ref(), &self.limits, |seq| {
            Ok(tx.hash_at(rid, seq)?)
        })?;
        if verdict == Verified::Duplicate {
            return Ok(false);
        }
        self.tx.insert(&entry, &hash)?;
        let h = &entry.header;
        self.tips.insert(rid, Some(ChainTip { next_seq: h.seq + 1, last_hash: hash, last_hlc: h.hlc }));
        self.stored.push(entry);
        Ok(true)
    }
    fn sync_sign(&self, msg: &[u8]) -> [u8; 64] {
        self.ctx.sign(msg)
    }
    fn sync_check_member(&self, replica: ReplicaId, msg: &[u8], sig: &[u8; 64]) -> bool {
        check_member(&self.members, replica, msg, sig)
    }
}

/// What one step of a connection produced.
struct Step {
    out: Vec<Vec<u8>>,
    stored: Vec<Entry>,
    /// More frames are ready to generate.
    more: bool,
    /// The connection must close after sending `out`.
    close: bool,
    /// The frame held entries (for the ack latency metric).
    had_entries: bool,
}

/// Takes in `input` (if any) and generates what to send, on a blocking thread.
fn step(ctx: &mut Ctx, sync: &mut Sync, input: Option<&[u8]>, recent: &[Note]) -> Step {
    let service = ctx.service.clone();
    let backend = service.backend.as_ref();
    let now = SystemClock.now_ms();
    let mut stored = Vec::new();
    let mut had_entries = false;
    if let Some(bytes) = input {
        if bytes.first() == Some(&3) {
            had_entries = true;
            match write_frame(ctx, sync, bytes, now) {
                Ok(s) => stored = s,
                Err(message) => {
                    tracing::error!(space = %ctx.space, "commit failed: {message}");
                    let f = Frame::Error { code: code::INTERNAL, message: "the server could not store the entries".into() };
                    return Step { out: vec![f.encode()], stored, more: false, close: true, had_entries };
                }
            }
        } else {
            let mut peer = ReadPeer { ctx, backend, vector: OnceCell::new(), recent };
            if let Err(e) = sync.receive(bytes, &mut peer, now) {
                tracing::debug!(space = %ctx.space, "frame refused: {e}");
            }
        }
    }
    let peer = ReadPeer { ctx, backend, vector: OnceCell::new(), recent };
    let mut out = Vec::new();
    let mut more = false;
    while let Some(f) = sync.generate(&peer) {
        if let Frame::Error { code: c, .. } = &f {
            service.metrics.reject_code(*c);
        }
        out.push(f.encode());
        if out.len() >= FRAMES_PER_STEP {
            more = true;
            break;
        }
    }
    Step { out, stored, more, close: sync.is_closed(), had_entries }
}

/// Runs one Entries frame in a transaction; `Err` when storage failed (nothing acked).
fn write_frame(ctx: &mut Ctx, sync: &mut Sync, bytes: &[u8], now: u64) -> Result<Vec<Entry>, String> {
    let service = ctx.service.clone();
    let mut tx = service.backend.begin(ctx.space).map_err(|e| e.to_string())?;
    let version = tx.members_version().map_err(|e| e.to_string())?;
    if version != ctx.members_version {
        // Someone changed the membership since this connection looked: verify against the new log.
        if let Ok(Some((v, m))) = service.members(ctx.space) {
            ctx.members = m;
            ctx.members_version = v;
        }
    }
    let limits = EntryLimits { max_payload: service.limits.max_payload };
    let mut peer = TxPeer { ctx, members: ctx.members.clone(), tx, tips: BTreeMap::new(), limits, stored: Vec::new() };
    let result = sync.receive(bytes, &mut peer, now);
    let TxPeer { tx, stored, .. } = peer;
    if let Err(stead_core::Error::Storage(m)) = result {
        return Err(m);
    }
    if let Err(e) = &result {
        tracing::debug!(space = %ctx.space, "entries refused: {e}");
    }
    tx.commit().map_err(|e| e.to_string())?;
    service.metrics.entries_stored.fetch_add(stored.len() as u64, Ordering::Relaxed);
    Ok(stored)
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
    if bytes.first() == Some(&3) {
        let n = Reader::new(&bytes[1..], "frame").varint().unwrap_or(0);
        if n > limits.max_batch_entries as u64 {
            return Some((code::TOO_LARGE, format!("batch of {n} entries is above the limit of {}", limits.max_batch_entries)));
        }
    }
    if !rate.allow() {
        return Some((code::RATE_LIMITED, format!("more than {} frames per second", limits.frames_per_sec)));
    }
    None
}

/// Serves one upgraded `/sync` socket until it closes.
pub(crate) async fn connection(service: Arc<Service>, socket: WebSocket) {
    let _active = service.enter();
    service.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    let send_timeout = service.limits.send_timeout;
    macro_rules! send {
        ($msg:expr) => {
            match tokio::time::timeout(send_timeout, sink.send($msg)).await {
                Ok(Ok(())) => true,
                Ok(Err(_)) => false,
                Err(_) => {
                    // The peer stopped reading: it is too slow, and the socket has no room to say so.
                    service.metrics.reject("too_slow");
                    false
                }
            }
        };
    }
    let mut shutdown = service.shutdown_signal();
    if service.is_shutting_down() {
        let _ = send!(error_frame(code::SHUTTING_DOWN, "the server is shutting down"));
        return;
    }

    // The hello names the space; nothing else is accepted before it.
    let first = match tokio::time::timeout(HELLO_TIMEOUT, stream.next()).await {
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
    let members = tokio::task::spawn_blocking(move || svc.members(space)).await;
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
    let conn_id = Service::registration_id(&reg);
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

    let mut input: Option<Vec<u8>> = Some(first.to_vec());
    let mut recent: Vec<Note> = Vec::new();
    loop {
        // Run the protocol on what arrived, then send what it produced.
        let (mut ctx, mut sync) = state.take().expect("the state is back after each step");
        let started = Instant::now();
        let bytes = input.take();
        let notes = std::mem::take(&mut recent);
        let joined = tokio::task::spawn_blocking(move || {
            let s = step(&mut ctx, &mut sync, bytes.as_deref(), &notes);
            (ctx, sync, s)
        })
        .await;
        let Ok((ctx, sync, s)) = joined else {
            tracing::error!("a sync step panicked");
            return;
        };
        state = Some((ctx, sync));
        if !s.stored.is_empty() {
            service.publish(space, Some(conn_id), Arc::new(s.stored));
        }
        let n_out = s.out.len();
        for frame in s.out {
            if !send!(Message::Binary(frame.into())) {
                return;
            }
        }
        if s.had_entries && n_out > 0 && !s.close {
            service.metrics.observe_ack(started.elapsed());
        }
        if s.close {
            let _ = sink.close().await;
            return;
        }
        if s.more {
            continue;
        }
        if reg.lagged.load(Ordering::SeqCst) {
            service.metrics.reject("too_slow");
            let _ = send!(error_frame(code::TOO_SLOW, "this connection fell behind; reconnect to catch up"));
            return;
        }

        // Wait for the next thing to do.
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    service.metrics.frames_received.fetch_add(1, Ordering::Relaxed);
                    if let Some((c, m)) = check_limits(&service, &b, &mut rate) {
                        service.metrics.reject_code(c);
                        let _ = send!(error_frame(c, m));
                        let _ = sink.close().await;
                        return;
                    }
                    input = Some(b.to_vec());
                }
                Some(Ok(Message::Text(_))) => {
                    service.metrics.reject("bad_frame");
                    let _ = send!(error_frame(code::BAD_FRAME, "frames are binary"));
                    return;
                }
                Some(Ok(_)) => continue_with_nothing(&mut input),
                Some(Err(e)) => {
                    let text = e.to_string();
                    if text.contains("too long") || text.contains("too big") || text.contains("size") {
                        service.metrics.reject("too_large");
                    }
                    tracing::debug!("socket error: {e}");
                    return;
                }
                None => return,
            },
            note = reg.rx.recv() => match note {
                Some(n) => {
                    recent.push(n);
                    while let Ok(n) = reg.rx.try_recv() {
                        recent.push(n);
                    }
                }
                None => {
                    // The hub dropped this connection: its queue overflowed.
                    service.metrics.reject("too_slow");
                    let _ = send!(error_frame(code::TOO_SLOW, "this connection fell behind; reconnect to catch up"));
                    return;
                }
            },
            _ = shutdown.changed() => {
                let _ = send!(error_frame(code::SHUTTING_DOWN, "the server is shutting down"));
                let _ = sink.close().await;
                return;
            }
        }
    }
}

/// Pings and pongs carry nothing for the protocol; the loop just goes round again.
fn continue_with_nothing(input: &mut Option<Vec<u8>>) {
    *input = None;
}
