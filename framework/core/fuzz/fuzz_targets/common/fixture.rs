//! The fixture the entry fuzz targets check against: a two-device space and its first
//! device's genuine first entry.

use std::sync::OnceLock;

use stead_core::env::SeededRandom;
use stead_core::log::Entry;
use stead_core::ops::{Op, Value};
use stead_core::testing::Space;

pub struct Fixture {
    pub space: Space,
    pub first: Entry,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = SeededRandom::new(1);
        let space = Space::new(2, &mut rng);
        let mut r = space.open(0);
        let op = Op::Set { collection: "t".into(), record: stead_core::ids::RecordId([1; 16]), field: "f".into(), value: Value::Int(1) };
        let first = r.commit(vec![op], 1_700_000_000_000, &mut rng).expect("a fixture commit");
        Fixture { space, first }
    })
}
