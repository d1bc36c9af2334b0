fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .bytes(".shoal.worker.ReadBlockChunk.data")
        .compile_protos(&["proto/master.proto", "proto/worker.proto"], &["proto"])?;
    // The CSI spec imports protobuf's well-known types (libprotobuf-dev's include
    // directory; protoc finds them on its own search path too).
    let mut includes = vec!["csi"];
    for dir in ["/usr/include", "/usr/local/include"] {
        if std::path::Path::new(dir).join("google/protobuf/timestamp.proto").exists() {
            includes.push(dir);
        }
    }
    tonic_prost_build::configure().compile_protos(&["csi/csi.proto"], &includes)?;
    Ok(())
}
