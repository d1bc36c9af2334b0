//! Where a block's bytes come from, behind one trait: a worker on this node by
//! short-circuit (it names its block file; the file is mapped here and its
//! CRC checked), any worker over gRPC, or the under-store itself. Each reads a
//! whole block or a range of one, and says how it failed: absent (try the
//! next, quietly), failed (try the next; its message is the read's error if
//! every source fails) or final (no other source can do better: the object is
//! gone or changed in the store). The order sources are tried in is the
//! reader's ([`crate::reader`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use shoal_core::dataset::{Dataset, Stores};
use shoal_core::store::Version;
use shoal_core::CoreError;
use shoal_proto::master::{DatasetInfo, WorkerInfo};
use shoal_proto::worker::{BlockRef, OpenLocalRequest, ReadBlockRequest};
use tracing::warn;

use crate::reader::ReadError;

/// How long a worker that could not be reached is skipped.
const WORKER_DOWN_FOR: Duration = Duration::from_secs(3);

/// What a read wants of one block: all of it, or `len` bytes at `at`.
#[derive(Debug)]
pub struct Want<'a> {
    pub block: &'a BlockRef,
    /// The block's offset in its file, and its length.
    pub start: u64,
    pub block_len: u64,
    /// The wanted range, within the block.
    pub at: u64,
    pub len: u64,
    pub version: Version,
}

impl Want<'_> {
    pub fn whole(&self) -> bool {
        self.at == 0 && self.len == self.block_len
    }

    fn slice(&self, block: Bytes) -> Bytes {
        block.slice(self.at as usize..(self.at + self.len) as usize)
    }
}

/// How one source failed a read.
#[derive(Debug)]
pub enum Miss {
    /// It does not hold the block (not cached there).
    Absent,
    /// It failed; the next source may not.
    Failed(String),
    /// No source can do better.
    Final(ReadError),
}

/// Which kind of source served a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    ShortCircuit,
    Worker,
    Store,
}

impl SourceKind {
    /// The label in `shoal_fuse_block_fetches_total` (`_range` is appended for
    /// a part of a block).
    pub fn label(self) -> &'static str {
        match self {
            SourceKind::ShortCircuit => "short_circuit",
            SourceKind::Worker => "worker",
            SourceKind::Store => "store",
        }
    }
}

pub trait BlockSource: Send + Sync {
    fn kind(&self) -> SourceKind;
    fn read<'a>(&'a self, want: &'a Want<'a>) -> BoxFuture<'a, Result<Bytes, Miss>>;
}

/// gRPC clients of the workers, one per address, made on first use.
#[derive(Default)]
pub struct Clients(Mutex<HashMap<String, shoal_proto::auth::Worker>>);

impl Clients {
    pub fn get(&self, addr: &str) -> Result<shoal_proto::auth::Worker, Miss> {
        let mut clients = self.0.lock().expect("clients lock");
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = shoal_proto::profile::Profile::DATA
            .with_timeout(Duration::from_secs(60))
            .endpoint(addr)
            .map_err(|_| Miss::Failed(format!("bad worker address {addr}")))?;
        let c = shoal_proto::auth::worker(endpoint.connect_lazy())
            .max_decoding_message_size(shoal_proto::MAX_MESSAGE_BYTES);
        clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

/// Workers that could not be reached, and until when they are skipped: a lost
/// host costs one connect timeout, not one per block.
#[derive(Default)]
pub struct Down(Mutex<HashMap<String, Instant>>);

impl Down {
    pub fn is_down(&self, id: &str) -> bool {
        self.0.lock().expect("down lock").get(id).is_some_and(|t| Instant::now() < *t)
    }

    fn mark(&self, id: &str) {
        self.0.lock().expect("down lock").insert(id.to_string(), Instant::now() + WORKER_DOWN_FOR);
    }
}

/// A worker on this node: its block file, mapped. With `fill`, the worker
/// first caches a block it lacks (from `peers`, else the store).
pub struct ShortCircuit<'a> {
    pub worker: &'a WorkerInfo,
    pub clients: &'a Clients,
    pub fill: bool,
    pub peers: Vec<String>,
}

impl BlockSource for ShortCircuit<'_> {
    fn kind(&self) -> SourceKind {
        SourceKind::ShortCircuit
    }

    fn read<'a>(&'a self, want: &'a Want<'a>) -> BoxFuture<'a, Result<Bytes, Miss>> {
        Box::pin(async move {
            let w = self.worker;
            let req = OpenLocalRequest { block: Some(want.block.clone()), fill: self.fill, peers: self.peers.clone() };
            let resp = self
                .clients
                .get(&w.address)?
                .open_local(req)
                .await
                .map_err(|s| Miss::Failed(format!("open_local on {}: {}", w.id, s.message())))?
                .into_inner();
            if !resp.found {
                return Err(Miss::Absent);
            }
            if resp.length != want.block_len {
                return Err(Miss::Failed(format!(
                    "worker {} holds {} bytes for a {}-byte block",
                    w.id, resp.length, want.block_len
                )));
            }
            let path = std::path::PathBuf::from(resp.path);
            // Checked where the worker checks: SSD blocks. MEM blocks live in
            // RAM (tmpfs), and checking them would fault in every page of the
            // block for a read that wants 128 KiB of it.
            let crc = (resp.tier != "mem").then_some(resp.crc32c);
            let mapped = tokio::task::spawn_blocking(move || shoal_core::mapped::map_block(&path, resp.length, crc))
                .await
                .map_err(|e| Miss::Failed(e.to_string()))?;
            // Evicted in between, or corrupt: the worker itself is fine, and
            // asked over gRPC next it checks the file, drops a corrupt one and
            // reads the block again from the store.
            mapped.map(|b| want.slice(b)).map_err(|e| {
                warn!(worker = %w.id, path = %want.block.path, index = want.block.index, error = %e, "short-circuit read failed");
                Miss::Absent
            })
        })
    }
}

/// Any worker over gRPC. With `cached_only`, one that lacks the block says so
/// rather than reading it through from the store.
pub struct Remote<'a> {
    pub worker: &'a WorkerInfo,
    pub clients: &'a Clients,
    pub down: &'a Down,
    pub cached_only: bool,
}

impl BlockSource for Remote<'_> {
    fn kind(&self) -> SourceKind {
        SourceKind::Worker
    }

    fn read<'a>(&'a self, want: &'a Want<'a>) -> BoxFuture<'a, Result<Bytes, Miss>> {
        Box::pin(async move {
            let w = self.worker;
            let failed = |s: tonic::Status| {
                if s.code() == tonic::Code::NotFound && self.cached_only {
                    return Miss::Absent;
                }
                if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) {
                    self.down.mark(&w.id);
                }
                Miss::Failed(format!("read_block on {}: {}", w.id, s.message()))
            };
            let req = ReadBlockRequest {
                block: Some(want.block.clone()),
                offset: want.at,
                length: if want.whole() { 0 } else { want.len },
                cached_only: self.cached_only,
            };
            let mut stream = self.clients.get(&w.address)?.read_block(req).await.map_err(failed)?.into_inner();
            let mut chunks = Vec::new();
            while let Some(chunk) = stream.message().await.map_err(failed)? {
                chunks.push(chunk.data);
            }
            let data = if chunks.len() == 1 {
                chunks.pop().expect("one chunk")
            } else {
                let mut b = BytesMut::with_capacity(want.len as usize);
                for c in chunks {
                    b.extend_from_slice(&c);
                }
                b.freeze()
            };
            if data.len() as u64 != want.len {
                return Err(Miss::Failed(format!("worker {} sent {} bytes for {} wanted", w.id, data.len(), want.len)));
            }
            Ok(data)
        })
    }
}

/// The dataset's stores for reads that no worker serves, opened on first use
/// and again when the dataset's mounts change.
pub struct DirectStores(Mutex<(DatasetInfo, Option<Arc<Stores>>)>);

impl DirectStores {
    pub fn new(dataset: DatasetInfo) -> DirectStores {
        DirectStores(Mutex::new((dataset, None)))
    }

    /// Take the dataset's record as the master sends it now: changed mounts
    /// (another store, rotated options) are opened anew.
    pub fn set_dataset(&self, info: &DatasetInfo) {
        let mut held = self.0.lock().expect("stores lock");
        if info.id == held.0.id && info.spec_revision != held.0.spec_revision {
            *held = (info.clone(), None);
        }
    }

    fn open(&self) -> Result<Arc<Stores>, CoreError> {
        let mut held = self.0.lock().expect("stores lock");
        if let Some(s) = &held.1 {
            return Ok(s.clone());
        }
        // Secrets are redacted for clients: the stores' credentials then come
        // from this host's environment (or they are public).
        let stores = Arc::new(Stores::open(Dataset::from_info(&held.0)?, true)?);
        held.1 = Some(stores.clone());
        Ok(stores)
    }
}

impl BlockSource for DirectStores {
    fn kind(&self) -> SourceKind {
        SourceKind::Store
    }

    fn read<'a>(&'a self, want: &'a Want<'a>) -> BoxFuture<'a, Result<Bytes, Miss>> {
        Box::pin(async move {
            let stores = self.open().map_err(|e| {
                warn!(error = %e, "cannot open the under-store for direct reads");
                Miss::Absent
            })?;
            let path = &want.block.path;
            stores.read(path, want.start + want.at, want.len, want.version).await.map_err(|e| {
                if e.is_not_found() {
                    Miss::Final(ReadError::NotFound(path.clone()))
                } else if matches!(e, CoreError::Changed { .. } | CoreError::ShortRead { .. }) {
                    Miss::Final(ReadError::Changed { path: path.clone(), detail: e.to_string() })
                } else {
                    Miss::Failed(e.to_string())
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_dataset(root: &std::path::Path) -> DatasetInfo {
        use shoal_proto::master::{DatasetSpec, MountSpec};
        let mount = MountSpec { uri: format!("file://{}", root.display()), path: "/".into(), ..Default::default() };
        DatasetInfo {
            id: 3,
            spec: Some(DatasetSpec { name: "d".into(), mounts: vec![mount], ..Default::default() }),
            ..Default::default()
        }
    }

    fn want<'a>(r: &'a BlockRef, size: u64, start: u64, block_len: u64, at: u64, len: u64) -> Want<'a> {
        Want { block: r, start, block_len, at, len, version: Version::listed(size, 0, 0) }
    }

    #[tokio::test]
    async fn the_store_reads_the_wanted_range_and_says_gone_or_changed_as_final() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("f"), &bytes).unwrap();
        let stores = DirectStores::new(dir_dataset(dir.path()));
        let r = BlockRef { path: "/f".into(), ..Default::default() };
        // Block 1 of 4096-byte blocks, 100 bytes at 10 in it.
        let got = stores.read(&want(&r, 10_000, 4096, 4096, 10, 100)).await.unwrap();
        assert_eq!(&got[..], &bytes[4106..4206]);
        let whole = stores.read(&want(&r, 10_000, 8192, 1808, 0, 1808)).await.unwrap();
        assert_eq!(&whole[..], &bytes[8192..]);

        let changed = stores.read(&want(&r, 9_999, 0, 4096, 0, 10)).await;
        assert!(matches!(changed, Err(Miss::Final(ReadError::Changed { .. }))), "{changed:?}");
        let gone = BlockRef { path: "/nope".into(), ..Default::default() };
        let gone = stores.read(&want(&gone, 10, 0, 10, 0, 10)).await;
        assert!(matches!(gone, Err(Miss::Final(ReadError::NotFound(_)))), "{gone:?}");
    }

    #[tokio::test]
    async fn an_unreachable_worker_fails_the_read_and_is_skipped_for_a_while() {
        // A port nothing listens on: connection refused is Unavailable.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap().to_string();
        drop(free);
        let w = WorkerInfo { id: "w1".into(), address: addr, ..Default::default() };
        let (clients, down) = (Clients::default(), Down::default());
        let r = BlockRef { path: "/f".into(), ..Default::default() };
        let source = Remote { worker: &w, clients: &clients, down: &down, cached_only: true };
        let got = source.read(&want(&r, 10, 0, 10, 0, 10)).await;
        assert!(matches!(got, Err(Miss::Failed(_))), "{got:?}");
        assert!(down.is_down("w1") && !down.is_down("w2"));
    }
}
