//! The core's error type. Each protocol maps it to its wire codes in exactly one place
//! (`api::grpc` for gRPC status codes).

use crate::executor::ExecError;

/// Everything a request can fail with, classified the way Triton classifies it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InferError {
    /// Malformed or inconsistent request (INVALID_ARGUMENT / 400).
    #[error("{0}")]
    InvalidArgument(String),
    /// Unknown model or version (NOT_FOUND / 404).
    #[error("{0}")]
    NotFound(String),
    /// Not ready, draining, queue full or timed out in the queue (UNAVAILABLE / 503).
    #[error("{0}")]
    Unavailable(String),
    /// Not implemented by this server (UNIMPLEMENTED / 501).
    #[error("{0}")]
    Unsupported(String),
    /// The client went away before the request ran (CANCELLED).
    #[error("{0}")]
    Cancelled(String),
    /// The client's deadline passed before the request ran (DEADLINE_EXCEEDED / 504).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The engine failed on a batch (INTERNAL / 500).
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// Anything else that is the server's fault (INTERNAL / 500).
    #[error("{0}")]
    Internal(String),
}

impl InferError {
    /// Shorthand for the most common error.
    pub fn invalid(msg: impl Into<String>) -> Self {
        InferError::InvalidArgument(msg.into())
    }
}
