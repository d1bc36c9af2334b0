//! The kernel's mount table as seen by this process (`/proc/self/mounts`).

use std::path::Path;

/// Whether `path` is a mount point: a line of `/proc/self/mounts` names it (the
/// kernel escapes spaces, tabs, newlines and backslashes as octal).
pub fn is_mounted(path: &Path) -> bool {
    let want = escape(&path.to_string_lossy());
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(want.as_str())))
        .unwrap_or(false)
}

fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            ' ' => out.push_str("\\040"),
            '\t' => out.push_str("\\011"),
            '\n' => out.push_str("\\012"),
            '\\' => out.push_str("\\134"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_mounted_and_a_fresh_directory_is_not() {
        assert!(is_mounted(Path::new("/")));
        assert!(is_mounted(Path::new("/proc")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mounted(dir.path()));
        assert_eq!(escape("/a b\\c"), "/a\\040b\\134c");
    }
}
