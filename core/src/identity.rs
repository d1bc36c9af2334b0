//! Block identity across the trust boundary.
//!
//! A block is named by `(file_id, index)`, and file ids are only unique within
//! one master's state: a master started on new state (a new data dir, a
//! recreated volume) issues the same ids again for other files. Two things keep
//! a worker from serving one file's bytes for another:
//!
//! - the **cluster id**, made once by the master and kept in its state: workers
//!   keep it beside their tiers and drop every block of another cluster;
//! - the **reference signature**: when the master syncs a file it signs the
//!   fields a worker reads the store by (dataset id, file id, block size, size,
//!   mtime, path) with a key only it and its registered workers hold. A worker
//!   refuses any block reference whose signature does not verify, so a client
//!   can name a block the master listed, never define one (a path of file A
//!   under file B's id would poison B for every reader).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of the signing key.
pub const KEY_LEN: usize = 32;
/// Bytes of a signature (a truncated HMAC-SHA256: 128 bits).
pub const SIG_LEN: usize = 16;

/// What a signature covers: everything a worker reads the store by, and the
/// version it expects to find there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed<'a> {
    pub dataset_id: u32,
    pub file_id: u64,
    pub block_size: u64,
    pub file_size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub path: &'a str,
}

/// Signs and verifies block references with a cluster's key.
#[derive(Clone)]
pub struct Signer(Hmac<Sha256>);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer for `key`; `None` unless it is [`KEY_LEN`] bytes.
    pub fn new(key: &[u8]) -> Option<Self> {
        (key.len() == KEY_LEN).then(|| Self(Hmac::new_from_slice(key).expect("HMAC takes any key length")))
    }

    fn mac(&self, f: &Signed<'_>) -> Hmac<Sha256> {
        let mut m = self.0.clone();
        m.update(&f.dataset_id.to_be_bytes());
        m.update(&f.file_id.to_be_bytes());
        m.update(&f.block_size.to_be_bytes());
        m.update(&f.file_size.to_be_bytes());
        m.update(&f.mtime_sec.to_be_bytes());
        m.update(&f.mtime_nsec.to_be_bytes());
        // Last, so that no two field lists share an encoding.
        m.update(f.path.as_bytes());
        m
    }

    pub fn sign(&self, f: &Signed<'_>) -> Vec<u8> {
        self.mac(f).finalize().into_bytes()[..SIG_LEN].to_vec()
    }

    /// Whether `sig` is this key's signature of `f` (in constant time).
    pub fn verify(&self, f: &Signed<'_>, sig: &[u8]) -> bool {
        sig.len() == SIG_LEN && self.mac(f).verify_truncated_left(sig).is_ok()
    }
}

/// Whether `id` has the shape of a cluster id the master makes (32 hex digits).
pub fn valid_cluster_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(path: &str) -> Signed<'_> {
        Signed { dataset_id: 1, file_id: 7, block_size: 8 << 20, file_size: 100, mtime_sec: 5, mtime_nsec: 6, path }
    }

    #[test]
    fn a_signature_covers_every_field() {
        let s = Signer::new(&[7; KEY_LEN]).unwrap();
        let f = fields("/a/b");
        let sig = s.sign(&f);
        assert_eq!(sig.len(), SIG_LEN);
        assert!(s.verify(&f, &sig));
        let changed = [
            Signed { dataset_id: 2, ..f },
            Signed { file_id: 8, ..f },
            Signed { block_size: 4 << 20, ..f },
            Signed { file_size: 101, ..f },
            Signed { mtime_sec: 4, ..f },
            Signed { mtime_nsec: 7, ..f },
            Signed { path: "/a/c", ..f },
        ];
        for c in changed {
            assert!(!s.verify(&c, &sig), "{c:?}");
        }
        assert!(!s.verify(&f, &sig[..8]), "a short signature");
        assert!(!s.verify(&f, &[]), "no signature");
        let other = Signer::new(&[8; KEY_LEN]).unwrap();
        assert!(!other.verify(&f, &sig), "another cluster's key");
        assert!(Signer::new(&[1; 16]).is_none());
    }

    #[test]
    fn cluster_ids_are_32_lowercase_hex_digits() {
        assert!(valid_cluster_id("0123456789abcdef0123456789abcdef"));
        for bad in ["", "0123", "0123456789ABCDEF0123456789ABCDEF", "0123456789abcdef0123456789abcdeg", "../x"] {
            assert!(!valid_cluster_id(bad), "{bad:?}");
        }
    }
}
