//! Cache commands: `shoal prewarm` (start, watch with a progress bar, status,
//! cancel), `shoal status` (workers, tiers, hit ratio, per-dataset cached share)
//! and `shoal cache free`.

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use shoal_proto::master::*;
use shoal_proto::worker::StatsRequest;

use crate::client::{connect, Common, Output};
use crate::exit::Remote;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct PrewarmArgs {
    #[command(subcommand)]
    pub cmd: Option<PrewarmCmd>,
    #[command(flatten)]
    pub run: PrewarmRun,
}

#[derive(Args, Debug)]
pub struct PrewarmRun {
    /// Dataset to prewarm.
    #[arg(required = true)]
    pub dataset: Option<String>,
    /// Dataset paths to load (files or directories); the whole dataset if none.
    pub paths: Vec<String>,
    /// Only files whose dataset path matches this glob (`*` stays within a
    /// directory, `**` crosses directories), e.g. '/train/**/*.jpg'.
    #[arg(long)]
    pub include: Option<String>,
    /// Workers that should hold each block.
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// Blocks loaded at once.
    #[arg(long, default_value_t = 16)]
    pub parallel: u32,
    /// Start the job and return its id without waiting.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Subcommand, Debug)]
pub enum PrewarmCmd {
    /// Show one job, or every job.
    Status {
        job: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Cancel a running job.
    Cancel {
        job: String,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand, Debug)]
pub enum CacheCmd {
    /// Drop the cached blocks of a dataset (or of one path in it) from every worker.
    Free {
        dataset: String,
        /// A file or directory in the dataset; the whole dataset if omitted.
        path: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

fn state_name(s: i32) -> &'static str {
    match LoadState::try_from(s).unwrap_or(LoadState::Unspecified) {
        LoadState::Running => "running",
        LoadState::Completed => "completed",
        LoadState::Failed => "failed",
        LoadState::Cancelled => "cancelled",
        LoadState::Unspecified => "unknown",
    }
}

fn job_json(j: &LoadJob) -> serde_json::Value {
    json!({
        "id": j.id, "dataset": j.spec.as_ref().map(|s| s.dataset.clone()), "state": state_name(j.state),
        "files_total": j.files_total, "files_done": j.files_done, "files_failed": j.files_failed,
        "bytes_total": j.bytes_total, "bytes_done": j.bytes_done,
        "blocks_total": j.blocks_total, "blocks_done": j.blocks_done, "blocks_already_cached": j.blocks_already_cached,
        "blocks_cached_at_end": j.blocks_cached_at_end,
        "failures": j.failures.iter().map(|f| json!({"path": f.path, "error": f.error})).collect::<Vec<_>>(),
        "started_unix_ms": j.started_unix_ms, "finished_unix_ms": j.finished_unix_ms, "message": j.message,
    })
}

fn print_job(j: &LoadJob, output: Output) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&job_json(j)).expect("json")),
        Output::Table => {
            println!(
                "job {}: {} — {}/{} files, {}/{} ({} blocks, {} already cached), {} failed",
                j.id,
                state_name(j.state),
                j.files_done,
                j.files_total,
                ByteSize(j.bytes_done),
                ByteSize(j.bytes_total),
                j.blocks_done,
                j.blocks_already_cached,
                j.files_failed
            );
            if !j.message.is_empty() {
                println!("  {}", j.message);
            }
            for f in &j.failures {
                println!("  failed: {}: {}", f.path, f.error);
            }
        }
    }
}

/// Fails (non-zero exit) unless the job completed with every file loaded.
fn verdict(j: &LoadJob) -> Result<()> {
    if j.state == LoadState::Completed as i32 && j.files_failed == 0 {
        return Ok(());
    }
    let why = if j.message.is_empty() {
        format!("{} of {} files failed", j.files_failed, j.files_total)
    } else {
        j.message.clone()
    };
    bail!("prewarm job {} {}: {why}", j.id, state_name(j.state))
}

pub async fn prewarm(args: PrewarmArgs) -> Result<()> {
    match args.cmd {
        Some(PrewarmCmd::Status { job, common }) => {
            let mut m = connect(&common.master).await?;
            match job {
                Some(id) => {
                    let j = m
                        .get_load(GetLoadRequest { id: id.clone() })
                        .await
                        .map_err(Remote)
                        .with_context(|| format!("job {id}"))?;
                    print_job(j.get_ref(), common.output);
                }
                None => {
                    let jobs = m.list_loads(ListLoadsRequest {}).await.map_err(Remote)?.into_inner().jobs;
                    match common.output {
                        Output::Json => println!(
                            "{}",
                            serde_json::to_string_pretty(&jobs.iter().map(job_json).collect::<Vec<_>>())?
                        ),
                        Output::Table => {
                            if jobs.is_empty() {
                                println!("no prewarm jobs");
                            }
                            for j in &jobs {
                                print_job(j, Output::Table);
                            }
                        }
                    }
                }
            }
            Ok(())
        }
        Some(PrewarmCmd::Cancel { job, common }) => {
            let mut m = connect(&common.master).await?;
            let j = m
                .cancel_load(CancelLoadRequest { id: job.clone() })
                .await
                .map_err(Remote)
                .with_context(|| format!("cancel job {job}"))?;
            println!("cancelling {}", j.get_ref().id);
            Ok(())
        }
        None => run(args.run).await,
    }
}

async fn run(r: PrewarmRun) -> Result<()> {
    let dataset = r.dataset.clone().unwrap_or_default();
    let mut m = connect(&r.common.master).await?;
    let spec = LoadSpec {
        dataset: dataset.clone(),
        paths: r.paths.clone(),
        include: r.include.clone().unwrap_or_default(),
        replicas: r.replicas,
        parallel: r.parallel,
    };
    let job = m.start_load(spec).await.map_err(Remote).with_context(|| format!("prewarm {dataset:?}"))?.into_inner();
    if r.detach {
        match r.common.output {
            Output::Json => println!("{}", json!({"job": job.id})),
            Output::Table => {
                println!("started prewarm job {} ({} files, {})", job.id, job.files_total, ByteSize(job.bytes_total))
            }
        }
        return Ok(());
    }
    let bar = ProgressBar::new(job.bytes_total);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("template"),
    );
    let mut stream = m.watch_load(GetLoadRequest { id: job.id.clone() }).await.map_err(Remote)?.into_inner();
    let mut last = job;
    while let Some(j) = stream.message().await.map_err(Remote).context("watching the prewarm job")? {
        bar.set_position(j.bytes_done);
        bar.set_message(format!("{}/{} files, {} failed", j.files_done, j.files_total, j.files_failed));
        last = j;
    }
    bar.finish_and_clear();
    print_job(&last, r.common.output);
    verdict(&last)
}

pub async fn free(cmd: CacheCmd) -> Result<()> {
    let CacheCmd::Free { dataset, path, common } = cmd;
    let mut m = connect(&common.master).await?;
    let r = m
        .free_cache(FreeCacheRequest { dataset: dataset.clone(), path: path.clone().unwrap_or_default() })
        .await
        .map_err(Remote)
        .with_context(|| format!("free cache of {dataset:?}"))?
        .into_inner();
    match common.output {
        Output::Json => println!("{}", json!({"blocks_freed": r.blocks_freed, "bytes_freed": r.bytes_freed})),
        Output::Table => println!("freed {} blocks ({})", r.blocks_freed, ByteSize(r.bytes_freed)),
    }
    Ok(())
}

pub async fn status(common: Common) -> Result<()> {
    let mut m = connect(&common.master).await?;
    let workers = m.list_workers(ListWorkersRequest {}).await.map_err(Remote)?.into_inner().workers;
    let datasets = m.list_datasets(ListDatasetsRequest {}).await.map_err(Remote)?.into_inner().datasets;
    let mut wrows = Vec::new();
    for w in &workers {
        let stats = if w.alive {
            let ep = shoal_proto::profile::Profile::PROBE.endpoint(&w.address)?;
            match ep.connect().await {
                Ok(ch) => shoal_proto::auth::worker(ch).stats(StatsRequest {}).await.ok().map(|r| r.into_inner()),
                Err(_) => None,
            }
        } else {
            None
        };
        wrows.push((w, stats));
    }
    let mut drows = Vec::new();
    for d in &datasets {
        let name = d.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let u = m.get_cache_usage(CacheUsageRequest { dataset: name }).await.map_err(Remote)?.into_inner();
        drows.push(u);
    }
    let pct = |a: u64, b: u64| if b == 0 { 100.0 } else { a as f64 * 100.0 / b as f64 };
    match common.output {
        Output::Json => {
            let ws: Vec<_> = wrows
                .iter()
                .map(|(w, s)| {
                    json!({"id": w.id, "address": w.address, "alive": w.alive, "blocks": w.block_count,
                        "tiers": s.as_ref().map(|s| s.tiers.iter().map(|t| json!({"kind": t.kind, "used_bytes": t.used_bytes, "quota_bytes": t.quota_bytes, "blocks": t.blocks, "hits": t.hits})).collect::<Vec<_>>()),
                        "hits": s.as_ref().map(|s| s.hits), "misses": s.as_ref().map(|s| s.misses),
                        "hit_ratio": s.as_ref().map(|s| if s.hits + s.misses == 0 { 0.0 } else { s.hits as f64 / (s.hits + s.misses) as f64 })})
                })
                .collect();
            let ds: Vec<_> = drows
                .iter()
                .map(|u| json!({"dataset": u.dataset, "total_bytes": u.total_bytes, "cached_bytes": u.cached_bytes, "total_blocks": u.total_blocks, "cached_blocks": u.cached_blocks, "cached_percent": pct(u.cached_bytes, u.total_bytes)}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&json!({"workers": ws, "datasets": ds}))?);
        }
        Output::Table => {
            println!("WORKERS");
            for (w, s) in &wrows {
                let state = if w.alive { "alive" } else { "lost" };
                match s {
                    Some(s) => {
                        let tiers: Vec<String> = s
                            .tiers
                            .iter()
                            .map(|t| {
                                format!(
                                    "{} {}/{} ({} blocks)",
                                    t.kind,
                                    ByteSize(t.used_bytes),
                                    ByteSize(t.quota_bytes),
                                    t.blocks
                                )
                            })
                            .collect();
                        let ratio = if s.hits + s.misses == 0 {
                            0.0
                        } else {
                            s.hits as f64 * 100.0 / (s.hits + s.misses) as f64
                        };
                        println!(
                            "  {} {} {state}  {}  hit ratio {ratio:.1}% ({} hits, {} misses)",
                            w.id,
                            w.address,
                            tiers.join(", "),
                            s.hits,
                            s.misses
                        );
                    }
                    None => println!("  {} {} {state}", w.id, w.address),
                }
            }
            println!("DATASETS");
            for u in &drows {
                println!(
                    "  {}  {} of {} cached ({:.1}%), {}/{} blocks",
                    u.dataset,
                    ByteSize(u.cached_bytes),
                    ByteSize(u.total_bytes),
                    pct(u.cached_bytes, u.total_bytes),
                    u.cached_blocks,
                    u.total_blocks
                );
            }
        }
    }
    Ok(())
}
