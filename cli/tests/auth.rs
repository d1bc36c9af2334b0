//! Shared-token authentication: with `SHOAL_TOKEN_FILE` set, the master and the
//! worker refuse requests without the token (`Unauthenticated`), and every shoal
//! client (worker, CLI, mount) sends it.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use shoal_proto::master::ListDatasetsRequest;
use shoal_proto::worker::StatsRequest;

/// A master and a worker started with `server_env`, the worker registered, and a
/// dataset `ds` of a generated tree created with a CLI that has `client_env`.
fn cluster(root: &Path, server_env: &[(&str, &str)], client_env: &[(&str, &str)]) -> (Proc, Proc, PathBuf) {
    let src = root.join("src");
    write_tree(&src, &tree_spec(64 * 1024, false));
    let master = Proc::start(
        &["master", "--data-dir", root.join("m").to_str().unwrap(), "--listen", "127.0.0.1:0", "--metrics-listen", ""],
        server_env,
        &root.join("master.log"),
    );
    let worker = start_worker(
        &master.addr,
        "127.0.0.1:0",
        &tiers(&root.join("w"), "16MiB", "64MiB"),
        server_env,
        &root.join("worker.log"),
    );
    wait_until_registered_env(&master.addr, &worker.addr, client_env);
    let (code, out, err) = cli_env(
        &["dataset", "create", "ds", src.to_str().unwrap(), "--block-size", "64KiB", "--master", &master.addr],
        client_env,
    );
    assert_eq!(code, 0, "{out}{err}");
    (master, worker, src)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_file_only_token_holders_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let token = root.join("token");
    std::fs::write(&token, "s3cr3t-t0ken-for-the-cluster-0001\n").unwrap();
    let wrong = root.join("wrong");
    std::fs::write(&wrong, "another-token-that-is-not-it-0002").unwrap();
    let env = [("SHOAL_TOKEN_FILE", token.to_str().unwrap())];
    // The worker (with the token) registers; the CLI with the token works.
    let (master, worker, src) = cluster(root, &env, &env);

    // Without the token, or with another, the CLI is refused.
    let (code, _, err) = cli(&["dataset", "ls", "--master", &master.addr]);
    assert_ne!(code, 0);
    assert!(err.contains("requires a token") && err.contains("SHOAL_TOKEN_FILE"), "{err}");
    let (code, _, err) =
        cli_env(&["dataset", "ls", "--master", &master.addr], &[("SHOAL_TOKEN_FILE", wrong.to_str().unwrap())]);
    assert_ne!(code, 0);
    assert!(err.contains("wrong token"), "{err}");

    // The master drives the worker with the token too (prewarm).
    let (code, out, err) = cli_env(&["prewarm", "ds", "--master", &master.addr, "-o", "json"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"completed\""), "{out}");

    // Raw gRPC without the token: Unauthenticated from both servers.
    let e = master_client(&master.addr).await.list_datasets(ListDatasetsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = worker_client(&worker.addr).await.stats(StatsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // A mount with the token reads the dataset byte for byte.
    let mnt = root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _mount = Proc::start_until(
        &["mount", "ds", mnt.to_str().unwrap(), "--master", &master.addr],
        &env,
        &root.join("mount.log"),
        "mounted dataset ",
    );
    let _guard = MountGuard(mnt.clone());
    let got = std::fs::read(mnt.join("multi/three-and-a-half")).unwrap();
    assert_eq!(sha256(&got), sha256(&std::fs::read(src.join("multi/three-and-a-half")).unwrap()));

    // A server whose token file cannot be read refuses to start, naming it.
    let (code, _, err) = cli_env(
        &["master", "--data-dir", root.join("m2").to_str().unwrap(), "--listen", "127.0.0.1:0", "--metrics-listen", ""],
        &[("SHOAL_TOKEN_FILE", root.join("missing").to_str().unwrap())],
    );
    assert_ne!(code, 0);
    assert!(err.contains("SHOAL_TOKEN_FILE") && err.contains("missing"), "{err}");
}

/// A CA and a server certificate for 127.0.0.1 and localhost, made with openssl.
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=shoal-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "tls.key", "-out", "tls.csr"]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "tls.crt",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_certificates_master_and_worker_speak_only_tls() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    make_certs(root);
    let (cert, key, ca) = (root.join("tls.crt"), root.join("tls.key"), root.join("ca.crt"));
    let env = [
        ("SHOAL_TLS_CERT", cert.to_str().unwrap()),
        ("SHOAL_TLS_KEY", key.to_str().unwrap()),
        ("SHOAL_TLS_CA", ca.to_str().unwrap()),
    ];
    let client_env = [("SHOAL_TLS_CA", ca.to_str().unwrap())];
    let (master, worker, src) = cluster(root, &env, &client_env);
    let (code, out, err) = cli_env(&["prewarm", "ds", "--master", &master.addr, "-o", "json"], &client_env);
    assert_eq!(code, 0, "{out}{err}");

    // Plaintext clients get nowhere.
    let (code, _, _) = cli(&["dataset", "ls", "--master", &master.addr]);
    assert_ne!(code, 0, "a plaintext CLI is refused");
    assert!(master_client(&master.addr).await.list_datasets(ListDatasetsRequest {}).await.is_err());
    assert!(worker_client(&worker.addr).await.stats(StatsRequest {}).await.is_err());
    // A client that trusts another CA is refused too.
    let other = root.join("other");
    std::fs::create_dir_all(&other).unwrap();
    make_certs(&other);
    let (code, _, err) = cli_env(
        &["dataset", "ls", "--master", &master.addr],
        &[("SHOAL_TLS_CA", other.join("ca.crt").to_str().unwrap())],
    );
    assert_ne!(code, 0, "{err}");

    // A mount over TLS reads the dataset byte for byte.
    let mnt = root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _mount = Proc::start_until(
        &["mount", "ds", mnt.to_str().unwrap(), "--master", &master.addr],
        &client_env,
        &root.join("mount.log"),
        "mounted dataset ",
    );
    let _guard = MountGuard(mnt.clone());
    let got = std::fs::read(mnt.join("multi/three-and-a-half")).unwrap();
    assert_eq!(sha256(&got), sha256(&std::fs::read(src.join("multi/three-and-a-half")).unwrap()));

    // The worker's /metrics is HTTPS with the same certificate; plain HTTP gets
    // no metrics.
    let line = worker.line_after("metrics on ");
    let (addr, scheme) = line.split_once(' ').expect("address and scheme");
    assert_eq!(scheme, "(https)");
    let curl = |url: String, ca: Option<&Path>| {
        let mut c = std::process::Command::new("curl");
        c.args(["-sS", "--max-time", "10"]);
        if let Some(ca) = ca {
            c.arg("--cacert").arg(ca);
        }
        c.arg(url).output().unwrap()
    };
    let out = curl(format!("https://{addr}/metrics"), Some(&ca));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("shoal_worker_"), "metrics over TLS");
    let plain = curl(format!("http://{addr}/metrics"), None);
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("shoal_worker_"), "no metrics over plain HTTP");
    let untrusted = curl(format!("https://{addr}/metrics"), Some(&other.join("ca.crt")));
    assert!(!untrusted.status.success(), "a client trusting another CA is refused");

    // Half a server configuration is refused at start.
    let (code, _, err) = cli_env(
        &["master", "--data-dir", root.join("m2").to_str().unwrap(), "--listen", "127.0.0.1:0", "--metrics-listen", ""],
        &[("SHOAL_TLS_CERT", cert.to_str().unwrap())],
    );
    assert_ne!(code, 0);
    assert!(err.contains("SHOAL_TLS_KEY"), "{err}");
}
