//! Typed errors of the core layer. Each variant names what was wrong; callers map
//! them once at their boundary (gRPC status, errno, exit code).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CoreError {
    #[error("invalid URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
    #[error("unknown scheme {scheme:?} in {uri:?} (supported: s3, gs, oss, azblob, hdfs, webhdfs, file, http, https)")]
    UnknownScheme { uri: String, scheme: String },
    #[error("missing option {option:?} for {scheme} store {uri:?}: {hint}")]
    MissingOption { uri: String, scheme: &'static str, option: &'static str, hint: &'static str },
    #[error("invalid option {key:?}: {reason}")]
    InvalidOption { key: String, reason: String },
    #[error("invalid dataset name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("invalid size {input:?}: {reason}")]
    InvalidSize { input: String, reason: String },
    #[error("store {uri}: {op} {path:?} failed: {source}")]
    #[cfg(feature = "store")]
    Store {
        uri: String,
        op: &'static str,
        path: String,
        #[source]
        source: Box<opendal::Error>,
    },
    #[error("store {uri}: {path:?} changed since the dataset was last synced ({detail}); run `shoal dataset sync`")]
    Changed { uri: String, path: String, detail: String },
    #[error("store {uri}: {path:?} changed while being read (expected {expected} bytes, got {got})")]
    ShortRead { uri: String, path: String, expected: u64, got: u64 },
}

/// An error and its sources as one message (`what: why: root cause`), skipping
/// sources whose text the message already contains.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        src = s.source();
    }
    msg
}

impl CoreError {
    /// The store said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        #[cfg(feature = "store")]
        if let CoreError::Store { source, .. } = self {
            return source.kind() == opendal::ErrorKind::NotFound;
        }
        false
    }

    /// The gRPC code of this error, the same at every server: a bad request is
    /// `INVALID_ARGUMENT`, a missing object `NOT_FOUND`, an object that changed
    /// since its listing `FAILED_PRECONDITION` (re-sync), a failing store
    /// `UNAVAILABLE`.
    pub fn code(&self) -> tonic::Code {
        match self {
            c if c.is_invalid_input() => tonic::Code::InvalidArgument,
            c if c.is_not_found() => tonic::Code::NotFound,
            CoreError::Changed { .. } => tonic::Code::FailedPrecondition,
            _ => tonic::Code::Unavailable,
        }
    }

    /// The request itself was wrong (as opposed to the store failing).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            CoreError::InvalidUri { .. }
                | CoreError::UnknownScheme { .. }
                | CoreError::MissingOption { .. }
                | CoreError::InvalidOption { .. }
                | CoreError::InvalidName { .. }
                | CoreError::InvalidPath { .. }
                | CoreError::InvalidSize { .. }
        )
    }
}
