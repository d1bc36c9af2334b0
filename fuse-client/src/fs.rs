//! The FUSE filesystem: a read-only POSIX view of one dataset. Metadata calls are
//! answered from the in-memory listings of [`Metadata`] with long kernel TTLs;
//! reads are handed to tokio tasks so many run at once; opens are zero-message
//! (the kernel opens files without asking us and keeps their page cache, as with
//! `FOPEN_KEEP_CACHE`) so a second epoch is served by the page cache. Every call
//! that would change anything returns `EROFS` (the mount is also read-only in the
//! kernel).

use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner,
    OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use shoal_proto::master::Inode;
use tokio::runtime::Handle;
use tracing::{debug, warn};

use crate::metrics;
use crate::namespace::{Entry, Located, MetaError, Metadata, ROOT};
use crate::readahead::{ColdReads, Readahead};
use crate::reader::{ReadError, Reader};

/// Largest read the kernel sends (it allows 1 MiB with `max_pages` 256).
pub const MAX_READ: u32 = 1 << 20;
/// Files of one directory a directory prefetch asks for at most.
const MAX_DIR_PREFETCH: usize = 100_000;

/// The dataset's totals, for `statfs` (updated on re-syncs).
#[derive(Debug, Default)]
pub struct Totals {
    pub entries: AtomicU64,
    pub bytes: AtomicU64,
}

pub struct ShoalFs {
    meta: Arc<Metadata>,
    totals: Arc<Totals>,
    reader: Arc<Reader>,
    rt: Handle,
    ttl: Duration,
    uid: u32,
    gid: u32,
    readahead: Readahead,
    cold_reads: ColdReads,
}

impl std::fmt::Debug for ShoalFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShoalFs").field("meta", &self.meta).finish()
    }
}

fn errno_of(e: &ReadError) -> Errno {
    Errno::from_i32(e.errno())
}

fn meta_errno(e: &MetaError) -> Errno {
    match e {
        MetaError::NotFound => Errno::ENOENT,
        MetaError::NotDir => Errno::ENOTDIR,
        MetaError::Master(m) => {
            warn!(error = %m, "metadata unavailable");
            Errno::EIO
        }
    }
}

impl ShoalFs {
    pub fn new(
        meta: Arc<Metadata>,
        totals: Arc<Totals>,
        reader: Arc<Reader>,
        rt: Handle,
        ttl: Duration,
        dir_prefetch: u32,
    ) -> Self {
        let (uid, gid) = (nix_uid(), nix_gid());
        let (readahead, cold_reads) = (Readahead::default(), ColdReads::new(dir_prefetch));
        Self { meta, totals, reader, rt, ttl, uid, gid, readahead, cold_reads }
    }

    /// Directory prefetch: the `dir_prefetch`-th cold read of a whole small
    /// (single-block) file in a directory asks the workers to cache every other
    /// small file there. A data loader reading a dataset in shuffled order touches
    /// every directory early, so the epoch runs at the store's bandwidth instead
    /// of one round trip per file; a job that reads one file of a directory costs
    /// nothing extra.
    fn note_cold_read(&self, inode: &Inode) {
        if !self.cold_reads.enabled() || inode.size == 0 || inode.size > self.reader.block_size() {
            return;
        }
        if self.reader.is_cached(inode, 0) {
            return;
        }
        if !self.cold_reads.note(inode.parent) {
            return;
        }
        let (Ok(dir), Ok(dir_path)) = (self.meta.listing(inode.parent), self.meta.dir_path(inode.parent)) else {
            return;
        };
        let bs = self.reader.block_size();
        let files: Vec<(Inode, String)> = dir
            .entries()
            .iter()
            .filter(|e| e.ino != inode.ino && !e.is_dir && e.size > 0 && e.size <= bs)
            .take(MAX_DIR_PREFETCH)
            .map(|e| {
                let name = dir.name(e);
                (e.inode(inode.parent, name), format!("{dir_path}/{name}"))
            })
            .collect();
        debug!(dir = inode.parent, files = files.len(), "directory prefetch");
        let _guard = self.rt.enter();
        self.reader.prefetch_files(files);
    }

    fn attr(&self, e: &Entry) -> FileAttr {
        let mtime = e.mtime();
        let (kind, perm, nlink, size) =
            if e.is_dir { (FileType::Directory, 0o555, 2, 0) } else { (FileType::RegularFile, 0o444, 1, e.size) };
        FileAttr {
            ino: INodeNo(e.ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: MAX_READ,
            flags: 0,
        }
    }

    /// A file's record and dataset path.
    fn file(&self, ino: u64) -> Result<(Inode, String), Errno> {
        let Located { parent, entry, name } = self.meta.locate(ino).map_err(|e| meta_errno(&e))?;
        if entry.is_dir {
            return Err(Errno::EISDIR);
        }
        let path = self.meta.path(parent, &name).map_err(|e| meta_errno(&e))?;
        Ok((entry.inode(parent, &name), path))
    }
}

fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(0)
}

fn nix_gid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::gid(&m)).unwrap_or(0)
}

impl Filesystem for ShoalFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large reads and readahead: the kernel asks for up to 1 MiB at a time.
        if let Err(max) = config.set_max_readahead(MAX_READ) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_write(MAX_READ);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        // READDIRPLUS: a listing carries every entry's attributes, so `find`,
        // `ls -l` and `os.walk` + `stat` make no lookup per entry.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DO_READDIRPLUS);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let t = Instant::now();
        let Some(name) = name.to_str() else { return reply.error(Errno::ENOENT) };
        match self.meta.lookup(parent.0, name) {
            Ok(Some(e)) => {
                reply.entry(&self.ttl, &self.attr(&e), Generation(0));
                metrics::op("lookup", true, t);
            }
            Ok(None) => {
                reply.error(Errno::ENOENT);
                metrics::op("lookup", false, t);
            }
            Err(e) => {
                reply.error(meta_errno(&e));
                metrics::op("lookup", false, t);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let t = Instant::now();
        match self.meta.locate(ino.0) {
            Ok(l) => {
                reply.attr(&self.ttl, &self.attr(&l.entry));
                metrics::op("getattr", true, t);
            }
            Err(e) => {
                reply.error(meta_errno(&e));
                metrics::op("getattr", false, t);
            }
        }
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        reply.error(Errno::EINVAL);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if let Err(e) = self.file(ino.0) {
            return reply.error(e);
        }
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        // No prefetch here: the kernel asks only once per mount (see below), and
        // a block fetched before the first read would hide that cold read from
        // the directory prefetch.
        metrics::op("open", true, Instant::now());
        // ENOSYS to a valid open tells the kernel to open files without asking us
        // from now on (and to keep their page cache, as FOPEN_KEEP_CACHE would): a
        // warm epoch then makes no round trip per file at all. Errors above still
        // apply to this first open; later write opens are refused by the read-only
        // mount.
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (inode, path) = match self.file(ino.0) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        if offset == 0 {
            self.note_cold_read(&inode);
        }
        let bs = self.reader.block_size();
        let end = (offset + u64::from(size)).min(inode.size);
        let (access, window) = self.readahead.on_read(ino.0, offset, end);
        let reader = self.reader.clone();
        let t = Instant::now();
        self.rt.spawn(async move {
            if end > offset {
                let last = ((end - 1) / bs) as u32;
                for i in 1..=window {
                    reader.prefetch(&inode, &path, last + i);
                }
            }
            match reader.read(&inode, &path, offset, u64::from(size), access).await {
                Ok(data) => {
                    metrics::READ_BYTES.inc_by(data.len() as u64);
                    reply.data(&data);
                    metrics::op("read", true, t);
                }
                Err(e) => {
                    warn!(path, offset, size, error = %e, "read failed");
                    reply.error(errno_of(&e));
                    metrics::op("read", false, t);
                }
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // Nothing to flush: ENOSYS makes the kernel stop sending FLUSH on close.
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.meta.locate(ino.0) {
            // The kernel may cache directory listings across opens.
            Ok(l) if l.entry.is_dir => {
                reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR)
            }
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(meta_errno(&e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        metrics::op("readdir", true, Instant::now());
        let (dir, parent) = match (self.meta.listing(ino.0), self.meta.locate(ino.0)) {
            (Ok(d), Ok(l)) => (d, l.parent.max(ROOT)),
            (Err(e), _) | (_, Err(e)) => return reply.error(meta_errno(&e)),
        };
        // Offsets: 1 = ".", 2 = "..", 3.. = children.
        let dots = [(1u64, ino.0, "."), (2, parent, "..")];
        for (off, i, name) in dots.into_iter().skip(offset as usize) {
            if reply.add(INodeNo(i), off, FileType::Directory, name) {
                return reply.ok();
            }
        }
        let skip = offset.saturating_sub(2) as usize;
        for (k, e) in dir.entries().iter().enumerate().skip(skip) {
            let kind = if e.is_dir { FileType::Directory } else { FileType::RegularFile };
            if reply.add(INodeNo(e.ino), k as u64 + 3, kind, dir.name(e)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        metrics::op("readdirplus", true, Instant::now());
        let (dir, me) = match (self.meta.listing(ino.0), self.meta.locate(ino.0)) {
            (Ok(d), Ok(l)) => (d, l),
            (Err(e), _) | (_, Err(e)) => return reply.error(meta_errno(&e)),
        };
        // Offsets as in readdir: 1 = ".", 2 = "..", 3.. = children. The kernel
        // makes no entry for the dots; their attributes only fill the reply.
        if offset < 2 {
            let parent = self.meta.locate(me.parent.max(ROOT)).map(|l| l.entry).unwrap_or(me.entry);
            let dots = [(1u64, me.entry, "."), (2, parent, "..")];
            for (off, e, name) in dots.into_iter().skip(offset as usize) {
                if reply.add(INodeNo(e.ino), off, name, &self.ttl, &self.attr(&e), Generation(0)) {
                    return reply.ok();
                }
            }
        }
        let skip = offset.saturating_sub(2) as usize;
        for (k, e) in dir.entries().iter().enumerate().skip(skip) {
            if reply.add(INodeNo(e.ino), k as u64 + 3, dir.name(e), &self.ttl, &self.attr(e), Generation(0)) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let bsize = 4096u64;
        let blocks = self.totals.bytes.load(Ordering::Relaxed).div_ceil(bsize);
        let files = self.totals.entries.load(Ordering::Relaxed);
        reply.statfs(blocks, 0, 0, files, 0, bsize as u32, 255, bsize as u32);
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    // ---- everything that would write: read-only filesystem ----

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, _r: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _t: &Path, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(&self, _req: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lo: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, _f: i32, reply: ReplyCreate) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(&self, _req: &Request, _i: INodeNo, _n: &OsStr, _v: &[u8], _f: i32, _p: u32, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _i: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(&self, _req: &Request, _i: INodeNo, _fh: FileHandle, _o: u64, _l: u64, _m: i32, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    // ---- calls a loader makes that have no meaning here: answered at once and
    // silently (fuser's defaults log a WARN line for each one) ----

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // Python's buffered `open()` asks `isatty()` (TCGETS) of every file, and
        // the kernel cannot remember a refusal: this is one round trip per open,
        // so it must be cheap. No ioctl applies to a dataset file.
        metrics::op("ioctl", true, Instant::now());
        reply.error(Errno::ENOTTY);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _o: i64, _whence: i32, reply: ReplyLseek) {
        // Files have no holes: ENOSYS has the kernel answer SEEK_DATA/SEEK_HOLE
        // itself from now on.
        reply.error(Errno::ENOSYS);
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        // ENOSYS: the kernel treats files as always ready from now on.
        reply.error(Errno::ENOSYS);
    }

    fn bmap(&self, _req: &Request, _ino: INodeNo, _blocksize: u32, _idx: u64, reply: fuser::ReplyBmap) {
        reply.error(Errno::ENOSYS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // The destination is never here (read-only): ENOSYS has the kernel copy
        // through reads from now on.
        reply.error(Errno::ENOSYS);
    }

    fn destroy(&mut self) {
        debug!("filesystem destroyed");
    }
}
