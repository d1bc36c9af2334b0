//! A remote-like S3 store on this machine. An S3 server (`s3s-fs`, serving a local
//! directory) runs in a network namespace the harness creates, reached over a veth
//! pair. Both ends of the pair are capped by a `tbf` qdisc (bandwidth), and a delay
//! line in the namespace holds every byte for a fixed one-way delay in each
//! direction, plus one round trip when a connection opens (the TCP handshake).
//!
//! This kernel has no `netem` (`CONFIG_NET_SCH_NETEM` is off), so the delay is
//! added in user space by [`delay_proxy`]; the bandwidth cap is the kernel's.
//! Everything is removed again when the [`RemoteStore`] is dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream as AsyncTcpStream};

/// Credentials of the benchmark store.
pub const ACCESS_KEY: &str = "shoalbench";
pub const SECRET_KEY: &str = "shoalbench-secret";
/// The bucket every dataset lives in.
pub const BUCKET: &str = "bench";

const NETNS: &str = "shoal-bench";
const HOST_IF: &str = "shb0";
const NS_IF: &str = "shb1";
const HOST_IP: &str = "10.213.0.1";
const NS_IP: &str = "10.213.0.2";
const S3_PORT: u16 = 9100;
const PROXY_PORT: u16 = 9000;

/// How remote the store looks.
#[derive(Debug, Clone)]
pub struct Network {
    /// One-way delay added in each direction.
    pub delay: Duration,
    /// Bandwidth cap in each direction, in Mbit/s.
    pub mbit: u64,
}

/// A running remote-like store; dropping it removes the namespace and its processes.
pub struct RemoteStore {
    /// `http://10.213.0.2:9000`: reachable from this namespace only through the veth.
    pub endpoint: String,
    children: Vec<Child>,
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn cleanup() {
    let _ = Command::new("ip").args(["netns", "del", NETNS]).stderr(Stdio::null()).status();
    let _ = Command::new("ip").args(["link", "del", HOST_IF]).stderr(Stdio::null()).status();
}

/// The `tbf` arguments for a cap of `mbit`: a burst of 10 ms worth (at least
/// 256 KiB, so whole GSO segments pass) and at most 50 ms of queue.
fn tbf_args(mbit: u64) -> Vec<String> {
    let burst = (mbit * 1_000_000 / 8 / 100).max(256 << 10);
    ["root", "tbf", "rate", &format!("{mbit}mbit"), "burst", &burst.to_string(), "latency", "50ms"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

impl RemoteStore {
    /// Serve `root` (whose sub-directories are buckets) from a new namespace.
    /// `self_exe` is a program that runs [`delay_proxy`] when called as
    /// `self_exe --delay-proxy LISTEN TARGET DELAY_US`.
    pub fn start(root: &Path, net: &Network, s3_server: &Path, self_exe: &Path) -> Result<RemoteStore> {
        cleanup();
        let mut store = RemoteStore { endpoint: format!("http://{NS_IP}:{PROXY_PORT}"), children: Vec::new() };
        run(&["ip", "netns", "add", NETNS])?;
        run(&["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF])?;
        run(&["ip", "link", "set", NS_IF, "netns", NETNS])?;
        run(&["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", HOST_IF])?;
        run(&["ip", "link", "set", HOST_IF, "up"])?;
        let ns = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", NETNS];
            all.extend_from_slice(args);
            run(&all)
        };
        ns(&["ip", "addr", "add", &format!("{NS_IP}/24"), "dev", NS_IF])?;
        ns(&["ip", "link", "set", NS_IF, "up"])?;
        ns(&["ip", "link", "set", "lo", "up"])?;
        let tbf = tbf_args(net.mbit);
        let tbf: Vec<&str> = tbf.iter().map(String::as_str).collect();
        run(&[&["tc", "qdisc", "add", "dev", HOST_IF][..], &tbf].concat())?;
        ns(&[&["tc", "qdisc", "add", "dev", NS_IF][..], &tbf].concat())?;

        let spawn = |args: &[&str]| -> Result<Child> {
            Command::new("ip")
                .args(["netns", "exec", NETNS])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", args[0]))
        };
        let s3_port = S3_PORT.to_string();
        store.children.push(spawn(&[
            &s3_server.to_string_lossy(),
            "--host",
            "127.0.0.1",
            "--port",
            &s3_port,
            "--access-key",
            ACCESS_KEY,
            "--secret-key",
            SECRET_KEY,
            &root.to_string_lossy(),
        ])?);
        store.children.push(spawn(&[
            &self_exe.to_string_lossy(),
            "--delay-proxy",
            &format!("{NS_IP}:{PROXY_PORT}"),
            &format!("127.0.0.1:{S3_PORT}"),
            &net.delay.as_micros().to_string(),
        ])?);
        let addr: SocketAddr = format!("{NS_IP}:{PROXY_PORT}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                bail!("the store did not open {addr} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(store)
    }
}

impl RemoteStore {
    /// Let hosts behind this machine (network namespaces routed through it, as
    /// the cluster test bed's are) reach the store: forwarding on here, and a
    /// default route back from the store's namespace.
    pub fn route_for_other_hosts(&self) -> Result<()> {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;
        run(&["ip", "netns", "exec", NETNS, "ip", "route", "replace", "default", "via", HOST_IP])
    }
}

impl Drop for RemoteStore {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        cleanup();
    }
}

/// The entry point of a benchmark binary started as [`RemoteStore`]'s delay
/// line (`self_exe --delay-proxy LISTEN TARGET DELAY_US`): runs it and returns
/// its result; `None` when the binary was started for anything else.
pub fn delay_proxy_main() -> Option<Result<()>> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) != Some("--delay-proxy") || argv.len() < 5 {
        return None;
    }
    let run = || -> Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let delay = Duration::from_micros(argv[4].parse()?);
        rt.block_on(delay_proxy(argv[2].parse()?, argv[3].parse()?, delay))
    };
    Some(run())
}

/// Where `s3s-fs` is, installing it with `cargo install` when it is missing.
pub fn s3_server_binary() -> Result<PathBuf> {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo"));
    let bin = home.join("bin/s3s-fs");
    if !bin.exists() {
        eprintln!("installing s3s-fs (the benchmark's S3 server) with cargo install");
        let ok = Command::new("cargo")
            .args(["install", "s3s-fs@0.14.1", "--features", "binary", "--locked"])
            .status()
            .context("running cargo install")?
            .success();
        if !ok || !bin.exists() {
            bail!("cargo install s3s-fs failed");
        }
    }
    Ok(bin)
}

/// Forward every connection on `listen` to `target`, holding the bytes of each
/// direction for `delay` and the first bytes for one extra round trip (the
/// handshake a real connection to a remote store pays). At most 4 MiB per
/// direction are in flight, so a slow reader slows the sender as TCP would.
pub async fn delay_proxy(listen: SocketAddr, target: SocketAddr, delay: Duration) -> Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let opened = Instant::now();
            let Ok(server) = AsyncTcpStream::connect(target).await else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            // Requests leave once the handshake's round trip is over; answers
            // follow requests, so they need no gate of their own.
            tokio::join!(delay_line(cr, sw, delay, opened + 2 * delay), delay_line(sr, cw, delay, opened));
        });
    }
}

async fn delay_line(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    not_before: Instant,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(64);
    let reader = async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // ACK at once: a server that writes small pieces without TCP_NODELAY
            // (s3s-fs) would otherwise wait out our delayed ACK (40 ms) on every
            // response, a stall no real store has.
            let _ = socket2::SockRef::from(from.as_ref()).set_tcp_quickack(true);
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = tokio::time::Instant::from_std(Instant::now().max(not_before) + delay);
                    if tx.send((due, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_burst_covers_gso_segments_and_ten_ms() {
        let a = tbf_args(2000);
        assert_eq!(a[3], "2000mbit");
        assert_eq!(a[5], "2500000");
        assert_eq!(tbf_args(10)[5], (256 << 10).to_string());
    }

    /// Every byte is held for at least the delay each way, and bytes arrive whole
    /// and in order.
    #[tokio::test]
    async fn delay_line_holds_bytes_and_keeps_order() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let delay = Duration::from_millis(20);
        tokio::spawn(delay_proxy(listen, target, delay));
        let t = Instant::now();
        let mut c = loop {
            if let Ok(c) = AsyncTcpStream::connect(listen).await {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let payload = crate::content(3, 1 << 20);
        let (mut r, mut w) = c.split();
        let send = async {
            w.write_all(&payload).await.unwrap();
        };
        let mut got = vec![0u8; payload.len()];
        let recv = async { r.read_exact(&mut got).await.unwrap() };
        tokio::join!(send, recv);
        // Handshake round trip + one round trip for the data.
        assert!(t.elapsed() >= 4 * delay, "{:?}", t.elapsed());
        assert!(got == payload, "bytes changed or reordered in the delay line");
        // A second exchange on the open connection pays one round trip, not two.
        let t = Instant::now();
        w.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        r.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        assert!(t.elapsed() >= 2 * delay, "{:?}", t.elapsed());
    }
}
