//! Test harness shared by the end-to-end tests: starts the real `shoal` binary as
//! master and worker processes, an S3-compatible server (moto) on loopback, and
//! generates source trees. Every wait is on a condition with a deadline.
#![allow(dead_code)]

pub mod bed;
pub mod csi_node;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use shoal_proto::master::master_client::MasterClient;
use shoal_proto::worker::worker_client::WorkerClient;
use tonic::transport::Channel;

pub const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Poll `cond` until it holds or the deadline passes.
pub async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn wait_for_sync(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether this kernel has `feature`, added in Linux `need` (major, minor).
/// If not, says so on stderr, naming the kernel: the caller skips the test, or
/// the part of it that needs the feature.
#[allow(dead_code)]
pub fn kernel_has(feature: &str, need: (u32, u32)) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut nums = release.trim().split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
    let have = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    if have >= need {
        return true;
    }
    eprintln!("SKIPPED: this needs {feature} (Linux {}.{}+); this kernel is {}", need.0, need.1, release.trim());
    false
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
    /// Every stdout line so far.
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Proc {
    /// Start `shoal ARGS…`; waits for its "listening on ADDR" line.
    pub fn start(args: &[&str], envs: &[(&str, &str)], log: &Path) -> Proc {
        Self::start_until(args, envs, log, "listening on ")
    }

    /// Start `shoal ARGS…`; waits for a stdout line containing `marker` and keeps
    /// what follows it as `addr`.
    pub fn start_until(args: &[&str], envs: &[(&str, &str)], log: &Path, marker: &'static str) -> Proc {
        Self::spawn(Command::new(SHOAL), args, envs, log, marker)
    }

    /// Start `shoal ARGS…` on a bed host; waits for its "listening on ADDR" line.
    pub fn start_on(host: &bed::Host, args: &[&str], log: &Path) -> Proc {
        Self::spawn(host.command(SHOAL), args, &[], log, "listening on ")
    }

    /// The same for a process that prints `marker` when it is ready.
    pub fn start_on_until(host: &bed::Host, args: &[&str], log: &Path, marker: &'static str) -> Proc {
        Self::spawn(host.command(SHOAL), args, &[], log, marker)
    }

    fn spawn(mut cmd: Command, args: &[&str], envs: &[(&str, &str)], log: &Path, marker: &'static str) -> Proc {
        cmd.args(args).stdout(Stdio::piped()).stderr(std::fs::File::create(log).unwrap());
        cmd.env("RUST_LOG", "info");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn shoal");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let all = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                all.lock().unwrap().push(line.clone());
                if let Some(addr) = line.split(marker).nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(DEADLINE) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("shoal {args:?} did not start: {}", std::fs::read_to_string(log).unwrap_or_default());
            }
        };
        Proc { child, addr, log: log.to_path_buf(), lines }
    }

    /// What follows `marker` on the first stdout line that has it (waits for it).
    pub fn line_after(&self, marker: &str) -> String {
        let mut found = None;
        wait_for_sync(marker, || {
            found =
                self.lines.lock().unwrap().iter().find_map(|l| l.split(marker).nth(1).map(|s| s.trim().to_string()));
            found.is_some()
        });
        found.unwrap()
    }

    /// The Prometheus text of this process's `/metrics`.
    pub fn metrics(&self) -> String {
        let addr = self.line_after("metrics on ");
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        resp
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many descriptors this process holds open on `target` (e.g. `/dev/fuse`).
    pub fn fds_on(&self, target: &str) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == Path::new(target)))
                    .count()
            })
            .unwrap_or(0)
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A master whose local stores may be anywhere under its data dir's parent
/// (the test's root).
pub fn start_master(data_dir: &Path, listen: &str, log: &Path) -> Proc {
    let root = data_dir.parent().unwrap().to_str().unwrap();
    Proc::start(
        &[
            "master",
            "--allow-local-root",
            root,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            listen,
            "--heartbeat-interval",
            "200ms",
            "--stale-block-grace",
            "1s",
            "--lost-worker-timeout",
            "3s",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
        log,
    )
}

pub fn start_worker(master: &str, listen: &str, tiers: &[String], envs: &[(&str, &str)], log: &Path) -> Proc {
    let mut args =
        vec!["worker", "--master", master, "--listen", listen, "--id", "w1", "--metrics-listen", "127.0.0.1:0"];
    for t in tiers {
        args.push("--tier");
        args.push(t);
    }
    Proc::start(&args, envs, log)
}

/// Worker `w{i}` on bed host `host` (node name `h{i}`, tiers of 64 MiB each
/// under `root/w{i}`, log `root/w{i}.log`) of the master(s) `master`; waits
/// until it is registered.
pub fn start_bed_worker(host: &bed::Host, i: usize, master: &str, root: &Path) -> Proc {
    let tiers = tiers(&root.join(format!("w{i}")), "64MiB", "64MiB");
    let (id, node, listen, metrics) = (format!("w{i}"), format!("h{i}"), host.addr(0), host.addr(0));
    let mut args = vec![
        "worker",
        "--master",
        master,
        "--listen",
        &listen,
        "--id",
        &id,
        "--node",
        &node,
        "--metrics-listen",
        &metrics,
    ];
    for t in &tiers {
        args.extend(["--tier", t.as_str()]);
    }
    let p = Proc::start_on(host, &args, &root.join(format!("w{i}.log")));
    wait_until_registered(master, &p.addr);
    p
}

/// The value of one sample (`name{labels} value`) in Prometheus text, 0 if absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Unmounts (lazily) on drop, so a failing test leaves no mount behind.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if shoal_fuse::is_mounted(&self.0) {
            let _ = Command::new("fusermount3").arg("-uz").arg(&self.0).status();
        }
    }
}

/// A master and a worker (id `w1`, tiers under `root/w`) on free loopback ports,
/// logging to `root/master.log` and `root/worker.log`.
pub fn master_and_worker(root: &Path, mem: &str, ssd: &str, worker_env: &[(&str, &str)]) -> (Proc, Proc) {
    let master = start_master(&root.join("master"), "127.0.0.1:0", &root.join("master.log"));
    let worker = start_worker(
        &master.addr,
        "127.0.0.1:0",
        &tiers(&root.join("w"), mem, ssd),
        worker_env,
        &root.join("worker.log"),
    );
    wait_until_registered(&master.addr, &worker.addr);
    (master, worker)
}

/// Wait until the master lists the worker at `worker_addr` as alive.
pub fn wait_until_registered(master: &str, worker_addr: &str) {
    wait_until_registered_env(master, worker_addr, &[])
}

/// The same, asking with a CLI that has `envs` (a token, a CA).
pub fn wait_until_registered_env(master: &str, worker_addr: &str, envs: &[(&str, &str)]) {
    wait_for_sync("the worker to register", || {
        let (_, out, _) = cli_env(&["workers", "-o", "json", "--master", master], envs);
        serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|v| {
            v.as_array().is_some_and(|ws| ws.iter().any(|w| w["address"] == worker_addr && w["alive"] == true))
        })
    });
}

/// Run a CLI command; returns (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    cli_env(args, &[])
}

/// Run a CLI command with extra environment variables.
pub fn cli_env(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(SHOAL).args(args).envs(envs.iter().copied()).output().expect("run shoal");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub async fn master_client(addr: &str) -> MasterClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    MasterClient::new(ch)
}

pub async fn worker_client(addr: &str) -> WorkerClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    WorkerClient::new(ch).max_decoding_message_size(64 << 20)
}

pub fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Deterministic pseudo-random content.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The test tree, as dataset path → content (`None` for directories).
pub fn tree_spec(block: usize, s3_names: bool) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut t = BTreeMap::new();
    let mut file = |p: &str, len: usize, seed: u64| {
        t.insert(p.to_string(), Some(content(seed, len)));
    };
    file("/zero", 0, 1);
    file("/one-block", block, 2);
    file("/one-block-plus-1", block + 1, 3);
    file("/multi/three-and-a-half", block * 3 + block / 2, 4);
    file("/a/b/c/deep.bin", 1000, 5);
    file("/with space/naïve café.txt", 4321, 6);
    file("/日本/データ.bin", block - 1, 7);
    if s3_names {
        file("/keys/a+b=c.txt", 10, 8);
        file("/keys/100%.txt", 11, 9);
        file("/keys/hash#tag.txt", 12, 10);
    } else {
        t.insert("/empty".into(), None);
        t.insert("/a/empty-too".into(), None);
    }
    // Directories implied by the files.
    let dirs: Vec<String> = t
        .keys()
        .flat_map(|p| {
            let comps: Vec<&str> = p.split('/').skip(1).collect();
            (1..comps.len()).map(move |i| format!("/{}", comps[..i].join("/"))).collect::<Vec<_>>()
        })
        .collect();
    for d in dirs {
        t.entry(d).or_insert(None);
    }
    t
}

pub fn write_tree(root: &Path, tree: &BTreeMap<String, Option<Vec<u8>>>) {
    for (p, c) in tree {
        let full = root.join(p.trim_start_matches('/'));
        match c {
            Some(data) => {
                std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                std::fs::write(&full, data).unwrap();
            }
            None => std::fs::create_dir_all(&full).unwrap(),
        }
    }
}

/// An object key as it goes in a URL path (every byte outside the unreserved
/// set percent-encoded, `/` kept).
fn encode_key(key: &str) -> String {
    // A `.` or `..` component is encoded too, so no HTTP layer resolves it.
    let component = |c: &str| -> String {
        if c == "." || c == ".." {
            return c.replace('.', "%2E");
        }
        c.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    key.split('/').map(component).collect::<Vec<_>>().join("/")
}

/// An S3-compatible server (moto) on a loopback port, killed on drop.
pub struct S3Server {
    proc: Child,
    pub endpoint: String,
}

impl S3Server {
    pub fn start(log: &Path) -> S3Server {
        Self::spawn(Command::new("python3"), "127.0.0.1", free_port(), log)
    }

    /// The server on a bed host, at the host's address.
    pub fn start_on(host: &bed::Host, log: &Path) -> S3Server {
        Self::spawn(host.command("python3"), &host.ip, 9000, log)
    }

    fn spawn(mut cmd: Command, ip: &str, port: u16, log: &Path) -> S3Server {
        let proc = cmd
            .args(["-m", "moto.server", "-H", ip, "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("python3 with moto must be installed (pip install 'moto[server]'; .ci/run does it)");
        let addr = format!("{ip}:{port}");
        wait_for_sync("moto_server to listen", || TcpStream::connect(&addr).is_ok());
        S3Server { proc, endpoint: format!("http://{addr}") }
    }

    fn http(&self, method: &str, path: &str, body: &[u8]) -> u16 {
        let addr = self.endpoint.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).unwrap();
        // moto checks no signature, but refuses anonymous overwrites and deletes.
        let auth =
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0";
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    }

    pub fn create_bucket(&self, bucket: &str) {
        let code = self.http("PUT", &format!("/{bucket}"), b"");
        assert_eq!(code, 200, "create bucket {bucket}");
    }

    /// Upload an object (replacing any old one); the key is percent-encoded on the wire.
    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        let enc = encode_key(key);
        let code = self.http("PUT", &format!("/{bucket}/{enc}"), data);
        assert_eq!(code, 200, "put {key}");
    }

    /// `shoal dataset create NAME URI` of this store (test credentials, 64 KiB
    /// blocks) on the master(s) `master`; asserts it succeeded.
    pub fn create_dataset(&self, master: &str, name: &str, uri: &str) {
        let ep = format!("endpoint={}", self.endpoint);
        let (code, out, err) = cli(&[
            "dataset",
            "create",
            name,
            uri,
            "--option",
            &ep,
            "--option",
            "access_key_id=a",
            "--option",
            "secret_access_key=b",
            "--block-size",
            "64KiB",
            "--master",
            master,
        ]);
        assert_eq!(code, 0, "create {name}: {out}{err}");
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        let enc = encode_key(key);
        let code = self.http("DELETE", &format!("/{bucket}/{enc}"), b"");
        assert_eq!(code, 204, "delete {key}");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

/// Tier flags for a worker under `dir`.
pub fn tiers(dir: &Path, mem: &str, ssd: &str) -> Vec<String> {
    vec![format!("mem:{}:{mem}", dir.join("mem").display()), format!("ssd:{}:{ssd}", dir.join("ssd").display())]
}

/// Every entry under `root`: relative path → (is_dir, size, mtime).
pub fn walk(root: &Path) -> BTreeMap<String, (bool, u64, (u64, u32))> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = meta.modified().unwrap().duration_since(UNIX_EPOCH).unwrap();
            out.insert(
                rel,
                (meta.is_dir(), if meta.is_dir() { 0 } else { meta.len() }, (m.as_secs(), m.subsec_nanos())),
            );
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Fields of `/proc/PID/status` in KiB (`"RssAnon:"`, `"VmHWM:"`…), read at once;
/// 0 for a field or process that is not there.
pub fn status_kib<const N: usize>(pid: u32, fields: [&str; N]) -> [u64; N] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    fields.map(|name| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    })
}
