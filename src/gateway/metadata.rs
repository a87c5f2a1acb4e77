//! HTTP headers ⇄ gRPC metadata, and deadlines.
//!
//! Only an allow-list crosses to the upstream: `authorization`, `x-request-id`, `traceparent`/`tracestate`,
//! and `Grpc-Metadata-<key>` headers with the prefix stripped. `X-Forwarded-For` and `X-Forwarded-Host` are
//! added. Reserved `grpc-*` keys from clients never cross: they would let a client forge transport state.
//! Upstream response metadata comes back as `Grpc-Metadata-<key>` headers.

use std::time::Duration;

use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, BinaryMetadataKey, BinaryMetadataValue, MetadataMap};

use crate::gateway::error::GatewayError;
use crate::gateway::peer::Peer;

const FORWARDED: [&str; 4] = ["authorization", "x-request-id", "traceparent", "tracestate"];
/// Forwarded headers whose values are new on every request.
const UNIQUE_PER_REQUEST: [&str; 2] = ["x-request-id", "traceparent"];
const METADATA_PREFIX: &str = "grpc-metadata-";
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
// Header names as constants rather than `&str`s: a `&str` key is parsed and checked on every lookup.
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// Keys that belong to HTTP/2 and gRPC framing, never to an application: forwarded from
/// `Grpc-Metadata-<key>`, they would corrupt the upstream request (e.g. a bogus content-length).
const RESERVED: [&str; 10] = [
    "content-length",
    "content-type",
    "connection",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The upstream metadata for a request's headers; `peer` is the client's address, for `X-Forwarded-For`.
///
/// The forwarded headers keep their names and values (reference counts, not copies). Values that differ on
/// every request (`x-request-id`, `traceparent`) are marked sensitive, which HPACK sends as "never indexed":
/// indexing them would only churn both ends' dynamic tables, evicting the entries that do repeat.
pub fn request_metadata(headers: &HeaderMap, peer: Option<&Peer>) -> Result<MetadataMap, GatewayError> {
    let mut forwarded = HeaderMap::new();
    let mut from_prefix = Vec::new();
    for (name, value) in headers {
        if FORWARDED.contains(&name.as_str()) {
            // gRPC's ASCII metadata is visible ASCII; HTTP also allows obs-text, which must not cross.
            if value.to_str().is_err() {
                return Err(GatewayError::BadRequest(format!(
                    "header for metadata key {:?}: value must be visible ASCII",
                    name.as_str()
                )));
            }
            let mut value = value.clone();
            if UNIQUE_PER_REQUEST.contains(&name.as_str()) {
                value.set_sensitive(true);
            }
            forwarded.append(name.clone(), value);
        } else if let Some(stripped) = name.as_str().strip_prefix(METADATA_PREFIX) {
            if stripped.is_empty() || stripped.starts_with("grpc-") || RESERVED.contains(&stripped) {
                continue;
            }
            from_prefix.push((stripped, value));
        }
    }
    let previous = headers.get(&X_FORWARDED_FOR).filter(|v| v.to_str().is_ok());
    let forwarded_for = match (previous, peer) {
        (Some(previous), Some(peer)) => {
            let hop = peer.forwarded_for().as_bytes();
            let mut value = Vec::with_capacity(previous.len() + 2 + hop.len());
            value.extend_from_slice(previous.as_bytes());
            value.extend_from_slice(b", ");
            value.extend_from_slice(hop);
            HeaderValue::from_bytes(&value).ok()
        }
        (None, Some(peer)) => Some(peer.forwarded_for().clone()),
        (Some(previous), None) => Some(previous.clone()),
        (None, None) => None,
    };
    if let Some(value) = forwarded_for {
        forwarded.insert(X_FORWARDED_FOR, value);
    }
    if let Some(host) = headers.get(http::header::HOST).filter(|v| v.to_str().is_ok()) {
        forwarded.insert(X_FORWARDED_HOST, host.clone());
    }
    let mut metadata = MetadataMap::from_headers(forwarded);
    for (key, value) in from_prefix {
        insert(&mut metadata, key, value)?;
    }
    Ok(metadata)
}

fn insert(metadata: &mut MetadataMap, key: &str, value: &HeaderValue) -> Result<(), GatewayError> {
    let bad = |what: &str| GatewayError::BadRequest(format!("header for metadata key {key:?}: {what}"));
    if key.ends_with("-bin") {
        let key = BinaryMetadataKey::from_bytes(key.as_bytes()).map_err(|_| bad("invalid key"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value.as_bytes())
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(value.as_bytes()))
            .map_err(|_| bad("a -bin value must be base64"))?;
        metadata.append_bin(key, BinaryMetadataValue::from_bytes(&bytes));
    } else {
        let key = AsciiMetadataKey::from_bytes(key.as_bytes()).map_err(|_| bad("invalid key"))?;
        let value = AsciiMetadataValue::try_from(value.as_bytes()).map_err(|_| bad("value must be visible ASCII"))?;
        metadata.append(key, value);
    }
    Ok(())
}

/// Upstream response metadata as `Grpc-Metadata-<key>` headers (reserved and HTTP/2 transport keys left out).
///
/// The values are the upstream's own header values (reference counts, not copies); `-bin` values stay in the
/// base64 they crossed the wire in.
pub fn response_headers(metadata: MetadataMap, headers: &mut HeaderMap) {
    let upstream = metadata.into_headers();
    for (key, value) in &upstream {
        let key = key.as_str();
        if key.starts_with("grpc-") || matches!(key, "content-type" | "date" | "te" | "trailer" | "content-length") {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(format!("{METADATA_PREFIX}{key}").as_bytes()) {
            headers.append(name, value.clone());
        }
    }
}

/// The client's deadline from a `Grpc-Timeout` header (gRPC's format: a positive number of up to 8 digits
/// and a unit of H, M, S, m, u or n). A malformed or zero timeout is the client's mistake, a 400, rather than
/// silently no deadline or a deadline that has already expired.
pub fn client_timeout(headers: &HeaderMap) -> Result<Option<Duration>, GatewayError> {
    let Some(value) = headers.get(&GRPC_TIMEOUT) else { return Ok(None) };
    let text = value.to_str().unwrap_or_default();
    parse_grpc_timeout(text).map(Some).ok_or_else(|| {
        GatewayError::BadRequest(format!(
            "Grpc-Timeout {text:?} is not a positive gRPC timeout such as 500m or 10S (1 to 8 digits without \
             leading zeros, then H, M, S, m, u or n)"
        ))
    })
}

/// The grammar the OpenAPI document states for `Grpc-Timeout`; [`parse_grpc_timeout`] accepts exactly it.
pub const GRPC_TIMEOUT_PATTERN: &str = "^[1-9][0-9]{0,7}[HMSmun]$";

/// A client's `Grpc-Timeout`: the spec's format ([`crate::grpc_timeout::parse`]), positive and without leading
/// zeros.
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    crate::grpc_timeout::parse(text).filter(|_| !text.starts_with('0'))
}

/// The deadline of a call: the shorter of the client's and the route's default.
pub fn deadline(client: Option<Duration>, default: Option<Duration>) -> Option<Duration> {
    match (client, default) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        let table = [
            ("1S", Some(Duration::from_secs(1))),
            ("500m", Some(Duration::from_millis(500))),
            ("2M", Some(Duration::from_secs(120))),
            ("1H", Some(Duration::from_secs(3600))),
            ("250u", Some(Duration::from_micros(250))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("", None),
            ("S", None),
            ("10", None),
            ("10s", None),
            ("-1S", None),
            ("123456789S", None),
            ("1.5S", None),
            ("0H", None),
            ("00H", None),
            ("0n", None),
            ("01S", None),
            ("+1S", None),
        ];
        for (text, expected) in table {
            assert_eq!(parse_grpc_timeout(text), expected, "{text:?}");
        }
        assert_eq!(deadline(Some(Duration::from_secs(1)), Some(Duration::from_secs(30))), Some(Duration::from_secs(1)));
        assert_eq!(
            deadline(Some(Duration::from_secs(60)), Some(Duration::from_secs(30))),
            Some(Duration::from_secs(30))
        );
        assert_eq!(deadline(None, None), None);
    }

    /// A header map of static names and values, repeated names kept.
    fn header_map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for &(name, value) in pairs {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn response_metadata_becomes_prefixed_headers_and_transport_keys_stay_behind() {
        let upstream = header_map(&[
            ("content-type", "application/grpc"),
            ("date", "Tue, 01 Dec 2026 06:00:00 GMT"),
            ("grpc-accept-encoding", "gzip"),
            ("grpc-status", "0"),
            ("x-served-by", "replica-2"),
            ("x-served-by", "replica-3"),
            ("trace-bin", "AAEC"),
        ]);
        let mut headers = header_map(&[("content-type", "application/json")]);
        response_headers(MetadataMap::from_headers(upstream), &mut headers);
        let mut got: Vec<(String, String)> = headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("<not text>").to_string()))
            .collect();
        got.sort();
        let expected = [
            ("content-type", "application/json"),
            ("grpc-metadata-trace-bin", "AAEC"),
            ("grpc-metadata-x-served-by", "replica-2"),
            ("grpc-metadata-x-served-by", "replica-3"),
        ];
        assert_eq!(got, expected.map(|(name, value)| (name.to_string(), value.to_string())));
    }

    #[test]
    fn only_the_allow_list_crosses_and_grpc_keys_never_do() -> Result<(), GatewayError> {
        let mut headers = header_map(&[
            ("authorization", "Bearer t"),
            ("x-request-id", "abc"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("grpc-metadata-tenant", "acme"),
            ("grpc-metadata-grpc-status", "0"),
            ("grpc-metadata-content-length", "5"),
            ("grpc-metadata-te", "trailers"),
            ("grpc-timeout", "1S"),
            ("grpc-status", "0"),
            ("cookie", "secret"),
            ("x-forwarded-for", "203.0.113.7"),
            ("host", "api.example.com"),
        ]);
        headers.insert("grpc-metadata-trace-bin", HeaderValue::from_static("AQID"));
        let peer = Peer::new("198.51.100.1:5555".parse().map_err(|_| GatewayError::BadRequest("addr".into()))?);
        let metadata = request_metadata(&headers, Some(&peer))?;
        let get = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok()).map(str::to_string);
        assert_eq!(get("authorization").as_deref(), Some("Bearer t"));
        assert_eq!(get("x-request-id").as_deref(), Some("abc"));
        assert_eq!(get("tenant").as_deref(), Some("acme"));
        assert_eq!(get("x-forwarded-for").as_deref(), Some("203.0.113.7, 198.51.100.1"));
        assert_eq!(get("x-forwarded-host").as_deref(), Some("api.example.com"));
        assert!(get("traceparent").is_some());
        for absent in ["grpc-status", "grpc-timeout", "cookie", "grpc-metadata-tenant", "content-length", "te"] {
            assert!(metadata.get(absent).is_none(), "{absent} must not be forwarded");
        }
        assert_eq!(metadata.get_bin("trace-bin").and_then(|v| v.to_bytes().ok()).as_deref(), Some(&[1u8, 2, 3][..]));
        Ok(())
    }
}
