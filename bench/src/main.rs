//! Benchmarks of Stead against its anchors, run by `cargo xtask bench <name>`.
//!
//! `core` (BENCH.md, "Merge"): 4 replicas × 250,000 field sets committed in batches of
//! 100, keys from 10,000 records × 5 fields, integer values. Each system builds the four
//! replicas' changes untimed, then a fresh replica takes them all in and reads a value
//! (timed). Stead's side does everything a real replica does: frame decoding, chain and
//! signature verification, decryption, decompression and merge. Also: bytes per op at
//! rest and on the wire, store append cost at 1k vs 1M entries, and open-to-first-query
//! at 1k vs 100k records. Prints ratios Stead/anchor and writes raw numbers to CSV.
//!
//! Bytes are counted where they land: at rest, the size of every file the writers'
//! `FileStore`s hold under `log/` (segment headers, record framing and checksums
//! included; no snapshot is saved, and the space's membership log is not counted);
//! on the wire, every Entries frame a sync would send from those stores, as encoded
//! (the WebSocket's own few bytes per message are not counted, nor automerge's
//! transport). automerge's figure for both is its compressed `save()`.
//!
//! Run with `cargo run --release -p stead-bench -- core [--quick] [--csv PATH]`.
//!
//! The workspace release profile is `opt-level = "z"` (small wasm), which makes
//! curve25519-dalek's signature checks many times slower and Stead's merge ~15× slower
//! than at `opt-level = 3`; measure with `CARGO_PROFILE_RELEASE_OPT_LEVEL=3` (or a
//! dedicated profile) until the workspace gives the bench one.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use stead_core::env::SeededRandom;
use stead_core::hlc::Hlc;
use stead_core::ids::{RecordId, ReplicaId, SpaceId};
use stead_core::log::{Entry, EntryHeader, Limits};
use stead_core::ops::{Op, Value};
use stead_core::store::Store;
use stead_core::sync::{Frame, SyncConfig};
use stead_core::testing::Space;
use stead_store::{FileStore, Options};

const T0: u64 = 1_700_000_000_000;

#[derive(Debug, Clone)]
struct Opts {
    replicas: usize,
    ops_per_replica: usize,
    batch: usize,
    records: usize,
    fields: usize,
    append_big: usize,
    open_big: usize,
    csv: PathBuf,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts> {
        let mut o = Opts {
            replicas: 4,
            ops_per_replica: 250_000,
            batch: 100,
            records: 10_000,
            fields: 5,
            append_big: 1_000_000,
            open_big: 100_000,
            csv: PathBuf::from("target/bench/core.csv"),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut num = |name: &str| -> Result<usize> {
                it.next().with_context(|| format!("{name} needs a value"))?.parse().with_context(|| format!("bad {name}"))
            };
            match a.as_str() {
                "--quick" => {
                    o.ops_per_replica = 25_000;
                    o.append_big = 100_000;
                    o.open_big = 10_000;
                }
                "--ops" => o.ops_per_replica = num("--ops")?,
                "--append" => o.append_big = num("--append")?,
                "--open" => o.open_big = num("--open")?,
                "--csv" => o.csv = PathBuf::from(it.next().context("--csv needs a path")?),
                other => bail!("unknown option {other:?}"),
            }
        }
        Ok(o)
    }
}

/// One replica's writes: (record, field, value), in commit order.
fn workload(o: &Opts, replica: usize) -> Vec<(usize, usize, i64)> {
    let mut rng = SeededRandom::new(1000 + replica as u64);
    (0..o.ops_per_replica)
        .map(|_| {
            (rng.below(o.records as u64) as usize, rng.below(o.fields as u64) as usize, rng.below(1_000_000) as i64)
        })
        .collect()
}

fn record_id(k: usize) -> RecordId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(k as u64).to_le_bytes());
    b[6] = 0x70; // looks like a v7 id
    RecordId(b)
}

struct Measure {
    rows: Vec<(String, String, f64, String)>,
}

impl Measure {
    fn add(&mut self, metric: &str, system: &str, value: f64, unit: &str) {
        self.rows.push((metric.into(), system.into(), value, unit.into()));
    }
    fn get(&self, metric: &str, system: &str) -> f64 {
        self.rows.iter().find(|r| r.0 == metric && r.1 == system).map_or(f64::NAN, |r| r.2)
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn bench_stead(o: &Opts, works: &[Vec<(usize, usize, i64)>], fields: &[String], m: &mut Measure) -> Result<()> {
    let mut rng = SeededRandom::new(7);
    let space = Space::new(o.replicas + 1, &mut rng);
    let mut wire: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut at_rest = 0u64;
    let sync = SyncConfig::default();
    for (r, work) in works.iter().enumerate() {
        // Each writer keeps its log in a real file store; at rest is what its segment files
        // hold, and the wire is the Entries frames its sync would send from that store.
        let dir = tempfile::tempdir()?;
        let store = FileStore::open(dir.path(), Options { fsync: false, ..Options::default() })?;
        let mut rep = space.open_with(r, Box::new(store));
        for (b, chunk) in work.chunks(o.batch).enumerate() {
            let ops = chunk
                .iter()
                .map(|&(rec, f, v)| Op::Set { collection: "t".into(), record: record_id(rec), field: fields[f].clone(), value: Value::Int(v) })
                .collect();
            rep.commit(ops, T0 + b as u64, &mut rng)?;
        }
        let me = space.identities[r].replica;
        let mut frames = Vec::new();
        let mut from = 0;
        loop {
            let entries = rep.entries_from(me, from, sync.max_entries, sync.max_bytes)?;
            let Some(last) = entries.last() else { break };
            from = last.header.seq + 1;
            frames.push(Frame::Entries(entries).encode());
        }
        wire.push(frames);
        drop(rep);
        at_rest += dir_bytes(&dir.path().join("log"))?;
    }
    let total_ops = (o.replicas * o.ops_per_replica) as f64;
    let wire_bytes: usize = wire.iter().flatten().map(Vec::len).sum();
    let mut fresh = space.open(o.replicas);
    let now = T0 + 10_000_000;
    let start = Instant::now();
    for frames in &wire {
        for bytes in frames {
            let Frame::Entries(entries) = Frame::decode(bytes, &Limits::default())? else { bail!("not an entries frame") };
            // As `Sync` takes a frame in: each signer's signatures in one batch.
            let checks = fresh.check_entries(&entries);
            for (e, checked) in entries.into_iter().zip(checks) {
                fresh.ingest_checked(e, checked, now)?;
            }
        }
    }
    let v = fresh.value("t", record_id(0), &fields[0]);
    let took = start.elapsed();
    std::hint::black_box(v);
    m.add("merge", "stead", secs(took), "s");
    m.add("bytes/op at rest", "stead", at_rest as f64 / total_ops, "B");
    m.add("log files", "stead", at_rest as f64, "B");
    m.add("entries frames", "stead", wire_bytes as f64, "B");
    m.add("bytes/op on the wire", "stead", wire_bytes as f64 / total_ops, "B");
    Ok(())
}

fn bench_automerge(o: &Opts, works: &[Vec<(usize, usize, i64)>], keys: &dyn Fn(usize, usize) -> String, m: &mut Measure) -> Result<()> {
    use automerge::transaction::Transactable;
    use automerge::{ActorId, AutoCommit, ReadDoc, ROOT};
    let mut saved = Vec::new();
    for (r, work) in works.iter().enumerate() {
        let mut doc = AutoCommit::new().with_actor(ActorId::from(vec![r as u8 + 1; 16]));
        for chunk in work.chunks(o.batch) {
            for &(rec, f, v) in chunk {
                doc.put(ROOT, keys(rec, f), v)?;
            }
            doc.commit();
        }
        saved.push(doc.save());
    }
    let bytes: usize = saved.iter().map(Vec::len).sum();
    let start = Instant::now();
    let mut fresh = AutoCommit::new();
    for s in &saved {
        fresh.load_incremental(s)?;
    }
    let v = fresh.get(ROOT, keys(0, 0))?;
    let took = start.elapsed();
    std::hint::black_box(v);
    let total_ops = (o.replicas * o.ops_per_replica) as f64;
    m.add("merge", "automerge", secs(took), "s");
    m.add("bytes/op at rest", "automerge", bytes as f64 / total_ops, "B");
    m.add("bytes/op on the wire", "automerge", bytes as f64 / total_ops, "B");
    Ok(())
}

fn bench_yrs(o: &Opts, works: &[Vec<(usize, usize, i64)>], keys: &dyn Fn(usize, usize) -> String, m: &mut Measure) -> Result<()> {
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, Map, ReadTxn, StateVector, Transact, Update};
    let mut updates = Vec::new();
    for (r, work) in works.iter().enumerate() {
        let doc = Doc::with_client_id(r as u64 + 1);
        let map = doc.get_or_insert_map("m");
        for chunk in work.chunks(o.batch) {
            let mut txn = doc.transact_mut();
            for &(rec, f, v) in chunk {
                map.insert(&mut txn, keys(rec, f), v);
            }
        }
        updates.push(doc.transact().encode_state_as_update_v1(&StateVector::default()));
    }
    let bytes: usize = updates.iter().map(Vec::len).sum();
    let start = Instant::now();
    let fresh = Doc::new();
    let map = fresh.get_or_insert_map("m");
    {
        let mut txn = fresh.transact_mut();
        for u in &updates {
            txn.apply_update(Update::decode_v1(u)?)?;
        }
    }
    let v = map.get(&fresh.transact(), &keys(0, 0));
    let took = start.elapsed();
    std::hint::black_box(v);
    let total_ops = (o.replicas * o.ops_per_replica) as f64;
    m.add("merge", "yrs", secs(took), "s");
    m.add("bytes/op at rest", "yrs", bytes as f64 / total_ops, "B");
    Ok(())
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &std::path::Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let meta = e.metadata()?;
        total += if meta.is_dir() { dir_bytes(&e.path())? } else { meta.len() };
    }
    Ok(total)
}

/// Mean time of 1,000 appends to a file store already holding `n` entries.
fn append_cost(n: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut store = FileStore::open(dir.path(), Options { fsync: false, ..Options::default() })?;
    let replica = ReplicaId([3; 16]);
    let entry = |seq: u64| Entry {
        header: EntryHeader {
            space: SpaceId([1; 16]),
            replica,
            seq,
            hlc: Hlc::new(T0 + seq, 0),
            prev: [9; 32],
            payload_len: 160,
        },
        payload: vec![0x5a; 160],
        sig: [7; 64],
    };
    for seq in 0..n as u64 {
        store.append(&entry(seq))?;
    }
    let runs = 1000u64;
    let start = Instant::now();
    for seq in n as u64..n as u64 + runs {
        store.append(&entry(seq))?;
    }
    Ok(secs(start.elapsed()) / runs as f64)
}

/// Time from nothing to the first answer: open the file store and the replica (snapshot
/// plus an empty tail) and read one record, with `n` records stored.
fn open_cost(n: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut rng = SeededRandom::new(11);
    let space = Space::new(1, &mut rng);
    {
        let store = FileStore::open(dir.path(), Options { fsync: false, ..Options::default() })?;
        let mut rep = space.open_with(0, Box::new(store));
        let ids: Vec<usize> = (0..n).collect();
        for (b, chunk) in ids.chunks(1000).enumerate() {
            let ops = chunk
                .iter()
                .map(|&k| Op::Set { collection: "t".into(), record: record_id(k), field: "f0".into(), value: Value::Int(k as i64) })
                .collect();
            rep.commit(ops, T0 + b as u64, &mut rng)?;
        }
        rep.save_snapshot()?;
    }
    // The median of several opens: one takes well under a millisecond, so a single
    // sample is at the mercy of the shared machine.
    let mut samples = Vec::new();
    for _ in 0..OPEN_SAMPLES {
        let start = Instant::now();
        let store = FileStore::open(dir.path(), Options::default())?;
        let rep = space.open_with(0, Box::new(store));
        let v = rep.value("t", record_id(n / 2), "f0");
        samples.push(secs(start.elapsed()));
        if v != Some(Value::Int((n / 2) as i64)) {
            bail!("open read the wrong value {v:?}");
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// Opens timed per size in `bench core`; the median is reported.
const OPEN_SAMPLES: usize = 9;

fn core(o: Opts) -> Result<()> {
    eprintln!(
        "bench core: {} replicas × {} field sets, batches of {}, {} records × {} fields (anchors: automerge 0.12, yrs 0.28)",
        o.replicas, o.ops_per_replica, o.batch, o.records, o.fields
    );
    let works: Vec<_> = (0..o.replicas).map(|r| workload(&o, r)).collect();
    let fields: Vec<String> = (0..o.fields).map(|f| format!("f{f}")).collect();
    let key_table: Vec<String> =
        (0..o.records * o.fields).map(|i| format!("r{}.f{}", i / o.fields, i % o.fields)).collect();
    let keys = |rec: usize, f: usize| key_table[rec * o.fields + f].clone();
    let mut m = Measure { rows: Vec::new() };
    eprintln!("stead …");
    bench_stead(&o, &works, &fields, &mut m)?;
    eprintln!("yrs …");
    bench_yrs(&o, &works, &keys, &mut m)?;
    eprintln!("automerge …");
    bench_automerge(&o, &works, &keys, &mut m)?;
    eprintln!("append at 1k and {} entries …", o.append_big);
    let small = append_cost(1000)?;
    let big = append_cost(o.append_big)?;
    m.add("append at 1k", "stead", small * 1e6, "us");
    m.add(&format!("append at {}", o.append_big), "stead", big * 1e6, "us");
    eprintln!("open at 1k and {} records …", o.open_big);
    let small = open_cost(1000)?;
    let big = open_cost(o.open_big)?;
    m.add("open 1k records", "stead", small * 1e3, "ms");
    m.add(&format!("open {} records", o.open_big), "stead", big * 1e3, "ms");

    let ratio = |a: f64, b: f64| a / b;
    let lines = [
        ("merge time, stead / automerge", ratio(m.get("merge", "stead"), m.get("merge", "automerge")), "≤ 0.10"),
        ("merge time, stead / yrs", ratio(m.get("merge", "stead"), m.get("merge", "yrs")), "≤ 0.50"),
        (
            "bytes/op at rest, stead / automerge",
            ratio(m.get("bytes/op at rest", "stead"), m.get("bytes/op at rest", "automerge")),
            "≤ 1.0",
        ),
        (
            "bytes/op on the wire, stead / automerge",
            ratio(m.get("bytes/op on the wire", "stead"), m.get("bytes/op on the wire", "automerge")),
            "≤ 1.0",
        ),
        (
            "append at big / at 1k",
            ratio(m.get(&format!("append at {}", o.append_big), "stead"), m.get("append at 1k", "stead")),
            "≤ 1.2",
        ),
        (
            "open big / open 1k",
            ratio(m.get(&format!("open {} records", o.open_big), "stead"), m.get("open 1k records", "stead")),
            "≤ 3",
        ),
    ];
    println!("{:<28} {:<10} {:>14} {}", "metric", "system", "value", "unit");
    for (metric, system, value, unit) in &m.rows {
        println!("{metric:<28} {system:<10} {value:>14.4} {unit}");
    }
    println!();
    println!("{:<42} {:>8}  goal", "ratio", "value");
    for (name, r, goal) in lines {
        println!("{name:<42} {r:>8.3}  {goal}");
    }
    if let Some(dir) = o.csv.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::File::create(&o.csv).with_context(|| format!("creating {}", o.csv.display()))?;
    writeln!(f, "metric,system,value,unit")?;
    for (metric, system, value, unit) in &m.rows {
        writeln!(f, "{metric},{system},{value},{unit}")?;
    }
    eprintln!("raw numbers written to {}", o.csv.display());
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("core") => core(Opts::parse(&args[1..])?),
        other => bail!("unknown benchmark {other:?} (known: core)"),
    }
}
