//! shoal as a cluster, on the multi-host test bed of the end-to-end tests
//! (`cli/tests/common/bed.rs`: hosts are network namespaces on a bridge, each
//! link capped by `tbf`), with the remote-like S3 store of the other benchmarks
//! (s3s-fs behind a delay line) routed to them. The release `shoal` binary runs
//! the master (on the bridge's gateway), three workers on hosts 0-2, a mount on
//! host 3 and a joining worker on host 4. Measured, in order:
//!
//! 1. prewarm with `--replicas 1` and `--replicas 3`: time, and store bytes read
//!    over dataset bytes (a per-node warmup, as a cache without peer copies does
//!    it, reads the store once per replica: 3.0);
//! 2. `kill -9` and partition of a worker's host under eight readers of the mount:
//!    read errors, the longest a read took, and how long the master took to
//!    declare the worker lost;
//! 3. a worker joining: time until it holds every block it now owns, and what it
//!    read from the store;
//! 4. `shoal worker drain` of another worker: time, bytes moved, store bytes.
//!
//! ```text
//! cargo build --release -p shoal
//! cargo bench -p shoal-benches --bench cluster [-- --files N] [--file-mib M] [--no-write]
//! ```
//!
//! Root only. Results go to `benches/RESULTS.md` between the `cluster` markers.

#[path = "../../cli/tests/common/bed.rs"]
mod bed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_benches::procs::{cli, Proc};
use shoal_benches::remote::{self, Network, RemoteStore, ACCESS_KEY, BUCKET, SECRET_KEY};
use shoal_benches::shoal_bin;
use shoal_proto::master::ListWorkersRequest;
use shoal_proto::worker::StatsRequest;

const READERS: usize = 8;
const LINK_MBIT: u64 = 2000;

struct Bench {
    rt: tokio::runtime::Runtime,
    dir: PathBuf,
    bed: bed::Bed,
    master: Proc,
    workers: BTreeMap<String, Proc>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    store_bytes: u64,
    peer_bytes: u64,
}

impl Bench {
    fn start_worker(&mut self, host: usize, id: &str) -> Result<()> {
        let h = self.bed.host(host).clone();
        let wdir = self.dir.join(id);
        let tiers = [format!("mem:{}:2GiB", wdir.join("mem").display())];
        let (listen, metrics) = (h.addr(0), h.addr(0));
        let node = format!("h{host}");
        let args = [
            "worker",
            "--master",
            &self.master.addr,
            "--listen",
            &listen,
            "--id",
            id,
            "--node",
            &node,
            "--metrics-listen",
            &metrics,
            "--tier",
            &tiers[0],
        ];
        let p = Proc::start(
            h.command(&shoal_bin()?.to_string_lossy()),
            &args,
            &self.dir.join(format!("{id}.log")),
            "listening on ",
        )?;
        self.workers.insert(id.to_string(), p);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.alive(id)? {
            if Instant::now() > deadline {
                bail!("worker {id} did not register");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn alive(&self, id: &str) -> Result<bool> {
        let addr = self.master.addr.clone();
        let id = id.to_string();
        self.rt.block_on(async move {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
            let ws = shoal_proto::master::master_client::MasterClient::new(ch)
                .list_workers(ListWorkersRequest {})
                .await?
                .into_inner()
                .workers;
            Ok(ws.iter().any(|w| w.id == id && w.alive))
        })
    }

    /// Store and peer bytes summed over the workers that still answer.
    fn counters(&self) -> Counters {
        let addrs: Vec<String> = self.workers.values().map(|p| p.addr.clone()).collect();
        self.rt.block_on(async move {
            let mut c = Counters::default();
            for a in addrs {
                let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{a}")) else { continue };
                let ep = ep.connect_timeout(Duration::from_secs(1)).timeout(Duration::from_secs(5));
                let mut w = shoal_proto::worker::worker_client::WorkerClient::new(ep.connect_lazy());
                if let Ok(s) = w.stats(StatsRequest {}).await {
                    let s = s.into_inner();
                    c.store_bytes += s.store_bytes;
                    c.peer_bytes += s.peer_bytes;
                }
            }
            c
        })
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() -> Result<()> {
    if let Some(done) = remote::delay_proxy_main() {
        return done;
    }
    let (mut files, mut file_mib, mut write) = (100usize, 4usize, true);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => {}
            "--files" => files = it.next().context("--files N")?.parse()?,
            "--file-mib" => file_mib = it.next().context("--file-mib M")?.parse()?,
            "--no-write" => write = false,
            other => bail!("unknown argument {other:?} (see the top of benches/benches/cluster.rs)"),
        }
    }
    let dir = PathBuf::from("/var/tmp/shoal-cluster-bench");
    let _ = Command::new("sh").arg("-c").arg(format!("umount -l {}/mnt 2>/dev/null", dir.display())).status();
    let _ = std::fs::remove_dir_all(&dir);
    let store_root = dir.join("store");
    std::fs::create_dir_all(store_root.join(BUCKET).join("c"))?;
    // Dataset paths (the dataset is the store's prefix c/).
    let mut source = BTreeMap::new();
    for i in 0..files {
        let data = shoal_benches::content(i as u64 + 1, file_mib << 20);
        let name = format!("f{i:04}.bin");
        std::fs::write(store_root.join(BUCKET).join("c").join(&name), &data)?;
        source.insert(name, data);
    }
    let dataset_bytes = (files * (file_mib << 20)) as u64;
    let net = Network { delay: Duration::from_millis(5), mbit: LINK_MBIT };
    let store = RemoteStore::start(&store_root, &net, &remote::s3_server_binary()?, &std::env::current_exe()?)?;
    store.route_for_other_hosts()?;
    let bed = bed::Bed::new(5, Some(LINK_MBIT));
    let master = Proc::start(
        Command::new(shoal_bin()?),
        &[
            "master",
            "--data-dir",
            &dir.join("master").to_string_lossy(),
            "--listen",
            &format!("{}:0", bed.gateway()),
            "--heartbeat-interval",
            "500ms",
            "--lost-worker-timeout",
            "3s",
            "--metrics-listen",
            "",
        ],
        &dir.join("master.log"),
        "listening on ",
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut b = Bench { rt, dir: dir.clone(), bed, master, workers: BTreeMap::new() };
    for (h, id) in [(0, "w1"), (1, "w2"), (2, "w3")] {
        b.start_worker(h, id)?;
    }
    let m = b.master.addr.clone();
    cli(&[
        "dataset",
        "create",
        "c",
        &format!("s3://{BUCKET}/c"),
        "--option",
        &format!("endpoint={}", store.endpoint),
        "--option",
        &format!("access_key_id={ACCESS_KEY}"),
        "--option",
        &format!("secret_access_key={SECRET_KEY}"),
        "--option",
        "region=us-east-1",
        "--block-size",
        "4MiB",
        "--master",
        &m,
    ])?;
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let gib = dataset_bytes as f64 / (1u64 << 30) as f64;
    eprintln!("dataset: {files} files of {file_mib} MiB ({gib:.2} GiB)");

    // 1. Prewarm with one and three replicas.
    for replicas in ["1", "3"] {
        cli(&["cache", "free", "c", "--master", &m])?;
        let before = b.counters();
        let t = Instant::now();
        cli(&["prewarm", "c", "--replicas", replicas, "--parallel", "32", "--master", &m])?;
        let took = t.elapsed();
        let after = b.counters();
        let store = after.store_bytes - before.store_bytes;
        let peer = after.peer_bytes - before.peer_bytes;
        let ratio = store as f64 / dataset_bytes as f64;
        let copies = b.rt.block_on(copies_in_map(&m))?;
        eprintln!("prewarm --replicas {replicas}: {took:?}, store/dataset {ratio:.3}, peer {peer}");
        rows.push((
            format!("prewarm `--replicas {replicas}`"),
            secs(took),
            format!(
                "store bytes / dataset bytes = **{ratio:.3}** (a per-node warmup: {replicas}.0); {:.0} MiB/s of replicas written; {:.0} MiB copied between workers; {copies} block copies in the map",
                (dataset_bytes * replicas.parse::<u64>()?) as f64 / took.as_secs_f64() / (1 << 20) as f64,
                peer as f64 / (1 << 20) as f64
            ),
        ));
    }

    // 2. A worker's host lost under eight readers of a mount on host 3.
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let h3 = b.bed.host(3).clone();
    let _mount = Proc::start(
        h3.command(&shoal_bin()?.to_string_lossy()),
        // A block cache far smaller than the data: reads go to the workers.
        &["mount", "c", &mnt.to_string_lossy(), "--master", &m, "--node", "h3", "--cache-size", "32MiB"],
        &dir.join("mount.log"),
        "mounted dataset ",
    )?;
    let source = Arc::new(source);
    let stop = Arc::new(AtomicBool::new(false));
    let (errors, reads) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let lost_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (source, stop, errors, reads, slowest, mnt, lost_at) = (
                source.clone(),
                stop.clone(),
                errors.clone(),
                reads.clone(),
                slowest.clone(),
                mnt.clone(),
                lost_at.clone(),
            );
            std::thread::spawn(move || {
                let names: Vec<&String> = source.keys().collect();
                let mut i = r * 7;
                while !stop.load(Ordering::SeqCst) {
                    let name = names[i % names.len()];
                    i += 1;
                    // Past the page cache: each read goes to the mount.
                    let t = Instant::now();
                    let ok = Command::new("dd")
                        .arg(format!("if={}", mnt.join(name).display()))
                        .args(["of=/dev/null", "bs=1M", "iflag=direct", "status=none"])
                        .status()
                        .is_ok_and(|s| s.success());
                    let took = t.elapsed();
                    if lost_at.lock().unwrap().is_some_and(|l| t >= l) {
                        let mut s = slowest.lock().unwrap();
                        *s = (*s).max(took);
                    }
                    if !ok {
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                    reads.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    *lost_at.lock().unwrap() = Some(t);
    let reads_before = reads.load(Ordering::SeqCst);
    b.workers.get_mut("w1").context("w1")?.kill9();
    b.bed.partition(0);
    while b.alive("w1")? {
        std::thread::sleep(Duration::from_millis(50));
    }
    let declared = t.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        let _ = r.join();
    }
    let during = reads.load(Ordering::SeqCst) - reads_before;
    let (errs, slow) = (errors.load(Ordering::SeqCst), *slowest.lock().unwrap());
    eprintln!("host loss: {errs} errors in {during} reads, slowest {slow:?}, lost after {declared:?}");
    b.workers.remove("w1");
    rows.push((
        format!("`kill -9` + partition of a worker's host, {READERS} readers (O_DIRECT)"),
        format!("{} read errors", errs),
        format!(
            "{during} whole-file reads after the loss; the slowest took {}; the master declared it lost after {} (`--lost-worker-timeout 3s`)",
            secs(slow),
            secs(declared)
        ),
    ));

    // 3. A worker joins: the blocks it now owns are copied to it.
    let before = b.counters();
    let t = Instant::now();
    b.start_worker(4, "w4")?;
    // Every block has two copies now (w2 and w3): w4 should hold those it
    // ranks first or second for.
    let want = b.rt.block_on(owned_by(&m, "w4", &["w2", "w3", "w4"], 2))?;
    // Done when w4's copies stop for 3 s; the time is that of its last copy.
    let (mut copied, mut last) = (0, t.elapsed());
    while t.elapsed() < Duration::from_secs(120) && (copied == 0 || t.elapsed() - last < Duration::from_secs(3)) {
        let n = b.rt.block_on(worker_stats(&b.workers["w4"].addr))?.peer_reads;
        if n != copied {
            (copied, last) = (n, t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = last;
    let held = b.rt.block_on(held_by(&m, "w4"))?;
    let after = b.counters();
    rows.push((
        "a worker joins (rebalance)".into(),
        secs(took),
        format!(
            "{copied} blocks copied to it from their holders ({:.0} MiB; it ranks first or second for {want}, and the map shows it holding {held}); store bytes read: {}",
            (after.peer_bytes - before.peer_bytes) as f64 / (1 << 20) as f64,
            after.store_bytes - before.store_bytes
        ),
    ));

    // 4. Drain w2.
    let before = b.counters();
    let t = Instant::now();
    let out = cli(&["worker", "drain", "w2", "--master", &m])?;
    let took = t.elapsed();
    let after = b.counters();
    let moved = after.peer_bytes - before.peer_bytes;
    eprintln!("drain: {took:?} {}", out.trim());
    rows.push((
        "`shoal worker drain w2`".into(),
        secs(took),
        format!(
            "{:.0} MiB copied to the new owners ({:.0} MiB/s); store bytes read: {}",
            moved as f64 / (1 << 20) as f64,
            moved as f64 / took.as_secs_f64() / (1 << 20) as f64,
            after.store_bytes - before.store_bytes
        ),
    ));

    let mut md = format!(
        "## A cluster on the test bed (issue 18)\n\n`cargo build --release -p shoal && cargo bench -p shoal-benches --bench cluster`\n\n\
         {files} files of {file_mib} MiB ({gib:.2} GiB), 4 MiB blocks; the mount's block cache is 32 MiB, so its reads go to the workers. Five hosts (network namespaces) on a bridge, every link \
         capped at {LINK_MBIT} Mbit/s each way; the store is s3s-fs behind 5 ms each way and {LINK_MBIT} Mbit/s; three \
         workers with a 2 GiB MEM tier each, a mount on a fourth host, a fifth worker joining later. All on this 2-core machine.\n\n\
         | step | result | detail |\n|---|---:|---|\n"
    );
    for (a, b, c) in &rows {
        md.push_str(&format!("| {a} | {b} | {c} |\n"));
    }
    print!("{md}");
    if write {
        let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md");
        shoal_benches::report::replace_section(&results, "cluster", &md)?;
    }
    drop(b);
    drop(store);
    Ok(())
}

async fn master(addr: &str) -> Result<shoal_proto::master::master_client::MasterClient<tonic::transport::Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
    Ok(shoal_proto::master::master_client::MasterClient::new(ch))
}

/// Blocks of dataset `c` that `id` owns (among the first `copies` by rank) among `workers`.
async fn owned_by(addr: &str, id: &str, workers: &[&str], copies: usize) -> Result<u64> {
    let mut m = master(addr).await?;
    let info = m.get_dataset(shoal_proto::master::GetDatasetRequest { name: "c".into() }).await?.into_inner();
    let bs = info.spec.and_then(|s| s.cache).map(|c| c.block_size).unwrap_or(4 << 20);
    let mut s = m.list_namespace(shoal_proto::master::ListNamespaceRequest { dataset: "c".into() }).await?.into_inner();
    let mut n = 0;
    while let Some(chunk) = s.message().await? {
        for i in chunk.entries.iter().filter(|i| i.kind == shoal_proto::master::FileKind::File as i32) {
            for index in 0..shoal_core::ids::block_count(i.size, bs) as u32 {
                let b = shoal_core::BlockId::new(i.file_id, index);
                if shoal_core::placement::rank(workers.iter().copied(), b).iter().take(copies).any(|w| *w == id) {
                    n += 1;
                }
            }
        }
    }
    Ok(n)
}

async fn worker_stats(addr: &str) -> Result<shoal_proto::worker::StatsResponse> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
    Ok(shoal_proto::worker::worker_client::WorkerClient::new(ch).stats(StatsRequest {}).await?.into_inner())
}

/// Block copies the master's map holds, over all workers.
async fn copies_in_map(addr: &str) -> Result<u64> {
    let mut m = master(addr).await?;
    let ws = m.list_workers(ListWorkersRequest {}).await?.into_inner().workers;
    Ok(ws.iter().filter(|w| w.alive).map(|w| w.block_count).sum())
}

/// Blocks worker `id` holds, as the master's map says.
async fn held_by(addr: &str, id: &str) -> Result<u64> {
    let mut m = master(addr).await?;
    let ws = m.list_workers(ListWorkersRequest {}).await?.into_inner().workers;
    Ok(ws.iter().find(|w| w.id == id).map(|w| w.block_count).unwrap_or(0))
}
