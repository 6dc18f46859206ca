//! Backpressure and shutdown: a stalled reader is cut off without holding up others and
//! catches up on reconnect; SIGTERM finishes in-flight commits and exits cleanly.

mod common;

use std::time::Duration;

use common::{Db, RawPeer, Server, clients, converge, recv};
use stead_core::ids::RecordId;
use futures::SinkExt;
use stead_core::ops::{Op, Value};
use stead_core::sync::{Frame, code};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_cut_off_and_catches_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = Db::Sqlite(dir.path().join("slow.sqlite3"));
    let server = Server::start(&db, &["--queue", "4", "--send-timeout-ms", "1000"])?;
    let cs = clients(&server, 3).await?;
    let (writer, fast) = (&cs[0].client, &cs[1].client);
    // The stalled peer is device 2's identity driven by hand: it handshakes, then stops reading.
    cs[2].client.interrupt();
    let (mut stalled, _) = RawPeer::as_device(&server, &cs[2], 1).await?;

    // Incompressible bodies, so the entries really are large on the wire.
    let mut rng = stead_core::env::SeededRandom::new(5);
    for i in 0..300u64 {
        let body: String = (0..60_000).map(|_| char::from(b'a' + rng.below(26) as u8)).collect();
        writer.set("notes", RecordId([(i % 200) as u8; 16]), "body", Value::Str(body)).await?;
    }
    writer.wait_acked(Duration::from_secs(60)).await?;
    // The fast reader got everything, whatever the stalled one does.
    converge(&[writer, fast], Duration::from_secs(30)).await?;

    // The stalled peer finds its connection ended, with the reason if the socket had room.
    let mut told = false;
    loop {
        match recv(&mut stalled.ws).await {
            Ok(Frame::Error { code: c, .. }) => {
                told = c == code::TOO_SLOW;
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    let metrics = reqwest::get(format!("{}/metrics", server.base)).await?.text().await?;
    let too_slow: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("stead_rejected_total{reason=\"too_slow\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(too_slow >= 1, "the stalled connection was cut off as too slow (told={told})\n{metrics}");
    // Reconnecting catches up from the version vector.
    drop(stalled);
    let rejoined = common::invite(&server, writer, writer.space()).await?;
    converge(&[writer, &rejoined.client], Duration::from_secs(60)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_commits_and_exits_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = Db::Sqlite(dir.path().join("term.sqlite3"));
    let server = Server::start(&db, &[])?;
    let cs = clients(&server, 2).await?;
    for i in 0..200u64 {
        cs[(i % 2) as usize].client.set("notes", RecordId([i as u8; 16]), "n", Value::Int(i as i64)).await?;
    }
    // An idle connection is told, rather than left open until the grace period ends.
    let (mut idle, _) = RawPeer::as_device(&server, &cs[1], 2).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (clean, took) = server.terminate()?;
    assert!(clean, "stead-server exits with success on SIGTERM");
    assert!(took < Duration::from_secs(11), "shutdown took {took:?}");
    let told = loop {
        match recv(&mut idle.ws).await {
            Ok(Frame::Error { code: c, .. }) => break Some(c),
            Ok(_) => continue,
            Err(_) => break None,
        }
    };
    assert_eq!(told, Some(code::SHUTTING_DOWN), "the idle connection heard why it was closed");
    let stored = db.stored()?;
    for c in &cs {
        let acked = c.client.status().acked;
        assert!(stored.get(&hex::encode(c.client.replica().0)).copied().unwrap_or(0) >= acked);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_websocket_handshake_gets_a_clear_answer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(&Db::Sqlite(dir.path().join("handshake.sqlite3")), &[])?;
    let url = format!("{}/sync", server.base);
    let http = reqwest::Client::new();

    let plain = http.get(&url).send().await?;
    assert_eq!(plain.status(), reqwest::StatusCode::UPGRADE_REQUIRED);
    assert_eq!(plain.headers().get("upgrade").map(|v| v.as_bytes()), Some(&b"websocket"[..]));

    let upgrade = || http.get(&url).header("connection", "keep-alive, Upgrade").header("upgrade", "websocket");
    let old = upgrade().header("sec-websocket-version", "8").header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==").send().await?;
    assert_eq!(old.status(), reqwest::StatusCode::BAD_REQUEST);
    assert_eq!(old.headers().get("sec-websocket-version").map(|v| v.as_bytes()), Some(&b"13"[..]));

    let keyless = upgrade().header("sec-websocket-version", "13").send().await?;
    assert_eq!(keyless.status(), reqwest::StatusCode::BAD_REQUEST);
    assert!(keyless.text().await?.contains("Sec-WebSocket-Key"));

    // The example key of RFC 6455 (section 1.3) gets the RFC's accept value.
    let good = upgrade().header("sec-websocket-version", "13").header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==").send().await?;
    assert_eq!(good.status(), reqwest::StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(good.headers().get("sec-websocket-accept").map(|v| v.as_bytes()), Some(&b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="[..]));
    Ok(())
}

/// A WebSocket frame as a client may write it: masked, with a zero mask key.
fn raw_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![u8::from(fin) << 7 | opcode];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(payload);
    f
}

async fn asleep(server: &Server) -> anyhow::Result<u64> {
    let metrics = reqwest::get(format!("{}/metrics", server.base)).await?.text().await?;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("stead_connections_asleep "))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no stead_connections_asleep in\n{metrics}"))
}

async fn until_asleep(server: &Server, n: u64) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while asleep(server).await? != n {
        anyhow::ensure!(std::time::Instant::now() < deadline, "{} connections asleep, not {n}", asleep(server).await?);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// An idle connection keeps only its socket, and wakes whole: a frame cut in two by the
/// network, or a message sent in fragments with a ping between them, arrives intact
/// however long the pause in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_sleeps_and_wakes_whole() -> anyhow::Result<()> {
    use stead_core::ops::Op;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::MaybeTlsStream;

    let dir = tempfile::tempdir()?;
    let server = Server::start(&Db::Sqlite(dir.path().join("sleep.sqlite3")), &[])?;
    let mut rng = stead_core::env::SeededRandom::new(11);
    let space = stead_core::testing::Space::new(1, &mut rng);
    let url = format!("{}/spaces/{}/members", server.base, space.space);
    assert!(reqwest::Client::new().put(url).body(space.members.encode()).send().await?.status().is_success());
    let mut device = space.open(0);
    let (mut peer, _) = RawPeer::handshake(&server, &mut device, 3).await?;
    until_asleep(&server, 1).await?;

    let mut entry = |n: i64| -> anyhow::Result<Vec<u8>> {
        let op = Op::Set { collection: "t".into(), record: RecordId([n as u8; 16]), field: "f".into(), value: Value::Int(n) };
        Ok(Frame::Entries(vec![device.commit(vec![op], common::now(), &mut rng)?]).encode())
    };
    let acked = async |peer: &mut RawPeer, seq: u64| -> anyhow::Result<()> {
        loop {
            match recv(&mut peer.ws).await? {
                Frame::Ack { seq: s, .. } if s == seq => return Ok(()),
                Frame::Error { code, message } => anyhow::bail!("error {code}: {message}"),
                _ => continue,
            }
        }
    };
    let write_raw = async |peer: &mut RawPeer, bytes: &[u8]| -> anyhow::Result<()> {
        let MaybeTlsStream::Plain(tcp) = peer.ws.get_mut() else { anyhow::bail!("not a plain socket") };
        tcp.write_all(bytes).await?;
        Ok(tcp.flush().await?)
    };

    // A whole message (a ping) and half of the next frame arrive together; the rest later.
    let first = raw_frame(true, 2, &entry(0)?);
    let (head, tail) = first.split_at(first.len() / 2);
    write_raw(&mut peer, &[raw_frame(true, 9, b"hi"), head.to_vec()].concat()).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    write_raw(&mut peer, tail).await?;
    acked(&mut peer, 0).await?;
    until_asleep(&server, 1).await?;

    // A message in two fragments with a ping between them.
    let second = entry(1)?;
    let (a, b) = second.split_at(second.len() / 2);
    write_raw(&mut peer, &[raw_frame(false, 2, a), raw_frame(true, 9, b"hi")].concat()).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    write_raw(&mut peer, &raw_frame(true, 0, b)).await?;
    acked(&mut peer, 1).await?;
    until_asleep(&server, 1).await?;

    drop(peer);
    until_asleep(&server, 0).await
}

/// Entries relayed to a connection asleep are written without waking its WebSocket, and
/// arrive whole in order: frames with 16- and 64-bit lengths (an entry frame is never
/// short enough for the 7-bit one, which `socket`'s unit test covers), and megabytes more
/// than the socket's buffers hold while the peer reads nothing, so the server's writes stop
/// part way through frames and resume when it reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_relayed_to_a_sleeping_connection_arrive_whole() -> anyhow::Result<()> {
    use stead_core::ops::Op;

    let dir = tempfile::tempdir()?;
    let server = Server::start(&Db::Sqlite(dir.path().join("relay.sqlite3")), &[])?;
    let mut rng = stead_core::env::SeededRandom::new(12);
    let space = stead_core::testing::Space::new(2, &mut rng);
    let url = format!("{}/spaces/{}/members", server.base, space.space);
    assert!(reqwest::Client::new().put(url).body(space.members.encode()).send().await?.status().is_success());
    let (mut writer, mut reader) = (space.open(0), space.open(1));
    let (mut w, _) = RawPeer::handshake(&server, &mut writer, 3).await?;
    let (mut r, _) = RawPeer::handshake(&server, &mut reader, 4).await?;
    until_asleep(&server, 2).await?;

    // Incompressible bodies: 18 MB in all, more than loopback's buffers on both sides.
    let mut sizes = vec![0, 10, 70_000];
    sizes.extend([1_500_000; 12]);
    let mut sent = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let body: String = (0..*n).map(|_| char::from(b'a' + rng.below(26) as u8)).collect();
        let op = Op::Set { collection: "t".into(), record: RecordId([i as u8; 16]), field: "f".into(), value: Value::Str(body) };
        let entry = writer.commit(vec![op], common::now(), &mut rng)?;
        w.send(Frame::Entries(vec![entry.clone()]).encode()).await?;
        sent.push(entry);
    }
    let last = sent.last().map(|e| e.header.seq).expect("entries were sent");
    loop {
        match recv(&mut w.ws).await? {
            Frame::Ack { seq, .. } if seq == last => break,
            Frame::Error { code, message } => anyhow::bail!("error {code}: {message}"),
            _ => continue,
        }
    }
    // The reader has read nothing yet; now it reads everything, as it came.
    let mut got = Vec::new();
    while got.len() < sent.len() {
        match recv(&mut r.ws).await? {
            Frame::Entries(es) => got.extend(es),
            Frame::Error { code, message } => anyhow::bail!("error {code}: {message}"),
            _ => continue,
        }
    }
    assert_eq!(got.len(), sent.len(), "no more entries than were written");
    for (a, b) in got.iter().zip(&sent) {
        assert!(a.encode() == b.encode(), "entry {} arrived changed", b.header.seq);
    }
    // Both connections go back to sleep, and the reader's connection still works.
    until_asleep(&server, 2).await?;
    let op = Op::Set { collection: "t".into(), record: RecordId([99; 16]), field: "f".into(), value: Value::Int(1) };
    let entry = writer.commit(vec![op], common::now(), &mut rng)?;
    w.send(Frame::Entries(vec![entry.clone()]).encode()).await?;
    loop {
        match recv(&mut r.ws).await? {
            Frame::Entries(es) if es.iter().any(|e| e.header.seq == entry.header.seq) => break,
            Frame::Error { code, message } => anyhow::bail!("error {code}: {message}"),
            _ => continue,
        }
    }
    Ok(())
}

/// A client that pipelines one-entry frames (one that does not batch, or an old one) has
/// them committed many to a transaction: while one commits, the server reads ahead up to
/// its bounds in bytes and entries, so 2,000 such frames take a handful of fsyncs, not one
/// for every few dozen frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_one_entry_frames_share_a_few_commits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = Db::Sqlite(dir.path().join("pipelined.sqlite3"));
    let server = Server::start(&db, &["--frames-per-sec", "100000"])?;
    let cs = clients(&server, 1).await?;
    cs[0].client.interrupt();
    let mut writer = common::device_replica(&cs[0]).await?;
    let mut rng = stead_core::env::SeededRandom::new(7);
    let mut frames = Vec::new();
    let mut last = 0;
    for i in 0..2000u32 {
        let op = Op::Set { collection: "notes".into(), record: RecordId([(i % 200) as u8; 16]), field: "body".into(), value: Value::Str(format!("v{i}")) };
        let entry = writer.commit(vec![op], common::now(), &mut rng)?;
        last = entry.header.seq;
        frames.push(Frame::Entries(vec![entry]).encode());
    }
    let commits = || async {
        let metrics = reqwest::get(format!("{}/metrics", server.base)).await?.text().await?;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("stead_commits_total "))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("no stead_commits_total in\n{metrics}"))
    };
    let before = commits().await?;

    let (mut p, _) = RawPeer::as_device(&server, &cs[0], 3).await?;
    for f in frames {
        p.ws.feed(Message::Binary(f.into())).await?;
    }
    p.ws.flush().await?;
    let replica = cs[0].client.replica();
    loop {
        match recv(&mut p.ws).await? {
            Frame::Ack { replica: r, seq } if r == replica && seq == last => break,
            Frame::Error { code: c, message } => anyhow::bail!("refused with {c}: {message}"),
            _ => continue,
        }
    }
    let stored: u64 = db.stored()?.get(&hex::encode(replica.as_bytes())).copied().unwrap_or(0);
    assert_eq!(stored, last + 1, "every pipelined entry is stored");
    let used = commits().await? - before;
    assert!(used <= 10, "2,000 pipelined one-entry frames took {used} commits");
    Ok(())
}
