//! Traces over OTLP: the real server exports a span per call to an OTLP/gRPC
//! receiver run here, joined to the caller's W3C trace context, naming the
//! method, namespace, item count, status and request id, and never a value,
//! a token or a key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use phivault_client::v1 as pb;
use phivault_tests::{Server, VaultDir};

use super::{client_with, connect, texts};

/// An OTLP trace receiver: keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.0.lock().expect("spans").extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_spans_in_the_callers_trace_and_name_no_value() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let collector = listener.local_addr().expect("addr");
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let vault = VaultDir::init();
    let server = Server::start_with_env(
        &vault,
        &[],
        &[
            ("PHIVAULT_OTLP_ENDPOINT", &format!("http://{collector}")),
            // Export at once rather than every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let admin = connect(&server, Some(&vault.admin_key)).await;
    let (_, key) = client_with(&admin, &server, "pipeline", &["tokenize:ssn"]).await;

    // A caller in a trace of its own, as a service with its own tracing
    // would call.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut raw = pb::tokenizer_client::TokenizerClient::connect(server.endpoint())
        .await
        .expect("connect");
    let mut request = tonic::Request::new(pb::TokenizeRequest {
        namespace: "ssn".into(),
        values: vec!["078-05-1120".into(), "219-09-9999".into()],
    });
    let metadata = request.metadata_mut();
    metadata.insert(
        "authorization",
        format!("Bearer {key}").parse().expect("header"),
    );
    metadata.insert(
        "traceparent",
        format!("00-{trace_id}-{parent_id}-01")
            .parse()
            .expect("header"),
    );
    // What a caller may put in its own headers, a record key among them:
    // none of it reaches a span.
    metadata.insert("tracestate", "vendor=mrn-00424242".parse().expect("header"));
    metadata.insert("x-request-id", "MRN-00424242".parse().expect("header"));
    let response = raw.tokenize(request).await.expect("tokenize");
    assert_eq!(
        response
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("MRN-00424242"),
        "the caller's request id is echoed to the caller"
    );
    let tokens: Vec<String> = response
        .into_inner()
        .results
        .into_iter()
        .filter_map(|r| match r.outcome {
            Some(pb::item_result::Outcome::Text(v)) => Some(v),
            _ => None,
        })
        .collect();
    assert_eq!(tokens.len(), 2);
    // A call refused for its scope: a span too, with its status.
    let pipeline = phivault_client::Client::connect(
        phivault_client::ClientOptions::new(server.endpoint()).api_key(&key),
    )
    .await
    .expect("connect");
    assert!(
        texts(
            pipeline
                .tokenize("ssn", vec!["123-45-6789".into()])
                .await
                .expect("ok")
        )
        .len()
            == 1
    );
    pipeline
        .detokenize("ssn", tokens.clone(), false)
        .await
        .expect_err("no detokenize scope");

    let deadline = Instant::now() + Duration::from_secs(30);
    let (ours, refused) = loop {
        let spans = receiver.0.lock().expect("spans").clone();
        let ours = spans.iter().find(|s| hex(&s.trace_id) == trace_id).cloned();
        let refused = spans
            .iter()
            .find(|s| s.name == "phivault.v1.Tokenizer/Detokenize")
            .cloned();
        if let (Some(ours), Some(refused)) = (&ours, &refused) {
            break (ours.clone(), refused.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no span of the call arrived: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(hex(&ours.parent_span_id), parent_id, "joined to the caller");
    assert_eq!(ours.name, "phivault.v1.Tokenizer/Tokenize");
    let said = attributes(&ours);
    assert_eq!(said.get("rpc.system").map(String::as_str), Some("grpc"));
    assert_eq!(said.get("rpc.method").map(String::as_str), Some("Tokenize"));
    assert_eq!(
        said.get("phivault.namespace").map(String::as_str),
        Some("ssn")
    );
    assert_eq!(said.get("phivault.items").map(String::as_str), Some("2"));
    assert_eq!(
        said.get("rpc.grpc.status_code").map(String::as_str),
        Some("0")
    );
    assert_eq!(said.get("phivault.request_id"), None, "the caller's id");
    assert!(ours.trace_state.is_empty(), "{:?}", ours.trace_state);
    assert!(ours.events.is_empty(), "{:?}", ours.events);
    let refused_span = refused.clone();
    let refused = attributes(&refused);
    // An id the server made names the audit record.
    assert!(
        refused
            .get("phivault.request_id")
            .is_some_and(|id| id.len() == 32),
        "{refused:?}"
    );
    assert!(refused_span.events.is_empty());
    assert_eq!(
        refused.get("rpc.grpc.status_code").map(String::as_str),
        Some("7"),
        "PERMISSION_DENIED"
    );

    // Nothing the receiver got holds a value, a token or a key.
    let everything = format!("{:?}", receiver.0.lock().expect("spans"));
    for secret in [
        "078-05-1120",
        "219-09-9999",
        "123-45-6789",
        "00424242",
        key.as_str(),
    ]
    .into_iter()
    .chain(tokens.iter().map(String::as_str))
    {
        assert!(!everything.contains(secret), "a span holds {secret}");
    }
    server.stop();
    serving.abort();
}
