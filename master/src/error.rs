//! The master's error type and its one mapping to gRPC status codes.

use shoal_core::CoreError;
use thiserror::Error;
use tonic::{Code, Status};

#[derive(Debug, Error)]
pub enum MasterError {
    #[error("dataset {0:?} not found")]
    DatasetNotFound(String),
    #[error("dataset {0:?} already exists")]
    DatasetExists(String),
    #[error("{what} not found in dataset {dataset:?}")]
    EntryNotFound { dataset: String, what: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("load job {0:?} not found")]
    JobNotFound(String),
    #[error("worker {0:?} is not registered")]
    UnknownWorker(String),
    #[error("a sync of dataset {0:?} is already running")]
    SyncRunning(String),
    #[error("local directory {0:?} is not under a root this master allows (start it with --allow-local-root DIR)")]
    LocalRootRefused(String),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("metadata store: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("master not ready: {0}")]
    NotReady(&'static str),
    #[error("this master does not lead; leader: {}", .0.as_deref().unwrap_or("none elected yet"))]
    NotLeader(Option<String>),
    #[error("replication: {0}")]
    Replication(String),
    #[error("damaged master snapshot: {0}")]
    BadSnapshot(String),
    #[error("corrupt metadata record {key}: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: prost::DecodeError,
    },
}

impl From<MasterError> for Status {
    fn from(e: MasterError) -> Status {
        let code = match &e {
            MasterError::DatasetNotFound(_) | MasterError::EntryNotFound { .. } | MasterError::JobNotFound(_) => {
                Code::NotFound
            }
            MasterError::DatasetExists(_) => Code::AlreadyExists,
            MasterError::InvalidArgument(_) => Code::InvalidArgument,
            MasterError::UnknownWorker(_) => Code::NotFound,
            MasterError::SyncRunning(_) => Code::Aborted,
            MasterError::LocalRootRefused(_) => Code::PermissionDenied,
            MasterError::Core(c) => c.code(),
            MasterError::Db(_) => Code::Internal,
            MasterError::Corrupt { .. } | MasterError::BadSnapshot(_) => Code::DataLoss,
            MasterError::NotReady(_) | MasterError::Replication(_) => Code::Unavailable,
            MasterError::NotLeader(leader) => return not_leader(leader.as_deref(), &e.to_string()),
        };
        Status::new(code, shoal_core::error::chain(&e))
    }
}

/// The refusal of a master that does not lead: `UNAVAILABLE`, naming the
/// leader (if one is known) in the header clients follow
/// (`shoal_proto::leader`).
pub fn not_leader(leader: Option<&str>, message: &str) -> Status {
    let mut md = tonic::metadata::MetadataMap::new();
    if let Ok(v) = leader.unwrap_or_default().parse() {
        md.insert(shoal_proto::leader::LEADER_HEADER, v);
    }
    Status::with_metadata(Code::Unavailable, message, md)
}

pub type Result<T, E = MasterError> = std::result::Result<T, E>;

/// Errors of starting and running the server (not of single requests).
#[derive(Debug, Error)]
pub enum ServeError {
    #[error("cannot create data directory {0:?}: {1}")]
    Io(std::path::PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Master(#[from] MasterError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Auth(#[from] shoal_proto::auth::AuthError),
}
