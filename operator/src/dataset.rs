//! The `Dataset` reconciler: registers the dataset with the master, serves it as a
//! PV + PVC (driver `csi.shoal.io`) in the dataset's namespace, labels the nodes
//! whose worker caches part of it, and mirrors the master's view into `status`.
//! A finalizer removes all of it (and the master's dataset) on deletion.
//!
//! The desired objects are pure functions of the resource ([`desired_pv`],
//! [`desired_pvc`], [`master_spec`]), tested without any server.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeSpec, Secret, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalized};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use shoal_proto::master::{
    CachePolicy, CacheUsageRequest, CreateDatasetRequest, DatasetInfo, DeleteDatasetRequest, GetDatasetRequest,
    MountSpec, SetCachePolicyRequest,
};
use tracing::{info, instrument};

use crate::crd::{Dataset, DatasetStatus};
use crate::{condition, Ctx, Error, FIELD_MANAGER};

pub const FINALIZER: &str = "shoal.io/cleanup";
/// The CSI driver serving the volumes (`shoal csi`).
pub const CSI_DRIVER: &str = "csi.shoal.io";
pub use shoal_core::ids::NODE_LABEL_PREFIX;
/// The nominal size of a dataset's PV and PVC. Kubernetes does not enforce it for
/// CSI volumes, and a PVC cannot shrink, so it does not follow the dataset's size
/// (that is in the Dataset's status).
pub const NOMINAL_CAPACITY: &str = "100Pi";

/// The dataset's name on the master: namespace and name joined by a dot (a
/// namespace has no dots, so the pair is unambiguous).
pub fn master_name(ns: &str, name: &str) -> String {
    format!("{ns}.{name}")
}

/// The cluster-wide PV serving a dataset.
pub fn pv_name(ns: &str, name: &str) -> String {
    format!("shoal.{ns}.{name}")
}

/// The node label key for a dataset (see [`shoal_core::ids::dataset_node_label`]).
pub fn node_label(ns: &str, name: &str) -> String {
    shoal_core::ids::dataset_node_label(&master_name(ns, name))
}

/// The master's `DatasetSpec` for a resource, credentials (already read from
/// their Secrets) merged into the options.
pub fn master_spec(
    ds: &Dataset,
    secrets: &BTreeMap<String, String>,
) -> Result<shoal_proto::master::DatasetSpec, Error> {
    let ns = ds.namespace().unwrap_or_default();
    let [mount] = ds.spec.mounts.as_slice() else {
        return Err(Error::Invalid(format!(
            "spec.mounts has {} entries; shoal serves exactly one",
            ds.spec.mounts.len()
        )));
    };
    if mount.uri.is_empty() {
        return Err(Error::Invalid("spec.mounts[0].uri is empty".into()));
    }
    let mut options: std::collections::HashMap<String, String> =
        mount.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (k, v) in secrets {
        options.insert(k.clone(), v.clone());
    }
    let cache = &ds.spec.cache;
    let block_size = match &cache.block_size {
        Some(s) => shoal_core::size::parse_size(s).map_err(|e| Error::Invalid(format!("spec.cache.blockSize: {e}")))?,
        None => 0,
    };
    let duration = |field: &str, v: &Option<String>| -> Result<u64, Error> {
        v.as_deref()
            .map(|s| shoal_core::size::parse_duration(s).map(|d| d.as_secs()))
            .transpose()
            .map(|d| d.unwrap_or(0))
            .map_err(|e| Error::Invalid(format!("{field}: {e}")))
    };
    Ok(shoal_proto::master::DatasetSpec {
        name: master_name(&ns, &ds.name_any()),
        mount: None,
        mounts: vec![MountSpec { uri: mount.uri.clone(), options, ..Default::default() }],
        cache: Some(CachePolicy {
            block_size,
            replicas: cache.replicas.unwrap_or(0),
            pinned: cache.pin,
            ttl_seconds: duration("spec.cache.ttl", &cache.ttl)?,
        }),
        sync_interval_seconds: duration("spec.sync.interval", &ds.spec.sync.interval)?,
        namespace: ns,
    })
}

/// The PV: a static CSI volume for the dataset, pre-bound to its PVC.
pub fn desired_pv(ds: &Dataset) -> PersistentVolume {
    let (ns, name) = (ds.namespace().unwrap_or_default(), ds.name_any());
    let handle = master_name(&ns, &name);
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name(&ns, &name)),
            labels: Some(owner_labels(&ns, &name)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(vec!["ReadOnlyMany".into()]),
            capacity: Some([("storage".to_string(), Quantity(NOMINAL_CAPACITY.into()))].into()),
            persistent_volume_reclaim_policy: Some("Retain".into()),
            storage_class_name: Some(String::new()),
            volume_mode: Some("Filesystem".into()),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(ns.clone()),
                name: Some(name.clone()),
                ..Default::default()
            }),
            csi: Some(CSIPersistentVolumeSource {
                driver: CSI_DRIVER.into(),
                volume_handle: handle.clone(),
                read_only: Some(true),
                volume_attributes: Some([("dataset".to_string(), handle)].into()),
                ..Default::default()
            }),
            node_affinity: ds.spec.node_affinity.clone(),
            ..Default::default()
        }),
        status: None,
    }
}

/// The PVC pods use (`claimName: <dataset name>`), owned by the Dataset.
pub fn desired_pvc(ds: &Dataset) -> PersistentVolumeClaim {
    let (ns, name) = (ds.namespace().unwrap_or_default(), ds.name_any());
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(owner_labels(&ns, &name)),
            owner_references: ds.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadOnlyMany".into()]),
            storage_class_name: Some(String::new()),
            volume_mode: Some("Filesystem".into()),
            volume_name: Some(pv_name(&ns, &name)),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_string(), Quantity(NOMINAL_CAPACITY.into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

fn owner_labels(ns: &str, name: &str) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/managed-by".to_string(), "shoal-operator".to_string()),
        ("shoal.io/dataset-namespace".to_string(), ns.to_string()),
        ("shoal.io/dataset".to_string(), name.to_string()),
    ]
    .into()
}

/// Reconcile one Dataset. Errors are written to `status.conditions` and an event
/// and retried with a delay; they never end the controller.
#[instrument(skip_all, fields(dataset = %ds.name_any(), ns = ds.namespace().unwrap_or_default()))]
pub async fn reconcile(ds: Arc<Dataset>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = ds.namespace().ok_or_else(|| Error::Invalid("a Dataset must be namespaced".into()))?;
    let api: Api<Dataset> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, ds.clone(), |event| async {
        match event {
            Finalized::Apply(ds) => apply(&ds, &ctx).await,
            Finalized::Cleanup(ds) => cleanup(&ds, &ctx).await,
        }
    })
    .await;
    crate::metrics::count("Dataset", result.is_ok());
    match result {
        Ok(action) => Ok(action),
        Err(e) => {
            let err = crate::unwrap_finalizer(e);
            report(&api, &ds, &ctx, &err).await;
            Ok(if err.is_permanent() { Action::await_change() } else { Action::requeue(ctx.retry) })
        }
    }
}

async fn apply(ds: &Dataset, ctx: &Ctx) -> Result<Action, Error> {
    let (ns, name) = (ds.namespace().unwrap_or_default(), ds.name_any());
    let secrets = read_secrets(ds, ctx).await?;
    let spec = master_spec(ds, &secrets)?;
    let info = ensure_on_master(ctx, spec).await?;

    let ssa = PatchParams::apply(FIELD_MANAGER).force();
    let pv = desired_pv(ds);
    Api::<PersistentVolume>::all(ctx.client.clone()).patch(&pv_name(&ns, &name), &ssa, &Patch::Apply(&pv)).await?;
    let pvc = desired_pvc(ds);
    Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns).patch(&name, &ssa, &Patch::Apply(&pvc)).await?;

    let usage = ctx
        .master
        .clone()
        .get_cache_usage(CacheUsageRequest { dataset: master_name(&ns, &name) })
        .await
        .map_err(Error::from_master)?
        .into_inner();
    let nodes: BTreeSet<String> =
        usage.workers.iter().filter(|w| w.cached_bytes > 0 && !w.node.is_empty()).map(|w| w.node.clone()).collect();
    label_nodes(ctx, &node_label(&ns, &name), &nodes).await?;

    let status = DatasetStatus {
        phase: Some("Ready".into()),
        master_name: Some(master_name(&ns, &name)),
        file_count: Some(info.file_count),
        total_bytes: Some(info.total_bytes),
        total: Some(human_bytes(info.total_bytes)),
        cached_bytes: Some(usage.cached_bytes),
        cached_percent: Some(percent(usage.cached_bytes, usage.total_bytes)),
        cache_nodes: nodes.into_iter().collect(),
        volume: Some(name.clone()),
        last_sync_time: (info.last_sync_unix > 0)
            .then(|| k8s_openapi::jiff::Timestamp::from_second(info.last_sync_unix).ok().map(Time))
            .flatten(),
        observed_generation: ds.metadata.generation,
        conditions: vec![condition(
            ds.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default(),
            "Ready",
            true,
            "Synced",
            &format!("registered; served as PVC {name}"),
            ds.metadata.generation,
        )],
    };
    Api::<Dataset>::namespaced(ctx.client.clone(), &ns)
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
        .await?;
    Ok(Action::requeue(ctx.refresh))
}

/// Create the dataset on the master (listing the store), or bring its cache
/// policy in line. The store URI cannot change under a dataset.
async fn ensure_on_master(ctx: &Ctx, spec: shoal_proto::master::DatasetSpec) -> Result<DatasetInfo, Error> {
    let mut master = ctx.master.clone();
    match master.get_dataset(GetDatasetRequest { name: spec.name.clone() }).await {
        Ok(found) => {
            let found = found.into_inner();
            // Before anything else: a Dataset never takes over another namespace's.
            if found.namespace() != spec.namespace {
                return Err(Error::MasterRefused(format!(
                    "the master's dataset {:?} belongs to namespace {:?}; a Dataset in {:?} cannot adopt it",
                    spec.name,
                    found.namespace(),
                    spec.namespace
                )));
            }
            let have = found.spec.clone().unwrap_or_default();
            let (have_m, want_m) = (shoal_core::dataset::mount_specs(&have), shoal_core::dataset::mount_specs(&spec));
            let (have_uri, want_uri) = (
                have_m.first().map(|m| m.uri.as_str()).unwrap_or(""),
                want_m.first().map(|m| m.uri.as_str()).unwrap_or(""),
            );
            if have_uri != want_uri {
                return Err(Error::Invalid(format!(
                    "spec.mounts[0].uri changed from {have_uri:?} to {want_uri:?}; a dataset's store cannot change (create a new Dataset)"
                )));
            }
            let (have_c, want_c) = (have.cache.unwrap_or_default(), spec.cache.unwrap_or_default());
            if have_c.pinned != want_c.pinned || have_c.ttl_seconds != want_c.ttl_seconds {
                info!(pinned = want_c.pinned, ttl = want_c.ttl_seconds, "updating the cache policy");
                return Ok(master
                    .set_cache_policy(SetCachePolicyRequest {
                        name: spec.name,
                        pinned: Some(want_c.pinned),
                        ttl_seconds: Some(want_c.ttl_seconds),
                    })
                    .await
                    .map_err(Error::from_master)?
                    .into_inner());
            }
            Ok(found)
        }
        Err(s) if s.code() == tonic::Code::NotFound => {
            info!(name = %spec.name, "registering with the master");
            Ok(master
                .create_dataset(CreateDatasetRequest { spec: Some(spec), sync: true })
                .await
                .map_err(Error::from_master)?
                .into_inner())
        }
        Err(s) => Err(Error::from_master(s)),
    }
}

/// Option name → value for every `encryptOptions` entry, from Secrets in the
/// dataset's namespace.
async fn read_secrets(ds: &Dataset, ctx: &Ctx) -> Result<BTreeMap<String, String>, Error> {
    let ns = ds.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut out = BTreeMap::new();
    for opt in ds.spec.mounts.iter().flat_map(|m| &m.encrypt_options) {
        let sel = &opt.value_from.secret_key_ref;
        let secret = api.get_opt(&sel.name).await?.ok_or_else(|| {
            Error::Secret(format!("Secret {ns}/{} (for option {:?}) does not exist", sel.name, opt.name))
        })?;
        let value = secret.data.as_ref().and_then(|d| d.get(&sel.key)).ok_or_else(|| {
            Error::Secret(format!("Secret {ns}/{} has no key {:?} (for option {:?})", sel.name, sel.key, opt.name))
        })?;
        let value = String::from_utf8(value.0.clone())
            .map_err(|_| Error::Secret(format!("Secret {ns}/{} key {:?} is not UTF-8", sel.name, sel.key)))?;
        out.insert(opt.name.clone(), value);
    }
    Ok(out)
}

/// Put `key=true` on exactly `nodes`: added where missing, removed elsewhere.
async fn label_nodes(ctx: &Ctx, key: &str, nodes: &BTreeSet<String>) -> Result<(), Error> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let labelled: BTreeSet<String> =
        api.list_metadata(&ListParams::default().labels(key)).await?.items.into_iter().map(|n| n.name_any()).collect();
    for node in nodes.difference(&labelled) {
        api.patch(node, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {key: "true"}}}))).await?;
    }
    for node in labelled.difference(nodes) {
        api.patch(node, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {key: null}}}))).await?;
    }
    Ok(())
}

async fn cleanup(ds: &Dataset, ctx: &Ctx) -> Result<Action, Error> {
    let (ns, name) = (ds.namespace().unwrap_or_default(), ds.name_any());
    info!("cleaning up");
    let gone = |r: Result<_, kube::Error>| match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    };
    gone(
        Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
            .delete(&name, &DeleteParams::default())
            .await
            .map(|_| ()),
    )?;
    gone(
        Api::<PersistentVolume>::all(ctx.client.clone())
            .delete(&pv_name(&ns, &name), &DeleteParams::default())
            .await
            .map(|_| ()),
    )?;
    label_nodes(ctx, &node_label(&ns, &name), &BTreeSet::new()).await?;
    // Only this namespace's dataset: a refused Dataset never deletes another's.
    let mut master = ctx.master.clone();
    match master.get_dataset(GetDatasetRequest { name: master_name(&ns, &name) }).await {
        Ok(found) if found.get_ref().namespace() != ns => {
            tracing::warn!(owner = %found.get_ref().namespace(), "the master's dataset of this name is another namespace's; left alone");
            return Ok(Action::await_change());
        }
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(Action::await_change()),
        Err(s) => return Err(Error::from_master(s)),
    }
    match master.delete_dataset(DeleteDatasetRequest { name: master_name(&ns, &name) }).await {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => return Err(Error::from_master(s)),
    }
    Ok(Action::await_change())
}

/// Write an error into the resource's status (phase `Failed`, condition `Ready`
/// false with the reason) and an event. Failing to report is only logged.
async fn report(api: &Api<Dataset>, ds: &Dataset, ctx: &Ctx, err: &Error) {
    tracing::warn!(error = %err, "reconcile failed");
    let prior = ds.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let status = json!({"status": {
        "phase": if ds.metadata.deletion_timestamp.is_some() { "Deleting" } else { "Failed" },
        "observedGeneration": ds.metadata.generation,
        "conditions": [condition(prior, "Ready", false, err.reason(), &err.to_string(), ds.metadata.generation)],
    }});
    if let Err(e) = api.patch_status(&ds.name_any(), &PatchParams::default(), &Patch::Merge(status)).await {
        tracing::warn!(error = %e, "cannot write the error into the status");
    }
    crate::publish_warning(ctx, &ds.object_ref(&()), err).await;
}

fn percent(part: u64, total: u64) -> String {
    if total == 0 {
        return "0.0%".into();
    }
    format!("{:.1}%", part as f64 * 100.0 / total as f64)
}

fn human_bytes(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

/// How long to wait before looking at a dataset again when nothing changed.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CacheSpec, DatasetSpec, EncryptOption, Mount, SecretSource, SyncSpec};
    use k8s_openapi::api::core::v1::SecretKeySelector;

    pub fn dataset() -> Dataset {
        let mut ds = Dataset::new(
            "imagenet",
            DatasetSpec {
                mounts: vec![Mount {
                    uri: "s3://bucket/imagenet/".into(),
                    options: [("endpoint".to_string(), "http://minio:9000".to_string())].into(),
                    encrypt_options: vec![EncryptOption {
                        name: "secret_access_key".into(),
                        value_from: SecretSource {
                            secret_key_ref: SecretKeySelector {
                                name: "creds".into(),
                                key: "sk".into(),
                                optional: None,
                            },
                        },
                    }],
                }],
                cache: CacheSpec {
                    block_size: Some("4MiB".into()),
                    replicas: Some(2),
                    pin: true,
                    ttl: Some("24h".into()),
                },
                sync: SyncSpec { interval: Some("1h".into()) },
                node_affinity: None,
            },
        );
        ds.metadata.namespace = Some("ml".into());
        ds.metadata.uid = Some("uid-1".into());
        ds
    }

    #[test]
    fn the_master_spec_carries_options_credentials_and_policy() {
        let secrets = [("secret_access_key".to_string(), "s3cr3t".to_string())].into();
        let spec = master_spec(&dataset(), &secrets).unwrap();
        assert_eq!(spec.name, "ml.imagenet");
        assert_eq!(spec.namespace, "ml", "the dataset belongs to its resource's namespace");
        let mount = spec.mount.unwrap();
        assert_eq!(mount.uri, "s3://bucket/imagenet/");
        assert_eq!(mount.options["endpoint"], "http://minio:9000");
        assert_eq!(mount.options["secret_access_key"], "s3cr3t");
        let cache = spec.cache.unwrap();
        assert_eq!((cache.block_size, cache.replicas, cache.pinned, cache.ttl_seconds), (4 << 20, 2, true, 86_400));
        assert_eq!(spec.sync_interval_seconds, 3600);
    }

    #[test]
    fn a_bad_spec_is_a_permanent_error_naming_the_field() {
        let mut ds = dataset();
        ds.spec.cache.block_size = Some("lots".into());
        let e = master_spec(&ds, &BTreeMap::new()).unwrap_err();
        assert!(e.is_permanent() && e.to_string().contains("blockSize"), "{e}");
        let mut ds = dataset();
        ds.spec.sync.interval = Some("soon".into());
        assert!(master_spec(&ds, &BTreeMap::new()).unwrap_err().to_string().contains("spec.sync.interval"));
        let mut ds = dataset();
        ds.spec.mounts.push(ds.spec.mounts[0].clone());
        assert!(master_spec(&ds, &BTreeMap::new()).unwrap_err().to_string().contains("exactly one"));
    }

    #[test]
    fn the_pv_and_pvc_bind_to_each_other_and_name_the_dataset() {
        let ds = dataset();
        let pv = desired_pv(&ds);
        let spec = pv.spec.as_ref().unwrap();
        assert_eq!(pv.metadata.name.as_deref(), Some("shoal.ml.imagenet"));
        let csi = spec.csi.as_ref().unwrap();
        assert_eq!((csi.driver.as_str(), csi.volume_handle.as_str()), ("csi.shoal.io", "ml.imagenet"));
        assert_eq!(csi.volume_attributes.as_ref().unwrap()["dataset"], "ml.imagenet");
        assert_eq!(spec.access_modes.as_deref(), Some(&["ReadOnlyMany".to_string()][..]));
        let claim = spec.claim_ref.as_ref().unwrap();
        assert_eq!((claim.namespace.as_deref(), claim.name.as_deref()), (Some("ml"), Some("imagenet")));
        assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Retain"));

        let pvc = desired_pvc(&ds);
        assert_eq!(pvc.metadata.namespace.as_deref(), Some("ml"));
        assert_eq!(pvc.spec.as_ref().unwrap().volume_name.as_deref(), Some("shoal.ml.imagenet"));
        assert_eq!(pvc.spec.as_ref().unwrap().storage_class_name.as_deref(), Some(""));
        let owner = &pvc.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("Dataset", "uid-1", Some(true)));
    }

    #[test]
    fn node_labels_fit_the_label_syntax() {
        assert_eq!(node_label("ml", "imagenet"), "dataset.shoal.io/ml.imagenet");
        let long = node_label("team-vision-research", &"x".repeat(60));
        assert!(long.starts_with("dataset.shoal.io/h-") && long.len() - NODE_LABEL_PREFIX.len() == 18, "{long}");
        assert_eq!(long, node_label("team-vision-research", &"x".repeat(60)), "stable");
    }

    #[test]
    fn sizes_and_percentages_read_well() {
        assert_eq!(percent(1, 3), "33.3%");
        assert_eq!(percent(0, 0), "0.0%");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
