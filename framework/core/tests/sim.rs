//! Seeded convergence simulator: 2–8 replicas make concurrent random edits (often of the
//! same fields) and sync over a simulated network that interleaves connections, drops
//! them mid-session (partitions), duplicates frames and restarts replicas from their
//! store (with a fresh, stale or no snapshot). After healing, every replica must hold the
//! same state and version vector, equal to a fresh replica that took in every entry in a
//! random order.
//!
//! Runs `STEAD_SIM_SEEDS` seeds (default 1000) from `STEAD_SIM_FIRST_SEED` (default 0);
//! a failure names its seed, and `STEAD_SIM_SEEDS=1 STEAD_SIM_FIRST_SEED=<seed>` replays it.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};

use stead_core::env::SeededRandom;
use stead_core::ids::RecordId;
use stead_core::log::Entry;
use stead_core::ops::{Op, Value};
use stead_core::replica::Replica;
use stead_core::sync::{Sync, SyncConfig};
use stead_core::testing::Space;

// The same tests run on wasm32 in headless Chromium (`cargo test -p stead-core --target
// wasm32-unknown-unknown`).
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;
#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

const T0: u64 = 1_700_000_000_000;

struct Conn {
    a: usize,
    b: usize,
    sa: Sync,
    sb: Sync,
    /// Frames in flight a → b and b → a; each direction is ordered, like a WebSocket.
    ab: VecDeque<Vec<u8>>,
    ba: VecDeque<Vec<u8>>,
}

fn random_op(rng: &mut SeededRandom, r: &Replica) -> Op {
    let record = RecordId([rng.below(3) as u8 + 1; 16]);
    let c = "t".to_owned();
    let elems = ["x", "y", "z"];
    match rng.below(100) {
        0..=44 => {
            let field = ["a", "b"][rng.below(2) as usize].to_owned();
            let value = if rng.chance(50) {
                Value::Int(rng.below(1000) as i64)
            } else {
                Value::Str(format!("v{}", rng.below(50)))
            };
            Op::Set { collection: c, record, field, value }
        }
        45..=59 => Op::CounterAdd { collection: c, record, field: "c".into(), delta: rng.below(21) as i64 - 10 },
        60..=74 => Op::SetAdd {
            collection: c,
            record,
            field: "s".into(),
            elem: Value::Str(elems[rng.below(3) as usize].into()),
        },
        75..=89 => {
            let elem = Value::Str(elems[rng.below(3) as usize].into());
            let tags = r
                .state()
                .record("t", record)
                .and_then(|x| x.field("s"))
                .map(|s| s.set_tags(&elem))
                .unwrap_or_default();
            Op::SetRemove { collection: c, record, field: "s".into(), elem, tags }
        }
        90..=94 => Op::Delete { collection: c, record },
        _ => Op::Restore { collection: c, record },
    }
}

/// Moves one frame: generates the next frame of one side or delivers one in flight.
fn pump(conn: &mut Conn, reps: &mut [Replica], rng: &mut SeededRandom, now: u64) -> Result<bool, String> {
    let (a, b) = (conn.a, conn.b);
    let forward = rng.chance(50);
    let (sender, receiver, s_sync, r_sync, queue) = if forward {
        (a, b, &mut conn.sa, &mut conn.sb, &mut conn.ab)
    } else {
        (b, a, &mut conn.sb, &mut conn.sa, &mut conn.ba)
    };
    if !queue.is_empty() && rng.chance(60) {
        let bytes = queue.pop_front().expect("not empty");
        r_sync.receive(&bytes, &mut reps[receiver], now).map_err(|e| format!("receive at {receiver}: {e}"))?;
        // A duplicated data frame must be harmless.
        if bytes[0] == 3 && rng.chance(10) {
            r_sync.receive(&bytes, &mut reps[receiver], now).map_err(|e| format!("duplicate at {receiver}: {e}"))?;
        }
        return Ok(true);
    }
    match s_sync.generate(&reps[sender]) {
        Some(frame) => {
            queue.push_back(frame.encode());
            Ok(true)
        }
        None => Ok(!queue.is_empty()),
    }
}

fn connect(a: usize, b: usize, rng: &mut SeededRandom) -> Conn {
    let config = SyncConfig { max_entries: 1 + rng.below(4) as usize, ..SyncConfig::default() };
    Conn {
        a,
        b,
        sa: Sync::new(config.clone(), rng),
        sb: Sync::new(config, rng),
        ab: VecDeque::new(),
        ba: VecDeque::new(),
    }
}

/// Runs a connection until neither side has anything to say.
fn settle(conn: &mut Conn, reps: &mut [Replica], rng: &mut SeededRandom, now: u64) -> Result<(), String> {
    for _ in 0..100_000 {
        let mut moved = false;
        for _ in 0..4 {
            moved |= pump(conn, reps, rng, now)?;
        }
        if !moved && conn.ab.is_empty() && conn.ba.is_empty() {
            // Make sure both sides are really idle.
            let a = conn.sa.generate(&reps[conn.a]);
            let b = conn.sb.generate(&reps[conn.b]);
            if a.is_none() && b.is_none() {
                return Ok(());
            }
            conn.ab.extend(a.map(|f| f.encode()));
            conn.ba.extend(b.map(|f| f.encode()));
        }
    }
    Err("a sync session did not settle".into())
}

fn run(seed: u64) -> Result<(), String> {
    let mut rng = SeededRandom::new(seed);
    let n = 2 + rng.below(7) as usize;
    let space = Space::new(n, &mut rng);
    let mut reps: Vec<Replica> = (0..n).map(|i| space.open(i)).collect();
    let skew: Vec<i64> = (0..n).map(|_| rng.below(4001) as i64 - 2000).collect();
    let mut t = T0;
    let mut conns: Vec<Conn> = Vec::new();
    let steps = 40 + rng.below(60);
    for _ in 0..steps {
        t += rng.below(40);
        let now = |i: usize| (t as i64 + skew[i]) as u64;
        match rng.below(100) {
            0..=34 => {
                let i = rng.below(n as u64) as usize;
                let k = 1 + rng.below(3);
                let ops = (0..k).map(|_| random_op(&mut rng, &reps[i])).collect();
                reps[i].commit(ops, now(i), &mut rng).map_err(|e| format!("commit at {i}: {e}"))?;
            }
            35..=49 => {
                let a = rng.below(n as u64) as usize;
                let b = rng.below(n as u64) as usize;
                if a != b && !conns.iter().any(|c| (c.a, c.b) == (a, b) || (c.a, c.b) == (b, a)) {
                    conns.push(connect(a, b, &mut rng));
                }
            }
            50..=84 => {
                if !conns.is_empty() {
                    let c = rng.below(conns.len() as u64) as usize;
                    let target = conns[c].b;
                    for _ in 0..1 + rng.below(6) {
                        pump(&mut conns[c], &mut reps, &mut rng, now(target))?;
                    }
                }
            }
            85..=91 => {
                // Partition: a connection drops with frames in flight.
                if !conns.is_empty() {
                    let c = rng.below(conns.len() as u64) as usize;
                    conns.swap_remove(c);
                }
            }
            92..=96 => {
                // Restart: with a fresh snapshot, the old one (stale), or none yet.
                let i = rng.below(n as u64) as usize;
                if rng.chance(50) {
                    reps[i].save_snapshot().map_err(|e| e.to_string())?;
                }
                conns.retain(|c| c.a != i && c.b != i);
                let placeholder = space.open(i);
                let old = std::mem::replace(&mut reps[i], placeholder);
                let before = old.state().clone();
                let vv = old.version_vector();
                reps[i] = Replica::open(space.identities[i].clone(), space.members.clone(), old.into_store(), space.config.clone())
                    .map_err(|e| format!("reopen of {i}: {e}"))?;
                if reps[i].state() != &before || reps[i].version_vector() != vv {
                    return Err(format!("replica {i} changed across a restart"));
                }
            }
            _ => {
                let i = rng.below(n as u64) as usize;
                reps[i].save_snapshot().map_err(|e| e.to_string())?;
            }
        }
    }
    // Heal: every replica syncs with replica 0, twice round, so everything reaches everyone.
    conns.clear();
    t += 1000;
    for _ in 0..2 {
        for i in 1..n {
            let mut c = connect(0, i, &mut rng);
            settle(&mut c, &mut reps, &mut rng, t + 10_000)?;
        }
    }
    for i in 1..n {
        if reps[i].version_vector() != reps[0].version_vector() {
            return Err(format!("replica {i} has version vector {:?}, replica 0 {:?}", reps[i].version_vector(), reps[0].version_vector()));
        }
        if reps[i].state() != reps[0].state() {
            return Err(format!("replica {i} diverged from replica 0"));
        }
    }
    // Oracle: one fresh replica takes in every entry, replicas interleaved at random, with
    // duplicates.
    let vv = reps[0].version_vector();
    let mut queues: Vec<VecDeque<Entry>> = vv
        .iter()
        .map(|(r, next)| reps[0].entries_from(*r, 0, *next as usize, usize::MAX).map(VecDeque::from))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut oracle = space.open(0);
    while !queues.is_empty() {
        let q = rng.below(queues.len() as u64) as usize;
        let e = queues[q].pop_front().expect("queues are never left empty");
        if rng.chance(5) {
            oracle.ingest(e.clone(), t + 10_000).map_err(|e| format!("oracle: {e}"))?;
        }
        oracle.ingest(e, t + 10_000).map_err(|e| format!("oracle: {e}"))?;
        if queues[q].is_empty() {
            queues.swap_remove(q);
        }
    }
    if oracle.state() != reps[0].state() || oracle.version_vector() != vv {
        return Err("the replicas differ from one replica that applied every entry".into());
    }
    Ok(())
}

#[test]
fn replicas_converge_under_random_delivery_partitions_and_restarts() {
    let seeds: u64 = std::env::var("STEAD_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEEDS);
    let first: u64 = std::env::var("STEAD_SIM_FIRST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let failures = simulate(first, seeds);
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds diverged (replay one with STEAD_SIM_SEEDS=1 STEAD_SIM_FIRST_SEED=<seed>):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Natively the full CI run; in the browser a smoke run, since wasm32 has no threads
/// here and the code under test is the same.
#[cfg(not(target_arch = "wasm32"))]
const DEFAULT_SEEDS: u64 = 1000;
#[cfg(target_arch = "wasm32")]
const DEFAULT_SEEDS: u64 = 24;

fn run_seed(seed: u64) -> Option<String> {
    match catch_unwind(AssertUnwindSafe(|| run(seed))) {
        Ok(Ok(())) => None,
        Ok(Err(msg)) => Some(format!("seed {seed}: {msg}")),
        Err(_) => Some(format!("seed {seed}: panicked")),
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn simulate(first: u64, seeds: u64) -> Vec<String> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8) as u64;
    let started = std::time::Instant::now();
    let failures = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let mine = (first..first + seeds).skip(w as usize).step_by(workers as usize);
                s.spawn(move || mine.filter_map(run_seed).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("worker thread")).collect()
    });
    eprintln!("simulated {seeds} seeds from {first} in {:.1?}", started.elapsed());
    failures
}

/// wasm32 has neither threads nor a clock here, and a panic aborts the whole test binary.
#[cfg(target_arch = "wasm32")]
fn simulate(first: u64, seeds: u64) -> Vec<String> {
    (first..first + seeds).filter_map(run_seed).collect()
}
