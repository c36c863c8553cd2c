//! Compiles `phivault/v1/*.proto` with protox, a pure-Rust protobuf compiler,
//! so that no system `protoc` is needed.

use std::path::PathBuf;

const PROTOS: [&str; 2] = ["phivault/v1/tokenizer.proto", "phivault/v1/admin.proto"];

/// Messages that carry values, tokens or API keys: their generated `Debug`
/// is replaced by a redacting one in `lib.rs`, so that logging a request can
/// never print PHI.
const REDACTED: [&str; 7] = [
    ".phivault.v1.TokenizeRequest",
    ".phivault.v1.DetokenizeRequest",
    ".phivault.v1.TokenizeResponse",
    ".phivault.v1.DetokenizeResponse",
    ".phivault.v1.ItemResult",
    ".phivault.v1.CreateClientResponse",
    ".phivault.v1.ListDisclosuresRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("phivault_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .skip_debug(REDACTED)
        .compile_fds(descriptors)?;
    Ok(())
}
