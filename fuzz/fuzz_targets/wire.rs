//! Every wire message decodes from arbitrary bytes without panicking, and what
//! decodes re-encodes to bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use shoal_proto::{csi, master, worker};

fn roundtrip<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(m) = M::decode(bytes) {
        let again = M::decode(m.encode_to_vec().as_slice()).expect("re-encoded message decodes");
        assert_eq!(m, again);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else { return };
    match kind % 24 {
        0 => roundtrip::<master::CreateDatasetRequest>(bytes),
        1 => roundtrip::<master::DatasetInfo>(bytes),
        2 => roundtrip::<master::Inode>(bytes),
        3 => roundtrip::<master::NamespaceChunk>(bytes),
        4 => roundtrip::<master::RegisterWorkerRequest>(bytes),
        5 => roundtrip::<master::HeartbeatRequest>(bytes),
        6 => roundtrip::<master::BlockLocationsResponse>(bytes),
        7 => roundtrip::<master::LoadSpec>(bytes),
        8 => roundtrip::<master::LoadJob>(bytes),
        9 => roundtrip::<master::CacheUsage>(bytes),
        10 => roundtrip::<master::ReadDirRequest>(bytes),
        11 => roundtrip::<master::SetCachePolicyRequest>(bytes),
        12 => roundtrip::<worker::ReadBlockRequest>(bytes),
        13 => roundtrip::<worker::ReadBlockChunk>(bytes),
        14 => roundtrip::<worker::CacheBlockRequest>(bytes),
        15 => roundtrip::<worker::OpenLocalRequest>(bytes),
        16 => roundtrip::<worker::StatsResponse>(bytes),
        17 => roundtrip::<csi::NodePublishVolumeRequest>(bytes),
        18 => roundtrip::<csi::NodeUnpublishVolumeRequest>(bytes),
        19 => roundtrip::<csi::ValidateVolumeCapabilitiesRequest>(bytes),
        20 => roundtrip::<csi::ListVolumesRequest>(bytes),
        21 => roundtrip::<csi::CreateVolumeRequest>(bytes),
        22 => roundtrip::<master::ListNamespaceRequest>(bytes),
        _ => roundtrip::<master::SyncProgress>(bytes),
    }
});
