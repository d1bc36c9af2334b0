//! Millions of small files. A generated local dataset of 1,000,000 files (900,000
//! in 1,200 nested directories, 100,000 in one flat directory) is synced, then
//! walked (`find` + `stat` of every entry) through a mount whose metadata budget
//! is a quarter of what the namespace needs, so listings are dropped and loaded
//! again along the way; the walk must match the source exactly. Then 1% of the
//! files are added, changed and deleted: a re-sync reports exactly those
//! changes and the mount shows them. Then the master is killed with SIGKILL and
//! restarted: counts and lookups are intact. Timings are printed (debug build;
//! the release figures are in `benches/RESULTS.md`).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const TOP: usize = 300;
const SUB: usize = 3;
const PER_DIR: usize = 1000;
const FLAT: usize = 100_000;
const FILES: usize = TOP * SUB * PER_DIR + FLAT;
const DIRS: usize = TOP + TOP * SUB + 1;

fn nested(t: usize, s: usize, f: usize) -> String {
    format!("d{t:03}/s{s}/f{f:04}.jpg")
}

/// Written by four threads (a million small writes are syscall-bound).
fn generate(src: &Path) {
    const THREADS: usize = 4;
    std::fs::create_dir_all(src.join("flat")).unwrap();
    std::thread::scope(|scope| {
        for i in 0..THREADS {
            scope.spawn(move || {
                for t in (i..TOP).step_by(THREADS) {
                    for s in 0..SUB {
                        std::fs::create_dir_all(src.join(format!("d{t:03}/s{s}"))).unwrap();
                        for f in 0..PER_DIR {
                            std::fs::write(src.join(nested(t, s, f)), format!("{t}/{s}/{f}")).unwrap();
                        }
                    }
                }
                for f in (i..FLAT).step_by(THREADS) {
                    std::fs::write(src.join(format!("flat/{f:06}")), f.to_string()).unwrap();
                }
            });
        }
    });
}

fn dataset_json(master: &str) -> serde_json::Value {
    let (code, out, err) = cli(&["dataset", "show", "big", "-o", "json", "--master", master]);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

/// Compare two walks, naming the first differences.
fn assert_same(
    what: &str,
    got: &std::collections::BTreeMap<String, (bool, u64, (u64, u32))>,
    want: &std::collections::BTreeMap<String, (bool, u64, (u64, u32))>,
) {
    if got != want {
        let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).take(5).collect();
        let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).take(5).collect();
        let differ: Vec<_> = want.iter().filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v)).take(5).collect();
        panic!(
            "{what}: {} entries, want {}; missing {missing:?}; extra {extra:?}; differ {differ:?}",
            got.len(),
            want.len()
        );
    }
}

#[test]
fn a_million_files_sync_walk_resync_and_survive_a_master_kill() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let src = root.join("src");
    let t = Instant::now();
    generate(&src);
    println!("generated {FILES} files in {DIRS} directories in {:.1} s", t.elapsed().as_secs_f64());

    let (mut master, _worker) = master_and_worker(&root, "64MiB", "256MiB", &[]);
    let t = Instant::now();
    let (code, out, err) = cli(&["dataset", "create", "big", src.to_str().unwrap(), "--master", &master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    let took = t.elapsed();
    println!("sync: {FILES} files in {:.1} s ({:.0} files/s)", took.as_secs_f64(), FILES as f64 / took.as_secs_f64());
    let t = Instant::now();
    let v = dataset_json(&master.addr);
    println!("dataset show: {} ms", t.elapsed().as_millis());
    assert_eq!(v["file_count"], FILES as u64);
    assert_eq!(v["dir_count"], DIRS as u64);
    // Cache usage (what the scheduler polls for every dataset) reads counters
    // kept by the sync and the workers' reports: no walk of a million entries.
    let t = Instant::now();
    let (code, out, err) = cli(&["status", "-o", "json", "--master", &master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    println!("status (cache usage): {} ms", t.elapsed().as_millis());
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["datasets"][0]["total_blocks"], FILES as u64, "every file is one block");
    assert_eq!(st["datasets"][0]["total_bytes"], v["total_bytes"]);
    let show_path = |path: &str| {
        let (code, out, err) = cli(&["dataset", "show", "big", "--path", path, "-o", "json", "--master", &master.addr]);
        assert_eq!(code, 0, "{out}{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let flat = show_path("/flat");
    assert_eq!((flat["entries"].as_u64(), flat["files"].as_u64()), (Some(FLAT as u64), Some(FLAT as u64)));
    let top = show_path("/");
    assert_eq!((top["entries"].as_u64(), top["files"].as_u64()), (Some(TOP as u64 + 1), Some(FILES as u64)));
    assert_eq!(top["bytes"], v["total_bytes"]);

    // A metadata budget of 16 MiB: about a quarter of the ~64 MiB of listings.
    let mnt = root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _guard = MountGuard(mnt.clone());
    let mount = Proc::start_until(
        &[
            "mount",
            "big",
            mnt.to_str().unwrap(),
            "--master",
            &master.addr,
            "--metadata-cache",
            "16MiB",
            "--refresh-interval",
            "1s",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
        &root.join("mount.log"),
        "mounted dataset ",
    );
    let want = walk(&src);
    assert_eq!(want.len(), FILES + DIRS, "files and directories below the root");
    let t = Instant::now();
    let got = walk(&mnt);
    let took = t.elapsed();
    println!(
        "find + stat through the mount, cold: {} entries in {:.1} s ({:.0}/s)",
        got.len(),
        took.as_secs_f64(),
        got.len() as f64 / took.as_secs_f64()
    );
    assert_same("cold walk", &got, &want);
    assert_eq!(std::fs::read_dir(mnt.join("flat")).unwrap().count(), FLAT, "the flat directory lists completely");
    let t = Instant::now();
    let again = walk(&mnt);
    println!("find + stat, second walk: {:.1} s", t.elapsed().as_secs_f64());
    assert_same("second walk", &again, &want);
    let metrics = mount.metrics();
    let evicted = metric(&metrics, "shoal_mount_dirs_evicted_total");
    let [anon, peak] = status_kib(mount.child.id(), ["RssAnon:", "VmHWM:"]);
    println!(
        "mount: {} directory loads, {evicted} dropped for the budget; RssAnon {} MiB, peak RSS {} MiB",
        metric(&metrics, "shoal_mount_dirs_loaded_total"),
        anon / 1024,
        peak / 1024
    );
    assert!(evicted > 0.0, "a 16 MiB budget cannot hold a million entries");
    assert!(anon < 160 * 1024, "the mount holds {anon} KiB anonymous memory with a 16 MiB metadata budget");

    // 1% of the files: 10,000 added, 10,000 changed (new size), 10,000 deleted;
    // directory mtimes are put back, so only the files differ.
    let mut dirs = std::collections::BTreeMap::new();
    for t in 0..10 {
        for s in 0..SUB {
            let d = src.join(format!("d{t:03}/s{s}"));
            dirs.insert(d.clone(), std::fs::metadata(&d).unwrap().modified().unwrap());
        }
    }
    let touched: Vec<(usize, usize)> = (0..10).flat_map(|t| (0..SUB).map(move |s| (t, s))).collect();
    let mut n = 0;
    'changes: for (t, s) in touched.iter().copied().cycle() {
        // Per directory: one new file, one rewritten, one deleted, until 10,000 each.
        let f = n / touched.len();
        std::fs::write(src.join(format!("d{t:03}/s{s}/new-{f:04}.jpg")), b"new").unwrap();
        std::fs::write(src.join(nested(t, s, f)), b"rewritten, longer than before").unwrap();
        std::fs::remove_file(src.join(nested(t, s, PER_DIR - 1 - f))).unwrap();
        n += 1;
        if n == 10_000 / touched.len() * touched.len() {
            break 'changes;
        }
    }
    assert!(n >= 9_990, "about 1% changed: {n}");
    for (d, mtime) in &dirs {
        std::fs::File::open(d).unwrap().set_modified(*mtime).unwrap();
    }
    let t = Instant::now();
    let (code, out, err) = cli(&["dataset", "sync", "big", "-o", "json", "--master", &master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    println!("re-sync after {n} adds, changes and deletes: {:.1} s", t.elapsed().as_secs_f64());
    let p: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(
        (p["added"].as_u64(), p["changed"].as_u64(), p["deleted"].as_u64()),
        (Some(n as u64), Some(n as u64), Some(n as u64)),
        "{p}"
    );
    let v = dataset_json(&master.addr);
    assert_eq!(v["file_count"], FILES as u64);
    let top = show_path("/");
    assert_eq!(
        (top["files"].as_u64(), &top["bytes"]),
        (Some(FILES as u64), &v["total_bytes"]),
        "sums after the re-sync"
    );

    let want = walk(&src);
    wait_for_sync("the mount to show the re-sync", || {
        std::fs::symlink_metadata(mnt.join("d000/s0/new-0000.jpg")).is_ok()
            && std::fs::symlink_metadata(mnt.join(nested(9, 2, PER_DIR - 1))).is_err()
    });
    // Directories dropped from the mount's memory cannot be diffed: the kernel
    // is told to revalidate every entry it holds (FUSE_NOTIFY_INC_EPOCH).
    if kernel_has("FUSE_NOTIFY_INC_EPOCH, so entries of dropped directories show the re-sync", (6, 16)) {
        let t = Instant::now();
        let got = walk(&mnt);
        println!("find + stat after the re-sync: {:.1} s", t.elapsed().as_secs_f64());
        assert_same("walk after the re-sync", &got, &want);
    }
    assert_eq!(std::fs::read(mnt.join(nested(0, 0, 0))).unwrap(), b"rewritten, longer than before");

    // kill -9 the master and start it again on the same data.
    let addr = master.addr.clone();
    master.kill9();
    let t = Instant::now();
    master = start_master(&root.join("master"), &addr, &root.join("master-2.log"));
    // Serving means answering from the reopened database, not printing its
    // address (which it does before RocksDB opens).
    let v2 = dataset_json(&master.addr);
    let back = t.elapsed();
    println!("master restart at {FILES} files: first answer after {} ms", back.as_millis());
    assert!(back < Duration::from_secs(10), "restart took {back:?}");
    for key in ["file_count", "dir_count", "total_bytes", "generation"] {
        assert_eq!(v2[key], v[key], "{key} after the restart");
    }
    // A new mount resolves paths through the restarted master.
    let mnt2 = root.join("mnt2");
    std::fs::create_dir_all(&mnt2).unwrap();
    let _guard2 = MountGuard(mnt2.clone());
    let _mount2 = Proc::start_until(
        &["mount", "big", mnt2.to_str().unwrap(), "--master", &master.addr],
        &[],
        &root.join("mount-2.log"),
        "mounted dataset ",
    );
    assert_eq!(std::fs::read_dir(mnt2.join("flat")).unwrap().count(), FLAT);
    for path in [nested(299, 2, 999), nested(0, 0, 0), "flat/099999".into(), "d005/s1/new-0100.jpg".into()] {
        let m = std::fs::symlink_metadata(mnt2.join(&path)).unwrap();
        let s = std::fs::symlink_metadata(src.join(&path)).unwrap();
        assert_eq!((m.len(), m.modified().unwrap()), (s.len(), s.modified().unwrap()), "{path}");
    }
    let gone = std::fs::symlink_metadata(mnt2.join(nested(0, 0, PER_DIR - 1))).unwrap_err();
    assert_eq!(gone.raw_os_error(), Some(libc::ENOENT));
}
