//! Namespace syncs: one at a time per dataset (a slot claimed before it
//! starts), on request, in the background after a mount changed, and
//! periodically per mount; the blocks of content a sync retired are freed
//! from the workers once mounts have seen it.

use std::collections::HashMap;
use std::sync::Arc;

use shoal_core::dataset::Dataset;
use shoal_proto::master::{DatasetInfo, FreeCacheResponse, SyncProgress};
use tracing::{info, warn};

use super::{MasterService, State};
use crate::error::{MasterError, Result};
use crate::membership::Membership;
use crate::namespace;

impl State {
    /// Mark a sync of `name` as running, refusing a second concurrent one.
    pub(super) fn claim_sync(&self, name: &str) -> Result<()> {
        if !self.syncing.lock().expect("sync lock").insert(name.to_string()) {
            return Err(MasterError::SyncRunning(name.to_string()));
        }
        Ok(())
    }

    /// Run a sync of `info`, refusing a second concurrent one for the same dataset.
    /// `only`: the mount paths to re-list (`None`: all).
    pub(super) async fn run_sync(
        &self,
        info: DatasetInfo,
        only: Option<Vec<String>>,
        report: impl FnMut(&SyncProgress),
    ) -> Result<DatasetInfo> {
        self.claim_sync(info.spec.as_ref().map(|s| s.name.as_str()).unwrap_or_default())?;
        self.sync_claimed(info, only, report).await
    }

    /// Run a sync whose slot [`State::claim_sync`] took; frees the slot.
    pub(super) async fn sync_claimed(
        &self,
        info: DatasetInfo,
        only: Option<Vec<String>>,
        report: impl FnMut(&SyncProgress),
    ) -> Result<DatasetInfo> {
        let name = info.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let result = async {
            let stores = self.stores(&info)?;
            let only = match only {
                None => stores.dataset.mounts.iter().map(|m| m.path.clone()).collect(),
                Some(paths) => {
                    if let Some(p) = paths.iter().find(|p| !stores.dataset.mounts.iter().any(|m| &m.path == *p)) {
                        return Err(MasterError::InvalidArgument(format!("dataset {name:?} has no mount at {p:?}")));
                    }
                    paths
                }
            };
            let mut seen = 0;
            let ds = name.clone();
            let mut report = report;
            namespace::sync(&self.meta, info, &stores, &only, move |p: &SyncProgress| {
                crate::metrics::SYNC_ENTRIES.with_label_values(&[ds.as_str()]).inc_by(p.entries_listed - seen);
                seen = p.entries_listed;
                if p.done {
                    for (change, n) in [("added", p.added), ("changed", p.changed), ("deleted", p.deleted)] {
                        crate::metrics::SYNC_CHANGES.with_label_values(&[ds.as_str(), change]).inc_by(n);
                    }
                }
                report(p)
            })
            .await
        }
        .await;
        let result = result.map(|synced| {
            self.free_later(&name, synced.retired);
            synced.info
        });
        self.syncing.lock().expect("sync lock").remove(&name);
        crate::metrics::SYNCS.with_label_values(&[name.as_str(), if result.is_ok() { "ok" } else { "error" }]).inc();
        if let Ok(info) = &result {
            info!(dataset = %name, files = info.file_count, bytes = info.total_bytes, "sync finished");
        }
        result
    }

    /// List mounts `paths` of `info` in a task of its own.
    pub(super) fn sync_in_background(self: &Arc<Self>, info: DatasetInfo, paths: Vec<String>) {
        let this = self.clone();
        tokio::spawn(async move {
            let name = info.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
            if let Err(e) = this.run_sync(info, Some(paths), |_| {}).await {
                warn!(dataset = %name, error = %e, "sync of the changed mounts failed");
            }
        });
    }

    /// Free the cached blocks of content no path points to any more, once
    /// mounts have seen the sync: until then a mount may still read the old
    /// content, which must not be fetched again from a store holding the new.
    pub(super) fn free_later(&self, dataset: &str, retired: Vec<u64>) {
        if retired.is_empty() {
            return;
        }
        let (members, pool, grace, ds) =
            (self.members.clone(), self.pool.clone(), self.stale_block_grace, dataset.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let stale: Vec<shoal_core::BlockId> = retired
                .iter()
                .flat_map(|f| members.file_locations(*f).into_iter().map(|l| shoal_core::BlockId::new(*f, l.index)))
                .collect();
            let freed = free_on_workers(&members, &pool, stale).await;
            info!(dataset = %ds, blocks = freed.blocks_freed, bytes = freed.bytes_freed, "freed cached blocks of changed and deleted files");
        });
    }
}

impl MasterService {
    /// Sync every mount whose sync interval has passed (one dataset at a
    /// time; the due mounts of a dataset in one sync).
    pub async fn sync_due(&self) {
        let Ok(datasets) = self.meta.list_datasets() else { return };
        let now = namespace::now_unix();
        for d in datasets {
            let Ok(ds) = Dataset::from_info(&d) else { continue };
            let due: Vec<String> = {
                let attempts = self.sync_attempts.lock().expect("attempts lock");
                (0..ds.mounts.len())
                    .filter(|i| {
                        let Some(every) = ds.sync_interval_of(*i) else { return false };
                        let path = &ds.mounts[*i].path;
                        let synced = d.mount_synced_unix.get(path).copied().unwrap_or(d.last_sync_unix);
                        let tried = attempts.get(&(ds.name.clone(), path.clone())).copied().unwrap_or(0);
                        synced.max(tried) + every.as_secs() as i64 <= now
                    })
                    .map(|i| ds.mounts[i].path.clone())
                    .collect()
            };
            if due.is_empty() {
                continue;
            }
            self.sync_attempts
                .lock()
                .expect("attempts lock")
                .extend(due.iter().map(|p| ((ds.name.clone(), p.clone()), now)));
            if let Err(e) = self.run_sync(d, Some(due), |_| {}).await {
                warn!(dataset = %ds.name, error = %e, "periodic sync failed");
            }
        }
    }
}

/// Ask the workers holding any of `blocks` to drop them; what they freed.
/// A worker that cannot be reached is skipped with a warning.
pub(super) async fn free_on_workers(
    members: &Membership,
    pool: &crate::pool::WorkerPool,
    blocks: Vec<shoal_core::BlockId>,
) -> FreeCacheResponse {
    let mut by_worker: HashMap<(String, String), Vec<shoal_core::BlockId>> = HashMap::new();
    for b in blocks {
        for holder in members.holder_addresses(b) {
            by_worker.entry(holder).or_default().push(b);
        }
    }
    // All workers at once, each call bounded: a hung worker delays nothing else.
    // What a worker freed leaves the map at once: a prewarm right after must
    // not count those copies as still there.
    let calls = by_worker.into_iter().map(|((id, addr), ids)| async move {
        let blocks = ids.iter().map(|b| shoal_proto::worker::BlockId { file_id: b.file_id, index: b.index }).collect();
        let Some(mut c) = pool.client(&addr) else {
            warn!(worker = %addr, "bad worker address");
            return None;
        };
        match c.free_blocks(shoal_proto::worker::FreeBlocksRequest { blocks }).await {
            Ok(r) => {
                members.forget(&id, &ids);
                Some(r.into_inner())
            }
            Err(s) => {
                warn!(worker = %addr, error = %s.message(), "cannot free blocks on a worker");
                None
            }
        }
    });
    let mut out = FreeCacheResponse::default();
    for r in futures::future::join_all(calls).await.into_iter().flatten() {
        out.blocks_freed += r.blocks_freed;
        out.bytes_freed += r.bytes_freed;
    }
    out
}
