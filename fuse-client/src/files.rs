//! A dataset by path, without FUSE: what the Python client embeds. The same
//! [`Metadata`] listings and [`Reader`] block path as the mount (short-circuit
//! from a worker on this node, gRPC from the others, the store when no worker
//! answers), addressed by dataset paths (`/train/x.jpg`) instead of inodes, so a
//! pod without `/dev/fuse` or privileges reads what a mount would.
//!
//! Calls block: they are made from the caller's threads (never a tokio worker),
//! as `fuser` makes the mount's.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_proto::master::Inode;
use tokio::runtime::Handle;

use crate::namespace::{Entry, MetaError, Metadata, ROOT};
use crate::order::{Plan, PlanConfig};
use crate::reader::{Access, ReadError, Reader, ReaderConfig};
use crate::MountError;

/// Longest name of one path component (as `NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Why a path call failed; each maps to one errno.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FileError {
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: not a directory")]
    NotDir(String),
    #[error("{0}: is a directory")]
    IsDir(String),
    #[error("{path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("{path:?}: file name too long")]
    NameTooLong { path: String },
    #[error("metadata unavailable: {0}")]
    Master(String),
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl FileError {
    pub fn errno(&self) -> i32 {
        match self {
            FileError::NotFound(_) => libc::ENOENT,
            FileError::Read(e) => e.errno(),
            FileError::NotDir(_) => libc::ENOTDIR,
            FileError::IsDir(_) => libc::EISDIR,
            FileError::BadPath { .. } => libc::EINVAL,
            FileError::NameTooLong { .. } => libc::ENAMETOOLONG,
            FileError::Master(_) => libc::EIO,
        }
    }
}

/// The components of a dataset path: `/` or `""` is the root; empty and `.`
/// components are skipped (as POSIX does); `..`, NUL and over-long names are
/// refused, so a path never leaves the dataset.
pub fn components(path: &str) -> Result<Vec<&str>, FileError> {
    let bad = |reason| FileError::BadPath { path: path.to_string(), reason };
    if path.contains('\0') {
        return Err(bad("a path cannot hold NUL"));
    }
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(bad("'..' would leave the dataset")),
            c if c.len() > NAME_MAX => return Err(FileError::NameTooLong { path: path.to_string() }),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// One entry found by path.
#[derive(Debug, Clone)]
pub struct Found {
    /// The dataset path, normalized (`/a/b`; `/` for the root).
    pub path: String,
    pub parent: u64,
    pub name: String,
    pub entry: Entry,
}

impl Found {
    pub fn inode(&self) -> Inode {
        self.entry.inode(self.parent, &self.name)
    }
}

/// One open dataset.
pub struct Dataset {
    pub name: String,
    pub meta: Arc<Metadata>,
    pub reader: Arc<Reader>,
    rt: Handle,
    /// Follows re-syncs while the dataset is open.
    refresher: Option<tokio::task::AbortHandle>,
}

impl Drop for Dataset {
    fn drop(&mut self) {
        if let Some(r) = &self.refresher {
            r.abort();
        }
    }
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset").field("name", &self.name).finish()
    }
}

/// How to open a dataset.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    pub master: String,
    pub node: String,
    pub cache_bytes: u64,
    pub metadata_budget: u64,
    /// How often to follow re-syncs (zero: never).
    pub refresh: Duration,
}

impl Dataset {
    /// Open `name` on the master. Must be called inside the runtime `rt` drives.
    pub async fn open(name: &str, opts: &OpenOptions) -> Result<Dataset, MountError> {
        let mut master = crate::master_client(&opts.master)?;
        let info = crate::get_dataset(&mut master, name).await?;
        let rt = Handle::current();
        let meta = Metadata::new(name, master.clone(), rt.clone(), opts.metadata_budget);
        let generation = info.generation;
        let reader = Reader::new(
            info.clone(),
            master,
            &ReaderConfig {
                node: opts.node.clone(),
                cache_bytes: opts.cache_bytes,
                dir_prefetch_parallel: crate::reader::DIR_PREFETCH_PARALLEL,
            },
        );
        reader.refresh_workers().await;
        reader.spawn_refresh(Duration::from_secs(3));
        let refresher = if opts.refresh.is_zero() {
            None
        } else {
            let totals = Arc::new(crate::fs::Totals::default());
            let master = crate::master_client(&opts.master)?;
            let task = crate::refresh_loop(
                master,
                (name.to_string(), generation),
                meta.clone(),
                reader.clone(),
                totals,
                None,
                opts.refresh,
            );
            Some(tokio::spawn(task).abort_handle())
        };
        Ok(Dataset { name: name.to_string(), meta, reader, rt, refresher })
    }

    fn meta_err(path: &str, e: MetaError) -> FileError {
        match e {
            MetaError::NotFound => FileError::NotFound(path.to_string()),
            MetaError::NotDir => FileError::NotDir(path.to_string()),
            MetaError::Master(m) => FileError::Master(m),
        }
    }

    /// The entry at `path`.
    pub fn stat(&self, path: &str) -> Result<Found, FileError> {
        let parts = components(path)?;
        let mut found = Found { path: "/".into(), parent: ROOT, name: String::new(), entry: root_entry(&self.meta)? };
        let mut full = String::new();
        for part in parts {
            if !found.entry.is_dir {
                return Err(FileError::NotDir(full));
            }
            let dir = found.entry.ino;
            let e = self
                .meta
                .lookup(dir, part)
                .map_err(|e| Self::meta_err(path, e))?
                .ok_or_else(|| FileError::NotFound(format!("{full}/{part}")))?;
            full = format!("{full}/{part}");
            found = Found { path: full.clone(), parent: dir, name: part.to_string(), entry: e };
        }
        Ok(found)
    }

    /// The entries of directory `path`, sorted by name.
    pub fn list(&self, path: &str) -> Result<Vec<Found>, FileError> {
        let dir = self.stat(path)?;
        if !dir.entry.is_dir {
            return Err(FileError::NotDir(dir.path));
        }
        let listing = self.meta.listing(dir.entry.ino).map_err(|e| Self::meta_err(path, e))?;
        let base = if dir.path == "/" { String::new() } else { dir.path.clone() };
        Ok(listing
            .entries()
            .iter()
            .map(|e| {
                let name = listing.name(e).to_string();
                Found { path: format!("{base}/{name}"), parent: dir.entry.ino, name, entry: *e }
            })
            .collect())
    }

    /// Every file below `path` (or `path` itself, if it is a file), sorted by path.
    pub fn walk(&self, path: &str) -> Result<Vec<Found>, FileError> {
        let top = self.stat(path)?;
        if !top.entry.is_dir {
            return Ok(vec![top]);
        }
        let mut files = Vec::new();
        let mut stack = vec![top.path];
        while let Some(dir) = stack.pop() {
            // Pushed in reverse so directories come out in name order.
            let mut subdirs = Vec::new();
            for f in self.list(&dir)? {
                if f.entry.is_dir {
                    subdirs.push(f.path);
                } else {
                    files.push(f);
                }
            }
            stack.extend(subdirs.into_iter().rev());
        }
        files.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    /// Bytes `[offset, offset + len)` of file `path` (clipped to its end; `None`:
    /// to its end).
    pub fn read(&self, path: &str, offset: u64, len: Option<u64>) -> Result<Bytes, FileError> {
        let f = self.stat(path)?;
        self.read_found(&f, offset, len)
    }

    /// As [`Dataset::read`], for an entry found already.
    pub fn read_found(&self, f: &Found, offset: u64, len: Option<u64>) -> Result<Bytes, FileError> {
        if f.entry.is_dir {
            return Err(FileError::IsDir(f.path.clone()));
        }
        let size = f.entry.size;
        let len = len.unwrap_or(u64::MAX).min(size.saturating_sub(offset));
        if len == 0 {
            return Ok(Bytes::new());
        }
        let inode = f.inode();
        Ok(self.rt.block_on(self.reader.read(&inode, &f.path, offset, len, Access::Sequential))?)
    }

    /// Prefetch these files in this order ahead of a cursor (see [`crate::order`]).
    /// Paths that are not files fail the call, naming the first.
    pub fn plan(&self, paths: &[String], config: PlanConfig) -> Result<Arc<Plan>, FileError> {
        let mut files = Vec::with_capacity(paths.len());
        for p in paths {
            let f = self.stat(p)?;
            if f.entry.is_dir {
                return Err(FileError::IsDir(f.path));
            }
            files.push((f.inode(), f.path));
        }
        let _guard = self.rt.enter();
        Ok(self.reader.plan(files, config))
    }
}

fn root_entry(meta: &Arc<Metadata>) -> Result<Entry, FileError> {
    meta.locate(ROOT).map(|l| l.entry).map_err(|e| Dataset::meta_err("/", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_and_hostile_ones_refused() {
        assert_eq!(components("/").unwrap(), Vec::<&str>::new());
        assert_eq!(components("").unwrap(), Vec::<&str>::new());
        assert_eq!(components("a//b/./c/").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(components("/train/x.jpg").unwrap(), vec!["train", "x.jpg"]);
        for bad in ["a/../b", "..", "/x/..", "a\0b"] {
            assert_eq!(components(bad).unwrap_err().errno(), libc::EINVAL, "{bad:?}");
        }
        let long = format!("a/{}", "n".repeat(256));
        assert_eq!(components(&long).unwrap_err().errno(), libc::ENAMETOOLONG);
        assert!(components(&format!("a/{}", "n".repeat(255))).is_ok());
    }

    #[test]
    fn each_error_has_its_errno() {
        assert_eq!(FileError::NotFound("/x".into()).errno(), libc::ENOENT);
        assert_eq!(FileError::Read(ReadError::NotFound("/x".into())).errno(), libc::ENOENT);
        assert_eq!(FileError::NotDir("/x".into()).errno(), libc::ENOTDIR);
        assert_eq!(FileError::IsDir("/x".into()).errno(), libc::EISDIR);
        assert_eq!(FileError::Master("down".into()).errno(), libc::EIO);
        let failed = ReadError::AllSourcesFailed { path: "/x".into(), index: 0, last: "down".into() };
        assert_eq!(FileError::Read(failed).errno(), libc::EIO);
        let changed = ReadError::Changed { path: "/x".into(), detail: "size 3, listed 2".into() };
        assert_eq!(FileError::Read(changed).errno(), libc::ESTALE);
    }
}
