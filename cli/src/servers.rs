//! `shoal master` and `shoal worker`: configuration from flags (with `SHOAL_*`
//! environment fallbacks), printed at start-up, and a clean stop on SIGINT/SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `shoal master`: run a master, or act on the group (`shoal master status`).
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct MasterCmd {
    #[command(subcommand)]
    pub action: Option<crate::masters::MasterAction>,
    #[command(flatten)]
    pub serve: MasterArgs,
}

#[derive(Args, Debug, Clone)]
pub struct MasterArgs {
    /// Directory for the master's durable state (RocksDB).
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "/var/lib/shoal/master")]
    pub data_dir: PathBuf,
    /// Address to serve the master API on (port 0 picks a free port).
    #[arg(long, env = "SHOAL_LISTEN", default_value = "0.0.0.0:7700")]
    pub listen: String,
    /// A worker silent this long is declared lost (e.g. 15s, 500ms).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lost_worker_timeout: Duration,
    /// How often workers heartbeat.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// After a sync, wait this long before freeing the cached blocks of changed
    /// and deleted files: longer than mounts' --refresh-interval, since until
    /// they see the sync they may still read the old content.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub stale_block_grace: Duration,
    /// Address for Prometheus `/metrics` ("" to disable).
    #[arg(long, env = "SHOAL_METRICS_LISTEN", default_value = "0.0.0.0:9700")]
    pub metrics_listen: String,
    /// A local directory under which datasets may use `file://` (or bare path)
    /// stores; repeat for more. Without one, local stores are refused: a local
    /// store reads the master's and workers' own disks.
    #[arg(long = "allow-local-root", env = "SHOAL_ALLOW_LOCAL_ROOTS", value_delimiter = ',')]
    pub allow_local_roots: Vec<PathBuf>,
    /// Do not copy to a worker that joins the cached blocks it now owns by
    /// placement (it then fills them on first read, from their holders).
    #[arg(long)]
    pub no_rebalance: bool,
    /// This master's id in its group of masters (above 0).
    #[arg(long, env = "SHOAL_MASTER_ID", default_value_t = 1)]
    pub id: u64,
    /// The group of masters to start, ID=HOST:PORT comma-separated, this one
    /// included (e.g. 1=m1:7700,2=m2:7700,3=m3:7700): the state is replicated
    /// to all (Raft) and the leader serves. The lowest id starts the group;
    /// once a master has a log, its members come from the log. Default: a
    /// group of this master alone.
    #[arg(long, env = "SHOAL_MASTER_PEERS", value_parser = parse_peer, value_delimiter = ',')]
    pub peers: Vec<(u64, String)>,
    /// Build a snapshot of the state after this many replicated writes (a
    /// sync writes one per 4096 entries).
    #[arg(long, default_value_t = 500)]
    pub snapshot_every: u64,
    /// Replicated writes kept behind a snapshot; a master further behind is
    /// sent the snapshot instead.
    #[arg(long, default_value_t = 100)]
    pub keep_logs: u64,
    /// A master that hears nothing from the leader for this long (up to twice
    /// as long, at random) calls an election; the leader's heartbeats go out
    /// at a fifth of it. A leader's loss is noticed within about this time.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub election_timeout: Duration,
}

fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s.split_once('=').ok_or_else(|| format!("{s:?} is not ID=HOST:PORT"))?;
    let id: u64 = id.trim().parse().map_err(|_| format!("{id:?} is not a master id (a number above 0)"))?;
    if id == 0 || !addr.contains(':') {
        return Err(format!("{s:?} is not ID=HOST:PORT with an id above 0"));
    }
    Ok((id, addr.trim().to_string()))
}

/// `dirs`, resolved (each must exist).
pub fn canonical_roots(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    dirs.iter()
        .map(|d| std::fs::canonicalize(d).with_context(|| format!("--allow-local-root {}", d.display())))
        .collect()
}

/// `shoal worker`: run a worker, or act on one (`shoal worker drain ID`).
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct WorkerCmd {
    #[command(subcommand)]
    pub action: Option<crate::client::WorkerAction>,
    #[command(flatten)]
    pub serve: WorkerArgs,
}

#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Master address, host:port; or every master of a group, comma-separated
    /// (requests go to the leader, and follow it when it changes).
    #[arg(long, env = "SHOAL_MASTER", default_value = "127.0.0.1:7700")]
    pub master: String,
    /// Address to serve the worker API on (port 0 picks a free port).
    #[arg(long, env = "SHOAL_LISTEN", default_value = "0.0.0.0:7701")]
    pub listen: String,
    /// A cache tier KIND:DIR:QUOTA, fastest first; repeat for more tiers
    /// (e.g. --tier mem:/dev/shm/shoal:4GiB --tier ssd:/var/lib/shoal/cache:100GiB).
    #[arg(long = "tier", required = true)]
    pub tiers: Vec<shoal_worker::TierSpec>,
    /// Stable worker id [default: NODE-PORT].
    #[arg(long, env = "SHOAL_WORKER_ID")]
    pub id: Option<String>,
    /// Node (host) name used for locality [default: the host name].
    #[arg(long, env = "SHOAL_NODE")]
    pub node: Option<String>,
    /// Address clients use to reach this worker [default: the listen address].
    #[arg(long)]
    pub advertise: Option<String>,
    /// Address for Prometheus `/metrics` ("" to disable).
    #[arg(long, env = "SHOAL_METRICS_LISTEN", default_value = "0.0.0.0:9701")]
    pub metrics_listen: String,
    /// Share of a tier's quota past which inserts evict at once.
    #[arg(long, default_value_t = 0.95)]
    pub high_watermark: f64,
    /// Share of a tier's quota that eviction brings usage down to.
    #[arg(long, default_value_t = 0.85)]
    pub low_watermark: f64,
    /// Memory for blocks being read from stores at once: misses beyond it wait
    /// (a block larger than this is read alone).
    #[arg(long, env = "SHOAL_FILL_MEMORY", default_value = "256MiB")]
    pub fill_memory: String,
}

pub use shoal_core::size::parse_duration;

pub use shoal_core::host_name;

/// Cancelled on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}

pub async fn bind(addr: &str, what: &str) -> Result<TcpListener> {
    let l = TcpListener::bind(addr).await.with_context(|| format!("{what}: cannot listen on {addr}"))?;
    // Tests and scripts read this line to learn the port.
    println!("shoal {what} listening on {}", l.local_addr()?);
    Ok(l)
}

pub async fn run_master(args: MasterArgs) -> Result<()> {
    tracing::info!(?args, "starting master");
    let listener = bind(&args.listen, "master").await?;
    let config = shoal_master::MasterConfig {
        data_dir: args.data_dir.clone(),
        lost_worker_timeout: args.lost_worker_timeout,
        heartbeat_interval: args.heartbeat_interval,
        stale_block_grace: args.stale_block_grace,
        local_roots: canonical_roots(&args.allow_local_roots)?,
        rebalance_on_join: !args.no_rebalance,
        raft: raft_settings(&args)?,
    };
    let stop = shutdown_on_signals();
    crate::metrics_http::serve(Some(&args.metrics_listen), "master", stop.clone()).await?;
    shoal_master::serve(config, listener, stop)
        .await
        .with_context(|| format!("master (data dir {})", args.data_dir.display()))
}

/// The group settings of `args`; `None` for a master alone.
fn raft_settings(args: &MasterArgs) -> Result<Option<shoal_master::raft::RaftSettings>> {
    if args.peers.is_empty() {
        if args.id != 1 {
            anyhow::bail!("--id {} needs --peers naming the group it belongs to", args.id);
        }
        return Ok(None);
    }
    let peers: std::collections::BTreeMap<u64, String> = args.peers.iter().cloned().collect();
    if peers.len() != args.peers.len() {
        anyhow::bail!("--peers names a master id twice");
    }
    if !peers.contains_key(&args.id) {
        anyhow::bail!("--peers must name this master (--id {}) too", args.id);
    }
    Ok(Some(shoal_master::raft::RaftSettings {
        id: args.id,
        peers,
        snapshot_every: args.snapshot_every,
        keep_logs: args.keep_logs,
        election_timeout: args.election_timeout,
    }))
}

pub async fn run_worker(args: WorkerArgs) -> Result<()> {
    tracing::info!(?args, "starting worker");
    let listener = bind(&args.listen, "worker").await?;
    let port = listener.local_addr()?.port();
    let node = args.node.clone().unwrap_or_else(host_name);
    let config = shoal_worker::WorkerConfig {
        id: args.id.clone().unwrap_or_else(|| format!("{node}-{port}")),
        node,
        master: args.master.clone(),
        advertise: args.advertise.clone(),
        tiers: args.tiers.clone(),
        watermarks: shoal_worker::block_store::Watermarks { high: args.high_watermark, low: args.low_watermark },
        fill_budget: shoal_core::size::parse_size(&args.fill_memory).context("--fill-memory")?,
    };
    let stop = shutdown_on_signals();
    crate::metrics_http::serve(Some(&args.metrics_listen), "worker", stop.clone()).await?;
    shoal_worker::serve(config, listener, stop).await.context("worker")
}
