//! The peer benchmark's workloads, each against a directory (a mount or the local
//! copy) or straight against the store with parallel GETs: a shuffled data-loader
//! epoch, sequential streaming, random 256 KiB reads (fio where installed) and a
//! metadata walk. Every run stops taking new work at its deadline and reports what
//! it finished, so a slow system costs bounded time and still gets a rate.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{StreamExt, TryStreamExt};

use crate::data::Object;

/// What one run did.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Files, reads or entries finished.
    pub ops: u64,
    pub bytes: u64,
    pub secs: f64,
    /// Latency of each op.
    pub lat: Vec<Duration>,
    /// Whether the run finished everything before its deadline.
    pub complete: bool,
}

impl Sample {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.secs.max(1e-9) / 1e6
    }
    /// The sum of per-stream results `(bytes, latencies, finished)`, over the
    /// time since `start`.
    fn merge<E>(
        start: Instant,
        parts: impl IntoIterator<Item = Result<(u64, Vec<Duration>, bool), E>>,
    ) -> Result<Sample, E> {
        let mut out = Sample { complete: true, ..Default::default() };
        for part in parts {
            let (bytes, lat, done) = part?;
            out.bytes += bytes;
            out.ops += lat.len() as u64;
            out.lat.extend(lat);
            out.complete &= done;
        }
        out.secs = start.elapsed().as_secs_f64();
        Ok(out)
    }

    /// Latency quantile `q` (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.lat.is_empty() {
            return f64::NAN;
        }
        let mut v = self.lat.clone();
        v.sort_unstable();
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        v[i].as_secs_f64() * 1e3
    }
}

/// A deterministic shuffle of `0..n`.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut x = seed | 1;
    for i in (1..n).rev() {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        order.swap(i, (x >> 33) as usize % (i + 1));
    }
    order
}

/// The files of `done` (a finished prefix of an epoch's order) in a new order:
/// the second epoch.
pub fn reshuffled(done: &[usize], seed: u64) -> Vec<usize> {
    shuffled(done.len(), seed).into_iter().map(|i| done[i]).collect()
}

/// `readers` threads take files in `order` and read each whole, as a data loader's
/// workers do. Returns the sample and how many files of `order` were read.
pub fn epoch(root: &Path, files: &[Object], order: &[usize], readers: usize, limit: Duration) -> Result<Sample> {
    let next = AtomicUsize::new(0);
    let lats = Mutex::new(Vec::with_capacity(order.len()));
    let bytes = AtomicUsize::new(0);
    let start = Instant::now();
    let deadline = start + limit;
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..readers)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut buf = Vec::with_capacity(256 << 10);
                    let mut mine = Vec::new();
                    while Instant::now() < deadline {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&f) = order.get(i) else { break };
                        let t = Instant::now();
                        let path = root.join(&files[f].key);
                        buf.clear();
                        std::fs::File::open(&path)
                            .and_then(|mut h| h.read_to_end(&mut buf))
                            .with_context(|| format!("reading {}", path.display()))?;
                        mine.push(t.elapsed());
                        if buf.len() as u64 != files[f].size {
                            bail!("{}: read {} bytes, expected {}", path.display(), buf.len(), files[f].size);
                        }
                        bytes.fetch_add(buf.len(), Ordering::Relaxed);
                    }
                    lats.lock().unwrap().extend(mine);
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| h.join().expect("reader panicked"))
    })?;
    let lat = lats.into_inner().unwrap();
    Ok(Sample {
        ops: lat.len() as u64,
        bytes: bytes.into_inner() as u64,
        secs: start.elapsed().as_secs_f64(),
        complete: lat.len() == order.len(),
        lat,
    })
}

/// The size of one read of the sequential workloads.
const SEQ_READ: usize = 1 << 20;

/// One thread per file streams it front to back in 1 MiB reads.
pub fn sequential(root: &Path, files: &[Object], limit: Duration) -> Result<Sample> {
    let start = Instant::now();
    let deadline = start + limit;
    let results: Vec<Result<(u64, Vec<Duration>, bool)>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|o| {
                s.spawn(move || -> Result<(u64, Vec<Duration>, bool)> {
                    let path = root.join(&o.key);
                    let mut f = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                    let mut buf = vec![0u8; SEQ_READ];
                    let (mut total, mut lat) = (0u64, Vec::new());
                    loop {
                        if Instant::now() > deadline {
                            return Ok((total, lat, false));
                        }
                        let t = Instant::now();
                        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
                        if n == 0 {
                            break;
                        }
                        lat.push(t.elapsed());
                        total += n as u64;
                    }
                    if total != o.size {
                        bail!("{}: read {total} bytes, expected {}", path.display(), o.size);
                    }
                    Ok((total, lat, true))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("reader panicked")).collect()
    });
    Sample::merge(start, results)
}

/// Reads each random-read job makes: together a quarter of `files`' bytes, so a
/// cold run reads mostly data it has not read before, and a second run with the
/// same seed reads exactly the same ranges.
pub fn random_reads_per_job(files: &[Object], jobs: usize) -> u64 {
    (files.iter().map(|o| o.size).sum::<u64>() / RANDOM_BS / 4 / jobs as u64).max(1)
}

const RANDOM_BS: u64 = 256 << 10;

/// The ranges random-read job `job` reads, `(file, offset)`, in order: the same
/// for every system, given the seed.
fn random_ranges(files: &[Object], seed: u64, job: usize) -> impl Iterator<Item = (usize, u64)> + '_ {
    let mut x = seed ^ ((job as u64 + 1) * 0x9E37_79B9);
    std::iter::repeat_with(move || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let f = (x >> 40) as usize % files.len();
        (f, ((x >> 8) % (files[f].size / RANDOM_BS)) * RANDOM_BS)
    })
}

/// Random 256 KiB reads, `jobs` at a time, [`random_reads_per_job`] each, stopping
/// at `limit`: with fio when it is installed, else with `pread` from threads.
pub fn random(root: &Path, files: &[Object], jobs: usize, limit: Duration, seed: u64) -> Result<Sample> {
    if which("fio") {
        return fio_random(root, files, jobs, limit, seed);
    }
    let per_job = random_reads_per_job(files, jobs);
    let start = Instant::now();
    let deadline = start + limit;
    let results: Vec<Result<(u64, Vec<Duration>, bool)>> = std::thread::scope(|s| {
        (0..jobs)
            .map(|j| {
                s.spawn(move || -> Result<(u64, Vec<Duration>, bool)> {
                    use std::os::unix::fs::FileExt;
                    let handles = files
                        .iter()
                        .map(|o| std::fs::File::open(root.join(&o.key)))
                        .collect::<std::io::Result<Vec<_>>>()?;
                    let mut buf = vec![0u8; RANDOM_BS as usize];
                    let mut lat = Vec::new();
                    for (f, off) in random_ranges(files, seed, j) {
                        if Instant::now() >= deadline || lat.len() as u64 >= per_job {
                            break;
                        }
                        let t = Instant::now();
                        handles[f].read_exact_at(&mut buf, off)?;
                        lat.push(t.elapsed());
                    }
                    let n = lat.len() as u64;
                    Ok((n * RANDOM_BS, lat, n == per_job))
                })
            })
            .map(|h| h.join().expect("reader panicked"))
            .collect()
    });
    Sample::merge(start, results)
}

fn fio_random(root: &Path, files: &[Object], jobs: usize, limit: Duration, seed: u64) -> Result<Sample> {
    let names: Vec<String> = files.iter().map(|o| root.join(&o.key).to_string_lossy().replace(':', "\\:")).collect();
    let out = std::process::Command::new("fio")
        .args([
            "--name=rand256k",
            "--rw=randread",
            "--bs=256k",
            "--ioengine=psync",
            "--invalidate=0",
            "--readonly",
            "--allow_file_create=0",
            "--group_reporting",
            "--output-format=json",
            &format!("--io_size={}", random_reads_per_job(files, jobs) * RANDOM_BS),
            &format!("--numjobs={jobs}"),
            &format!("--runtime={}ms", limit.as_millis().max(1000)),
            &format!("--randseed={seed}"),
            &format!("--filename={}", names.join(":")),
        ])
        .output()
        .context("running fio")?;
    if !out.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("parsing fio's JSON")?;
    let read = &v["jobs"][0]["read"];
    let pct = |k: &str| Duration::from_nanos(read["clat_ns"]["percentile"][k].as_u64().unwrap_or(0));
    let ios = read["total_ios"].as_u64().unwrap_or(0);
    let complete = ios >= random_reads_per_job(files, jobs) * jobs as u64;
    // fio reports quantiles, not every latency: 99 copies of p50 and 2 of p99 put
    // each at its rank for `Sample::quantile_ms`.
    let mut lat = vec![pct("50.000000"); 99];
    lat.extend([pct("99.000000"); 2]);
    Ok(Sample {
        ops: ios,
        bytes: read["io_bytes"].as_u64().unwrap_or(0),
        secs: read["runtime"].as_u64().unwrap_or(1) as f64 / 1e3,
        lat,
        complete,
    })
}

/// `find` + `stat`: walk the tree under `root`, one `lstat` per entry, until
/// done or `limit` has passed.
pub fn walk(root: &Path, limit: Duration) -> Result<Sample> {
    let start = Instant::now();
    let mut out = Sample { complete: true, ..Default::default() };
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            if start.elapsed() > limit {
                out.complete = false;
                out.secs = start.elapsed().as_secs_f64();
                return Ok(out);
            }
            let path = e?.path();
            let t = Instant::now();
            let md = std::fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
            out.lat.push(t.elapsed());
            out.ops += 1;
            if md.is_dir() {
                stack.push(path);
            } else {
                out.bytes += md.len();
            }
        }
    }
    out.secs = start.elapsed().as_secs_f64();
    Ok(out)
}

pub fn which(tool: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false)
}

/// The same workloads straight against the store: what a data loader that reads
/// objects with parallel GETs (no file system) gets.
pub mod direct {
    use super::*;
    use opendal::Operator;

    pub async fn epoch(
        op: &Operator,
        files: &[Object],
        order: &[usize],
        readers: usize,
        limit: Duration,
    ) -> Result<Sample> {
        let start = Instant::now();
        let deadline = start + limit;
        let done: Vec<(Duration, u64)> = futures::stream::iter(order.iter().copied())
            .take_while(|_| futures::future::ready(Instant::now() < deadline))
            .map(|f| async move {
                let t = Instant::now();
                // A ranged GET of the known size: one request, as a data loader
                // holding the object list makes it.
                let data = op
                    .read_with(&files[f].key)
                    .range(0..files[f].size)
                    .await
                    .with_context(|| format!("GET {}", files[f].key))?;
                if data.len() as u64 != files[f].size {
                    bail!("GET {}: {} bytes, expected {}", files[f].key, data.len(), files[f].size);
                }
                Ok((t.elapsed(), data.len() as u64))
            })
            .buffer_unordered(readers)
            .try_collect()
            .await?;
        Ok(Sample {
            ops: done.len() as u64,
            bytes: done.iter().map(|d| d.1).sum(),
            secs: start.elapsed().as_secs_f64(),
            complete: done.len() == order.len(),
            lat: done.into_iter().map(|d| d.0).collect(),
        })
    }

    /// Each file streamed by parallel 8 MiB range GETs (4 in flight per file).
    /// A read is 1 MiB of the stream, as the file systems' readers take it: its
    /// latency is the wait for that MiB, however many chunks the body came in.
    pub async fn sequential(op: &Operator, files: &[Object], limit: Duration) -> Result<Sample> {
        let start = Instant::now();
        let deadline = start + limit;
        let per_file = futures::future::try_join_all(files.iter().map(|o| async move {
            let reader = op.reader_with(&o.key).chunk(8 << 20).concurrent(4).await?;
            let mut stream = reader.into_bytes_stream(0..o.size).await?;
            let (mut total, mut pending, mut lat, mut t) = (0u64, 0usize, Vec::new(), Instant::now());
            while let Some(b) = stream.try_next().await? {
                total += b.len() as u64;
                pending += b.len();
                while pending >= SEQ_READ || (pending > 0 && total == o.size) {
                    pending = pending.saturating_sub(SEQ_READ);
                    lat.push(t.elapsed());
                    t = Instant::now();
                }
                if Instant::now() > deadline {
                    return Ok::<_, anyhow::Error>((total, lat, false));
                }
            }
            Ok((total, lat, total == o.size))
        }))
        .await?;
        Sample::merge(start, per_file.into_iter().map(Ok::<_, anyhow::Error>))
    }

    /// Random 256 KiB range GETs, `jobs` in flight, as many as [`super::random`].
    pub async fn random(op: &Operator, files: &[Object], jobs: usize, limit: Duration, seed: u64) -> Result<Sample> {
        const BS: u64 = RANDOM_BS;
        let start = Instant::now();
        let deadline = start + limit;
        let reads = random_reads_per_job(files, jobs);
        let per_job = futures::future::try_join_all((0..jobs).map(|j| async move {
            let mut lat = Vec::new();
            for (f, off) in random_ranges(files, seed, j) {
                if Instant::now() >= deadline || lat.len() as u64 >= reads {
                    break;
                }
                let o = &files[f];
                let t = Instant::now();
                let b = op.read_with(&o.key).range(off..off + BS).await?;
                if b.len() as u64 != BS {
                    bail!("GET {} range {off}: {} bytes", o.key, b.len());
                }
                lat.push(t.elapsed());
            }
            let n = lat.len() as u64;
            Ok::<_, anyhow::Error>((n * BS, lat, n == reads))
        }))
        .await?;
        Sample::merge(start, per_job.into_iter().map(Ok::<_, anyhow::Error>))
    }

    /// A recursive LIST of `prefix`: the object store's `find`.
    pub async fn walk(op: &Operator, prefix: &str) -> Result<Sample> {
        let start = Instant::now();
        let mut out = Sample { complete: true, ..Default::default() };
        let mut lister = op.lister_with(prefix).recursive(true).await?;
        let mut t = Instant::now();
        while let Some(e) = lister.try_next().await? {
            out.lat.push(t.elapsed());
            t = Instant::now();
            out.ops += 1;
            out.bytes += e.metadata().content_length();
        }
        out.secs = start.elapsed().as_secs_f64();
        Ok(out)
    }

    /// Download every byte of `files`, `parallel` requests in flight: whole objects
    /// up to 8 MiB, 8 MiB ranges of larger ones.
    pub async fn download(op: &Operator, files: &[Object], parallel: usize) -> Result<Sample> {
        const CHUNK: u64 = 8 << 20;
        let ranges: Vec<(&str, u64, u64)> = files
            .iter()
            .flat_map(|o| {
                (0..o.size.div_ceil(CHUNK)).map(move |c| (o.key.as_str(), c * CHUNK, (c * CHUNK + CHUNK).min(o.size)))
            })
            .collect();
        let start = Instant::now();
        let lat: Vec<(Duration, u64)> = futures::stream::iter(ranges)
            .map(|(key, a, b)| async move {
                let t = Instant::now();
                let data = op.read_with(key).range(a..b).await?;
                if data.len() as u64 != b - a {
                    bail!("GET {key} {a}..{b}: {} bytes", data.len());
                }
                Ok((t.elapsed(), b - a))
            })
            .buffer_unordered(parallel)
            .try_collect()
            .await?;
        Ok(Sample {
            ops: files.len() as u64,
            bytes: lat.iter().map(|l| l.1).sum(),
            secs: start.elapsed().as_secs_f64(),
            lat: lat.into_iter().map(|l| l.0).collect(),
            complete: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{generate, Spec};

    #[test]
    fn shuffle_is_a_deterministic_permutation() {
        let a = shuffled(1000, 7);
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_eq!(a, shuffled(1000, 7));
        assert_ne!(a, shuffled(1000, 8));
    }

    #[test]
    fn quantiles() {
        let s = Sample { lat: (1..=100).map(Duration::from_millis).collect(), ..Default::default() };
        assert_eq!(s.quantile_ms(0.5).round(), 51.0);
        assert_eq!(s.quantile_ms(0.99), 99.0);
        assert!(Sample::default().quantile_ms(0.5).is_nan());
    }

    /// The workloads read what the dataset holds, and notice when a file is short.
    #[test]
    fn workloads_read_every_byte_and_catch_short_files() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec { seed: 1, images: 40, image_dirs: 4, shards: 2, shard_size: 2 << 20 };
        let ds = generate(dir.path(), &spec).unwrap();
        let root = ds.local();
        let order = shuffled(ds.images.len(), 3);
        let e = epoch(&root, &ds.images, &order, 4, Duration::from_secs(600)).unwrap();
        assert!(e.complete);
        assert_eq!((e.ops, e.bytes), (40, Dataset::bytes(&ds.images)));
        let s = sequential(&root, &ds.shards, Duration::from_secs(600)).unwrap();
        assert_eq!((s.bytes, s.ops), (4 << 20, 4));
        let w = walk(&root, Duration::from_secs(600)).unwrap();
        // 2 top directories, 4 image directories, 40 images, 2 shards.
        assert_eq!((w.ops, w.bytes), (48, Dataset::bytes(&ds.images) + (4 << 20)));
        let r = random(&root, &ds.shards, 2, Duration::from_secs(600), 5).unwrap();
        if which("fio") {
            assert!(r.quantile_ms(0.5) <= r.quantile_ms(0.99));
        }
        // 4 MiB of shards: a quarter is 4 reads, 2 per job.
        assert!(r.complete && r.ops == 4 && r.bytes == r.ops * (256 << 10), "{r:?}");
        // A truncated file is an error, not a fast result.
        let victim = root.join(&ds.images[order[0]].key);
        std::fs::write(&victim, b"short").unwrap();
        let err = epoch(&root, &ds.images, &order, 2, Duration::from_secs(600)).unwrap_err();
        assert!(format!("{err:#}").contains("expected"), "{err:#}");
    }

    use crate::data::Dataset;
}
