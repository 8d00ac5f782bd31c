// protoc comes from crates.io (protoc-bin-vendored), so a fresh machine needs nothing installed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The control plane is the coordinator's; a device agent builds without it.
    if std::env::var_os("CARGO_FEATURE_COORDINATOR").is_none() {
        return Ok(());
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Served by gRPC reflection, so grpcurl needs no .proto files.
    let descriptors =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("federated_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .compile_with_config(config, &["../proto/federated.proto"], &["../proto"])?;
    println!("cargo:rerun-if-changed=../proto/federated.proto");
    Ok(())
}
