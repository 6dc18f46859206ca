//! The client engine: a thread that owns the replica and keeps it synced with a server.
//!
//! A [`Replica`] is not `Send` (its store is a plain trait object), so it lives on its own
//! thread with a single-threaded tokio runtime. [`Client`] is the handle: it sends
//! commands to that thread and receives events and status from it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use stead_core::crypto::{self, SpaceKey};
use stead_core::env::{Clock, Random, SystemClock};
use stead_core::ids::{RecordId, ReplicaId, SpaceId};
use stead_core::log::VersionVector;
use stead_core::membership::{InviteSecret, InviteTerms, Membership, Role};
use stead_core::ops::{Op, Value};
use stead_core::query::{Page, Query};
use stead_core::replica::{Config as ReplicaConfig, Identity, Replica};
use stead_core::schema::Schema;
use stead_core::sync::{Frame, Sync, SyncConfig, code};
use stead_store::{FileStore, Options};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::device::{Device, DeviceCard, io, write_private};
use crate::{Error, OsRandom, Result, request};

/// Where a client keeps its data and which server it syncs with.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Holds `device.json`, `space.json` and the `store/` log.
    pub dir: PathBuf,
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// First reconnect delay; it doubles per failed attempt up to `backoff_max`, and each
    /// delay is jittered down to half its value so clients do not reconnect in step.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// fsync every local append (turn off only for throwaway tests).
    pub fsync: bool,
    /// The operator-issued token a server with `--spaces token` asks for to create a space.
    pub creation_token: Option<String>,
}

impl ClientConfig {
    pub fn new(dir: impl Into<PathBuf>, server: impl Into<String>) -> ClientConfig {
        ClientConfig {
            dir: dir.into(),
            server: server.into(),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            fsync: true,
            creation_token: None,
        }
    }
}

/// What the engine reports to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Connected,
    Disconnected { reason: String },
    /// Remote entries of `replica` were taken in, up to seq `next - 1`.
    Changed { replica: ReplicaId, next: u64 },
    /// The server has durably stored this device's entries below `next`.
    Acked { next: u64 },
    /// An entry from the server was refused; its replica's chain is skipped.
    Rejected { reason: String },
}

/// The engine's state as last reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub connected: bool,
    /// Successful connections so far.
    pub connects: u64,
    /// Replica → next seq held locally.
    pub vector: VersionVector,
    /// This device's next seq and the next seq the server has acknowledged.
    pub own_next: u64,
    pub acked: u64,
    /// Why the last entry this device refused was refused (a forged entry, one dated
    /// too far ahead): that replica's chain is skipped on this connection while the rest
    /// of the space goes on syncing.
    pub rejected: Option<String>,
}

type ReadFn = Box<dyn FnOnce(&mut Replica) + Send>;

enum Cmd {
    Commit(Vec<Op>, oneshot::Sender<Result<u64>>),
    Read(ReadFn),
    Invite(DeviceCard, Role, oneshot::Sender<Result<()>>),
    InviteCode(InviteTerms, oneshot::Sender<Result<String>>),
    Remove(ReplicaId, oneshot::Sender<Result<()>>),
    Interrupt,
}

#[derive(Serialize, Deserialize)]
struct SpaceFile {
    space: String,
    key: String,
}

/// A device's replica of one space, synced in the background.
pub struct Client {
    cmds: mpsc::UnboundedSender<Cmd>,
    events: broadcast::Sender<Event>,
    status: watch::Receiver<Status>,
    thread: Option<std::thread::JoinHandle<()>>,
    space: SpaceId,
    device: Device,
    server: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("space", &self.space).field("replica", &self.device.replica).finish()
    }
}

/// Splits an invite code `<space>.<secret, 64 hex>`.
fn parse_invite_code(code: &str) -> Result<(SpaceId, InviteSecret)> {
    let bad = |reason: &str| Error::Invalid { what: "invite code", reason: reason.into() };
    let (space, secret) = code.trim().split_once('.').ok_or_else(|| bad("expected <space>.<secret>"))?;
    let space = space.parse().map_err(|_| bad("the space id is malformed"))?;
    let secret: [u8; 32] = hex::decode(secret).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| bad("the secret is not 64 hex digits"))?;
    Ok((space, InviteSecret(secret)))
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default()
}

fn save_space(dir: &Path, space: SpaceId, key: &SpaceKey) -> Result<()> {
    let s = SpaceFile { space: space.to_string(), key: hex::encode(key.0) };
    write_private(&dir.join("space.json"), serde_json::to_string_pretty(&s).expect("serialisable").as_bytes())
}

fn load_space(dir: &Path) -> Result<(SpaceId, SpaceKey)> {
    let path = dir.join("space.json");
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    let bad = |r: String| Error::Invalid { what: "space.json", reason: r };
    let s: SpaceFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let space = s.space.parse().map_err(|_| bad("bad space id".into()))?;
    let key: [u8; 32] = hex::decode(&s.key).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| bad("bad key".into()))?;
    Ok((space, SpaceKey(key)))
}

impl Client {
    /// Creates a new space with this folder's device as its first member, registers it on
    /// the server and starts syncing.
    pub async fn create(config: ClientConfig) -> Result<Client> {
        let device = Device::load_or_create(&config.dir)?;
        let mut rng = OsRandom;
        let space = SpaceId::generate(&SystemClock, &mut rng);
        let key = SpaceKey(rng.array());
        let members = Membership::genesis(space, device.card().member(), &device.signing)?;
        request::put_members(&http_client(), &config.server, &members, config.creation_token.as_deref()).await?;
        save_space(&config.dir, space, &key)?;
        Client::start(config, device, space, key, Some(members)).await
    }

    /// Joins `space` once a member has invited this folder's device (see [`Device::card`]):
    /// fetches the membership log and unwraps the space key from it.
    pub async fn join(config: ClientConfig, space: SpaceId) -> Result<Client> {
        let device = Device::load_or_create(&config.dir)?;
        let members = match request::get_members(&http_client(), &config.server, space, device.replica, &device.signing).await {
            Ok(m) => m,
            Err(Error::Server { status: 401, .. }) => return Err(Error::NotInvited(space.to_string())),
            Err(e) => return Err(e),
        };
        let wrapped = members.wrapped_key_for(device.replica).ok_or_else(|| Error::NotInvited(space.to_string()))?;
        let key = crypto::unwrap_space_key(wrapped, space, &device.agreement)?;
        save_space(&config.dir, space, &key)?;
        Client::start(config, device, space, key, Some(members)).await
    }

    /// Joins through an invite code ([`Client::invite_code`]): this folder's device (its
    /// own keys, made here) fetches the membership log with the invite's key, appends
    /// its join and publishes it. A code works once, until it expires.
    pub async fn join_invite(config: ClientConfig, code: &str) -> Result<Client> {
        let (space, secret) = parse_invite_code(code)?;
        let device = Device::load_or_create(&config.dir)?;
        let http = http_client();
        let mut attempts = 0;
        let (members, key) = loop {
            let mut members = match request::get_members_invited(&http, &config.server, space, &secret).await {
                Ok(m) => m,
                Err(Error::Server { status: 401, .. }) => return Err(Error::InviteNotPending),
                Err(e) => return Err(e),
            };
            let ring = members.join(&secret, device.card().member(), &device.agreement, &mut OsRandom)?;
            let key = ring.current().ok_or(stead_core::Error::NoCurrentKey)?.clone();
            match request::put_members(&http, &config.server, &members, None).await {
                Ok(()) => break (members, key),
                // The log moved on meanwhile (say, a rotation): join again on top of it.
                Err(Error::Server { status: 409, .. }) if attempts < 3 => attempts += 1,
                Err(Error::Server { status: 410, body }) => return Err(Error::Server { status: 410, body }),
                Err(e) => return Err(e),
            }
        };
        save_space(&config.dir, space, &key)?;
        Client::start(config, device, space, key, Some(members)).await
    }

    /// Opens the space already in the folder.
    pub async fn open(config: ClientConfig) -> Result<Client> {
        let device = Device::load_or_create(&config.dir)?;
        let (space, key) = load_space(&config.dir)?;
        Client::start(config, device, space, key, None).await
    }

    async fn start(config: ClientConfig, device: Device, space: SpaceId, key: SpaceKey, members: Option<Membership>) -> Result<Client> {
        let (cmds, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(4096);
        let (status_tx, status) = watch::channel(Status::default());
        let (ready_tx, ready) = oneshot::channel();
        let ev = events.clone();
        let (cfg, dev) = (config.clone(), device.clone());
        let thread = std::thread::Builder::new()
            .name(format!("stead-client-{}", device.replica))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::Io { path: "tokio runtime".into(), source: e }));
                        return;
                    }
                };
                rt.block_on(async move {
                    match Engine::open(cfg, dev, space, key, members, ev, status_tx) {
                        Ok(engine) => {
                            let _ = ready_tx.send(Ok(()));
                            engine.run(rx).await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| Error::Io { path: "client thread".into(), source: e })?;
        ready.await.map_err(|_| Error::Stopped)??;
        Ok(Client { cmds, events, status, thread: Some(thread), space, device, server: config.server, http: http_client() })
    }

    pub fn space(&self) -> SpaceId {
        self.space
    }

    pub fn replica(&self) -> ReplicaId {
        self.device.replica
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs `f` on the replica, on the engine thread.
    pub async fn read<T: Send + 'static>(&self, f: impl FnOnce(&mut Replica) -> T + Send + 'static) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let run: ReadFn = Box::new(move |r| {
            let _ = tx.send(f(r));
        });
        self.cmds.send(Cmd::Read(run)).map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Writes `ops` as one entry (stored locally at once, sent when connected); returns its seq.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::Commit(ops, tx)).map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Sets one field of one record.
    pub async fn set(&self, collection: &str, record: RecordId, field: &str, value: Value) -> Result<u64> {
        let op = Op::Set { collection: collection.into(), record, field: field.into(), value };
        self.commit(vec![op]).await
    }

    pub async fn value(&self, collection: &str, record: RecordId, field: &str) -> Result<Option<Value>> {
        let (c, f) = (collection.to_owned(), field.to_owned());
        self.read(move |r| r.value(&c, record, &f)).await
    }

    /// Sets the schema this replica validates writes against and queries through (kept in
    /// memory: set it again after opening).
    pub async fn set_schema(&self, schema: Schema) -> Result<()> {
        self.read(move |r| r.set_schema(schema)).await?.map_err(Error::from)
    }

    /// One page of a query through the schema's indexes (`Filter::All` needs no index).
    pub async fn query(&self, q: Query) -> Result<Page> {
        self.read(move |r| r.query(&q)).await?.map_err(Error::from)
    }

    pub async fn vector(&self) -> Result<VersionVector> {
        self.read(|r| r.version_vector()).await
    }

    /// Adds a device to the space: wraps the space key to it and publishes the new
    /// membership log on the server.
    pub async fn invite(&self, card: &DeviceCard) -> Result<()> {
        self.invite_as(card, Role::Owner).await
    }

    /// [`Client::invite`] as `role`: a writer writes, a reader only reads.
    pub async fn invite_as(&self, card: &DeviceCard, role: Role) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::Invite(card.clone(), role, tx)).map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Makes a one-time invite code (`<space>.<secret>`) for one device, as `terms` say:
    /// the invite is in the membership log on the server when this returns. The code is a
    /// secret: whoever holds it may join, once, until it expires.
    pub async fn invite_code(&self, terms: InviteTerms) -> Result<String> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::InviteCode(terms, tx)).map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Removes a device from the space, rotates the space key (the removed device cannot
    /// read what is written after) and publishes the new membership log: the server
    /// closes its connections and takes no more of its entries. Its entries up to the
    /// last one this device holds stay valid.
    pub async fn remove(&self, replica: ReplicaId) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::Remove(replica, tx)).map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// The space's devices, with each one's role and whether it is still an active member.
    pub async fn members(&self) -> Result<Vec<(stead_core::membership::Member, Role, bool)>> {
        self.read(|r| r.members().members().map(|(m, role, active)| (m.clone(), role, active)).collect()).await
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Waits until `pred` holds for the status.
    pub async fn wait_for(&self, timeout: Duration, what: &'static str, pred: impl Fn(&Status) -> bool) -> Result<Status> {
        let mut rx = self.status.clone();
        let wait = async {
            loop {
                {
                    let s = rx.borrow_and_update();
                    if pred(&s) {
                        return Ok(s.clone());
                    }
                }
                rx.changed().await.map_err(|_| Error::Stopped)?;
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| Error::Timeout(what))?
    }

    /// Waits until the server has acknowledged every entry this device wrote.
    pub async fn wait_acked(&self, timeout: Duration) -> Result<Status> {
        self.wait_for(timeout, "the server to acknowledge every entry", |s| s.acked >= s.own_next).await
    }

    /// Drops the current connection at once, as a network cut would; the engine reconnects.
    pub fn interrupt(&self) {
        let _ = self.cmds.send(Cmd::Interrupt);
    }

    /// Stores an (already encrypted) blob in the space; returns its SHA-256 in hex.
    pub async fn put_blob(&self, bytes: Vec<u8>) -> Result<String> {
        request::put_blob(&self.http, &self.server, self.space, self.device.replica, &self.device.signing, bytes).await
    }

    pub async fn get_blob(&self, hash: &str, range: Option<&str>) -> Result<Vec<u8>> {
        request::get_blob(&self.http, &self.server, self.space, self.device.replica, &self.device.signing, hash, range).await
    }

    /// Stops the engine and waits for its thread.
    pub async fn close(mut self) {
        let thread = self.thread.take();
        drop(self);
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

struct Conn {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    sync: Sync,
}

struct Engine {
    config: ClientConfig,
    device: Device,
    space: SpaceId,
    replica: Replica,
    http: reqwest::Client,
    events: broadcast::Sender<Event>,
    status: watch::Sender<Status>,
    rng: OsRandom,
    attempt: u32,
    acked: u64,
    connects: u64,
    rejected: Option<String>,
    /// The refusal last answered by reconnecting with a fresh membership log: met again,
    /// a fresh log did not help, and the chain is skipped instead.
    refreshed_for: Option<String>,
}

fn ws_url(server: &str) -> String {
    let base = server.trim_end_matches('/');
    let rest = base.strip_prefix("http://").map(|r| format!("ws://{r}"));
    let rest = rest.or_else(|| base.strip_prefix("https://").map(|r| format!("wss://{r}")));
    format!("{}/sync", rest.unwrap_or_else(|| base.to_owned()))
}

impl Engine {
    fn open(
        config: ClientConfig,
        device: Device,
        space: SpaceId,
        key: SpaceKey,
        members: Option<Membership>,
        events: broadcast::Sender<Event>,
        status: watch::Sender<Status>,
    ) -> Result<Engine> {
        let options = Options { fsync: config.fsync, ..Options::default() };
        let store = FileStore::open(config.dir.join("store"), options)?;
        let stored = stead_core::store::Store::meta(&store, "membership")?.map(|b| Membership::decode(&b)).transpose()?;
        let (members, fresh) = match (stored, members) {
            (Some(s), Some(m)) if m.events().len() > s.events().len() => (m, true),
            (Some(s), _) => (s, false),
            (None, Some(m)) => (m, true),
            (None, None) => return Err(Error::Invalid { what: "store", reason: "no membership log; create or join a space".into() }),
        };
        let identity = Identity {
            space,
            replica: device.replica,
            signing: device.signing.clone(),
            agreement: device.agreement,
            space_key: key,
        };
        let mut replica = Replica::open(identity, members.clone(), Box::new(store), ReplicaConfig::default())?;
        if fresh {
            replica.set_members(members)?;
        }
        let engine = Engine {
            config,
            device,
            space,
            replica,
            http: http_client(),
            events,
            status,
            rng: OsRandom,
            attempt: 0,
            acked: 0,
            connects: 0,
            rejected: None,
            refreshed_for: None,
        };
        engine.report(false);
        Ok(engine)
    }

    fn report(&self, connected: bool) {
        let vector = self.replica.version_vector();
        let own_next = vector.get(&self.device.replica).copied().unwrap_or(0);
        let s = Status { connected, connects: self.connects, vector, own_next, acked: self.acked, rejected: self.rejected.clone() };
        self.status.send_replace(s);
    }

    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    fn backoff(&mut self) -> Duration {
        let exp = self.config.backoff_min.saturating_mul(1u32 << self.attempt.min(16));
        let delay = exp.min(self.config.backoff_max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = (self.rng.array::<4>().into_iter().fold(0u32, |a, b| (a << 8) | b as u32) as f64) / u32::MAX as f64;
        delay.mul_f64(0.5 + 0.5 * jitter)
    }

    /// Takes a longer membership log from the server (new members' entries verify then).
    async fn refresh_members(&mut self) -> Result<()> {
        let m = request::get_members(&self.http, &self.config.server, self.space, self.device.replica, &self.device.signing).await?;
        let ours = self.replica.members().events().len();
        if m.events().len() > ours && m.events()[..ours] == *self.replica.members().events() {
            self.replica.set_members(m)?;
        }
        Ok(())
    }

    async fn connect(&mut self) -> Result<Conn> {
        self.refresh_members().await?;
        let url = ws_url(&self.config.server);
        let (ws, _) = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| Error::Timeout("the websocket connection"))?
            .map_err(|e| Error::Server { status: 0, body: e.to_string() })?;
        // The server is not a member of the space: it proves who it is, but no membership.
        let config = SyncConfig::client();
        Ok(Conn { ws, sync: Sync::new(config, &mut self.rng) })
    }

    /// Sends everything the protocol has to send. `Err` ends the connection.
    async fn pump(&mut self, conn: &mut Conn) -> Result<(), String> {
        let mut reconnect = false;
        while let Some(frame) = conn.sync.generate(&self.replica) {
            if let Frame::Error { code: c, message } = &frame {
                tracing::debug!("sending error {c}: {message}");
                if *c == code::REJECTED_ENTRY {
                    // An entry from a replica we do not know may be from a member added
                    // since our log: reconnecting fetches the log, once. Anything else
                    // (forged, dated too far ahead) a new connection would only meet
                    // again: `Sync` skips the rest of that replica's chain, and everything
                    // else goes on.
                    let unknown = message.contains("is not a member of the space") || message.contains("does not hold yet");
                    if unknown && self.refreshed_for.as_deref() != Some(message) {
                        self.refreshed_for = Some(message.clone());
                        reconnect = true;
                    } else {
                        tracing::warn!("an entry was refused and its chain skipped: {message}");
                        self.rejected = Some(message.clone());
                        self.emit(Event::Rejected { reason: message.clone() });
                        self.report(true);
                    }
                }
            }
            conn.ws.send(Message::Binary(frame.encode().into())).await.map_err(|e| e.to_string())?;
        }
        if conn.sync.is_closed() {
            return Err("the protocol ended the connection".into());
        }
        if reconnect {
            return Err("an entry was rejected; reconnecting with a fresh membership log".into());
        }
        Ok(())
    }

    fn on_frame(&mut self, conn: &mut Conn, bytes: &[u8]) -> Result<(), String> {
        let before = self.replica.version_vector();
        let result = conn.sync.receive(bytes, &mut self.replica, SystemClock.now_ms());
        for (r, next) in self.replica.version_vector() {
            if r != self.device.replica && before.get(&r).copied().unwrap_or(0) < next {
                self.emit(Event::Changed { replica: r, next });
            }
        }
        let mut acked = conn.sync.acked().get(&self.device.replica).copied().unwrap_or(0);
        if bytes.first() == Some(&2) {
            // The server's vector names what it has committed: entries acked on an earlier
            // connection whose ack was lost count as acknowledged too.
            if let Ok(Frame::Vector(vv)) = Frame::decode(bytes, &Default::default()) {
                acked = acked.max(vv.get(&self.device.replica).copied().unwrap_or(0));
            }
        }
        if acked > self.acked {
            self.acked = acked;
            self.emit(Event::Acked { next: acked });
        }
        match result {
            Err(stead_core::Error::Protocol { code: c, message }) if code::is_fatal(c) => Err(format!("server error {c}: {message}")),
            Err(e) => {
                tracing::debug!("frame from the server refused: {e}");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        let mut conn: Option<Conn> = None;
        let mut retry_at = tokio::time::Instant::now();
        loop {
            if conn.is_none() && tokio::time::Instant::now() >= retry_at {
                match self.connect().await {
                    Ok(mut c) => match self.pump(&mut c).await {
                        Ok(()) => {
                            self.attempt = 0;
                            self.connects += 1;
                            conn = Some(c);
                            // Status first: whoever hears the event (or subscribes in
                            // between and asks) finds it connected.
                            self.report(true);
                            self.emit(Event::Connected);
                        }
                        Err(reason) => retry_at = self.disconnected(reason),
                    },
                    Err(e) => retry_at = self.disconnected(e.to_string()),
                }
                continue;
            }
            tokio::select! {
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else {
                        if let Some(mut c) = conn.take() {
                            let _ = c.ws.close(None).await;
                        }
                        return;
                    };
                    let wrote = self.command(cmd, &mut conn).await;
                    if wrote {
                        if let Some(c) = conn.as_mut()
                            && let Err(reason) = self.pump(c).await
                        {
                            conn = None;
                            retry_at = self.disconnected(reason);
                        }
                        self.report(conn.is_some());
                    }
                    if conn.is_none() && self.attempt == 0 && !wrote {
                        // An interrupt: come back after the first backoff step.
                        retry_at = tokio::time::Instant::now() + self.config.backoff_min;
                    }
                }
                msg = async {
                    match conn.as_mut() {
                        Some(c) => c.ws.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let outcome = match msg {
                        Some(Ok(Message::Binary(b))) => {
                            let c = conn.as_mut().expect("a message came from a connection");
                            match self.on_frame(c, &b) {
                                Ok(()) => self.pump(c).await,
                                Err(e) => Err(e),
                            }
                        }
                        Some(Ok(Message::Close(_))) | None => Err("the server closed the connection".to_owned()),
                        Some(Ok(_)) => Ok(()),
                        Some(Err(e)) => Err(e.to_string()),
                    };
                    if let Err(reason) = outcome {
                        conn = None;
                        retry_at = self.disconnected(reason);
                    }
                    self.report(conn.is_some());
                }
                _ = tokio::time::sleep_until(retry_at), if conn.is_none() => {}
            }
        }
    }

    fn disconnected(&mut self, reason: String) -> tokio::time::Instant {
        tracing::debug!(replica = %self.device.replica, "disconnected: {reason}");
        self.emit(Event::Disconnected { reason });
        self.report(false);
        tokio::time::Instant::now() + self.backoff()
    }

    /// Runs a command; `true` when it wrote something to send.
    async fn command(&mut self, cmd: Cmd, conn: &mut Option<Conn>) -> bool {
        match cmd {
            Cmd::Commit(ops, reply) => {
                let r = self.replica.commit(ops, SystemClock.now_ms(), &mut self.rng).map(|e| e.header.seq);
                let ok = r.is_ok();
                let _ = reply.send(r.map_err(Error::from));
                ok
            }
            Cmd::Read(f) => {
                f(&mut self.replica);
                false
            }
            Cmd::Invite(card, role, reply) => {
                let _ = reply.send(self.invite(&card, role).await);
                false
            }
            Cmd::InviteCode(terms, reply) => {
                let _ = reply.send(self.invite_code(terms).await);
                false
            }
            Cmd::Remove(replica, reply) => {
                let _ = reply.send(self.remove(replica).await);
                false
            }
            Cmd::Interrupt => {
                if conn.take().is_some() {
                    self.emit(Event::Disconnected { reason: "interrupted".into() });
                    self.report(false);
                }
                false
            }
        }
    }

    async fn remove(&mut self, replica: ReplicaId) -> Result<()> {
        let mut members = self.replica.members().clone();
        let last_seq = self.replica.version_vector().get(&replica).and_then(|n| n.checked_sub(1));
        members.remove(self.device.replica, &self.device.signing, replica, last_seq)?;
        let mut ring = self.replica.keys().clone();
        let new_key = SpaceKey(self.rng.array());
        members.rekey(self.device.replica, &self.device.signing, &mut ring, new_key, SystemClock.now_ms(), &mut self.rng)?;
        request::put_members(&self.http, &self.config.server, &members, None).await?;
        self.replica.set_members(members)?;
        Ok(())
    }

    async fn invite_code(&mut self, terms: InviteTerms) -> Result<String> {
        let mut members = self.replica.members().clone();
        let secret = InviteSecret(self.rng.array());
        let ring = self.replica.keys().clone();
        members.invite(self.device.replica, &self.device.signing, &ring, &secret, terms, &mut self.rng)?;
        request::put_members(&self.http, &self.config.server, &members, None).await?;
        self.replica.set_members(members)?;
        Ok(format!("{}.{}", self.space, hex::encode(secret.0)))
    }

    async fn invite(&mut self, card: &DeviceCard, role: Role) -> Result<()> {
        let mut members = self.replica.members().clone();
        let current = self.replica.keys().current().ok_or(stead_core::Error::NoCurrentKey)?;
        let wrapped = crypto::wrap_space_key(current, self.space, &card.agreement, self.rng.array(), self.rng.array())?;
        members.add_as(self.device.replica, &self.device.signing, card.member(), wrapped, role)?;
        request::put_members(&self.http, &self.config.server, &members, None).await?;
        self.replica.set_members(members)?;
        Ok(())
    }
}
