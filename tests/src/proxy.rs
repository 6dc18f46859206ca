//! A proxy between the browser and the server that logs the worker's downloads and can
//! cut them off, to test what a flaky network does to an install.
//!
//! The worker marks its own requests with a `stead-fetch: install` header; the page's
//! requests pass untouched and unlogged. A batch download (`stead-files`) is logged as
//! the files it names, read against the manifest the worker fetched through the proxy.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderName, StatusCode},
    response::Response,
};
use stead_core::bundle::{BundleManifest, FILES_BATCH, MANIFEST_FILE, parse_batch_query};

#[derive(Debug, Default)]
struct Shared {
    /// Worker downloads of bundle files: (path, delivered), a batch as each of its files.
    downloads: Vec<(String, bool)>,
    /// Worker requests for files delivered, a batch counting once.
    requests_delivered: usize,
    /// Batch requests delivered.
    batches_delivered: usize,
    /// After this many delivered requests, the connection is dropped mid-response.
    cut_after: Option<usize>,
    /// Answer batch requests 404, as a plain static host does.
    refuse_batches: bool,
    /// The manifests the worker fetched, to read batch requests against.
    manifests: Vec<BundleManifest>,
}

impl Shared {
    /// The bundle paths a worker request covers: one file, or the files a batch names.
    fn paths(&self, path: &str, query: Option<&str>) -> Vec<String> {
        if path.trim_start_matches('/') != FILES_BATCH {
            return vec![path.to_owned()];
        }
        for m in &self.manifests {
            if let Ok((version, indices)) = parse_batch_query(query.unwrap_or(""), m.files.len())
                && version == m.version
            {
                return indices.into_iter().map(|i| format!("/{}", m.files[i].path)).collect();
            }
        }
        vec![format!("{path}?{}", query.unwrap_or(""))]
    }
}

#[derive(Clone)]
struct Ctx {
    upstream: String,
    client: reqwest::Client,
    shared: Arc<Mutex<Shared>>,
}

pub struct Proxy {
    pub url: String,
    shared: Arc<Mutex<Shared>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Proxy {
    /// Starts a proxy to `upstream` (a URL ending in `/`) on a free port.
    pub async fn start(upstream: &str) -> Result<Proxy> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let ctx = Ctx { upstream: upstream.trim_end_matches('/').to_owned(), client: reqwest::Client::new(), shared: shared.clone() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let app = axum::Router::new().fallback(forward).with_state(ctx);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Proxy { url: format!("http://localhost:{port}/"), shared, stop: Some(stop) })
    }

    /// Drop the connection of every worker download after `n` requests have been
    /// delivered; `None` lets everything through again.
    pub fn cut_after(&self, n: Option<usize>) {
        self.shared.lock().expect("lock").cut_after = n;
    }

    /// Answer batch downloads 404 (`true`), as a static host without them does.
    pub fn refuse_batches(&self, refuse: bool) {
        self.shared.lock().expect("lock").refuse_batches = refuse;
    }

    /// Batch downloads delivered so far.
    pub fn batches_delivered(&self) -> usize {
        self.shared.lock().expect("lock").batches_delivered
    }

    /// The worker's downloads so far, as (path, delivered).
    pub fn downloads(&self) -> Vec<(String, bool)> {
        self.shared.lock().expect("lock").downloads.clone()
    }

    /// The worker's downloads so far, as (path, delivered), and forget them.
    pub fn take_downloads(&self) -> Vec<(String, bool)> {
        std::mem::take(&mut self.shared.lock().expect("lock").downloads)
    }
}

async fn forward(State(ctx): State<Ctx>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| path.clone());
    let from_worker = req.headers().get("stead-fetch").is_some();
    let is_manifest = path.trim_start_matches('/') == MANIFEST_FILE;
    let is_file = from_worker && !is_manifest;
    let is_batch = path.trim_start_matches('/') == FILES_BATCH;
    if is_batch && ctx.shared.lock().expect("lock").refuse_batches {
        return error(StatusCode::NOT_FOUND, "no batches here".into());
    }
    let cut = is_file && {
        let mut s = ctx.shared.lock().expect("lock");
        let cut = s.cut_after.is_some_and(|n| s.requests_delivered >= n);
        if !cut {
            s.requests_delivered += 1;
            s.batches_delivered += usize::from(is_batch);
        }
        let paths = s.paths(&path, req.uri().query());
        s.downloads.extend(paths.into_iter().map(|p| (p, !cut)));
        cut
    };

    if cut {
        // Headers promise a body, then the connection dies before its first byte. The
        // request is not forwarded: a 304 from upstream would have no body to cut.
        let mut out = Response::new(Body::from_stream(futures::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("connection cut by the test proxy"))
        })));
        out.headers_mut().insert("content-length", axum::http::HeaderValue::from_static("4096"));
        return out;
    }
    let mut upstream = ctx.client.request(req.method().clone(), format!("{}{path_and_query}", ctx.upstream));
    // The Host goes through as the browser sent it: the server tells apps apart by it
    // (`{app}.localhost:{proxy port}`), and its links then point back at the proxy.
    for (name, value) in req.headers() {
        if name != "connection" {
            upstream = upstream.header(name, value);
        }
    }
    let resp = match upstream.send().await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    if from_worker && is_manifest && let Ok(m) = BundleManifest::parse(&body) {
        ctx.shared.lock().expect("lock").manifests.push(m);
    }
    let body = Body::from(body);
    let mut out = Response::new(body);
    *out.status_mut() = status;
    for (name, value) in &headers {
        let skip = [HeaderName::from_static("connection"), HeaderName::from_static("transfer-encoding")];
        if !skip.contains(name) {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

fn error(status: StatusCode, message: String) -> Response {
    let mut r = Response::new(Body::from(message));
    *r.status_mut() = status;
    r
}
