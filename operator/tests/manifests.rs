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

/// The two Secrets deploy/base needs, as `deploy/make-secrets.sh --print` makes
/// them: a credentials table the servers accept, with one distinct credential
/// per role under the items each pod mounts, and a certificate for the name
/// clients verify, signed by the CA they are given.
#[test]
fn make_secrets_makes_what_the_secure_base_mounts() {
    use k8s_openapi::api::core::v1::Secret;
    // .ci/run installs openssl; the script needs nothing else to --print.
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/make-secrets.sh");
    let out = Command::new("bash").arg(&script).arg("--print").output().expect("run make-secrets.sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let secrets: Vec<Secret> = text.split("\n---\n").map(|doc| serde_saphyr::from_str(doc).unwrap()).collect();
    let item = |s: &Secret, k: &str| String::from_utf8(s.data.as_ref().unwrap()[k].0.clone()).unwrap();
    let tokens = secrets.iter().find(|s| s.metadata.name.as_deref() == Some("shoal-tokens")).expect("shoal-tokens");
    assert_eq!(tokens.metadata.namespace.as_deref(), Some("shoal-system"));
    let text = item(tokens, "tokens");
    let table = shoal_proto::auth::parse_tokens(&text).expect("the table parses");
    assert_eq!(table.len(), 3);
    let mut seen = std::collections::HashSet::new();
    for (role, want) in [
        ("admin", shoal_proto::auth::Role::Admin),
        ("worker", shoal_proto::auth::Role::Worker),
        ("client", shoal_proto::auth::Role::Client),
    ] {
        let token = item(tokens, role);
        assert!(seen.insert(token.clone()), "{role}'s credential is another role's");
        assert!(!text.contains(&token), "the table holds {role}'s credential itself, not its digest");
        let p = table.find(&token).unwrap_or_else(|| panic!("{role} is not in the table"));
        assert!(p.has(want) && p.sees_all(), "{role}: {p:?}");
        assert!(role == "admin" || !p.has(shoal_proto::auth::Role::Admin), "{role} is not an admin");
    }
    let tls = secrets.iter().find(|s| s.metadata.name.as_deref() == Some("shoal-grpc-tls")).expect("shoal-grpc-tls");
    let dir = tempfile::tempdir().unwrap();
    for k in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(dir.path().join(k), item(tls, k)).unwrap();
    }
    for name in ["shoal.shoal-system.svc", "shoal-master.shoal-system.svc"] {
        let v = Command::new("openssl")
            .args(["verify", "-CAfile", "ca.crt", "-verify_hostname", name, "tls.crt"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            v.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }
}
