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
pub mod profile;

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
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
