//! Backpressure and shutdown: a stalled reader is cut off without holding up others and
//! catches up on reconnect; SIGTERM finishes in-flight commits and exits cleanly.

mod common;

use std::time::Duration;

use common::{Db, RawPeer, Server, clients, converge, recv};
use stead_core::ids::RecordId;
use stead_core::ops::Value;
use stead_core::sync::{Frame, code};

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
