//! Checks on what the container orchestrator sends: volume ids, target paths and
//! capabilities. A request that fails here is answered `InvalidArgument` before
//! anything is mounted.

use std::path::{Path, PathBuf};

use shoal_proto::csi::volume_capability::access_mode::Mode;
use shoal_proto::csi::volume_capability::AccessType;
use shoal_proto::csi::VolumeCapability;

use crate::CsiError;

/// Longest path the kernel takes (`PATH_MAX` less the terminating NUL).
const PATH_MAX: usize = 4095;

/// The dataset a volume serves: `volume_context["dataset"]`, or the volume id.
pub fn dataset_of<'a>(
    volume_id: &'a str,
    context: &'a std::collections::HashMap<String, String>,
) -> Result<&'a str, CsiError> {
    if volume_id.is_empty() {
        return Err(CsiError::Invalid("volume_id is missing".into()));
    }
    let dataset = context.get("dataset").map(String::as_str).unwrap_or(volume_id);
    shoal_core::validate_dataset_name(dataset)
        .map_err(|e| CsiError::Invalid(format!("volume {volume_id:?}: dataset {dataset:?}: {e}")))?;
    Ok(dataset)
}

/// The volume-context key kubelet sets to the pod's namespace (when the
/// CSIDriver has `podInfoOnMount: true`, as `deploy/base` does).
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";

/// The namespace of the pod a volume is published for.
pub fn pod_namespace(context: &std::collections::HashMap<String, String>) -> Result<&str, CsiError> {
    match context.get(POD_NAMESPACE).map(String::as_str) {
        Some(ns) if shoal_proto::auth::valid_namespace(ns) => Ok(ns),
        Some(ns) => Err(CsiError::Invalid(format!("{POD_NAMESPACE} {ns:?} is not a namespace name"))),
        None => Err(CsiError::Invalid(format!(
            "volume_context has no {POD_NAMESPACE}: the CSIDriver object must set podInfoOnMount: true"
        ))),
    }
}

/// A target path must be absolute, normal (no `.`/`..`, no NUL), within
/// `PATH_MAX`, and under `root` (kubelet's directory): the driver mounts nowhere
/// else.
pub fn target_path(raw: &str, root: &Path) -> Result<PathBuf, CsiError> {
    if raw.is_empty() {
        return Err(CsiError::Invalid("target_path is missing".into()));
    }
    if raw.contains('\0') {
        return Err(CsiError::Invalid("target_path contains a NUL byte".into()));
    }
    if raw.len() > PATH_MAX {
        return Err(CsiError::Invalid(format!("target_path is longer than {PATH_MAX} bytes")));
    }
    let path = Path::new(raw);
    if !path.is_absolute() {
        return Err(CsiError::Invalid(format!("target_path {raw:?} is not absolute")));
    }
    // By segment: `Path::components` would quietly drop a `.`.
    if let Some(bad) = raw.split('/').find(|seg| *seg == "." || *seg == "..") {
        return Err(CsiError::Invalid(format!("target_path {raw:?} has a {bad:?} component")));
    }
    if path.components().any(|c| c.as_os_str().len() > 255) {
        return Err(CsiError::Invalid(format!("target_path {raw:?} has a name longer than 255 bytes")));
    }
    if !path.starts_with(root) || path == root {
        return Err(CsiError::Invalid(format!("target_path {raw:?} is outside {}", root.display())));
    }
    Ok(path.to_path_buf())
}

/// shoal volumes are read-only file systems: a mount access type with a reader
/// access mode. Anything else is refused, naming what was asked.
pub fn capability(cap: Option<&VolumeCapability>) -> Result<(), CsiError> {
    let cap = cap.ok_or_else(|| CsiError::Invalid("volume_capability is missing".into()))?;
    match cap.access_type {
        Some(AccessType::Mount(_)) => {}
        Some(AccessType::Block(_)) => return Err(CsiError::Invalid("block volumes are not supported".into())),
        None => return Err(CsiError::Invalid("volume_capability has no access type".into())),
    }
    let mode = cap.access_mode.as_ref().map(|m| m.mode()).unwrap_or(Mode::Unknown);
    match mode {
        Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly => Ok(()),
        other => Err(CsiError::Invalid(format!(
            "access mode {} is not supported: shoal volumes are read-only (use ReadOnlyMany)",
            other.as_str_name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::csi::volume_capability::{AccessMode, BlockVolume, MountVolume};

    #[test]
    fn target_paths_must_be_absolute_normal_and_under_the_root() {
        let root = Path::new("/var/lib/kubelet");
        assert_eq!(
            target_path("/var/lib/kubelet/pods/p/volumes/x/mount", root).unwrap(),
            PathBuf::from("/var/lib/kubelet/pods/p/volumes/x/mount")
        );
        for bad in [
            "",
            "relative/path",
            "/var/lib/kubelet/../../etc",
            "/var/lib/kubelet/./x",
            "/etc/passwd",
            "/var/lib/kubeletX/y",
            "/var/lib/kubelet",
            "/var/lib/kubelet/a\0b",
        ] {
            assert!(matches!(target_path(bad, root), Err(CsiError::Invalid(_))), "{bad:?} accepted");
        }
        let long = format!("/var/lib/kubelet/{}", "n".repeat(256));
        assert!(target_path(&long, root).is_err());
        let very_long = format!("/var/lib/kubelet/{}", "d/".repeat(2100));
        assert!(target_path(&very_long, root).is_err());
    }

    #[test]
    fn datasets_come_from_the_context_or_the_volume_id() {
        let mut ctx = std::collections::HashMap::new();
        assert_eq!(dataset_of("imagenet", &ctx).unwrap(), "imagenet");
        ctx.insert("dataset".to_string(), "coco".to_string());
        assert_eq!(dataset_of("pv-1", &ctx).unwrap(), "coco");
        assert!(dataset_of("", &ctx).is_err());
        ctx.insert("dataset".to_string(), "../etc".to_string());
        assert!(dataset_of("pv-1", &ctx).is_err());
    }

    #[test]
    fn only_read_only_mount_capabilities_pass() {
        let cap = |access: Option<AccessType>, mode: Mode| VolumeCapability {
            access_type: access,
            access_mode: Some(AccessMode { mode: mode as i32 }),
        };
        let mount = || Some(AccessType::Mount(MountVolume::default()));
        assert!(capability(Some(&cap(mount(), Mode::MultiNodeReaderOnly))).is_ok());
        assert!(capability(Some(&cap(mount(), Mode::SingleNodeReaderOnly))).is_ok());
        assert!(capability(Some(&cap(mount(), Mode::SingleNodeWriter))).is_err());
        assert!(capability(Some(&cap(mount(), Mode::MultiNodeMultiWriter))).is_err());
        assert!(capability(Some(&cap(mount(), Mode::Unknown))).is_err());
        assert!(capability(Some(&cap(Some(AccessType::Block(BlockVolume {})), Mode::MultiNodeReaderOnly))).is_err());
        assert!(capability(Some(&cap(None, Mode::MultiNodeReaderOnly))).is_err());
        assert!(capability(None).is_err());
    }

    #[test]
    fn the_pod_namespace_comes_from_kubelet() {
        let ctx = |v: Option<&str>| -> std::collections::HashMap<String, String> {
            v.map(|v| (POD_NAMESPACE.to_string(), v.to_string())).into_iter().collect()
        };
        assert_eq!(pod_namespace(&ctx(Some("ml"))).unwrap(), "ml");
        for bad in [None, Some(""), Some("ML"), Some("a/b")] {
            assert!(matches!(pod_namespace(&ctx(bad)), Err(CsiError::Invalid(_))), "{bad:?}");
        }
    }
}
