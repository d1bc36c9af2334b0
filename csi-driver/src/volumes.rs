//! The node's published volumes. One FUSE mount per dataset (its own `shoal mount`
//! process, mounted under the state directory), bind-mounted into the target path
//! of every pod that uses it, and unmounted with the last of them. The driver
//! holds a copy of each mount's `/dev/fuse` descriptor ([`crate::fusefd`]), so
//! when a FUSE process dies (or is replaced on SIGHUP, to upgrade it) the
//! connection stays up and a new process takes it over: pods' reads pause and
//! resume, open files included. Without a copy, a dead process is replaced by a
//! fresh mount and every target path is bound again. What is published is
//! recorded in `state.json`, so a restarted driver takes its mounts back (they
//! outlive it: each runs in its own process group).
//!
//! Each dataset's volume has its own lock: starting or taking over one dataset's
//! FUSE process (up to a minute) holds up no other dataset's publish, unpublish
//! or supervision.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use shoal_core::mounts::is_mounted;
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tracing::{info, warn};

use crate::{fusefd, metrics, Config, CsiError};

/// How long a new FUSE process may take to show up in the mount table.
const MOUNT_DEADLINE: Duration = Duration::from_secs(60);
/// How often the supervisor looks at the FUSE processes.
const SUPERVISE_EVERY: Duration = Duration::from_millis(200);
/// Wait before retrying a FUSE process that failed to start (doubles to a minute).
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// A FUSE process that dies sooner than this after it started, twice in a row,
/// is restarted only after a backoff (a crash loop must not spin).
const QUICK_DEATH: Duration = Duration::from_secs(2);
/// A process that lived this long clears the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// The FUSE process serving one dataset.
enum Fuse {
    /// Started by this driver.
    Child(Child),
    /// Found running from an earlier life of the driver, serving this directory.
    Adopted(i32, PathBuf),
}

impl Fuse {
    fn pid(&self) -> Option<i32> {
        match self {
            Fuse::Child(c) => c.id().map(|p| p as i32),
            Fuse::Adopted(p, _) => Some(*p),
        }
    }

    fn exited(&mut self) -> bool {
        match self {
            Fuse::Child(c) => !matches!(c.try_wait(), Ok(None)),
            Fuse::Adopted(p, staging) => !serves(*p, staging),
        }
    }
}

struct Volume {
    staging: PathBuf,
    targets: BTreeSet<PathBuf>,
    fuse: Option<Fuse>,
    /// A copy of the mount's `/dev/fuse` descriptor: the connection survives its
    /// process while this is held.
    fd: Option<OwnedFd>,
    /// When the current FUSE process started serving.
    started: Option<Instant>,
    /// FUSE processes in a row that died within [`QUICK_DEATH`].
    quick_deaths: u32,
    /// Backoff after a failed start: no attempt before this.
    retry_at: Option<(Instant, Duration)>,
    /// Removed from the map (its last target left): whoever waited for its
    /// lock must look the dataset up again.
    gone: bool,
}

impl Volume {
    fn new(staging: PathBuf, targets: BTreeSet<PathBuf>, fuse: Option<Fuse>) -> Volume {
        let fd = fuse.as_ref().and_then(Fuse::pid).and_then(|pid| copy_fd(pid, &staging));
        let started = fuse.as_ref().map(|_| Instant::now());
        Volume { staging, targets, fuse, fd, started, quick_deaths: 0, retry_at: None, gone: false }
    }

    /// Wait longer (doubling, up to a minute) before the next start.
    fn back_off(&mut self) {
        let wait = self.retry_at.map(|(_, w)| (w * 2).min(RETRY_MAX)).unwrap_or(RETRY_FIRST);
        self.retry_at = Some((Instant::now() + wait, wait));
    }
}

fn copy_fd(pid: i32, staging: &Path) -> Option<OwnedFd> {
    if !fusefd::supported() {
        return None;
    }
    fusefd::copy_from(pid)
        .inspect_err(|e| {
            warn!(pid, staging = %staging.display(), error = %e, "cannot hold the FUSE connection; a restart will remount")
        })
        .ok()
}

#[derive(Serialize, Deserialize, Default)]
struct Record {
    volumes: BTreeMap<String, RecordVolume>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq)]
struct RecordVolume {
    pid: Option<i32>,
    targets: BTreeSet<PathBuf>,
}

/// What one FUSE process looks like from outside, for status and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeStatus {
    pub dataset: String,
    pub pid: Option<i32>,
    pub targets: Vec<PathBuf>,
}

type Slot = Arc<Mutex<Volume>>;

pub struct Volumes {
    cfg: Arc<Config>,
    /// Each dataset's volume behind its own lock; this map's lock is only held
    /// to find, add or remove a slot.
    slots: SyncMutex<BTreeMap<String, Slot>>,
    /// What `state.json`, status and the gauges show: each operation records
    /// its volume when it ends. Taken before `slots` when both are needed.
    record: SyncMutex<BTreeMap<String, RecordVolume>>,
    /// Targets being published, by dataset: an unpublish that comes meanwhile
    /// waits for that dataset's publish instead of missing the target.
    pending: SyncMutex<BTreeMap<PathBuf, String>>,
}

impl Volumes {
    /// Open the state directory and take back what an earlier driver published:
    /// live FUSE processes are adopted, dead ones restarted, and missing binds made
    /// again (by the supervisor, which the caller starts with [`Volumes::supervise`]).
    pub async fn open(cfg: Arc<Config>) -> Result<Arc<Volumes>, CsiError> {
        for dir in [cfg.state_dir.join("mounts"), cfg.state_dir.join("logs")] {
            std::fs::create_dir_all(&dir).map_err(|e| CsiError::Io(format!("create {}: {e}", dir.display())))?;
        }
        let record: Record = match std::fs::read(cfg.state_dir.join("state.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(error = %e, "state.json is unreadable; starting with no volumes");
                Record::default()
            }),
            Err(_) => Record::default(),
        };
        let mut slots = BTreeMap::new();
        for (dataset, rec) in record.volumes.clone() {
            let staging = staging_dir(&cfg, &dataset);
            let fuse = rec
                .pid
                .filter(|p| serves(*p, &staging) && is_mounted(&staging))
                .map(|p| Fuse::Adopted(p, staging.clone()));
            info!(%dataset, adopted = fuse.is_some(), targets = rec.targets.len(), "volume from an earlier run");
            slots.insert(dataset, Arc::new(Mutex::new(Volume::new(staging, rec.targets, fuse))));
        }
        let this = Arc::new(Volumes {
            cfg,
            slots: SyncMutex::new(slots),
            record: SyncMutex::new(record.volumes),
            pending: SyncMutex::new(BTreeMap::new()),
        });
        set_gauges(&this.record.lock().expect("record lock"));
        Ok(this)
    }

    /// The dataset's volume, locked; created (empty) if it has none. A new
    /// slot is locked before anyone else can see it.
    async fn lock_or_create(&self, dataset: &str) -> OwnedMutexGuard<Volume> {
        loop {
            let slot = {
                let mut slots = self.slots.lock().expect("slots lock");
                match slots.get(dataset) {
                    Some(s) => s.clone(),
                    None => {
                        let fresh = Volume::new(staging_dir(&self.cfg, dataset), BTreeSet::new(), None);
                        let slot = Arc::new(Mutex::new(fresh));
                        let vol = slot.clone().try_lock_owned().expect("a new lock is free");
                        slots.insert(dataset.to_string(), slot);
                        return vol;
                    }
                }
            };
            let vol = slot.lock_owned().await;
            if !vol.gone {
                return vol;
            }
        }
    }

    /// The dataset's volume, locked, if it has one.
    async fn lock_existing(&self, dataset: &str) -> Option<OwnedMutexGuard<Volume>> {
        loop {
            let slot = self.slots.lock().expect("slots lock").get(dataset).cloned()?;
            let vol = slot.lock_owned().await;
            if !vol.gone {
                return Some(vol);
            }
        }
    }

    /// Record the volume's state (or, when `gone`, its removal) in `state.json`
    /// and the gauges. Called with the volume still locked.
    fn note(&self, dataset: &str, vol: &mut OwnedMutexGuard<Volume>) {
        // Saved under the lock, so that writes of the file never interleave.
        let mut record = self.record.lock().expect("record lock");
        if vol.gone {
            // Only this volume's own slot and record: a newer volume of the
            // dataset may have been published since this one went.
            let mut slots = self.slots.lock().expect("slots lock");
            if !slots.get(dataset).is_some_and(|s| Arc::ptr_eq(s, OwnedMutexGuard::mutex(vol))) {
                return;
            }
            slots.remove(dataset);
        }
        let now = (!vol.gone)
            .then(|| RecordVolume { pid: vol.fuse.as_ref().and_then(Fuse::pid), targets: vol.targets.clone() });
        if record.get(dataset) == now.as_ref() {
            return;
        }
        match now {
            Some(r) => record.insert(dataset.to_string(), r),
            None => record.remove(dataset),
        };
        self.save(&record);
        set_gauges(&record);
    }

    /// Restart dead FUSE processes and re-bind their targets, forever.
    /// A volume busy with a publish, unpublish or replacement is left to the
    /// next pass.
    pub async fn supervise(self: Arc<Self>) {
        loop {
            let slots: Vec<(String, Slot)> =
                self.slots.lock().expect("slots lock").iter().map(|(d, s)| (d.clone(), s.clone())).collect();
            for (dataset, slot) in slots {
                let Ok(mut vol) = slot.try_lock_owned() else { continue };
                if vol.gone || vol.targets.is_empty() {
                    continue;
                }
                if let Err(e) = self.heal(&dataset, &mut vol).await {
                    warn!(%dataset, error = %e, "recovering the volume failed; will retry");
                }
                self.note(&dataset, &mut vol);
            }
            tokio::time::sleep(SUPERVISE_EVERY).await;
        }
    }

    /// Make `dataset` visible at `target`. Idempotent; on failure nothing new is
    /// left mounted.
    pub async fn publish(&self, dataset: &str, target: &Path, readonly: bool) -> Result<(), CsiError> {
        self.pending.lock().expect("pending lock").insert(target.to_path_buf(), dataset.to_string());
        let mut vol = self.lock_or_create(dataset).await;
        let result = if vol.targets.contains(target) && is_mounted(target) {
            Ok(())
        } else {
            self.publish_into(dataset, &mut vol, target, readonly).await
        };
        if result.is_err() && vol.targets.is_empty() {
            self.stop(dataset, &mut vol).await;
            vol.gone = true;
        }
        self.note(dataset, &mut vol);
        self.pending.lock().expect("pending lock").remove(target);
        result
    }

    async fn publish_into(
        &self,
        dataset: &str,
        vol: &mut Volume,
        target: &Path,
        readonly: bool,
    ) -> Result<(), CsiError> {
        if !self.fuse_alive(vol) {
            self.revive(dataset, vol).await?;
        }
        std::fs::create_dir_all(target).map_err(|e| CsiError::Io(format!("create {}: {e}", target.display())))?;
        bind(&vol.staging, target, readonly)?;
        vol.targets.insert(target.to_path_buf());
        metrics::PUBLISHED.inc();
        info!(%dataset, target = %target.display(), "published");
        Ok(())
    }

    /// Remove `target`; the dataset's FUSE mount goes with its last target.
    /// Idempotent: an unknown target is only made sure to be unmounted.
    pub async fn unpublish(&self, target: &Path) -> Result<(), CsiError> {
        let owner = self
            .record
            .lock()
            .expect("record lock")
            .iter()
            .find(|(_, v)| v.targets.contains(target))
            .map(|(d, _)| d.clone())
            .or_else(|| {
                let dataset = self.pending.lock().expect("pending lock").get(target).cloned();
                if let Some(dataset) = &dataset {
                    info!(%dataset, target = %target.display(), "unpublish waits for the target's publish");
                }
                dataset
            });
        let Some(dataset) = owner else {
            unmount(target)?;
            let _ = std::fs::remove_dir(target);
            return Ok(());
        };
        let mut vol = self.lock_existing(&dataset).await;
        unmount(target)?;
        let _ = std::fs::remove_dir(target);
        if let Some(vol) = vol.as_mut() {
            vol.targets.remove(target);
            info!(%dataset, target = %target.display(), "unpublished");
            if vol.targets.is_empty() {
                self.stop(&dataset, vol).await;
                vol.gone = true;
            }
            self.note(&dataset, vol);
        }
        Ok(())
    }

    /// Each dataset's FUSE process and target paths.
    pub async fn status(&self) -> Vec<VolumeStatus> {
        let record = self.record.lock().expect("record lock");
        record
            .iter()
            .map(|(d, v)| VolumeStatus { dataset: d.clone(), pid: v.pid, targets: v.targets.iter().cloned().collect() })
            .collect()
    }

    /// One supervisor pass over a volume: a dead FUSE process is replaced and
    /// every target bound again; missing binds are made again.
    async fn heal(&self, dataset: &str, vol: &mut Volume) -> Result<(), CsiError> {
        let dead = match vol.fuse.as_mut() {
            Some(f) => f.exited() || !is_mounted(&vol.staging),
            None => true,
        };
        if !dead && vol.started.is_some_and(|t| t.elapsed() > HEALTHY_AFTER) {
            vol.retry_at = None;
            vol.quick_deaths = 0;
        }
        if dead {
            if let Some(mut old) = vol.fuse.take() {
                warn!(%dataset, "the FUSE process died; restarting it");
                // (Or its mount went away under it: it serves nothing.)
                kill_now(&mut old).await;
                if vol.started.is_some_and(|t| t.elapsed() < QUICK_DEATH) {
                    vol.quick_deaths += 1;
                    if vol.quick_deaths > 1 {
                        vol.back_off();
                    }
                } else {
                    vol.quick_deaths = 0;
                }
            }
            if let Some((at, _)) = vol.retry_at {
                if Instant::now() < at {
                    return Ok(());
                }
            }
            let started = Instant::now();
            self.revive(dataset, vol).await?;
            metrics::RESTARTS.inc();
            info!(%dataset, ms = started.elapsed().as_millis() as u64, "FUSE process restarted");
        }
        for t in &vol.targets {
            if !is_mounted(t) {
                std::fs::create_dir_all(t).map_err(|e| CsiError::Io(format!("create {}: {e}", t.display())))?;
                bind(&vol.staging, t, true)?;
                info!(%dataset, target = %t.display(), "target bound again");
            }
        }
        Ok(())
    }

    fn fuse_alive(&self, vol: &mut Volume) -> bool {
        vol.fuse.as_mut().is_some_and(|f| !f.exited()) && is_mounted(&vol.staging)
    }

    /// Replace every FUSE process whose connection is held by a new one that
    /// takes it over (the `shoal` binary on disk, so an upgraded binary takes
    /// effect), without failing any read: the new process serves before the
    /// old one is stopped. Returns how many were replaced.
    pub async fn replace_all(&self) -> usize {
        let slots: Vec<(String, Slot)> =
            self.slots.lock().expect("slots lock").iter().map(|(d, s)| (d.clone(), s.clone())).collect();
        let mut replaced = 0;
        for (dataset, slot) in slots {
            let mut vol = slot.lock_owned().await;
            if vol.gone || vol.fd.is_none() || !self.fuse_alive(&mut vol) {
                continue;
            }
            match self.take_over(&dataset, &mut vol).await {
                Ok(()) => replaced += 1,
                Err(e) => warn!(%dataset, error = %e, "replacing the FUSE process failed; the supervisor retries"),
            }
            self.note(&dataset, &mut vol);
        }
        replaced
    }

    /// Bring the dataset's FUSE process up: a new process takes over the held
    /// connection (targets keep their mount; pods see a pause), or, when none is
    /// held or the held one is dead (aborted), a fresh mount whose targets the
    /// supervisor binds again. A takeover that fails is retried with backoff
    /// for as long as the connection lives: a fresh mount would need the same
    /// master and binary, and giving the connection up fails every open file.
    async fn revive(&self, dataset: &str, vol: &mut Volume) -> Result<(), CsiError> {
        if let Some(fd) = vol.fd.as_ref().filter(|_| is_mounted(&vol.staging)) {
            if fusefd::connected(fd) {
                return self.take_over(dataset, vol).await;
            }
            warn!(%dataset, "the held FUSE connection was aborted; mounting afresh");
        }
        vol.fd = None;
        for t in &vol.targets {
            unmount(t)?;
        }
        self.start_fuse(dataset, vol).await
    }

    /// Start `shoal mount --fuse-fd` on the held connection and wait until it
    /// serves; then stop the process that served it before, if any (SIGKILL: it
    /// must not unmount), and have the kernel queue again whatever that process
    /// read and never answered.
    async fn take_over(&self, dataset: &str, vol: &mut Volume) -> Result<(), CsiError> {
        let fd = vol.fd.as_ref().expect("a held connection");
        let started = Instant::now();
        let result = async {
            let inherit =
                fusefd::inheritable(fd).map_err(|e| CsiError::Io(format!("pass the FUSE connection: {e}")))?;
            let log = self.log_path(dataset);
            let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            let (child, log) = self.spawn(dataset, &vol.staging, Some(inherit.as_raw_fd()))?;
            drop(inherit);
            wait_serving(dataset, child, &log, from).await
        }
        .await;
        match result {
            Ok(child) => {
                if let Some(mut old) = vol.fuse.replace(Fuse::Child(child)) {
                    kill_now(&mut old).await;
                }
                if let Err(e) = shoal_core::fusedev::notify(fd, shoal_core::fusedev::NOTIFY_RESEND) {
                    warn!(%dataset, error = %e, "cannot have the kernel resend the old process's requests");
                }
                vol.started = Some(Instant::now());
                metrics::TAKEOVERS.inc();
                info!(%dataset, ms = started.elapsed().as_millis() as u64, "a new FUSE process took the mount over");
                Ok(())
            }
            Err(e) => {
                vol.back_off();
                Err(e)
            }
        }
    }

    /// Start `shoal mount` for the dataset on its staging directory and wait for it
    /// to be mounted. A failure is backed off before the supervisor retries.
    async fn start_fuse(&self, dataset: &str, vol: &mut Volume) -> Result<(), CsiError> {
        if let Some(mut old) = vol.fuse.take() {
            terminate(&mut old).await;
        }
        unmount(&vol.staging)?;
        std::fs::create_dir_all(&vol.staging)
            .map_err(|e| CsiError::Io(format!("create {}: {e}", vol.staging.display())))?;
        let result = match self.spawn(dataset, &vol.staging, None) {
            Ok((child, log)) => wait_mounted(dataset, child, &vol.staging, &log).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(child) => {
                vol.fd = child.id().and_then(|pid| copy_fd(pid as i32, &vol.staging));
                vol.fuse = Some(Fuse::Child(child));
                vol.started = Some(Instant::now());
                Ok(())
            }
            Err(e) => {
                vol.back_off();
                Err(e)
            }
        }
    }

    /// Start `shoal mount` for the dataset on `staging`, logging to the state
    /// directory; with `fuse_fd`, it takes over that inherited connection.
    fn log_path(&self, dataset: &str) -> PathBuf {
        self.cfg.state_dir.join("logs").join(format!("{dataset}.log"))
    }

    fn spawn(&self, dataset: &str, staging: &Path, fuse_fd: Option<i32>) -> Result<(Child, PathBuf), CsiError> {
        let log_path = self.log_path(dataset);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| CsiError::Io(format!("open {}: {e}", log_path.display())))?;
        let log_err = log.try_clone().map_err(|e| CsiError::Io(e.to_string()))?;
        let mut cmd = Command::new(&self.cfg.shoal_bin);
        cmd.arg("mount")
            .arg(dataset)
            .arg(staging)
            .arg("--master")
            .arg(&self.cfg.master)
            .arg("--node")
            .arg(&self.cfg.node_id)
            .arg("-o")
            .arg("allow_other")
            .args(&self.cfg.mount_args)
            .args(fuse_fd.map(|fd| format!("--fuse-fd={fd}")))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd.spawn().map_err(|e| CsiError::Io(format!("start {}: {e}", self.cfg.shoal_bin.display())))?;
        Ok((child, log_path))
    }

    async fn stop(&self, dataset: &str, vol: &mut Volume) {
        if let Some(mut f) = vol.fuse.take() {
            terminate(&mut f).await;
        }
        vol.fd = None;
        if let Err(e) = unmount(&vol.staging) {
            warn!(%dataset, error = %e, "unmounting the FUSE mount failed");
        }
        let _ = std::fs::remove_dir(&vol.staging);
        info!(%dataset, "FUSE mount stopped");
    }

    fn save(&self, volumes: &BTreeMap<String, RecordVolume>) {
        let record = Record { volumes: volumes.clone() };
        let path = self.cfg.state_dir.join("state.json");
        let tmp = path.with_extension("json.tmp");
        let res = serde_json::to_vec_pretty(&record)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = res {
            warn!(error = %e, "cannot record the published volumes");
        }
    }
}

/// The volumes and targets gauges, from the record.
fn set_gauges(record: &BTreeMap<String, RecordVolume>) {
    metrics::VOLUMES.set(record.len() as i64);
    metrics::TARGETS.set(record.values().map(|v| v.targets.len() as i64).sum());
}

fn staging_dir(cfg: &Config, dataset: &str) -> PathBuf {
    cfg.state_dir.join("mounts").join(dataset)
}

/// Whether `pid` is a live `shoal mount` of `staging`. A recorded pid may have
/// been reused by another process (after a reboot or in a new PID namespace), so
/// its command line must name the staging directory.
fn serves(pid: i32, staging: &Path) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        .unwrap_or(true);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let want = staging.as_os_str().as_encoded_bytes();
    kill(Pid::from_raw(pid), None).is_ok()
        && !zombie
        && cmdline.split(|b| *b == 0).any(|arg| arg == b"mount")
        && cmdline.split(|b| *b == 0).any(|arg| arg == want)
}

fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), CsiError> {
    let err = |e| CsiError::Mount(format!("bind {} on {}: {e}", source.display(), target.display()));
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(err)?;
    if readonly {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            let _ = umount2(target, MntFlags::MNT_DETACH);
            return Err(err(e));
        }
    }
    Ok(())
}

/// Detach whatever is mounted on `path` (every layer), if anything.
fn unmount(path: &Path) -> Result<(), CsiError> {
    while is_mounted(path) {
        umount2(path, MntFlags::MNT_DETACH).map_err(|e| CsiError::Mount(format!("unmount {}: {e}", path.display())))?;
    }
    Ok(())
}

/// Wait for a new `shoal mount` to show up in the mount table.
async fn wait_mounted(dataset: &str, child: Child, staging: &Path, log: &Path) -> Result<Child, CsiError> {
    let staging = staging.to_path_buf();
    wait_child(dataset, child, log, "mount", move || is_mounted(&staging)).await
}

/// Wait for a process that took a connection over to say it serves it (its
/// "mounted dataset" line, past `from` in the log): the old process, when alive,
/// answers meanwhile, so the connection itself cannot tell them apart.
async fn wait_serving(dataset: &str, child: Child, log: &Path, from: u64) -> Result<Child, CsiError> {
    let log_file = log.to_path_buf();
    let ready = move || {
        let text = std::fs::read(&log_file).unwrap_or_default();
        let new = text.get(from as usize..).unwrap_or_default();
        new.windows(16).any(|w| w == b"mounted dataset ")
    };
    wait_child(dataset, child, log, "serve", ready).await
}

/// Poll `ready` until it holds, the child exits (an error with the tail of its
/// log) or [`MOUNT_DEADLINE`] passes (the child is killed).
async fn wait_child(
    dataset: &str,
    mut child: Child,
    log: &Path,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<Child, CsiError> {
    let deadline = Instant::now() + MOUNT_DEADLINE;
    loop {
        if ready() {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = log_tail(log);
            return Err(CsiError::Mount(format!("shoal mount of {dataset:?} exited with {status}: {tail}")));
        }
        if Instant::now() > deadline {
            kill_now(&mut Fuse::Child(child)).await;
            return Err(CsiError::Mount(format!("shoal mount of {dataset:?} did not {what} within 60 s")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGKILL, and reap: the process leaves its mount (and held connection) alone.
async fn kill_now(f: &mut Fuse) {
    let Some(pid) = f.pid() else { return };
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    match f {
        Fuse::Child(c) => {
            let _ = c.wait().await;
        }
        Fuse::Adopted(..) => {
            while !f.exited() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// SIGTERM (the mount unmounts itself), then SIGKILL after 10 s.
async fn terminate(f: &mut Fuse) {
    let Some(pid) = f.pid() else { return };
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f.exited() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !f.exited() {
        kill_now(f).await;
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
