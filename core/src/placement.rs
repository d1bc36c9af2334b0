//! Block placement by rendezvous (highest-random-weight) hashing: every process
//! that knows the same set of workers picks the same owner for a block, and a
//! worker joining or leaving moves only the blocks it wins or held.

use crate::BlockId;

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    // Final avalanche (splitmix64) so nearby block ids spread well.
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

#[cfg(test)]
mod tests {
    use super::*;

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
