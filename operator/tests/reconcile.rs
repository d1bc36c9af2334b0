//! The reconcilers against a mocked Kubernetes API server that asserts every
//! request (method, path, query and body) in order and answers it, and a real
//! shoal master and worker on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use serde_json::{json, Value};
use shoal_operator::crd::*;
use shoal_operator::{dataload, dataset, Ctx};
use shoal_proto::master::{CacheUsageRequest, GetDatasetRequest};
use tokio_util::sync::CancellationToken;
use tower_test::mock::Handle;

type Reply = Box<dyn FnOnce(&Value) -> (u16, Value) + Send>;

/// One request the reconciler must make next, and the answer it gets.
struct Expect {
    method: Method,
    path: String,
    query_has: Vec<&'static str>,
    reply: Reply,
}

fn expect(
    method: Method,
    path: &str,
    query_has: &[&'static str],
    reply: impl FnOnce(&Value) -> (u16, Value) + Send + 'static,
) -> Expect {
    Expect { method, path: path.into(), query_has: query_has.to_vec(), reply: Box::new(reply) }
}

/// The mocked API server: answers the script in order, then answers anything
/// more with 500 and records it as unexpected, until `finish`.
struct ApiServer {
    done: CancellationToken,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl ApiServer {
    fn start(mut handle: Handle<Request<Body>, Response<Body>>, script: Vec<Expect>) -> ApiServer {
        let done = CancellationToken::new();
        let stop = done.clone();
        let task = tokio::spawn(async move {
            for (i, e) in script.into_iter().enumerate() {
                let (req, send) = tokio::time::timeout(Duration::from_secs(60), handle.next_request())
                    .await
                    .unwrap_or_else(|_| panic!("request {i} ({} {}) never came", e.method, e.path))
                    .expect("the client is gone");
                let (method, path, query) =
                    (req.method().clone(), req.uri().path().to_string(), req.uri().query().unwrap_or("").to_string());
                assert_eq!((&method, path.as_str()), (&e.method, e.path.as_str()), "request {i}: query {query}");
                for q in &e.query_has {
                    assert!(query.contains(q), "request {i} {method} {path}: query {query:?} lacks {q:?}");
                }
                let bytes = req.into_body().collect_bytes().await.unwrap();
                let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
                let (status, answer) = (e.reply)(&body);
                send.send_response(
                    Response::builder().status(status).body(Body::from(serde_json::to_vec(&answer).unwrap())).unwrap(),
                );
            }
            let mut unexpected = Vec::new();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return unexpected,
                    r = handle.next_request() => {
                        let Some((req, send)) = r else { return unexpected };
                        unexpected.push(format!("{} {}", req.method(), req.uri()));
                        send.send_response(Response::builder().status(500).body(Body::from(b"{}".to_vec())).unwrap());
                    }
                }
            }
        });
        ApiServer { done, task }
    }

    /// Every scripted request came, and nothing else.
    async fn finish(self) {
        self.done.cancel();
        let unexpected = self.task.await.unwrap();
        assert!(unexpected.is_empty(), "unexpected requests: {unexpected:?}");
    }
}

fn not_found(what: &str) -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{what} not found")}),
    )
}

/// A master and a worker (node `gpu-node-1`) on loopback, and a source tree.
struct Shoal {
    dir: tempfile::TempDir,
    master_addr: String,
    stop: CancellationToken,
}

impl Drop for Shoal {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Shoal {
    async fn start() -> Shoal {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        for i in 0..12 {
            let d = src.join(format!("train/c{}", i % 3));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("img{i}.bin")), vec![i as u8; 10_000 + i * 100]).unwrap();
        }
        let stop = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let master_addr = listener.local_addr().unwrap().to_string();
        let cfg = shoal_master::MasterConfig {
            data_dir: dir.path().join("master"),
            lost_worker_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_millis(200),
            stale_block_grace: Duration::from_secs(60),
            local_roots: vec![std::fs::canonicalize(dir.path()).unwrap()],
            ..Default::default()
        };
        tokio::spawn(shoal_master::serve(cfg, listener, stop.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tier = format!("ssd:{}:256MiB", dir.path().join("ssd").display());
        let wcfg = shoal_worker::WorkerConfig {
            id: "w1".into(),
            node: "gpu-node-1".into(),
            master: master_addr.clone(),
            advertise: None,
            tiers: vec![tier.parse().unwrap()],
            watermarks: shoal_worker::block_store::Watermarks { high: 0.95, low: 0.85 },
            fill_budget: 256 << 20,
        };
        tokio::spawn(shoal_worker::serve(wcfg, listener, stop.clone()));
        Shoal { dir, master_addr, stop }
    }

    fn src_uri(&self) -> String {
        format!("file://{}/", self.dir.path().join("src").display())
    }

    fn master(&self) -> shoal_proto::auth::Master {
        shoal_proto::auth::master(&self.master_addr, |ep| ep).unwrap()
    }

    /// Register `ml.imagenet` (the source tree) on the master directly, as the
    /// operator would have; `block_size` 0 is the default.
    async fn register(&self, block_size: u64) -> shoal_proto::auth::Master {
        self.register_in("ml", block_size).await
    }

    /// Register `ml.imagenet` as a dataset of namespace `ns`.
    async fn register_in(&self, ns: &str, block_size: u64) -> shoal_proto::auth::Master {
        let mut master = self.master();
        master
            .create_dataset(shoal_proto::master::CreateDatasetRequest {
                spec: Some(shoal_proto::master::DatasetSpec {
                    name: "ml.imagenet".into(),
                    namespace: ns.into(),
                    mounts: vec![shoal_proto::master::MountSpec { uri: self.src_uri(), ..Default::default() }],
                    cache: Some(shoal_proto::master::CachePolicy { block_size, ..Default::default() }),
                    ..Default::default()
                }),
                sync: true,
            })
            .await
            .unwrap();
        master
    }

    fn ctx(&self) -> (Arc<Ctx>, Handle<Request<Body>, Response<Body>>) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let mut ctx = Ctx::new(client, self.master(), "operator-0");
        ctx.refresh = Duration::from_secs(30);
        (Arc::new(ctx), handle)
    }
}

fn dataset_resource(uri: &str, finalizers: &[&str]) -> Dataset {
    let mut ds = Dataset::new(
        "imagenet",
        DatasetSpec {
            mounts: vec![Mount {
                uri: uri.into(),
                path: None,
                sync_interval: None,
                options: Default::default(),
                encrypt_options: vec![EncryptOption {
                    name: "token".into(),
                    value_from: SecretSource {
                        secret_key_ref: k8s_openapi::api::core::v1::SecretKeySelector {
                            name: "creds".into(),
                            key: "token".into(),
                            optional: None,
                        },
                    },
                }],
            }],
            cache: CacheSpec { block_size: Some("64KiB".into()), replicas: None, pin: false, ttl: None },
            sync: SyncSpec::default(),
            node_affinity: None,
        },
    );
    ds.metadata.namespace = Some("ml".into());
    ds.metadata.uid = Some("uid-ds".into());
    ds.metadata.generation = Some(3);
    ds.metadata.resource_version = Some("100".into());
    ds.metadata.finalizers = Some(finalizers.iter().map(|s| s.to_string()).collect());
    ds
}

/// A Dataset / DataLoad object, as the API server answers a patch.
fn ds_obj() -> Value {
    serde_json::to_value(dataset_resource("x", &["shoal.io/cleanup"])).unwrap()
}

fn dl_obj() -> Value {
    let mut dl = DataLoad::new(
        "warm",
        DataLoadSpec {
            dataset: "imagenet".into(),
            paths: vec![],
            include: None,
            replicas: None,
            policy: LoadPolicy::Once,
            schedule: None,
        },
    );
    dl.metadata.namespace = Some("ml".into());
    serde_json::to_value(dl).unwrap()
}

fn secret_reply(_: &Value) -> (u16, Value) {
    // The file store ignores unknown options; the value must reach the master
    // all the same ("dG9rLTE=" is "tok-1").
    (
        200,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": "ml"}, "data": {"token": "dG9rLTE="}}),
    )
}

fn echo(body: &Value) -> (u16, Value) {
    (200, body.clone())
}

fn node_list(names: &[&str]) -> impl FnOnce(&Value) -> (u16, Value) {
    let items: Vec<Value> = names
        .iter()
        .map(|n| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": n}}))
        .collect();
    move |_| {
        (
            200,
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {}, "items": items}),
        )
    }
}

const DS_PATH: &str = "/apis/shoal.io/v1alpha1/namespaces/ml/datasets/imagenet";
const NODES: &str = "/api/v1/nodes";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_dataset_gets_its_finalizer_first() {
    let shoal = Shoal::start().await;
    let (ctx, handle) = shoal.ctx();
    let ds = dataset_resource(&shoal.src_uri(), &[]);
    let script = vec![expect(Method::PATCH, DS_PATH, &[], |body| {
        let ops = body.as_array().unwrap();
        assert!(
            ops.iter().any(|op| op["value"] == "shoal.io/cleanup" || op["value"] == json!(["shoal.io/cleanup"])),
            "{body}"
        );
        let mut ds = dataset_resource("x", &["shoal.io/cleanup"]);
        ds.metadata.resource_version = Some("101".into());
        (200, serde_json::to_value(ds).unwrap())
    })];
    let server = ApiServer::start(handle, script);
    let action = dataset::reconcile(Arc::new(ds), ctx).await.unwrap();
    assert_eq!(action, Action::await_change(), "the finalizer's own update triggers the next reconcile");
    server.finish().await;
    // Nothing reached the master yet.
    let err = shoal.master().get_dataset(GetDatasetRequest { name: "ml.imagenet".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_is_registered_served_as_pv_and_pvc_and_its_cache_nodes_labelled() {
    let shoal = Shoal::start().await;
    let (ctx, handle) = shoal.ctx();
    let ds = dataset_resource(&shoal.src_uri(), &["shoal.io/cleanup"]);
    let label = "dataset.shoal.io/ml.imagenet";

    // First pass: nothing cached yet; a node labelled by an earlier run loses it.
    let script = vec![
        expect(Method::GET, "/api/v1/namespaces/ml/secrets/creds", &[], secret_reply),
        expect(
            Method::PATCH,
            "/api/v1/persistentvolumes/shoal.ml.imagenet",
            &["fieldManager=shoal-operator", "force=true"],
            |pv| {
                assert_eq!(pv["kind"], "PersistentVolume");
                assert_eq!(pv["spec"]["csi"]["driver"], "csi.shoal.io");
                assert_eq!(pv["spec"]["csi"]["volumeHandle"], "ml.imagenet");
                assert_eq!(pv["spec"]["csi"]["readOnly"], true);
                assert_eq!(pv["spec"]["claimRef"]["namespace"], "ml");
                assert_eq!(pv["spec"]["claimRef"]["name"], "imagenet");
                assert_eq!(pv["spec"]["accessModes"], json!(["ReadOnlyMany"]));
                echo(pv)
            },
        ),
        expect(
            Method::PATCH,
            "/api/v1/namespaces/ml/persistentvolumeclaims/imagenet",
            &["fieldManager=shoal-operator"],
            |pvc| {
                assert_eq!(pvc["spec"]["volumeName"], "shoal.ml.imagenet");
                assert_eq!(pvc["spec"]["storageClassName"], "");
                assert_eq!(pvc["metadata"]["ownerReferences"][0]["uid"], "uid-ds");
                echo(pvc)
            },
        ),
        expect(Method::GET, NODES, &["labelSelector=dataset.shoal.io%2Fml.imagenet"], node_list(&["old-node"])),
        expect(Method::PATCH, "/api/v1/nodes/old-node", &[], move |p| {
            assert_eq!(p, &json!({"metadata": {"labels": {label: null}}}));
            (200, json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "old-node"}}))
        }),
        expect(Method::PATCH, &format!("{DS_PATH}/status"), &[], |p| {
            let s = &p["status"];
            assert_eq!(s["phase"], "Ready");
            assert_eq!(s["masterName"], "ml.imagenet");
            assert_eq!(s["fileCount"], 12);
            assert_eq!(s["totalBytes"], (0..12).map(|i| 10_000 + i * 100).sum::<u64>());
            assert_eq!(s["cachedPercent"], "0.0%");
            assert_eq!(s["observedGeneration"], 3);
            assert_eq!(s["conditions"][0]["type"], "Ready");
            assert_eq!(s["conditions"][0]["status"], "True");
            assert!(!p.to_string().contains("tok-1"), "credentials never reach the status");
            (200, ds_obj())
        }),
    ];
    let server = ApiServer::start(handle, script);
    let action = dataset::reconcile(Arc::new(ds.clone()), ctx).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    server.finish().await;

    // The master has it, in the resource's namespace, with the credential from
    // the Secret: given to workers (GetStoreSpec), redacted for everyone else.
    let info =
        shoal.master().get_store_spec(GetDatasetRequest { name: "ml.imagenet".into() }).await.unwrap().into_inner();
    let spec = info.spec.unwrap();
    assert_eq!(spec.namespace, "ml");
    assert_eq!(spec.mounts[0].options["token"], "tok-1");
    let revision = info.spec_revision;
    assert_eq!(spec.cache.unwrap().block_size, 64 * 1024);
    let shown =
        shoal.master().get_dataset(GetDatasetRequest { name: "ml.imagenet".into() }).await.unwrap().into_inner();
    assert_eq!(shown.spec.unwrap().mounts[0].options["token"], "***", "clients never see the secret");

    // Prewarm, then the next pass labels the worker's node.
    let mut master = shoal.master();
    let job = master
        .start_load(shoal_proto::master::LoadSpec { dataset: "ml.imagenet".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let u = master.get_cache_usage(CacheUsageRequest { dataset: "ml.imagenet".into() }).await.unwrap().into_inner();
        if u.total_bytes > 0 && u.cached_bytes == u.total_bytes {
            break;
        }
        assert!(Instant::now() < deadline, "prewarm {} did not finish: {u:?}", job.id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The Secret was rotated meanwhile, and the resource now asks for two
    // copies of each block: both reach the master.
    let mut ds = ds;
    ds.spec.cache.replicas = Some(2);
    let rotated = |_: &Value| {
        (
            200,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": "ml"}, "data": {"token": "dG9rLTI="}}),
        )
    };
    let (ctx, handle) = shoal.ctx();
    let script = vec![
        expect(Method::GET, "/api/v1/namespaces/ml/secrets/creds", &[], rotated),
        expect(Method::PATCH, "/api/v1/persistentvolumes/shoal.ml.imagenet", &[], echo),
        expect(Method::PATCH, "/api/v1/namespaces/ml/persistentvolumeclaims/imagenet", &[], echo),
        expect(Method::GET, NODES, &[], node_list(&[])),
        expect(Method::PATCH, "/api/v1/nodes/gpu-node-1", &[], move |p| {
            assert_eq!(p, &json!({"metadata": {"labels": {label: "true"}}}));
            (200, json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-node-1"}}))
        }),
        expect(Method::PATCH, &format!("{DS_PATH}/status"), &[], |p| {
            assert_eq!(p["status"]["cachedPercent"], "100.0%");
            assert_eq!(p["status"]["cacheNodes"], json!(["gpu-node-1"]));
            (200, ds_obj())
        }),
    ];
    let server = ApiServer::start(handle, script);
    dataset::reconcile(Arc::new(ds), ctx).await.unwrap();
    server.finish().await;
    let info =
        shoal.master().get_store_spec(GetDatasetRequest { name: "ml.imagenet".into() }).await.unwrap().into_inner();
    assert_eq!(info.spec.as_ref().unwrap().mounts[0].options["token"], "tok-2", "the rotated credential");
    assert_eq!(info.spec_revision, revision + 1);
    assert_eq!(info.spec.as_ref().unwrap().cache.as_ref().unwrap().replicas, 2, "the changed replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_become_conditions_and_events_not_crashes() {
    let shoal = Shoal::start().await;
    let (ctx, handle) = shoal.ctx();
    let ds = dataset_resource(&shoal.src_uri(), &["shoal.io/cleanup"]);
    let script = vec![
        expect(Method::GET, "/api/v1/namespaces/ml/secrets/creds", &[], |_| not_found("secrets \"creds\"")),
        expect(Method::PATCH, &format!("{DS_PATH}/status"), &[], |p| {
            assert_eq!(p["status"]["phase"], "Failed");
            let c = &p["status"]["conditions"][0];
            assert_eq!(
                (c["type"].as_str(), c["status"].as_str(), c["reason"].as_str()),
                (Some("Ready"), Some("False"), Some("SecretMissing"))
            );
            assert!(c["message"].as_str().unwrap().contains("ml/creds"), "{c}");
            (200, ds_obj())
        }),
        expect(Method::POST, "/apis/events.k8s.io/v1/namespaces/ml/events", &[], |ev| {
            assert_eq!(ev["type"], "Warning");
            assert_eq!(ev["reason"], "SecretMissing");
            assert_eq!(ev["regarding"]["name"], "imagenet");
            echo(ev)
        }),
    ];
    let server = ApiServer::start(handle, script);
    let action = dataset::reconcile(Arc::new(ds.clone()), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(ctx.retry), "retried, not crashed");
    server.finish().await;

    // A spec error waits for a change of the spec instead of retrying.
    let mut bad = ds;
    bad.spec.mounts[0].encrypt_options.clear();
    bad.spec.cache.block_size = Some("huge".into());
    let (ctx, handle) = shoal.ctx();
    let script = vec![
        expect(Method::PATCH, &format!("{DS_PATH}/status"), &[], |p| {
            assert_eq!(p["status"]["conditions"][0]["reason"], "InvalidSpec");
            assert!(p["status"]["conditions"][0]["message"].as_str().unwrap().contains("blockSize"));
            (200, ds_obj())
        }),
        expect(Method::POST, "/apis/events.k8s.io/v1/namespaces/ml/events", &[], echo),
    ];
    let server = ApiServer::start(handle, script);
    assert_eq!(dataset::reconcile(Arc::new(bad), ctx).await.unwrap(), Action::await_change());
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_of_another_namespace_is_neither_adopted_nor_deleted() {
    let shoal = Shoal::start().await;
    // `ml.imagenet` on the master belongs to namespace `prod`, pinned.
    let mut master = shoal.register_in("prod", 0).await;
    master
        .set_cache_policy(shoal_proto::master::SetCachePolicyRequest {
            name: "ml.imagenet".into(),
            pinned: Some(true),
            ttl_seconds: None,
            replicas: None,
        })
        .await
        .unwrap();
    let (ctx, handle) = shoal.ctx();
    let ds = dataset_resource(&shoal.src_uri(), &["shoal.io/cleanup"]);
    let script = vec![
        expect(Method::GET, "/api/v1/namespaces/ml/secrets/creds", &[], secret_reply),
        expect(Method::PATCH, &format!("{DS_PATH}/status"), &[], |p| {
            assert_eq!(p["status"]["phase"], "Failed");
            let c = &p["status"]["conditions"][0];
            assert_eq!(c["reason"], "MasterRefused");
            let m = c["message"].as_str().unwrap();
            assert!(m.contains("\"prod\"") && m.contains("\"ml\""), "{m}");
            (200, ds_obj())
        }),
        expect(Method::POST, "/apis/events.k8s.io/v1/namespaces/ml/events", &[], echo),
    ];
    let server = ApiServer::start(handle, script);
    let action = dataset::reconcile(Arc::new(ds.clone()), ctx).await.unwrap();
    assert_eq!(action, Action::await_change(), "a permanent refusal, not a retry loop");
    server.finish().await;
    let kept = master.get_dataset(GetDatasetRequest { name: "ml.imagenet".into() }).await.unwrap().into_inner();
    assert_eq!(kept.namespace(), "prod");
    assert!(kept.spec.unwrap().cache.unwrap().pinned, "the other namespace's policy is untouched");

    // Deleting the refused Dataset leaves the other namespace's dataset alone.
    let mut gone = ds;
    gone.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    let (ctx, handle) = shoal.ctx();
    let script = vec![
        expect(Method::DELETE, "/api/v1/namespaces/ml/persistentvolumeclaims/imagenet", &[], |_| not_found("pvc")),
        expect(Method::DELETE, "/api/v1/persistentvolumes/shoal.ml.imagenet", &[], |_| not_found("pv")),
        expect(Method::GET, NODES, &["labelSelector=dataset.shoal.io%2Fml.imagenet"], node_list(&[])),
        expect(Method::PATCH, DS_PATH, &[], |_| (200, ds_obj())),
    ];
    let server = ApiServer::start(handle, script);
    dataset::reconcile(Arc::new(gone), ctx).await.unwrap();
    server.finish().await;
    let kept = master.get_dataset(GetDatasetRequest { name: "ml.imagenet".into() }).await.unwrap().into_inner();
    assert_eq!(kept.namespace(), "prod", "still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_dataset_removes_pvc_pv_labels_and_the_master_dataset_then_the_finalizer() {
    let shoal = Shoal::start().await;
    let mut master = shoal.register(0).await;
    let mut ds = dataset_resource(&shoal.src_uri(), &["shoal.io/cleanup"]);
    ds.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()));
    let (ctx, handle) = shoal.ctx();
    let script = vec![
        expect(Method::DELETE, "/api/v1/namespaces/ml/persistentvolumeclaims/imagenet", &[], |_| {
            (
                200,
                json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "imagenet", "namespace": "ml"}}),
            )
        }),
        expect(Method::DELETE, "/api/v1/persistentvolumes/shoal.ml.imagenet", &[], |_| not_found("pv")),
        expect(Method::GET, NODES, &["labelSelector=dataset.shoal.io%2Fml.imagenet"], node_list(&["gpu-node-1"])),
        expect(Method::PATCH, "/api/v1/nodes/gpu-node-1", &[], |p| {
            assert_eq!(p, &json!({"metadata": {"labels": {"dataset.shoal.io/ml.imagenet": null}}}));
            (200, json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-node-1"}}))
        }),
        expect(Method::PATCH, DS_PATH, &[], |p| {
            let ops = p.as_array().expect("a JSON patch");
            assert!(ops.iter().any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"), "{p}");
            (200, ds_obj())
        }),
    ];
    let server = ApiServer::start(handle, script);
    dataset::reconcile(Arc::new(ds), ctx).await.unwrap();
    server.finish().await;
    let err = master.get_dataset(GetDatasetRequest { name: "ml.imagenet".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "the master's dataset is deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataload_starts_a_prewarm_and_mirrors_it_to_completion() {
    let shoal = Shoal::start().await;
    shoal.register(65536).await;
    let mut dl = DataLoad::new(
        "warm",
        DataLoadSpec {
            dataset: "imagenet".into(),
            paths: vec!["/train/c1".into()],
            include: None,
            replicas: None,
            policy: LoadPolicy::Once,
            schedule: None,
        },
    );
    dl.metadata.namespace = Some("ml".into());
    dl.metadata.generation = Some(1);
    dl.metadata.finalizers = Some(vec![dataload::FINALIZER.into()]);
    let dl_path = "/apis/shoal.io/v1alpha1/namespaces/ml/dataloads/warm/status";

    let (ctx, handle) = shoal.ctx();
    let job_id = Arc::new(std::sync::Mutex::new(String::new()));
    let seen = job_id.clone();
    let script = vec![
        expect(Method::GET, "/apis/shoal.io/v1alpha1/namespaces/ml/datasets/imagenet", &[], |_| {
            let mut ds = dataset_resource("x", &[]);
            ds.status = Some(DatasetStatus { master_name: Some("ml.imagenet".into()), ..Default::default() });
            (200, serde_json::to_value(ds).unwrap())
        }),
        expect(Method::PATCH, dl_path, &[], move |p| {
            let s = &p["status"];
            assert!(matches!(s["phase"].as_str(), Some("Running" | "Complete")), "{s}");
            assert_eq!(s["observedGeneration"], 1);
            *seen.lock().unwrap() = s["jobId"].as_str().unwrap().to_string();
            (200, dl_obj())
        }),
    ];
    let server = ApiServer::start(handle, script);
    dataload::reconcile(Arc::new(dl.clone()), ctx).await.unwrap();
    server.finish().await;
    let id = job_id.lock().unwrap().clone();
    assert!(!id.is_empty());

    // Later passes follow the job (and start no other) until it is complete.
    dl.status = Some(DataLoadStatus {
        job_id: Some(id.clone()),
        observed_generation: Some(1),
        phase: Some("Running".into()),
        ..Default::default()
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ctx, handle) = shoal.ctx();
        let done = Arc::new(std::sync::Mutex::new(false));
        let d = done.clone();
        let id2 = id.clone();
        let server = ApiServer::start(
            handle,
            vec![expect(Method::PATCH, dl_path, &[], move |p| {
                let s = &p["status"];
                assert_eq!(s["jobId"], id2.as_str(), "the same job");
                if s["phase"] == "Complete" {
                    assert_eq!((s["filesDone"].as_u64(), s["filesTotal"].as_u64()), (Some(4), Some(4)), "{s}");
                    assert_eq!(s["progress"], "4/4 files");
                    assert!(s["completionTime"].is_string());
                    *d.lock().unwrap() = true;
                }
                (200, dl_obj())
            })],
        );
        let action = dataload::reconcile(Arc::new(dl.clone()), ctx.clone()).await.unwrap();
        server.finish().await;
        if *done.lock().unwrap() {
            assert_eq!(action, Action::await_change());
            break;
        }
        assert_eq!(action, Action::requeue(ctx.poll));
        assert!(Instant::now() < deadline, "the prewarm did not complete");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
