//! Cluster simulator: shoal's placement against kube-scheduler's default spreading
//! and Fluid-style label affinity on the same generated cluster and job trace.
//!
//! `cargo bench -p shoal-benches --bench scheduler_sim -- [--nodes 200]
//! [--datasets 60] [--jobs 3000] [--loads 0.6,0.9] [--seed 1] [--latency-nodes 5000]
//! [--no-write]`

use std::time::Instant;

use rand::{Rng, SeedableRng};
use shoal_benches::sim::{self, Policy};
use shoal_scheduler::score::{PodNeeds, Weights};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("bad value for {name}")))
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let nodes: usize = arg(&args, "--nodes", 200);
    let datasets: usize = arg(&args, "--datasets", 60);
    let jobs: usize = arg(&args, "--jobs", 3000);
    let loads: String = arg(&args, "--loads", "0.6,0.9".to_string());
    let loads: Vec<f64> = loads.split(',').map(|l| l.parse().expect("--loads: numbers, e.g. 0.6,0.9")).collect();
    let seed: u64 = arg(&args, "--seed", 1);
    let latency_nodes: usize = arg(&args, "--latency-nodes", 5000);
    let write = !args.iter().any(|a| a == "--no-write");
    let weights = Weights::default();

    let mut runs = Vec::new();
    for &load in &loads {
        let (cluster, trace) = sim::generate(nodes, datasets, jobs, load, seed);
        let mut rows = Vec::new();
        for policy in [Policy::Default, Policy::Fluid, Policy::Shoal] {
            let started = Instant::now();
            let mut out = sim::simulate(policy, &cluster, &trace, weights);
            let p99 = sim::percentile(&mut out.decision_secs, 99.0);
            println!(
                "load {:.0}%  {:<34} local {:>5.1}% ({:>5.1}% of achievable)  fragmentation {:>5.1}%  wait mean {:>7.0} s  p99 {:>7.0} s  decision p99 {:>6.1} µs  ({} jobs, {:.1} s)",
                load * 100.0,
                policy.name(),
                out.local_share * 100.0,
                out.of_achievable * 100.0,
                out.fragmentation * 100.0,
                out.wait_mean,
                out.wait_p99,
                p99 * 1e6,
                out.jobs,
                started.elapsed().as_secs_f64()
            );
            rows.push((policy, out, p99));
        }
        runs.push((load, rows));
    }

    // Decision latency at scale: one pod scored against every node of a large,
    // partly used cluster.
    let (big, _) = sim::generate(latency_nodes, datasets, 1, 0.9, seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let used: Vec<u64> = (0..latency_nodes).map(|_| rng.random_range(0..=sim::GPUS_PER_NODE)).collect();
    let mut lat = Vec::with_capacity(2000);
    for i in 0..2000 {
        let needs = PodNeeds {
            datasets: vec![format!("ds-{}", i % datasets)],
            gpus: [1, 2, 4, 8][i % 4],
            ..Default::default()
        };
        let started = Instant::now();
        std::hint::black_box(sim::place(Policy::Shoal, &big, &used, &needs, weights));
        lat.push(started.elapsed().as_secs_f64());
    }
    let big_p50 = sim::percentile(&mut lat, 50.0);
    let big_p99 = sim::percentile(&mut lat, 99.0);
    println!("decision latency at {latency_nodes} nodes: p50 {:.2} ms, p99 {:.2} ms", big_p50 * 1e3, big_p99 * 1e3);

    if write {
        let mut md = String::new();
        md.push_str("## Placement: cluster simulator\n\n");
        md.push_str(&format!(
            "`cargo bench -p shoal-benches --bench scheduler_sim -- --nodes {nodes} --datasets {datasets} --jobs {jobs} --loads {} --seed {seed} --latency-nodes {latency_nodes}`\n\n",
            loads.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(",")
        ));
        md.push_str(&format!(
            "{nodes} nodes × 8 GPUs; {datasets} datasets of 50 GB–5 TB, 60–100% cached, spread over 2–30 nodes each; {jobs} jobs: 70% single-pod jobs of 1–8 GPUs, 30% with 8-GPU pods, a third of those gangs of 2–4 pods; exponential run times (mean 1 h); Zipf-like dataset popularity. A job's pods read disjoint shards of its dataset, each locally where its node caches it. *Achievable* is what the job would read locally on the nodes caching most of its dataset, GPUs permitting or not (about 10% of the bytes here, as datasets are spread over many nodes). Simulated time: only the decision latency depends on the machine (2 cores).\n\n"
        ));
        for (load, rows) in &runs {
            md.push_str(&format!("Offered GPU load {:.0}%:\n\n", load * 100.0));
            md.push_str("| policy | bytes read locally | of the achievable | GPU fragmentation | job wait mean | job wait p99 | decision p99 |\n|---|---:|---:|---:|---:|---:|---:|\n");
            for (policy, out, p99) in rows {
                md.push_str(&format!(
                    "| {} | {:.1}% | {:.1}% | {:.1}% | {:.0} s | {:.0} s | {:.1} µs |\n",
                    policy.name(),
                    out.local_share * 100.0,
                    out.of_achievable * 100.0,
                    out.fragmentation * 100.0,
                    out.wait_mean,
                    out.wait_p99,
                    p99 * 1e6
                ));
            }
            let (spread, fluid, shoal) = (&rows[0].1, &rows[1].1, &rows[2].1);
            let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.1}x", a / b) } else { "∞".into() };
            md.push_str(&format!(
                "\nshoal reads {} the local bytes of the default scheduler and {} Fluid-style affinity; fragmentation {:.1}% vs {:.1}% (default) and {:.1}% (Fluid).\n\n",
                ratio(shoal.local_share, spread.local_share),
                ratio(shoal.local_share, fluid.local_share),
                shoal.fragmentation * 100.0,
                spread.fragmentation * 100.0,
                fluid.fragmentation * 100.0,
            ));
        }
        md.push_str(&format!(
            "Decision latency of one pod scored against **{latency_nodes} nodes: p50 {:.2} ms, p99 {:.2} ms** (the extender answers from memory; the master and API server are read in the background).\n",
            big_p50 * 1e3,
            big_p99 * 1e3,
        ));
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md");
        shoal_benches::report::replace_section(&file, "scheduler", md.trim_end()).expect("write RESULTS.md");
        println!("wrote {}", file.display());
    }
}
