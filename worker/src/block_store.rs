//! The tiered block store: an ordered list of tiers (MEM first, then SSD), each a
//! [`TierDir`] indexed by a `moka` cache weighted by bytes. When a tier's cache
//! passes its high watermark, `moka` evicts by W-TinyLFU; an evicted MEM block is
//! demoted to the next tier, an evicted block of the last tier is deleted. Usage
//! never exceeds a tier's quota: space is reserved before a file is written.
//!
//! Every change of what this worker holds is queued as a delta for the next
//! heartbeat. All methods do blocking file I/O: call them off the async runtime.

use std::sync::{Arc, Mutex};

use moka::notification::RemovalCause;
use shoal_core::BlockId;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::{debug, warn};

use crate::error::WorkerError;
use crate::tier::{BlockFile, TierDir, TierKind, TierSpec};

/// Share of the quota at which a tier starts evicting.
pub const HIGH_WATERMARK: f64 = 0.95;

/// Added and removed blocks since the last heartbeat.
#[derive(Debug, Default)]
pub struct Deltas {
    pub added: Vec<BlockId>,
    pub removed: Vec<BlockId>,
}

/// A cached block: which tier holds it and its file.
#[derive(Debug, Clone)]
pub struct Cached {
    pub tier: TierKind,
    pub file: Arc<BlockFile>,
}

struct Tier {
    dir: Arc<TierDir>,
    index: moka::sync::Cache<BlockId, Arc<BlockFile>>,
    hits: AtomicU64,
}

/// Counters for stats and metrics.
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub evictions: AtomicU64,
    pub demotions: AtomicU64,
}

pub struct BlockStore {
    tiers: Vec<Tier>,
    deltas: Arc<Mutex<Deltas>>,
    counters: Arc<StoreCounters>,
}

impl std::fmt::Debug for BlockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockStore").field("tiers", &self.tiers.iter().map(|t| &t.dir).collect::<Vec<_>>()).finish()
    }
}

/// Copy a block file into `to` (space reserved by the caller).
fn copy_into(to: &TierDir, file: &BlockFile) -> Result<BlockFile, WorkerError> {
    let data =
        std::fs::read(&file.path).map_err(|e| WorkerError::Io(format!("demoting {}", file.path.display()), e))?;
    to.write(file.id, &data, file.crc)
}

impl BlockStore {
    /// Open the tiers in the order given (fastest first), dropping partial files
    /// and indexing the complete ones.
    pub fn open(specs: &[TierSpec]) -> Result<Self, WorkerError> {
        if specs.is_empty() {
            return Err(WorkerError::Config("at least one --tier is required".into()));
        }
        let deltas = Arc::new(Mutex::new(Deltas::default()));
        let counters = Arc::new(StoreCounters::default());
        // Build from the last tier up, so each tier's listener can demote into the next.
        let mut built: Vec<Tier> = Vec::new();
        for spec in specs.iter().rev() {
            let dir = Arc::new(TierDir::open(spec)?);
            let next = built.last().map(|t: &Tier| (t.dir.clone(), t.index.clone()));
            let listener_dir = dir.clone();
            let listener_deltas = deltas.clone();
            let listener_counters = counters.clone();
            let high = ((spec.quota as f64) * HIGH_WATERMARK) as u64;
            let index = moka::sync::Cache::builder()
                .max_capacity(high.max(1))
                .weigher(|_, f: &Arc<BlockFile>| f.len.min(u32::MAX as u64) as u32)
                .eviction_listener(move |id: Arc<BlockId>, file: Arc<BlockFile>, cause| {
                    let demoted = cause == RemovalCause::Size
                        && next.as_ref().is_some_and(|(ndir, nindex)| {
                            if nindex.contains_key(&*id) || !ndir.reserve(file.len) {
                                return false;
                            }
                            match copy_into(ndir, &file) {
                                Ok(copy) => {
                                    nindex.insert(*id, Arc::new(copy));
                                    true
                                }
                                Err(e) => {
                                    warn!(block = %id, error = %e, "demotion failed; dropping block");
                                    false
                                }
                            }
                        });
                    listener_dir.remove(&file);
                    if cause == RemovalCause::Size {
                        listener_counters.evictions.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::EVICTIONS.with_label_values(&[listener_dir.kind.as_str()]).inc();
                    }
                    if demoted {
                        listener_counters.demotions.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::DEMOTIONS.inc();
                        debug!(block = %id, "block demoted");
                    } else if cause != RemovalCause::Replaced {
                        listener_deltas.lock().expect("deltas lock").removed.push(*id);
                    }
                })
                .build();
            built.push(Tier { dir, index, hits: AtomicU64::new(0) });
        }
        built.reverse();
        let store = Self { tiers: built, deltas, counters };
        // Index what survived a restart. A block present in two tiers (a crash
        // mid-demotion) is kept in the faster one.
        for tier in &store.tiers {
            for file in tier.dir.scan() {
                if store.get_quiet(file.id).is_some() {
                    tier.dir.remove(&file);
                    continue;
                }
                tier.index.insert(file.id, Arc::new(file));
            }
            tier.index.run_pending_tasks();
        }
        store.deltas.lock().expect("deltas lock").removed.clear();
        Ok(store)
    }

    fn get_quiet(&self, id: BlockId) -> Option<Cached> {
        self.tiers.iter().find_map(|t| t.index.get(&id).map(|file| Cached { tier: t.dir.kind, file }))
    }

    /// Look a block up (counts as a hit on the tier that holds it).
    pub fn get(&self, id: BlockId) -> Option<Cached> {
        for t in &self.tiers {
            if let Some(file) = t.index.get(&id) {
                t.hits.fetch_add(1, Ordering::Relaxed);
                return Some(Cached { tier: t.dir.kind, file });
            }
        }
        None
    }

    pub fn contains(&self, id: BlockId) -> bool {
        self.tiers.iter().any(|t| t.index.contains_key(&id))
    }

    /// Store a block in the fastest tier with room. Returns `None` if no tier can
    /// take it (every tier full of blocks that cannot go yet).
    pub fn insert(&self, id: BlockId, data: &[u8]) -> Result<Option<Cached>, WorkerError> {
        if let Some(c) = self.get_quiet(id) {
            return Ok(Some(c));
        }
        let crc = shoal_core::mapped::checksum(data);
        let len = data.len() as u64;
        for t in &self.tiers {
            if len > t.dir.quota {
                continue;
            }
            if !t.dir.reserve(len) {
                // Let the cache evict down to its watermark, then try once more.
                t.index.run_pending_tasks();
                if !t.dir.reserve(len) {
                    continue;
                }
            }
            let file = Arc::new(t.dir.write(id, data, crc)?);
            self.deltas.lock().expect("deltas lock").added.push(id);
            t.index.insert(id, file);
            t.index.run_pending_tasks();
            // The admission policy may have sent the new block straight to a lower
            // tier (or out): report where it really is.
            return Ok(self.get_quiet(id));
        }
        Ok(None)
    }

    /// Drop a block (freed by a user, or it failed its checksum); returns the
    /// bytes it held.
    pub fn remove(&self, id: BlockId) -> Option<u64> {
        let mut freed = None;
        for t in &self.tiers {
            if let Some(f) = t.index.remove(&id) {
                freed = Some(f.len);
            }
            t.index.run_pending_tasks();
        }
        freed
    }

    /// Take the deltas accumulated since the last call.
    pub fn take_deltas(&self) -> Deltas {
        std::mem::take(&mut *self.deltas.lock().expect("deltas lock"))
    }

    /// Put back deltas a heartbeat could not deliver.
    pub fn restore_deltas(&self, d: Deltas) {
        let mut cur = self.deltas.lock().expect("deltas lock");
        let mut added = d.added;
        added.append(&mut cur.added);
        cur.added = added;
        let mut removed = d.removed;
        removed.append(&mut cur.removed);
        cur.removed = removed;
    }

    /// Every block held, for a full report.
    pub fn all_blocks(&self) -> Vec<BlockId> {
        let mut out: Vec<BlockId> = self.tiers.iter().flat_map(|t| t.index.iter().map(|(k, _)| *k)).collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn tier_stats(&self) -> Vec<(TierKind, &std::path::Path, u64, u64, u64, u64)> {
        self.tiers
            .iter()
            .map(|t| {
                (
                    t.dir.kind,
                    t.dir.dir.as_path(),
                    t.dir.quota,
                    t.dir.used(),
                    t.index.entry_count(),
                    t.hits.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    pub fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    /// Run the caches' pending maintenance (evictions) now.
    pub fn settle(&self) {
        for t in &self.tiers {
            t.index.run_pending_tasks();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(d: &std::path::Path, mem: u64, ssd: u64) -> Vec<TierSpec> {
        vec![
            TierSpec { kind: TierKind::Mem, dir: d.join("mem"), quota: mem },
            TierSpec { kind: TierKind::Ssd, dir: d.join("ssd"), quota: ssd },
        ]
    }

    #[test]
    fn fills_mem_then_demotes_within_quota() {
        let d = tempfile::tempdir().unwrap();
        let store = BlockStore::open(&specs(d.path(), 4000, 100_000)).unwrap();
        for i in 0..20u32 {
            let data = vec![i as u8; 1000];
            let c = store.insert(BlockId::new(1, i), &data).unwrap().expect("room somewhere");
            assert!(c.file.path.exists());
            let stats = store.tier_stats();
            assert!(stats[0].3 <= 4000, "mem usage {} over quota", stats[0].3);
        }
        store.settle();
        let stats = store.tier_stats();
        assert!(stats[0].3 <= 4000);
        assert!(stats[1].4 > 0, "blocks were demoted to ssd");
        assert!(store.counters().demotions.load(Ordering::Relaxed) > 0);
        // Every block is still somewhere, with the right bytes.
        for i in 0..20u32 {
            let c = store.get(BlockId::new(1, i)).expect("still cached");
            assert_eq!(std::fs::read(&c.file.path).unwrap(), vec![i as u8; 1000]);
        }
        assert_eq!(store.all_blocks().len(), 20);
        let deltas = store.take_deltas();
        assert_eq!(deltas.added.len(), 20);
        assert!(deltas.removed.is_empty(), "demotion is not a removal: {:?}", deltas.removed);

        // Reopen: the restart scan finds the same blocks.
        drop(store);
        let store = BlockStore::open(&specs(d.path(), 4000, 100_000)).unwrap();
        assert_eq!(store.all_blocks().len(), 20);
    }

    #[test]
    fn last_tier_eviction_is_a_removal() {
        let d = tempfile::tempdir().unwrap();
        let store = BlockStore::open(&specs(d.path(), 2000, 3000)).unwrap();
        for i in 0..10u32 {
            store.insert(BlockId::new(2, i), &[7u8; 1000]).unwrap();
            store.settle();
            let s = store.tier_stats();
            assert!(s[0].3 <= 2000 && s[1].3 <= 3000, "{:?}", s);
        }
        let held = store.all_blocks().len();
        assert!((2..=5).contains(&held), "held {held}");
        let deltas = store.take_deltas();
        assert_eq!(deltas.added.len() - deltas.removed.len(), held);
    }
}
