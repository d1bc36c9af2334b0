//! The custom resources, as Rust types: `Dataset` (store mounts cached by shoal,
//! served to pods as a volume) and `DataLoad` (a prewarm job on a dataset, once
//! or on a schedule). Their CRDs are generated from these types
//! (`shoal operator crds`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{SecretKeySelector, VolumeNodeAffinity};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A dataset: where its data lives, how shoal caches it, and where pods may use it.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "shoal.io",
    version = "v1alpha1",
    kind = "Dataset",
    namespaced,
    status = "DatasetStatus",
    shortname = "sds",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Files","type":"integer","jsonPath":".status.fileCount"}"#,
    printcolumn = r#"{"name":"Total","type":"string","jsonPath":".status.total"}"#,
    printcolumn = r#"{"name":"Cached","type":"string","jsonPath":".status.cachedPercent"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSpec {
    /// Where the data lives: one store, or several each at its own `path`
    /// inside the dataset (at most 64; paths distinct and not nested).
    #[schemars(length(min = 1, max = 64))]
    pub mounts: Vec<Mount>,
    /// How shoal caches the dataset.
    #[serde(default)]
    pub cache: CacheSpec,
    /// When the namespace is listed again from the store.
    #[serde(default)]
    pub sync: SyncSpec,
    /// Nodes on which pods may use the dataset's volume (the PV's node affinity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<VolumeNodeAffinity>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    /// Store URI: `s3://bucket/prefix/`, `gs://`, `oss://`, `azblob://`, `webhdfs://`,
    /// `file:///path`, `http(s)://`.
    pub uri: String,
    /// Where the store appears inside the dataset, e.g. `/train` (default `/`:
    /// the whole dataset, so a dataset of several mounts names each path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// List this mount's store again this often, e.g. `10m` (default: the
    /// dataset's `sync.interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_interval: Option<String>,
    /// Store options (OpenDAL keys such as `endpoint`, `region`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Options read from Secrets in the dataset's namespace (credentials). Their
    /// values never appear in the status, events or logs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encrypt_options: Vec<EncryptOption>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EncryptOption {
    /// The store option to set, e.g. `secret_access_key`.
    pub name: String,
    pub value_from: SecretSource,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretSource {
    pub secret_key_ref: SecretKeySelector,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// Block size, e.g. `8MiB` (default 8 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<String>,
    /// Workers that cache each block when it is prewarmed (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub replicas: Option<u32>,
    /// Keep the dataset's blocks out of eviction.
    #[serde(default)]
    pub pin: bool,
    /// Drop cached blocks this long after they were cached, e.g. `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncSpec {
    /// List the store again this often, e.g. `1h` (default: only when created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetStatus {
    /// `Pending`, `Ready`, `Failed` or `Deleting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The dataset's name on the master (`<namespace>.<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// Total size, human-readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_bytes: Option<u64>,
    /// Share of the dataset's bytes cached, e.g. `42.0%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_percent: Option<String>,
    /// Nodes whose worker holds part of the dataset's cache (labelled so).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_nodes: Vec<String>,
    /// The PV and PVC serving the dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A prewarm of a dataset (or paths in it) into the workers' cache.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "shoal.io",
    version = "v1alpha1",
    kind = "DataLoad",
    namespaced,
    status = "DataLoadStatus",
    shortname = "sdl",
    printcolumn = r#"{"name":"Dataset","type":"string","jsonPath":".spec.dataset"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DataLoadSpec {
    /// The `Dataset` (in the same namespace) to load.
    pub dataset: String,
    /// Dataset paths to load (default: all of it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Only files whose dataset path matches this glob, e.g. `**/*.JPEG`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<String>,
    /// Workers per block (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub replicas: Option<u32>,
    /// `Once` (default) or `Cron` (again at each `schedule` time).
    #[serde(default)]
    pub policy: LoadPolicy,
    /// Cron schedule (five fields, UTC) for `policy: Cron`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum LoadPolicy {
    #[default]
    Once,
    Cron,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataLoadStatus {
    /// `Pending`, `Running`, `Complete`, `Failed` or `Waiting` (for the next
    /// scheduled run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The master's job id of the current or last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Files done of files total, e.g. `120/1000 files`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(default)]
    pub files_total: u64,
    #[serde(default)]
    pub files_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub files_failed: u64,
    /// The first failures of the last run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<LoadFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// When the last scheduled run started (`policy: Cron`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct LoadFailure {
    pub path: String,
    pub error: String,
}

/// Both CRDs as a multi-document YAML stream (what `shoal operator crds` prints).
pub fn crds_yaml() -> String {
    use kube::CustomResourceExt;
    [Dataset::crd(), DataLoad::crd()]
        .iter()
        .map(|crd| serde_saphyr::to_string(crd).expect("a CRD serializes to YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Each CRD with the file name it has in `deploy/base/crds/`.
pub fn crd_files() -> Vec<(String, String)> {
    use kube::CustomResourceExt;
    [Dataset::crd(), DataLoad::crd()]
        .iter()
        .map(|crd| {
            let name = format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural);
            (name, serde_saphyr::to_string(crd).expect("a CRD serializes to YAML"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crds_in_deploy_are_the_generated_ones() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/crds");
        for (name, yaml) in crd_files() {
            let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|e| {
                panic!("deploy/base/crds/{name}: {e} (run `shoal operator crds --dir deploy/base/crds`)")
            });
            assert_eq!(
                on_disk, yaml,
                "deploy/base/crds/{name} is stale: run `shoal operator crds --dir deploy/base/crds`"
            );
        }
    }

    #[test]
    fn a_dataset_round_trips_through_yaml_with_its_defaults() {
        let yaml = r#"
apiVersion: shoal.io/v1alpha1
kind: Dataset
metadata: {name: imagenet, namespace: ml}
spec:
  mounts:
    - uri: s3://bucket/imagenet/
      options: {endpoint: "http://minio:9000"}
      encryptOptions:
        - name: secret_access_key
          valueFrom: {secretKeyRef: {name: creds, key: sk}}
  cache: {blockSize: 4MiB, pin: true, ttl: 24h}
"#;
        let ds: Dataset = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(ds.spec.mounts[0].encrypt_options[0].value_from.secret_key_ref.name, "creds");
        assert_eq!(ds.spec.cache.block_size.as_deref(), Some("4MiB"));
        assert!(ds.spec.cache.pin);
        assert_eq!(ds.spec.sync, SyncSpec::default());
        let dl: DataLoad = serde_saphyr::from_str(
            "apiVersion: shoal.io/v1alpha1\nkind: DataLoad\nmetadata: {name: l}\nspec: {dataset: d}\n",
        )
        .unwrap();
        assert_eq!(dl.spec.policy, LoadPolicy::Once);
    }
}
