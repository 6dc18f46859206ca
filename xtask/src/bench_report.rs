//! `cargo xtask bench`'s report: reads each suite's results (`target/bench/<suite>.json`),
//! writes `REPORT.md` with SVG plots, and compares the ratios with `bench/baseline.json`.
//!
//! A full run writes `bench/REPORT.md` and `bench/report/*.svg` (committed); a `--quick`
//! pass writes them under `target/bench/` so a short look never replaces the real report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use stead_bench_harness::baseline::{self, Baseline, Finding};
use stead_bench_harness::env::{describe_profile, workspace_root};
use stead_bench_harness::results::fmt;
use stead_bench_harness::stats::{Better, median};
use stead_bench_harness::{Curve, Environment, Key, RatioSpec, SuiteResult, plots};

use crate::util::cmd;

/// Where the report goes: the committed folder for a full run, target/bench for `--quick`.
pub fn report_dir(root: &Path, out: &Path, quick: bool) -> PathBuf {
    if quick { out.to_path_buf() } else { root.join("bench") }
}

/// The suites in the order the report lists them; others follow in the order they ran.
const SUITE_ORDER: [&str; 3] = ["core", "server", "sw"];

/// Writes REPORT.md and its plots for the suites that ran; returns the report's path.
///
/// A full run of some suites keeps the other suites' sections of the report already there
/// (each section's first line says when its suite ran), so `bench sw` after a change to
/// the worker replaces only the sw section. A `--quick` pass writes only what it ran.
pub fn write(results: &[SuiteResult], dir: &Path, total_secs: f64) -> Result<PathBuf> {
    let plots_dir = dir.join("report");
    std::fs::create_dir_all(&plots_dir)?;
    let path = dir.join("REPORT.md");
    let quick = results.iter().any(|r| r.quick);
    let mut parts: Vec<(String, String)> = Vec::new();
    if !quick && let Ok(old) = std::fs::read_to_string(&path) {
        parts.extend(sections(&old).into_iter().filter(|(suite, _)| !results.iter().any(|r| &r.suite == suite)));
    }
    let kept: Vec<String> = parts.iter().map(|(suite, _)| suite.clone()).collect();
    for r in results {
        parts.push((r.suite.clone(), section(r, &plots_dir)?));
    }
    let rank = |suite: &str| SUITE_ORDER.iter().position(|s| *s == suite).unwrap_or(SUITE_ORDER.len());
    parts.sort_by_key(|(suite, _)| rank(suite));

    let date = cmd("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).probe().map(|s| s.trim().to_owned()).unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(md, "# Stead benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench{}` on {date} ({:.0} min). Each system ran in its own process, \
         its repetitions interleaved with the anchor's (A B B A …); every figure is the median of the \
         repetitions, with min–max beside it. A ratio's range goes from the numerator's least over the \
         denominator's greatest to its greatest over their least; a ratio is **unstable** when that range \
         straddles its goal, so this run cannot say whether the goal is met. Workloads and anchors: \
         `shared/BENCH.md`.\n",
        if quick { " --quick" } else { "" },
        total_secs / 60.0
    );
    if !kept.is_empty() {
        let ran: Vec<&str> = results.iter().map(|r| r.suite.as_str()).collect();
        let _ = writeln!(
            md,
            "This run measured {}; the {} section{} below {} kept from an earlier run (each section's first \
             line says when its suite finished, and on what host). Every ratio is against its anchor measured \
             in the same run.\n",
            ran.join(", "),
            kept.join(" and "),
            if kept.len() > 1 { "s" } else { "" },
            if kept.len() > 1 { "are" } else { "is" },
        );
    }
    if quick {
        let _ = writeln!(md, "**A `--quick` pass: fewer repetitions and smaller workloads; not a measurement to quote.**\n");
    }
    for (_, text) in &parts {
        md.push_str(text);
    }
    std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The `## bench <suite>` sections of a report, each up to the next (trailing blank lines
/// and all, so a kept section reads as it was written).
fn sections(md: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in md.split_inclusive('\n') {
        if let Some(suite) = line.trim_end().strip_prefix("## bench ") {
            out.push((suite.trim().to_owned(), String::new()));
        }
        if let Some((_, text)) = out.last_mut() {
            text.push_str(line);
        }
    }
    out
}

/// One suite's section: its run, ratios, notes, every figure and its plots.
fn section(r: &SuiteResult, plots_dir: &Path) -> Result<String> {
    let mut md = String::new();
    let _ = writeln!(md, "## bench {}\n", r.suite);
    let anchors: Vec<String> = r.env.anchors.iter().map(|(n, v)| format!("{n} {v}")).collect();
    let _ = writeln!(
        md,
        "{} repetitions per system; {}; {}; {} × {} (load {} at start); anchors: {}; {:.0} s{}.\n",
        r.reps,
        r.env.rustc,
        r.env.profile,
        r.env.cores,
        r.env.cpu,
        r.env.load,
        if anchors.is_empty() { "none".into() } else { anchors.join(", ") },
        r.seconds,
        if r.finished.is_empty() { String::new() } else { format!(", finished {}", r.finished) }
    );
    let svg = format!("{}-ratios.svg", r.suite);
    if plots::ratios(r, &plots_dir.join(&svg))? > 0 {
        let _ = writeln!(md, "![ratios of bench {}](report/{svg})\n", r.suite);
    }
    let _ = writeln!(md, "| # | ratio | median | range | goal | verdict |\n|---|---|---|---|---|---|");
    for (i, x) in r.ratios.iter().enumerate() {
        let goal = x.spec.goal_str();
        let (m, range) = match x.range {
            Some(q) => (format!("{:.3}", q.median), format!("{:.3} – {:.3}", q.lo, q.hi)),
            None => ("n/a".into(), "no samples".into()),
        };
        let verdict = x.verdict.map_or("", |v| v.as_str());
        let note = if x.spec.note.is_empty() { String::new() } else { format!(" ({})", x.spec.note) };
        let _ = writeln!(md, "| {} | {}{note} | {m} | {range} | {goal} | {verdict} |", i + 1, x.spec.name);
    }
    let _ = writeln!(md);
    for n in &r.notes {
        let _ = writeln!(md, "- {n}");
    }
    if !r.notes.is_empty() {
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "<details><summary>every figure (median, min – max, n)</summary>\n");
    let _ = writeln!(md, "| workload | metric | system | median | min – max | n |\n|---|---|---|---|---|---|");
    let mut seen: Vec<Key> = Vec::new();
    for s in &r.samples {
        let k = Key::new(&s.workload, &s.metric, &s.system);
        if seen.contains(&k) {
            continue;
        }
        if let Some(sum) = r.summary(&k) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} {} | {} – {} | {} |",
                k.workload, k.metric, k.system, fmt(sum.median), s.unit, fmt(sum.min), fmt(sum.max), sum.n
            );
        }
        seen.push(k);
    }
    let _ = writeln!(md, "\n</details>\n");
    for (i, c) in r.curves.iter().enumerate() {
        let svg = format!("{}-curve-{}.svg", r.suite, i + 1);
        plots::curve(c, &plots_dir.join(&svg))?;
        let _ = writeln!(md, "![{}](report/{svg})\n", c.name);
    }
    Ok(md)
}

/// Compares this run's ratios with the committed baseline; an error lists the regressions.
pub fn check(results: &[SuiteResult], baseline_path: &Path) -> Result<()> {
    let base = Baseline::load(baseline_path).context("no baseline to check against: a full run with --save-baseline writes it")?;
    let now = Baseline::from_results(results);
    if base.quick != now.quick {
        eprintln!(
            "  warning: the baseline is from a {} run and this is a {} run; workload sizes differ",
            if base.quick { "--quick" } else { "full" },
            if now.quick { "--quick" } else { "full" }
        );
    }
    let findings = baseline::check(&base, &now);
    let mut regressed = 0;
    println!("\ncheck against {} (a regression: the median more than {:.0}% past the baseline's range)", baseline_path.display(), baseline::TOLERANCE * 100.0);
    for f in &findings {
        match f {
            Finding::Regressed { suite, name, baseline, current, limit } => {
                regressed += 1;
                println!(
                    "  REGRESSED {suite}: {name}: {:.3} (range {:.3} – {:.3}) past {limit:.3}; baseline {:.3} ({:.3} – {:.3})",
                    current.median, current.lo, current.hi, baseline.median, baseline.lo, baseline.hi
                );
            }
            Finding::Held { suite, name } => println!("  ok        {suite}: {name}"),
            Finding::Unmatched { suite, name } => println!("  unmatched {suite}: {name} (in only one of baseline and run)"),
        }
    }
    if regressed > 0 {
        bail!("{regressed} ratio(s) regressed against {}", baseline_path.display());
    }
    Ok(())
}

pub fn save_baseline(results: &[SuiteResult], path: &Path) -> Result<()> {
    let b = Baseline::from_results(results);
    std::fs::write(path, serde_json::to_string_pretty(&b)?)?;
    println!("baseline written: {} ({} ratios)", path.display(), b.ratios.len());
    Ok(())
}

/// `bench sw`'s floor under the 2 MB offline fetch (the page's own `blob:` URL, no worker).
const FLOOR_METRIC: &str = "page_blob_url_2m";

/// `bench sw`'s raw samples (`site,block,metric,sample,ms`) as a suite result. A block is
/// one fresh browser per site (serving pairs, precache runs), its rounds interleaved A B B A
/// inside it; a repetition is the median of up to 4 consecutive rounds of a block, so the
/// spread is that of a measurement, not of single fetches.
pub fn sw_result(csv: &str, quick: bool, env: Environment) -> Result<SuiteResult> {
    // (site, metric) -> block -> samples in order
    let mut groups: BTreeMap<(String, String), BTreeMap<usize, Vec<f64>>> = BTreeMap::new();
    let mut metrics: Vec<String> = Vec::new();
    for line in csv.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        let [site, block, metric, _, ms] = f[..] else { bail!("bad sw.csv line {line:?}") };
        let block: usize = block.parse().with_context(|| format!("bad block in {line:?}"))?;
        let ms: f64 = ms.parse().with_context(|| format!("bad ms in {line:?}"))?;
        if !metrics.iter().any(|m| m == metric) {
            metrics.push(metric.to_owned());
        }
        groups.entry((site.to_owned(), metric.to_owned())).or_default().entry(block).or_default().push(ms);
    }
    let mut reps = 0;
    let mut r = SuiteResult::new("sw", quick, 0, env);
    for metric in &metrics {
        for site in ["stead", "workbox"] {
            let Some(blocks) = groups.get(&(site.to_owned(), metric.clone())) else { continue };
            let mut rep = 0;
            for samples in blocks.values() {
                let chunks = (samples.len() / 4).max(1);
                for c in 0..chunks {
                    let end = if c + 1 == chunks { samples.len() } else { (c + 1) * 4 };
                    if let Some(m) = median(&samples[c * 4..end]) {
                        r.add("sw", metric, site, rep, m, "ms");
                        rep += 1;
                    }
                }
            }
            reps = reps.max(rep);
        }
        if metric == FLOOR_METRIC {
            // The same measurement in both sites' browsers: not a comparison of the two,
            // but what no worker can go below, against each side's own 2 MB fetch.
            r.ratio(RatioSpec {
                name: "fetch_offline_2m floor: the page's own blob: URL, no worker / workbox".into(),
                num: Key::new("sw", metric, "workbox"),
                den: Key::new("sw", "fetch_offline_2m", "workbox"),
                better: Better::Lower,
                goal: None,
                note: "the lowest fetch_offline_2m ratio a worker could reach, both measured in Workbox's browser".into(),
            });
            r.ratio(RatioSpec {
                name: "fetch_offline_2m, stead / the floor".into(),
                num: Key::new("sw", "fetch_offline_2m", "stead"),
                den: Key::new("sw", metric, "stead"),
                better: Better::Lower,
                goal: None,
                note: "Stead's 2 MB answer against the page's own blob: URL, both in Stead's browser".into(),
            });
            continue;
        }
        let goal = if metric.starts_with("fetch_offline") || metric == "reload_offline_dcl" {
            Some(0.8)
        } else if metric == "cold_fetch_offline_1k" || metric == "reload_offline_cold_dcl" {
            Some(1.0)
        } else if metric.starts_with("precache") {
            Some(0.5)
        } else {
            None
        };
        r.ratio(RatioSpec {
            name: format!("{metric}, stead / workbox"),
            num: Key::new("sw", metric, "stead"),
            den: Key::new("sw", metric, "workbox"),
            better: Better::Lower,
            goal,
            note: String::new(),
        });
    }
    r.reps = reps;
    r.notes.push("a repetition is the median of ≤ 4 consecutive interleaved rounds in one fresh browser per site; precache: one browser per sample".into());
    Ok(r)
}

/// Adds `bench sw`'s cold start against worker size (`site,pad_bytes,script_bytes,sample,ms`)
/// to its result: every sample as a repetition, and a curve of the median against the
/// worker script's size. No ratio: the curve shows how each worker grows.
pub fn sw_cold_size(csv: &str, r: &mut SuiteResult) -> Result<()> {
    const W: &str = "cold start vs worker size";
    // site -> padding -> (script bytes, samples)
    let mut points: BTreeMap<String, BTreeMap<usize, (u64, Vec<f64>)>> = BTreeMap::new();
    for line in csv.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        let [site, pad, script, sample, ms] = f[..] else { bail!("bad sw-cold-size.csv line {line:?}") };
        let pad: usize = pad.parse().with_context(|| format!("bad padding in {line:?}"))?;
        let script: u64 = script.parse().with_context(|| format!("bad script size in {line:?}"))?;
        let ms: f64 = ms.parse().with_context(|| format!("bad ms in {line:?}"))?;
        r.add(W, &format!("cold fetch, +{} KiB", pad >> 10), site, sample.parse().with_context(|| format!("bad sample in {line:?}"))?, ms, "ms");
        let p = points.entry(site.to_owned()).or_default().entry(pad).or_insert((script, Vec::new()));
        p.1.push(ms);
    }
    if points.is_empty() {
        return Ok(());
    }
    let mut series = Vec::new();
    let mut line = String::from("cold start against worker size (median ms at script KiB):");
    for (site, pads) in &points {
        let pts: Vec<(f64, f64)> = pads.values().filter_map(|(bytes, v)| median(v).map(|m| (*bytes as f64 / 1024.0, m))).collect();
        let shown: Vec<String> = pts.iter().map(|(kib, ms)| format!("{kib:.0}: {ms:.1}")).collect();
        let _ = write!(line, " {site} {};", shown.join(", "));
        series.push((site.clone(), pts));
    }
    r.notes.push(line);
    r.notes.push(
        "cold start against worker size: each system's own worker script with an inert comment of 0 to 2 MiB appended (pseudo-random base64, the same for both), \
         installed on its own origin; the first answered 1 KB fetch after CDP stopAllWorkers, offline, from a page that runs no script; \
         each sample one repetition, sizes and systems interleaved; every sample proven cold (the worker is listed as a CDP target before the stop and not after; Stead's worker reports a start time after the fetch began)"
            .into(),
    );
    r.curves.push(Curve {
        name: "worker cold start against worker size (first fetch after a stop; size grown by an inert comment)".into(),
        x_label: "worker script (KiB)".into(),
        y_label: "median ms".into(),
        series,
    });
    Ok(())
}

/// Adds a profile of Stead's by step (`sample,step,ms`, from the worker's own
/// `start_profile`) to the result's notes, headed `what`: where the time of an offline
/// cold start, or of a precache, goes, as the worker measured it.
pub fn sw_profile(csv: &str, what: &str, r: &mut SuiteResult) -> Result<()> {
    // step -> samples, steps in the order first seen
    let mut steps: Vec<(String, Vec<f64>)> = Vec::new();
    for line in csv.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        let [_, step, ms] = f[..] else { bail!("bad profile line {line:?}") };
        let ms: f64 = ms.parse().with_context(|| format!("bad ms in {line:?}"))?;
        match steps.iter_mut().find(|(s, _)| s == step) {
            Some((_, v)) => v.push(ms),
            None => steps.push((step.to_owned(), vec![ms])),
        }
    }
    if steps.is_empty() {
        return Ok(());
    }
    // In the order the steps happen (status lists them by name).
    steps.sort_by(|a, b| median(&a.1).unwrap_or(f64::MAX).total_cmp(&median(&b.1).unwrap_or(f64::MAX)));
    let mut line = format!("{what} (median, min–max):");
    for (step, v) in &steps {
        let (Some(m), Some(lo), Some(hi)) = (median(v), v.iter().copied().reduce(f64::min), v.iter().copied().reduce(f64::max)) else { continue };
        let _ = write!(line, " {step} {m:.1} ({lo:.1}–{hi:.1});");
    }
    r.notes.push(line);
    Ok(())
}

/// The environment of `bench sw`: the worker's wasm profile and the release server's.
pub fn sw_env(anchors: Vec<(String, String)>, chromium: &Path) -> Environment {
    let mut env = Environment::detect(anchors);
    let toml = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap_or_default();
    let server = describe_profile(&toml, false, |k| std::env::var(k).ok());
    env.profile = format!("worker: wasm-release (opt-level z, lto, codegen-units 1); stead-server {server}");
    let browser = cmd(chromium).arg("--version").probe().map(|s| s.trim().to_owned()).unwrap_or_else(|| "chromium ?".into());
    env.anchors.push(("browser".into(), browser));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite(name: &str, quick: bool) -> SuiteResult {
        let mut r = SuiteResult::new(name, quick, 5, Environment::default());
        r.finished = format!("{name}-run");
        r
    }

    #[test]
    fn a_run_of_one_suite_keeps_the_other_sections_of_the_report() {
        let dir = std::env::temp_dir().join(format!("stead-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let report = |results: &[SuiteResult]| std::fs::read_to_string(write(results, &dir, 60.0).unwrap()).unwrap();

        let first = report(&[suite("core", false), suite("server", false), suite("sw", false)]);
        assert!(!first.contains("kept from an earlier run"), "{first}");
        let core = sections(&first).remove(0).1;
        assert!(core.contains("finished core-run"), "{core}");

        // sw alone: core and server stay word for word, sw is the new run's, and in order.
        let mut sw = suite("sw", false);
        sw.finished = "sw-again".into();
        let second = report(&[sw]);
        let names: Vec<String> = sections(&second).into_iter().map(|(s, _)| s).collect();
        assert_eq!(names, ["core", "server", "sw"]);
        assert_eq!(sections(&second)[0].1, core);
        assert!(second.contains("finished sw-again") && !second.contains("finished sw-run"), "{second}");
        assert!(second.contains("This run measured sw; the core and server sections below are kept"), "{second}");

        // A quick pass writes only what it ran.
        let quick = report(&[suite("sw", true)]);
        assert_eq!(sections(&quick).len(), 1, "{quick}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_blob_url_floor_is_set_against_each_side_not_compared_between_them() {
        let mut csv = String::from("site,block,metric,sample,ms\n");
        for i in 0..4 {
            csv.push_str(&format!("stead,0,fetch_offline_2m,{i},8\nworkbox,0,fetch_offline_2m,{i},10\n"));
            csv.push_str(&format!("stead,0,{FLOOR_METRIC},{i},7.5\nworkbox,0,{FLOOR_METRIC},{i},7\n"));
        }
        let r = sw_result(&csv, false, Environment::default()).expect("parse");
        let median = |prefix: &str| r.ratios.iter().find(|x| x.spec.name.starts_with(prefix)).and_then(|x| x.range).map(|x| x.median);
        // Workbox's own floor against Workbox's fetch; Stead's fetch against Stead's floor.
        assert_eq!(median("fetch_offline_2m floor"), Some(0.7));
        assert_eq!(median("fetch_offline_2m, stead / the floor").map(|m| (m * 1000.0).round()), Some(1067.0));
        assert_eq!(median("fetch_offline_2m, stead / workbox"), Some(0.8));
        assert!(r.ratios.iter().all(|x| !x.spec.name.starts_with(FLOOR_METRIC)), "the floor is no race between the sites");
    }

    #[test]
    fn sw_samples_become_repetitions_of_up_to_four_rounds() {
        let mut csv = String::from("site,block,metric,sample,ms\n");
        for block in 0..2 {
            for i in 0..9 {
                csv.push_str(&format!("stead,{block},fetch_warm_1k,{i},{}\n", 1.0 + i as f64));
                csv.push_str(&format!("workbox,{block},fetch_warm_1k,{i},{}\n", 2.0 + i as f64));
            }
        }
        csv.push_str("stead,4,precache_10mb,0,100\nworkbox,5,precache_10mb,0,400\n");
        let r = sw_result(&csv, false, Environment::default()).expect("parse");
        // 9 rounds per block: chunks of 4 and 5 → 2 repetitions per block, 4 in all.
        let stead: Vec<f64> = r.samples.iter().filter(|s| s.system == "stead" && s.metric == "fetch_warm_1k").map(|s| s.value).collect();
        assert_eq!(stead, vec![2.5, 7.0, 2.5, 7.0]);
        assert_eq!(r.reps, 4);
        let pre = r.ratios.iter().find(|x| x.spec.name.starts_with("precache")).expect("precache ratio");
        assert_eq!(pre.range.map(|x| x.median), Some(0.25));
        assert_eq!(pre.verdict, Some(stead_bench_harness::stats::Verdict::Met));
    }

    #[test]
    fn cold_size_samples_become_a_curve_against_script_bytes() {
        let mut csv = String::from("site,pad_bytes,script_bytes,sample,ms\n");
        for i in 0..3 {
            csv.push_str(&format!("stead,0,2048,{i},{}\nworkbox,0,1024,{i},{}\n", 10 + i, 5 + i));
            csv.push_str(&format!("stead,1048576,1050624,{i},{}\nworkbox,1048576,1049600,{i},{}\n", 20 + i, 9 + i));
        }
        let mut r = SuiteResult::new("sw", true, 0, Environment::default());
        sw_cold_size(&csv, &mut r).expect("parse");
        let c = &r.curves[0];
        assert_eq!(c.series, vec![("stead".to_owned(), vec![(2.0, 11.0), (1026.0, 21.0)]), ("workbox".to_owned(), vec![(1.0, 6.0), (1025.0, 10.0)])]);
        assert_eq!(r.summary(&Key::new("cold start vs worker size", "cold fetch, +1024 KiB", "workbox")).map(|s| s.n), Some(3));
        assert!(r.ratios.is_empty());
    }

    #[test]
    fn the_cold_profile_becomes_a_note_of_each_step_in_time_order() {
        // Listed by name (as status has them); the note lists them by time.
        let csv = "sample,step,ms\n0,first_answer,20\n0,script_evaluated,4\n1,first_answer,30\n1,script_evaluated,6\n2,script_evaluated,5\n";
        let mut r = SuiteResult::new("sw", true, 0, Environment::default());
        sw_profile(csv, "cold", &mut r).expect("parse");
        assert_eq!(r.notes.len(), 1);
        assert!(r.notes[0].ends_with(" script_evaluated 5.0 (4.0–6.0); first_answer 25.0 (20.0–30.0);"), "{}", r.notes[0]);
        assert!(r.notes[0].starts_with("cold (median, min–max): "), "{}", r.notes[0]);
        assert!(sw_profile("sample,step,ms\n0,x\n", "cold", &mut r).is_err(), "a short line is refused");
    }
}
