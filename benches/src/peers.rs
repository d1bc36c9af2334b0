//! The file systems shoal is measured against, each mounted over the same store
//! (or the same local copy) by its own program: `rclone mount` with its full VFS
//! cache, `s3fs` with its local cache, and `bindfs` over the local copy (the cost
//! of FUSE alone). Missing programs are installed from Debian's packages, or
//! skipped with a message saying so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::remote::{ACCESS_KEY, BUCKET, SECRET_KEY};
use crate::workload::which;

/// A peer program and the Debian package it comes from.
pub const PEERS: &[(&str, &str)] = &[("rclone", "rclone"), ("s3fs", "s3fs"), ("bindfs", "bindfs"), ("fio", "fio")];

/// Install the peers that are missing (root, Debian); returns the ones still missing.
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
    PEERS.iter().filter(|(bin, _)| !which(bin)).map(|p| p.0).collect()
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
