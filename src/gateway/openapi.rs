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
//! - **Parameters**: path variables by their dotted field path; query parameters exactly as
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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use http::Method;
use prost_reflect::{EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor, Value};
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn, ParameterStyle};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, Deprecated, InfoBuilder, OpenApi, OpenApiBuilder, PathItem, PathsBuilder, Ref,
    RefOr, Required, ResponseBuilder, Schema,
};

use crate::gateway::rules::{BodyRule, CallKind, ResponseBody, Route, RouteTable, by_path};
use crate::gateway::stream::NDJSON;
use crate::gateway::transcode::query_parameters;

const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream";
/// The error body of every failure, written by `gateway::error` rather than read from a descriptor.
const STATUS: &str = "google.rpc.Status";
/// The API version in `info`: the descriptors carry none (versions live in the paths, such as `/v1/`).
const API_VERSION: &str = "1.0.0";

/// Describes every route of `routes` as an OpenAPI 3.1 document.
///
/// Never fails: a route OpenAPI cannot express (a custom HTTP method, or a second template that maps to the
/// same OpenAPI path and method) is left out with a warning in the log.
pub fn document(routes: &RouteTable) -> OpenApi {
    let mut generator = Generator::default();
    let mut ordered: Vec<&Route> = routes.routes().iter().map(AsRef::as_ref).collect();
    ordered.sort_by(|a, b| by_path(a, b));
    let operation_ids = operation_ids(&ordered);
    let tags = tag_names(&ordered);

    let mut paths = PathsBuilder::new();
    let mut taken: HashSet<(String, HttpMethod)> = HashSet::new();
    let mut services = BTreeMap::new();
    for (route, operation_id) in ordered.iter().zip(operation_ids) {
        let path = route.template.openapi_path();
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
        let operation = generator.operation(route, operation_id, tag);
        paths = paths.path(path, PathItem::new(method, operation));
    }

    let service_tags = services
        .values()
        .map(|(tag, description)| TagBuilder::new().name(tag.clone()).description(description.clone()).build());
    let service_names: Vec<&String> = services.keys().collect();
    let mut components = ComponentsBuilder::new();
    for (name, schema) in generator.finish() {
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

/// Collects the component schemas while operations are built: every `$ref` handed out names a message or
/// enum that [`Generator::finish`] then describes.
#[derive(Default)]
struct Generator {
    /// Full names already queued or described, so each type is described once (and cycles end).
    seen: HashSet<String>,
    pending: Vec<Named>,
}

enum Named {
    Message(MessageDescriptor),
    Enum(EnumDescriptor),
}

impl Generator {
    fn operation(&mut self, route: &Route, operation_id: String, tag: String) -> Operation {
        let doc = comments(&route.rpc.parent_file(), route.rpc.path());
        let deprecated =
            route.rpc.method_descriptor_proto().options.as_ref().and_then(|o| o.deprecated).unwrap_or(false);
        let mut operation = OperationBuilder::new()
            .operation_id(Some(operation_id))
            .tag(tag)
            .summary(doc.as_deref().map(summary))
            .description(doc)
            .deprecated(deprecated.then_some(Deprecated::True));

        // Every input and output gets its component, even where the operation shows only part of it.
        self.want_message(&route.rpc.input());
        self.want_message(&route.rpc.output());
        for parameter in self.parameters(route) {
            operation = operation.parameter(parameter);
        }
        if let Some(body) = self.request_body(route) {
            operation = operation.request_body(Some(body));
        }
        operation = operation.response("200", self.success_response(route));
        for (status, description) in ERROR_RESPONSES {
            operation = operation.response(*status, error_response(description));
        }
        self.want_status();
        operation.build()
    }

    fn parameters(&mut self, route: &Route) -> Vec<utoipa::openapi::path::Parameter> {
        let mut parameters = Vec::new();
        let mut path_names = HashSet::new();
        for (field, variable) in route.path_fields.iter().zip(route.template.variables()) {
            let Some(leaf) = field.path.last() else { continue };
            let name = field.path.iter().map(FieldDescriptor::name).collect::<Vec<_>>().join(".");
            let mut description = field_comments(leaf);
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
                    .schema(Some(self.parameter_schema(leaf)))
                    .build(),
            );
            path_names.insert(name);
        }
        // Unbound `*` and `**` still appear in the OpenAPI path, and every name in a path must be declared.
        for name in path_variables(&route.template.openapi_path()) {
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
                .schema(Some(self.parameter_schema(&field)));
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
                    .schema(Some(self.parameter_schema(resume)))
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
                    "The client's deadline in gRPC's format: up to 8 digits and a unit (H, M, S, m for \
                     milliseconds, u, n), such as `500m` or `10S`. {deadline} It is passed upstream, and its \
                     expiry is a 504 DEADLINE_EXCEEDED."
                )))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[0-9]{1,8}[HMSmun]$"))))
                .build(),
        );
        parameters
    }

    fn request_body(&mut self, route: &Route) -> Option<utoipa::openapi::request_body::RequestBody> {
        let input = route.rpc.input();
        let body = match (&route.body, route.kind) {
            (BodyRule::None, _) => return None,
            (_, CallKind::ClientStreaming) => {
                let message = self.want_message(&input);
                RequestBodyBuilder::new()
                    .description(Some(format!(
                        "A stream of `{0}` messages, sent upstream one by one as they arrive: a JSON array, or \
                         NDJSON with one `{0}` JSON object per line (also accepted as `application/jsonl` and \
                         `application/x-jsonlines`).",
                        input.full_name()
                    )))
                    .content(
                        JSON,
                        ContentBuilder::new().schema(Some(ArrayBuilder::new().items(message.clone()))).build(),
                    )
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
                    let names =
                        route.path_fields.iter().map(|f| format!("`{}`", json_path(&f.path))).collect::<Vec<_>>();
                    description.push_str(&format!(
                        ", without the fields the path binds ({}): the path sets them, and a body value that \
                         disagrees with the path is a 400",
                        names.join(", ")
                    ));
                }
                description.push('.');
                let schema = self.message_without(&input, &bound, comments(&input.parent_file(), input.path()));
                RequestBodyBuilder::new()
                    .description(Some(description))
                    .content(JSON, ContentBuilder::new().schema(Some(schema)).build())
            }
            (BodyRule::Field(field), _) => RequestBodyBuilder::new()
                .description(Some(format!("The `{}` field of `{}`.", field.json_name(), input.full_name())))
                .content(JSON, ContentBuilder::new().schema(Some(self.field_schema(field))).build()),
        };
        Some(body.build())
    }

    fn success_response(&mut self, route: &Route) -> utoipa::openapi::Response {
        let output = route.rpc.output();
        if route.kind == CallKind::ServerStreaming {
            // Streams always carry whole messages: `response_body` applies to unary responses only.
            let message = self.want_message(&output);
            let status = self.want_status();
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
                (format!("The response message `{}`.", output.full_name()), self.want_message(&output).into())
            }
            ResponseBody::Field(field) => (
                format!("The `{}` field of the response message `{}`.", field.json_name(), output.full_name()),
                self.field_schema(field),
            ),
        };
        ResponseBuilder::new()
            .description(description)
            .content(JSON, ContentBuilder::new().schema(Some(schema)).build())
            .build()
    }

    /// The schema of a property: messages and enums by `$ref` to their component, with the field's comments.
    fn field_schema(&mut self, field: &FieldDescriptor) -> RefOr<Schema> {
        let description = field_comments(field);
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                return ObjectBuilder::new().description(description).into();
            };
            let key = entry.map_entry_key_field();
            let value = self.value_schema(&entry.map_entry_value_field(), None);
            let keys = match key.kind() {
                Kind::String => String::new(),
                Kind::Bool => " Keys are `true` or `false`.".to_string(),
                _ => " Keys are integers in decimal.".to_string(),
            };
            let description = join_paragraphs(description, format!("A map, as a JSON object.{keys}"));
            return ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some(description))
                .additional_properties(Some(AdditionalProperties::RefOr(value)))
                .into();
        }
        if field.is_list() {
            return ArrayBuilder::new().items(self.value_schema(field, None)).description(description).into();
        }
        self.value_schema(field, description)
    }

    /// The schema of one value of `field` (an element, for repeated fields).
    fn value_schema(&mut self, field: &FieldDescriptor, description: Option<String>) -> RefOr<Schema> {
        match field.kind() {
            Kind::Message(message) => ref_with(self.want_message(&message), description).into(),
            Kind::Enum(enumeration) => ref_with(self.want_enum(&enumeration), description).into(),
            scalar => scalar_schema(&scalar).description(description).into(),
        }
    }

    /// A path, query or header parameter's schema. Inline rather than `$ref`, so the accepted string form is
    /// right where the parameter is: enums list their names, well-known types show their JSON string form.
    fn parameter_schema(&mut self, field: &FieldDescriptor) -> RefOr<Schema> {
        let value: RefOr<Schema> = match field.kind() {
            // A parameter is never absent-but-null, so a wrapper is just its wrapped value.
            Kind::Message(message) if is_wrapper(message.full_name()) => match message.get_field_by_name("value") {
                Some(value) => scalar_schema(&value.kind()).build().into(),
                None => ref_with(self.want_message(&message), None).into(),
            },
            Kind::Message(message) => match well_known_schema(&message) {
                Some(schema) => schema.into(),
                // The route table only binds string-form messages to parameters; a `$ref` is still truthful.
                None => ref_with(self.want_message(&message), None).into(),
            },
            Kind::Enum(enumeration) => enum_schema(&enumeration, None).into(),
            scalar => scalar_schema(&scalar).build().into(),
        };
        if field.is_list() { ArrayBuilder::new().items(value).build().into() } else { value }
    }

    /// `message` less the fields at the end of `bound` (paths of fields from `message` down), inline; or a plain
    /// `$ref` when nothing is bound.
    fn message_without(
        &mut self,
        message: &MessageDescriptor,
        bound: &[&[FieldDescriptor]],
        description: Option<String>,
    ) -> RefOr<Schema> {
        if bound.is_empty() {
            return ref_with(self.want_message(message), None).into();
        }
        let mut object = ObjectBuilder::new().schema_type(Type::Object).description(description);
        for field in message.fields() {
            let rests: Vec<&[FieldDescriptor]> = bound
                .iter()
                .filter_map(|path| path.split_first())
                .filter(|(first, _)| **first == field)
                .map(|(_, rest)| rest)
                .collect();
            if rests.iter().any(|rest| rest.is_empty()) {
                continue;
            }
            let schema = match field.kind() {
                Kind::Message(nested) if !rests.is_empty() => {
                    self.message_without(&nested, &rests, field_comments(&field))
                }
                _ => self.field_schema(&field),
            };
            object = object.property(field.json_name(), schema);
        }
        object.into()
    }

    fn want_message(&mut self, message: &MessageDescriptor) -> Ref {
        if message.full_name() == STATUS {
            // A google.rpc.Status in a message has the JSON of every error body: one schema serves both.
            return self.want_status();
        }
        if self.seen.insert(message.full_name().to_string()) {
            self.pending.push(Named::Message(message.clone()));
        }
        Ref::from_schema_name(message.full_name())
    }

    fn want_enum(&mut self, enumeration: &EnumDescriptor) -> Ref {
        if self.seen.insert(enumeration.full_name().to_string()) {
            self.pending.push(Named::Enum(enumeration.clone()));
        }
        Ref::from_schema_name(enumeration.full_name())
    }

    fn want_status(&mut self) -> Ref {
        self.seen.insert(STATUS.to_string());
        Ref::from_schema_name(STATUS)
    }

    /// Describes every type handed out as a `$ref`, including those its fields reach.
    fn finish(mut self) -> BTreeMap<String, Schema> {
        let mut schemas = BTreeMap::new();
        if self.seen.contains(STATUS) {
            schemas.insert(STATUS.to_string(), status_schema());
        }
        while let Some(named) = self.pending.pop() {
            let (name, schema) = match named {
                Named::Enum(enumeration) => {
                    let description = comments(&enumeration.parent_file(), enumeration.path());
                    (enumeration.full_name().to_string(), enum_schema(&enumeration, description))
                }
                Named::Message(message) => (message.full_name().to_string(), self.message_schema(&message)),
            };
            schemas.insert(name, schema);
        }
        schemas
    }

    fn message_schema(&mut self, message: &MessageDescriptor) -> Schema {
        if let Some(schema) = well_known_schema(message) {
            // Struct and ListValue hold Values: make sure that component exists too.
            if matches!(message.full_name(), "google.protobuf.Struct" | "google.protobuf.ListValue")
                && let Some(value) = message.parent_pool().get_message_by_name("google.protobuf.Value")
            {
                self.want_message(&value);
            }
            return schema;
        }
        let mut object = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(comments(&message.parent_file(), message.path()));
        for field in message.fields() {
            object = object.property(field.json_name(), self.field_schema(&field));
        }
        object.build().into()
    }
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

/// The body `gateway::error::status_json` writes: always all three members.
fn status_schema() -> Schema {
    let detail = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "One typed detail: `@type` names its message (such as \
             `type.googleapis.com/google.rpc.BadRequest`) and the other members are that message's JSON fields; \
             a type the gateway does not know comes as `value`, the message in base64.",
        ))
        .property(
            "@type",
            ObjectBuilder::new().schema_type(Type::String).description(Some("The type URL of the detail.")),
        )
        .required("@type")
        .additional_properties(Some(AdditionalProperties::FreeForm(true)));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "The error model of gRPC and Google APIs, the body of every error response (and of the `error` event \
             or line that ends a failed stream).",
        ))
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
                .description(Some("The gRPC status code, a value of google.rpc.Code (such as 5 for NOT_FOUND).")),
        )
        .property(
            "message",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("A developer-facing error message in English.")),
        )
        .property(
            "details",
            ArrayBuilder::new()
                .items(detail)
                .description(Some("Typed error details, such as google.rpc.BadRequest field violations.")),
        )
        .required("code")
        .required("message")
        .required("details")
        .build()
        .into()
}

/// Proto3 JSON types of the scalar kinds. 64-bit integers are strings, because JSON numbers lose precision
/// beyond 2^53 in most clients.
fn scalar_schema(kind: &Kind) -> ObjectBuilder {
    let (schema_type, format) = match kind {
        Kind::Double => (Type::Number, Some(SchemaFormat::KnownFormat(KnownFormat::Double))),
        Kind::Float => (Type::Number, Some(SchemaFormat::KnownFormat(KnownFormat::Float))),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            (Type::Integer, Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        }
        Kind::Uint32 | Kind::Fixed32 => (Type::Integer, Some(SchemaFormat::Custom("uint32".into()))),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            (Type::String, Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        }
        Kind::Uint64 | Kind::Fixed64 => (Type::String, Some(SchemaFormat::Custom("uint64".into()))),
        Kind::Bool => (Type::Boolean, None),
        Kind::String => (Type::String, None),
        Kind::Bytes => return ObjectBuilder::new().schema_type(Type::String).content_encoding("base64"),
        // Not scalars; callers handle them before asking. An unconstrained schema is the safe answer.
        Kind::Message(_) | Kind::Enum(_) => return ObjectBuilder::new().schema_type(SchemaType::AnyValue),
    };
    ObjectBuilder::new().schema_type(schema_type).format(format)
}

/// An enum by value names, with each value's comment in the description. `google.protobuf.NullValue` is JSON
/// `null`.
fn enum_schema(enumeration: &EnumDescriptor, description: Option<String>) -> Schema {
    if enumeration.full_name() == "google.protobuf.NullValue" {
        return ObjectBuilder::new().schema_type(Type::Null).description(Some("JSON `null`.")).build().into();
    }
    let names: Vec<String> = enumeration.values().map(|value| value.name().to_string()).collect();
    let values = enumeration
        .values()
        .map(|value| match comments(&value.parent_file(), value.path()) {
            Some(text) => format!("- `{}`: {}", value.name(), text.replace('\n', " ")),
            None => format!("- `{}`", value.name()),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let description =
        join_paragraphs(description, format!("Sent by name; requests may also use the number.\n\n{values}"));
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(names))
        .description(Some(description))
        .build()
        .into()
}

fn is_wrapper(full_name: &str) -> bool {
    matches!(
        full_name,
        "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

/// The proto3 JSON forms of the well-known types whose JSON is not an object of their fields.
fn well_known_schema(message: &MessageDescriptor) -> Option<Schema> {
    let string = |format: Option<SchemaFormat>, description: &str| {
        ObjectBuilder::new().schema_type(Type::String).format(format).description(Some(description)).build().into()
    };
    // Wrappers are how proto3 tells "unset" from the default value, so `null` is part of their JSON.
    let wrapper = |json_type: Type, format: Option<SchemaFormat>, description: &str| -> Schema {
        ObjectBuilder::new()
            .schema_type([json_type, Type::Null].into_iter().collect::<SchemaType>())
            .format(format)
            .description(Some(description))
            .build()
            .into()
    };
    let schema = match message.full_name() {
        "google.protobuf.Timestamp" => string(
            Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)),
            "A point in time, as an RFC 3339 string in UTC with up to 9 fractional digits, such as \
             `2024-05-01T12:30:00.5Z`.",
        ),
        "google.protobuf.Duration" => ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^-?[0-9]+(\\.[0-9]{1,9})?s$"))
            .description(Some(
                "A span of time, as seconds with up to 9 fractional digits and an `s` suffix, such as `1.5s`.",
            ))
            .build()
            .into(),
        "google.protobuf.FieldMask" => {
            string(None, "A set of field paths, comma-separated, in lowerCamelCase, such as `name,email`.")
        }
        "google.protobuf.DoubleValue" => {
            wrapper(Type::Number, Some(SchemaFormat::KnownFormat(KnownFormat::Double)), "A double, or null when unset.")
        }
        "google.protobuf.FloatValue" => {
            wrapper(Type::Number, Some(SchemaFormat::KnownFormat(KnownFormat::Float)), "A float, or null when unset.")
        }
        "google.protobuf.Int64Value" => wrapper(
            Type::String,
            Some(SchemaFormat::KnownFormat(KnownFormat::Int64)),
            "A 64-bit integer as a decimal string, or null when unset.",
        ),
        "google.protobuf.UInt64Value" => wrapper(
            Type::String,
            Some(SchemaFormat::Custom("uint64".into())),
            "An unsigned 64-bit integer as a decimal string, or null when unset.",
        ),
        "google.protobuf.Int32Value" => wrapper(
            Type::Integer,
            Some(SchemaFormat::KnownFormat(KnownFormat::Int32)),
            "A 32-bit integer, or null when unset.",
        ),
        "google.protobuf.UInt32Value" => wrapper(
            Type::Integer,
            Some(SchemaFormat::Custom("uint32".into())),
            "An unsigned 32-bit integer, or null when unset.",
        ),
        "google.protobuf.BoolValue" => wrapper(Type::Boolean, None, "A boolean, or null when unset."),
        "google.protobuf.StringValue" => wrapper(Type::String, None, "A string, or null when unset."),
        "google.protobuf.BytesValue" => ObjectBuilder::new()
            .schema_type([Type::String, Type::Null].into_iter().collect::<SchemaType>())
            .content_encoding("base64")
            .description(Some("Bytes in base64, or null when unset."))
            .build()
            .into(),
        "google.protobuf.Struct" => ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("Any JSON object."))
            .additional_properties(Some(Ref::from_schema_name("google.protobuf.Value")))
            .build()
            .into(),
        "google.protobuf.Value" => {
            ObjectBuilder::new().schema_type(SchemaType::AnyValue).description(Some("Any JSON value.")).build().into()
        }
        "google.protobuf.ListValue" => ArrayBuilder::new()
            .items(Ref::from_schema_name("google.protobuf.Value"))
            .description(Some("Any JSON array."))
            .build()
            .into(),
        "google.protobuf.Empty" => ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("An empty JSON object, `{}`."))
            .build()
            .into(),
        "google.protobuf.Any" => ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "A message of any type: `@type` is its type URL and the other members are its JSON fields (or \
                 `value`, for types whose JSON is not an object).",
            ))
            .property(
                "@type",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("The type URL, such as `type.googleapis.com/google.rpc.BadRequest`.")),
            )
            .required("@type")
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .build()
            .into(),
        _ => return None,
    };
    Some(schema)
}

fn ref_with(reference: Ref, description: Option<String>) -> Ref {
    let mut reference = reference;
    reference.description = description.unwrap_or_default();
    reference
}

/// A field's comments, and for a member of a oneof, which fields exclude each other.
fn field_comments(field: &FieldDescriptor) -> Option<String> {
    let own = comments(&field.parent_file(), field.path());
    match field.containing_oneof().filter(|oneof| !oneof.is_synthetic()) {
        Some(oneof) => {
            let members = oneof.fields().map(|member| format!("`{}`", member.json_name())).collect::<Vec<_>>();
            Some(join_paragraphs(
                own,
                format!("At most one of {} is set (oneof `{}`).", members.join(", "), oneof.name()),
            ))
        }
        None => own,
    }
}

/// The comments on the element at `path` in `file`'s source info: leading, else trailing. `None` when there are
/// none, or when the descriptors were built without source info.
fn comments(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let proto = file.file_descriptor_proto();
    let location = proto.source_code_info.as_ref()?.location.iter().find(|location| location.path == path)?;
    let raw = location
        .leading_comments
        .as_deref()
        .filter(|text| !text.trim().is_empty())
        .or(location.trailing_comments.as_deref())?;
    // `// text` arrives as " text": drop that one space per line, but keep deeper indentation (code samples).
    let lines: Vec<&str> = raw.lines().map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end()).collect();
    let text = lines.join("\n");
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// The first sentence of the first paragraph, on one line.
fn summary(text: &str) -> String {
    let paragraph = text.split("\n\n").next().unwrap_or(text);
    let flat = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut from = 0;
    while let Some(offset) = flat[from..].find(". ") {
        let end = from + offset + 1;
        let sentence = &flat[..end];
        if !(sentence.ends_with("e.g.") || sentence.ends_with("i.e.")) {
            return sentence.to_string();
        }
        from = end;
    }
    flat
}

fn join_paragraphs(first: Option<String>, second: String) -> String {
    match first {
        Some(first) => format!("{first}\n\n{second}"),
        None => second,
    }
}

fn json_path(path: &[FieldDescriptor]) -> String {
    path.iter().map(FieldDescriptor::json_name).collect::<Vec<_>>().join(".")
}

/// The `{name}`s of an OpenAPI path, in order.
fn path_variables(path: &str) -> Vec<String> {
    path.split('{').skip(1).filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_reflect::{DescriptorPool, DynamicMessage};
    use serde_json::{Value as Json, json};

    use super::*;
    use crate::proto::DESCRIPTOR_POOL;

    /// A FieldDescriptorProto in proto3 JSON: a singular scalar.
    fn field(name: &str, number: u32, kind: &str) -> Json {
        json!({"name": name, "number": number, "label": "LABEL_OPTIONAL", "type": kind})
    }

    /// A singular message or enum field.
    fn of(name: &str, number: u32, kind: &str, type_name: &str) -> Json {
        let mut field = field(name, number, kind);
        field["typeName"] = json!(type_name);
        field
    }

    /// A repeated message or enum field (or a map, with its entry type).
    fn repeated(name: &str, number: u32, kind: &str, type_name: &str) -> Json {
        let mut field = of(name, number, kind, type_name);
        field["label"] = json!("LABEL_REPEATED");
        field
    }

    /// `field` as a member of its message's first oneof.
    fn in_oneof(mut field: Json) -> Json {
        field["oneofIndex"] = json!(0);
        field
    }

    /// The crate's descriptors plus a made-up `shelf` package: two services, the scalar kinds the crate's
    /// protos lack, a map, a oneof, a cycle, nested path variables, a multi-segment variable, a wildcard, an
    /// additional binding, `body: "*"` with a path-bound field, and minimal stand-ins for the well-known types
    /// the crate's protos do not import.
    fn library_pool() -> DescriptorPool {
        let wrappers = [
            ("DoubleValue", "TYPE_DOUBLE"),
            ("FloatValue", "TYPE_FLOAT"),
            ("Int64Value", "TYPE_INT64"),
            ("UInt64Value", "TYPE_UINT64"),
            ("Int32Value", "TYPE_INT32"),
            ("UInt32Value", "TYPE_UINT32"),
            ("BoolValue", "TYPE_BOOL"),
            ("StringValue", "TYPE_STRING"),
            ("BytesValue", "TYPE_BYTES"),
        ];
        let wrappers = json!({
            "name": "google/protobuf/wrappers.proto",
            "package": "google.protobuf",
            "syntax": "proto3",
            "messageType": wrappers
                .iter()
                .map(|(name, kind)| json!({"name": name, "field": [field("value", 1, kind)]}))
                .collect::<Vec<_>>(),
        });
        let structs = json!({
            "name": "google/protobuf/struct.proto",
            "package": "google.protobuf",
            "syntax": "proto3",
            "messageType": [
                {
                    "name": "Struct",
                    "field": [repeated("fields", 1, "TYPE_MESSAGE", ".google.protobuf.Struct.FieldsEntry")],
                    "nestedType": [{
                        "name": "FieldsEntry",
                        "field": [
                            field("key", 1, "TYPE_STRING"),
                            of("value", 2, "TYPE_MESSAGE", ".google.protobuf.Value"),
                        ],
                        "options": {"mapEntry": true},
                    }],
                },
                {
                    "name": "Value",
                    "field": [
                        in_oneof(of("null_value", 1, "TYPE_ENUM", ".google.protobuf.NullValue")),
                        in_oneof(field("number_value", 2, "TYPE_DOUBLE")),
                        in_oneof(field("string_value", 3, "TYPE_STRING")),
                        in_oneof(field("bool_value", 4, "TYPE_BOOL")),
                        in_oneof(of("struct_value", 5, "TYPE_MESSAGE", ".google.protobuf.Struct")),
                        in_oneof(of("list_value", 6, "TYPE_MESSAGE", ".google.protobuf.ListValue")),
                    ],
                    "oneofDecl": [{"name": "kind"}],
                },
                {
                    "name": "ListValue",
                    "field": [repeated("values", 1, "TYPE_MESSAGE", ".google.protobuf.Value")],
                },
            ],
            "enumType": [{"name": "NullValue", "value": [{"name": "NULL_VALUE", "number": 0}]}],
        });
        let http = |rule: Json| json!({"[google.api.http]": rule});
        let library = json!({
            "name": "shelf/library.proto",
            "package": "shelf",
            "syntax": "proto3",
            "dependency": [
                "google/api/annotations.proto",
                "google/protobuf/empty.proto",
                "google/protobuf/field_mask.proto",
                "google/protobuf/timestamp.proto",
                "google/protobuf/duration.proto",
                "google/protobuf/struct.proto",
                "google/protobuf/wrappers.proto",
                "google/rpc/status.proto",
            ],
            "messageType": [
                {
                    "name": "Book",
                    "field": [
                        field("name", 1, "TYPE_STRING"),
                        field("page_count", 2, "TYPE_SINT32"),
                        field("isbn", 3, "TYPE_FIXED64"),
                        field("price", 4, "TYPE_FLOAT"),
                        field("cover", 5, "TYPE_BYTES"),
                        repeated("sales", 6, "TYPE_MESSAGE", ".shelf.Book.SalesEntry"),
                        repeated("related", 7, "TYPE_MESSAGE", ".shelf.Book"),
                        of("genre", 8, "TYPE_ENUM", ".shelf.Genre"),
                        in_oneof(field("isbn10", 9, "TYPE_STRING")),
                        in_oneof(field("isbn13", 10, "TYPE_STRING")),
                        of("published", 11, "TYPE_MESSAGE", ".google.protobuf.Timestamp"),
                        of("reading_time", 12, "TYPE_MESSAGE", ".google.protobuf.Duration"),
                        of("extra", 13, "TYPE_MESSAGE", ".google.protobuf.Struct"),
                        of("rating", 14, "TYPE_MESSAGE", ".google.protobuf.DoubleValue"),
                        field("weight_grams", 15, "TYPE_UINT32"),
                        field("signed", 16, "TYPE_BOOL"),
                        field("balance", 17, "TYPE_SFIXED64"),
                        field("edition", 18, "TYPE_FIXED32"),
                        field("offset", 19, "TYPE_SINT64"),
                        field("shelf_slot", 20, "TYPE_SFIXED32"),
                        of("problem", 21, "TYPE_MESSAGE", ".google.rpc.Status"),
                    ],
                    "nestedType": [{
                        "name": "SalesEntry",
                        "field": [field("key", 1, "TYPE_UINT32"), field("value", 2, "TYPE_INT64")],
                        "options": {"mapEntry": true},
                    }],
                    "oneofDecl": [{"name": "identifier"}],
                },
                {"name": "ShelfRef", "field": [field("id", 1, "TYPE_INT64"), field("owner", 2, "TYPE_STRING")]},
                {
                    "name": "GetBookRequest",
                    "field": [
                        of("shelf", 1, "TYPE_MESSAGE", ".shelf.ShelfRef"),
                        field("book_id", 2, "TYPE_UINT64"),
                        repeated("genres", 3, "TYPE_ENUM", ".shelf.Genre"),
                        of("read_mask", 4, "TYPE_MESSAGE", ".google.protobuf.FieldMask"),
                        of("min_rating", 5, "TYPE_MESSAGE", ".google.protobuf.DoubleValue"),
                    ],
                },
                {
                    "name": "MoveBookRequest",
                    "field": [
                        of("shelf", 1, "TYPE_MESSAGE", ".shelf.ShelfRef"),
                        of("book", 2, "TYPE_MESSAGE", ".shelf.Book"),
                        field("note", 3, "TYPE_STRING"),
                    ],
                },
            ],
            "enumType": [{
                "name": "Genre",
                "value": [{"name": "GENRE_UNSPECIFIED", "number": 0}, {"name": "GENRE_FICTION", "number": 1}],
            }],
            "service": [
                {
                    "name": "Library",
                    "method": [
                        {
                            "name": "GetBook",
                            "inputType": ".shelf.GetBookRequest",
                            "outputType": ".shelf.Book",
                            "options": http(json!({
                                "get": "/v2/shelves/{shelf.id}/books/{book_id}",
                                "additionalBindings": [{"get": "/v2/books/{book_id}/**"}],
                            })),
                        },
                        {
                            "name": "MoveBook",
                            "inputType": ".shelf.MoveBookRequest",
                            "outputType": ".google.protobuf.Empty",
                            "options": http(json!({"post": "/v2/shelves/{shelf.id}/books:move", "body": "*"})),
                        },
                        {
                            "name": "ReadBooks",
                            "inputType": ".shelf.GetBookRequest",
                            "outputType": ".shelf.Book",
                            "serverStreaming": true,
                            "options": http(json!({"get": "/v2/shelves/{shelf.id}/books:read"})),
                        },
                    ],
                },
                {
                    "name": "Archive",
                    "method": [{
                        "name": "GetBook",
                        "inputType": ".shelf.GetBookRequest",
                        "outputType": ".shelf.Book",
                        "options": http(json!({"get": "/v2/archive/{shelf.owner=users/*}/{book_id}"})),
                    }],
                },
            ],
            "sourceCodeInfo": {"location": [
                {"path": [4, 0], "leadingComments": " A book on a shelf.\n"},
                {"path": [4, 0, 2, 1], "leadingComments": " Number of pages.\n"},
                {"path": [6, 0, 2, 0], "leadingComments": " Gets a book. Or fails.\n\n More text.\n"},
                {"path": [5, 0, 2, 1], "trailingComments": " Stories.\n"},
            ]},
        });
        let file_proto = DESCRIPTOR_POOL
            .get_message_by_name("google.protobuf.FileDescriptorProto")
            .expect("descriptor.proto in the pool");
        let mut pool = DESCRIPTOR_POOL.clone();
        for file in [wrappers, structs, library] {
            let message = DynamicMessage::deserialize(file_proto.clone(), file).expect("a valid FileDescriptorProto");
            pool.decode_file_descriptor_proto(message.encode_to_vec().as_slice()).expect("the file fits the pool");
        }
        pool
    }

    fn library_document() -> Json {
        let routes = RouteTable::from_pool(&library_pool()).expect("the library's routes");
        serde_json::to_value(document(&routes)).expect("the document serialises")
    }

    /// `value` without any `description`, recursively: the tables check types, the comment tests descriptions.
    fn bare(mut value: Json) -> Json {
        fn strip(value: &mut Json) {
            match value {
                Json::Object(object) => {
                    object.remove("description");
                    object.values_mut().for_each(strip);
                }
                Json::Array(items) => items.iter_mut().for_each(strip),
                _ => {}
            }
        }
        strip(&mut value);
        value
    }

    fn field_schema_of(pool: &DescriptorPool, message: &str, name: &str) -> Json {
        let field = pool
            .get_message_by_name(message)
            .and_then(|message| message.get_field_by_name(name))
            .unwrap_or_else(|| panic!("{message}.{name} is in the pool"));
        bare(serde_json::to_value(Generator::default().field_schema(&field)).expect("schemas serialise"))
    }

    #[test]
    fn field_kinds_map_to_their_proto3_json_schemas() {
        let library = library_pool();
        let table = [
            ("user.User", "id", json!({"type": "string", "format": "int64"})),
            ("user.User", "name", json!({"type": "string"})),
            ("user.User", "roles", json!({"type": "array", "items": {"type": "string"}})),
            ("user.User", "status", json!({"$ref": "#/components/schemas/user.UserStatus"})),
            ("user.User", "created_at", json!({"$ref": "#/components/schemas/google.protobuf.Timestamp"})),
            ("user.ListUsersRequest", "page_size", json!({"type": "integer", "format": "int32"})),
            (
                "user.ListUsersResponse",
                "users",
                json!({"type": "array", "items": {"$ref": "#/components/schemas/user.User"}}),
            ),
            (
                "user.UpdateUserRequest",
                "update_mask",
                json!({"$ref": "#/components/schemas/google.protobuf.FieldMask"}),
            ),
            (
                "google.protobuf.UninterpretedOption",
                "positive_int_value",
                json!({"type": "string", "format": "uint64"}),
            ),
            ("google.protobuf.UninterpretedOption", "double_value", json!({"type": "number", "format": "double"})),
            (
                "google.protobuf.UninterpretedOption",
                "string_value",
                json!({"type": "string", "contentEncoding": "base64"}),
            ),
            ("google.protobuf.FieldDescriptorProto", "proto3_optional", json!({"type": "boolean"})),
            ("google.protobuf.Timestamp", "nanos", json!({"type": "integer", "format": "int32"})),
            (
                "google.rpc.Status",
                "details",
                json!({"type": "array", "items": {"$ref": "#/components/schemas/google.protobuf.Any"}}),
            ),
            ("shelf.Book", "page_count", json!({"type": "integer", "format": "int32"})),
            ("shelf.Book", "isbn", json!({"type": "string", "format": "uint64"})),
            ("shelf.Book", "balance", json!({"type": "string", "format": "int64"})),
            ("shelf.Book", "offset", json!({"type": "string", "format": "int64"})),
            ("shelf.Book", "edition", json!({"type": "integer", "format": "uint32"})),
            ("shelf.Book", "shelf_slot", json!({"type": "integer", "format": "int32"})),
            ("shelf.Book", "price", json!({"type": "number", "format": "float"})),
            ("shelf.Book", "weight_grams", json!({"type": "integer", "format": "uint32"})),
            ("shelf.Book", "signed", json!({"type": "boolean"})),
            ("shelf.Book", "cover", json!({"type": "string", "contentEncoding": "base64"})),
            (
                "shelf.Book",
                "sales",
                json!({"type": "object", "additionalProperties": {"type": "string", "format": "int64"}}),
            ),
            ("shelf.Book", "related", json!({"type": "array", "items": {"$ref": "#/components/schemas/shelf.Book"}})),
            ("shelf.Book", "rating", json!({"$ref": "#/components/schemas/google.protobuf.DoubleValue"})),
            (
                "google.protobuf.Struct",
                "fields",
                json!({
                    "type": "object",
                    "additionalProperties": {"$ref": "#/components/schemas/google.protobuf.Value"},
                }),
            ),
        ];
        for (message, name, expected) in table {
            let pool = if message.starts_with("shelf.") || message == "google.protobuf.Struct" {
                &library
            } else {
                &DESCRIPTOR_POOL
            };
            assert_eq!(field_schema_of(pool, message, name), expected, "{message}.{name}");
        }
    }

    #[test]
    fn well_known_types_have_their_json_forms() {
        let pool = library_pool();
        let table = [
            ("google.protobuf.Timestamp", json!({"type": "string", "format": "date-time"})),
            ("google.protobuf.Duration", json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"})),
            ("google.protobuf.FieldMask", json!({"type": "string"})),
            ("google.protobuf.DoubleValue", json!({"type": ["number", "null"], "format": "double"})),
            ("google.protobuf.FloatValue", json!({"type": ["number", "null"], "format": "float"})),
            ("google.protobuf.Int64Value", json!({"type": ["string", "null"], "format": "int64"})),
            ("google.protobuf.UInt64Value", json!({"type": ["string", "null"], "format": "uint64"})),
            ("google.protobuf.Int32Value", json!({"type": ["integer", "null"], "format": "int32"})),
            ("google.protobuf.UInt32Value", json!({"type": ["integer", "null"], "format": "uint32"})),
            ("google.protobuf.BoolValue", json!({"type": ["boolean", "null"]})),
            ("google.protobuf.StringValue", json!({"type": ["string", "null"]})),
            ("google.protobuf.BytesValue", json!({"type": ["string", "null"], "contentEncoding": "base64"})),
            (
                "google.protobuf.Struct",
                json!({
                    "type": "object",
                    "additionalProperties": {"$ref": "#/components/schemas/google.protobuf.Value"},
                }),
            ),
            ("google.protobuf.Value", json!({})),
            (
                "google.protobuf.ListValue",
                json!({"type": "array", "items": {"$ref": "#/components/schemas/google.protobuf.Value"}}),
            ),
            ("google.protobuf.Empty", json!({"type": "object"})),
            (
                "google.protobuf.Any",
                json!({
                    "type": "object",
                    "properties": {"@type": {"type": "string"}},
                    "required": ["@type"],
                    "additionalProperties": true,
                }),
            ),
        ];
        for (name, expected) in table {
            let message = pool.get_message_by_name(name).unwrap_or_else(|| panic!("{name} is in the pool"));
            let schema =
                serde_json::to_value(Generator::default().message_schema(&message)).expect("schemas serialise");
            assert_eq!(bare(schema), expected, "{name}");
        }
        let null = pool.get_enum_by_name("google.protobuf.NullValue").expect("NullValue");
        assert_eq!(bare(serde_json::to_value(enum_schema(&null, None)).expect("serialises")), json!({"type": "null"}));
    }

    #[test]
    fn enums_list_their_names_and_comment_each_value() {
        let status = DESCRIPTOR_POOL.get_enum_by_name("user.UserStatus").expect("user.UserStatus");
        let schema = serde_json::to_value(enum_schema(&status, comments(&status.parent_file(), status.path())))
            .expect("serialises");
        assert_eq!(schema["type"], "string");
        assert_eq!(
            schema["enum"],
            json!(["USER_STATUS_UNSPECIFIED", "USER_STATUS_ACTIVE", "USER_STATUS_INACTIVE", "USER_STATUS_SUSPENDED"])
        );
        let description = schema["description"].as_str().expect("a description");
        assert!(description.starts_with("The status of a user account.\n\n"), "{description}");
        assert!(
            description.contains("\n- `USER_STATUS_ACTIVE`: The account is in use. New users start here."),
            "{description}"
        );
    }

    #[test]
    fn comments_come_from_the_source_info() {
        let id = DESCRIPTOR_POOL
            .get_message_by_name("user.User")
            .and_then(|m| m.get_field_by_name("id"))
            .expect("user.User.id");
        assert_eq!(field_comments(&id).as_deref(), Some("The user's id, assigned by the server. Output only."));
        let message = DESCRIPTOR_POOL.get_message_by_name("user.WatchUsersRequest").expect("message");
        assert_eq!(comments(&message.parent_file(), message.path()).as_deref(), Some("Request for WatchUsers."));

        let library = library_document();
        let book = &library["components"]["schemas"]["shelf.Book"];
        assert_eq!(book["description"], "A book on a shelf.");
        assert_eq!(book["properties"]["pageCount"]["description"], "Number of pages.");
        assert_eq!(
            book["properties"]["isbn10"]["description"],
            "At most one of `isbn10`, `isbn13` is set (oneof `identifier`).",
            "oneof members say so"
        );
        let genre = library["components"]["schemas"]["shelf.Genre"]["description"].as_str().expect("a description");
        assert!(genre.contains("- `GENRE_FICTION`: Stories."), "trailing comments count too: {genre}");
        let get_book = &library["paths"]["/v2/shelves/{shelf.id}/books/{book_id}"]["get"];
        assert_eq!(get_book["summary"], "Gets a book.");
        assert_eq!(get_book["description"], "Gets a book. Or fails.\n\nMore text.");
        assert!(
            library["paths"]["/v2/archive/{shelf.owner}/{book_id}"]["get"].get("summary").is_none(),
            "no comment, no summary"
        );
    }

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
        let get_book = operation("/v2/shelves/{shelf.id}/books/{book_id}", "get");
        assert_eq!(get_book["operationId"], "Library_GetBook");
        assert_eq!(get_book["tags"], json!(["Library"]));
        assert_eq!(operation("/v2/books/{book_id}/{__wildcard_1}", "get")["operationId"], "Library_GetBook_1");
        assert_eq!(operation("/v2/archive/{shelf.owner}/{book_id}", "get")["operationId"], "Archive_GetBook");
        assert_eq!(operation("/v2/archive/{shelf.owner}/{book_id}", "get")["tags"], json!(["Archive"]));

        assert_eq!(
            names(&get_book),
            [
                "path:shelf.id",
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
        let genre = json!({"type": "string", "enum": ["GENRE_UNSPECIFIED", "GENRE_FICTION"]});
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

        let archive = operation("/v2/archive/{shelf.owner}/{book_id}", "get");
        let owner = &archive["parameters"][0];
        assert_eq!((&owner["name"], &owner["in"]), (&json!("shelf.owner"), &json!("path")));
        let note = owner["description"].as_str().unwrap_or_default();
        assert!(note.contains("`/v2/archive/{shelf.owner=users/*}/{book_id}`") && note.contains("unencoded"), "{note}");

        let wildcard = operation("/v2/books/{book_id}/{__wildcard_1}", "get");
        assert_eq!(names(&wildcard)[..2], ["path:book_id", "path:__wildcard_1"]);

        // body "*" with a path-bound field: the body schema leaves exactly that field out.
        let move_book = operation("/v2/shelves/{shelf.id}/books:move", "post");
        assert_eq!(
            names(&move_book),
            ["path:shelf.id", "header:Grpc-Timeout"],
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
        let read = operation("/v2/shelves/{shelf.id}/books:read", "get");
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
    fn summaries_are_first_sentences() {
        let cases = [
            ("Returns one user by id. Fails with NOT_FOUND.", "Returns one user by id."),
            (
                "Lists users in id order, one page\nat a time. Pages are cursor based.",
                "Lists users in id order, one page at a time.",
            ),
            ("Takes options, e.g. a filter. Then more.", "Takes options, e.g. a filter."),
            ("No full stop at all", "No full stop at all"),
            ("First paragraph without a stop\n\nSecond paragraph.", "First paragraph without a stop"),
        ];
        for (text, expected) in cases {
            assert_eq!(summary(text), expected, "{text:?}");
        }
    }

    #[test]
    fn path_variables_are_read_from_openapi_paths() {
        assert_eq!(path_variables("/v1/{name}/x/{__wildcard_1}:get"), ["name", "__wildcard_1"]);
        assert!(path_variables("/v1/users").is_empty());
    }
}
