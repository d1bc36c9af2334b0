//! Failures under load: eight readers check the sha256 of every file they read
//! through a pod's volume (a CSI-published FUSE mount) while the worker, the
//! master and the FUSE process are each killed with SIGKILL and brought back.
//! Wrong bytes and read errors are never allowed (a killed FUSE process is taken
//! over by a new one on the same connection); every recovery must take under
//! 10 s. The figures are printed (and recorded in `benches/RESULTS.md`).

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::csi_node::*;
use common::*;

const READERS: usize = 8;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    wrong: AtomicU64,
    errors: AtomicU64,
    /// When reads last failed and last succeeded.
    last_error: Mutex<Option<Instant>>,
    last_ok: Mutex<Option<Instant>>,
    /// The longest single read.
    slowest: Mutex<Duration>,
    first_error: Mutex<Option<String>>,
}

/// Read `path` whole, then drop it from the page cache so the next read goes to
/// the FUSE process again.
fn read_uncached(path: &Path) -> std::io::Result<Vec<u8>> {
    let data = std::fs::read(path)?;
    if let Ok(f) = std::fs::File::open(path) {
        // Drops only clean page-cache pages of this file.
        let _ = nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    }
    Ok(data)
}

fn readers(
    root: PathBuf,
    want: Arc<BTreeMap<String, String>>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<std::thread::JoinHandle<()>> {
    let names: Arc<Vec<String>> = Arc::new(want.keys().cloned().collect());
    (0..READERS)
        .map(|r| {
            let (root, want, stop, tally, names) =
                (root.clone(), want.clone(), stop.clone(), tally.clone(), names.clone());
            std::thread::spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(r as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let name = &names[(x >> 33) as usize % names.len()];
                    let started = Instant::now();
                    match read_uncached(&root.join(name)) {
                        Ok(data) if sha256(&data) == want[name] => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            *tally.last_ok.lock().unwrap() = Some(Instant::now());
                            let took = started.elapsed();
                            let mut slowest = tally.slowest.lock().unwrap();
                            *slowest = (*slowest).max(took);
                        }
                        Ok(data) => {
                            tally.wrong.fetch_add(1, Ordering::Relaxed);
                            tally
                                .first_error
                                .lock()
                                .unwrap()
                                .get_or_insert(format!("{name}: {} wrong bytes", data.len()));
                        }
                        Err(e) => {
                            tally.errors.fetch_add(1, Ordering::Relaxed);
                            *tally.last_error.lock().unwrap() = Some(Instant::now());
                            tally.first_error.lock().unwrap().get_or_insert(format!("{name}: {e}"));
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
            })
        })
        .collect()
}

/// Wait until the readers have finished `n` more good reads.
fn more_reads(tally: &Tally, n: u64, what: &str) {
    let from = tally.ok.load(Ordering::Relaxed);
    wait_for_sync(what, || tally.ok.load(Ordering::Relaxed) >= from + n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_worker_master_and_fuse_under_load_loses_no_byte() {
    let mut node = Node::start_with(
        |src| {
            for d in 0..8 {
                let dir = src.join(format!("class-{d}"));
                std::fs::create_dir_all(&dir).unwrap();
                for f in 0..40 {
                    let seed = (d * 100 + f) as u64;
                    let len = 20_000 + (seed as usize * 7919) % 180_000;
                    std::fs::write(dir.join(format!("img-{f:03}.bin")), content(seed, len)).unwrap();
                }
            }
            std::fs::create_dir_all(src.join("shards")).unwrap();
            for s in 0..3 {
                std::fs::write(src.join(format!("shards/shard-{s}.bin")), content(1000 + s, 3 * 1024 * 1024 + 11))
                    .unwrap();
            }
        },
        // A tiny block cache, so reads keep going to the worker (or the store).
        &["--cache-size=256KiB", "--dir-prefetch=0"],
    );
    let want = Arc::new(checksums(&node.src));
    let mut csi = node.node().await;
    let target = node.target("trainer-0");
    csi.node_publish_volume(publish_req("pv-ds", &target)).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let threads = readers(target.clone(), want.clone(), stop.clone(), tally.clone());
    more_reads(&tally, 300, "a warm-up epoch");
    let mut report = Vec::new();

    // 1. The worker: reads fall back to the store; a new worker takes over.
    let worker = node.worker.as_mut().unwrap();
    let worker_pid = worker.child.id();
    let worker_hwm = status_kib(worker_pid, ["VmHWM:"])[0];
    let killed = Instant::now();
    worker.kill9();
    more_reads(&tally, 200, "reads with the worker dead");
    let root = node.dir.path().to_path_buf();
    let restarted = Instant::now();
    let new_worker = start_worker(
        &node.master.addr,
        "127.0.0.1:0",
        &tiers(&root.join("w"), "64MiB", "256MiB"),
        &[],
        &root.join("worker-2.log"),
    );
    wait_until_registered(&node.master.addr, &new_worker.addr);
    let worker_back = restarted.elapsed();
    more_reads(&tally, 200, "reads with the new worker");
    report.push(format!(
        "worker kill -9: {} read errors, {} wrong; dead for {} ms of reads; new worker registered {} ms after start",
        tally.errors.load(Ordering::Relaxed),
        tally.wrong.load(Ordering::Relaxed),
        restarted.duration_since(killed).as_millis(),
        worker_back.as_millis()
    ));
    node.worker = Some(new_worker);
    assert_eq!(tally.errors.load(Ordering::Relaxed), 0, "{:?}", tally.first_error.lock().unwrap());
    assert!(worker_back < Duration::from_secs(10), "worker recovery {worker_back:?}");

    // 2. The master: reads go on (the mount has the namespace; workers and the
    //    store have the data); the restarted master gets the worker back.
    let master_addr = node.master.addr.clone();
    node.master.kill9();
    more_reads(&tally, 200, "reads with the master dead");
    let restarted = Instant::now();
    node.master = start_master(&root.join("master"), &master_addr, &root.join("master-2.log"));
    let worker_addr = node.worker.as_ref().unwrap().addr.clone();
    wait_until_registered(&master_addr, &worker_addr);
    let master_back = restarted.elapsed();
    more_reads(&tally, 200, "reads with the new master");
    report.push(format!(
        "master kill -9: {} read errors, {} wrong; worker re-registered {} ms after the restart",
        tally.errors.load(Ordering::Relaxed),
        tally.wrong.load(Ordering::Relaxed),
        master_back.as_millis()
    ));
    assert_eq!(tally.errors.load(Ordering::Relaxed), 0, "{:?}", tally.first_error.lock().unwrap());
    assert!(master_back < Duration::from_secs(10), "master recovery {master_back:?}");

    if !kernel_has("FUSE_NOTIFY_RESEND, for the FUSE takeover", (6, 9)) {
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        println!("{}", report.join("\n"));
        assert_eq!(tally.wrong.load(Ordering::Relaxed), 0, "wrong bytes: {:?}", tally.first_error.lock().unwrap());
        assert_eq!(tally.errors.load(Ordering::Relaxed), 0, "{:?}", tally.first_error.lock().unwrap());
        return csi.node_unpublish_volume(unpublish_req(&target)).await.map(drop).unwrap();
    }
    // 3. The FUSE process: the CSI plugin holds its connection, so a new process
    //    takes it over; reads pause, and none fails.
    let fuse_pid = node.fuse_pid().expect("a FUSE process");
    let fuse_hwm = status_kib(fuse_pid as u32, ["VmHWM:"])[0];
    *tally.slowest.lock().unwrap() = Duration::ZERO;
    let killed = Instant::now();
    std::process::Command::new("kill").arg("-9").arg(fuse_pid.to_string()).status().unwrap();
    wait_for_sync("the new FUSE process", || node.fuse_pid().is_some_and(|p| p != fuse_pid));
    let taken_over = Instant::now();
    wait_for_sync("good reads after the FUSE restart", || {
        tally.last_ok.lock().unwrap().is_some_and(|t| t > taken_over)
    });
    let fuse_back = killed.elapsed();
    let errors_during = tally.errors.load(Ordering::Relaxed);
    more_reads(&tally, 200, "reads through the restarted FUSE process");
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    report.push(format!(
        "FUSE kill -9: {errors_during} read errors; taken over, reads good again after {} ms (longest read {} ms)",
        fuse_back.as_millis(),
        tally.slowest.lock().unwrap().as_millis()
    ));
    report.push(format!(
        "totals: {} good reads, {} wrong, slowest good read {} ms; peak RSS worker {} MiB, FUSE {} MiB",
        tally.ok.load(Ordering::Relaxed),
        tally.wrong.load(Ordering::Relaxed),
        tally.slowest.lock().unwrap().as_millis(),
        worker_hwm / 1024,
        fuse_hwm / 1024
    ));
    for line in &report {
        println!("{line}");
    }
    assert_eq!(tally.wrong.load(Ordering::Relaxed), 0, "wrong bytes: {:?}", tally.first_error.lock().unwrap());
    assert!(fuse_back < Duration::from_secs(10), "FUSE recovery {fuse_back:?}");
    assert_eq!(
        tally.errors.load(Ordering::Relaxed),
        0,
        "no read error, FUSE restart included: {:?}",
        tally.first_error.lock().unwrap()
    );

    csi.node_unpublish_volume(unpublish_req(&target)).await.unwrap();
}
