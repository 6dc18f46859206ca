//! `stead`: make, build and serve Stead apps.
//!
//! Every error reaches the user as a diagnostic (what, where, what to do); a panic would
//! be a bug in stead, and is reported as one rather than as a backtrace.

#![deny(clippy::unwrap_used, clippy::expect_used)]
// A `Problem` carries the file's text for its snippet; it is made once, when a command
// fails, so its size costs nothing worth boxing.
#![allow(clippy::result_large_err)]

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use clap::{Parser, Subcommand, ValueEnum};
use stead_cli::{
    app::App,
    diag::Problem,
    pipeline::{self, BuildOptions},
    publish,
    serve::{self, ServeOptions},
    template::{self, NewApp},
    tools,
};

#[derive(Parser)]
#[command(version, about = "Make, build and serve Stead apps: offline-first PWAs in Rust")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a new app in a new folder NAME.
    New {
        /// The app's name: lower-case letters, digits and `-` (`field-notes`).
        name: String,
        #[arg(long, value_enum, default_value_t = Variant::Todo)]
        template: Variant,
        /// Where to put the app (default: ./NAME).
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Build the app here (or above): app, service worker, manifest, icons, bundle.
    Build {
        /// An optimised build (slower to make, smaller to ship).
        #[arg(long)]
        release: bool,
        /// The output folder (default: dist in the app's folder).
        #[arg(long)]
        dist: Option<PathBuf>,
        /// The app's folder (default: the one holding Stead.toml here or above).
        #[arg(long)]
        app: Option<PathBuf>,
        /// Show the tools' own output.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Build, serve with a local sync server, rebuild on every change and reload open pages.
    Dev {
        /// Port to listen on (default: Stead.toml's `server.dev`, else 8080); 0 picks one.
        #[arg(long)]
        port: Option<u16>,
    },
    /// Serve a built app with a local sync server (SQLite).
    Serve {
        /// The built folder (default: dist of the app here, or ./dist).
        dir: Option<PathBuf>,
        /// Port to listen on (default: Stead.toml's `server.dev`, else 8080); 0 picks one.
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, default_value = "127.0.0.1")]
        host: IpAddr,
        /// Sync storage: a SQLite file (default: .stead/stead.sqlite3 in the app's folder)
        /// or a `postgres://` URL.
        #[arg(long)]
        database: Option<String>,
        /// Who may create spaces: `open` (anyone: right for a server on your machine)
        /// or `closed`.
        #[arg(long, value_enum, default_value_t = Spaces::Open)]
        spaces: Spaces,
    },
    /// Publish the built app (run `stead build` first) to a Stead server, at its own
    /// address `NAME.<server's apps domain>`.
    Publish {
        #[command(flatten)]
        on: On,
        /// The built folder (default: dist in the app's folder).
        #[arg(long)]
        dist: Option<PathBuf>,
        /// A file holding the operator's publish token, for a server that asks one for a
        /// new app (or set STEAD_PUBLISH_TOKEN).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// List the app's versions on a server, newest first.
    Versions {
        #[command(flatten)]
        on: On,
    },
    /// Make an earlier version of the app current again.
    Rollback {
        /// The version: 8 or more of its first hex digits (see `stead versions`).
        version: String,
        #[command(flatten)]
        on: On,
    },
    /// Write stead-bundle.json for an already built app folder.
    Manifest {
        /// The build folder (holds index.html).
        #[arg(default_value = "dist")]
        dist: PathBuf,
    },
}

/// Which server, and which app on it.
#[derive(clap::Args)]
struct On {
    /// The Stead server (default: STEAD_SERVER, else http://localhost:8080).
    #[arg(long)]
    server: Option<String>,
    /// The app's name on the server, a DNS label (default: the app folder's name).
    #[arg(long)]
    name: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// A list synced between devices.
    Todo,
    /// A page with Stead's frame and an empty space, ready for data.
    Blank,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Spaces {
    Open,
    Closed,
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("stead hit a bug: {info}\nPlease report it, with the command you ran.");
    }));
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            problem.report();
            ExitCode::FAILURE
        }
    }
}

/// The server's own logs: warnings unless RUST_LOG asks for more.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .try_init();
}

fn cwd() -> Result<PathBuf, Problem> {
    std::env::current_dir().map_err(|e| Problem::new(format!("cannot read the current folder: {e}")))
}

fn run(cmd: Cmd) -> Result<(), Problem> {
    match cmd {
        Cmd::New { name, template, path } => new(&name, template, path),
        Cmd::Build { release, dist, app, verbose } => {
            let app = match app {
                Some(dir) => App::load(&dir)?,
                None => App::find(&cwd()?)?,
            };
            let dist = match dist {
                Some(d) => Some(cwd()?.join(d)),
                None => None,
            };
            let built = pipeline::build_app(&app, &BuildOptions { release, dist, verbose, dev: None })?;
            eprintln!();
            eprint!("{}", pipeline::table(&built.rows));
            for w in &built.warnings {
                eprintln!("  warning: {w}");
            }
            let shown = shown_path(&built.dist, &cwd()?);
            let serve = if built.dist == app.dir.join("dist") { "stead serve".to_owned() } else { format!("stead serve {shown}") };
            eprintln!("\nBuilt {} in {:.1} s into {shown}. Serve it: {serve}", app.config.name, built.elapsed.as_secs_f64());
            Ok(())
        }
        Cmd::Dev { port } => {
            let app = App::find(&cwd()?)?;
            init_logs();
            stead_cli::dev::run(app, port)
        }
        Cmd::Serve { dir, port, host, database, spaces } => serve_cmd(dir, port, host, database, spaces),
        Cmd::Publish { on, dist, token_file } => publish_cmd(on, dist, token_file),
        Cmd::Versions { on } => versions_cmd(on),
        Cmd::Rollback { version, on } => rollback_cmd(on, &version),
        Cmd::Manifest { dist } => {
            let m = stead_cli::build::write_bundle_manifest(&dist)
                .map_err(|e| Problem::new(format!("cannot write the bundle manifest of {}: {e}", dist.display())))?;
            println!("version {} ({} files, {} bytes)", m.version, m.files.len(), m.total_size());
            Ok(())
        }
    }
}

/// `path` relative to `cwd` when it is under it (and `cwd` is not `/`), else as is.
fn shown_path(path: &Path, cwd: &Path) -> String {
    match path.strip_prefix(cwd) {
        Ok(rel) if cwd.parent().is_some() && !rel.as_os_str().is_empty() => rel.display().to_string(),
        _ => path.display().to_string(),
    }
}

fn new(name: &str, variant: Variant, path: Option<PathBuf>) -> Result<(), Problem> {
    let started = Instant::now();
    let root = tools::stead_root().map_err(|e| {
        let hint = e.hint(Path::new("."));
        Problem::new(e.to_string()).help(hint)
    })?;
    let dir = match path {
        Some(p) => p,
        None => cwd()?.join(name),
    };
    let app = NewApp {
        name: name.to_owned(),
        variant: match variant {
            Variant::Todo => "todo",
            Variant::Blank => "blank",
        }
        .to_owned(),
        dir: dir.clone(),
        stead_root: root,
        id: uuid::Uuid::now_v7().to_string(),
    };
    let written = template::write(&app).map_err(|e| Problem::new(e.to_string()).help(e.hint()))?;
    let shown = shown_path(&dir, &cwd()?);
    println!(
        "Made {} in {shown} ({} template, {} files, {} ms). Next:\n\n  cd {shown}\n  stead build\n  stead serve\n",
        template::title(name),
        app.variant,
        written.len(),
        started.elapsed().as_millis()
    );
    Ok(())
}

fn serve_cmd(dir: Option<PathBuf>, port: Option<u16>, host: IpAddr, database: Option<String>, spaces: Spaces) -> Result<(), Problem> {
    let here = cwd()?;
    let app = App::find(&here).ok();
    let dir = match (dir, &app) {
        (Some(d), _) => d,
        (None, Some(app)) => app.dir.join("dist"),
        (None, None) => here.join("dist"),
    };
    serve::check_dir(&dir)?;
    let port = port.or_else(|| app.as_ref().and_then(|a| a.config.server.dev_port())).unwrap_or(8080);
    let data_dir = app.as_ref().map(|a| a.dir.clone()).or_else(|| dir.parent().map(Path::to_path_buf)).unwrap_or(here);
    let database = database.unwrap_or_else(|| data_dir.join(".stead/stead.sqlite3").display().to_string());
    let opts = ServeOptions { dir: dir.clone(), host, port, database: database.clone(), open_spaces: spaces == Spaces::Open };

    init_logs();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Problem::new(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let running = serve::start(&opts).await?;
        // The first line on stdout is the URL, for scripts.
        println!("{}", running.url());
        eprintln!("Serving {} with sync (data: {database}, spaces: {}). Ctrl-C stops.", dir.display(), if opts.open_spaces { "open" } else { "closed" });
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("stopping");
        running.stop().await
    })
}

/// The server, the app (when run in one) and the target they make.
fn target(on: On, token: Option<String>) -> Result<(publish::Target, Option<App>), Problem> {
    let app = App::find(&cwd()?).ok();
    let server = on.server.or_else(|| std::env::var("STEAD_SERVER").ok().filter(|s| !s.is_empty())).unwrap_or_else(|| "http://localhost:8080".into());
    Ok((publish::Target::new(&server, on.name.as_deref(), app.as_ref(), token)?, app))
}

fn runtime() -> Result<tokio::runtime::Runtime, Problem> {
    tokio::runtime::Runtime::new().map_err(|e| Problem::new(format!("cannot start the async runtime: {e}")))
}

fn publish_cmd(on: On, dist: Option<PathBuf>, token_file: Option<PathBuf>) -> Result<(), Problem> {
    let token = match token_file {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .map_err(|e| Problem::new(format!("cannot read the token file {}: {e}", path.display())))?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("STEAD_PUBLISH_TOKEN").ok().filter(|t| !t.trim().is_empty()),
    };
    let (target, app) = target(on, token)?;
    let dist = match (dist, &app) {
        (Some(d), _) => cwd()?.join(d),
        (None, Some(app)) => app.dir.join("dist"),
        (None, None) => cwd()?.join("dist"),
    };
    let name = target.name.clone();
    let server = target.server.clone();
    let done = runtime()?.block_on(publish::publish(target, &dist, app.as_ref().map(|a| a.dir.as_path())))?;
    if done.key_created {
        eprintln!("Made {name}'s publishing key: {} (keep a backup: only this key can publish {name} again)", done.key_path.display());
    }
    eprintln!(
        "Published {name} {} to {server} in {} ms ({} files uploaded, {} bytes; app id {}).",
        publish::short(&done.version),
        done.elapsed.as_millis(),
        done.uploaded_files,
        done.uploaded_bytes,
        done.app_id
    );
    // The URL alone on stdout, for scripts.
    println!("{}", done.url);
    Ok(())
}

fn versions_cmd(on: On) -> Result<(), Problem> {
    let (target, _) = target(on, None)?;
    let listed = runtime()?.block_on(publish::versions(target))?;
    println!("{} (app id {})", listed.app, listed.app_id);
    for v in &listed.versions {
        let mark = if v.current { "*" } else { " " };
        let age = stead_core::env::Clock::now_ms(&stead_core::env::SystemClock).saturating_sub(v.published_ms) / 1000;
        println!("{mark} {}  {:>5} files  {:>10} bytes  {}", publish::short(&v.version), v.files, v.bytes, ago(age));
    }
    Ok(())
}

fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86400 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}

fn rollback_cmd(on: On, version: &str) -> Result<(), Problem> {
    let (target, app) = target(on, None)?;
    let name = target.name.clone();
    let moved = runtime()?.block_on(publish::rollback(target, version, app.as_ref().map(|a| a.dir.as_path())))?;
    eprintln!("{name} is back at {}.", publish::short(&moved.current));
    Ok(())
}
