//! The `stead-client` command line against a real server on a real socket: create, invite,
//! join, put, get, and watch across two devices.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

fn run(dir: &std::path::Path, server: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_stead-client"))
        .args(["--dir", &dir.display().to_string(), "--server", server, "--timeout", "20"])
        .args(args)
        .output()
        .context("running stead-client")?;
    anyhow::ensure!(out.status.success(), "stead-client {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_share_a_space_through_the_cli() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let backend = stead_server::storage::open(&tmp.path().join("db.sqlite3").display().to_string(), [1; 16])?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = format!("http://{}", listener.local_addr()?);
    let config = stead_server::Config { bundle_dir: tmp.path().to_path_buf(), sync: Some(stead_server::Service::new(backend, Default::default())), retired: false };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(stead_server::serve(listener, config, async {
        let _ = stopped.await;
    }));

    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    let (a, b, s) = (alice.clone(), bob.clone(), server.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let space = run(&a, &s, &["create"])?;
        let card = run(&b, &s, &["device"])?;
        run(&a, &s, &["invite", &card])?;
        run(&b, &s, &["join", &space])?;
        run(&a, &s, &["put", "notes", "first", "title", "\"hello\""])?;
        run(&a, &s, &["put", "notes", "first", "stars", "3"])?;
        assert_eq!(run(&b, &s, &["get", "notes", "first", "title"])?, "\"hello\"");
        assert_eq!(run(&b, &s, &["get", "notes", "first"])?, r#"{"stars":3,"title":"hello"}"#);

        // watch prints a line when the other device writes.
        let mut watch = Command::new(env!("CARGO_BIN_EXE_stead-client"))
            .args(["--dir", &b.display().to_string(), "--server", &s, "watch"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(500));
        run(&a, &s, &["put", "notes", "second", "title", "\"again\""])?;
        let mut line = String::new();
        let stdout = watch.stdout.take().context("stdout")?;
        let reader = std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(stdout);
            std::io::BufRead::read_line(&mut r, &mut line).map(|_| line)
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !reader.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = watch.kill();
        let _ = watch.wait();
        let line = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        assert!(line.contains("\"changed\""), "watch printed {line:?}");
        Ok(())
    })
    .await??;

    let _ = stop.send(());
    serving.await??;
    Ok(())
}
