//! Taking over a live FUSE connection. A mount whose `/dev/fuse` descriptor is
//! still held by someone else (the CSI driver keeps a copy of each one) does not
//! go away when its process dies: the kernel queues the pods' requests until a
//! new process serves the same descriptor. This module turns such a descriptor
//! into a `fuser` session, so a FUSE process can be killed, restarted or upgraded
//! without open files in running pods seeing an error.
//!
//! Two things make it work:
//! - `fuser` only builds sessions through the INIT handshake, which the kernel
//!   sent long ago to the first process. The session is built on one end of a
//!   socket pair that carries a synthetic INIT, and its descriptor is then
//!   replaced (`dup3`) by the live `/dev/fuse` one before the first request is
//!   read. Nothing of the INIT is kept by `fuser` besides what our own `init`
//!   sets, and the kernel keeps what it negotiated with the first process.
//! - Requests the dead process had read but not answered would wait forever;
//!   `FUSE_NOTIFY_RESEND` (Linux 6.9) puts them back in the queue, before this
//!   process reads its first one. A restarted process serves the same inode
//!   numbers (they are the master's) and needs no open handles (opens make no
//!   round trip), so any request of the old one is valid here.

#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixDatagram;

use fuser::{Config, Filesystem, Session};
use shoal_core::fusedev::{notify, NOTIFY_INC_EPOCH, NOTIFY_RESEND};
use tracing::{info, warn};

/// `/dev/fuse` is the character device 10:229.
const FUSE_DEV: (u64, u64) = (10, 229);
const FUSE_INIT: u32 = 26;

/// Serve the live FUSE connection behind `fd` with `fs`. The kernel must have
/// finished INIT on it (a mount is up); the caller runs the session as usual.
pub fn session<FS: Filesystem>(fs: FS, fd: OwnedFd, config: &Config) -> std::io::Result<Session<FS>> {
    check_is_fuse(&fd)?;
    let (ours, theirs) = UnixDatagram::pair()?;
    ours.send(&synthetic_init())?;
    let session = Session::from_fd(fs, OwnedFd::from(theirs), config.acl, config.clone())?;
    // SAFETY: `session` owns its descriptor and keeps using that number; dup3
    // atomically makes the number refer to the live `/dev/fuse` file instead of
    // the socket (close-on-exec, like every descriptor std opens), and `fd`
    // stays valid for the duration of the call.
    let raw = session.as_fd().as_raw_fd();
    if unsafe { libc::dup3(fd.as_raw_fd(), raw, libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(fd);
    resend_pending(&session);
    Ok(session)
}

/// Own descriptor `fd`, inherited from the process that started this one
/// (`shoal mount --fuse-fd N`), once it is known to be an open `/dev/fuse`.
pub fn inherited(fd: RawFd) -> std::io::Result<OwnedFd> {
    // F_GETFD fails with EBADF on a number that is not open.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("descriptor {fd} is not open")));
    }
    // SAFETY: the number is open, was handed to this process to own, and is
    // claimed once (the caller converts each --fuse-fd once).
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    check_is_fuse(&fd)?;
    Ok(fd)
}

fn check_is_fuse(fd: &OwnedFd) -> std::io::Result<()> {
    let file = std::fs::File::from(fd.try_clone()?);
    let meta = file.metadata()?;
    let rdev = meta.rdev();
    let dev = (libc::major(rdev) as u64, libc::minor(rdev) as u64);
    if !meta.file_type().is_char_device() || dev != FUSE_DEV {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the descriptor to take over is not /dev/fuse",
        ));
    }
    Ok(())
}

/// A `fuse_in_header` and `fuse_init_in` (ABI 7.31, no flags).
fn synthetic_init() -> Vec<u8> {
    let mut m = Vec::with_capacity(56);
    m.extend_from_slice(&56u32.to_ne_bytes()); // len
    m.extend_from_slice(&FUSE_INIT.to_ne_bytes()); // opcode
    m.extend_from_slice(&1u64.to_ne_bytes()); // unique
    m.extend_from_slice(&0u64.to_ne_bytes()); // nodeid
    m.extend_from_slice(&[0u8; 16]); // uid, gid, pid, total_extlen, padding
    for v in [7u32, 31, 1 << 20, 0] {
        m.extend_from_slice(&v.to_ne_bytes()); // major, minor, max_readahead, flags
    }
    m
}

/// Ask the kernel to queue again every request a previous process read and never
/// answered (without it, on kernels before 6.9, those few callers stay blocked),
/// and to revalidate the entries it holds.
fn resend_pending<FS: Filesystem>(session: &Session<FS>) {
    match notify(session, NOTIFY_RESEND) {
        Ok(_) => info!("took over the FUSE connection; requests in flight are queued again"),
        Err(e) => warn!(error = %e, "the kernel cannot resend requests in flight (Linux 6.9+): their callers may hang"),
    }
    // The dataset may have been re-synced while no process served it: the
    // kernel revalidates every entry it holds (answered from memory).
    if let Err(e) = notify(session, NOTIFY_INC_EPOCH) {
        warn!(error = %e, "the kernel cannot revalidate entries (Linux 6.16+): a re-sync during the restart shows after --attr-timeout");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_that_is_not_dev_fuse_is_refused() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let err = check_is_fuse(&OwnedFd::from(f)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        let (a, _b) = UnixDatagram::pair().unwrap();
        assert!(check_is_fuse(&OwnedFd::from(a)).is_err());
    }

    #[test]
    fn the_synthetic_init_is_one_whole_message() {
        let m = synthetic_init();
        assert_eq!(m.len(), 56);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 56);
        assert_eq!(u32::from_ne_bytes(m[4..8].try_into().unwrap()), FUSE_INIT);
    }
}
