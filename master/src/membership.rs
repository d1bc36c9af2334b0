//! Worker membership and the block location map: soft state, rebuilt from worker
//! reports (a full report on register, deltas on heartbeat) after a master restart.
//! A worker silent for longer than the lost-worker timeout is declared lost and its
//! blocks leave the map. A worker being drained stays out of placement (and so
//! does a drained one, whose blocks have left the map and whose reports are
//! ignored) until it is undrained.
//!
//! Cache usage per dataset (distinct blocks and bytes, and what each worker holds)
//! is counted as reports arrive, from the dataset and length each report carries:
//! a usage query costs one map lookup, whatever the dataset's size.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shoal_core::BlockId;
use shoal_proto::master::{BlockKey, BlockLocation, TierInfo, WorkerInfo};
use tracing::{info, warn};

/// Where a worker is in a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Drain {
    #[default]
    No,
    /// Out of placement; its blocks are being copied to their new owners.
    Draining,
    /// Its blocks have moved; it holds nothing the map knows of.
    Drained,
}

struct WorkerState {
    info: WorkerInfo,
    last_seen: Instant,
    alive: bool,
    drain: Drain,
    /// Each held block's dataset and length.
    blocks: HashMap<BlockId, (u32, u64)>,
}

/// Blocks and bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub blocks: u64,
    pub bytes: u64,
}

impl Held {
    fn add(&mut self, len: u64) {
        self.blocks += 1;
        self.bytes += len;
    }
    fn sub(&mut self, len: u64) {
        self.blocks = self.blocks.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(len);
    }
}

/// What the workers hold of one dataset.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DatasetUsage {
    /// Distinct blocks (a block on two workers counts once).
    pub distinct: Held,
    pub by_worker: BTreeMap<String, Held>,
}

#[derive(Default)]
struct Inner {
    workers: HashMap<String, WorkerState>,
    locations: BTreeMap<BlockId, BTreeSet<Arc<str>>>,
    usage: HashMap<u32, DatasetUsage>,
}

/// Live workers and which blocks each holds.
pub struct Membership {
    inner: RwLock<Inner>,
    lost_after: Duration,
}

fn key(k: &BlockKey) -> BlockId {
    BlockId::new(k.file_id, k.index)
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Inner {
    fn drop_blocks(&mut self, id: &str) {
        let Some(w) = self.workers.get_mut(id) else { return };
        let held: Vec<(BlockId, (u32, u64))> = w.blocks.drain().collect();
        for (b, (ds, len)) in held {
            self.unlocate(id, b, ds, len);
        }
    }

    fn add_block(&mut self, id: &Arc<str>, k: &BlockKey) {
        let (b, ds, len) = (key(k), k.dataset_id, k.length);
        let Some(w) = self.workers.get_mut(&**id) else { return };
        if w.blocks.insert(b, (ds, len)).is_some() {
            return;
        }
        let holders = self.locations.entry(b).or_default();
        holders.insert(id.clone());
        let usage = self.usage.entry(ds).or_default();
        if holders.len() == 1 {
            usage.distinct.add(len);
        }
        usage.by_worker.entry(id.to_string()).or_default().add(len);
    }

    fn remove_block(&mut self, id: &str, b: BlockId) {
        if let Some((ds, len)) = self.workers.get_mut(id).and_then(|w| w.blocks.remove(&b)) {
            self.unlocate(id, b, ds, len);
        }
    }

    /// Take worker `id` off the holders of `b` (of dataset `ds`, `len` bytes).
    fn unlocate(&mut self, id: &str, b: BlockId, ds: u32, len: u64) {
        let Some(set) = self.locations.get_mut(&b) else { return };
        set.remove(id);
        let last = set.is_empty();
        if last {
            self.locations.remove(&b);
        }
        let Some(usage) = self.usage.get_mut(&ds) else { return };
        if last {
            usage.distinct.sub(len);
        }
        if let Some(w) = usage.by_worker.get_mut(id) {
            w.sub(len);
            if w.blocks == 0 {
                usage.by_worker.remove(id);
            }
        }
        if usage.distinct.blocks == 0 && usage.by_worker.is_empty() {
            self.usage.remove(&ds);
        }
    }
}

impl Membership {
    pub fn new(lost_after: Duration) -> Self {
        Self { inner: RwLock::new(Inner::default()), lost_after }
    }

    /// A worker (re-)joins with its full block report. A drain in progress
    /// survives the worker's restart. Returns true if the worker was not a live member before
    /// (new, or back after being lost).
    pub fn register(&self, mut worker: WorkerInfo, blocks: &[BlockKey]) -> bool {
        let mut inner = self.inner.write().expect("membership lock");
        let id: Arc<str> = worker.id.clone().into();
        inner.drop_blocks(&id);
        // A drain in progress goes on after a restart; a drained worker that
        // registers again has come back, as a new member.
        let (joined, drain) = match inner.workers.get(&*id) {
            Some(w) if w.drain == Drain::Drained => (true, Drain::No),
            Some(w) => (!w.alive, w.drain),
            None => (true, Drain::No),
        };
        worker.alive = true;
        worker.draining = drain != Drain::No;
        worker.last_heartbeat_unix_ms = unix_ms();
        info!(worker = %id, address = %worker.address, blocks = blocks.len(), "worker registered");
        inner.workers.insert(
            id.to_string(),
            WorkerState { info: worker, last_seen: Instant::now(), alive: true, drain, blocks: HashMap::new() },
        );
        if drain != Drain::Drained {
            for b in blocks {
                inner.add_block(&id, b);
            }
        }
        joined
    }

    /// Start (or undo) a worker's drain. Errors if the worker is unknown.
    pub fn set_drain(&self, id: &str, drain: Drain) -> Result<(), crate::MasterError> {
        let mut inner = self.inner.write().expect("membership lock");
        let w = inner.workers.get_mut(id).ok_or_else(|| crate::MasterError::UnknownWorker(id.to_string()))?;
        w.drain = drain;
        w.info.draining = drain != Drain::No;
        if drain == Drain::Drained {
            inner.drop_blocks(id);
        }
        info!(worker = %id, ?drain, "worker drain state");
        Ok(())
    }

    /// Take blocks a worker has just freed (at the master's request) off the
    /// map at once, not at its next report.
    pub fn forget(&self, id: &str, blocks: &[BlockId]) {
        let mut inner = self.inner.write().expect("membership lock");
        for b in blocks {
            inner.remove_block(id, *b);
        }
    }

    /// The blocks one worker holds, each with its dataset id.
    pub fn blocks_of(&self, id: &str) -> Vec<(BlockId, u32)> {
        let inner = self.inner.read().expect("membership lock");
        inner.workers.get(id).map(|w| w.blocks.iter().map(|(b, (ds, _))| (*b, *ds)).collect()).unwrap_or_default()
    }

    /// Every block in the map, with its dataset id and holders.
    pub fn all_blocks(&self) -> Vec<(BlockId, u32, Vec<String>)> {
        let inner = self.inner.read().expect("membership lock");
        inner
            .locations
            .iter()
            .filter_map(|(b, ws)| {
                let first = ws.iter().next()?;
                let ds = inner.workers.get(&**first)?.blocks.get(b)?.0;
                Some((*b, ds, ws.iter().map(|w| w.to_string()).collect()))
            })
            .collect()
    }

    /// Live workers that take part in placement (not draining).
    pub fn placement_workers(&self) -> Vec<WorkerInfo> {
        self.live_workers().into_iter().filter(|w| !w.draining).collect()
    }

    /// Addresses of the live workers other than `id`: the peers it may copy from.
    pub fn peer_addresses(&self, id: &str) -> Vec<String> {
        let inner = self.inner.read().expect("membership lock");
        inner.workers.iter().filter(|(w, st)| st.alive && *w != id).map(|(_, st)| st.info.address.clone()).collect()
    }

    /// Apply a heartbeat. Returns false if the worker is unknown or was declared
    /// lost: it must register again with a full report.
    pub fn heartbeat(&self, id: &str, added: &[BlockKey], removed: &[BlockKey], tiers: Vec<TierInfo>) -> bool {
        let mut inner = self.inner.write().expect("membership lock");
        let drained = match inner.workers.get_mut(id) {
            Some(w) if w.alive => {
                w.last_seen = Instant::now();
                w.info.last_heartbeat_unix_ms = unix_ms();
                if !tiers.is_empty() {
                    w.info.tiers = tiers;
                }
                w.drain == Drain::Drained
            }
            _ => return false,
        };
        if drained {
            return true;
        }
        let id: Arc<str> = id.into();
        for b in removed {
            inner.remove_block(&id, key(b));
        }
        for b in added {
            inner.add_block(&id, b);
        }
        true
    }

    /// Forget every worker and block location (this master stopped leading:
    /// workers report to the new leader, and register again if it leads again).
    pub fn forget_all(&self) {
        *self.inner.write().expect("membership lock") = Inner::default();
    }

    /// Declare workers silent for too long lost; returns their ids.
    pub fn reap(&self) -> Vec<String> {
        let mut inner = self.inner.write().expect("membership lock");
        let lost: Vec<String> = inner
            .workers
            .iter()
            .filter(|(_, w)| w.alive && w.last_seen.elapsed() > self.lost_after)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &lost {
            warn!(worker = %id, "worker lost: no heartbeat within {:?}", self.lost_after);
            inner.drop_blocks(id);
            if let Some(w) = inner.workers.get_mut(id) {
                w.alive = false;
            }
        }
        lost
    }

    pub fn workers(&self) -> Vec<WorkerInfo> {
        let inner = self.inner.read().expect("membership lock");
        let mut out: Vec<WorkerInfo> = inner
            .workers
            .values()
            .map(|w| WorkerInfo { alive: w.alive, block_count: w.blocks.len() as u64, ..w.info.clone() })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub fn live_workers(&self) -> Vec<WorkerInfo> {
        self.workers().into_iter().filter(|w| w.alive).collect()
    }

    /// Cached blocks of one file content and the workers holding each.
    pub fn file_locations(&self, file_id: u64) -> Vec<BlockLocation> {
        let inner = self.inner.read().expect("membership lock");
        inner
            .locations
            .range(BlockId::new(file_id, 0)..=BlockId::new(file_id, u32::MAX))
            .map(|(b, ws)| BlockLocation { index: b.index, worker_ids: ws.iter().map(|w| w.to_string()).collect() })
            .collect()
    }

    /// How many of `blocks` the map shows on at least `copies` workers (one
    /// lock, no allocation).
    pub fn count_cached(&self, blocks: impl IntoIterator<Item = BlockId>, copies: usize) -> u64 {
        let inner = self.inner.read().expect("membership lock");
        blocks.into_iter().filter(|b| inner.locations.get(b).is_some_and(|ws| ws.len() >= copies)).count() as u64
    }

    /// Workers holding one block.
    pub fn holders(&self, block: BlockId) -> Vec<String> {
        let inner = self.inner.read().expect("membership lock");
        inner.locations.get(&block).map(|s| s.iter().map(|w| w.to_string()).collect()).unwrap_or_default()
    }

    /// Live workers holding one block, with their addresses.
    pub fn holder_addresses(&self, block: BlockId) -> Vec<(String, String)> {
        let inner = self.inner.read().expect("membership lock");
        inner
            .locations
            .get(&block)
            .map(|s| {
                s.iter()
                    .filter_map(|w| inner.workers.get(&**w).map(|st| (w.to_string(), st.info.address.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What the workers hold of dataset `ds` (by id), counted as reports came in.
    pub fn usage(&self, ds: u32) -> DatasetUsage {
        self.inner.read().expect("membership lock").usage.get(&ds).cloned().unwrap_or_default()
    }

    /// Number of distinct blocks cached anywhere.
    pub fn block_count(&self) -> usize {
        self.inner.read().expect("membership lock").locations.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str) -> WorkerInfo {
        WorkerInfo { id: id.into(), address: format!("{id}:1"), ..Default::default() }
    }
    fn k(f: u64, i: u32) -> BlockKey {
        BlockKey { file_id: f, index: i, dataset_id: 7, length: 100 + u64::from(i) }
    }

    fn held(blocks: u64, bytes: u64) -> Held {
        Held { blocks, bytes }
    }

    #[test]
    fn usage_counts_distinct_blocks_and_each_workers_share() {
        let m = Membership::new(Duration::from_secs(60));
        m.register(w("a"), &[k(1, 0), k(1, 1)]);
        m.register(w("b"), &[k(1, 1), BlockKey { dataset_id: 8, ..k(2, 0) }]);
        let u = m.usage(7);
        assert_eq!(u.distinct, held(2, 201), "block 1/1 on two workers counts once");
        assert_eq!(u.by_worker, BTreeMap::from([("a".into(), held(2, 201)), ("b".into(), held(1, 101))]));
        assert_eq!(m.usage(8).distinct, held(1, 100));
        // A repeated report changes nothing; a removal on one holder keeps the block.
        assert!(m.heartbeat("a", &[k(1, 0)], &[k(1, 1)], vec![]));
        assert_eq!(m.usage(7).distinct, held(2, 201));
        assert_eq!(m.usage(7).by_worker["a"], held(1, 100));
        // The last holder's removal, a re-register and a lost worker all count.
        assert!(m.heartbeat("b", &[], &[k(1, 1)], vec![]));
        assert_eq!(m.usage(7).distinct, held(1, 100));
        assert!(!m.usage(7).by_worker.contains_key("b"));
        m.register(w("a"), &[k(3, 0)]);
        assert_eq!(m.usage(7).distinct, held(1, 100));
        assert_eq!(m.usage(7).by_worker, BTreeMap::from([("a".into(), held(1, 100))]));
        let lost = Membership::new(Duration::from_millis(0));
        lost.register(w("c"), &[k(4, 0)]);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(lost.reap(), ["c"]);
        assert_eq!(lost.usage(7), DatasetUsage::default());
    }

    #[test]
    fn cached_counts_blocks_with_every_copy_reported() {
        let m = Membership::new(Duration::from_secs(60));
        m.register(w("a"), &[k(1, 0), k(1, 1)]);
        m.register(w("b"), &[k(1, 1)]);
        let blocks = [BlockId::new(1, 0), BlockId::new(1, 1), BlockId::new(1, 2)];
        assert_eq!(m.count_cached(blocks, 1), 2);
        assert_eq!(m.count_cached(blocks, 2), 1, "block 1/0's second copy is not reported yet");
        assert!(m.heartbeat("b", &[k(1, 0)], &[], vec![]));
        assert_eq!(m.count_cached(blocks, 2), 2);
        assert_eq!(m.count_cached(blocks, 3), 0);
    }

    #[test]
    fn reports_deltas_and_loss() {
        let m = Membership::new(Duration::from_millis(0));
        m.register(w("a"), &[k(1, 0), k(1, 1)]);
        m.register(w("b"), &[k(1, 1)]);
        assert!(m.heartbeat("a", &[k(2, 0)], &[k(1, 0)], vec![]));
        let locs = m.file_locations(1);
        assert_eq!(locs.len(), 1);
        assert_eq!(locs[0].index, 1);
        assert_eq!(locs[0].worker_ids, ["a", "b"]);
        assert_eq!(m.file_locations(2)[0].worker_ids, ["a"]);
        // Re-register replaces the whole report.
        m.register(w("a"), &[k(3, 0)]);
        assert!(m.file_locations(2).is_empty());
        std::thread::sleep(Duration::from_millis(2));
        let mut lost = m.reap();
        lost.sort();
        assert_eq!(lost, ["a", "b"]);
        assert_eq!(m.block_count(), 0);
        assert!(!m.heartbeat("a", &[], &[], vec![]), "a lost worker must re-register");
        assert!(!m.heartbeat("zz", &[], &[], vec![]));
    }
}
