//! Python, as ML users read: Debian's `/usr/bin/python3` with `python3-torch`
//! and `python3-torchvision`, a real `DataLoader` over an ImageFolder-shaped
//! dataset of real images through a `shoal mount` and through the Python client
//! (`python/`, the extension module cargo builds), every sample's bytes checked;
//! and the order-aware prefetch, proved by the worker's store reads.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const PYTHON: &str = "/usr/bin/python3";

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../python")
}

/// The `shoal` package staged in `dir`: its sources and the extension module
/// `cargo test --workspace` builds beside this test.
fn stage_package(dir: &Path) -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let lib = deps.join("libshoal_native.so");
    assert!(lib.exists(), "{} is missing: run `cargo test --workspace` (it builds shoal-py)", lib.display());
    let pkg = dir.join("shoal");
    std::fs::create_dir_all(&pkg).unwrap();
    for f in std::fs::read_dir(python_dir().join("shoal")).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "py") {
            std::fs::copy(&f, pkg.join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(lib, pkg.join("_native.abi3.so")).unwrap();
    dir.to_path_buf()
}

fn run_python(pkg: &Path, args: &[&str], master: &str) -> String {
    let out = Command::new(PYTHON)
        .args(args)
        .env("PYTHONPATH", pkg)
        .current_dir(pkg)
        .env("SHOAL_MASTER", master)
        .output()
        .expect("run /usr/bin/python3 (.ci/run installs python3-torch and python3-torchvision)");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "python {args:?} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

fn mount(root: &Path, master: &str) -> (Proc, MountGuard, PathBuf) {
    let mnt = root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let args = ["mount", "ds", mnt.to_str().unwrap(), "--master", master, "--metrics-listen", "127.0.0.1:0"];
    let proc = Proc::start_until(&args, &[], &root.join("mount.log"), "mounted dataset ");
    assert!(shoal_fuse::is_mounted(&mnt));
    (proc, MountGuard(mnt.clone()), mnt)
}

#[test]
fn a_real_dataloader_reads_every_sample_through_the_mount_and_the_python_client() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let src = root.join("src");
    let checks = python_dir().join("tests");
    // 4 classes of 12 real images (JPEGs and noise PNGs, some over one block).
    let images = checks.join("make_images.py");
    run_python(root, &[images.to_str().unwrap(), src.to_str().unwrap(), "4", "12"], "");
    let (master, _worker) = master_and_worker(root, "64MiB", "1GiB", &[]);
    let (code, out, err) =
        cli(&["dataset", "create", "ds", src.to_str().unwrap(), "--block-size", "64KiB", "--master", &master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    let (mount_proc, _guard, mnt) = mount(root, &master.addr);
    let pkg = stage_package(&root.join("py"));

    let check = checks.join("loader_check.py");
    let out =
        run_python(&pkg, &[check.to_str().unwrap(), mnt.to_str().unwrap(), src.to_str().unwrap(), "ds"], &master.addr);
    let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    for key in ["mount_samples", "decoded", "mount_ordered_samples", "client_samples"] {
        assert_eq!(summary[key], 48, "{key}: {summary}");
    }
    assert_eq!(summary["iterable_samples"], 49, "every file, the README too: {summary}");
    assert_eq!(summary["counters"]["failures"], 0, "{summary}");

    // Python's buffered open() sent its isatty() ioctl to the mount: answered
    // by shoal (counted), and never logged per open by fuser's default.
    let metrics = mount_proc.metrics();
    let ioctls = metric(&metrics, "shoal_fuse_ops_total{op=\"ioctl\",result=\"ok\"}");
    assert!(ioctls >= 48.0, "{ioctls} ioctls answered");
    let log = std::fs::read_to_string(root.join("mount.log")).unwrap();
    assert!(!log.contains("Not Implemented"), "the mount logged an unanswered call:\n{log}");
}

#[test]
fn order_aware_prefetch_caches_the_epoch_ahead_of_the_reader_within_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let src = root.join("src");
    // 60 files of two 64 KiB blocks each.
    for i in 0..60u64 {
        let p = src.join(format!("d{}/f{i:02}.bin", i % 3));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content(i + 100, 100_000)).unwrap();
    }
    let (master, worker) = master_and_worker(root, "64MiB", "1GiB", &[]);
    let (code, out, err) =
        cli(&["dataset", "create", "ds", src.to_str().unwrap(), "--block-size", "64KiB", "--master", &master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    let pkg = stage_package(&root.join("py"));
    let store_reads = || metric(&worker.metrics(), "shoal_worker_cache_misses_total");
    assert_eq!(store_reads(), 0.0);

    // A shuffled order; the window is 10 files. Every wait has a deadline.
    let script = r#"
import hashlib, json, random, sys, time
import shoal
ds = shoal.open_dataset("ds")
files = [p for p, _ in ds.walk("/")]
order = files[:]
random.Random(3).shuffle(order)
plan = ds.plan(order, window_files=10, parallel=4)
def wait(what, cond):
    deadline = time.time() + 60
    while not cond():
        assert time.time() < deadline, (what, plan.stats())
        time.sleep(0.02)
blocks = lambda s: s["loaded"] + s["cached"] + s["failed"]
wait("the first window", lambda: blocks(plan.stats()) == 20)
first = plan.stats()
# The cursor did not move: the plan stays within its window.
time.sleep(0.3)
assert plan.stats() == first and first["files_done"] == 10 and first["failed"] == 0, plan.stats()
print(json.dumps({"phase": "window", "stats": first}), flush=True)
sys.stdin.readline()
# The reader jumps to position 30: files 10..29 are skipped, 30..39 fetched;
# then it moves on a window at a time to the end.
plan.advance(30)
wait("the second window", lambda: blocks(plan.stats()) == 40)
for pos in (40, 50):
    plan.advance(pos)
    wait(f"the window at {pos}", lambda: blocks(plan.stats()) == 20 + (pos - 20) * 2)
plan.advance(60)
wait("the end", lambda: plan.finished)
s = plan.stats()
assert s["files_skipped"] == 20 and s["files_done"] == 40 and s["failed"] == 0 and blocks(s) == 80, s
ahead = [order[i] for i in list(range(10)) + list(range(30, 60))]
print(json.dumps({"phase": "done", "stats": s, "ahead": ahead, "skipped": order[10:30]}), flush=True)
sys.stdin.readline()
digests = {p: hashlib.sha256(ds.read(p)).hexdigest() for p in ahead}
print(json.dumps({"phase": "read", "digests": digests}), flush=True)
sys.stdin.readline()
for p in order[10:30]:
    ds.read(p)
print(json.dumps({"phase": "skipped", "counters": ds.counters()}), flush=True)
"#;
    let mut child = Command::new(PYTHON)
        .args(["-c", script])
        .env("PYTHONPATH", &pkg)
        .current_dir(&pkg)
        .env("SHOAL_MASTER", &master.addr)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut next = |phase: &str| -> serde_json::Value {
        let line = lines.next().unwrap_or_else(|| panic!("python ended before {phase}")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["phase"], phase);
        v
    };
    let mut go = || std::io::Write::write_all(&mut stdin, b"\n").unwrap();

    // The first window: exactly its 10 files' 20 blocks read from the store.
    let v = next("window");
    assert_eq!(v["stats"]["loaded"], 20, "{v}");
    wait_for_sync("the window's store reads", || store_reads() == 20.0);
    go();
    // The whole plan: 40 files prefetched, the 20 skipped ones never read.
    let v = next("done");
    assert_eq!(v["stats"]["loaded"], 80, "{v}");
    wait_for_sync("the plan's store reads", || store_reads() == 80.0);
    go();
    // Reading the prefetched files makes no store read, and their bytes are the source's.
    let v = next("read");
    assert_eq!(store_reads(), 80.0, "reads of prefetched files went to the store");
    let digests = v["digests"].as_object().unwrap();
    assert_eq!(digests.len(), 40);
    for (path, digest) in digests {
        let want = sha256(&std::fs::read(src.join(path.trim_start_matches('/'))).unwrap());
        assert_eq!(digest.as_str().unwrap(), want, "{path}");
    }
    go();
    // The skipped files were not prefetched: reading them goes to the store.
    let v = next("skipped");
    assert_eq!(store_reads(), 120.0, "{v}");
    assert_eq!(v["counters"]["failures"], 0);
    assert!(child.wait().unwrap().success());
}
