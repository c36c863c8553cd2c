//! phivault's wire contract, package `phivault.v1`: the protobuf
//! definitions (`phivault/v1/*.proto`), the generated messages, clients and
//! service traits, and the encoded descriptor set for server reflection.
//!
//! The crate depends on neither the server nor RocksDB, so that a pipeline
//! can build a client without either. Conversions between these messages and
//! the vault's own types live with the server.
//!
//! Messages that carry values, tokens or API keys print as redacted in
//! `Debug`, so a request or response that reaches a log never shows PHI.

use std::fmt;

pub mod render;

/// Generated code for `phivault.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("phivault.v1");
}

/// The encoded `FileDescriptorSet` of `phivault.v1`, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/phivault_descriptor.bin"));

impl fmt::Debug for v1::TokenizeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenizeRequest")
            .field("namespace", &self.namespace)
            .field("values", &Redacted(self.values.len()))
            .finish()
    }
}

impl fmt::Debug for v1::DetokenizeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetokenizeRequest")
            .field("namespace", &self.namespace)
            .field("tokens", &Redacted(self.tokens.len()))
            .field("masked", &self.masked)
            .finish()
    }
}

impl fmt::Debug for v1::TokenizeResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenizeResponse")
            .field("results", &self.results)
            .finish()
    }
}

impl fmt::Debug for v1::DetokenizeResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DetokenizeResponse")
            .field("results", &self.results)
            .finish()
    }
}

impl fmt::Debug for v1::ItemResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Some(v1::item_result::Outcome::Text(_)) => f.write_str("Text(<redacted>)"),
            Some(v1::item_result::Outcome::Error(e)) => f.debug_tuple("Error").field(e).finish(),
            None => f.write_str("None"),
        }
    }
}

impl fmt::Debug for v1::CreateClientResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateClientResponse")
            .field("client", &self.client)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for v1::ListDisclosuresRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListDisclosuresRequest")
            .field("namespace", &self.namespace)
            .field("token", &"<redacted>")
            .field("after_seq", &self.after_seq)
            .field("limit", &self.limit)
            .finish()
    }
}

/// Prints how many items a redacted list holds, and nothing of them.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} redacted>", self.0)
    }
}

/// The name of a `google.rpc.Code` (`INVALID_ARGUMENT`): the one spelling
/// of a status everywhere phivault prints or labels one (the CLI's reports
/// and errors files, audit listings, metric labels).
pub fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::v1;

    #[test]
    fn debug_output_never_shows_values_tokens_or_keys() {
        let request = v1::TokenizeRequest {
            namespace: "ssn".into(),
            values: vec!["123-45-6789".into()],
        };
        let printed = format!("{request:?}");
        assert!(
            printed.contains("ssn") && printed.contains("<1 redacted>"),
            "{printed}"
        );
        assert!(!printed.contains("6789"));

        let response = v1::DetokenizeResponse {
            results: vec![
                v1::ItemResult {
                    outcome: Some(v1::item_result::Outcome::Text("123-45-6789".into())),
                },
                v1::ItemResult {
                    outcome: Some(v1::item_result::Outcome::Error(v1::ItemError {
                        code: 5,
                        message: "namespace \"ssn\": no such token".into(),
                    })),
                },
            ],
        };
        let printed = format!("{response:?}");
        assert!(
            !printed.contains("6789") && printed.contains("no such token"),
            "{printed}"
        );

        let created = v1::CreateClientResponse {
            client: None,
            api_key: "pv_abc_secret".into(),
        };
        assert!(!format!("{created:?}").contains("secret"));
    }

    #[test]
    fn the_descriptor_set_describes_both_services() {
        let set = super::FILE_DESCRIPTOR_SET;
        for name in [&b"Tokenizer"[..], b"Admin", b"phivault.v1"] {
            assert!(set.windows(name.len()).any(|w| w == name));
        }
    }
}
