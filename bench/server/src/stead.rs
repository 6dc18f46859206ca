//! Stead's side of the load: spaces and members made as real clients make them, entries
//! committed by a real replica before the clock starts, and two light protocol peers (a
//! writer over those entries, a receiver that counts) driving stead-core's `Sync`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use ed25519_dalek::{Signer, SigningKey};
use futures::{SinkExt, StreamExt};
use stead_client::{Device, OsRandom, request};
use stead_core::crypto::{self, SpaceKey};
use stead_core::env::{Clock, Random, SystemClock};
use stead_core::ids::{RecordId, ReplicaId, SpaceId};
use stead_core::log::{Entry, VersionVector};
use stead_core::membership::Membership;
use stead_core::ops::{Op, Value};
use stead_core::replica::{Config, Identity, Replica};
use stead_core::store::MemStore;
use stead_core::sync::{Frame, Sync, SyncConfig, SyncPeer};
use tokio_tungstenite::tungstenite::Message;

use crate::{Ws, key_of, now_us};

/// A space registered on the server: its creator (the writer) and invited readers.
pub struct Space {
    pub id: SpaceId,
    pub key: SpaceKey,
    pub creator: Device,
    pub members: Membership,
    pub readers: Vec<Device>,
}

/// Creates a space with `readers` invited devices, as `Client::create` and `invite` do.
pub async fn create_space(http: &reqwest::Client, server: &str, readers: usize) -> Result<Space> {
    let mut rng = OsRandom;
    let creator = Device::generate();
    let id = SpaceId::generate(&SystemClock, &mut rng);
    let key = SpaceKey(rng.array());
    let mut members = Membership::genesis(id, creator.card().member(), &creator.signing)?;
    let mut devices = Vec::with_capacity(readers);
    for _ in 0..readers {
        let d = Device::generate();
        let card = d.card();
        let wrapped = crypto::wrap_space_key(&key, id, &card.agreement, rng.array(), rng.array())?;
        members.add(creator.replica, &creator.signing, card.member(), wrapped)?;
        devices.push(d);
    }
    request::put_members(http, server, &members, None).await.context("registering the space")?;
    Ok(Space { id, key, creator, members, readers: devices })
}

/// The creator's entries: `ops` map sets, `per_entry` ops in each, committed (signed,
/// compressed, encrypted, chained) by a real replica.
pub fn entries(space: &Space, ops: usize, per_entry: usize) -> Result<Vec<Entry>> {
    let me = Identity {
        space: space.id,
        replica: space.creator.replica,
        signing: space.creator.signing.clone(),
        agreement: space.creator.agreement,
        space_key: space.key.clone(),
    };
    let mut replica = Replica::open(me, space.members.clone(), Box::new(MemStore::new()), Config::default())?;
    let record = RecordId([7; 16]);
    let mut rng = OsRandom;
    let mut i = 0;
    while i < ops {
        let batch: Vec<Op> = (i..(i + per_entry).min(ops))
            .map(|n| Op::Set { collection: "bench".into(), record, field: format!("k{}", key_of(n)), value: Value::Int(n as i64) })
            .collect();
        i += batch.len();
        replica.commit(batch, SystemClock.now_ms(), &mut rng)?;
    }
    Ok(replica.entries_from(space.creator.replica, 0, usize::MAX, usize::MAX)?)
}

/// Who a peer is in its space.
#[derive(Clone)]
pub struct Who {
    pub space: SpaceId,
    pub replica: ReplicaId,
    pub signing: SigningKey,
}

/// Sends pre-made entries of one replica, as many as are released.
pub struct Writer {
    pub who: Who,
    pub entries: Vec<Entry>,
    pub released: usize,
}

impl SyncPeer for Writer {
    fn sync_space(&self) -> SpaceId {
        self.who.space
    }
    fn sync_replica(&self) -> ReplicaId {
        self.who.replica
    }
    fn sync_vector(&self) -> VersionVector {
        let mut v = VersionVector::new();
        if self.released > 0 {
            v.insert(self.who.replica, self.released as u64);
        }
        v
    }
    fn sync_entries(&self, replica: ReplicaId, from: u64, max_entries: usize, max_bytes: usize) -> stead_core::Result<Vec<Entry>> {
        if replica != self.who.replica {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in self.entries.iter().take(self.released).skip(from as usize) {
            if out.len() >= max_entries || (bytes > 0 && bytes + e.encoded_len() > max_bytes) {
                break;
            }
            bytes += e.encoded_len();
            out.push(e.clone());
        }
        Ok(out)
    }
    fn sync_ingest(&mut self, _: Entry, _: u64) -> stead_core::Result<bool> {
        Ok(false)
    }
    fn sync_sign(&self, msg: &[u8]) -> [u8; 64] {
        self.who.signing.sign(msg).to_bytes()
    }
    fn sync_check_member(&self, _: ReplicaId, _: &[u8], _: &[u8; 64]) -> bool {
        // The server is not a member; the writer trusts the server it was pointed at.
        true
    }
}

/// Takes in one writer's entries without verifying or decrypting them (the Yjs receivers
/// do not apply updates either) and notes when each seq arrived.
pub struct Counter {
    pub who: Who,
    pub writer: ReplicaId,
    pub next: u64,
    /// Receipt times (µs since the epoch): seq `s` below `limit` goes to `times[base + s]`.
    pub times: Option<Arc<[AtomicU64]>>,
    pub base: usize,
    pub limit: u64,
}

impl SyncPeer for Counter {
    fn sync_space(&self) -> SpaceId {
        self.who.space
    }
    fn sync_replica(&self) -> ReplicaId {
        self.who.replica
    }
    fn sync_vector(&self) -> VersionVector {
        let mut v = VersionVector::new();
        if self.next > 0 {
            v.insert(self.writer, self.next);
        }
        v
    }
    fn sync_entries(&self, _: ReplicaId, _: u64, _: usize, _: usize) -> stead_core::Result<Vec<Entry>> {
        Ok(Vec::new())
    }
    fn sync_ingest(&mut self, entry: Entry, _: u64) -> stead_core::Result<bool> {
        let h = &entry.header;
        if h.replica != self.writer || h.seq != self.next {
            return Ok(false);
        }
        if h.seq < self.limit
            && let Some(slot) = self.times.as_ref().and_then(|t| t.get(self.base + h.seq as usize)) {
                slot.store(now_us(), Ordering::Relaxed);
            }
        self.next += 1;
        Ok(true)
    }
    fn sync_sign(&self, msg: &[u8]) -> [u8; 64] {
        self.who.signing.sign(msg).to_bytes()
    }
    fn sync_check_member(&self, _: ReplicaId, _: &[u8], _: &[u8; 64]) -> bool {
        true
    }
}

pub fn sync_config(max_entries: usize) -> SyncConfig {
    SyncConfig { max_entries, ..SyncConfig::client() }
}

/// Sends every frame the protocol has ready.
pub async fn pump<P: SyncPeer + std::marker::Sync>(ws: &mut Ws, sync: &mut Sync, peer: &P) -> Result<()> {
    while let Some(f) = sync.generate(peer) {
        if let Frame::Error { code, message } = &f {
            bail!("sending error {code}: {message}");
        }
        ws.feed(Message::Binary(f.encode().into())).await?;
    }
    ws.flush().await?;
    Ok(())
}

/// Takes in one message from the server; errors on a server error frame or a close.
pub fn take(msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>, sync: &mut Sync, peer: &mut dyn SyncPeer) -> Result<Option<u8>> {
    match msg {
        Some(Ok(Message::Binary(b))) => {
            if b.first() == Some(&5) {
                let f = Frame::decode(&b, &Default::default())?;
                bail!("the server sent {f:?}");
            }
            let _ = sync.receive(&b, peer, SystemClock.now_ms());
            Ok(b.first().copied())
        }
        Some(Ok(Message::Close(c))) => bail!("the server closed the connection: {c:?}"),
        None => bail!("the server closed the connection"),
        Some(Ok(_)) => Ok(None),
        Some(Err(e)) => Err(e.into()),
    }
}

/// Connects and handshakes; returns once the server's vector has arrived.
pub async fn connect<P: SyncPeer + Send + std::marker::Sync>(url: &str, peer: &mut P, max_entries: usize) -> Result<(Ws, Sync)> {
    let mut ws = crate::ws_connect(url).await.context("connecting to stead-server")?;
    let mut sync = Sync::new(sync_config(max_entries), &mut OsRandom);
    loop {
        pump(&mut ws, &mut sync, &*peer).await?;
        if take(ws.next().await, &mut sync, peer)? == Some(2) {
            pump(&mut ws, &mut sync, &*peer).await?;
            return Ok((ws, sync));
        }
    }
}

/// One line of the file that tells a child process who to connect as.
pub fn identity_line(space: SpaceId, d: &Device) -> String {
    format!("{space} {} {}", d.replica, hex::encode(d.signing.to_bytes()))
}

pub fn parse_identity(line: &str) -> Result<Who> {
    let mut parts = line.split_whitespace();
    let (Some(s), Some(r), Some(k)) = (parts.next(), parts.next(), parts.next()) else { bail!("bad identity line {line:?}") };
    let key: [u8; 32] = hex::decode(k)?.try_into().map_err(|_| anyhow::anyhow!("bad signing key"))?;
    Ok(Who {
        space: s.parse().map_err(|_| anyhow::anyhow!("bad space id"))?,
        replica: r.parse().map_err(|_| anyhow::anyhow!("bad replica id"))?,
        signing: SigningKey::from_bytes(&key),
    })
}
