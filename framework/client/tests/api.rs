//! The client API against a real `stead-server` process: subscribe to changes, query, and
//! resume after the server was killed and restarted on the same port.

mod common;

use std::time::Duration;

use stead_client::{Client, ClientConfig, Device, Event};
use stead_core::ids::RecordId;
use stead_core::ops::Value;
use stead_core::query::{Filter, Query};
use stead_core::schema::Schema;

const SCHEMA: &str = r#"
version = 1
[collections.todo.fields]
title = { type = "string" }
done = { type = "bool" }
[[collections.todo.indexes]]
field = "done"
"#;

fn config(dir: &std::path::Path, server: &str) -> ClientConfig {
    let mut c = ClientConfig::new(dir, server);
    c.fsync = false;
    c.backoff_min = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(400);
    c
}

/// Waits for a `Changed` event naming `writer` at or past `next`.
async fn changed(events: &mut tokio::sync::broadcast::Receiver<Event>, writer: &Client, next: u64) -> anyhow::Result<()> {
    let want = writer.replica();
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Event::Changed { replica, next: n } = events.recv().await?
                && replica == want
                && n >= next
            {
                return anyhow::Ok(());
            }
        }
    })
    .await?
}

async fn done_ids(c: &Client) -> anyhow::Result<Vec<RecordId>> {
    let q = Query { collection: "todo".into(), filter: Filter::Eq { field: "done".into(), value: Value::Bool(true) }, limit: 100, after: None };
    Ok(c.query(q).await?.records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_query_and_resume_across_a_server_restart() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("server");
    std::fs::create_dir_all(&data)?;
    let server = common::Server::start(&data)?;
    let base = server.base.clone();

    let alice = Client::create(config(&tmp.path().join("alice"), &base)).await?;
    let bob_device = Device::load_or_create(&tmp.path().join("bob"))?;
    alice.invite(&bob_device.card()).await?;
    let bob = Client::join(config(&tmp.path().join("bob"), &base), alice.space()).await?;
    let schema = Schema::from_toml(SCHEMA)?;
    alice.set_schema(schema.clone()).await?;
    bob.set_schema(schema).await?;
    let mut events = bob.subscribe();

    let (milk, eggs, tea) = (RecordId([1; 16]), RecordId([2; 16]), RecordId([3; 16]));
    alice.set("todo", milk, "title", Value::Str("milk".into())).await?;
    alice.set("todo", milk, "done", Value::Bool(true)).await?;
    let seq = alice.set("todo", eggs, "done", Value::Bool(false)).await?;
    changed(&mut events, &alice, seq + 1).await?;
    assert_eq!(done_ids(&bob).await?, vec![milk]);
    assert_eq!(bob.value("todo", milk, "title").await?, Some(Value::Str("milk".into())));

    // Kill the server by its PID and write while it is down: both clients back off and
    // retry; after the restart on the same port they resume from their version vectors.
    let port = server.port;
    drop(server);
    bob.wait_for(Duration::from_secs(10), "the disconnect", |s| !s.connected).await?;
    let seq = alice.set("todo", tea, "done", Value::Bool(true)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let connects = bob.status().connects;
    let server = common::Server::start_on(&data, port)?;
    changed(&mut events, &alice, seq + 1).await?;
    alice.wait_acked(Duration::from_secs(15)).await?;
    assert!(bob.status().connects > connects, "bob reconnected");
    let mut done = done_ids(&bob).await?;
    done.sort();
    assert_eq!(done, vec![milk, tea]);
    // Nothing was sent twice on purpose, and nothing is missing.
    assert_eq!(bob.vector().await?, alice.vector().await?);

    alice.close().await;
    bob.close().await;
    drop(server);
    Ok(())
}
