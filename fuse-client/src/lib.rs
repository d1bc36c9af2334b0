//! shoal-fuse: the POSIX view of a dataset. Loads the dataset's directories from
//! the master in bulk (within a memory budget, see [`namespace`]) and serves a
//! read-only `fuser` filesystem whose reads come from workers (short-circuit when co-located) or, when no worker
//! answers, from the store directly. Owns the mount's lifecycle (mount, unmount);
//! it holds no durable state.

pub mod files;
pub mod fs;
pub mod locator;
pub mod metrics;
pub mod namespace;
pub mod order;
pub mod readahead;
pub mod reader;
pub mod sources;
pub mod takeover;

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::master::{DatasetInfo, GetDatasetRequest};
use tracing::info;

pub use reader::{Reader, ReaderConfig};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("invalid master address {0:?}")]
    BadMaster(String),
    #[error("dataset {0:?} not found on the master")]
    NoDataset(String),
    #[error("master: {0}")]
    Master(String),
    #[error("mount point {path}: {reason}")]
    MountPoint { path: PathBuf, reason: String },
    #[error("cannot mount at {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to mount and how.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub dataset: String,
    pub mountpoint: PathBuf,
    pub master: String,
    /// This machine's node name (a worker on the same node is read by short-circuit).
    pub node: String,
    /// Let other users (and pods) read the mount.
    pub allow_other: bool,
    /// How long the kernel may cache entries and attributes.
    pub ttl: Duration,
    /// Bytes of directory listings kept in memory (beyond it, listings are
    /// dropped and loaded again when needed).
    pub metadata_budget: u64,
    /// Bytes of blocks cached in this process.
    pub cache_bytes: u64,
    /// Threads reading `/dev/fuse`.
    pub threads: usize,
    /// How often to check the master for a re-synced namespace (zero: never).
    pub refresh: Duration,
    /// Cold reads of small files in a directory after which the rest of its
    /// small files are prefetched into the workers (0: never).
    pub dir_prefetch: u32,
    /// Small files the directory prefetch has in flight at once.
    pub dir_prefetch_parallel: usize,
    /// Serve this inherited descriptor of a live FUSE connection (whose mount is
    /// already up) instead of mounting: see [`takeover`].
    pub takeover_fd: Option<std::os::fd::RawFd>,
}

/// A live mount. Dropping it does not unmount; call [`MountHandle::unmount`].
pub struct MountHandle {
    pub mountpoint: PathBuf,
    pub dataset: DatasetInfo,
    pub reader: Arc<Reader>,
    unmounter: fuser::SessionUnmounter,
    /// Serving a connection this process did not mount (`fuser` cannot unmount it).
    taken_over: bool,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl std::fmt::Debug for MountHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountHandle").field("mountpoint", &self.mountpoint).finish()
    }
}

impl MountHandle {
    /// The filesystem session ended (e.g. someone ran `umount`).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Unmount and wait for the session to end.
    pub fn unmount(mut self) -> std::io::Result<()> {
        let mut res = self.unmounter.unmount();
        if self.taken_over {
            res = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH).map_err(std::io::Error::from);
        }
        // The kernel ends the connection (and so the session) with its mount.
        let _ = self.thread.join();
        res
    }
}

pub fn master_client(addr: &str) -> Result<shoal_proto::auth::Master, MountError> {
    let master = shoal_proto::auth::master(addr, |ep| shoal_proto::profile::Profile::ADMIN.apply(ep))
        .map_err(|_| MountError::BadMaster(addr.to_string()))?;
    Ok(master.max_decoding_message_size(shoal_proto::MAX_MESSAGE_BYTES))
}

/// Dataset `name`'s record from the master: `NoDataset` if it has none.
pub(crate) async fn get_dataset(
    master: &mut shoal_proto::auth::Master,
    name: &str,
) -> Result<shoal_proto::master::DatasetInfo, MountError> {
    let r = master.get_dataset(GetDatasetRequest { name: name.to_string() }).await.map_err(|s| match s.code() {
        tonic::Code::NotFound => MountError::NoDataset(name.to_string()),
        _ => MountError::Master(s.message().to_string()),
    })?;
    Ok(r.into_inner())
}

pub use shoal_core::mounts::is_mounted;

/// Follow re-syncs of the dataset: when its generation moves, load the listings
/// in memory again and tell the kernel (of a mount) which entries and inodes
/// (and so which cached pages) to forget. The master being down only delays this.
/// Starts from the dataset's name and the generation loaded.
async fn refresh_loop(
    mut master: shoal_proto::auth::Master,
    (dataset, mut generation): (String, u64),
    meta: Arc<namespace::Metadata>,
    reader: Arc<Reader>,
    totals: Arc<fs::Totals>,
    kernel: Option<Kernel>,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let Ok(info) = master.get_dataset(GetDatasetRequest { name: dataset.clone() }).await else { continue };
        let info = info.into_inner();
        reader.set_dataset(&info);
        if info.generation == generation {
            continue;
        }
        set_totals(&totals, &info);
        // Entries of directories dropped from memory cannot be diffed: have the
        // kernel revalidate every entry it holds (Linux 6.16+).
        let dropped = meta.take_dropped();
        let (entries, mut inodes) = meta.resync(dropped).await;
        inodes.sort_unstable();
        inodes.dedup();
        generation = info.generation;
        let Some(kernel) = &kernel else { continue };
        if dropped {
            if let Err(e) = shoal_core::fusedev::notify(&kernel.dev, shoal_core::fusedev::NOTIFY_INC_EPOCH) {
                tracing::warn!(error = %e, "the kernel cannot revalidate all entries (Linux 6.16+): entries of directories dropped from memory may show their old attributes until --attr-timeout");
            }
        }
        info!(
            dataset,
            generation = info.generation,
            entries = entries.len(),
            inodes = inodes.len(),
            "namespace re-synced"
        );
        let n = kernel.notifier.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (parent, name) in entries {
                let _ = n.inval_entry(fuser::INodeNo(parent), std::ffi::OsStr::new(&name));
            }
            for ino in inodes {
                let _ = n.inval_inode(fuser::INodeNo(ino), 0, 0);
            }
        })
        .await;
    }
}

/// How the mount tells the kernel what changed: `fuser`'s notifier, and the
/// device itself for the notifications `fuser` has no call for.
struct Kernel {
    notifier: fuser::Notifier,
    dev: std::fs::File,
}

fn set_totals(totals: &fs::Totals, info: &DatasetInfo) {
    use std::sync::atomic::Ordering::Relaxed;
    totals.entries.store(info.file_count + info.dir_count + 1, Relaxed);
    totals.bytes.store(info.total_bytes, Relaxed);
}

/// Load the dataset's namespace and mount it; returns once the kernel has
/// accepted the mount. Must be called inside a tokio runtime.
pub async fn mount(opts: MountOptions) -> Result<MountHandle, MountError> {
    let mount_err = |source| MountError::Mount { path: opts.mountpoint.clone(), source };
    // A live connection's mount point would wait on this very process.
    let takeover = opts.takeover_fd.map(takeover::inherited).transpose().map_err(mount_err)?;
    if takeover.is_none() {
        let meta = std::fs::metadata(&opts.mountpoint)
            .map_err(|e| MountError::MountPoint { path: opts.mountpoint.clone(), reason: e.to_string() })?;
        if !meta.is_dir() {
            return Err(MountError::MountPoint { path: opts.mountpoint.clone(), reason: "not a directory".into() });
        }
    }
    let mut master = master_client(&opts.master)?;
    let dataset = get_dataset(&mut master, &opts.dataset).await?;
    let meta = namespace::Metadata::new(
        &opts.dataset,
        master.clone(),
        tokio::runtime::Handle::current(),
        opts.metadata_budget,
    );
    // The root's listing before the mount answers: a missing master fails here.
    let root = meta.clone();
    let listing = tokio::task::spawn_blocking(move || root.listing(namespace::ROOT))
        .await
        .map_err(|e| MountError::Master(e.to_string()))?
        .map_err(|e| MountError::Master(e.to_string()))?;
    info!(dataset = %opts.dataset, entries = dataset.file_count + dataset.dir_count, root_entries = listing.entries().len(), "namespace opened");
    let totals = Arc::new(fs::Totals::default());
    set_totals(&totals, &dataset);

    let reader = Reader::new(
        dataset.clone(),
        master,
        &ReaderConfig {
            node: opts.node.clone(),
            cache_bytes: opts.cache_bytes,
            dir_prefetch_parallel: opts.dir_prefetch_parallel,
        },
    );
    reader.refresh_workers().await;
    reader.spawn_refresh(Duration::from_secs(3));
    let filesystem = fs::ShoalFs::new(
        meta.clone(),
        totals.clone(),
        reader.clone(),
        tokio::runtime::Handle::current(),
        opts.ttl,
        opts.dir_prefetch,
    );

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("shoal:{}", opts.dataset)),
        fuser::MountOption::Subtype("shoal".into()),
        fuser::MountOption::RO,
        fuser::MountOption::NoAtime,
        fuser::MountOption::DefaultPermissions,
    ];
    if opts.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    let path = opts.mountpoint.clone();
    let taken_over = takeover.is_some();
    let mut session = tokio::task::spawn_blocking(move || match takeover {
        Some(fd) => takeover::session(filesystem, fd, &config),
        None => fuser::Session::new(filesystem, &path, &config),
    })
    .await
    .map_err(|e| mount_err(std::io::Error::other(e.to_string())))?
    .map_err(mount_err)?;
    let unmounter = session.unmount_callable();
    if !opts.refresh.is_zero() {
        tokio::spawn(refresh_loop(
            master_client(&opts.master)?,
            (opts.dataset.clone(), dataset.generation),
            meta,
            reader.clone(),
            totals,
            Some(Kernel {
                notifier: session.notifier(),
                dev: session.as_fd().try_clone_to_owned().map(std::fs::File::from).map_err(mount_err)?,
            }),
            opts.refresh,
        ));
    }
    let thread =
        std::thread::Builder::new().name("shoal-fuse".into()).spawn(move || session.run()).map_err(mount_err)?;
    info!(dataset = %opts.dataset, mountpoint = %opts.mountpoint.display(), taken_over, "mounted");
    Ok(MountHandle { mountpoint: opts.mountpoint, dataset, reader, unmounter, taken_over, thread })
}
