//! shoal's wire protocol: the generated tonic/prost code for the master and worker
//! services, and for the CSI services the node plugin serves. Owns nothing but the
//! `.proto` files in `proto/` and `csi/`; no logic lives here.

#![allow(clippy::all, missing_docs)]

pub mod master {
    tonic::include_proto!("shoal.master");
}

pub mod worker {
    tonic::include_proto!("shoal.worker");
}

/// The Container Storage Interface (spec v1.3.0, `csi/csi.proto`).
pub mod csi {
    tonic::include_proto!("csi.v1");
}

pub mod auth;
pub mod leader;

impl master::DatasetInfo {
    /// The Kubernetes namespace the dataset belongs to ("" reads as `default`).
    pub fn namespace(&self) -> &str {
        match self.spec.as_ref().map(|s| s.namespace.as_str()) {
            Some("") | None => "default",
            Some(ns) => ns,
        }
    }
}

/// Largest gRPC message either side accepts (a block chunk is at most 4 MiB).
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

pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
