//! Block placement by rendezvous (highest-random-weight) hashing: every process
//! that knows the same set of workers picks the same owner for a block, and a
//! worker joining or leaving moves only the blocks it wins or held.

use crate::BlockId;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a of `parts` after the state `h`.
fn fnv_from(mut h: u64, parts: &[&[u8]]) -> u64 {
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    avalanche(fnv_from(FNV_OFFSET, parts))
}

/// Final avalanche (splitmix64) so nearby block ids spread well.
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Worker ids ordered by preference for `block` (the first is the owner).
pub fn rank<'a>(worker_ids: impl IntoIterator<Item = &'a str>, block: BlockId) -> Vec<&'a str> {
    let fid = block.file_id.to_le_bytes();
    let idx = block.index.to_le_bytes();
    let mut scored: Vec<(u64, &str)> =
        worker_ids.into_iter().map(|w| (fnv1a(&[w.as_bytes(), &fid, &idx]), w)).collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    scored.into_iter().map(|(_, w)| w).collect()
}

/// A set of workers ready to rank blocks: each worker's share of the hash is
/// computed once, when the set changes, rather than for every block. Ranks
/// exactly as [`rank`] does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ring {
    /// (hash state after the worker id, worker id), sorted by id.
    workers: Vec<(u64, String)>,
}

impl Ring {
    pub fn new<'a>(worker_ids: impl IntoIterator<Item = &'a str>) -> Ring {
        let mut workers: Vec<(u64, String)> =
            worker_ids.into_iter().map(|w| (fnv_from(FNV_OFFSET, &[w.as_bytes()]), w.to_string())).collect();
        workers.sort_by(|a, b| a.1.cmp(&b.1));
        workers.dedup_by(|a, b| a.1 == b.1);
        Ring { workers }
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Worker ids ordered by preference for `block` (the first is the owner).
    pub fn rank(&self, block: BlockId) -> Vec<&str> {
        let (fid, idx) = (block.file_id.to_le_bytes(), block.index.to_le_bytes());
        let mut scored: Vec<(u64, &str)> =
            self.workers.iter().map(|(h, w)| (avalanche(fnv_from(*h, &[&fid, &idx])), w.as_str())).collect();
        scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        scored.into_iter().map(|(_, w)| w).collect()
    }

    /// The owner of `block`, without ordering the others.
    pub fn owner(&self, block: BlockId) -> Option<&str> {
        let (fid, idx) = (block.file_id.to_le_bytes(), block.index.to_le_bytes());
        self.workers
            .iter()
            .map(|(h, w)| (avalanche(fnv_from(*h, &[&fid, &idx])), w.as_str()))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)))
            .map(|(_, w)| w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_ranks_exactly_as_rank_does() {
        let ws = ["w1", "w2", "node-b-7701", "w10", "x"];
        let ring = Ring::new(ws.iter().rev().copied());
        assert_eq!(ring.len(), 5);
        for i in 0..5000u32 {
            let b = BlockId::new(u64::from(i / 7) * 1_000_003, i % 7);
            let want = rank(ws, b);
            assert_eq!(ring.rank(b), want, "{b:?}");
            assert_eq!(ring.owner(b), Some(want[0]), "{b:?}");
        }
        assert!(Ring::new([]).owner(BlockId::new(1, 0)).is_none());
        assert_eq!(Ring::new(["a", "a"]).len(), 1, "an id listed twice counts once");
    }

    #[test]
    fn stable_and_balanced() {
        let ws = ["w1", "w2", "w3", "w4"];
        let mut counts = std::collections::HashMap::new();
        for i in 0..4000u32 {
            let b = BlockId::new(u64::from(i / 10), i % 10);
            let r = rank(ws, b);
            assert_eq!(r, rank(ws.iter().rev().copied(), b), "order of input does not matter");
            *counts.entry(r[0]).or_insert(0) += 1;
            // Removing a non-owner never moves the block.
            let without: Vec<&str> = ws.iter().copied().filter(|w| *w != r[1]).collect();
            assert_eq!(rank(without, b)[0], r[0]);
        }
        for w in ws {
            assert!((800..1200).contains(&counts[w]), "{counts:?}");
        }
    }
}
