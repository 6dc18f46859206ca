//! A power cut under write load, on SQLite: the database lives on a filesystem that loses
//! every write not yet fsynced (`lazyfs`), which is cut at the instant the server gets
//! `kill -9`. Every entry a client holds as acknowledged must be in what survived; then the
//! server restarts on it, clients resume, and every write is applied exactly once.
//! `chaos.rs` kills the process only, and the page cache it leaves behind hides a missing
//! fsync. `STEAD_CRASH_ROUNDS` sets the rounds (3 by default).

mod common;
mod lazyfs;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::{Db, Server, clients, converge};
use lazyfs::Mount;
use stead_core::env::SeededRandom;
use stead_core::ids::RecordId;
use stead_core::ops::{Op, Value};

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
    let cs: Vec<_> = clients(&server, 3).await?.into_iter().map(Arc::new).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicI64::new(0));
    let mut writers = Vec::new();
    for (i, c) in cs.iter().enumerate() {
        let (c, stop, written) = (c.clone(), stop.clone(), written.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let ops = vec![
                    Op::CounterAdd { collection: "stats".into(), record: RecordId([0; 16]), field: "writes".into(), delta: 1 },
                    Op::Set { collection: "log".into(), record: RecordId([i as u8; 16]), field: "n".into(), value: Value::Int(n as i64) },
                ];
                c.client.commit(ops).await?;
                written.fetch_add(1, Ordering::SeqCst);
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            anyhow::Ok(())
        }));
    }
    let mut rng = SeededRandom::new(7);
    let mut acked_before = 0;
    for round in 0..rounds() {
        // Each round must see acks of its own before the cut, or a server that came back
        // and never acknowledged again would pass on the earlier rounds' acks.
        let acked_now = || cs.iter().map(|c| c.client.status().acked).sum::<u64>();
        let deadline = Instant::now() + Duration::from_secs(20);
        while acked_now() <= acked_before {
            anyhow::ensure!(Instant::now() < deadline, "round {round}: no write was acknowledged within 20 s of the restart");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
        // The power cut: the disk keeps only what was fsynced, and the server stops at once.
        let lost = mount.crash();
        server.kill9();
        // Acks cannot arrive any more: what each client holds as acked must have survived.
        let acked: Vec<_> = cs.iter().map(|c| (c.client.replica(), c.client.status().acked)).collect();
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
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await??;
    }
    for c in &cs {
        c.client.wait_acked(Duration::from_secs(30)).await?;
    }
    let refs: Vec<_> = cs.iter().map(|c| &c.client).collect();
    converge(&refs, Duration::from_secs(30)).await?;
    let total = written.load(Ordering::SeqCst);
    for c in &cs {
        let n = c.client.read(|r| r.get("stats", RecordId([0; 16])).and_then(|s| s.field("writes")).map(|f| f.counter_value())).await?;
        assert_eq!(n, Some(total), "every write applied exactly once on {}", c.client.replica());
    }
    eprintln!("sqlite: {} power cuts under load, {total} writes, each applied exactly once on all {} clients", rounds(), cs.len());
    drop(server);
    mount.unmount()
}
