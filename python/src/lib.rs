//! `shoal._native`: the Python client's Rust core. A [`Client`] owns a tokio
//! runtime and opens [`Dataset`]s, which read by path through the mount's own
//! block path ([`shoal_fuse::files`]): short-circuit maps from a worker on this
//! node, gRPC from the others, the store when no worker answers. No FUSE, no
//! privileges. Every call releases the GIL while it waits, so Python threads
//! read in parallel.
//!
//! Errors are `OSError`s with the errno a mount would give (`ENOENT`,
//! `ENOTDIR`, `EISDIR`, `EINVAL`, `ENAMETOOLONG`, `EIO`), so Python raises
//! `FileNotFoundError` and friends. Objects are bound to the process that made
//! them: after a `fork` (a `DataLoader`'s workers) the child must make its own
//! (the `shoal` package does it per process); one used across a fork raises,
//! and is never dropped there (its runtime's threads do not exist in the child).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyConnectionError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use shoal_fuse::files::{self, FileError, Found, OpenOptions};
use shoal_fuse::order::PlanConfig;
use shoal_fuse::MountError;

/// A value that belongs to the process that made it: never used nor dropped in
/// a forked child.
struct ForkBound<T> {
    value: Option<T>,
    pid: u32,
}

impl<T> ForkBound<T> {
    fn new(value: T) -> Self {
        ForkBound { value: Some(value), pid: std::process::id() }
    }

    fn get(&self) -> PyResult<&T> {
        if std::process::id() != self.pid {
            return Err(PyRuntimeError::new_err(
                "this shoal object was made before a fork: make a new shoal.Client in this process (shoal.open_dataset does)",
            ));
        }
        Ok(self.value.as_ref().expect("present until dropped"))
    }
}

impl<T> Drop for ForkBound<T> {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            std::mem::forget(self.value.take());
        }
    }
}

fn os_error(e: FileError) -> PyErr {
    PyOSError::new_err((e.errno(), e.to_string()))
}

fn mount_error(e: MountError) -> PyErr {
    match e {
        MountError::BadMaster(_) => PyValueError::new_err(e.to_string()),
        MountError::NoDataset(_) => PyOSError::new_err((libc::ENOENT, e.to_string())),
        _ => PyConnectionError::new_err(e.to_string()),
    }
}

fn parse_size(s: &str) -> PyResult<u64> {
    shoal_core::size::parse_size(s).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// A connection to a shoal master.
#[pyclass(module = "shoal._native", frozen)]
struct Client {
    rt: Arc<ForkBound<tokio::runtime::Runtime>>,
    opts: OpenOptions,
}

#[pymethods]
impl Client {
    /// `master`: host:port (default `$SHOAL_MASTER`, else 127.0.0.1:7700);
    /// `node`: this machine's node name (default `$SHOAL_NODE`, else the host
    /// name); `cache_size`: bytes of blocks kept in this process; `threads`:
    /// the runtime's threads. `$SHOAL_TOKEN_FILE` and `$SHOAL_TLS_CA` apply as
    /// for the CLI.
    #[new]
    #[pyo3(signature = (master=None, node=None, cache_size="256MiB", metadata_cache="256MiB", threads=4, refresh_interval=10.0))]
    fn new(
        master: Option<String>,
        node: Option<String>,
        cache_size: &str,
        metadata_cache: &str,
        threads: usize,
        refresh_interval: f64,
    ) -> PyResult<Self> {
        let master =
            master.or_else(|| std::env::var("SHOAL_MASTER").ok()).unwrap_or_else(|| "127.0.0.1:7700".to_string());
        let node = node.or_else(|| std::env::var("SHOAL_NODE").ok()).unwrap_or_else(shoal_core::host_name);
        if !(0.0..=1e9).contains(&refresh_interval) {
            return Err(PyValueError::new_err("refresh_interval must be seconds >= 0"));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("shoal-client")
            .enable_all()
            .build()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start the client's runtime: {e}")))?;
        let opts = OpenOptions {
            master,
            node,
            cache_bytes: parse_size(cache_size)?,
            metadata_budget: parse_size(metadata_cache)?,
            refresh: Duration::from_secs_f64(refresh_interval),
        };
        Ok(Client { rt: Arc::new(ForkBound::new(rt)), opts })
    }

    /// Open dataset `name` (`FileNotFoundError` if the master has none).
    fn dataset(&self, py: Python<'_>, name: &str) -> PyResult<Dataset> {
        let rt = self.rt.get()?;
        let opts = self.opts.clone();
        let name = name.to_string();
        let ds = py.detach(|| rt.block_on(files::Dataset::open(&name, &opts))).map_err(mount_error)?;
        Ok(Dataset { inner: ForkBound::new(Arc::new(ds)), _rt: self.rt.clone() })
    }

    #[getter]
    fn master(&self) -> String {
        self.opts.master.clone()
    }

    #[getter]
    fn node(&self) -> String {
        self.opts.node.clone()
    }
}

/// One dataset, read by path (`/train/x.jpg`).
#[pyclass(module = "shoal._native", frozen)]
struct Dataset {
    inner: ForkBound<Arc<files::Dataset>>,
    /// Keeps the runtime the dataset's tasks run on.
    _rt: Arc<ForkBound<tokio::runtime::Runtime>>,
}

fn stat_dict<'py>(py: Python<'py>, f: &Found) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", if f.path == "/" { "/".to_string() } else { f.path.clone() })?;
    d.set_item("size", f.entry.size)?;
    d.set_item("type", if f.entry.is_dir { "directory" } else { "file" })?;
    d.set_item("mtime", f.entry.mtime_sec as f64 + f64::from(f.entry.mtime_nsec) / 1e9)?;
    d.set_item("ino", f.entry.ino)?;
    Ok(d)
}

#[pymethods]
impl Dataset {
    #[getter]
    fn name(&self) -> PyResult<String> {
        Ok(self.inner.get()?.name.clone())
    }

    /// `{name, size, type, mtime, ino}` of the entry at `path`.
    fn stat<'py>(&self, py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyDict>> {
        let ds = self.inner.get()?.clone();
        let f = py.detach(|| ds.stat(path)).map_err(os_error)?;
        stat_dict(py, &f)
    }

    /// The entries of directory `path` as stat dicts, sorted by name.
    fn listdir<'py>(&self, py: Python<'py>, path: &str) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let ds = self.inner.get()?.clone();
        let entries = py.detach(|| ds.list(path)).map_err(os_error)?;
        entries.iter().map(|f| stat_dict(py, f)).collect()
    }

    /// Every file below `path` as `(path, size)`, sorted by path.
    fn walk(&self, py: Python<'_>, path: &str) -> PyResult<Vec<(String, u64)>> {
        let ds = self.inner.get()?.clone();
        let files = py.detach(|| ds.walk(path)).map_err(os_error)?;
        Ok(files.into_iter().map(|f| (f.path, f.entry.size)).collect())
    }

    /// Bytes `[offset, offset + size)` of file `path` (to its end without `size`).
    #[pyo3(signature = (path, offset=0, size=None))]
    fn read<'py>(&self, py: Python<'py>, path: &str, offset: u64, size: Option<u64>) -> PyResult<Bound<'py, PyBytes>> {
        let ds = self.inner.get()?.clone();
        let data = py.detach(|| ds.read(path, offset, size)).map_err(os_error)?;
        Ok(PyBytes::new(py, &data))
    }

    /// Prefetch these files, in this order, ahead of the plan's cursor (which
    /// the caller moves with `Plan.advance` as it reads).
    #[pyo3(signature = (paths, window_files=None, window_bytes=None, parallel=None))]
    fn plan(
        &self,
        py: Python<'_>,
        paths: Vec<String>,
        window_files: Option<usize>,
        window_bytes: Option<u64>,
        parallel: Option<usize>,
    ) -> PyResult<Plan> {
        let ds = self.inner.get()?.clone();
        let d = PlanConfig::default();
        let config = PlanConfig {
            window_files: window_files.unwrap_or(d.window_files),
            window_bytes: window_bytes.unwrap_or(d.window_bytes),
            parallel: parallel.unwrap_or(d.parallel),
        };
        let plan = py.detach(|| ds.plan(&paths, config)).map_err(os_error)?;
        Ok(Plan { inner: ForkBound::new(plan), _ds: ForkBound::new(ds), _rt: self._rt.clone() })
    }

    /// Where this process's blocks came from: `{short_circuit, worker, store, failures}`.
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.inner.get()?.reader.counters;
        let d = PyDict::new(py);
        d.set_item("short_circuit", c.short_circuit.load(Relaxed))?;
        d.set_item("worker", c.worker.load(Relaxed))?;
        d.set_item("store", c.store.load(Relaxed))?;
        d.set_item("failures", c.failures.load(Relaxed))?;
        Ok(d)
    }
}

/// An order being prefetched (see `Dataset.plan`). Dropped or cancelled, it stops.
#[pyclass(module = "shoal._native", frozen)]
struct Plan {
    inner: ForkBound<Arc<shoal_fuse::order::Plan>>,
    /// The dataset it reads through stays open while the plan lives.
    _ds: ForkBound<Arc<files::Dataset>>,
    _rt: Arc<ForkBound<tokio::runtime::Runtime>>,
}

#[pymethods]
impl Plan {
    /// The reader has reached position `pos` of the order.
    fn advance(&self, pos: usize) -> PyResult<()> {
        self.inner.get()?.advance(pos);
        Ok(())
    }

    fn cancel(&self) -> PyResult<()> {
        self.inner.get()?.cancel();
        Ok(())
    }

    #[getter]
    fn finished(&self) -> PyResult<bool> {
        Ok(self.inner.get()?.is_finished())
    }

    #[getter]
    fn cursor(&self) -> PyResult<usize> {
        Ok(self.inner.get()?.cursor())
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.inner.get()?.len())
    }

    /// Blocks `{loaded, cached, failed}` and files `{files_done, files_skipped}` so far.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.inner.get()?.stats;
        let d = PyDict::new(py);
        d.set_item("loaded", s.loaded.load(Relaxed))?;
        d.set_item("cached", s.cached.load(Relaxed))?;
        d.set_item("failed", s.failed.load(Relaxed))?;
        d.set_item("files_done", s.files_done.load(Relaxed))?;
        d.set_item("files_skipped", s.files_skipped.load(Relaxed))?;
        Ok(d)
    }
}

#[pymodule]
#[pyo3(name = "_native")]
fn shoal_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Client>()?;
    m.add_class::<Dataset>()?;
    m.add_class::<Plan>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
