//! The sync service: per-space membership, the fan-out hub with each active space's
//! version vector, group commit, limits, shutdown and the server's own handshake identity.
//! One [`Service`] is shared by every connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use sha2::Digest;
use stead_core::env::{Clock, Random, SystemClock};
use stead_core::ids::{ReplicaId, SpaceId};
use stead_core::log::{Entry, VersionVector};
use stead_core::membership::{MemberEvent, Membership};
use tokio::sync::{Notify, broadcast, oneshot, watch};

use crate::commit::{self, Write};
use crate::error::{Error, Result};
use crate::listen::AddressKey;
use crate::metrics::Metrics;
use crate::storage::{Backend, Remote};

/// Bounds on what one connection may do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest WebSocket message accepted; larger ones get `Error{8}` and the connection closes.
    pub max_frame_bytes: usize,
    /// Most entries in one Entries frame.
    pub max_batch_entries: usize,
    /// Largest entry payload (ciphertext).
    pub max_payload: usize,
    /// Frames per second a connection may send on average, and the burst above it.
    pub frames_per_sec: u32,
    pub frames_burst: u32,
    pub max_conns_per_space: usize,
    /// `/sync` connections from one address (an IPv6 /64) that may be waiting to prove
    /// membership at once; 0 for no bound.
    pub max_unproven_per_address: usize,
    /// How long a new `/sync` connection has, from its upgrade, to prove membership.
    pub proof_timeout: Duration,
    /// Change notifications a connection may have pending before it counts as too slow.
    pub queue: usize,
    /// How long one send to a client may take before the client counts as too slow.
    pub send_timeout: Duration,
    pub max_blob_bytes: usize,
    /// A space's blobs in all, in bytes.
    pub max_blob_bytes_per_space: u64,
    /// Entries of one space at most, over all its replicas.
    pub max_entries_per_space: u64,
    /// A membership log's events at most, and its encoded size.
    pub max_membership_events: usize,
    pub max_membership_bytes: usize,
    /// Who may create spaces.
    pub creation: SpaceCreation,
    /// Verified membership logs kept in memory, at most.
    pub membership_cache: usize,
    /// How far ahead of the server's clock an entry's time may be.
    pub max_clock_drift_ms: u64,
    /// The longest an invite may stay open: a join after its expiry is refused, and so is
    /// an invite set to last longer.
    pub max_invite_ms: u64,
    /// SHA-256 of the token `/metrics` asks for; without one it answers loopback only.
    pub metrics_token: Option<[u8; 32]>,
}

/// Who may create a space on this server (by publishing its genesis membership log).
/// Extending an existing space's log needs no more than its members' signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpaceCreation {
    /// Anyone.
    Open,
    /// Whoever presents one of these operator-issued tokens (SHA-256 of each kept) in the
    /// `Stead-Creation-Token` header.
    Token(Vec<[u8; 32]>),
    /// No one: the server keeps the spaces it has.
    Closed,
}

impl SpaceCreation {
    /// Whether `token` (the request's header) allows creating a space.
    pub fn allows(&self, token: Option<&str>) -> bool {
        match self {
            SpaceCreation::Open => true,
            SpaceCreation::Closed => false,
            SpaceCreation::Token(hashes) => token.is_some_and(|t| hashes.contains(&token_hash(t))),
        }
    }
}

/// What [`SpaceCreation::Token`] keeps of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    sha2::Sha256::digest(token.trim().as_bytes()).into()
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 4 << 20,
            max_batch_entries: 1024,
            max_payload: 1 << 20,
            frames_per_sec: 1000,
            frames_burst: 2000,
            max_conns_per_space: 20_000,
            max_unproven_per_address: 32,
            proof_timeout: Duration::from_secs(10),
            queue: 256,
            send_timeout: Duration::from_secs(20),
            max_blob_bytes: 64 << 20,
            max_blob_bytes_per_space: 1 << 30,
            max_entries_per_space: 10_000_000,
            max_membership_events: 4096,
            max_membership_bytes: 1 << 20,
            creation: SpaceCreation::Closed,
            membership_cache: 4096,
            max_clock_drift_ms: 5 * 60 * 1000,
            max_invite_ms: 30 * 24 * 3600 * 1000,
            metrics_token: None,
        }
    }
}

/// The OS's random source.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&mut self, dest: &mut [u8]) {
        getrandom::getrandom(dest).expect("the operating system provides random bytes");
    }
}

/// Entries newly committed to a space (none: another node committed, read the database),
/// or the server shutting down.
#[derive(Default)]
pub(crate) struct Published {
    /// The connection that stored them, which need not hear of them again.
    pub(crate) from: Option<u64>,
    pub(crate) entries: Vec<Entry>,
    /// The server is shutting down: finish what is in hand and close. It comes through
    /// the space's notes, which every connection waits on anyway, so an idle connection
    /// needs no second thing to wait on.
    pub(crate) shutdown: bool,
    /// The space's membership changed to this (version and log): a connection whose
    /// peer is no longer an active member closes before it sends anything after it.
    pub(crate) members: Option<(i64, Arc<Membership>)>,
    /// `Frame::Entries` of exactly `entries`, encoded by the first connection that sends
    /// them and shared by the rest: in a fan-out every receiver sends the same frame.
    pub(crate) frame: OnceLock<axum::body::Bytes>,
}

impl Published {
    pub(crate) fn new(from: Option<u64>, entries: Vec<Entry>) -> Note {
        Arc::new(Published { from, entries, ..Published::default() })
    }
}

/// The next seq of each replica after `entries`.
fn extent(entries: &[Entry]) -> VersionVector {
    let mut advanced = VersionVector::new();
    for e in entries {
        let n = advanced.entry(e.header.replica).or_insert(0);
        *n = (*n).max(e.header.seq + 1);
    }
    advanced
}

/// What a connection learns about new entries of its space.
pub(crate) type Note = Arc<Published>;

/// Entries relayed before their commit: their extent, and the space's registrations at
/// the relay.
#[derive(Debug)]
pub(crate) struct Relayed {
    pub(crate) advanced: VersionVector,
    pub(crate) joined: u64,
}

/// A connection's place in the hub; leaves it when dropped.
pub(crate) struct Registration {
    service: Arc<Service>,
    space: SpaceId,
    pub(crate) id: u64,
    /// The space's notes. A connection more than `Limits::queue` notes behind is told it
    /// lagged: it is cut off and catches up when it reconnects.
    pub(crate) rx: broadcast::Receiver<Note>,
    /// The space's count of notes sent ([`SpaceHub::sent`]) that this connection has
    /// received: at the count, its part of the ring is empty.
    taken: u64,
}

impl Registration {
    /// The next note, when one comes.
    pub(crate) async fn recv(&mut self) -> Result<Note, broadcast::error::RecvError> {
        let n = self.rx.recv().await;
        self.taken += u64::from(n.is_ok());
        n
    }

    /// The next note, if one is queued.
    pub(crate) fn try_recv(&mut self) -> Result<Note, broadcast::error::TryRecvError> {
        let n = self.rx.try_recv();
        self.taken += u64::from(n.is_ok());
        n
    }

    /// Whether notes may be queued that were sent no later than `view` was read. An empty
    /// ring is only known for sure under its tail lock, which every receiver of the space
    /// and its sender contend for; the count read with the vector, under the hub's lock,
    /// spares it.
    pub(crate) fn may_hold_notes(&self, view: &SpaceView) -> bool {
        view.sent != self.taken
    }
}

/// What a connection's step reads of its space, under one lock.
pub(crate) struct SpaceView {
    /// The space's vector, if this node holds it (see [`Service::vector`]).
    pub(crate) vector: Option<Arc<VersionVector>>,
    /// Notes sent to the space's ring so far.
    sent: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut hub = self.service.hub.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(space) = hub.get_mut(&self.space) {
            space.conns -= 1;
            if space.conns == 0 {
                hub.remove(&self.space);
            }
        }
    }
}

/// A `/sync` connection still proving membership; see [`Service::unproven`].
pub(crate) struct Unproven {
    service: Arc<Service>,
    key: Option<AddressKey>,
}

impl Drop for Unproven {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut map = self.service.unproven.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&key);
            }
        }
    }
}

/// `m` extended by the events of `events` past its own, which must start with its own.
fn extend(m: &Membership, events: &[stead_core::membership::SignedEvent]) -> Result<Membership> {
    let n = m.events().len();
    if events.len() < n || events[..n] != *m.events() {
        return Err(Error::NotAnExtension);
    }
    let mut m = m.clone();
    for ev in &events[n..] {
        m.apply(ev.clone())?;
    }
    Ok(m)
}

/// The size of a space key wrapped to a device (see `stead_core::crypto::wrap_space_key`):
/// ephemeral public key, nonce, key, tag.
const WRAPPED_KEY_LEN: usize = 32 + stead_core::crypto::NONCE_LEN + 32 + stead_core::crypto::TAG_LEN;

/// Verified membership logs by space, the least recently used dropped past a bound.
#[derive(Default)]
struct MembersCache {
    map: HashMap<SpaceId, (i64, Arc<Membership>, u64)>,
    tick: u64,
}

impl MembersCache {
    fn get(&mut self, space: SpaceId) -> Option<(i64, Arc<Membership>)> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&space).map(|(v, m, used)| {
            *used = tick;
            (*v, m.clone())
        })
    }

    fn insert(&mut self, space: SpaceId, version: i64, m: Arc<Membership>, bound: usize) {
        self.tick += 1;
        if self.map.get(&space).is_some_and(|(v, ..)| *v > version) {
            return;
        }
        self.map.insert(space, (version, m, self.tick));
        if self.map.len() > bound {
            // A scan, but only when the cache is full, and it frees a slot for the next
            // `bound / 8` inserts at once.
            let mut by_use: Vec<(u64, SpaceId)> = self.map.iter().map(|(s, (_, _, u))| (*u, *s)).collect();
            by_use.sort_unstable();
            for (_, s) in by_use.into_iter().take((bound / 8).max(1)) {
                self.map.remove(&s);
            }
        }
    }
}

/// A space with connections on this node.
struct SpaceHub {
    conns: usize,
    /// One ring of `Limits::queue` notes shared by the space's connections, rather than a
    /// queue per connection: an idle connection holds only its place in the ring.
    notes: broadcast::Sender<Note>,
    /// Replica → next seq committed. Merged by max from the database (once), this node's
    /// commits and other nodes' notifications, so the order they arrive in does not matter.
    vector: Arc<VersionVector>,
    /// `vector` covers the database: it was read since the space became active here and
    /// no notification since said to read it again.
    loaded: bool,
    /// Bumped when the vector must be read again, so a read that began before does not
    /// count as loaded.
    epoch: u64,
    /// Registrations so far. A connection registered between an entry's relay and its
    /// commit heard neither: the relay went before it joined, and its first sync step
    /// read a vector without the entry. The commit then wakes the space (see
    /// [`Service::committed`]).
    joined: u64,
    /// Notes sent to `notes` so far.
    sent: u64,
}

impl SpaceHub {
    /// Sends `n` to the space's connections.
    fn note(&mut self, n: Note) {
        // No receiver is not an error: the space's connections are all gone.
        let _ = self.notes.send(n);
        self.sent += 1;
    }

    fn merge(&mut self, other: &VersionVector) {
        let mut changed = false;
        for (r, n) in other {
            if self.vector.get(r).is_none_or(|m| m < n) {
                changed = true;
            }
        }
        if changed {
            let v = Arc::make_mut(&mut self.vector);
            for (r, n) in other {
                let m = v.entry(*r).or_insert(0);
                *m = (*m).max(*n);
            }
        }
    }
}

/// The server's sync state shared by all connections.
pub struct Service {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) limits: Limits,
    pub(crate) id: ReplicaId,
    pub(crate) signing: SigningKey,
    pub(crate) metrics: Metrics,
    /// Blocking tasks one write's signature checks are split into at most: the cores.
    pub(crate) check_threads: usize,
    hub: Mutex<HashMap<SpaceId, SpaceHub>>,
    /// The group committer's queue, for backends with one writer at a time.
    committer: Option<commit::Queue>,
    members: Mutex<MembersCache>,
    next_conn: AtomicU64,
    shutdown: watch::Sender<bool>,
    active: AtomicUsize,
    idle: Notify,
    /// Signed requests seen within the window (signature prefix → request time), so each
    /// is taken once.
    seen_requests: Mutex<HashMap<[u8; 16], u64>>,
    /// `/sync` connections not yet proven, per address.
    unproven: Mutex<HashMap<AddressKey, usize>>,
    /// The connection counts of the listener serving this service, for `/metrics`.
    pub(crate) gate: OnceLock<Arc<crate::listen::Gate>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("backend", &self.backend.kind()).field("limits", &self.limits).finish()
    }
}

/// Counts a running connection until dropped.
pub(crate) struct Active(Arc<Service>);

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Service {
    pub fn new(backend: Arc<dyn Backend>, limits: Limits) -> Arc<Service> {
        let mut rng = OsRandom;
        let committer = if backend.serial_writes() { commit::spawn_committer() } else { None };
        let service = Arc::new(Service {
            committer,
            backend,
            limits,
            id: ReplicaId(rng.array()),
            signing: SigningKey::from_bytes(&rng.array()),
            metrics: Metrics::default(),
            check_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            hub: Mutex::new(HashMap::new()),
            members: Mutex::new(MembersCache::default()),
            next_conn: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            gate: OnceLock::new(),
            unproven: Mutex::new(HashMap::new()),
            seen_requests: Mutex::new(HashMap::new()),
        });
        service.spawn_listener();
        service
    }

    /// Wakes local connections when other nodes commit (PostgreSQL only).
    fn spawn_listener(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        // A plain thread: the blocking wait would otherwise hold a blocking-pool thread forever.
        let spawned = std::thread::Builder::new().name("stead-listen".into()).spawn(move || {
            loop {
                let Some(service) = weak.upgrade() else { return };
                if *service.shutdown.borrow() {
                    return;
                }
                let backend = service.backend.clone();
                drop(service);
                let got = backend.listen(Duration::from_millis(500));
                let Some(service) = weak.upgrade() else { return };
                match got {
                    None => return,
                    Some(Ok(remotes)) => {
                        for remote in remotes {
                            service.remote(remote);
                        }
                    }
                    Some(Err(e)) => {
                        // Notifications may have been lost while disconnected: read every
                        // vector again and wake everyone.
                        tracing::warn!("listening for other nodes failed: {e}");
                        let spaces: Vec<SpaceId> = service.hub.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect();
                        for space in spaces {
                            service.remote(Remote { space, vector: None, members: true });
                        }
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the listener thread: {e}");
        }
    }

    pub(crate) fn set_gate(&self, gate: Arc<crate::listen::Gate>) {
        let _ = self.gate.set(gate);
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub(crate) fn enter(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::SeqCst);
        Active(self.clone())
    }

    /// Tells every connection to finish the frame in hand (its commit and acks) and close,
    /// then waits for them, at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutdown.send_replace(true);
        {
            // A connection registered after this sees the flag set (see `sync::Conn::open`).
            let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
            for h in hub.values_mut() {
                h.note(Arc::new(Published { shutdown: true, ..Published::default() }));
            }
        }
        let wait = async {
            loop {
                let idle = self.idle.notified();
                if self.active.load(Ordering::SeqCst) == 0 {
                    return;
                }
                idle.await;
            }
        };
        if tokio::time::timeout(grace, wait).await.is_err() {
            tracing::warn!("{} connections still open after the grace period", self.active.load(Ordering::SeqCst));
        }
    }

    /// Counts a `/sync` connection from `ip` that has yet to prove membership, unless its
    /// address has too many such; the count drops with the guard. Connections whose
    /// address is unknown (served without `listen`) are not counted.
    pub(crate) fn unproven(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<Unproven> {
        let Some(ip) = ip else { return Some(Unproven { service: self.clone(), key: None }) };
        let key = AddressKey::of(ip);
        let mut map = self.unproven.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key).or_insert(0);
        let max = self.limits.max_unproven_per_address;
        if max != 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(Unproven { service: self.clone(), key: Some(key) })
    }

    /// Whether a signed request with signature `sig`, made at `time_ms`, is seen for the
    /// first time (then it is remembered until it falls out of the window). Ed25519
    /// signatures are deterministic, so a replay carries the same bytes.
    pub(crate) fn first_use(&self, sig: &[u8; 64], time_ms: u64) -> bool {
        use stead_core::env::Clock;
        let now = stead_core::env::SystemClock.now_ms();
        let window = crate::http::REQUEST_WINDOW_MS;
        let key: [u8; 16] = sig[..16].try_into().expect("16 of 64 bytes");
        let mut seen = self.seen_requests.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= 4096 && seen.len().is_power_of_two() {
            // Forget what can no longer be replayed: the window checks its time anyway.
            seen.retain(|_, t| now.abs_diff(*t) <= window);
        }
        seen.insert(key, time_ms).is_none()
    }

    /// Joins the hub of `space`, unless it is full.
    pub(crate) fn register(self: &Arc<Self>, space: SpaceId) -> Option<Registration> {
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        let queue = self.limits.queue.max(1);
        let hub = hub.entry(space).or_insert_with(|| SpaceHub {
            conns: 0,
            notes: broadcast::channel(queue).0,
            vector: Arc::default(),
            loaded: false,
            epoch: 0,
            joined: 0,
            sent: 0,
        });
        if hub.conns >= self.limits.max_conns_per_space {
            return None;
        }
        hub.conns += 1;
        hub.joined += 1;
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        Some(Registration { service: self.clone(), space, id, rx: hub.notes.subscribe(), taken: hub.sent })
    }

    /// How many entries `space` holds, if this node holds its vector: seqs start at 0
    /// and have no gaps, so the sum of the next seqs.
    pub(crate) fn entries_in(&self, space: SpaceId) -> Option<u64> {
        self.vector(space).map(|v| v.values().sum())
    }

    /// The version vector of `space` if this node holds it (the space has connections here
    /// and its vector was read from the database).
    pub(crate) fn vector(&self, space: SpaceId) -> Option<Arc<VersionVector>> {
        self.view(space).vector
    }

    /// The vector of `space` (as [`Service::vector`]) and the count of its notes sent.
    pub(crate) fn view(&self, space: SpaceId) -> SpaceView {
        let hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        match hub.get(&space) {
            Some(h) => SpaceView { vector: h.loaded.then(|| h.vector.clone()), sent: h.sent },
            None => SpaceView { vector: None, sent: u64::MAX },
        }
    }

    /// The version vector of `space`, read from the database when this node does not hold
    /// it yet (blocking). The caller is registered in the space.
    pub(crate) fn load_vector(&self, space: SpaceId) -> Result<Arc<VersionVector>> {
        let epoch = {
            let hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
            match hub.get(&space) {
                Some(h) if h.loaded => return Ok(h.vector.clone()),
                Some(h) => h.epoch,
                None => 0,
            }
        };
        let stored = self.backend.vector(space)?;
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        let Some(h) = hub.get_mut(&space) else { return Ok(Arc::new(stored)) };
        h.merge(&stored);
        if h.epoch == epoch {
            h.loaded = true;
        }
        Ok(h.vector.clone())
    }

    /// Another node committed to `space`: advance its vector (or read it again) and wake
    /// this node's connections of it.
    pub(crate) fn remote(&self, remote: Remote) {
        {
            let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
            let Some(h) = hub.get_mut(&remote.space) else { return };
            match &remote.vector {
                Some(v) => h.merge(v),
                None => {
                    h.loaded = false;
                    h.epoch += 1;
                }
            }
        }
        self.publish(remote.space, None, Vec::new());
        if remote.members {
            match self.members(remote.space) {
                Ok(Some(m)) => self.publish_members(remote.space, m),
                Ok(None) => {}
                Err(e) => tracing::warn!(space = %remote.space, "reading a changed membership failed: {e}"),
            }
        }
    }

    /// Tells every connection of `space` its membership is now `members`.
    fn publish_members(&self, space: SpaceId, members: (i64, Arc<Membership>)) {
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = hub.get_mut(&space) {
            h.note(Arc::new(Published { members: Some(members), ..Published::default() }));
        }
    }

    /// Runs a write in a durable transaction (grouped with other connections' writes when
    /// the backend has one writer); `None` when the server is going away.
    pub(crate) async fn commit(self: &Arc<Self>, write: Write) -> Option<Write> {
        match &self.committer {
            Some(queue) => {
                let (tx, rx) = oneshot::channel();
                queue.send((write, tx)).ok()?;
                rx.await.ok()
            }
            None => {
                let service = self.clone();
                let joined = tokio::task::spawn_blocking(move || {
                    let mut group = vec![write];
                    commit::commit_group(&service, &mut group);
                    group.pop()
                });
                joined.await.ok().flatten()
            }
        }
    }

    /// Tells every connection of `space` but `from` about newly committed entries (after
    /// advancing the space's vector past them).
    pub(crate) fn publish(&self, space: SpaceId, from: Option<u64>, entries: Vec<Entry>) {
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        let Some(h) = hub.get_mut(&space) else { return };
        h.merge(&extent(&entries));
        h.note(Published::new(from, entries));
    }

    /// Tells every connection of `space` but `from` about entries verified and inserted in
    /// a transaction not yet committed, without advancing the space's vector (see
    /// `commit::commit_group`); their extent, for [`Service::committed`].
    pub(crate) fn relay(&self, space: SpaceId, from: u64, entries: Vec<Entry>) -> Relayed {
        let advanced = extent(&entries);
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        let joined = hub.get_mut(&space).map_or(0, |h| {
            h.note(Published::new(Some(from), entries));
            h.joined
        });
        Relayed { advanced, joined }
    }

    /// Advances the vector of `space` past relayed entries now committed. A connection
    /// that registered since the relay missed its note and synced from a vector without
    /// those entries: an empty note wakes the space, and its next step sends them.
    pub(crate) fn committed(&self, space: SpaceId, relayed: &Relayed) {
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = hub.get_mut(&space) {
            h.merge(&relayed.advanced);
            if h.joined != relayed.joined {
                h.note(Published::new(None, Vec::new()));
            }
        }
    }

    /// The verified membership of `space` (cached by version); `None` for an unknown space.
    /// A cached log costs one read of the stored version (another node may have changed
    /// the log); only a new version reads the log itself.
    pub(crate) fn members(&self, space: SpaceId) -> Result<Option<(i64, Arc<Membership>)>> {
        let cached = self.members.lock().unwrap_or_else(|p| p.into_inner()).get(space);
        if let Some((v, m)) = &cached {
            match self.backend.members_version(space)? {
                Some(stored) if stored == *v => return Ok(Some((*v, m.clone()))),
                None => return Ok(None),
                Some(_) => {}
            }
        }
        let Some(stored) = self.backend.members(space)? else { return Ok(None) };
        match cached {
            Some((v, m)) if v == stored.version => return Ok(Some((v, m))),
            // An older version: verify only what the stored log adds to it.
            Some((_, m)) => {
                if let Ok(m) = extend(&m, &Membership::decode_events(&stored.bytes)?) {
                    return Ok(Some(self.cache_members(space, stored.version, m)));
                }
            }
            None => {}
        }
        let m = Membership::decode(&stored.bytes)?;
        Ok(Some(self.cache_members(space, stored.version, m)))
    }

    fn cache_members(&self, space: SpaceId, version: i64, m: Membership) -> (i64, Arc<Membership>) {
        let m = Arc::new(m);
        let mut cache = self.members.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(space, version, m.clone(), self.limits.membership_cache.max(1));
        (version, m)
    }

    /// Creates a space from its genesis log (as the creation policy allows, given the
    /// request's `token`), or extends its membership log.
    ///
    /// The log is bounded (events, bytes, wrapped key sizes) before anything is verified,
    /// and only the events it adds to the log already verified are verified, outside the
    /// write transaction: the transaction only checks that the stored log is still a
    /// prefix of the new one. A log the server already has costs no write at all.
    pub(crate) fn put_members(&self, space: SpaceId, bytes: &[u8], token: Option<&str>) -> Result<i64> {
        let limits = &self.limits;
        if bytes.len() > limits.max_membership_bytes {
            self.metrics.reject_quota("membership");
            return Err(Error::TooLarge { what: "membership log", size: bytes.len(), limit: limits.max_membership_bytes });
        }
        let events = Membership::decode_events(bytes)?;
        if events.len() > limits.max_membership_events {
            self.metrics.reject_quota("membership");
            return Err(Error::TooLarge { what: "membership log (events)", size: events.len(), limit: limits.max_membership_events });
        }
        for (i, ev) in events.iter().enumerate() {
            if let MemberEvent::Add { wrapped_key, .. } = &ev.event
                && wrapped_key.len() != WRAPPED_KEY_LEN
            {
                return Err(Error::BadRequest(format!("event {i}: a wrapped space key is {WRAPPED_KEY_LEN} bytes, not {}", wrapped_key.len())));
            }
        }
        let current = self.members(space)?;
        let new = match &current {
            None => {
                if !limits.creation.allows(token) {
                    self.metrics.reject_quota("creation");
                    return Err(Error::Forbidden(match limits.creation {
                        SpaceCreation::Closed => "this server does not take new spaces",
                        _ => "creating a space here needs a valid Stead-Creation-Token header",
                    }));
                }
                Membership::verify(&events)?
            }
            Some((version, m)) => {
                if events.len() == m.events().len() && events == m.events() {
                    return Ok(*version);
                }
                extend(m, &events)?
            }
        };
        if new.space() != space {
            return Err(Error::BadRequest(format!("the log is of space {}, not {space}", new.space())));
        }
        let known = current.as_ref().map_or(0, |(_, m)| m.events().len());
        if let Err(e) = new.check_times(known, SystemClock.now_ms(), limits.max_invite_ms) {
            return Err(Error::Gone(e.to_string()));
        }
        let check = |old: Option<&[u8]>| -> Result<()> {
            let Some(old) = old else { return Ok(()) };
            let old = Membership::decode_events(old)?;
            if events.len() < old.len() || events[..old.len()] != *old {
                return Err(Error::NotAnExtension);
            }
            Ok(())
        };
        let version = self.backend.put_members(space, bytes, &check)?;
        let members = self.cache_members(space, version, new);
        // In order with the entries that follow it: a removed device's connection is
        // closed before it could be sent any entry committed after its removal.
        self.publish_members(space, members);
        Ok(version)
    }

    pub(crate) fn connections(&self) -> usize {
        self.hub.lock().unwrap_or_else(|p| p.into_inner()).values().map(|h| h.conns).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service over a fresh SQLite database (the folder goes when dropped).
    fn service() -> (tempfile::TempDir, Arc<Service>) {
        let dir = tempfile::tempdir().expect("a folder");
        let db = dir.path().join("stead.sqlite3");
        let backend = crate::storage::open(db.to_str().expect("a UTF-8 path"), [0; 16]).expect("SQLite");
        (dir, Service::new(backend, Limits::default()))
    }

    /// The race behind a receiver that never got an entry (seen in `crash` and `hostile`
    /// runs): it registered after the entry's relay and synced before its commit.
    #[test]
    fn a_connection_that_joins_between_a_relay_and_its_commit_is_woken_by_the_commit() {
        let (_dir, service) = service();
        let space = SpaceId([7; 16]);
        let writer = service.register(space).expect("registered");
        let relayed = service.relay(space, writer.id, Vec::new());
        let mut late = service.register(space).expect("registered");
        assert!(late.rx.try_recv().is_err(), "the relay went before it joined");
        service.committed(space, &relayed);
        assert!(late.rx.try_recv().is_ok(), "the commit woke the connection that joined after the relay");

        // With no registration between relay and commit, the commit sends nothing more.
        let relayed = service.relay(space, writer.id, Vec::new());
        assert!(late.rx.try_recv().is_ok(), "the relay itself");
        service.committed(space, &relayed);
        assert!(late.rx.try_recv().is_err(), "no note beyond the relay");
    }

    /// A step skips its look into the ring when the count read with the vector says the
    /// connection has taken every note sent by then; a note of any kind must make it look.
    #[test]
    fn the_count_read_with_the_vector_tells_whether_notes_are_queued() {
        let (_dir, service) = service();
        let space = SpaceId([9; 16]);
        let writer = service.register(space).expect("registered");
        service.publish(space, Some(writer.id), Vec::new());
        let mut reader = service.register(space).expect("registered");
        assert!(!reader.may_hold_notes(&service.view(space)), "a note sent before it joined is not its to take");

        service.publish(space, Some(writer.id), Vec::new());
        let relayed = service.relay(space, writer.id, Vec::new());
        service.publish(space, None, Vec::new());
        let view = service.view(space);
        for _ in 0..3 {
            assert!(reader.may_hold_notes(&view), "a queued note is not skipped");
            reader.try_recv().expect("the note");
        }
        assert!(!reader.may_hold_notes(&view), "every note sent by the view was taken");

        // A note sent after the view was read is for the next step.
        service.committed(space, &relayed);
        service.publish(space, None, Vec::new());
        assert!(!reader.may_hold_notes(&view));
        let view = service.view(space);
        assert!(reader.may_hold_notes(&view));
        while reader.try_recv().is_ok() {}
        assert!(!reader.may_hold_notes(&view));
        drop(writer);
    }
}
