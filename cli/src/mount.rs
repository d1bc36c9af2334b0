//! `shoal mount`, `shoal umount`: a dataset as a read-only POSIX directory, in the
//! foreground (unmounted cleanly on SIGINT/SIGTERM) or detached (`--background`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::servers::{host_name, parse_duration, shutdown_on_signals};

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// Dataset to mount.
    pub dataset: String,
    /// Existing empty directory to mount it on.
    pub mountpoint: PathBuf,
    /// Master address, host:port; or every master of a group, comma-separated
    /// (requests go to the leader, and follow it when it changes).
    #[arg(long, env = "SHOAL_MASTER", default_value = "127.0.0.1:7700")]
    pub master: String,
    /// Detach: mount in a background process and return once it is mounted.
    #[arg(long)]
    pub background: bool,
    /// Mount options, comma-separated: `allow_other` lets other users (pods) read.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// This machine's node name, to find a co-located worker [default: host name].
    #[arg(long, env = "SHOAL_NODE")]
    pub node: Option<String>,
    /// How long the kernel caches entries and attributes (datasets are immutable
    /// between syncs).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub attr_timeout: Duration,
    /// Bytes of blocks the mount keeps in memory: its block cache, and as much
    /// again at most for blocks of large files being streamed.
    #[arg(long, default_value = "512MiB")]
    pub cache_size: String,
    /// Memory for directory listings (about 60 bytes per entry): past it,
    /// listings are dropped and loaded again from the master when needed.
    #[arg(long, default_value = "512MiB")]
    pub metadata_cache: String,
    /// Threads serving FUSE requests.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// How often to check for a re-synced namespace and show it (0s: never).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub refresh_interval: Duration,
    /// After this many cold reads of small (single-block) files in one directory,
    /// ask the workers to cache the directory's other small files (0: never).
    #[arg(long, default_value_t = 2)]
    pub dir_prefetch: u32,
    /// Small files the directory prefetch asks the workers for at once; more
    /// fills the link sooner, but competes with the readers' own misses.
    #[arg(long, default_value_t = shoal_fuse::reader::DIR_PREFETCH_PARALLEL as u16, value_parser = clap::value_parser!(u16).range(1..))]
    pub dir_prefetch_parallel: u16,
    /// Address for Prometheus `/metrics` (off unless given).
    #[arg(long, env = "SHOAL_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Take over the live FUSE connection on this inherited descriptor instead of
    /// mounting (the mount point must be that connection's mount): how the CSI
    /// driver restarts or upgrades a mount without failing its open files.
    #[arg(long, value_name = "FD", conflicts_with = "background")]
    pub fuse_fd: Option<i32>,
}

pub fn parse_mount_options(opts: &[String]) -> Result<bool> {
    let mut allow_other = false;
    for o in opts.iter().flat_map(|o| o.split(',')).filter(|o| !o.is_empty()) {
        match o {
            "allow_other" => allow_other = true,
            "ro" => {}
            other => bail!(crate::exit::Remote(tonic::Status::invalid_argument(format!(
                "unknown mount option {other:?} (supported: allow_other, ro)"
            )))),
        }
    }
    Ok(allow_other)
}

pub fn options(args: &MountArgs) -> Result<shoal_fuse::MountOptions> {
    Ok(shoal_fuse::MountOptions {
        dataset: args.dataset.clone(),
        // Resolving a live mount point would wait on this process: taken as given.
        mountpoint: match args.fuse_fd {
            Some(_) => std::path::absolute(&args.mountpoint)?,
            None => std::fs::canonicalize(&args.mountpoint)
                .with_context(|| format!("mount point {}", args.mountpoint.display()))?,
        },
        master: args.master.clone(),
        node: args.node.clone().unwrap_or_else(host_name),
        allow_other: parse_mount_options(&args.options)?,
        ttl: args.attr_timeout,
        cache_bytes: shoal_core::size::parse_size(&args.cache_size)?,
        metadata_budget: shoal_core::size::parse_size(&args.metadata_cache)?,
        threads: args.threads,
        refresh: args.refresh_interval,
        dir_prefetch: args.dir_prefetch,
        dir_prefetch_parallel: args.dir_prefetch_parallel.into(),
        takeover_fd: args.fuse_fd,
    })
}

/// Wait until the session ends by itself or a signal asks us to unmount.
pub async fn serve_until_stopped(handle: shoal_fuse::MountHandle) -> Result<()> {
    let stop = shutdown_on_signals();
    loop {
        if handle.is_finished() {
            eprintln!("{} was unmounted", handle.mountpoint.display());
            return Ok(());
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let mp = handle.mountpoint.clone();
    tokio::task::spawn_blocking(move || handle.unmount())
        .await?
        .with_context(|| format!("unmount {}", mp.display()))?;
    eprintln!("unmounted {}", mp.display());
    Ok(())
}

pub async fn run_mount(args: MountArgs) -> Result<()> {
    let opts = options(&args)?;
    if args.background {
        return detach(&opts.mountpoint);
    }
    let handle = shoal_fuse::mount(opts).await.with_context(|| format!("mount dataset {:?}", args.dataset))?;
    crate::metrics_http::serve(args.metrics_listen.as_deref(), "mount", tokio_util::sync::CancellationToken::new())
        .await?;
    println!("mounted dataset {} at {}", args.dataset, handle.mountpoint.display());
    serve_until_stopped(handle).await
}

/// Re-run this command without `--background` in its own process group, and
/// return once the mount shows up in `/proc/mounts`.
fn detach(mountpoint: &Path) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--background").collect();
    let log = std::env::temp_dir().join(format!("shoal-mount-{}.log", std::process::id()));
    let mut child = Command::new(std::env::current_exe()?)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .process_group(0)
        .spawn()
        .context("start the background mount process")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if shoal_fuse::is_mounted(mountpoint) {
            println!("mounted at {} (pid {}, log {})", mountpoint.display(), child.id(), log.display());
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let msg = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("background mount exited with {status}: {}", msg.trim());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    bail!("timed out waiting for {} to be mounted", mountpoint.display())
}

#[derive(Args, Debug, Clone)]
pub struct UmountArgs {
    /// Mount point to unmount.
    pub mountpoint: PathBuf,
}

pub fn run_umount(args: UmountArgs) -> Result<()> {
    let mp = std::fs::canonicalize(&args.mountpoint).unwrap_or(args.mountpoint.clone());
    if !shoal_fuse::is_mounted(&mp) {
        bail!(crate::exit::Remote(tonic::Status::not_found(format!("{} is not mounted", mp.display()))));
    }
    let ok = Command::new("fusermount3").arg("-u").arg(&mp).status().map(|s| s.success()).unwrap_or(false)
        || Command::new("umount").arg(&mp).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        bail!("cannot unmount {}", mp.display());
    }
    println!("unmounted {}", mp.display());
    Ok(())
}
