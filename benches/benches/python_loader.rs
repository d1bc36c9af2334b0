//! Python data loaders, as ML users run them: Debian's `/usr/bin/python3` with
//! PyTorch, a `torch.utils.data.DataLoader(num_workers=8)` over an ImageFolder
//! (and the plain 8-thread `open().read()` loop), through a shoal mount and
//! through shoal's Python client, against the local copy, in one run. Cold, the
//! client's shuffled epoch with order-aware prefetch is compared with a raw
//! parallel download of the same objects from the same remote-like store (the
//! `peers` benchmark's s3s-fs behind a 5 ms, 2 Gbit/s link).
//!
//! ```text
//! cargo build --release -p shoal-py      # the extension module the client imports
//! cargo bench -p shoal-benches --bench python_loader [-- --quick] [--scale F] [--no-write]
//! ```
//!
//! Root only (network namespace, FUSE, page-cache drops). Results go to
//! `benches/RESULTS.md` between the `python` markers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_benches::data::{self, Dataset};
use shoal_benches::remote::{self, Network, RemoteStore, ACCESS_KEY, BUCKET, SECRET_KEY};
use shoal_benches::report::{self, Metric, Phase, Role, Row, Workload};
use shoal_benches::workload::{direct, Sample};
use shoal_benches::{drop_page_cache, Cluster};

const PYTHON: &str = "/usr/bin/python3";
const READERS: usize = 8;

fn s3_options(endpoint: &str) -> std::collections::HashMap<String, String> {
    [("endpoint", endpoint), ("access_key_id", ACCESS_KEY), ("secret_access_key", SECRET_KEY), ("region", "us-east-1")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The `shoal` package staged under `dir`: `python/shoal/*.py` and the release
/// extension module.
fn stage_package(dir: &Path) -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let lib = target.join("release/libshoal_native.so");
    if !lib.exists() {
        bail!("{} is missing: run `cargo build --release -p shoal-py` first", lib.display());
    }
    let pkg = dir.join("shoal");
    std::fs::create_dir_all(&pkg)?;
    for f in std::fs::read_dir(root.join("python/shoal"))? {
        let f = f?.path();
        if f.extension().is_some_and(|e| e == "py") {
            std::fs::copy(&f, pkg.join(f.file_name().unwrap()))?;
        }
    }
    std::fs::copy(lib, pkg.join("_native.abi3.so"))?;
    Ok(dir.to_path_buf())
}

#[derive(Clone)]
struct Py {
    pkg: PathBuf,
    script: PathBuf,
    master: String,
    max_secs: f64,
}

impl Py {
    /// Run `epochs` epochs of the loader over `source`; one sample per epoch.
    fn epochs(&self, source: &str, loader: &str, order: bool, epochs: usize) -> Result<Vec<Sample>> {
        let mut cmd = Command::new(PYTHON);
        cmd.arg(&self.script).arg(source).args(["--loader", loader, "--workers", &READERS.to_string()]);
        cmd.args(["--epochs", &epochs.to_string(), "--max-secs", &self.max_secs.to_string()]);
        if order {
            cmd.arg("--order");
        }
        let out = cmd
            .env("PYTHONPATH", &self.pkg)
            .env("SHOAL_MASTER", &self.master)
            .env("SHOAL_NODE", "bench-node")
            .output()
            .context("running /usr/bin/python3 (apt-get install python3-torch python3-torchvision)")?;
        if !out.status.success() {
            bail!("{source} {loader}: {}", String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)?;
                Ok(Sample {
                    ops: v["files"].as_u64().unwrap_or(0),
                    bytes: v["bytes"].as_u64().unwrap_or(0),
                    secs: v["secs"].as_f64().unwrap_or(0.0),
                    lat: Vec::new(),
                    complete: v["complete"].as_bool().unwrap_or(false),
                })
            })
            .collect()
    }
}

fn push(w: &mut Workload, system: &str, role: Role, phase: Phase, sample: Sample) {
    eprintln!("  {:<40} {:<9} {:>8.0} files/s", system, format!("{phase:?}"), sample.ops_per_sec());
    w.rows.push(Row { system: system.into(), role, phase, sample });
}

fn cluster(rt: &tokio::runtime::Runtime, dir: &Path, endpoint: &str, total: u64) -> Result<Cluster> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mount = shoal_proto::master::MountSpec {
        uri: format!("s3://{BUCKET}"),
        options: s3_options(endpoint),
        ..Default::default()
    };
    let mem = format!("{}MiB", (total >> 20) + (total >> 23) + 64);
    rt.block_on(Cluster::start_over(dir, mount, &mem, &format!("{}MiB", (total >> 20) * 2 + 64), 8 << 20))
}

fn main() -> Result<()> {
    if let Some(done) = remote::delay_proxy_main() {
        return done;
    }
    let (mut quick, mut scale, mut write) = (false, None, true);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => {}
            "--quick" => quick = true,
            "--no-write" => write = false,
            "--scale" => scale = Some(it.next().context("--scale needs a value")?.parse::<f64>()?),
            other => bail!("unknown argument {other:?} (see the top of benches/benches/python_loader.rs)"),
        }
    }
    let scale = scale.unwrap_or(if quick { 0.05 } else { 0.25 });
    let started = Instant::now();
    let base = PathBuf::from("/var/tmp/shoal-python-bench");
    if shoal_fuse::is_mounted(&base.join("shoal/mnt")) {
        let _ = Command::new("umount").arg("-l").arg(base.join("shoal/mnt")).status();
    }
    let spec = data::Spec::scaled(42, scale);
    let ds = data::generate(&base.join(format!("data-{scale}")), &spec)?;
    let images = Dataset::bytes(&ds.images);
    let net = Network { delay: Duration::from_millis(5), mbit: 2000 };
    let store = RemoteStore::start(&ds.store_root, &net, &remote::s3_server_binary()?, &std::env::current_exe()?)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let op = {
        let spec = shoal_core::StoreSpec::parse(
            &format!("s3://{BUCKET}"),
            &s3_options(&store.endpoint).into_iter().collect(),
        )?;
        shoal_core::store::operator(&spec)?
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = rt.block_on(op.stat(&ds.images[0].key)) {
        if Instant::now() > deadline {
            return Err(e).context("the benchmark store does not answer");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let py = Py {
        pkg: stage_package(&base.join("py"))?,
        script: Path::new(env!("CARGO_MANIFEST_DIR")).join("python/epoch.py"),
        master: String::new(),
        max_secs: if quick { 10.0 } else { 40.0 },
    };
    let n = ds.images.len();
    let mib = images >> 20;
    let mut dl = Workload::new(
        &format!("PyTorch DataLoader (8 workers) over an ImageFolder: {n} files ({mib} MiB), shuffled"),
        "python-dataloader",
        Metric::Ops,
        "files/s",
    );
    let mut threads = Workload::new(
        &format!("8 Python threads, open().read() of {n} files, shuffled"),
        "python-threads",
        Metric::Ops,
        "files/s",
    );
    let mut cold = Workload::new(
        &format!("Cold shuffled epoch from the store ({n} files, {mib} MiB), against a raw parallel download"),
        "python-cold",
        Metric::Bytes,
        "files/s",
    );

    // The local copy: a first pass after a page-cache drop, then a second.
    let local = format!("dir:{}", ds.local().join("images").display());
    eprintln!("local copy");
    for (loader, w) in [("dataloader", &mut dl), ("threads", &mut threads)] {
        drop_page_cache();
        let s = py.epochs(&local, loader, false, 2)?;
        push(w, "local copy", Role::Local, Phase::Cold, s[0].clone());
        push(w, "local copy", Role::Local, Phase::Warm, s[1].clone());
    }

    // The raw parallel download the cold epoch is held to.
    eprintln!("raw parallel download");
    let raw = rt.block_on(direct::download(&op, &ds.images, 64))?;
    push(&mut cold, "raw parallel download (64 GETs)", Role::Peer, Phase::Cold, raw);

    // shoal, every cache empty: the client's cold epoch with and without the order.
    for order in [false, true] {
        let c = cluster(&rt, &base.join("shoal"), &store.endpoint, images)?;
        let py = Py { master: c.master_addr.clone(), ..py.clone() };
        drop_page_cache();
        let name = if order { "shoal client, order-aware prefetch" } else { "shoal client, no prefetch" };
        eprintln!("{name}");
        let s = py.epochs("shoal:bench:/images", "dataloader", order, 1)?;
        push(&mut cold, name, Role::Other, Phase::Cold, s[0].clone());
        if order {
            // The workers hold the dataset now (the plan cached it; a prewarm
            // job confirms every block is there). Drop the page cache: prewarmed.
            let (_, _) = rt.block_on(c.prewarm(&["/images"], 32))?;
            let mnt = format!("dir:{}", c.mountpoint.join("images").display());
            for (loader, w) in [("dataloader", &mut dl), ("threads", &mut threads)] {
                drop_page_cache();
                let s = py.epochs(&mnt, loader, false, 2)?;
                push(w, "shoal mount", Role::Other, Phase::Prewarmed, s[0].clone());
                push(w, "shoal mount", Role::Other, Phase::Warm, s[1].clone());
                drop_page_cache();
                let s = py.epochs("shoal:bench:/images", loader, false, 2)?;
                push(w, "shoal client", Role::Other, Phase::Prewarmed, s[0].clone());
                push(w, "shoal client", Role::Other, Phase::Warm, s[1].clone());
            }
        }
        c.shutdown();
    }
    drop(store);
    let _ = std::fs::remove_dir_all(base.join("shoal"));

    let args: String = std::env::args().skip(1).filter(|x| x != "--bench").fold(String::new(), |s, x| s + " " + &x);
    let cmd = if args.is_empty() {
        "cargo bench -p shoal-benches --bench python_loader".to_string()
    } else {
        format!("cargo bench -p shoal-benches --bench python_loader --{args}")
    };
    let mut md = format!(
        "```\ncargo build --release -p shoal-py\n{cmd}\n```\n\nRun on {} ({:.0} s in all). Store: s3s-fs in its own \
         network namespace, 5 ms each way, 2000 Mbit/s. Dataset: {n} files of 64–256 KiB ({mib} MiB) in {} class \
         directories. Python {} with Debian's PyTorch; every file read as PIL reads it (buffered open() and \
         read()), nothing decoded. Runs stop at {:.0} s. Cold local rows and prewarmed rows follow a page-cache drop \
         (prewarmed: with the dataset in the worker's tiers, and compared with the cold local copy); warm rows \
         are second passes. The Python client's \
         worker is on its node (short-circuit reads).\n\n",
        today(),
        started.elapsed().as_secs_f64(),
        spec.image_dirs,
        python_version(),
        py.max_secs,
    );
    for w in [&dl, &threads, &cold] {
        md.push_str(&w.markdown());
        md.push('\n');
    }
    println!("{md}");
    if write {
        report::replace_section(&Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md"), "python", md.trim_end())?;
    }
    Ok(())
}

fn python_version() -> String {
    Command::new(PYTHON)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().trim_start_matches("Python ").to_string())
        .unwrap_or_default()
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
