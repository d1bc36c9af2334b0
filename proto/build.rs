fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .bytes(".shoal.worker.ReadBlockChunk.data")
        .compile_protos(&["proto/master.proto", "proto/worker.proto"], &["proto"])?;
    Ok(())
}
