//! A multi-host test bed on one machine. Each host is a network namespace with
//! its own address, joined to the others by a veth pair on a bridge in this
//! (the root) namespace, which is the bed's gateway: a master run here is
//! reached at [`Bed::gateway`]. Both ends of a host's veth can be capped by a
//! `tbf` qdisc (bandwidth); this kernel has no `netem`, so delay is not
//! emulated here (the benchmarks' remote store adds it in user space).
//!
//! A host runs programs through `nsenter --net`: they share this mount
//! namespace, so a FUSE mount made on a host is visible to the test. A host is
//! lost with [`Bed::partition`] (its link down) and comes back with
//! [`Bed::heal`]. Everything is removed when the bed is dropped.
//!
//! Only `std` is used, so `benches/` can include this file as a module.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// One host of the bed.
#[derive(Debug, Clone)]
pub struct Host {
    /// The network namespace's name (under `/run/netns`).
    pub netns: String,
    /// The host's address on the bed's bridge.
    pub ip: String,
    /// The root end of its veth pair (the link [`Bed::partition`] takes down).
    link: String,
}

impl Host {
    /// `program` to be run on this host (in its network namespace).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns)).arg(program);
        c
    }

    /// `IP:port` on this host.
    pub fn addr(&self, port: u16) -> String {
        format!("{}:{port}", self.ip)
    }
}

/// Hosts on a bridge; see the module docs.
pub struct Bed {
    pub hosts: Vec<Host>,
    bridge: String,
    gateway: String,
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("running {}: {e}", args[0]));
    assert!(out.status.success(), "`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
}

fn quiet(args: &[&str]) {
    let _ = Command::new(args[0]).args(&args[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// `tc` arguments of a `tbf` cap of `mbit`: a burst of 10 ms (at least 256 KiB,
/// so whole GSO segments pass) and at most 50 ms of queue.
fn tbf(dev: &str, mbit: u64) -> Vec<String> {
    let burst = (mbit * 1_000_000 / 8 / 100).max(256 << 10);
    let rate = format!("{mbit}mbit");
    ["qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate, "burst", &burst.to_string(), "latency", "50ms"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

impl Bed {
    /// `n` hosts, each link capped at `mbit` in both directions (`None`: uncapped).
    /// Names and the subnet are unique to this process and bed, so tests can
    /// build beds in parallel.
    pub fn new(n: usize, mbit: Option<u64>) -> Bed {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        assert!(n <= 200, "at most 200 hosts");
        let seq = NEXT.fetch_add(1, Ordering::SeqCst);
        // 12 bits of the pid and 4 of the sequence: short enough for interface
        // names (15 bytes), and a /24 per bed.
        let tag = ((std::process::id() & 0xfff) << 4) | (seq & 0xf);
        let (a, b) = (64 + (tag >> 8) % 128, tag & 0xff);
        let bridge = format!("sbr{tag:x}");
        let gateway = format!("10.{a}.{b}.1");
        let mut bed = Bed { hosts: Vec::new(), bridge: bridge.clone(), gateway: gateway.clone() };
        bed.cleanup_names(tag, n);
        run(&["ip", "link", "add", &bridge, "type", "bridge"]);
        run(&["ip", "addr", "add", &format!("{gateway}/24"), "dev", &bridge]);
        run(&["ip", "link", "set", &bridge, "up"]);
        for i in 0..n {
            let host = Host {
                netns: format!("shoal-{tag:x}-h{i}"),
                ip: format!("10.{a}.{b}.{}", 10 + i),
                link: format!("sv{tag:x}h{i}"),
            };
            let peer = format!("sp{tag:x}h{i}");
            run(&["ip", "netns", "add", &host.netns]);
            bed.hosts.push(host.clone());
            run(&["ip", "link", "add", &host.link, "type", "veth", "peer", "name", &peer]);
            run(&["ip", "link", "set", &peer, "netns", &host.netns]);
            run(&["ip", "link", "set", &host.link, "master", &bridge, "up"]);
            let ns = |args: &[&str]| {
                let mut full = vec!["ip", "netns", "exec", &host.netns];
                full.extend_from_slice(args);
                run(&full);
            };
            ns(&["ip", "link", "set", "lo", "up"]);
            ns(&["ip", "addr", "add", &format!("{}/24", host.ip), "dev", &peer]);
            ns(&["ip", "link", "set", &peer, "up"]);
            ns(&["ip", "route", "add", "default", "via", &gateway]);
            if let Some(mbit) = mbit {
                let out = tbf(&host.link, mbit);
                let mut args = vec!["tc"];
                args.extend(out.iter().map(String::as_str));
                run(&args);
                let inner = tbf(&peer, mbit);
                let mut args = vec!["ip", "netns", "exec", &host.netns, "tc"];
                args.extend(inner.iter().map(String::as_str));
                run(&args);
            }
        }
        bed
    }

    /// Leftovers of an earlier process with the same tag (killed before it
    /// cleaned up) would collide with this bed's names.
    fn cleanup_names(&self, tag: u32, n: usize) {
        for i in 0..n.max(16) {
            quiet(&["ip", "netns", "del", &format!("shoal-{tag:x}-h{i}")]);
            quiet(&["ip", "link", "del", &format!("sv{tag:x}h{i}")]);
        }
        quiet(&["ip", "link", "del", &self.bridge]);
    }

    /// The root namespace's address on the bridge: every host reaches it.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Cut host `i` off the bridge: nothing reaches it, it reaches nothing.
    pub fn partition(&self, i: usize) {
        run(&["ip", "link", "set", &self.hosts[i].link, "down"]);
    }

    /// Join host `i` to the bridge again.
    pub fn heal(&self, i: usize) {
        run(&["ip", "link", "set", &self.hosts[i].link, "master", &self.bridge, "up"]);
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for h in &self.hosts {
            quiet(&["ip", "link", "del", &h.link]);
            quiet(&["ip", "netns", "del", &h.netns]);
        }
        quiet(&["ip", "link", "del", &self.bridge]);
    }
}
