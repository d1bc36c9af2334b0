//! Node scores: how much of a pod's datasets a node's worker caches, and how well
//! the pod's GPU request fits the node's free GPUs. Pure functions of a
//! [`CacheView`] and the node's GPUs; the extender, the webhook and the cluster
//! simulator in `benches/` all use them.

use std::collections::{BTreeMap, HashMap};

use shoal_proto::master::CacheUsage;

/// The highest score an extender may give (kube-scheduler's `MaxExtenderPriority`).
pub const MAX_SCORE: i64 = 10;

/// Where each dataset is cached: bytes per node, and the dataset's size.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CacheView {
    pub datasets: HashMap<String, DatasetCache>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatasetCache {
    pub total_bytes: u64,
    /// Node name → bytes its worker(s) cache.
    pub nodes: BTreeMap<String, u64>,
}

impl CacheView {
    /// From the master's cache usage of every dataset.
    pub fn from_usage(usage: impl IntoIterator<Item = CacheUsage>) -> CacheView {
        let mut datasets = HashMap::new();
        for u in usage {
            let mut nodes = BTreeMap::new();
            for w in u.workers.iter().filter(|w| !w.node.is_empty() && w.cached_bytes > 0) {
                *nodes.entry(w.node.clone()).or_insert(0) += w.cached_bytes;
            }
            datasets.insert(u.dataset.clone(), DatasetCache { total_bytes: u.total_bytes, nodes });
        }
        CacheView { datasets }
    }

    /// Share (0..=1) of the bytes of `datasets` that `node` caches.
    pub fn local_share(&self, datasets: &[String], node: &str) -> f64 {
        let (mut total, mut local) = (0u64, 0u64);
        for d in datasets {
            if let Some(c) = self.datasets.get(d) {
                total += c.total_bytes;
                local += c.nodes.get(node).copied().unwrap_or(0).min(c.total_bytes);
            }
        }
        if total == 0 {
            0.0
        } else {
            local as f64 / total as f64
        }
    }

    /// Whether `node` caches any part of any dataset.
    pub fn is_cache_node(&self, node: &str) -> bool {
        self.datasets.values().any(|c| c.nodes.get(node).is_some_and(|b| *b > 0))
    }
}

/// How the two parts of a score are weighed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub data: f64,
    pub gpu: f64,
    /// Pods without datasets avoid the free GPUs of cache nodes.
    pub steer_plain_pods: bool,
}

impl Default for Weights {
    fn default() -> Self {
        Weights { data: 2.0, gpu: 1.0, steer_plain_pods: false }
    }
}

/// GPUs of a node: what it has and what its pods already requested.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gpus {
    pub allocatable: u64,
    pub requested: u64,
}

impl Gpus {
    pub fn free(&self) -> u64 {
        self.allocatable.saturating_sub(self.requested)
    }
}

/// What the scheduler knows about the pod being placed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodNeeds {
    /// Master names of the datasets it mounts.
    pub datasets: Vec<String>,
    pub gpus: u64,
    /// Nodes already running members of its gang, with how many each.
    pub gang_nodes: BTreeMap<String, u32>,
}

/// GPU fit (0..=1): 0 when the request does not fit; else best-fit, higher when
/// fewer GPUs are left stranded on the node.
pub fn gpu_fit(request: u64, gpus: Gpus) -> f64 {
    let free = gpus.free();
    if request == 0 || gpus.allocatable == 0 {
        return if request == 0 { 1.0 } else { 0.0 };
    }
    if request > free {
        return 0.0;
    }
    1.0 - (free - request) as f64 / gpus.allocatable as f64
}

/// The data part (0..=1). A gang member counts a node's cache as already read by
/// the members there, so a gang spreads over the nodes that together hold its
/// data instead of piling onto the single best one.
pub fn data_score(view: &CacheView, pod: &PodNeeds, node: &str) -> f64 {
    let share = view.local_share(&pod.datasets, node);
    let members = pod.gang_nodes.get(node).copied().unwrap_or(0);
    share / (1.0 + members as f64)
}

/// Every candidate node's score, 0..=[`MAX_SCORE`]. The data part is relative to
/// the candidate that caches most of the pod's data (a dataset spread over twenty
/// nodes puts 5% on each; that node is still the best place to read it), the GPU
/// part is [`gpu_fit`].
pub fn score_nodes(view: &CacheView, pod: &PodNeeds, nodes: &[(&str, Gpus)], w: Weights) -> Vec<i64> {
    let to_int = |s: f64| (s * MAX_SCORE as f64).round().clamp(0.0, MAX_SCORE as f64) as i64;
    if pod.datasets.is_empty() {
        // Nothing to read locally: only GPU fit, and (when configured) keep the
        // free GPUs of cache nodes for the pods that read their data.
        return nodes
            .iter()
            .map(|(name, gpus)| {
                let fit = gpu_fit(pod.gpus, *gpus);
                to_int(if w.steer_plain_pods && view.is_cache_node(name) { fit * 0.5 } else { fit })
            })
            .collect();
    }
    let data: Vec<f64> = nodes.iter().map(|(name, _)| data_score(view, pod, name)).collect();
    let best = data.iter().copied().fold(0.0, f64::max);
    let total = w.data + w.gpu;
    if total <= 0.0 {
        return vec![0; nodes.len()];
    }
    nodes
        .iter()
        .zip(data)
        .map(|((_, gpus), d)| {
            let d = if best > 0.0 { d / best } else { 0.0 };
            to_int((w.data * d + w.gpu * gpu_fit(pod.gpus, *gpus)) / total)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> CacheView {
        let mut v = CacheView::default();
        v.datasets.insert(
            "ml.imagenet".into(),
            DatasetCache { total_bytes: 1000, nodes: [("a".into(), 600), ("b".into(), 300)].into() },
        );
        v.datasets.insert("ml.coco".into(), DatasetCache { total_bytes: 1000, nodes: [("b".into(), 1000)].into() });
        v
    }

    #[test]
    fn shares_add_over_the_pods_datasets() {
        let v = view();
        assert_eq!(v.local_share(&["ml.imagenet".into()], "a"), 0.6);
        assert_eq!(v.local_share(&["ml.imagenet".into(), "ml.coco".into()], "b"), 0.65);
        assert_eq!(v.local_share(&["ml.unknown".into()], "a"), 0.0);
    }

    #[test]
    fn gpu_fit_prefers_the_tightest_node_that_fits() {
        let g = |a, r| Gpus { allocatable: a, requested: r };
        assert_eq!(gpu_fit(4, g(8, 4)), 1.0, "exactly fills the node");
        assert_eq!(gpu_fit(4, g(8, 0)), 0.5, "leaves four stranded");
        assert_eq!(gpu_fit(4, g(8, 6)), 0.0, "does not fit");
        assert_eq!(gpu_fit(0, g(0, 0)), 1.0);
        assert_eq!(gpu_fit(1, g(0, 0)), 0.0);
    }

    fn free(requested: u64) -> Gpus {
        Gpus { allocatable: 8, requested }
    }

    #[test]
    fn scores_weigh_data_relative_to_the_best_node_and_gpus() {
        let v = view();
        let pod = PodNeeds { datasets: vec!["ml.imagenet".into()], gpus: 4, ..Default::default() };
        let w = Weights::default();
        // Data 0.6 / 0.3 / 0 → 1 / 0.5 / 0. a: (2*1 + 0.5)/3 → 8; b: (2*0.5 + 1)/3 → 7;
        // c: 0.5/3 → 2.
        let nodes = [("a", free(0)), ("b", free(4)), ("c", free(0))];
        assert_eq!(score_nodes(&v, &pod, &nodes, w), vec![8, 7, 2]);
        // An unknown dataset: only GPU fit counts.
        let other = PodNeeds { datasets: vec!["ml.none".into()], gpus: 4, ..Default::default() };
        assert_eq!(score_nodes(&v, &other, &nodes, w), vec![2, 3, 2]);
    }

    #[test]
    fn gang_members_spread_over_the_cache_nodes() {
        let v = view();
        let mut pod = PodNeeds { datasets: vec!["ml.imagenet".into()], gpus: 8, ..Default::default() };
        let w = Weights { data: 1.0, gpu: 0.0, steer_plain_pods: false };
        let nodes = [("a", free(0)), ("b", free(0)), ("c", free(0))];
        assert_eq!(score_nodes(&v, &pod, &nodes, w), vec![10, 5, 0]);
        pod.gang_nodes.insert("a".into(), 1);
        assert_eq!(score_nodes(&v, &pod, &nodes, w), vec![10, 10, 0], "a's cache is already half read by a member");
        pod.gang_nodes.insert("a".into(), 2);
        assert_eq!(score_nodes(&v, &pod, &nodes, w), vec![7, 10, 0]);
    }

    #[test]
    fn plain_pods_avoid_cache_nodes_only_when_asked() {
        let v = view();
        let pod = PodNeeds { gpus: 8, ..Default::default() };
        let nodes = [("a", free(0)), ("c", free(0))];
        assert_eq!(score_nodes(&v, &pod, &nodes, Weights::default()), vec![10, 10]);
        let steer = Weights { steer_plain_pods: true, ..Weights::default() };
        assert_eq!(score_nodes(&v, &pod, &nodes, steer), vec![5, 10]);
    }
}
