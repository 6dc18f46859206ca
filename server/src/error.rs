//! The one error type of stead-server and its mapping to HTTP responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Everything that can go wrong in the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("unsupported database url {0:?} (use a file path or postgres://...)")]
    BadDatabaseUrl(String),
    #[error("{0}")]
    Core(#[from] stead_core::Error),
    #[error("unknown space {0}")]
    UnknownSpace(String),
    #[error("the membership log does not extend the stored one")]
    NotAnExtension,
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("the space's quota of {limit} {what} is full")]
    QuotaFull { what: &'static str, limit: u64 },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("{what} of {size} bytes is above the limit of {limit}")]
    TooLarge { what: &'static str, size: usize, limit: usize },
    #[error("not found")]
    NotFound,
    /// An invite that has expired, or one set to outlive the server's bound.
    #[error("{0}")]
    Gone(String),
    #[error("range not satisfiable")]
    BadRange { size: usize },
    #[error("storage task failed: {0}")]
    Task(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for stead_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Core(e) => e,
            e => stead_core::Error::Storage(e.to_string()),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::UnknownSpace(_) | Error::NotFound => StatusCode::NOT_FOUND,
            Error::Gone(_) => StatusCode::GONE,
            Error::NotAnExtension => StatusCode::CONFLICT,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::QuotaFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
            Error::BadRequest(_) | Error::Core(_) => StatusCode::BAD_REQUEST,
            Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::BadRange { size } => {
                let mut r = (StatusCode::RANGE_NOT_SATISFIABLE, self.to_string()).into_response();
                if let Ok(v) = format!("bytes */{size}").parse() {
                    r.headers_mut().insert(axum::http::header::CONTENT_RANGE, v);
                }
                return r;
            }
            _ => {
                tracing::error!("{self}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, self.to_string()).into_response()
    }
}
