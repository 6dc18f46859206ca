//! A power cut under write load, on SQLite: the database lives on a filesystem that loses
//! every write not yet fsynced (`lazyfs`), which is cut at the instant the server gets
//! `kill -9`. Every entry a client holds as acknowledged must be in what survived; then the
//! server restarts on it, clients resume, and every write is applied exactly once.
//! `chaos.rs` kills the process only, and the page cache it leaves behind hides a missing
//! fsync. `STEAD_CRASH_ROUNDS` sets the rounds (3 by default). The same filesystem can
//! fail every fsync, as a failing disk does, to fail a commit whose entries were relayed.

mod common;
mod lazyfs;

use std::time::Duration;

use anyhow::Context;
use common::{Db, Server, WriteLoad, clients, converge, invite};
use lazyfs::Mount;
use stead_core::env::SeededRandom;
use stead_core::ids::RecordId;
use stead_core::ops::Value;

fn rounds() -> usize {
    std::env::var("STEAD_CRASH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_sqlite() -> anyhow::Result<()> {
    let (backing, at) = (tempfile::tempdir()?, tempfile::tempdir()?);
    // Declared before the server, so dropped after it: nothing holds a file when it unmounts.
    let mut mount = Mount::new(backing.path(), at.path())?;
    let db = Db::Sqlite(at.path().join("stead.sqlite3"));
    let mut server = Server::start(&db, &[])?;
    let port = server.port;
    let load = WriteLoad::start(&server, 3).await?;
    let mut rng = SeededRandom::new(7);
    let mut acked_before = 0;
    for round in 0..rounds() {
        load.wait_acks_past(acked_before, round).await?;
        tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
        // The power cut: the disk keeps only what was fsynced, and the server stops at once.
        let lost = mount.crash();
        server.kill9();
        // Acks cannot arrive any more: what each client holds as acked must have survived.
        let acked = load.acked();
        mount.unmount().context("unmounting after the cut")?;
        mount = Mount::new(backing.path(), at.path()).context("mounting what survived")?;
        // Read before the restart: a client whose acked entries were lost would upload them
        // again once reconnected, and hide the loss.
        let stored = db.stored().context("reading what survived the power cut")?;
        for (replica, acked) in &acked {
            let have = stored.get(&hex::encode(replica.0)).copied().unwrap_or(0);
            assert!(have >= *acked, "round {round}: {replica} had {acked} entries acked but {have} survived the power cut");
        }
        let (acked_sum, stored_sum): (u64, u64) = (acked.iter().map(|(_, a)| *a).sum(), stored.values().sum());
        acked_before = acked_sum;
        let lost: Vec<_> = lost.iter().map(|(f, n)| format!("{} {} KiB", f.display(), n / 1024)).collect();
        eprintln!("sqlite power cut {}: {acked_sum} entries acked, {stored_sum} survived; unsynced: {}", round + 1, lost.join(", "));
        server = Server::start_on(&db, port, &[]).context("restart")?;
    }
    let clients = load.clients.len();
    let total = load.finish().await?;
    eprintln!("sqlite: {} power cuts under load, {total} writes, each applied exactly once on all {clients} clients", rounds());
    drop(server);
    mount.unmount()
}

/// On SQLite the server relays entries to the space before its commit's fsync. A commit
/// that then fails (every fsync fails here, as on a failing disk) leaves a receiver holding
/// an entry the server never stored: the writer is not acknowledged, sends it again once
/// the disk works, and a device that joins after gets it from the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_failing_after_its_relay_loses_nothing() -> anyhow::Result<()> {
    let (backing, at) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mount = Mount::new(backing.path(), at.path())?;
    let db = Db::Sqlite(at.path().join("stead.sqlite3"));
    let server = Server::start(&db, &[])?;
    let devices = clients(&server, 2).await?;
    let (writer, receiver) = (&devices[0].client, &devices[1].client);
    let record = RecordId([1; 16]);
    let text = |s: &str| Value::Str(s.into());
    writer.set("notes", record, "text", text("before")).await?;
    writer.wait_acked(Duration::from_secs(10)).await?;
    converge(&[writer, receiver], Duration::from_secs(10)).await?;
    let acked = writer.status().acked;

    mount.fail_syncs(true);
    writer.set("notes", record, "text", text("while the disk fails")).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while receiver.value("notes", record, "text").await? != Some(text("while the disk fails")) {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the receiver never got the entry relayed before its commit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Relayed, yet never committed: commits keep failing, so nothing is acknowledged.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(writer.status().acked, acked, "an entry was acknowledged while every fsync failed");
    let stored = db.stored()?;
    assert_eq!(stored.get(&hex::encode(writer.replica().0)).copied(), Some(acked), "only committed entries are in the database");

    mount.fail_syncs(false);
    writer.wait_acked(Duration::from_secs(30)).await?;
    assert_eq!(writer.status().acked, acked + 1);
    let late = invite(&server, writer, writer.space()).await?;
    converge(&[writer, receiver, &late.client], Duration::from_secs(30)).await?;
    assert_eq!(late.client.value("notes", record, "text").await?, Some(text("while the disk fails")));
    assert_eq!(db.stored()?.get(&hex::encode(writer.replica().0)).copied(), Some(acked + 1));
    drop(late);
    drop(devices);
    drop(server);
    mount.unmount()
}
