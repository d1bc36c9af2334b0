//! Master metadata lookups on a 1,000,000-entry namespace in RocksDB: a directory
//! entry lookup (one point read for the dentry, one for the inode), a full path
//! resolution (one per component), and a 1,000-entry directory page (one prefix
//! scan plus a multi-get).
//!
//! cargo bench -p shoal-benches --bench master_lookup

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rocksdb::WriteBatch;
use shoal_master::meta::{MetaStore, ROOT_INO};
use shoal_proto::master::{FileKind, Inode};

const DIRS: u64 = 1000;
const PER_DIR: u64 = 1000;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let meta = MetaStore::open(dir.path()).unwrap();
    let ds = 1;
    let mut b = WriteBatch::default();
    meta.put_inode(&mut b, ds, &Inode { ino: ROOT_INO, kind: FileKind::Directory as i32, ..Default::default() });
    let mut ino = 2;
    for d in 0..DIRS {
        let dino = ino;
        ino += 1;
        let name = format!("class-{d:04}");
        meta.put_inode(
            &mut b,
            ds,
            &Inode {
                ino: dino,
                parent: ROOT_INO,
                name: name.clone(),
                kind: FileKind::Directory as i32,
                ..Default::default()
            },
        );
        meta.put_dentry(&mut b, ds, ROOT_INO, &name, dino);
        for f in 0..PER_DIR {
            let fname = format!("img-{f:06}.jpg");
            meta.put_inode(
                &mut b,
                ds,
                &Inode {
                    ino,
                    parent: dino,
                    name: fname.clone(),
                    kind: FileKind::File as i32,
                    size: 110_000,
                    file_id: ino,
                    ..Default::default()
                },
            );
            meta.put_dentry(&mut b, ds, dino, &fname, ino);
            ino += 1;
        }
        if d % 50 == 49 {
            futures::executor::block_on(meta.write(std::mem::take(&mut b))).unwrap();
        }
    }
    futures::executor::block_on(meta.write(b)).unwrap();

    let mut group = c.benchmark_group("master_metadata_1M");
    group.throughput(Throughput::Elements(1));
    let mut x: u64 = 99;
    let mut next = move || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        x >> 33
    };
    group.bench_function("lookup", |bch| {
        bch.iter(|| {
            let d = next() % DIRS;
            let f = next() % PER_DIR;
            let dino = 2 + d * (PER_DIR + 1);
            meta.lookup(ds, dino, &format!("img-{f:06}.jpg")).unwrap().unwrap()
        })
    });
    group.bench_function("resolve_path", |bch| {
        bch.iter(|| {
            let d = next() % DIRS;
            let f = next() % PER_DIR;
            meta.resolve(ds, &format!("/class-{d:04}/img-{f:06}.jpg")).unwrap().unwrap()
        })
    });
    group.throughput(Throughput::Elements(PER_DIR));
    group.bench_function("readdir_1000", |bch| {
        bch.iter(|| {
            let d = next() % DIRS;
            let dino = 2 + d * (PER_DIR + 1);
            let (entries, more) = meta.read_dir(ds, dino, "", 4096).unwrap();
            assert_eq!(entries.len() as u64, PER_DIR);
            assert!(!more);
            entries.len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
