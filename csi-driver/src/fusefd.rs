//! Copies of the FUSE processes' `/dev/fuse` descriptors. While the plugin holds
//! a copy, a FUSE connection outlives its process: when the process dies the
//! kernel queues the pods' requests instead of failing them, and a new process
//! given the copy (`shoal mount --fuse-fd`) answers them. The copy is taken from
//! the running process with `pidfd_getfd(2)` (Linux 5.6; the plugin is root),
//! so it works the same for processes this plugin started and for those it
//! adopted from an earlier run.

#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A copy of the `/dev/fuse` descriptor `pid` serves (the first one it has open).
pub fn copy_from(pid: i32) -> std::io::Result<OwnedFd> {
    let target = fuse_fd_number(pid)?;
    // SAFETY: plain syscalls; each returns a new descriptor this process owns
    // (or -1), which is wrapped at once and closed on drop.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // pidfd_getfd sets close-on-exec: the copy leaks into no other child.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn fuse_fd_number(pid: i32) -> std::io::Result<RawFd> {
    let dir = format!("/proc/{pid}/fd");
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        if std::fs::read_link(entry.path()).is_ok_and(|l| l.as_os_str() == "/dev/fuse") {
            if let Some(n) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                return Ok(n);
            }
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("process {pid} has no /dev/fuse open")))
}

/// Whether this kernel can queue again the requests a dead FUSE process left
/// unanswered (`FUSE_NOTIFY_RESEND`, Linux 6.9). Without it a takeover would
/// leave those callers blocked for good, so no connection is held at all.
pub fn supported() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut nums = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
    (nums.next().unwrap_or(0), nums.next().unwrap_or(0)) >= (6, 9)
}

/// Whether the connection behind `fd` is still up (an aborted one polls as an
/// error).
pub fn connected(fd: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => !fds[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)),
        Err(_) => false,
    }
}

/// A duplicate of `fd` that a child started next inherits (no close-on-exec), as
/// the number to give it. Drop it once the child is started.
pub fn inheritable(fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let dup = fd.try_clone()?;
    fcntl(&dup, FcntlArg::F_SETFD(FdFlag::empty()))?;
    Ok(dup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_without_fuse_has_nothing_to_copy() {
        let err = copy_from(std::process::id() as i32).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert!(copy_from(i32::MAX).is_err());
    }

    #[test]
    fn an_inheritable_copy_has_no_close_on_exec() {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        let f = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let dup = inheritable(&f).unwrap();
        let flags = FdFlag::from_bits_truncate(fcntl(&dup, FcntlArg::F_GETFD).unwrap());
        assert!(!flags.contains(FdFlag::FD_CLOEXEC));
        let flags = FdFlag::from_bits_truncate(fcntl(&f, FcntlArg::F_GETFD).unwrap());
        assert!(flags.contains(FdFlag::FD_CLOEXEC));
    }
}
