//! shoal-core: the vocabulary every shoal component shares.
//!
//! - [`dataset`]: the dataset model built from the wire record: its mounts (which store
//!   serves which path), cache policy and file versions;
//! - [`identity`]: the cluster id and the signatures that bind block references to listed files;
//! - [`ids`]: dataset names and the block identity (`BlockId`) with its arithmetic;
//! - [`uri`]: parsing a dataset's store URI and options into an OpenDAL service config;
//! - [`store`]: the under-store (`UnderStore`), OpenDAL with retry and timeout layers;
//! - [`size`]: human byte sizes (`8MiB`) for flags.
//! - [`mounts`]: whether a path is a mount point.
//!
//! This crate imports only shoal's wire types (to build its model from them) and owns
//! no process state. `dataset` and `store` (and OpenDAL with them) are behind the
//! `store` feature, on by default: the fuzz targets, the CSI driver and the
//! scheduler build without them.

#[cfg(feature = "store")]
pub mod dataset;
pub mod error;
pub mod fusedev;
pub mod identity;
pub mod ids;
pub mod mapped;
pub mod metrics;
pub mod mounts;
pub mod placement;
pub mod size;
#[cfg(feature = "store")]
pub mod store;
pub mod uri;

pub use error::CoreError;
pub use ids::{validate_dataset_name, BlockId, DEFAULT_BLOCK_SIZE};
#[cfg(feature = "store")]
pub use store::{StoreEntry, UnderStore, Version};
pub use uri::StoreSpec;

/// This machine's host name: the default node name of workers and clients (a
/// client on a worker's node reads its blocks by short-circuit).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
