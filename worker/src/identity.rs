//! Which cluster this worker's blocks belong to, and the key that verifies the
//! block references clients send (see `shoal_core::identity`).
//!
//! Each tier directory keeps a `cluster` file: the id of the cluster the tier's
//! blocks were cached for. At start, a tier whose file is missing or names
//! another cluster than the others (a MEM tier on a fresh tmpfs, a disk moved
//! between clusters) loses its blocks before the store scans it; a worker that
//! registers with a master of another cluster (a new data dir, a recreated
//! volume: the same file ids for other files) drops every block first.
//!
//! The key is never written down: the tier directories are shared with the
//! node's FUSE mounts (short-circuit reads), and a key there would let a mount
//! sign references. A restarted worker serves again once the master answers
//! its registration.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use shoal_core::identity::{valid_cluster_id, Signer};
use tracing::warn;

use crate::error::WorkerError;

const MARKER: &str = "cluster";

#[derive(Debug, Default)]
struct Current {
    cluster: Option<String>,
    signer: Option<Signer>,
    /// Bumped whenever the cluster changes.
    epoch: u64,
}

/// The cluster the worker's blocks belong to (`None` until known) and the key
/// references are verified with (`None` until the master gave it).
#[derive(Debug, Default)]
pub struct Identity(RwLock<Current>);

impl Identity {
    /// Start with the cluster the tiers were marked with, and no key yet.
    pub fn with_cluster(cluster: Option<String>) -> Identity {
        Identity(RwLock::new(Current { cluster, signer: None, epoch: 0 }))
    }

    pub fn cluster(&self) -> Option<String> {
        self.0.read().expect("identity lock").cluster.clone()
    }

    /// The key to verify references with, and the epoch it belongs to.
    pub fn signer(&self) -> Option<(Signer, u64)> {
        let g = self.0.read().expect("identity lock");
        g.signer.as_ref().map(|s| (s.clone(), g.epoch))
    }

    /// Serve under `cluster` with `signer`. A change of cluster runs `clear`
    /// (dropping the old cluster's blocks) while no block can be cached.
    pub fn set(&self, cluster: String, signer: Signer, clear: impl FnOnce()) {
        let mut g = self.0.write().expect("identity lock");
        if g.cluster.as_deref() != Some(cluster.as_str()) {
            clear();
            g.epoch += 1;
        }
        g.cluster = Some(cluster);
        g.signer = Some(signer);
    }

    /// Run `f` (caching a block) only if the identity is still that of `epoch`,
    /// when the block's reference was verified; `None` if it changed since.
    pub fn during<T>(&self, epoch: u64, f: impl FnOnce() -> T) -> Option<T> {
        let g = self.0.read().expect("identity lock");
        (g.epoch == epoch && g.signer.is_some()).then(f)
    }
}

fn marker(dir: &Path) -> PathBuf {
    dir.join(MARKER)
}

fn read_marker(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(marker(dir)).ok()?;
    let cluster = text.lines().next()?.trim().to_string();
    valid_cluster_id(&cluster).then_some(cluster)
}

/// Before the block store opens the tiers: the cluster the tiers' blocks
/// belong to (the first tier's that has a valid marker). Every other tier's
/// blocks (no marker, or another cluster's) are removed, and the tier is marked.
pub fn prepare(dirs: &[PathBuf]) -> Result<Option<String>, WorkerError> {
    let markers: Vec<Option<String>> = dirs.iter().map(|d| read_marker(d)).collect();
    let Some(cluster) = markers.iter().flatten().next().cloned() else { return Ok(None) };
    for (dir, m) in dirs.iter().zip(&markers) {
        if m.as_deref() == Some(cluster.as_str()) {
            continue;
        }
        let blocks = dir.join("blocks");
        if blocks.exists() {
            warn!(tier = %dir.display(), "dropping the blocks of a tier not marked with this worker's cluster");
            std::fs::remove_dir_all(&blocks).map_err(|e| WorkerError::Io(format!("clear {}", blocks.display()), e))?;
        }
        store(std::slice::from_ref(dir), &cluster)?;
    }
    Ok(Some(cluster))
}

/// Record in every tier that its blocks belong to `cluster` (written to a
/// temporary name, synced, renamed, and the directory synced: a crash leaves
/// the old marker or the new one).
pub fn store(dirs: &[PathBuf], cluster: &str) -> Result<(), WorkerError> {
    for d in dirs {
        let io = |e| WorkerError::Io(format!("cluster marker in {}", d.display()), e);
        std::fs::create_dir_all(d).map_err(io)?;
        let tmp = d.join(format!(".{MARKER}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(format!("{cluster}\n").as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, marker(d)).map_err(io)?;
        std::fs::File::open(d).and_then(|dir| dir.sync_all()).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::identity::KEY_LEN;

    const C1: &str = "0123456789abcdef0123456789abcdef";
    const C2: &str = "fedcba9876543210fedcba9876543210";

    fn block(dir: &Path) -> PathBuf {
        let p = dir.join("blocks/00/0000000000000002-0-1.00000000");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"x").unwrap();
        p
    }

    #[test]
    fn tiers_not_marked_with_the_cluster_lose_their_blocks() {
        let t = tempfile::tempdir().unwrap();
        let (mem, ssd) = (t.path().join("mem"), t.path().join("ssd"));
        let dirs = vec![mem.clone(), ssd.clone()];
        let (b_mem, b_ssd) = (block(&mem), block(&ssd));
        assert_eq!(prepare(&dirs).unwrap(), None, "no marker anywhere: the master decides");
        assert!(b_mem.exists() && b_ssd.exists());
        store(&dirs, C1).unwrap();
        assert_eq!(prepare(&dirs).unwrap().as_deref(), Some(C1));
        assert!(b_mem.exists() && b_ssd.exists(), "both tiers are the cluster's");
        // A fresh tmpfs MEM tier (its marker gone) keeps the SSD tier's blocks.
        std::fs::remove_file(marker(&mem)).unwrap();
        assert_eq!(prepare(&dirs).unwrap().as_deref(), Some(C1));
        assert!(!b_mem.exists(), "the unmarked tier's blocks are of no known cluster");
        assert!(b_ssd.exists(), "the marked tier keeps its blocks");
        assert_eq!(read_marker(&mem).as_deref(), Some(C1), "and the tier is marked now");
        // A tier of another cluster.
        let b_ssd = block(&ssd);
        store(std::slice::from_ref(&ssd), C2).unwrap();
        assert_eq!(prepare(&dirs).unwrap().as_deref(), Some(C1));
        assert!(!b_ssd.exists());
        std::fs::write(marker(&mem), "garbage").unwrap();
        assert_eq!(read_marker(&mem), None, "a corrupt marker");
        assert!(!std::fs::read_to_string(marker(&ssd)).unwrap().contains("key"), "no key is written");
    }

    #[test]
    fn a_new_cluster_clears_and_fences_blocks_verified_before() {
        let id = Identity::with_cluster(Some(C1.into()));
        assert!(id.signer().is_none(), "no key until the master answers");
        let k = Signer::new(&[1; KEY_LEN]).unwrap();
        let mut cleared = 0;
        id.set(C1.into(), k.clone(), || cleared += 1);
        assert_eq!(cleared, 0, "the tiers' own cluster: nothing to clear");
        let (_, epoch) = id.signer().unwrap();
        assert_eq!(id.during(epoch, || 7), Some(7));
        id.set(C2.into(), k, || cleared += 1);
        assert_eq!(cleared, 1);
        assert_eq!(id.during(epoch, || 7), None, "a fill verified under the old cluster is not cached");
    }
}
