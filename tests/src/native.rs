//! A native device joined through a browser's invite code, writing entries by hand: a
//! stead-core replica in memory driven over the real sync protocol. Tests use it to put
//! into a space what no well-behaved browser writes (an entry dated a year ahead).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use stead_core::crypto::{SpaceKey, agreement_public, wrap_space_key};
use stead_core::env::Random;
use stead_core::env::{Clock, SeededRandom, SystemClock};
use stead_core::ids::{RecordId, ReplicaId, SpaceId};
use stead_core::membership::{InviteSecret, Member, Membership};
use stead_core::ops::{Op, Value};
use stead_core::replica::{Identity, Replica};
use stead_core::sync::{Frame, RequestTarget, Sync, SyncConfig, authorization, body_hash};
use tokio_tungstenite::tungstenite::Message;

pub struct NativeDevice {
    pub replica: Replica,
    pub id: ReplicaId,
    pub space: SpaceId,
    signing: ed25519_dalek::SigningKey,
    /// The device's X25519 secret, to which space keys are wrapped.
    pub agreement: [u8; 32],
    port: u16,
    rng: SeededRandom,
}

pub fn now_ms() -> u64 {
    SystemClock.now_ms()
}

/// The server's membership log of `space`, asked for as `replica` (a signed GET).
pub async fn get_members(port: u16, space: SpaceId, replica: ReplicaId, key: &ed25519_dalek::SigningKey) -> Result<Membership> {
    let path = format!("/spaces/{space}/members");
    let host = format!("127.0.0.1:{port}");
    let target = RequestTarget { method: "GET", host: &host, path_and_query: &path, body_sha256: body_hash(b"") };
    let auth = authorization(now_ms(), space, replica, key, &target);
    let resp = reqwest::Client::new().get(format!("http://{host}{path}")).header("authorization", auth).send().await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(Membership::decode(&body)?)
}

impl NativeDevice {
    /// Joins through a one-time invite code (`<space>.<secret, hex>`) from the page API,
    /// against the server on `port`: makes its own identity, appends its join to the
    /// membership log and publishes it.
    pub async fn join(port: u16, invite: &str, seed: u64) -> Result<NativeDevice> {
        let (space, secret) = invite.split_once('.').context("not an invite code")?;
        let space: SpaceId = space.parse().map_err(|_| anyhow::anyhow!("bad space id"))?;
        let secret = InviteSecret(hex::decode(secret)?.try_into().map_err(|_| anyhow::anyhow!("bad invite secret"))?);
        let host = format!("127.0.0.1:{port}");
        let path = format!("/spaces/{space}/members");
        let target = RequestTarget { method: "GET", host: &host, path_and_query: &path, body_sha256: body_hash(b"") };
        let auth = stead_core::sync::invite_authorization(now_ms(), space, &secret, &target);
        let http = reqwest::Client::new();
        let resp = http.get(format!("http://{host}{path}")).header("authorization", auth).send().await?;
        let (status, body) = (resp.status(), resp.bytes().await?);
        if !status.is_success() {
            bail!("GET {path} with the invite: {status}: {}", String::from_utf8_lossy(&body));
        }
        let mut members = Membership::decode(&body)?;
        let mut rng = SeededRandom::new(seed);
        let id = ReplicaId::generate(&SystemClock, &mut rng);
        let signing = ed25519_dalek::SigningKey::from_bytes(&rng.array());
        let agreement: [u8; 32] = rng.array();
        let member = Member { replica: id, signing: signing.verifying_key().to_bytes(), agreement: agreement_public(&agreement) };
        let ring = members.join(&secret, member, &agreement, &mut rng)?;
        let resp = http.put(format!("http://{host}{path}")).body(members.encode()).send().await?;
        if !resp.status().is_success() {
            bail!("PUT {path}: {}: {}", resp.status(), resp.text().await.unwrap_or_default());
        }
        let key = ring.current().context("the invite reaches no current key")?.clone();
        Self::open(port, space, id, signing, agreement, key, members, seed)
    }

    #[allow(clippy::too_many_arguments)]
    fn open(port: u16, space: SpaceId, id: ReplicaId, signing: ed25519_dalek::SigningKey, agreement: [u8; 32], key: SpaceKey, members: Membership, seed: u64) -> Result<NativeDevice> {
        let identity = Identity { space, replica: id, signing: signing.clone(), agreement, space_key: key };
        let replica = Replica::open(identity, members, Box::new(stead_core::store::MemStore::new()), Default::default())?;
        Ok(NativeDevice { replica, id, space, signing, agreement, port, rng: SeededRandom::new(seed) })
    }

    /// Adds a new device to the space (publishing the longer membership log) and
    /// returns it: a member the browsers have not heard of yet.
    pub async fn invite(&mut self, seed: u64) -> Result<NativeDevice> {
        let mut rng = SeededRandom::new(seed);
        let id = ReplicaId::generate(&SystemClock, &mut rng);
        let signing = ed25519_dalek::SigningKey::from_bytes(&rng.array());
        let agreement: [u8; 32] = rng.array();
        let member = Member { replica: id, signing: signing.verifying_key().to_bytes(), agreement: agreement_public(&agreement) };
        let current = self.replica.keys().current().context("this device holds no current key")?.clone();
        let wrapped = wrap_space_key(&current, self.space, &member.agreement, rng.array(), rng.array())?;
        let mut members = self.replica.members().clone();
        members.add(self.id, &self.signing, member, wrapped)?;
        let path = format!("/spaces/{}/members", self.space);
        let resp = reqwest::Client::new().put(format!("http://127.0.0.1:{}{path}", self.port)).body(members.encode()).send().await?;
        if !resp.status().is_success() {
            bail!("PUT {path}: {}: {}", resp.status(), resp.text().await.unwrap_or_default());
        }
        self.replica.set_members(members.clone())?;
        Self::open(self.port, self.space, id, signing, agreement, current, members, seed)
    }

    /// Commits one field set, dated `at_ms` (the device's clock, right or wrong).
    pub fn set(&mut self, collection: &str, record: RecordId, field: &str, value: Value, at_ms: u64) -> Result<()> {
        let op = Op::Set { collection: collection.into(), record, field: field.into(), value };
        self.replica.commit(vec![op], at_ms, &mut self.rng)?;
        Ok(())
    }

    /// Takes the server's membership log where it is longer than this device's, then
    /// connects and takes in what the server holds until `done` says the replica has
    /// what the test waits for (within 10 s), and closes. Fails with the last refusal
    /// when `done` never holds.
    pub async fn pull_until(&mut self, done: impl Fn(&Replica) -> bool) -> Result<()> {
        let server = get_members(self.port, self.space, self.id, &self.signing).await?;
        if server.events().len() > self.replica.members().events().len() {
            self.replica.set_members(server)?;
        }
        let url = format!("ws://127.0.0.1:{}/sync", self.port);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        let mut sync = Sync::new(SyncConfig::client(), &mut self.rng);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut refused = None;
        loop {
            while let Some(f) = sync.generate(&self.replica) {
                if let Frame::Error { message, .. } = &f {
                    refused = Some(message.clone());
                }
                ws.send(Message::Binary(f.encode().into())).await?;
            }
            if done(&self.replica) {
                let _ = ws.close(None).await;
                return Ok(());
            }
            let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(msg) => msg,
                Err(_) => bail!("what was waited for did not arrive within 10 s; last refusal: {refused:?}"),
            };
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    if let Err(e) = sync.receive(&b, &mut self.replica, now_ms()) {
                        refused = Some(e.to_string());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("socket error: {e}"),
                None => bail!("the server closed the connection; last refusal: {refused:?}"),
            }
        }
    }

    /// Connects, sends every entry of this device the server lacks, waits for their
    /// acks, and closes.
    pub async fn push(&mut self) -> Result<()> {
        let url = format!("ws://127.0.0.1:{}/sync", self.port);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        let mut sync = Sync::new(SyncConfig::client(), &mut self.rng);
        let own = self.replica.version_vector().get(&self.id).copied().unwrap_or(0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            while let Some(f) = sync.generate(&self.replica) {
                ws.send(Message::Binary(f.encode().into())).await?;
            }
            if sync.acked().get(&self.id).copied().unwrap_or(0) >= own {
                let _ = ws.close(None).await;
                return Ok(());
            }
            let msg = tokio::time::timeout_at(deadline, ws.next()).await.context("no acks within 10 s")?;
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    if let Ok(Frame::Error { code, message }) = Frame::decode(&b, &Default::default()) {
                        bail!("the server refused: {code}: {message}");
                    }
                    // Other members' entries are of no interest here.
                    let _ = sync.receive(&b, &mut self.replica, now_ms());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("socket error: {e}"),
                None => bail!("the server closed the connection"),
            }
        }
    }
}
