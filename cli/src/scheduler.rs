//! `shoal scheduler`: the kube-scheduler extender and the mutating webhook.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::servers::{bind, parse_duration, shutdown_on_signals};

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// Address for the extender (`/filter`, `/prioritize`) and webhook (`/mutate`).
    #[arg(long, env = "SHOAL_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: String,
    /// Master address, host:port; or every master of a group, comma-separated
    /// (requests go to the leader, and follow it when it changes).
    #[arg(long, env = "SHOAL_MASTER", default_value = "127.0.0.1:7700")]
    pub master: String,
    /// Weight of the share of the pod's datasets cached on a node.
    #[arg(long, default_value_t = 2.0)]
    pub weight_data: f64,
    /// Weight of how well the pod's GPU request fits the node's free GPUs.
    #[arg(long, default_value_t = 1.0)]
    pub weight_gpu: f64,
    /// Score cache nodes lower for pods that mount no dataset, keeping their GPUs
    /// for the pods that read their data.
    #[arg(long)]
    pub steer_plain_pods: bool,
    /// How often to read the cache view from the master.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub refresh_interval: Duration,
    /// PEM certificate to serve HTTPS with (with --tls-key); the API server calls
    /// webhooks only over HTTPS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Address for Prometheus `/metrics` ("" to disable).
    #[arg(long, env = "SHOAL_METRICS_LISTEN", default_value = "0.0.0.0:9704")]
    pub metrics_listen: String,
}

pub async fn run(args: SchedulerArgs) -> Result<()> {
    let stop = shutdown_on_signals();
    crate::metrics_http::serve(Some(&args.metrics_listen), "scheduler", stop.clone()).await?;
    let cfg = shoal_scheduler::Config {
        master: args.master,
        refresh: args.refresh_interval,
        tls: args.tls_cert.zip(args.tls_key),
        weights: shoal_scheduler::score::Weights {
            data: args.weight_data,
            gpu: args.weight_gpu,
            steer_plain_pods: args.steer_plain_pods,
        },
    };
    let listener = bind(&args.listen, "scheduler").await?;
    shoal_scheduler::run(cfg, listener, stop.cancelled_owned()).await.context("scheduler")
}
