//! `google.api.HttpBody`: bodies that are not JSON. A request of this type (or a `body` field of it) takes the
//! raw request body and its Content-Type; a response of this type (or a `response_body` field of it) is
//! written raw with its `content_type`, and a server stream of them is a streamed download.

use bytes::Bytes;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

use crate::gateway::rules::{ResponseBody, Route};

/// The full name of the type.
pub const HTTP_BODY: &str = "google.api.HttpBody";

/// Whether `message` is `google.api.HttpBody`.
pub fn is_http_body(message: &MessageDescriptor) -> bool {
    message.full_name() == HTTP_BODY
}

/// Whether `field` holds one `google.api.HttpBody`.
pub fn is_http_body_field(field: &FieldDescriptor) -> bool {
    !field.is_list() && !field.is_map() && matches!(field.kind(), Kind::Message(m) if is_http_body(&m))
}

/// An HttpBody message of type `descriptor` with `data` and `content_type`.
pub fn message(descriptor: MessageDescriptor, data: Bytes, content_type: &str) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor);
    message.set_field_by_name("content_type", Value::String(content_type.to_string()));
    message.set_field_by_name("data", Value::Bytes(data));
    message
}

/// The raw body and its content type that a response message of `route` carries.
pub fn response_parts(route: &Route, message: &DynamicMessage) -> (String, Bytes) {
    let body = match &route.response_body {
        ResponseBody::Field(field) => match message.get_field(field).as_ref() {
            Value::Message(inner) => inner.clone(),
            _ => return (String::new(), Bytes::new()),
        },
        ResponseBody::Whole => message.clone(),
    };
    let content_type = body.get_field_by_name("content_type").and_then(|v| v.as_str().map(str::to_string));
    let data = body.get_field_by_name("data").and_then(|v| v.as_bytes().cloned());
    (content_type.unwrap_or_default(), data.unwrap_or_default())
}
