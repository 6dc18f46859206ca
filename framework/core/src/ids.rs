//! Ids of spaces, replicas and records: UUID v7 built from injected time and randomness.

use std::fmt;
use std::str::FromStr;

use crate::env::{Clock, Random};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// A new UUID v7: 48 bits of milliseconds from `clock`, the rest from `rng`.
            pub fn generate(clock: &dyn Clock, rng: &mut dyn Random) -> Self {
                let mut random = [0u8; 10];
                rng.fill(&mut random);
                let id = uuid::Builder::from_unix_timestamp_millis(clock.now_ms(), &random);
                $name(*id.as_uuid().as_bytes())
            }

            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                $name(bytes)
            }

            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            pub fn as_uuid(&self) -> uuid::Uuid {
                uuid::Uuid::from_bytes(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.as_uuid().hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok($name(*uuid::Uuid::parse_str(s)?.as_bytes()))
            }
        }
    };
}

id_type!(
    /// A shared data set with its own key and membership.
    SpaceId
);
id_type!(
    /// One device's copy of a space; signs its own change log.
    ReplicaId
);
id_type!(
    /// A record of a collection.
    RecordId
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{ManualClock, SeededRandom};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn v7_ids_sort_by_time_and_round_trip_text() {
        let clock = ManualClock::new(1_700_000_000_000);
        let mut rng = SeededRandom::new(1);
        let a = RecordId::generate(&clock, &mut rng);
        clock.advance(1);
        let b = RecordId::generate(&clock, &mut rng);
        assert!(a < b);
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert_eq!(a.to_string().parse::<RecordId>().unwrap(), a);
    }
}
