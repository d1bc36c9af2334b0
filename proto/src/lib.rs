//! shoal's wire protocol: the generated tonic/prost code for the master and worker
//! services. Owns nothing but the `.proto` files in `proto/`; no logic lives here.

#![allow(clippy::all, missing_docs)]

pub mod master {
    tonic::include_proto!("shoal.master");
}

pub mod worker {
    tonic::include_proto!("shoal.worker");
}

/// Largest gRPC message either side accepts (a block chunk is at most 4 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
