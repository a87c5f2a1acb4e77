//! HTTP ⇄ protobuf, following the HttpRule binding rules and the canonical proto3 JSON mapping.
//!
//! Request: path variables, then the body, then the query string fill one request message. The path wins: a
//! body value that contradicts a path variable is a 400, and so is a field set twice (path and query, or one
//! non-repeated query parameter given twice). Unknown JSON fields and unknown query parameters are 400s that
//! name them, unless query parameters are configured to be ignored.
//!
//! Response: proto3 JSON with lowerCamelCase names, 64-bit integers as strings, enums as names, and
//! unpopulated fields emitted, so every response has the same shape.

use std::collections::HashSet;

use base64::Engine;
use bytes::Bytes;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, SerializeOptions,
    Value,
};

use crate::gateway::error::GatewayError;
use crate::gateway::json_check;
use crate::gateway::rules::{BodyRule, ResponseBody, Route, is_string_form_message};
use crate::gateway::template::PathMatch;

/// What to do with query parameters that name no field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UnknownQueryParams {
    /// 400 naming them: a typo like `?page_sise=10` must not be silently ignored.
    #[default]
    Reject,
    /// Ignore them, for clients that add cache-busters.
    Ignore,
}

/// Limits and policies for transcoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranscodeOptions {
    pub max_json_depth: usize,
    pub unknown_query_params: UnknownQueryParams,
}

impl Default for TranscodeOptions {
    fn default() -> Self {
        Self { max_json_depth: 32, unknown_query_params: UnknownQueryParams::Reject }
    }
}

const SERIALIZE: SerializeOptions = SerializeOptions::new().skip_default_fields(false);
const DESERIALIZE: DeserializeOptions = DeserializeOptions::new().deny_unknown_fields(true);

/// Builds the request message of `route` from the matched path, the raw query string and the body.
pub fn request_message(
    route: &Route,
    path: PathMatch,
    query: Option<&str>,
    body: &[u8],
    options: &TranscodeOptions,
) -> Result<DynamicMessage, GatewayError> {
    let input = route.rpc.input();
    let body_is_empty = body.iter().all(u8::is_ascii_whitespace);
    let mut message = match &route.body {
        BodyRule::None if !body_is_empty => {
            return Err(GatewayError::BadRequest(format!(
                "{} {} takes no request body",
                route.http_method,
                route.template.as_str()
            )));
        }
        BodyRule::None => DynamicMessage::new(input.clone()),
        BodyRule::Whole if body_is_empty => DynamicMessage::new(input.clone()),
        BodyRule::Whole => parse_message(&input, body, options.max_json_depth)?,
        BodyRule::Field(field) => {
            let mut message = DynamicMessage::new(input.clone());
            if !body_is_empty {
                let value = parse_field_value(&input, field, body, options.max_json_depth)?;
                message.set_field(field, value);
            }
            message
        }
    };
    if route.http_method == http::Method::PATCH
        && let BodyRule::Field(body_field) = &route.body
        && !body_is_empty
    {
        fill_update_mask(&mut message, body_field, body)?;
    }

    let mut bound: HashSet<String> = HashSet::new();
    for (raw, field) in path.values.iter().zip(&route.path_fields) {
        let leaf = field.path.last().ok_or_else(|| GatewayError::BadRequest("empty path binding".into()))?;
        let name = dotted(&field.path);
        let value =
            scalar_value(leaf, raw).map_err(|e| GatewayError::BadRequest(format!("path parameter {name}: {e}")))?;
        set_path(&mut message, &field.path, value, &name)?;
        bound.insert(name);
    }

    if let Some(query) = query.filter(|q| !q.is_empty()) {
        apply_query(&mut message, route, query, &bound, options)?;
    }
    Ok(message)
}

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
fn parse_field_value(
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

/// PATCH with a `body: "field"` rule and a FieldMask `update_mask` the client did not send: the mask becomes
/// the body's JSON keys (nested objects give dotted paths), so only what the client sent changes.
fn fill_update_mask(
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

/// Sets `value` at `path` (creating parent messages); a different value already there (from the body) is a
/// conflict.
fn set_path(
    message: &mut DynamicMessage,
    path: &[FieldDescriptor],
    value: Value,
    name: &str,
) -> Result<(), GatewayError> {
    match path {
        [] => Ok(()),
        [leaf] => {
            if message.has_field(leaf) && *message.get_field(leaf) != value {
                return Err(GatewayError::BadRequest(format!(
                    "{name} is {} in the path but {} in the body; the path wins, so leave it out of the body or make them agree",
                    display(&value),
                    display(&message.get_field(leaf))
                )));
            }
            message.set_field(leaf, value);
            Ok(())
        }
        [parent, rest @ ..] => match message.get_field_mut(parent) {
            Value::Message(child) => set_path(child, rest, value, name),
            _ => Err(GatewayError::BadRequest(format!("{name}: {} is not a message", parent.name()))),
        },
    }
}

fn display(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::EnumNumber(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

fn dotted(path: &[FieldDescriptor]) -> String {
    path.iter().map(FieldDescriptor::name).collect::<Vec<_>>().join(".")
}

fn apply_query(
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
                if field.is_list() || field.is_map() {
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
                if field.is_list() || visiting.iter().any(|name| name == nested.full_name()) {
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
                "google.protobuf.BoolValue" => serde_json::Value::Bool(raw == "true"),
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

/// Canonical proto3 JSON of a message.
pub fn message_json(message: &DynamicMessage) -> Result<Vec<u8>, GatewayError> {
    let mut out = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::new(&mut out);
    message.serialize_with_options(&mut serializer, &SERIALIZE).map_err(internal)?;
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
