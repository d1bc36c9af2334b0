//! Notifications to the kernel's FUSE device (`/dev/fuse`) that carry no
//! payload and that `fuser` has no call for. The mount sends them on its own
//! connection, the CSI plugin on the copies it holds.

use std::io::Write;
use std::os::fd::AsFd;

/// `fuse_notify_code::FUSE_NOTIFY_RESEND` (Linux 6.9): queue again every request
/// a server read and never answered.
pub const NOTIFY_RESEND: i32 = 7;
/// `fuse_notify_code::FUSE_NOTIFY_INC_EPOCH` (Linux 6.16): revalidate every
/// cached entry before using it.
pub const NOTIFY_INC_EPOCH: i32 = 8;

/// Send notification `code` on the FUSE device `dev`: a bare `fuse_out_header`
/// (length 16, the code as its error field, unique 0).
pub fn notify(dev: impl AsFd, code: i32) -> std::io::Result<()> {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&16u32.to_ne_bytes());
    header[4..8].copy_from_slice(&code.to_ne_bytes());
    std::fs::File::from(dev.as_fd().try_clone_to_owned()?).write_all(&header)
}
