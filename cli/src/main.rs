//! `stead`: build and serve Stead apps.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Build and serve Stead apps")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write stead-bundle.json for an already built app folder.
    Manifest {
        /// The build folder (holds index.html).
        #[arg(default_value = "dist")]
        dist: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Manifest { dist } => {
            let m = stead_cli::build::write_bundle_manifest(&dist)
                .with_context(|| format!("cannot write the bundle manifest of {}", dist.display()))?;
            println!("version {} ({} files, {} bytes)", m.version, m.files.len(), m.total_size());
        }
    }
    Ok(())
}
