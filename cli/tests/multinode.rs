//! A distributed cache as a cluster: hosts are network namespaces on a bridge
//! (`common/bed.rs`), the store (moto) is one of them, workers and mounts run on
//! others, and the master runs on the bridge's gateway. The tests prove, with
//! the master's location map and the workers' counters:
//! - placement: every block lands on its rendezvous owner;
//! - a mount on host B reads a block cached on host A from A, not the store;
//! - `--replicas 2` holds two copies, reading the store once per block, and a
//!   host's loss costs no read error;
//! - a partitioned host's blocks leave the location map and come back;
//! - `shoal worker drain` moves a worker's blocks to their new owners while
//!   reads go on, from the worker and not the store;
//! - a worker that joins takes the blocks it now owns from their holders.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::bed::Bed;
use common::*;
use shoal_core::{placement, BlockId};
use shoal_proto::master::*;
use shoal_proto::worker::StatsRequest;

const BLOCK: usize = 64 * 1024;

/// Processes are dropped (killed) before the bed that holds their hosts.
struct Cluster {
    mounts: Vec<(Proc, MountGuard)>,
    workers: BTreeMap<String, Proc>,
    master: Proc,
    _s3: S3Server,
    bed: Bed,
    root: tempfile::TempDir,
    files: BTreeMap<String, Vec<u8>>,
}

/// Twelve files of 1 to 4 blocks, one in a sub-directory.
fn files() -> BTreeMap<String, Vec<u8>> {
    (0..12u64)
        .map(|i| {
            let name = if i == 11 { "sub/deep.bin".to_string() } else { format!("f{i:02}.bin") };
            (name, content(i + 1, (i as usize % 4) * BLOCK + 1000 * i as usize + 100))
        })
        .collect()
}

/// The store on host 0, workers `w1..=wN` on hosts 1..=N, `extra` hosts more
/// with nothing on them yet; a dataset `ds` of [`files`] with 64 KiB blocks.
fn cluster(workers: usize, extra: usize) -> Cluster {
    let root = tempfile::tempdir().unwrap();
    let bed = Bed::new(1 + workers + extra, None);
    let s3 = S3Server::start_on(bed.host(0), &root.path().join("s3.log"));
    s3.create_bucket("bed");
    let files = files();
    for (k, v) in &files {
        s3.put("bed", &format!("data/{k}"), v);
    }
    let master =
        start_master(&root.path().join("master"), &format!("{}:0", bed.gateway()), &root.path().join("master.log"));
    let mut c = Cluster { mounts: Vec::new(), workers: BTreeMap::new(), master, _s3: s3, bed, root, files };
    for i in 1..=workers {
        c.start_worker(i);
    }
    c._s3.create_dataset(&c.master.addr, "ds", "s3://bed/data");
    c
}

impl Cluster {
    /// Worker `w{i}` on host `i` (node name `h{i}`); waits until it is registered.
    fn start_worker(&mut self, i: usize) {
        let p = start_bed_worker(self.bed.host(i), i, &self.master.addr, self.root.path());
        self.workers.insert(format!("w{i}"), p);
    }

    /// A mount of `ds` on host `i` (node `h{i}`: its worker, if any, is local).
    fn mount(&mut self, i: usize) -> PathBuf {
        let host = self.bed.host(i).clone();
        let mnt = self.root.path().join(format!("mnt{i}"));
        std::fs::create_dir_all(&mnt).unwrap();
        let node = format!("h{i}");
        let m = mnt.to_str().unwrap().to_string();
        let args =
            ["mount", "ds", &m, "--master", &self.master.addr, "--node", &node, "--metrics-listen", &host.addr(0)];
        let p = Proc::start_on_until(&host, &args, &self.root.path().join(format!("mount{i}.log")), "mounted dataset ");
        assert!(shoal_fuse::is_mounted(&mnt));
        self.mounts.push((p, MountGuard(mnt.clone())));
        mnt
    }

    fn prewarm(&self, extra: &[&str]) {
        let mut args = vec!["prewarm", "ds", "--master", &self.master.addr];
        args.extend_from_slice(extra);
        let (code, out, err) = cli(&args);
        assert_eq!(code, 0, "{out}{err}");
    }

    /// Every block of the dataset: (file id, index) → its length.
    async fn blocks(&self) -> BTreeMap<BlockId, u64> {
        let mut m = master_client(&self.master.addr).await;
        let mut out = BTreeMap::new();
        let mut s = m.list_namespace(ListNamespaceRequest { dataset: "ds".into() }).await.unwrap().into_inner();
        while let Some(chunk) = s.message().await.unwrap() {
            for i in chunk.entries.iter().filter(|i| i.kind == FileKind::File as i32) {
                for index in 0..shoal_core::ids::block_count(i.size, BLOCK as u64) as u32 {
                    let (_, len) = shoal_core::ids::block_range(i.size, BLOCK as u64, index).unwrap();
                    out.insert(BlockId::new(i.file_id, index), len);
                }
            }
        }
        assert_eq!(out.len(), 30, "the files are 30 blocks");
        out
    }

    /// The master's location map of the dataset: block → worker ids.
    async fn locations(&self) -> BTreeMap<BlockId, BTreeSet<String>> {
        let mut m = master_client(&self.master.addr).await;
        let mut inodes = Vec::new();
        let mut s = m.list_namespace(ListNamespaceRequest { dataset: "ds".into() }).await.unwrap().into_inner();
        while let Some(chunk) = s.message().await.unwrap() {
            inodes.extend(chunk.entries.into_iter().filter(|i| i.kind == FileKind::File as i32));
        }
        let mut out = BTreeMap::new();
        for i in inodes {
            let r = m.get_block_locations(BlockLocationsRequest { dataset: "ds".into(), ino: i.ino }).await.unwrap();
            for b in r.into_inner().blocks {
                out.insert(BlockId::new(i.file_id, b.index), b.worker_ids.into_iter().collect());
            }
        }
        out
    }

    async fn workers(&self) -> Vec<WorkerInfo> {
        let mut m = master_client(&self.master.addr).await;
        m.list_workers(ListWorkersRequest {}).await.unwrap().into_inner().workers
    }

    /// A worker's counters (it must be reachable).
    async fn stats(&self, id: &str) -> shoal_proto::worker::StatsResponse {
        let mut w = worker_client(&self.workers[id].addr).await;
        w.stats(StatsRequest {}).await.unwrap().into_inner()
    }

    /// Sum of one counter over the given workers.
    async fn total(&self, ids: &[&str], f: impl Fn(&shoal_proto::worker::StatsResponse) -> u64) -> u64 {
        let mut sum = 0;
        for id in ids {
            sum += f(&self.stats(id).await);
        }
        sum
    }

    fn check_all(&self, mnt: &Path) {
        for (k, v) in &self.files {
            let got = std::fs::read(mnt.join(k)).unwrap_or_else(|e| panic!("read {k}: {e}"));
            assert!(got == *v, "{k}: {} bytes read, {} expected, or different bytes", got.len(), v.len());
        }
    }
}

/// The first `n` owners of `b` among `workers` by rendezvous rank.
fn owners(workers: &[&str], b: BlockId, n: usize) -> BTreeSet<String> {
    placement::rank(workers.iter().copied(), b).into_iter().take(n).map(String::from).collect()
}

/// Blocks fetched by a mount from each source.
fn fetched(mount: &Proc, source: &str) -> f64 {
    metric(&mount.metrics(), &format!("shoal_fuse_block_fetches_total{{source=\"{source}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_land_on_their_owners_and_a_remote_host_reads_them_from_the_holder() {
    let mut c = cluster(3, 0);
    c.prewarm(&[]);
    let blocks = c.blocks().await;
    let ws = ["w1", "w2", "w3"];
    let locs = c.locations().await;
    let mut per_worker: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (b, len) in &blocks {
        let want = owners(&ws, *b, 1);
        assert_eq!(locs.get(b), Some(&want), "block {b} is on its rendezvous owner only");
        let e = per_worker.entry(want.into_iter().next().unwrap()).or_default();
        e.0 += 1;
        e.1 += len;
    }
    assert_eq!(per_worker.len(), 3, "placement spreads the blocks over all three workers: {per_worker:?}");
    let misses = c.total(&ws, |s| s.misses).await;
    assert_eq!(misses, 30, "the prewarm read each block from the store once");

    // A mount on host 2: its own worker's blocks by short-circuit, the others
    // from the workers on hosts 1 and 3.
    let mnt = c.mount(2);
    c.check_all(&mnt);
    assert_eq!(c.total(&ws, |s| s.misses).await, misses, "no block was read from the store again");
    let mount = &c.mounts[0].0;
    assert_eq!(fetched(mount, "short_circuit"), per_worker["w2"].0 as f64);
    assert_eq!(fetched(mount, "worker"), (per_worker["w1"].0 + per_worker["w3"].0) as f64);
    assert_eq!(fetched(mount, "store"), 0.0);
    // Holders are looked up per file (shared by its blocks, reused for a few
    // seconds), not per block: at most once for the read and once for the
    // directory prefetch of each file, against one per block (30) before.
    let lookups = metric(&mount.metrics(), "shoal_fuse_location_lookups_total");
    assert!(lookups >= 1.0 && lookups <= 2.0 * c.files.len() as f64, "{lookups} lookups for {} files", c.files.len());
    for w in ["w1", "w3"] {
        let served = metric(&c.workers[w].metrics(), "shoal_worker_served_bytes_total{source=\"mem\"}");
        assert_eq!(served, per_worker[w].1 as f64, "{w} served exactly the bytes of the blocks it holds");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_read_the_store_once_and_survive_a_host_loss() {
    let mut c = cluster(3, 1);
    // One copy first, freed again: what the workers freed must not count as
    // still cached for the prewarm that follows (their reports lag).
    c.prewarm(&[]);
    let (code, out, err) = cli(&["cache", "free", "ds", "--master", &c.master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(c.locations().await.is_empty(), "freed blocks left the map at once");
    c.prewarm(&["--replicas", "2"]);
    let blocks = c.blocks().await;
    let dataset_bytes: u64 = blocks.values().sum();
    let ws = ["w1", "w2", "w3"];
    let locs = c.locations().await;
    for b in blocks.keys() {
        assert_eq!(locs.get(b), Some(&owners(&ws, *b, 2)), "block {b} is on its first two owners");
    }
    // The second copy of each block came from the first, not the store: the
    // store was read once per block by each prewarm.
    let store = c.total(&ws, |s| s.store_bytes).await;
    assert_eq!(store, 2 * dataset_bytes, "store bytes read = dataset bytes, per prewarm");
    assert_eq!(c.total(&ws, |s| s.peer_bytes).await, dataset_bytes, "every second copy is a peer copy");

    // Host 1 is lost (killed and cut off) before the master notices; a mount on
    // host 4 (no worker) reads every byte from the surviving copies.
    let mnt = c.mount(4);
    c.workers.get_mut("w1").unwrap().kill9();
    c.bed.partition(1);
    c.check_all(&mnt);
    let mount = &c.mounts[0].0;
    assert_eq!(fetched(mount, "failed"), 0.0);
    assert_eq!(fetched(mount, "store"), 0.0, "every block came from a surviving replica");
    assert_eq!(fetched(mount, "worker"), 30.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_hosts_blocks_leave_the_map_and_come_back() {
    let c = cluster(3, 0);
    c.prewarm(&[]);
    let before = c.locations().await;
    let held: usize = before.values().filter(|h| h.contains("w2")).count();
    assert!(held > 0);
    c.bed.partition(2);
    wait_for("w2 to be declared lost and leave the map", || async {
        let lost = c.workers().await.iter().any(|w| w.id == "w2" && !w.alive);
        lost && c.locations().await.values().all(|h| !h.contains("w2"))
    })
    .await;
    assert_eq!(c.locations().await.len(), before.len() - held, "only w2's blocks left the map");
    c.bed.heal(2);
    wait_for("w2 to come back with its blocks", || async {
        c.workers().await.iter().any(|w| w.id == "w2" && w.alive) && c.locations().await == before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_workers_blocks_move_to_their_new_owners_while_reads_go_on() {
    let mut c = cluster(3, 1);
    c.prewarm(&[]);
    let blocks = c.blocks().await;
    let ws = ["w1", "w2", "w3"];
    let before = c.locations().await;
    let on_w2: Vec<BlockId> = before.iter().filter(|(_, h)| h.contains("w2")).map(|(b, _)| *b).collect();
    assert!(!on_w2.is_empty());
    let misses = c.total(&ws, |s| s.misses).await;
    let misses13 = c.total(&["w1", "w3"], |s| s.misses).await;

    // Readers on host 4 go on reading everything while w2 drains.
    let mnt = c.mount(4);
    let stop = Arc::new(AtomicBool::new(false));
    let passes = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, passes, files, mnt) = (stop.clone(), passes.clone(), c.files.clone(), mnt.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for (k, v) in &files {
                    // A fresh open each time; the page cache may answer.
                    let got = std::fs::read(mnt.join(k)).unwrap_or_else(|e| panic!("read {k} during the drain: {e}"));
                    assert!(got == *v, "{k} changed during the drain");
                }
                passes.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let (code, out, err) = cli(&["worker", "drain", "w2", "--master", &c.master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("worker w2 drained"), "{out}");
    let done_at = passes.load(Ordering::SeqCst);
    wait_for_sync("a full read pass after the drain", || passes.load(Ordering::SeqCst) > done_at);
    stop.store(true, Ordering::SeqCst);
    reader.join().expect("no read failed during the drain");

    // Every block of w2 is on its owner among w1 and w3, copied from w2.
    let after = c.locations().await;
    for b in &on_w2 {
        let h = &after[b];
        assert!(!h.contains("w2"), "a drained worker leaves the map");
        assert!(h.is_superset(&owners(&["w1", "w3"], *b, 1)), "block {b} moved to its new owner: {h:?}");
    }
    assert_eq!(after.len(), blocks.len(), "no block was lost");
    assert_eq!(c.total(&ws, |s| s.misses).await, misses, "the drain read nothing from the store");
    assert_eq!(c.total(&["w1", "w3"], |s| s.peer_reads).await, on_w2.len() as u64);
    let w2 = c.workers().await.into_iter().find(|w| w.id == "w2").unwrap();
    assert!(w2.draining && w2.block_count == 0, "{w2:?}");
    let (_, out, _) = cli(&["workers", "--master", &c.master.addr]);
    assert!(out.lines().any(|l| l.starts_with("w2") && l.contains("draining")), "{out}");

    // w2 can go now: a new mount on another host reads everything without it
    // and without the store.
    c.workers.get_mut("w2").unwrap().kill9();
    c.bed.partition(2);
    let mnt1 = c.mount(1);
    c.check_all(&mnt1);
    assert_eq!(c.total(&["w1", "w3"], |s| s.misses).await, misses13, "nothing was read from the store");
    assert_eq!(fetched(&c.mounts[1].0, "failed"), 0.0);
    assert_eq!(fetched(&c.mounts[1].0, "store"), 0.0);
    assert_eq!(fetched(&c.mounts[0].0, "failed"), 0.0);

    // Undo puts it back into placement; an unknown worker is a clear error.
    let (code, out, err) = cli(&["worker", "drain", "w2", "--undo", "--master", &c.master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!c.workers().await.iter().any(|w| w.id == "w2" && w.draining));
    let (code, _, err) = cli(&["worker", "drain", "nope", "--master", &c.master.addr]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("nope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_worker_takes_the_blocks_it_now_owns_from_their_holders() {
    let mut c = cluster(2, 1);
    c.prewarm(&[]);
    let blocks = c.blocks().await;
    let before = c.locations().await;
    let ws = ["w1", "w2", "w3"];
    let moving: Vec<BlockId> = blocks.keys().filter(|b| owners(&ws, **b, 1).contains("w3")).copied().collect();
    assert!(!moving.is_empty(), "w3 owns some blocks");
    let misses = c.total(&["w1", "w2"], |s| s.misses).await;
    c.start_worker(3);
    wait_for("the blocks w3 now owns to be copied to it", || async {
        let now = c.locations().await;
        moving.iter().all(|b| now.get(b).is_some_and(|h| h.contains("w3")))
    })
    .await;
    let w3 = c.stats("w3").await;
    assert_eq!((w3.misses, w3.store_bytes), (0, 0), "w3 read nothing from the store");
    assert_eq!(w3.peer_reads, moving.len() as u64, "w3 copied exactly the blocks it owns");
    assert_eq!(c.total(&["w1", "w2"], |s| s.misses).await, misses);
    // The old copies stay where they were (left to eviction).
    let now = c.locations().await;
    for (b, h) in &before {
        assert!(now[b].is_superset(h));
    }
}
