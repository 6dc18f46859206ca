//! A power cut under write load, on SQLite: the database lives on a filesystem that loses
//! every write not yet fsynced (`lazyfs`), which is cut at the instant the server gets
//! `kill -9`. Every entry a client holds as acknowledged must be in what survived; then the
//! server restarts on it, clients resume, and every write is applied exactly once.
//! `chaos.rs` kills the process only, and the page cache it leaves behind hides a missing
//! fsync. `STEAD_CRASH_ROUNDS` sets the rounds (3 by default).

mod common;
mod lazyfs;

use std::time::Duration;

use anyhow::Context;
use common::{Db, Server, WriteLoad};
use lazyfs::Mount;
use stead_core::env::SeededRandom;

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
