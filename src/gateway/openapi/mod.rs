//! Route table → OpenAPI 3.1 document.
//!
//! The document is derived from the very [`RouteTable`] the gateway serves, which was built from the same
//! protobuf descriptors: paths, methods and parameters are what the matcher and the transcoder accept, so the
//! document and the gateway cannot drift apart. Nothing here knows a particular service.
//!
//! - **Operations**: one per route (each `additional_bindings` entry is a route of its own), at
//!   [`PathTemplate::openapi_path`](crate::gateway::template::PathTemplate::openapi_path). The operationId is
//!   the RPC name; an RPC's additional bindings get `_1`, `_2`, … in path order, and the RPC name is prefixed
//!   with its service where two services share it. The tag is the service's name.
//! - **Parameters**: path variables by their field path joined with `_` (`{user.id}` is `{user_id}`, since
//!   API tools mis-handle dots in path parameter names); query parameters exactly as
//!   [`query_parameters`] lists them (dotted JSON names); the `Grpc-Timeout` header, and `Last-Event-ID` for
//!   streams that resume.
//! - **Bodies**: proto3 JSON. `body: "*"` documents the request message less the fields the path binds;
//!   client streams take a JSON array or NDJSON; server streams answer SSE or NDJSON.
//! - **Errors**: every operation lists `default`, 400, 404, 500, 503 and 504 with the google.rpc.Status body that
//!   [`error`](crate::gateway::error) writes for every failure.
//! - **Schemas**: one component per message and enum reachable from the routes, keyed by full proto name, in
//!   their proto3 JSON form (64-bit integers as strings, enums as names, well-known types in their special
//!   forms). Fields refer to messages by `$ref`, so recursive messages need no special care.
//! - **Descriptions**: the proto comments, read from the descriptors' source info (when the descriptors were
//!   compiled without it, the document simply has fewer descriptions).
//!
//! Every map in the output is sorted or filled in a fixed order, so the document is byte-identical between
//! runs; a golden-file test (`tests/openapi.rs`) keeps the committed copy current.
//!
//! OpenAPI 3.1 cannot express everything an HttpRule can: an HTTP method outside the eight OpenAPI knows
//! (`custom` rules) and a second route whose template maps to the same OpenAPI path and method are left out
//! of the document with a warning; the gateway still serves them.
//!
//! The work is split by job: this module assembles the document (info, tags, operation ids, paths, parameters,
//! bodies and responses); `schema` turns protobuf descriptors into the JSON Schemas of their proto3 JSON and
//! collects the components; `comments` reads the proto comments that become descriptions.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use http::Method;
use prost_reflect::{FieldDescriptor, Value};
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn, ParameterStyle};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, Deprecated, InfoBuilder, OpenApi, OpenApiBuilder, PathItem, PathsBuilder, Ref,
    Required, ResponseBuilder,
};

use self::comments::{comments, field_comments, join_paragraphs, summary};
use self::schema::{STATUS, Schemas, ref_with};
use crate::gateway::metadata::GRPC_TIMEOUT_PATTERN;
use crate::gateway::rules::{BodyRule, CallKind, ResponseBody, Route, RouteTable, by_path};
use crate::gateway::stream::NDJSON;
use crate::gateway::transcode::query_parameters;

mod comments;
#[cfg(test)]
mod fixtures;
mod schema;
mod security;

const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream";
/// google.api.HttpBody bodies take and give any media type; OpenAPI 3.1 describes arbitrary bytes as a media
/// type without a schema.
const ANY_MEDIA_TYPE: &str = "*/*";
/// The API version in `info`: the descriptors carry none (versions live in the paths, such as `/v1/`).
const API_VERSION: &str = "1.0.0";

/// Describes every route of `routes` as an OpenAPI 3.1 document.
///
/// Never fails: a route OpenAPI cannot express (a custom HTTP method, or a second template that maps to the
/// same OpenAPI path and method) is left out with a warning in the log.
pub fn document(routes: &RouteTable) -> OpenApi {
    let mut schemas = Schemas::default();
    let mut ordered: Vec<&Route> = routes.routes().iter().map(AsRef::as_ref).collect();
    ordered.sort_by(|a, b| by_path(a, b));
    let operation_ids = operation_ids(&ordered);
    let tags = tag_names(&ordered);

    let canonical = canonical_paths(&ordered);
    let mut paths = PathsBuilder::new();
    let mut taken: HashSet<(String, HttpMethod)> = HashSet::new();
    let mut services = BTreeMap::new();
    for ((route, operation_id), (path, renames)) in ordered.iter().zip(operation_ids).zip(canonical) {
        let Some(method) = http_method(&route.http_method) else {
            tracing::warn!(
                rpc = route.rpc_name(),
                method = %route.http_method,
                "OpenAPI 3.1 has no such HTTP method; the route is left out of the document"
            );
            continue;
        };
        if !taken.insert((path.clone(), method.clone())) {
            tracing::warn!(
                rpc = route.rpc_name(),
                template = route.template.as_str(),
                %path,
                "another route already documents this OpenAPI path and method; the route is left out of the document"
            );
            continue;
        }
        let service = route.rpc.parent_service();
        let tag = tags.get(service.full_name()).cloned().unwrap_or_else(|| service.name().to_string());
        services
            .insert(service.full_name().to_string(), (tag.clone(), comments(&service.parent_file(), service.path())));
        let operation = operation(&mut schemas, route, &renames, operation_id, tag);
        paths = paths.path(path, PathItem::new(method, operation));
    }

    let service_tags = services
        .values()
        .map(|(tag, description)| TagBuilder::new().name(tag.clone()).description(description.clone()).build());
    let service_names: Vec<&String> = services.keys().collect();
    let mut components = ComponentsBuilder::new();
    if ordered.iter().any(|route| security::access(route).is_some()) {
        components = components.security_scheme(security::BEARER_SCHEME, security::bearer_scheme());
    }
    for (name, schema) in schemas.finish() {
        components = components.schema(name, schema);
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title(title(&services.values().map(|(tag, _)| tag.as_str()).collect::<Vec<_>>()))
                .version(API_VERSION)
                .description(Some(info_description(&service_names))),
        )
        .paths(paths)
        .components(Some(components.build()))
        .tags(Some(service_tags))
        .build()
}

/// Pretty JSON of [`document`], with a trailing newline; byte-identical between runs.
///
/// Fails only if serde_json cannot serialise the document, which the utoipa types do not allow in practice.
pub fn document_json(routes: &RouteTable) -> Result<String, serde_json::Error> {
    let mut json = document(routes).to_pretty_json()?;
    json.push('\n');
    Ok(json)
}

fn title(tags: &[&str]) -> String {
    match tags {
        [only] => format!("{only} API"),
        _ => "Portico API".to_string(),
    }
}

fn info_description(services: &[&String]) -> String {
    let services = services.iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ");
    format!(
        "The REST/JSON API that the Portico gateway serves for {services}, derived from the services' \
         `google.api.http` rules and protobuf descriptors. Each operation calls one gRPC method.\n\n\
         Bodies follow the canonical proto3 JSON mapping: field names in lowerCamelCase (requests may also use \
         the proto names), 64-bit integers as strings, enums by value name, bytes in base64, \
         google.protobuf.Timestamp as an RFC 3339 string, Duration as seconds with an `s` suffix and FieldMask \
         as a comma-separated list. Responses include every field, set or not. Unknown fields are rejected with 400 \
         rather than ignored, and so are unknown query parameters unless the gateway is configured to ignore them.\n\n\
         Every error has a google.rpc.Status body `{{\"code\", \"message\", \"details\"}}`, also for the \
         gateway's own errors. The HTTP status follows from the gRPC code: INVALID_ARGUMENT, FAILED_PRECONDITION \
         and OUT_OF_RANGE 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, NOT_FOUND 404, ALREADY_EXISTS and \
         ABORTED 409, RESOURCE_EXHAUSTED 429, CANCELLED 499, UNIMPLEMENTED 501, UNAVAILABLE 503, \
         DEADLINE_EXCEEDED 504, others 500.\n\n\
         Server streams answer Server-Sent Events when the request accepts `text/event-stream`, NDJSON \
         otherwise. Client streams take a JSON array or NDJSON of request messages."
    )
}

fn http_method(method: &Method) -> Option<HttpMethod> {
    Some(match *method {
        Method::GET => HttpMethod::Get,
        Method::PUT => HttpMethod::Put,
        Method::POST => HttpMethod::Post,
        Method::DELETE => HttpMethod::Delete,
        Method::PATCH => HttpMethod::Patch,
        Method::HEAD => HttpMethod::Head,
        Method::OPTIONS => HttpMethod::Options,
        Method::TRACE => HttpMethod::Trace,
        _ => return None,
    })
}

/// One operationId per route (same order as `routes`). Clients generate function names from them, so the
/// RPC's own binding keeps the plain name and only `additional_bindings` get a suffix.
fn operation_ids(routes: &[&Route]) -> Vec<String> {
    let mut services_of_name: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for route in routes {
        services_of_name.entry(route.rpc.name()).or_default().insert(route.rpc.parent_service().full_name());
    }
    let base = |route: &Route| {
        let name = route.rpc.name();
        if services_of_name.get(name).is_some_and(|services| services.len() > 1) {
            format!("{}_{name}", route.rpc.parent_service().name())
        } else {
            name.to_string()
        }
    };

    // Primary bindings first, so they claim the plain names; then the rest in path order.
    let mut order: Vec<usize> = (0..routes.len()).collect();
    order.sort_by_key(|&i| !is_primary_binding(routes[i]));
    let mut used = HashSet::new();
    let mut ids = vec![String::new(); routes.len()];
    for i in order {
        let base = base(routes[i]);
        let mut candidate = base.clone();
        let mut suffix = 0;
        while used.contains(&candidate) {
            suffix += 1;
            candidate = format!("{base}_{suffix}");
        }
        used.insert(candidate.clone());
        ids[i] = candidate;
    }
    ids
}

/// Whether `route` is its RPC's own HttpRule rather than one of its `additional_bindings`.
fn is_primary_binding(route: &Route) -> bool {
    let pool = route.rpc.parent_pool();
    let Some(http) = pool.get_extension_by_name("google.api.http") else { return true };
    let rule = route.rpc.options().get_extension(&http).into_owned();
    let Value::Message(rule) = rule else { return true };
    let text = |message: &prost_reflect::DynamicMessage, name: &str| {
        message.get_field_by_name(name).and_then(|value| value.as_str().map(str::to_string)).unwrap_or_default()
    };
    for name in ["get", "put", "post", "delete", "patch"] {
        if rule.has_field_by_name(name) {
            return route.http_method.as_str().eq_ignore_ascii_case(name)
                && text(&rule, name) == route.template.as_str();
        }
    }
    if let Some(Value::Message(custom)) = rule.get_field_by_name("custom").as_deref() {
        return route.http_method.as_str() == text(custom, "kind") && text(custom, "path") == route.template.as_str();
    }
    true
}

/// Tag per service full name: the short name, or the full name where two packages use the same short name.
fn tag_names(routes: &[&Route]) -> HashMap<String, String> {
    let services: BTreeSet<(String, String)> = routes
        .iter()
        .map(|route| {
            let service = route.rpc.parent_service();
            (service.full_name().to_string(), service.name().to_string())
        })
        .collect();
    let mut short_names: HashMap<&str, usize> = HashMap::new();
    for (_, short) in &services {
        *short_names.entry(short.as_str()).or_default() += 1;
    }
    services
        .iter()
        .map(|(full, short)| {
            let tag = if short_names.get(short.as_str()) == Some(&1) { short.clone() } else { full.clone() };
            (full.clone(), tag)
        })
        .collect()
}

/// One route's operation. Every `$ref` it hands out is registered with `schemas`, which describes them all at
/// the end.
fn operation(
    schemas: &mut Schemas,
    route: &Route,
    renames: &HashMap<String, String>,
    operation_id: String,
    tag: String,
) -> Operation {
    let doc = comments(&route.rpc.parent_file(), route.rpc.path());
    let access = security::access(route);
    let doc = match (&access, doc) {
        (Some(access), Some(doc)) => Some(format!("{doc}\n\n{}", access.description)),
        (Some(access), None) => Some(access.description.clone()),
        (None, doc) => doc,
    };
    let deprecated = route.rpc.method_descriptor_proto().options.as_ref().and_then(|o| o.deprecated).unwrap_or(false);
    let mut operation = OperationBuilder::new()
        .operation_id(Some(operation_id))
        .tag(tag)
        .summary(doc.as_deref().map(summary))
        .description(doc)
        .deprecated(deprecated.then_some(Deprecated::True));

    // Every input and output gets its component, even where the operation shows only part of it.
    schemas.want_message(&route.rpc.input());
    schemas.want_message(&route.rpc.output());
    for parameter in parameters(schemas, route, renames) {
        operation = operation.parameter(parameter);
    }
    if let Some(body) = request_body(schemas, route) {
        operation = operation.request_body(Some(body));
    }
    operation = operation.response("200", success_response(schemas, route));
    for (status, description) in ERROR_RESPONSES {
        operation = operation.response(*status, error_response(description));
    }
    if let Some(access) = access {
        operation = operation
            .response("401", error_response("No valid bearer token (see the WWW-Authenticate header)."))
            .response("403", error_response("The token's roles do not grant this call."));
        for requirement in access.requirements {
            operation = operation.security(requirement);
        }
    }
    schemas.want_status();
    operation.build()
}

/// The path parameters' names as the OpenAPI path states them: `renames` maps a route's own names to those of
/// the route that claimed the path's shape first.
fn parameters(
    schemas: &mut Schemas,
    route: &Route,
    renames: &HashMap<String, String>,
) -> Vec<utoipa::openapi::path::Parameter> {
    let renamed = |name: String| renames.get(&name).cloned().unwrap_or(name);
    let mut parameters = Vec::new();
    let mut path_names = HashSet::new();
    for (field, variable) in route.path_fields.iter().zip(route.template.variables()) {
        let Some(leaf) = field.path.last() else { continue };
        let name = renamed(variable.openapi_name());
        let mut description = field_comments(leaf);
        if field.path.len() > 1 || name != variable.openapi_name() {
            let dotted = field.path.iter().map(FieldDescriptor::name).collect::<Vec<_>>().join(".");
            description = Some(join_paragraphs(description, format!("Sets the request field `{dotted}`.")));
        }
        if variable.is_multi_segment() {
            description = Some(join_paragraphs(
                description,
                format!(
                    "Spans several path segments (template `{}`): send the `/` between them unencoded, \
                     since an encoded `%2F` stays part of a segment.",
                    route.template.as_str()
                ),
            ));
        }
        parameters.push(
            ParameterBuilder::new()
                .name(name.clone())
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(description)
                .schema(Some(schemas.parameter_schema(leaf)))
                .build(),
        );
        path_names.insert(name);
    }
    // Unbound `*` and `**` still appear in the OpenAPI path, and every name in a path must be declared.
    for name in path_variables(&route.template.openapi_path()).into_iter().map(renamed) {
        if path_names.contains(&name) {
            continue;
        }
        parameters.push(
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some(format!(
                    "Path segments matched by a wildcard of the template `{}`; not bound to any field.",
                    route.template.as_str()
                )))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .build(),
        );
    }

    for (name, field) in query_parameters(route) {
        let mut parameter = ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Query)
            .required(Required::False)
            .description(field_comments(&field))
            .schema(Some(schemas.parameter_schema(&field)));
        if field.is_list() {
            // Repeated fields repeat the parameter (`?roles=a&roles=b`).
            parameter = parameter.style(Some(ParameterStyle::Form)).explode(Some(true));
        }
        parameters.push(parameter.build());
    }

    if route.kind == CallKind::ServerStreaming
        && let Some(resume) = &route.sse.resume_field
    {
        parameters.push(
            ParameterBuilder::new()
                .name("Last-Event-ID")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(format!(
                    "Sent by a reconnecting SSE client (EventSource does it by itself): the id of the last \
                     event it received. The stream resumes right after that event: the value becomes the \
                     request's `{}`, overriding the query parameter.",
                    resume.json_name()
                )))
                .schema(Some(schemas.parameter_schema(resume)))
                .build(),
        );
    }
    let deadline = if route.kind == CallKind::ServerStreaming {
        "Streams have no deadline unless the client sets one."
    } else {
        "The gateway applies the shorter of this and its own default deadline."
    };
    parameters.push(
        ParameterBuilder::new()
            .name("Grpc-Timeout")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(format!(
                "The client's deadline in gRPC's format: a positive number of up to 8 digits and a unit (H, M, S, m for \
                 milliseconds, u, n), such as `500m` or `10S`. {deadline} It is passed upstream, and its \
                 expiry is a 504 DEADLINE_EXCEEDED."
            )))
            .schema(Some(ObjectBuilder::new().schema_type(Type::String).pattern(Some(GRPC_TIMEOUT_PATTERN))))
            .build(),
    );
    parameters
}

fn request_body(schemas: &mut Schemas, route: &Route) -> Option<utoipa::openapi::request_body::RequestBody> {
    let input = route.rpc.input();
    let body = match (&route.body, route.kind) {
        (BodyRule::None, _) => return None,
        _ if route.raw_request_body => RequestBodyBuilder::new()
            .description(Some(
                "Any content, sent upstream as it is: the body becomes a google.api.HttpBody's `data` and its \
                 Content-Type the `content_type`."
                    .to_string(),
            ))
            .content(ANY_MEDIA_TYPE, ContentBuilder::new().build()),
        (_, CallKind::ClientStreaming) => {
            let message = schemas.want_message(&input);
            RequestBodyBuilder::new()
                .description(Some(format!(
                    "A stream of `{0}` messages, sent upstream one by one as they arrive: a JSON array, or \
                     NDJSON with one `{0}` JSON object per line (also accepted as `application/jsonl` and \
                     `application/x-jsonlines`).",
                    input.full_name()
                )))
                .content(JSON, ContentBuilder::new().schema(Some(ArrayBuilder::new().items(message.clone()))).build())
                .content(
                    NDJSON,
                    ContentBuilder::new()
                        .schema(Some(ref_with(message, Some(format!("Each line is one `{}`.", input.full_name())))))
                        .build(),
                )
        }
        (BodyRule::Whole, _) => {
            let bound: Vec<&[FieldDescriptor]> = route.path_fields.iter().map(|f| f.path.as_slice()).collect();
            let mut description = format!("The request message `{}`", input.full_name());
            if !bound.is_empty() {
                let names = route.path_fields.iter().map(|f| format!("`{}`", json_path(&f.path))).collect::<Vec<_>>();
                description.push_str(&format!(
                    ", without the fields the path binds ({}): the path sets them, and a body value that \
                     disagrees with the path is a 400",
                    names.join(", ")
                ));
            }
            description.push('.');
            let schema = schemas.message_without(&input, &bound, comments(&input.parent_file(), input.path()));
            RequestBodyBuilder::new()
                .description(Some(description))
                .content(JSON, ContentBuilder::new().schema(Some(schema)).build())
        }
        (BodyRule::Field(field), _) => RequestBodyBuilder::new()
            .description(Some(format!("The `{}` field of `{}`.", field.json_name(), input.full_name())))
            .content(JSON, ContentBuilder::new().schema(Some(schemas.field_schema(field))).build()),
    };
    Some(body.build())
}

fn success_response(schemas: &mut Schemas, route: &Route) -> utoipa::openapi::Response {
    let output = route.rpc.output();
    if route.raw_response_body {
        let description = if route.kind == CallKind::ServerStreaming {
            "A download streamed as the service produces it (google.api.HttpBody messages), with the \
             Content-Type of the first message. A failure mid-stream cuts the body off."
        } else {
            "The raw body of the service's google.api.HttpBody answer, with its Content-Type."
        };
        return ResponseBuilder::new()
            .description(description)
            .content(ANY_MEDIA_TYPE, ContentBuilder::new().build())
            .build();
    }
    if route.kind == CallKind::ServerStreaming {
        // Streams always carry whole messages: `response_body` applies to unary responses only.
        let message = schemas.want_message(&output);
        let status = schemas.want_status();
        let name = output.full_name();
        let mut sse = format!(
            "Server-Sent Events, chosen when the request's `Accept` includes `text/event-stream`. Each \
             message of the stream is one event whose `data:` is the message's JSON (`{name}`)"
        );
        if let Some(id) = &route.sse.event_id_field {
            sse.push_str(&format!(" and whose `id:` is its `{}` (empty when that is 0 or empty)", id.json_name()));
        }
        sse.push_str(
            ". Comment lines keep the connection alive. A failure ends the stream with an `error` event whose \
             `data:` is a google.rpc.Status JSON.",
        );
        if let Some(resume) = &route.sse.resume_field {
            sse.push_str(&format!(
                " A client that reconnects with `Last-Event-ID` resumes after that event (the id becomes the \
                 request's `{}`).",
                resume.json_name()
            ));
        }
        let ndjson = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(format!(
                "Newline-delimited JSON, the default: one `{{\"result\": …}}` line per `{name}`, and on failure \
                 a final `{{\"error\": …}}` line with a google.rpc.Status. Each line has exactly one of the two."
            )))
            .property("result", ref_with(message, Some("One message of the stream.".into())))
            .property("error", ref_with(status, Some("Why the stream failed; the last line.".into())))
            .min_properties(Some(1))
            .max_properties(Some(1));
        return ResponseBuilder::new()
            .description(format!("A stream of `{name}` messages, as SSE or NDJSON (chosen by `Accept`)."))
            .content(
                EVENT_STREAM,
                ContentBuilder::new()
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String).description(Some(sse))))
                    .build(),
            )
            .content(NDJSON, ContentBuilder::new().schema(Some(ndjson)).build())
            .build();
    }
    let (description, schema) = match &route.response_body {
        ResponseBody::Whole => {
            (format!("The response message `{}`.", output.full_name()), schemas.want_message(&output).into())
        }
        ResponseBody::Field(field) => (
            format!("The `{}` field of the response message `{}`.", field.json_name(), output.full_name()),
            schemas.field_schema(field),
        ),
    };
    ResponseBuilder::new()
        .description(description)
        .content(JSON, ContentBuilder::new().schema(Some(schema)).build())
        .build()
}

const ERROR_RESPONSES: &[(&str, &str)] = &[
    (
        "400",
        "INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE: the request is invalid (bad JSON, an unknown field \
         or query parameter, a field set twice, a value the service rejects; `details` may name the fields).",
    ),
    ("404", "NOT_FOUND: the resource does not exist, or no route matches the path."),
    ("500", "INTERNAL, UNKNOWN or DATA_LOSS: the service or the gateway failed."),
    ("503", "UNAVAILABLE: no upstream could take the call; retry later."),
    ("504", "DEADLINE_EXCEEDED: the deadline (`Grpc-Timeout` or the gateway's default) expired first."),
    (
        "default",
        "Any other error, with the HTTP status of its gRPC code: 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 405 \
         (the path exists for other methods), 409 ALREADY_EXISTS or ABORTED, 413 (body too large), 415 (not JSON), \
         429 RESOURCE_EXHAUSTED, 499 CANCELLED, 501 UNIMPLEMENTED.",
    ),
];

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(JSON, ContentBuilder::new().schema(Some(Ref::from_schema_name(STATUS))).build())
        .build()
}

fn json_path(path: &[FieldDescriptor]) -> String {
    path.iter().map(FieldDescriptor::json_name).collect::<Vec<_>>().join(".")
}

/// The `{name}`s of an OpenAPI path, in order.
/// Each route's OpenAPI path, and how its parameter names were renamed to get it.
///
/// OpenAPI takes templated paths that differ only in their parameter names for the same path (`/v1/users/{id}`
/// for GET and `/v1/users/{user_id}` for PATCH), and a document with both is invalid: tools then disagree with
/// the gateway about which methods a URL has. So the first route (in path order) to claim a shape names its
/// parameters, and later routes of that shape use those names; each parameter still says which field it sets.
fn canonical_paths(routes: &[&Route]) -> Vec<(String, HashMap<String, String>)> {
    let mut names_of_shape: HashMap<String, Vec<String>> = HashMap::new();
    routes
        .iter()
        .map(|route| {
            let path = route.template.openapi_path();
            let own = path_variables(&path);
            let shape = with_names(&path, &vec![String::new(); own.len()]);
            let names = names_of_shape.entry(shape).or_insert_with(|| own.clone()).clone();
            let renames: HashMap<String, String> =
                own.into_iter().zip(names.iter().cloned()).filter(|(a, b)| a != b).collect();
            (with_names(&path, &names), renames)
        })
        .collect()
}

/// `path` with its `{…}` parameters named `names`, in order.
fn with_names(path: &str, names: &[String]) -> String {
    let mut out = String::with_capacity(path.len());
    let mut names = names.iter();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        out.push_str(&rest[..=open]);
        out.push_str(names.next().map_or("", String::as_str));
        out.push('}');
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

fn path_variables(path: &str) -> Vec<String> {
    path.split('{').skip(1).filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value as Json, json};

    use super::fixtures::{bare, library_document, library_pool};
    use super::*;

    #[test]
    fn any_annotated_service_is_described() {
        let doc = library_document();
        let operation = |path: &str, method: &str| {
            let operation = &doc["paths"][path][method];
            assert!(operation.is_object(), "{method} {path} is documented");
            operation.clone()
        };
        let names = |operation: &Json| -> Vec<String> {
            operation["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .map(|p| format!("{}:{}", p["in"].as_str().unwrap_or("?"), p["name"].as_str().unwrap_or("?")))
                .collect()
        };

        assert_eq!(doc["info"]["title"], "Portico API", "several services");
        let tags: Vec<&str> = doc["tags"].as_array().expect("tags").iter().filter_map(|t| t["name"].as_str()).collect();
        assert_eq!(tags, ["Archive", "Library", "UserService"]);

        // Two services share the RPC name GetBook; the additional binding gets a suffix, the primary does not.
        let get_book = operation("/v2/shelves/{shelf_id}/books/{book_id}", "get");
        assert_eq!(get_book["operationId"], "Library_GetBook");
        assert_eq!(get_book["tags"], json!(["Library"]));
        assert_eq!(operation("/v2/books/{book_id}/{__wildcard_1}", "get")["operationId"], "Library_GetBook_1");
        assert_eq!(operation("/v2/archive/{shelf_owner}/{book_id}", "get")["operationId"], "Archive_GetBook");
        assert_eq!(operation("/v2/archive/{shelf_owner}/{book_id}", "get")["tags"], json!(["Archive"]));

        assert_eq!(
            names(&get_book),
            [
                "path:shelf_id",
                "path:book_id",
                "query:shelf.owner",
                "query:genres",
                "query:readMask",
                "query:minRating",
                "header:Grpc-Timeout"
            ]
        );
        let parameters = get_book["parameters"].as_array().expect("parameters");
        assert_eq!(bare(parameters[0]["schema"].clone()), json!({"type": "string", "format": "int64"}));
        assert_eq!(parameters[0]["required"], true);
        assert_eq!(bare(parameters[1]["schema"].clone()), json!({"type": "string", "format": "uint64"}));
        let genre = json!({"anyOf": [{"type": "string", "enum": ["GENRE_UNSPECIFIED", "GENRE_FICTION"]},
                                     {"type": "integer", "format": "int32"}]});
        assert_eq!(
            bare(parameters[3].clone()),
            json!({
                "name": "genres",
                "in": "query",
                "required": false,
                "style": "form",
                "explode": true,
                "schema": {"type": "array", "items": genre},
            })
        );
        assert_eq!(bare(parameters[4]["schema"].clone()), json!({"type": "string"}), "FieldMask in its string form");
        assert_eq!(
            bare(parameters[5]["schema"].clone()),
            json!({"type": "number", "format": "double"}),
            "a wrapper's value"
        );

        let archive = operation("/v2/archive/{shelf_owner}/{book_id}", "get");
        let owner = &archive["parameters"][0];
        assert_eq!((&owner["name"], &owner["in"]), (&json!("shelf_owner"), &json!("path")));
        let note = owner["description"].as_str().unwrap_or_default();
        assert!(note.contains("`/v2/archive/{shelf.owner=users/*}/{book_id}`") && note.contains("unencoded"), "{note}");

        let wildcard = operation("/v2/books/{book_id}/{__wildcard_1}", "get");
        assert_eq!(names(&wildcard)[..2], ["path:book_id", "path:__wildcard_1"]);

        // body "*" with a path-bound field: the body schema leaves exactly that field out.
        let move_book = operation("/v2/shelves/{shelf_id}/books:move", "post");
        assert_eq!(
            names(&move_book),
            ["path:shelf_id", "header:Grpc-Timeout"],
            "body \"*\" leaves no query parameters"
        );
        assert_eq!(
            bare(move_book["requestBody"]["content"]["application/json"]["schema"].clone()),
            json!({"type": "object", "properties": {
                "book": {"$ref": "#/components/schemas/shelf.Book"},
                "note": {"type": "string"},
                "shelf": {"type": "object", "properties": {"owner": {"type": "string"}}},
            }})
        );
        assert_eq!(
            move_book["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/google.protobuf.Empty"
        );

        // A server stream without SSE options: no Last-Event-ID, no event ids.
        let read = operation("/v2/shelves/{shelf_id}/books:read", "get");
        assert!(!names(&read).contains(&"header:Last-Event-ID".to_string()));
        let content = &read["responses"]["200"]["content"];
        assert!(content["text/event-stream"].is_object() && content["application/x-ndjson"].is_object());
        assert!(!content["text/event-stream"]["schema"]["description"].as_str().unwrap_or_default().contains("`id:`"));

        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for name in [
            "shelf.Book",
            "shelf.Genre",
            "shelf.GetBookRequest",
            "shelf.MoveBookRequest",
            "shelf.ShelfRef",
            "google.protobuf.Struct",
            "google.protobuf.Value",
            "google.protobuf.DoubleValue",
            "google.protobuf.Duration",
            "google.rpc.Status",
        ] {
            assert!(schemas.contains_key(name), "component {name}");
        }
        assert!(!schemas.contains_key("shelf.Book.SalesEntry"), "map entries are not components");
        assert_eq!(
            schemas["google.rpc.Status"]["required"],
            json!(["code", "message", "details"]),
            "a Status field shares the error body's schema"
        );
    }

    #[test]
    fn every_ref_has_its_component() {
        let doc = library_document();
        fn refs<'a>(value: &'a Json, out: &mut Vec<&'a str>) {
            match value {
                Json::Object(object) => {
                    if let Some(Json::String(target)) = object.get("$ref") {
                        out.push(target);
                    }
                    object.values().for_each(|v| refs(v, out));
                }
                Json::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for target in found {
            let name =
                target.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{target} is a schema ref"));
            assert!(doc["components"]["schemas"].get(name).is_some(), "{target} resolves");
        }
    }

    #[test]
    fn the_json_is_the_same_every_time() {
        let routes = RouteTable::from_pool(&library_pool()).expect("routes");
        let first = document_json(&routes).expect("json");
        assert!(first.ends_with("}\n"));
        for _ in 0..3 {
            assert_eq!(document_json(&routes).expect("json"), first);
        }
    }

    #[test]
    fn paths_that_differ_only_in_parameter_names_are_one_path() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(with_names("/v1/users/{user_id}", &names(&["id"])), "/v1/users/{id}");
        assert_eq!(with_names("/v1/{a}/x/{b}:do", &names(&["", ""])), "/v1/{}/x/{}:do");
        assert_eq!(with_names("/v1/users", &[]), "/v1/users");
        let doc =
            serde_json::to_value(document(&RouteTable::from_pool(&crate::proto::DESCRIPTOR_POOL).expect("routes")))
                .expect("JSON");
        let item = &doc["paths"]["/v1/users/{id}"];
        assert!(item["get"].is_object() && item["patch"].is_object() && item["delete"].is_object(), "{item}");
        assert!(doc["paths"].get("/v1/users/{user_id}").is_none());
        let patch_id = &item["patch"]["parameters"][0];
        assert_eq!(patch_id["name"], "id");
        assert!(patch_id["description"].as_str().is_some_and(|d| d.contains("`user.id`")), "{patch_id}");
    }

    #[test]
    fn path_variables_are_read_from_openapi_paths() {
        assert_eq!(path_variables("/v1/{name}/x/{__wildcard_1}:get"), ["name", "__wildcard_1"]);
        assert!(path_variables("/v1/users").is_empty());
    }
}
