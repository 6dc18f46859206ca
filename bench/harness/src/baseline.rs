//! `bench/baseline.json`: the ratios of a committed run, and the check of a new run
//! against them (`cargo xtask bench --check`).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::results::SuiteResult;
use crate::stats::{self, Better, Range};

/// The tolerance on top of the baseline's spread.
pub const TOLERANCE: f64 = 0.10;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    /// Whether the baseline came from a `--quick` run (sizes differ, so ratios may too).
    pub quick: bool,
    pub ratios: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub suite: String,
    pub name: String,
    pub better: Better,
    pub range: Range,
}

impl Baseline {
    pub fn from_results(results: &[SuiteResult]) -> Baseline {
        let quick = results.iter().any(|r| r.quick);
        let ratios = results
            .iter()
            .flat_map(|r| {
                r.ratios.iter().filter_map(|x| {
                    Some(Entry { suite: r.suite.clone(), name: x.spec.name.clone(), better: x.spec.better, range: x.range? })
                })
            })
            .collect();
        Baseline { quick, ratios }
    }

    pub fn load(path: &std::path::Path) -> Result<Baseline> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// What `--check` found for one ratio.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    Regressed { suite: String, name: String, baseline: Range, current: Range, limit: f64 },
    Held { suite: String, name: String },
    /// In the baseline but not measured now, or the other way round.
    Unmatched { suite: String, name: String },
}

/// Compares each ratio of `current` that the baseline has.
pub fn check(baseline: &Baseline, current: &Baseline) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in &current.ratios {
        let Some(b) = baseline.ratios.iter().find(|b| b.suite == c.suite && b.name == c.name) else {
            out.push(Finding::Unmatched { suite: c.suite.clone(), name: c.name.clone() });
            continue;
        };
        if stats::regressed(&b.range, &c.range, b.better, TOLERANCE) {
            let limit = stats::regression_limit(&b.range, b.better, TOLERANCE);
            out.push(Finding::Regressed { suite: c.suite.clone(), name: c.name.clone(), baseline: b.range, current: c.range, limit });
        } else {
            out.push(Finding::Held { suite: c.suite.clone(), name: c.name.clone() });
        }
    }
    let suites: Vec<&str> = current.ratios.iter().map(|c| c.suite.as_str()).collect();
    for b in &baseline.ratios {
        // Only suites that ran now: `bench core --check` says nothing about the server.
        if suites.contains(&b.suite.as_str()) && !current.ratios.iter().any(|c| c.suite == b.suite && c.name == b.name) {
            out.push(Finding::Unmatched { suite: b.suite.clone(), name: b.name.clone() });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, better: Better, median: f64, lo: f64, hi: f64) -> Entry {
        Entry { suite: "core".into(), name: name.into(), better, range: Range { median, lo, hi } }
    }

    #[test]
    fn flags_only_what_moved_past_spread_and_tolerance() {
        let base = Baseline {
            quick: false,
            ratios: vec![entry("merge", Better::Lower, 0.3, 0.25, 0.35), entry("ingest", Better::Higher, 5.0, 4.5, 5.5), entry("gone", Better::Lower, 1.0, 1.0, 1.0)],
        };
        let now = Baseline {
            quick: false,
            ratios: vec![entry("merge", Better::Lower, 0.40, 0.39, 0.41), entry("ingest", Better::Higher, 4.2, 4.0, 4.4), entry("new", Better::Lower, 1.0, 1.0, 1.0)],
        };
        let got = check(&base, &now);
        assert!(matches!(&got[0], Finding::Regressed { name, limit, .. } if name == "merge" && (*limit - 0.385).abs() < 1e-9));
        assert!(matches!(&got[1], Finding::Held { name, .. } if name == "ingest"));
        assert!(matches!(&got[2], Finding::Unmatched { name, .. } if name == "new"));
        assert!(matches!(&got[3], Finding::Unmatched { name, .. } if name == "gone"));
        assert_eq!(got.len(), 4);
    }
}
