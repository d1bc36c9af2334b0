//! shoal against the alternatives a user would pick, over one remote-like S3 store,
//! in one run: the local copy (the limit), bindfs over it (the cost of FUSE alone),
//! direct parallel GETs, `rclone mount --vfs-cache-mode full`, `s3fs -o use_cache`,
//! JuiceFS CE (cold, warm, and after its `warmup`), and shoal cold, warm and
//! prewarmed. Workloads: a shuffled data-loader epoch (two epochs), sequential
//! streaming with 1 and 4 readers, random 256 KiB reads, a `find`+`stat` walk, and
//! prewarm against a raw parallel download (and JuiceFS's warmup). The targets the
//! issues set are checked against the same run and written beside its tables.
//!
//! ```text
//! cargo bench -p shoal-benches --bench peers [-- --quick] [--scale F] [--delay-ms N]
//!     [--mbit N] [--readers N] [--seed N] [--max-run SECS] [--parallel N]
//!     [--systems local,bindfs,direct,rclone,s3fs,juicefs,shoal,prewarmed] [--no-write]
//! ```
//!
//! Root only: it creates a network namespace, mounts FUSE file systems and drops
//! the kernel's page cache. Results go to `benches/RESULTS.md` (between the
//! `peers` or `peers-quick` markers) and charts to `benches/results/`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_benches::data::{self, Dataset, Object};
use shoal_benches::peers::{ensure_installed, JuiceFs, PeerMount};
use shoal_benches::remote::{self, Network, RemoteStore, ACCESS_KEY, BUCKET, SECRET_KEY};
use shoal_benches::report::{self, Metric, Phase, Role, Row, Workload};
use shoal_benches::workload::{self, direct, shuffled, Sample};
use shoal_benches::{drop_page_cache, Cluster};

#[derive(Debug, Clone)]
struct Args {
    quick: bool,
    scale: f64,
    net: Network,
    readers: usize,
    seed: u64,
    max_run: Duration,
    parallel: usize,
    systems: Vec<String>,
    write: bool,
}

const ALL_SYSTEMS: &[&str] = &["local", "bindfs", "direct", "rclone", "s3fs", "juicefs", "shoal", "prewarmed"];

fn parse_args() -> Result<Args> {
    let mut a = Args {
        quick: false,
        scale: 1.0,
        net: Network { delay: Duration::from_millis(5), mbit: 2000 },
        readers: 8,
        seed: 42,
        max_run: Duration::from_secs(25),
        parallel: 32,
        systems: ALL_SYSTEMS.iter().map(|s| s.to_string()).collect(),
        write: true,
    };
    let mut it = std::env::args().skip(1);
    let mut scale = None;
    let mut max_run = None;
    while let Some(arg) = it.next() {
        let mut val = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {} // passed by `cargo bench`
            "--quick" => a.quick = true,
            "--no-write" => a.write = false,
            "--scale" => scale = Some(val()?.parse()?),
            "--delay-ms" => a.net.delay = Duration::from_secs_f64(val()?.parse::<f64>()? / 1e3),
            "--mbit" => a.net.mbit = val()?.parse()?,
            "--readers" => a.readers = val()?.parse()?,
            "--seed" => a.seed = val()?.parse()?,
            "--max-run" => max_run = Some(Duration::from_secs_f64(val()?.parse()?)),
            "--parallel" => a.parallel = val()?.parse()?,
            "--systems" => {
                a.systems = val()?.split(',').map(str::to_string).collect();
                if let Some(bad) = a.systems.iter().find(|s| !ALL_SYSTEMS.contains(&s.as_str())) {
                    bail!("unknown system {bad:?}; known: {}", ALL_SYSTEMS.join(","));
                }
            }
            other => bail!("unknown argument {other:?} (see the top of benches/benches/peers.rs)"),
        }
    }
    a.scale = scale.unwrap_or(if a.quick { 0.1 } else { 1.0 });
    a.max_run = max_run.unwrap_or(Duration::from_secs(if a.quick { 6 } else { 25 }));
    Ok(a)
}

/// The workloads' results, filled system by system.
struct Results {
    walk: Workload,
    epoch: Workload,
    seq1: Workload,
    seq4: Workload,
    random: Workload,
    /// Prewarm of the images and of the shards, each against a raw download.
    prewarm: [Workload; 2],
}

impl Results {
    fn new(ds: &Dataset, readers: usize) -> Results {
        let (n, mib) = (ds.images.len(), Dataset::bytes(&ds.images) >> 20);
        let shard = ds.shards[0].size >> 20;
        Results {
            walk: Workload::new(
                &format!("Metadata walk: find + stat of {n} image files"),
                "walk",
                Metric::Ops,
                "entries/s",
            ),
            epoch: Workload::new(
                &format!("Data-loader epoch: {readers} readers, {n} files ({mib} MiB) in shuffled order"),
                "epoch",
                Metric::Ops,
                "files/s",
            ),
            seq1: Workload::new(
                &format!("Sequential read, 1 reader, one {shard} MiB shard"),
                "seq1",
                Metric::Bytes,
                "reads/s",
            ),
            seq4: Workload::new(
                &format!("Sequential read, 4 readers, four {shard} MiB shards"),
                "seq4",
                Metric::Bytes,
                "reads/s",
            ),
            random: Workload::new(
                &format!("Random 256 KiB reads, 4 jobs, three {shard} MiB shards"),
                "random",
                Metric::Bytes,
                "reads/s",
            ),
            prewarm: [("images", "prewarm-images"), ("shards", "prewarm-shards")].map(|(what, slug)| {
                Workload::new(
                    &format!("Prewarm of the {what} versus a raw parallel download of the same bytes"),
                    slug,
                    Metric::Bytes,
                    "objects/s",
                )
            }),
        }
    }

    fn all(&self) -> [&Workload; 7] {
        [&self.epoch, &self.seq1, &self.seq4, &self.random, &self.walk, &self.prewarm[0], &self.prewarm[1]]
    }
}

fn push(w: &mut Workload, system: &str, role: Role, phase: Phase, sample: Sample) {
    eprintln!(
        "  {:<44} {:<22} {:>9} {}/s {:>8.1} MB/s{}",
        w.slug,
        format!("{system} {phase:?}"),
        report::thousands(sample.ops_per_sec()),
        if w.metric == Metric::Ops { w.unit.trim_end_matches("/s") } else { "op" },
        sample.mb_per_sec(),
        if sample.complete { "" } else { " (time cap)" }
    );
    w.rows.push(Row { system: system.into(), role, phase, sample });
}

/// Which shards each workload reads, so every cold run touches data no earlier
/// run on the same mount has read.
fn shard_sets(shards: &[Object]) -> (&[Object], &[Object], &[Object]) {
    (&shards[0..1], &shards[1..5], &shards[5..8])
}

/// The longest a run waits for shoal's directory prefetch of the run before.
const SETTLE_LIMIT: Duration = Duration::from_secs(300);

/// A mounted system under test.
struct Mounted<'a> {
    root: &'a Path,
    system: &'a str,
    role: Role,
    /// Waits until the system's own background work from the last run (shoal's
    /// directory prefetch) is done, so the next cold run does not share the link
    /// with it.
    settle: &'a dyn Fn(),
}

impl<'a> Mounted<'a> {
    fn new(root: &'a Path, system: &'a str, role: Role) -> Self {
        Mounted { root, system, role, settle: &|| {} }
    }
}

/// The whole sequence against a directory: walk, epochs, sequential, random.
/// `first` is the phase of the first pass (cold, or prewarmed).
fn run_fs(r: &mut Results, a: &Args, ds: &Dataset, m: &Mounted, first: Phase) -> Result<()> {
    let (root, system, role, cap) = (m.root, m.system, m.role, a.max_run);
    if first == Phase::Cold {
        drop_page_cache();
        push(&mut r.walk, system, role, Phase::Cold, workload::walk(&root.join("images"), cap)?);
        push(&mut r.walk, system, role, Phase::Warm, workload::walk(&root.join("images"), cap)?);
    }
    drop_page_cache();
    let order = shuffled(ds.images.len(), a.seed);
    let e1 = workload::epoch(root, &ds.images, &order, a.readers, cap)?;
    let done = e1.ops as usize;
    push(&mut r.epoch, system, role, first, e1);
    (m.settle)();
    let order2 = workload::reshuffled(&order[..done], a.seed + 1);
    if first == Phase::Cold {
        push(&mut r.epoch, system, role, Phase::Warm, workload::epoch(root, &ds.images, &order2, a.readers, cap)?);
    }
    let (s1, s4, sr) = shard_sets(&ds.shards);
    for (w, set) in [(&mut r.seq1, s1), (&mut r.seq4, s4)] {
        drop_page_cache();
        push(w, system, role, first, workload::sequential(root, set, cap)?);
        (m.settle)();
        if first == Phase::Cold {
            push(w, system, role, Phase::Warm, workload::sequential(root, set, cap)?);
        }
    }
    drop_page_cache();
    push(&mut r.random, system, role, first, workload::random(root, sr, 4, cap, a.seed)?);
    (m.settle)();
    if first == Phase::Cold {
        push(&mut r.random, system, role, Phase::Warm, workload::random(root, sr, 4, cap, a.seed)?);
    }
    Ok(())
}

fn s3_operator(endpoint: &str) -> Result<opendal::Operator> {
    let spec = shoal_core::StoreSpec::parse(&format!("s3://{BUCKET}"), &s3_options(endpoint).into_iter().collect())?;
    Ok(shoal_core::store::operator(&spec)?)
}

fn s3_options(endpoint: &str) -> std::collections::HashMap<String, String> {
    [("endpoint", endpoint), ("access_key_id", ACCESS_KEY), ("secret_access_key", SECRET_KEY), ("region", "us-east-1")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn run_direct(r: &mut Results, a: &Args, ds: &Dataset, endpoint: &str) -> Result<()> {
    let op = s3_operator(endpoint)?;
    let (sys, role, cap) = ("direct GET", Role::Peer, a.max_run);
    push(&mut r.walk, sys, role, Phase::Cold, direct::walk(&op, "images/").await?);
    push(&mut r.walk, sys, role, Phase::Warm, direct::walk(&op, "images/").await?);
    let order = shuffled(ds.images.len(), a.seed);
    let e1 = direct::epoch(&op, &ds.images, &order, a.readers, cap).await?;
    let order2 = workload::reshuffled(&order[..e1.ops as usize], a.seed + 1);
    push(&mut r.epoch, sys, role, Phase::Cold, e1);
    push(&mut r.epoch, sys, role, Phase::Warm, direct::epoch(&op, &ds.images, &order2, a.readers, cap).await?);
    let (s1, s4, sr) = shard_sets(&ds.shards);
    for phase in [Phase::Cold, Phase::Warm] {
        push(&mut r.seq1, sys, role, phase, direct::sequential(&op, s1, cap).await?);
    }
    for phase in [Phase::Cold, Phase::Warm] {
        push(&mut r.seq4, sys, role, phase, direct::sequential(&op, s4, cap).await?);
    }
    for phase in [Phase::Cold, Phase::Warm] {
        push(&mut r.random, sys, role, phase, direct::random(&op, sr, 4, cap, a.seed).await?);
    }
    // The raw download the prewarm rows are compared with.
    for (w, set) in r.prewarm.iter_mut().zip([&ds.images, &ds.shards]) {
        let s = direct::download(&op, set, a.parallel).await?;
        push(w, "raw parallel download", Role::Peer, Phase::Cold, s);
    }
    Ok(())
}

/// The store's bucket (a directory of s3s-fs's root) holding JuiceFS's volume.
const JUICEFS_BUCKET: &str = "juicefs";

/// JuiceFS CE over its own volume in the same store: cold and warm passes on a
/// mount with an empty cache, then (with `prewarm`) `juicefs warmup` of the images
/// and the shards, timed like shoal's prewarm, and a pass on that warm cache.
fn run_juicefs(r: &mut Results, a: &Args, ds: &Dataset, endpoint: &str, base: &Path, prewarm: bool) -> Result<()> {
    let objects: Vec<Object> = ds.images.iter().chain(&ds.shards).cloned().collect();
    let bucket = ds.store_root.join(JUICEFS_BUCKET);
    let fs = JuiceFs::create(endpoint, &bucket, &base.join("juicefs"), &ds.local(), &objects)?;
    let mountpoint = base.join("mnt/juicefs");
    {
        let m = fs.mount(&mountpoint)?;
        run_fs(r, a, ds, &Mounted::new(&m.mountpoint, "juicefs", Role::Peer), Phase::Cold)?;
    }
    if prewarm {
        let m = fs.mount(&mountpoint)?;
        for (w, (what, set)) in r.prewarm.iter_mut().zip([("images", &ds.images), ("shards", &ds.shards)]) {
            let t = Instant::now();
            JuiceFs::warmup(&m.mountpoint.join(what), a.parallel)?;
            let s = Sample {
                ops: set.len() as u64,
                bytes: Dataset::bytes(set),
                secs: t.elapsed().as_secs_f64(),
                lat: Vec::new(),
                complete: true,
            };
            push(w, "juicefs warmup", Role::Other, Phase::Cold, s);
        }
        run_fs(r, a, ds, &Mounted::new(&m.mountpoint, "juicefs", Role::Peer), Phase::Prewarmed)?;
    }
    Ok(())
}

/// The targets the issues set, checked against this run's rows, and shoal
/// against JuiceFS CE phase by phase.
fn targets(r: &Results) -> String {
    // (what, shoal's row, the rows it is measured against with the ratio each must reach)
    type Against<'a> = &'a [(&'a str, &'a str, Phase, f64)];
    let checks: [(&str, &Workload, (&str, Phase), Against); 6] = [
        (
            "warm data-loader epoch ≥ 0.8x local disk and ≥ 3x rclone",
            &r.epoch,
            ("shoal", Phase::Warm),
            &[("local", "local disk", Phase::Warm, 0.8), ("rclone", "rclone vfs full", Phase::Warm, 3.0)],
        ),
        (
            "warm sequential (1 reader) ≥ 0.9x bindfs over the local copy",
            &r.seq1,
            ("shoal", Phase::Warm),
            &[("bindfs", "bindfs (local copy)", Phase::Warm, 0.9)],
        ),
        (
            "cold data-loader epoch ≥ 2x s3fs and ≥ 2x rclone",
            &r.epoch,
            ("shoal", Phase::Cold),
            &[("s3fs", "s3fs use_cache", Phase::Cold, 2.0), ("rclone", "rclone vfs full", Phase::Cold, 2.0)],
        ),
        (
            "cold random 256 KiB reads ≥ 1x direct range GETs",
            &r.random,
            ("shoal", Phase::Cold),
            &[("direct GETs", "direct GET", Phase::Cold, 1.0)],
        ),
        (
            "prewarm of the images ≥ 0.9x a raw parallel download",
            &r.prewarm[0],
            ("shoal prewarm", Phase::Cold),
            &[("raw download", "raw parallel download", Phase::Cold, 0.9)],
        ),
        (
            "prewarm of the shards ≥ 0.9x a raw parallel download",
            &r.prewarm[1],
            ("shoal prewarm", Phase::Cold),
            &[("raw download", "raw parallel download", Phase::Cold, 0.9)],
        ),
    ];
    let mut md = String::from("#### Targets, checked against the tables above\n\n| target | result |\n|---|---|\n");
    for (what, w, (us, phase), against) in checks {
        let Some(ours) = w.rate(us, phase) else { continue };
        let (mut met, mut measured) = (true, true);
        let parts: Vec<String> = against
            .iter()
            .map(|(label, system, ph, min)| match w.rate(system, *ph) {
                Some(theirs) if theirs > 0.0 => {
                    met &= ours / theirs >= *min;
                    let (o, t) = (report::thousands(ours), report::thousands(theirs));
                    format!("**{:.2}x** {label} ({o} vs {t} {})", ours / theirs, w.rate_unit())
                }
                _ => {
                    measured = false;
                    format!("{label} not measured")
                }
            })
            .collect();
        md.push_str(&format!(
            "| {what} | {} — {} |\n",
            parts.join(", "),
            match (measured, met) {
                (false, _) => "not checked",
                (true, true) => "met",
                (true, false) => "**missed**",
            }
        ));
    }
    let mut vs = String::new();
    for w in [&r.epoch, &r.seq1, &r.seq4, &r.random, &r.walk] {
        for phase in [Phase::Cold, Phase::Warm, Phase::Prewarmed] {
            if let (Some(ours), Some(theirs)) = (w.rate("shoal", phase), w.rate("juicefs", phase)) {
                let (o, t) = (report::thousands(ours), report::thousands(theirs));
                vs.push_str(&format!(
                    "| {} | {} | {o} {u} | {t} {u} | **{:.2}x** |\n",
                    w.slug,
                    phase.name(),
                    ours / theirs,
                    u = w.rate_unit(),
                ));
            }
        }
    }
    for (w, what) in r.prewarm.iter().zip(["images", "shards"]) {
        if let (Some(ours), Some(theirs)) =
            (w.rate("shoal prewarm", Phase::Cold), w.rate("juicefs warmup", Phase::Cold))
        {
            let (o, t) = (report::thousands(ours), report::thousands(theirs));
            vs.push_str(&format!(
                "| prewarm {what} | shoal prewarm vs juicefs warmup | {o} MB/s | {t} MB/s | **{:.2}x** |\n",
                ours / theirs
            ));
        }
    }
    if !vs.is_empty() {
        md.push_str("\n#### shoal against JuiceFS CE (no target: the all-in-one cache many users would pick)\n\n");
        md.push_str("| workload | phase | shoal | JuiceFS | shoal / JuiceFS |\n|---|---|---:|---:|---:|\n");
        md.push_str(&vs);
    }
    md
}

fn shoal_cluster(rt: &tokio::runtime::Runtime, dir: &Path, endpoint: &str, total: u64) -> Result<Cluster> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mount = shoal_proto::master::MountSpec {
        uri: format!("s3://{BUCKET}"),
        options: s3_options(endpoint),
        ..Default::default()
    };
    // A MEM tier that holds the dataset (up to 12 GiB), and an SSD tier behind it.
    let mem = format!("{}MiB", ((total >> 20) + (total >> 23)).min(12 << 10) + 64);
    let ssd = format!("{}MiB", (total >> 20) * 2 + 64);
    rt.block_on(Cluster::start_over(dir, mount, &mem, &ssd, 8 << 20))
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<u64>().ok()))
        .map_or("?".into(), |kb| format!("{} GiB", kb >> 20));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, {mem} RAM, Linux {}", kernel.trim())
}

fn main() -> Result<()> {
    // Started by RemoteStore inside the store's namespace.
    if let Some(done) = remote::delay_proxy_main() {
        return done;
    }
    let a = parse_args()?;
    let started = Instant::now();
    let has = |s: &str| a.systems.iter().any(|x| x == s);
    let base = PathBuf::from("/var/tmp/shoal-peers");
    // Mounts left behind by an interrupted run would make this one fail.
    for m in ["mnt/bindfs", "mnt/rclone", "mnt/s3fs", "mnt/juicefs", "juicefs/fill", "shoal/mnt"] {
        if shoal_fuse::is_mounted(&base.join(m)) {
            let _ = std::process::Command::new("umount").arg("-l").arg(base.join(m)).status();
        }
    }
    let skipped = ensure_installed();
    if !skipped.is_empty() {
        eprintln!("skipping (not installed): {}", skipped.join(", "));
    }
    let spec = data::Spec::scaled(a.seed, a.scale);
    eprintln!("dataset: {spec:?}");
    let ds = data::generate(&base.join(format!("data-{}", if a.quick { "quick" } else { "full" })), &spec)?;
    let total = Dataset::bytes(&ds.images) + Dataset::bytes(&ds.shards);
    let store = RemoteStore::start(&ds.store_root, &a.net, &remote::s3_server_binary()?, &std::env::current_exe()?)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // The store answers through the namespace before anything is measured.
    let op = s3_operator(&store.endpoint)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = rt.block_on(op.stat(&ds.images[0].key)) {
        if Instant::now() > deadline {
            return Err(e).context("the benchmark store does not answer");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut r = Results::new(&ds, a.readers);
    let mnt = base.join("mnt");
    let local = ds.local();
    if has("local") {
        eprintln!("local disk");
        run_fs(&mut r, &a, &ds, &Mounted::new(&local, "local disk", Role::Local), Phase::Cold)?;
    }
    if has("bindfs") && !skipped.contains(&"bindfs") {
        eprintln!("bindfs");
        let m = PeerMount::bindfs(&local, &mnt.join("bindfs"))?;
        run_fs(&mut r, &a, &ds, &Mounted::new(&m.mountpoint, "bindfs (local copy)", Role::Other), Phase::Cold)?;
    }
    if has("direct") {
        eprintln!("direct GETs");
        rt.block_on(run_direct(&mut r, &a, &ds, &store.endpoint))?;
    }
    if has("rclone") && !skipped.contains(&"rclone") {
        eprintln!("rclone");
        let m = PeerMount::rclone(&store.endpoint, &mnt.join("rclone"), &base.join("cache/rclone"))?;
        run_fs(&mut r, &a, &ds, &Mounted::new(&m.mountpoint, "rclone vfs full", Role::Peer), Phase::Cold)?;
    }
    if has("s3fs") && !skipped.contains(&"s3fs") {
        eprintln!("s3fs");
        let m = PeerMount::s3fs(&store.endpoint, &mnt.join("s3fs"), &base.join("cache/s3fs"))?;
        run_fs(&mut r, &a, &ds, &Mounted::new(&m.mountpoint, "s3fs use_cache", Role::Peer), Phase::Cold)?;
    }
    if has("juicefs") && !skipped.contains(&"juicefs") {
        eprintln!("juicefs");
        let res = run_juicefs(&mut r, &a, &ds, &store.endpoint, &base, has("prewarmed"));
        let _ = std::fs::remove_dir_all(ds.store_root.join(JUICEFS_BUCKET));
        res?;
    }
    if has("shoal") {
        eprintln!("shoal");
        let c = shoal_cluster(&rt, &base.join("shoal"), &store.endpoint, total)?;
        let settle = || eprintln!("  (waited {:.1} s for the directory prefetch)", c.settle(SETTLE_LIMIT));
        let m = Mounted { settle: &settle, ..Mounted::new(&c.mountpoint, "shoal", Role::Other) };
        let res = run_fs(&mut r, &a, &ds, &m, Phase::Cold);
        c.shutdown();
        res?;
    }
    if has("prewarmed") {
        eprintln!("shoal prewarmed");
        let c = shoal_cluster(&rt, &base.join("shoal"), &store.endpoint, total)?;
        let res = (|| -> Result<()> {
            for (w, (what, set)) in r.prewarm.iter_mut().zip([("images", &ds.images), ("shards", &ds.shards)]) {
                let (secs, bytes) = rt.block_on(c.prewarm(&[&format!("/{what}")], a.parallel as u32))?;
                anyhow::ensure!(bytes == Dataset::bytes(set), "prewarm of {what} loaded {bytes} bytes");
                let s = Sample { ops: set.len() as u64, bytes, secs, lat: Vec::new(), complete: true };
                push(w, "shoal prewarm", Role::Other, Phase::Cold, s);
            }
            let settle = || eprintln!("  (waited {:.1} s for the directory prefetch)", c.settle(SETTLE_LIMIT));
            let m = Mounted { settle: &settle, ..Mounted::new(&c.mountpoint, "shoal", Role::Other) };
            run_fs(&mut r, &a, &ds, &m, Phase::Prewarmed)
        })();
        c.shutdown();
        res?;
    }
    drop(store);
    let _ = std::fs::remove_dir_all(base.join("shoal"));

    let elapsed = started.elapsed();
    let mut md = String::new();
    let cmd = format!(
        "cargo bench -p shoal-benches --bench peers{}",
        std::env::args().skip(1).filter(|x| x != "--bench").fold(String::new(), |s, x| s + " " + &x)
    );
    let cmd = cmd.replacen("peers ", "peers -- ", 1);
    md.push_str(&format!(
        "```\n{cmd}\n```\n\nRun on {} ({}), {:.0} s in all. Store: s3s-fs in its own network namespace behind \
         a veth pair, {} ms each way, {} Mbit/s each way. Dataset (seed {}): {} image files ({} MiB) in {} \
         directories, {} shards of {} MiB. {} readers in the epoch; every run is capped at {:.0} s (a capped \
         run reports what it finished). Peers skipped: {}.\n\n",
        today(),
        machine(),
        elapsed.as_secs_f64(),
        a.net.delay.as_secs_f64() * 1e3,
        a.net.mbit,
        a.seed,
        ds.images.len(),
        Dataset::bytes(&ds.images) >> 20,
        spec.image_dirs,
        ds.shards.len(),
        spec.shard_size >> 20,
        a.readers,
        a.max_run.as_secs_f64(),
        if skipped.is_empty() { "none".to_string() } else { skipped.join(", ") },
    ));
    let charts = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&charts)?;
    let font = report::load_font();
    let suffix = if a.quick { "-quick" } else { "" };
    for w in r.all() {
        if w.rows.is_empty() {
            continue;
        }
        md.push_str(&w.markdown());
        if font && a.write {
            let png = charts.join(format!("peers{suffix}-{}.png", w.slug));
            w.chart(&png)?;
            md.push_str(&format!("\n![{}](results/{})\n", w.title, png.file_name().unwrap().to_string_lossy()));
        }
        md.push('\n');
    }
    md.push_str(&targets(&r));
    println!("{md}");
    if a.write {
        report::replace_section(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md"),
            &format!("peers{suffix}"),
            md.trim_end(),
        )?;
    }
    Ok(())
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
