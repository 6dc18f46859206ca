//! Attacks on a real `stead-server` process: clients that hold connections without
//! finishing requests, and outsiders that say hello to a space and never prove membership.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Db, Server, clients};
use futures::{SinkExt, StreamExt};
use stead_core::ids::{RecordId, ReplicaId, SpaceId};
use stead_core::membership::Membership;
use stead_core::ops::Value;
use stead_core::sync::{Frame, PROTOCOL_MAX, PROTOCOL_MIN, code};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A TCP connection to `server` from the loopback address `from` (all of 127/8 is this
/// machine, so tests can be several clients by address).
async fn connect_from(server: &Server, from: &str) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse()?)?;
    let addr: SocketAddr = server.base.trim_start_matches("http://").parse()?;
    Ok(socket.connect(addr).await?)
}

/// Whether the server closed `conn` within `within` (reading EOF or a reset); anything
/// it sends first is read and dropped.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// `GET /healthz` from `from`, with the time it took; `None` when no answer came in 3 s.
async fn healthz(server: &Server, from: &str) -> Option<Duration> {
    let started = Instant::now();
    let ask = async {
        let mut c = connect_from(server, from).await.ok()?;
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut out = String::new();
        c.read_to_string(&mut out).await.ok()?;
        out.starts_with("HTTP/1.1 200").then_some(())
    };
    tokio::time::timeout(Duration::from_secs(3), ask).await.ok().flatten().map(|()| started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_cannot_hold_the_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = Db::Sqlite(dir.path().join("loris.sqlite3"));
    let server = Server::start(
        &db,
        &["--max-connections-per-address", "50", "--header-timeout-ms", "1500", "--body-idle-timeout-ms", "1500"],
    )?;

    // 150 requests from one address, each sent half and then left hanging.
    let mut held = Vec::new();
    for _ in 0..150 {
        let mut c = connect_from(&server, "127.0.0.1").await?;
        let _ = c.write_all(b"GET /index.html HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
        held.push(c);
    }
    // Past the per-address bound they are closed at once.
    let mut refused = 0;
    for c in &mut held[50..] {
        refused += closed_within(c, Duration::from_millis(500)).await as usize;
    }
    assert_eq!(refused, 100, "connections past the per-address bound are closed on accept");
    // Everyone else is still served meanwhile.
    let took = healthz(&server, "127.0.0.2").await;
    assert!(took.is_some(), "/healthz answered while one address held its connections");

    // The 50 admitted ones are closed once their header deadline passes.
    let started = Instant::now();
    let mut closed = 0;
    for c in &mut held[..50] {
        closed += closed_within(c, Duration::from_secs(5).saturating_sub(started.elapsed())).await as usize;
    }
    assert_eq!(closed, 50, "every half-sent request was closed by its header deadline");
    drop(held);
    assert!(healthz(&server, "127.0.0.1").await.is_some(), "the address is served again once its connections closed");

    // An idle keep-alive connection, and a body that stops, are closed too.
    let mut idle = connect_from(&server, "127.0.0.1").await?;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await, "an idle keep-alive connection is closed");
    let mut body = connect_from(&server, "127.0.0.1").await?;
    let space = "00".repeat(16);
    let put = format!("PUT /spaces/{space}/members HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc");
    body.write_all(put.as_bytes()).await?;
    assert!(closed_within(&mut body, Duration::from_secs(5)).await, "a stalled body is closed");

    let metrics = reqwest::get(format!("{}/metrics", server.base)).await?.text().await?;
    assert!(metrics.contains("stead_http_refused_total{bound=\"per_address\"} 100"), "{metrics}");
    Ok(())
}

/// A WebSocket to `/sync` from `from`.
async fn ws_from(server: &Server, from: &str) -> anyhow::Result<common::Ws> {
    let tcp = connect_from(server, from).await?;
    let (ws, _) = tokio_tungstenite::client_async(server.ws(), tokio_tungstenite::MaybeTlsStream::Plain(tcp)).await?;
    Ok(ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_that_only_say_hello_cannot_lock_members_out() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = Db::Sqlite(dir.path().join("hello.sqlite3"));
    let server = Server::start(
        &db,
        &["--max-conns-per-space", "4", "--max-unproven-per-address", "4", "--proof-timeout-ms", "2000"],
    )?;
    let cs = clients(&server, 1).await?;
    let member = &cs[0].client;
    // The space id is in every invite link: outsiders say hello to it and stop there.
    let mut outsiders = Vec::new();
    for n in 0..6u8 {
        let mut ws = ws_from(&server, "127.0.0.3").await?;
        let hello = Frame::Hello { min: PROTOCOL_MIN, max: PROTOCOL_MAX, space: member.space(), replica: ReplicaId([n; 16]), challenge: [n; 32] };
        ws.send(Message::Binary(hello.encode().into())).await?;
        outsiders.push(ws);
    }
    // Those past the address's bound on unproven connections are told so at once; the
    // others get the server's hello. Which ones are past it is the server's order of
    // taking the upgrades, not necessarily the order they were opened in.
    let mut busy = 0;
    let mut held = Vec::new();
    for mut ws in outsiders {
        match common::recv(&mut ws).await? {
            Frame::Error { code: c, .. } if c == code::BUSY => busy += 1,
            Frame::Hello { .. } => held.push(ws),
            other => panic!("an outsider got {other:?}"),
        }
    }
    assert_eq!(busy, 2, "connections past the unproven bound are refused as busy");
    let mut outsiders = held;

    // The member connects again and syncs while the outsiders hold on.
    member.interrupt();
    member.set("notes", RecordId([1; 16]), "body", Value::Str("mine".into())).await?;
    member.wait_acked(Duration::from_secs(5)).await?;

    // The outsiders are closed once their proof deadline passes.
    let mut refused = 0;
    for ws in &mut outsiders {
        loop {
            match common::recv(ws).await {
                Ok(Frame::Error { code: c, .. }) => {
                    refused += (c == code::UNAUTHORIZED) as usize;
                    break;
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        assert!(ws.next().await.is_none_or(|m| m.is_err() || matches!(m, Ok(Message::Close(_)))));
    }
    assert_eq!(refused, 4, "unproven connections are closed at their proof deadline");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unproven_socket_cannot_flood_frames_or_pings() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&Db::Sqlite(dir.path().join("flood.sqlite3")), &[])?;
    let cs = clients(&server, 1).await?;
    let space = cs[0].client.space();
    let hello = Frame::Hello { min: PROTOCOL_MIN, max: PROTOCOL_MAX, space, replica: ReplicaId([7; 16]), challenge: [7; 32] };
    for flood in ["pings", "frames"] {
        let mut ws = ws_from(&server, "127.0.0.4").await?;
        ws.send(Message::Binary(hello.encode().into())).await?;
        let started = Instant::now();
        let mut sent = 0;
        let closed = loop {
            let msg = match flood {
                "pings" => Message::Ping(vec![0; 100].into()),
                _ => Message::Binary(hello.encode().into()),
            };
            if ws.send(msg).await.is_err() {
                break true;
            }
            sent += 1;
            if sent >= 2_000 {
                break false;
            }
        };
        // Either the sends failed, or the server's answer ends in a refusal and a close.
        let mut refused = closed;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
            match m {
                Ok(Message::Binary(b)) => {
                    if let Ok(Frame::Error { code: c, message }) = Frame::decode(&b, &Default::default()) {
                        eprintln!("{flood}: refused with {c}: {message}");
                        refused = true;
                    }
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        assert!(refused, "{flood}: {sent} sent and no refusal");
        assert!(started.elapsed() < Duration::from_secs(8), "{flood}: the socket was held until the proof deadline, not refused at once");
    }
    Ok(())
}

/// The server's resident memory, from `/proc`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

/// A member key and identity for hand-made membership logs.
fn member(n: u8) -> (stead_core::membership::Member, ed25519_dalek::SigningKey) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[n; 32]);
    let m = stead_core::membership::Member {
        replica: ReplicaId([n; 16]),
        signing: key.verifying_key().to_bytes(),
        agreement: stead_core::crypto::agreement_public(&[n.wrapping_add(100); 32]),
    };
    (m, key)
}

async fn put_members(server: &Server, space: SpaceId, body: Vec<u8>, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut put = reqwest::Client::new().put(format!("{}/spaces/{space}/members", server.base)).body(body);
    if let Some(t) = token {
        put = put.header("stead-creation-token", t);
    }
    let r = put.send().await?;
    Ok((r.status().as_u16(), r.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_logs_are_bounded_and_verified_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = Db::Sqlite(dir.path().join("members.sqlite3"));
    let server = Server::start(&db, &["--max-membership-events", "16"])?;
    let space = SpaceId([7; 16]);
    let (a, ka) = member(1);
    let mut log = Membership::genesis(space, a.clone(), &ka)?;
    let (v, _) = put_members(&server, space, log.encode(), None).await?;
    assert_eq!(v, 200);

    // A huge wrapped key is refused before it is decoded, and memory stays flat.
    let before = rss_kib(server.pid());
    for n in 0..6u8 {
        let mut big = log.clone();
        let (b, _) = member(10 + n);
        big.add(a.replica, &ka, b, vec![n; 16 << 20])?;
        // The server answers 413 and closes once it has read past its limit; the client
        // may still be sending then, and see the reset instead of the answer.
        match put_members(&server, space, big.encode(), None).await {
            Ok((status, _)) => assert_eq!(status, 413, "a 16 MiB membership log is too large"),
            Err(e) => assert!(format!("{e:?}").contains("reset") || format!("{e:?}").contains("closed") || format!("{e:?}").contains("pipe"), "{e:?}"),
        }
    }
    let grown = rss_kib(server.pid()).saturating_sub(before);
    assert!(grown < 64 * 1024, "the server grew by {grown} KiB taking six huge logs");

    // A wrapped key of the wrong size is refused, signed or not.
    let mut odd = log.clone();
    odd.add(a.replica, &ka, member(30).0, vec![0; 200])?;
    let (status, body) = put_members(&server, space, odd.encode(), None).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("wrapped space key"), "{body}");

    // More events than the bound are refused.
    let mut long = log.clone();
    for n in 0..16u8 {
        long.add(a.replica, &ka, member(40 + n).0, vec![0; WRAPPED])?;
    }
    let (status, _) = put_members(&server, space, long.encode(), None).await?;
    assert_eq!(status, 413);

    // A log the server already has changes nothing: same version, no write.
    log.add(a.replica, &ka, member(2).0, vec![0; WRAPPED])?;
    let (s1, v1) = put_members(&server, space, log.encode(), None).await?;
    let (s2, v2) = put_members(&server, space, log.encode(), None).await?;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(v1, v2, "re-sending the same log is not a new version");
    // A log that does not extend the stored one is a conflict.
    let mut other = Membership::genesis(space, a.clone(), &ka)?;
    other.add(a.replica, &ka, member(3).0, vec![1; WRAPPED])?;
    assert_eq!(put_members(&server, space, other.encode(), None).await?.0, 409);

    let metrics = reqwest::get(format!("{}/metrics", server.base)).await?.text().await?;
    // The huge logs never reached the handler (the route's body limit ends them): only
    // the long one counts.
    assert!(metrics.contains("stead_quota_refused_total{quota=\"membership\"} 1"), "{metrics}");
    Ok(())
}

const WRAPPED: usize = 32 + stead_core::crypto::NONCE_LEN + 32 + stead_core::crypto::TAG_LEN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn space_creation_follows_the_servers_policy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, ka) = member(1);
    let genesis = |n: u8| Membership::genesis(SpaceId([n; 16]), a.clone(), &ka).map(|m| m.encode());

    let closed = Server::start(&Db::Sqlite(dir.path().join("closed.sqlite3")), &["--spaces", "closed"])?;
    let (status, body) = put_members(&closed, SpaceId([1; 16]), genesis(1)?, None).await?;
    assert_eq!(status, 403, "{body}");

    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# issued to alice\nalice-0123456789abcdef\n")?;
    let t = tokens.display().to_string();
    let gated = Server::start(&Db::Sqlite(dir.path().join("token.sqlite3")), &["--spaces", "token", "--creation-tokens-file", &t])?;
    assert_eq!(put_members(&gated, SpaceId([2; 16]), genesis(2)?, None).await?.0, 403);
    assert_eq!(put_members(&gated, SpaceId([2; 16]), genesis(2)?, Some("mallory-0123456789ab")).await?.0, 403);
    assert_eq!(put_members(&gated, SpaceId([2; 16]), genesis(2)?, Some("alice-0123456789abcdef")).await?.0, 200);
    // Extending an existing space needs only its members' signatures.
    let mut log = Membership::genesis(SpaceId([2; 16]), a.clone(), &ka)?;
    log.add(a.replica, &ka, member(2).0, vec![0; WRAPPED])?;
    assert_eq!(put_members(&gated, SpaceId([2; 16]), log.encode(), None).await?.0, 200);
    // stead-client creates with its configured token.
    let cdir = tempfile::tempdir()?;
    let mut config = common::config(cdir.path(), &gated);
    assert!(stead_client::Client::create(config.clone()).await.is_err(), "no token, no space");
    config.creation_token = Some("alice-0123456789abcdef".into());
    let client = stead_client::Client::create(config).await?;
    client.set("notes", RecordId([1; 16]), "body", Value::Str("hi".into())).await?;
    client.wait_acked(Duration::from_secs(5)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_space_quotas_hold_and_show_in_metrics() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = Db::Sqlite(dir.path().join("quota.sqlite3"));
    let server = Server::start(&db, &["--max-entries-per-space", "10", "--max-blob-bytes-per-space", "1000"])?;
    let cs = clients(&server, 1).await?;
    let c = &cs[0].client;
    for i in 0..15u8 {
        c.set("notes", RecordId([i; 16]), "body", Value::Str("x".into())).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored: u64 = db.stored()?.values().sum();
    assert!(stored <= 10, "the space holds {stored} entries past its quota of 10");
    c.put_blob(vec![1; 600]).await?;
    let err = c.put_blob(vec![2; 600]).await.expect_err("a second 600-byte blob is over the 1000-byte quota");
    assert!(err.to_string().contains("507") || err.to_string().contains("quota"), "{err}");
    let metrics = reqwest::get(format!("{}/metrics", server.base)).await?.text().await?;
    assert!(metrics.contains("stead_quota_limit{quota=\"entries\"} 10"), "{metrics}");
    assert!(!metrics.contains("stead_quota_refused_total{quota=\"entries\"} 0"), "{metrics}");
    assert!(metrics.contains("stead_quota_refused_total{quota=\"blob_bytes\"} 1"), "{metrics}");
    Ok(())
}

/// An entry of `c`'s device dated a year ahead, sent by hand; the frame the server answers.
async fn send_entry_from_the_future(server: &Server, c: &common::TestClient) -> anyhow::Result<Frame> {
    let mut replica = common::device_replica(c).await?;
    let year = 365 * 24 * 3600 * 1000;
    let mut rng = stead_core::env::SeededRandom::new(9);
    let op = stead_core::ops::Op::Set { collection: "notes".into(), record: RecordId([9; 16]), field: "body".into(), value: Value::Str("later".into()) };
    let entry = replica.commit(vec![op], common::now() + year, &mut rng)?;
    let (mut p, _) = common::RawPeer::handshake(server, &mut common::device_replica(c).await?, 3).await?;
    p.send(Frame::Entries(vec![entry]).encode()).await?;
    loop {
        match common::recv(&mut p.ws).await? {
            f @ (Frame::Ack { .. } | Frame::Error { .. }) => return Ok(f),
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_dated_ahead_is_refused_and_cannot_freeze_sync() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The server refuses it.
    let db = Db::Sqlite(dir.path().join("clock.sqlite3"));
    let server = Server::start(&db, &[])?;
    let cs = clients(&server, 2).await?;
    match send_entry_from_the_future(&server, &cs[1]).await? {
        Frame::Error { code: c, message } => {
            assert_eq!(c, code::REJECTED_ENTRY);
            assert!(message.contains("clock drift"), "{message}");
        }
        other => panic!("an entry a year ahead was answered with {other:?}"),
    }
    assert!(!db.stored()?.contains_key(&hex::encode(cs[1].client.replica().as_bytes())));

    // A server that took it anyway (an older one, a wrong clock): the other members skip
    // that chain, say so, and keep syncing everyone else.
    let db = Db::Sqlite(dir.path().join("lax.sqlite3"));
    let lax = Server::start(&db, &["--max-clock-drift-ms", "315360000000"])?;
    let cs = clients(&lax, 3).await?;
    assert!(matches!(send_entry_from_the_future(&lax, &cs[2]).await?, Frame::Ack { .. }));
    let (writer, reader) = (&cs[0].client, &cs[1].client);
    let connects = reader.status().connects;
    for i in 0..5u8 {
        writer.set("notes", RecordId([i; 16]), "body", Value::Str(format!("now {i}"))).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while reader.value("notes", RecordId([4; 16]), "body").await? != Some(Value::Str("now 4".into())) {
        assert!(Instant::now() < deadline, "the reader stopped syncing after a bad entry: {:?}", reader.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = reader.status();
    assert!(status.rejected.as_deref().is_some_and(|r| r.contains("clock drift")), "{status:?}");
    assert!(status.connects <= connects + 1, "the reader reconnected {} times", status.connects - connects);
    assert_eq!(reader.value("notes", RecordId([9; 16]), "body").await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_notification_cannot_stop_clients_sending() -> anyhow::Result<()> {
    let pg = common::Pg::start()?;
    let db = pg.database()?;
    let server = Server::start(&db, &[])?;
    // Two devices: the second keeps the space active on the node while the first reconnects.
    let cs = clients(&server, 2).await?;
    let c = &cs[0].client;
    c.set("notes", RecordId([1; 16]), "body", Value::Str("one".into())).await?;
    c.wait_acked(Duration::from_secs(5)).await?;
    // Any database login can notify: it claims the device has a million entries stored.
    let (space, replica) = (hex::encode(c.space().as_bytes()), hex::encode(c.replica().as_bytes()));
    let common::Db::Postgres(url) = &db else { unreachable!() };
    let url = url.clone();
    common::off_runtime(move || -> anyhow::Result<()> {
        let mut pgc = postgres::Client::connect(&url, postgres::NoTls)?;
        pgc.batch_execute(&format!("NOTIFY stead_entries, '{space}:forger:{replica}=1000000'"))?;
        Ok(())
    })?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The device reconnects and writes on: the server must still ask for its entries.
    c.interrupt();
    for i in 2..5u8 {
        c.set("notes", RecordId([i; 16]), "body", Value::Str(format!("{i}"))).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let key = hex::encode(c.replica().as_bytes());
    while db.stored()?.get(&key).copied() != Some(4) {
        assert!(Instant::now() < deadline, "the server stored {:?} of the device's 4 entries", db.stored()?.get(&key));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// This machine's address on its first non-loopback interface, if it has one.
fn outside_address() -> Option<std::net::IpAddr> {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    probe.connect("192.0.2.1:9").ok()?;
    Some(probe.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_for_loopback_or_the_operators_token() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("metrics-token");
    std::fs::write(&token, "scrape-0123456789abcdef\n")?;
    let server = Server::start(&Db::Sqlite(dir.path().join("m.sqlite3")), &["--metrics-token-file", &token.display().to_string()])?;
    let url = format!("{}/metrics", server.base);
    let http = reqwest::Client::new();
    assert_eq!(http.get(&url).send().await?.status(), 403, "with a token set, loopback needs it too");
    assert_eq!(http.get(&url).bearer_auth("wrong-0123456789abcdef").send().await?.status(), 403);
    let ok = http.get(&url).bearer_auth("scrape-0123456789abcdef").send().await?;
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await?.contains("stead_connections"));

    // Without a token: loopback only (every other test reads /metrics over loopback). A
    // client on another address is refused, seen here from this machine's own outside
    // address where it has one, the server listening on that address alone.
    let Some(ip) = outside_address() else { return Ok(()) };
    let open = Server::start(&Db::Sqlite(dir.path().join("o.sqlite3")), &["--host", &ip.to_string()])?;
    assert_eq!(http.get(format!("{}/metrics", open.base)).send().await?.status(), 403);
    assert_eq!(http.get(format!("{}/healthz", open.base)).send().await?.status(), 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_requests_cover_what_they_ask_and_work_once() -> anyhow::Result<()> {
    use stead_core::sync::{RequestTarget, authorization, body_hash};
    let dir = tempfile::tempdir()?;
    let server = Server::start(&Db::Sqlite(dir.path().join("req.sqlite3")), &[])?;
    let cs = clients(&server, 1).await?;
    let c = &cs[0].client;
    let (space, replica, key) = (c.space(), c.replica(), c.device().signing.clone());
    let host = server.base.trim_start_matches("http://").to_owned();
    let path = format!("/spaces/{space}/members");
    let sign = |time: u64, host: &str, path: &str| {
        authorization(time, space, replica, &key, &RequestTarget { method: "GET", host, path_and_query: path, body_sha256: body_hash(b"") })
    };
    let get = |path: String, auth: String, host: Option<String>| {
        let mut r = reqwest::Client::new().get(format!("{}{path}", server.base)).header("authorization", auth);
        if let Some(h) = host {
            r = r.header("host", h);
        }
        async move {
            let r = r.send().await?;
            let status = r.status().as_u16();
            if status != 200 {
                eprintln!("{status}: {}", r.text().await?);
            }
            anyhow::Ok(status)
        }
    };
    // A moment this device's own engine signed nothing at (it signs with the time of the
    // request: one in the same millisecond would be the same request).
    let now = common::now() - 5_000;
    // Signed right, it works once; the same bytes again are a replay.
    let auth = sign(now, &host, &path);
    assert_eq!(get(path.clone(), auth.clone(), None).await?, 200);
    assert_eq!(get(path.clone(), auth, None).await?, 401, "a replayed request was served");
    // The query, the host and the time are all signed.
    assert_eq!(get(format!("{path}?x=1"), sign(now + 1, &host, &path), None).await?, 401, "an unsigned query was accepted");
    assert_eq!(get(path.clone(), sign(now + 2, "elsewhere.example:443", &path), None).await?, 401, "a signature for another host was accepted");
    assert_eq!(get(path.clone(), sign(now + 3, &host, &path), Some("elsewhere.example".into())).await?, 401, "a request sent with another Host was accepted");
    assert_eq!(get(path.clone(), sign(now - 90_000, &host, &path), None).await?, 401, "a request 90 s old was accepted");
    assert_eq!(get(path.clone(), sign(now + 4, &host, &path), None).await?, 200);
    // A blob read signed for one blob does not read another.
    let hash = c.put_blob(vec![5; 100]).await?;
    let other = "ab".repeat(32);
    assert_eq!(get(format!("/blobs/{hash}"), sign(now + 5, &host, &format!("/blobs/{other}")), None).await?, 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_stops_receiving_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&Db::Sqlite(dir.path().join("rm.sqlite3")), &[])?;
    let cs = clients(&server, 3).await?;
    let (owner, removed, kept) = (&cs[0].client, &cs[1].client, &cs[2].client);
    owner.set("notes", RecordId([1; 16]), "body", Value::Str("before".into())).await?;
    common::converge(&[owner, removed, kept], Duration::from_secs(10)).await?;
    assert!(removed.status().connected);

    owner.remove(removed.replica()).await?;
    let members = owner.members().await?;
    assert!(members.iter().any(|(m, _, active)| m.replica == removed.replica() && !active), "{members:?}");
    owner.set("notes", RecordId([2; 16]), "body", Value::Str("after".into())).await?;
    owner.wait_acked(Duration::from_secs(5)).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while kept.value("notes", RecordId([2; 16]), "body").await?.is_none() {
        assert!(Instant::now() < deadline, "the remaining member did not get the new entry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(removed.value("notes", RecordId([2; 16]), "body").await?, None, "the removed device's open socket got an entry written after its removal");
    assert!(!removed.status().connected, "the removed device is still connected");
    // Its signed requests are refused too.
    let err = removed.get_blob(&"ab".repeat(32), None).await.expect_err("a removed device read a blob route");
    assert!(err.to_string().contains("401"), "{err}");

    // The key was rotated: what is written after the removal is sealed under a key the
    // removed device cannot reach, even with the whole new log and its own secrets.
    use stead_core::crypto::Keyring;
    let log = owner.read(|r| r.members().clone()).await?;
    let old_key = removed.read(|r| r.keys().current().cloned()).await?.expect("it held the key before");
    let theirs = log.keyring(&removed.device().agreement, &Keyring::single(old_key.clone()));
    assert_eq!(theirs.current(), None, "the removed device reached the new key");
    let ours = owner.read(|r| r.keys().clone()).await?;
    assert_ne!(ours.current(), Some(&old_key), "the key was not rotated");
    let me = owner.replica();
    let after = owner
        .read(move |r| {
            let seq = r.version_vector()[&me] - 1;
            r.store().read(me, seq, 1).map(|mut e| e.remove(0))
        })
        .await??;
    let h = &after.header;
    assert!(theirs.open(h.space, h.replica, h.seq, &after.payload).is_err(), "the removed device read an entry written after");
    assert!(ours.open(h.space, h.replica, h.seq, &after.payload).is_ok());
    // The member who stayed got the new key, and reads the old entries through the chain.
    let kept_keys = kept.read(|r| r.keys().clone()).await?;
    assert_eq!(kept_keys.current(), ours.current());
    assert!(kept_keys.get(&old_key.id()).is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_codes_add_one_fresh_device_once_until_they_expire() -> anyhow::Result<()> {
    use stead_core::membership::{InviteSecret, InviteTerms, Role};
    let dir = tempfile::tempdir()?;
    let server = Server::start(&Db::Sqlite(dir.path().join("inv.sqlite3")), &[])?;
    let cs = clients(&server, 1).await?;
    let owner = &cs[0].client;
    let day = 24 * 3600 * 1000;
    let code = owner.invite_code(InviteTerms { role: Role::Writer, expires_ms: common::now() + day }).await?;
    assert!(!code.contains(&hex::encode(owner.device().signing.to_bytes())));
    // The joiner makes its own keys; the code adds it once, as a writer.
    let d = tempfile::tempdir()?;
    let joined = stead_client::Client::join_invite(common::config(d.path(), &server), &code).await?;
    let members = owner.read(|r| r.members().clone()).await?;
    assert!(members.role(joined.replica()).is_none(), "the owner's copy is from before the join");
    joined.set("notes", RecordId([1; 16]), "body", Value::Str("joined".into())).await?;
    joined.wait_acked(Duration::from_secs(10)).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while owner.value("notes", RecordId([1; 16]), "body").await?.is_none() {
        assert!(Instant::now() < deadline, "the owner did not get the joiner's entry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let roles = owner.members().await?;
    assert!(roles.iter().any(|(m, role, _)| m.replica == joined.replica() && *role == Role::Writer), "{roles:?}");
    // A second device with the same code is refused.
    let d2 = tempfile::tempdir()?;
    let err = stead_client::Client::join_invite(common::config(d2.path(), &server), &code).await.expect_err("a code joined twice");
    assert!(matches!(err, stead_client::Error::InviteNotPending), "{err}");

    // An expired code cannot even read the log, and a join made in time but sent late is
    // refused by the server.
    let http = reqwest::Client::new();
    let short = owner.invite_code(InviteTerms { role: Role::Reader, expires_ms: common::now() + 2_000 }).await?;
    let (space, secret) = short.split_once('.').expect("a code");
    let secret = InviteSecret(hex::decode(secret)?.try_into().map_err(|_| anyhow::anyhow!("secret"))?);
    let space: SpaceId = space.parse()?;
    let mut log = stead_client::request::get_members_invited(&http, &server.base, space, &secret).await?;
    let device = stead_client::Device::load_or_create(tempfile::tempdir()?.path())?;
    log.join(&secret, device.card().member(), &device.agreement, &mut stead_core::env::SeededRandom::new(1))?;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (status, body) = put_members(&server, space, log.encode(), None).await?;
    assert_eq!(status, 410, "{body}");
    assert!(body.ends_with("the invite has expired"), "{body}");
    let err = stead_client::request::get_members_invited(&http, &server.base, space, &secret).await.expect_err("an expired invite read the log");
    assert!(err.to_string().contains("401"), "{err}");
    // An invite may not be set to outlive the server's bound (30 days by default).
    let mut log = owner.read(|r| r.members().clone()).await?;
    let ring = owner.read(|r| r.keys().clone()).await?;
    let me = owner.device();
    let terms = InviteTerms { role: Role::Owner, expires_ms: common::now() + 365 * day };
    log.invite(me.replica, &me.signing, &ring, &InviteSecret([9; 32]), terms, &mut stead_core::env::SeededRandom::new(2))?;
    let (status, body) = put_members(&server, space, log.encode(), None).await?;
    assert_eq!(status, 410, "{body}");
    assert!(body.contains("longer than the server allows"), "{body}");
    // An invite key signs for the membership log only.
    let target = stead_core::sync::RequestTarget {
        method: "GET",
        host: server.base.trim_start_matches("http://"),
        path_and_query: "/blobs/aa",
        body_sha256: stead_core::sync::body_hash(b""),
    };
    let code2 = owner.invite_code(InviteTerms { role: Role::Reader, expires_ms: common::now() + day }).await?;
    let secret2 = InviteSecret(hex::decode(code2.split_once('.').expect("a code").1)?.try_into().map_err(|_| anyhow::anyhow!("secret"))?);
    let auth = stead_core::sync::invite_authorization(common::now(), space, &secret2, &target);
    let r = http.get(format!("{}/blobs/{}", server.base, "ab".repeat(32))).header("authorization", auth).send().await?;
    assert_eq!(r.status().as_u16(), 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_read_writers_write_owners_change_members() -> anyhow::Result<()> {
    use stead_core::membership::Role;
    let dir = tempfile::tempdir()?;
    let db = Db::Sqlite(dir.path().join("roles.sqlite3"));
    let server = Server::start(&db, &[])?;
    let cs = clients(&server, 1).await?;
    let owner = &cs[0].client;
    let mut joined = Vec::new();
    for role in [Role::Writer, Role::Reader] {
        let d = tempfile::tempdir()?;
        let device = stead_client::Device::load_or_create(d.path())?;
        owner.invite_as(&device.card(), role).await?;
        let client = stead_client::Client::join(common::config(d.path(), &server), owner.space()).await?;
        joined.push(common::TestClient { client, dir: d });
    }
    let (writer, reader) = (&joined[0].client, &joined[1].client);
    owner.set("notes", RecordId([1; 16]), "body", Value::Str("from the owner".into())).await?;
    writer.set("notes", RecordId([2; 16]), "body", Value::Str("from a writer".into())).await?;
    writer.wait_acked(Duration::from_secs(5)).await?;
    // The reader reads everything...
    let deadline = Instant::now() + Duration::from_secs(10);
    while reader.value("notes", RecordId([2; 16]), "body").await?.is_none() || reader.value("notes", RecordId([1; 16]), "body").await?.is_none() {
        assert!(Instant::now() < deadline, "the reader did not receive the space's entries");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...but what it writes stays on its device: the server refuses it.
    reader.set("notes", RecordId([3; 16]), "body", Value::Str("from a reader".into())).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!db.stored()?.contains_key(&hex::encode(reader.replica().as_bytes())), "a reader's entry was stored");
    assert_eq!(owner.value("notes", RecordId([3; 16]), "body").await?, None);
    let err = reader.put_blob(vec![1; 10]).await.expect_err("a reader stored a blob");
    assert!(err.to_string().contains("403"), "{err}");
    // Only owners add or remove devices.
    let d = tempfile::tempdir()?;
    let card = stead_client::Device::load_or_create(d.path())?.card();
    let err = writer.invite(&card).await.expect_err("a writer added a device");
    assert!(err.to_string().contains("not an owner"), "{err}");
    let err = writer.remove(reader.replica()).await.expect_err("a writer removed a device");
    assert!(err.to_string().contains("not an owner"), "{err}");
    // The server applies the same rule to a log made by hand.
    use stead_core::membership::{MemberEvent, SignedEvent};
    let log = owner.read(|r| r.members().clone()).await?;
    let add = SignedEvent::sign(
        log.events().last().expect("a genesis").hash(),
        writer.replica(),
        MemberEvent::Add { member: card.member(), wrapped_key: vec![0; WRAPPED], role: Role::Owner },
        &writer.device().signing,
    );
    let mut w = stead_core::codec::Writer::new();
    w.varint(log.events().len() as u64 + 1);
    for ev in log.events().iter().chain([&add]) {
        w.bytes(&ev.encode());
    }
    let (status, body) = put_members(&server, owner.space(), w.finish(), None).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not an owner"), "{body}");
    Ok(())
}

/// A client may send its hello in the same write as the upgrade request: hyper reads it
/// along with the request, and the socket, once taken back from hyper, reads those bytes
/// before the stream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_pipelined_behind_the_upgrade_is_read() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = Db::Sqlite(dir.path().join("pipelined.sqlite3"));
    let server = Server::start(&db, &[])?;
    let mut conn = connect_from(&server, "127.0.0.1").await?;
    // A space the server does not know: it answers the hello with an error frame.
    let hello = Frame::Hello { min: PROTOCOL_MIN, max: PROTOCOL_MAX, space: SpaceId([9; 16]), replica: ReplicaId([1; 16]), challenge: [2; 32] }.encode();
    let mut bytes = b"GET /sync HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec();
    // One masked binary frame, as a client sends it.
    let mask = [1u8, 2, 3, 4];
    bytes.extend([0x82, 0x80 | u8::try_from(hello.len())?]);
    bytes.extend(mask);
    bytes.extend(hello.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    conn.write_all(&bytes).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let frame = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "the server closed without answering the hello: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        assert!(got.starts_with(b"HTTP/1.1 101"), "{:?}", String::from_utf8_lossy(&got));
        // An unmasked frame from the server, short enough for a one-byte length.
        let f = &got[end + 4..];
        if f.len() >= 2 && f.len() >= 2 + usize::from(f[1] & 0x7f) {
            break Frame::decode(&f[2..2 + usize::from(f[1] & 0x7f)], &Default::default())?;
        }
    };
    assert!(matches!(frame, Frame::Error { code: c, .. } if c == code::UNAUTHORIZED), "{frame:?}");
    Ok(())
}
