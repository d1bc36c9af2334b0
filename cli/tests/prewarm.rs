//! End-to-end tests of prewarm and cache management: every block cached after a
//! prewarm (seen by the master and by the worker), a full read through the mount
//! then makes zero store requests, a master killed mid-job resumes without
//! fetching anything twice, a failing object fails its file (and the command),
//! and `cache free` / `status` do what they say.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::*;
use shoal_proto::master::*;
use shoal_proto::worker::StatsRequest;

const BLOCK: usize = 64 * 1024;

async fn usage(addr: &str, ds: &str) -> CacheUsage {
    master_client(addr).await.get_cache_usage(CacheUsageRequest { dataset: ds.into() }).await.unwrap().into_inner()
}

async fn worker_stats(addr: &str) -> shoal_proto::worker::StatsResponse {
    worker_client(addr).await.stats(StatsRequest {}).await.unwrap().into_inner()
}

fn gen_files(dir: &Path, n: usize) -> u64 {
    let mut blocks = 0;
    for i in 0..n {
        let len = (i % 5) * BLOCK + 1000 * i;
        let p = dir.join(format!("d{}/f{i:03}.bin", i % 3));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content(i as u64, len)).unwrap();
        blocks += (len as u64).div_ceil(BLOCK as u64);
    }
    blocks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_over_s3_caches_every_block_and_reads_skip_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s3 = S3Server::start(&root.join("moto.log"));
    s3.create_bucket("pwb");
    let mut blocks = 0u64;
    let mut want = Vec::new();
    for i in 0..24usize {
        let len = (i % 4) * BLOCK + 777 * i;
        let data = content(100 + i as u64, len);
        s3.put("pwb", &format!("data/s{}/x{i:02}.bin", i % 2), &data);
        blocks += (len as u64).div_ceil(BLOCK as u64);
        want.push((format!("s{}/x{i:02}.bin", i % 2), data));
    }
    let (master, worker) = master_and_worker(root, "64MiB", "1GiB", &[]);
    s3.create_dataset(&master.addr, "pw", "s3://pwb/data");
    let (code, out, err) = cli(&["prewarm", "pw", "--master", &master.addr, "-o", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["state"], "completed");
    assert_eq!(job["blocks_done"].as_u64(), Some(blocks));
    assert_eq!(job["files_done"].as_u64(), Some(24));
    assert_eq!(job["blocks_cached_at_end"].as_u64(), Some(blocks), "the final count comes from the location map");

    // Through the master (after the worker's next heartbeat) and the worker.
    wait_for("every block in the location map", || {
        let a = master.addr.clone();
        async move { usage(&a, "pw").await.cached_blocks == blocks }
    })
    .await;
    let s = worker_stats(&worker.addr).await;
    assert_eq!(s.tiers.iter().map(|t| t.blocks).sum::<u64>(), blocks);
    assert_eq!(s.store_reads, blocks);
    // Per worker (what the operator's node labels and the scheduler read).
    let u = usage(&master.addr, "pw").await;
    assert_eq!(u.workers.len(), 1, "{:?}", u.workers);
    assert_eq!((u.workers[0].cached_blocks, u.workers[0].cached_bytes), (blocks, u.total_bytes));
    assert_eq!(u.workers[0].node, std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim());
    let (code, out, _) = cli(&["status", "-o", "json", "--master", &master.addr]);
    assert_eq!(code, 0);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["datasets"][0]["cached_percent"].as_f64(), Some(100.0));

    // A full read through a mount makes zero store requests.
    let gets = || {
        std::fs::read_to_string(root.join("moto.log"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"GET /pwb/data/"))
            .count()
    };
    let before = gets();
    assert!(before as u64 >= blocks, "moto logged the prewarm's GETs ({before})");
    let mnt = root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _unmount = MountGuard(mnt.clone());
    let mut mount = Proc::start_until(
        &["mount", "pw", mnt.to_str().unwrap(), "--master", &master.addr, "--metrics-listen", "127.0.0.1:0"],
        &[],
        &root.join("mount.log"),
        "mounted dataset ",
    );
    for (rel, data) in &want {
        assert_eq!(sha256(&std::fs::read(mnt.join(rel)).unwrap()), sha256(data), "{rel}");
    }
    assert_eq!(gets(), before, "reads of a prewarmed dataset must not reach the store");
    assert_eq!(worker_stats(&worker.addr).await.store_reads, blocks);

    // The counters moved on every component.
    let mm = master.metrics();
    assert_eq!(
        metric(&mm, r#"shoal_master_prewarm_blocks_total{dataset="pw",result="loaded"}"#),
        blocks as f64,
        "{mm}"
    );
    // The workers gauge is refreshed every 500 ms; a fast run gets here sooner.
    wait_for_sync("the workers gauge", || metric(&master.metrics(), r#"shoal_master_workers{state="alive"}"#) == 1.0);
    assert!(metric(&mm, r#"shoal_master_sync_entries_total{dataset="pw"}"#) >= 24.0);
    let wm = worker.metrics();
    assert_eq!(metric(&wm, "shoal_worker_cache_misses_total"), blocks as f64, "{wm}");
    let held =
        metric(&wm, r#"shoal_worker_tier_blocks{tier="mem"}"#) + metric(&wm, r#"shoal_worker_tier_blocks{tier="ssd"}"#);
    assert_eq!(held, blocks as f64);
    let names: Vec<&str> = wm.lines().filter(|l| l.starts_with("# TYPE")).collect();
    assert_eq!(metric(&wm, r#"shoal_store_requests_total{op="read",result="ok"}"#), blocks as f64, "{names:?}");
    assert!(wm.contains("shoal_store_request_duration_seconds_bucket"), "store latency histograms: {names:?}");
    let fm = mount.metrics();
    let fetched = metric(&fm, r#"shoal_fuse_block_fetches_total{source="short_circuit"}"#);
    assert_eq!(fetched, blocks as f64, "{fm}");
    assert!(metric(&fm, r#"shoal_fuse_ops_total{op="read",result="ok"}"#) > 0.0);
    let total: usize = want.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(metric(&fm, "shoal_fuse_read_bytes_total"), total as f64);
    let _ = cli(&["umount", mnt.to_str().unwrap()]);
    let _ = mount.child.wait();

    // A re-sync after one cached file changed (2 blocks -> 4) and another was
    // deleted (3 blocks): the workers drop the 5 stale blocks, and the usage
    // counted from their reports is exact again.
    let (len5, len6) = (want[5].1.len() as u64, want[6].1.len() as u64);
    assert_eq!((len5.div_ceil(BLOCK as u64), len6.div_ceil(BLOCK as u64)), (2, 3));
    s3.put("pwb", "data/s1/x05.bin", &content(9, 3 * BLOCK + 5));
    s3.delete("pwb", "data/s0/x06.bin");
    let (code, out, err) = cli(&["dataset", "sync", "pw", "--master", &master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for("the stale blocks to leave the usage", || {
        let a = master.addr.clone();
        async move { usage(&a, "pw").await.cached_blocks == blocks - 5 }
    })
    .await;
    let after = usage(&master.addr, "pw").await;
    assert_eq!(after.total_blocks, blocks - 5 + 4);
    assert_eq!(after.total_bytes, u.total_bytes - len5 - len6 + (3 * BLOCK + 5) as u64);
    assert_eq!(after.cached_bytes, u.total_bytes - len5 - len6);
    assert_eq!((after.workers[0].cached_blocks, after.workers[0].cached_bytes), (blocks - 5, after.cached_bytes));
    let s = worker_stats(&worker.addr).await;
    assert_eq!(s.tiers.iter().map(|t| t.blocks).sum::<u64>(), blocks - 5, "the worker freed the stale blocks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_mid_prewarm_resumes_without_refetching() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let src = root.join("src");
    let blocks = gen_files(&src, 60);
    let slow = [("FAILPOINTS", "worker::before_store_read=sleep(80)")];
    let (mut master, worker) = master_and_worker(root, "64MiB", "1GiB", &slow);
    let (code, _, err) =
        cli(&["dataset", "create", "r", src.to_str().unwrap(), "--block-size", "64KiB", "--master", &master.addr]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) =
        cli(&["prewarm", "r", "--parallel", "2", "--detach", "-o", "json", "--master", &master.addr]);
    assert_eq!(code, 0, "{err}");
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["job"].as_str().unwrap().to_string();
    let get = |addr: String, id: String| async move {
        master_client(&addr).await.get_load(GetLoadRequest { id }).await.map(|r| r.into_inner()).ok()
    };
    wait_for("the job to make progress and persist it", || {
        let (a, i) = (master.addr.clone(), id.clone());
        async move { get(a, i).await.is_some_and(|j| j.blocks_done >= 15) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await; // one persist period
    let addr = master.addr.clone();
    master.kill9();
    let master = start_master(&root.join("master"), &addr, &root.join("master2.log"));
    wait_for("the resumed job to finish", || {
        let (a, i) = (master.addr.clone(), id.clone());
        async move { get(a, i).await.is_some_and(|j| j.state != LoadState::Running as i32) }
    })
    .await;
    let job = get(master.addr.clone(), id.clone()).await.unwrap();
    assert_eq!(job.state, LoadState::Completed as i32, "{job:?}");
    assert_eq!((job.blocks_done, job.files_done, job.bytes_done), (blocks, 60, job.bytes_total), "{job:?}");
    let cursor = job.cursor.clone().unwrap();
    assert_eq!((cursor.files, cursor.blocks_done, cursor.done_through.as_str()), (60, blocks, "/d2/f059.bin"));
    // Resumed, not restarted: the new master asked the workers about the files
    // after the persisted cursor only (a restart asks about every block, cached
    // ones included).
    let mm = master.metrics();
    let asked: f64 = ["loaded", "already_cached", "failed"]
        .iter()
        .map(|r| metric(&mm, &format!(r#"shoal_master_prewarm_blocks_total{{dataset="r",result="{r}"}}"#)))
        .sum();
    assert!(asked > 0.0 && asked <= (blocks - 15 + 10) as f64, "the new master handled {asked} of {blocks} blocks");
    let log = std::fs::read_to_string(root.join("master2.log")).unwrap();
    let line = log.lines().find(|l| l.contains("resuming load job")).expect("a resume is logged");
    assert!(!line.contains("skipped=0"), "{line}");
    let s = worker_stats(&worker.addr).await;
    assert_eq!(s.store_reads, blocks, "no block was fetched twice");
    assert_eq!(s.tiers.iter().map(|t| t.blocks).sum::<u64>(), blocks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_object_fails_its_file_and_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let src = root.join("src");
    let blocks = gen_files(&src, 12);
    let (master, worker) = master_and_worker(root, "64MiB", "1GiB", &[]);
    let (code, _, err) =
        cli(&["dataset", "create", "f", src.to_str().unwrap(), "--block-size", "64KiB", "--master", &master.addr]);
    assert_eq!(code, 0, "{err}");
    // Deleted from the store after the sync: the namespace still lists it.
    let gone = src.join("d1/f004.bin");
    let gone_blocks = std::fs::metadata(&gone).unwrap().len().div_ceil(BLOCK as u64);
    std::fs::remove_file(&gone).unwrap();
    let (code, out, err) = cli(&["prewarm", "f", "--master", &master.addr]);
    assert_ne!(code, 0, "a prewarm with a missing object must fail: {out}{err}");
    assert!(out.contains("failed: /d1/f004.bin"), "{out}");
    assert!(err.contains("1 of 12 files failed"), "{err}");
    wait_for("the rest cached", || {
        let a = master.addr.clone();
        async move { usage(&a, "f").await.cached_blocks == blocks - gone_blocks }
    })
    .await;

    // cache free of one directory, then of everything.
    let before = worker_stats(&worker.addr).await;
    let (code, out, err) = cli(&["cache", "free", "f", "/d0", "-o", "json", "--master", &master.addr]);
    assert_eq!(code, 0, "{err}");
    let freed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let n = freed["blocks_freed"].as_u64().unwrap();
    assert!(n > 0);
    let after = worker_stats(&worker.addr).await;
    let held = |s: &shoal_proto::worker::StatsResponse| s.tiers.iter().map(|t| t.blocks).sum::<u64>();
    assert_eq!(held(&after), held(&before) - n);
    assert_eq!(
        after.tiers.iter().map(|t| t.used_bytes).sum::<u64>(),
        before.tiers.iter().map(|t| t.used_bytes).sum::<u64>() - freed["bytes_freed"].as_u64().unwrap()
    );
    wait_for("the location map to lose the freed blocks", || {
        let a = master.addr.clone();
        async move { usage(&a, "f").await.cached_blocks == blocks - gone_blocks - n }
    })
    .await;
    // What was freed is /d0's blocks, and only those: prewarming /d0 again
    // loads every one of them, and /d2 finds all of its own still cached.
    let prewarm = |path: &str| {
        let (code, out, err) = cli(&["prewarm", "f", path, "-o", "json", "--master", &master.addr]);
        assert_eq!(code, 0, "{out}{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let d2 = prewarm("/d2");
    assert_eq!(d2["blocks_already_cached"], d2["blocks_total"], "{d2}");
    let d0 = prewarm("/d0");
    assert_eq!((d0["blocks_total"].as_u64(), d0["blocks_already_cached"].as_u64()), (Some(n), Some(0)), "{d0}");
    let (code, _, err) = cli(&["cache", "free", "f", "--master", &master.addr]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(held(&worker_stats(&worker.addr).await), 0);
    wait_for("the location map to empty", || {
        let a = master.addr.clone();
        async move { usage(&a, "f").await.cached_blocks == 0 }
    })
    .await;
    // Bad input: unknown path, unknown dataset, bad glob.
    assert_eq!(cli(&["prewarm", "f", "/nope", "--master", &master.addr]).0, 3);
    assert_eq!(cli(&["prewarm", "nope", "--master", &master.addr]).0, 3);
    assert_eq!(cli(&["prewarm", "f", "--include", "[", "--master", &master.addr]).0, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_data_survives_pressure_and_a_ttl_frees_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let make = |name: &str, files: usize, blocks_each: usize| {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..files {
            std::fs::write(d.join(format!("f{i}")), content(i as u64 + name.len() as u64 * 100, blocks_each * BLOCK))
                .unwrap();
        }
        d
    };
    let (p, q, t) = (make("p", 4, 2), make("q", 12, 2), make("t", 2, 2));
    // 1 MiB of cache in all: the pinned 512 KiB must survive 1.5 MiB of other reads.
    let (master, worker) = master_and_worker(root, "256KiB", "768KiB", &[]);
    let m = master.addr.as_str();
    let create = |name: &str, src: &Path, extra: &[&str]| {
        let mut args = vec!["dataset", "create", name, src.to_str().unwrap(), "--block-size", "64KiB", "--master", m];
        args.extend(extra);
        let (code, _, err) = cli(&args);
        assert_eq!(code, 0, "{err}");
    };
    create("p", &p, &["--pin"]);
    create("q", &q, &[]);
    create("t", &t, &["--ttl", "3s"]);

    // TTL: t's blocks are freed about two seconds after they were cached (the
    // worker learns the policy with a heartbeat; blocks cached before are covered).
    assert_eq!(cli(&["prewarm", "t", "--master", m]).0, 0);
    assert_eq!(usage(&master.addr, "t").await.total_blocks, 4);
    wait_for("t's blocks in the location map", || {
        let a = master.addr.clone();
        async move { usage(&a, "t").await.cached_blocks == 4 }
    })
    .await;
    wait_for("the TTL to free t's blocks on the worker and in the map", || {
        let (a, w) = (master.addr.clone(), worker.addr.clone());
        async move {
            let held = worker_stats(&w).await.tiers.iter().map(|t| t.blocks).sum::<u64>();
            held == 0 && usage(&a, "t").await.cached_blocks == 0
        }
    })
    .await;
    let s = worker_stats(&worker.addr).await;
    assert_eq!(s.tiers.iter().map(|t| t.blocks).sum::<u64>(), 0, "{s:?}");
    assert_eq!(s.tiers.iter().map(|t| t.used_bytes).sum::<u64>(), 0, "{s:?}");

    // Pin: p survives 1.5 MiB of other reads through a 1 MiB cache.
    assert_eq!(cli(&["prewarm", "p", "--master", m]).0, 0);
    wait_for("p's blocks to be pinned", || {
        let w = worker.addr.clone();
        async move { worker_stats(&w).await.pinned_blocks == 8 }
    })
    .await;
    let reads_after_p = worker_stats(&worker.addr).await.store_reads;
    assert_eq!(reads_after_p, 4 + 8);
    // q (1.5 MiB) cannot fit beside p: the prewarm says so and exits non-zero,
    // counting from the location map what is cached at its end.
    for _ in 0..2 {
        let (code, out, err) = cli(&["prewarm", "q", "-o", "json", "--master", m]);
        assert_eq!(code, 1, "an over-capacity prewarm fails: {out}{err}");
        let job: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!((job["state"].as_str(), job["blocks_total"].as_u64()), (Some("failed"), Some(24)), "{job}");
        assert!(job["blocks_cached_at_end"].as_u64().unwrap() <= 16, "at most the 1 MiB of cache: {job}");
        assert!(err.contains("evicted again"), "{out}{err}");
        assert_eq!(job["files_failed"].as_u64(), Some(0), "every block was cached once: {job}");
    }
    let s = worker_stats(&worker.addr).await;
    assert!(s.evictions > 0, "q put the cache under pressure: {s:?}");
    assert!(s.tiers[0].used_bytes <= 256 * 1024 && s.tiers[1].used_bytes <= 768 * 1024, "{s:?}");
    // Every pinned block is still there: prewarming p again reads nothing.
    let before = worker_stats(&worker.addr).await.store_reads;
    let (code, out, err) = cli(&["prewarm", "p", "-o", "json", "--master", m]);
    assert_eq!(code, 0, "{err}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["blocks_already_cached"].as_u64(), Some(8), "{job}");
    assert_eq!(worker_stats(&worker.addr).await.store_reads, before, "pinned blocks were never evicted");

    // Unpin: p's blocks are evictable again.
    let (code, out, _) = cli(&["dataset", "unpin", "p", "-o", "json", "--master", m]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["pinned"], false);
    wait_for("the worker to hand p's blocks back to eviction", || {
        let w = worker.addr.clone();
        async move { worker_stats(&w).await.pinned_blocks == 0 }
    })
    .await;
    let held = worker_stats(&worker.addr).await.tiers.iter().map(|t| t.blocks).sum::<u64>();
    assert!(held >= 8, "unpinning drops nothing: {held} blocks held");
    let (_, out, _) = cli(&["dataset", "show", "t", "-o", "json", "--master", m]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["ttl_seconds"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_globs_status_cancel_and_rm_with_its_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let src = root.join("src");
    let blocks = gen_files(&src, 30);
    let blocks_of = |pick: &dyn Fn(usize) -> bool| -> u64 {
        (0..30).filter(|i| pick(*i)).map(|i| (((i % 5) * BLOCK + 1000 * i) as u64).div_ceil(BLOCK as u64)).sum()
    };
    // Each store read takes 100 ms: a whole-dataset prewarm at --parallel 1
    // runs for seconds, long enough to be seen running and cancelled.
    let slow = [("FAILPOINTS", "worker::before_store_read=sleep(100)")];
    let (master, worker) = master_and_worker(root, "64MiB", "1GiB", &slow);
    let m = master.addr.as_str();
    let create = || {
        let (code, _, err) =
            cli(&["dataset", "create", "g", src.to_str().unwrap(), "--block-size", "64KiB", "--master", m]);
        assert_eq!(code, 0, "{err}");
    };
    create();
    let prewarm = |args: &[&str]| {
        let mut all = vec!["prewarm", "g"];
        all.extend(args);
        all.extend(["-o", "json", "--master", m]);
        let (code, out, err) = cli(&all);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };

    // --include: `*` stays within a directory, `**` crosses them.
    let d1 = prewarm(&["--include", "/d1/*.bin"]);
    assert_eq!((d1["files_total"].as_u64(), d1["blocks_total"].as_u64()), (Some(10), Some(blocks_of(&|i| i % 3 == 1))));
    let top = prewarm(&["--include", "/*.bin"]);
    assert_eq!((top["files_total"].as_u64(), top["state"].as_str()), (Some(0), Some("completed")), "{top}");
    let f00 = prewarm(&["--include", "/**/f00?.bin"]);
    assert_eq!(f00["files_total"].as_u64(), Some(10), "{f00}");
    let cached_before = blocks_of(&|i| i < 10 && i % 3 == 1);
    assert_eq!(f00["blocks_already_cached"].as_u64(), Some(cached_before), "the /d1 ones were cached: {f00}");
    let within = prewarm(&["/d2", "--include", "/d2/f01?.bin"]);
    assert_eq!(within["files_total"].as_u64(), Some(3), "paths and a glob together: {within}");

    // A running job: status shows it, cancel stops it.
    let (code, out, err) = cli(&["prewarm", "g", "--parallel", "1", "--detach", "-o", "json", "--master", m]);
    assert_eq!(code, 0, "{err}");
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["job"].as_str().unwrap().to_string();
    let status = |id: &str| {
        let (code, out, err) = cli(&["prewarm", "status", id, "-o", "json", "--master", m]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let running = status(&id);
    assert_eq!((running["id"].as_str(), running["state"].as_str()), (Some(id.as_str()), Some("running")), "{running}");
    assert_eq!(running["blocks_total"].as_u64(), Some(blocks));
    let (code, out, _) = cli(&["prewarm", "status", "-o", "json", "--master", m]);
    assert_eq!(code, 0);
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(jobs.len(), 5, "every job is listed: {out}");
    assert!(jobs.iter().any(|j| j["id"] == id.as_str() && j["state"] == "running"), "{out}");
    let (code, out, err) = cli(&["prewarm", "cancel", &id, "--master", m]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id), "{out}");
    wait_for_sync("the job to stop", || status(&id)["state"] == "cancelled");
    let stopped = status(&id);
    assert!(stopped["blocks_done"].as_u64() < Some(blocks), "cancelled before the end: {stopped}");
    // The read in flight at the cancel may still land; nothing after it.
    std::thread::sleep(Duration::from_millis(300));
    let done = worker_stats(&worker.addr).await.store_reads;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(worker_stats(&worker.addr).await.store_reads, done, "nothing is loaded after the cancel");
    assert_eq!(cli(&["prewarm", "cancel", "no-such-job", "--master", m]).0, 3);
    assert_eq!(cli(&["prewarm", "status", "no-such-job", "--master", m]).0, 3);

    // rm: the dataset goes, and so do its blocks on the workers.
    let held = |s: &shoal_proto::worker::StatsResponse| s.tiers.iter().map(|t| t.blocks).sum::<u64>();
    let before = held(&worker_stats(&worker.addr).await);
    assert!(before > 0);
    // The master frees what its location map lists: wait for the last reports.
    wait_for("the location map to list every block the worker holds", || {
        let a = master.addr.clone();
        async move { usage(&a, "g").await.cached_blocks == before }
    })
    .await;
    let (code, out, err) = cli(&["dataset", "rm", "g", "-o", "json", "--master", m]);
    assert_eq!(code, 0, "{err}");
    let rm: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rm["blocks_freed"].as_u64(), Some(before), "{rm}");
    assert_eq!(held(&worker_stats(&worker.addr).await), 0, "the worker dropped the dataset's blocks");
    assert_eq!(cli(&["dataset", "show", "g", "--master", m]).0, 3);
    assert_eq!(cli(&["prewarm", "g", "--master", m]).0, 3);
    assert_eq!(cli(&["dataset", "rm", "g", "--master", m]).0, 3, "a second rm finds nothing");
    // Created again from the same store: nothing of the old one counts as cached.
    create();
    let reads = worker_stats(&worker.addr).await.store_reads;
    let again = prewarm(&["--include", "/d0/*"]);
    assert_eq!(again["blocks_already_cached"].as_u64(), Some(0), "{again}");
    let d0 = blocks_of(&|i| i % 3 == 0);
    assert_eq!(worker_stats(&worker.addr).await.store_reads, reads + d0);
}
