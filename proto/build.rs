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

/// Messages the HTTP/JSON API answers with, as JSON with the proto's field
/// names, and described in its OpenAPI document by their proto comments.
const JSON_ANSWERS: [&str; 14] = [
    ".phivault.v1.Namespace",
    ".phivault.v1.ListNamespacesResponse",
    ".phivault.v1.Client",
    ".phivault.v1.ListClientsResponse",
    ".phivault.v1.CreateClientResponse",
    ".phivault.v1.KeyStatus",
    ".phivault.v1.KeyVersion",
    ".phivault.v1.RotationProgress",
    ".phivault.v1.LastRotation",
    ".phivault.v1.RotateKeysResponse",
    ".phivault.v1.VerifyAuditResponse",
    ".phivault.v1.Disclosure",
    ".phivault.v1.ListDisclosuresResponse",
    ".phivault.v1.FormatOptions",
];

/// Requests the HTTP/JSON API takes whole as its body: a field left out
/// takes its proto default, and a field the message lacks is refused.
const JSON_REQUESTS: [&str; 3] = [
    ".phivault.v1.CreateNamespaceRequest",
    ".phivault.v1.CreateClientRequest",
    ".phivault.v1.FormatOptions",
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
    let mut build = tonic_prost_build::configure().skip_debug(REDACTED);
    for message in JSON_ANSWERS {
        build = build.type_attribute(
            message,
            r#"#[cfg_attr(feature = "json", derive(serde::Serialize, utoipa::ToSchema))]"#,
        );
    }
    for message in JSON_REQUESTS {
        build = build.type_attribute(
            message,
            r#"#[cfg_attr(feature = "json", derive(serde::Deserialize), serde(default, deny_unknown_fields))]"#,
        );
        if !JSON_ANSWERS.contains(&message) {
            build = build.type_attribute(
                message,
                r#"#[cfg_attr(feature = "json", derive(utoipa::ToSchema))]"#,
            );
        }
    }
    build.compile_fds(descriptors)?;
    Ok(())
}
