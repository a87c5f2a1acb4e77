//! JSON request bodies: one message, or the value of a `body: "field"` rule, with the field at fault named in
//! every 400.

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

use super::DESERIALIZE;
use crate::gateway::error::GatewayError;
use crate::gateway::json_check;

/// Parses one JSON object as a `descriptor` message (rejecting unknown fields, deep nesting and repeated
/// keys). Used for unary bodies and each message of a streamed body.
pub fn parse_message(
    descriptor: &MessageDescriptor,
    json: &[u8],
    max_depth: usize,
) -> Result<DynamicMessage, GatewayError> {
    json_check::check(json, max_depth).map_err(|e| GatewayError::BadRequest(format!("invalid JSON body: {e}")))?;
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let message = DynamicMessage::deserialize_with_options(descriptor.clone(), &mut deserializer, &DESERIALIZE)
        .map_err(|e| invalid_body(descriptor, json, &e))?;
    deserializer.end().map_err(|e| GatewayError::BadRequest(format!("invalid JSON body: {e}")))?;
    Ok(message)
}

/// A 400 for a body that does not fit `descriptor`, naming the offending field. The JSON parser's own
/// message says what was wrong but not where in the message, so on this (rare) path the body is checked
/// again one field at a time to find it.
fn invalid_body(descriptor: &MessageDescriptor, json: &[u8], error: &serde_json::Error) -> GatewayError {
    let located =
        serde_json::from_slice::<serde_json::Value>(json).ok().and_then(|value| locate_bad_field(descriptor, &value));
    GatewayError::BadRequest(match located {
        Some(field) => format!("invalid field {field:?} in the {} JSON body: {error}", descriptor.name()),
        None => format!("invalid {} in JSON body: {error}", descriptor.name()),
    })
}

/// The dotted path of the first field of `value` that does not deserialize as part of `descriptor`.
fn locate_bad_field(descriptor: &MessageDescriptor, value: &serde_json::Value) -> Option<String> {
    let object = value.as_object()?;
    for (key, item) in object {
        let Some(field) = descriptor.get_field_by_json_name(key).or_else(|| descriptor.get_field_by_name(key)) else {
            return Some(key.clone());
        };
        let alone = serde_json::json!({ key: item });
        if DynamicMessage::deserialize_with_options(descriptor.clone(), alone, &DESERIALIZE).is_ok() {
            continue;
        }
        let nested = match field.kind() {
            Kind::Message(inner) if !field.is_map() => match item {
                serde_json::Value::Object(_) if !field.is_list() => {
                    locate_bad_field(&inner, item).map(|sub| format!("{key}.{sub}"))
                }
                serde_json::Value::Array(items) if field.is_list() => {
                    items.iter().enumerate().find_map(|(index, element)| {
                        locate_bad_field(&inner, element).map(|sub| format!("{key}[{index}].{sub}"))
                    })
                }
                _ => None,
            },
            _ => None,
        };
        return Some(nested.unwrap_or_else(|| key.clone()));
    }
    None
}

/// The body of a `body: "field"` rule: any JSON value of that field's type. Parsed through a one-field
/// wrapper object, so every kind (message, scalar, repeated, map, well-known type) follows the same JSON rules.
pub(super) fn parse_field_value(
    input: &MessageDescriptor,
    field: &FieldDescriptor,
    json: &[u8],
    max_depth: usize,
) -> Result<Value, GatewayError> {
    json_check::check(json, max_depth).map_err(|e| GatewayError::BadRequest(format!("invalid JSON body: {e}")))?;
    if let Kind::Message(descriptor) = field.kind()
        && !field.is_list()
        && !field.is_map()
    {
        let mut deserializer = serde_json::Deserializer::from_slice(json);
        let message = DynamicMessage::deserialize_with_options(descriptor.clone(), &mut deserializer, &DESERIALIZE)
            .map_err(|e| invalid_body(&descriptor, json, &e))?;
        deserializer.end().map_err(|e| GatewayError::BadRequest(format!("invalid JSON body: {e}")))?;
        return Ok(Value::Message(message));
    }
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| GatewayError::BadRequest(format!("invalid JSON body: {e}")))?;
    let wrapper = serde_json::json!({ field.json_name(): value });
    let message = DynamicMessage::deserialize_with_options(input.clone(), wrapper, &DESERIALIZE)
        .map_err(|e| GatewayError::BadRequest(format!("invalid {} in JSON body: {e}", field.name())))?;
    Ok(message.get_field(field).into_owned())
}
