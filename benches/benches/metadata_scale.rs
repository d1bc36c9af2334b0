//! Metadata at scale, in one run:
//!
//! 1. **Ingest**: a generated listing of `--ingest` entries (10M by default: 100 ×
//!    100 directories of 1,000 files) fed to the master's sync path
//!    (`namespace::sync_listing`) on the master's own RocksDB: entries/s and peak
//!    RSS of the ingesting process; RocksDB size on disk; then the real master
//!    binary restarted on it (time until `dataset show` answers) and `ResolvePath`,
//!    `Lookup` and `ReadDir` latency p50/p99 over gRPC, and the master's RSS.
//! 2. **A 1M-file local dataset** (`--files`): sync time and files/s, then
//!    `find` + `stat` of every entry cold (page cache and dentries dropped, fresh
//!    mount) and warm, through shoal, against the local copy and bindfs over it with
//!    its default timeouts and with 1-hour entry/attr timeouts; master and mount
//!    peak RSS.
//! 3. **A 100,000-file S3 subset** (`--s3-files`) behind a remote-like link (the
//!    peers benchmark's S3 server and 5 ms delay line): the same walk through
//!    shoal, rclone and s3fs, each capped at `--max-run` seconds (how far they got
//!    is reported).
//!
//! ```text
//! cargo build --release -p shoal
//! cargo bench -p shoal-benches --bench metadata_scale [-- --files N] [--ingest N]
//!     [--s3-files N] [--max-run SECS] [--skip ingest,local,s3] [--no-write]
//! ```
//!
//! Root only (drops caches, mounts FUSE, makes a network namespace). Uses the
//! release `shoal` binary next to this benchmark. Results go to
//! `benches/RESULTS.md` between the `metadata` markers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use shoal_benches::peers::PeerMount;
use shoal_benches::remote::{self, Network, RemoteStore, ACCESS_KEY, BUCKET, SECRET_KEY};
use shoal_benches::shoal_bin;
use shoal_benches::workload::{self, Sample};
use shoal_benches::{data, drop_page_cache};
use shoal_proto::master::{
    CachePolicy, CreateDatasetRequest, DatasetSpec, GetDatasetRequest, LookupRequest, MountSpec, ReadDirRequest,
    ResolvePathRequest,
};

struct Args {
    files: usize,
    ingest: usize,
    s3_files: usize,
    max_run: Duration,
    skip: Vec<String>,
    write: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        files: 1_000_000,
        ingest: 10_000_000,
        s3_files: 100_000,
        max_run: Duration::from_secs(120),
        skip: Vec::new(),
        write: true,
    };
    let mut it = std::env::args().skip(1).filter(|x| x != "--bench");
    while let Some(arg) = it.next() {
        let mut val = || it.next().context("missing value");
        match arg.as_str() {
            "--files" => a.files = val()?.parse()?,
            "--ingest" => a.ingest = val()?.parse()?,
            "--s3-files" => a.s3_files = val()?.parse()?,
            "--max-run" => a.max_run = Duration::from_secs(val()?.parse()?),
            "--skip" => a.skip = val()?.split(',').map(str::to_string).collect(),
            "--no-write" => a.write = false,
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(a)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{} MiB", kib / 1024)
}

fn du_bytes(path: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(path).output().ok();
    out.and_then(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A `shoal` process, killed on drop.
struct ShoalProc {
    child: Child,
}

impl ShoalProc {
    fn start(args: &[&str], log: &Path) -> Result<ShoalProc> {
        let child = Command::new(shoal_bin()?)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .context("start shoal")?;
        Ok(ShoalProc { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ShoalProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_master(data: &Path, addr: &str) -> Result<ShoalProc> {
    // Local datasets live beside the data dir.
    let beside = data.parent().unwrap_or(Path::new("/")).to_string_lossy().into_owned();
    let p = ShoalProc::start(
        &["master", "--data-dir", &data.to_string_lossy(), "--listen", addr, "--allow-local-root", &beside],
        &data.with_extension("log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("the master did not listen on {addr}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(p)
}

fn mount(dataset: &str, master: &str, mnt: &Path, log: &Path) -> Result<ShoalProc> {
    std::fs::create_dir_all(mnt)?;
    let p = ShoalProc::start(&["mount", dataset, &mnt.to_string_lossy(), "--master", master], log)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !shoal_fuse::is_mounted(mnt) {
        if Instant::now() > deadline {
            bail!("{dataset} did not mount");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(p)
}

fn unmount(mnt: &Path) {
    if shoal_fuse::is_mounted(mnt) {
        let _ = Command::new("umount").arg("-l").arg(mnt).status();
    }
}

async fn create(master: &str, name: &str, uri: &str, options: &[(&str, &str)]) -> Result<f64> {
    let mut m = shoal_fuse::master_client(master)?;
    let spec = DatasetSpec {
        name: name.into(),
        mount: Some(MountSpec {
            uri: uri.into(),
            options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }),
        cache: Some(CachePolicy { block_size: 4 << 20, replicas: 1, ..Default::default() }),
        ..Default::default()
    };
    let t = Instant::now();
    m.create_dataset(CreateDatasetRequest { spec: Some(spec), sync: true }).await.context("create dataset")?;
    Ok(t.elapsed().as_secs_f64())
}

fn quantiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    (q(0.5), q(0.99))
}

/// Part 1: the 10M-entry ingest, restart and lookups.
fn ingest(a: &Args, base: &Path, rt: &tokio::runtime::Runtime, md: &mut String) -> Result<()> {
    let data = base.join("ingest-master");
    let _ = std::fs::remove_dir_all(&data);
    let empty = base.join("empty");
    std::fs::create_dir_all(&empty)?;
    let addr = free_addr();
    // Register the dataset through the real master, then stop it.
    let m = start_master(&data, &addr)?;
    rt.block_on(create(&addr, "ten", &empty.to_string_lossy(), &[]))?;
    m.stop();

    let (outer, mid) = (100usize, 100usize);
    let per = a.ingest / (outer * mid);
    let total = outer + outer * mid + outer * mid * per;
    let meta = shoal_master::meta::MetaStore::open(&data.join("meta"))?;
    let info = meta.get_dataset("ten")?.context("the dataset is registered")?;
    let listing = futures::stream::iter((0..outer).flat_map(move |o| {
        let top = std::iter::once(entry(format!("/a{o:03}"), true));
        let rest = (0..mid).flat_map(move |m| {
            std::iter::once(entry(format!("/a{o:03}/b{m:03}"), true))
                .chain((0..per).map(move |f| entry(format!("/a{o:03}/b{m:03}/f{f:05}.jpg"), false)))
        });
        top.chain(rest)
    }))
    .map(Ok);
    let rss_before = status_kib(std::process::id(), "VmRSS:");
    let t = Instant::now();
    let mut last = Instant::now();
    let info = rt
        .block_on(shoal_master::namespace::sync_listing(
            &meta,
            info,
            shoal_master::namespace::MountListing::root(listing),
            |p| {
                if last.elapsed() > Duration::from_secs(10) {
                    eprintln!(
                        "  ingest: {} entries, {:.0}/s",
                        p.entries_listed,
                        p.entries_listed as f64 / t.elapsed().as_secs_f64()
                    );
                    last = Instant::now();
                }
            },
        ))?
        .info;
    let secs = t.elapsed().as_secs_f64();
    let hwm = status_kib(std::process::id(), "VmHWM:");
    drop(meta);
    let size = du_bytes(&data.join("meta"));
    eprintln!("ingest: {total} entries in {secs:.1} s");

    let t = Instant::now();
    let master = start_master(&data, &addr)?;
    let shown = rt.block_on(async {
        let mut c = shoal_fuse::master_client(&addr)?;
        c.get_dataset(GetDatasetRequest { name: "ten".into() }).await.map(|r| r.into_inner()).context("dataset show")
    })?;
    let restart = t.elapsed().as_secs_f64();
    assert_eq!(shown.file_count, info.file_count);

    let (resolve, lookup, readdir) = rt.block_on(async {
        let mut c = shoal_fuse::master_client(&addr)?;
        let mut x = 0x2545F4914F6CDD1Du64;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let (mut resolve, mut lookup, mut readdir) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..20_000 {
            let (o, m, f) = (next(outer), next(mid), next(per));
            let dir = format!("/a{o:03}/b{m:03}");
            let t = Instant::now();
            let d = c
                .resolve_path(ResolvePathRequest { dataset: "ten".into(), path: format!("{dir}/f{f:05}.jpg") })
                .await?
                .into_inner();
            resolve.push(t.elapsed());
            let t = Instant::now();
            let e = c
                .lookup(LookupRequest {
                    dataset: "ten".into(),
                    parent: d.parent,
                    name: format!("f{:05}.jpg", next(per)),
                })
                .await?
                .into_inner();
            lookup.push(t.elapsed());
            assert_eq!(e.parent, d.parent);
            if i % 20 == 0 {
                let t = Instant::now();
                let page = c
                    .read_dir(ReadDirRequest {
                        dataset: "ten".into(),
                        ino: d.parent,
                        start_after: String::new(),
                        limit: 65536,
                    })
                    .await?
                    .into_inner();
                readdir.push(t.elapsed());
                assert_eq!(page.entries.len(), per);
            }
        }
        anyhow::Ok((quantiles(resolve), quantiles(lookup), quantiles(readdir)))
    })?;
    let master_hwm = status_kib(master.pid(), "VmHWM:");
    let master_rss = status_kib(master.pid(), "VmRSS:");
    master.stop();

    md.push_str(&format!(
        "### Ingest: {total} entries fed to the master's sync path\n\n\
         A generated listing (100 × 100 directories of {per} files) through `namespace::sync_listing` into the master's RocksDB, in this process.\n\n\
         | measure | result | target |\n|---|---:|---:|\n\
         | ingest | **{:.0} entries/s** ({secs:.0} s) | ≥ 50,000/s |\n\
         | peak RSS of the ingesting process | {} (was {} before) | |\n\
         | RocksDB on disk | {:.2} GiB ({:.0} B/entry) | |\n\
         | master restart (`kill`, start, until `dataset show` answers) | **{restart:.2} s** | ≤ 10 s |\n\
         | master RSS after 20,000 lookups | {} (peak {}) | < 2 GiB |\n\
         | `ResolvePath` (3 components), p50 / p99 | {:.3} / {:.3} ms | |\n\
         | `Lookup` (one component), p50 / p99 | {:.3} / {:.3} ms | |\n\
         | `ReadDir` of {per} entries, p50 / p99 | {:.2} / {:.2} ms | |\n\n",
        total as f64 / secs,
        mib(hwm),
        mib(rss_before),
        size as f64 / (1u64 << 30) as f64,
        size as f64 / total as f64,
        mib(master_rss),
        mib(master_hwm),
        resolve.0,
        resolve.1,
        lookup.0,
        lookup.1,
        readdir.0,
        readdir.1,
    ));
    Ok(())
}

fn entry(path: String, is_dir: bool) -> shoal_core::StoreEntry {
    shoal_core::StoreEntry {
        path,
        is_dir,
        size: if is_dir { 0 } else { 110_000 },
        mtime: Some(std::time::UNIX_EPOCH + Duration::from_secs(1_750_000_000)),
        etag: (!is_dir).then(|| "5d41402abc4b2a76b9719d911017c592".to_string()),
    }
}

/// `files` small files: 1,000 per directory, 100 directories per top directory.
fn generate(root: &Path, files: usize) -> Result<()> {
    let marker = root.join(format!(".complete-{files}"));
    if marker.exists() {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(root);
    for i in 0..files {
        let (d, f) = (i / 1000, i % 1000);
        let dir = root.join(format!("t{:03}/d{d:05}", d / 100));
        if f == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        std::fs::write(dir.join(format!("f{f:03}.jpg")), i.to_string())?;
    }
    std::fs::write(marker, b"")?;
    Ok(())
}

struct WalkRow {
    system: String,
    cold: Sample,
    warm: Sample,
}

fn walk_twice(system: &str, root: &Path, limit: Duration, drop: bool) -> Result<WalkRow> {
    if drop {
        drop_page_cache();
    }
    eprintln!("  {system}: cold walk");
    let cold = workload::walk(root, limit)?;
    eprintln!("  {system}: warm walk ({} entries cold in {:.1} s)", cold.ops, cold.secs);
    let warm = workload::walk(root, limit)?;
    Ok(WalkRow { system: system.into(), cold, warm })
}

fn rate(s: &Sample) -> String {
    let r = format!("{:.0}", s.ops_per_sec());
    if s.complete {
        r
    } else {
        format!("{r} (stopped after {:.0} s at {} entries)", s.secs, s.ops)
    }
}

fn walk_table(rows: &[WalkRow], md: &mut String) {
    let local = rows.iter().find(|r| r.system.starts_with("local"));
    md.push_str(
        "| system | cold entries/s | warm entries/s | cold vs local | warm vs local |\n|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let ratio = |s: &Sample, l: Option<&Sample>| {
            l.map(|l| format!("{:.2}×", s.ops_per_sec() / l.ops_per_sec())).unwrap_or_else(|| "–".into())
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.system,
            rate(&r.cold),
            rate(&r.warm),
            ratio(&r.cold, local.map(|l| &l.cold)),
            ratio(&r.warm, local.map(|l| &l.warm)),
        ));
    }
    md.push('\n');
}

/// Part 2: the local 1M-file dataset.
fn local(a: &Args, base: &Path, rt: &tokio::runtime::Runtime, md: &mut String) -> Result<()> {
    let src = base.join("src");
    let t = Instant::now();
    generate(&src, a.files)?;
    eprintln!("generated {} files in {:.0} s", a.files, t.elapsed().as_secs_f64());
    let data = base.join("local-master");
    let _ = std::fs::remove_dir_all(&data);
    let addr = free_addr();
    let master = start_master(&data, &addr)?;
    drop_page_cache();
    let sync = rt.block_on(create(&addr, "m", &src.to_string_lossy(), &[]))?;
    let master_sync_hwm = status_kib(master.pid(), "VmHWM:");
    eprintln!("sync: {} files in {sync:.1} s", a.files);

    let mut rows = vec![walk_twice("local disk", &src, a.max_run, true)?];
    let mnt = base.join("mnt");
    for (name, opts) in [
        ("bindfs (default timeouts)", "ro"),
        ("bindfs (entry/attr timeout 1 h)", "ro,entry_timeout=3600,attr_timeout=3600"),
    ] {
        let m = PeerMount::bindfs_with(&src, &mnt.join("bindfs"), opts)?;
        rows.push(walk_twice(name, &m.mountpoint, a.max_run, true)?);
    }
    drop_page_cache();
    let shoal_mnt = mnt.join("shoal");
    let m = mount("m", &addr, &shoal_mnt, &base.join("mount.log"))?;
    rows.push(walk_twice("**shoal**", &shoal_mnt, a.max_run, false)?);
    let mount_hwm = status_kib(m.pid(), "VmHWM:");
    let mount_anon = status_kib(m.pid(), "RssAnon:");
    drop(m);
    unmount(&shoal_mnt);
    let master_hwm = status_kib(master.pid(), "VmHWM:");
    master.stop();

    md.push_str(&format!(
        "### {} small files, local store\n\n\
         Sync (`dataset create`, the master lists the directory and writes the namespace): **{sync:.1} s, {:.0} files/s**; master peak RSS {} during the sync, {} after the walks.\n\n\
         `find` + `stat` of every entry ({} files in {} directories), cold (page cache, dentries and inodes dropped; shoal: a fresh mount) and warm (the same walk again):\n\n",
        a.files,
        a.files as f64 / sync,
        mib(master_sync_hwm),
        mib(master_hwm),
        a.files,
        a.files / 1000 + a.files / 100_000 + 1,
    ));
    walk_table(&rows, md);
    md.push_str(&format!(
        "shoal mount after both walks: peak RSS {}, anonymous {} (default `--metadata-cache 512MiB`).\n\n",
        mib(mount_hwm),
        mib(mount_anon)
    ));
    Ok(())
}

/// Part 3: the S3 subset through shoal, rclone and s3fs.
fn s3(a: &Args, base: &Path, rt: &tokio::runtime::Runtime, md: &mut String) -> Result<()> {
    let store_root = base.join("store");
    let prefix = "meta";
    let bucket = store_root.join(BUCKET);
    let marker = store_root.join(format!(".complete-{}", a.s3_files));
    if !marker.exists() {
        let _ = std::fs::remove_dir_all(&store_root);
        std::fs::create_dir_all(&bucket)?;
        data::write_dir_marker(&store_root, prefix)?;
        for i in 0..a.s3_files {
            let (d, f) = (i / 1000, i % 1000);
            let dir = format!("{prefix}/d{d:03}");
            if f == 0 {
                std::fs::create_dir_all(bucket.join(&dir))?;
                data::write_dir_marker(&store_root, &dir)?;
            }
            std::fs::write(bucket.join(format!("{dir}/f{f:03}.jpg")), i.to_string())?;
        }
        std::fs::write(&marker, b"")?;
    }
    let net = Network { delay: Duration::from_millis(5), mbit: 2000 };
    let store = RemoteStore::start(&store_root, &net, &remote::s3_server_binary()?, &std::env::current_exe()?)?;
    let endpoint = store.endpoint.clone();
    let mnt = base.join("mnt");
    let mut rows = Vec::new();

    let data = base.join("s3-master");
    let _ = std::fs::remove_dir_all(&data);
    let addr = free_addr();
    let master = start_master(&data, &addr)?;
    let opts = [
        ("endpoint", endpoint.as_str()),
        ("access_key_id", ACCESS_KEY),
        ("secret_access_key", SECRET_KEY),
        ("region", "us-east-1"),
    ];
    let sync = rt.block_on(create(&addr, "s3m", &format!("s3://{BUCKET}/{prefix}"), &opts))?;
    drop_page_cache();
    let shoal_mnt = mnt.join("shoal");
    let m = mount("s3m", &addr, &shoal_mnt, &base.join("mount-s3.log"))?;
    let mut row = walk_twice("**shoal**", &shoal_mnt, a.max_run, false)?;
    row.system = format!("**shoal** (after a {sync:.1} s sync)");
    rows.push(row);
    drop(m);
    unmount(&shoal_mnt);
    master.stop();

    let cache = base.join("peer-cache");
    for name in ["rclone", "s3fs"] {
        if !workload::which(name) {
            eprintln!("skipping {name}: not installed");
            continue;
        }
        drop_page_cache();
        let mp = mnt.join(name);
        let m = match name {
            "rclone" => PeerMount::rclone(&endpoint, &mp, &cache.join(name))?,
            _ => PeerMount::s3fs(&endpoint, &mp, &cache.join(name))?,
        };
        let label = if name == "rclone" { "rclone mount (vfs full, 1 h dir cache)" } else { "s3fs (stat cache 1M)" };
        rows.push(walk_twice(label, &m.mountpoint.join(prefix), a.max_run, false)?);
    }
    drop(store);
    md.push_str(&format!(
        "### {} files in S3 (5 ms one-way delay, 2 Gbit/s)\n\n\
         The same walk over the bucket prefix, each system capped at {} s. shoal lists the store once at sync time (parallel per top-level prefix), so its walk never waits on S3.\n\n",
        a.s3_files,
        a.max_run.as_secs()
    ));
    walk_table(&rows, md);
    Ok(())
}

fn main() -> Result<()> {
    // Started by RemoteStore inside the store's namespace.
    if let Some(done) = remote::delay_proxy_main() {
        return done;
    }
    let a = parse_args()?;
    shoal_bin()?;
    let base = PathBuf::from("/var/tmp/shoal-bench-meta");
    std::fs::create_dir_all(&base)?;
    for m in ["mnt/shoal", "mnt/bindfs", "mnt/rclone", "mnt/s3fs"] {
        unmount(&base.join(m));
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let started = Instant::now();
    let mut md = String::from("## Metadata at scale\n\n");
    let skip = |p: &str| a.skip.iter().any(|s| s == p);
    // Ingest first: its RSS figure is this process's.
    if !skip("ingest") {
        ingest(&a, &base, &rt, &mut md)?;
    }
    if !skip("local") {
        local(&a, &base, &rt, &mut md)?;
    }
    if !skip("s3") {
        s3(&a, &base, &rt, &mut md)?;
    }
    let cmd = "cargo build --release -p shoal && cargo bench -p shoal-benches --bench metadata_scale";
    md.push_str(&format!(
        "`{cmd}` ({} cores, {}; {:.0} min).\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        String::from_utf8_lossy(&Command::new("date").arg("+%F").output()?.stdout).trim(),
        started.elapsed().as_secs_f64() / 60.0
    ));
    println!("{md}");
    if a.write {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md");
        shoal_benches::report::replace_section(&file, "metadata", md.trim_end())?;
    }
    Ok(())
}
