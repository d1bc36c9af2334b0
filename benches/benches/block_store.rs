//! Block store hit reads: a cached 8 MiB block looked up and memory-mapped from the
//! MEM tier (tmpfs) and from the SSD tier (with its CRC32C verified), compared with
//! a plain `std::fs::read` of the same file (what a reader without shoal's store
//! would pay), in the same run. And the cost of the signed block reference a
//! worker verifies on every request (issue 16): the same MEM-tier hits of small
//! (128 KiB) and 8 MiB blocks with and without the reference check.
//!
//! cargo bench -p shoal-benches --bench block_store

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shoal_core::BlockId;
use shoal_worker::tier::{TierKind, TierSpec};
use shoal_worker::BlockStore;

const BLOCK: usize = 8 << 20;
const BLOCKS: u32 = 16;

fn bench(c: &mut Criterion) {
    let ssd_dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mem_dir =
        tempfile::tempdir_in(if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" }).unwrap();
    let data = shoal_benches::content(1, BLOCK);
    let mut group = c.benchmark_group("block_store_hit");
    group.throughput(Throughput::Bytes((BLOCK as u64) * u64::from(BLOCKS)));
    group.sample_size(20);
    for (kind, dir) in [(TierKind::Mem, mem_dir.path()), (TierKind::Ssd, ssd_dir.path())] {
        let store = BlockStore::open(&[TierSpec { kind, dir: dir.join("t"), quota: 1 << 30 }]).unwrap();
        for i in 0..BLOCKS {
            store.insert(BlockId::new(1, i), 1, &data).unwrap().unwrap();
        }
        let verify = kind == TierKind::Ssd;
        group.bench_function(format!("{}_mmap", kind.as_str()), |b| {
            b.iter(|| {
                let mut sum = 0u64;
                for i in 0..BLOCKS {
                    let c = store.get(BlockId::new(1, i)).unwrap();
                    let bytes =
                        shoal_core::mapped::map_block(&c.file.path, c.file.len, verify.then_some(c.file.crc)).unwrap();
                    // Touch every page so the mapping is really read.
                    sum += bytes.iter().step_by(4096).map(|b| u64::from(*b)).sum::<u64>();
                }
                sum
            })
        });
        group.bench_function(format!("{}_std_fs_read_baseline", kind.as_str()), |b| {
            b.iter(|| {
                let mut sum = 0u64;
                for i in 0..BLOCKS {
                    let c = store.get(BlockId::new(1, i)).unwrap();
                    let bytes = std::fs::read(&c.file.path).unwrap();
                    sum += bytes.iter().step_by(4096).map(|b| u64::from(*b)).sum::<u64>();
                }
                sum
            })
        });
    }
    group.finish();
}

/// A MEM-tier hit as the worker serves it, with and without `check_ref` (the
/// signature verification, path and range checks) first.
fn signed_refs(c: &mut Criterion) {
    use shoal_core::identity::{Signer, KEY_LEN};
    let signer = Signer::new(&[7; KEY_LEN]).unwrap();
    let mem_dir =
        tempfile::tempdir_in(if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" }).unwrap();
    let mut group = c.benchmark_group("block_ref_check");
    group.sample_size(20);
    for (label, len) in [("128KiB", 128usize << 10), ("8MiB", 8 << 20)] {
        let store =
            BlockStore::open(&[TierSpec { kind: TierKind::Mem, dir: mem_dir.path().join(label), quota: 1 << 30 }])
                .unwrap();
        let data = shoal_benches::content(2, len);
        let refs: Vec<shoal_proto::worker::BlockRef> = (0..BLOCKS)
            .map(|i| {
                store.insert(BlockId::new(u64::from(i) + 2, 0), 1, &data).unwrap().unwrap();
                let mut r = shoal_proto::worker::BlockRef {
                    dataset: "imagenet".into(),
                    dataset_id: 1,
                    file_id: u64::from(i) + 2,
                    index: 0,
                    path: format!("/train/class-{i:03}/image-{i:06}.jpg"),
                    block_size: 8 << 20,
                    file_size: len as u64,
                    mtime_sec: 1_700_000_000,
                    ..Default::default()
                };
                r.sig = signer.sign(&shoal_worker::datasets::signed_fields(&r));
                r
            })
            .collect();
        let hit = |r: &shoal_proto::worker::BlockRef| {
            let c = store.get(BlockId::new(r.file_id, r.index)).unwrap();
            let bytes = shoal_core::mapped::map_block(&c.file.path, c.file.len, None).unwrap();
            bytes.iter().step_by(4096).map(|b| u64::from(*b)).sum::<u64>()
        };
        group.throughput(Throughput::Bytes((len as u64) * u64::from(BLOCKS)));
        group.bench_function(format!("mem_hit_{label}"), |b| b.iter(|| refs.iter().map(hit).sum::<u64>()));
        group.bench_function(format!("mem_hit_{label}_signed_ref"), |b| {
            b.iter(|| {
                refs.iter()
                    .map(|r| {
                        shoal_worker::datasets::check_ref(Some(r), Some(&signer)).unwrap();
                        hit(r)
                    })
                    .sum::<u64>()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench, signed_refs);
criterion_main!(benches);
