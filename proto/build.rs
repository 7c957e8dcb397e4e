//! Generates the gRPC code from `proto/shoal.proto` with a protoc shipped inside a crate, so a
//! fresh machine needs nothing but cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    config.bytes([".shoal.v1.Chunk.data"]);
    println!("cargo:rerun-if-changed=proto/shoal.proto");
    tonic_prost_build::configure()
        // Small first buffers: see `src/wire_codec.rs`.
        .codec_path("crate::wire_codec::WireCodec")
        .compile_with_config(config, &["proto/shoal.proto"], &["proto"])?;
    Ok(())
}
