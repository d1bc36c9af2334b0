//! `shoal`: one binary for every role (master, worker, mount, up) and the CLI.
//! Owns argument parsing, process lifecycle (signals, shutdown) and the mapping of
//! errors to exit codes; the work itself lives in the library crates.

mod cache;
mod client;
mod csi;
mod exit;
mod masters;
mod metrics_http;
mod mount;
mod operator;
mod scheduler;
mod servers;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Distributed dataset cache for AI training.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a metadata master (one, or one of a group: --id, --peers), or see
    /// and grow the group (`shoal master status`, `shoal master add`).
    Master(servers::MasterCmd),
    /// Run a cache worker, or drain one (`shoal worker drain ID`).
    Worker(servers::WorkerCmd),
    /// Manage datasets.
    #[command(subcommand)]
    Dataset(client::DatasetCmd),
    /// List the workers the master knows.
    Workers(client::Common),
    /// Load a dataset (or paths in it) into the workers' cache, with progress.
    Prewarm(cache::PrewarmArgs),
    /// Workers, tiers, hit ratio, and how much of each dataset is cached.
    Status(client::Common),
    /// Manage cached blocks.
    #[command(subcommand)]
    Cache(cache::CacheCmd),
    /// Mount a dataset as a read-only directory.
    Mount(mount::MountArgs),
    /// Unmount a shoal mount.
    Umount(mount::UmountArgs),
    /// Run a master, a worker and a mount in one process (first try, demos).
    Up(up::UpArgs),
    /// Run the CSI node plugin (driver csi.shoal.io) for Kubernetes pods.
    Csi(csi::CsiArgs),
    /// Cache- and GPU-aware placement: kube-scheduler extender and mutating webhook.
    Scheduler(scheduler::SchedulerArgs),
    /// The Kubernetes operator (Dataset and DataLoad resources) and its CRDs.
    #[command(subcommand)]
    Operator(operator::OperatorCmd),
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() -> ExitCode {
    shoal_worker::arm_fail_points();
    let cli = Cli::parse();
    let is_server = matches!(
        cli.command,
        Command::Master(servers::MasterCmd { action: None, .. })
            | Command::Worker(servers::WorkerCmd { action: None, .. })
            | Command::Mount(_)
            | Command::Up(_)
            | Command::Csi(_)
    );
    init_tracing(if is_server { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Master(servers::MasterCmd { action: Some(a), .. }) => masters::action(a).await,
            Command::Master(cmd) => servers::run_master(cmd.serve).await,
            Command::Worker(servers::WorkerCmd { action: Some(a), .. }) => client::worker_action(a).await,
            Command::Worker(cmd) => servers::run_worker(cmd.serve).await,
            Command::Dataset(cmd) => client::dataset(cmd).await,
            Command::Workers(common) => client::workers(common).await,
            Command::Prewarm(args) => cache::prewarm(args).await,
            Command::Status(common) => cache::status(common).await,
            Command::Cache(cmd) => cache::free(cmd).await,
            Command::Mount(args) => mount::run_mount(args).await,
            Command::Umount(args) => mount::run_umount(args),
            Command::Up(args) => up::run_up(args).await,
            Command::Csi(args) => csi::run_csi(args).await,
            Command::Operator(cmd) => operator::run(cmd).await,
            Command::Scheduler(args) => scheduler::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::code_of(&e))
        }
    }
}
