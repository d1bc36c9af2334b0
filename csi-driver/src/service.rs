//! The CSI gRPC services: Identity, Node (publish into pods) and a Controller for
//! static volumes (one volume per dataset, no provisioning). Every request is
//! validated and the dataset looked up on the master before anything is mounted.

use std::sync::Arc;

use shoal_proto::csi::controller_server::Controller;
use shoal_proto::csi::identity_server::Identity;
use shoal_proto::csi::node_server::Node;
use shoal_proto::csi::*;
use shoal_proto::master::{GetDatasetRequest, ListDatasetsRequest};
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::volumes::Volumes;
use crate::{metrics, validate, Config, CsiError, DRIVER_NAME};

/// Topology key naming the node a volume is published on.
pub const TOPOLOGY_NODE_KEY: &str = "topology.csi.shoal.io/node";

#[derive(Clone)]
pub struct CsiService {
    cfg: Arc<Config>,
    volumes: Arc<Volumes>,
    master: shoal_proto::auth::Master,
}

impl CsiService {
    pub fn new(cfg: Arc<Config>, volumes: Arc<Volumes>, master: shoal_proto::auth::Master) -> CsiService {
        CsiService { cfg, volumes, master }
    }

    /// The dataset exists on the master (`NotFound` if not, `Unavailable` if the
    /// master cannot be reached); its record.
    async fn check_dataset(&self, dataset: &str) -> Result<shoal_proto::master::DatasetInfo, CsiError> {
        let mut master = self.master.clone();
        match master.get_dataset(GetDatasetRequest { name: dataset.to_string() }).await {
            Ok(info) => Ok(info.into_inner()),
            Err(s) if s.code() == tonic::Code::PermissionDenied => Err(CsiError::Denied(s.message().to_string())),
            Err(s) if s.code() == tonic::Code::NotFound => {
                Err(CsiError::NotFound(format!("dataset {dataset:?} is not registered with the master")))
            }
            Err(s) => Err(CsiError::Master(s.message().to_string())),
        }
    }
}

fn counted<T>(op: &'static str, r: Result<T, CsiError>) -> Result<Response<T>, Status> {
    metrics::REQUESTS.with_label_values(&[op, if r.is_ok() { "ok" } else { "error" }]).inc();
    r.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl Identity for CsiService {
    async fn get_plugin_info(
        &self,
        _req: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: DRIVER_NAME.to_string(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        use plugin_capability::service::Type;
        let caps = [Type::ControllerService, Type::VolumeAccessibilityConstraints]
            .into_iter()
            .map(|t| PluginCapability {
                r#type: Some(plugin_capability::Type::Service(plugin_capability::Service { r#type: t as i32 })),
            })
            .collect();
        Ok(Response::new(GetPluginCapabilitiesResponse { capabilities: caps }))
    }

    async fn probe(&self, _req: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}

#[tonic::async_trait]
impl Node for CsiService {
    async fn node_stage_volume(
        &self,
        _req: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented("shoal does not stage volumes (STAGE_UNSTAGE_VOLUME is not offered)"))
    }

    async fn node_unstage_volume(
        &self,
        _req: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented("shoal does not stage volumes (STAGE_UNSTAGE_VOLUME is not offered)"))
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().volume_id, target = %req.get_ref().target_path))]
    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let r = req.get_ref();
        let result = async {
            let dataset = validate::dataset_of(&r.volume_id, &r.volume_context)?;
            let pod_ns = validate::pod_namespace(&r.volume_context)?;
            let target = validate::target_path(&r.target_path, &self.cfg.target_root)?;
            validate::capability(r.volume_capability.as_ref())?;
            let info = self.check_dataset(dataset).await?;
            // A pod reads only datasets of its own namespace (the mounts share
            // the plugin's credential, so this is where tenants are kept apart).
            if info.namespace() != pod_ns {
                return Err(CsiError::Denied(format!(
                    "dataset {dataset:?} belongs to namespace {:?}; a pod in {pod_ns:?} cannot mount it",
                    info.namespace()
                )));
            }
            // The file system is read-only whatever the pod asked for. In its
            // own task: a caller that gives up must not cut a start in half.
            let (volumes, dataset) = (self.volumes.clone(), dataset.to_string());
            tokio::spawn(async move { volumes.publish(&dataset, &target, true).await })
                .await
                .map_err(|e| CsiError::Io(format!("publish task: {e}")))??;
            Ok(NodePublishVolumeResponse {})
        }
        .await;
        counted("publish", result)
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().volume_id, target = %req.get_ref().target_path))]
    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let r = req.get_ref();
        let result = async {
            if r.volume_id.is_empty() {
                return Err(CsiError::Invalid("volume_id is missing".into()));
            }
            let target = validate::target_path(&r.target_path, &self.cfg.target_root)?;
            let volumes = self.volumes.clone();
            tokio::spawn(async move { volumes.unpublish(&target).await })
                .await
                .map_err(|e| CsiError::Io(format!("unpublish task: {e}")))??;
            Ok(NodeUnpublishVolumeResponse {})
        }
        .await;
        counted("unpublish", result)
    }

    async fn node_get_volume_stats(
        &self,
        _req: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        Err(Status::unimplemented("GET_VOLUME_STATS is not offered"))
    }

    async fn node_expand_volume(
        &self,
        _req: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("shoal volumes are read-only datasets and cannot be expanded"))
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities: vec![] }))
    }

    async fn node_get_info(&self, _req: Request<NodeGetInfoRequest>) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.cfg.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: Some(Topology {
                segments: [(TOPOLOGY_NODE_KEY.to_string(), self.cfg.node_id.clone())].into(),
            }),
        }))
    }
}

fn static_only() -> Status {
    Status::unimplemented("shoal volumes are static: a PV per dataset (the operator creates them)")
}

#[tonic::async_trait]
impl Controller for CsiService {
    async fn create_volume(&self, _r: Request<CreateVolumeRequest>) -> Result<Response<CreateVolumeResponse>, Status> {
        Err(static_only())
    }

    async fn delete_volume(&self, _r: Request<DeleteVolumeRequest>) -> Result<Response<DeleteVolumeResponse>, Status> {
        Err(static_only())
    }

    async fn controller_publish_volume(
        &self,
        _r: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        Err(Status::unimplemented("shoal volumes need no attach (attachRequired: false)"))
    }

    async fn controller_unpublish_volume(
        &self,
        _r: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented("shoal volumes need no attach (attachRequired: false)"))
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().volume_id))]
    async fn validate_volume_capabilities(
        &self,
        req: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let r = req.get_ref();
        let result = async {
            let dataset = validate::dataset_of(&r.volume_id, &r.volume_context)?;
            if r.volume_capabilities.is_empty() {
                return Err(CsiError::Invalid("volume_capabilities is empty".into()));
            }
            self.check_dataset(dataset).await?;
            let refused = r.volume_capabilities.iter().find_map(|c| validate::capability(Some(c)).err());
            Ok(match refused {
                Some(e) => ValidateVolumeCapabilitiesResponse { confirmed: None, message: e.to_string() },
                None => ValidateVolumeCapabilitiesResponse {
                    confirmed: Some(validate_volume_capabilities_response::Confirmed {
                        volume_context: r.volume_context.clone(),
                        volume_capabilities: r.volume_capabilities.clone(),
                        parameters: r.parameters.clone(),
                    }),
                    message: String::new(),
                },
            })
        }
        .await;
        counted("validate", result)
    }

    #[instrument(skip_all)]
    async fn list_volumes(&self, req: Request<ListVolumesRequest>) -> Result<Response<ListVolumesResponse>, Status> {
        let r = req.get_ref();
        let result = async {
            let mut master = self.master.clone();
            let mut names: Vec<String> = master
                .list_datasets(ListDatasetsRequest {})
                .await
                .map_err(|s| CsiError::Master(s.message().to_string()))?
                .into_inner()
                .datasets
                .into_iter()
                .filter_map(|d| d.spec.map(|s| s.name))
                .collect();
            names.sort();
            // The token is the last name of the previous page.
            if !r.starting_token.is_empty() {
                if !names.contains(&r.starting_token) {
                    return Err(CsiError::Aborted(format!("starting_token {:?} is not a volume", r.starting_token)));
                }
                names.retain(|n| n.as_str() > r.starting_token.as_str());
            }
            let limit = if r.max_entries > 0 { r.max_entries as usize } else { usize::MAX };
            let next_token = if names.len() > limit { names[limit - 1].clone() } else { String::new() };
            let entries = names
                .into_iter()
                .take(limit)
                .map(|name| list_volumes_response::Entry {
                    volume: Some(Volume {
                        capacity_bytes: 0,
                        volume_id: name.clone(),
                        volume_context: [("dataset".to_string(), name)].into(),
                        content_source: None,
                        accessible_topology: vec![],
                    }),
                    status: None,
                })
                .collect();
            Ok(ListVolumesResponse { entries, next_token })
        }
        .await;
        counted("list", result)
    }

    async fn get_capacity(&self, _r: Request<GetCapacityRequest>) -> Result<Response<GetCapacityResponse>, Status> {
        Err(static_only())
    }

    async fn controller_get_capabilities(
        &self,
        _r: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        use controller_service_capability::rpc::Type;
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: vec![ControllerServiceCapability {
                r#type: Some(controller_service_capability::Type::Rpc(controller_service_capability::Rpc {
                    r#type: Type::ListVolumes as i32,
                })),
            }],
        }))
    }

    async fn create_snapshot(
        &self,
        _r: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        Err(static_only())
    }

    async fn delete_snapshot(
        &self,
        _r: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        Err(static_only())
    }

    async fn list_snapshots(
        &self,
        _r: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        Err(static_only())
    }

    async fn controller_expand_volume(
        &self,
        _r: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        Err(static_only())
    }

    async fn controller_get_volume(
        &self,
        _r: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        Err(Status::unimplemented("GET_VOLUME is not offered"))
    }
}
