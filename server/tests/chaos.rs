//! kill -9 under write load: every acknowledged entry survives, clients resume, and
//! nothing is applied twice. `STEAD_CHAOS_ROUNDS` sets the rounds (3 by default;
//! `cargo xtask chaos --rounds N` runs more).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context;
use common::{Db, Pg, Server, clients, converge};
use stead_core::env::SeededRandom;
use stead_core::ids::RecordId;
use stead_core::ops::{Op, Value};

fn rounds() -> usize {
    std::env::var("STEAD_CHAOS_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3)
}

async fn chaos(db: Db) -> anyhow::Result<()> {
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
    let mut rng = SeededRandom::new(99);
    let mut acked_before = 0;
    for round in 0..rounds() {
        // Each round must see acks of its own before the kill: a server that came back
        // and never acknowledged again would otherwise pass on the earlier rounds' acks.
        let acked_now = || cs.iter().map(|c| c.client.status().acked).sum::<u64>();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while acked_now() <= acked_before {
            anyhow::ensure!(std::time::Instant::now() < deadline, "round {round}: no write was acknowledged within 20 s of the restart");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
        server.kill9();
        // Acks cannot arrive any more: what each client holds as acked must be stored.
        let acked: Vec<_> = cs.iter().map(|c| (c.client.replica(), c.client.status().acked)).collect();
        let stored = db.stored()?;
        for (replica, acked) in &acked {
            let have = stored.get(&hex::encode(replica.0)).copied().unwrap_or(0);
            assert!(have >= *acked, "round {round}: {replica} had {acked} entries acked but the database holds {have}");
        }
        let (acked_sum, stored_sum): (u64, u64) = (acked.iter().map(|(_, a)| *a).sum(), stored.values().sum());
        acked_before = acked_sum;
        eprintln!("{} round {}: killed with {acked_sum} entries acked, {stored_sum} stored", db.name(), round + 1);
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
    eprintln!("{}: {} kills under load, {total} writes, each applied exactly once on all {} clients", db.name(), rounds(), cs.len());
    drop(server);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_sqlite() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    chaos(Db::Sqlite(dir.path().join("chaos.sqlite3"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_postgres() -> anyhow::Result<()> {
    let pg = Pg::start()?;
    chaos(pg.database()?).await
}
