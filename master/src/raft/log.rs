//! The Raft log and vote on disk: a RocksDB of its own (`<data_dir>/raft`),
//! apart from the state it replicates. Entries are keyed by big-endian index
//! (`logs`), the vote, the committed id and the last purged id live in
//! `store`. Every write is synced before it is acknowledged: an entry a
//! majority acknowledged survives any crash of a majority's machines.

// openraft's traits fix the error type (`StorageError`, large); helpers return it too.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Entry, TypeConfig};

const CF_LOGS: &str = "logs";
const CF_STORE: &str = "store";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

type StorageResult<T> = Result<T, StorageError<u64>>;

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The log store; cheap to clone (the log reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

impl LogStore {
    pub fn open(dir: &Path) -> Result<LogStore, rocksdb::Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = [CF_LOGS, CF_STORE].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        Ok(LogStore { db: Arc::new(DB::open_cf_descriptors(&opts, dir, cfs)?) })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    fn synced() -> WriteOptions {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        wo
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        let v = self.db.get_cf(self.cf(CF_STORE), key).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        match v {
            None => Ok(None),
            Some(v) => {
                serde_json::from_slice(&v).map(Some).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))
            }
        }
    }

    fn put<T: Serialize>(&self, subject: ErrorSubject<u64>, key: &[u8], value: &T) -> StorageResult<()> {
        let v = serde_json::to_vec(value).map_err(|e| io_err(subject.clone(), ErrorVerb::Write, e))?;
        self.db.put_cf_opt(self.cf(CF_STORE), key, v, &Self::synced()).map_err(|e| io_err(subject, ErrorVerb::Write, e))
    }

    fn last_entry(&self) -> StorageResult<Option<LogId<u64>>> {
        let mut it = self.db.iterator_cf(self.cf(CF_LOGS), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (_, v) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                let entry: Entry =
                    serde_json::from_slice(&v).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(self.cf(CF_LOGS), IteratorMode::From(&index_key(start), Direction::Forward));
        for item in iter {
            let (k, v) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let index =
                u64::from_be_bytes(k.as_ref().try_into().map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?);
            if !range.contains(&index) {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<u64>> = self.get(KEY_PURGED)?;
        let last_log_id = self.last_entry()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        self.put(ErrorSubject::Vote, KEY_VOTE, vote)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        self.get(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        self.put(ErrorSubject::Store, KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        Ok(self.get::<Option<LogId<u64>>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        for entry in entries {
            let v = serde_json::to_vec(&entry).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            batch.put_cf(self.cf(CF_LOGS), index_key(entry.log_id.index), v);
        }
        let result = self.db.write_opt(batch, &Self::synced());
        let err = result.as_ref().err().map(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(err.map_or(Ok(()), Err));
        result.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOGS), index_key(log_id.index), index_key(u64::MAX));
        batch.delete_cf(self.cf(CF_LOGS), index_key(u64::MAX));
        self.db.write_opt(batch, &Self::synced()).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        // The purge point first: a crash in between leaves entries that are
        // never read again, never a hole the state says is there.
        self.put(ErrorSubject::Logs, KEY_PURGED, &log_id)?;
        self.db
            .delete_range_cf(self.cf(CF_LOGS), index_key(0), index_key(log_id.index + 1))
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(term: u64, index: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(term, 1), index), payload: EntryPayload::Blank }
    }

    #[tokio::test]
    async fn the_log_survives_a_reopen_and_truncates_and_purges_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        for i in 1..=10 {
            let mut b = WriteBatch::default();
            b.put_cf(log.cf(CF_LOGS), index_key(i), serde_json::to_vec(&entry(1, i)).unwrap());
            log.db.write(b).unwrap();
        }
        log.save_vote(&Vote::new(3, 2)).await.unwrap();
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 8)).await.unwrap();
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 3)).await.unwrap();
        drop(log);
        let mut log = LogStore::open(dir.path()).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(7));
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        let got: Vec<u64> = log.try_get_log_entries(2..6).await.unwrap().iter().map(|e| e.log_id.index).collect();
        assert_eq!(got, [4, 5]);
    }
}
