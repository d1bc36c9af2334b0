//! The worker's error type and its one mapping to gRPC status codes.

use shoal_core::CoreError;
use thiserror::Error;
use tonic::{Code, Status};

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("invalid block request: {0}")]
    InvalidRequest(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("block reference for {0:?} is not signed by this cluster's master (read the namespace from the master)")]
    Unsigned(String),
    #[error("this worker has not registered with its master yet: it cannot verify block references")]
    NotRegistered,
    #[error("dataset {0:?} is unknown to the master")]
    DatasetGone(String),
    #[error("master unreachable: {0}")]
    Master(String),
    #[error(transparent)]
    Store(#[from] CoreError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl From<WorkerError> for Status {
    fn from(e: WorkerError) -> Status {
        let code = match &e {
            WorkerError::InvalidRequest(_) => Code::InvalidArgument,
            WorkerError::Config(_) => Code::FailedPrecondition,
            WorkerError::DatasetGone(_) => Code::NotFound,
            WorkerError::Unsigned(_) => Code::PermissionDenied,
            WorkerError::NotRegistered => Code::Unavailable,
            WorkerError::Store(c) => c.code(),
            WorkerError::Master(_) => Code::Unavailable,
            WorkerError::Io(..) | WorkerError::Transport(_) => Code::Internal,
        };
        Status::new(code, shoal_core::error::chain(&e))
    }
}
