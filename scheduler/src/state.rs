//! What the scheduler knows, kept up to date in the background so that no request
//! waits on the master or the API server: the master's cache view (polled), which
//! PVCs are shoal datasets, and which pods run where with how many GPUs (watched).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use shoal_proto::master::{CacheUsageRequest, ListDatasetsRequest};
use tracing::warn;

use crate::score::{CacheView, PodNeeds};

/// Pod labels naming a gang (pods of one training job).
pub const GANG_LABELS: [&str; 2] = ["shoal.io/pod-group", "scheduling.x-k8s.io/pod-group"];
/// The extended resource GPUs are requested as.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

#[derive(Debug, Default)]
struct Inner {
    cache: CacheView,
    /// (namespace, claim name) → the dataset's master name.
    claims: HashMap<(String, String), String>,
    /// Pod uid → (node, GPUs, gang key), for pods bound to a node and not done.
    pods: HashMap<String, (String, u64, Option<String>)>,
}

#[derive(Debug, Default, Clone)]
pub struct State(Arc<RwLock<Inner>>);

impl State {
    pub fn set_cache(&self, view: CacheView) {
        self.0.write().expect("state lock").cache = view;
    }

    pub fn cache(&self) -> CacheView {
        self.0.read().expect("state lock").cache.clone()
    }

    /// Record a PVC: a shoal dataset's claim (labelled by the operator, or bound
    /// to a `shoal.` PV) maps to the dataset's master name.
    pub fn apply_pvc(&self, pvc: &PersistentVolumeClaim) {
        let ns = pvc.namespace().unwrap_or_default();
        let key = (ns.clone(), pvc.name_any());
        let labels = pvc.labels();
        let dataset = match (labels.get("shoal.io/dataset-namespace"), labels.get("shoal.io/dataset")) {
            (Some(dns), Some(d)) => Some(format!("{dns}.{d}")),
            _ => pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .and_then(|v| v.strip_prefix("shoal."))
                .map(str::to_string),
        };
        let mut inner = self.0.write().expect("state lock");
        match dataset {
            Some(d) => inner.claims.insert(key, d),
            None => inner.claims.remove(&key),
        };
    }

    pub fn delete_pvc(&self, pvc: &PersistentVolumeClaim) {
        let key = (pvc.namespace().unwrap_or_default(), pvc.name_any());
        self.0.write().expect("state lock").claims.remove(&key);
    }

    /// Record a pod's node, GPUs and gang (pods not yet bound, or finished, are
    /// forgotten).
    pub fn apply_pod(&self, pod: &Pod) {
        let uid = pod.uid().unwrap_or_else(|| format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()));
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let done = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
        let mut inner = self.0.write().expect("state lock");
        match node {
            Some(node) if !done => {
                inner.pods.insert(uid, (node, gpu_request(pod), gang_of(pod)));
            }
            _ => {
                inner.pods.remove(&uid);
            }
        }
    }

    pub fn delete_pod(&self, pod: &Pod) {
        let uid = pod.uid().unwrap_or_else(|| format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()));
        self.0.write().expect("state lock").pods.remove(&uid);
    }

    /// GPUs requested by the pods bound to `node`.
    pub fn gpus_requested(&self, node: &str) -> u64 {
        self.0.read().expect("state lock").pods.values().filter(|(n, _, _)| n == node).map(|(_, g, _)| g).sum()
    }

    /// The master name of the dataset behind a claim, if it is a shoal claim.
    pub fn dataset_of_claim(&self, ns: &str, claim: &str) -> Option<String> {
        self.0.read().expect("state lock").claims.get(&(ns.to_string(), claim.to_string())).cloned()
    }

    /// Master names of the shoal datasets a pod mounts.
    pub fn datasets_of(&self, pod: &Pod) -> Vec<String> {
        let ns = pod.namespace().unwrap_or_default();
        let mut out: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .filter_map(|v| v.persistent_volume_claim.as_ref())
            .filter_map(|c| self.dataset_of_claim(&ns, &c.claim_name))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// What scoring needs to know about `pod`.
    pub fn needs(&self, pod: &Pod) -> PodNeeds {
        let datasets = self.datasets_of(pod);
        let mut gang_nodes = BTreeMap::new();
        if let Some(gang) = gang_of(pod) {
            let inner = self.0.read().expect("state lock");
            for (node, _, g) in inner.pods.values() {
                if g.as_deref() == Some(gang.as_str()) {
                    *gang_nodes.entry(node.clone()).or_insert(0) += 1;
                }
            }
        }
        PodNeeds { datasets, gpus: gpu_request(pod), gang_nodes }
    }
}

/// GPUs a pod requests: the sum over its containers (limits count when no request
/// is given, as the API server defaults it), or the largest init container's.
pub fn gpu_request(pod: &Pod) -> u64 {
    let Some(spec) = pod.spec.as_ref() else { return 0 };
    let of = |c: &k8s_openapi::api::core::v1::Container| -> u64 {
        let r = c.resources.as_ref();
        let q = r
            .and_then(|r| r.requests.as_ref().and_then(|m| m.get(GPU_RESOURCE)))
            .or_else(|| r.and_then(|r| r.limits.as_ref().and_then(|m| m.get(GPU_RESOURCE))));
        q.and_then(|q| q.0.parse().ok()).unwrap_or(0)
    };
    let main: u64 = spec.containers.iter().map(of).sum();
    let init = spec.init_containers.iter().flatten().map(of).max().unwrap_or(0);
    main.max(init)
}

/// The gang a pod belongs to: `namespace/group` from one of [`GANG_LABELS`].
pub fn gang_of(pod: &Pod) -> Option<String> {
    let labels = pod.labels();
    GANG_LABELS.iter().find_map(|k| labels.get(*k)).map(|g| format!("{}/{g}", pod.namespace().unwrap_or_default()))
}

/// Poll the master's cache usage of every dataset into `state`, forever.
pub async fn poll_master(state: State, mut master: shoal_proto::auth::Master, every: Duration) {
    loop {
        match fetch_view(&mut master).await {
            Ok(view) => {
                crate::metrics::CACHE_DATASETS.set(view.datasets.len() as i64);
                state.set_cache(view);
            }
            Err(e) => warn!(error = %e, "cannot read the cache view from the master; keeping the last one"),
        }
        tokio::time::sleep(every).await;
    }
}

pub async fn fetch_view(master: &mut shoal_proto::auth::Master) -> Result<CacheView, tonic::Status> {
    let datasets = master.list_datasets(ListDatasetsRequest {}).await?.into_inner().datasets;
    let mut usage = Vec::with_capacity(datasets.len());
    for d in datasets.into_iter().filter_map(|d| d.spec.map(|s| s.name)) {
        usage.push(master.get_cache_usage(CacheUsageRequest { dataset: d }).await?.into_inner());
    }
    Ok(CacheView::from_usage(usage))
}

/// Watch PVCs and pods into `state`, forever (the watcher retries with backoff).
pub async fn watch_cluster(state: State, client: Client) {
    use kube::runtime::WatchStreamExt;
    let pvcs = watcher(Api::<PersistentVolumeClaim>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .for_each(|e| {
            let state = state.clone();
            async move {
                match e {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => state.apply_pvc(&p),
                    Ok(watcher::Event::Delete(p)) => state.delete_pvc(&p),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "PVC watch"),
                }
            }
        });
    let pods = watcher(Api::<Pod>::all(client), watcher::Config::default()).default_backoff().for_each(|e| {
        let state = state.clone();
        async move {
            match e {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => state.apply_pod(&p),
                Ok(watcher::Event::Delete(p)) => state.delete_pod(&p),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "pod watch"),
            }
        }
    });
    futures::future::join(pvcs, pods).await;
}
