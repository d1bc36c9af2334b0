//! Which cluster this worker's blocks belong to, and the key that verifies the
//! block references clients send (see `shoal_core::identity`).
//!
//! Each tier directory keeps a `cluster` file (mode 0600): the cluster id and
//! the block key of the master the tier's blocks were cached for. A worker
//! restarted while the master is down serves its blocks with that key; one that
//! registers with a master of another cluster (a new data dir, a recreated
//! volume: the same file ids for other files) drops every block first.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use shoal_core::identity::{valid_cluster_id, Signer, KEY_LEN};

use crate::error::WorkerError;

const MARKER: &str = "cluster";

/// The cluster and key the worker serves under (`None` until known), and an
/// epoch bumped whenever they change.
#[derive(Debug, Default)]
pub struct Identity(RwLock<(Option<(String, Signer)>, u64)>);

impl Identity {
    pub fn cluster(&self) -> Option<String> {
        self.0.read().expect("identity lock").0.as_ref().map(|(c, _)| c.clone())
    }

    /// The key to verify references with, and the epoch it belongs to.
    pub fn signer(&self) -> Option<(Signer, u64)> {
        let g = self.0.read().expect("identity lock");
        g.0.as_ref().map(|(_, s)| (s.clone(), g.1))
    }

    /// Serve under `cluster` with `signer`. A change of cluster runs `clear`
    /// (dropping the old cluster's blocks) while no block can be cached.
    pub fn set(&self, cluster: String, signer: Signer, clear: impl FnOnce()) {
        let mut g = self.0.write().expect("identity lock");
        let same = g.0.as_ref().is_some_and(|(c, _)| *c == cluster);
        if !same {
            clear();
            g.1 += 1;
        }
        g.0 = Some((cluster, signer));
    }

    /// Run `f` (caching a block) only if the identity is still that of `epoch`,
    /// when the block's reference was verified; `None` if it changed since.
    pub fn during<T>(&self, epoch: u64, f: impl FnOnce() -> T) -> Option<T> {
        let g = self.0.read().expect("identity lock");
        (g.1 == epoch && g.0.is_some()).then(f)
    }
}

fn marker(dir: &Path) -> PathBuf {
    dir.join(MARKER)
}

fn read_marker(dir: &Path) -> Option<(String, Vec<u8>)> {
    let text = std::fs::read_to_string(marker(dir)).ok()?;
    let mut lines = text.lines();
    let cluster = lines.next()?.trim().to_string();
    let key = hex::decode(lines.next()?.trim()).ok()?;
    (valid_cluster_id(&cluster) && key.len() == KEY_LEN).then_some((cluster, key))
}

/// The cluster all `dirs` agree their blocks belong to, with its key; `None`
/// when any tier has no (or a different, or an unreadable) marker.
pub fn load(dirs: &[PathBuf]) -> Option<(String, Signer)> {
    let mut found: Option<(String, Vec<u8>)> = None;
    for d in dirs {
        let m = read_marker(d)?;
        if found.as_ref().is_some_and(|f| *f != m) {
            return None;
        }
        found = Some(m);
    }
    let (cluster, key) = found?;
    Some((cluster, Signer::new(&key)?))
}

/// Record in every tier that its blocks belong to `cluster` (written to a
/// temporary name, then renamed: a crash leaves the old marker or the new one).
pub fn store(dirs: &[PathBuf], cluster: &str, key: &[u8]) -> Result<(), WorkerError> {
    use std::os::unix::fs::OpenOptionsExt;
    for d in dirs {
        let tmp = d.join(format!(".{MARKER}.tmp"));
        let io = |e| WorkerError::Io(format!("cluster marker in {}", d.display()), e);
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
        f.write_all(format!("{cluster}\n{}\n", hex::encode(key)).as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, marker(d)).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_must_agree_across_tiers() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let dirs = vec![a.clone(), b.clone()];
        assert!(load(&dirs).is_none(), "no marker yet");
        let c1 = "0123456789abcdef0123456789abcdef";
        store(&dirs, c1, &[1; KEY_LEN]).unwrap();
        assert_eq!(load(&dirs).unwrap().0, c1);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(marker(&a)).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "the key is readable by its owner only");
        store(std::slice::from_ref(&b), "fedcba9876543210fedcba9876543210", &[2; KEY_LEN]).unwrap();
        assert!(load(&dirs).is_none(), "tiers of two clusters");
        std::fs::write(marker(&a), "garbage").unwrap();
        assert!(load(&[a]).is_none(), "a corrupt marker");
    }

    #[test]
    fn a_new_cluster_clears_and_fences_blocks_verified_before() {
        let id = Identity::default();
        let k = Signer::new(&[1; KEY_LEN]).unwrap();
        let mut cleared = 0;
        id.set("a".repeat(32), k.clone(), || cleared += 1);
        let (_, epoch) = id.signer().unwrap();
        assert_eq!(id.during(epoch, || 7), Some(7));
        id.set("a".repeat(32), k.clone(), || cleared += 1);
        assert_eq!(cleared, 1, "the same cluster again clears nothing");
        assert_eq!(id.during(epoch, || 7), Some(7));
        id.set("b".repeat(32), k, || cleared += 1);
        assert_eq!(cleared, 2);
        assert_eq!(id.during(epoch, || 7), None, "a fill verified under the old cluster is not cached");
    }
}
