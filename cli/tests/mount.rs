//! End-to-end tests of the POSIX view: a real master and worker, `shoal mount` as
//! its own process on a real FUSE mount, and `shoal up`. Contents are compared
//! byte for byte with the source tree; errors are checked by errno.

use crate::common;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use std::os::unix::fs::MetadataExt;

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
    let (mnt, mount) = mount_at(&root, &master.addr, "ds");
    Mounted { dir, src, mnt, master, worker: Some(worker), mount: Some(mount) }
}

/// `shoal mount NAME root/mnt` (namespace refreshed every 200 ms) as its own
/// process, once it is in /proc/mounts.
fn mount_at(root: &Path, master: &str, name: &str) -> (PathBuf, Proc) {
    let mnt = root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mount = Proc::start_until(
        &[
            "mount",
            name,
            mnt.to_str().unwrap(),
            "--master",
            master,
            "--refresh-interval",
            "200ms",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
        &root.join("mount.log"),
        "mounted dataset ",
    );
    assert!(shoal_fuse::is_mounted(&mnt), "mount is in /proc/mounts");
    (mnt, mount)
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
    let mut m = mounted(&[("FAILPOINTS", "worker::before_store_read=sleep(15)")], |src| {
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
    // The blocks after the worker's death came from the store itself.
    let fm = m.mount.as_ref().unwrap().metrics();
    let fetched = |s: &str| metric(&fm, &format!(r#"shoal_fuse_block_fetches_total{{source="{s}"}}"#));
    assert!(fetched("store") > 0.0, "the store served the reads the dead worker could not: {fm}");
    assert!(fetched("short_circuit") > 0.0, "the worker served the first blocks: {fm}");
    assert_eq!(fetched("failed"), 0.0);
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
    let ino = |rel: &str| std::fs::metadata(m.mnt.join(rel)).unwrap().ino();
    let before: Vec<u64> = ["a.txt", "b.txt", "dir", "dir/c.txt"].iter().map(|r| ino(r)).collect();
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
    // Inode numbers are stable across the re-sync: a changed file and the
    // unchanged ones keep theirs, and a new file takes none of the old ones.
    assert_eq!([ino("a.txt"), ino("dir"), ino("dir/c.txt")], [before[0], before[2], before[3]]);
    assert!(!before.contains(&ino("dir/new.txt")), "a new file has a new inode");
}

/// Object keys that cannot be POSIX paths (`a/../b`, `a//b`, `./c`) are
/// skipped by the sync, never mapped onto another path; the rest mounts.
#[test]
fn hostile_object_keys_are_skipped_and_the_rest_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s3 = S3Server::start(&root.join("moto.log"));
    s3.create_bucket("hostile");
    let fine = content(3, 3 * BLOCK + 5);
    s3.put("hostile", "data/ok.txt", b"fine");
    s3.put("hostile", "data/sub/fine.bin", &fine);
    for hostile in ["data/a/../b", "data/a//b", "data/./c", "data/sub/./d", "data/sub/../ok.txt"] {
        s3.put("hostile", hostile, b"must never be seen");
    }
    let (master, _worker) = master_and_worker(root, "64MiB", "1GiB", &[]);
    s3.create_dataset(&master.addr, "hk", "s3://hostile/data");
    let shown = show(&master.addr, "hk", None);
    assert_eq!(shown["file_count"].as_u64(), Some(2), "{shown}");
    let (mnt, _mount) = mount_at(root, &master.addr, "hk");
    let _guard = MountGuard(mnt.clone());
    let files: Vec<String> = walk(&mnt).into_iter().filter(|(_, (is_dir, _, _))| !is_dir).map(|(p, _)| p).collect();
    assert_eq!(files, ["ok.txt", "sub/fine.bin"]);
    assert_eq!(std::fs::read(mnt.join("ok.txt")).unwrap(), b"fine");
    assert_eq!(sha256(&std::fs::read(mnt.join("sub/fine.bin")).unwrap()), sha256(&fine));
    for p in ["a/b", "b", "c", "sub/d"] {
        assert_eq!(errno(std::fs::metadata(mnt.join(p))), libc::ENOENT, "{p}");
    }
    let log = std::fs::read_to_string(root.join("master.log")).unwrap();
    let skipped = log.matches("skipping an object whose path cannot be a POSIX path").count();
    assert!(skipped >= 3, "the sync names what it skipped ({skipped} lines)");
}

/// A block file corrupted on the SSD tier is caught (the mount's checksum of
/// the mapped file, then the worker's), dropped and read again from the store:
/// the reader gets the right bytes, and the worker holds a good copy after.
#[test]
fn a_corrupted_ssd_block_is_dropped_and_read_again_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let want = content(21, 8 * BLOCK);
    std::fs::write(src.join("f.bin"), &want).unwrap();
    // 64 KiB of MEM: the prewarmed blocks are demoted to the SSD tier.
    let (master, worker) = master_and_worker(root, "64KiB", "64MiB", &[]);
    let m = master.addr.as_str();
    let (code, _, err) =
        cli(&["dataset", "create", "ds", src.to_str().unwrap(), "--block-size", "64KiB", "--master", m]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&["prewarm", "ds", "--master", m]);
    assert_eq!(code, 0, "{out}{err}");
    let mut ssd = Vec::new();
    let mut stack = vec![root.join("w/ssd")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                if name != "tmp" {
                    stack.push(e.path());
                }
            } else if e.metadata().unwrap().len() == BLOCK as u64 {
                ssd.push(e.path());
            }
        }
    }
    assert!(ssd.len() >= 6, "most blocks are on the SSD tier: {ssd:?}");
    // One flipped byte in the middle of each.
    for p in &ssd {
        let mut b = std::fs::read(p).unwrap();
        b[BLOCK / 2] ^= 0xff;
        std::fs::write(p, &b).unwrap();
    }
    let stats = || {
        let wm = worker.metrics();
        (
            metric(&wm, "shoal_worker_corrupt_blocks_total"),
            metric(&wm, r#"shoal_store_requests_total{op="read",result="ok"}"#),
        )
    };
    let (corrupt0, reads0) = stats();
    assert_eq!(corrupt0, 0.0);
    let (mnt, _mount) = mount_at(root, m, "ds");
    let _guard = MountGuard(mnt.clone());
    assert_eq!(sha256(&std::fs::read(mnt.join("f.bin")).unwrap()), sha256(&want), "the reader gets the stored bytes");
    let (corrupt, reads) = stats();
    assert_eq!(corrupt, ssd.len() as f64, "each corrupted block was caught and dropped");
    assert_eq!(reads - reads0, ssd.len() as f64, "and read again from the store, once each");
    // The worker holds good copies again: a second read of every block over
    // gRPC finds nothing corrupt and reads nothing from the store.
    let (code, out, err) = cli(&["prewarm", "ds", "-o", "json", "--master", m]);
    assert_eq!(code, 0, "{out}{err}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["blocks_already_cached"].as_u64(), Some(8), "{job}");
    assert_eq!(stats(), (corrupt, reads));
}

/// A file rewritten in the store since the listing reads as ESTALE (the mount's
/// view of it is stale), never as a mix of two versions; other files read on,
/// and after a sync the new content shows.
#[test]
fn a_file_changed_in_the_store_since_the_sync_is_estale_until_a_resync() {
    let m = mounted(&[], |src| {
        std::fs::write(src.join("a.txt"), b"old bytes").unwrap();
        std::fs::write(src.join("b.txt"), b"unchanged").unwrap();
    });
    std::fs::write(m.src.join("a.txt"), b"new and longer bytes").unwrap();
    assert_eq!(errno(std::fs::read(m.mnt.join("a.txt"))), libc::ESTALE);
    assert_eq!(std::fs::read(m.mnt.join("b.txt")).unwrap(), b"unchanged");
    let (code, out, err) = cli(&["dataset", "sync", "ds", "--master", &m.master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for_sync("the mount to show the re-synced file", || {
        std::fs::read(m.mnt.join("a.txt")).is_ok_and(|d| d == b"new and longer bytes")
    });
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
    // The mount counts what it prefetched, and its queue is empty once done.
    let mount = m.mount.as_ref().unwrap();
    wait_for_sync("the prefetch queue to drain", || {
        mount.metrics().lines().any(|l| l == "shoal_fuse_dir_prefetch_queued 0")
    });
    let fm = mount.metrics();
    assert_eq!(metric(&fm, r#"shoal_fuse_dir_prefetch_blocks_total{result="loaded"}"#), 18.0, "{fm}");
    assert_eq!(metric(&fm, r#"shoal_fuse_dir_prefetch_blocks_total{result="failed"}"#), 0.0, "{fm}");
    // A prefetch that may never run is refused before anything is mounted.
    let other = m.dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (code, out, err) =
        cli(&["mount", "ds", other.to_str().unwrap(), "--master", &m.master.addr, "--dir-prefetch-parallel", "0"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("--dir-prefetch-parallel"), "{err}");
    assert!(!shoal_fuse::is_mounted(&other));
}

/// `dataset show NAME [--path P] -o json` on `master`.
fn show(master: &str, name: &str, path: Option<&str>) -> serde_json::Value {
    let mut args = vec!["dataset", "show", name, "-o", "json", "--master", master];
    if let Some(p) = path {
        args.extend(["--path", p]);
    }
    let (code, out, err) = cli(&args);
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    serde_json::from_str(&out).unwrap()
}

/// Options of the S3 store `s3` for the mount at `path`: `--option PATH:K=V` flags.
fn s3_options(s3: &S3Server, path: &str, secret: &str) -> Vec<String> {
    ["endpoint=".to_string() + &s3.endpoint, "access_key_id=a".into(), format!("secret_access_key={secret}")]
        .into_iter()
        .flat_map(|o| ["--option".to_string(), format!("{path}:{o}")])
        .collect()
}

/// A dataset of two stores side by side (a local directory at /train, an S3
/// prefix at /val) reads byte for byte through one mount; syncing one mount
/// leaves the other's listing and inode numbers alone; a rotated S3 endpoint and
/// secret reach both the master's listing and the worker's reads; a removed
/// mount is gone (ENOENT) while the other still reads.
#[test]
fn a_dataset_of_a_directory_and_an_s3_prefix_syncs_updates_and_removes_per_mount() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let src = root.join("local");
    std::fs::create_dir_all(&src).unwrap();
    let tree = tree_spec(BLOCK, false);
    write_tree(&src, &tree);
    let s3 = S3Server::start(&root.join("s3.log"));
    let s3b = S3Server::start(&root.join("s3b.log"));
    let val: Vec<(&str, Vec<u8>)> =
        vec![("x.bin", content(3, 5 * BLOCK + 9)), ("sub/y.txt", b"why".to_vec()), ("z.bin", content(4, 2 * BLOCK))];
    for s in [&s3, &s3b] {
        s.create_bucket("mmb");
        for (k, v) in &val {
            s.put("mmb", &format!("val/{k}"), v);
        }
        s.put("mmb", "other/not-mounted.txt", b"outside the prefix");
    }
    let (master, worker) = master_and_worker(&root, "64MiB", "1GiB", &[]);
    let train = format!("/train={}", src.display());
    let mut args: Vec<String> = ["dataset", "create", "ds", "--mount", &train, "--mount", "/val=s3://mmb/val"]
        .into_iter()
        .map(String::from)
        .collect();
    args.extend(s3_options(&s3, "/val", "b"));
    args.extend(["--block-size", "64KiB", "--master", &master.addr].map(String::from));
    let (code, out, err) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}{err}");
    let before = show(&master.addr, "ds", None);
    let mounts: Vec<_> =
        before["mounts"].as_array().unwrap().iter().map(|m| (m["path"].clone(), m["uri"].clone())).collect();
    assert_eq!(mounts.len(), 2, "{before}");
    assert_eq!(before["file_count"], walk(&src).values().filter(|(d, _, _)| !d).count() + val.len(), "{before}");

    let (mnt, mount) = mount_at(&root, &master.addr, "ds");
    let m = Mounted { dir, src, mnt, master, worker: Some(worker), mount: Some(mount) };
    let mut top: Vec<String> =
        std::fs::read_dir(&m.mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    top.sort();
    assert_eq!(top, ["train", "val"]);
    assert_eq!(walk(&m.mnt.join("train")), walk(&m.src));
    for (rel, (is_dir, _, _)) in walk(&m.src) {
        if !is_dir {
            let got = std::fs::read(m.mnt.join("train").join(&rel)).unwrap();
            assert_eq!(sha256(&got), sha256(&std::fs::read(m.src.join(&rel)).unwrap()), "train/{rel}");
        }
    }
    for (k, v) in &val[..2] {
        assert_eq!(sha256(&std::fs::read(m.mnt.join("val").join(k)).unwrap()), sha256(v), "val/{k}");
    }
    assert_eq!(errno(std::fs::metadata(m.mnt.join("val/not-mounted.txt"))), libc::ENOENT);
    assert_eq!(errno(std::fs::metadata(m.mnt.join("other"))), libc::ENOENT);
    let file = walk(&m.src).into_iter().find(|(_, (d, _, _))| !d).unwrap().0;
    let train_file = format!("/train/{file}");
    let ino = show(&m.master.addr, "ds", Some(&train_file))["ino"].clone();
    let val_ino = show(&m.master.addr, "ds", Some("/val/x.bin"))["ino"].clone();

    // Sync /val alone: its new object shows, the directory's new file does not
    // (that store was not listed), and /train keeps its inode numbers.
    std::fs::write(m.src.join("late.txt"), b"not listed yet").unwrap();
    s3.put("mmb", "val/new.txt", b"new in s3");
    let (code, out, err) = cli(&["dataset", "sync", "ds", "--mount", "/val", "-o", "json", "--master", &m.master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for_sync("the mount to show /val's new object", || {
        std::fs::read(m.mnt.join("val/new.txt")).is_ok_and(|d| d == b"new in s3")
    });
    assert_eq!(errno(std::fs::metadata(m.mnt.join("train/late.txt"))), libc::ENOENT);
    assert_eq!(show(&m.master.addr, "ds", Some(&train_file))["ino"], ino, "the unsynced mount keeps its inodes");
    assert_eq!(show(&m.master.addr, "ds", Some("/val/x.bin"))["ino"], val_ino, "an unchanged object keeps its inode");
    let (code, _, err) = cli(&["dataset", "sync", "ds", "--mount", "/nope", "--master", &m.master.addr]);
    assert_eq!(code, 2, "a sync of a path that is no mount is invalid: {err}");

    // Rotate /val to another endpoint and secret, then stop the old server: a
    // file never read before (z.bin, uncached) reads from the new one, so both
    // the master (listing) and the worker (reading) have the new options.
    s3b.put("mmb", "val/only-b.txt", b"only on the new endpoint");
    let mut args: Vec<String> = ["dataset", "update", "ds", "-o", "json"].map(String::from).to_vec();
    args.extend(s3_options(&s3b, "/val", "s3cr3t-rotated"));
    args.extend(["--master".to_string(), m.master.addr.clone()]);
    let (code, out, err) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("s3cr3t-rotated"), "secrets are redacted: {out}");
    let after: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(after["spec_revision"].as_u64() > before["spec_revision"].as_u64(), "{before} -> {after}");
    drop(s3);
    wait_for_sync("the mount to show the new endpoint's object", || {
        std::fs::read(m.mnt.join("val/only-b.txt")).is_ok_and(|d| d == b"only on the new endpoint")
    });
    let store_bytes = || metric(&m.worker.as_ref().unwrap().metrics(), "shoal_worker_store_read_bytes_total");
    let read_before = store_bytes();
    assert_eq!(sha256(&std::fs::read(m.mnt.join("val/z.bin")).unwrap()), sha256(&val[2].1));
    assert_eq!(store_bytes() - read_before, val[2].1.len() as f64, "the worker read z.bin from the new endpoint");
    assert_eq!(errno(std::fs::metadata(m.mnt.join("val/new.txt"))), libc::ENOENT, "the new endpoint has no new.txt");

    // Remove /train: it is gone from the mount and the master; /val still reads.
    let (code, out, err) = cli(&["dataset", "update", "ds", "--remove-mount", "/train", "--master", &m.master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for_sync("the removed mount to leave the mount", || {
        errno(std::fs::metadata(m.mnt.join("train"))) == libc::ENOENT
    });
    assert_eq!(errno(std::fs::metadata(m.mnt.join(&train_file[1..]))), libc::ENOENT);
    let gone = show(&m.master.addr, "ds", None);
    assert_eq!(gone["mounts"].as_array().unwrap().len(), 1, "{gone}");
    assert_eq!(gone["file_count"], val.len() + 1, "only /val's files are left: {gone}");
    assert_eq!(sha256(&std::fs::read(m.mnt.join("val/x.bin")).unwrap()), sha256(&val[0].1));
    let (code, _, err) = cli(&["dataset", "update", "ds", "--remove-mount", "/train", "--master", &m.master.addr]);
    assert_eq!(code, 2, "removing a mount twice is invalid: {err}");
}

/// Mount paths that climb, nest, repeat, are relative or over-long are refused
/// as invalid (exit 2 from the CLI, INVALID_ARGUMENT from the master even when
/// the CLI's own checks are skipped), and change nothing.
#[test]
fn hostile_mount_paths_are_invalid_and_change_nothing() {
    use shoal_proto::master::{CreateDatasetRequest, DatasetSpec, MountSpec, UpdateDatasetRequest};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (a, b) = (root.join("a"), root.join("b"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("f"), b"x").unwrap();
    }
    let master = start_master(&root.join("master"), "127.0.0.1:0", &root.join("master.log"));
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let long = format!("/{}", "n".repeat(300));
    let cases: Vec<Vec<String>> = vec![
        vec![format!("/x/../y={a}")],
        vec![format!("/x={a}"), format!("/x/in={b}")],
        vec![format!("/={a}"), format!("/x={b}")],
        vec![format!("/x={a}"), format!("/x={b}")],
        vec![format!("x={a}")],
        vec![format!("/x/./y={a}")],
        vec![format!("/x//y={a}")],
        vec![format!("{long}={a}")],
        vec!["/x=".to_string()],
    ];
    for case in &cases {
        let mut args = vec!["dataset", "create", "bad"];
        for m in case {
            args.extend(["--mount", m]);
        }
        args.extend(["--master", &master.addr]);
        let (code, out, err) = cli(&args);
        assert_eq!(code, 2, "{case:?} is invalid: {out}{err}");
        assert!(!err.is_empty(), "{case:?}: a reason is given");
    }
    let (code, out, _) = cli(&["dataset", "ls", "-o", "json", "--master", &master.addr]);
    assert_eq!((code, out.trim()), (0, "[]"), "nothing was created");

    // The master checks on its own, whatever the client.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut mc = master_client(&master.addr).await;
        let mount =
            |path: &str, dir: &str| MountSpec { uri: dir.to_string(), path: path.to_string(), ..Default::default() };
        for mounts in [
            vec![mount("/x/../y", a)],
            vec![mount("/x", a), mount("/x/in", b)],
            vec![mount("/x\0y", a)],
            vec![mount(&long, a)],
            vec![mount("/x\0", a)],
            vec![],
        ] {
            let spec = DatasetSpec { name: "raw".into(), mounts: mounts.clone(), ..Default::default() };
            let e = mc.create_dataset(CreateDatasetRequest { spec: Some(spec), sync: false }).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{mounts:?}: {e:?}");
        }
        let spec = DatasetSpec { name: "ok".into(), mounts: vec![mount("/x", a)], ..Default::default() };
        let made = mc.create_dataset(CreateDatasetRequest { spec: Some(spec), sync: true }).await.unwrap().into_inner();
        let req = UpdateDatasetRequest {
            name: "ok".into(),
            mounts: vec![mount("/x", a), mount("/x/../x/y", b)],
            sync_interval_seconds: None,
            sync: true,
        };
        let e = mc.update_dataset(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let now =
            mc.get_dataset(shoal_proto::master::GetDatasetRequest { name: "ok".into() }).await.unwrap().into_inner();
        assert_eq!(now.spec_revision, made.spec_revision, "a refused update changes nothing");
        assert_eq!(now.spec.unwrap().mounts.len(), 1);
        assert_eq!(now.file_count, 1);
    });
}

/// Workers learn dataset specs from heartbeat answers; a dataset created since
/// the worker's last heartbeat (heartbeats a minute apart here) is still read,
/// by the worker, at once.
#[test]
fn a_worker_reads_a_dataset_created_after_its_last_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = content(21, 3 * BLOCK + 5);
    std::fs::write(src.join("late.bin"), &data).unwrap();
    let master = Proc::start(
        &[
            "master",
            "--allow-local-root",
            root.to_str().unwrap(),
            "--data-dir",
            root.join("master").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--heartbeat-interval",
            "60s",
            "--lost-worker-timeout",
            "600s",
        ],
        &[],
        &root.join("master.log"),
    );
    let worker = start_worker(
        &master.addr,
        "127.0.0.1:0",
        &tiers(&root.join("w"), "64MiB", "1GiB"),
        &[],
        &root.join("worker.log"),
    );
    wait_until_registered(&master.addr, &worker.addr);
    let (code, out, err) =
        cli(&["dataset", "create", "late", src.to_str().unwrap(), "--block-size", "64KiB", "--master", &master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    let (mnt, mount) = mount_at(&root, &master.addr, "late");
    let m = Mounted { dir, src, mnt, master, worker: Some(worker), mount: Some(mount) };
    assert_eq!(sha256(&std::fs::read(m.mnt.join("late.bin")).unwrap()), sha256(&data));
    let metrics = m.worker.as_ref().unwrap().metrics();
    assert_eq!(metric(&metrics, "shoal_worker_store_read_bytes_total"), data.len() as f64, "the worker read the store");
}

/// A random read wanting a small part of a block no cache holds reads only
/// that range from the store, while the block's owner caches the whole block;
/// the next random read in that block is served by the worker.
#[test]
fn a_random_read_of_a_cold_block_reads_its_range_and_the_owner_caches_the_block() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let want = content(33, 8 << 20);
    std::fs::write(src.join("big.bin"), &want).unwrap();
    let small = content(34, 512 << 10);
    std::fs::write(src.join("small.bin"), &small).unwrap();
    let (master, worker) = master_and_worker(root, "64MiB", "1GiB", &[]);
    let m = master.addr.as_str();
    let (code, _, err) =
        cli(&["dataset", "create", "rr", src.to_str().unwrap(), "--block-size", "1MiB", "--master", m]);
    assert_eq!(code, 0, "{err}");
    let (mnt, mount) = mount_at(root, m, "rr");
    let _guard = MountGuard(mnt.clone());
    let store_bytes = || metric(&worker.metrics(), "shoal_worker_store_read_bytes_total");
    let fetched =
        |source: &str| metric(&mount.metrics(), &format!(r#"shoal_fuse_block_fetches_total{{source="{source}"}}"#));
    let f = std::fs::File::open(mnt.join("big.bin")).unwrap();
    let read = |at: usize, len: usize| {
        let mut buf = vec![0u8; len];
        assert_eq!(f.read_at(&mut buf, at as u64).unwrap(), len);
        assert_eq!(buf, want[at..at + len], "{len} bytes at {at}");
    };
    // 64 KiB in block 3, cold everywhere: the range from the store.
    read((3 << 20) + 4096, 64 << 10);
    assert_eq!(fetched("store_range"), 1.0, "{}", mount.metrics());
    assert_eq!((fetched("store"), fetched("short_circuit"), fetched("worker")), (0.0, 0.0, 0.0));
    wait_for_sync("the owner to cache block 3", || store_bytes() == (1u64 << 20) as f64);
    // Another part of block 3: from the worker, and nothing more from the store.
    read((3 << 20) + (512 << 10), 64 << 10);
    assert_eq!(fetched("short_circuit_range"), 1.0, "{}", mount.metrics());
    assert_eq!(fetched("store_range"), 1.0);
    assert_eq!(store_bytes(), (1u64 << 20) as f64);

    // A file of one block is read whole even when its first read looks random
    // (the kernel's threads deliver a small file's reads out of order): no
    // range GET, one fetch of the block by the worker, the rest from there.
    let g = std::fs::File::open(mnt.join("small.bin")).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    assert_eq!(g.read_at(&mut buf, 256 << 10).unwrap(), buf.len());
    assert_eq!(buf, small[256 << 10..320 << 10]);
    assert_eq!(fetched("store_range"), 1.0, "a one-block file read by range: {}", mount.metrics());
    assert_eq!(std::fs::read(mnt.join("small.bin")).unwrap(), small);
    assert_eq!(store_bytes(), ((1u64 << 20) + (512 << 10)) as f64, "the block was read from the store once");
}
