//! Identities: dataset names, block ids, and the arithmetic between byte offsets
//! and block indexes. A block is a fixed-size range of one file's content
//! (`BlockId = (file_id, index)`); the last block of a file may be short.

use crate::CoreError;

/// Default block size: 8 MiB.
pub const DEFAULT_BLOCK_SIZE: u64 = 8 << 20;
/// Smallest and largest block sizes a dataset may use.
pub const MIN_BLOCK_SIZE: u64 = 64 << 10;
pub const MAX_BLOCK_SIZE: u64 = 1 << 30;
/// Longest dataset name, in bytes.
pub const MAX_NAME_BYTES: usize = 253;

/// A dataset name: 1–253 bytes of ASCII letters, digits, `.`, `_` and `-`, starting
/// with a letter or digit. No `/`, no `..`, no NUL, so a name is always safe as a
/// path component and a Kubernetes object name.
pub fn validate_dataset_name(name: &str) -> Result<(), CoreError> {
    let err = |reason| Err(CoreError::InvalidName { name: name.into(), reason });
    if name.is_empty() {
        return err("empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return err("longer than 253 bytes");
    }
    if name.contains('\0') {
        return err("contains NUL");
    }
    if name.contains('/') {
        return err("contains '/'");
    }
    if name.contains("..") {
        return err("contains '..'");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return err("must start with a letter or digit");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return err("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Check a block size chosen for a dataset.
pub fn validate_block_size(block_size: u64) -> Result<(), CoreError> {
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(CoreError::InvalidSize {
            input: block_size.to_string(),
            reason: format!("block size must be between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE} bytes"),
        });
    }
    Ok(())
}

/// One block of one file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId {
    pub file_id: u64,
    pub index: u32,
}

impl BlockId {
    pub fn new(file_id: u64, index: u32) -> Self {
        Self { file_id, index }
    }
}

impl std::fmt::Display for BlockId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}-{}", self.file_id, self.index)
    }
}

/// Number of blocks of a file (a 0-byte file has none).
pub fn block_count(file_size: u64, block_size: u64) -> u64 {
    file_size.div_ceil(block_size)
}

/// Byte range `(offset, length)` of block `index` of a file; `None` past the end.
pub fn block_range(file_size: u64, block_size: u64, index: u32) -> Option<(u64, u64)> {
    let offset = u64::from(index).checked_mul(block_size)?;
    if offset >= file_size {
        return None;
    }
    Some((offset, block_size.min(file_size - offset)))
}

/// The blocks covering `[offset, offset + len)` of a file, as
/// `(index, offset within block, length within block)`, clipped to the file.
pub fn blocks_for_range(
    file_size: u64,
    block_size: u64,
    offset: u64,
    len: u64,
) -> impl Iterator<Item = (u32, u64, u64)> {
    let end = offset.saturating_add(len).min(file_size);
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let index = pos / block_size;
        let in_block = pos % block_size;
        let take = (block_size - in_block).min(end - pos);
        pos += take;
        Some((index as u32, in_block, take))
    })
}

/// POSIX `NAME_MAX`: the longest name a mount can show.
pub const NAME_MAX: usize = 255;

/// A dataset path must be absolute and clean: `/` alone, or `/`-separated names
/// that are not empty, `.` or `..`, hold no NUL and fit `NAME_MAX`. Such a path
/// can never reach outside its dataset's store prefix.
pub fn validate_dataset_path(path: &str) -> Result<(), CoreError> {
    let err = |reason| Err(CoreError::InvalidPath { path: path.into(), reason });
    if !path.starts_with('/') {
        return err("not absolute");
    }
    if path == "/" {
        return Ok(());
    }
    for c in path.split('/').skip(1) {
        match c {
            "" => return err("empty component"),
            "." | ".." => return err("'.' or '..' component"),
            c if c.contains('\0') => return err("contains NUL"),
            c if c.len() > NAME_MAX => return err("a name longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

/// Prefix of the node labels that mark where a dataset is cached.
pub const NODE_LABEL_PREFIX: &str = "dataset.shoal.io/";

/// The label a node carries (`=true`) while its worker caches part of the dataset
/// named `master_name` (`<namespace>.<name>` for a Kubernetes Dataset): the name
/// itself, or a hash of it when it is longer than a label name may be (63).
pub fn dataset_node_label(master_name: &str) -> String {
    if master_name.len() <= 63 {
        format!("{NODE_LABEL_PREFIX}{master_name}")
    } else {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(master_name.as_bytes());
        format!("{NODE_LABEL_PREFIX}h-{}", hex::encode(&digest[..8]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_paths_must_be_absolute_and_clean() {
        for good in ["/", "/a", "/a/b.jpg", "/日本/データ.bin", "/with space/x"] {
            assert!(validate_dataset_path(good).is_ok(), "{good:?}");
        }
        let long = format!("/{}", "n".repeat(256));
        for bad in ["", "a/b", "/a//b", "/a/", "/../etc", "/a/./b", "/a/..", "/a\0b", long.as_str()] {
            assert!(matches!(validate_dataset_path(bad), Err(CoreError::InvalidPath { .. })), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert!(validate_dataset_name("imagenet-1k.v2_a").is_ok());
        for bad in ["", "a/b", "..", "a..b", "a\0b", "-x", ".x", "sp ace", "é"] {
            assert!(validate_dataset_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_dataset_name(&"a".repeat(253)).is_ok());
        assert!(validate_dataset_name(&"a".repeat(254)).is_err());
    }

    #[test]
    fn block_edges() {
        let bs = 100;
        assert_eq!(block_count(0, bs), 0);
        assert_eq!(block_count(100, bs), 1);
        assert_eq!(block_count(101, bs), 2);
        assert_eq!(block_range(101, bs, 0), Some((0, 100)));
        assert_eq!(block_range(101, bs, 1), Some((100, 1)));
        assert_eq!(block_range(101, bs, 2), None);
        assert_eq!(block_range(0, bs, 0), None);
    }

    #[test]
    fn ranges_cover_exactly() {
        // Every (file size, offset, len) combination maps to contiguous pieces
        // that add up to the clipped length and never cross a block edge.
        let bs = 7;
        for size in 0..40u64 {
            for off in 0..45u64 {
                for len in 0..20u64 {
                    let pieces: Vec<_> = blocks_for_range(size, bs, off, len).collect();
                    let want = off.saturating_add(len).min(size).saturating_sub(off);
                    assert_eq!(pieces.iter().map(|p| p.2).sum::<u64>(), want);
                    let mut pos = off;
                    for (idx, in_block, take) in pieces {
                        assert_eq!(u64::from(idx) * bs + in_block, pos);
                        assert!(in_block + take <= bs);
                        assert!(take > 0);
                        pos += take;
                    }
                }
            }
        }
    }
}
