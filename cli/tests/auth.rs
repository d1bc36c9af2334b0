//! Authentication: with `SHOAL_TOKEN_FILE` set, the master and the worker
//! refuse requests without the token (`Unauthenticated`), and every shoal client
//! (worker, CLI, mount) sends it; with a credentials table (`SHOAL_TOKENS_FILE`)
//! each token has a role (admin, worker, client) and namespaces.

use crate::common;

use std::path::{Path, PathBuf};

use common::*;
use shoal_proto::master::{GetDatasetRequest, ListDatasetsRequest};
use shoal_proto::worker::StatsRequest;

/// A master and a worker started with `server_env`, the worker registered, and a
/// dataset `ds` of a generated tree created with a CLI that has `client_env`.
fn cluster(root: &Path, server_env: &[(&str, &str)], client_env: &[(&str, &str)]) -> (Proc, Proc, PathBuf) {
    let src = root.join("src");
    write_tree(&src, &tree_spec(64 * 1024, false));
    let master = Proc::start(
        &[
            "master",
            "--data-dir",
            root.join("m").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
            "--allow-local-root",
            root.to_str().unwrap(),
        ],
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
    assert_eq!(code, 6, "refused as denied: {err}");
    assert!(err.contains("requires a token") && err.contains("SHOAL_TOKEN_FILE"), "{err}");
    let (code, _, err) =
        cli_env(&["dataset", "ls", "--master", &master.addr], &[("SHOAL_TOKEN_FILE", wrong.to_str().unwrap())]);
    assert_eq!(code, 6, "refused as denied: {err}");
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
    let (code, _, err) = cli(&["dataset", "ls", "--master", &master.addr]);
    assert_eq!(code, 5, "a plaintext CLI gets no connection: {err}");
    // Refused by the connection, not answered by a server: the status carries
    // the transport's error as its source.
    let e = master_client(&master.addr).await.list_datasets(ListDatasetsRequest {}).await.unwrap_err();
    assert!(std::error::Error::source(&e).is_some(), "{e:?}");
    let e = worker_client(&worker.addr).await.stats(StatsRequest {}).await.unwrap_err();
    assert!(std::error::Error::source(&e).is_some(), "{e:?}");
    // A client that trusts another CA is refused too.
    let other = root.join("other");
    std::fs::create_dir_all(&other).unwrap();
    make_certs(&other);
    let (code, _, err) = cli_env(
        &["dataset", "ls", "--master", &master.addr],
        &[("SHOAL_TLS_CA", other.join("ca.crt").to_str().unwrap())],
    );
    assert_eq!(code, 5, "a server this client cannot verify is not connected to: {err}");

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

/// `req` with `token` as its credential.
fn with_token<T>(req: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(req);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_namespaces_limit_what_each_credential_does() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (admin, worker, client, ml) = (
        "admin-token-0123456789abcdef",
        "worker-token-0123456789abcdef",
        "client-token-0123456789abcdef",
        "ml-client-token-0123456789abc",
    );
    let table = root.join("tokens");
    std::fs::write(
        &table,
        // The client's as its digest, the others as they are.
        format!(
            "# role namespaces token\nadmin * {admin}\nworker * {worker}\nclient * sha256:{}\nclient ml {ml}\n",
            sha256(client.as_bytes())
        ),
    )
    .unwrap();
    let file = |name: &str, token: &str| {
        let p = root.join(name);
        std::fs::write(&p, token).unwrap();
        p.to_string_lossy().into_owned()
    };
    let (admin_f, worker_f, client_f, ml_f) =
        (file("admin", admin), file("worker", worker), file("client", client), file("ml", ml));
    // Servers check the table; as clients, master and worker hold the worker token.
    let servers = [("SHOAL_TOKENS_FILE", table.to_str().unwrap()), ("SHOAL_TOKEN_FILE", worker_f.as_str())];
    let as_admin = [("SHOAL_TOKEN_FILE", admin_f.as_str())];
    let as_client = [("SHOAL_TOKEN_FILE", client_f.as_str())];
    let as_ml = [("SHOAL_TOKEN_FILE", ml_f.as_str())];
    let (master, wproc, src) = cluster(root, &servers, &as_admin);
    let m = master.addr.as_str();

    // A client reads, and may not change anything: exit 6, the role named.
    for args in [
        vec!["dataset", "create", "x", src.to_str().unwrap()],
        vec!["dataset", "rm", "ds"],
        vec!["dataset", "sync", "ds"],
        vec!["dataset", "pin", "ds"],
        vec!["prewarm", "ds"],
        vec!["cache", "free", "ds"],
    ] {
        let mut a = args.clone();
        a.extend(["--master", m]);
        let (code, out, err) = cli_env(&a, &as_client);
        assert_eq!(code, 6, "{args:?}: {out}{err}");
        assert!(err.contains("needs the admin role"), "{args:?}: {err}");
    }
    for args in [vec!["dataset", "ls"], vec!["dataset", "show", "ds"], vec!["workers"], vec!["status"]] {
        let mut a = args.clone();
        a.extend(["--master", m]);
        let (code, out, err) = cli_env(&a, &as_client);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    }
    // The admin prewarms; the master drives the worker with its worker token.
    let (code, out, err) = cli_env(&["prewarm", "ds", "-o", "json", "--master", m], &as_admin);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"completed\""), "{out}");
    // A mount with the client credential reads byte for byte.
    let mnt = root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _guard = MountGuard(mnt.clone());
    let mount = Proc::start_until(
        &["mount", "ds", mnt.to_str().unwrap(), "--master", m],
        &as_client,
        &root.join("mount.log"),
        "mounted dataset ",
    );
    let got = std::fs::read(mnt.join("multi/three-and-a-half")).unwrap();
    assert_eq!(sha256(&got), sha256(&std::fs::read(src.join("multi/three-and-a-half")).unwrap()));
    drop(mount);
    // ... from the worker's tiers (the prewarmed blocks), not the store: the
    // worker verified the mount's references.
    let mut w = worker_client(&wproc.addr).await;
    let stats = w.stats(with_token(StatsRequest {}, client)).await.unwrap().into_inner();
    assert!(stats.hits > 0, "the mount read through the worker: {stats:?}");
    // Registering (which hands out the signing key) is for workers only.
    for t in [client, admin, ml] {
        let reg = shoal_proto::master::RegisterWorkerRequest {
            worker: Some(shoal_proto::master::WorkerInfo {
                id: "intruder".into(),
                address: "127.0.0.1:9".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = master_client(m).await.register_worker(with_token(reg, t)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{t}");
    }
    // Freeing workers' blocks: the master's credential, not a client's.
    let free = shoal_proto::worker::FreeBlocksRequest { blocks: vec![] };
    assert_eq!(w.free_blocks(with_token(free, client)).await.unwrap_err().code(), tonic::Code::PermissionDenied);

    // Store credentials: for the worker role only; GetDataset is for clients.
    let mut raw = master_client(m).await;
    let req = || GetDatasetRequest { name: "ds".into() };
    assert!(raw.get_store_spec(with_token(req(), worker)).await.is_ok());
    for t in [client, admin, ml] {
        let e = raw.get_store_spec(with_token(req(), t)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{t}");
    }
    let e = raw.get_dataset(with_token(req(), worker)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = raw.delete_dataset(with_token(shoal_proto::master::DeleteDatasetRequest { name: "ds".into() }, client));
    assert_eq!(e.await.unwrap_err().code(), tonic::Code::PermissionDenied);

    // Namespaces: the `ml` credential sees only datasets of namespace ml.
    let (code, out, err) =
        cli_env(&["dataset", "create", "mlds", src.to_str().unwrap(), "--namespace", "ml", "--master", m], &as_admin);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli_env(&["dataset", "ls", "-o", "json", "--master", m], &as_ml);
    assert_eq!(code, 0, "{err}");
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["mlds"]);
    let (code, _, err) = cli_env(&["dataset", "show", "ds", "--master", m], &as_ml);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("namespace \"default\""), "{err}");
    let e = raw.list_namespace(with_token(shoal_proto::master::ListNamespaceRequest { dataset: "ds".into() }, ml));
    assert_eq!(e.await.unwrap_err().code(), tonic::Code::PermissionDenied);
    let listed = raw.list_datasets(with_token(ListDatasetsRequest {}, client)).await.unwrap().into_inner();
    assert_eq!(listed.datasets.len(), 2, "a credential of every namespace sees both");

    // A bad table stops the server at start, naming the line.
    let bad = root.join("bad-tokens");
    std::fs::write(&bad, "admin * short\n").unwrap();
    let (code, _, err) = cli_env(
        &["master", "--data-dir", root.join("m2").to_str().unwrap(), "--listen", "127.0.0.1:0", "--metrics-listen", ""],
        &[("SHOAL_TOKENS_FILE", bad.to_str().unwrap())],
    );
    assert_ne!(code, 0);
    assert!(err.contains("SHOAL_TOKENS_FILE") && err.contains("line 1"), "{err}");
}
