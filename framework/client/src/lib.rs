//! Stead's native client: stead-core and the file store over tokio and WebSockets.
//!
//! A [`Client`] is one device's replica of one space, kept in a folder (device identity,
//! space key, and a [`stead_store::FileStore`] log). An engine thread owns the replica
//! and keeps a WebSocket to a Stead server: it sends local entries, takes in remote ones,
//! reconnects with exponential backoff and jitter, and resumes from version vectors.
//! Tests, benchmarks, bots and scripts use it; `stead-client` is its command line.
//!
//! - [`device`]: a device's identity and the public card another member invites.
//! - [`Client`]: create or join a space, write, read, query, subscribe to changes.
//! - [`request`]: signed requests for the server's HTTP routes (membership, blobs).

pub mod device;
mod engine;
pub mod request;

pub use device::{Device, DeviceCard};
pub use engine::{Client, ClientConfig, Event, Status};

use stead_core::env::Random;

/// Everything that can go wrong in the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Core(#[from] stead_core::Error),
    #[error("store: {0}")]
    Store(#[from] stead_store::StoreError),
    #[error("i/o error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the server answered {status}: {body}")]
    Server { status: u16, body: String },
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("this device is not a member of space {0} (ask a member to invite its card)")]
    NotInvited(String),
    #[error("the invite was used already, cancelled or has expired (ask for a new one)")]
    InviteNotPending,
    #[error("the client engine has stopped")]
    Stopped,
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The OS's random source.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&mut self, dest: &mut [u8]) {
        getrandom::getrandom(dest).expect("the operating system provides random bytes");
    }
}
