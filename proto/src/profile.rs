//! How shoal's gRPC clients connect and its servers accept: one profile per kind
//! of call (connect and call timeouts, TCP_NODELAY, HTTP/2 keepalive), so every
//! call site of a kind behaves the same and a timeout is changed in one place.
//! Addresses and TLS come from [`crate::auth::endpoint`].

use std::time::Duration;

use tonic::transport::Endpoint;

/// What a client endpoint is set up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// Give up connecting after this long.
    pub connect: Duration,
    /// Give up on a call (until its response headers) after this long; `None`
    /// for calls that set their own deadline or stream for as long as they need.
    pub timeout: Option<Duration>,
    /// HTTP/2 pings this often, and the connection is dropped when one is not
    /// answered within the second duration: a peer that vanished without a FIN
    /// or RST fails its calls at once instead of after the call timeout.
    pub keepalive: Option<(Duration, Duration)>,
}

impl Profile {
    /// Control calls to the master (CLI, CSI plugin, scheduler, worker
    /// heartbeats, a mount's namespace and locations): quick answers.
    pub const CONTROL: Profile =
        Profile { connect: Duration::from_secs(5), timeout: Some(Duration::from_secs(30)), keepalive: None };

    /// Calls that may do a store's whole work before answering: the operator's
    /// create-and-list, a CLI command that waits for a listing.
    pub const ADMIN: Profile = Profile { connect: Duration::from_secs(5), timeout: None, keepalive: None };

    /// Block reads and copies between mounts and workers, and between workers.
    /// Each call sets its deadline ([`Profile::with_timeout`]); a host that
    /// vanished fails its pings within ~3 s and every read waiting on it moves on.
    pub const DATA: Profile = Profile {
        connect: Duration::from_secs(2),
        timeout: None,
        keepalive: Some((Duration::from_secs(1), Duration::from_secs(2))),
    };

    /// The master's calls to workers (load jobs' block copies, frees): a block
    /// copy is at most a few hundred MiB, so two minutes bound a hung worker.
    pub const MASTER_TO_WORKER: Profile =
        Profile { connect: Duration::from_secs(2), timeout: Some(Duration::from_secs(120)), keepalive: None };

    /// Raft between masters: deadlines per request (the election timeout).
    pub const RAFT: Profile = Profile {
        connect: Duration::from_secs(1),
        timeout: None,
        keepalive: Some((Duration::from_secs(1), Duration::from_secs(2))),
    };

    /// One-off probes (`shoal master status`, a worker's stats): answer fast or
    /// count as down.
    pub const PROBE: Profile =
        Profile { connect: Duration::from_secs(3), timeout: Some(Duration::from_secs(5)), keepalive: None };

    /// This profile with another call timeout.
    pub const fn with_timeout(self, timeout: Duration) -> Profile {
        Profile { timeout: Some(timeout), ..self }
    }

    /// Set `ep` up with this profile. Nagle's algorithm is always off: a small
    /// request or reply would otherwise wait for the peer's delayed ACK (40 ms).
    pub fn apply(self, ep: Endpoint) -> Endpoint {
        let mut ep = ep.connect_timeout(self.connect).tcp_nodelay(true);
        if let Some(t) = self.timeout {
            ep = ep.timeout(t);
        }
        if let Some((interval, timeout)) = self.keepalive {
            ep = ep.http2_keep_alive_interval(interval).keep_alive_timeout(timeout).keep_alive_while_idle(true);
        }
        ep
    }

    /// An endpoint of the shoal server at `host:port` with this profile (TLS
    /// when `SHOAL_TLS_CA` is set); it connects lazily.
    pub fn endpoint(self, addr: &str) -> Result<Endpoint, crate::auth::AuthError> {
        crate::auth::endpoint(addr).map(|ep| self.apply(ep))
    }
}

/// A gRPC server's builder: TLS from `SHOAL_TLS_CERT`/`SHOAL_TLS_KEY` when set,
/// HTTP/2 pings that drop connections of clients that vanished.
pub fn server() -> Result<tonic::transport::Server, crate::auth::AuthError> {
    // Accepted connections get TCP_NODELAY from [`incoming`].
    let builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    match crate::auth::server_tls()? {
        Some(tls) => builder
            .tls_config(tls)
            .map_err(|e| crate::auth::AuthError { path: "SHOAL_TLS_CERT".into(), reason: e.to_string() }),
        None => Ok(builder),
    }
}

/// A gRPC server's accepted connections, with Nagle's algorithm off. A reply's
/// HTTP/2 frames (headers, data, trailers) go out in separate writes; with Nagle
/// on, the last one waits for the client's delayed ACK, 40 ms per small reply.
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(conn)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_takes_another_timeout_and_keeps_the_rest() {
        let p = Profile::DATA.with_timeout(Duration::from_millis(1500));
        assert_eq!(p.timeout, Some(Duration::from_millis(1500)));
        assert_eq!((p.connect, p.keepalive), (Profile::DATA.connect, Profile::DATA.keepalive));
        assert!(Profile::PROBE.endpoint("127.0.0.1:1").is_ok());
        assert!(Profile::PROBE.endpoint("not an address").is_err());
    }
}
