//! Where a mount's blocks are: the live workers as the master lists them (with
//! their placement ring, built once per list change rather than per block), and
//! the workers the master lists as holding a file's blocks: one lookup per file,
//! shared by the concurrent misses of its blocks and kept for a few seconds, not
//! one per missed block. Holders are a hint (a stale one costs a failed try, then
//! the owner), so a short staleness is safe.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use shoal_core::placement::Ring;
use shoal_core::BlockId;
use shoal_proto::master::{BlockLocationsRequest, Inode, ListWorkersRequest, WorkerInfo};
use tracing::debug;

/// How long a file's holder list is reused.
const HOLDERS_FOR: Duration = Duration::from_secs(3);
/// How long a location lookup may take before the read goes on without it.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the master is not asked again after a lookup failed.
const MASTER_DOWN_FOR: Duration = Duration::from_secs(5);

/// One worker list and its placement ring.
#[derive(Debug, Default)]
pub struct Workers {
    pub list: Vec<WorkerInfo>,
    /// The workers that own blocks by placement (a draining worker owns none,
    /// though it still serves the blocks it holds).
    ring: Ring,
}

impl Workers {
    pub fn new(list: Vec<WorkerInfo>) -> Workers {
        let ring = Ring::new(list.iter().filter(|w| !w.draining).map(|w| w.id.as_str()));
        Workers { list, ring }
    }

    /// `list` as the next worker list: the ring is rebuilt only when who owns
    /// blocks changed (ids, draining), not when usage figures did.
    fn next(&self, list: Vec<WorkerInfo>) -> Workers {
        let owners = |l: &[WorkerInfo]| l.iter().map(|w| (w.id.clone(), w.draining)).collect::<Vec<_>>();
        if owners(&self.list) == owners(&list) {
            return Workers { list, ring: self.ring.clone() };
        }
        Workers::new(list)
    }

    pub fn get(&self, id: &str) -> Option<&WorkerInfo> {
        self.list.iter().find(|w| w.id == id)
    }

    /// Worker ids by preference for `block` (the first is its owner).
    pub fn rank(&self, block: BlockId) -> Vec<&str> {
        self.ring.rank(block)
    }

    pub fn owner(&self, block: BlockId) -> Option<&WorkerInfo> {
        self.ring.owner(block).and_then(|id| self.get(id))
    }

    /// The worker on node `node`, if any.
    pub fn on_node(&self, node: &str) -> Option<&WorkerInfo> {
        self.list.iter().find(|w| w.node == node)
    }

    /// Bytes of tier quota of these workers.
    pub fn capacity(&self) -> u64 {
        self.list.iter().flat_map(|w| &w.tiers).map(|t| t.quota_bytes).sum()
    }

    /// Addresses of `ids` (those this list knows), but `except`.
    pub fn addresses(&self, ids: &[String], except: &str) -> Vec<String> {
        ids.iter().filter(|h| *h != except).filter_map(|h| self.get(h).map(|w| w.address.clone())).collect()
    }
}

/// The worker list after a refresh listed `live`; `None` keeps the current
/// one. A master that just became leader lists no worker until they register
/// again (their next heartbeat): one empty answer while workers were known is
/// not believed, a second one in a row is.
fn next_workers(current: &[WorkerInfo], live: Vec<WorkerInfo>, empty_refreshes: &AtomicU32) -> Option<Vec<WorkerInfo>> {
    if live.is_empty() && !current.is_empty() && empty_refreshes.fetch_add(1, Ordering::Relaxed) == 0 {
        debug!("the master lists no live worker (a new leader?); keeping the last list for one refresh");
        return None;
    }
    if !live.is_empty() {
        empty_refreshes.store(0, Ordering::Relaxed);
    }
    Some(live)
}

/// Block holders of each file by index, from one lookup.
type Holders = Arc<HashMap<u32, Vec<String>>>;

pub struct Locator {
    dataset: String,
    master: shoal_proto::auth::Master,
    workers: RwLock<Arc<Workers>>,
    /// Refreshes in a row that listed no live worker while this mount knew some.
    empty_refreshes: AtomicU32,
    master_down_until: Mutex<Option<Instant>>,
    holders: moka::future::Cache<u64, Holders>,
}

impl Locator {
    pub fn new(dataset: String, master: shoal_proto::auth::Master) -> Locator {
        Locator {
            dataset,
            master,
            workers: RwLock::default(),
            empty_refreshes: AtomicU32::new(0),
            master_down_until: Mutex::new(None),
            holders: moka::future::Cache::builder().max_capacity(65_536).time_to_live(HOLDERS_FOR).build(),
        }
    }

    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    /// The current worker list (cheap: shared until the next change).
    pub fn workers(&self) -> Arc<Workers> {
        self.workers.read().expect("workers lock").clone()
    }

    /// Refresh the live worker list from the master now; keeps the old list if
    /// the master cannot be reached (reads go on without it).
    pub async fn refresh(&self) {
        match self.master.clone().list_workers(ListWorkersRequest {}).await {
            Ok(r) => {
                let live: Vec<WorkerInfo> = r.into_inner().workers.into_iter().filter(|w| w.alive).collect();
                let mut workers = self.workers.write().expect("workers lock");
                if live == workers.list {
                    return;
                }
                if let Some(next) = next_workers(&workers.list, live, &self.empty_refreshes) {
                    *workers = Arc::new(workers.next(next));
                }
            }
            Err(e) => debug!(error = %e.message(), "cannot refresh workers; keeping the last list"),
        }
    }

    /// Workers the master lists as holding block `index` of `inode`. With one
    /// worker or none there is nothing to choose between, and the master is not
    /// asked. A short timeout, and a pause after a failure, keep a dead master
    /// from slowing reads down.
    pub async fn holders(&self, inode: &Inode, index: u32) -> Vec<String> {
        if self.workers().list.len() < 2 {
            return Vec::new();
        }
        let file = self.holders.optionally_get_with(inode.ino, self.lookup(inode.ino)).await;
        file.and_then(|f| f.get(&index).cloned()).unwrap_or_default()
    }

    async fn lookup(&self, ino: u64) -> Option<Holders> {
        if self.master_down_until.lock().expect("master lock").is_some_and(|t| Instant::now() < t) {
            return None;
        }
        crate::metrics::LOCATION_LOOKUPS.inc();
        let req = BlockLocationsRequest { dataset: self.dataset.clone(), ino };
        let res = tokio::time::timeout(LOOKUP_TIMEOUT, self.master.clone().get_block_locations(req)).await;
        let Ok(Ok(resp)) = res else {
            *self.master_down_until.lock().expect("master lock") = Some(Instant::now() + MASTER_DOWN_FOR);
            return None;
        };
        Some(Arc::new(resp.into_inner().blocks.into_iter().map(|b| (b.index, b.worker_ids)).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str) -> WorkerInfo {
        WorkerInfo { id: id.into(), alive: true, ..Default::default() }
    }

    #[test]
    fn one_empty_worker_list_after_known_workers_is_not_believed() {
        let streak = AtomicU32::new(0);
        assert!(next_workers(&[w("a")], Vec::new(), &streak).is_none(), "the first empty answer is ignored");
        assert_eq!(next_workers(&[w("a")], Vec::new(), &streak), Some(Vec::new()), "the second is believed");
        assert_eq!(next_workers(&[], vec![w("b")], &streak), Some(vec![w("b")]));
        assert!(next_workers(&[w("b")], Vec::new(), &streak).is_none(), "a list resets the streak");
        assert_eq!(next_workers(&[], Vec::new(), &streak), Some(Vec::new()), "nothing known: nothing to keep");
    }

    #[test]
    fn a_draining_worker_owns_nothing_but_is_still_known() {
        let mut d = w("d");
        d.draining = true;
        let ws = Workers::new(vec![w("a"), d, w("b")]);
        for i in 0..200 {
            let b = BlockId::new(7, i);
            assert_ne!(ws.owner(b).map(|w| w.id.as_str()), Some("d"));
            assert_eq!(ws.rank(b), shoal_core::placement::rank(["a", "b"], b));
        }
        assert!(ws.get("d").is_some());
        assert_eq!(ws.addresses(&["a".into(), "d".into(), "zz".into()], "a").len(), 1, "unknown ids are dropped");
    }

    #[test]
    fn usage_changes_keep_the_ring_and_membership_changes_rebuild_it() {
        let ws = Workers::new(vec![w("a"), w("b")]);
        let mut busier = w("a");
        busier.address = "10.0.0.9:1".into();
        busier.tiers = vec![Default::default()];
        let same = ws.next(vec![busier, w("b")]);
        assert_eq!(same.ring, ws.ring);
        assert_eq!(same.get("a").map(|w| w.address.as_str()), Some("10.0.0.9:1"), "the new list is used");
        let mut d = w("b");
        d.draining = true;
        let changed = ws.next(vec![w("a"), d]);
        assert_eq!(changed.ring.len(), 1, "a worker that starts draining leaves the ring");
        assert_eq!(ws.next(vec![w("a"), w("b"), w("c")]).ring.len(), 3);
    }
}
