//! Store faults seen through a mount: an S3 server (moto) behind a proxy that
//! resets connections, stalls them, or fails a few requests. Reads retry with
//! backoff and time out; after the retries are spent a read fails with `EIO`,
//! never hangs; a store that fails a few times is read correctly; once the store
//! is back, every byte read is right.

use crate::common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const PASS: u8 = 0;
const RESET: u8 = 1;
const STALL: u8 = 2;

/// A TCP proxy in front of the S3 server whose behaviour a test switches.
struct FaultProxy {
    addr: String,
    mode: Arc<AtomicU8>,
    /// Requests (client writes) still to fail before passing again.
    fail_budget: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl FaultProxy {
    fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let proxy = FaultProxy {
            addr,
            mode: Arc::new(AtomicU8::new(PASS)),
            fail_budget: Arc::new(AtomicU64::new(0)),
            connections: Arc::new(AtomicU64::new(0)),
            held: Arc::new(Mutex::new(Vec::new())),
        };
        let (mode, budget, conns, held) =
            (proxy.mode.clone(), proxy.fail_budget.clone(), proxy.connections.clone(), proxy.held.clone());
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                conns.fetch_add(1, Ordering::Relaxed);
                let (mode, budget, held, upstream) = (mode.clone(), budget.clone(), held.clone(), upstream.clone());
                std::thread::spawn(move || serve(client, &upstream, &mode, &budget, &held));
            }
        });
        proxy
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

/// Relay one connection, checking the mode before each chunk the client sends.
fn serve(client: TcpStream, upstream: &str, mode: &AtomicU8, budget: &AtomicU64, held: &Mutex<Vec<TcpStream>>) {
    let Ok(server) = TcpStream::connect(upstream) else { return };
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (mut s_read, mut c_write) = (server, client);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut s_read, &mut c_write);
        let _ = c_write.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match c_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let failing = budget.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1)).is_ok();
        match mode.load(Ordering::SeqCst) {
            _ if failing => break,
            RESET => break,
            STALL => {
                // Keep the connection open and never answer.
                held.lock().unwrap().push(c_read);
                return;
            }
            _ => {
                if s_write.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = c_read.shutdown(Shutdown::Both);
    let _ = s_write.shutdown(Shutdown::Both);
}

fn read_errno(path: &Path) -> (Result<Vec<u8>, i32>, Duration) {
    let started = Instant::now();
    let r = std::fs::read(path).map_err(|e| e.raw_os_error().unwrap_or(-1));
    (r, started.elapsed())
}

#[test]
fn store_errors_and_stalls_end_in_eio_after_the_retries_and_never_hang() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s3 = S3Server::start(&root.join("moto.log"));
    s3.create_bucket("data");
    let files: Vec<(String, Vec<u8>)> =
        (0..6).map(|i| (format!("f{i}.bin"), content(40 + i, 150_000 + i as usize * 1000))).collect();
    for (name, data) in &files {
        s3.put("data", name, data);
    }
    let proxy = FaultProxy::start(s3.endpoint.trim_start_matches("http://"));
    // Tight retry and timeout settings, so the test takes seconds.
    let tuning = [("SHOAL_STORE_RETRIES", "2"), ("SHOAL_STORE_TIMEOUT", "2s"), ("SHOAL_STORE_IO_TIMEOUT", "1s")];
    let (master, _worker) = master_and_worker(root, "64MiB", "256MiB", &tuning);
    let ep = format!("endpoint=http://{}", proxy.addr);
    let (code, out, err) = cli(&[
        "dataset",
        "create",
        "s3ds",
        "s3://data/",
        "--option",
        &ep,
        "--option",
        "region=us-east-1",
        "--option",
        "access_key_id=a",
        "--option",
        "secret_access_key=b",
        "--block-size",
        "64KiB",
        "--master",
        &master.addr,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let mnt = root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _mount = Proc::start_until(
        &[
            "mount",
            "s3ds",
            mnt.to_str().unwrap(),
            "--master",
            &master.addr,
            "--cache-size",
            "256KiB",
            "--dir-prefetch",
            "0",
        ],
        &tuning,
        &root.join("mount.log"),
        "mounted dataset ",
    );
    let _guard = MountGuard(mnt.clone());
    let want = |i: usize| &files[i].1;

    // Connections reset: EIO, after more than one attempt, quickly.
    proxy.set(RESET);
    let before = proxy.connections.load(Ordering::Relaxed);
    let (r, took) = read_errno(&mnt.join("f0.bin"));
    assert_eq!(r.err(), Some(libc::EIO), "a store that resets every connection gives EIO");
    let attempts = proxy.connections.load(Ordering::Relaxed) - before;
    println!("reset: EIO after {} ms and {attempts} connections", took.as_millis());
    assert!(attempts >= 3, "retried before giving up ({attempts} connections)");
    assert!(took < Duration::from_secs(60), "no hang: {took:?}");

    // A stalled store: EIO once the timeouts are spent.
    proxy.set(STALL);
    let (r, took) = read_errno(&mnt.join("f1.bin"));
    println!("stall: EIO after {} ms", took.as_millis());
    assert_eq!(r.err(), Some(libc::EIO), "a stalled store gives EIO");
    assert!(took >= Duration::from_secs(2), "the timeout was waited for: {took:?}");
    assert!(took < Duration::from_secs(90), "no hang: {took:?}");

    // A store that fails two requests and then answers: read correctly.
    proxy.set(PASS);
    proxy.fail_budget.store(2, Ordering::SeqCst);
    let (r, took) = read_errno(&mnt.join("f2.bin"));
    println!("two failures then answers: read in {} ms", took.as_millis());
    assert_eq!(r.as_ref().map(|d| sha256(d)), Ok(sha256(want(2))), "retries hide a flaky store");

    // Back to normal: every file, including those that failed, reads right.
    for (i, (name, data)) in files.iter().enumerate() {
        let got = std::fs::read(mnt.join(name)).unwrap_or_else(|e| panic!("{name} after recovery: {e}"));
        assert_eq!(sha256(&got), sha256(data), "file {i}");
    }
}
