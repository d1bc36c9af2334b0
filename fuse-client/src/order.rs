//! Order-aware prefetch. A data loader knows the order of its epoch before it
//! reads a byte (the sampler's permutation); nothing else does. A [`Plan`] is
//! that order, given ahead: it keeps the blocks of the next files in the order
//! being cached on their owning workers (`CacheBlock`, many at once), within a
//! window ahead of the loader's position, so that a cold shuffled epoch runs at
//! the store's bandwidth instead of one store round trip per file.
//!
//! The loader moves the plan's cursor ([`Plan::advance`]) as it goes (the
//! Python sampler does it as it yields indices). The bytes land in the workers'
//! tiers, not in this process, so the readers may be other processes (a
//! `DataLoader`'s workers), a FUSE mount, or other hosts. The window bounds how
//! far ahead the plan runs, in files and bytes, so prefetched blocks are not
//! evicted by later ones before they are read.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use shoal_core::ids;
use shoal_proto::master::Inode;
use tokio::sync::{Notify, Semaphore};
use tracing::debug;

use crate::reader::Reader;

/// How far ahead a plan runs and how many blocks it has in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanConfig {
    /// Files ahead of the cursor at most.
    pub window_files: usize,
    /// Bytes ahead of the cursor at most (at least one file is always ahead).
    pub window_bytes: u64,
    /// `CacheBlock` requests in flight at once.
    pub parallel: usize,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig { window_files: 8192, window_bytes: 1 << 30, parallel: 64 }
    }
}

/// What a plan has done so far (blocks).
#[derive(Debug, Default)]
pub struct PlanStats {
    /// Blocks the owner read from the store for the plan.
    pub loaded: AtomicU64,
    /// Blocks the owner held already.
    pub cached: AtomicU64,
    pub failed: AtomicU64,
    /// Files whose every block was asked for.
    pub files_done: AtomicU64,
    /// Files the cursor passed before the plan reached them.
    pub files_skipped: AtomicU64,
}

/// An epoch's read order, prefetched ahead of its cursor. Dropping every handle
/// (or [`Plan::cancel`]) stops it.
#[derive(Debug)]
pub struct Plan {
    files: Vec<(Inode, String)>,
    /// `prefix[i]`: bytes of `files[..i]`.
    prefix: Vec<u64>,
    cursor: AtomicUsize,
    wake: Notify,
    cancelled: AtomicBool,
    finished: AtomicBool,
    pub config: PlanConfig,
    pub stats: PlanStats,
}

impl Plan {
    fn new(files: Vec<(Inode, String)>, config: PlanConfig) -> Plan {
        let mut prefix = Vec::with_capacity(files.len() + 1);
        let mut sum = 0u64;
        prefix.push(0);
        for (inode, _) in &files {
            sum += inode.size;
            prefix.push(sum);
        }
        let config =
            PlanConfig { window_files: config.window_files.max(1), parallel: config.parallel.max(1), ..config };
        Plan {
            files,
            prefix,
            cursor: AtomicUsize::new(0),
            wake: Notify::new(),
            cancelled: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            config,
            stats: PlanStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The loader has reached position `pos` of the order (it never moves back).
    pub fn advance(&self, pos: usize) {
        let pos = pos.min(self.files.len());
        if self.cursor.fetch_max(pos, Ordering::Relaxed) < pos {
            self.wake.notify_one();
        }
    }

    pub fn cursor(&self) -> usize {
        self.cursor.load(Ordering::Relaxed)
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Every block of the order was asked for (or the plan was cancelled).
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    /// Whether the plan may start file `next` with the cursor at `cursor`: the
    /// files from the cursor to `next`, included, fit the window.
    fn in_window(&self, cursor: usize, next: usize) -> bool {
        next == cursor
            || (next - cursor < self.config.window_files
                && self.prefix[next + 1] - self.prefix[cursor] <= self.config.window_bytes)
    }
}

impl Reader {
    /// Start prefetching `files` in this order (see the module docs). The
    /// window's bytes are bounded by a quarter of the live workers' tiers too.
    pub fn plan(self: &Arc<Self>, files: Vec<(Inode, String)>, config: PlanConfig) -> Arc<Plan> {
        let capacity = self.worker_capacity();
        let config = PlanConfig {
            window_bytes: if capacity > 0 { config.window_bytes.min(capacity / 4) } else { config.window_bytes },
            ..config
        };
        let plan = Arc::new(Plan::new(files, config));
        tokio::spawn(drive(Arc::downgrade(self), Arc::downgrade(&plan)));
        plan
    }
}

/// The plan's loop: start the blocks of the next file while it is in the window,
/// else wait for the cursor to move.
async fn drive(reader: Weak<Reader>, plan: Weak<Plan>) {
    let mut next = 0usize;
    let mut slots: Option<Arc<Semaphore>> = None;
    loop {
        let Some(p) = plan.upgrade() else { return };
        let Some(reader) = reader.upgrade() else {
            // The dataset was closed: nothing more can be fetched.
            p.finished.store(true, Ordering::Relaxed);
            return;
        };
        let slots = slots.get_or_insert_with(|| Arc::new(Semaphore::new(p.config.parallel))).clone();
        if p.cancelled.load(Ordering::Relaxed) || next >= p.files.len() {
            p.finished.store(true, Ordering::Relaxed);
            debug!(files = p.files.len(), next, "order prefetch finished");
            return;
        }
        let cursor = p.cursor();
        if next < cursor {
            p.stats.files_skipped.fetch_add((cursor - next) as u64, Ordering::Relaxed);
            next = cursor;
            continue;
        }
        if !p.in_window(cursor, next) {
            // Woken by `advance` or `cancel`; the timeout notices a dropped plan.
            drop(reader);
            let _ = tokio::time::timeout(Duration::from_secs(1), p.wake.notified()).await;
            continue;
        }
        let (inode, path) = p.files[next].clone();
        let blocks = ids::block_count(inode.size, reader.block_size()) as u32;
        for index in 0..blocks {
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            if p.cancelled.load(Ordering::Relaxed) {
                break;
            }
            let (reader, plan) = (reader.clone(), p.clone());
            let (inode, path) = (inode.clone(), path.clone());
            tokio::spawn(async move {
                let result = match reader.cache_on_owner(&inode, &path, index).await {
                    Ok(true) => {
                        plan.stats.cached.fetch_add(1, Ordering::Relaxed);
                        "cached"
                    }
                    Ok(false) => {
                        plan.stats.loaded.fetch_add(1, Ordering::Relaxed);
                        "loaded"
                    }
                    Err(e) => {
                        debug!(path, index, error = %e, "order prefetch failed");
                        plan.stats.failed.fetch_add(1, Ordering::Relaxed);
                        "failed"
                    }
                };
                crate::metrics::ORDER_PREFETCH.with_label_values(&[result]).inc();
                drop(slot);
            });
        }
        p.stats.files_done.fetch_add(1, Ordering::Relaxed);
        next += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(sizes: &[u64]) -> Vec<(Inode, String)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, s)| (Inode { file_id: i as u64 + 1, size: *s, ..Default::default() }, format!("/f{i}")))
            .collect()
    }

    #[test]
    fn the_window_bounds_files_and_bytes_ahead_of_the_cursor() {
        let p = Plan::new(files(&[10; 10]), PlanConfig { window_files: 3, window_bytes: 1000, parallel: 4 });
        assert!(p.in_window(0, 0) && p.in_window(0, 2));
        assert!(!p.in_window(0, 3), "three files ahead at most");
        assert!(p.in_window(5, 7) && !p.in_window(5, 8));
        let p = Plan::new(files(&[40, 40, 40, 40]), PlanConfig { window_files: 100, window_bytes: 100, parallel: 4 });
        assert!(p.in_window(0, 1), "files 0 and 1: 80 bytes ahead");
        assert!(!p.in_window(0, 2), "files 0 to 2 would be 120 bytes ahead");
        assert!(p.in_window(1, 2) && !p.in_window(1, 3));
        let p = Plan::new(files(&[50, 50, 50]), PlanConfig { window_files: 100, window_bytes: 100, parallel: 4 });
        assert!(p.in_window(0, 1) && !p.in_window(0, 2), "exactly the window's bytes fit");
        // A file larger than the window is still started when it is next.
        let p = Plan::new(files(&[5000, 1]), PlanConfig { window_files: 100, window_bytes: 100, parallel: 4 });
        assert!(p.in_window(0, 0) && !p.in_window(0, 1) && p.in_window(1, 1));
    }

    #[test]
    fn the_cursor_only_moves_forward_and_stops_at_the_end() {
        let p = Plan::new(files(&[1; 5]), PlanConfig::default());
        p.advance(3);
        p.advance(1);
        assert_eq!(p.cursor(), 3);
        p.advance(99);
        assert_eq!(p.cursor(), 5);
    }
}
