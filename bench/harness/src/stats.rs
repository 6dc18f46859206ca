//! Medians, spreads, ratios of medians with their range, goals and the regression rule.

use serde::{Deserialize, Serialize};

/// Several repetitions of one figure of one system.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no values; NaNs are left out.
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        let median = median_sorted(&v)?;
        Some(Summary { n: v.len(), median, min: v[0], max: v[v.len() - 1] })
    }
}

/// The median; the mean of the two middle values for an even count.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    median_sorted(&v)
}

fn median_sorted(v: &[f64]) -> Option<f64> {
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// A ratio of medians and the range the two spreads allow: from the numerator's least
/// over the denominator's greatest to the numerator's greatest over the denominator's least.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Range {
    pub median: f64,
    pub lo: f64,
    pub hi: f64,
}

pub fn ratio(num: &Summary, den: &Summary) -> Range {
    Range { median: num.median / den.median, lo: num.min / den.max, hi: num.max / den.min }
}

/// Which way a ratio improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Times, bytes, latency.
    Lower,
    /// Throughput.
    Higher,
}

/// How a ratio stands against its goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The whole range is on the goal's side.
    Met,
    /// The whole range is on the wrong side.
    Missed,
    /// The spreads overlap the goal: this run cannot say.
    Unstable,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "NOT met",
            Verdict::Unstable => "unstable",
        }
    }
}

/// Judges a ratio against a goal (`≤ goal` when lower is better, `≥ goal` otherwise).
pub fn judge(r: &Range, better: Better, goal: f64) -> Verdict {
    let (good, bad) = match better {
        Better::Lower => (r.hi <= goal, r.lo > goal),
        Better::Higher => (r.lo >= goal, r.hi < goal),
    };
    if good {
        Verdict::Met
    } else if bad {
        Verdict::Missed
    } else {
        Verdict::Unstable
    }
}

/// The regression rule of `cargo xtask bench --check`: a ratio regressed when its median
/// is more than `tolerance` (0.10 for 10%) worse than the worst end of the baseline's
/// range. The baseline's own spread is the noise allowance; the tolerance comes on top.
pub fn regression_limit(baseline: &Range, better: Better, tolerance: f64) -> f64 {
    match better {
        Better::Lower => baseline.hi * (1.0 + tolerance),
        Better::Higher => baseline.lo / (1.0 + tolerance),
    }
}

pub fn regressed(baseline: &Range, current: &Range, better: Better, tolerance: f64) -> bool {
    let limit = regression_limit(baseline, better, tolerance);
    match better {
        Better::Lower => current.median > limit,
        Better::Higher => current.median < limit,
    }
}

/// The value at fraction `p` (0..=1) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(values: &[f64]) -> Summary {
        Summary::of(values).expect("values")
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        for (values, want) in [
            (vec![3.0], Some(3.0)),
            (vec![5.0, 1.0, 3.0], Some(3.0)),
            (vec![4.0, 1.0, 3.0, 2.0], Some(2.5)),
            (vec![], None),
        ] {
            assert_eq!(median(&values), want, "{values:?}");
        }
    }

    #[test]
    fn summary_spread_ignores_nan() {
        assert_eq!(s(&[2.0, f64::NAN, 9.0, 4.0]), Summary { n: 3, median: 4.0, min: 2.0, max: 9.0 });
        assert_eq!(Summary::of(&[f64::NAN]), None);
    }

    #[test]
    fn ratio_range_comes_from_both_spreads() {
        let r = ratio(&s(&[1.0, 2.0, 3.0]), &s(&[4.0, 5.0, 8.0]));
        assert_eq!(r, Range { median: 0.4, lo: 0.125, hi: 0.75 });
    }

    #[test]
    fn unstable_when_the_spread_overlaps_the_goal() {
        let r = |lo, hi| Range { median: (lo + hi) / 2.0, lo, hi };
        for (range, better, goal, want) in [
            (r(0.2, 0.4), Better::Lower, 0.5, Verdict::Met),
            (r(0.2, 0.5), Better::Lower, 0.5, Verdict::Met),
            (r(0.4, 0.6), Better::Lower, 0.5, Verdict::Unstable),
            (r(0.6, 0.9), Better::Lower, 0.5, Verdict::Missed),
            (r(5.5, 7.0), Better::Higher, 5.0, Verdict::Met),
            (r(4.0, 6.0), Better::Higher, 5.0, Verdict::Unstable),
            (r(2.0, 4.9), Better::Higher, 5.0, Verdict::Missed),
        ] {
            assert_eq!(judge(&range, better, goal), want, "{range:?} {better:?} {goal}");
        }
    }

    #[test]
    fn regression_is_ten_percent_past_the_baseline_spread() {
        let base = Range { median: 1.0, lo: 0.9, hi: 1.2 };
        let cur = |median| Range { median, lo: median, hi: median };
        for (median, better, want) in [
            (1.3, Better::Lower, false),  // within 1.2 × 1.1 = 1.32
            (1.33, Better::Lower, true),
            (0.5, Better::Lower, false),  // an improvement
            (0.82, Better::Higher, false), // within 0.9 / 1.1 = 0.818
            (0.81, Better::Higher, true),
            (3.0, Better::Higher, false),
        ] {
            assert_eq!(regressed(&base, &cur(median), better, 0.10), want, "{median} {better:?}");
        }
    }

    #[test]
    fn percentile_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
