//! Hybrid logical clock: physical milliseconds plus a logical counter, packed in a `u64`.
//!
//! A replica's clock never goes backwards, even when the wall clock does, and it moves
//! past every timestamp it has seen. A remote timestamp further ahead of local time than
//! the configured bound is refused with [`Error::ClockDrift`], so one device with a wrong
//! clock cannot drag every other replica into the future.

use std::fmt;

use crate::error::{Error, Result};

/// A timestamp: the top 48 bits are Unix milliseconds, the low 16 bits a counter.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc(u64);

const COUNTER_BITS: u32 = 16;
const MAX_MS: u64 = (1 << 48) - 1;

impl Hlc {
    pub const ZERO: Hlc = Hlc(0);

    pub const fn new(ms: u64, counter: u16) -> Hlc {
        Hlc(((ms & MAX_MS) << COUNTER_BITS) | counter as u64)
    }
    pub const fn from_u64(raw: u64) -> Hlc {
        Hlc(raw)
    }
    pub const fn to_u64(self) -> u64 {
        self.0
    }
    pub const fn ms(self) -> u64 {
        self.0 >> COUNTER_BITS
    }
    pub const fn counter(self) -> u16 {
        self.0 as u16
    }
    /// The smallest timestamp after this one.
    pub fn successor(self) -> Hlc {
        Hlc(self.0.saturating_add(1))
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.ms(), self.counter())
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({self})")
    }
}

/// The clock state of one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HlcClock {
    last: Hlc,
    max_drift_ms: u64,
}

impl HlcClock {
    pub fn new(max_drift_ms: u64) -> Self {
        HlcClock { last: Hlc::ZERO, max_drift_ms }
    }

    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A fresh timestamp for a local event at wall time `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        let wall = Hlc::new(now_ms.min(MAX_MS), 0);
        self.last = if wall > self.last { wall } else { self.last.successor() };
        self.last
    }

    /// Refuses a remote timestamp too far in the future of `now_ms`.
    pub fn check(&self, remote: Hlc, now_ms: u64) -> Result<()> {
        let ahead = remote.ms().saturating_sub(now_ms);
        if ahead > self.max_drift_ms {
            return Err(Error::ClockDrift { ahead_ms: ahead, max_ms: self.max_drift_ms });
        }
        Ok(())
    }

    /// Moves past a timestamp seen on an accepted remote entry.
    pub fn observe(&mut self, remote: Hlc) {
        self.last = self.last.max(remote);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// Runs a script of `t <now>` (tick) and `o <ms>.<counter>` (observe) lines and
    /// compares the produced timestamps.
    fn check(script: &str, expect: &str) {
        let mut clock = HlcClock::new(60_000);
        let mut out = Vec::new();
        for line in script.split(';').map(str::trim).filter(|l| !l.is_empty()) {
            let (cmd, arg) = line.split_once(' ').unwrap();
            match cmd {
                "t" => out.push(clock.tick(arg.parse().unwrap()).to_string()),
                "o" => {
                    let (ms, c) = arg.split_once('.').unwrap();
                    let remote = Hlc::new(ms.parse().unwrap(), c.parse().unwrap());
                    match clock.check(remote, 1000) {
                        Ok(()) => clock.observe(remote),
                        Err(e) => out.push(e.to_string()),
                    }
                }
                _ => panic!("bad command {cmd}"),
            }
        }
        assert_eq!(out.join(" "), expect);
    }

    #[test]
    fn ticks_follow_the_wall_clock() {
        check("t 100; t 101; t 200", "100.0 101.0 200.0");
    }

    #[test]
    fn ticks_stay_monotonic_when_the_wall_clock_goes_back() {
        check("t 100; t 50; t 50; t 101", "100.0 100.1 100.2 101.0");
    }

    #[test]
    fn observing_moves_past_remote_time() {
        check("t 100; o 500.3; t 120; t 600", "100.0 500.4 600.0");
    }

    #[test]
    fn remote_time_beyond_the_drift_bound_is_refused() {
        check(
            "o 70000.0; t 100",
            "clock drift: remote time is 69000 ms ahead of local time, beyond the bound of 60000 ms 100.0",
        );
    }

    #[test]
    fn counter_overflow_carries_into_milliseconds() {
        let mut clock = HlcClock::new(0);
        clock.observe(Hlc::new(10, u16::MAX));
        assert_eq!(clock.tick(0), Hlc::new(11, 0));
    }
}
