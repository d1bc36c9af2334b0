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

/// Largest gRPC message either side accepts (a block chunk is at most 4 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
