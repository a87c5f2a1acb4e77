//! PATCH without an explicit `update_mask`: the mask is inferred from the keys of the JSON body, as
//! grpc-gateway does.

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value};

use crate::gateway::error::GatewayError;

/// PATCH with a `body: "field"` rule and a FieldMask `update_mask` the client did not send: the mask becomes
/// the body's JSON keys (nested objects give dotted paths), so only what the client sent changes.
pub(super) fn fill_update_mask(
    message: &mut DynamicMessage,
    body_field: &FieldDescriptor,
    body: &[u8],
) -> Result<(), GatewayError> {
    let descriptor = message.descriptor();
    let Some(mask_field) = descriptor.get_field_by_name("update_mask") else { return Ok(()) };
    let Kind::Message(mask_type) = mask_field.kind() else { return Ok(()) };
    if mask_type.full_name() != "google.protobuf.FieldMask" || message.has_field(&mask_field) {
        return Ok(());
    }
    let Kind::Message(body_type) = body_field.kind() else { return Ok(()) };
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| GatewayError::BadRequest(format!("invalid JSON body: {e}")))?;
    let mut paths = Vec::new();
    collect_mask_paths(&body_type, &json, "", &mut paths);
    let mut mask = DynamicMessage::new(mask_type);
    mask.set_field_by_name("paths", Value::List(paths.into_iter().map(Value::String).collect()));
    message.set_field(&mask_field, Value::Message(mask));
    Ok(())
}

fn collect_mask_paths(descriptor: &MessageDescriptor, json: &serde_json::Value, prefix: &str, paths: &mut Vec<String>) {
    let Some(object) = json.as_object() else { return };
    for (key, value) in object {
        let Some(field) = descriptor.get_field_by_json_name(key).or_else(|| descriptor.get_field_by_name(key)) else {
            continue;
        };
        let path = format!("{prefix}{}", field.name());
        match field.kind() {
            // A nested object names its own fields, except for maps and well-known types, which are replaced
            // as a whole.
            Kind::Message(nested)
                if value.is_object() && !field.is_map() && !nested.full_name().starts_with("google.protobuf.") =>
            {
                collect_mask_paths(&nested, value, &format!("{path}."), paths);
            }
            _ => paths.push(path),
        }
    }
}
