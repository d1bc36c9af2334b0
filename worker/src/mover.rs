//! Demotion outside the caches' eviction listener. A block evicted from a tier
//! with a tier below it is queued here, still in its original file; one mover
//! thread copies it down in the order evicted, indexes the copy, and only then
//! deletes the original. Until that moment the block is served from the original
//! ([`Moves::get`]), so a read never misses a block that is only changing tiers,
//! and the copy's file I/O never runs under `moka`'s maintenance.
//!
//! An insert that needs the space an eviction frees waits for the moves queued
//! before it ([`Moves::wait_queued`]); a removal waits for the block's own move
//! ([`Moves::wait_block`]), so a freed block is never copied back in.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use shoal_core::BlockId;
use tracing::{debug, warn};

use crate::block_store::{Events, StoreCounters};
use crate::tier::{BlockFile, TierDir};

/// A tier as the mover sees it: where copies go, and their index.
#[derive(Clone)]
pub(crate) struct Target {
    pub dir: Arc<TierDir>,
    pub index: moka::sync::Cache<BlockId, Arc<BlockFile>>,
}

#[derive(Default)]
struct State {
    /// Blocks waiting for or in their move: their tier position and original.
    pending: HashMap<BlockId, (usize, Arc<BlockFile>)>,
    queue: VecDeque<BlockId>,
    /// Moves queued and finished since the start (FIFO, so a waiter for the
    /// first N only needs `finished >= N`).
    queued: u64,
    finished: u64,
    stop: bool,
}

#[derive(Default)]
pub(crate) struct Moves {
    state: Mutex<State>,
    work: Condvar,
    done: Condvar,
}

impl Moves {
    /// Queue `file`, just evicted from tier `from`, for a move to the tier below.
    pub fn queue(&self, id: BlockId, from: usize, file: Arc<BlockFile>) {
        let mut s = self.state.lock().expect("moves lock");
        if s.pending.insert(id, (from, file)).is_none() {
            s.queue.push_back(id);
            s.queued += 1;
        }
        self.work.notify_one();
    }

    /// A block being moved: its tier position and original file.
    pub fn get(&self, id: BlockId) -> Option<(usize, Arc<BlockFile>)> {
        self.state.lock().expect("moves lock").pending.get(&id).cloned()
    }

    /// Every block being moved, with its tier position.
    pub fn blocks(&self) -> Vec<(BlockId, usize)> {
        self.state.lock().expect("moves lock").pending.iter().map(|(id, (t, _))| (*id, *t)).collect()
    }

    /// Wait until every move queued so far has finished (their originals'
    /// space is free).
    pub fn wait_queued(&self) {
        let s = self.state.lock().expect("moves lock");
        let target = s.queued;
        drop(self.done.wait_while(s, |s| s.finished < target && !s.stop).expect("moves lock"));
    }

    /// Wait until `id` is not being moved.
    pub fn wait_block(&self, id: BlockId) {
        let s = self.state.lock().expect("moves lock");
        drop(self.done.wait_while(s, |s| s.pending.contains_key(&id) && !s.stop).expect("moves lock"));
    }

    /// Start the mover thread. `tiers` are every tier in order (a move from
    /// position `p` goes to `p + 1`).
    pub fn start(
        self: &Arc<Self>,
        tiers: Vec<Target>,
        deltas: Arc<Mutex<Events>>,
        counters: Arc<StoreCounters>,
    ) -> std::io::Result<JoinHandle<()>> {
        let moves = self.clone();
        std::thread::Builder::new().name("shoal-mover".into()).spawn(move || moves.run(&tiers, &deltas, &counters))
    }

    /// Finish the queued moves, then end the thread.
    pub fn stop(&self) {
        self.state.lock().expect("moves lock").stop = true;
        self.work.notify_all();
    }

    fn run(&self, tiers: &[Target], deltas: &Mutex<Events>, counters: &StoreCounters) {
        loop {
            let (id, from, file) = {
                let s = self.state.lock().expect("moves lock");
                let mut s = self.work.wait_while(s, |s| s.queue.is_empty() && !s.stop).expect("moves lock");
                let Some(id) = s.queue.pop_front() else { break };
                let (from, file) = s.pending.get(&id).cloned().expect("a queued move is pending");
                (id, from, file)
            };
            let demoted = tiers.get(from + 1).is_some_and(|to| copy_down(id, &file, to));
            tiers[from].dir.remove(&file);
            if demoted {
                counters.demotions.fetch_add(1, Ordering::Relaxed);
                crate::metrics::DEMOTIONS.inc();
                debug!(block = %id, "block demoted");
            } else {
                deltas.lock().expect("deltas lock").removed(id);
            }
            let mut s = self.state.lock().expect("moves lock");
            s.pending.remove(&id);
            s.finished += 1;
            self.done.notify_all();
        }
        let mut s = self.state.lock().expect("moves lock");
        s.pending.clear();
        self.done.notify_all();
    }
}

/// Copy a block into `to` and index it there; false if it cannot take it.
fn copy_down(id: BlockId, file: &BlockFile, to: &Target) -> bool {
    if to.index.contains_key(&id) || !to.dir.reserve(file.len) {
        return false;
    }
    let data = match std::fs::read(&file.path) {
        Ok(d) => d,
        Err(e) => {
            to.dir.release(file.len);
            warn!(block = %id, path = %file.path.display(), error = %e, "demotion cannot read the block; dropping it");
            return false;
        }
    };
    // On error the write gives the reservation back itself.
    match to.dir.write(file.id, file.dataset, &data, file.crc) {
        Ok(mut copy) => {
            copy.created = file.created;
            to.index.insert(id, Arc::new(copy));
            true
        }
        Err(e) => {
            warn!(block = %id, error = %e, "demotion failed; dropping block");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::{TierKind, TierSpec};

    fn tier(d: &std::path::Path, kind: TierKind, quota: u64) -> Target {
        let dir = Arc::new(TierDir::open(&TierSpec { kind, dir: d.join(kind.as_str()), quota }).unwrap());
        Target { dir, index: moka::sync::Cache::new(100) }
    }

    fn block(t: &Target, id: BlockId, data: &[u8]) -> Arc<BlockFile> {
        assert!(t.dir.reserve(data.len() as u64));
        Arc::new(t.dir.write(id, 1, data, shoal_core::mapped::checksum(data)).unwrap())
    }

    #[test]
    fn a_moving_block_is_served_from_its_original_until_its_copy_is_indexed() {
        let d = tempfile::tempdir().unwrap();
        let (mem, ssd) = (tier(d.path(), TierKind::Mem, 100), tier(d.path(), TierKind::Ssd, 6));
        let (a, b) = (BlockId::new(1, 0), BlockId::new(1, 1));
        let (fa, fb) = (block(&mem, a, b"abcd"), block(&mem, b, b"efgh"));
        let moves = Arc::new(Moves::default());
        // Queued before the mover runs: still served, from the MEM file.
        moves.queue(a, 0, fa.clone());
        moves.queue(b, 0, fb.clone());
        assert_eq!(moves.get(a).map(|(t, f)| (t, f.path.clone())), Some((0, fa.path.clone())));
        assert_eq!(moves.blocks().len(), 2);
        let (deltas, counters) = (Arc::new(Mutex::new(Events::default())), Arc::new(StoreCounters::default()));
        let mover = moves.start(vec![mem.clone(), ssd.clone()], deltas.clone(), counters.clone()).unwrap();
        moves.wait_queued();
        // The first fits the SSD tier (6 bytes): copied, indexed, original gone.
        assert!(moves.get(a).is_none());
        let copy = ssd.index.get(&a).expect("demoted");
        assert_eq!(std::fs::read(&copy.path).unwrap(), b"abcd");
        assert_eq!(copy.created, fa.created, "a demoted block keeps its age (TTLs)");
        assert!(!fa.path.exists());
        // The second does not: dropped, and the drop is a delta for the master.
        assert!(ssd.index.get(&b).is_none() && !fb.path.exists());
        assert_eq!((mem.dir.used(), ssd.dir.used()), (0, 4), "every byte accounted for");
        assert_eq!(counters.demotions.load(Ordering::Relaxed), 1);
        assert_eq!(deltas.lock().unwrap().0, vec![(b, false)]);
        moves.stop();
        mover.join().unwrap();
    }
}
