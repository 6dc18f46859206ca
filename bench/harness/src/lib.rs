//! What every `cargo xtask bench` suite shares, so the rules of `shared/BENCH.md` are kept
//! once: the interleaved order of repetitions ([`order`]), medians, spreads, ratios of
//! medians and the "unstable" verdict ([`stats`]), the environment header ([`env`]), a
//! suite's table, CSV and JSON file ([`results`]) and the regression check against
//! `bench/baseline.json` ([`baseline`]).
//!
//! A suite runs each system in its own process, `reps` times, in the order
//! [`order::interleaved`] gives; adds every figure as a [`results::Sample`]; declares its
//! ratios with their goals; and calls [`results::SuiteResult::finish`]. `cargo xtask
//! bench` reads the JSON files back to write `bench/REPORT.md` and to check the baseline.

pub mod baseline;
pub mod env;
pub mod order;
#[cfg(feature = "plots")]
pub mod plots;
pub mod results;
pub mod stats;

pub use env::Environment;
pub use results::{Curve, Key, RatioSpec, SuiteResult};
pub use stats::{Better, Summary};
