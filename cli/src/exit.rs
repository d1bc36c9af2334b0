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
                // (an HTTP/2 error, as from a TLS server spoken to in plaintext,
                // which hyper reports as a reset or as a cancelled request).
                Code::Unknown | Code::Internal | Code::Cancelled if std::error::Error::source(s).is_some() => {
                    UNAVAILABLE
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn code(s: tonic::Status) -> u8 {
        code_of(&anyhow::Error::new(Remote(s)).context("a command"))
    }

    #[test]
    fn a_failed_connection_is_unavailable_whatever_code_hyper_gave_it() {
        for mut s in [
            tonic::Status::cancelled("operation was canceled"),
            tonic::Status::unknown("h2 protocol error"),
            tonic::Status::internal("connection reset"),
        ] {
            s.set_source(Arc::new(std::io::Error::other("the connection closed")));
            assert_eq!(code(s), UNAVAILABLE);
        }
        // The same codes answered by a server are failures, not outages.
        assert_eq!(code(tonic::Status::cancelled("job cancelled")), FAILURE);
        assert_eq!(code(tonic::Status::internal("bug")), FAILURE);
    }

    #[test]
    fn server_answers_map_to_their_codes() {
        assert_eq!(code(tonic::Status::not_found("ds")), NOT_FOUND);
        assert_eq!(code(tonic::Status::already_exists("ds")), EXISTS);
        assert_eq!(code(tonic::Status::invalid_argument("uri")), INVALID);
        assert_eq!(code(tonic::Status::unavailable("down")), UNAVAILABLE);
        assert_eq!(code(tonic::Status::unauthenticated("token")), DENIED);
        assert_eq!(code(tonic::Status::permission_denied("role")), DENIED);
    }
}
