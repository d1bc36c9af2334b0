//! `shoal up`: the whole system in one process for a first try — a master, a
//! worker (MEM tier on tmpfs, SSD tier under the data dir), a dataset from the URI
//! given (or a generated demo dataset) and its mount. Ctrl-C unmounts and stops
//! everything, leaving no mount behind.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use clap::Args;
use shoal_proto::master::*;
use tokio_util::sync::CancellationToken;

use crate::client::{connect, sync_with_progress};
use crate::exit::Remote;
use crate::servers::{bind, host_name, parse_duration};

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// Store to serve (s3://…, file:///…, a local directory, …); a small demo
    /// dataset is generated when omitted.
    pub uri: Option<String>,
    /// Dataset name.
    #[arg(long, default_value = "demo")]
    pub name: String,
    /// Store option KEY=VALUE (as for `dataset create`); repeatable.
    #[arg(long = "option", value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Block size of the dataset.
    #[arg(long, default_value = "8MiB")]
    pub block_size: String,
    /// Where state, cache and the default mount point live.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "/tmp/shoal-up")]
    pub data_dir: PathBuf,
    /// Mount point [default: DATA_DIR/mnt].
    #[arg(long)]
    pub mountpoint: Option<PathBuf>,
    /// Master address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: String,
    /// MEM tier size (on /dev/shm when it exists).
    #[arg(long, default_value = "1GiB")]
    pub mem: String,
    /// SSD tier size (under DATA_DIR/cache).
    #[arg(long, default_value = "10GiB")]
    pub ssd: String,
    /// Mount options, e.g. `-o allow_other`.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub mount_options: Vec<String>,
    /// Kernel entry/attribute cache time.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub attr_timeout: Duration,
    /// Address for Prometheus `/metrics` of all three components ("" to disable).
    #[arg(long, default_value = "127.0.0.1:9700")]
    pub metrics_listen: String,
}

/// A demo dataset: 10 "classes" of 50 image-sized files and two 32 MiB shards.
fn generate_demo(dir: &Path) -> Result<()> {
    let done = dir.with_extension("complete");
    if done.exists() {
        return Ok(());
    }
    let mut x: u64 = 0x5eed_cafe_f00d_d00d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut fill =
        |len: usize| -> Vec<u8> { (0..len.div_ceil(8)).flat_map(|_| next().to_le_bytes()).take(len).collect() };
    for class in 0..10 {
        let d = dir.join(format!("train/class-{class:02}"));
        std::fs::create_dir_all(&d)?;
        for i in 0..50 {
            let len = 16 * 1024 + (i * 4759 % 240) * 1024;
            std::fs::write(d.join(format!("img-{i:04}.jpg")), fill(len))?;
        }
    }
    std::fs::create_dir_all(dir.join("shards"))?;
    for s in 0..2 {
        std::fs::write(dir.join(format!("shards/shard-{s:04}.tar")), fill(32 << 20))?;
    }
    std::fs::write(done, b"")?;
    Ok(())
}

pub async fn run_up(args: UpArgs) -> Result<()> {
    let data = &args.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("data dir {}", data.display()))?;
    let data = std::fs::canonicalize(data)?;
    let uri = match &args.uri {
        Some(u) => u.clone(),
        None => {
            let demo = data.join("demo-source");
            eprintln!("generating a demo dataset in {} …", demo.display());
            generate_demo(&demo).context("generate the demo dataset")?;
            demo.to_string_lossy().into_owned()
        }
    };
    let mut options = BTreeMap::new();
    for o in &args.options {
        let (k, v) = o.split_once('=').with_context(|| format!("option {o:?} is not KEY=VALUE"))?;
        options.insert(k.to_string(), v.to_string());
    }
    let store = shoal_core::StoreSpec::parse(&uri, &options)?;
    // A local store is allowed as this command names it (the demo: the data dir).
    let local_roots = match store.config.get("root") {
        Some(root) if store.service == "fs" => crate::servers::canonical_roots(&[root.into()])?,
        _ => Vec::new(),
    };
    let block_size = shoal_core::size::parse_size(&args.block_size)?;
    let allow_other = crate::mount::parse_mount_options(&args.mount_options)?;
    let mountpoint = args.mountpoint.clone().unwrap_or_else(|| data.join("mnt"));
    std::fs::create_dir_all(&mountpoint).with_context(|| format!("mount point {}", mountpoint.display()))?;
    if shoal_fuse::is_mounted(&mountpoint) {
        bail!("{} is already mounted (run `shoal umount {}`)", mountpoint.display(), mountpoint.display());
    }

    let stop = CancellationToken::new();
    crate::metrics_http::serve(Some(&args.metrics_listen), "up", stop.clone()).await?;
    // Master.
    let master_listener = bind(&args.listen, "master").await?;
    let master_addr = master_listener.local_addr()?.to_string();
    let master_cfg = shoal_master::MasterConfig {
        data_dir: data.join("master"),
        lost_worker_timeout: Duration::from_secs(15),
        heartbeat_interval: Duration::from_secs(1),
        stale_block_grace: Duration::from_secs(60),
        local_roots,
        rebalance_on_join: true,
        raft: None,
    };
    let master_task = tokio::spawn(shoal_master::serve(master_cfg, master_listener, stop.clone()));
    // Worker: MEM tier on tmpfs when there is one.
    let shm = Path::new("/dev/shm");
    let mem_dir = if shm.is_dir() {
        shm.join(format!("shoal-up-{:x}", fnv(data.to_string_lossy().as_bytes())))
    } else {
        data.join("mem")
    };
    let tiers = vec![
        format!("mem:{}:{}", mem_dir.display(), args.mem).parse::<shoal_worker::TierSpec>()?,
        format!("ssd:{}:{}", data.join("cache").display(), args.ssd).parse::<shoal_worker::TierSpec>()?,
    ];
    let worker_listener = bind("127.0.0.1:0", "worker").await?;
    let node = host_name();
    let worker_cfg = shoal_worker::WorkerConfig {
        id: format!("{node}-up"),
        node: node.clone(),
        master: master_addr.clone(),
        advertise: None,
        tiers,
        watermarks: Default::default(),
        fill_budget: 256 << 20,
    };
    let worker_task = tokio::spawn(shoal_worker::serve(worker_cfg, worker_listener, stop.clone()));

    let result = async {
        let mut client = connect(&master_addr).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let workers = client.list_workers(ListWorkersRequest {}).await.map_err(Remote)?.into_inner().workers;
            if workers.iter().any(|w| w.alive) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the worker did not register with the master");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Register the dataset, or re-sync it when it is already there.
        let existing = client.get_dataset(GetDatasetRequest { name: args.name.clone() }).await;
        match existing {
            Ok(d) => {
                let spec = d.into_inner().spec.unwrap_or_default();
                let have =
                    shoal_core::dataset::mount_specs(&spec).into_iter().next().map(|m| m.uri).unwrap_or_default();
                if have != uri {
                    bail!("dataset {:?} already exists with {have}; pick another --name or --data-dir", args.name);
                }
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                let spec = DatasetSpec {
                    name: args.name.clone(),
                    mounts: vec![MountSpec {
                        uri: uri.clone(),
                        options: options.clone().into_iter().collect(),
                        ..Default::default()
                    }],
                    cache: Some(CachePolicy { block_size, replicas: 1, ..Default::default() }),
                    ..Default::default()
                };
                client
                    .create_dataset(CreateDatasetRequest { spec: Some(spec), sync: false })
                    .await
                    .map_err(Remote)
                    .with_context(|| format!("create dataset {:?}", args.name))?;
            }
            Err(s) => return Err(Remote(s).into()),
        }
        let p = sync_with_progress(&mut client, &args.name, &[]).await?;
        let info = p.dataset.unwrap_or_default();
        let opts = shoal_fuse::MountOptions {
            dataset: args.name.clone(),
            mountpoint: mountpoint.clone(),
            master: master_addr.clone(),
            node,
            allow_other,
            ttl: args.attr_timeout,
            cache_bytes: 512 << 20,
            threads: 4,
            refresh: Duration::from_secs(10),
            dir_prefetch: 2,
            dir_prefetch_parallel: shoal_fuse::reader::DIR_PREFETCH_PARALLEL,
            takeover_fd: None,
            metadata_budget: 512 << 20,
        };
        let handle = shoal_fuse::mount(opts).await.context("mount")?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "shoal is up")?;
        writeln!(out, "  master   {master_addr}   (try: shoal workers --master {master_addr})")?;
        writeln!(
            out,
            "  dataset  {} from {uri}: {} files, {}",
            args.name,
            info.file_count,
            ByteSize(info.total_bytes)
        )?;
        writeln!(
            out,
            "  cache    mem {} in {}, ssd {} in {}",
            args.mem,
            mem_dir.display(),
            args.ssd,
            data.join("cache").display()
        )?;
        writeln!(out, "mounted at {}", mountpoint.display())?;
        writeln!(out, "read it:  ls {0}; cat {0}/… ; Ctrl-C stops shoal and unmounts", mountpoint.display())?;
        out.flush()?;
        drop(out);
        crate::mount::serve_until_stopped(handle).await
    }
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = master_task.await;
        let _ = worker_task.await;
    })
    .await;
    // The MEM tier is RAM (tmpfs): give it back rather than hold it after exit.
    if mem_dir.starts_with(shm) {
        let _ = std::fs::remove_dir_all(&mem_dir);
    }
    result
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
