//! Master high availability on the multi-host bed (`common/bed.rs`): three
//! masters on three hosts replicate their state by Raft, workers and mounts
//! name all three and follow the leader. The tests prove that
//! - `kill -9` of the leader under eight readers costs no read error, the
//!   metadata API answers again (a new leader), a new mount works, and every
//!   dataset and prewarm job acknowledged before the kill is still there (the
//!   job runs on to its end under the new leader);
//! - the killed master restarts as a follower and catches up;
//! - a master added to the group later is sent a snapshot (its log was
//!   purged) and then holds the whole namespace, inode for inode.
//!
//! Timings are printed; the release figures (and the 1M-file namespace) are in
//! `benches/RESULTS.md` (`cargo bench --bench ha`).

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::bed::Bed;
use common::*;

const PORT: u16 = 7700;

/// Processes first (dropped before the bed their hosts live on).
struct Group {
    mounts: Vec<(Proc, MountGuard)>,
    workers: Vec<Proc>,
    masters: BTreeMap<u64, Proc>,
    s3: S3Server,
    bed: Bed,
    root: tempfile::TempDir,
    /// `--peers` of the group.
    peers: String,
    /// `--master` for clients: every master.
    list: String,
}

impl Group {
    /// The store on host 0, masters 1..=3 on hosts 1..=3 (with a worker each),
    /// and `clients` more hosts for mounts.
    fn new(clients: usize, master_args: &[&str]) -> Group {
        let root = tempfile::tempdir().unwrap();
        let bed = Bed::new(4 + clients, None);
        let s3 = S3Server::start_on(bed.host(0), &root.path().join("s3.log"));
        let peers = (1..=3).map(|i| format!("{i}={}", bed.host(i).addr(PORT))).collect::<Vec<_>>().join(",");
        let list = (1..=3).map(|i| bed.host(i).addr(PORT)).collect::<Vec<_>>().join(",");
        let mut g =
            Group { mounts: Vec::new(), workers: Vec::new(), masters: BTreeMap::new(), s3, bed, root, peers, list };
        for i in 1..=3 {
            g.start_master(i, i as usize, master_args);
        }
        g.wait_serving();
        g
    }

    /// Master `id` on host `host`, one of the group named by `self.peers`
    /// (plus itself, if it is new).
    fn start_master(&mut self, id: u64, host: usize, extra: &[&str]) {
        let h = self.bed.host(host).clone();
        let dir = self.root.path().join(format!("m{id}"));
        let (listen, metrics, root) = (h.addr(PORT), h.addr(0), self.root.path().to_str().unwrap().to_string());
        let peers = if self.peers.contains(&format!("{id}=")) {
            self.peers.clone()
        } else {
            format!("{},{id}={listen}", self.peers)
        };
        let id_s = id.to_string();
        let mut args = vec![
            "master",
            "--id",
            &id_s,
            "--peers",
            &peers,
            "--listen",
            &listen,
            "--data-dir",
            dir.to_str().unwrap(),
            "--allow-local-root",
            &root,
            "--heartbeat-interval",
            "200ms",
            "--lost-worker-timeout",
            "3s",
            "--stale-block-grace",
            "1s",
            "--metrics-listen",
            &metrics,
        ];
        args.extend_from_slice(extra);
        let p = Proc::start_on(&h, &args, &self.root.path().join(format!("m{id}.log")));
        self.masters.insert(id, p);
    }

    /// `shoal master status -o json` of the group.
    fn status(&self) -> Option<serde_json::Value> {
        let (code, out, _) = cli(&["master", "status", "-o", "json", "--master", &self.list]);
        (code == 0).then(|| serde_json::from_str(&out).unwrap())
    }

    /// Wait until a master serves; its id.
    fn wait_serving(&self) -> u64 {
        let mut leader = 0;
        wait_for_sync("a master to lead and serve", || {
            leader = self
                .status()
                .and_then(|s| {
                    s["masters"].as_array()?.iter().find(|m| m["serving"] == true).and_then(|m| m["id"].as_u64())
                })
                .unwrap_or(0);
            leader != 0
        });
        leader
    }

    /// A worker on host `i`, following the group.
    fn start_worker(&mut self, i: usize) {
        let p = start_bed_worker(self.bed.host(i), i, &self.list, self.root.path());
        self.workers.push(p);
    }

    /// A mount of `ds` on host `i`.
    fn mount(&mut self, i: usize, tag: &str) -> PathBuf {
        let h = self.bed.host(i).clone();
        let mnt = self.root.path().join(format!("mnt-{tag}"));
        std::fs::create_dir_all(&mnt).unwrap();
        let m = mnt.to_str().unwrap().to_string();
        let node = format!("h{i}");
        // A small block cache: reads go to the workers, not the mount's memory.
        let args = [
            "mount",
            "ds",
            &m,
            "--master",
            &self.list,
            "--node",
            &node,
            "--cache-size",
            "1MiB",
            "--metrics-listen",
            &h.addr(0),
        ];
        let p = Proc::start_on_until(&h, &args, &self.root.path().join(format!("mount-{tag}.log")), "mounted dataset ");
        assert!(shoal_fuse::is_mounted(&mnt));
        self.mounts.push((p, MountGuard(mnt.clone())));
        mnt
    }

    fn create_s3_dataset(&self, name: &str, prefix: &str) {
        self.s3.create_dataset(&self.list, name, &format!("s3://ha-bed/{prefix}"));
    }
}

/// Read errors, as messages.
type Errors = Arc<Mutex<Vec<String>>>;

fn files(n: u64) -> BTreeMap<String, Vec<u8>> {
    (0..n).map(|i| (format!("f{i:02}.bin"), content(100 + i, 40_000 + 30_000 * (i as usize % 5)))).collect()
}

/// Read every file over and over on `threads` threads until `stop`, while the
/// kernel's page cache is dropped every 100 ms (so reads reach the mount, and
/// through its small block cache, the workers); (reads, errors).
fn readers(
    mnt: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    threads: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<std::thread::JoinHandle<()>>, Arc<AtomicU64>, Errors) {
    let reads = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let dropper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let handles = (0..threads)
        .map(|t| {
            let (mnt, files, stop, reads, errors) =
                (mnt.to_path_buf(), files.clone(), stop.clone(), reads.clone(), errors.clone());
            std::thread::spawn(move || {
                let names: Vec<&String> = files.keys().collect();
                let mut i = t;
                while !stop.load(Ordering::SeqCst) {
                    let name = names[i % names.len()];
                    match std::fs::read(mnt.join(name)) {
                        Ok(got) if got == files[name] => {}
                        Ok(got) => errors.lock().unwrap().push(format!("{name}: {} bytes, wrong content", got.len())),
                        Err(e) => errors.lock().unwrap().push(format!("{name}: {e}")),
                    }
                    reads.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
            })
        })
        .chain([dropper])
        .collect();
    (handles, reads, errors)
}

#[test]
fn killing_the_leader_under_eight_readers_costs_no_read_error_and_loses_no_acknowledged_write() {
    let mut g = Group::new(1, &[]);
    g.s3.create_bucket("ha-bed");
    let files = files(24);
    for (k, v) in &files {
        g.s3.put("ha-bed", &format!("data/{k}"), v);
        g.s3.put("ha-bed", &format!("more/{k}"), v);
    }
    // 40 MiB for a prewarm job that is still running when the leader dies.
    for i in 0..40u64 {
        g.s3.put("ha-bed", &format!("slow/s{i:02}"), &content(900 + i, 1 << 20));
    }
    for i in 1..=3 {
        g.start_worker(i);
    }
    // Acknowledged before the kill: two datasets, a cache policy and a job.
    g.create_s3_dataset("ds", "data");
    g.create_s3_dataset("ds2", "more");
    g.create_s3_dataset("ds3", "slow");
    let (code, out, err) = cli(&["dataset", "pin", "ds2", "--master", &g.list]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(&["prewarm", "ds", "--detach", "--master", &g.list]);
    assert_eq!(code, 0, "{out}{err}");
    let job = out.split("started prewarm job ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap().to_string();

    let mnt = g.mount(4, "a");
    let stop = Arc::new(AtomicBool::new(false));
    let (handles, reads, errors) = readers(&mnt, &files, 8, stop.clone());
    wait_for_sync("the readers to get going", || reads.load(Ordering::SeqCst) >= 100);

    // A job one block at a time, running when the leader dies.
    let (code, out, err) = cli(&["prewarm", "ds3", "--detach", "--parallel", "1", "--master", &g.list]);
    assert_eq!(code, 0, "{out}{err}");
    let running =
        out.split("started prewarm job ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap().to_string();
    let first_leader = g.wait_serving();
    let list = g.list.clone();
    let job_state = |id: &str| -> serde_json::Value {
        let (_, out, _) = cli(&["prewarm", "status", id, "-o", "json", "--master", &list]);
        serde_json::from_str(&out).unwrap_or_default()
    };
    let before = job_state(&running);
    assert_eq!(before["state"], "running", "the job must still run when the leader dies: {before}");
    let killed = Instant::now();
    g.masters.get_mut(&first_leader).unwrap().kill9();
    wait_for_sync("a new leader to answer `dataset show`", || {
        cli(&["dataset", "show", "ds", "--master", &g.list]).0 == 0
    });
    let answered = killed.elapsed();
    let new_leader = g.wait_serving();
    assert_ne!(new_leader, first_leader);
    let mnt2 = g.mount(4, "b");
    let mounted = killed.elapsed();
    for (k, v) in &files {
        assert!(std::fs::read(mnt2.join(k)).unwrap() == *v, "{k} through the mount made after the failover");
    }
    // Reads go on a while longer under the new leader.
    let at = reads.load(Ordering::SeqCst);
    wait_for_sync("reads under the new leader", || reads.load(Ordering::SeqCst) >= at + 200);
    stop.store(true, Ordering::SeqCst);
    for h in handles {
        h.join().unwrap();
    }
    let errors = errors.lock().unwrap().clone();
    println!(
        "leader {first_leader} killed: metadata answered after {answered:?} (leader {new_leader}), a new mount after {mounted:?}; {} reads, {} errors",
        reads.load(Ordering::SeqCst),
        errors.len()
    );
    assert!(errors.is_empty(), "read errors across the failover: {:?}", &errors[..errors.len().min(5)]);

    // Nothing acknowledged was lost.
    for ds in ["ds", "ds2"] {
        let (code, out, err) = cli(&["dataset", "show", ds, "-o", "json", "--master", &g.list]);
        assert_eq!(code, 0, "{ds}: {out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["file_count"], 24, "{ds}: {v}");
    }
    let (_, out, _) = cli(&["dataset", "show", "ds2", "-o", "json", "--master", &g.list]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pinned"], true, "the pin of ds2 survived: {v}");
    for id in [&job, &running] {
        wait_for_sync("the prewarm jobs to finish under the new leader", || {
            let v = job_state(id);
            assert!(v["state"] != "failed" && v["state"] != "cancelled", "the job ended badly: {v}");
            v["state"] == "completed"
        });
    }
    let after = job_state(&running);
    assert_eq!(after["blocks_total"], 640, "{after}");
    assert_eq!(after["blocks_cached_at_end"], 640, "the resumed job cached every block: {after}");

    // The killed master comes back as a follower and catches up.
    let host = first_leader as usize;
    g.start_master(first_leader, host, &[]);
    wait_for_sync("the restarted master to catch up", || {
        g.status().is_some_and(|s| {
            let ms = s["masters"].as_array().unwrap();
            let leader = ms.iter().find(|m| m["serving"] == true).cloned();
            let me = ms.iter().find(|m| m["id"] == first_leader).cloned();
            match (leader, me) {
                (Some(l), Some(me)) => me["state"] == "Follower" && me["last_applied"] == l["last_applied"],
                _ => false,
            }
        })
    });
}

#[test]
fn a_master_added_later_is_sent_a_snapshot_and_holds_the_whole_namespace() {
    // Snapshots every 4 writes, 1 kept behind: a new master's log is long purged.
    let mut g = Group::new(1, &["--snapshot-every", "4", "--keep-logs", "1"]);
    let src = g.root.path().join("src");
    let n = 20_000;
    for d in 0..20 {
        std::fs::create_dir_all(src.join(format!("d{d:02}"))).unwrap();
    }
    for i in 0..n {
        std::fs::write(src.join(format!("d{:02}/f{i:05}", i % 20)), i.to_string()).unwrap();
    }
    let uri = format!("file://{}", src.display());
    let (code, out, err) = cli(&["dataset", "create", "big", &uri, "--master", &g.list]);
    assert_eq!(code, 0, "{out}{err}");

    let started = Instant::now();
    g.start_master(4, 4, &["--snapshot-every", "4", "--keep-logs", "1"]);
    let new = g.bed.host(4).addr(PORT);
    let (code, out, err) = cli(&["master", "add", "4", &new, "--master", &g.list]);
    assert_eq!(code, 0, "{out}{err}");
    let added = started.elapsed();
    let m4 = &g.masters[&4];
    let log = |id: u64| std::fs::read_to_string(g.root.path().join(format!("m{id}.log"))).unwrap_or_default();
    assert!(
        metric(&m4.metrics(), "shoal_master_raft_snapshots_installed_total") >= 1.0,
        "no snapshot was installed; master 4:\n{}\nstatus: {:?}",
        log(4),
        g.status()
    );
    wait_for_sync("the leader to count master 4 a voter", || {
        g.status().is_some_and(|s| {
            s["masters"].as_array().unwrap().iter().any(|m| {
                m["serving"] == true
                    && m["members"].as_array().unwrap().iter().any(|x| x["id"] == 4 && x["voter"] == true)
            })
        })
    });

    // The namespace on master 4's own disk is the leader's, inode for inode.
    let want = namespace_of(&g.list, "big");
    assert_eq!(want.len(), n + 20);
    let mut m4 = g.masters.remove(&4).unwrap();
    m4.kill9();
    let copy = g.root.path().join("m4-copy");
    copy_dir(&g.root.path().join("m4/meta"), &copy);
    let meta = shoal_master::meta::MetaStore::open_replicated(&copy).unwrap();
    let info = meta.get_dataset("big").unwrap().unwrap();
    assert_eq!(info.file_count, n as u64);
    let mut got = BTreeMap::new();
    meta.scan_inodes(info.id, |i| {
        if i.ino != 1 {
            got.insert(i.ino, (i.name, i.parent, i.file_id, i.size));
        }
        Ok(())
    })
    .unwrap();
    assert!(got == want, "master 4 holds {} inodes, the leader {}; or they differ", got.len(), want.len());
    println!("master 4 joined with {} inodes in {added:?}", got.len());
}

type Namespace = BTreeMap<u64, (String, u64, u64, u64)>;

/// Every inode of `dataset` as the leader serves it.
fn namespace_of(list: &str, dataset: &str) -> Namespace {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut m = shoal_proto::auth::master(list, |ep| ep.connect_timeout(Duration::from_secs(5))).unwrap();
        let req = shoal_proto::master::ListNamespaceRequest { dataset: dataset.into() };
        let mut s = m.list_namespace(req).await.unwrap().into_inner();
        let mut out = BTreeMap::new();
        while let Some(chunk) = s.message().await.unwrap() {
            for i in chunk.entries.into_iter().filter(|i| i.ino != 1) {
                out.insert(i.ino, (i.name, i.parent, i.file_id, i.size));
            }
        }
        out
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
