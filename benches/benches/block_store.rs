//! Block store hit reads: a cached 8 MiB block looked up and memory-mapped from the
//! MEM tier (tmpfs) and from the SSD tier (with its CRC32C verified), compared with
//! a plain `std::fs::read` of the same file (what a reader without shoal's store
//! would pay), in the same run.
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

criterion_group!(benches, bench);
criterion_main!(benches);
