//! Master high availability: the master's durable state is replicated by Raft
//! (openraft) across a group of masters, usually three. Every change to it is a
//! [`Command`] (a RocksDB write batch) appended to the leader's log, sent to
//! the others, and applied to each master's own RocksDB once a majority holds
//! it ([`machine`]); the log lives apart ([`log`]); messages travel over gRPC
//! ([`net`]). Only the leader answers the master API, once it has applied its
//! whole log; the others refuse with the leader's address, which clients
//! follow (`shoal_proto::leader`). Soft state (workers, block locations) is
//! not replicated: workers register with each new leader.
//!
//! One master alone is a group of one (what `shoal up` runs): the same code,
//! with a log of one voter.

pub mod log;
pub mod machine;
pub mod net;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use shoal_proto::master::{MasterMember, MasterStatus};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::{MasterError, Result};
use crate::meta::{Command, MetaStore};
use crate::service::MasterService;

openraft::declare_raft_types!(
    /// The master's Raft types: commands are [`Command`]s, nodes are addressed
    /// by `host:port`.
    pub TypeConfig:
        D = Command,
        R = (),
);

pub type Entry = openraft::Entry<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig>;

/// How this master takes part in its group.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    /// This master's id in the group (above 0).
    pub id: u64,
    /// The group to start when no log exists yet: id → `host:port`. The master
    /// with the lowest id starts it; the others wait to hear from it. Ignored
    /// once a log exists (members then come from the log).
    pub peers: BTreeMap<u64, String>,
    /// Build a snapshot after this many log entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot (a follower that lags further is
    /// sent the snapshot).
    pub keep_logs: u64,
    /// A follower that hears nothing from the leader for this long (to twice
    /// as long, at random) calls an election; the leader sends heartbeats at a
    /// fifth of it.
    pub election_timeout: Duration,
}

impl RaftSettings {
    /// A group of one master at `addr`.
    pub fn single(addr: &str) -> RaftSettings {
        RaftSettings {
            id: 1,
            peers: BTreeMap::from([(1, addr.to_string())]),
            snapshot_every: 500,
            keep_logs: 100,
            election_timeout: ELECTION_TIMEOUT,
        }
    }
}

/// The default of [`RaftSettings::election_timeout`].
pub const ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);
/// A write not committed within this long fails (the leader lost its quorum).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(15);

/// This master's Raft node and whether it serves.
pub struct Node {
    pub id: u64,
    pub raft: Raft,
    serving: AtomicBool,
    /// The state predates replication and must reach others as a snapshot.
    legacy: AtomicBool,
}

/// The address of the leader `m` names, if any.
fn leader_of(m: &openraft::RaftMetrics<u64, BasicNode>) -> Option<String> {
    let leader = m.current_leader?;
    m.membership_config.membership().get_node(&leader).map(|n| n.addr.clone())
}

fn write_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> MasterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            MasterError::NotLeader(f.leader_node.map(|n| n.addr))
        }
        other => MasterError::Replication(other.to_string()),
    }
}

impl Node {
    /// Open the log in `data_dir/raft`, join or start the group, and route
    /// `meta`'s writes through the log.
    pub async fn start(settings: &RaftSettings, data_dir: &Path, meta: Arc<MetaStore>) -> Result<Arc<Node>> {
        let replication = |e: &dyn std::fmt::Display| MasterError::Replication(e.to_string());
        let election = (settings.election_timeout.as_millis() as u64).max(50);
        let config = Config {
            cluster_name: "shoal-master".into(),
            heartbeat_interval: election / 5,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            install_snapshot_timeout: 30_000,
            max_payload_entries: 32,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: settings.keep_logs,
            purge_batch_size: 1,
            snapshot_max_chunk_size: 8 << 20,
            ..Default::default()
        }
        .validate()
        .map_err(|e| replication(&e))?;
        let log = log::LogStore::open(&data_dir.join("raft"))?;
        let sm =
            machine::StateMachine::new(meta.clone(), &data_dir.join("raft-snapshot")).map_err(|e| replication(&e))?;
        let raft =
            Raft::new(settings.id, Arc::new(config), net::Network, log, sm).await.map_err(|e| replication(&e))?;
        let first = settings.peers.keys().next().copied();
        let initialized = raft.is_initialized().await.map_err(|e| replication(&e))?;
        // State written before masters replicated it: its datasets are in no
        // log entry, so only a snapshot carries them to other masters.
        let legacy = !initialized && meta.applied()?.is_none() && !meta.list_datasets()?.is_empty();
        if legacy && settings.peers.len() > 1 {
            return Err(MasterError::InvalidArgument(
                "this master's state was written before masters replicated it: start it alone (without --peers), \
                 then add the others with `shoal master add`"
                    .into(),
            ));
        }
        if !initialized && first == Some(settings.id) {
            let members: BTreeMap<u64, BasicNode> =
                settings.peers.iter().map(|(id, addr)| (*id, BasicNode::new(addr))).collect();
            info!(members = ?settings.peers, "starting a new group of masters");
            match raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(replication(&e)),
            }
        }
        let writer = raft.clone();
        meta.set_replicator(Box::new(move |cmd| {
            let raft = writer.clone();
            async move {
                match tokio::time::timeout(COMMIT_TIMEOUT, raft.client_write(cmd)).await {
                    Ok(written) => written.map(|_| ()).map_err(write_error),
                    Err(_) => Err(MasterError::Replication(format!(
                        "the write was not committed within {COMMIT_TIMEOUT:?}: too few masters answer"
                    ))),
                }
            }
            .boxed()
        }));
        Ok(Arc::new(Node { id: settings.id, raft, serving: AtomicBool::new(false), legacy: AtomicBool::new(legacy) }))
    }

    /// Whether this master leads and has applied its whole log: it answers
    /// the master API.
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// The leader's address, if one is known.
    pub fn leader(&self) -> Option<String> {
        leader_of(&self.raft.metrics().borrow())
    }

    /// The refusal of a call while this master does not serve.
    pub fn refusal(&self) -> tonic::Status {
        // Not itself: a leader that does not serve yet is about to.
        let leader = {
            let m = self.raft.metrics();
            let m = m.borrow();
            leader_of(&m).filter(|_| m.current_leader != Some(self.id))
        };
        let msg = match &leader {
            Some(l) => format!("master {} does not lead; the leader is {l}", self.id),
            None => format!("master {} does not lead and no leader is elected yet", self.id),
        };
        crate::error::not_leader(leader.as_deref(), &msg)
    }

    /// The group as this master sees it.
    pub fn status(&self) -> MasterStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let matched = m.replication.clone().unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, node)| MasterMember {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched: matched.get(id).copied().flatten().map(|l| l.index).unwrap_or(0),
            })
            .collect();
        MasterStatus {
            id: self.id,
            leader_id: m.current_leader.unwrap_or(0),
            leader_addr: leader_of(&m).unwrap_or_default(),
            term: m.current_term,
            state: format!("{:?}", m.state),
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            members,
            serving: self.serving(),
        }
    }

    /// Follow this master's part until `shutdown`: once it leads, a quorum
    /// confirms it, and it has applied everything committed up to its own
    /// first entry as leader (so it answers with every acknowledged write),
    /// it takes up the leader's work ([`MasterService::lead`]) and serves.
    /// While it serves, a quorum confirms its lead every second; when it
    /// stops leading (or its term changes, or no quorum answers) it stops
    /// serving at once.
    pub async fn watch(self: Arc<Self>, service: MasterService, shutdown: CancellationToken) {
        let mut rx = self.raft.metrics();
        let mut term = 0;
        let mut checked = tokio::time::Instant::now();
        loop {
            let m = rx.borrow_and_update().clone();
            crate::metrics::RAFT_TERM.set(m.current_term as i64);
            let leads = m.state == ServerState::Leader && m.current_leader == Some(self.id);
            let serving = self.serving();
            let mut stop = serving && (!leads || m.current_term != term);
            if serving && !stop && checked.elapsed() >= Duration::from_secs(1) {
                checked = tokio::time::Instant::now();
                let confirmed = tokio::time::timeout(Duration::from_secs(3), self.raft.ensure_linearizable()).await;
                stop = !matches!(confirmed, Ok(Ok(_)));
            }
            if stop {
                self.serving.store(false, Ordering::SeqCst);
                crate::metrics::RAFT_LEADER.set(0);
                service.step_down();
                warn!(id = self.id, term = m.current_term, leader = ?m.current_leader, "no longer leading the masters");
            } else if leads && !serving {
                let caught_up = tokio::time::timeout(Duration::from_secs(5), self.raft.ensure_linearizable()).await;
                match caught_up {
                    Ok(Ok(applied)) => match tokio::time::timeout(Duration::from_secs(30), service.lead()).await {
                        Ok(Ok(())) => {
                            term = m.current_term;
                            self.serving.store(true, Ordering::SeqCst);
                            crate::metrics::RAFT_LEADER.set(1);
                            crate::metrics::RAFT_ELECTIONS_WON.inc();
                            info!(id = self.id, term, applied = ?applied, "leading the masters");
                            if self.legacy.swap(false, Ordering::SeqCst) {
                                tokio::spawn(self.clone().compact_legacy());
                            }
                        }
                        Ok(Err(e)) => warn!(error = %e, "cannot take up the leader's work yet; retrying"),
                        Err(_) => warn!("taking up the leader's work did not finish in 30s; retrying"),
                    },
                    Ok(Err(e)) => warn!(error = %e, "leading, but a quorum did not confirm it yet"),
                    Err(_) => warn!("leading, but the log is not applied after 5s yet"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = rx.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        self.serving.store(false, Ordering::SeqCst);
        let _ = self.raft.shutdown().await;
    }

    /// State written before masters replicated it is in no log entry: take a
    /// snapshot and purge the log behind it, so that a master added later is
    /// sent the snapshot (the whole state) rather than a log that lacks it.
    async fn compact_legacy(self: Arc<Self>) {
        if let Err(e) = self.raft.trigger().snapshot().await {
            return warn!(error = %e, "cannot snapshot the state written before replication");
        }
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let snap = rx.borrow_and_update().snapshot;
            if let Some(s) = snap {
                match self.raft.trigger().purge_log(s.index).await {
                    Ok(()) => info!(upto = s.index, "the state written before replication is in a snapshot"),
                    Err(e) => warn!(error = %e, "cannot purge the log behind the first snapshot"),
                }
                return;
            }
            if tokio::time::timeout_at(deadline, rx.changed()).await.map_or(true, |r| r.is_err()) {
                return warn!("no snapshot of the state written before replication after 300s");
            }
        }
    }
}
