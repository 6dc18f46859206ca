//! The one error type of stead-core: bad input and conflicts are data, never panics.

use crate::ids::{RecordId, ReplicaId, SpaceId};
use crate::state::Version;

/// Everything that can go wrong in the core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("unsupported {what} version {found} (this build reads {supported})")]
    UnsupportedVersion { what: &'static str, found: u32, supported: u32 },
    #[error("{what} of {size} bytes is too large (limit {limit})")]
    TooLarge { what: &'static str, size: usize, limit: usize },
    #[error("replica {replica} is not a member of the space at seq {seq}")]
    UnknownReplica { replica: ReplicaId, seq: u64 },
    #[error("replica {replica} may only read the space (entry {seq} refused)")]
    ReadOnly { replica: ReplicaId, seq: u64 },
    #[error("bad signature on entry {replica}/{seq}")]
    BadSignature { replica: ReplicaId, seq: u64 },
    #[error("gap in the log of {replica}: expected seq {expected}, got {got}")]
    Gap { replica: ReplicaId, expected: u64, got: u64 },
    #[error("fork in the log of {replica} at seq {seq}: two different signed entries")]
    Fork { replica: ReplicaId, seq: u64 },
    #[error("entry {replica}/{seq} does not chain to the previous entry")]
    BadPrev { replica: ReplicaId, seq: u64 },
    #[error("entry {replica}/{seq} has a clock not after its predecessor's")]
    HlcRegression { replica: ReplicaId, seq: u64 },
    #[error("entry belongs to space {found}, not {expected}")]
    WrongSpace { expected: SpaceId, found: SpaceId },
    #[error("clock drift: remote time is {ahead_ms} ms ahead of local time, beyond the bound of {max_ms} ms")]
    ClockDrift { ahead_ms: u64, max_ms: u64 },
    #[error("malformed {what}: {reason}")]
    Decode { what: &'static str, reason: &'static str },
    #[error("payload of entry {replica}/{seq} does not decrypt under the space key")]
    Decrypt { replica: ReplicaId, seq: u64 },
    #[error("{what} is of small order: a key exchange with it is not contributory")]
    WeakKey { what: &'static str },
    #[error("entry {replica}/{seq} is sealed under a space key this device does not hold yet")]
    MissingKey { replica: ReplicaId, seq: u64 },
    #[error("this device does not hold the space's current key")]
    NoCurrentKey,
    #[error("invalid membership event {index}: {reason}")]
    Membership { index: usize, reason: &'static str },
    #[error("version conflict on {collection}/{record}: expected {expected}, current is {current}")]
    /// The versions are boxed to keep `Error`, and every `Result` of the crate, small.
    Conflict { collection: String, record: RecordId, expected: Box<Version>, current: Box<Version> },
    #[error("schema error: {0}")]
    Schema(String),
    #[error("invalid value for {collection}.{field}: {value} ({reason})")]
    Validation { collection: String, field: String, value: String, reason: String },
    #[error("protocol error {code}: {message}")]
    Protocol { code: u16, message: String },
    #[error("storage error: {0}")]
    Storage(String),
    /// The store holds `replica`'s entries from `seq` on but has not read them into
    /// memory (an adapter that opens with the log's tail only): load them and ask again.
    #[error("entries of {replica} from seq {seq} are stored but not loaded")]
    NotLoaded { replica: ReplicaId, seq: u64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
