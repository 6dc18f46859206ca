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

/// [`interleaved`] after one warm-up pass of every system, in order: each item is
/// `(Some(round), system)`, or `(None, system)` for a warm-up sample, which is run and
/// not recorded (a disk, page cache and CPU clock settling show up in the first samples).
pub fn warmed_up(systems: usize, reps: usize) -> Vec<(Option<usize>, usize)> {
    (0..systems).map(|s| (None, s)).chain(interleaved(systems, reps).into_iter().map(|(r, s)| (Some(r), s))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warm_up_pass_of_every_system_comes_first_and_has_no_round() {
        let order = warmed_up(3, 2);
        assert_eq!(&order[..3], &[(None, 0), (None, 1), (None, 2)]);
        assert_eq!(order[3..].iter().map(|&(r, s)| (r.expect("a recorded round"), s)).collect::<Vec<_>>(), interleaved(3, 2));
    }

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
