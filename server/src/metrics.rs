//! Counters behind `/metrics`, written in the Prometheus text format.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the ack latency histogram buckets.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0];

/// Why a frame or connection was refused, as the `reason` label.
pub const REASONS: [&str; 9] =
    ["bad_frame", "too_large", "rate_limited", "busy", "too_slow", "unauthorized", "rejected_entry", "unexpected", "other"];

/// The per-space bounds a write can meet, as the `quota` label.
pub const QUOTAS: [&str; 4] = ["entries", "blob_bytes", "membership", "creation"];

#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) connections_total: AtomicU64,
    /// Open sync connections waiting with only their socket (see `socket::Socket`).
    pub(crate) connections_asleep: AtomicU64,
    pub(crate) entries_stored: AtomicU64,
    /// Write transactions committed (each one fsync on SQLite).
    pub(crate) commits: AtomicU64,
    pub(crate) frames_received: AtomicU64,
    pub(crate) blobs_stored: AtomicU64,
    rejected: [AtomicU64; REASONS.len()],
    quota: [AtomicU64; QUOTAS.len()],
    ack: Mutex<Histogram>,
}

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Metrics {
    pub(crate) fn reject(&self, reason: &str) {
        let i = REASONS.iter().position(|r| *r == reason).unwrap_or(REASONS.len() - 1);
        self.rejected[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a write refused by a per-space quota (or the space creation policy).
    pub(crate) fn reject_quota(&self, quota: &str) {
        if let Some(i) = QUOTAS.iter().position(|q| *q == quota) {
            self.quota[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a refusal by the sync error code sent for it.
    pub(crate) fn reject_code(&self, code: u16) {
        use stead_core::sync::code;
        self.reject(match code {
            code::BAD_FRAME | code::UNSUPPORTED_VERSION | code::WRONG_SPACE => "bad_frame",
            code::TOO_LARGE => "too_large",
            code::RATE_LIMITED => "rate_limited",
            code::BUSY => "busy",
            code::TOO_SLOW => "too_slow",
            code::UNAUTHORIZED => "unauthorized",
            code::REJECTED_ENTRY => "rejected_entry",
            code::UNEXPECTED => "unexpected",
            _ => "other",
        });
    }

    pub(crate) fn observe_ack(&self, latency: Duration) {
        let s = latency.as_secs_f64();
        let mut h = self.ack.lock().unwrap_or_else(|p| p.into_inner());
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += s;
        h.count += 1;
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, connections: usize, backend: &str) -> String {
        let mut o = String::new();
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(o, "# HELP stead_connections Open sync connections.\n# TYPE stead_connections gauge");
        let _ = writeln!(o, "stead_connections{{backend=\"{backend}\"}} {connections}");
        let _ = writeln!(o, "# HELP stead_connections_asleep Open sync connections idle with only their socket held.\n# TYPE stead_connections_asleep gauge");
        let _ = writeln!(o, "stead_connections_asleep {}", c(&self.connections_asleep));
        let _ = writeln!(o, "# HELP stead_connections_total Sync connections accepted.\n# TYPE stead_connections_total counter");
        let _ = writeln!(o, "stead_connections_total {}", c(&self.connections_total));
        let _ = writeln!(o, "# HELP stead_entries_stored_total Entries verified and committed.\n# TYPE stead_entries_stored_total counter");
        let _ = writeln!(o, "stead_entries_stored_total {}", c(&self.entries_stored));
        let _ = writeln!(o, "# HELP stead_commits_total Write transactions committed; entries stored over this is the entries each fsync covers.\n# TYPE stead_commits_total counter");
        let _ = writeln!(o, "stead_commits_total {}", c(&self.commits));
        let _ = writeln!(o, "# HELP stead_frames_received_total Sync frames received.\n# TYPE stead_frames_received_total counter");
        let _ = writeln!(o, "stead_frames_received_total {}", c(&self.frames_received));
        let _ = writeln!(o, "# HELP stead_blobs_stored_total Blobs stored.\n# TYPE stead_blobs_stored_total counter");
        let _ = writeln!(o, "stead_blobs_stored_total {}", c(&self.blobs_stored));
        let _ = writeln!(o, "# HELP stead_rejected_total Frames and connections refused, by reason.\n# TYPE stead_rejected_total counter");
        for (i, r) in REASONS.iter().enumerate() {
            let _ = writeln!(o, "stead_rejected_total{{reason=\"{r}\"}} {}", c(&self.rejected[i]));
        }
        let _ = writeln!(o, "# HELP stead_quota_refused_total Writes refused by a per-space quota, or space creations by the creation policy.\n# TYPE stead_quota_refused_total counter");
        for (i, q) in QUOTAS.iter().enumerate() {
            let _ = writeln!(o, "stead_quota_refused_total{{quota=\"{q}\"}} {}", c(&self.quota[i]));
        }
        let h = self.ack.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(o, "# HELP stead_ack_latency_seconds From receiving entries to acknowledging their commit.\n# TYPE stead_ack_latency_seconds histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(o, "stead_ack_latency_seconds_bucket{{le=\"{b}\"}} {}", h.counts[i]);
        }
        let _ = writeln!(o, "stead_ack_latency_seconds_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(o, "stead_ack_latency_seconds_sum {}", h.sum);
        let _ = writeln!(o, "stead_ack_latency_seconds_count {}", h.count);
        o
    }
}
