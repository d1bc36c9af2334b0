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
    MountSpec, SetCachePolicyRequest, UpdateDatasetRequest,
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

/// The master's `DatasetSpec` for a resource, each mount's credentials
/// (already read from their Secrets, `secrets[i]` for `spec.mounts[i]`)
/// merged into its options.
pub fn master_spec(
    ds: &Dataset,
    secrets: &[BTreeMap<String, String>],
) -> Result<shoal_proto::master::DatasetSpec, Error> {
    let ns = ds.namespace().unwrap_or_default();
    let duration = |field: &str, v: &Option<String>| -> Result<u64, Error> {
        v.as_deref()
            .map(|s| shoal_core::size::parse_duration(s).map(|d| d.as_secs()))
            .transpose()
            .map(|d| d.unwrap_or(0))
            .map_err(|e| Error::Invalid(format!("{field}: {e}")))
    };
    let several = ds.spec.mounts.len() > 1;
    let mut mounts = Vec::with_capacity(ds.spec.mounts.len());
    for (i, mount) in ds.spec.mounts.iter().enumerate() {
        if mount.uri.is_empty() {
            return Err(Error::Invalid(format!("spec.mounts[{i}].uri is empty")));
        }
        let path = match &mount.path {
            Some(p) => p.clone(),
            None if several => {
                return Err(Error::Invalid(format!(
                    "spec.mounts[{i}].path is missing; each mount of a dataset of several names its path (e.g. /train)"
                )))
            }
            None => "/".into(),
        };
        let mut options: std::collections::HashMap<String, String> =
            mount.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (k, v) in secrets.get(i).into_iter().flatten() {
            options.insert(k.clone(), v.clone());
        }
        let sync_interval_seconds = duration(&format!("spec.mounts[{i}].syncInterval"), &mount.sync_interval)?;
        mounts.push(MountSpec { uri: mount.uri.clone(), options, path, sync_interval_seconds });
    }
    let parsed = mounts.iter().map(shoal_core::dataset::Mount::from_spec).collect::<Result<Vec<_>, _>>();
    parsed
        .and_then(|m| shoal_core::dataset::validate_mounts(&m))
        .map_err(|e| Error::Invalid(format!("spec.mounts: {e}")))?;
    let cache = &ds.spec.cache;
    let block_size = match &cache.block_size {
        Some(s) => shoal_core::size::parse_size(s).map_err(|e| Error::Invalid(format!("spec.cache.blockSize: {e}")))?,
        None => 0,
    };
    Ok(shoal_proto::master::DatasetSpec {
        name: master_name(&ns, &ds.name_any()),
        mount: None,
        mounts,
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

/// Create the dataset on the master (listing its stores), or bring its mounts,
/// credentials, sync interval and cache policy in line. The block size cannot
/// change under a dataset.
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
            let (have_c, want_c) = (have.cache.unwrap_or_default(), spec.cache.unwrap_or_default());
            if want_c.block_size != 0 && have_c.block_size != 0 && have_c.block_size != want_c.block_size {
                return Err(Error::Invalid(format!(
                    "spec.cache.blockSize changed from {} to {} bytes; a dataset's block size cannot change (create a new Dataset)",
                    have_c.block_size, want_c.block_size
                )));
            }
            // The mounts and their options, credentials included: the master
            // compares them with what it holds (the client sees credentials
            // redacted) and changes nothing when they are the same, so a
            // rotated Secret or an edited mount reaches it on the next pass,
            // and the changed mounts are listed again.
            let updated = master
                .update_dataset(UpdateDatasetRequest {
                    name: spec.name.clone(),
                    mounts: spec.mounts.clone(),
                    sync_interval_seconds: Some(spec.sync_interval_seconds),
                    sync: true,
                })
                .await
                .map_err(Error::from_master)?
                .into_inner();
            if updated.spec_revision != found.spec_revision {
                info!(revision = updated.spec_revision, "mounts updated on the master");
            }
            let found = updated;
            let replicas = want_c.replicas.max(1);
            if have_c.pinned != want_c.pinned || have_c.ttl_seconds != want_c.ttl_seconds || have_c.replicas != replicas
            {
                info!(pinned = want_c.pinned, ttl = want_c.ttl_seconds, replicas, "updating the cache policy");
                return Ok(master
                    .set_cache_policy(SetCachePolicyRequest {
                        name: spec.name,
                        pinned: Some(want_c.pinned),
                        ttl_seconds: Some(want_c.ttl_seconds),
                        replicas: Some(replicas),
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

/// For each mount, option name → value of its `encryptOptions`, read from
/// Secrets in the dataset's namespace (each Secret read once per pass).
async fn read_secrets(ds: &Dataset, ctx: &Ctx) -> Result<Vec<BTreeMap<String, String>>, Error> {
    let ns = ds.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut read: BTreeMap<String, Secret> = BTreeMap::new();
    let mut out = Vec::with_capacity(ds.spec.mounts.len());
    for mount in &ds.spec.mounts {
        let mut options = BTreeMap::new();
        for opt in &mount.encrypt_options {
            let sel = &opt.value_from.secret_key_ref;
            if !read.contains_key(&sel.name) {
                let secret = api.get_opt(&sel.name).await?.ok_or_else(|| {
                    Error::Secret(format!("Secret {ns}/{} (for option {:?}) does not exist", sel.name, opt.name))
                })?;
                read.insert(sel.name.clone(), secret);
            }
            let value = read[&sel.name].data.as_ref().and_then(|d| d.get(&sel.key)).ok_or_else(|| {
                Error::Secret(format!("Secret {ns}/{} has no key {:?} (for option {:?})", sel.name, sel.key, opt.name))
            })?;
            let value = String::from_utf8(value.0.clone())
                .map_err(|_| Error::Secret(format!("Secret {ns}/{} key {:?} is not UTF-8", sel.name, sel.key)))?;
            options.insert(opt.name.clone(), value);
        }
        out.push(options);
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
                    path: None,
                    sync_interval: None,
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
        let secrets = [[("secret_access_key".to_string(), "s3cr3t".to_string())].into()];
        let spec = master_spec(&dataset(), &secrets).unwrap();
        assert_eq!(spec.name, "ml.imagenet");
        assert_eq!(spec.namespace, "ml", "the dataset belongs to its resource's namespace");
        let [mount] = spec.mounts.as_slice() else { panic!("{:?}", spec.mounts) };
        assert_eq!((mount.uri.as_str(), mount.path.as_str()), ("s3://bucket/imagenet/", "/"));
        assert_eq!(mount.options["endpoint"], "http://minio:9000");
        assert_eq!(mount.options["secret_access_key"], "s3cr3t");
        let cache = spec.cache.unwrap();
        assert_eq!(mount.sync_interval_seconds, 0, "the dataset's interval applies");
        assert_eq!((cache.block_size, cache.replicas, cache.pinned, cache.ttl_seconds), (4 << 20, 2, true, 86_400));
        assert_eq!(spec.sync_interval_seconds, 3600);
    }

    #[test]
    fn a_bad_spec_is_a_permanent_error_naming_the_field() {
        let mut ds = dataset();
        ds.spec.cache.block_size = Some("lots".into());
        let e = master_spec(&ds, &[]).unwrap_err();
        assert!(e.is_permanent() && e.to_string().contains("blockSize"), "{e}");
        let mut ds = dataset();
        ds.spec.sync.interval = Some("soon".into());
        assert!(master_spec(&ds, &[]).unwrap_err().to_string().contains("spec.sync.interval"));
        // Several mounts: each names its path, and the paths do not nest.
        let mut ds = dataset();
        ds.spec.mounts.push(ds.spec.mounts[0].clone());
        let e = master_spec(&ds, &[]).unwrap_err();
        assert!(e.is_permanent() && e.to_string().contains("spec.mounts[0].path is missing"), "{e}");
        ds.spec.mounts[0].path = Some("/train".into());
        ds.spec.mounts[1].path = Some("/train/val".into());
        let e = master_spec(&ds, &[]).unwrap_err();
        assert!(e.is_permanent() && e.to_string().contains("nest"), "{e}");
        ds.spec.mounts[1].path = Some("/../etc".into());
        assert!(master_spec(&ds, &[]).unwrap_err().is_permanent());
        ds.spec.mounts[1].sync_interval = Some("often".into());
        ds.spec.mounts[1].path = Some("/val".into());
        assert!(master_spec(&ds, &[]).unwrap_err().to_string().contains("spec.mounts[1].syncInterval"));
    }

    #[test]
    fn each_mount_takes_its_path_interval_and_own_credentials() {
        let mut ds = dataset();
        let mut val = ds.spec.mounts[0].clone();
        val.uri = "file:///data/val".into();
        val.encrypt_options.clear();
        val.path = Some("/val".into());
        val.sync_interval = Some("10m".into());
        ds.spec.mounts[0].path = Some("/train".into());
        ds.spec.mounts.push(val);
        let secrets = [[("secret_access_key".to_string(), "s3cr3t".to_string())].into(), BTreeMap::new()];
        let spec = master_spec(&ds, &secrets).unwrap();
        let paths: Vec<_> = spec.mounts.iter().map(|m| (m.path.as_str(), m.sync_interval_seconds)).collect();
        assert_eq!(paths, [("/train", 0), ("/val", 600)]);
        assert_eq!(spec.mounts[0].options["secret_access_key"], "s3cr3t");
        assert!(!spec.mounts[1].options.contains_key("secret_access_key"), "a credential stays with its mount");
        assert_eq!(spec.mounts[1].options["endpoint"], "http://minio:9000");
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
