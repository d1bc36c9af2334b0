//! One cache tier on disk: a directory (tmpfs for MEM, local disk for SSD) with a
//! byte quota. Owns the block file layout, atomic writes (temporary name, then
//! rename), byte accounting that never exceeds the quota, and the restart scan.
//!
//! Layout: `<dir>/blocks/<fan>/<file_id:016x>-<index>-<dataset:x>.<crc32c:08x>` and
//! `<dir>/tmp/` for writes in flight (emptied at start).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use shoal_core::BlockId;

use crate::error::WorkerError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierKind {
    Mem,
    Ssd,
}

impl TierKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TierKind::Mem => "mem",
            TierKind::Ssd => "ssd",
        }
    }
}

/// `KIND:DIR:QUOTA`, e.g. `mem:/dev/shm/shoal:4GiB`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierSpec {
    pub kind: TierKind,
    pub dir: PathBuf,
    pub quota: u64,
}

impl std::str::FromStr for TierSpec {
    type Err = WorkerError;
    fn from_str(s: &str) -> Result<Self, WorkerError> {
        let bad = |why: &str| {
            WorkerError::Config(format!(
                "invalid tier {s:?}: {why} (expected KIND:DIR:QUOTA, e.g. mem:/dev/shm/shoal:4GiB)"
            ))
        };
        let (kind, rest) = s.split_once(':').ok_or_else(|| bad("missing ':'"))?;
        let (dir, quota) = rest.rsplit_once(':').ok_or_else(|| bad("missing quota"))?;
        let kind = match kind {
            "mem" => TierKind::Mem,
            "ssd" | "disk" => TierKind::Ssd,
            _ => return Err(bad("kind must be mem or ssd")),
        };
        if !dir.starts_with('/') {
            return Err(bad("directory must be absolute"));
        }
        let quota = shoal_core::size::parse_size(quota).map_err(|e| bad(&e.to_string()))?;
        if quota == 0 {
            return Err(bad("quota must be positive"));
        }
        Ok(TierSpec { kind, dir: PathBuf::from(dir), quota })
    }
}

/// A block file that is complete and checksummed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockFile {
    pub id: BlockId,
    /// The dataset the block belongs to (for pinning and TTLs).
    pub dataset: u32,
    pub path: PathBuf,
    pub len: u64,
    pub crc: u32,
    /// When the block was cached.
    pub created: std::time::SystemTime,
}

/// A tier's directory and byte accounting.
#[derive(Debug)]
pub struct TierDir {
    pub kind: TierKind,
    pub dir: PathBuf,
    pub quota: u64,
    used: AtomicU64,
}

impl TierDir {
    /// Create the directories and empty `tmp/` (writes interrupted by a crash).
    pub fn open(spec: &TierSpec) -> Result<Self, WorkerError> {
        let io_err = |e| WorkerError::Io(format!("tier {}", spec.dir.display()), e);
        fs::create_dir_all(spec.dir.join("blocks")).map_err(io_err)?;
        let tmp = spec.dir.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err)?;
        }
        fs::create_dir_all(&tmp).map_err(io_err)?;
        Ok(Self { kind: spec.kind, dir: spec.dir.clone(), quota: spec.quota, used: AtomicU64::new(0) })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Reserve `len` bytes if that keeps usage within the quota.
    pub fn reserve(&self, len: u64) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| (u + len <= self.quota).then_some(u + len))
            .is_ok()
    }

    pub fn release(&self, len: u64) {
        let _ = self.used.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| Some(u.saturating_sub(len)));
    }

    fn final_path(&self, id: BlockId, dataset: u32, crc: u32) -> PathBuf {
        self.dir
            .join("blocks")
            .join(format!("{:02x}", id.file_id & 0xff))
            .join(format!("{:016x}-{}-{dataset:x}.{crc:08x}", id.file_id, id.index))
    }

    /// Write `data` as block `id` (space must be reserved): temporary file, then
    /// rename. On error the reservation is released and nothing is left behind.
    pub fn write(&self, id: BlockId, dataset: u32, data: &[u8], crc: u32) -> Result<BlockFile, WorkerError> {
        let len = data.len() as u64;
        let path = self.final_path(id, dataset, crc);
        let tmp = self.dir.join("tmp").join(format!("{:016x}-{}.{}", id.file_id, id.index, std::process::id()));
        let res = (|| -> io::Result<()> {
            fs::create_dir_all(path.parent().expect("block path has a parent"))?;
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
            drop(f);
            #[cfg(feature = "failpoints")]
            fail::fail_point!("tier::before_rename");
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            self.release(len);
            return Err(WorkerError::Io(format!("writing block {id} to {}", self.dir.display()), e));
        }
        Ok(BlockFile { id, dataset, path, len, crc, created: std::time::SystemTime::now() })
    }

    /// Remove a block file and give its bytes back.
    pub fn remove(&self, file: &BlockFile) {
        match fs::remove_file(&file.path) {
            Ok(()) => self.release(file.len),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %file.path.display(), error = %e, "cannot remove block file"),
        }
    }

    /// Every complete block file in the tier (charged to `used`); anything that
    /// does not parse as a block file name is removed.
    pub fn scan(&self) -> Vec<BlockFile> {
        let mut out = Vec::new();
        let Ok(fans) = fs::read_dir(self.dir.join("blocks")) else { return out };
        for fan in fans.flatten() {
            let Ok(files) = fs::read_dir(fan.path()) else { continue };
            for f in files.flatten() {
                let path = f.path();
                let meta = f.metadata().ok();
                let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
                let created = meta.and_then(|m| m.modified().ok()).unwrap_or_else(std::time::SystemTime::now);
                match parse_block_name(&path) {
                    Some((id, dataset, crc)) => {
                        self.used.fetch_add(len, Ordering::SeqCst);
                        out.push(BlockFile { id, dataset, path, len, crc, created });
                    }
                    None => {
                        tracing::warn!(path = %path.display(), "removing a stray file from the block directory");
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
        out
    }
}

fn parse_block_name(path: &Path) -> Option<(BlockId, u32, u32)> {
    let name = path.file_name()?.to_str()?;
    let (stem, crc) = name.rsplit_once('.')?;
    let mut parts = stem.split('-');
    let (fid, idx, ds) = (parts.next()?, parts.next()?, parts.next()?);
    if fid.len() != 16 || crc.len() != 8 || parts.next().is_some() {
        return None;
    }
    let id = BlockId::new(u64::from_str_radix(fid, 16).ok()?, idx.parse().ok()?);
    Some((id, u32::from_str_radix(ds, 16).ok()?, u32::from_str_radix(crc, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_spec_parsing() {
        let t: TierSpec = "mem:/dev/shm/shoal:4GiB".parse().unwrap();
        assert_eq!((t.kind, t.quota), (TierKind::Mem, 4 << 30));
        let t: TierSpec = "ssd:/var/lib/a:b:100GiB".parse().unwrap();
        assert_eq!(t.dir, PathBuf::from("/var/lib/a:b"));
        for bad in ["mem", "tape:/x:1GiB", "mem:rel:1GiB", "mem:/x:0", "mem:/x:lots"] {
            assert!(bad.parse::<TierSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn write_scan_and_quota() {
        let d = tempfile::tempdir().unwrap();
        let spec = TierSpec { kind: TierKind::Ssd, dir: d.path().to_path_buf(), quota: 10 };
        let tier = TierDir::open(&spec).unwrap();
        assert!(tier.reserve(6));
        assert!(!tier.reserve(5), "must not exceed the quota");
        let f = tier.write(BlockId::new(0xab, 3), 7, b"abcdef", 42).unwrap();
        assert_eq!(f.len, 6);
        // A leftover temporary file from a crash and a stray file.
        std::fs::write(d.path().join("tmp/partial"), b"xx").unwrap();
        std::fs::write(d.path().join("blocks/ab/garbage"), b"xx").unwrap();
        let tier2 = TierDir::open(&spec).unwrap();
        assert!(!d.path().join("tmp/partial").exists());
        let found = tier2.scan();
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].id, found[0].dataset, &found[0].path, found[0].len, found[0].crc),
            (f.id, 7, &f.path, 6, 42)
        );
        assert_eq!(tier2.used(), 6);
        assert!(!d.path().join("blocks/ab/garbage").exists());
        tier2.remove(&f);
        assert_eq!(tier2.used(), 0);
    }
}
