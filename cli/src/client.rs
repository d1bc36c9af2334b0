//! Client commands: `shoal dataset …` and `shoal workers`. Human tables by
//! default, `--output json` for scripts; long operations show a progress bar.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytesize::ByteSize;
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use shoal_proto::master::*;

use crate::exit::Remote;

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// Flags every client command takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Master address, host:port; or every master of a group, comma-separated
    /// (requests go to the leader, and follow it when it changes).
    #[arg(long, env = "SHOAL_MASTER", default_value = "127.0.0.1:7700", global = true)]
    pub master: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table", global = true)]
    pub output: Output,
}

#[derive(Subcommand, Debug)]
pub enum DatasetCmd {
    /// Register a dataset from one store URI, or from several stores each at
    /// its own path (--mount), and list it (sync).
    Create {
        /// Dataset name: letters, digits, '.', '_' and '-'.
        name: String,
        /// The dataset's only store (seen at /): s3://bucket/prefix, gs://, oss://,
        /// azblob://container/prefix, hdfs://nn/path, webhdfs://nn:port/path,
        /// file:///dir (or /dir), http(s)://host/prefix. Or give --mount instead.
        #[arg(required_unless_present = "mounts", conflicts_with = "mounts")]
        uri: Option<String>,
        /// A store seen at PATH inside the dataset, PATH=URI (e.g.
        /// /train=s3://bucket/train); repeatable. Paths never nest.
        #[arg(long = "mount", value_name = "PATH=URI")]
        mounts: Vec<String>,
        /// Store option KEY=VALUE for every store, or PATH:KEY=VALUE for the
        /// store at PATH (OpenDAL names: endpoint, region, access_key_id,
        /// secret_access_key, credentials_file, …); repeatable.
        #[arg(long = "option", value_name = "[PATH:]KEY=VALUE")]
        options: Vec<String>,
        /// Block size: the unit of caching (e.g. 4MiB, 8MiB).
        #[arg(long, default_value = "8MiB")]
        block_size: String,
        /// Register only; do not list the store now.
        #[arg(long)]
        no_sync: bool,
        /// Re-list the stores this often (e.g. 10m, 1h), or PATH:DURATION for the
        /// store at PATH alone; repeatable. Mounts pick up the changes.
        #[arg(long, value_name = "[PATH:]DURATION")]
        sync_interval: Vec<String>,
        /// Pin the dataset: its cached blocks are never evicted.
        #[arg(long)]
        pin: bool,
        /// Free cached blocks once they are this old (e.g. 12h).
        #[arg(long, value_parser = crate::servers::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// The Kubernetes namespace the dataset belongs to: client credentials
        /// of other namespaces neither see nor read it.
        #[arg(long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        common: Common,
    },
    /// List datasets.
    Ls {
        #[command(flatten)]
        common: Common,
    },
    /// Show one dataset (file count, total bytes, store, policy), or with
    /// --path one of its directories (entries, files and bytes below it) or files.
    Show {
        name: String,
        /// A path in the dataset, e.g. /train: its totals, kept by the sync (no walk).
        #[arg(long)]
        path: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Delete a dataset and its namespace (the store is not touched).
    Rm {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Pin a dataset: its cached blocks are never evicted.
    Pin {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Set how many workers cache each block of a dataset (prewarm and
    /// rebalancing keep that many copies).
    Replicas {
        name: String,
        /// Copies of each block, 1 to 16.
        replicas: u32,
        #[command(flatten)]
        common: Common,
    },
    /// Unpin a dataset: its blocks can be evicted again.
    Unpin {
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Free a dataset's cached blocks once they are older than DURATION (0s: never).
    Ttl {
        name: String,
        #[arg(value_parser = crate::servers::parse_duration)]
        ttl: std::time::Duration,
        #[command(flatten)]
        common: Common,
    },
    /// Re-list the stores and apply the differences (new, changed, deleted).
    Sync {
        name: String,
        /// Re-list only the store mounted at PATH (repeatable); the others keep
        /// what they hold.
        #[arg(long = "mount", value_name = "PATH")]
        mounts: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Change a dataset's stores: add a store or point a mount at another URI
    /// (--mount), remove one (--remove-mount), set options such as rotated
    /// credentials (--option) or sync intervals. The changed stores are then
    /// listed again; what a removed store held leaves the dataset.
    Update {
        name: String,
        /// Add a store at PATH, or point the mount at PATH to URI: PATH=URI; repeatable.
        #[arg(long = "mount", value_name = "PATH=URI")]
        mounts: Vec<String>,
        /// Remove the store mounted at PATH; repeatable.
        #[arg(long = "remove-mount", value_name = "PATH")]
        remove: Vec<String>,
        /// Set option KEY=VALUE on every store, or PATH:KEY=VALUE on the store at
        /// PATH; KEY= (no value) removes it; repeatable.
        #[arg(long = "option", value_name = "[PATH:]KEY=VALUE")]
        options: Vec<String>,
        /// Re-list the stores this often (0s: only on request), or PATH:DURATION
        /// for the store at PATH alone; repeatable.
        #[arg(long, value_name = "[PATH:]DURATION")]
        sync_interval: Vec<String>,
        /// Do not list the changed stores now.
        #[arg(long)]
        no_sync: bool,
        #[command(flatten)]
        common: Common,
    },
}

/// Flags of `dataset create` and `dataset update` that name a mount, split
/// into what applies to every mount and what to the mount at one path.
#[derive(Debug, Default)]
struct MountFlags {
    /// (path, uri) of --mount PATH=URI.
    mounts: Vec<(String, String)>,
    /// (path or None for all, key, value) of --option.
    options: Vec<(Option<String>, String, String)>,
    /// (path or None for the dataset, seconds) of --sync-interval.
    intervals: Vec<(Option<String>, u64)>,
}

fn invalid(msg: String) -> anyhow::Error {
    anyhow::Error::new(tonic::Status::invalid_argument(msg))
}

/// `PATH:REST` when `s` starts with a path, else `REST` alone.
fn for_path(s: &str) -> (Option<String>, &str) {
    match s.split_once(':') {
        Some((path, rest)) if path.starts_with('/') => (Some(path.to_string()), rest),
        _ => (None, s),
    }
}

impl MountFlags {
    fn parse(mounts: &[String], options: &[String], intervals: &[String]) -> Result<MountFlags> {
        let mut f = MountFlags::default();
        for m in mounts {
            let (path, uri) = m
                .split_once('=')
                .filter(|(p, u)| p.starts_with('/') && !u.is_empty())
                .ok_or_else(|| invalid(format!("--mount {m:?} is not PATH=URI (e.g. /train=s3://bucket/train)")))?;
            if f.mounts.iter().any(|(p, _)| p == path) {
                return Err(invalid(format!("--mount {path:?} is given twice")));
            }
            f.mounts.push((path.to_string(), uri.to_string()));
        }
        for o in options {
            let (path, kv) = for_path(o);
            let (k, v) = kv.split_once('=').ok_or_else(|| invalid(format!("option {o:?} is not [PATH:]KEY=VALUE")))?;
            f.options.push((path, k.trim().to_string(), v.to_string()));
        }
        for i in intervals {
            let (path, d) = for_path(i);
            let d = crate::servers::parse_duration(d).map_err(|e| invalid(format!("--sync-interval {i:?}: {e}")))?;
            let secs = if d.is_zero() { 0 } else { d.as_secs().max(1) };
            f.intervals.push((path, secs));
        }
        Ok(f)
    }

    /// Apply the flags to `mounts`; returns the paths whose store or options
    /// changed, and the dataset-wide interval if one was given.
    fn apply(&self, mounts: &mut Vec<MountSpec>) -> Result<(Vec<String>, Option<u64>)> {
        let mut changed = Vec::new();
        let mut mark = |p: &str| {
            if !changed.iter().any(|c: &String| c == p) {
                changed.push(p.to_string());
            }
        };
        for (path, uri) in &self.mounts {
            match mounts.iter_mut().find(|m| &m.path == path) {
                Some(m) if &m.uri == uri => {}
                Some(m) => {
                    m.uri.clone_from(uri);
                    mark(path);
                }
                None => {
                    mounts.push(MountSpec { uri: uri.clone(), path: path.clone(), ..Default::default() });
                    mark(path);
                }
            }
        }
        let mut dataset_interval = None;
        for (path, key, value) in &self.options {
            if let Some(p) = path.as_ref().filter(|p| !mounts.iter().any(|m| &m.path == *p)) {
                return Err(invalid(format!("option for {p:?}: the dataset has no mount there")));
            }
            for m in mounts.iter_mut().filter(|m| path.as_ref().is_none_or(|p| p == &m.path)) {
                let before = m.options.get(key).cloned();
                if value.is_empty() {
                    m.options.remove(key);
                } else {
                    m.options.insert(key.clone(), value.clone());
                }
                if before != m.options.get(key).cloned() {
                    mark(&m.path);
                }
            }
        }
        for (path, secs) in &self.intervals {
            match path {
                None => dataset_interval = Some(*secs),
                Some(p) => {
                    let m = mounts
                        .iter_mut()
                        .find(|m| &m.path == p)
                        .ok_or_else(|| invalid(format!("--sync-interval for {p:?}: the dataset has no mount there")))?;
                    m.sync_interval_seconds = *secs;
                }
            }
        }
        Ok((changed, dataset_interval))
    }
}

/// A client of the masters in `addr` (comma-separated), once one of them answers.
pub async fn connect(addr: &str) -> Result<shoal_proto::auth::Master> {
    // Commands may wait for a whole listing: no call timeout.
    let profile = shoal_proto::profile::Profile::ADMIN;
    let mut reached = None;
    for a in shoal_proto::leader::addresses(addr) {
        let ep = profile.endpoint(&a).with_context(|| format!("invalid master address {a:?}"))?;
        match ep.connect().await {
            Ok(_) => {
                reached = Some(Ok(()));
                break;
            }
            Err(e) => reached = Some(Err(e)),
        }
    }
    match reached {
        None => anyhow::bail!("invalid master address {addr:?}: none given"),
        Some(r) => r.with_context(|| format!("cannot reach the master at {addr}"))?,
    }
    let master = shoal_proto::auth::master(addr, move |ep| profile.apply(ep))
        .with_context(|| format!("invalid master address {addr:?}"))?;
    Ok(master
        .max_decoding_message_size(shoal_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(shoal_proto::MAX_MESSAGE_BYTES))
}

fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn dataset_json(d: &DatasetInfo) -> serde_json::Value {
    let spec = d.spec.clone().unwrap_or_default();
    let mounts = shoal_core::dataset::mount_specs(&spec);
    let cache = spec.cache.unwrap_or_default();
    let mount_json = |m: &MountSpec| {
        let options: BTreeMap<String, String> = m.options.clone().into_iter().collect();
        json!({
            "path": m.path,
            "uri": m.uri,
            "options": shoal_core::uri::redact(&options),
            "sync_interval_seconds": m.sync_interval_seconds,
            "last_sync_unix": d.mount_synced_unix.get(&m.path).copied().unwrap_or(d.last_sync_unix),
        })
    };
    let first = mounts.first().cloned().unwrap_or_default();
    json!({
        "name": spec.name,
        "namespace": spec.namespace,
        "id": d.id,
        // The first store, for scripts written when a dataset had one.
        "uri": first.uri,
        "options": mount_json(&first)["options"],
        "mounts": mounts.iter().map(mount_json).collect::<Vec<_>>(),
        "spec_revision": d.spec_revision,
        "block_size": cache.block_size,
        "replicas": cache.replicas,
        "pinned": cache.pinned,
        "ttl_seconds": cache.ttl_seconds,
        "file_count": d.file_count,
        "dir_count": d.dir_count,
        "total_bytes": d.total_bytes,
        "created_unix": d.created_unix,
        "last_sync_unix": d.last_sync_unix,
        "generation": d.generation,
        "sync_interval_seconds": spec.sync_interval_seconds,
    })
}

/// One path of a dataset: a directory's totals (direct entries, files and
/// bytes at any depth) or a file's size.
fn print_path(dataset: &str, path: &str, i: &Inode, output: Output) {
    let dir = i.kind == FileKind::Directory as i32;
    let (files, bytes) = if dir { (i.tree_files, i.tree_bytes) } else { (1, i.size) };
    match output {
        Output::Json => {
            let j = json!({
                "dataset": dataset,
                "path": path,
                "kind": if dir { "directory" } else { "file" },
                "ino": i.ino,
                "entries": i.entries,
                "files": files,
                "bytes": bytes,
                "mtime_unix": i.mtime_sec,
            });
            println!("{}", serde_json::to_string_pretty(&j).expect("json"));
        }
        Output::Table => {
            println!("path:        {path}");
            println!("kind:        {}", if dir { "directory" } else { "file" });
            if dir {
                println!("entries:     {}", i.entries);
                println!("files:       {files} (at any depth)");
            }
            println!("total:       {} ({bytes} bytes)", ByteSize(bytes));
        }
    }
}

fn print_dataset(d: &DatasetInfo, output: Output) {
    let j = dataset_json(d);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&j).expect("json")),
        Output::Table => {
            println!("name:        {}", j["name"].as_str().unwrap_or(""));
            println!("namespace:   {}", j["namespace"].as_str().unwrap_or(""));
            for m in j["mounts"].as_array().into_iter().flatten() {
                let path = m["path"].as_str().unwrap_or("");
                println!("mount:       {path} = {}", m["uri"].as_str().unwrap_or(""));
                for (k, v) in m["options"].as_object().into_iter().flatten() {
                    println!("option:      {path}:{k}={}", v.as_str().unwrap_or(""));
                }
                if let Some(every) = m["sync_interval_seconds"].as_u64().filter(|s| *s > 0) {
                    println!("sync every:  {path}:{every}s");
                }
            }
            if let Some(every) = j["sync_interval_seconds"].as_u64().filter(|s| *s > 0) {
                println!("sync every:  {every}s");
            }
            println!("files:       {}", d.file_count);
            println!("directories: {}", d.dir_count);
            println!("total:       {} ({} bytes)", ByteSize(d.total_bytes), d.total_bytes);
            println!("block size:  {}", ByteSize(j["block_size"].as_u64().unwrap_or(0)));
            println!("pinned:      {}", j["pinned"].as_bool().unwrap_or(false));
            println!(
                "ttl:         {}",
                match j["ttl_seconds"].as_u64().unwrap_or(0) {
                    0 => "none".to_string(),
                    t => format!("{t}s"),
                }
            );
            println!(
                "last sync:   {}",
                if d.last_sync_unix == 0 { "never".to_string() } else { format!("unix {}", d.last_sync_unix) }
            );
        }
    }
}

/// Stream a sync's progress to a spinner; returns the synced dataset.
/// `mounts`: the mount paths to re-list (all when empty).
pub async fn sync_with_progress(
    client: &mut shoal_proto::auth::Master,
    name: &str,
    mounts: &[String],
) -> Result<SyncProgress> {
    let mut stream = client
        .sync_dataset(SyncDatasetRequest { name: name.to_string(), mounts: mounts.to_vec() })
        .await
        .map_err(Remote)
        .with_context(|| format!("sync of dataset {name:?}"))?
        .into_inner();
    // Stores do not tell how many entries they hold; the last sync's count is
    // the estimate the ETA comes from.
    let expected = match client.get_dataset(GetDatasetRequest { name: name.to_string() }).await {
        Ok(d) if mounts.is_empty() => {
            Some(d.into_inner()).filter(|d| d.last_sync_unix > 0).map(|d| d.file_count + d.dir_count)
        }
        _ => None,
    };
    let bar = match expected.filter(|n| *n > 0) {
        Some(n) => {
            let bar = ProgressBar::new(n);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed} [{bar:30}] {human_pos}/~{human_len} entries ({per_sec}, ETA {eta}) {msg}",
                )
                .expect("template"),
            );
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} listed {human_pos} entries ({per_sec}) {msg}")
                    .expect("template"),
            );
            bar
        }
    };
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut last = SyncProgress::default();
    while let Some(p) = stream.message().await.map_err(Remote).with_context(|| format!("sync of dataset {name:?}"))? {
        bar.set_position(p.entries_listed);
        bar.set_message(format!(
            "{} — {} new, {} changed, {} deleted",
            ByteSize(p.bytes_listed),
            p.added,
            p.changed,
            p.deleted
        ));
        last = p;
        if last.done {
            break;
        }
    }
    bar.finish_and_clear();
    if !last.done {
        bail!("sync of dataset {name:?} ended before it finished");
    }
    Ok(last)
}

fn print_sync(p: &SyncProgress, output: Output) {
    match output {
        Output::Json => println!(
            "{}",
            json!({"entries_listed": p.entries_listed, "added": p.added, "changed": p.changed, "deleted": p.deleted, "unchanged": p.unchanged,
                   "dataset": p.dataset.as_ref().map(dataset_json)})
        ),
        Output::Table => println!(
            "synced: {} entries listed, {} new, {} changed, {} deleted, {} unchanged",
            p.entries_listed, p.added, p.changed, p.deleted, p.unchanged
        ),
    }
}

pub async fn dataset(cmd: DatasetCmd) -> Result<()> {
    match cmd {
        DatasetCmd::Create {
            name,
            uri,
            mounts,
            options,
            block_size,
            no_sync,
            sync_interval,
            pin,
            ttl,
            namespace,
            common,
        } => {
            let flags = MountFlags::parse(&mounts, &options, &sync_interval)?;
            let mut specs: Vec<MountSpec> =
                uri.map(|uri| MountSpec { uri, path: "/".into(), ..Default::default() }).into_iter().collect();
            let (_, interval) = flags.apply(&mut specs)?;
            // Checked here first: a bad URI or mount table never needs a round trip.
            let parsed = specs.iter().map(shoal_core::dataset::Mount::from_spec).collect::<Result<Vec<_>, _>>()?;
            shoal_core::dataset::validate_mounts(&parsed)?;
            let block_size = shoal_core::size::parse_size(&block_size)?;
            let mut client = connect(&common.master).await?;
            let spec = DatasetSpec {
                name: name.clone(),
                mount: None,
                mounts: specs,
                cache: Some(CachePolicy {
                    block_size,
                    replicas: 1,
                    pinned: pin,
                    ttl_seconds: ttl.map(|d| d.as_secs().max(1)).unwrap_or(0),
                }),
                sync_interval_seconds: interval.unwrap_or(0),
                namespace,
            };
            let info = client
                .create_dataset(CreateDatasetRequest { spec: Some(spec), sync: false })
                .await
                .map_err(Remote)
                .with_context(|| format!("create dataset {name:?}"))?
                .into_inner();
            if no_sync {
                print_dataset(&info, common.output);
                return Ok(());
            }
            let p = sync_with_progress(&mut client, &name, &[]).await?;
            print_dataset(p.dataset.as_ref().unwrap_or(&info), common.output);
        }
        DatasetCmd::Ls { common } => {
            let mut client = connect(&common.master).await?;
            let list = client
                .list_datasets(ListDatasetsRequest {})
                .await
                .map_err(Remote)
                .context("list datasets")?
                .into_inner();
            match common.output {
                Output::Json => {
                    let v: Vec<_> = list.datasets.iter().map(dataset_json).collect();
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                Output::Table => table(
                    &["NAME", "URI", "FILES", "SIZE"],
                    list.datasets
                        .iter()
                        .map(|d| {
                            let spec = d.spec.clone().unwrap_or_default();
                            let uris: Vec<String> = shoal_core::dataset::mount_specs(&spec)
                                .into_iter()
                                .map(|m| if m.path == "/" { m.uri } else { format!("{}={}", m.path, m.uri) })
                                .collect();
                            vec![
                                spec.name,
                                uris.join(","),
                                d.file_count.to_string(),
                                ByteSize(d.total_bytes).to_string(),
                            ]
                        })
                        .collect(),
                ),
            }
        }
        DatasetCmd::Show { name, path: Some(path), common } => {
            let mut client = connect(&common.master).await?;
            let i = client
                .resolve_path(ResolvePathRequest { dataset: name.clone(), path: path.clone() })
                .await
                .map_err(Remote)
                .with_context(|| format!("path {path:?} of dataset {name:?}"))?
                .into_inner();
            print_path(&name, &path, &i, common.output);
        }
        DatasetCmd::Show { name, path: None, common } => {
            let mut client = connect(&common.master).await?;
            let d = client
                .get_dataset(GetDatasetRequest { name: name.clone() })
                .await
                .map_err(Remote)
                .with_context(|| format!("dataset {name:?}"))?;
            print_dataset(d.get_ref(), common.output);
        }
        DatasetCmd::Rm { name, common } => {
            let mut client = connect(&common.master).await?;
            let r = client
                .delete_dataset(DeleteDatasetRequest { name: name.clone() })
                .await
                .map_err(Remote)
                .with_context(|| format!("delete dataset {name:?}"))?
                .into_inner();
            if common.output == Output::Json {
                println!("{}", json!({"deleted": name, "blocks_freed": r.blocks_freed, "bytes_freed": r.bytes_freed}));
            } else {
                println!("deleted dataset {name} ({} cached blocks freed)", r.blocks_freed);
            }
        }
        DatasetCmd::Pin { name, common } => {
            set_policy(&common, &name, Policy { pinned: Some(true), ..Default::default() }).await?
        }
        DatasetCmd::Unpin { name, common } => {
            set_policy(&common, &name, Policy { pinned: Some(false), ..Default::default() }).await?
        }
        DatasetCmd::Ttl { name, ttl, common } => {
            set_policy(&common, &name, Policy { ttl_seconds: Some(ttl.as_secs()), ..Default::default() }).await?
        }
        DatasetCmd::Replicas { name, replicas, common } => {
            set_policy(&common, &name, Policy { replicas: Some(replicas), ..Default::default() }).await?
        }
        DatasetCmd::Sync { name, mounts, common } => {
            let mut client = connect(&common.master).await?;
            let p = sync_with_progress(&mut client, &name, &mounts).await?;
            print_sync(&p, common.output);
        }
        DatasetCmd::Update { name, mounts, remove, options, sync_interval, no_sync, common } => {
            let flags = MountFlags::parse(&mounts, &options, &sync_interval)?;
            let mut client = connect(&common.master).await?;
            let info = client
                .get_dataset(GetDatasetRequest { name: name.clone() })
                .await
                .map_err(Remote)
                .with_context(|| format!("dataset {name:?}"))?
                .into_inner();
            // Options come back redacted; the master keeps the value a "***" stands for.
            let mut specs = shoal_core::dataset::mount_specs(&info.spec.clone().unwrap_or_default());
            for p in &remove {
                let before = specs.len();
                specs.retain(|m| &m.path != p);
                if specs.len() == before {
                    return Err(invalid(format!("--remove-mount {p:?}: the dataset has no mount there")));
                }
            }
            let (changed, interval) = flags.apply(&mut specs)?;
            let parsed = specs.iter().map(shoal_core::dataset::Mount::from_spec).collect::<Result<Vec<_>, _>>()?;
            shoal_core::dataset::validate_mounts(&parsed)?;
            let req = UpdateDatasetRequest {
                name: name.clone(),
                mounts: specs,
                sync_interval_seconds: interval,
                sync: false,
            };
            let info =
                client.update_dataset(req).await.map_err(Remote).with_context(|| format!("update dataset {name:?}"))?;
            if no_sync || changed.is_empty() {
                print_dataset(info.get_ref(), common.output);
                return Ok(());
            }
            let p = sync_with_progress(&mut client, &name, &changed).await?;
            print_dataset(p.dataset.as_ref().unwrap_or(info.get_ref()), common.output);
        }
    }
    Ok(())
}

/// The parts of a cache policy one command changes (`None`: unchanged).
#[derive(Default)]
struct Policy {
    pinned: Option<bool>,
    ttl_seconds: Option<u64>,
    replicas: Option<u32>,
}

async fn set_policy(common: &Common, name: &str, p: Policy) -> Result<()> {
    let mut client = connect(&common.master).await?;
    let req = SetCachePolicyRequest {
        name: name.to_string(),
        pinned: p.pinned,
        ttl_seconds: p.ttl_seconds,
        replicas: p.replicas,
    };
    let d = client.set_cache_policy(req).await.map_err(Remote).with_context(|| format!("dataset {name:?}"))?;
    print_dataset(d.get_ref(), common.output);
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum WorkerAction {
    /// Take a worker out of placement and copy each block it holds to the
    /// workers that now own it (from the worker itself, not the store), with
    /// progress; exits 0 once every block has moved and the worker can be stopped.
    Drain {
        /// Worker id (see `shoal workers`); in a worker's pod (a preStop hook),
        /// its own id from SHOAL_WORKER_ID.
        #[arg(env = "SHOAL_WORKER_ID")]
        id: String,
        /// Put a draining or drained worker back into placement instead.
        #[arg(long)]
        undo: bool,
        /// Block copies in flight.
        #[arg(long, default_value_t = 16)]
        parallel: u32,
        #[command(flatten)]
        common: Common,
    },
}

pub async fn worker_action(action: WorkerAction) -> Result<()> {
    let WorkerAction::Drain { id, undo, parallel, common } = action;
    let mut client = connect(&common.master).await?;
    let req = DrainWorkerRequest { id: id.clone(), undo, parallel };
    let mut stream =
        client.drain_worker(req).await.map_err(Remote).with_context(|| format!("drain worker {id:?}"))?.into_inner();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} blocks {binary_bytes_per_sec} ETA {eta} {msg}")
            .expect("template"),
    );
    let mut last = DrainProgress::default();
    while let Some(p) = stream.message().await.map_err(Remote).with_context(|| format!("drain worker {id:?}"))? {
        bar.set_length(p.blocks_total);
        bar.set_position(p.blocks_moved + p.blocks_failed);
        bar.set_message(format!("{} moved, {} failed", p.blocks_moved, p.blocks_failed));
        last = p;
    }
    bar.finish_and_clear();
    match common.output {
        Output::Json => println!(
            "{}",
            json!({"worker": last.worker_id, "blocks_total": last.blocks_total, "blocks_moved": last.blocks_moved,
                   "blocks_failed": last.blocks_failed, "bytes_moved": last.bytes_moved, "done": last.done,
                   "message": last.message})
        ),
        Output::Table => println!("{}", last.message),
    }
    if !last.done {
        bail!("the master ended the drain of {id:?} without a final report");
    }
    if last.blocks_failed > 0 {
        bail!("{}", last.message);
    }
    Ok(())
}

pub async fn workers(common: Common) -> Result<()> {
    let mut client = connect(&common.master).await?;
    let list = client.list_workers(ListWorkersRequest {}).await.map_err(Remote).context("list workers")?.into_inner();
    match common.output {
        Output::Json => {
            let v: Vec<_> = list
                .workers
                .iter()
                .map(|w| {
                    json!({"id": w.id, "node": w.node, "address": w.address, "alive": w.alive, "draining": w.draining, "blocks": w.block_count,
                           "tiers": w.tiers.iter().map(|t| json!({"kind": t.kind, "dir": t.dir, "quota_bytes": t.quota_bytes, "used_bytes": t.used_bytes, "blocks": t.blocks})).collect::<Vec<_>>()})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Table => table(
            &["ID", "ADDRESS", "STATE", "BLOCKS", "TIERS"],
            list.workers
                .iter()
                .map(|w| {
                    let tiers: Vec<String> = w
                        .tiers
                        .iter()
                        .map(|t| format!("{} {}/{}", t.kind, ByteSize(t.used_bytes), ByteSize(t.quota_bytes)))
                        .collect();
                    vec![
                        w.id.clone(),
                        w.address.clone(),
                        match (w.alive, w.draining) {
                            (false, _) => "lost",
                            (true, true) => "draining",
                            (true, false) => "alive",
                        }
                        .to_string(),
                        w.block_count.to_string(),
                        tiers.join(", "),
                    ]
                })
                .collect(),
        ),
    }
    Ok(())
}
