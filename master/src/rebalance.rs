//! Moving cached blocks between workers without reading the store again. A drain
//! takes a worker out of placement and copies each block it holds to the workers
//! that own the block without it; after a worker joins, the blocks it now owns
//! are copied to it. Each copy is a `CacheBlock` on the new owner naming the
//! block's current holders as peers: the owner copies the bytes from a holder,
//! and reads the store only if no holder can serve them.
//!
//! A block keeps as many copies as it has (at least its dataset's `replicas`):
//! the goal is that the first that many workers by rendezvous rank hold it.
//! Copies on workers that no longer own a block are left to eviction.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_core::{ids, placement, BlockId};
use shoal_proto::master::{DatasetInfo, DrainProgress};
use shoal_proto::worker::CacheBlockRequest;
use tracing::{info, warn};

use crate::error::Result;
use crate::load::{block_ref, select_files};
use crate::membership::{Drain, Membership};
use crate::meta::MetaStore;
use crate::pool::WorkerPool;
use shoal_core::dataset::block_size;

/// One block to copy to one worker.
struct Copy {
    block: shoal_proto::worker::BlockRef,
    /// The target's id and address.
    owner: String,
    target: String,
    peers: Vec<String>,
    len: u64,
}

/// Counts of a drain or rebalance.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Copies planned.
    pub total: u64,
    pub moved: u64,
    pub failed: u64,
    pub bytes: u64,
}

/// Drains and rebalances; one runs at a time.
pub struct Rebalancer {
    meta: Arc<MetaStore>,
    members: Arc<Membership>,
    pool: Arc<WorkerPool>,
    running: tokio::sync::Mutex<()>,
    /// How long workers take to report new blocks (a few heartbeats).
    report_lag: Duration,
}

impl Rebalancer {
    pub fn new(
        meta: Arc<MetaStore>,
        members: Arc<Membership>,
        pool: Arc<WorkerPool>,
        heartbeat: Duration,
    ) -> Arc<Self> {
        let report_lag = (heartbeat * 3).clamp(Duration::from_secs(1), Duration::from_secs(30));
        Arc::new(Self { meta, members, pool, running: tokio::sync::Mutex::new(()), report_lag })
    }

    /// Wait (bounded by a few heartbeats) until the map shows every copy on
    /// its owner; returns how many it does not.
    async fn await_reports(&self, placed: &[(BlockId, String)]) -> usize {
        let deadline = Instant::now() + self.report_lag;
        loop {
            let missing = placed.iter().filter(|(b, w)| !self.members.holders(*b).contains(w)).count();
            if missing == 0 || Instant::now() >= deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The copies that bring `blocks` (id, dataset id, holders) onto their owners
    /// among the placement workers. Blocks of files no dataset lists any more are
    /// left out.
    fn plan(&self, blocks: Vec<(BlockId, u32, Vec<String>)>) -> Result<Vec<Copy>> {
        let placement: Vec<String> = self.members.placement_workers().into_iter().map(|w| w.id).collect();
        let ring = placement::Ring::new(placement.iter().map(String::as_str));
        if placement.is_empty() || blocks.is_empty() {
            return Ok(Vec::new());
        }
        let address: HashMap<String, String> =
            self.members.live_workers().into_iter().map(|w| (w.id, w.address)).collect();
        let datasets: HashMap<u32, DatasetInfo> = self.meta.list_datasets()?.into_iter().map(|d| (d.id, d)).collect();
        let mut by_dataset: HashMap<u32, Vec<(BlockId, Vec<String>)>> = HashMap::new();
        for (b, ds, holders) in blocks {
            by_dataset.entry(ds).or_default().push((b, holders));
        }
        let mut copies = Vec::new();
        for (ds, blocks) in by_dataset {
            let Some(info) = datasets.get(&ds) else { continue };
            let wanted: HashSet<u64> = blocks.iter().map(|(b, _)| b.file_id).collect();
            let files: HashMap<u64, crate::load::FileTask> = select_files(&self.meta, info, &[], "")?
                .into_iter()
                .filter(|f| wanted.contains(&f.inode.file_id))
                .map(|f| (f.inode.file_id, f))
                .collect();
            let bs = block_size(info);
            let policy = info.spec.as_ref().and_then(|s| s.cache.as_ref()).map(|c| c.replicas).unwrap_or(1).max(1);
            for (b, holders) in blocks {
                let Some(f) = files.get(&b.file_id) else { continue };
                let Some((_, len)) = ids::block_range(f.inode.size, bs, b.index) else { continue };
                let copies_wanted = holders.len().max(policy as usize).min(placement.len());
                let owners = ring.rank(b);
                let peers: Vec<String> = holders.iter().filter_map(|h| address.get(h).cloned()).collect();
                for owner in owners.into_iter().take(copies_wanted) {
                    if holders.iter().any(|h| h == owner) {
                        continue;
                    }
                    let Some(target) = address.get(owner) else { continue };
                    copies.push(Copy {
                        block: block_ref(info, bs, &f.path, &f.inode, b.index),
                        owner: owner.to_string(),
                        target: target.clone(),
                        peers: peers.clone(),
                        len,
                    });
                }
            }
        }
        Ok(copies)
    }

    /// Run `copies`, `parallel` at a time, reporting after each.
    /// Run `copies`, `parallel` at a time, reporting after each; the blocks
    /// placed, by owner.
    async fn run(
        &self,
        copies: Vec<Copy>,
        parallel: usize,
        mut progress: impl FnMut(&Moved),
    ) -> (Moved, Vec<(BlockId, String)>) {
        let mut m = Moved { total: copies.len() as u64, ..Moved::default() };
        let mut placed = Vec::new();
        progress(&m);
        let mut results = futures::stream::iter(copies)
            .map(|c| async move {
                let id = BlockId::new(c.block.file_id, c.block.index);
                let done = |ok| (id, c.owner.clone(), c.len, ok);
                let Some(mut client) = self.pool.client(&c.target) else { return done(false) };
                let req = CacheBlockRequest { block: Some(c.block.clone()), peers: c.peers.clone() };
                match client.cache_block(req).await {
                    Ok(_) => done(true),
                    Err(s) => {
                        warn!(worker = %c.target, error = %s.message(), "cannot copy a block to its new owner");
                        done(false)
                    }
                }
            })
            .buffer_unordered(parallel.max(1));
        while let Some((id, owner, len, ok)) = results.next().await {
            if ok {
                m.moved += 1;
                m.bytes += len;
                placed.push((id, owner));
            } else {
                m.failed += 1;
            }
            crate::metrics::MOVED_BLOCKS.with_label_values(&[if ok { "moved" } else { "failed" }]).inc();
            progress(&m);
        }
        (m, placed)
    }

    /// Drain worker `id`: out of placement, its blocks copied to their new owners,
    /// and, if every copy succeeded, its blocks dropped from the map. Progress
    /// goes to `report`; the last report has `done` set.
    pub async fn drain(&self, id: &str, parallel: usize, mut report: impl FnMut(DrainProgress)) -> Result<Moved> {
        let others = self.members.placement_workers().iter().any(|w| w.id != id);
        let held = self.members.blocks_of(id).len();
        if held > 0 && !others {
            return Err(crate::MasterError::InvalidArgument(format!(
                "worker {id} holds {held} blocks and no other worker can take them: start one first"
            )));
        }
        self.members.set_drain(id, Drain::Draining)?;
        let _one = self.running.lock().await;
        let started = Instant::now();
        let blocks: Vec<(BlockId, u32, Vec<String>)> =
            self.members.blocks_of(id).into_iter().map(|(b, ds)| (b, ds, self.members.holders(b))).collect();
        let copies = self.plan(blocks)?;
        info!(worker = %id, copies = copies.len(), "draining worker");
        let progress = |m: &Moved, done: bool, message: String| DrainProgress {
            worker_id: id.to_string(),
            blocks_total: m.total,
            blocks_moved: m.moved,
            blocks_failed: m.failed,
            bytes_moved: m.bytes,
            done,
            message,
        };
        let (m, placed) = self.run(copies, parallel, |m| report(progress(m, false, String::new()))).await;
        // The worker leaves the map only once its blocks' new copies are in it.
        let unreported = self.await_reports(&placed).await;
        if unreported > 0 {
            warn!(worker = %id, blocks = unreported, "new owners have not reported some copies yet");
        }
        let message = if m.failed == 0 {
            self.members.set_drain(id, Drain::Drained)?;
            format!(
                "worker {id} drained: {} block copies moved to their new owners ({} bytes) in {:.1}s; it can be stopped",
                m.moved,
                m.bytes,
                started.elapsed().as_secs_f64()
            )
        } else {
            format!(
                "{} of {} block copies failed; worker {id} stays out of placement and keeps its blocks: run the drain again",
                m.failed, m.total
            )
        };
        info!(worker = %id, moved = m.moved, failed = m.failed, "{message}");
        report(progress(&m, true, message));
        Ok(m)
    }

    /// Put a draining or drained worker back into placement.
    pub fn undrain(&self, id: &str) -> Result<()> {
        self.members.set_drain(id, Drain::No)
    }

    /// Copy every block not held by its owners onto them (after a worker joined).
    pub async fn rebalance(&self, parallel: usize) -> Result<Moved> {
        let _one = self.running.lock().await;
        let copies = self.plan(self.members.all_blocks())?;
        if copies.is_empty() {
            return Ok(Moved::default());
        }
        let started = Instant::now();
        let (m, _) = self.run(copies, parallel, |_| {}).await;
        info!(
            moved = m.moved,
            failed = m.failed,
            bytes = m.bytes,
            secs = started.elapsed().as_secs_f64(),
            "rebalanced blocks onto their owners"
        );
        Ok(m)
    }
}
