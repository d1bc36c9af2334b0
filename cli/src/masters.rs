//! `shoal master status` and `shoal master add`: the group of masters as each
//! member sees it, and growing the group by one master.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;
use shoal_proto::master::master_raft_client::MasterRaftClient;
use shoal_proto::master::{AddMasterRequest, MasterStatus, MasterStatusRequest};

use crate::client::{Common, Output};
use crate::exit::Remote;

#[derive(Subcommand, Debug)]
pub enum MasterAction {
    /// Each master of the group: its role, term, log and applied index, and
    /// which one leads. Exits non-zero when no master serves.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// Add a master to the group: it is sent the state (a snapshot when the
    /// log it lacks was purged), then votes. Start it first with its --id and
    /// --peers naming the group; run this against the group (--master).
    Add {
        /// The new master's id (above 0, unused in the group).
        id: u64,
        /// Its address, host:port, as the others reach it.
        addr: String,
        #[command(flatten)]
        common: Common,
    },
}

pub async fn action(action: MasterAction) -> Result<()> {
    match action {
        MasterAction::Status { common } => status(common).await,
        MasterAction::Add { id, addr, common } => add(id, &addr, common).await,
    }
}

fn status_json(addr: &str, s: &MasterStatus) -> serde_json::Value {
    json!({"addr": addr, "id": s.id, "state": s.state, "term": s.term, "leader": s.leader_id,
           "leader_addr": s.leader_addr, "serving": s.serving, "last_log_index": s.last_log_index,
           "last_applied": s.last_applied, "snapshot_index": s.snapshot_index, "purged_index": s.purged_index,
           "members": s.members.iter().map(|m| json!({"id": m.id, "addr": m.addr, "voter": m.voter, "matched": m.matched})).collect::<Vec<_>>()})
}

/// The status of the master at `addr`, asked directly (every master answers).
async fn ask(addr: &str) -> Result<MasterStatus> {
    let ep = shoal_proto::profile::Profile::PROBE.endpoint(addr)?;
    let ch = ep.connect().await.with_context(|| format!("cannot reach the master at {addr}"))?;
    let mut client = MasterRaftClient::with_interceptor(ch, shoal_proto::auth::ClientAuth::from_env());
    Ok(client.status(MasterStatusRequest {}).await.map_err(Remote)?.into_inner())
}

async fn status(common: Common) -> Result<()> {
    // The masters named, and every member they know of.
    let mut addrs = shoal_proto::leader::addresses(&common.master);
    let mut seen = Vec::new();
    let mut i = 0;
    while i < addrs.len() {
        let addr = addrs[i].clone();
        let answer = ask(&addr).await;
        if let Ok(s) = &answer {
            for m in &s.members {
                if !addrs.contains(&m.addr) {
                    addrs.push(m.addr.clone());
                }
            }
        }
        seen.push((addr, answer));
        i += 1;
    }
    let serving = seen.iter().filter(|(_, s)| s.as_ref().is_ok_and(|s| s.serving)).count();
    match common.output {
        Output::Json => {
            let list: Vec<_> = seen
                .iter()
                .map(|(addr, s)| match s {
                    Ok(s) => status_json(addr, s),
                    Err(e) => json!({"addr": addr, "error": format!("{e:#}")}),
                })
                .collect();
            println!("{}", json!({ "masters": list, "serving": serving }));
        }
        Output::Table => {
            println!(
                "{:<4} {:<24} {:<10} {:>6} {:>7} {:>10} {:>10} {:>10}",
                "ID", "ADDRESS", "STATE", "TERM", "LEADER", "LAST LOG", "APPLIED", "SNAPSHOT"
            );
            for (addr, s) in &seen {
                match s {
                    Ok(s) => println!(
                        "{:<4} {:<24} {:<10} {:>6} {:>7} {:>10} {:>10} {:>10}{}",
                        s.id,
                        addr,
                        s.state,
                        s.term,
                        s.leader_id,
                        s.last_log_index,
                        s.last_applied,
                        s.snapshot_index,
                        if s.serving { "  (serving)" } else { "" }
                    ),
                    Err(e) => println!("{:<4} {:<24} unreachable: {e:#}", "-", addr),
                }
            }
        }
    }
    if serving == 0 {
        anyhow::bail!("no master serves: no leader is elected, or it has not applied its log yet");
    }
    Ok(())
}

async fn add(id: u64, addr: &str, common: Common) -> Result<()> {
    let conn = shoal_proto::auth::leader(&common.master, |ep| shoal_proto::profile::Profile::ADMIN.apply(ep))
        .with_context(|| format!("invalid master address {:?}", common.master))?;
    let mut client = MasterRaftClient::new(conn);
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!("sending master {id} ({addr}) the state"));
    spinner.enable_steady_tick(Duration::from_millis(200));
    let got = client.add_master(AddMasterRequest { id, addr: addr.to_string() }).await;
    spinner.finish_and_clear();
    let s = got.map_err(Remote).with_context(|| format!("add master {id} at {addr}"))?.into_inner();
    match common.output {
        Output::Json => println!("{}", status_json(&s.leader_addr, &s)),
        Output::Table => println!("master {id} ({addr}) joined the group; {} members", s.members.len()),
    }
    Ok(())
}
