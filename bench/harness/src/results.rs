//! A suite's results: raw samples, the ratios it judges, its table, CSV and JSON file.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::env::Environment;
use crate::stats::{self, Better, Range, Summary, Verdict};

/// One repetition's figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub workload: String,
    pub metric: String,
    pub system: String,
    pub rep: usize,
    pub value: f64,
    pub unit: String,
}

/// One side of a ratio: a metric of a system in a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub workload: String,
    pub metric: String,
    pub system: String,
}

impl Key {
    pub fn new(workload: &str, metric: &str, system: &str) -> Key {
        Key { workload: workload.into(), metric: metric.into(), system: system.into() }
    }
}

/// A ratio a suite reports: numerator / denominator, which way is better, and its goal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RatioSpec {
    /// Unique within the suite, e.g. `random: merge time, stead / yrs`.
    pub name: String,
    pub num: Key,
    pub den: Key,
    pub better: Better,
    pub goal: Option<f64>,
    /// Printed beside the ratio (e.g. "Yjs keeps documents in memory only").
    #[serde(default)]
    pub note: String,
}

impl RatioSpec {
    /// `≤ 0.5`, `≥ 5`, `≤ 0.333`, or `—` without a goal.
    pub fn goal_str(&self) -> String {
        let Some(g) = self.goal else { return "—".into() };
        let mut v = format!("{g:.3}");
        while v.ends_with('0') {
            v.pop();
        }
        let v = v.trim_end_matches('.');
        match self.better {
            Better::Lower => format!("≤ {v}"),
            Better::Higher => format!("≥ {v}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RatioResult {
    pub spec: RatioSpec,
    pub range: Option<Range>,
    pub verdict: Option<Verdict>,
}

/// A growth curve: y against x for each system (e.g. merge time against ops).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Curve {
    pub name: String,
    pub x_label: String,
    pub y_label: String,
    /// (system, points (x, median y))
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// Everything one suite measured in one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteResult {
    pub suite: String,
    pub quick: bool,
    pub reps: usize,
    pub env: Environment,
    pub samples: Vec<Sample>,
    pub ratios: Vec<RatioResult>,
    #[serde(default)]
    pub curves: Vec<Curve>,
    /// Lines printed under the table (what the figures mean, what they leave out).
    #[serde(default)]
    pub notes: Vec<String>,
    pub seconds: f64,
    /// When the results were written, UTC (`2026-12-02 07:31 UTC`), so a report made from
    /// saved results says when each suite ran. Files written before this field existed
    /// get their modification time ([`SuiteResult::load`]).
    #[serde(default)]
    pub finished: String,
}

impl SuiteResult {
    pub fn new(suite: &str, quick: bool, reps: usize, env: Environment) -> SuiteResult {
        SuiteResult { suite: suite.into(), quick, reps, env, samples: Vec::new(), ratios: Vec::new(), curves: Vec::new(), notes: Vec::new(), seconds: 0.0, finished: String::new() }
    }

    pub fn add(&mut self, workload: &str, metric: &str, system: &str, rep: usize, value: f64, unit: &str) {
        self.samples.push(Sample { workload: workload.into(), metric: metric.into(), system: system.into(), rep, value, unit: unit.into() });
    }

    pub fn summary(&self, key: &Key) -> Option<Summary> {
        let values: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.workload == key.workload && s.metric == key.metric && s.system == key.system)
            .map(|s| s.value)
            .collect();
        Summary::of(&values)
    }

    /// Adds a ratio, computed from the samples already added.
    pub fn ratio(&mut self, spec: RatioSpec) {
        let range = match (self.summary(&spec.num), self.summary(&spec.den)) {
            (Some(a), Some(b)) => Some(stats::ratio(&a, &b)),
            _ => None,
        };
        let verdict = match (range, spec.goal) {
            (Some(r), Some(g)) => Some(stats::judge(&r, spec.better, g)),
            _ => None,
        };
        self.ratios.push(RatioResult { spec, range, verdict });
    }

    /// (workload, metric, system, unit) in first-seen order.
    fn keys(&self) -> Vec<(Key, String)> {
        let mut out: Vec<(Key, String)> = Vec::new();
        for s in &self.samples {
            let k = Key::new(&s.workload, &s.metric, &s.system);
            if !out.iter().any(|(o, _)| *o == k) {
                out.push((k, s.unit.clone()));
            }
        }
        out
    }

    /// The printed table: environment, each figure's median and spread, each ratio.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "bench {}{}: {} repetitions per system, interleaved, each in its own process", self.suite, if self.quick { " --quick" } else { "" }, self.reps);
        let _ = writeln!(t, "{}", self.env.header());
        let _ = writeln!(t);
        let _ = writeln!(t, "  {:<34} {:<26} {:<18} {:>12} {:>25}", "workload", "metric", "system", "median", "min – max (n)");
        for (k, unit) in self.keys() {
            let Some(s) = self.summary(&k) else { continue };
            let _ = writeln!(
                t,
                "  {:<34} {:<26} {:<18} {:>12} {:>25}",
                k.workload,
                k.metric,
                k.system,
                format!("{} {unit}", fmt(s.median)),
                format!("{} – {} ({})", fmt(s.min), fmt(s.max), s.n)
            );
        }
        let _ = writeln!(t);
        let _ = writeln!(t, "  {:<64} {:>8} {:>19}  {:<8} verdict", "ratio (of medians)", "median", "range", "goal");
        for r in &self.ratios {
            let goal = r.spec.goal_str();
            let (median, range) = match r.range {
                Some(x) => (format!("{:.3}", x.median), format!("{:.3} – {:.3}", x.lo, x.hi)),
                None => ("n/a".into(), "no samples".into()),
            };
            let verdict = r.verdict.map_or("", Verdict::as_str);
            let _ = writeln!(t, "  {:<64} {median:>8} {range:>19}  {goal:<8} {verdict}", r.spec.name);
            if !r.spec.note.is_empty() {
                let _ = writeln!(t, "      ({})", r.spec.note);
            }
        }
        for n in &self.notes {
            let _ = writeln!(t, "  {n}");
        }
        t
    }

    /// Raw samples, one a line, each with the environment it ran in.
    pub fn csv(&self) -> String {
        let mut c = String::from("suite,workload,metric,system,rep,value,unit,quick,rustc,profile,cpu,anchors\n");
        for s in &self.samples {
            let fields = [
                self.suite.clone(),
                s.workload.clone(),
                s.metric.clone(),
                s.system.clone(),
                s.rep.to_string(),
                s.value.to_string(),
                s.unit.clone(),
                self.quick.to_string(),
                self.env.rustc.clone(),
                self.env.profile.clone(),
                self.env.cpu.clone(),
                self.env.anchors_joined(),
            ];
            let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
            c.push_str(&line.join(","));
            c.push('\n');
        }
        c
    }

    /// Prints the table and writes `<dir>/<suite>.csv` and `<dir>/<suite>.json`.
    pub fn finish(&mut self, dir: &Path) -> Result<()> {
        self.finished = utc(None);
        println!("{}", self.table());
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let csv = dir.join(format!("{}.csv", self.suite));
        std::fs::write(&csv, self.csv()).with_context(|| format!("writing {}", csv.display()))?;
        let json = dir.join(format!("{}.json", self.suite));
        std::fs::write(&json, serde_json::to_string_pretty(self)?).with_context(|| format!("writing {}", json.display()))?;
        println!("  raw samples: {}; results: {}", csv.display(), json.display());
        Ok(())
    }

    pub fn load(path: &Path) -> Result<SuiteResult> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut r: SuiteResult = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if r.finished.is_empty() {
            r.finished = utc(Some(path));
        }
        Ok(r)
    }
}

/// The time now, or `file`'s modification time, in UTC to the minute (empty if `date` fails).
fn utc(file: Option<&Path>) -> String {
    let mut date = std::process::Command::new("date");
    date.arg("-u");
    if let Some(f) = file {
        date.arg("-r").arg(f);
    }
    date.arg("+%Y-%m-%d %H:%M UTC").output().ok().and_then(|o| String::from_utf8(o.stdout).ok()).map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Four significant figures, without exponent for everyday magnitudes.
pub fn fmt(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let digits = (3 - x.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{x:.digits$}")
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> SuiteResult {
        let mut r = SuiteResult::new("t", true, 3, Environment::default());
        for (rep, (a, b)) in [(1.0, 4.0), (2.0, 5.0), (3.0, 8.0)].into_iter().enumerate() {
            r.add("w", "time", "a", rep, a, "s");
            r.add("w", "time", "b", rep, b, "s");
        }
        r
    }

    #[test]
    fn ratio_of_medians_with_range_and_verdict() {
        let mut r = result();
        let spec = |goal| RatioSpec { name: "a / b".into(), num: Key::new("w", "time", "a"), den: Key::new("w", "time", "b"), better: Better::Lower, goal, note: String::new() };
        r.ratio(spec(Some(0.5)));
        r.ratio(spec(Some(1.0)));
        r.ratio(spec(None));
        r.ratio(RatioSpec { num: Key::new("w", "time", "missing"), ..spec(Some(1.0)) });
        let got: Vec<_> = r.ratios.iter().map(|x| (x.range.map(|r| r.median), x.verdict)).collect();
        assert_eq!(got, vec![(Some(0.4), Some(Verdict::Unstable)), (Some(0.4), Some(Verdict::Met)), (Some(0.4), None), (None, None)]);
        assert!(r.table().contains("unstable"));
        let third = RatioSpec { goal: Some(1.0 / 3.0), ..spec(None) };
        assert_eq!(third.goal_str(), "≤ 0.333");
        assert_eq!(RatioSpec { goal: Some(5.0), better: Better::Higher, ..spec(None) }.goal_str(), "≥ 5");
    }

    #[test]
    fn csv_quotes_fields_and_carries_the_environment() {
        let mut r = result();
        r.env.profile = "release: opt-level 3, lto thin".into();
        let csv = r.csv();
        assert_eq!(csv.lines().count(), 7);
        assert!(csv.lines().nth(1).expect("row").starts_with("t,w,time,a,0,1,s,true,,\"release: opt-level 3, lto thin\","));
    }

    #[test]
    fn json_round_trips() {
        let r = result();
        let back: SuiteResult = serde_json::from_str(&serde_json::to_string(&r).expect("json")).expect("parse");
        assert_eq!(back.samples, r.samples);
    }

    /// A report made from saved results says when each suite ran: a result written now
    /// carries its time, and one written before the field existed its file's time.
    #[test]
    fn saved_results_say_when_they_were_written() {
        let dir = std::env::temp_dir().join(format!("stead-harness-finished-{}", std::process::id()));
        let mut r = result();
        r.finish(&dir).expect("written");
        let written = SuiteResult::load(&dir.join("t.json")).expect("loaded");
        assert!(written.finished.ends_with(" UTC") && written.finished.len() == "2026-12-02 07:31 UTC".len(), "{:?}", written.finished);
        assert_eq!(written.finished, r.finished);
        // An older file, without the field, gets its modification time.
        let old = dir.join("old.json");
        std::fs::write(&old, serde_json::to_string(&result()).expect("json").replace(",\"finished\":\"\"", "")).expect("written");
        assert!(!std::fs::read_to_string(&old).expect("read").contains("finished"));
        assert_eq!(SuiteResult::load(&old).expect("loaded").finished, utc(Some(&old)));
        assert!(!utc(Some(&old)).is_empty());
        std::fs::remove_dir_all(&dir).expect("removed");
    }

    #[test]
    fn four_significant_figures() {
        for (x, want) in [(12.3456, "12.35"), (0.0012346, "0.001235"), (123456.7, "123457"), (0.0, "0")] {
            assert_eq!(fmt(x), want);
        }
    }
}
