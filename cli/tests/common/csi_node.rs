//! A node of a Kubernetes cluster, for the end-to-end tests of the CSI plugin:
//! a master, a worker, a dataset `ds`, and `shoal csi` on a unix socket, with a
//! CSI gRPC client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use shoal_proto::csi::node_client::NodeClient;
use shoal_proto::csi::volume_capability::access_mode::Mode;
use shoal_proto::csi::volume_capability::{AccessMode, AccessType, MountVolume};
use shoal_proto::csi::*;
use tonic::transport::{Channel, Endpoint};

use super::*;

const BLOCK: usize = 64 * 1024;

/// A node: master, worker, a dataset `ds`, and the CSI plugin serving on a socket.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub src: PathBuf,
    pub state: PathBuf,
    pub kubelet: PathBuf,
    pub socket: PathBuf,
    pub master: Proc,
    pub worker: Option<Proc>,
    /// Extra `--mount-arg`s for the plugin's FUSE mounts.
    pub mount_args: Vec<String>,
    pub csi: Option<Proc>,
}

impl Node {
    /// The tree of `tree_spec` plus a 2 MiB file, default mount settings.
    pub fn start() -> Node {
        Node::start_with(
            |src| {
                write_tree(src, &tree_spec(BLOCK, false));
                std::fs::write(src.join("multi/big.bin"), content(7, 2 * 1024 * 1024 + 3)).unwrap();
            },
            &[],
        )
    }

    /// A dataset built by `build(src)`; `mount_args` go to every FUSE mount.
    pub fn start_with(build: impl FnOnce(&Path), mount_args: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let src = root.join("src");
        std::fs::create_dir_all(&src).unwrap();
        build(&src);
        let (master, worker) = master_and_worker(&root, "64MiB", "256MiB", &[]);
        let (code, out, err) =
            cli(&["dataset", "create", "ds", src.to_str().unwrap(), "--block-size", "64KiB", "--master", &master.addr]);
        assert_eq!(code, 0, "{out}{err}");
        let kubelet = root.join("kubelet");
        std::fs::create_dir_all(&kubelet).unwrap();
        let mut node = Node {
            state: root.join("state"),
            socket: root.join("csi/csi.sock"),
            kubelet,
            src,
            master,
            worker: Some(worker),
            mount_args: mount_args.iter().map(|a| format!("--mount-arg={a}")).collect(),
            csi: None,
            dir,
        };
        node.start_csi();
        node
    }

    pub fn start_csi(&mut self) {
        let endpoint = format!("unix://{}", self.socket.display());
        let runs = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("csi-"))
            .count();
        let log = self.dir.path().join(format!("csi-{runs}.log"));
        self.csi = Some(Proc::start_until(
            &[
                "csi",
                "--endpoint",
                &endpoint,
                "--node-id",
                "node-a",
                "--master",
                &self.master.addr,
                "--state-dir",
                self.state.to_str().unwrap(),
                "--target-root",
                self.kubelet.to_str().unwrap(),
                "--mount-arg=--refresh-interval=0s",
                "--metrics-listen",
                "127.0.0.1:0",
            ]
            .into_iter()
            .chain(self.mount_args.iter().map(String::as_str))
            .collect::<Vec<_>>(),
            &[],
            &log,
            "shoal csi serving ",
        ));
    }

    pub async fn channel(&self) -> Channel {
        let socket = self.socket.clone();
        Endpoint::try_from("http://csi.invalid")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
            }))
            .await
            .unwrap()
    }

    pub async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel().await)
    }

    pub fn target(&self, pod: &str) -> PathBuf {
        self.kubelet.join(format!("pods/{pod}/volumes/kubernetes.io~csi/ds/mount"))
    }

    /// Mount points under this node's directory, from the kernel's table.
    pub fn mounts(&self) -> Vec<String> {
        let root = self.dir.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
            .filter(|m| m.starts_with(&root))
            .collect()
    }

    pub fn fuse_mounts(&self) -> usize {
        let staging = self.state.join("mounts").to_string_lossy().into_owned();
        self.mounts().iter().filter(|m| m.starts_with(&staging)).count()
    }

    /// The recorded FUSE process of `ds`.
    pub fn fuse_pid(&self) -> Option<i32> {
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.state.join("state.json")).ok()?).ok()?;
        state["volumes"]["ds"]["pid"].as_i64().map(|p| p as i32)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // FUSE processes run in their own process groups and outlive the plugin.
        if let Some(pid) = self.fuse_pid() {
            let _ = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = std::process::Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

pub fn mount_cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn publish_req(volume: &str, target: &Path) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: volume.to_string(),
        target_path: target.to_string_lossy().into_owned(),
        volume_capability: Some(mount_cap(Mode::MultiNodeReaderOnly)),
        readonly: true,
        volume_context: [
            ("dataset".to_string(), "ds".to_string()),
            ("csi.storage.k8s.io/pod.namespace".to_string(), "default".to_string()),
        ]
        .into(),
        ..Default::default()
    }
}

pub fn unpublish_req(target: &Path) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest { volume_id: "ds".into(), target_path: target.to_string_lossy().into_owned() }
}

/// sha256 of every file under `root`, by relative path.
pub fn checksums(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, sha256(&std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}
