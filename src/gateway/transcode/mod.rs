//! HTTP ⇄ protobuf, following the HttpRule binding rules and the canonical proto3 JSON mapping.
//!
//! Request: path variables, then the body, then the query string fill one request message. The path wins: a
//! body value that contradicts a path variable is a 400, and so is a field set twice (path and query, or one
//! non-repeated query parameter given twice). Unknown JSON fields and unknown query parameters are 400s that
//! name them, unless query parameters are configured to be ignored.
//!
//! Response: proto3 JSON with lowerCamelCase names, 64-bit integers as strings, enums as names, and
//! unpopulated fields emitted, so every response has the same shape.
//!
//! One file per job: `body.rs` (JSON bodies), `field_mask.rs` (PATCH masks from the body's keys), `query.rs`
//! (query parameters and path values as scalars), `path_only.rs` (a request made by its path alone, written
//! straight to wire bytes), `response.rs` (JSON out, printed by `json_out.rs` from a decoded message or by
//! `wire_json.rs` straight from an answer's bytes), `http_body.rs` (google.api.HttpBody, raw bytes both ways);
//! this module puts a request together.

mod body;
mod field_mask;
pub mod http_body;
mod json_out;
mod path_only;
mod query;
mod response;
mod wire_json;

use std::collections::HashSet;

use bytes::Bytes;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, SerializeOptions, Value};

use crate::gateway::error::GatewayError;
use crate::gateway::rules::{BodyRule, Route};
use crate::gateway::template::PathMatch;

pub use body::parse_message;
pub use path_only::PathOnlyPlan;
pub use query::{query_parameter_names, query_parameters, scalar_value};
pub use response::{JsonMessage, decode_answer, message_json, response_json, wire_response_json};
pub use wire_json::MessagePlan;

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
    let message = json_body_message(route, body, options)?;
    bind_path_and_query(route, message, path, query, options)
}

/// Builds the request message of a route whose body is a `google.api.HttpBody` (the whole request or the
/// body field): the raw bytes and their Content-Type, whatever the type; path and query fill the rest.
pub fn raw_body_request_message(
    route: &Route,
    path: PathMatch,
    query: Option<&str>,
    body: Bytes,
    content_type: &str,
    options: &TranscodeOptions,
) -> Result<DynamicMessage, GatewayError> {
    let input = route.rpc.input();
    let message = match &route.body {
        BodyRule::Field(field) => {
            let mut message = DynamicMessage::new(input);
            if let Kind::Message(http_body) = field.kind() {
                message.set_field(field, Value::Message(http_body::message(http_body, body, content_type)));
            }
            message
        }
        BodyRule::Whole | BodyRule::None => http_body::message(input, body, content_type),
    };
    bind_path_and_query(route, message, path, query, options)
}

/// The message the JSON body gives, before path and query are bound.
fn json_body_message(route: &Route, body: &[u8], options: &TranscodeOptions) -> Result<DynamicMessage, GatewayError> {
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
        BodyRule::Whole => body::parse_message(&input, body, options.max_json_depth)?,
        BodyRule::Field(field) => {
            let mut message = DynamicMessage::new(input.clone());
            if !body_is_empty {
                let value = body::parse_field_value(&input, field, body, options.max_json_depth)?;
                message.set_field(field, value);
            }
            message
        }
    };
    if route.http_method == http::Method::PATCH
        && let BodyRule::Field(body_field) = &route.body
        && !body_is_empty
    {
        field_mask::fill_update_mask(&mut message, body_field, body)?;
    }
    Ok(message)
}

/// Binds the path variables (the path wins over the body) and then the query string.
fn bind_path_and_query(
    route: &Route,
    mut message: DynamicMessage,
    path: PathMatch,
    query: Option<&str>,
    options: &TranscodeOptions,
) -> Result<DynamicMessage, GatewayError> {
    let query = query.filter(|q| !q.is_empty());
    // The dotted names of the bound fields matter only to a query string (and to errors): not built otherwise.
    let mut bound: HashSet<String> = HashSet::new();
    for (raw, field) in path.values.iter().zip(&route.path_fields) {
        let leaf = field.path.last().ok_or_else(|| GatewayError::BadRequest("empty path binding".into()))?;
        let value = query::scalar_value(leaf, raw).map_err(|e| bad_path_value(&dotted(&field.path), &e))?;
        set_path(&mut message, &field.path, value, &field.path)?;
        if query.is_some() {
            bound.insert(dotted(&field.path));
        }
    }

    if let Some(query) = query {
        query::apply_query(&mut message, route, query, &bound, options)?;
    }
    Ok(message)
}

/// Sets `value` at `path` (creating parent messages); a different value already there (from the body) is a
/// conflict. `binding` is the whole path, for naming it in errors.
fn set_path(
    message: &mut DynamicMessage,
    path: &[FieldDescriptor],
    value: Value,
    binding: &[FieldDescriptor],
) -> Result<(), GatewayError> {
    match path {
        [] => Ok(()),
        [leaf] => {
            if message.has_field(leaf) && *message.get_field(leaf) != value {
                return Err(GatewayError::BadRequest(format!(
                    "{} is {} in the path but {} in the body; the path wins, so leave it out of the body or make them agree",
                    dotted(binding),
                    display(&value),
                    display(&message.get_field(leaf))
                )));
            }
            message.set_field(leaf, value);
            Ok(())
        }
        [parent, rest @ ..] => match message.get_field_mut(parent) {
            Value::Message(child) => set_path(child, rest, value, binding),
            _ => Err(GatewayError::BadRequest(format!("{}: {} is not a message", dotted(binding), parent.name()))),
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

/// A path value that does not parse as its field's type, named by the binding (`user.id`): one message for both
/// ways a request is built.
fn bad_path_value(binding: &str, error: &str) -> GatewayError {
    GatewayError::BadRequest(format!("path parameter {binding}: {error}"))
}

pub(crate) fn dotted(path: &[FieldDescriptor]) -> String {
    path.iter().map(FieldDescriptor::name).collect::<Vec<_>>().join(".")
}
