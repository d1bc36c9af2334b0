//! Exit codes scripts can trust, mapped once from the error that ended a command.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other failure |
//! | 2 | invalid arguments or input (also clap's usage errors) |
//! | 3 | not found (dataset, path) |
//! | 4 | already exists |
//! | 5 | unavailable: master, worker or store unreachable |
//! | 6 | denied: no or a wrong credential, or one without the role or namespace |

use tonic::Code;

pub const FAILURE: u8 = 1;
pub const INVALID: u8 = 2;
pub const NOT_FOUND: u8 = 3;
pub const EXISTS: u8 = 4;
pub const UNAVAILABLE: u8 = 5;
/// No credential, a wrong one, or one without the right role or namespace.
pub const DENIED: u8 = 6;

/// A failed call to a shoal server, shown as the server's message.
#[derive(Debug)]
pub struct Remote(pub tonic::Status);

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.message())
    }
}

impl std::error::Error for Remote {}

impl From<tonic::Status> for Remote {
    fn from(s: tonic::Status) -> Self {
        Remote(s)
    }
}

/// The exit code for an error chain: the first gRPC status in it decides.
pub fn code_of(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<tonic::Status>().or(cause.downcast_ref::<Remote>().map(|r| &r.0)) {
            return match s.code() {
                Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => INVALID,
                Code::NotFound => NOT_FOUND,
                Code::AlreadyExists => EXISTS,
                Code::Unavailable | Code::DeadlineExceeded => UNAVAILABLE,
                // Not an answer from a server: the connection itself failed
                // (an HTTP/2 error, as from a TLS server spoken to in plaintext).
                Code::Unknown | Code::Internal if std::error::Error::source(s).is_some() => UNAVAILABLE,
                Code::PermissionDenied | Code::Unauthenticated => DENIED,
                _ => FAILURE,
            };
        }
        if cause.downcast_ref::<tonic::transport::Error>().is_some() {
            return UNAVAILABLE;
        }
        if cause.downcast_ref::<shoal_core::CoreError>().is_some_and(|c| c.is_invalid_input()) {
            return INVALID;
        }
    }
    FAILURE
}
