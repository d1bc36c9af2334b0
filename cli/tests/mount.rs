//! End-to-end tests of the POSIX view: a real master and worker, `shoal mount` as
//! its own process on a real FUSE mount, and `shoal up`. Contents are compared
//! byte for byte with the source tree; errors are checked by errno.

mod common;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BLOCK: usize = 64 * 1024;

fn errno(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

struct Mounted {
    dir: tempfile::TempDir,
    src: PathBuf,
    mnt: PathBuf,
    master: Proc,
    worker: Option<Proc>,
    mount: Option<Proc>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut m) = self.mount.take() {
            let _ = Command::new("kill").arg("-TERM").arg(m.child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(m.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if shoal_fuse::is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3").arg("-u").arg(&self.mnt).status();
        }
        let _ = &self.dir;
    }
}

/// Master, worker, a dataset from `build(src)` and its mount.
fn mounted(worker_env: &[(&str, &str)], build: impl FnOnce(&Path)) -> Mounted {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    build(&src);
    let (master, worker) = master_and_worker(&root, "64MiB", "1GiB", worker_env);
    let (code, out, err) =
        cli(&["dataset", "create", "ds", src.to_str().unwrap(), "--block-size", "64KiB", "--master", &master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    let mnt = root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mount = Proc::start_until(
        &["mount", "ds", mnt.to_str().unwrap(), "--master", &master.addr, "--refresh-interval", "200ms"],
        &[],
        &root.join("mount.log"),
        "mounted dataset ",
    );
    assert!(shoal_fuse::is_mounted(&mnt), "mount is in /proc/mounts");
    Mounted { dir, src, mnt, master, worker: Some(worker), mount: Some(mount) }
}

#[test]
fn mount_shows_the_source_tree_byte_for_byte() {
    let tree = tree_spec(BLOCK, false);
    let m = mounted(&[], |src| {
        write_tree(src, &tree);
        std::fs::write(src.join("multi/big.bin"), content(11, 3 * 1024 * 1024 + 17)).unwrap();
        let flat = src.join("flat");
        std::fs::create_dir(&flat).unwrap();
        for i in 0..10_000 {
            std::fs::write(flat.join(format!("f{i:05}")), i.to_string()).unwrap();
        }
    });

    // find + stat: names, kinds, sizes, mtimes.
    assert_eq!(walk(&m.mnt), walk(&m.src));
    // The flat directory lists completely.
    let names: Vec<String> =
        std::fs::read_dir(m.mnt.join("flat")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names.len(), 10_000);

    // sha256 of every file.
    for (rel, (is_dir, _, _)) in walk(&m.src) {
        if !is_dir && !rel.starts_with("flat/") {
            let got = std::fs::read(m.mnt.join(&rel)).unwrap();
            let want = std::fs::read(m.src.join(&rel)).unwrap();
            assert_eq!(sha256(&got), sha256(&want), "{rel}");
        }
    }
    assert_eq!(std::fs::read_to_string(m.mnt.join("flat/f09999")).unwrap(), "9999");

    // pread at random offsets and lengths, many crossing block edges.
    let want = std::fs::read(m.src.join("multi/big.bin")).unwrap();
    let f = std::fs::File::open(m.mnt.join("multi/big.bin")).unwrap();
    let mut x: u64 = 12345;
    for i in 0..300 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let off = if i % 3 == 0 { ((x >> 20) as usize % 47 + 1) * BLOCK - 7 } else { (x >> 16) as usize % want.len() };
        let len = 1 + (x >> 40) as usize % (3 * BLOCK);
        let mut buf = vec![0u8; len];
        let n = f.read_at(&mut buf, off as u64).unwrap();
        let end = (off + len).min(want.len());
        assert_eq!(n, end - off, "short read at {off}+{len}");
        assert_eq!(&buf[..n], &want[off..end], "pread at {off}+{len}");
    }
    // mmap reads.
    let mapped = mmap_file(&m.mnt.join("multi/big.bin"));
    assert_eq!(sha256(&mapped), sha256(&want));

    // Errors by errno.
    assert_eq!(errno(std::fs::File::open(m.mnt.join("no/such"))), libc::ENOENT);
    assert_eq!(errno(std::fs::File::open(m.mnt.join("missing"))), libc::ENOENT);
    assert_eq!(errno(std::fs::File::create(m.mnt.join("new"))), libc::EROFS);
    assert_eq!(errno(std::fs::OpenOptions::new().write(true).open(m.mnt.join("zero"))), libc::EROFS);
    assert_eq!(errno(std::fs::write(m.mnt.join("one-block"), b"x")), libc::EROFS);
    assert_eq!(errno(std::fs::remove_file(m.mnt.join("zero"))), libc::EROFS);
    assert_eq!(errno(std::fs::rename(m.mnt.join("zero"), m.mnt.join("zero2"))), libc::EROFS);
    assert_eq!(errno(std::fs::create_dir(m.mnt.join("d"))), libc::EROFS);
    assert_eq!(errno(std::fs::remove_dir(m.mnt.join("empty"))), libc::EROFS);
    let mut dir = std::fs::File::open(m.mnt.join("multi")).unwrap();
    assert_eq!(errno(dir.read(&mut [0u8; 16])), libc::EISDIR);

    drop((f, dir));
    // `shoal umount` takes it down; the mount process exits by itself.
    let (code, out, err) = cli(&["umount", m.mnt.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!shoal_fuse::is_mounted(&m.mnt));
}

#[allow(unsafe_code)]
fn mmap_file(path: &Path) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: the file lives on a read-only mount nobody modifies during the test.
    let map = unsafe { memmap2::Mmap::map(&f).unwrap() };
    map.to_vec()
}

#[test]
fn reads_survive_a_worker_killed_mid_read() {
    // A slow store makes the read long enough to kill the worker in the middle.
    let mut m = mounted(&[("SHOAL_FAILPOINT", "worker::before_store_read:sleep-15")], |src| {
        std::fs::write(src.join("long.bin"), content(5, 24 * 1024 * 1024)).unwrap();
    });
    let want = std::fs::read(m.src.join("long.bin")).unwrap();
    let mut f = std::fs::File::open(m.mnt.join("long.bin")).unwrap();
    let mut got = Vec::with_capacity(want.len());
    let mut buf = vec![0u8; 256 * 1024];
    let mut killed = false;
    loop {
        let n = f.read(&mut buf).expect("no read may fail while the worker dies");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if !killed && got.len() >= 4 * 1024 * 1024 {
            m.worker.as_mut().unwrap().kill9();
            killed = true;
        }
    }
    assert!(killed);
    assert_eq!(got.len(), want.len());
    assert_eq!(sha256(&got), sha256(&want), "bytes read across the worker's death are right");
}

#[test]
fn background_mount_and_umount() {
    let mut m = mounted(&[], |src| std::fs::write(src.join("f"), b"hello").unwrap());
    // Replace the foreground mount with a detached one.
    let (code, _, err) = cli(&["umount", m.mnt.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    if let Some(mut p) = m.mount.take() {
        let _ = p.child.wait();
    }
    let (code, out, err) = cli(&["mount", "ds", m.mnt.to_str().unwrap(), "--master", &m.master.addr, "--background"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(shoal_fuse::is_mounted(&m.mnt));
    assert_eq!(std::fs::read(m.mnt.join("f")).unwrap(), b"hello");
    let (code, _, err) = cli(&["umount", m.mnt.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(!shoal_fuse::is_mounted(&m.mnt));
    // Unmounting something that is not mounted is a clear error.
    let (code, _, err) = cli(&["umount", m.mnt.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    // Mounting a dataset that does not exist fails and leaves nothing mounted.
    let (code, _, err) = cli(&["mount", "nope", m.mnt.to_str().unwrap(), "--master", &m.master.addr]);
    assert_ne!(code, 0);
    assert!(err.contains("nope"), "{err}");
    assert!(!shoal_fuse::is_mounted(&m.mnt));
}

#[test]
fn shoal_up_serves_a_demo_and_ctrl_c_leaves_no_mount() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut up = Proc::start_until(
        &[
            "up",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--mem",
            "64MiB",
            "--ssd",
            "1GiB",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
        &dir.path().join("up.log"),
        "mounted at ",
    );
    let mnt = PathBuf::from(&up.addr);
    let _unmount = MountGuard(mnt.clone());
    assert!(shoal_fuse::is_mounted(&mnt));
    let src = data.join("demo-source");
    let walked = walk(&src);
    assert_eq!(walk(&mnt), walked);
    for (rel, (is_dir, _, _)) in walked.iter().take(40) {
        if !is_dir {
            assert_eq!(sha256(&std::fs::read(mnt.join(rel)).unwrap()), sha256(&std::fs::read(src.join(rel)).unwrap()));
        }
    }
    assert_eq!(
        sha256(&std::fs::read(mnt.join("shards/shard-0001.tar")).unwrap()),
        sha256(&std::fs::read(src.join("shards/shard-0001.tar")).unwrap())
    );
    // Ctrl-C: unmount, stop, exit 0.
    Command::new("kill").arg("-INT").arg(up.child.id().to_string()).stdout(Stdio::null()).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = up.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "shoal up did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!shoal_fuse::is_mounted(&mnt), "no mount left behind");
    // The MEM tier (RAM, on /dev/shm) is given back.
    let cache = up.line_after("cache    mem ");
    let mem_dir = cache.split(" in ").nth(1).and_then(|s| s.split(',').next()).expect("the MEM tier's directory");
    assert!(!Path::new(mem_dir).exists(), "{mem_dir} is left behind");
}

#[test]
fn store_changes_show_through_the_mount_after_sync() {
    let m = mounted(&[], |src| {
        std::fs::write(src.join("a.txt"), b"old bytes").unwrap();
        std::fs::write(src.join("b.txt"), b"to be deleted").unwrap();
        std::fs::create_dir(src.join("dir")).unwrap();
        std::fs::write(src.join("dir/c.txt"), b"unchanged").unwrap();
    });
    // Read everything once so the kernel caches pages, attributes and entries.
    assert_eq!(std::fs::read(m.mnt.join("a.txt")).unwrap(), b"old bytes");
    assert_eq!(std::fs::read(m.mnt.join("b.txt")).unwrap(), b"to be deleted");
    assert_eq!(errno(std::fs::metadata(m.mnt.join("dir/new.txt"))), libc::ENOENT);

    std::fs::write(m.src.join("a.txt"), b"new and longer bytes").unwrap();
    std::fs::remove_file(m.src.join("b.txt")).unwrap();
    std::fs::write(m.src.join("dir/new.txt"), b"fresh").unwrap();
    let (code, out, err) = cli(&["dataset", "sync", "ds", "-o", "json", "--master", &m.master.addr]);
    assert_eq!(code, 0, "{out}{err}");

    wait_for_sync("the mount to show the synced namespace", || {
        std::fs::read(m.mnt.join("a.txt")).is_ok_and(|d| d == b"new and longer bytes")
    });
    assert_eq!(errno(std::fs::metadata(m.mnt.join("b.txt"))), libc::ENOENT);
    assert_eq!(std::fs::read(m.mnt.join("dir/new.txt")).unwrap(), b"fresh");
    assert_eq!(std::fs::read(m.mnt.join("dir/c.txt")).unwrap(), b"unchanged");
    assert_eq!(walk(&m.mnt), walk(&m.src));
}

#[test]
fn a_sync_interval_follows_the_store_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("one"), b"1").unwrap();
    let master = start_master(&root.join("master"), "127.0.0.1:0", &root.join("master.log"));
    let (code, _, err) =
        cli(&["dataset", "create", "iv", src.to_str().unwrap(), "--sync-interval", "1s", "--master", &master.addr]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(src.join("two"), b"22").unwrap();
    wait_for_sync("the periodic sync to see the new file", || {
        let (_, out, _) = cli(&["dataset", "show", "iv", "-o", "json", "--master", &master.addr]);
        serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|v| v["file_count"] == 2 && v["total_bytes"] == 3)
    });
}

#[test]
fn cached_reads_go_on_with_the_master_down() {
    let mut m = mounted(&[], |src| {
        for i in 0..6 {
            std::fs::write(src.join(format!("f{i}")), content(i, 3 * BLOCK + 5)).unwrap();
        }
    });
    let (code, _, err) = cli(&["prewarm", "ds", "--master", &m.master.addr]);
    assert_eq!(code, 0, "{err}");
    assert!(shoal_fuse::is_mounted(&m.mnt));
    // Read one file so the mount knows its worker, then take the master away.
    assert_eq!(std::fs::read(m.mnt.join("f0")).unwrap(), std::fs::read(m.src.join("f0")).unwrap());
    m.master.kill9();
    for i in 0..6 {
        let got = std::fs::read(m.mnt.join(format!("f{i}"))).expect("cached data is readable without the master");
        assert_eq!(sha256(&got), sha256(&std::fs::read(m.src.join(format!("f{i}"))).unwrap()), "f{i}");
    }
    assert_eq!(walk(&m.mnt), walk(&m.src), "metadata is served from the mount's memory");
    // Every byte came from the worker's tiers: the store saw only the prewarm.
    let addr = m.worker.as_ref().unwrap().addr.clone();
    let reads = tokio::runtime::Runtime::new().unwrap().block_on(async move {
        worker_client(&addr).await.stats(shoal_proto::worker::StatsRequest {}).await.unwrap().into_inner().store_reads
    });
    assert_eq!(reads, 6 * 4, "one store read per block, all during the prewarm");
}

/// Two cold reads of small files in a directory make the workers cache the
/// directory's other small files; multi-block files and other directories stay
/// untouched, and the prefetched files then read byte for byte without the store.
#[test]
fn reading_two_files_of_a_directory_prefetches_the_rest() {
    let m = mounted(&[], |src| {
        for d in ["a", "b"] {
            std::fs::create_dir_all(src.join(d)).unwrap();
            for i in 0..20u64 {
                std::fs::write(src.join(format!("{d}/f{i:02}")), content(i + 100, 10_000 + i as usize)).unwrap();
            }
        }
        std::fs::write(src.join("a/big"), content(7, 3 * BLOCK)).unwrap();
    });
    let addr = m.worker.as_ref().unwrap().addr.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store_reads = || {
        let addr = addr.clone();
        rt.block_on(async move {
            worker_client(&addr)
                .await
                .stats(shoal_proto::worker::StatsRequest {})
                .await
                .unwrap()
                .into_inner()
                .store_reads
        })
    };
    for f in ["a/f00", "a/f01"] {
        assert_eq!(std::fs::read(m.mnt.join(f)).unwrap(), std::fs::read(m.src.join(f)).unwrap(), "{f}");
    }
    // a/f00 and a/f01 by the reads, a/f02..a/f19 by the prefetch.
    wait_for_sync("the directory prefetch", || store_reads() >= 20);
    for i in 0..20 {
        let f = format!("a/f{i:02}");
        let got = std::fs::read(m.mnt.join(&f)).unwrap();
        assert_eq!(sha256(&got), sha256(&std::fs::read(m.src.join(&f)).unwrap()), "{f}");
    }
    assert_eq!(store_reads(), 20, "a/big and b/ are not prefetched, and no prefetched file was fetched again");
}
