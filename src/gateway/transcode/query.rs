//! Query parameters by dotted path (proto or JSON names), and the scalar form of path and query values.

use std::collections::HashSet;

use base64::Engine;
use bytes::Bytes;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

use super::{TranscodeOptions, UnknownQueryParams, dotted};
use crate::gateway::error::GatewayError;
use crate::gateway::rules::{BodyRule, Route, is_string_form_message};

pub(super) fn apply_query(
    message: &mut DynamicMessage,
    route: &Route,
    query: &str,
    path_bound: &HashSet<String>,
    options: &TranscodeOptions,
) -> Result<(), GatewayError> {
    let input = route.rpc.input();
    let mut unknown: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for (key, raw) in form_urlencoded::parse(query.as_bytes()) {
        let Some(path) = resolve_query_path(&input, &key) else {
            if !unknown.contains(&key.to_string()) {
                unknown.push(key.into_owned());
            }
            continue;
        };
        let name = dotted(&path);
        let in_body = match &route.body {
            BodyRule::Whole => true,
            BodyRule::Field(body) => path.first().is_some_and(|first| first == body),
            BodyRule::None => false,
        };
        if in_body {
            return Err(GatewayError::BadRequest(format!(
                "query parameter {key:?} sets {name}, which this route takes from the request body"
            )));
        }
        if path_bound.contains(&name) {
            return Err(GatewayError::BadRequest(format!(
                "{name} is set by the path and again by query parameter {key:?}"
            )));
        }
        let Some(leaf) = path.last() else { continue };
        if leaf.is_map() {
            return Err(GatewayError::BadRequest(format!(
                "query parameter {key:?}: map fields cannot be set from the query string"
            )));
        }
        let first_time = seen.insert(name.clone());
        if !first_time && !leaf.is_list() {
            return Err(GatewayError::BadRequest(format!(
                "query parameter {key:?} is given more than once, but {name} takes one value"
            )));
        }
        let value =
            scalar_value(leaf, &raw).map_err(|e| GatewayError::BadRequest(format!("query parameter {key:?}: {e}")))?;
        set_query_value(message, &path, value);
    }
    if !unknown.is_empty() && options.unknown_query_params == UnknownQueryParams::Reject {
        let known = query_parameter_names(route);
        return Err(GatewayError::BadRequest(format!(
            "unknown query parameter{} {}; this route accepts: {}",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", "),
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        )));
    }
    Ok(())
}

/// Appends to repeated fields, sets singular ones; creates parent messages along the way.
fn set_query_value(message: &mut DynamicMessage, path: &[FieldDescriptor], value: Value) {
    match path {
        [] => {}
        [leaf] => {
            if leaf.is_list() {
                if let Value::List(list) = message.get_field_mut(leaf) {
                    list.push(value);
                }
            } else {
                message.set_field(leaf, value);
            }
        }
        [parent, rest @ ..] => {
            if let Value::Message(child) = message.get_field_mut(parent) {
                set_query_value(child, rest, value);
            }
        }
    }
}

/// A dotted query key, each segment by proto name or JSON name, down to a scalar, enum, string-form
/// well-known type, or a repeated one of those.
fn resolve_query_path(input: &MessageDescriptor, key: &str) -> Option<Vec<FieldDescriptor>> {
    let mut path = Vec::new();
    let mut message = input.clone();
    let segments: Vec<&str> = key.split('.').collect();
    for (index, segment) in segments.iter().enumerate() {
        let field = message.get_field_by_name(segment).or_else(|| message.get_field_by_json_name(segment))?;
        let last = index + 1 == segments.len();
        match field.kind() {
            Kind::Message(nested) if !last => {
                if field.is_list() || field.is_map() || has_special_json(&nested) {
                    return None;
                }
                message = nested;
            }
            Kind::Message(nested) if last && !is_string_form_message(nested.full_name()) && !field.is_map() => {
                return None;
            }
            _ if !last => return None,
            _ => {}
        }
        path.push(field);
    }
    Some(path)
}

/// The query parameters a route accepts (JSON names, dotted), for error messages and OpenAPI.
pub fn query_parameter_names(route: &Route) -> Vec<String> {
    query_parameters(route).into_iter().map(|(name, _)| name).collect()
}

/// The query parameters a route accepts: every scalar-like field reachable from the request message that is
/// not bound by the path or the body, with its descriptor. Recursion stops at cycles.
pub fn query_parameters(route: &Route) -> Vec<(String, FieldDescriptor)> {
    let bound: Vec<String> = route.path_fields.iter().map(|f| dotted(&f.path)).collect();
    let body_field = match &route.body {
        BodyRule::Whole => return Vec::new(),
        BodyRule::Field(field) => Some(field.clone()),
        BodyRule::None => None,
    };
    let mut out = Vec::new();
    let mut visiting = vec![route.rpc.input().full_name().to_string()];
    collect_query_parameters(&route.rpc.input(), "", "", &bound, body_field.as_ref(), &mut visiting, &mut out);
    out
}

fn collect_query_parameters(
    message: &MessageDescriptor,
    json_prefix: &str,
    proto_prefix: &str,
    bound: &[String],
    body_field: Option<&FieldDescriptor>,
    visiting: &mut Vec<String>,
    out: &mut Vec<(String, FieldDescriptor)>,
) {
    for field in message.fields() {
        if proto_prefix.is_empty() && body_field == Some(&field) {
            continue;
        }
        let proto_name = format!("{proto_prefix}{}", field.name());
        if bound.contains(&proto_name) || field.is_map() {
            continue;
        }
        let json_name = format!("{json_prefix}{}", field.json_name());
        match field.kind() {
            Kind::Message(nested) if !is_string_form_message(nested.full_name()) => {
                if field.is_list()
                    || has_special_json(&nested)
                    || visiting.iter().any(|name| name == nested.full_name())
                {
                    continue;
                }
                visiting.push(nested.full_name().to_string());
                collect_query_parameters(
                    &nested,
                    &format!("{json_name}."),
                    &format!("{proto_name}."),
                    bound,
                    body_field,
                    visiting,
                    out,
                );
                visiting.pop();
            }
            _ => out.push((json_name, field)),
        }
    }
}

/// Well-known types whose JSON form is not an object of their fields (Any, Struct, Value, ListValue, Empty):
/// their fields cannot be set one by one from the query string (an Any's `value` without its type URL could
/// not even be rendered back).
fn has_special_json(message: &MessageDescriptor) -> bool {
    message.full_name().starts_with("google.protobuf.") && !is_string_form_message(message.full_name())
}

/// Parses a path or query value for `field` (the element type, for repeated fields): numbers in decimal,
/// bools as true/false, enums by name or number, bytes in base64, string-form well-known types in their JSON
/// string form.
pub fn scalar_value(field: &FieldDescriptor, raw: &str) -> Result<Value, String> {
    let invalid = |what: &str| format!("{raw:?} is not {what}");
    Ok(match field.kind() {
        Kind::String => Value::String(raw.to_string()),
        Kind::Bool => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(invalid("a boolean (true or false)")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(raw.parse().map_err(|_| invalid("a 32-bit integer"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(raw.parse().map_err(|_| invalid("a 64-bit integer"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(raw.parse().map_err(|_| invalid("an unsigned 32-bit integer"))?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(raw.parse().map_err(|_| invalid("an unsigned 64-bit integer"))?),
        Kind::Float => Value::F32(parse_float(raw).map_err(|_| invalid("a number"))? as f32),
        Kind::Double => Value::F64(parse_float(raw).map_err(|_| invalid("a number"))?),
        Kind::Bytes => Value::Bytes(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(raw)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(raw))
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(raw))
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(raw))
                .map_err(|_| invalid("base64"))?,
        )),
        Kind::Enum(enumeration) => {
            let value = enumeration
                .get_value_by_name(raw)
                .or_else(|| raw.parse::<i32>().ok().and_then(|n| enumeration.get_value(n)))
                .ok_or_else(|| {
                    let names: Vec<String> = enumeration.values().map(|v| v.name().to_string()).collect();
                    format!("{raw:?} is not a {}; expected one of {}", enumeration.name(), names.join(", "))
                })?;
            Value::EnumNumber(value.number())
        }
        Kind::Message(descriptor) => {
            // Wrappers of numbers and bools take a JSON number or bool; the rest take a JSON string.
            let json = match descriptor.full_name() {
                "google.protobuf.BoolValue" => match raw {
                    "true" => serde_json::Value::Bool(true),
                    "false" => serde_json::Value::Bool(false),
                    _ => return Err(invalid("a boolean (true or false)")),
                },
                "google.protobuf.Int32Value"
                | "google.protobuf.UInt32Value"
                | "google.protobuf.FloatValue"
                | "google.protobuf.DoubleValue" => serde_json::from_str(raw).map_err(|_| invalid("a number"))?,
                _ => serde_json::Value::String(raw.to_string()),
            };
            let name = descriptor.full_name().to_string();
            let message = DynamicMessage::deserialize(descriptor, json)
                .map_err(|e| format!("{raw:?} is not a valid {name}: {e}"))?;
            Value::Message(message)
        }
    })
}

fn parse_float(raw: &str) -> Result<f64, std::num::ParseFloatError> {
    match raw {
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        other => other.parse(),
    }
}
