//! Raft messages between masters over gRPC (`MasterRaft` in master.proto):
//! the client side openraft sends through, and the server side every master
//! serves beside the master API (on the same port), with the status and
//! add-a-master calls the CLI uses. Messages are openraft's own types as
//! JSON; a snapshot chunk's bytes travel beside them, unencoded.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, ChangeMembers};
use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_proto::auth::{principal, ClientAuth, Role};
use shoal_proto::master::master_raft_client::MasterRaftClient;
use shoal_proto::master::master_raft_server::MasterRaft;
use shoal_proto::master::{AddMasterRequest, MasterStatus, MasterStatusRequest, RaftMessage};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::{Node, TypeConfig};

/// How long a master being added may take to catch up before it votes.
const CATCH_UP: Duration = Duration::from_secs(600);

/// Largest Raft message either side accepts: a batch of log entries (each a
/// few MiB at most) or a snapshot chunk.
const MAX_RAFT_MESSAGE: usize = 256 << 20;

type Client = MasterRaftClient<InterceptedService<Channel, ClientAuth>>;

/// A lazily connected client of one master's `MasterRaft` service.
pub fn client(addr: &str) -> Result<Client, shoal_proto::auth::AuthError> {
    let ch = shoal_proto::profile::Profile::RAFT.endpoint(addr)?.connect_lazy();
    Ok(MasterRaftClient::with_interceptor(ch, ClientAuth::from_env())
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RAFT_MESSAGE))
}

/// Makes openraft's connections to the other masters.
#[derive(Default)]
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer { target, client: client(&node.addr).map_err(|e| e.to_string()) }
    }
}

/// The connection to one other master.
pub struct Peer {
    target: u64,
    client: Result<Client, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

impl Peer {
    async fn call<R, E>(
        &mut self,
        which: &'static str,
        json: Vec<u8>,
        data: Vec<u8>,
        ttl: Duration,
    ) -> Result<R, RPCError<u64, BasicNode, E>>
    where
        R: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = self.client.as_mut().map_err(|e| RPCError::Unreachable(Unreachable::new(&Failed(e.clone()))))?;
        let mut req = Request::new(RaftMessage { json, data });
        req.set_timeout(ttl);
        let reply = match which {
            "append" => client.append_entries(req).await,
            "vote" => client.vote(req).await,
            _ => client.install_snapshot(req).await,
        };
        let reply = reply.map_err(|s| match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => RPCError::Unreachable(Unreachable::new(&s)),
            _ => RPCError::Network(NetworkError::new(&s)),
        })?;
        let result: Result<R, E> =
            serde_json::from_slice(&reply.get_ref().json).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("openraft messages serialize")
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call("append", encode(&rpc), Vec::new(), option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        let data = std::mem::take(&mut rpc.data);
        self.call("snapshot", encode(&rpc), data, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call("vote", encode(&rpc), Vec::new(), option.hard_ttl()).await
    }
}

/// The `MasterRaft` service of one master.
#[derive(Clone)]
pub struct RaftService {
    pub node: Arc<Node>,
}

fn decode<T: DeserializeOwned>(msg: &RaftMessage) -> Result<T, Status> {
    serde_json::from_slice(&msg.json).map_err(|e| Status::invalid_argument(format!("bad Raft message: {e}")))
}

fn reply<T: Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    Ok(Response::new(RaftMessage { json: encode(v), data: Vec::new() }))
}

fn to_status(e: impl std::fmt::Display) -> Status {
    Status::failed_precondition(e.to_string())
}

#[tonic::async_trait]
impl MasterRaft for RaftService {
    async fn append_entries(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        principal(&req).require(Role::Admin, "AppendEntries")?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        reply(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        principal(&req).require(Role::Admin, "Vote")?;
        let rpc: VoteRequest<u64> = decode(req.get_ref())?;
        reply(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        principal(&req).require(Role::Admin, "InstallSnapshot")?;
        let msg = req.into_inner();
        let mut rpc: InstallSnapshotRequest<TypeConfig> = decode(&msg)?;
        rpc.data = msg.data;
        reply(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn status(&self, _req: Request<MasterStatusRequest>) -> Result<Response<MasterStatus>, Status> {
        Ok(Response::new(self.node.status()))
    }

    async fn add_master(&self, req: Request<AddMasterRequest>) -> Result<Response<MasterStatus>, Status> {
        principal(&req).require(Role::Admin, "AddMaster")?;
        if !self.node.serving() {
            return Err(self.node.refusal());
        }
        let r = req.into_inner();
        if r.id == 0 || r.addr.is_empty() {
            return Err(Status::invalid_argument("a master needs an id above 0 and an address (host:port)"));
        }
        if self.node.status().members.iter().any(|m| m.id == r.id && m.voter) {
            return Err(Status::already_exists(format!("master {} is already a member", r.id)));
        }
        tracing::info!(id = r.id, addr = %r.addr, "adding a master: catching it up as a learner");
        let target = self.node.raft.metrics().borrow().last_log_index.unwrap_or(0);
        self.node.raft.add_learner(r.id, BasicNode::new(&r.addr), false).await.map_err(to_status)?;
        // It votes only once it holds everything written before it was added
        // (the snapshot, when that log was purged).
        let mut metrics = self.node.raft.metrics();
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        loop {
            let matched = metrics
                .borrow_and_update()
                .replication
                .as_ref()
                .and_then(|rep| rep.get(&r.id).cloned().flatten())
                .map(|l| l.index);
            if matched.is_some_and(|m| m >= target) {
                break;
            }
            if !self.node.serving() {
                return Err(self.node.refusal());
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Status::unavailable("this master is shutting down")),
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "master {} did not catch up within {CATCH_UP:?} (it holds up to {matched:?} of {target}); it stays a learner",
                        r.id
                    )))
                }
            }
        }
        self.node
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([r.id])), false)
            .await
            .map_err(to_status)?;
        tracing::info!(id = r.id, "master added as a voter");
        Ok(Response::new(self.node.status()))
    }
}
