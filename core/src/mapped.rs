//! Memory-mapped block files as `Bytes`, with their CRC32C checked where the data
//! is trusted again. The only `unsafe` in shoal's data path lives here.
//!
//! Safety contract: block files are written to a temporary name and renamed into
//! place, never modified afterwards; eviction unlinks them, which keeps existing
//! mappings valid on Linux. A file truncated under us by another process would
//! fault the reader; shoal never does that to its own block files.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::path::Path;

use bytes::Bytes;

/// Map `path` (expected to hold exactly `len` bytes) and return its content.
/// With `expect_crc`, the content's CRC32C must match or the read fails with
/// `InvalidData`.
pub fn map_block(path: &Path, len: u64, expect_crc: Option<u32>) -> io::Result<Bytes> {
    let file = File::open(path)?;
    let actual = file.metadata()?.len();
    if actual != len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("block file {} has {actual} bytes, expected {len}", path.display()),
        ));
    }
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: see the module docs: block files are immutable once renamed into place.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    // Read the whole block in large requests now rather than one page fault at a
    // time as the CRC check and the reader touch it (a cold SSD-tier block
    // otherwise reads at a fraction of the disk's speed).
    let _ = map.advise(memmap2::Advice::WillNeed);
    let bytes = Bytes::from_owner(map);
    if let Some(want) = expect_crc {
        let got = crc32c::crc32c(&bytes);
        if got != want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("block file {} is corrupt: crc32c {got:08x}, expected {want:08x}", path.display()),
            ));
        }
    }
    Ok(bytes)
}

/// CRC32C of a buffer.
pub fn checksum(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}
