//! The replicated state machine: the master's metadata store
//! ([`MetaStore`]). A committed command is applied with a record of its log
//! id and the membership in the same RocksDB write, so a restart resumes
//! exactly after the last command applied. A snapshot is the whole store
//! ([`MetaStore::export`]), kept in `<data_dir>/raft-snapshot/snapshot` (its
//! metadata and the state in one file, synced and renamed into place) so a
//! follower that lags behind the purged log can be sent it after a restart
//! too; a master whose state lost applied writes in a crash (they are synced
//! only when a snapshot is taken) starts again from that snapshot.

// openraft's traits fix the error type (`StorageError`, large); helpers return it too.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{Entry, TypeConfig};
use crate::meta::MetaStore;

type StorageResult<T> = Result<T, StorageError<u64>>;
type Membership = StoredMembership<u64, BasicNode>;

/// What `KEY_APPLIED` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    last: Option<LogId<u64>>,
    membership: Membership,
}

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(&e)).into()
}

fn snap_err(
    meta: Option<&SnapshotMeta<u64, BasicNode>>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError<u64> {
    StorageIOError::new(ErrorSubject::Snapshot(meta.map(|m| m.signature())), verb, AnyError::new(&e)).into()
}

pub struct StateMachine {
    meta: Arc<MetaStore>,
    files: Arc<Files>,
    membership: Membership,
}

/// The current snapshot's file, written by the builder and by installs (which
/// openraft runs at the same time): one at a time, never an older one over a
/// newer one.
struct Files {
    dir: PathBuf,
    /// The last log id of the snapshot on disk.
    current: std::sync::Mutex<Option<LogId<u64>>>,
}

impl StateMachine {
    pub fn new(meta: Arc<MetaStore>, dir: &Path) -> StorageResult<StateMachine> {
        std::fs::create_dir_all(dir).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let on_disk = load(dir)?;
        let mut applied = read_applied(&meta)?;
        // Applied writes are synced only with snapshots: after a crash of the
        // machine the state may be behind its own last snapshot (whose log may
        // be purged). Take the snapshot again.
        if let Some(snap) = &on_disk {
            if snap.meta.last_log_id > applied.last {
                tracing::warn!(state = ?applied.last, snapshot = ?snap.meta.last_log_id,
                    "the state is behind its snapshot; restoring the snapshot");
                meta.import(snap.snapshot.get_ref()).map_err(|e| snap_err(Some(&snap.meta), ErrorVerb::Read, e))?;
                let record = Applied { last: snap.meta.last_log_id, membership: snap.meta.last_membership.clone() };
                let record = serde_json::to_vec(&record).map_err(|e| sm_err(ErrorVerb::Write, e))?;
                meta.set_applied(&record).map_err(|e| sm_err(ErrorVerb::Write, e))?;
                applied = read_applied(&meta)?;
            }
        }
        let current = std::sync::Mutex::new(on_disk.and_then(|s| s.meta.last_log_id));
        let files = Arc::new(Files { dir: dir.to_path_buf(), current });
        Ok(StateMachine { meta, files, membership: applied.membership })
    }
}

fn read_applied(meta: &MetaStore) -> StorageResult<Applied> {
    match meta.applied().map_err(|e| sm_err(ErrorVerb::Read, e))? {
        None => Ok(Applied::default()),
        Some(v) => serde_json::from_slice(&v).map_err(|e| sm_err(ErrorVerb::Read, e)),
    }
}

impl Files {
    /// Keep `data` as the current snapshot unless the one on disk is newer:
    /// its metadata's length, the metadata and the state in one file, written
    /// aside, synced, and renamed into place.
    fn save(&self, meta: &SnapshotMeta<u64, BasicNode>, data: &[u8]) -> StorageResult<()> {
        use std::io::Write;
        let mut current = self.current.lock().expect("snapshot lock");
        if *current > meta.last_log_id {
            return Ok(());
        }
        let err = |e: std::io::Error| snap_err(Some(meta), ErrorVerb::Write, e);
        let m = serde_json::to_vec(meta).map_err(|e| snap_err(Some(meta), ErrorVerb::Write, e))?;
        let tmp = self.dir.join("snapshot.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&(m.len() as u32).to_be_bytes()).map_err(err)?;
        f.write_all(&m).map_err(err)?;
        f.write_all(data).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, self.dir.join("snapshot")).map_err(err)?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(err)?;
        *current = meta.last_log_id;
        Ok(())
    }
}

fn load(dir: &Path) -> StorageResult<Option<Snapshot<TypeConfig>>> {
    let bad = |what: &str| snap_err(None, ErrorVerb::Read, std::io::Error::other(format!("snapshot file: {what}")));
    let data = match std::fs::read(dir.join("snapshot")) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(snap_err(None, ErrorVerb::Read, e)),
    };
    let n = data.get(..4).ok_or_else(|| bad("truncated"))?;
    let n = u32::from_be_bytes(n.try_into().expect("4 bytes")) as usize;
    let m = data.get(4..4 + n).ok_or_else(|| bad("truncated"))?;
    let meta: SnapshotMeta<u64, BasicNode> =
        serde_json::from_slice(m).map_err(|e| snap_err(None, ErrorVerb::Read, e))?;
    let state = data[4 + n..].to_vec();
    Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(state)) }))
}

/// Builds a snapshot from a consistent view of the store while commands go on
/// being applied.
pub struct Builder {
    meta: Arc<MetaStore>,
    files: Arc<Files>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (meta, files) = (self.meta.clone(), self.files.clone());
        let started = std::time::Instant::now();
        let built = tokio::task::spawn_blocking(move || -> StorageResult<Snapshot<TypeConfig>> {
            let (data, applied) = meta.export().map_err(|e| sm_err(ErrorVerb::Read, e))?;
            let applied: Applied = match applied {
                Some(v) => serde_json::from_slice(&v).map_err(|e| sm_err(ErrorVerb::Read, e))?,
                None => Applied::default(),
            };
            let id = format!(
                "{}-{}",
                applied.last.map(|l| l.index).unwrap_or(0),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0)
            );
            let snap_meta =
                SnapshotMeta { last_log_id: applied.last, last_membership: applied.membership, snapshot_id: id };
            files.save(&snap_meta, &data)?;
            Ok(Snapshot { meta: snap_meta, snapshot: Box::new(Cursor::new(data)) })
        })
        .await
        .map_err(|e| sm_err(ErrorVerb::Read, e))??;
        let bytes = built.snapshot.get_ref().len();
        tracing::info!(last = ?built.meta.last_log_id, bytes, elapsed_ms = started.elapsed().as_millis() as u64, "built a snapshot of the master state");
        crate::metrics::RAFT_SNAPSHOT_BYTES.set(bytes as i64);
        Ok(built)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<u64>>, Membership)> {
        let applied = read_applied(&self.meta)?;
        Ok((applied.last, applied.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<()>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for entry in entries {
            if let EntryPayload::Membership(m) = &entry.payload {
                self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
            }
            let record = Applied { last: Some(entry.log_id), membership: self.membership.clone() };
            let record = serde_json::to_vec(&record).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            let applied = match &entry.payload {
                EntryPayload::Normal(cmd) => self.meta.apply(cmd, Some(&record)),
                _ => self.meta.set_applied(&record),
            };
            applied.map_err(|e| StorageError::from(StorageIOError::apply(entry.log_id, AnyError::new(&e))))?;
            out.push(());
        }
        crate::metrics::RAFT_APPLIED.inc_by(out.len() as u64);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        Builder { meta: self.meta.clone(), files: self.files.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        snap_meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let started = std::time::Instant::now();
        let record = Applied { last: snap_meta.last_log_id, membership: snap_meta.last_membership.clone() };
        let record = serde_json::to_vec(&record).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let (meta, files, m) = (self.meta.clone(), self.files.clone(), snap_meta.clone());
        let bytes = data.len();
        tokio::task::spawn_blocking(move || -> StorageResult<()> {
            meta.import(&data).map_err(|e| snap_err(Some(&m), ErrorVerb::Write, e))?;
            meta.set_applied(&record).map_err(|e| snap_err(Some(&m), ErrorVerb::Write, e))?;
            files.save(&m, &data)
        })
        .await
        .map_err(|e| sm_err(ErrorVerb::Write, e))??;
        self.membership = snap_meta.last_membership.clone();
        tracing::info!(last = ?snap_meta.last_log_id, bytes, elapsed_ms = started.elapsed().as_millis() as u64, "installed a snapshot of the master state from the leader");
        crate::metrics::RAFT_SNAPSHOTS_INSTALLED.inc();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = files.current.lock().expect("snapshot lock");
            load(&files.dir)
        })
        .await
        .map_err(|e| sm_err(ErrorVerb::Read, e))?
    }
}
