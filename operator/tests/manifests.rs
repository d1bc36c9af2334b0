//! Every manifest in `deploy/` validates against the Kubernetes schemas (built-in
//! kinds with kubernetes-validate, strict; the Dataset and DataLoad examples
//! against the generated CRDs), and the kustomization lists what exists.

use std::process::Command;

#[test]
fn every_manifest_in_deploy_validates() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/validate.sh");
    let out = Command::new("bash").arg(&script).output().expect("run deploy/validate.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "deploy/validate.sh failed:\n{text}");
    assert!(text.contains("all manifests valid"), "{text}");
    // Both CRDs and every built-in object were looked at.
    for what in ["customresourcedefinition/datasets.shoal.io", "daemonset/shoal-csi-node", "csidriver/csi.shoal.io"] {
        assert!(text.contains(what), "{what} was not validated:\n{text}");
    }
}
