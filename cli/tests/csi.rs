//! End-to-end tests of the CSI node plugin: `shoal csi` as its own process on a
//! unix socket, a real gRPC client speaking the CSI spec to it, real FUSE mounts
//! and bind mounts, files read through pods' target paths and compared by sha256.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::csi_node::*;
use common::*;
use shoal_proto::csi::controller_client::ControllerClient;
use shoal_proto::csi::identity_client::IdentityClient;
use shoal_proto::csi::volume_capability::access_mode::Mode;
use shoal_proto::csi::volume_capability::{AccessMode, AccessType, BlockVolume};
use shoal_proto::csi::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_share_one_fuse_mount_and_the_last_unpublish_leaves_nothing() {
    let node = Node::start();
    let mut csi = node.node().await;
    let want = checksums(&node.src);
    assert_eq!(want.len(), 8, "the tree has its eight files");

    let (p1, p2) = (node.target("pod-1"), node.target("pod-2"));
    csi.node_publish_volume(publish_req("pv-ds", &p1)).await.unwrap();
    assert_eq!(checksums(&p1), want, "pod 1 reads the dataset byte for byte");
    assert_eq!(node.fuse_mounts(), 1);

    csi.node_publish_volume(publish_req("pv-ds", &p2)).await.unwrap();
    assert_eq!(checksums(&p2), want, "pod 2 reads the dataset byte for byte");
    assert_eq!(node.fuse_mounts(), 1, "one FUSE mount for the dataset on this node");
    assert_eq!(node.mounts().len(), 3, "the FUSE mount and two binds: {:?}", node.mounts());
    // Publishing the same target again is a no-op.
    csi.node_publish_volume(publish_req("pv-ds", &p1)).await.unwrap();
    assert_eq!(node.mounts().len(), 3);
    // The volume is read-only.
    let err = std::fs::write(p1.join("new-file"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

    csi.node_unpublish_volume(unpublish_req(&p1)).await.unwrap();
    assert!(!shoal_fuse::is_mounted(&p1));
    assert!(!p1.exists(), "the target directory is removed");
    assert_eq!(node.fuse_mounts(), 1, "pod 2 still uses the FUSE mount");
    assert_eq!(checksums(&p2), want);

    csi.node_unpublish_volume(unpublish_req(&p2)).await.unwrap();
    assert_eq!(node.mounts(), Vec::<String>::new(), "no mount left");
    // Unpublishing again is a no-op.
    csi.node_unpublish_volume(unpublish_req(&p2)).await.unwrap();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.state.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["volumes"], serde_json::json!({}));

    let metrics = node.csi.as_ref().unwrap().metrics();
    assert_eq!(metric(&metrics, "shoal_csi_publishes_total"), 2.0);
    assert_eq!(metric(&metrics, "shoal_csi_fuse_mounts"), 0.0);
}

/// Mount ids of the node's mounts: unchanged ids mean nothing was mounted again.
fn mount_ids(node: &Node) -> Vec<String> {
    let root = node.dir.path().to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&root)))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

/// Read `len` bytes at `offset` of an open file, then drop its page cache so the
/// next read goes to the FUSE process.
fn read_at_uncached(f: &std::fs::File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset)?;
    let _ = nix::fcntl::posix_fadvise(f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    Ok(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_or_upgraded_fuse_process_is_taken_over_without_a_read_error() {
    if !kernel_has("FUSE_NOTIFY_RESEND, to replay the requests a killed process left unanswered", (6, 9)) {
        return;
    }
    let mut node = Node::start();
    let mut csi = node.node().await;
    let want = checksums(&node.src);
    let big = content(7, 2 * 1024 * 1024 + 3);
    let (p1, p2) = (node.target("pod-1"), node.target("pod-2"));
    csi.node_publish_volume(publish_req("pv-ds", &p1)).await.unwrap();
    csi.node_publish_volume(publish_req("pv-ds", &p2)).await.unwrap();
    let ids = mount_ids(&node);
    assert_eq!(ids.len(), 3, "the FUSE mount and two binds");
    // A pod holds a file open across every restart below.
    let open = std::fs::File::open(p1.join("multi/big.bin")).unwrap();
    assert_eq!(read_at_uncached(&open, 0, 4096).unwrap(), big[..4096]);

    // kill -9: the held connection keeps the mount; the next read waits for the
    // new process and gets the right bytes.
    let old = node.fuse_pid().expect("a FUSE process is recorded");
    let killed = Instant::now();
    std::process::Command::new("kill").arg("-9").arg(old.to_string()).status().unwrap();
    let data = read_at_uncached(&open, 1 << 20, 65536).expect("the open file reads through the restart");
    let recovery = killed.elapsed();
    println!("FUSE takeover after kill -9: first read answered {} ms after the kill", recovery.as_millis());
    assert_eq!(data, big[1 << 20..(1 << 20) + 65536]);
    assert!(recovery < Duration::from_secs(10), "recovered in {recovery:?}");
    wait_for_sync("the new FUSE process to be recorded", || node.fuse_pid().is_some_and(|p| p != old));
    let new = node.fuse_pid().unwrap();
    assert_eq!(checksums(&p1), want);
    assert_eq!(checksums(&p2), want);
    assert_eq!(mount_ids(&node), ids, "nothing was mounted again");
    let metrics = node.csi.as_ref().unwrap().metrics();
    assert_eq!(metric(&metrics, "shoal_csi_fuse_restarts_total"), 1.0);
    assert_eq!(metric(&metrics, "shoal_csi_fuse_takeovers_total"), 1.0);

    // SIGHUP to the plugin: every FUSE process is replaced (an upgrade) while a
    // reader keeps reading the open file.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (open, big, stop) = (open.try_clone().unwrap(), big.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let off = (reads * 65536) % (2 << 20);
                let data = read_at_uncached(&open, off, 65536).expect("no read error during the upgrade");
                assert_eq!(data, big[off as usize..off as usize + 65536], "right bytes at {off}");
                reads += 1;
            }
            reads
        })
    };
    let csi_pid = node.csi.as_ref().unwrap().child.id();
    std::process::Command::new("kill").arg("-HUP").arg(csi_pid.to_string()).status().unwrap();
    wait_for_sync("the upgraded FUSE process", || node.fuse_pid().is_some_and(|p| p != new));
    let upgraded = node.fuse_pid().unwrap();
    assert_eq!(checksums(&p2), want);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().expect("the reader saw no error");
    assert!(reads > 0);
    assert_eq!(mount_ids(&node), ids, "nothing was mounted again");
    assert!(!Path::new(&format!("/proc/{new}")).exists(), "the replaced process is gone");
    let metrics = node.csi.as_ref().unwrap().metrics();
    assert_eq!(metric(&metrics, "shoal_csi_fuse_takeovers_total"), 2.0);

    // kill -9 the plugin itself: the mounts outlive it, and a new plugin adopts
    // them (same FUSE process), copies its connection again, and so still takes
    // it over when it is killed.
    node.csi.as_mut().unwrap().kill9();
    assert_eq!(checksums(&p1), want, "pods keep reading while the plugin is down");
    node.start_csi();
    let mut csi = node.node().await;
    assert_eq!(node.fuse_pid(), Some(upgraded), "the running FUSE process is adopted");
    // Ready means the new plugin holds the mount's connection: killing the FUSE
    // process now cannot abort it.
    assert!(node.csi.as_ref().unwrap().fds_on("/dev/fuse") >= 1, "the new plugin holds the FUSE connection");
    std::process::Command::new("kill").arg("-9").arg(upgraded.to_string()).status().unwrap();
    let data = read_at_uncached(&open, 0, 65536).expect("the open file reads through the restart");
    assert_eq!(data, big[..65536]);
    assert_eq!(checksums(&p2), want);
    assert_eq!(mount_ids(&node), ids, "nothing was mounted again");
    wait_for_sync("the new FUSE process to be recorded", || node.fuse_pid().is_some_and(|p| p != upgraded));
    let taken = node.fuse_pid().unwrap();
    drop(open);

    // An aborted connection (fusectl's `abort`) cannot be taken over: the plugin
    // mounts the dataset afresh and binds every pod's path again.
    if !std::fs::read_to_string("/proc/mounts").unwrap().contains(" /sys/fs/fuse/connections fusectl ") {
        let ok =
            std::process::Command::new("mount").args(["-t", "fusectl", "none", "/sys/fs/fuse/connections"]).status();
        assert!(ok.is_ok_and(|s| s.success()), "mount fusectl");
    }
    let dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(node.state.join("mounts/ds")).unwrap());
    std::fs::write(format!("/sys/fs/fuse/connections/{}/abort", libc::minor(dev)), "1").unwrap();
    // A read alone can succeed on the aborted mount (the dentry and the pages
    // are in the kernel's caches, and opens never reach the daemon); a listing
    // needs a live connection.
    wait_for_sync("both targets to serve a fresh mount", || {
        node.fuse_pid().is_some_and(|p| p != taken)
            && [&p1, &p2].iter().all(|p| {
                std::fs::read_dir(p).is_ok_and(|d| d.count() > 0)
                    && std::fs::read_dir(p.join("multi")).is_ok()
                    && std::fs::read(p.join("multi/big.bin")).is_ok_and(|b| b == big)
            })
    });
    assert_eq!(checksums(&p1), want);
    assert_eq!(checksums(&p2), want);
    assert_eq!(node.fuse_mounts(), 1, "{:?}", node.mounts());
    let last = node.fuse_pid().unwrap();

    csi.node_unpublish_volume(unpublish_req(&p1)).await.unwrap();
    csi.node_unpublish_volume(unpublish_req(&p2)).await.unwrap();
    assert_eq!(node.mounts(), Vec::<String>::new(), "no mount left");
    wait_for_sync("the FUSE process to exit", || !Path::new(&format!("/proc/{last}")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_with_the_right_code_and_nothing_is_mounted() {
    let node = Node::start();
    let mut csi = node.node().await;
    let good = node.target("pod-1");
    let with = |f: &dyn Fn(&mut NodePublishVolumeRequest)| {
        let mut r = publish_req("pv-ds", &good);
        f(&mut r);
        r
    };
    let cases: Vec<(&str, NodePublishVolumeRequest, tonic::Code)> = vec![
        (
            "no volume id",
            with(&|r| {
                r.volume_id.clear();
                r.volume_context.clear();
            }),
            tonic::Code::InvalidArgument,
        ),
        ("no target", with(&|r| r.target_path.clear()), tonic::Code::InvalidArgument),
        ("relative target", with(&|r| r.target_path = "pods/x/mount".into()), tonic::Code::InvalidArgument),
        (
            "escaping target",
            with(&|r| r.target_path = format!("{}/pods/../../../etc", node.kubelet.display())),
            tonic::Code::InvalidArgument,
        ),
        ("target outside kubelet", with(&|r| r.target_path = "/tmp/shoal-csi-x".into()), tonic::Code::InvalidArgument),
        (
            "NUL in target",
            with(&|r| r.target_path = format!("{}/pods/a\0b", node.kubelet.display())),
            tonic::Code::InvalidArgument,
        ),
        ("no capability", with(&|r| r.volume_capability = None), tonic::Code::InvalidArgument),
        (
            "writer access mode",
            with(&|r| r.volume_capability = Some(mount_cap(Mode::SingleNodeWriter))),
            tonic::Code::InvalidArgument,
        ),
        (
            "block access",
            with(&|r| {
                r.volume_capability = Some(VolumeCapability {
                    access_type: Some(AccessType::Block(BlockVolume {})),
                    access_mode: Some(AccessMode { mode: Mode::MultiNodeReaderOnly as i32 }),
                })
            }),
            tonic::Code::InvalidArgument,
        ),
        (
            "hostile dataset name",
            with(&|r| {
                r.volume_context.insert("dataset".into(), "../../etc".into());
            }),
            tonic::Code::InvalidArgument,
        ),
        (
            "unknown dataset",
            with(&|r| {
                r.volume_context.insert("dataset".into(), "nope".into());
            }),
            tonic::Code::NotFound,
        ),
        (
            "no pod namespace (podInfoOnMount off)",
            with(&|r| {
                r.volume_context.remove("csi.storage.k8s.io/pod.namespace");
            }),
            tonic::Code::InvalidArgument,
        ),
        (
            "a pod of another namespace",
            with(&|r| {
                r.volume_context.insert("csi.storage.k8s.io/pod.namespace".into(), "tenant-b".into());
            }),
            tonic::Code::PermissionDenied,
        ),
    ];
    for (what, req, code) in cases {
        let err = csi.node_publish_volume(req).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {}", err.message());
        assert!(!err.message().is_empty(), "{what}: the error says what was wrong");
    }
    for (what, target, volume) in [
        ("no volume id", good.to_string_lossy().into_owned(), ""),
        ("relative target", "pods/x".to_string(), "ds"),
        ("escaping target", format!("{}/../x", node.kubelet.display()), "ds"),
    ] {
        let err = csi
            .node_unpublish_volume(NodeUnpublishVolumeRequest { volume_id: volume.into(), target_path: target })
            .await
            .expect_err(what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "unpublish {what}: {}", err.message());
    }
    assert_eq!(node.mounts(), Vec::<String>::new(), "nothing was mounted");
    assert!(!good.exists(), "no target directory was made");
    assert_eq!(std::fs::read_dir(node.state.join("mounts")).unwrap().count(), 0, "no FUSE mount directory");

    // Identity and controller.
    let ch = node.channel().await;
    let info = IdentityClient::new(ch.clone()).get_plugin_info(GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, "csi.shoal.io");
    let node_info = csi.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(node_info.node_id, "node-a");
    let mut ctl = ControllerClient::new(ch);
    let listed = ctl.list_volumes(ListVolumesRequest::default()).await.unwrap().into_inner();
    let ids: Vec<String> =
        listed.entries.iter().filter_map(|e| e.volume.as_ref().map(|v| v.volume_id.clone())).collect();
    assert_eq!(ids, vec!["ds".to_string()]);
    let validate = |mode: Mode, volume: &str| ValidateVolumeCapabilitiesRequest {
        volume_id: volume.into(),
        volume_capabilities: vec![mount_cap(mode)],
        ..Default::default()
    };
    let ok = ctl.validate_volume_capabilities(validate(Mode::MultiNodeReaderOnly, "ds")).await.unwrap().into_inner();
    assert!(ok.confirmed.is_some());
    let refused =
        ctl.validate_volume_capabilities(validate(Mode::MultiNodeMultiWriter, "ds")).await.unwrap().into_inner();
    assert!(refused.confirmed.is_none() && refused.message.contains("read-only"), "{}", refused.message);
    let missing = ctl.validate_volume_capabilities(validate(Mode::MultiNodeReaderOnly, "nope")).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let create = ctl.create_volume(CreateVolumeRequest::default()).await.unwrap_err();
    assert_eq!(create.code(), tonic::Code::Unimplemented);
}

/// Each dataset's volume has its own lock: while one dataset's FUSE process is
/// slow to start (held at a gate by a wrapper of the mount binary), another
/// dataset publishes, serves and unpublishes, and the slow one is still pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_slow_to_start_holds_up_no_other_dataset() {
    let mut node = Node::start();
    let src = node.src.to_str().unwrap().to_string();
    let (code, out, err) =
        cli(&["dataset", "create", "ds2", &src, "--block-size", "64KiB", "--master", &node.master.addr]);
    assert_eq!(code, 0, "{out}{err}");
    let (gate, started) = (node.dir.path().join("gate"), node.dir.path().join("slow-started"));
    let wrapper = node.dir.path().join("mount-wrapper.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$2\" = ds2 ]; then touch '{}'; while [ ! -e '{}' ]; do sleep 0.05; done; fi\nexec '{}' \"$@\"\n",
            started.display(),
            gate.display(),
            SHOAL
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    node.csi = None;
    node.mount_args.push(format!("--mount-bin={}", wrapper.display()));
    node.start_csi();

    let slow_target = node.kubelet.join("pods/pod-slow/volumes/kubernetes.io~csi/ds2/mount");
    let mut req = publish_req("pv-ds2", &slow_target);
    req.volume_context.insert("dataset".into(), "ds2".into());
    let mut slow_client = node.node().await;
    let slow = tokio::spawn(async move { slow_client.node_publish_volume(req).await });
    wait_for_sync("the slow FUSE process to start", || started.exists());

    let want = checksums(&node.src);
    let mut csi = node.node().await;
    let p1 = node.target("pod-1");
    csi.node_publish_volume(publish_req("pv-ds", &p1)).await.unwrap();
    assert_eq!(checksums(&p1), want);
    csi.node_unpublish_volume(unpublish_req(&p1)).await.unwrap();
    assert!(!slow.is_finished(), "ds2's publish waits at the gate, and ds did not wait for it");

    // An unpublish of the pending target waits for its publish, then undoes it.
    let mut unpub_client = node.node().await;
    let t = slow_target.clone();
    let unpub = tokio::spawn(async move { unpub_client.node_unpublish_volume(unpublish_req(&t)).await });
    let logs = node.dir.path().to_path_buf();
    wait_for_sync("the unpublish to wait for the publish", || {
        std::fs::read_dir(&logs).unwrap().flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with("csi-")
                && std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .contains("unpublish waits for the target's publish")
        })
    });
    std::fs::write(&gate, b"").unwrap();
    slow.await.unwrap().expect("ds2 publishes once its FUSE process starts");
    unpub.await.unwrap().expect("then the unpublish");
    assert!(!shoal_fuse::is_mounted(&slow_target), "the unpublish undid the publish it waited for");
    assert_eq!(node.mounts(), Vec::<String>::new(), "no mount left");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.state.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["volumes"], serde_json::json!({}));
}
