//! The order repetitions run in: every system once per round, the order reversed every
//! other round (A B, B A, A B … for two systems), so a slow stretch of a shared machine
//! falls on all systems alike and no system always runs first or last.

/// `(round, system index)` pairs for `systems` systems and `reps` rounds.
pub fn interleaved(systems: usize, reps: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(systems * reps);
    for round in 0..reps {
        if round % 2 == 0 {
            out.extend((0..systems).map(|s| (round, s)));
        } else {
            out.extend((0..systems).rev().map(|s| (round, s)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letters(systems: usize, reps: usize) -> String {
        interleaved(systems, reps).iter().map(|&(_, s)| (b'A' + s as u8) as char).collect()
    }

    #[test]
    fn alternates_the_order_every_round() {
        for (systems, reps, want) in [(2, 5, "ABBAABBAAB"), (3, 3, "ABCCBAABC"), (1, 3, "AAA"), (2, 0, "")] {
            assert_eq!(letters(systems, reps), want);
        }
    }

    #[test]
    fn every_system_runs_once_per_round() {
        let order = interleaved(4, 6);
        assert_eq!(order.len(), 24);
        for round in 0..6 {
            let mut seen: Vec<usize> = order.iter().filter(|(r, _)| *r == round).map(|&(_, s)| s).collect();
            seen.sort();
            assert_eq!(seen, vec![0, 1, 2, 3]);
        }
    }
}
