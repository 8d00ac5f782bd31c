// protoc comes from crates.io (protoc-bin-vendored), so a fresh machine needs nothing installed.
const SECRET_MESSAGES: [&str; 7] = [
    "GenerateDataKeyResponse",
    "EncryptRequest",
    "DecryptResponse",
    "RecoverResponse",
    "ZkKeyResponse",
    "UnsealRequest",
    "ApproveRecoveryRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Messages that carry key material or plaintext get a redacting Debug
    // and a zeroizing Drop by hand (src/service.rs, `secret_messages!`).
    config.skip_debug(
        SECRET_MESSAGES
            .iter()
            .map(|m| format!(".yilian.kms.v1.{m}")),
    );
    // Served by gRPC reflection, so grpcurl needs no .proto files.
    let descriptors =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("kms_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .compile_with_config(config, &["../proto/kms.proto"], &["../proto"])?;
    println!("cargo:rerun-if-changed=../proto/kms.proto");
    Ok(())
}
