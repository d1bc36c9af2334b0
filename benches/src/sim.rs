//! A cluster simulator for placement policies: N nodes with 8 GPUs each, datasets
//! cached across nodes' workers, and a trace of training jobs (arrivals, pods,
//! GPUs per pod, a dataset each, run times). Jobs start when all their pods fit
//! (gangs are all-or-nothing; later jobs may start ahead of a blocked one). Each
//! policy places the same trace; the report compares the share of bytes read
//! locally, GPU fragmentation and job wait times.
//!
//! Policies: `default` is kube-scheduler's spreading (most free GPUs first);
//! `fluid` prefers nodes labelled as caching the dataset (any amount), then
//! spreads; `shoal` uses `shoal_scheduler::score` (cache share, GPU best fit,
//! gang spreading).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_scheduler::score::{self, CacheView, DatasetCache, Gpus, PodNeeds, Weights};

pub const GPUS_PER_NODE: u64 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Default,
    Fluid,
    Shoal,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Default => "kube-scheduler default (spread)",
            Policy::Fluid => "Fluid-style label affinity",
            Policy::Shoal => "shoal (cache share + GPU fit)",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Job {
    pub arrival: f64,
    pub pods: u32,
    pub gpus_per_pod: u64,
    pub dataset: String,
    pub duration: f64,
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub nodes: Vec<String>,
    pub view: CacheView,
}

/// A generated cluster and trace.
pub fn generate(nodes: usize, datasets: usize, jobs: usize, load: f64, seed: u64) -> (Cluster, Vec<Job>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let names: Vec<String> = (0..nodes).map(|i| format!("node-{i:05}")).collect();
    let mut view = CacheView::default();
    for d in 0..datasets {
        // 50 GB .. 5 TB, log-uniform; cached on a few nodes to a few dozen.
        let total = (50e9 * 100f64.powf(rng.random::<f64>())) as u64;
        let holders = (2 + (total as f64 / 5e12 * 30.0) as usize).min(nodes / 4).max(1);
        let mut nodes_map = BTreeMap::new();
        let cached = (total as f64 * rng.random_range(0.6..1.0)) as u64;
        for _ in 0..holders {
            let n = &names[rng.random_range(0..nodes)];
            *nodes_map.entry(n.clone()).or_insert(0) += cached / holders as u64;
        }
        view.datasets.insert(format!("ds-{d}"), DatasetCache { total_bytes: total, nodes: nodes_map });
    }
    // Job mix: mostly single-pod jobs of 1–8 GPUs, some gangs of 8-GPU pods.
    let mean_duration = 3600.0;
    let mut trace = Vec::with_capacity(jobs);
    let mut t = 0.0;
    let mut specs = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        let r: f64 = rng.random();
        let (pods, gpus) = match r {
            r if r < 0.30 => (1, 1),
            r if r < 0.50 => (1, 2),
            r if r < 0.70 => (1, 4),
            r if r < 0.85 => (1, 8),
            r if r < 0.95 => (2, 8),
            _ => (4, 8),
        };
        // Zipf-like popularity: low-numbered datasets are used most.
        let d = ((datasets as f64).powf(rng.random::<f64>()) as usize - 1).min(datasets - 1);
        let duration = -mean_duration * (1.0 - rng.random::<f64>()).ln();
        specs.push((pods, gpus, d, duration));
    }
    let mean_gpus: f64 = specs.iter().map(|(p, g, _, _)| (*p as u64 * *g) as f64).sum::<f64>() / jobs as f64;
    let capacity = nodes as f64 * GPUS_PER_NODE as f64;
    let interarrival = mean_gpus * mean_duration / (capacity * load);
    for (pods, gpus_per_pod, d, duration) in specs {
        t += -interarrival * (1.0 - rng.random::<f64>()).ln();
        trace.push(Job { arrival: t, pods, gpus_per_pod, dataset: format!("ds-{d}"), duration });
    }
    (Cluster { nodes: names, view }, trace)
}

/// What one policy achieved on a trace.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Bytes read from the pod's own node over all bytes read.
    pub local_share: f64,
    /// Local bytes over the most any placement could read locally (each job's
    /// pods on the nodes caching most of its dataset, GPUs permitting or not).
    pub of_achievable: f64,
    /// Time-averaged share of free GPUs stranded on partly used nodes.
    pub fragmentation: f64,
    pub wait_mean: f64,
    pub wait_p99: f64,
    pub jobs: usize,
    /// Per placement decision of one pod, seconds.
    pub decision_secs: Vec<f64>,
}

#[derive(PartialEq)]
struct Done(f64, Vec<(usize, u64)>);
impl Eq for Done {}
impl PartialOrd for Done {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Done {
    fn cmp(&self, o: &Self) -> Ordering {
        o.0.total_cmp(&self.0)
    }
}

/// Place one pod: the node index, or none when nothing fits.
pub fn place(policy: Policy, cluster: &Cluster, used: &[u64], needs: &PodNeeds, weights: Weights) -> Option<usize> {
    let fits: Vec<usize> = (0..cluster.nodes.len()).filter(|i| GPUS_PER_NODE - used[*i] >= needs.gpus).collect();
    let scores: Vec<f64> = match policy {
        Policy::Default => vec![0.0; fits.len()],
        Policy::Fluid => {
            fits.iter()
                .map(|i| {
                    let name = &cluster.nodes[*i];
                    let labelled = needs.datasets.iter().any(|d| {
                        cluster.view.datasets.get(d).is_some_and(|c| c.nodes.get(name).is_some_and(|b| *b > 0))
                    });
                    if labelled {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect()
        }
        Policy::Shoal => {
            let nodes: Vec<(&str, Gpus)> = fits
                .iter()
                .map(|i| (cluster.nodes[*i].as_str(), Gpus { allocatable: GPUS_PER_NODE, requested: used[*i] }))
                .collect();
            score::score_nodes(&cluster.view, needs, &nodes, weights).into_iter().map(|s| s as f64).collect()
        }
    };
    // Highest score; ties: most free GPUs (kube-scheduler's LeastAllocated), then
    // lowest index.
    let mut best: Option<(f64, u64, usize)> = None;
    for (i, s) in fits.into_iter().zip(scores) {
        let free = GPUS_PER_NODE - used[i];
        let better = match best {
            None => true,
            Some((bs, bf, _)) => s > bs || (s == bs && free > bf),
        };
        if better {
            best = Some((s, free, i));
        }
    }
    best.map(|(_, _, i)| i)
}

/// Run the trace under `policy`.
pub fn simulate(policy: Policy, cluster: &Cluster, trace: &[Job], weights: Weights) -> Outcome {
    let n = cluster.nodes.len();
    let mut used = vec![0u64; n];
    let mut running: BinaryHeap<Done> = BinaryHeap::new();
    let mut queue: Vec<usize> = Vec::new();
    let mut waits = Vec::with_capacity(trace.len());
    let (mut local_bytes, mut read_bytes, mut best_bytes) = (0f64, 0f64, 0f64);
    let (mut frag_area, mut time_area) = (0f64, 0f64);
    let mut decision_secs = Vec::new();
    let mut now = 0.0;
    let mut next_arrival = 0;
    loop {
        let t_arr = trace.get(next_arrival).map(|j| j.arrival);
        let t_done = running.peek().map(|d| d.0);
        let t = match (t_arr, t_done) {
            (None, None) => break,
            (Some(a), None) => a,
            (None, Some(d)) => d,
            (Some(a), Some(d)) => a.min(d),
        };
        // Fragmentation over [now, t).
        let free_total: u64 = used.iter().map(|u| GPUS_PER_NODE - u).sum();
        if free_total > 0 {
            let stranded: u64 = used.iter().filter(|u| **u > 0).map(|u| GPUS_PER_NODE - u).sum();
            frag_area += (t - now) * stranded as f64 / free_total as f64;
            time_area += t - now;
        }
        now = t;
        if t_done == Some(t) {
            let Done(_, pods) = running.pop().expect("peeked");
            for (node, g) in pods {
                used[node] -= g;
            }
        } else {
            queue.push(next_arrival);
            next_arrival += 1;
        }
        // Start what fits, in arrival order (later jobs may pass a blocked one).
        let mut i = 0;
        while i < queue.len() {
            let job = &trace[queue[i]];
            let mut trial = used.clone();
            let mut placed: Vec<(usize, u64)> = Vec::new();
            let mut gang_nodes = BTreeMap::new();
            let mut ok = true;
            for _ in 0..job.pods {
                let needs = PodNeeds {
                    datasets: vec![job.dataset.clone()],
                    gpus: job.gpus_per_pod,
                    gang_nodes: gang_nodes.clone(),
                };
                let started = std::time::Instant::now();
                let choice = place(policy, cluster, &trial, &needs, weights);
                decision_secs.push(started.elapsed().as_secs_f64());
                match choice {
                    Some(node) => {
                        trial[node] += job.gpus_per_pod;
                        placed.push((node, job.gpus_per_pod));
                        *gang_nodes.entry(cluster.nodes[node].clone()).or_insert(0) += 1;
                    }
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                used = trial;
                waits.push(now - job.arrival);
                let (l, r) = local_read(cluster, job, &placed);
                local_bytes += l;
                read_bytes += r;
                best_bytes += achievable(cluster, job);
                running.push(Done(now + job.duration, placed));
                queue.remove(i);
            } else {
                i += 1;
            }
        }
    }
    waits.sort_by(f64::total_cmp);
    let p99 = waits.get(((waits.len() as f64 * 0.99) as usize).min(waits.len().saturating_sub(1))).copied();
    Outcome {
        local_share: if read_bytes > 0.0 { local_bytes / read_bytes } else { 0.0 },
        of_achievable: if best_bytes > 0.0 { local_bytes / best_bytes } else { 0.0 },
        fragmentation: if time_area > 0.0 { frag_area / time_area } else { 0.0 },
        wait_mean: waits.iter().sum::<f64>() / waits.len().max(1) as f64,
        wait_p99: p99.unwrap_or(0.0),
        jobs: waits.len(),
        decision_secs,
    }
}

/// Bytes a job reads locally, and in all: its pods read disjoint shards of the
/// dataset (size / pods each), each from its own node's cache where it can.
pub fn local_read(cluster: &Cluster, job: &Job, placed: &[(usize, u64)]) -> (f64, f64) {
    let Some(ds) = cluster.view.datasets.get(&job.dataset) else { return (0.0, 0.0) };
    let total = ds.total_bytes as f64;
    let shard = total / job.pods as f64;
    let mut per_node: BTreeMap<usize, u32> = BTreeMap::new();
    for (node, _) in placed {
        *per_node.entry(*node).or_insert(0) += 1;
    }
    let local: f64 = per_node
        .iter()
        .map(|(node, pods)| {
            let cached = ds.nodes.get(&cluster.nodes[*node]).copied().unwrap_or(0) as f64;
            cached.min(shard * *pods as f64)
        })
        .sum();
    (local.min(total), total)
}

/// The most a job could read locally: its pods on the nodes caching most of its
/// dataset, one pod per node, each reading at most its shard there.
pub fn achievable(cluster: &Cluster, job: &Job) -> f64 {
    let Some(ds) = cluster.view.datasets.get(&job.dataset) else { return 0.0 };
    let shard = ds.total_bytes as f64 / job.pods as f64;
    let mut cached: Vec<f64> = ds.nodes.values().map(|b| *b as f64).collect();
    cached.sort_by(|a, b| b.total_cmp(a));
    cached.iter().take(job.pods as usize).map(|c| c.min(shard)).sum::<f64>().min(ds.total_bytes as f64)
}

/// p-th percentile (0..=100) of `v` (sorted in place).
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p / 100.0) as usize).min(v.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Cluster {
        let mut view = CacheView::default();
        view.datasets.insert("d".into(), DatasetCache { total_bytes: 100, nodes: [("n1".to_string(), 100u64)].into() });
        Cluster { nodes: vec!["n0".into(), "n1".into(), "n2".into()], view }
    }

    #[test]
    fn policies_place_as_described() {
        let c = tiny();
        let needs = PodNeeds { datasets: vec!["d".into()], gpus: 2, ..Default::default() };
        let used = [0, 4, 0];
        // Spreading takes the emptiest node (first of the ties).
        assert_eq!(place(Policy::Default, &c, &used, &needs, Weights::default()), Some(0));
        // Label affinity and shoal take the cache node.
        assert_eq!(place(Policy::Fluid, &c, &used, &needs, Weights::default()), Some(1));
        assert_eq!(place(Policy::Shoal, &c, &used, &needs, Weights::default()), Some(1));
        // Nothing fits a 9-GPU pod.
        let big = PodNeeds { gpus: 9, ..needs };
        assert_eq!(place(Policy::Shoal, &c, &used, &big, Weights::default()), None);
    }

    #[test]
    fn local_reads_count_each_pods_shard_once() {
        let c = tiny();
        let job = Job { arrival: 0.0, pods: 2, gpus_per_pod: 8, dataset: "d".into(), duration: 1.0 };
        assert_eq!(local_read(&c, &job, &[(1, 8), (0, 8)]), (50.0, 100.0), "one shard local");
        assert_eq!(local_read(&c, &job, &[(1, 8), (1, 8)]), (100.0, 100.0));
    }

    #[test]
    fn a_simulation_runs_every_job_and_shoal_reads_more_locally() {
        let (cluster, trace) = generate(40, 10, 300, 0.8, 7);
        let spread = simulate(Policy::Default, &cluster, &trace, Weights::default());
        let shoal = simulate(Policy::Shoal, &cluster, &trace, Weights::default());
        assert_eq!((spread.jobs, shoal.jobs), (300, 300));
        assert!(shoal.local_share > spread.local_share, "{} vs {}", shoal.local_share, spread.local_share);
    }
}
