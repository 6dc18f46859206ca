//! Benchmarks of Stead against its anchors, run by `cargo xtask bench core`.
//!
//! `core` (BENCH.md, "Merge"): 4 replicas × 250,000 field sets committed in batches of
//! 100, keys from 10,000 records × 5 fields, integer values, in two value sequences
//! (`random`: SplitMix-drawn keys and values; `regular`: an arithmetic progression, the
//! kind automerge's columns compress best). Each system builds the four replicas' changes
//! untimed, then a fresh replica takes them all in and reads a value (timed). Stead's side
//! does everything a real replica does: frame decoding, chain and signature verification,
//! decryption, decompression and merge. automerge is measured twice: `load_incremental` of
//! each saved document, and `apply_changes` of the change stream a sync would carry. Also:
//! bytes per op at rest and on the wire, store append cost at 1k vs 1M entries, and
//! open-to-first-query at 1k vs 100k records.
//!
//! Every system runs in its own process (`core-one`, which prints one JSON line), `reps`
//! times per workload, in the interleaved order of `stead_bench_harness::order`; the
//! driver prints each figure's median and min–max and the ratios of medians with their
//! range, and writes `core.csv` and `core.json` (read by `cargo xtask bench`).
//!
//! Bytes are counted where they land: at rest, the size of every file the writers'
//! `FileStore`s hold under `log/` (segment headers, record framing and checksums
//! included; no snapshot is saved, and the space's membership log is not counted);
//! on the wire, every Entries frame a sync would send from those stores, as encoded
//! (the WebSocket's own few bytes per message are not counted, nor automerge's
//! transport). automerge's figure for both is its compressed `save()`; its change stream
//! (each change's compressed bytes, as its sync protocol sends them) is reported beside.
//!
//! Run with `cargo run --release -p stead-bench -- core [--quick] [--reps N] [--out DIR]`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use stead_bench_harness::{Better, Curve, Environment, Key, RatioSpec, SuiteResult, env::locked_version, order::interleaved};
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

/// The merge anchors and Stead, in the order of a round (reversed every other round).
const SYSTEMS: [&str; 4] = ["stead", "yrs", "automerge", "automerge-changes"];
const WORKLOADS: [&str; 2] = ["random", "regular"];

#[derive(Debug, Clone)]
struct Opts {
    replicas: usize,
    ops_per_replica: usize,
    batch: usize,
    records: usize,
    fields: usize,
    append_big: usize,
    open_big: usize,
    reps: usize,
    quick: bool,
    out: PathBuf,
    /// `core-one` only.
    system: String,
    workload: String,
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
            reps: 5,
            quick: false,
            out: PathBuf::from("target/bench"),
            system: String::new(),
            workload: "random".into(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = |name: &str| -> Result<String> { it.next().cloned().with_context(|| format!("{name} needs a value")) };
            match a.as_str() {
                "--quick" => {
                    o.quick = true;
                    o.ops_per_replica = 25_000;
                    o.append_big = 100_000;
                    o.open_big = 10_000;
                    o.reps = 3;
                }
                "--ops" => o.ops_per_replica = val(a)?.parse().context("bad --ops")?,
                "--append" => o.append_big = val(a)?.parse().context("bad --append")?,
                "--open" => o.open_big = val(a)?.parse().context("bad --open")?,
                "--reps" => o.reps = val(a)?.parse().context("bad --reps")?,
                "--out" => o.out = PathBuf::from(val(a)?),
                "--system" => o.system = val(a)?,
                "--workload" => o.workload = val(a)?,
                other => bail!("unknown option {other:?}"),
            }
        }
        Ok(o)
    }

    /// The options a child process needs to run the same sizes.
    fn child_args(&self) -> Vec<String> {
        vec![
            "--ops".into(),
            self.ops_per_replica.to_string(),
            "--append".into(),
            self.append_big.to_string(),
            "--open".into(),
            self.open_big.to_string(),
        ]
    }
}

/// One replica's writes: (record, field, value), in commit order.
fn workload(o: &Opts, replica: usize) -> Result<Vec<(usize, usize, i64)>> {
    match o.workload.as_str() {
        "random" => {
            let mut rng = SeededRandom::new(1000 + replica as u64);
            Ok((0..o.ops_per_replica)
                .map(|_| (rng.below(o.records as u64) as usize, rng.below(o.fields as u64) as usize, rng.below(1_000_000) as i64))
                .collect())
        }
        // BENCH.md: x = (i·6364136223846793005 + r·1442695040888963407) >> 17.
        "regular" => Ok((0..o.ops_per_replica as u64)
            .map(|i| {
                let x = i.wrapping_mul(6364136223846793005).wrapping_add((replica as u64).wrapping_mul(1442695040888963407)) >> 17;
                ((x % o.records as u64) as usize, ((x / o.records as u64) % o.fields as u64) as usize, (x % 1_000_000) as i64)
            })
            .collect()),
        other => bail!("unknown workload {other:?} (known: random, regular)"),
    }
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

/// automerge as its sync protocol would feed a fresh peer: every change of every replica,
/// compressed as sent, decoded and applied.
fn bench_automerge_changes(o: &Opts, works: &[Vec<(usize, usize, i64)>], keys: &dyn Fn(usize, usize) -> String, m: &mut Measure) -> Result<()> {
    use automerge::transaction::Transactable;
    use automerge::{ActorId, AutoCommit, Change, ReadDoc, ROOT};
    let mut stream: Vec<Vec<u8>> = Vec::new();
    for (r, work) in works.iter().enumerate() {
        let mut doc = AutoCommit::new().with_actor(ActorId::from(vec![r as u8 + 1; 16]));
        for chunk in work.chunks(o.batch) {
            for &(rec, f, v) in chunk {
                doc.put(ROOT, keys(rec, f), v)?;
            }
            doc.commit();
        }
        for mut c in doc.get_changes(&[]) {
            stream.push(c.bytes().into_owned());
        }
    }
    let bytes: usize = stream.iter().map(Vec::len).sum();
    let start = Instant::now();
    let mut fresh = AutoCommit::new();
    let changes = stream.iter().map(|b| Change::from_bytes(b.clone())).collect::<Result<Vec<_>, _>>()?;
    fresh.apply_changes(changes)?;
    let v = fresh.get(ROOT, keys(0, 0))?;
    let took = start.elapsed();
    std::hint::black_box(v);
    let total_ops = (o.replicas * o.ops_per_replica) as f64;
    m.add("merge", "automerge-changes", secs(took), "s");
    m.add("bytes/op on the wire", "automerge-changes", bytes as f64 / total_ops, "B");
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

/// A file store holding `n` records under a snapshot, for timing opens.
struct OpenFixture {
    dir: tempfile::TempDir,
    space: Space,
    n: usize,
}

impl OpenFixture {
    fn new(n: usize) -> Result<OpenFixture> {
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
        Ok(OpenFixture { dir, space, n })
    }

    /// Time from nothing to the first answer: open the file store and the replica
    /// (snapshot plus an empty tail) and read one record.
    fn open_once(&self) -> Result<f64> {
        let start = Instant::now();
        let store = FileStore::open(self.dir.path(), Options::default())?;
        let rep = self.space.open_with(0, Box::new(store));
        let v = rep.value("t", record_id(self.n / 2), "f0");
        let t = secs(start.elapsed());
        if v != Some(Value::Int((self.n / 2) as i64)) {
            bail!("open read the wrong value {v:?}");
        }
        Ok(t)
    }
}

/// The median open of each fixture, their opens interleaved (A B B A …) so a busy moment
/// of the shared machine hits all alike: one open takes well under a millisecond.
fn open_costs(fixtures: &[&OpenFixture]) -> Result<Vec<f64>> {
    let mut samples = vec![Vec::new(); fixtures.len()];
    for i in 0..OPEN_SAMPLES {
        let order: Vec<usize> = if i % 2 == 0 { (0..fixtures.len()).collect() } else { (0..fixtures.len()).rev().collect() };
        for k in order {
            samples[k].push(fixtures[k].open_once()?);
        }
    }
    Ok(samples
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect())
}

/// Opens timed per size in `bench core`; the median is reported.
const OPEN_SAMPLES: usize = 31;

/// Powers of ten from 10,000 up to (not including) `big`.
fn growth_points(big: usize) -> Vec<usize> {
    std::iter::successors(Some(10_000usize), |n| Some(n * 10)).take_while(|&n| n < big).collect()
}

/// Child process: one system, one workload; prints its figures as one JSON line.
fn core_one(o: Opts) -> Result<()> {
    let mut m = Measure { rows: Vec::new() };
    if o.system == "stead-store" {
        m.add("append at 1k", "stead", append_cost(1000)? * 1e6, "us");
        m.add("append at big", "stead", append_cost(o.append_big)? * 1e6, "us");
        // The goal's two points, timed together; the curve's points on their own.
        let (small, big) = (OpenFixture::new(1000)?, OpenFixture::new(o.open_big)?);
        let costs = open_costs(&[&small, &big])?;
        m.add("open 1k records", "stead", costs[0] * 1e3, "ms");
        m.add("open big", "stead", costs[1] * 1e3, "ms");
        // The points between, for the growth curves.
        for n in growth_points(o.append_big) {
            m.add(&format!("append at {n}"), "stead", append_cost(n)? * 1e6, "us");
        }
        for n in growth_points(o.open_big) {
            m.add(&format!("open {n} records"), "stead", open_costs(&[&OpenFixture::new(n)?])?[0] * 1e3, "ms");
        }
    } else {
        let works: Vec<_> = (0..o.replicas).map(|r| workload(&o, r)).collect::<Result<_>>()?;
        let fields: Vec<String> = (0..o.fields).map(|f| format!("f{f}")).collect();
        let key_table: Vec<String> =
            (0..o.records * o.fields).map(|i| format!("r{}.f{}", i / o.fields, i % o.fields)).collect();
        let keys = |rec: usize, f: usize| key_table[rec * o.fields + f].clone();
        match o.system.as_str() {
            "stead" => bench_stead(&o, &works, &fields, &mut m)?,
            "yrs" => bench_yrs(&o, &works, &keys, &mut m)?,
            "automerge" => bench_automerge(&o, &works, &keys, &mut m)?,
            "automerge-changes" => bench_automerge_changes(&o, &works, &keys, &mut m)?,
            other => bail!("unknown system {other:?}"),
        }
    }
    let rows: Vec<serde_json::Value> = m.rows.iter().map(|(metric, _, v, unit)| serde_json::json!([metric, v, unit])).collect();
    println!("{}", serde_json::Value::Array(rows));
    Ok(())
}

/// Runs `core-one` as a child process and returns its figures: (metric, value, unit).
fn child(o: &Opts, system: &str, workload: &str) -> Result<Vec<(String, f64, String)>> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args(["core-one", "--system", system, "--workload", workload])
        .args(o.child_args())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("starting a core-one process")?;
    if !out.status.success() {
        bail!("core-one --system {system} --workload {workload} failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("core-one printed nothing")?;
    let rows: Vec<(String, f64, String)> = serde_json::from_str(line).with_context(|| format!("core-one printed {line:?}"))?;
    Ok(rows)
}

fn core(o: Opts) -> Result<()> {
    let started = Instant::now();
    let anchors = ["automerge", "yrs"].iter().map(|a| (a.to_string(), locked_version(a).unwrap_or_else(|| "?".into()))).collect();
    let mut r = SuiteResult::new("core", o.quick, o.reps, Environment::detect(anchors));
    eprintln!(
        "bench core: {} replicas × {} field sets, batches of {}, {} records × {} fields; {} rounds of {:?} per workload",
        o.replicas, o.ops_per_replica, o.batch, o.records, o.fields, o.reps, SYSTEMS
    );
    for w in WORKLOADS {
        for (round, s) in interleaved(SYSTEMS.len(), o.reps) {
            let system = SYSTEMS[s];
            let t = Instant::now();
            let rows = child(&o, system, w)?;
            let merge = rows.iter().find(|x| x.0 == "merge").map_or(f64::NAN, |x| x.1);
            eprintln!("  {w:<8} round {round} {system:<18} merge {merge:.3} s  ({:.1} s with set-up)", t.elapsed().as_secs_f64());
            for (metric, value, unit) in rows {
                r.add(w, &metric, system, round, value, &unit);
            }
        }
    }
    for round in 0..o.reps {
        let rows = child(&o, "stead-store", "store")?;
        eprintln!("  store    round {round} {rows:?}");
        for (metric, value, unit) in rows {
            r.add("store", &metric, "stead", round, value, &unit);
        }
    }
    // Merge time against ops (random workload): one more round of each system at smaller
    // sizes; the largest point is the main pass's median.
    let mut merge_curve: Vec<(String, Vec<(f64, f64)>)> = SYSTEMS.iter().map(|s| (s.to_string(), Vec::new())).collect();
    for per_replica in growth_points(o.ops_per_replica * o.replicas).into_iter().map(|n| n / o.replicas).chain([o.ops_per_replica / 10]) {
        if per_replica == 0 || merge_curve[0].1.iter().any(|p| p.0 == (per_replica * o.replicas) as f64) {
            continue;
        }
        let small = Opts { ops_per_replica: per_replica, ..o.clone() };
        for (s, system) in SYSTEMS.iter().enumerate() {
            let rows = child(&small, system, "random")?;
            if let Some(m) = rows.iter().find(|x| x.0 == "merge") {
                merge_curve[s].1.push(((per_replica * o.replicas) as f64, m.1));
            }
        }
    }
    for (system, points) in &mut merge_curve {
        if let Some(m) = r.summary(&Key::new("random", "merge", system)) {
            points.push(((o.ops_per_replica * o.replicas) as f64, m.median));
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    r.curves.push(Curve { name: "merge time against ops, random workload (s)".into(), x_label: "ops merged".into(), y_label: "seconds".into(), series: merge_curve });
    let store_curve = |prefix: &str, suffix: &str, small: &str, big_name: &str, big: usize| -> Vec<(f64, f64)> {
        let mut pts: Vec<(f64, f64)> = [(1000, small.to_owned())]
            .into_iter()
            .chain(growth_points(big).into_iter().map(|n| (n, format!("{prefix}{n}{suffix}"))))
            .chain([(big, big_name.to_owned())])
            .filter_map(|(n, metric)| r.summary(&Key::new("store", &metric, "stead")).map(|s| (n as f64, s.median)))
            .collect();
        pts.dedup_by(|a, b| a.0 == b.0);
        pts
    };
    let append = store_curve("append at ", "", "append at 1k", "append at big", o.append_big);
    let open = store_curve("open ", " records", "open 1k records", "open big", o.open_big);
    r.curves.push(Curve { name: "store append against log length (µs per append)".into(), x_label: "entries in the log".into(), y_label: "µs".into(), series: vec![("stead".into(), append)] });
    r.curves.push(Curve { name: "open + first query against records (ms)".into(), x_label: "records".into(), y_label: "ms".into(), series: vec![("stead".into(), open)] });

    let spec = |name: String, w: &str, metric: &str, num: &str, den: &str, goal: Option<f64>| RatioSpec {
        name,
        num: Key::new(w, metric, num),
        den: Key::new(w, metric, den),
        better: Better::Lower,
        goal,
        note: String::new(),
    };
    for w in WORKLOADS {
        r.ratio(spec(format!("{w}: merge time, stead / automerge load_incremental"), w, "merge", "stead", "automerge", Some(0.10)));
        r.ratio(spec(format!("{w}: merge time, stead / automerge apply_changes"), w, "merge", "stead", "automerge-changes", Some(0.10)));
        r.ratio(spec(format!("{w}: merge time, stead / yrs"), w, "merge", "stead", "yrs", Some(0.50)));
        r.ratio(spec(format!("{w}: bytes/op at rest, stead / automerge save"), w, "bytes/op at rest", "stead", "automerge", Some(1.0)));
        r.ratio(spec(format!("{w}: bytes/op on the wire, stead / automerge save"), w, "bytes/op on the wire", "stead", "automerge", Some(1.0)));
        r.ratio(RatioSpec {
            num: Key::new(w, "bytes/op on the wire", "stead"),
            den: Key::new(w, "bytes/op on the wire", "automerge-changes"),
            ..spec(format!("{w}: bytes/op on the wire, stead / automerge changes"), w, "", "", "", None)
        });
        r.ratio(spec(format!("{w}: bytes/op at rest, stead / yrs"), w, "bytes/op at rest", "stead", "yrs", None));
    }
    r.ratio(RatioSpec {
        num: Key::new("store", "append at big", "stead"),
        den: Key::new("store", "append at 1k", "stead"),
        ..spec(format!("store: append at {} entries / at 1k", o.append_big), "", "", "", "", Some(1.2))
    });
    r.ratio(RatioSpec {
        num: Key::new("store", "open big", "stead"),
        den: Key::new("store", "open 1k records", "stead"),
        ..spec(format!("store: open {} records / 1k records", o.open_big), "", "", "", "", Some(3.0))
    });
    r.notes.push(format!(
        "{} replicas × {} field sets per workload; `store`: 'big' is {} appended entries, {} records opened",
        o.replicas, o.ops_per_replica, o.append_big, o.open_big
    ));
    r.notes.push("automerge load_incremental takes each saved doc; apply_changes decodes and applies the compressed change stream".into());
    r.seconds = started.elapsed().as_secs_f64();
    r.finish(&o.out)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("core") => core(Opts::parse(&args[1..])?),
        Some("core-one") => core_one(Opts::parse(&args[1..])?),
        other => bail!("unknown benchmark {other:?} (known: core)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(workload: &str, ops: usize) -> Opts {
        Opts::parse(&["--ops".into(), ops.to_string(), "--workload".into(), workload.into()]).expect("options")
    }

    #[test]
    fn regular_workload_follows_the_bench_md_progression() {
        // x = (i·6364136223846793005 + r·1442695040888963407) >> 17, wrapping.
        let w0 = workload(&opts("regular", 3), 0).expect("workload");
        assert_eq!(w0[..2], [(0, 0, 0), (2346, 0, 102346)]);
        assert_eq!(workload(&opts("regular", 3), 3).expect("workload")[2], (352, 2, 170352));
        assert!(workload(&opts("sideways", 3), 0).is_err());
    }

    #[test]
    fn random_workload_is_the_same_every_run() {
        let o = opts("random", 50);
        assert_eq!(workload(&o, 1).expect("a"), workload(&o, 1).expect("b"));
        assert_ne!(workload(&o, 1).expect("a"), workload(&o, 2).expect("b"));
    }

    #[test]
    fn growth_points_are_powers_of_ten_below_the_big_size() {
        assert_eq!(growth_points(1_000_000), vec![10_000, 100_000]);
        assert_eq!(growth_points(10_000), Vec::<usize>::new());
    }
}
