//! Dataset paths and CSI target paths: whatever is accepted is absolute, clean
//! (no empty, `.` or `..` component, no NUL) and, for target paths, inside the
//! kubelet root.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if shoal_core::ids::validate_dataset_path(text).is_ok() {
        assert!(text.starts_with('/'));
        assert!(!text.contains('\0'));
        if text != "/" {
            assert!(text.split('/').skip(1).all(|c| !c.is_empty() && c != "." && c != ".." && c.len() <= 255));
        }
    }
    let _ = shoal_core::validate_dataset_name(text);
    let root = Path::new("/var/lib/kubelet");
    if let Ok(p) = shoal_csi::validate::target_path(text, root) {
        assert!(p.starts_with(root) && p != root, "{p:?} is outside the root");
        assert!(!text.split('/').any(|c| c == ".." || c == "."), "{text:?} has a dot component");
        assert!(!text.contains('\0'));
    }
});
