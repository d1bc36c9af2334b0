//! Memory bounds: a mount with a 16 MiB block cache and a worker with a 32 MiB
//! MEM tier serve a dataset six times that size, read twice by four readers and at
//! random. Peaks of anonymous, file-backed and shared RSS are sampled every 10 ms:
//! the mount's own memory stays within its cache budget, the worker's within
//! its fill budget (`--fill-memory`).

use crate::common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::*;

/// RssAnon, RssFile and RssShmem of a process, in KiB.
fn rss(pid: u32) -> [u64; 3] {
    status_kib(pid, ["RssAnon:", "RssFile:", "RssShmem:"])
}

/// Samples the peaks of [`rss`] every 10 ms until dropped.
struct Peaks {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<[u64; 3]>>,
}

impl Peaks {
    fn watch(pid: u32) -> Peaks {
        let (stop, peaks) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new([0u64; 3])));
        let (s, p) = (stop.clone(), peaks.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let now = rss(pid);
                let mut peaks = p.lock().unwrap();
                for i in 0..3 {
                    peaks[i] = peaks[i].max(now[i]);
                }
                drop(peaks);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
        Peaks { stop, peaks }
    }

    /// Peak anonymous, file-backed and shared-memory RSS, in MiB.
    fn mib(&self) -> [u64; 3] {
        self.peaks.lock().unwrap().map(|k| k / 1024)
    }
}

impl Drop for Peaks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn mount_and_worker_stay_within_their_memory_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let src = root.join("src");
    std::fs::create_dir_all(src.join("shards")).unwrap();
    std::fs::create_dir_all(src.join("images")).unwrap();
    let mut want = Vec::new();
    let shards: Vec<Vec<u8>> = (0..4u64).map(|s| content(500 + s, 24 << 20)).collect();
    for (s, data) in shards.iter().enumerate() {
        std::fs::write(src.join(format!("shards/s{s}.bin")), data).unwrap();
        want.push((format!("shards/s{s}.bin"), sha256(data)));
    }
    for i in 0..200u64 {
        let data = content(900 + i, 60_000 + (i as usize * 997) % 100_000);
        std::fs::write(src.join(format!("images/i{i:03}.bin")), &data).unwrap();
        want.push((format!("images/i{i:03}.bin"), sha256(&data)));
    }
    let (master, worker) = master_and_worker(root, "32MiB", "512MiB", &[("SHOAL_FILL_MEMORY", "32MiB")]);
    let (code, out, err) = cli(&["dataset", "create", "ds", src.to_str().unwrap(), "--master", &master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    let mnt = root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mount = Proc::start_until(
        &["mount", "ds", mnt.to_str().unwrap(), "--master", &master.addr, "--cache-size", "16MiB"],
        &[],
        &root.join("mount.log"),
        "mounted dataset ",
    );
    let _guard = MountGuard(mnt.clone());
    let (mount_peaks, worker_peaks) = (Peaks::watch(mount.child.id()), Peaks::watch(worker.child.id()));

    // Two sequential passes with four readers, dropping the page cache between.
    for pass in 0..2 {
        std::thread::scope(|s| {
            for r in 0..4 {
                let (want, mnt) = (&want, &mnt);
                s.spawn(move || {
                    for (name, sum) in want.iter().skip(r).step_by(4) {
                        let got = std::fs::read(mnt.join(name)).unwrap();
                        assert_eq!(&sha256(&got), sum, "pass {pass}: {name}");
                    }
                });
            }
        });
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    }
    // Random 256 KiB reads over the shards.
    let mut x = 7u64;
    for _ in 0..400 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let shard = (x >> 60) % 4;
        let f = std::fs::File::open(mnt.join(format!("shards/s{shard}.bin"))).unwrap();
        let off = (x >> 20) % ((24 << 20) - (256 << 10));
        let mut buf = vec![0u8; 256 << 10];
        f.read_exact_at(&mut buf, off).unwrap();
        assert_eq!(buf, shards[shard as usize][off as usize..off as usize + buf.len()]);
    }

    let ([m_anon, m_file, m_shm], [w_anon, w_file, w_shm]) = (mount_peaks.mib(), worker_peaks.mib());
    println!(
        "peak RSS, MiB (anonymous / file-backed / shared): mount {m_anon} / {m_file} / {m_shm} with a 16 MiB cache; \
         worker {w_anon} / {w_file} / {w_shm} with a 32 MiB MEM tier and --fill-memory 32MiB; {} MiB read twice plus 400 random 256 KiB reads",
        96 + 15
    );
    // The mount's own memory: its block cache and as much again for streamed
    // blocks, plus the process (about 30 MiB). File-backed pages are the page
    // cache of mapped block files, which the kernel reclaims.
    assert!(m_anon <= 16 * 2 + 48, "mount anonymous peak {m_anon} MiB");
    // The worker under reads: a ceiling against regressions (measured 129-170
    // MiB; four readers never have more than a few blocks missing at once).
    assert!(w_anon <= 256, "worker anonymous peak {w_anon} MiB");
    // Tier files (here on disk; tmpfs in production) stay within their quotas.
    assert!(w_shm <= 32 + 8, "worker shared-memory peak {w_shm} MiB");

    // Many misses at once: a prewarm of 256 MiB (32 blocks of 8 MiB) with 32
    // blocks in flight. Without a budget every fill holds its block at once
    // (measured: +354 MiB); with --fill-memory 32MiB at most four do, each
    // about twice (the store's buffers and the contiguous block) plus what the
    // allocator keeps (measured: +140 MiB).
    let big = root.join("big");
    std::fs::create_dir_all(&big).unwrap();
    for s in 0..4u64 {
        std::fs::write(big.join(format!("b{s}.bin")), content(700 + s, 64 << 20)).unwrap();
    }
    let (code, out, err) = cli(&["dataset", "create", "big", big.to_str().unwrap(), "--master", &master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    let base = rss(worker.child.id())[0] / 1024;
    let peaks = Peaks::watch(worker.child.id());
    let (code, out, err) = cli(&["prewarm", "big", "--parallel", "32", "--master", &master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    let [p_anon, _, _] = peaks.mib();
    println!("worker anonymous RSS during a 32-wide prewarm of 256 MiB with --fill-memory 32MiB: {base} MiB before, peak {p_anon} MiB");
    assert!(p_anon <= base + 32 * 6, "worker anonymous peak {p_anon} MiB in the prewarm, {base} MiB before");
}
