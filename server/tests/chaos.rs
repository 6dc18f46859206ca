//! kill -9 under write load: every acknowledged entry survives, clients resume, and
//! nothing is applied twice. `STEAD_CHAOS_ROUNDS` sets the rounds (3 by default;
//! `cargo xtask chaos --rounds N` runs more).

mod common;

use std::time::Duration;

use anyhow::Context;
use common::{Db, Pg, Server, WriteLoad};
use stead_core::env::SeededRandom;

fn rounds() -> usize {
    std::env::var("STEAD_CHAOS_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3)
}

async fn chaos(db: Db) -> anyhow::Result<()> {
    let mut server = Server::start(&db, &[])?;
    let port = server.port;
    let load = WriteLoad::start(&server, 3).await?;
    let mut rng = SeededRandom::new(99);
    let mut acked_before = 0;
    for round in 0..rounds() {
        load.wait_acks_past(acked_before, round).await?;
        tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
        server.kill9();
        // Acks cannot arrive any more: what each client holds as acked must be stored.
        let acked = load.acked();
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
    let clients = load.clients.len();
    let total = load.finish().await?;
    eprintln!("{}: {} kills under load, {total} writes, each applied exactly once on all {clients} clients", db.name(), rounds());
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
