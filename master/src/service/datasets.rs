//! Dataset records: creating a dataset (its mounts checked, reachable, and
//! outside the master's own state) and replacing its mounts, and the opened
//! stores of each dataset by spec revision.

use std::sync::Arc;

use rocksdb::WriteBatch;
use shoal_core::dataset::{mount_specs, validate_mounts, Dataset, Mount, Stores};
use shoal_core::ids::validate_block_size;
use shoal_core::{validate_dataset_name, StoreSpec, UnderStore, DEFAULT_BLOCK_SIZE};
use shoal_proto::master::{CreateDatasetRequest, DatasetInfo, MountSpec, UpdateDatasetRequest};
use tracing::info;

use super::State;
use crate::error::{MasterError, Result};
use crate::meta::ROOT_INO;
use crate::namespace;

impl State {
    /// Refuse a local-directory store outside the roots an admin allowed.
    pub(super) fn check_local_root(&self, spec: &StoreSpec) -> Result<()> {
        if spec.service != "fs" {
            return Ok(());
        }
        let root = std::path::Path::new(spec.config.get("root").map(String::as_str).unwrap_or("/"));
        // Resolved, so that neither '..' nor a symbolic link leads outside.
        let real = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        if self.data_dir.starts_with(&real) || real.starts_with(&self.data_dir) {
            return Err(MasterError::InvalidArgument(format!(
                "local directory {} holds the master's own state ({}); it cannot be a dataset",
                real.display(),
                self.data_dir.display()
            )));
        }
        if self.local_roots.iter().any(|allowed| real.starts_with(allowed)) {
            return Ok(());
        }
        Err(MasterError::LocalRootRefused(real.display().to_string()))
    }

    pub(super) fn stores(&self, info: &DatasetInfo) -> Result<Arc<Stores>> {
        let mut stores = self.stores.lock().expect("stores lock");
        if let Some((rev, s)) = stores.get(&info.id) {
            if *rev == info.spec_revision {
                return Ok(s.clone());
            }
        }
        let opened = Arc::new(Stores::open(Dataset::from_info(info)?, false)?);
        stores.insert(info.id, (info.spec_revision, opened.clone()));
        Ok(opened)
    }

    /// A dataset's mounts from the wire, checked: paths that do not nest,
    /// URIs and options that parse, local directories an admin allowed.
    pub(super) fn check_mounts(&self, specs: &[MountSpec]) -> Result<Vec<Mount>> {
        let mounts = specs.iter().map(Mount::from_spec).collect::<std::result::Result<Vec<_>, _>>()?;
        validate_mounts(&mounts)?;
        for m in &mounts {
            self.check_local_root(&m.store_spec()?)?;
        }
        Ok(mounts)
    }

    /// Refuse an unreachable or misconfigured store before anything is written.
    pub(super) async fn check_reachable(mounts: &[&Mount]) -> Result<()> {
        for m in mounts {
            UnderStore::open(&m.store_spec()?)?.check().await?;
        }
        Ok(())
    }

    pub(super) async fn create(&self, req: CreateDatasetRequest) -> Result<DatasetInfo> {
        let mut spec = req.spec.ok_or_else(|| MasterError::InvalidArgument("missing dataset spec".into()))?;
        validate_dataset_name(&spec.name)?;
        let mounts = self.check_mounts(&mount_specs(&spec))?;
        spec.mounts = mounts.iter().map(Mount::to_spec).collect();
        spec.mount = None;
        if spec.namespace.is_empty() {
            spec.namespace = "default".into();
        }
        if !shoal_proto::auth::valid_namespace(&spec.namespace) {
            return Err(MasterError::InvalidArgument(format!(
                "namespace {:?} is not a Kubernetes namespace name (lowercase letters, digits and '-')",
                spec.namespace
            )));
        }
        let cache = spec.cache.get_or_insert_with(Default::default);
        if cache.block_size == 0 {
            cache.block_size = DEFAULT_BLOCK_SIZE;
        }
        validate_block_size(cache.block_size)?;
        cache.replicas = cache.replicas.max(1);

        let _guard = self.create_lock.lock().await;
        if self.meta.get_dataset(&spec.name)?.is_some() {
            return Err(MasterError::DatasetExists(spec.name));
        }
        Self::check_reachable(&mounts.iter().collect::<Vec<_>>()).await?;

        let mut batch = WriteBatch::default();
        let id = self.meta.alloc_dataset_id();
        let now = namespace::now_unix();
        let info = DatasetInfo { id, spec: Some(spec), created_unix: now, root_inode: ROOT_INO, ..Default::default() };
        self.meta.put_inode(&mut batch, id, &namespace::root_inode(now));
        self.meta.put_dataset(&mut batch, &info);
        let name = info.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        // The first sync is claimed before the dataset is visible, so a periodic
        // sync cannot start in between and make this one fail as already running.
        if req.sync {
            self.claim_sync(&name)?;
        }
        if let Err(e) = self.meta.write(batch).await {
            self.syncing.lock().expect("sync lock").remove(&name);
            return Err(e);
        }
        drop(_guard);
        info!(dataset = %name, id, mounts = mounts.len(), "dataset created");
        if req.sync {
            return self.sync_claimed(info, None, |_| {}).await;
        }
        Ok(info)
    }

    /// Replace the mounts of dataset `req.name` (see `UpdateDatasetRequest`);
    /// returns the new record. A changed store is checked first, and listed
    /// afterwards in the background if `req.sync`; what removed mounts held is
    /// dropped from the namespace before this returns.
    pub(super) async fn update(self: &Arc<Self>, req: UpdateDatasetRequest) -> Result<DatasetInfo> {
        let _guard = self.create_lock.lock().await;
        let record = self.meta.record_lock.lock().await;
        let mut info = self.dataset(&req.name)?;
        let spec = info.spec.get_or_insert_with(Default::default);
        let held = self.check_mounts(&mount_specs(spec))?;
        let mounts = if req.mounts.is_empty() {
            held.clone()
        } else {
            let mut specs = req.mounts;
            for m in &mut specs {
                let path = if m.path.is_empty() { "/" } else { m.path.as_str() };
                // A redacted value stands for the value held (a client never sees it).
                let Some(old) = held.iter().find(|h| h.path == path) else { continue };
                for (k, v) in m.options.iter_mut() {
                    if v == shoal_core::uri::REDACTED {
                        if let Some(kept) = old.options.get(k) {
                            v.clone_from(kept);
                        }
                    }
                }
            }
            self.check_mounts(&specs)?
        };
        let changed: Vec<&Mount> = mounts
            .iter()
            .filter(|m| !held.iter().any(|h| h.path == m.path && h.uri == m.uri && h.options == m.options))
            .collect();
        Self::check_reachable(&changed).await?;
        let removed = held.iter().filter(|h| !mounts.iter().any(|m| m.path == h.path)).count();
        let new_specs: Vec<MountSpec> = mounts.iter().map(Mount::to_spec).collect();
        let interval = req.sync_interval_seconds.unwrap_or(spec.sync_interval_seconds);
        if new_specs == spec.mounts && spec.mount.is_none() && interval == spec.sync_interval_seconds {
            return Ok(info);
        }
        spec.mounts = new_specs;
        spec.mount = None;
        spec.sync_interval_seconds = interval;
        info.spec_revision += 1;
        // What a removed mount held leaves the namespace now (a sync that
        // lists nothing and keeps the other mounts), so its slot is taken first.
        if removed > 0 {
            self.claim_sync(&req.name)?;
        }
        let mut batch = WriteBatch::default();
        self.meta.put_dataset(&mut batch, &info);
        if let Err(e) = self.meta.write(batch).await {
            if removed > 0 {
                self.syncing.lock().expect("sync lock").remove(&req.name);
            }
            return Err(e);
        }
        self.stores.lock().expect("stores lock").remove(&info.id);
        info!(dataset = %req.name, revision = info.spec_revision, changed = changed.len(), removed, "mounts updated");
        drop(record);
        drop(_guard);
        let relist: Vec<String> = if req.sync { changed.iter().map(|m| m.path.clone()).collect() } else { Vec::new() };
        let info = if removed > 0 { self.sync_claimed(info, Some(Vec::new()), |_| {}).await? } else { info };
        if !relist.is_empty() {
            self.sync_in_background(info.clone(), relist);
        }
        Ok(info)
    }
}
