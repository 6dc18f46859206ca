//! A TCP proxy whose browser-to-server direction can be slowed to a given rate, so a
//! test can catch a sync in the middle: the worker's frames reach the server one by one,
//! seconds apart, instead of all within a few milliseconds over loopback.
//!
//! It works below HTTP, so WebSockets pass through it like any request. Bytes the
//! browser sent that are still queued here when it closes the connection are dropped
//! with it, as on a slow link whose sender went away.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Throttle {
    /// `http://localhost:{port}/`: the origin pages should load.
    pub url: String,
    /// Bytes a second from the browser to the server; 0 lets everything through.
    rate: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Throttle {
    /// Starts a proxy to `127.0.0.1:{upstream_port}` on a free port, unthrottled.
    pub async fn start(upstream_port: u16) -> Result<Throttle> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let rate = Arc::new(AtomicU64::new(0));
        let shared = rate.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rate = shared.clone();
                tokio::spawn(async move {
                    // The server may be down: the browser then sees the connection close.
                    if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await {
                        pipe(client, server, rate).await;
                    }
                });
            }
        });
        Ok(Throttle { url: format!("http://localhost:{port}/"), rate, accept })
    }

    /// Limits the browser-to-server direction of every connection to `bytes_per_sec`
    /// (0: no limit), from now on.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::SeqCst);
    }
}

/// Copies both ways until either side closes, then closes both.
async fn pipe(client: TcpStream, server: TcpStream, rate: Arc<AtomicU64>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (queue, mut queued) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    // Reads the browser eagerly, so its close is seen at once rather than behind the
    // bytes still waiting for their turn.
    let read_client = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if queue.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let to_server = async move {
        while let Some(bytes) = queued.recv().await {
            for piece in bytes.chunks(4096) {
                let r = rate.load(Ordering::SeqCst);
                if r > 0 {
                    tokio::time::sleep(Duration::from_secs_f64(piece.len() as f64 / r as f64)).await;
                }
                if server_write.write_all(piece).await.is_err() {
                    return;
                }
            }
        }
    };
    let to_client = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    // The first to end ends all: a closed browser drops what it had queued.
    tokio::select! {
        _ = read_client => {}
        _ = to_server => {}
        _ = to_client => {}
    }
}
