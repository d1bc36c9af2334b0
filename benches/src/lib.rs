//! Helpers shared by shoal's benchmarks: an in-process cluster (master, worker,
//! mount) built from the same library code the `shoal` binary runs, page-cache
//! dropping, and deterministic data generation; and, in its modules, the harness
//! that measures shoal against the file systems a user would pick instead.

pub mod data;
pub mod peers;
pub mod procs;
pub mod remote;
pub mod report;
pub mod sim;
pub mod workload;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_proto::master::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Deterministic pseudo-random bytes.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The release `shoal` binary next to the running benchmark (in `target/release`).
pub fn shoal_bin() -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    let exe = std::env::current_exe()?;
    let bin = exe.parent().and_then(std::path::Path::parent).map(|d| d.join("shoal")).context("no target directory")?;
    if !bin.is_file() {
        anyhow::bail!("{} is missing: run `cargo build --release -p shoal` first", bin.display());
    }
    Ok(bin)
}

/// Drop the kernel's page cache (root only); returns whether it worked.
pub fn drop_page_cache() -> bool {
    // SAFETY-free: sync(1) then the documented procfs knob.
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// A master and a worker in this process.
pub struct Servers {
    pub master_addr: String,
    pub stop: CancellationToken,
}

impl Servers {
    pub async fn start(dir: &Path, mem: &str, ssd: &str) -> Result<Servers> {
        let stop = CancellationToken::new();
        let ml = TcpListener::bind("127.0.0.1:0").await?;
        let master_addr = ml.local_addr()?.to_string();
        let mcfg = shoal_master::MasterConfig {
            data_dir: dir.join("master"),
            lost_worker_timeout: Duration::from_secs(15),
            heartbeat_interval: Duration::from_millis(500),
            stale_block_grace: Duration::from_secs(60),
            local_roots: vec!["/".into()],
            rebalance_on_join: true,
            raft: None,
        };
        tokio::spawn(shoal_master::serve(mcfg, ml, stop.clone()));
        let wl = TcpListener::bind("127.0.0.1:0").await?;
        let tiers = vec![
            format!("mem:/dev/shm/shoal-bench-{}:{mem}", std::process::id()).parse()?,
            format!("ssd:{}:{ssd}", dir.join("cache").display()).parse()?,
        ];
        let wcfg = shoal_worker::WorkerConfig {
            id: "bench-worker".into(),
            node: NODE.into(),
            master: master_addr.clone(),
            advertise: None,
            tiers,
            watermarks: Default::default(),
            fill_budget: 256 << 20,
        };
        tokio::spawn(shoal_worker::serve(wcfg, wl, stop.clone()));
        let mut m = shoal_fuse::master_client(&master_addr)?;
        for _ in 0..200 {
            let ok =
                m.list_workers(ListWorkersRequest {}).await.map(|r| r.into_inner().workers.iter().any(|w| w.alive));
            if ok.unwrap_or(false) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Servers { master_addr, stop })
    }

    pub fn shutdown(self) {
        self.stop.cancel();
        let _ = std::fs::remove_dir_all(format!("/dev/shm/shoal-bench-{}", std::process::id()));
    }
}

const NODE: &str = "bench-node";

/// A master, a worker and a mount of one dataset, all in this process.
pub struct Cluster {
    pub master_addr: String,
    pub mount: Option<shoal_fuse::MountHandle>,
    pub mountpoint: PathBuf,
    stop: CancellationToken,
}

impl Cluster {
    /// Start everything under `dir` (state, tiers, mount point) over a local `source`.
    pub async fn start(dir: &Path, source: &Path, mem: &str, ssd: &str, block_size: u64) -> Result<Cluster> {
        let mount =
            MountSpec { uri: source.to_string_lossy().into_owned(), options: Default::default(), ..Default::default() };
        Cluster::start_over(dir, mount, mem, ssd, block_size).await
    }

    /// Start everything under `dir` over any store the dataset `mount` names.
    pub async fn start_over(dir: &Path, mount: MountSpec, mem: &str, ssd: &str, block_size: u64) -> Result<Cluster> {
        let servers = Servers::start(dir, mem, ssd).await?;
        let (master_addr, stop) = (servers.master_addr.clone(), servers.stop.clone());
        let node = NODE.to_string();
        let mut m = shoal_fuse::master_client(&master_addr)?;
        let spec = DatasetSpec {
            name: "bench".into(),
            mount: Some(mount),
            cache: Some(CachePolicy { block_size, replicas: 1, ..Default::default() }),
            sync_interval_seconds: 0,
            namespace: String::new(),
            ..Default::default()
        };
        m.create_dataset(CreateDatasetRequest { spec: Some(spec), sync: true }).await.context("create dataset")?;
        let mountpoint = dir.join("mnt");
        std::fs::create_dir_all(&mountpoint)?;
        let mount = shoal_fuse::mount(shoal_fuse::MountOptions {
            dataset: "bench".into(),
            mountpoint: mountpoint.clone(),
            master: master_addr.clone(),
            node,
            allow_other: false,
            ttl: Duration::from_secs(3600),
            cache_bytes: 512 << 20,
            threads: 4,
            refresh: Duration::ZERO,
            dir_prefetch: 2,
            dir_prefetch_parallel: shoal_fuse::reader::DIR_PREFETCH_PARALLEL,
            takeover_fd: None,
            metadata_budget: 512 << 20,
        })
        .await?;
        Ok(Cluster { master_addr, mount: Some(mount), mountpoint, stop })
    }

    /// Prewarm `paths` of the mounted dataset (all when empty), `parallel` blocks
    /// in flight; returns the seconds taken and the bytes loaded.
    pub async fn prewarm(&self, paths: &[&str], parallel: u32) -> Result<(f64, u64)> {
        prewarm(&self.master_addr, "bench", paths, parallel).await
    }

    /// Wait (up to `limit`) until the mount's directory prefetch has nothing
    /// queued, so that a run does not share the link with the previous run's
    /// prefetch; returns the seconds waited.
    pub fn settle(&self, limit: std::time::Duration) -> f64 {
        let t = std::time::Instant::now();
        while shoal_fuse::metrics::DIR_PREFETCH_QUEUED.get() > 0 && t.elapsed() < limit {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        t.elapsed().as_secs_f64()
    }

    pub fn shutdown(mut self) {
        if let Some(m) = self.mount.take() {
            let _ = m.unmount();
        }
        self.stop.cancel();
        let _ = std::fs::remove_dir_all(format!("/dev/shm/shoal-bench-{}", std::process::id()));
    }
}

/// Run a prewarm job of `dataset` to its end; returns seconds and bytes loaded.
pub async fn prewarm(master: &str, dataset: &str, paths: &[&str], parallel: u32) -> Result<(f64, u64)> {
    let mut m = shoal_fuse::master_client(master)?;
    let t = std::time::Instant::now();
    let spec = LoadSpec {
        dataset: dataset.into(),
        paths: paths.iter().map(|p| p.to_string()).collect(),
        parallel,
        ..Default::default()
    };
    let job = m.start_load(spec).await.context("start prewarm")?.into_inner();
    let mut watch = m.watch_load(GetLoadRequest { id: job.id }).await?.into_inner();
    let mut last = None;
    while let Some(j) = watch.message().await? {
        last = Some(j);
    }
    let secs = t.elapsed().as_secs_f64();
    let last = last.context("the prewarm job sent no progress")?;
    anyhow::ensure!(last.state == LoadState::Completed as i32, "prewarm ended as {last:?}");
    Ok((secs, last.bytes_done))
}
