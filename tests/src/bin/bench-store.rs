//! The measuring program of `cargo xtask bench store`: the data engine in the service
//! worker, through the page API, on OPFS and on IndexedDB, in one Chromium.
//!
//! Per storage kind: the latency of writing one record and of querying 100, taken in the
//! page with `performance.now()` around `fetch('/_stead/v1/…')` (so it includes the trip
//! through the worker); the first query after the worker is stopped (wake: worker start,
//! store open and query) on spaces of 1k, 10k and 100k records (1k and 10k with
//! `--quick`); and a one-record write (one entry appended) at the smallest and the
//! largest size. Spaces are filled with the bulk create, one entry per record. Raw
//! samples go to a CSV.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use stead_e2e::{Browser, Engine, Env, Server, wait_for};

struct Args {
    dist: PathBuf,
    server: PathBuf,
    out: PathBuf,
    chromium: PathBuf,
    chromedriver: PathBuf,
    quick: bool,
}

fn args() -> Result<Args> {
    let (mut get, quick) = stead_e2e::flags()?;
    let mut path = |k: &str| get.remove(k).map(PathBuf::from).with_context(|| format!("--{k} is required"));
    Ok(Args {
        dist: path("dist")?,
        server: path("server")?,
        out: path("out")?,
        chromium: path("chromium")?,
        chromedriver: path("chromedriver")?,
        quick,
    })
}

/// Runs `body` (an async function body) in the page and returns its JSON result.
async fn page(b: &Browser, body: &str) -> Result<Value> {
    let v = b.js_async(body).await?;
    if let Some(e) = v.get("error") {
        bail!("in the page: {e}");
    }
    Ok(v)
}

fn samples(v: &Value) -> Vec<f64> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

async fn make_space(b: &Browser, storage: &str) -> Result<String> {
    let v = page(
        b,
        &format!(
            "const r = await fetch('/_stead/v1/spaces', {{method: 'POST', headers: {{'content-type': 'application/json'}}, body: JSON.stringify({{storage: '{storage}'}})}});\
             return (await r.json()).space;"
        ),
    )
    .await?;
    v.as_str().map(str::to_owned).context("no space id")
}

/// Fills `space`'s `items` with `n` records, one entry each, 1,000 per request.
async fn fill(b: &Browser, space: &str, n: usize) -> Result<()> {
    // Ten requests per script, to stay inside WebDriver's script timeout.
    for start in (0..n).step_by(10_000) {
        let end = (start + 10_000).min(n);
        page(
            b,
            &format!(
                "for (let done = {start}; done < {end}; done += 1000) {{\
                   const records = Array.from({{length: Math.min(1000, {end} - done)}}, (_, i) => ({{fields: {{n: done + i, name: 'item ' + (done + i)}}}}));\
                   const r = await fetch('/_stead/v1/spaces/{space}/collections/items', {{method: 'POST', headers: {{'content-type': 'application/json'}}, body: JSON.stringify({{records, entries: 'each'}})}});\
                   if (r.status !== 201) throw new Error('bulk create: HTTP ' + r.status + ' ' + await r.text());\
                 }} return 1;"
            ),
        )
        .await?;
    }
    // The engine snapshots once writes pause: wait for it, so the wake below opens from it.
    wait_for("the snapshot after the fill", Duration::from_secs(300), || async {
        let s = page(b, &format!("return await (await fetch('/_stead/v1/spaces/{space}/status')).json();")).await?;
        Ok((s["snapshot_entries"].as_u64() >= Some(n as u64)).then_some(()))
    })
    .await
}

async fn writes(b: &Browser, space: &str, count: usize) -> Result<Vec<f64>> {
    Ok(samples(
        &page(
            b,
            &format!(
                "const out = []; for (let i = 0; i < {count}; i++) {{\
                   const t = performance.now();\
                   const r = await fetch('/_stead/v1/spaces/{space}/collections/items', {{method: 'POST', headers: {{'content-type': 'application/json'}}, body: JSON.stringify({{fields: {{n: -1, name: 'one more'}}}})}});\
                   await r.json(); if (r.status !== 201) throw new Error('write: HTTP ' + r.status);\
                   out.push(performance.now() - t); }} return out;"
            ),
        )
        .await?,
    ))
}

async fn queries(b: &Browser, space: &str, count: usize) -> Result<Vec<f64>> {
    Ok(samples(
        &page(
            b,
            &format!(
                "const out = []; for (let i = 0; i < {count}; i++) {{\
                   const t = performance.now();\
                   const r = await fetch('/_stead/v1/spaces/{space}/collections/items?limit=100');\
                   const j = await r.json(); if (j.records.length !== 100) throw new Error('query: ' + JSON.stringify(j).slice(0, 200));\
                   out.push(performance.now() - t); }} return out;"
            ),
        )
        .await?,
    ))
}

/// The first query after the worker is stopped: worker start, store open, query.
async fn wakes(b: &Browser, space: &str, count: usize) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..count {
        b.stop_workers().await?;
        let v = page(
            b,
            &format!(
                "const t = performance.now();\
                 const r = await fetch('/_stead/v1/spaces/{space}/collections/items?limit=1');\
                 const j = await r.json(); if (!j.records) throw new Error(JSON.stringify(j).slice(0, 200));\
                 return performance.now() - t;"
            ),
        )
        .await?;
        out.push(v.as_f64().context("a duration")?);
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let env = Env { dist: a.dist.clone(), server_bin: a.server.clone(), chromedriver: a.chromedriver.clone(), chromium: a.chromium.clone(), ..Env::browsers(PathBuf::new(), PathBuf::new())?.with_engine(Engine::Chromium) };
    // Issue 15's goal compares the wake at 100k records with the one at 1k: every size is
    // measured in one run, so the ratio comes from one browser.
    let (sizes, reps, wake_reps): (&[usize], usize, usize) = if a.quick { (&[1_000, 10_000], 20, 5) } else { (&[1_000, 10_000, 100_000], 100, 7) };
    let (small, big) = (sizes[0], sizes[sizes.len() - 1]);
    let server = Server::start(&env, &env.dist)?;
    let b = Browser::start(&env).await?;
    b.driver.goto(&server.url).await?;
    b.wait_app().await?;
    wait_for("the app's space", Duration::from_secs(30), || async {
        Ok(b.js("return localStorage.getItem('stead-space')").await?.as_str().map(str::to_owned))
    })
    .await?;

    let mut csv = String::from("storage,metric,sample_ms\n");
    let mut table: BTreeMap<(&str, String), (f64, f64, f64)> = BTreeMap::new();
    for storage in ["opfs", "indexeddb"] {
        let mut spaces = Vec::new();
        for &n in sizes {
            eprintln!("bench store: {storage}: filling {n} records");
            let s = make_space(&b, storage).await?;
            fill(&b, &s, n).await?;
            spaces.push(s);
        }
        let (s_small, s_big) = (&spaces[0], &spaces[spaces.len() - 1]);
        let mut measured = vec![("query 100 records".to_owned(), queries(&b, s_small, reps).await?)];
        for (&n, s) in sizes.iter().zip(&spaces) {
            measured.push((format!("wake + first query, {n:>6} records"), wakes(&b, s, wake_reps).await?));
        }
        measured.push((format!("write 1 record at {small} entries"), writes(&b, s_small, reps).await?));
        measured.push((format!("write 1 record at {big} entries"), writes(&b, s_big, reps).await?));
        for (metric, xs) in measured {
            for x in &xs {
                // Quoted: the wake metrics hold a comma.
                writeln!(csv, "{storage},\"{metric}\",{x:.3}")?;
            }
            let (lo, hi) = xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
            table.insert((storage, metric), (median(&xs), lo, hi));
        }
    }
    drop(server);
    b.quit().await?;

    println!("\nbench store (medians [min–max], ms; through the page API and the service worker)\n");
    println!("{:<36} {:>24} {:>24} {:>9}", "metric", "OPFS", "IndexedDB", "IDB/OPFS");
    let metrics: Vec<String> = table.keys().filter(|(s, _)| *s == "opfs").map(|(_, m)| m.clone()).collect();
    let cell = |(m, lo, hi): (f64, f64, f64)| format!("{m:.2} [{lo:.1}–{hi:.1}]");
    for m in &metrics {
        let (o, i) = (table[&("opfs", m.clone())], table[&("indexeddb", m.clone())]);
        println!("{m:<36} {:>24} {:>24} {:>9.2}", cell(o), cell(i), i.0 / o.0);
    }
    println!();
    for storage in ["opfs", "indexeddb"] {
        let get = |m: String| table[&(storage, m)].0;
        let wake = |n: usize| get(format!("wake + first query, {n:>6} records"));
        let ratios: Vec<String> = sizes[1..].iter().map(|&n| format!("{n} / {small} = {:.2}x", wake(n) / wake(small))).collect();
        println!(
            "{storage}: wake {}; append at {big} / {small} entries = {:.2}x",
            ratios.join(", "),
            get(format!("write 1 record at {big} entries")) / get(format!("write 1 record at {small} entries")),
        );
    }
    std::fs::write(&a.out, csv)?;
    println!("\nraw samples: {}", a.out.display());
    Ok(())
}
