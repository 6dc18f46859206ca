//! The sync service: per-space membership, the fan-out hub with each active space's
//! version vector, group commit, limits, shutdown and the server's own handshake identity.
//! One [`Service`] is shared by every connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use stead_core::env::Random;
use stead_core::ids::{ReplicaId, SpaceId};
use stead_core::log::{Entry, VersionVector};
use stead_core::membership::Membership;
use tokio::sync::{Notify, broadcast, oneshot, watch};

use crate::commit::{self, Write};
use crate::error::{Error, Result};
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
    /// Change notifications a connection may have pending before it counts as too slow.
    pub queue: usize,
    /// How long one send to a client may take before the client counts as too slow.
    pub send_timeout: Duration,
    pub max_blob_bytes: usize,
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
            queue: 256,
            send_timeout: Duration::from_secs(20),
            max_blob_bytes: 64 << 20,
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
pub(crate) struct Published {
    /// The connection that stored them, which need not hear of them again.
    pub(crate) from: Option<u64>,
    pub(crate) entries: Vec<Entry>,
    /// The server is shutting down: finish what is in hand and close. It comes through
    /// the space's notes, which every connection waits on anyway, so an idle connection
    /// needs no second thing to wait on.
    pub(crate) shutdown: bool,
}

/// What a connection learns about new entries of its space.
pub(crate) type Note = Arc<Published>;

/// A connection's place in the hub; leaves it when dropped.
pub(crate) struct Registration {
    service: Arc<Service>,
    space: SpaceId,
    pub(crate) id: u64,
    /// The space's notes. A connection more than `Limits::queue` notes behind is told it
    /// lagged: it is cut off and catches up when it reconnects.
    pub(crate) rx: broadcast::Receiver<Note>,
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
}

impl SpaceHub {
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
    members: Mutex<HashMap<SpaceId, (i64, Arc<Membership>)>>,
    next_conn: AtomicU64,
    shutdown: watch::Sender<bool>,
    active: AtomicUsize,
    idle: Notify,
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
            members: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
            active: AtomicUsize::new(0),
            idle: Notify::new(),
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
                            service.remote(Remote { space, vector: None });
                        }
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the listener thread: {e}");
        }
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
            let hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
            for h in hub.values() {
                let _ = h.notes.send(Arc::new(Published { from: None, entries: Vec::new(), shutdown: true }));
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
        });
        if hub.conns >= self.limits.max_conns_per_space {
            return None;
        }
        hub.conns += 1;
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        Some(Registration { service: self.clone(), space, id, rx: hub.notes.subscribe() })
    }

    /// The version vector of `space` if this node holds it (the space has connections here
    /// and its vector was read from the database).
    pub(crate) fn vector(&self, space: SpaceId) -> Option<Arc<VersionVector>> {
        let hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        hub.get(&space).filter(|h| h.loaded).map(|h| h.vector.clone())
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
        if !entries.is_empty() {
            let mut advanced = VersionVector::new();
            for e in &entries {
                let n = advanced.entry(e.header.replica).or_insert(0);
                *n = (*n).max(e.header.seq + 1);
            }
            h.merge(&advanced);
        }
        // No receiver is not an error: the space's connections are all gone.
        let _ = h.notes.send(Arc::new(Published { from, entries, shutdown: false }));
    }

    /// The verified membership of `space` (cached by version); `None` for an unknown space.
    pub(crate) fn members(&self, space: SpaceId) -> Result<Option<(i64, Arc<Membership>)>> {
        let Some(stored) = self.backend.members(space)? else { return Ok(None) };
        let mut cache = self.members.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((v, m)) = cache.get(&space)
            && *v == stored.version
        {
            return Ok(Some((*v, m.clone())));
        }
        let m = Arc::new(Membership::decode(&stored.bytes)?);
        cache.insert(space, (stored.version, m.clone()));
        Ok(Some((stored.version, m)))
    }

    /// Creates a space from its genesis log, or extends its membership log.
    pub(crate) fn put_members(&self, space: SpaceId, bytes: &[u8]) -> Result<i64> {
        let new = Membership::decode(bytes)?;
        if new.space() != space {
            return Err(Error::BadRequest(format!("the log is of space {}, not {space}", new.space())));
        }
        let check = |old: Option<&[u8]>| -> Result<()> {
            let Some(old) = old else { return Ok(()) };
            let old = Membership::decode(old)?;
            let n = old.events().len();
            if new.events().len() < n || new.events()[..n] != *old.events() {
                return Err(Error::NotAnExtension);
            }
            Ok(())
        };
        let version = self.backend.put_members(space, bytes, &check)?;
        self.members.lock().unwrap_or_else(|p| p.into_inner()).insert(space, (version, Arc::new(new)));
        Ok(version)
    }

    pub(crate) fn connections(&self) -> usize {
        self.hub.lock().unwrap_or_else(|p| p.into_inner()).values().map(|h| h.conns).sum()
    }
}
