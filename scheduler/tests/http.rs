//! The extender and webhook over real HTTP on loopback, with the JSON that
//! kube-scheduler and the API server send (built from k8s-openapi types): exact
//! scores, filter results and patches; malformed bodies get 400.

use std::io::{Read, Write};
use std::net::TcpStream;

use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use serde_json::{json, Value};
use shoal_proto::master::{CacheUsage, NodeCache};
use shoal_scheduler::score::{CacheView, Weights};
use shoal_scheduler::state::State;

/// POST `body` to `path`; returns (status, body).
fn post(addr: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

async fn serve(state: State, weights: Weights) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, shoal_scheduler::router(state, weights)).await });
    addr
}

/// A cluster: `ml.imagenet` (1000 bytes) cached 600 on gpu-a and 300 on gpu-b;
/// gpu-b runs a pod with 4 GPUs; the claim `imagenet` in `ml` is the dataset's.
fn cluster() -> State {
    let state = State::default();
    state.set_cache(CacheView::from_usage([CacheUsage {
        dataset: "ml.imagenet".into(),
        total_bytes: 1000,
        cached_bytes: 900,
        workers: vec![
            NodeCache { worker_id: "w-a".into(), node: "gpu-a".into(), cached_bytes: 600, cached_blocks: 6 },
            NodeCache { worker_id: "w-b".into(), node: "gpu-b".into(), cached_bytes: 300, cached_blocks: 3 },
        ],
        ..Default::default()
    }]));
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "imagenet", "namespace": "ml",
                     "labels": {"shoal.io/dataset-namespace": "ml", "shoal.io/dataset": "imagenet"}},
        "spec": {"volumeName": "shoal.ml.imagenet", "accessModes": ["ReadOnlyMany"]}
    }))
    .unwrap();
    state.apply_pvc(&pvc);
    let running: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "other", "namespace": "ml", "uid": "u-other"},
        "spec": {"nodeName": "gpu-b", "containers": [{"name": "c", "image": "x",
                 "resources": {"limits": {"nvidia.com/gpu": "4"}}}]},
        "status": {"phase": "Running"}
    }))
    .unwrap();
    state.apply_pod(&running);
    state
}

fn node(name: &str, gpus: u32) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "status": {"allocatable": {"cpu": "64", "nvidia.com/gpu": gpus.to_string()}}})
}

fn pod(name: &str, gpus: u32, labels: Value, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "ml", "uid": format!("u-{name}"), "labels": labels, "annotations": annotations},
           "spec": {"containers": [{"name": "train", "image": "pytorch",
                                    "resources": {"requests": {"nvidia.com/gpu": gpus.to_string()}, "limits": {"nvidia.com/gpu": gpus.to_string()}},
                                    "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true},
                                                     {"name": "scratch", "mountPath": "/scratch"}]}],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "imagenet", "readOnly": true}},
                                {"name": "scratch", "emptyDir": {}}]}})
}

/// ExtenderArgs as kube-scheduler sends them (nodeCacheCapable: false).
fn args(pod: Value) -> Vec<u8> {
    let nodes = vec![node("gpu-a", 8), node("gpu-b", 8), node("gpu-c", 8)];
    // Round-trip through the typed objects, as the real sender serializes them.
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let nodes: Vec<Node> = nodes.into_iter().map(|n| serde_json::from_value(n).unwrap()).collect();
    serde_json::to_vec(&json!({"pod": pod, "nodes": {"items": nodes}, "nodenames": null})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prioritize_scores_cache_share_and_gpu_fit() {
    let addr = serve(cluster(), Weights::default()).await;
    let (status, body) = post(&addr, "/prioritize", &args(pod("train-0", 4, json!({}), json!({}))));
    assert_eq!(status, 200, "{body}");
    // Data relative to the best node: gpu-a 0.6 → 1, gpu-b 0.3 → 0.5, gpu-c 0.
    // gpu-a: (2*1 + 1*(1-4/8))/3 = 0.833 → 8; gpu-b: (2*0.5 + 1*1.0)/3 = 0.667 → 7;
    // gpu-c: (0 + 0.5)/3 = 0.167 → 2.
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        got,
        json!([{"host": "gpu-a", "score": 8}, {"host": "gpu-b", "score": 7}, {"host": "gpu-c", "score": 2}])
    );

    // An 8-GPU pod does not fit gpu-b (4 free): its GPU part is 0 there.
    // gpu-a: (2 + 1)/3 → 10; gpu-b: (1 + 0)/3 → 3; gpu-c: (0 + 1)/3 → 3.
    let (_, body) = post(&addr, "/prioritize", &args(pod("train-1", 8, json!({}), json!({}))));
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        got,
        json!([{"host": "gpu-a", "score": 10}, {"host": "gpu-b", "score": 3}, {"host": "gpu-c", "score": 3}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gang_members_are_spread_over_the_cache_nodes() {
    let state = cluster();
    let member: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "job-0", "namespace": "ml", "uid": "u-job-0", "labels": {"shoal.io/pod-group": "job"}},
        "spec": {"nodeName": "gpu-a", "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running"}
    }))
    .unwrap();
    state.apply_pod(&member);
    let addr = serve(state, Weights { data: 1.0, gpu: 0.0, steer_plain_pods: false }).await;
    let (_, body) = post(&addr, "/prioritize", &args(pod("job-1", 0, json!({"shoal.io/pod-group": "job"}), json!({}))));
    let got: Value = serde_json::from_str(&body).unwrap();
    // gpu-a's 60% is half read by job-0 already: 0.6/2 = 0.3, as good as gpu-b's 0.3.
    assert_eq!(
        got,
        json!([{"host": "gpu-a", "score": 10}, {"host": "gpu-b", "score": 10}, {"host": "gpu-c", "score": 0}])
    );
    // Not in the gang: gpu-a is best, gpu-b half as good.
    let (_, body) = post(&addr, "/prioritize", &args(pod("solo", 0, json!({}), json!({}))));
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        got,
        json!([{"host": "gpu-a", "score": 10}, {"host": "gpu-b", "score": 5}, {"host": "gpu-c", "score": 0}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_requires_a_cache_node_only_when_the_pod_asks() {
    let addr = serve(cluster(), Weights::default()).await;
    let (status, body) =
        post(&addr, "/filter", &args(pod("p", 1, json!({}), json!({"shoal.io/require-cache": "true"}))));
    assert_eq!(status, 200, "{body}");
    let got: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> =
        got["nodes"]["items"].as_array().unwrap().iter().map(|n| n["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["gpu-a", "gpu-b"]);
    assert_eq!(got["failedNodes"], json!({"gpu-c": "caches none of ml.imagenet"}));

    // Without the annotation every node passes.
    let (_, body) = post(&addr, "/filter", &args(pod("p", 1, json!({}), json!({}))));
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got["nodes"]["items"].as_array().unwrap().len(), 3);
    assert!(got.get("failedNodes").is_none());

    // Node names only (nodeCacheCapable: true): names back.
    let p: Pod = serde_json::from_value(pod("p", 1, json!({}), json!({"shoal.io/require-cache": "true"}))).unwrap();
    let body = serde_json::to_vec(&json!({"pod": p, "nodenames": ["gpu-c", "gpu-b"]})).unwrap();
    let (_, body) = post(&addr, "/filter", &body);
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got["nodenames"], json!(["gpu-b"]));
}

fn review(pod: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"], "namespace": "ml", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:ml:trainer"},
            "object": pod, "oldObject": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .unwrap()
}

fn patch_of(body: &str) -> (Value, Value) {
    let got: Value = serde_json::from_str(body).unwrap();
    let resp = &got["response"];
    assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(resp["allowed"], true);
    assert_eq!(resp["patchType"], "JSONPatch");
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD.decode(resp["patch"].as_str().unwrap()).unwrap();
    (got.clone(), serde_json::from_slice(&raw).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_injects_preferred_affinity_and_mount_propagation() {
    let addr = serve(cluster(), Weights::default()).await;
    let original = pod("train-0", 1, json!({}), json!({}));
    let (status, body) = post(&addr, "/mutate", &review(original.clone()));
    assert_eq!(status, 200, "{body}");
    let (_, patch) = patch_of(&body);
    assert_eq!(
        patch,
        json!([
            {"op": "add", "path": "/spec/affinity", "value": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "preference": {"matchExpressions": [{"key": "dataset.shoal.io/ml.imagenet", "operator": "Exists"}]}}
            ]}}},
            {"op": "add", "path": "/spec/containers/0/volumeMounts/0/mountPropagation", "value": "HostToContainer"}
        ])
    );
    // The scratch volume is left alone.
    let mut patched = original;
    json_patch::patch(&mut patched, &serde_json::from_value::<json_patch::Patch>(patch).unwrap()).unwrap();
    assert!(patched["spec"]["containers"][0]["volumeMounts"][1].get("mountPropagation").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_affinity_is_added_to_every_existing_term_and_other_pods_pass_untouched() {
    let addr = serve(cluster(), Weights::default()).await;
    let mut p = pod("train-0", 1, json!({}), json!({"shoal.io/affinity": "required"}));
    p["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}
    ]}}});
    let (_, body) = post(&addr, "/mutate", &review(p));
    let (_, patch) = patch_of(&body);
    assert_eq!(
        patch,
        json!([
            {"op": "add", "path": "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchExpressions/1",
             "value": {"key": "dataset.shoal.io/ml.imagenet", "operator": "Exists"}},
            {"op": "add", "path": "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/1/matchExpressions/1",
             "value": {"key": "dataset.shoal.io/ml.imagenet", "operator": "Exists"}},
            {"op": "add", "path": "/spec/containers/0/volumeMounts/0/mountPropagation", "value": "HostToContainer"}
        ])
    );

    // A pod without shoal volumes is allowed as it is.
    let mut plain = pod("web", 0, json!({}), json!({}));
    plain["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}, {"name": "scratch", "emptyDir": {}}]);
    let (status, body) = post(&addr, "/mutate", &review(plain));
    assert_eq!(status, 200);
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got["response"]["allowed"], true);
    assert!(got["response"].get("patch").is_none_or(|p| p.is_null()), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_400_with_a_message() {
    let addr = serve(cluster(), Weights::default()).await;
    for (path, body) in [
        ("/filter", &b"{not json"[..]),
        ("/prioritize", &b"{\"nodes\": {\"items\": []}}"[..]),
        ("/prioritize", &b"{\"pod\": 7}"[..]),
        ("/mutate", &b"[]"[..]),
        ("/mutate", &b"{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": \"AdmissionReview\"}"[..]),
    ] {
        let (status, text) = post(&addr, path, body);
        assert_eq!(status, 400, "{path} {}: {text}", String::from_utf8_lossy(body));
        assert!(text.starts_with("malformed "), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_the_endpoints_are_served_over_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = shoal_scheduler::router(cluster(), Weights::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(shoal_scheduler::serve_http(
        listener,
        app,
        Some((cert.clone(), key.clone())),
        stop.clone().cancelled_owned(),
    ));
    let body = dir.path().join("args.json");
    std::fs::write(&body, args(pod("train-0", 4, json!({}), json!({})))).unwrap();
    let curl = |extra: &[&str]| {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(extra)
            .output();
        async move { out.await.unwrap() }
    };
    let url = format!("https://localhost:{port}/prioritize");
    let mut ok = None;
    for _ in 0..100 {
        let out = curl(&[
            "--cacert",
            cert.to_str().unwrap(),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", body.display()),
            &url,
        ])
        .await;
        if out.status.success() {
            ok = Some(String::from_utf8(out.stdout).unwrap());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let got: Value = serde_json::from_str(&ok.expect("an HTTPS answer")).unwrap();
    assert_eq!(got[0], json!({"host": "gpu-a", "score": 8}));
    // Plain HTTP on the TLS port is refused.
    let plain = curl(&[&format!("http://localhost:{port}/healthz")]).await;
    assert!(!plain.status.success() || !String::from_utf8_lossy(&plain.stdout).contains("ok"));
    stop.cancel();
    server.await.unwrap().unwrap();
}
