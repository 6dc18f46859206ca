//! The `stead-client` command line against a real `stead-server` process: create, invite,
//! join, put, get, query and watch across two devices.

mod common;

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

#[test]
fn two_devices_share_a_space_through_the_cli() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = common::Server::start(tmp.path())?;
    let (a, b, s) = (tmp.path().join("alice"), tmp.path().join("bob"), server.base.clone());
    {
        let space = run(&a, &s, &["create"])?;
        let card = run(&b, &s, &["device"])?;
        run(&a, &s, &["invite", &card])?;
        run(&b, &s, &["join", &space])?;
        run(&a, &s, &["put", "notes", "first", "title", "\"hello\""])?;
        run(&a, &s, &["put", "notes", "first", "stars", "3"])?;
        assert_eq!(run(&b, &s, &["get", "notes", "first", "title"])?, "\"hello\"");
        assert_eq!(run(&b, &s, &["get", "notes", "first"])?, r#"{"stars":3,"title":"hello"}"#);

        // query lists the collection; --eq goes through the index the schema declares.
        run(&a, &s, &["put", "notes", "second", "stars", "5"])?;
        run(&a, &s, &["put", "notes", "third", "stars", "3"])?;
        let all = run(&b, &s, &["query", "notes"])?;
        assert_eq!(all.lines().count(), 3, "query printed {all}");
        let schema = tmp.path().join("app.toml");
        std::fs::write(&schema, "version = 1\n[collections.notes.fields]\nstars = { type = \"int\" }\ntitle = { type = \"string\" }\n[[collections.notes.indexes]]\nfield = \"stars\"\n")?;
        let three = run(&b, &s, &["query", "notes", "--eq", "stars=3", "--schema", &schema.display().to_string()])?;
        let rows: Vec<serde_json::Value> = three.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
        assert_eq!(rows.len(), 2, "query --eq printed {three}");
        assert!(rows.iter().all(|r| r["fields"]["stars"] == 3));
        assert!(rows.iter().any(|r| r["fields"]["title"] == "hello"));
        assert_eq!(run(&b, &s, &["query", "notes", "--limit", "1"])?.lines().count(), 1);

        // watch prints a line when the other device writes.
        let mut watch = Command::new(env!("CARGO_BIN_EXE_stead-client"))
            .args(["--dir", &b.display().to_string(), "--server", &s, "watch"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // Write once watch is connected (it says so on stderr).
        let stderr = watch.stderr.take().context("stderr")?;
        let (connected_tx, connected) = std::sync::mpsc::channel();
        let said = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let heard = said.clone();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
                if line.trim() == "connected" {
                    let _ = connected_tx.send(());
                }
                heard.lock().expect("lock").push(line);
            }
        });
        // Generous on a loaded 2-core CI machine; what watch said shows why if it fails.
        connected
            .recv_timeout(Duration::from_secs(30))
            .with_context(|| format!("watch did not connect; it said: {:?}", said.lock().expect("lock")))?;
        run(&a, &s, &["put", "notes", "fourth", "title", "\"again\""])?;
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
    }
    drop(server);
    Ok(())
}
