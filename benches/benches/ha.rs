//! Master high availability on the multi-host test bed (`cli/tests/common/bed.rs`),
//! with the release `shoal` binary. Measured, in order:
//!
//! 1. the cost of replication: the sync of an N-file local dataset (default
//!    1,000,000 files) on one master, then on a group of three on three hosts
//!    (every namespace batch acknowledged by two of them on disk): time and ratio;
//! 2. `kill -9` of the leader under eight readers of a mount on a fourth host:
//!    how long until `dataset show` answers again (and from which master), until
//!    a new mount is up, read errors, and the longest a read took;
//! 3. a fourth master added with `shoal master add`: the time until it holds
//!    the N-file namespace (it is sent a snapshot: the log behind it was purged),
//!    and the snapshot's size.
//!
//! ```text
//! cargo build --release -p shoal
//! cargo bench -p shoal-benches --bench ha [-- --files N] [--no-write]
//! ```
//!
//! Root only. Results go to `benches/RESULTS.md` between the `ha` markers.

#[path = "../../cli/tests/common/bed.rs"]
mod bed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use shoal_benches::procs::{cli, Proc};
use shoal_benches::shoal_bin;

const PORT: u16 = 7700;
const READERS: usize = 8;

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn master_args<'a>(id: &'a str, peers: &'a str, listen: &'a str, dir: &'a str, root: &'a str) -> Vec<&'a str> {
    vec![
        "master",
        "--id",
        id,
        "--peers",
        peers,
        "--listen",
        listen,
        "--data-dir",
        dir,
        "--allow-local-root",
        root,
        "--heartbeat-interval",
        "500ms",
        "--metrics-listen",
        "",
    ]
}

/// Until `f` is true, polling; how long it took.
fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<Duration> {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > limit {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(t.elapsed())
}

/// The serving master's id, if one serves.
fn serving(list: &str) -> Option<u64> {
    let out = cli(&["master", "status", "-o", "json", "--master", list]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v["masters"].as_array()?.iter().find(|m| m["serving"] == true)?["id"].as_u64()
}

fn generate(src: &Path, files: usize) -> Result<()> {
    let dirs = files.div_ceil(1000);
    for d in 0..dirs {
        let dir = src.join(format!("d{d:04}"));
        std::fs::create_dir_all(&dir)?;
        for f in 0..1000.min(files - d * 1000) {
            std::fs::write(dir.join(format!("f{f:03}")), [])?;
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let (mut files, mut write) = (1_000_000usize, true);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => {}
            "--files" => files = it.next().context("--files N")?.parse()?,
            "--no-write" => write = false,
            other => bail!("unknown argument {other:?}"),
        }
    }
    let bin = shoal_bin()?.to_string_lossy().into_owned();
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let root = dir.to_string_lossy().into_owned();
    let bed = bed::Bed::new(5, None);
    let mut rows: Vec<(String, String, String)> = Vec::new();

    let src = dir.join("big");
    let t = Instant::now();
    generate(&src, files)?;
    eprintln!("generated {files} files in {:?}", t.elapsed());
    let uri = format!("file://{}", src.display());

    // 1. One master, then three.
    let one = {
        let h = bed.host(1);
        let (listen, d) = (h.addr(PORT), dir.join("solo").to_string_lossy().into_owned());
        let peers = format!("1={listen}");
        let args = master_args("1", &peers, &listen, &d, &root);
        let _m = Proc::start(h.command(&bin), &args, &dir.join("solo.log"), "listening on ")?;
        wait("the master to serve", Duration::from_secs(30), || serving(&listen).is_some())?;
        let t = Instant::now();
        cli(&["dataset", "create", "big", &uri, "--master", &listen])?;
        t.elapsed()
    };
    let peers = (1..=3).map(|i| format!("{i}={}", bed.host(i).addr(PORT))).collect::<Vec<_>>().join(",");
    let list = (1..=3).map(|i| bed.host(i).addr(PORT)).collect::<Vec<_>>().join(",");
    let start_master = |id: u64, host: usize, peers: &str| -> Result<Proc> {
        let h = bed.host(host);
        let (listen, d) = (h.addr(PORT), dir.join(format!("m{id}")).to_string_lossy().into_owned());
        let id_s = id.to_string();
        let mut args = master_args(&id_s, peers, &listen, &d, &root);
        args.extend(["--snapshot-every", "100", "--keep-logs", "10"]);
        Proc::start(h.command(&bin), &args, &dir.join(format!("m{id}.log")), "listening on ")
    };
    let mut masters = BTreeMap::new();
    for i in 1..=3u64 {
        masters.insert(i, start_master(i, i as usize, &peers)?);
    }
    let elected = wait("a leader", Duration::from_secs(30), || serving(&list).is_some())?;
    let t = Instant::now();
    cli(&["dataset", "create", "big", &uri, "--master", &list])?;
    let three = t.elapsed();
    rows.push((
        format!("sync of {files} files, one master"),
        secs(one),
        format!("{:.0} entries/s", files as f64 / one.as_secs_f64()),
    ));
    rows.push((
        format!("sync of {files} files, three masters"),
        secs(three),
        format!(
            "{:.0} entries/s; {:.2}x the time of one master (a first leader was elected in {})",
            files as f64 / three.as_secs_f64(),
            three.as_secs_f64() / one.as_secs_f64(),
            secs(elected)
        ),
    ));

    // 2. The leader killed under eight readers.
    let hot = dir.join("hot");
    std::fs::create_dir_all(&hot)?;
    let mut want = BTreeMap::new();
    for i in 0..32u64 {
        let data = shoal_benches::content(i, 1 << 20);
        std::fs::write(hot.join(format!("f{i:02}")), &data)?;
        want.insert(format!("f{i:02}"), data);
    }
    let mut workers = Vec::new();
    for i in 1..=3 {
        let h = bed.host(i);
        let (listen, id, node) = (h.addr(0), format!("w{i}"), format!("h{i}"));
        let tier = format!("mem:{}:1GiB", dir.join(&id).display());
        let args = [
            "worker",
            "--master",
            &list,
            "--listen",
            &listen,
            "--id",
            &id,
            "--node",
            &node,
            "--metrics-listen",
            "",
            "--tier",
            &tier,
        ];
        workers.push(Proc::start(h.command(&bin), &args, &dir.join(format!("{id}.log")), "listening on ")?);
    }
    let hot_uri = format!("file://{}", hot.display());
    cli(&["dataset", "create", "hot", &hot_uri, "--block-size", "256KiB", "--master", &list])?;
    let mount = |tag: &str| -> Result<(Proc, PathBuf)> {
        let h = bed.host(4);
        let mnt = dir.join(format!("mnt-{tag}"));
        std::fs::create_dir_all(&mnt)?;
        let m = mnt.to_string_lossy().into_owned();
        let args =
            ["mount", "hot", &m, "--master", &list, "--node", "h4", "--cache-size", "8MiB", "--metrics-listen", ""];
        let p = Proc::start(h.command(&bin), &args, &dir.join(format!("mount-{tag}.log")), "mounted dataset ")?;
        Ok((p, mnt))
    };
    let (mount_a, mnt) = mount("a")?;
    cli(&["prewarm", "hot", "--master", &list])?;
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let slowest = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let readers: Vec<_> = (0..READERS)
        .map(|t| {
            let (mnt, want, stop, reads, slowest, errors) =
                (mnt.clone(), want.clone(), stop.clone(), reads.clone(), slowest.clone(), errors.clone());
            std::thread::spawn(move || {
                let names: Vec<String> = want.keys().cloned().collect();
                let mut i = t;
                while !stop.load(Ordering::SeqCst) {
                    let name = &names[i % names.len()];
                    let started = Instant::now();
                    match std::fs::read(mnt.join(name)) {
                        Ok(got) if got == want[name] => {}
                        Ok(_) => errors.lock().unwrap().push(format!("{name}: wrong bytes")),
                        Err(e) => errors.lock().unwrap().push(format!("{name}: {e}")),
                    }
                    slowest.fetch_max(started.elapsed().as_micros() as u64, Ordering::SeqCst);
                    reads.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
            })
        })
        .collect();
    // Reads reach the mount (not the page cache), and through its 8 MiB block
    // cache, the workers.
    let dropper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                shoal_benches::drop_page_cache();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    wait("reads", Duration::from_secs(30), || reads.load(Ordering::SeqCst) > 200)?;
    slowest.store(0, Ordering::SeqCst);
    let leader = serving(&list).context("no leader")?;
    let killed = Instant::now();
    masters.get_mut(&leader).unwrap().kill9();
    wait("dataset show", Duration::from_secs(60), || cli(&["dataset", "show", "hot", "--master", &list]).is_ok())?;
    let answered = killed.elapsed();
    let new_leader = serving(&list).unwrap_or(0);
    let (mount_b, mnt_b) = mount("b")?;
    let mounted = killed.elapsed();
    let t = Instant::now();
    for (k, v) in &want {
        if std::fs::read(mnt_b.join(k))? != *v {
            bail!("{k}: wrong bytes through the new mount");
        }
    }
    let new_mount_read = t.elapsed();
    let at = reads.load(Ordering::SeqCst);
    wait("reads under the new leader", Duration::from_secs(60), || reads.load(Ordering::SeqCst) > at + 500)?;
    stop.store(true, Ordering::SeqCst);
    for r in readers.into_iter().chain([dropper]) {
        let _ = r.join();
    }
    let errors = errors.lock().unwrap().clone();
    rows.push((
        "`kill -9` of the leader: `dataset show` answers again".into(),
        secs(answered),
        format!("master {leader} killed, master {new_leader} leads"),
    ));
    rows.push((
        "… a new mount is up".into(),
        secs(mounted),
        format!("and reads the 32 MiB in {}", secs(new_mount_read)),
    ));
    rows.push((
        format!("… {READERS} readers of a mount across it"),
        format!("{} errors", errors.len()),
        format!(
            "{} reads of 1 MiB files; the slowest took {:.2} s",
            reads.load(Ordering::SeqCst),
            slowest.load(Ordering::SeqCst) as f64 / 1e6
        ),
    ));
    drop(mount_b);
    drop(mount_a);
    drop(workers);

    // 3. A fourth master.
    let mut masters4 = masters;
    masters4.remove(&leader);
    let peers4 = format!("{peers},4={}", bed.host(0).addr(PORT));
    let t = Instant::now();
    let _m4 = start_master(4, 0, &peers4)?;
    cli(&["master", "add", "4", &bed.host(0).addr(PORT), "--master", &list])?;
    let added = t.elapsed();
    let status = cli(&["master", "status", "-o", "json", "--master", &list])?;
    let v: serde_json::Value = serde_json::from_str(&status)?;
    let four = v["masters"].as_array().and_then(|m| m.iter().find(|m| m["id"] == 4).cloned()).unwrap_or_default();
    let snap = std::fs::metadata(dir.join("m4/raft-snapshot/snapshot")).map(|m| m.len()).unwrap_or(0);
    rows.push((
        format!("`shoal master add` of a fourth master, {files}-file namespace"),
        secs(added),
        format!(
            "sent a snapshot of {:.0} MiB (applied index {}, snapshot index {})",
            snap as f64 / (1 << 20) as f64,
            four["last_applied"],
            four["snapshot_index"]
        ),
    ));

    let mut md = format!(
        "## Master high availability (issue 18)\n\n`cargo build --release -p shoal && cargo bench -p shoal-benches --bench ha -- --files {files}`\n\n\
         Masters on three hosts (network namespaces on a bridge) of this 2-core machine, each writing its Raft log with a \
         synced write; workers beside them, a mount on a fourth host; the datasets are local directories of empty files \
         (metadata only) and of 32 files of 1 MiB (reads). Worker heartbeats every 500 ms; Raft heartbeats every \
         200 ms, elections after 1-2 s of silence (the default `--election-timeout 1s`).\n\n| step | result | detail |\n|---|---:|---|\n"
    );
    for (a, b, c) in &rows {
        md.push_str(&format!("| {a} | {b} | {c} |\n"));
    }
    print!("{md}");
    if write {
        let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md");
        shoal_benches::report::replace_section(&results, "ha", &md)?;
    }
    if !errors.is_empty() {
        bail!("read errors across the failover: {:?}", &errors[..errors.len().min(5)]);
    }
    Ok(())
}
