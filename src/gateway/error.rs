//! Every error becomes an HTTP response here, and only here: one table from gRPC code to HTTP status, and one
//! body shape, google.rpc.Status JSON `{"code", "message", "details"}`, for upstream errors and the gateway's
//! own (no route, bad JSON, body too large, wrong content type) alike.

use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};
use tonic::Code;

use crate::proto::DESCRIPTOR_POOL;
use crate::upstream::CallError;

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route for {method} {path}")]
    NoRoute { method: Method, path: String },
    #[error("method {method} is not allowed for {path}; allowed: {}", join(allow))]
    MethodNotAllowed { method: Method, path: String, allow: Vec<Method> },
    #[error("{0}")]
    BadRequest(String),
    #[error("unsupported content type {got:?}; send {expected}")]
    UnsupportedMediaType { got: String, expected: &'static str },
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("the deadline of {0:?} expired before the upstream answered")]
    DeadlineExceeded(std::time::Duration),
    /// No upstream endpoint could take the call (all ejected, draining or gone), or the upstream's bulkhead is
    /// full: 503 with `Retry-After`, answered at once rather than after a hang.
    #[error("{message}")]
    Unavailable { message: String, retry_after: std::time::Duration },
    /// The client is over its rate limit: 429 with `Retry-After`.
    #[error("rate limit exceeded; retry in {}s", retry_after_secs(*retry_after))]
    RateLimited { retry_after: std::time::Duration },
    /// No valid bearer token: 401 with `WWW-Authenticate`.
    #[error("{0}")]
    Unauthenticated(crate::auth::TokenError),
    /// A status from the upstream service (or from tonic on its behalf), with its details.
    #[error("{}", .0.message())]
    Upstream(tonic::Status),
}

impl From<CallError> for GatewayError {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Status(status) => Self::Upstream(status),
            CallError::DeadlineExceeded(deadline) => Self::DeadlineExceeded(deadline),
            CallError::NoEndpoint(no_endpoint) => {
                Self::Unavailable { retry_after: no_endpoint.retry_after, message: no_endpoint.to_string() }
            }
            CallError::Overloaded(overloaded) => Self::Unavailable {
                message: CallError::Overloaded(overloaded).to_string(),
                // A slot usually frees within moments; one second keeps clients from hammering.
                retry_after: std::time::Duration::from_secs(1),
            },
        }
    }
}

fn join(methods: &[Method]) -> String {
    methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
}

impl GatewayError {
    /// The gRPC code that describes this error in the body.
    pub fn code(&self) -> Code {
        match self {
            Self::NoRoute { .. } => Code::NotFound,
            Self::MethodNotAllowed { .. } => Code::Unimplemented,
            Self::BadRequest(_) | Self::UnsupportedMediaType { .. } => Code::InvalidArgument,
            Self::PayloadTooLarge { .. } => Code::ResourceExhausted,
            Self::BodyTimeout(_) => Code::DeadlineExceeded,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Unavailable { .. } => Code::Unavailable,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::RateLimited { .. } => Code::ResourceExhausted,
            Self::Upstream(status) => status.code(),
        }
    }

    /// The HTTP status: the table for gRPC codes, with the gateway's own HTTP-level answers where HTTP has a
    /// more precise one (405, 408, 413, 415).
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            other => http_status(other.code()),
        }
    }

    /// The google.rpc.Status JSON body.
    pub fn to_json(&self) -> Bytes {
        let details = match self {
            Self::Upstream(status) => status.details(),
            _ => &[],
        };
        status_json(self.code(), &self.to_string(), details)
    }
}

impl From<tonic::Status> for GatewayError {
    fn from(status: tonic::Status) -> Self {
        Self::Upstream(status)
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut response = (self.http_status(), self.to_json()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Self::MethodNotAllowed { allow, .. } = &self
            && let Ok(value) = HeaderValue::from_str(&join(allow))
        {
            headers.insert(header::ALLOW, value);
        }
        if let Self::Unavailable { retry_after, .. } | Self::RateLimited { retry_after } = &self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(*retry_after)));
        }
        if let Self::Unauthenticated(error) = &self {
            headers.insert(header::WWW_AUTHENTICATE, www_authenticate(error));
        }
        response
    }
}

/// RFC 6750 §3: a request without credentials gets the bare challenge; a bad token gets `invalid_token` and
/// the reason (quotes and backslashes left out, as they would end the quoted string).
fn www_authenticate(error: &crate::auth::TokenError) -> HeaderValue {
    if error.is_missing() {
        return HeaderValue::from_static("Bearer");
    }
    let description: String = error
        .to_string()
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control() && !matches!(c, '"' | '\\'))
        .collect();
    HeaderValue::from_str(&format!("Bearer error=\"invalid_token\", error_description=\"{description}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\""))
}

/// `Retry-After` takes whole seconds: round up, and never say 0 (which invites an immediate retry).
fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

/// The HTTP status for a gRPC code (google.rpc.Code's documented mapping).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 Client Closed Request: nginx's code, which google.rpc.Code names for CANCELLED.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// google.rpc.Status as JSON. `details` is the binary google.rpc.Status a gRPC server put in
/// `grpc-status-details-bin` (empty when there is none); its typed details are rendered in proto3 JSON with an
/// `@type`. A detail of a type the gateway does not know is kept as `{"@type", "value": base64}` rather than
/// dropped.
pub fn status_json(code: Code, message: &str, details: &[u8]) -> Bytes {
    // A struct, not `json!`, so the fields keep google.rpc.Status's order.
    #[derive(serde::Serialize)]
    struct StatusBody<'a> {
        code: i32,
        message: &'a str,
        details: Vec<serde_json::Value>,
    }
    let body = StatusBody { code: code as i32, message, details: decode_details(details) };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

fn decode_details(bytes: &[u8]) -> Vec<serde_json::Value> {
    if bytes.is_empty() {
        return Vec::new();
    }
    // Each detail is rendered on its own, so one of an unknown type does not lose the others.
    let Ok(status) = crate::proto::google::rpc::Status::decode(bytes) else {
        tracing::warn!("upstream sent undecodable status details");
        return Vec::new();
    };
    status.details.iter().map(|any| detail_json(&any.type_url, &any.value)).collect()
}

fn detail_json(type_url: &str, value: &[u8]) -> serde_json::Value {
    let type_name = type_url.rsplit('/').next().unwrap_or(type_url);
    let rendered = DESCRIPTOR_POOL.get_message_by_name(type_name).and_then(|descriptor| {
        let message = DynamicMessage::decode(descriptor, value).ok()?;
        let options = SerializeOptions::new().skip_default_fields(false);
        let mut json = message.serialize_with_options(serde_json::value::Serializer, &options).ok()?;
        let object = json.as_object_mut()?;
        object.insert("@type".into(), type_url.into());
        Some(json)
    });
    rendered.unwrap_or_else(
        || serde_json::json!({ "@type": type_url, "value": base64::engine::general_purpose::STANDARD.encode(value) }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_never_zero() {
        for (millis, seconds) in [(0, 1), (1, 1), (600, 1), (1000, 1), (1001, 2), (2500, 3)] {
            assert_eq!(retry_after_secs(std::time::Duration::from_millis(millis)), seconds, "{millis} ms");
        }
    }

    #[test]
    fn the_status_table() {
        let table = [
            (Code::Ok, 200),
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::OutOfRange, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::Aborted, 409),
            (Code::ResourceExhausted, 429),
            (Code::Cancelled, 499),
            (Code::Unimplemented, 501),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Unknown, 500),
            (Code::Internal, 500),
            (Code::DataLoss, 500),
        ];
        for (code, status) in table {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
    }

    #[test]
    fn bad_request_details_render_as_proto3_json() -> Result<(), Box<dyn std::error::Error>> {
        use tonic_types::{ErrorDetails, StatusExt};
        let status = tonic::Status::with_error_details(
            Code::InvalidArgument,
            "invalid request",
            ErrorDetails::with_bad_request_violation("user.email", "is not an email"),
        );
        let body: serde_json::Value = serde_json::from_slice(&GatewayError::from(status).to_json())?;
        assert_eq!(body["code"], 3);
        assert_eq!(body["message"], "invalid request");
        assert_eq!(body["details"][0]["@type"], "type.googleapis.com/google.rpc.BadRequest");
        assert_eq!(body["details"][0]["fieldViolations"][0]["field"], "user.email");
        assert_eq!(body["details"][0]["fieldViolations"][0]["description"], "is not an email");
        Ok(())
    }

    #[test]
    fn unknown_detail_types_are_kept_as_base64() {
        let detail = detail_json("type.googleapis.com/acme.Secret", b"\x01\x02");
        assert_eq!(detail, serde_json::json!({"@type": "type.googleapis.com/acme.Secret", "value": "AQI="}));
    }

    #[test]
    fn gateway_errors_have_their_own_statuses_and_allow() {
        let error = GatewayError::MethodNotAllowed {
            method: Method::PUT,
            path: "/v1/users".into(),
            allow: vec![Method::GET, Method::POST],
        };
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers().get(header::ALLOW).and_then(|v| v.to_str().ok()), Some("GET, POST"));
        assert_eq!(GatewayError::PayloadTooLarge { limit: 1 }.http_status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            GatewayError::NoRoute { method: Method::GET, path: "/x".into() }.http_status(),
            StatusCode::NOT_FOUND
        );
    }
}
