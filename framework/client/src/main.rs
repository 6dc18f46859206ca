//! `stead-client`: a command line over the native client, for scripts and bots.
//!
//! ```text
//! stead-client --dir alice --server http://127.0.0.1:8080 create        # prints the space id
//! stead-client --dir bob device                                           # prints bob's card
//! stead-client --dir alice --server ... invite <card>
//! stead-client --dir bob --server ... join <space>
//! stead-client --dir alice --server ... invite --role writer --days 7  # prints a one-time code
//! stead-client --dir carol --server ... join <code>
//! stead-client --dir bob --server ... put notes first title '"hello"'
//! stead-client --dir alice --server ... get notes first title
//! stead-client --dir alice --server ... query notes --eq 'stars=3' --schema app.toml
//! stead-client --dir alice --server ... watch                             # one JSON line per change
//! ```
//! Record names that are not UUIDs are hashed into one, so scripts can use plain names.
#![deny(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use stead_client::{Client, ClientConfig, Device, DeviceCard, Event};
use stead_core::ids::{RecordId, SpaceId};
use stead_core::ops::Value;
use stead_core::query::{Filter, Query};
use stead_core::schema::Schema;
use stead_core::state::FieldValue;

#[derive(Parser, Debug)]
#[command(version, about = "Stead's native sync client")]
struct Args {
    /// The device's folder (identity, space key, local log).
    #[arg(long, default_value = ".stead-client")]
    dir: PathBuf,
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// How long to wait for the server to acknowledge writes, in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Prints this device's card (what a member needs to invite it).
    Device,
    /// Creates a space with this device as its first member; prints the space id.
    Create,
    /// Adds a device by its card; without a card, prints a one-time invite code that adds
    /// whichever device joins with it first (within `--days`).
    Invite {
        card: Option<String>,
        /// `owner` (adds and removes devices too), `writer` or `reader`.
        #[arg(long, default_value = "owner")]
        role: String,
        /// How long an invite code stays usable, in days.
        #[arg(long, default_value_t = 7)]
        days: u64,
    },
    /// Prints the space's devices, one JSON line each (`{"replica": ..., "role": ..., "active": ...}`).
    Members,
    /// Removes a device (by its replica id) from this device's space.
    Remove { replica: String },
    /// Joins a space: by its id once a member has added this device's card, or with an
    /// invite code.
    Join { space: String },
    /// Sets a field to a JSON value (string, number, bool or null) and waits for the ack.
    Put { collection: String, record: String, field: String, value: String },
    /// Prints a record (or one field) as JSON after syncing.
    Get { collection: String, record: String, field: Option<String> },
    /// Prints the records of a collection after syncing, one JSON line each
    /// (`{"id": ..., "fields": {...}}`), in id order or, with `--eq`, through an index.
    Query {
        collection: String,
        /// `FIELD=VALUE`: only records whose field equals the JSON value; the field needs an
        /// index in `--schema`.
        #[arg(long)]
        eq: Option<String>,
        /// The app's schema (TOML, or JSON when the name ends in `.json`).
        #[arg(long)]
        schema: Option<PathBuf>,
        /// Most records printed.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Prints one JSON line per change received, until interrupted.
    Watch,
}

fn record_id(name: &str) -> RecordId {
    name.parse().unwrap_or_else(|_| {
        let hex = stead_core::bundle::sha256_hex(name.as_bytes());
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
        }
        RecordId(id)
    })
}

fn parse_value(text: &str) -> anyhow::Result<Value> {
    let json: serde_json::Value = serde_json::from_str(text).unwrap_or(serde_json::Value::String(text.to_owned()));
    Ok(match json {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().context("number out of range")?),
        },
        serde_json::Value::String(s) => Value::Str(s),
        other => anyhow::bail!("only scalar values can be put, not {other}"),
    })
}

fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Int(i) => (*i).into(),
        Value::Float(f) => (*f).into(),
        Value::Str(s) => s.clone().into(),
        Value::Time(t) => (*t).into(),
        Value::Ref(r) => r.to_string().into(),
        Value::Blob(b) => serde_json::json!({ "sha256": hex_of(&b.sha256), "size": b.size, "mime": b.mime }),
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn field_json(f: &FieldValue) -> serde_json::Value {
    match f {
        FieldValue::Value(v) => to_json(v),
        FieldValue::Counter(n) => (*n).into(),
        FieldValue::Set(items) => items.iter().map(to_json).collect(),
    }
}

/// Waits until connected and the server holds every entry of this device, then a moment
/// for the server's entries to arrive.
async fn synced(c: &Client, timeout: Duration) -> anyhow::Result<()> {
    c.wait_for(timeout, "the server", |s| s.connected).await?;
    c.wait_acked(timeout).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

fn record_json(r: &stead_core::replica::Replica, collection: &str, id: RecordId) -> serde_json::Value {
    let fields: serde_json::Map<_, _> = r
        .get(collection, id)
        .map(|rec| rec.fields.iter().map(|(k, s)| (k.clone(), field_json(&s.view()))).collect())
        .unwrap_or_default();
    serde_json::json!({ "id": id.to_string(), "fields": fields })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = ClientConfig::new(&args.dir, &args.server);
    let timeout = Duration::from_secs(args.timeout);
    match args.command {
        Cmd::Device => println!("{}", Device::load_or_create(&args.dir)?.card()),
        Cmd::Create => {
            let c = Client::create(config).await.context("creating the space")?;
            println!("{}", c.space());
            c.close().await;
        }
        Cmd::Invite { card, role, days } => {
            let role: stead_core::membership::Role = role.parse()?;
            let c = Client::open(config).await?;
            match card {
                Some(card) => {
                    let card: DeviceCard = card.parse()?;
                    c.invite_as(&card, role).await.context("inviting the device")?;
                }
                None => {
                    use stead_core::env::Clock;
                    let expires_ms = stead_core::env::SystemClock.now_ms() + days * 24 * 3600 * 1000;
                    let terms = stead_core::membership::InviteTerms { role, expires_ms };
                    println!("{}", c.invite_code(terms).await.context("making the invite")?);
                }
            }
            c.close().await;
        }
        Cmd::Members => {
            let c = Client::open(config).await?;
            synced(&c, timeout).await?;
            for (m, role, active) in c.members().await? {
                println!("{}", serde_json::json!({ "replica": m.replica.to_string(), "role": role.as_str(), "active": active }));
            }
            c.close().await;
        }
        Cmd::Remove { replica } => {
            let replica: stead_core::ids::ReplicaId = replica.parse().context("not a replica id")?;
            let c = Client::open(config).await?;
            synced(&c, timeout).await?;
            c.remove(replica).await.context("removing the device")?;
            c.close().await;
        }
        Cmd::Join { space } => {
            let c = if space.contains('.') {
                Client::join_invite(config, &space).await?
            } else {
                let space: SpaceId = space.parse().context("not a space id or an invite code")?;
                Client::join(config, space).await?
            };
            c.wait_for(timeout, "the first connection", |s| s.connected).await?;
            c.close().await;
        }
        Cmd::Put { collection, record, field, value } => {
            let c = Client::open(config).await?;
            c.set(&collection, record_id(&record), &field, parse_value(&value)?).await?;
            c.wait_acked(timeout).await.context("waiting for the server")?;
            c.close().await;
        }
        Cmd::Get { collection, record, field } => {
            let c = Client::open(config).await?;
            synced(&c, timeout).await?;
            let id = record_id(&record);
            let out = c
                .read(move |r| {
                    let rec = r.get(&collection, id)?;
                    Some(match field {
                        Some(f) => rec.field(&f).map(|s| field_json(&s.view())).unwrap_or(serde_json::Value::Null),
                        None => rec.fields.iter().map(|(k, s)| (k.clone(), field_json(&s.view()))).collect::<serde_json::Map<_, _>>().into(),
                    })
                })
                .await?;
            println!("{}", out.unwrap_or(serde_json::Value::Null));
            c.close().await;
        }
        Cmd::Query { collection, eq, schema, limit } => {
            let c = Client::open(config).await?;
            let schema = match schema {
                Some(path) => {
                    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                    if path.extension().is_some_and(|e| e == "json") { Schema::from_json(&text)? } else { Schema::from_toml(&text)? }
                }
                None => Schema { version: 1, collections: Default::default(), migrations: Vec::new() },
            };
            c.set_schema(schema).await?;
            let filter = match eq {
                Some(eq) => {
                    let (field, value) = eq.split_once('=').context("--eq wants FIELD=VALUE")?;
                    Filter::Eq { field: field.to_owned(), value: parse_value(value)? }
                }
                None => Filter::All,
            };
            synced(&c, timeout).await?;
            let mut q = Query { collection: collection.clone(), filter, limit: limit.min(256), after: None };
            let mut printed = 0;
            loop {
                let page = c.query(q.clone()).await?;
                let (coll, ids) = (collection.clone(), page.records.clone());
                let lines = c.read(move |r| ids.iter().map(|id| record_json(r, &coll, *id)).collect::<Vec<_>>()).await?;
                for line in lines.into_iter().take(limit - printed) {
                    println!("{line}");
                    printed += 1;
                }
                match page.next {
                    Some(next) if printed < limit => q.after = Some(next),
                    _ => break,
                }
            }
            c.close().await;
        }
        Cmd::Watch => {
            let c = Client::open(config).await?;
            let mut events = c.subscribe();
            // The engine may have connected before this subscription: say so now, or the
            // event is missed and watch stays silent about a connection it has.
            if c.status().connected {
                eprintln!("connected");
            }
            loop {
                tokio::select! {
                    e = events.recv() => match e {
                        Ok(Event::Changed { replica, next }) => println!("{}", serde_json::json!({ "changed": replica.to_string(), "next": next })),
                        Ok(Event::Connected) => eprintln!("connected"),
                        Ok(Event::Disconnected { reason }) => eprintln!("disconnected: {reason}"),
                        Ok(Event::Acked { .. }) => {}
                        Ok(Event::Rejected { reason }) => eprintln!("refused an entry: {reason}"),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => eprintln!("missed {n} events"),
                        Err(_) => break,
                    },
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
            c.close().await;
        }
    }
    Ok(())
}
