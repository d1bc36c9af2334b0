//! `shoal operator`: the Kubernetes operator, and its CRDs as YAML.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::servers::{host_name, shutdown_on_signals};

#[derive(Subcommand, Debug)]
pub enum OperatorCmd {
    /// Run the Dataset and DataLoad controllers (in a cluster, or with a kubeconfig).
    Run(RunArgs),
    /// Print the CRDs (Dataset, DataLoad) as YAML, or write one file per CRD.
    Crds {
        /// Write `<group>_<plural>.yaml` files into this directory instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Master address, host:port; or every master of a group, comma-separated
    /// (requests go to the leader, and follow it when it changes).
    #[arg(long, env = "SHOAL_MASTER", default_value = "127.0.0.1:7700")]
    pub master: String,
    /// Namespace of the leader-election Lease `shoal-operator`.
    #[arg(long, env = "POD_NAMESPACE", default_value = "shoal-system")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease [default: the host (pod) name].
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Address for Prometheus `/metrics` (off unless given).
    #[arg(long, env = "SHOAL_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

pub async fn run(cmd: OperatorCmd) -> Result<()> {
    match cmd {
        OperatorCmd::Crds { dir: None } => {
            print!("{}", shoal_operator::crd::crds_yaml());
            Ok(())
        }
        OperatorCmd::Crds { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            for (name, yaml) in shoal_operator::crd::crd_files() {
                let path = dir.join(name);
                std::fs::write(&path, yaml).with_context(|| format!("write {}", path.display()))?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        OperatorCmd::Run(args) => {
            let stop = shutdown_on_signals();
            crate::metrics_http::serve(args.metrics_listen.as_deref(), "operator", stop.clone()).await?;
            let cfg = shoal_operator::Config {
                master: args.master,
                lease_namespace: args.lease_namespace,
                identity: args.identity.unwrap_or_else(host_name),
            };
            shoal_operator::run(cfg, stop.cancelled_owned()).await.context("operator")
        }
    }
}
