//! End-to-end tests of the foundation: a real master and worker (the `shoal`
//! binary), datasets from a local directory and from S3 (moto on loopback),
//! namespace equality, block reads with checksums, coalesced misses, `kill -9`
//! of master and worker, tier demotion, and bad input.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::time::UNIX_EPOCH;

use common::*;
use shoal_proto::master::master_client::MasterClient;
use shoal_proto::master::*;
use shoal_proto::worker::worker_client::WorkerClient;
use shoal_proto::worker::*;
use tonic::transport::Channel;

const BLOCK: usize = 64 * 1024;

async fn namespace(m: &mut MasterClient<Channel>, ds: &str) -> (DatasetInfo, BTreeMap<String, Inode>) {
    let mut stream = m.list_namespace(ListNamespaceRequest { dataset: ds.into() }).await.unwrap().into_inner();
    let mut all = HashMap::new();
    let mut info = None;
    while let Some(chunk) = stream.message().await.unwrap() {
        if chunk.dataset.is_some() {
            info = chunk.dataset;
        }
        for i in chunk.entries {
            all.insert(i.ino, i);
        }
    }
    let path_of = |mut ino: u64| {
        let mut parts = Vec::new();
        while ino != 1 {
            let i = &all[&ino];
            parts.push(i.name.clone());
            ino = i.parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    };
    let by_path = all.values().filter(|i| i.ino != 1).map(|i| (path_of(i.ino), i.clone())).collect();
    (info.expect("dataset info in the first chunk"), by_path)
}

fn block_ref(info: &DatasetInfo, path: &str, inode: &Inode, index: u32) -> BlockRef {
    BlockRef {
        dataset: info.spec.as_ref().unwrap().name.clone(),
        dataset_id: info.id,
        file_id: inode.file_id,
        index,
        path: path.into(),
        block_size: info.spec.as_ref().unwrap().cache.as_ref().unwrap().block_size,
        file_size: inode.size,
        mtime_sec: inode.mtime_sec,
        mtime_nsec: inode.mtime_nsec,
        sig: inode.sig.clone(),
    }
}

async fn read_block(w: &mut WorkerClient<Channel>, r: BlockRef) -> Vec<u8> {
    let mut s = w
        .read_block(ReadBlockRequest { block: Some(r), offset: 0, length: 0, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(c) = s.message().await.unwrap() {
        out.extend_from_slice(&c.data);
    }
    out
}

async fn read_file(w: &mut WorkerClient<Channel>, info: &DatasetInfo, path: &str, inode: &Inode) -> Vec<u8> {
    let bs = info.spec.as_ref().unwrap().cache.as_ref().unwrap().block_size;
    let mut out = Vec::new();
    for index in 0..inode.size.div_ceil(bs) {
        out.extend(read_block(w, block_ref(info, path, inode, index as u32)).await);
    }
    out
}

async fn stats(w: &mut WorkerClient<Channel>) -> StatsResponse {
    w.stats(StatsRequest {}).await.unwrap().into_inner()
}

struct Cluster {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    master: Proc,
    worker: Proc,
}

fn cluster(mem: &str, ssd: &str, worker_env: &[(&str, &str)]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (master, worker) = master_and_worker(&root, mem, ssd, worker_env);
    Cluster { _dir: dir, root, master, worker }
}

async fn wait_worker_alive(m: &mut MasterClient<Channel>) {
    wait_for("worker to register", || {
        let mut m = m.clone();
        async move {
            m.list_workers(ListWorkersRequest {})
                .await
                .map(|r| r.into_inner().workers.iter().any(|w| w.alive))
                .unwrap_or(false)
        }
    })
    .await;
}

/// The master's namespace equals `tree`, and every file read block by block
/// through the worker has the source's sha256; a second read is served from the
/// cache without touching the store.
async fn check_dataset(
    c: &Cluster,
    name: &str,
    tree: &BTreeMap<String, Option<Vec<u8>>>,
    local_root: Option<&std::path::Path>,
) {
    let mut m = master_client(&c.master.addr).await;
    let mut w = worker_client(&c.worker.addr).await;
    let (info, ns) = namespace(&mut m, name).await;
    let got: Vec<(&str, bool, u64)> =
        ns.iter().map(|(p, i)| (p.as_str(), i.kind == FileKind::Directory as i32, i.size)).collect();
    let want: Vec<(&str, bool, u64)> =
        tree.iter().map(|(p, c)| (p.as_str(), c.is_none(), c.as_ref().map(|d| d.len() as u64).unwrap_or(0))).collect();
    assert_eq!(got, want, "namespace differs from the source tree");
    let files = tree.values().filter(|c| c.is_some()).count() as u64;
    assert_eq!(info.file_count, files);
    assert_eq!(info.total_bytes, tree.values().flatten().map(|d| d.len() as u64).sum::<u64>());
    if let Some(root) = local_root {
        for (p, i) in &ns {
            let meta = std::fs::metadata(root.join(p.trim_start_matches('/'))).unwrap();
            let mtime = meta.modified().unwrap().duration_since(UNIX_EPOCH).unwrap();
            assert_eq!((i.mtime_sec, i.mtime_nsec), (mtime.as_secs() as i64, mtime.subsec_nanos()), "mtime of {p}");
        }
    }
    // Resolve and lookup agree with the listing.
    for (p, i) in ns.iter().take(5) {
        let r =
            m.resolve_path(ResolvePathRequest { dataset: name.into(), path: p.clone() }).await.unwrap().into_inner();
        assert_eq!(r.ino, i.ino);
        let l = m
            .lookup(LookupRequest { dataset: name.into(), parent: i.parent, name: i.name.clone() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(l, *i);
    }

    for (p, content) in tree {
        if let Some(data) = content {
            let got = read_file(&mut w, &info, p, &ns[p]).await;
            assert_eq!(sha256(&got), sha256(data), "content of {p}");
        }
    }
    let before = stats(&mut w).await;
    assert!(before.store_reads > 0);
    for (p, content) in tree {
        if let Some(data) = content {
            let got = read_file(&mut w, &info, p, &ns[p]).await;
            assert_eq!(sha256(&got), sha256(data), "second read of {p}");
        }
    }
    let after = stats(&mut w).await;
    assert_eq!(after.store_reads, before.store_reads, "second read must not touch the store");
    assert!(after.hits > before.hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_dataset_lists_and_reads_back_exactly() {
    let c = cluster("64MiB", "256MiB", &[]);
    let src = c.root.join("src");
    let tree = tree_spec(BLOCK, false);
    write_tree(&src, &tree);
    let (code, out, err) = cli(&[
        "dataset",
        "create",
        "local",
        src.to_str().unwrap(),
        "--block-size",
        "64KiB",
        "--master",
        &c.master.addr,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("files:       7"), "{out}");
    check_dataset(&c, "local", &tree, Some(&src)).await;

    // `show --output json` carries the totals.
    let (code, out, _) = cli(&["dataset", "show", "local", "-o", "json", "--master", &c.master.addr]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["file_count"], 7);
    assert_eq!(v["block_size"], BLOCK as u64);

    // `show --path` gives every directory's totals as the source has them.
    let entries = walk(&src);
    let dirs: Vec<String> =
        std::iter::once(String::new()).chain(entries.iter().filter(|e| e.1 .0).map(|e| e.0.clone())).collect();
    assert!(dirs.len() > 2, "the tree has nested directories: {dirs:?}");
    for d in &dirs {
        let under = |p: &String| d.is_empty() || p.starts_with(&format!("{d}/"));
        let direct =
            entries.keys().filter(|p| under(p) && !p[if d.is_empty() { 0 } else { d.len() + 1 }..].contains('/'));
        let files: Vec<u64> = entries.iter().filter(|(p, e)| under(p) && !e.0).map(|(_, e)| e.1).collect();
        let path = format!("/{d}");
        let (code, out, err) =
            cli(&["dataset", "show", "local", "--path", &path, "-o", "json", "--master", &c.master.addr]);
        assert_eq!(code, 0, "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["kind"], "directory", "{path}");
        assert_eq!(v["entries"], direct.count() as u64, "{path}");
        assert_eq!(v["files"], files.len() as u64, "{path}");
        assert_eq!(v["bytes"], files.iter().sum::<u64>(), "{path}");
    }
    for (path, code_want, msg) in [("/no/such", 3, "not found"), ("/../etc", 3, "not found")] {
        let (code, out, err) = cli(&["dataset", "show", "local", "--path", path, "--master", &c.master.addr]);
        assert_eq!(code, code_want, "{path}: {out}{err}");
        assert!(err.contains(msg), "{path}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_dataset_lists_and_reads_back_exactly() {
    let c = cluster("64MiB", "256MiB", &[]);
    let s3 = S3Server::start(&c.root.join("moto.log"));
    s3.create_bucket("bkt");
    let tree = tree_spec(BLOCK, true);
    for (p, content) in &tree {
        if let Some(data) = content {
            s3.put("bkt", &format!("train{p}"), data);
        }
    }
    // A neighbour prefix that must not leak into the dataset.
    s3.put("bkt", "train2/other", b"x");
    let endpoint = format!("endpoint={}", s3.endpoint);
    let (code, out, err) = cli(&[
        "dataset",
        "create",
        "s3ds",
        "s3://bkt/train",
        "--option",
        &endpoint,
        "--option",
        "access_key_id=AKIDSHOALTEST0001",
        "--option",
        "secret_access_key=s3cr3t-shoal-test-0001",
        "--block-size",
        "64KiB",
        "--master",
        &c.master.addr,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    // The secrets reach workers (they read the store) and no client reply.
    for args in [vec!["dataset", "show", "s3ds"], vec!["dataset", "show", "s3ds", "-o", "json"], vec!["dataset", "ls"]]
    {
        let mut a = args.clone();
        a.extend(["--master", &c.master.addr]);
        let (code, shown, err) = cli(&a);
        assert_eq!(code, 0, "{err}");
        assert!(!shown.contains("s3cr3t") && !shown.contains("AKIDSHOAL"), "{args:?} shows a secret: {shown}");
    }
    for printed in [&out, &err] {
        assert!(!printed.contains("s3cr3t") && !printed.contains("AKIDSHOAL"), "create printed a secret: {printed}");
    }
    let mut m = master_client(&c.master.addr).await;
    let options = |i: &DatasetInfo| shoal_core::dataset::mount_specs(i.spec.as_ref().unwrap())[0].options.clone();
    let got = m.get_dataset(GetDatasetRequest { name: "s3ds".into() }).await.unwrap().into_inner();
    let listed = m.list_datasets(ListDatasetsRequest {}).await.unwrap().into_inner().datasets;
    let (streamed, _) = namespace(&mut m, "s3ds").await;
    for (what, o) in
        [("GetDataset", options(&got)), ("ListDatasets", options(&listed[0])), ("ListNamespace", options(&streamed))]
    {
        assert_eq!(o["secret_access_key"], "***", "{what}");
        assert_eq!(o["access_key_id"], "***", "{what}");
        assert_eq!(o["endpoint"], s3.endpoint, "{what} shows what is not secret");
    }
    // This master has no credentials table, so every caller may act as a worker.
    let full = m.get_store_spec(GetDatasetRequest { name: "s3ds".into() }).await.unwrap().into_inner();
    assert_eq!(options(&full)["secret_access_key"], "s3cr3t-shoal-test-0001");
    check_dataset(&c, "s3ds", &tree, None).await;

    // Re-sync applies exactly the differences.
    s3.put("bkt", "train/new file", b"new");
    s3.put("bkt", "train/zero", b"no longer empty");
    s3.delete("bkt", "train/a/b/c/deep.bin");
    let (code, out, err) = cli(&["dataset", "sync", "s3ds", "-o", "json", "--master", &c.master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["added"].as_u64(), v["changed"].as_u64()), (Some(1), Some(1)), "{v}");
    // deep.bin and its now-empty parents a/b/c, a/b, a are gone.
    assert_eq!(v["deleted"].as_u64(), Some(4), "{v}");
    let mut m = master_client(&c.master.addr).await;
    let (_, ns) = namespace(&mut m, "s3ds").await;
    assert_eq!(ns["/zero"].size, 15);
    assert!(!ns.contains_key("/a/b/c/deep.bin"));
}

/// An object rewritten in the store after the sync (same length, new bytes)
/// is refused with FAILED_PRECONDITION for the blocks not cached yet, instead of
/// mixing two versions in one file; cached blocks keep serving the listed
/// version; a re-sync brings the new one. Over S3 (a conditional GET) and a
/// local directory (a stat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_changed_since_the_sync_is_refused_never_mixed() {
    let c = cluster("64MiB", "256MiB", &[]);
    let s3 = S3Server::start(&c.root.join("moto.log"));
    s3.create_bucket("chg");
    let (old, new) = (content(1, 3 * BLOCK), content(2, 3 * BLOCK));
    s3.put("chg", "d/f.bin", &old);
    let local = c.root.join("local");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("f.bin"), &old).unwrap();
    let ep = format!("endpoint={}", s3.endpoint);
    let s3_args = ["--option", &ep, "--option", "access_key_id=a", "--option", "secret_access_key=b"];
    for (name, uri) in [("chs3", "s3://chg/d"), ("chlocal", local.to_str().unwrap())] {
        let mut args = vec!["dataset", "create", name, uri, "--block-size", "64KiB", "--master", &c.master.addr];
        if name == "chs3" {
            args.extend(s3_args);
        }
        let (code, out, err) = cli(&args);
        assert_eq!(code, 0, "{out}{err}");
    }
    let mut m = master_client(&c.master.addr).await;
    let mut w = worker_client(&c.worker.addr).await;
    for name in ["chs3", "chlocal"] {
        let (info, ns) = namespace(&mut m, name).await;
        let inode = ns["/f.bin"].clone();
        assert_eq!(read_block(&mut w, block_ref(&info, "/f.bin", &inode, 0)).await, old[..BLOCK], "{name}");
        // Rewritten with a later mtime (S3 dates are whole seconds: wait two).
        if name == "chs3" {
            let listed = inode.mtime_sec;
            wait_for_sync("two seconds past the listed mtime", || {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
                    >= listed + 2
            });
            s3.put("chg", "d/f.bin", &new);
        } else {
            std::fs::write(local.join("f.bin"), &new).unwrap();
            let later = std::time::UNIX_EPOCH + std::time::Duration::from_secs(inode.mtime_sec as u64 + 2);
            std::fs::File::options().write(true).open(local.join("f.bin")).unwrap().set_modified(later).unwrap();
        }
        let req = ReadBlockRequest {
            block: Some(block_ref(&info, "/f.bin", &inode, 1)),
            offset: 0,
            length: 0,
            ..Default::default()
        };
        let err = w.read_block(req).await.expect_err("a block of the old version must not be filled from the new one");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{name}: {err:?}");
        assert!(err.message().contains("changed since the dataset was last synced"), "{name}: {err:?}");
        assert_eq!(read_block(&mut w, block_ref(&info, "/f.bin", &inode, 0)).await, old[..BLOCK], "{name}: cached");
        // After a re-sync the new version reads back whole.
        let (code, out, err) = cli(&["dataset", "sync", name, "--master", &c.master.addr]);
        assert_eq!(code, 0, "{out}{err}");
        let (info, ns) = namespace(&mut m, name).await;
        assert_eq!(sha256(&read_file(&mut w, &info, "/f.bin", &ns["/f.bin"]).await), sha256(&new), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_store_read() {
    // The worker pauses before each store read, so the requests surely overlap.
    let c = cluster("64MiB", "256MiB", &[("FAILPOINTS", "worker::before_store_read=sleep(700)")]);
    let src = c.root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = content(42, 3 * BLOCK);
    std::fs::write(src.join("f"), &data).unwrap();
    let (code, _, err) =
        cli(&["dataset", "create", "co", src.to_str().unwrap(), "--block-size", "64KiB", "--master", &c.master.addr]);
    assert_eq!(code, 0, "{err}");
    let mut m = master_client(&c.master.addr).await;
    let (info, ns) = namespace(&mut m, "co").await;
    let w = worker_client(&c.worker.addr).await;
    let reads = (0..8).map(|_| {
        let mut w = w.clone();
        let r = block_ref(&info, "/f", &ns["/f"], 1);
        tokio::spawn(async move { read_block(&mut w, r).await })
    });
    for r in futures::future::join_all(reads).await {
        assert_eq!(r.unwrap(), data[BLOCK..2 * BLOCK]);
    }
    let s = stats(&mut w.clone()).await;
    assert_eq!(s.store_reads, 1, "eight concurrent misses of one block must share one store read");
    assert_eq!(s.misses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_copy_never_reads_through_and_comes_only_from_known_workers() {
    let c = cluster("64MiB", "256MiB", &[]);
    let src = c.root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = content(7, 2 * BLOCK);
    std::fs::write(src.join("f"), &data).unwrap();
    let (code, _, err) =
        cli(&["dataset", "create", "pc", src.to_str().unwrap(), "--block-size", "64KiB", "--master", &c.master.addr]);
    assert_eq!(code, 0, "{err}");
    let mut m = master_client(&c.master.addr).await;
    let (info, ns) = namespace(&mut m, "pc").await;
    let mut w = worker_client(&c.worker.addr).await;
    let r = block_ref(&info, "/f", &ns["/f"], 0);
    // A copy request of a block this worker does not hold: NOT_FOUND, no store read.
    let req = ReadBlockRequest { block: Some(r.clone()), cached_only: true, ..Default::default() };
    let e = w.read_block(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert_eq!(stats(&mut w).await.store_reads, 0);
    // A peer the master never listed is not asked (a caller cannot make the
    // worker cache bytes from any address): the store is read instead.
    let bogus = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let req = CacheBlockRequest { block: Some(r.clone()), peers: vec![bogus.local_addr().unwrap().to_string()] };
    w.cache_block(req).await.unwrap();
    let s = stats(&mut w).await;
    assert_eq!((s.store_reads, s.peer_reads), (1, 0));
    // Now cached: the copy request is served from the tier.
    let req = ReadBlockRequest { block: Some(r), cached_only: true, ..Default::default() };
    let mut stream = w.read_block(req).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        got.extend_from_slice(&chunk.data);
    }
    assert_eq!(got, data[..BLOCK]);
    assert_eq!(stats(&mut w).await.store_reads, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_kill9_keeps_datasets_and_rebuilds_locations() {
    let mut c = cluster("64MiB", "256MiB", &[]);
    let src = c.root.join("src");
    let tree = tree_spec(BLOCK, false);
    write_tree(&src, &tree);
    let (code, _, err) =
        cli(&["dataset", "create", "dur", src.to_str().unwrap(), "--block-size", "64KiB", "--master", &c.master.addr]);
    assert_eq!(code, 0, "{err}");
    let mut m = master_client(&c.master.addr).await;
    wait_worker_alive(&mut m).await;
    let (info, ns) = namespace(&mut m, "dur").await;
    let mut w = worker_client(&c.worker.addr).await;
    let path = "/multi/three-and-a-half";
    read_file(&mut w, &info, path, &ns[path]).await;
    let ino = ns[path].ino;
    let locs = |m: &mut MasterClient<Channel>| {
        let mut m = m.clone();
        async move {
            m.get_block_locations(BlockLocationsRequest { dataset: "dur".into(), ino })
                .await
                .map(|r| r.into_inner().blocks.len())
                .unwrap_or(0)
        }
    };
    wait_for("block locations reported", || {
        let f = locs(&mut m);
        async move { f.await == 4 }
    })
    .await;

    let addr = c.master.addr.clone();
    c.master.kill9();
    c.master = start_master(&c.root.join("master"), &addr, &c.root.join("master2.log"));
    // A restarted master answers once it leads its group of one again.
    wait_for_sync("the restarted master to serve", || cli(&["master", "status", "--master", &addr]).0 == 0);
    let mut m = master_client(&addr).await;
    let (info2, ns2) = namespace(&mut m, "dur").await;
    assert_eq!(info2, info, "dataset record survives kill -9");
    assert_eq!(ns2, ns, "namespace survives kill -9");
    wait_worker_alive(&mut m).await;
    wait_for("4 block locations to come back", || {
        let f = locs(&mut m);
        async move { f.await == 4 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_kill9_mid_write_leaves_no_partial_block() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let master = start_master(&root.join("master"), "127.0.0.1:0", &root.join("master.log"));
    let tier_flags = tiers(&root.join("w"), "64MiB", "256MiB");
    let slow = [("FAILPOINTS", "tier::before_rename=sleep(60000)")];
    let mut worker = start_worker(&master.addr, "127.0.0.1:0", &tier_flags, &slow, &root.join("worker.log"));
    // Until it has registered, the worker cannot check a block reference's signature.
    wait_until_registered(&master.addr, &worker.addr);
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = content(7, 4 * BLOCK);
    std::fs::write(src.join("f"), &data).unwrap();
    let (code, _, err) =
        cli(&["dataset", "create", "k", src.to_str().unwrap(), "--block-size", "64KiB", "--master", &master.addr]);
    assert_eq!(code, 0, "{err}");
    let mut m = master_client(&master.addr).await;
    let (info, ns) = namespace(&mut m, "k").await;
    let w = worker_client(&worker.addr).await;
    let mut calls: Vec<_> = (0..4)
        .map(|index| {
            let mut w = w.clone();
            let r = block_ref(&info, "/f", &ns["/f"], index);
            tokio::spawn(async move { w.cache_block(CacheBlockRequest { block: Some(r), ..Default::default() }).await })
        })
        .collect();
    // Kill it while block files sit written under their temporary names.
    let tmp = root.join("w/mem/tmp");
    wait_for_sync("a block write in flight", || {
        // A call that ended has failed (the writes sleep before their rename): say why.
        if let Some(c) = calls.iter_mut().find(|c| c.is_finished()) {
            panic!("a CacheBlock ended before its rename: {:?}", futures::executor::block_on(c));
        }
        std::fs::read_dir(&tmp).map(|d| d.count() > 0).unwrap_or(false)
    });
    worker.kill9();
    assert!(std::fs::read_dir(&tmp).unwrap().count() > 0);

    let worker = start_worker(&master.addr, "127.0.0.1:0", &tier_flags, &[], &root.join("worker2.log"));
    let worker_addr = worker.addr.clone();
    // The tiers are opened (and partial files dropped) before the worker registers.
    let mut mc = master_client(&master.addr).await;
    wait_for("the restarted worker to register", || {
        let mut m = mc.clone();
        let want = worker_addr.clone();
        async move {
            m.list_workers(ListWorkersRequest {})
                .await
                .map(|r| r.into_inner().workers.iter().any(|w| w.alive && w.address == want))
                .unwrap_or(false)
        }
    })
    .await;
    let _ = &mut mc;
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "partial files are dropped at start");
    let mut w = worker_client(&worker.addr).await;
    let s = stats(&mut w).await;
    assert_eq!(s.tiers.iter().map(|t| t.blocks).sum::<u64>(), 0, "no block was complete");
    // Everything it serves now is correct.
    let got = read_file(&mut w, &info, "/f", &ns["/f"]).await;
    assert_eq!(sha256(&got), sha256(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_tier_overflows_into_ssd_within_quota() {
    let c = cluster("256KiB", "64MiB", &[]);
    let src = c.root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = content(9, 32 * BLOCK);
    std::fs::write(src.join("big"), &data).unwrap();
    let (code, _, err) =
        cli(&["dataset", "create", "t", src.to_str().unwrap(), "--block-size", "64KiB", "--master", &c.master.addr]);
    assert_eq!(code, 0, "{err}");
    let mut m = master_client(&c.master.addr).await;
    let (info, ns) = namespace(&mut m, "t").await;
    let mut w = worker_client(&c.worker.addr).await;
    for index in 0..32u32 {
        let got = read_block(&mut w, block_ref(&info, "/big", &ns["/big"], index)).await;
        assert_eq!(got, data[index as usize * BLOCK..(index as usize + 1) * BLOCK]);
        let s = stats(&mut w).await;
        assert!(s.tiers[0].used_bytes <= 256 * 1024, "MEM tier over quota: {}", s.tiers[0].used_bytes);
    }
    let s = stats(&mut w).await;
    assert!(s.tiers[1].blocks > 0, "blocks went to the SSD tier: {s:?}");
    assert_eq!(s.tiers[0].blocks + s.tiers[1].blocks, 32, "nothing was lost: {s:?}");
    let got = read_file(&mut w, &info, "/big", &ns["/big"]).await;
    assert_eq!(sha256(&got), sha256(&data));
    assert_eq!(stats(&mut w).await.store_reads, 32, "the re-read came from the tiers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let c = cluster("64MiB", "256MiB", &[]);
    let src = c.root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    std::fs::write(src.join("g"), b"secret of g").unwrap();
    let m = c.master.addr.as_str();
    let s = src.to_str().unwrap();
    assert_eq!(cli(&["dataset", "create", "good", s, "--master", m]).0, 0);
    let missing = c.root.join("no/such/dir");
    let root = c.root.to_str().unwrap();
    let long = "a".repeat(256);
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["dataset", "create", "x", "ftp://h/p"], 2, "unknown scheme"),
        (vec!["dataset", "create", "x", "s3:///p", "--option", "region=r"], 2, "missing bucket"),
        (
            vec![
                "dataset",
                "create",
                "x",
                "s3://b/p",
                "--option",
                "endpoint=http://127.0.0.1:9",
                "--option",
                "access_key_id=a",
                "--option",
                "secret_access_key=b",
            ],
            5,
            "127.0.0.1:9",
        ),
        (vec!["dataset", "create", "good", s], 4, "already exists"),
        (vec!["dataset", "create", "a/b", s], 2, "'/'"),
        (vec!["dataset", "create", "..", s], 2, "'..'"),
        (vec!["dataset", "create", &long, s], 2, "253"),
        (vec!["dataset", "create", "x", missing.to_str().unwrap()], 3, "no/such/dir"),
        // Local stores only under --allow-local-root, and never over the master's state.
        (vec!["dataset", "create", "x", "/usr/share"], 6, "--allow-local-root"),
        (vec!["dataset", "create", "x", "file:///etc"], 6, "--allow-local-root"),
        (vec!["dataset", "create", "x", root], 2, "master's own state"),
        (vec!["dataset", "create", "x", s, "--namespace", "Not_A_Namespace"], 2, "namespace"),
        (vec!["dataset", "create", "x", s, "--block-size", "1KiB"], 2, "block size"),
        (vec!["dataset", "show", "nope"], 3, "not found"),
        (vec!["dataset", "replicas", "good", "0"], 2, "replicas must be 1 to 16"),
        (vec!["dataset", "replicas", "good", "17"], 2, "replicas must be 1 to 16"),
        (vec!["dataset", "replicas", "nope", "2"], 3, "not found"),
    ];
    for (args, want, msg) in cases {
        let mut a = args.clone();
        a.extend(["--master", m]);
        let (code, out, err) = cli(&a);
        assert_eq!(code, want, "{args:?}: {out}{err}");
        assert!(err.contains(msg), "{args:?}: error should mention {msg:?}: {err}");
    }
    let replicas = || {
        let (_, out, _) = cli(&["dataset", "show", "good", "-o", "json", "--master", m]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["replicas"].clone()
    };
    assert_eq!(replicas(), 1, "refused replicas changed nothing");
    assert_eq!(cli(&["dataset", "replicas", "good", "3", "--master", m]).0, 0);
    assert_eq!(replicas(), 3);
    // NUL cannot travel in argv; send it over gRPC.
    let mut mc = master_client(m).await;
    let spec = DatasetSpec {
        name: "a\0b".into(),
        mount: Some(MountSpec { uri: s.into(), options: Default::default(), ..Default::default() }),
        ..Default::default()
    };
    let e = mc.create_dataset(CreateDatasetRequest { spec: Some(spec), sync: false }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // Garbage block references are refused by the worker.
    let mut w = worker_client(&c.worker.addr).await;
    let evil = BlockRef {
        dataset: "good".into(),
        dataset_id: 1,
        file_id: 1,
        index: 0,
        path: "/../../etc/passwd".into(),
        block_size: 1 << 20,
        file_size: 10,
        ..Default::default()
    };
    let e = w
        .read_block(ReadBlockRequest { block: Some(evil), offset: 0, length: 0, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "unsigned: {e:?}");
    // A client can name a block, never define one: /g's path under /f's id and
    // signature (which would cache g's bytes as f's for every reader), or /f's
    // reference with another file id, or a larger block size, are all refused,
    // and nothing is read or cached.
    let (info, ns) = namespace(&mut mc, "good").await;
    let f = block_ref(&info, "/f", &ns["/f"], 0);
    let before = stats(&mut w).await;
    let forged = [
        BlockRef { path: "/g".into(), file_size: ns["/g"].size, ..f.clone() },
        BlockRef { file_id: ns["/g"].file_id, ..f.clone() },
        BlockRef { block_size: 2 << 20, ..f.clone() },
        BlockRef { sig: vec![0; 16], ..f.clone() },
    ];
    for r in forged {
        let e = w
            .read_block(ReadBlockRequest { block: Some(r.clone()), offset: 0, length: 0, ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{r:?}: {e:?}");
        let e = w.cache_block(CacheBlockRequest { block: Some(r.clone()), ..Default::default() }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{r:?}: {e:?}");
    }
    let after = stats(&mut w).await;
    assert_eq!(after.store_reads, before.store_reads, "a forged reference reads nothing");
    assert_eq!(after.tiers.iter().map(|t| t.blocks).sum::<u64>(), before.tiers.iter().map(|t| t.blocks).sum::<u64>());
    assert_eq!(read_block(&mut w, f).await, b"x", "the signed reference reads f");

    let (_, out, _) = cli(&["dataset", "ls", "-o", "json", "--master", m]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<_> = v.as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["good"], "failed commands must not change state");
}

/// A block a worker newly caches reaches the master's location map well before
/// the next heartbeat (here 60 s away): the worker reports early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newly_cached_blocks_reach_the_master_before_the_next_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let master = Proc::start(
        &[
            "master",
            "--data-dir",
            root.join("m").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--heartbeat-interval",
            "60s",
            "--metrics-listen",
            "127.0.0.1:0",
            "--allow-local-root",
            root.to_str().unwrap(),
        ],
        &[],
        &root.join("master.log"),
    );
    let worker =
        start_worker(&master.addr, "127.0.0.1:0", &tiers(&root.join("w"), "64MiB", "64MiB"), &[], &root.join("w.log"));
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), content(3, 2 * BLOCK)).unwrap();
    let mut m = master_client(&master.addr).await;
    wait_worker_alive(&mut m).await;
    let (code, _, err) =
        cli(&["dataset", "create", "early", src.to_str().unwrap(), "--block-size", "64KiB", "--master", &master.addr]);
    assert_eq!(code, 0, "{err}");
    let (info, ns) = namespace(&mut m, "early").await;
    let mut w = worker_client(&worker.addr).await;
    let t = std::time::Instant::now();
    assert_eq!(read_block(&mut w, block_ref(&info, "/f", &ns["/f"], 1)).await, content(3, 2 * BLOCK)[BLOCK..]);
    let req = BlockLocationsRequest { dataset: "early".into(), ino: ns["/f"].ino };
    loop {
        let blocks = m.get_block_locations(req.clone()).await.unwrap().into_inner().blocks;
        if blocks.iter().any(|b| b.index == 1 && b.worker_ids == ["w1"]) {
            break;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "the master did not hear of the block before the heartbeat"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A worker keeps its tiers across restarts; a master started on new state
/// issues the same file ids again for other files. The worker must drop the old
/// cluster's blocks instead of serving them as the new files (measured before
/// this test existed: 9 of 51 files read back with another file's bytes).
#[test]
fn a_new_master_incarnation_never_reads_the_old_ones_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Tree B is tree A with one file added in front: every file id shifts by
    // one. Files of one size, so a length check cannot tell them apart.
    let (a, b) = (root.join("a"), root.join("b"));
    let names: Vec<String> = (0..50).map(|i| format!("f{i:02}")).collect();
    for (d, extra) in [(&a, false), (&b, true)] {
        std::fs::create_dir_all(d).unwrap();
        for (i, n) in names.iter().enumerate() {
            std::fs::write(d.join(n), content(i as u64, 3000)).unwrap();
        }
        if extra {
            std::fs::write(d.join("e00"), content(999, 3000)).unwrap();
        }
    }
    let master = start_master(&root.join("m1"), "127.0.0.1:0", &root.join("m1.log"));
    let addr = master.addr.clone();
    let worker =
        start_worker(&addr, "127.0.0.1:0", &tiers(&root.join("w"), "64MiB", "64MiB"), &[], &root.join("worker.log"));
    wait_until_registered(&addr, &worker.addr);
    let create = |src: &std::path::Path| {
        let (code, out, err) =
            cli(&["dataset", "create", "ds", src.to_str().unwrap(), "--block-size", "64KiB", "--master", &addr]);
        assert_eq!(code, 0, "{out}{err}");
    };
    create(&a);
    let (code, out, err) = cli(&["prewarm", "ds", "-o", "json", "--master", &addr]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"completed\""), "{out}");

    // A new incarnation on the same address: new state, the same ids for B's files.
    drop(master);
    let master = start_master(&root.join("m2"), &addr, &root.join("m2.log"));
    wait_until_registered(&addr, &worker.addr);
    create(&b);
    let mnt = root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _guard = MountGuard(mnt.clone());
    let _mount = Proc::start_until(
        &["mount", "ds", mnt.to_str().unwrap(), "--master", &master.addr],
        &[],
        &root.join("mount.log"),
        "mounted dataset ",
    );
    let mut wrong = Vec::new();
    for n in names.iter().map(String::as_str).chain(["e00"]) {
        if std::fs::read(mnt.join(n)).unwrap() != std::fs::read(b.join(n)).unwrap() {
            wrong.push(n.to_string());
        }
    }
    assert!(wrong.is_empty(), "files read back with another file's bytes: {wrong:?}");
    let log = std::fs::read_to_string(root.join("worker.log")).unwrap();
    assert!(log.contains("cached for another cluster"), "the worker dropped the old cluster's blocks:\n{log}");
}
