//! Benchmarks of Stead against its anchors, run by `cargo xtask bench <name>`.

fn main() -> anyhow::Result<()> {
    let which = std::env::args().nth(1).unwrap_or_default();
    anyhow::bail!("unknown benchmark {which:?}")
}
