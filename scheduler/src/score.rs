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

/// The node's score, 0..=[`MAX_SCORE`].
pub fn score(view: &CacheView, pod: &PodNeeds, node: &str, gpus: Gpus, w: Weights) -> i64 {
    let s = if pod.datasets.is_empty() {
        // Nothing to read locally: only GPU fit, and (when configured) keep the
        // free GPUs of cache nodes for the pods that read their data.
        let fit = gpu_fit(pod.gpus, gpus);
        if w.steer_plain_pods && view.is_cache_node(node) {
            fit * 0.5
        } else {
            fit
        }
    } else {
        let total = w.data + w.gpu;
        if total <= 0.0 {
            return 0;
        }
        (w.data * data_score(view, pod, node) + w.gpu * gpu_fit(pod.gpus, gpus)) / total
    };
    (s * MAX_SCORE as f64).round().clamp(0.0, MAX_SCORE as f64) as i64
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

    #[test]
    fn scores_weigh_data_and_gpus() {
        let v = view();
        let pod = PodNeeds { datasets: vec!["ml.imagenet".into()], gpus: 4, ..Default::default() };
        let w = Weights::default();
        // a: (2*0.6 + 1*0.5)/3 = 0.567 → 6; b: (2*0.3 + 1*1.0)/3 = 0.533 → 5; c: 0.5/3 → 2.
        assert_eq!(score(&v, &pod, "a", Gpus { allocatable: 8, requested: 0 }, w), 6);
        assert_eq!(score(&v, &pod, "b", Gpus { allocatable: 8, requested: 4 }, w), 5);
        assert_eq!(score(&v, &pod, "c", Gpus { allocatable: 8, requested: 0 }, w), 2);
    }

    #[test]
    fn gang_members_spread_over_the_cache_nodes() {
        let v = view();
        let mut pod = PodNeeds { datasets: vec!["ml.imagenet".into()], gpus: 8, ..Default::default() };
        let free = Gpus { allocatable: 8, requested: 0 };
        let w = Weights { data: 1.0, gpu: 0.0, steer_plain_pods: false };
        assert_eq!(score(&v, &pod, "a", free, w), 6);
        pod.gang_nodes.insert("a".into(), 1);
        assert_eq!(score(&v, &pod, "a", free, w), 3, "a's cache is already read by a member");
        assert_eq!(score(&v, &pod, "b", free, w), 3);
    }

    #[test]
    fn plain_pods_avoid_cache_nodes_only_when_asked() {
        let v = view();
        let pod = PodNeeds { gpus: 8, ..Default::default() };
        let free = Gpus { allocatable: 8, requested: 0 };
        assert_eq!(score(&v, &pod, "a", free, Weights::default()), 10);
        let steer = Weights { steer_plain_pods: true, ..Weights::default() };
        assert_eq!(score(&v, &pod, "a", free, steer), 5);
        assert_eq!(score(&v, &pod, "c", free, steer), 10);
    }
}
