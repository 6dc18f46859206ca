//! Sync protocol: handshake, version negotiation, error frames, bounded batches, resume,
//! and codec round trips.

use proptest::prelude::*;
use stead_core::env::SeededRandom;
use stead_core::error::Error;
use stead_core::ids::{RecordId, ReplicaId, SpaceId};
use stead_core::log::{Entry, Limits, VersionVector};
use stead_core::ops::{Op, Value};
use stead_core::replica::{Replica, Snapshot};
use stead_core::state::State;
use stead_core::sync::{code, Frame, Sync, SyncConfig, SyncPeer, PROTOCOL_MAX};
use stead_core::testing::Space;

// The same tests run on wasm32 in headless Chromium (`cargo test -p stead-core --target
// wasm32-unknown-unknown`).
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;
#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

const NOW: u64 = 1_700_000_000_000;

fn set(r: u8, v: i64) -> Op {
    Op::Set { collection: "t".into(), record: RecordId([r; 16]), field: "n".into(), value: Value::Int(v) }
}

/// Runs two syncs to quiescence, recording frame kinds a → b as letters.
fn run(a: &mut dyn SyncPeer, sa: &mut Sync, b: &mut dyn SyncPeer, sb: &mut Sync) -> (String, Vec<Error>) {
    let (trace, errors, _) = run_frames(a, sa, b, sb);
    (trace, errors)
}

/// [`run`], with the frames a → b.
fn run_frames(a: &mut dyn SyncPeer, sa: &mut Sync, b: &mut dyn SyncPeer, sb: &mut Sync) -> (String, Vec<Error>, Vec<Frame>) {
    let mut sent = Vec::new();
    let mut trace = String::new();
    let mut errors = Vec::new();
    for _ in 0..1000 {
        let mut quiet = true;
        while let Some(f) = sa.generate(a) {
            quiet = false;
            trace.push(kind(&f));
            if let Err(e) = sb.receive(&f.encode(), b, NOW) {
                errors.push(e);
            }
            sent.push(f);
        }
        while let Some(f) = sb.generate(b) {
            quiet = false;
            trace.push(kind(&f).to_ascii_lowercase());
            if let Err(e) = sa.receive(&f.encode(), a, NOW) {
                errors.push(e);
            }
        }
        if quiet {
            break;
        }
    }
    (trace, errors, sent)
}

fn kind(f: &Frame) -> char {
    match f {
        Frame::Hello { .. } => 'H',
        Frame::Proof { .. } => 'P',
        Frame::Vector(_) => 'V',
        Frame::Entries(e) => char::from_digit(e.len().min(9) as u32, 10).unwrap(),
        Frame::Ack { .. } => 'A',
        Frame::Error { .. } => 'E',
    }
}

#[test]
fn entries_go_in_bounded_batches_and_are_acknowledged() {
    let mut rng = SeededRandom::new(1);
    let space = Space::new(2, &mut rng);
    let (mut a, mut b) = (space.open(0), space.open(1));
    for i in 0..7 {
        a.commit(vec![set(1, i)], NOW + i as u64, &mut rng).unwrap();
    }
    let config = SyncConfig { max_entries: 3, ..SyncConfig::default() };
    let mut sa = Sync::new(config.clone(), &mut rng);
    let mut sb = Sync::new(config, &mut rng);
    let (trace, errors) = run(&mut a, &mut sa, &mut b, &mut sb);
    assert!(errors.is_empty(), "{errors:?}");
    // Uppercase: a → b; lowercase: b → a; digits: entries per frame.
    assert_eq!(trace, "HhpPVv331a");
    assert_eq!(a.state(), b.state());
    assert_eq!(sa.acked().get(&a.id()), Some(&7));
    assert!(sa.in_sync(&a));
    // A new connection resumes from the vectors: nothing is sent again.
    a.commit(vec![set(2, 9)], NOW + 20, &mut rng).unwrap();
    let mut sa = Sync::new(SyncConfig::default(), &mut rng);
    let mut sb = Sync::new(SyncConfig::default(), &mut rng);
    let (trace, _) = run(&mut a, &mut sa, &mut b, &mut sb);
    assert_eq!(trace, "HhpPVv1a");
}

/// A server acknowledges what it takes in (its client waits for that); a client does not
/// acknowledge what the server relays, which would be one more frame per delivery for the
/// server to read at a fan-out.
#[test]
fn a_server_acknowledges_entries_and_a_client_does_not() {
    let mut rng = SeededRandom::new(11);
    let space = Space::new(2, &mut rng);
    let (mut server, mut client) = (space.open(0), space.open(1));
    server.commit(vec![set(1, 1)], NOW, &mut rng).unwrap();
    client.commit(vec![set(2, 2)], NOW + 1, &mut rng).unwrap();
    let mut ss = Sync::new(SyncConfig::default(), &mut rng);
    let mut sc = Sync::new(SyncConfig::client(), &mut rng);
    let (trace, errors) = run(&mut server, &mut ss, &mut client, &mut sc);
    assert!(errors.is_empty(), "{errors:?}");
    // Uppercase: server → client; lowercase: client → server.
    assert_eq!(trace, "HhpvPV11A");
    assert_eq!(server.state(), client.state());
    assert!(sc.in_sync(&client), "the client knows the server has its entry");
    assert!(ss.acked().is_empty(), "the client acknowledged nothing");
    // Live: an entry relayed to the client draws no frame back.
    server.commit(vec![set(1, 3)], NOW + 2, &mut rng).unwrap();
    let (trace, _) = run(&mut server, &mut ss, &mut client, &mut sc);
    assert_eq!(trace, "1");
    assert_eq!(server.state(), client.state());
}

/// A server that relays entries before their commit is durable: it holds them and may
/// send them, but has stored less.
struct Relaying {
    replica: Replica,
    stored: VersionVector,
}

impl SyncPeer for Relaying {
    fn sync_space(&self) -> SpaceId {
        self.replica.sync_space()
    }
    fn sync_replica(&self) -> ReplicaId {
        self.replica.sync_replica()
    }
    fn sync_vector(&self) -> VersionVector {
        self.replica.sync_vector()
    }
    fn sync_stored_vector(&self) -> VersionVector {
        self.stored.clone()
    }
    fn sync_entries(&self, replica: ReplicaId, from_seq: u64, max_entries: usize, max_bytes: usize) -> stead_core::Result<Vec<Entry>> {
        self.replica.sync_entries(replica, from_seq, max_entries, max_bytes)
    }
    fn sync_ingest(&mut self, entry: Entry, now_ms: u64) -> stead_core::Result<bool> {
        self.replica.sync_ingest(entry, now_ms)
    }
    fn sync_sign(&self, msg: &[u8]) -> [u8; 64] {
        self.replica.sync_sign(msg)
    }
    fn sync_check_member(&self, replica: ReplicaId, msg: &[u8], sig: &[u8; 64]) -> bool {
        self.replica.sync_check_member(replica, msg, sig)
    }
}

#[test]
fn a_vector_frame_says_what_is_stored() {
    let mut rng = SeededRandom::new(12);
    let space = Space::new(3, &mut rng);
    let mut writer = space.open(0);
    let entries: Vec<_> = (0..4).map(|i| writer.commit(vec![set(1, i)], NOW + i as u64, &mut rng).unwrap()).collect();
    let id = writer.id();
    // By default, what a side holds.
    assert_eq!(writer.sync_stored_vector(), writer.version_vector());

    let mut server = space.open(1);
    for e in &entries {
        server.ingest(e.clone(), NOW).unwrap();
    }
    let stored: VersionVector = [(id, 2)].into_iter().collect();
    let mut server = Relaying { replica: server, stored: stored.clone() };

    // A reader is sent all the server holds, past what its Vector says.
    let mut reader = space.open(2);
    let (mut ss, mut sr) = (Sync::new(SyncConfig::default(), &mut rng), Sync::new(SyncConfig::client(), &mut rng));
    let (trace, errors, sent) = run_frames(&mut server, &mut ss, &mut reader, &mut sr);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(trace, "HhpvPV4", "the four entries, two of them past the vector");
    assert!(sent.contains(&Frame::Vector(stored)));
    assert_eq!(reader.version_vector(), writer.version_vector());

    // The writer, told less than it holds, sends the rest back once: duplicates, and
    // acknowledged as stored, and the exchange ends.
    let (mut ss, mut sw) = (Sync::new(SyncConfig::default(), &mut rng), Sync::new(SyncConfig::client(), &mut rng));
    let (trace, errors) = run(&mut server, &mut ss, &mut writer, &mut sw);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(trace, "HhpvPV2A", "the two entries past the vector, and their ack");
    assert_eq!(sw.acked().get(&id), Some(&4));
    assert_eq!(server.replica.version_vector(), writer.version_vector());
}

#[test]
fn live_edits_flow_both_ways_on_an_open_connection() {
    let mut rng = SeededRandom::new(2);
    let space = Space::new(2, &mut rng);
    let (mut a, mut b) = (space.open(0), space.open(1));
    let mut sa = Sync::new(SyncConfig::default(), &mut rng);
    let mut sb = Sync::new(SyncConfig::default(), &mut rng);
    run(&mut a, &mut sa, &mut b, &mut sb);
    a.commit(vec![set(1, 1)], NOW, &mut rng).unwrap();
    b.commit(vec![set(1, 2)], NOW + 1, &mut rng).unwrap();
    let (trace, _) = run(&mut a, &mut sa, &mut b, &mut sb);
    assert_eq!(trace, "1a1A");
    assert_eq!(a.state(), b.state());
}

#[test]
fn hello_negotiates_the_version_and_refuses_mismatches_with_error_frames() {
    let mut rng = SeededRandom::new(3);
    let space = Space::new(2, &mut rng);
    let mut b = space.open(1);
    let check = |hello: Frame, expect_code: u16, expect: &str| {
        let mut rng = SeededRandom::new(9);
        let mut sb = Sync::new(SyncConfig::default(), &mut rng);
        let mut b = space.open(1);
        let err = sb.receive(&hello.encode(), &mut b, NOW).unwrap_err();
        assert_eq!(err.to_string(), expect);
        match sb.generate(&b) {
            Some(Frame::Error { code, .. }) => assert_eq!(code, expect_code),
            other => panic!("expected an error frame, got {other:?}"),
        }
        assert!(sb.is_closed());
    };
    let hello = |min, max, space| Frame::Hello { min, max, space, replica: ReplicaId([1; 16]), challenge: [0; 32] };
    check(
        hello(PROTOCOL_MAX + 1, PROTOCOL_MAX + 3, space.space),
        code::UNSUPPORTED_VERSION,
        &format!("unsupported protocol version {} (this build reads {PROTOCOL_MAX})", PROTOCOL_MAX + 3),
    );
    check(
        hello(1, 1, SpaceId([5; 16])),
        code::WRONG_SPACE,
        &format!("entry belongs to space {}, not {}", SpaceId([5; 16]), space.space),
    );
    // A newer peer that still speaks our version gets it.
    let mut sb = Sync::new(SyncConfig::default(), &mut rng);
    sb.receive(&hello(1, PROTOCOL_MAX + 5, space.space).encode(), &mut b, NOW).unwrap();
    assert_eq!(sb.version(), Some(PROTOCOL_MAX));
    // Garbage is a bad frame.
    let mut sb = Sync::new(SyncConfig::default(), &mut rng);
    assert!(sb.receive(&[9, 9, 9], &mut b, NOW).is_err());
    assert!(matches!(sb.generate(&b), Some(Frame::Error { code: code::BAD_FRAME, .. })));
}

#[test]
fn a_non_member_is_refused() {
    let mut rng = SeededRandom::new(4);
    let space = Space::new(2, &mut rng);
    let outsider_space = Space { identities: Space::new(1, &mut rng).identities, ..space.clone() };
    let mut outsider = {
        let mut id = outsider_space.identities[0].clone();
        id.space = space.space;
        id.space_key = space.key.clone();
        Replica::open(id, space.members.clone(), Box::new(stead_core::store::MemStore::new()), space.config.clone()).unwrap()
    };
    let mut b = space.open(1);
    let mut so = Sync::new(SyncConfig::default(), &mut rng);
    let mut sb = Sync::new(SyncConfig::default(), &mut rng);
    let (trace, errors) = run(&mut outsider, &mut so, &mut b, &mut sb);
    assert_eq!(trace, "HhpPVe");
    assert!(matches!(&errors[0], Error::Protocol { code: code::UNAUTHORIZED, .. }), "{errors:?}");
}

#[test]
fn a_rejected_entry_is_an_error_frame_that_keeps_the_connection() {
    let mut rng = SeededRandom::new(5);
    let space = Space::new(2, &mut rng);
    let (mut a, mut b) = (space.open(0), space.open(1));
    let mut sa = Sync::new(SyncConfig::default(), &mut rng);
    let mut sb = Sync::new(SyncConfig::default(), &mut rng);
    run(&mut a, &mut sa, &mut b, &mut sb);
    let mut e = a.commit(vec![set(1, 1)], NOW, &mut rng).unwrap();
    e.payload[30] ^= 1;
    sb.receive(&Frame::Entries(vec![e]).encode(), &mut b, NOW).unwrap();
    match sb.generate(&b) {
        Some(Frame::Error { code, message }) => {
            assert_eq!(code, code::REJECTED_ENTRY);
            assert!(message.starts_with("bad signature"), "{message}");
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
    assert!(!sb.is_closed());
    let (_, errors) = run(&mut a, &mut sa, &mut b, &mut sb);
    assert!(errors.is_empty());
    assert_eq!(a.state(), b.state());
}

/// A frame's entries are checked as batches, one per signer; one bad signature among them
/// refuses that entry and the rest of its signer's, and nothing else.
#[test]
fn a_forged_entry_in_a_batch_refuses_only_itself_and_what_follows_it() {
    let mut rng = SeededRandom::new(8);
    let space = Space::new(3, &mut rng);
    let (mut a, mut b, mut c) = (space.open(0), space.open(1), space.open(2));
    let mut sb = Sync::new(SyncConfig::default(), &mut rng);
    let mut sa = Sync::new(SyncConfig::default(), &mut rng);
    run(&mut a, &mut sa, &mut b, &mut sb);
    let mut frame = Vec::new();
    for n in 0..10u8 {
        frame.push(a.commit(vec![set(n, n as i64)], NOW + u64::from(n), &mut rng).unwrap());
        if n % 2 == 0 {
            frame.push(c.commit(vec![set(100 + n, 1)], NOW + u64::from(n), &mut rng).unwrap());
        }
    }
    let forged = frame.iter().position(|e| e.header.replica == a.id() && e.header.seq == 5).unwrap();
    frame[forged].sig[10] ^= 4;
    sb.receive(&Frame::Entries(frame).encode(), &mut b, NOW + 100).unwrap();
    let vv = b.version_vector();
    assert_eq!(vv.get(&a.id()), Some(&5), "a's entries before the forged one are in");
    assert_eq!(vv.get(&c.id()), Some(&5), "all of c's entries are in");
    match sb.generate(&b) {
        Some(Frame::Error { code, message }) => {
            assert_eq!(code, code::REJECTED_ENTRY);
            assert_eq!(message, format!("bad signature on entry {}/5", a.id()));
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
    // The real entries still arrive from a.
    let (_, errors) = run(&mut a, &mut sa, &mut b, &mut sb);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(b.version_vector().get(&a.id()), Some(&10));
}

#[test]
fn snapshots_of_random_histories_round_trip() {
    let mut rng = SeededRandom::new(6);
    let space = Space::new(3, &mut rng);
    let mut reps: Vec<Replica> = (0..3).map(|i| space.open(i)).collect();
    for step in 0..60u64 {
        let i = (step % 3) as usize;
        let op = match step % 4 {
            0 => set((step % 5) as u8, step as i64),
            1 => Op::CounterAdd { collection: "t".into(), record: RecordId([1; 16]), field: "c".into(), delta: -(step as i64) },
            2 => Op::SetAdd { collection: "t".into(), record: RecordId([2; 16]), field: "s".into(), elem: Value::Int(step as i64 % 3) },
            _ => Op::Delete { collection: "u".into(), record: RecordId([3; 16]) },
        };
        let e = reps[i].commit(vec![op], NOW + step, &mut rng).unwrap();
        for (j, r) in reps.iter_mut().enumerate() {
            if j != i {
                r.ingest(e.clone(), NOW + step).unwrap();
            }
        }
        let snap = reps[i].snapshot();
        assert_eq!(Snapshot::decode(&snap.encode()).unwrap(), snap);
    }
}

fn frame_strategy() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), any::<[u8; 16]>(), any::<[u8; 16]>(), any::<[u8; 32]>()).prop_map(
            |(min, max, s, r, challenge)| Frame::Hello { min, max, space: SpaceId(s), replica: ReplicaId(r), challenge }
        ),
        any::<[u8; 32]>().prop_map(|h| {
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&h);
            Frame::Proof { sig }
        }),
        proptest::collection::btree_map(any::<[u8; 16]>().prop_map(ReplicaId), any::<u64>(), 0..5).prop_map(Frame::Vector),
        (any::<[u8; 16]>(), any::<u64>()).prop_map(|(r, seq)| Frame::Ack { replica: ReplicaId(r), seq }),
        (any::<u16>(), ".{0,20}").prop_map(|(code, message)| Frame::Error { code, message }),
    ]
}

proptest! {
    #[test]
    fn frames_round_trip(frame in frame_strategy()) {
        let bytes = frame.encode();
        prop_assert_eq!(Frame::decode(&bytes, &Limits::default()).unwrap(), frame);
    }

    #[test]
    fn entry_frames_round_trip(values in proptest::collection::vec(any::<i64>(), 1..5)) {
        let mut rng = SeededRandom::new(7);
        let space = Space::new(1, &mut rng);
        let mut a = space.open(0);
        let entries: Vec<_> = values.iter().enumerate()
            .map(|(i, v)| a.commit(vec![set(1, *v)], NOW + i as u64, &mut rng).unwrap())
            .collect();
        let frame = Frame::Entries(entries);
        prop_assert_eq!(Frame::decode(&frame.encode(), &Limits::default()).unwrap(), frame);
    }

    #[test]
    fn garbage_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Frame::decode(&bytes, &Limits::default());
        let _ = Snapshot::decode(&bytes);
        let mut r = stead_core::codec::Reader::new(&bytes, "state");
        let _ = State::read(&mut r);
    }
}

#[test]
fn two_clients_sync_through_a_relay_that_cannot_read() {
    use stead_core::relay::Relay;
    let mut rng = SeededRandom::new(8);
    let space = Space::new(2, &mut rng);
    let (mut a, mut b) = (space.open(0), space.open(1));
    let server_key = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let mut relay = Relay::open(ReplicaId([0xee; 16]), server_key, space.members.clone(), Box::new(stead_core::store::MemStore::new()), Limits::default()).unwrap();
    a.commit(vec![set(1, 1)], NOW, &mut rng).unwrap();
    b.commit(vec![set(1, 2)], NOW + 1, &mut rng).unwrap();
    // Clients do not require the server to be a member; the server requires clients to be.
    let client = SyncConfig::client();
    for _ in 0..2 {
        for r in [&mut a, &mut b] {
            let mut sc = Sync::new(client.clone(), &mut rng);
            let mut ss = Sync::new(SyncConfig::default(), &mut rng);
            let mut trace_errors = Vec::new();
            for _ in 0..100 {
                let mut quiet = true;
                while let Some(f) = sc.generate(r) {
                    quiet = false;
                    if let Err(e) = ss.receive(&f.encode(), &mut relay, NOW) { trace_errors.push(e); }
                }
                while let Some(f) = ss.generate(&relay) {
                    quiet = false;
                    if let Err(e) = sc.receive(&f.encode(), r, NOW) { trace_errors.push(e); }
                }
                if quiet { break; }
            }
            assert!(trace_errors.is_empty(), "{trace_errors:?}");
        }
    }
    assert_eq!(a.state(), b.state());
    assert_eq!(relay.version_vector(), a.version_vector());
}

#[test]
fn any_flipped_byte_of_a_compact_run_is_detected() {
    let mut rng = SeededRandom::new(3);
    let space = Space::new(2, &mut rng);
    let mut a = space.open(0);
    let entries: Vec<_> = (0..3).map(|i| a.commit(vec![set(1, i)], NOW + i as u64, &mut rng).unwrap()).collect();
    let bytes = Frame::Entries(entries.clone()).encode();
    let whole: usize = entries.iter().map(|e| e.encoded_len()).sum();
    assert!(bytes.len() + 150 < whole, "entries after the first are compact: {} bytes for {whole}", bytes.len());
    for i in 0..bytes.len() {
        for bit in [0x01, 0x80] {
            let mut t = bytes.clone();
            t[i] ^= bit;
            let Ok(Frame::Entries(got)) = Frame::decode(&t, &Limits::default()) else { continue };
            let mut b = space.open(1);
            for (n, e) in got.into_iter().enumerate() {
                if b.ingest(e.clone(), NOW + 5).is_err() {
                    break;
                }
                assert_eq!(Some(&e), entries.get(n), "flip of byte {i} bit {bit:#x} was accepted");
            }
        }
    }
}
