// protoc comes from crates.io (protoc-bin-vendored), so a fresh machine needs nothing installed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The gRPC services are the member node's; offline checks build without them.
    if std::env::var_os("CARGO_FEATURE_NODE").is_none() {
        return Ok(());
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Served by gRPC reflection, so grpcurl needs no .proto files.
    let descriptors =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("ledger_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .compile_with_config(
            config,
            &["../proto/ledger.proto", "../proto/consortium.proto"],
            &["../proto"],
        )?;
    Ok(())
}
