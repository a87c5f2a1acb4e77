//! The OTLP/gRPC span exporter: finished spans encoded straight into the wire format of
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export`, and sent over a tonic channel.
//!
//! opentelemetry-otlp's exporter first copies every span into the generated protobuf structs (an allocation
//! per attribute key and string value, a hash of the instrumentation scope per span) and then has prost
//! encode them, measuring each nested message again at every level. With every request traced that was a
//! third of what tracing cost the gateway beyond the spans themselves. Here each span is written once, in
//! order, into one buffer per batch; a nested message's length is written in front of it when it is done.
//! A test holds the bytes to opentelemetry-proto's encoding of the same spans, field by field.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes};
use opentelemetry::trace::{SpanContext, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::upstream::codec::WireDecoder;

/// The collector's RPC.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Why the exporter cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error("the OTLP endpoint {endpoint:?} is not an http:// or https:// URL: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("OTEL_EXPORTER_OTLP_HEADERS: {0}")]
    Headers(String),
}

/// Sends batches of spans to one collector.
#[derive(Debug)]
pub struct OtlpExporter {
    channel: Channel,
    /// Sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TRACES_HEADERS`).
    headers: MetadataMap,
    /// The resource's fields of `ResourceSpans`, encoded once (the resource does not change).
    resource: Vec<u8>,
}

impl OtlpExporter {
    /// An exporter for `endpoint` that connects lazily, on the first export, and gives each export `timeout`.
    /// Must run inside the Tokio runtime, which carries the connection.
    ///
    /// # Errors
    ///
    /// An endpoint that is not an http(s) URL, or malformed headers in the environment.
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Self, ExporterError> {
        let invalid = |reason: &str| ExporterError::Endpoint { endpoint: endpoint.to_string(), reason: reason.into() };
        let uri: Uri = endpoint.parse().map_err(|error: http::uri::InvalidUri| invalid(&error.to_string()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(invalid("expected http://host:port or https://host:port"));
        }
        let endpoint = Endpoint::from(uri.clone()).connect_timeout(timeout).timeout(timeout).tcp_nodelay(true);
        let endpoint = crate::upstream::tls::UpstreamTls::default().apply(&uri, endpoint);
        let mut headers = MetadataMap::new();
        for variable in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"] {
            if let Ok(list) = std::env::var(variable) {
                parse_headers(&list, &mut headers).map_err(ExporterError::Headers)?;
            }
        }
        Ok(Self {
            channel: endpoint.connect_lazy(),
            headers,
            resource: encode_resource(&Resource::builder_empty().build()),
        })
    }
}

impl SpanExporter for OtlpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let request = encode_request(&self.resource, &batch);
        drop(batch);
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.map_err(|error| OTelSdkError::InternalFailure(format!("collector unavailable: {error}")))?;
        let mut call = tonic::Request::new(request);
        *call.metadata_mut() = self.headers.clone();
        let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
        let response = grpc
            .unary(call, path, RawCodec)
            .await
            .map_err(|status| OTelSdkError::InternalFailure(format!("export failed: {status}")))?;
        match rejected_spans(response.into_inner()) {
            0 => Ok(()),
            rejected => Err(OTelSdkError::InternalFailure(format!("the collector rejected {rejected} span(s)"))),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = encode_resource(resource);
    }
}

/// `key1=value1,key2=value2`, values percent-encoded (the OpenTelemetry environment variable format).
fn parse_headers(list: &str, headers: &mut MetadataMap) -> Result<(), String> {
    for pair in list.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not key=value"))?;
        let value = percent_decode(value.trim()).ok_or_else(|| format!("{key}: bad percent-encoding"))?;
        let key = AsciiMetadataKey::from_bytes(key.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("{key:?} is not a header name"))?;
        let value = AsciiMetadataValue::try_from(value.as_str()).map_err(|_| format!("{key}: not a header value"))?;
        headers.insert(key, value);
    }
    Ok(())
}

fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// `partial_success.rejected_spans` of an `ExportTraceServiceResponse` (0 when absent or unreadable).
fn rejected_spans(response: Bytes) -> i64 {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Response {
        #[prost(message, optional, tag = "1")]
        partial_success: Option<PartialSuccess>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct PartialSuccess {
        #[prost(int64, tag = "1")]
        rejected_spans: i64,
    }
    <Response as prost::Message>::decode(response)
        .ok()
        .and_then(|response| response.partial_success)
        .map_or(0, |partial| partial.rejected_spans)
}

/// Sends a message already encoded; hands the answer over as its wire bytes (the upstream layer's decoder).
#[derive(Debug, Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = WireDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        WireDecoder
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

// --- protobuf wire format -------------------------------------------------------------------------------

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LENGTH_DELIMITED: u32 = 2;
const FIXED32: u32 = 5;

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    varint(out, u64::from(field << 3 | wire_type));
}

/// A varint field, left out when 0 (proto3).
fn uint(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        tag(out, field, VARINT);
        varint(out, value);
    }
}

fn fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        tag(out, field, FIXED64);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn fixed32(out: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        tag(out, field, FIXED32);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// A string or bytes field, left out when empty (proto3).
fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    if !value.is_empty() {
        tag(out, field, LENGTH_DELIMITED);
        varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }
}

/// A nested message written by `body`, with its length in front. Most messages (an attribute, a value) are
/// shorter than 128 bytes, whose length is one byte: that byte is reserved before the body is written and
/// filled in after, so only a longer message's body moves to make room for its length.
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    tag(out, field, LENGTH_DELIMITED);
    let at = out.len();
    out.push(0);
    body(out);
    let mut length = (out.len() - at - 1) as u64;
    if length < 0x80 {
        out[at] = length as u8;
        return;
    }
    let mut prefix = [0u8; 10];
    let mut used = 0;
    loop {
        let byte = (length & 0x7f) as u8;
        length >>= 7;
        prefix[used] = if length == 0 { byte } else { byte | 0x80 };
        used += 1;
        if length == 0 {
            break;
        }
    }
    out.splice(at..=at, prefix[..used].iter().copied());
}

// --- OTLP messages ----------------------------------------------------------------------------------------

/// The `ExportTraceServiceRequest` for `spans`, grouped by instrumentation scope (in order of appearance).
fn encode_request(resource: &[u8], spans: &[SpanData]) -> Bytes {
    let mut scopes: Vec<&InstrumentationScope> = Vec::new();
    for span in spans {
        if !scopes.iter().any(|scope| **scope == span.instrumentation_scope) {
            scopes.push(&span.instrumentation_scope);
        }
    }
    let mut out = Vec::with_capacity(256 + spans.len() * 320);
    // ExportTraceServiceRequest.resource_spans = 1
    message(&mut out, 1, |out| {
        out.extend_from_slice(resource);
        for scope in scopes {
            // ResourceSpans.scope_spans = 2
            message(out, 2, |out| {
                message(out, 1, |out| instrumentation_scope(out, scope));
                for span in spans.iter().filter(|span| span.instrumentation_scope == *scope) {
                    message(out, 2, |out| encode_span(out, span));
                }
                bytes(out, 3, scope.schema_url().unwrap_or_default().as_bytes());
            });
        }
    });
    // The resource's schema URL (ResourceSpans.schema_url = 3) is part of `resource`, written before the
    // scope spans; field order does not matter to a protobuf reader.
    Bytes::from(out)
}

/// `ResourceSpans.resource = 1` and `ResourceSpans.schema_url = 3`.
fn encode_resource(resource: &Resource) -> Vec<u8> {
    let mut out = Vec::new();
    message(&mut out, 1, |out| {
        for (key, value) in resource.iter() {
            message(out, 1, |out| key_value(out, key.as_str(), value));
        }
    });
    bytes(&mut out, 3, resource.schema_url().unwrap_or_default().as_bytes());
    out
}

fn instrumentation_scope(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    bytes(out, 1, scope.name().as_bytes());
    bytes(out, 2, scope.version().unwrap_or_default().as_bytes());
    attributes(out, 3, scope.attributes());
}

fn attributes<'a>(out: &mut Vec<u8>, field: u32, attributes: impl IntoIterator<Item = &'a KeyValue>) {
    for attribute in attributes {
        message(out, field, |out| key_value(out, attribute.key.as_str(), &attribute.value));
    }
}

fn key_value(out: &mut Vec<u8>, key: &str, value: &Value) {
    bytes(out, 1, key.as_bytes());
    message(out, 2, |out| any_value(out, value));
}

/// An `AnyValue`: its `oneof` always written, even when the value is the default.
fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(value) => {
            tag(out, 2, VARINT);
            varint(out, u64::from(*value));
        }
        Value::I64(value) => {
            tag(out, 3, VARINT);
            varint(out, *value as u64);
        }
        Value::F64(value) => {
            tag(out, 4, FIXED64);
            out.extend_from_slice(&value.to_le_bytes());
        }
        Value::String(value) => string_value(out, value.as_str()),
        Value::Array(array) => message(out, 5, |out| match array {
            Array::Bool(values) => values.iter().for_each(|v| message(out, 1, |out| any_value(out, &Value::Bool(*v)))),
            Array::I64(values) => values.iter().for_each(|v| message(out, 1, |out| any_value(out, &Value::I64(*v)))),
            Array::F64(values) => values.iter().for_each(|v| message(out, 1, |out| any_value(out, &Value::F64(*v)))),
            Array::String(values) => values.iter().for_each(|v| message(out, 1, |out| string_value(out, v.as_str()))),
            // A kind of array added to the API after this was written: its text, rather than nothing.
            other => message(out, 1, |out| string_value(out, &other.to_string())),
        }),
        other => string_value(out, &other.to_string()),
    }
}

fn string_value(out: &mut Vec<u8>, value: &str) {
    tag(out, 1, LENGTH_DELIMITED);
    varint(out, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}

fn encode_span(out: &mut Vec<u8>, span: &SpanData) {
    let context: &SpanContext = &span.span_context;
    bytes(out, 1, &context.trace_id().to_bytes());
    bytes(out, 2, &context.span_id().to_bytes());
    bytes(out, 3, context.trace_state().header().as_bytes());
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    bytes(out, 5, span.name.as_bytes());
    uint(out, 6, span_kind(&span.span_kind));
    fixed64(out, 7, unix_nanos(span.start_time));
    fixed64(out, 8, unix_nanos(span.end_time));
    attributes(out, 9, &span.attributes);
    uint(out, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        message(out, 11, |out| {
            fixed64(out, 1, unix_nanos(event.timestamp));
            bytes(out, 2, event.name.as_bytes());
            attributes(out, 3, &event.attributes);
            uint(out, 4, u64::from(event.dropped_attributes_count));
        });
    }
    uint(out, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        message(out, 13, |out| {
            bytes(out, 1, &link.span_context.trace_id().to_bytes());
            bytes(out, 2, &link.span_context.span_id().to_bytes());
            bytes(out, 3, link.span_context.trace_state().header().as_bytes());
            attributes(out, 4, &link.attributes);
            uint(out, 5, u64::from(link.dropped_attributes_count));
            fixed32(out, 6, span_flags(&link.span_context, link.span_context.is_remote()));
        });
    }
    uint(out, 14, u64::from(span.links.dropped_count));
    message(out, 15, |out| {
        if let Status::Error { description } = &span.status {
            bytes(out, 2, description.as_bytes());
        }
        uint(out, 3, status_code(&span.status));
    });
    fixed32(out, 16, span_flags(context, span.parent_span_is_remote));
}

/// `SpanKind` in OTLP numbering.
fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn status_code(status: &Status) -> u64 {
    match status {
        Status::Unset => 0,
        Status::Ok => 1,
        Status::Error { .. } => 2,
    }
}

/// The W3C trace flags, and whether the parent (of a span) or the linked span was remote
/// (`SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK` = 0x100, `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK` = 0x200).
fn span_flags(context: &SpanContext, remote: bool) -> u32 {
    u32::from(context.trace_flags().to_u8()) | 0x100 | if remote { 0x200 } else { 0 }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use opentelemetry::trace::{Event, Link, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message as _;

    use super::*;

    fn context(trace: u128, span: u64, sampled: bool, remote: bool, state: &str) -> SpanContext {
        let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let state: TraceState = state.parse().expect("a valid trace state");
        SpanContext::new(TraceId::from(trace), SpanId::from(span), flags, remote, state)
    }

    fn span(
        name: &'static str,
        scope: &InstrumentationScope,
        parent: Option<(u64, bool)>,
        attributes: Vec<KeyValue>,
    ) -> SpanData {
        let epoch = UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789);
        SpanData {
            span_context: context(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736, 0x00f0_67aa_0ba9_02b7, true, false, ""),
            parent_span_id: parent.map_or(SpanId::INVALID, |(id, _)| SpanId::from(id)),
            parent_span_is_remote: parent.is_some_and(|(_, remote)| remote),
            span_kind: SpanKind::Server,
            name: Cow::Borrowed(name),
            start_time: epoch,
            end_time: epoch + Duration::from_micros(412),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        }
    }

    /// What opentelemetry-otlp would send for the same spans: opentelemetry-proto's structs, encoded by prost.
    fn reference(resource: &Resource, spans: Vec<SpanData>) -> ExportTraceServiceRequest {
        let resource = ResourceAttributesWithSchema::from(resource);
        ExportTraceServiceRequest { resource_spans: group_spans_by_resource_and_scope(spans, &resource) }
    }

    #[test]
    fn spans_encode_as_opentelemetry_proto_encodes_them() {
        let portico = InstrumentationScope::builder("portico").build();
        let other = InstrumentationScope::builder("other")
            .with_version("1.2.3")
            .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
            .with_attributes([KeyValue::new("scope.attribute", true)])
            .build();
        let resource = Resource::builder_empty()
            .with_schema_url(
                [KeyValue::new("service.name", "portico-gateway"), KeyValue::new("service.version", "0.1.0")],
                "https://opentelemetry.io/schemas/1.30.0",
            )
            .build();

        let mut server = span(
            "GET /v1/users/{id}",
            &portico,
            Some((0x1111, true)),
            vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.response.status_code", 200_i64),
                KeyValue::new("negative", -7_i64),
                KeyValue::new("ratio", 0.25_f64),
                KeyValue::new("flag", false),
                KeyValue::new("empty", ""),
                KeyValue::new("zero", 0_i64),
                KeyValue::new("ids", Value::Array(Array::I64(vec![1, -2, 300]))),
                KeyValue::new("names", Value::Array(Array::String(vec!["a".into(), "bé".into()]))),
                KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
                KeyValue::new("floats", Value::Array(Array::F64(vec![1.5, -0.0]))),
                KeyValue::new("long", "x".repeat(300)),
            ],
        );
        server.span_context = context(u128::MAX - 5, 42, true, false, "vendor=value,other=1");
        server.dropped_attributes_count = 3;
        server.events.events = vec![
            Event::new("message", UNIX_EPOCH + Duration::from_secs(5), vec![KeyValue::new("bytes", 512_i64)], 1),
            Event::new("empty", UNIX_EPOCH, vec![], 0),
        ];
        server.events.dropped_count = 2;
        server.links.links =
            vec![Link::new(context(7, 8, false, true, "k=v"), vec![KeyValue::new("link.kind", "cause")], 4)];
        server.links.dropped_count = 1;
        server.status = Status::error("upstream unavailable");

        let mut client = span(
            "user.UserService/GetUser",
            &portico,
            Some((42, false)),
            vec![KeyValue::new("rpc.system", "grpc"), KeyValue::new("server.port", 50051_i64)],
        );
        client.span_kind = SpanKind::Client;
        client.status = Status::Ok;
        let mut root = span("root", &other, None, vec![]);
        root.span_kind = SpanKind::Internal;
        root.span_context = context(1, 1, false, false, "");
        let mut producer = span("publish", &portico, None, vec![]);
        producer.span_kind = SpanKind::Producer;
        let mut consumer = span("consume", &other, None, vec![]);
        consumer.span_kind = SpanKind::Consumer;
        consumer.start_time = UNIX_EPOCH - Duration::from_secs(1);

        let spans = vec![server, client, root, producer, consumer];
        let ours = encode_request(&encode_resource(&resource), &spans);
        let decoded = ExportTraceServiceRequest::decode(ours.clone()).expect("our bytes decode as OTLP");
        assert_eq!(decoded, reference(&resource, spans.clone()));
        // One resource, two scopes in order of appearance, every span once.
        assert_eq!(decoded.resource_spans.len(), 1);
        let scopes: Vec<(&str, usize)> = decoded.resource_spans[0]
            .scope_spans
            .iter()
            .map(|scope| (scope.scope.as_ref().map_or("", |s| s.name.as_str()), scope.spans.len()))
            .collect();
        assert_eq!(scopes, [("portico", 3), ("other", 2)]);
        // The same message as prost writes it, byte for byte in length (field order may differ).
        assert_eq!(ours.len(), reference(&resource, spans).encoded_len());
    }

    #[test]
    fn an_empty_batch_is_a_valid_request() {
        let resource = Resource::builder_empty().build();
        let ours = encode_request(&encode_resource(&resource), &[]);
        let decoded = ExportTraceServiceRequest::decode(ours).expect("valid");
        assert_eq!(decoded, reference(&resource, vec![]));
    }

    #[test]
    fn lengths_of_every_size_class_are_written_in_front() {
        for size in [0, 1, 127, 128, 16_383, 16_384, 70_000] {
            let mut out = Vec::new();
            message(&mut out, 5, |out| out.extend(std::iter::repeat_n(7u8, size)));
            let mut expected = Vec::new();
            prost::encoding::bytes::encode(5, &vec![7u8; size], &mut expected);
            assert_eq!(out, expected, "a nested message of {size} bytes");
        }
    }

    #[test]
    fn headers_from_the_environment_format_parse() {
        let mut headers = MetadataMap::new();
        parse_headers("api-key=secret%20value, X-Tenant = acme ,", &mut headers).expect("valid");
        assert_eq!(headers.get("api-key").and_then(|v| v.to_str().ok()), Some("secret value"));
        assert_eq!(headers.get("x-tenant").and_then(|v| v.to_str().ok()), Some("acme"));
        assert!(parse_headers("novalue", &mut headers).is_err());
        assert!(parse_headers("k=%zz", &mut headers).is_err());
        assert!(parse_headers("bad key=v", &mut headers).is_err());
    }

    #[test]
    fn the_collectors_partial_success_is_read() {
        let mut response = Vec::new();
        message(&mut response, 1, |out| uint(out, 1, 3));
        assert_eq!(rejected_spans(Bytes::from(response)), 3);
        assert_eq!(rejected_spans(Bytes::new()), 0);
    }
}
