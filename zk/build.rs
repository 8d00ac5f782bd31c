// protoc comes from crates.io (protoc-bin-vendored), so a fresh machine needs nothing installed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Served by gRPC reflection, so grpcurl needs no .proto files.
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("zk_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        // It carries the holder's cipher key; `service.rs` writes a Debug
        // that leaves the key out.
        .skip_debug([".yilian.zk.v1.RegisterRecordRequest"])
        .compile_with_config(config, &["../proto/zk.proto"], &["../proto"])?;
    println!("cargo:rerun-if-changed=../proto/zk.proto");
    Ok(())
}
