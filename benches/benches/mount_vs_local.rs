//! Reading through a shoal mount versus reading the same files from local disk,
//! in one run: sequential read of one large file, and a shuffled read of many
//! small files by 8 readers, each cold (page cache dropped, shoal's cache empty)
//! and warm (second epoch). Prints a markdown table with GB/s, files/s and the
//! ratio to local disk.
//!
//! cargo bench -p shoal-benches --bench mount_vs_local [-- --quick]
//! (root: drops the page cache and mounts FUSE)

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use shoal_benches::{content, drop_page_cache, Cluster};

struct Sizes {
    big: usize,
    files: usize,
    file_size: usize,
    dirs: usize,
}

fn generate(src: &Path, s: &Sizes) -> Vec<PathBuf> {
    let big = src.join("big.bin");
    if std::fs::metadata(&big).map(|m| m.len() as usize).ok() != Some(s.big) {
        std::fs::create_dir_all(src).unwrap();
        let chunk = content(1, 64 << 20);
        let mut f = File::create(&big).unwrap();
        let mut left = s.big;
        while left > 0 {
            let n = left.min(chunk.len());
            std::io::Write::write_all(&mut f, &chunk[..n]).unwrap();
            left -= n;
        }
    }
    let mut small = Vec::new();
    for i in 0..s.files {
        let rel = PathBuf::from(format!("small/d{:03}/f{i:06}.bin", i % s.dirs));
        let p = src.join(&rel);
        if !p.exists() {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content(i as u64 + 7, s.file_size)).unwrap();
        }
        small.push(rel);
    }
    small
}

fn seq_read(path: &Path) -> f64 {
    let start = Instant::now();
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    total as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// 8 readers take files from a shuffled list; returns files/s and GB/s.
fn shuffled_read(root: &Path, files: &[PathBuf], readers: usize) -> (f64, f64) {
    let mut order: Vec<usize> = (0..files.len()).collect();
    let mut x: u64 = 42;
    for i in (1..order.len()).rev() {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        order.swap(i, (x >> 33) as usize % (i + 1));
    }
    let order = Arc::new(order);
    let next = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicUsize::new(0));
    let files: Arc<Vec<PathBuf>> = Arc::new(files.iter().map(|f| root.join(f)).collect());
    let start = Instant::now();
    let handles: Vec<_> = (0..readers)
        .map(|_| {
            let (order, next, bytes, files) = (order.clone(), next.clone(), bytes.clone(), files.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= order.len() {
                    return;
                }
                let data = std::fs::read(&files[order[i]]).unwrap();
                bytes.fetch_add(data.len(), Ordering::Relaxed);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    (files.len() as f64 / secs, bytes.load(Ordering::Relaxed) as f64 / secs / 1e9)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = if quick {
        Sizes { big: 256 << 20, files: 2000, file_size: 100 << 10, dirs: 20 }
    } else {
        Sizes { big: 1 << 30, files: 10_000, file_size: 100 << 10, dirs: 100 }
    };
    let base = PathBuf::from("/var/tmp/shoal-bench");
    let src = base.join("src");
    let files = generate(&src, &sizes);
    let run_dir = base.join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir).unwrap();
    let can_drop = drop_page_cache();

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let cluster = rt.block_on(Cluster::start(&run_dir, &src, "4GiB", "8GiB", 8 << 20)).unwrap();
    let mnt = cluster.mountpoint.clone();

    let mut rows: Vec<(String, f64, f64)> = Vec::new(); // (workload, local, shoal)
                                                        // Sequential read of the big file.
    drop_page_cache();
    let local_cold = seq_read(&src.join("big.bin"));
    let local_warm = seq_read(&src.join("big.bin"));
    drop_page_cache();
    let shoal_cold = seq_read(&mnt.join("big.bin"));
    let shoal_warm = seq_read(&mnt.join("big.bin"));
    drop_page_cache();
    let shoal_cached = seq_read(&mnt.join("big.bin"));
    rows.push(("sequential 1 reader, cold (GB/s)".into(), local_cold, shoal_cold));
    rows.push(("sequential 1 reader, warm (GB/s)".into(), local_warm, shoal_warm));
    rows.push(("sequential, page cache dropped, shoal tiers warm (GB/s)".into(), local_cold, shoal_cached));

    // Shuffled small files, 8 readers.
    drop_page_cache();
    let (l_cold, _) = shuffled_read(&src, &files, 8);
    let (l_warm, _) = shuffled_read(&src, &files, 8);
    drop_page_cache();
    let (s_cold, _) = shuffled_read(&mnt, &files, 8);
    let (s_warm, _) = shuffled_read(&mnt, &files, 8);
    drop_page_cache();
    let (s_cached, _) = shuffled_read(&mnt, &files, 8);
    rows.push((
        format!("shuffled {} x {} KiB, 8 readers, cold (files/s)", sizes.files, sizes.file_size >> 10),
        l_cold,
        s_cold,
    ));
    rows.push(("shuffled, 8 readers, warm epoch 2 (files/s)".into(), l_warm, s_warm));
    rows.push(("shuffled, page cache dropped, shoal tiers warm (files/s)".into(), l_cold, s_cached));

    cluster.shutdown();
    let _ = std::fs::remove_dir_all(&run_dir);

    println!("\npage cache dropped between cold runs: {can_drop}");
    println!(
        "big file {} MiB, {} small files of {} KiB, block size 8 MiB\n",
        sizes.big >> 20,
        sizes.files,
        sizes.file_size >> 10
    );
    println!("| workload | local disk | shoal mount | shoal / local |");
    println!("|---|---:|---:|---:|");
    for (w, l, s) in rows {
        println!("| {w} | {l:.2} | {s:.2} | {:.2}x |", s / l);
    }
}
