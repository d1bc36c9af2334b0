//! `shoal csi`: the CSI node plugin (driver `csi.shoal.io`) on a unix socket.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::servers::{host_name, shutdown_on_signals};

#[derive(Args, Debug)]
pub struct CsiArgs {
    /// Socket to serve CSI on (kubelet and the registrar sidecar connect to it).
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// This node's name, as kubelet knows it [default: host name].
    #[arg(long, env = "SHOAL_NODE")]
    pub node_id: Option<String>,
    /// Master address, host:port; or every master of a group, comma-separated
    /// (requests go to the leader, and follow it when it changes).
    #[arg(long, env = "SHOAL_MASTER", default_value = "127.0.0.1:7700")]
    pub master: String,
    /// Where each dataset's FUSE mount, its log and the record of published volumes
    /// live (keep it on the host: mounts outlive the plugin).
    #[arg(long, default_value = "/var/lib/shoal/csi")]
    pub state_dir: PathBuf,
    /// Target paths must be under this directory (kubelet's root directory).
    #[arg(long, default_value = "/var/lib/kubelet")]
    pub target_root: PathBuf,
    /// An extra argument for every `shoal mount` this plugin starts, repeatable
    /// (e.g. `--mount-arg=--cache-size=4GiB`).
    #[arg(long = "mount-arg", allow_hyphen_values = true)]
    pub mount_args: Vec<String>,
    /// The binary started for FUSE mounts (as `BIN mount DATASET DIR ...`) and
    /// started again on SIGHUP [default: this one].
    #[arg(long)]
    pub mount_bin: Option<PathBuf>,
    /// Address for Prometheus `/metrics` (off unless given).
    #[arg(long, env = "SHOAL_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

pub async fn run_csi(args: CsiArgs) -> Result<()> {
    let Some(socket) = args.endpoint.strip_prefix("unix://") else {
        bail!(crate::exit::Remote(tonic::Status::invalid_argument(format!(
            "--endpoint {:?} is not unix:///path/to/socket",
            args.endpoint
        ))));
    };
    if !socket.starts_with('/') {
        bail!(crate::exit::Remote(tonic::Status::invalid_argument(format!(
            "--endpoint {:?} needs an absolute socket path",
            args.endpoint
        ))));
    }
    let stop = shutdown_on_signals();
    crate::metrics_http::serve(args.metrics_listen.as_deref(), "csi", stop.clone()).await?;
    let cfg = shoal_csi::Config {
        socket: PathBuf::from(socket),
        node_id: args.node_id.unwrap_or_else(host_name),
        master: args.master,
        state_dir: args.state_dir,
        target_root: args.target_root,
        shoal_bin: match args.mount_bin {
            Some(bin) => bin,
            None => std::env::current_exe().context("find the shoal binary")?,
        },
        mount_args: args.mount_args,
    };
    let socket = cfg.socket.clone();
    // Kubelet may connect from the bind on; the line is printed once the
    // earlier run's mounts are held by this process.
    let plugin = shoal_csi::Plugin::bind(cfg)?.adopt().await?;
    println!("shoal csi serving {} on {}", shoal_csi::DRIVER_NAME, socket.display());
    plugin.serve(stop.cancelled_owned()).await?;
    Ok(())
}
