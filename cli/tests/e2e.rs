//! The end-to-end tests of the real `shoal` binary, one module per area, in one
//! test binary: one build and link instead of eleven. `scale.rs` (a million
//! files, minutes on its own) is a binary of its own so it runs alone.

mod common;

mod auth;
mod chaos;
mod cluster;
mod csi;
mod faults;
mod ha;
mod memory;
mod mount;
mod multinode;
mod prewarm;
mod python;
