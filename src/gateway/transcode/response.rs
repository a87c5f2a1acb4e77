//! Responses as canonical proto3 JSON: the whole message or its `response_body` field.

use prost_reflect::{DynamicMessage, MessageDescriptor, Value};

use super::{SERIALIZE, wire_json};
use crate::gateway::error::GatewayError;
use crate::gateway::rules::{ResponseBody, Route};

/// The JSON body of a unary response: the whole message, or its `response_body` field.
pub fn response_json(route: &Route, message: &DynamicMessage) -> Result<Vec<u8>, GatewayError> {
    match &route.response_body {
        ResponseBody::Whole => message_json(message),
        ResponseBody::Field(field) => match message.get_field(field).as_ref() {
            Value::Message(inner) if !field.is_list() && !field.is_map() => message_json(inner),
            _ => {
                // Scalars, lists and maps: render the whole message and take the field out of it.
                let mut whole = serde_json::to_value(JsonMessage(message)).map_err(internal)?;
                let value =
                    whole.get_mut(field.json_name()).map(serde_json::Value::take).unwrap_or(serde_json::Value::Null);
                serde_json::to_vec(&value).map_err(internal)
            }
        },
    }
}

/// The JSON body of a unary answer from its wire bytes, as [`response_json`] prints the decoded message:
/// straight from the bytes with the route's plan where `wire_json.rs` can, else decoded first.
///
/// # Errors
///
/// Bytes that do not decode as the RPC's output type (an upstream fault, 500), or a value proto3 JSON cannot
/// hold.
pub fn wire_response_json(route: &Route, wire: &[u8]) -> Result<Vec<u8>, GatewayError> {
    let mut out = Vec::with_capacity(256);
    let printed = match &route.response_body {
        ResponseBody::Whole => wire_json::write_message(&mut out, &route.response_plan, wire),
        ResponseBody::Field(field) => wire_json::write_field(&mut out, &route.response_plan, field.number(), wire),
    };
    if printed.is_ok() {
        return Ok(out);
    }
    response_json(route, &decode_answer(&route.grpc.response, wire)?)
}

/// An answer's wire bytes decoded as a `descriptor` message.
///
/// # Errors
///
/// Bytes that do not decode: the upstream's fault, a 500 that says what it sent.
pub fn decode_answer(descriptor: &MessageDescriptor, wire: &[u8]) -> Result<DynamicMessage, GatewayError> {
    DynamicMessage::decode(descriptor.clone(), wire).map_err(|e| {
        GatewayError::Upstream(tonic::Status::internal(format!(
            "upstream sent an undecodable {}: {e}",
            descriptor.full_name()
        )))
    })
}

/// Canonical proto3 JSON of a message (see `json_out.rs`).
pub fn message_json(message: &DynamicMessage) -> Result<Vec<u8>, GatewayError> {
    let mut out = Vec::with_capacity(256);
    super::json_out::write_message(&mut out, message).map_err(internal)?;
    Ok(out)
}

/// A message as a serde value with the gateway's JSON options.
pub struct JsonMessage<'a>(pub &'a DynamicMessage);

impl serde::Serialize for JsonMessage<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_with_options(serializer, &SERIALIZE)
    }
}

fn internal(error: impl std::fmt::Display) -> GatewayError {
    GatewayError::Upstream(tonic::Status::internal(format!("cannot render the response as JSON: {error}")))
}
