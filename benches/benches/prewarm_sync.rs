//! Prewarm throughput versus a raw parallel download of the same bytes from the
//! same S3 store (moto on loopback), in one run, and metadata sync of a
//! 100,000-file directory tree (first sync and an unchanged re-sync).
//!
//! cargo bench -p shoal-benches --bench prewarm_sync [-- --quick]
//! (needs python3 with moto; `.ci/run` installs it)

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_benches::{content, Servers};
use shoal_core::{StoreSpec, UnderStore};
use shoal_proto::master::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn s3_options(endpoint: &str) -> BTreeMap<String, String> {
    [("endpoint", endpoint), ("access_key_id", "bench"), ("secret_access_key", "bench"), ("region", "us-east-1")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn sync_bench(dir: &Path, files: usize) -> (f64, f64) {
    let src = Path::new("/var/tmp/shoal-bench/meta").join(files.to_string());
    if !src.join(".complete").exists() {
        for i in 0..files {
            let d = src.join(format!("d{:03}", i % 100));
            if i < 100 {
                std::fs::create_dir_all(&d).unwrap();
            }
            std::fs::write(d.join(format!("f{i:07}")), i.to_le_bytes()).unwrap();
        }
        std::fs::write(src.join(".complete"), b"").unwrap();
    }
    let servers = Servers::start(dir, "64MiB", "64MiB").await.unwrap();
    let mut m = shoal_fuse::master_client(&servers.master_addr).unwrap();
    let spec = DatasetSpec {
        name: "meta".into(),
        mount: Some(MountSpec {
            uri: src.to_string_lossy().into_owned(),
            options: Default::default(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let t = Instant::now();
    let info = m.create_dataset(CreateDatasetRequest { spec: Some(spec), sync: true }).await.unwrap().into_inner();
    let first = t.elapsed().as_secs_f64();
    assert_eq!(info.file_count as usize, files + 1);
    let t = Instant::now();
    let mut s =
        m.sync_dataset(SyncDatasetRequest { name: "meta".into(), mounts: Vec::new() }).await.unwrap().into_inner();
    while let Some(p) = s.message().await.unwrap() {
        if p.done {
            assert_eq!(p.added + p.changed + p.deleted, 0);
        }
    }
    let resync = t.elapsed().as_secs_f64();
    servers.shutdown();
    (first, resync)
}

async fn prewarm_bench(dir: &Path, objects: usize, size: usize, parallel: usize) -> (f64, f64) {
    let port = free_port();
    let mut moto = Command::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with moto (pip install 'moto[server]')");
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Bucket and objects, written through OpenDAL.
    let _ = std::process::Command::new("curl")
        .args(["-s", "-X", "PUT", &format!("{endpoint}/bench")])
        .stdout(Stdio::null())
        .status();
    let opts = s3_options(&endpoint);
    let spec = StoreSpec::parse("s3://bench/data", &opts).unwrap();
    let op = shoal_core::store::operator(&spec).unwrap();
    for i in 0..objects {
        op.write(&format!("o{i:04}"), content(i as u64, size)).await.unwrap();
    }
    // Raw parallel download: every object whole, `parallel` at a time.
    let store = UnderStore::open(&spec).unwrap();
    let t = Instant::now();
    let total: usize = futures::stream::iter(0..objects)
        .map(|i| {
            let store = store.clone();
            async move { store.read(&format!("/o{i:04}"), 0, size as u64, None).await.unwrap().len() }
        })
        .buffer_unordered(parallel)
        .fold(0, |a, n| async move { a + n })
        .await;
    let raw = total as f64 / t.elapsed().as_secs_f64() / 1e6;

    // shoal prewarm of the same bytes into a worker's MEM tier.
    let servers = Servers::start(dir, "4GiB", "4GiB").await.unwrap();
    let mut m = shoal_fuse::master_client(&servers.master_addr).unwrap();
    let ds = DatasetSpec {
        name: "pw".into(),
        mount: Some(MountSpec {
            uri: "s3://bench/data".into(),
            options: opts.into_iter().collect(),
            ..Default::default()
        }),
        cache: Some(CachePolicy { block_size: 8 << 20, replicas: 1, ..Default::default() }),
        ..Default::default()
    };
    m.create_dataset(CreateDatasetRequest { spec: Some(ds), sync: true }).await.unwrap();
    let (secs, bytes) = shoal_benches::prewarm(&servers.master_addr, "pw", &[], parallel as u32).await.unwrap();
    let shoal = bytes as f64 / secs / 1e6;
    servers.shutdown();
    let _ = moto.kill();
    let _ = moto.wait();
    (raw, shoal)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let base = Path::new("/var/tmp/shoal-bench").join(format!("pw-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let files = if quick { 10_000 } else { 100_000 };
    let (first, resync) = rt.block_on(sync_bench(&base.join("sync"), files));
    let (objects, size) = if quick { (32, 4 << 20) } else { (96, 4 << 20) };
    let (raw, shoal) = rt.block_on(prewarm_bench(&base.join("prewarm"), objects, size, 16));
    let _ = std::fs::remove_dir_all(&base);
    println!("\n| workload | result |");
    println!("|---|---:|");
    println!(
        "| metadata sync, {files} files in 100 dirs (local store), first sync | {first:.2} s ({:.0} files/s) |",
        files as f64 / first
    );
    println!("| metadata re-sync, nothing changed | {resync:.2} s ({:.0} files/s) |", files as f64 / resync);
    println!("| raw parallel download, {objects} x {} MiB from S3 (moto), 16 at a time | {raw:.0} MB/s |", size >> 20);
    println!("| shoal prewarm of the same objects, --parallel 16 | {shoal:.0} MB/s |");
    println!("| prewarm / raw download | {:.2}x |", shoal / raw);
}
