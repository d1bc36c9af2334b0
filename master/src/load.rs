//! Prewarm (load) jobs: enumerate a dataset's files under the given paths, plan
//! block → worker placement by rendezvous hashing, drive the workers' `CacheBlock`
//! with bounded concurrency, and persist progress so a restarted master resumes
//! the job after the files it had finished (files load in path order; the
//! persisted cursor names the last of the finished prefix). Blocks the
//! location map already shows on their target are skipped, and a worker answers `already_cached` without touching the store, so a rerun
//! never fetches twice. A job ends `Completed` only if every block was confirmed
//! cached by a worker; otherwise it is `Failed` with the failing paths listed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use shoal_core::{ids, placement, BlockId};
use shoal_proto::master::{DatasetInfo, FileKind, Inode, LoadCursor, LoadFailure, LoadJob, LoadSpec, LoadState};
use shoal_proto::worker::{BlockRef, CacheBlockRequest};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::{MasterError, Result};
use crate::membership::Membership;
use crate::meta::MetaStore;

const MAX_LISTED_FAILURES: usize = 1000;
const PERSIST_EVERY: Duration = Duration::from_secs(1);

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

struct JobHandle {
    job: Mutex<LoadJob>,
    cancel: CancellationToken,
    /// Set with `cancel` when this master stops leading: the job stops without
    /// a record (the next leader resumes it).
    handed_over: AtomicBool,
    /// Cancelled when the job has finished (whatever its state).
    done: CancellationToken,
}

impl JobHandle {
    fn new(job: LoadJob) -> Arc<Self> {
        Arc::new(JobHandle {
            job: Mutex::new(job),
            cancel: CancellationToken::new(),
            handed_over: AtomicBool::new(false),
            done: CancellationToken::new(),
        })
    }
}

/// One selected file and its dataset path.
pub struct FileTask {
    pub path: String,
    pub inode: Inode,
}

/// One file's progress in a running job.
#[derive(Default)]
struct FileProgress {
    /// Blocks not yet answered.
    left: u64,
    blocks: u64,
    bytes: u64,
    already: u64,
    /// The first error of its blocks.
    error: Option<String>,
}

/// What became of one block of a job.
enum Outcome {
    /// Cached by as many workers as the policy asks.
    Loaded,
    /// Cached before the job asked.
    Already,
    /// Read, but no worker had room to keep it: the cache is smaller than the
    /// data (or full of pinned data). Not a failed file: the job's verdict
    /// counts what is cached at its end.
    NotKept,
    Failed(String),
}

impl Outcome {
    /// The `result` label of `shoal_master_prewarm_blocks_total`.
    fn label(&self) -> &'static str {
        match self {
            Outcome::Loaded => "loaded",
            Outcome::Already => "already_cached",
            Outcome::NotKept => "not_kept",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// The finished prefix of a job's files (in path order).
struct Cursor {
    /// The first file not known finished.
    next: usize,
    counts: LoadCursor,
}

impl Cursor {
    /// Take in the files finished at the prefix's end; true if it moved.
    fn advance(&mut self, progress: &[FileProgress], files: &[FileTask]) -> bool {
        let start = self.next;
        while let Some(p) = progress.get(self.next).filter(|p| p.left == 0) {
            let c = &mut self.counts;
            c.files += 1;
            if p.error.is_some() {
                c.files_failed += 1;
            } else {
                c.files_done += 1;
            }
            (c.bytes_done, c.blocks_done, c.blocks_already_cached) =
                (c.bytes_done + p.bytes, c.blocks_done + p.blocks, c.blocks_already_cached + p.already);
            c.done_through = files[self.next].path.clone();
            self.next += 1;
        }
        self.next != start
    }
}

/// The master's load jobs.
pub struct Loads {
    meta: Arc<MetaStore>,
    members: Arc<Membership>,
    jobs: Mutex<HashMap<String, Arc<JobHandle>>>,
    pool: Arc<crate::pool::WorkerPool>,
    resumed: AtomicBool,
    /// Raised each time this master stops leading: a resume begun before
    /// starts nothing after.
    leadership: AtomicU64,
    /// How long workers take to report new blocks (a few heartbeats).
    report_lag: Duration,
}

impl Loads {
    pub fn new(
        meta: Arc<MetaStore>,
        members: Arc<Membership>,
        pool: Arc<crate::pool::WorkerPool>,
        heartbeat: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            meta,
            members,
            jobs: Mutex::new(HashMap::new()),
            pool,
            resumed: AtomicBool::new(false),
            leadership: AtomicU64::new(0),
            report_lag: (heartbeat * 3).clamp(Duration::from_secs(1), Duration::from_secs(30)),
        })
    }

    /// Count the job's blocks the location map shows on `copies` workers,
    /// waiting (bounded by a few heartbeats) for the workers' reports to catch
    /// up with `want`: every copy's report, not only the first one's.
    async fn count_cached(&self, files: &[FileTask], bs: u64, want: u64, copies: usize) -> u64 {
        let blocks: Vec<BlockId> = files
            .iter()
            .flat_map(|f| (0..ids::block_count(f.inode.size, bs) as u32).map(|i| BlockId::new(f.inode.file_id, i)))
            .collect();
        let deadline = Instant::now() + self.report_lag;
        loop {
            let cached = self.members.count_cached(blocks.iter().copied(), copies);
            if cached >= want || Instant::now() >= deadline {
                return cached;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn enumerate(&self, info: &DatasetInfo, spec: &LoadSpec) -> Result<Vec<FileTask>> {
        select_files(&self.meta, info, &spec.paths, &spec.include)
    }
}

/// Files selected by paths and a glob: each path resolved (a missing one is an
/// error), directories walked, the `include` glob applied, duplicates removed.
pub fn select_files(meta: &MetaStore, info: &DatasetInfo, paths: &[String], include: &str) -> Result<Vec<FileTask>> {
    {
        let name = info.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let pattern = match include {
            "" => None,
            g => Some(
                glob::Pattern::new(g)
                    .map_err(|e| MasterError::InvalidArgument(format!("invalid --include glob {g:?}: {e}")))?,
            ),
        };
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        let paths: Vec<String> = if paths.is_empty() { vec!["/".into()] } else { paths.to_vec() };
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for p in &paths {
            let clean = format!("/{}", p.trim_matches('/'));
            let inode = meta
                .resolve(info.id, &clean)?
                .ok_or_else(|| MasterError::EntryNotFound { dataset: name.clone(), what: format!("path {p:?}") })?;
            let mut push = |path: String, inode: Inode| {
                if pattern.as_ref().is_some_and(|g| !g.matches_with(&path, opts)) {
                    return;
                }
                if seen.insert(inode.ino) {
                    out.push(FileTask { path, inode });
                }
            };
            if inode.kind == FileKind::Directory as i32 {
                meta.walk_files(info.id, &inode, if clean == "/" { "" } else { &clean }, &mut push)?;
            } else {
                push(clean.clone(), inode);
            }
        }
        // Path order: a job's progress is then one cursor (see LoadCursor).
        out.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

impl Loads {
    /// Validate and start a job; returns it with its totals.
    pub async fn start(self: &Arc<Self>, info: DatasetInfo, mut spec: LoadSpec) -> Result<LoadJob> {
        spec.replicas = spec.replicas.max(1);
        if spec.parallel == 0 {
            spec.parallel = 16;
        }
        let files = self.enumerate(&info, &spec)?;
        let id = format!("{}-{}", spec.dataset, unix_ms());
        let job = LoadJob {
            id: id.clone(),
            spec: Some(spec),
            state: LoadState::Running as i32,
            started_unix_ms: unix_ms(),
            ..Default::default()
        };
        self.meta.put_job(&job).await?;
        let handle = JobHandle::new(job);
        self.jobs.lock().expect("jobs lock").insert(id, handle.clone());
        let snapshot = Self::totals(&handle, &info, &files);
        tokio::spawn(self.clone().run(handle, info, files, 0));
        Ok(snapshot)
    }

    fn totals(handle: &JobHandle, info: &DatasetInfo, files: &[FileTask]) -> LoadJob {
        let bs = shoal_core::dataset::block_size(info);
        let mut job = handle.job.lock().expect("job lock");
        job.files_total = files.len() as u64;
        job.bytes_total = files.iter().map(|f| f.inode.size).sum();
        job.blocks_total = files.iter().map(|f| ids::block_count(f.inode.size, bs)).sum();
        job.clone()
    }

    /// Resume jobs that were running when the master stopped. Waits (bounded) for
    /// workers to re-register so cached blocks are recognised.
    pub fn resume(self: &Arc<Self>, datasets: impl Fn(&str) -> Option<DatasetInfo> + Send + 'static) {
        if self.resumed.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        let leadership = self.leadership.load(Ordering::SeqCst);
        tokio::spawn(async move {
            let pending: Vec<LoadJob> = match this.meta.list_jobs() {
                Ok(j) => j.into_iter().filter(|j| j.state == LoadState::Running as i32).collect(),
                Err(e) => return warn!(error = %e, "cannot read load jobs"),
            };
            if pending.is_empty() {
                return;
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while this.members.live_workers().is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // One more round of heartbeats brings the workers' block reports in.
            tokio::time::sleep(Duration::from_secs(1)).await;
            for job in pending {
                if this.leadership.load(Ordering::SeqCst) != leadership {
                    return info!("not resuming load jobs: this master no longer leads");
                }
                let spec = job.spec.clone().unwrap_or_default();
                let handle = JobHandle::new(job.clone());
                this.jobs.lock().expect("jobs lock").insert(job.id.clone(), handle.clone());
                let Some(info) = datasets(&spec.dataset) else {
                    this.finish(&handle, LoadState::Failed, format!("dataset {:?} no longer exists", spec.dataset))
                        .await;
                    continue;
                };
                match this.enumerate(&info, &spec) {
                    Ok(files) => {
                        let skip = {
                            let mut j = handle.job.lock().expect("job lock");
                            let c = j.cursor.clone().unwrap_or_default();
                            let skip = if c.done_through.is_empty() {
                                0
                            } else {
                                files.partition_point(|f| f.path.as_str() <= c.done_through.as_str())
                            };
                            j.files_done = c.files_done;
                            j.bytes_done = c.bytes_done;
                            j.blocks_done = c.blocks_done;
                            j.blocks_already_cached = c.blocks_already_cached;
                            j.files_failed = c.files_failed;
                            j.failures.retain(|f| f.path.as_str() <= c.done_through.as_str());
                            skip
                        };
                        info!(job = %job.id, files = files.len(), skipped = skip, "resuming load job");
                        Self::totals(&handle, &info, &files);
                        tokio::spawn(this.clone().run(handle, info, files, skip));
                    }
                    Err(e) => this.finish(&handle, LoadState::Failed, e.to_string()).await,
                }
            }
        });
    }

    async fn finish(&self, handle: &JobHandle, state: LoadState, message: String) {
        let job = {
            let mut j = handle.job.lock().expect("job lock");
            j.state = state as i32;
            j.finished_unix_ms = unix_ms();
            j.message = message;
            j.clone()
        };
        if let Err(e) = self.meta.put_job(&job).await {
            warn!(job = %job.id, error = %e, "cannot persist load job");
        }
        handle.done.cancel();
        info!(job = %job.id, state = ?state, files_done = job.files_done, files_failed = job.files_failed, "load job finished");
    }

    /// Load `files` but the first `skip` (finished before a restart).
    async fn run(self: Arc<Self>, handle: Arc<JobHandle>, info: DatasetInfo, files: Vec<FileTask>, skip: usize) {
        crate::metrics::PREWARM_RUNNING.inc();
        self.run_inner(&handle, info, files, skip).await;
        crate::metrics::PREWARM_RUNNING.dec();
    }

    async fn run_inner(
        self: &Arc<Self>,
        handle: &Arc<JobHandle>,
        info: DatasetInfo,
        files: Vec<FileTask>,
        skip: usize,
    ) {
        let spec = handle.job.lock().expect("job lock").spec.clone().unwrap_or_default();
        let bs = shoal_core::dataset::block_size(&info);
        let name = info.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let workers = self.members.placement_workers();
        if workers.is_empty() && !files.is_empty() {
            return self.finish(handle, LoadState::Failed, "no live worker to load into".into()).await;
        }
        let addr: HashMap<String, String> = workers.iter().map(|w| (w.id.clone(), w.address.clone())).collect();
        // Each file's progress; the finished ones before a restart count as done.
        let mut progress: Vec<FileProgress> = files
            .iter()
            .enumerate()
            .map(|(fi, f)| FileProgress {
                left: if fi < skip { 0 } else { ids::block_count(f.inode.size, bs) },
                ..Default::default()
            })
            .collect();
        // A fresh job starts from nothing; a resumed one from its persisted prefix.
        let counts = match skip {
            0 => LoadCursor::default(),
            _ => handle.job.lock().expect("job lock").cursor.clone().unwrap_or_default(),
        };
        let mut cursor = Cursor { next: skip, counts };
        // 0-byte files have nothing to fetch: done at once.
        {
            let mut j = handle.job.lock().expect("job lock");
            j.files_done += progress[skip..].iter().filter(|p| p.left == 0).count() as u64;
            cursor.advance(&progress, &files);
            j.cursor = Some(cursor.counts.clone());
        }
        let tasks: Vec<(usize, u32)> = files
            .iter()
            .enumerate()
            .skip(skip)
            .flat_map(|(fi, f)| (0..ids::block_count(f.inode.size, bs) as u32).map(move |i| (fi, i)))
            .collect();
        let replicas = spec.replicas.max(1) as usize;
        let files = Arc::new(files);
        let ring = Arc::new(placement::Ring::new(workers.iter().map(|w| w.id.as_str())));
        let addr = Arc::new(addr);
        let dataset_id = info.id;
        let mut results = futures::stream::iter(tasks)
            .map(|(fi, index)| {
                let (this, files, ring, addr, name) =
                    (self.clone(), files.clone(), ring.clone(), addr.clone(), name.clone());
                async move {
                    let f = &files[fi];
                    let id = BlockId::new(f.inode.file_id, index);
                    let len = ids::block_range(f.inode.size, bs, index).map(|r| r.1).unwrap_or(0);
                    let ranked = ring.rank(id);
                    let (holders, mut peers): (Vec<String>, Vec<String>) =
                        this.members.holder_addresses(id).into_iter().unzip();
                    let r = shoal_core::dataset::block_ref(&name, dataset_id, bs, &f.path, &f.inode, index);
                    let mut placed = holders.iter().filter(|h| ranked.contains(&h.as_str())).count().min(replicas);
                    let mut already = placed == replicas;
                    let mut last_err = None;
                    // A worker that read the block but had no room to keep it
                    // (its cache is full of pinned or hotter data).
                    let mut not_kept = false;
                    // Targets in rank order; a failing worker passes its turn to the next.
                    for wid in ranked.iter() {
                        if placed >= replicas {
                            break;
                        }
                        if holders.iter().any(|h| h == wid) {
                            continue;
                        }
                        let Some(a) = addr.get(*wid) else { continue };
                        let Some(mut c) = this.pool.client(a) else { continue };
                        // A copy the block already has (or the first replica
                        // just made) is copied: the store is read once per block.
                        let req = CacheBlockRequest { block: Some(r.clone()), peers: peers.clone() };
                        match c.cache_block(req).await {
                            Ok(resp) => {
                                placed += 1;
                                peers.push(a.clone());
                                already |= resp.into_inner().already_cached;
                            }
                            Err(s) if s.code() == tonic::Code::ResourceExhausted => not_kept = true,
                            Err(s) => {
                                let permanent =
                                    matches!(s.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument);
                                last_err = Some(s.message().to_string());
                                if permanent {
                                    break;
                                }
                            }
                        }
                    }
                    let outcome = if placed >= replicas.min(ring.len()).max(1) {
                        if already {
                            Outcome::Already
                        } else {
                            Outcome::Loaded
                        }
                    } else if not_kept {
                        Outcome::NotKept
                    } else {
                        Outcome::Failed(last_err.unwrap_or_else(|| "no worker could cache the block".into()))
                    };
                    (fi, len, outcome)
                }
            })
            .buffer_unordered(spec.parallel.max(1) as usize);

        let mut last_persist = Instant::now();
        let mut cancelled = false;
        loop {
            let next = tokio::select! {
                _ = handle.cancel.cancelled() => { cancelled = true; break; }
                n = results.next() => n,
            };
            let Some((fi, len, outcome)) = next else { break };
            let ok = matches!(outcome, Outcome::Loaded | Outcome::Already);
            crate::metrics::PREWARM_BLOCKS.with_label_values(&[spec.dataset.as_str(), outcome.label()]).inc();
            if ok {
                crate::metrics::PREWARM_BYTES.with_label_values(&[spec.dataset.as_str()]).inc_by(len);
            }
            let persist = {
                let mut j = handle.job.lock().expect("job lock");
                let slot = &mut progress[fi];
                slot.left -= 1;
                if ok {
                    j.blocks_done += 1;
                    j.bytes_done += len;
                    slot.blocks += 1;
                    slot.bytes += len;
                    if matches!(outcome, Outcome::Already) {
                        j.blocks_already_cached += 1;
                        slot.already += 1;
                    }
                } else if let Outcome::Failed(e) = outcome {
                    slot.error.get_or_insert(e);
                }
                if slot.left == 0 {
                    match &slot.error {
                        None => j.files_done += 1,
                        Some(e) => {
                            j.files_failed += 1;
                            warn!(job = %j.id, path = %files[fi].path, error = %e, "file failed to load");
                            if j.failures.len() < MAX_LISTED_FAILURES {
                                j.failures.push(LoadFailure { path: files[fi].path.clone(), error: e.clone() });
                            }
                        }
                    }
                    if cursor.advance(&progress, &files) {
                        j.cursor = Some(cursor.counts.clone());
                    }
                }
                (last_persist.elapsed() > PERSIST_EVERY).then(|| {
                    last_persist = Instant::now();
                    j.clone()
                })
            };
            if let Some(snapshot) = persist {
                if let Err(e) = self.meta.put_job(&snapshot).await {
                    warn!(error = %e, "cannot persist load progress");
                }
            }
        }
        drop(results);
        if cancelled && handle.handed_over.load(Ordering::SeqCst) {
            handle.done.cancel();
            return info!(job = %handle.job.lock().expect("job lock").id, "load job left to the next leader");
        }
        // The honest count: what the location map shows cached now, not only what
        // workers confirmed while writing (a full tier may have evicted some since).
        let done = handle.job.lock().expect("job lock").blocks_done;
        let at_end =
            if cancelled { 0 } else { self.count_cached(&files, bs, done, replicas.min(ring.len()).max(1)).await };
        let (state, msg) = {
            let mut j = handle.job.lock().expect("job lock");
            j.blocks_cached_at_end = at_end;
            if cancelled {
                (LoadState::Cancelled, "cancelled".to_string())
            } else if j.files_failed > 0 {
                (LoadState::Failed, format!("{} of {} files failed to load", j.files_failed, j.files_total))
            } else if at_end < j.blocks_total {
                (
                    LoadState::Failed,
                    format!(
                        "only {at_end} of {} blocks are cached at the end: {} were evicted again (is the cache smaller than the data?)",
                        j.blocks_total,
                        j.blocks_total - at_end
                    ),
                )
            } else {
                (
                    LoadState::Completed,
                    format!(
                        "{} of {} blocks confirmed cached by workers ({} were already cached)",
                        j.blocks_done, j.blocks_total, j.blocks_already_cached
                    ),
                )
            }
        };
        self.finish(handle, state, msg).await;
    }

    /// This master no longer leads: stop every job without recording an end
    /// (the new leader resumes them from their persisted progress), and resume
    /// again should it lead once more.
    pub fn step_down(&self) {
        self.leadership.fetch_add(1, Ordering::SeqCst);
        for (_, h) in self.jobs.lock().expect("jobs lock").drain() {
            h.handed_over.store(true, Ordering::SeqCst);
            h.cancel.cancel();
        }
        self.resumed.store(false, Ordering::SeqCst);
    }

    pub fn get(&self, id: &str) -> Result<LoadJob> {
        if let Some(h) = self.jobs.lock().expect("jobs lock").get(id) {
            return Ok(h.job.lock().expect("job lock").clone());
        }
        self.meta.list_jobs()?.into_iter().find(|j| j.id == id).ok_or_else(|| MasterError::JobNotFound(id.to_string()))
    }

    pub fn list(&self) -> Result<Vec<LoadJob>> {
        let live = self.jobs.lock().expect("jobs lock");
        let mut all: Vec<LoadJob> = self
            .meta
            .list_jobs()?
            .into_iter()
            .map(|j| live.get(&j.id).map(|h| h.job.lock().expect("job lock").clone()).unwrap_or(j))
            .collect();
        all.sort_by_key(|j| j.started_unix_ms);
        Ok(all)
    }

    /// Resolves when the job finishes (at once if it is not running here).
    pub fn finished(&self, id: &str) -> CancellationToken {
        match self.jobs.lock().expect("jobs lock").get(id) {
            Some(h) => h.done.clone(),
            None => {
                let t = CancellationToken::new();
                t.cancel();
                t
            }
        }
    }

    pub fn cancel(&self, id: &str) -> Result<LoadJob> {
        let h = self.jobs.lock().expect("jobs lock").get(id).cloned();
        match h {
            Some(h) => {
                h.cancel.cancel();
                Ok(h.job.lock().expect("job lock").clone())
            }
            None => self.get(id),
        }
    }
}

/// The signed reference of block `index` of the file at `path`.
pub fn block_ref(info: &DatasetInfo, bs: u64, path: &str, inode: &Inode, index: u32) -> BlockRef {
    let name = info.spec.as_ref().map(|s| s.name.as_str()).unwrap_or_default();
    shoal_core::dataset::block_ref(name, info.id, bs, path, inode, index)
}
