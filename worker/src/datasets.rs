//! The under-stores of the datasets this worker reads from, opened once per dataset
//! from the specs (credentials included) the master sends workers alone with its
//! heartbeat answers, and the
//! validation of block references that arrive on the wire: a reference the
//! master did not sign is refused, and a hostile path never reaches the store.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use shoal_core::dataset::{Dataset, Stores};
use shoal_core::identity::{Signed, Signer};
use shoal_core::ids;
use shoal_proto::master::{DatasetInfo, GetDatasetRequest};
use shoal_proto::worker::BlockRef;

use crate::error::WorkerError;

/// A block reference that passed validation.
#[derive(Debug, Clone)]
pub struct CheckedRef {
    pub id: shoal_core::BlockId,
    pub dataset: String,
    pub dataset_id: u32,
    pub path: String,
    pub offset: u64,
    pub len: u64,
    /// The file as the client's namespace listed it.
    pub version: shoal_core::Version,
    /// The identity epoch the reference was verified under (see `Identity::during`).
    pub epoch: u64,
}

/// What the master's signature of a reference covers.
pub fn signed_fields(r: &BlockRef) -> Signed<'_> {
    Signed {
        dataset_id: r.dataset_id,
        file_id: r.file_id,
        block_size: r.block_size,
        file_size: r.file_size,
        mtime_sec: r.mtime_sec,
        mtime_nsec: r.mtime_nsec,
        path: &r.path,
    }
}

/// Validate a block reference: signed by the master (`signer`: `None` until the
/// worker knows its cluster), a dataset name, a clean absolute path, an index
/// inside the file.
pub fn check_ref(r: Option<&BlockRef>, signer: Option<&Signer>) -> Result<CheckedRef, WorkerError> {
    let bad = |m: String| WorkerError::InvalidRequest(m);
    let r = r.ok_or_else(|| bad("missing block reference".into()))?;
    let signer = signer.ok_or(WorkerError::NotRegistered)?;
    if !signer.verify(&signed_fields(r), &r.sig) {
        return Err(WorkerError::Unsigned(r.path.clone()));
    }
    ids::validate_dataset_name(&r.dataset).map_err(|e| bad(e.to_string()))?;
    ids::validate_block_size(r.block_size).map_err(|e| bad(e.to_string()))?;
    if r.path == "/" || ids::validate_dataset_path(&r.path).is_err() {
        return Err(bad(format!("path {:?} is not a clean absolute dataset path", r.path)));
    }
    let (offset, len) = ids::block_range(r.file_size, r.block_size, r.index)
        .ok_or_else(|| bad(format!("block {} is past the end of {:?} ({} bytes)", r.index, r.path, r.file_size)))?;
    Ok(CheckedRef {
        id: shoal_core::BlockId::new(r.file_id, r.index),
        dataset: r.dataset.clone(),
        dataset_id: r.dataset_id,
        path: r.path.clone(),
        offset,
        len,
        version: shoal_core::Version::listed(r.file_size, r.mtime_sec, r.mtime_nsec),
        epoch: 0,
    })
}

/// One dataset's spec as the master sent it, and its stores once opened.
struct Known {
    info: DatasetInfo,
    stores: Option<Arc<Stores>>,
}

/// The datasets' specs (credentials included) as the master sends them with
/// its answers to registration and heartbeats, under the identity epoch they
/// came in (a new cluster's dataset of the same id is another dataset), and
/// their stores, opened on first use. A dataset not heard of yet (created
/// since the last heartbeat) is asked for once.
pub struct Datasets {
    master: shoal_proto::auth::Master,
    known: Mutex<(u64, HashMap<u32, Known>)>,
}

impl Datasets {
    pub fn new(master: shoal_proto::auth::Master) -> Self {
        Self { master, known: Mutex::new((0, HashMap::new())) }
    }

    /// The master these stores' specs come from.
    pub fn master(&self) -> shoal_proto::auth::Master {
        self.master.clone()
    }

    /// Take every dataset's spec from a registration answer (under `epoch`).
    pub fn replace_all(&self, specs: Vec<DatasetInfo>, epoch: u64) {
        let map = specs.into_iter().map(|info| (info.id, Known { info, stores: None })).collect();
        *self.known.lock().expect("datasets lock") = (epoch, map);
    }

    /// Take the changed specs of a heartbeat answer; forget datasets not in
    /// `live` (the ids the master still has).
    pub fn update(&self, specs: Vec<DatasetInfo>, live: &HashSet<u32>) {
        let mut known = self.known.lock().expect("datasets lock");
        known.1.retain(|id, _| live.contains(id));
        for info in specs {
            known.1.insert(info.id, Known { info, stores: None });
        }
    }

    /// The spec revision held of each dataset, for the next heartbeat.
    pub fn revisions(&self) -> HashMap<u32, u64> {
        self.known.lock().expect("datasets lock").1.iter().map(|(id, k)| (*id, k.info.spec_revision)).collect()
    }

    /// The stores of dataset `name` (id `id`) under identity epoch `epoch`.
    pub async fn stores(&self, name: &str, id: u32, epoch: u64) -> Result<Arc<Stores>, WorkerError> {
        let gone = || WorkerError::DatasetGone(format!("{name} (id {id})"));
        {
            let mut known = self.known.lock().expect("datasets lock");
            if known.0 == epoch {
                if let Some(k) = known.1.get_mut(&id) {
                    if k.info.spec.as_ref().is_none_or(|s| s.name != name) {
                        return Err(gone());
                    }
                    return open(k);
                }
            }
        }
        let info = self
            .master
            .clone()
            .get_store_spec(GetDatasetRequest { name: name.to_string() })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::NotFound => WorkerError::DatasetGone(name.to_string()),
                _ => WorkerError::Master(s.message().to_string()),
            })?
            .into_inner();
        if info.id != id {
            // The dataset was deleted and re-created: this reference is stale.
            return Err(gone());
        }
        let mut k = Known { info, stores: None };
        let stores = open(&mut k)?;
        let mut known = self.known.lock().expect("datasets lock");
        if known.0 == epoch {
            known.1.entry(id).or_insert(k);
        }
        Ok(stores)
    }
}

fn open(k: &mut Known) -> Result<Arc<Stores>, WorkerError> {
    if let Some(s) = &k.stores {
        return Ok(s.clone());
    }
    let stores = Arc::new(Stores::open(Dataset::from_info(&k.info)?, false)?);
    k.stores = Some(stores.clone());
    Ok(stores)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(&[3; shoal_core::identity::KEY_LEN]).unwrap()
    }

    fn sign(mut r: BlockRef) -> BlockRef {
        r.sig = signer().sign(&signed_fields(&r));
        r
    }

    fn r(path: &str, index: u32, size: u64) -> BlockRef {
        sign(BlockRef {
            dataset: "ds".into(),
            dataset_id: 1,
            file_id: 9,
            index,
            path: path.into(),
            block_size: 1 << 20,
            file_size: size,
            ..Default::default()
        })
    }

    fn check_ref(r: Option<&BlockRef>) -> Result<CheckedRef, WorkerError> {
        super::check_ref(r, Some(&signer()))
    }

    #[test]
    fn unsigned_and_forged_refs_are_refused() {
        let good = r("/a/b", 0, 10);
        assert!(check_ref(Some(&good)).is_ok());
        // Another file's path under this file's id (the poisoning of issue 16).
        let forged = BlockRef { path: "/a/c".into(), ..good.clone() };
        assert!(matches!(check_ref(Some(&forged)), Err(WorkerError::Unsigned(_))));
        let bigger = BlockRef { block_size: 2 << 20, ..good.clone() };
        assert!(matches!(check_ref(Some(&bigger)), Err(WorkerError::Unsigned(_))));
        let unsigned = BlockRef { sig: Vec::new(), ..good.clone() };
        assert!(matches!(check_ref(Some(&unsigned)), Err(WorkerError::Unsigned(_))));
        assert!(matches!(super::check_ref(Some(&good), None), Err(WorkerError::NotRegistered)));
        let other = Signer::new(&[4; shoal_core::identity::KEY_LEN]).unwrap();
        assert!(matches!(super::check_ref(Some(&good), Some(&other)), Err(WorkerError::Unsigned(_))));
        assert_eq!(tonic::Status::from(WorkerError::Unsigned("/a".into())).code(), tonic::Code::PermissionDenied);
        assert_eq!(tonic::Status::from(WorkerError::NotRegistered).code(), tonic::Code::Unavailable);
    }

    #[test]
    fn hostile_refs_are_refused() {
        assert!(check_ref(Some(&r("/a/b", 0, 10))).is_ok());
        let c = check_ref(Some(&r("/a", 1, (1 << 20) + 5))).unwrap();
        assert_eq!((c.offset, c.len), (1 << 20, 5));
        for p in ["a/b", "/a/../etc/passwd", "/a//b", "/a/./b", "/a\0b", ""] {
            assert!(check_ref(Some(&r(p, 0, 10))).is_err(), "{p:?}");
        }
        assert!(check_ref(Some(&r("/a", 1, 10))).is_err(), "index past the end");
        assert!(check_ref(Some(&r("/a", 0, 0))).is_err(), "empty file has no block");
        assert!(check_ref(None).is_err());
        let mut bad_ds = r("/a", 0, 10);
        bad_ds.dataset = "../x".into();
        let bad_ds = sign(bad_ds);
        assert!(check_ref(Some(&bad_ds)).is_err());
    }
}
