//! The sync server through real processes and sockets, the same suite on SQLite and on
//! PostgreSQL: convergence under random disconnects, hostile input, the plaintext canary,
//! blobs, keys of small order, and (PostgreSQL) two nodes on one database.

mod common;

use std::time::Duration;

use anyhow::Context;
use futures::SinkExt;
use common::{Db, Pg, RawPeer, Server, TestClient, clients, converge, invite, recv};
use stead_core::env::SeededRandom;
use stead_core::ids::RecordId;
use stead_core::log::Entry;
use stead_core::ops::{Op, Value};
use stead_core::sync::{Frame, PROTOCOL_MAX, code};
use stead_core::testing::Space;

fn rec(n: u64) -> RecordId {
    RecordId([n as u8; 16])
}

/// 8 clients write random ops and are cut off at random; all converge on the state that a
/// fresh device gets by replaying every entry, and no op is applied twice.
async fn convergence(db: Db) -> anyhow::Result<()> {
    let server = Server::start(&db, &[])?;
    let cs = clients(&server, 8).await?;
    let mut rng = SeededRandom::new(42);
    let mut added = 0i64;
    for round in 0..20 {
        for (i, c) in cs.iter().enumerate() {
            let mut ops = Vec::new();
            for _ in 0..1 + rng.below(3) {
                let r = rec(rng.below(10));
                ops.push(match rng.below(3) {
                    0 => Op::Set { collection: "notes".into(), record: r, field: "title".into(), value: Value::Str(format!("{i}-{round}")) },
                    1 => {
                        added += 1;
                        Op::CounterAdd { collection: "stats".into(), record: rec(0), field: "n".into(), delta: 1 }
                    }
                    _ => Op::SetAdd { collection: "notes".into(), record: r, field: "tags".into(), elem: Value::Int(rng.below(5) as i64) },
                });
            }
            c.client.commit(ops).await?;
            if rng.chance(10) {
                c.client.interrupt();
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
    }
    for c in &cs {
        c.client.wait_acked(Duration::from_secs(30)).await?;
    }
    let refs: Vec<_> = cs.iter().map(|c| &c.client).collect();
    let vv = converge(&refs, Duration::from_secs(30)).await?;
    assert_eq!(vv.len(), 8, "every device wrote");
    // A fresh device replays every entry from the server.
    let fresh = invite(&server, &cs[0].client, cs[0].client.space()).await?;
    let mut all = refs.clone();
    all.push(&fresh.client);
    converge(&all, Duration::from_secs(30)).await?;
    let expected = fresh.client.read(|r| r.state().clone()).await?;
    for c in &cs {
        assert_eq!(c.client.read(|r| r.state().clone()).await?, expected, "{} differs from a full replay", c.client.replica());
    }
    let count = fresh.client.read(|r| r.get("stats", rec(0)).and_then(|s| s.field("n")).map(|f| f.counter_value())).await?;
    assert_eq!(count, Some(added), "every counter add applied exactly once");
    Ok(())
}

fn expect_error(frame: &Frame, want: u16, case: &str) {
    match frame {
        Frame::Error { code, message } => assert_eq!(*code, want, "{case}: got error {code} {message:?}"),
        other => panic!("{case}: expected error {want}, got {other:?}"),
    }
}

/// Hostile input: each case gets its error frame, stores nothing, and a connected member
/// notices nothing.
async fn hostile(db: Db) -> anyhow::Result<()> {
    let server = Server::start(&db, &["--max-frame-bytes", "65536", "--max-batch-entries", "16", "--frames-per-sec", "100", "--max-conns-per-space", "6"])?;
    let mut seed = SeededRandom::new(7);
    let space = Space::new(3, &mut seed);
    let other = Space::new(1, &mut seed);
    let http = reqwest::Client::new();
    for s in [&space, &other] {
        let url = format!("{}/spaces/{}/members", server.base, s.space);
        assert!(http.put(url).body(s.members.encode()).send().await?.status().is_success());
    }
    // A bystander: a real client in the same space, connected all along.
    let (mut alice, mut bob) = (space.open(0), space.open(1));
    let (mut by, _) = RawPeer::handshake(&server, &mut alice, 1).await?;
    let legit = bob.commit(vec![Op::Set { collection: "t".into(), record: rec(1), field: "f".into(), value: Value::Int(1) }], common::now(), &mut seed)?;

    type Case = (&'static str, u16);
    let cases: Vec<Case> = vec![
        ("malformed frame", code::BAD_FRAME),
        ("unknown frame kind", code::BAD_FRAME),
        ("text frame", code::BAD_FRAME),
        ("oversize frame", code::TOO_LARGE),
        ("too many entries", code::TOO_LARGE),
        ("forged signature", code::REJECTED_ENTRY),
        ("fork", code::REJECTED_ENTRY),
        ("entry of a non-member", code::REJECTED_ENTRY),
        ("entry of another space", code::REJECTED_ENTRY),
        ("rate", code::RATE_LIMITED),
    ];
    // bob stores seq 0 legitimately first, so the fork case has something to fork from.
    let (mut p, _) = RawPeer::handshake(&server, &mut bob, 2).await?;
    p.send(Frame::Entries(vec![legit.clone()]).encode()).await?;
    assert!(matches!(recv(&mut p.ws).await?, Frame::Ack { seq: 0, .. }));
    drop(p);
    let stored_before = db.stored()?;

    for (case, want) in cases {
        let mut carol = space.open(2);
        let (mut p, _) = RawPeer::handshake(&server, &mut carol, 3).await?;
        let mut entry = Entry::sign(space.space, space.identities[2].replica, 0, stead_core::hlc::Hlc::from_u64(common::now() << 16), [0; 32], vec![1, 2, 3], &space.identities[2].signing);
        let bytes = match case {
            "malformed frame" => vec![3, 0xff, 0xff, 0xff],
            "unknown frame kind" => vec![42, 0],
            "text frame" => {
                p.ws.send(tokio_tungstenite::tungstenite::Message::Text("hello".into())).await?;
                Vec::new()
            }
            "oversize frame" => vec![2; 70_000],
            "too many entries" => Frame::Entries(vec![entry.clone(); 17]).encode(),
            "forged signature" => {
                entry.sig[0] ^= 1;
                Frame::Entries(vec![entry]).encode()
            }
            "fork" => {
                let mut forked = legit.clone();
                forked.payload[0] ^= 1;
                let h = &forked.header;
                let re = Entry::sign(h.space, h.replica, h.seq, h.hlc, h.prev, forked.payload.clone(), &space.identities[1].signing);
                Frame::Entries(vec![re]).encode()
            }
            "entry of a non-member" => {
                let o = &other.identities[0];
                let e = Entry::sign(space.space, o.replica, 0, entry.header.hlc, [0; 32], vec![1], &o.signing);
                Frame::Entries(vec![e]).encode()
            }
            "entry of another space" => {
                let e = Entry::sign(other.space, space.identities[2].replica, 0, entry.header.hlc, [0; 32], vec![1], &space.identities[2].signing);
                Frame::Entries(vec![e]).encode()
            }
            "rate" => {
                for _ in 0..400 {
                    p.send(Frame::Ack { replica: space.identities[0].replica, seq: 0 }.encode()).await?;
                }
                Vec::new()
            }
            _ => unreachable!(),
        };
        if !bytes.is_empty() {
            p.send(bytes).await?;
        }
        // The server may first send what the peer lacks; the error follows.
        let got = loop {
            match recv(&mut p.ws).await.with_context(|| case)? {
                Frame::Entries(_) | Frame::Ack { .. } => continue,
                f => break f,
            }
        };
        expect_error(&got, want, case);
    }

    // Handshake refusals, each on a fresh socket.
    let hello = |min: u16, max: u16, space_id, replica| Frame::Hello { min, max, space: space_id, replica, challenge: [9; 32] }.encode();
    let mut ws = common::connect(&server).await?;
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(hello(PROTOCOL_MAX + 1, PROTOCOL_MAX + 5, space.space, space.identities[2].replica).into())).await?;
    // The server answers with its hello first, then the error.
    let mut got = recv(&mut ws).await?;
    if matches!(got, Frame::Hello { .. }) {
        got = recv(&mut ws).await?;
    }
    expect_error(&got, code::UNSUPPORTED_VERSION, "unknown protocol version");

    let mut ws = common::connect(&server).await?;
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(Frame::Vector(Default::default()).encode().into())).await?;
    expect_error(&recv(&mut ws).await?, code::UNEXPECTED, "data before hello");

    // A non-member claims the space: its proof is by a key the membership does not hold.
    let fake = stead_core::replica::Identity { space: space.space, replica: space.identities[2].replica, ..other.identities[0].clone() };
    let mut claimant = stead_core::replica::Replica::open(fake, space.members.clone(), Box::new(stead_core::store::MemStore::new()), Default::default())?;
    let (_, f) = RawPeer::handshake(&server, &mut claimant, 4).await?;
    expect_error(&f, code::UNAUTHORIZED, "non-member hello");

    // A member of `other` asks for `space`'s data under its own replica id.
    let reader = stead_core::replica::Identity { space: space.space, ..other.identities[0].clone() };
    let mut reader = stead_core::replica::Replica::open(reader, space.members.clone(), Box::new(stead_core::store::MemStore::new()), Default::default())?;
    let (_, f) = RawPeer::handshake(&server, &mut reader, 5).await?;
    expect_error(&f, code::UNAUTHORIZED, "read of another space");

    // A replayed hello and proof: the server's fresh challenge makes the old proof worthless.
    let mut dave = space.open(2);
    let (p, _) = RawPeer::handshake(&server, &mut dave, 6).await?;
    let (h, pr) = (p.hello.clone(), p.proof.clone());
    drop(p);
    let mut ws = common::connect(&server).await?;
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(h.into())).await?;
    let _server_hello = recv(&mut ws).await?;
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(pr.into())).await?;
    let mut got = recv(&mut ws).await?;
    if matches!(got, Frame::Proof { .. }) {
        got = recv(&mut ws).await?;
    }
    expect_error(&got, code::UNAUTHORIZED, "replayed hello");

    // A gap is not an error: the server asks again from its vector, and stores nothing.
    let mut erin = space.open(2);
    let (mut p, _) = RawPeer::handshake(&server, &mut erin, 8).await?;
    let e5 = Entry::sign(space.space, space.identities[2].replica, 5, stead_core::hlc::Hlc::from_u64(common::now() << 16), [7; 32], vec![1], &space.identities[2].signing);
    p.send(Frame::Entries(vec![e5]).encode()).await?;
    let got = loop {
        match recv(&mut p.ws).await? {
            Frame::Entries(_) => continue,
            f => break f,
        }
    };
    assert!(matches!(got, Frame::Vector(_)), "a gap gets the vector again, not {got:?}");
    drop(p);

    // Connections per space: the bystander plus at most five more.
    let mut held = Vec::new();
    let mut busy = false;
    for i in 0..8 {
        let mut r = space.open(2);
        let (p, f) = RawPeer::handshake(&server, &mut r, 100 + i).await?;
        if let Frame::Error { code: c, .. } = f {
            assert_eq!(c, code::BUSY);
            busy = true;
            break;
        }
        held.push(p);
    }
    assert!(busy && held.len() <= 5, "the sixth connection of a space is refused");
    drop(held);

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(db.stored()?, stored_before, "hostile input stored nothing");
    // The bystander was never disturbed: it still gets bob's entry fanned out live.
    let newer = bob.commit(vec![Op::Set { collection: "t".into(), record: rec(1), field: "f".into(), value: Value::Int(2) }], common::now(), &mut seed)?;
    let (mut p, _) = RawPeer::handshake(&server, &mut bob, 9).await?;
    p.send(Frame::Entries(vec![newer]).encode()).await?;
    loop {
        match recv(&mut by.ws).await? {
            Frame::Entries(es) if es.iter().any(|e| e.header.seq == 1 && e.header.replica == space.identities[1].replica) => break,
            Frame::Error { code, message } => panic!("the bystander got error {code}: {message}"),
            _ => continue,
        }
    }
    Ok(())
}

/// A marker written by clients is in neither the database file nor a dump.
async fn canary(db: Db, pg: Option<&Pg>) -> anyhow::Result<()> {
    let server = Server::start(&db, &[])?;
    let cs = clients(&server, 2).await?;
    let marker = format!("canary-{}", cs[0].client.space());
    for i in 0..20 {
        cs[i % 2].client.set("notes", rec(i as u64), "body", Value::Str(format!("{marker} {i}"))).await?;
    }
    for c in &cs {
        c.client.wait_acked(Duration::from_secs(20)).await?;
    }
    let bytes = match (&db, pg) {
        (Db::Sqlite(path), _) => {
            let mut all = std::fs::read(path)?;
            all.extend(std::fs::read(path.with_extension("sqlite3-wal")).unwrap_or_default());
            all
        }
        (Db::Postgres(_), Some(pg)) => pg.dump(&db)?,
        _ => anyhow::bail!("no dump tool"),
    };
    let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    // The control proves the search looks at the data: the replica id is stored in the clear.
    let control = match db {
        Db::Sqlite(_) => cs[0].client.replica().0.to_vec(),
        Db::Postgres(_) => hex::encode(cs[0].client.replica().0).into_bytes(),
    };
    assert!(find(&control), "the stored data holds the replica id");
    assert!(!find(marker.as_bytes()), "plaintext reached the server's storage");
    assert!(!find(&hex::encode(marker.as_bytes()).into_bytes()), "plaintext (hex) reached the server's storage");
    Ok(())
}

/// Blobs: hash-checked, size-limited, members only, Range requests.
async fn blobs(db: Db) -> anyhow::Result<()> {
    let server = Server::start(&db, &["--max-blob-bytes", "100000"])?;
    let cs = clients(&server, 1).await?;
    let c = &cs[0].client;
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
    let hash = c.put_blob(data.clone()).await?;
    assert_eq!(c.get_blob(&hash, None).await?, data);
    assert_eq!(c.get_blob(&hash, Some("bytes=10-19")).await?, data[10..20]);
    assert_eq!(c.get_blob(&hash, Some("bytes=-5")).await?, data[data.len() - 5..]);
    let err = c.get_blob(&hash, Some("bytes=60000-")).await.unwrap_err();
    assert!(err.to_string().contains("416"), "{err}");
    let err = c.put_blob(vec![0; 100_001]).await.unwrap_err();
    assert!(err.to_string().contains("413"), "{err}");
    // A body that does not hash to its URL is refused.
    let path = format!("/blobs/{}", "0".repeat(64));
    let auth = stead_client::request::authorization(&server.base, c.space(), c.replica(), &c.device().signing, "PUT", &path, [0; 32]);
    let resp = reqwest::Client::new().put(format!("{}{path}", server.base)).header("authorization", auth).body("x").send().await?;
    assert_eq!(resp.status(), 400);
    // No signature, no blob; a member of another space cannot read it either.
    let resp = reqwest::get(format!("{}/blobs/{hash}", server.base)).await?;
    assert_eq!(resp.status(), 401);
    let stranger = clients(&server, 1).await?;
    let err = stranger[0].client.get_blob(&hash, None).await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    // Metrics count what happened.
    let m = reqwest::get(format!("{}/metrics", server.base)).await?.text().await?;
    assert!(m.contains("stead_blobs_stored_total 1"), "{m}");
    assert!(m.contains("stead_connections{"), "{m}");
    Ok(())
}

/// Keys of small order sign for anyone: no membership log naming one is stored, so no
/// request "signed" with one and no secret gets in.
async fn weak_keys(db: Db) -> anyhow::Result<()> {
    use stead_core::codec::Writer;
    use stead_core::ids::{ReplicaId, SpaceId};
    use stead_core::membership::{Member, MemberEvent, SignedEvent};
    let server = Server::start(&db, &[])?;
    let http = reqwest::Client::new();
    let mut identity = [0u8; 32];
    identity[0] = 1;
    // R the identity and s = 0: with the identity as key, the equation holds for any message.
    let mut trivial = [0u8; 64];
    trivial[0] = 1;
    let intruder = Member { replica: ReplicaId([66; 16]), signing: identity, agreement: stead_core::crypto::agreement_public(&[66; 32]) };
    // A space of the intruder's own, and an honest space whose creator adds the intruder.
    let own = SpaceId([77; 16]);
    let genesis = SignedEvent { prev: [0; 32], by: intruder.replica, event: MemberEvent::Genesis { space: own, creator: intruder.clone() }, sig: trivial };
    let honest = Space::new(1, &mut SeededRandom::new(11));
    let creator = &honest.identities[0];
    let url = |space: SpaceId| format!("{}/spaces/{space}/members", server.base);
    assert!(http.put(url(honest.space)).body(honest.members.encode()).send().await?.status().is_success());
    let add = SignedEvent::sign(honest.members.events()[0].hash(), creator.replica, MemberEvent::Add { member: intruder.clone(), wrapped_key: vec![0; 104], role: stead_core::membership::Role::Owner }, &creator.signing);
    for (space, events) in [(own, vec![genesis]), (honest.space, vec![honest.members.events()[0].clone(), add])] {
        let mut log = Writer::new();
        log.varint(events.len() as u64);
        for ev in &events {
            log.bytes(&ev.encode());
        }
        let resp = http.put(url(space)).body(log.finish()).send().await?;
        assert_eq!(resp.status(), 400, "{space}");
        assert!(resp.text().await?.contains("weak signing key"));
        let auth = format!("Stead {space}.{}.{}.{}", intruder.replica, common::now(), hex::encode(trivial));
        let resp = http.get(url(space)).header("authorization", auth).send().await?;
        assert_eq!(resp.status(), 401, "{space}: the intruder read the membership log");
    }
    Ok(())
}

/// Two server processes on one PostgreSQL: clients on different nodes converge live.
async fn two_nodes(db: Db) -> anyhow::Result<()> {
    let a = Server::start(&db, &[])?;
    let b = Server::start(&db, &[])?;
    let on_a = clients(&a, 2).await?;
    let on_b: Vec<TestClient> = vec![invite(&b, &on_a[0].client, on_a[0].client.space()).await?, invite(&b, &on_a[0].client, on_a[0].client.space()).await?];
    for (i, c) in on_a.iter().chain(on_b.iter()).enumerate() {
        for j in 0..10 {
            c.client.set("notes", rec(j), "by", Value::Int(i as i64)).await?;
        }
    }
    let all: Vec<_> = on_a.iter().chain(on_b.iter()).map(|c| &c.client).collect();
    let vv = converge(&all, Duration::from_secs(30)).await?;
    assert_eq!(vv.len(), 4);
    let s0 = all[0].read(|r| r.state().clone()).await?;
    for c in &all[1..] {
        assert_eq!(c.read(|r| r.state().clone()).await?, s0);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_suite() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = |name: &str| Db::Sqlite(dir.path().join(format!("{name}.sqlite3")));
    convergence(db("convergence")).await.context("convergence")?;
    hostile(db("hostile")).await.context("hostile")?;
    canary(db("canary"), None).await.context("canary")?;
    blobs(db("blobs")).await.context("blobs")?;
    weak_keys(db("weak_keys")).await.context("weak keys")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_suite() -> anyhow::Result<()> {
    let pg = Pg::start()?;
    convergence(pg.database()?).await.context("convergence")?;
    hostile(pg.database()?).await.context("hostile")?;
    canary(pg.database()?, Some(&pg)).await.context("canary")?;
    blobs(pg.database()?).await.context("blobs")?;
    weak_keys(pg.database()?).await.context("weak keys")?;
    two_nodes(pg.database()?).await.context("two nodes")?;
    Ok(())
}
