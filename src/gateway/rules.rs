//! Descriptors → route table. Every RPC with a `google.api.http` rule (and each of its additional bindings)
//! becomes a [`Route`]. Everything a request will need is resolved here, once: the path template, the field
//! descriptors that path variables and the body bind, the response field, the streaming shape and the SSE
//! options. A rule that cannot work fails at start-up with the RPC and the template named.

use std::cmp::Ordering;
use std::sync::Arc;

use http::Method;
use http::uri::PathAndQuery;
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MethodDescriptor, Value};

use crate::gateway::template::{PathMatch, PathTemplate, TemplateError};
use crate::gateway::transcode::{MessagePlan, PathOnlyPlan, http_body};
use crate::telemetry::metrics::RouteHandles;
use crate::upstream::GrpcMethod;

/// Where the HTTP request body goes.
#[derive(Debug, Clone)]
pub enum BodyRule {
    /// No body (`body` unset): every field not bound by the path comes from the query string.
    None,
    /// `body: "*"`: the body is the request message, less the path-bound fields.
    Whole,
    /// `body: "field"`: the body is that field; other fields come from the path and the query string.
    Field(FieldDescriptor),
}

/// What becomes the HTTP response body.
#[derive(Debug, Clone)]
pub enum ResponseBody {
    Whole,
    /// `response_body: "field"`.
    Field(FieldDescriptor),
}

/// The streaming shape of an RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Unary,
    ServerStreaming,
    ClientStreaming,
}

/// How a server stream maps onto SSE (from the `portico.stream` method option).
#[derive(Debug, Clone, Default)]
pub struct SseOptions {
    /// The response field whose value is each event's `id:`.
    pub event_id_field: Option<FieldDescriptor>,
    /// The request field that takes `Last-Event-ID` on reconnect.
    pub resume_field: Option<FieldDescriptor>,
}

/// A path variable, resolved: the chain of fields from the request message down to the bound scalar.
#[derive(Debug, Clone)]
pub struct PathField {
    pub path: Vec<FieldDescriptor>,
}

/// One HTTP binding of one RPC.
#[derive(Debug, Clone)]
pub struct Route {
    pub http_method: Method,
    pub template: PathTemplate,
    pub path_fields: Vec<PathField>,
    pub body: BodyRule,
    pub response_body: ResponseBody,
    pub rpc: MethodDescriptor,
    /// The upstream RPC: its gRPC path and response type.
    pub grpc: GrpcMethod,
    pub kind: CallKind,
    pub sse: SseOptions,
    /// Whether a call that reached a server may be retried: GET (and HEAD) routes, RPCs marked
    /// `idempotency_level = IDEMPOTENT` or `NO_SIDE_EFFECTS`, and the gateway's `--idempotent-rpcs`, less its
    /// `--non-idempotent-rpcs`.
    pub idempotent: bool,
    /// The upstream cluster that serves the route's service (an index into the gateway's clusters; 0 is the
    /// default upstream).
    pub cluster: usize,
    /// The body goes into a `google.api.HttpBody` (the request, or the body field) as raw bytes.
    pub raw_request_body: bool,
    /// The answer is a `google.api.HttpBody` (the response, or the response_body field), written raw.
    pub raw_response_body: bool,
    /// How a request with neither body nor query string is written straight to its wire bytes
    /// (`transcode/path_only.rs`), when every path variable binds a scalar field of the request itself.
    pub path_only: Option<PathOnlyPlan>,
    /// How a unary answer is printed straight from its wire bytes (`transcode/wire_json.rs`).
    pub response_plan: Arc<MessagePlan>,
    /// Its request metrics' handles, found once per method and status rather than on every request.
    pub metrics: Arc<RouteHandles>,
}

impl Route {
    /// `package.Service.Method`, for logs.
    pub fn rpc_name(&self) -> &str {
        self.rpc.full_name()
    }

    /// `package.Service`.
    pub fn service_name(&self) -> &str {
        self.rpc.parent_service().full_name()
    }
}

/// Which services of the descriptors become routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteOptions {
    /// Only these services (`package.Service`); all of them when empty. A name the descriptors do not hold
    /// fails the load.
    pub services: Vec<String>,
    /// A service with no `google.api.http` rule on any method is served at `POST /package.Service/Method`
    /// (unary and server-streaming methods, the whole request message as the body), as Envoy's transcoder
    /// does; without this it is skipped with a log line.
    pub auto_routes: bool,
}

impl RouteOptions {
    fn exposes(&self, service: &str) -> bool {
        self.services.is_empty() || self.services.iter().any(|s| s == service)
    }
}

/// Infrastructure services a gRPC server offers beside its API: never auto-routed unless named in
/// `--services`.
const INFRASTRUCTURE_SERVICES: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// One HTTP binding as the HttpRule states it: the method, the template and the body selectors.
#[derive(Debug, Clone)]
struct HttpBinding {
    method: Method,
    path: String,
    body: String,
    response_body: String,
}

impl HttpBinding {
    /// Envoy's auto-mapping: `POST /package.Service/Method` with the whole request as the body.
    fn auto(rpc: &MethodDescriptor) -> Self {
        Self {
            method: Method::POST,
            path: format!("/{}/{}", rpc.parent_service().full_name(), rpc.name()),
            body: "*".into(),
            response_body: String::new(),
        }
    }

    /// The binding stated by one google.api.HttpRule message.
    fn from_rule(rule: &DynamicMessage) -> Result<Self, String> {
        let mut pattern = None;
        for (name, method) in [
            ("get", Method::GET),
            ("put", Method::PUT),
            ("post", Method::POST),
            ("delete", Method::DELETE),
            ("patch", Method::PATCH),
        ] {
            if rule.has_field_by_name(name) {
                pattern = Some((method, string_field(rule, name)));
            }
        }
        if let Some(Value::Message(custom)) = rule.get_field_by_name("custom").as_deref()
            && rule.has_field_by_name("custom")
        {
            let kind = string_field(custom, "kind");
            let method = Method::from_bytes(kind.as_bytes())
                .map_err(|_| format!("custom method {kind:?} is not an HTTP method"))?;
            pattern = Some((method, string_field(custom, "path")));
        }
        let (method, path) = pattern.ok_or_else(|| "the HttpRule sets no method and path".to_string())?;
        Ok(Self { method, path, body: string_field(rule, "body"), response_body: string_field(rule, "response_body") })
    }
}

/// Why the descriptors cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("the descriptors have no google.api.http extension; import google/api/annotations.proto")]
    NoHttpExtension,
    #[error("{rpc}: {message}")]
    Invalid { rpc: String, message: String },
    #[error("{rpc}: {source}")]
    Template {
        rpc: String,
        #[source]
        source: TemplateError,
    },
    #[error("{first} ({method} {first_template}) and {second} ({method} {second_template}) match the same requests")]
    Conflict { method: Method, first_template: String, second_template: String, first: String, second: String },
    #[error("no RPC in the descriptors has a google.api.http rule (--auto-routes serves services without rules)")]
    NoRoutes,
    #[error("service {0} is not in the descriptors")]
    UnknownService(String),
}

/// The outcome of matching a request.
pub enum RouteMatch<'a> {
    Found(&'a Arc<Route>, PathMatch),
    /// The path exists for other methods.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

/// All routes, most specific first.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Builds the table from every annotated RPC in `pool`.
    ///
    /// Fails when a rule is malformed, binds a field that does not exist or cannot be bound, or two rules bind
    /// the same method and path shape.
    pub fn from_pool(pool: &DescriptorPool) -> Result<Self, RuleError> {
        Self::build(pool, &RouteOptions::default())
    }

    /// Builds the table from the services of `pool` that `options` selects.
    ///
    /// Fails as [`Self::from_pool`] does, and when `options` names a service the pool does not hold.
    pub fn build(pool: &DescriptorPool, options: &RouteOptions) -> Result<Self, RuleError> {
        let http = pool.get_extension_by_name("google.api.http");
        if http.is_none() && !options.auto_routes {
            return Err(RuleError::NoHttpExtension);
        }
        for wanted in &options.services {
            if pool.get_service_by_name(wanted).is_none() {
                return Err(RuleError::UnknownService(wanted.clone()));
            }
        }
        let stream_option = pool.get_extension_by_name("portico.stream");
        let mut routes = Vec::new();
        for service in pool.services() {
            if !options.exposes(service.full_name()) {
                continue;
            }
            let annotated =
                http.as_ref().is_some_and(|http| service.methods().any(|rpc| rpc.options().has_extension(http)));
            let auto = !annotated
                && options.auto_routes
                && (!INFRASTRUCTURE_SERVICES.contains(&service.full_name())
                    || options.services.iter().any(|s| s == service.full_name()));
            if !annotated && !auto {
                tracing::info!(
                    service = service.full_name(),
                    "no method has a google.api.http rule; service skipped (--auto-routes serves it at POST /{{service}}/{{method}})"
                );
                continue;
            }
            for rpc in service.methods() {
                let options = rpc.options();
                let rpc_name = rpc.full_name().to_string();
                let invalid = |message: String| RuleError::Invalid { rpc: rpc_name.clone(), message };
                let mut bindings = Vec::new();
                if auto {
                    if rpc.is_client_streaming() && !rpc.is_server_streaming() {
                        tracing::info!(rpc = %rpc_name, "auto-routes serve unary and server-streaming methods; client-streaming method skipped");
                        continue;
                    }
                    bindings.push(HttpBinding::auto(&rpc));
                } else if let Some(http) = http.as_ref().filter(|http| options.has_extension(http)) {
                    let rule = options.get_extension(http);
                    let Value::Message(rule) = rule.as_ref() else {
                        return Err(invalid("google.api.http is not an HttpRule".into()));
                    };
                    bindings.push(HttpBinding::from_rule(rule).map_err(invalid)?);
                    if let Some(Value::List(additional)) = rule.get_field_by_name("additional_bindings").as_deref() {
                        for binding in additional {
                            let Value::Message(binding) = binding else { continue };
                            if has_additional_bindings(binding) {
                                return Err(invalid("additional_bindings must not nest".into()));
                            }
                            bindings.push(HttpBinding::from_rule(binding).map_err(invalid)?);
                        }
                    }
                } else {
                    continue;
                }
                let kind = match (rpc.is_client_streaming(), rpc.is_server_streaming()) {
                    (false, false) => CallKind::Unary,
                    (false, true) => CallKind::ServerStreaming,
                    (true, false) => CallKind::ClientStreaming,
                    (true, true) => {
                        tracing::warn!(rpc = %rpc_name, "bidirectional streaming RPCs are not served over HTTP; skipped");
                        continue;
                    }
                };
                let sse = match &stream_option {
                    Some(extension) if options.has_extension(extension) => {
                        sse_options(&rpc, &options.get_extension(extension)).map_err(invalid)?
                    }
                    _ => SseOptions::default(),
                };
                for binding in bindings {
                    routes.push(Arc::new(route(&rpc, binding, kind, sse.clone())?));
                }
            }
        }
        if routes.is_empty() {
            return Err(RuleError::NoRoutes);
        }
        routes.sort_by(|a, b| {
            a.template.cmp_specificity(&b.template).then_with(|| a.http_method.as_str().cmp(b.http_method.as_str()))
        });
        for (i, first) in routes.iter().enumerate() {
            for second in &routes[i + 1..] {
                if first.http_method == second.http_method && first.template.same_shape(&second.template) {
                    return Err(RuleError::Conflict {
                        method: first.http_method.clone(),
                        first_template: first.template.as_str().to_string(),
                        second_template: second.template.as_str().to_string(),
                        first: first.rpc_name().to_string(),
                        second: second.rpc_name().to_string(),
                    });
                }
            }
        }
        Ok(Self { routes })
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Sets each route's upstream cluster from its service name.
    pub fn assign_clusters(&mut self, cluster_of: impl Fn(&str) -> usize) {
        for route in &mut self.routes {
            let cluster = cluster_of(route.service_name());
            if route.cluster != cluster {
                Arc::make_mut(route).cluster = cluster;
            }
        }
    }

    /// Marks the RPCs in `idempotent` as safe to retry on every route, and those in `not_idempotent` as never
    /// (the latter wins). Names are `package.Service.Method`; `package.Service/Method` is accepted too.
    ///
    /// # Errors
    ///
    /// A name that matches no routed RPC: a typo must not silently turn retries off (or on).
    pub fn override_idempotency(&mut self, idempotent: &[String], not_idempotent: &[String]) -> Result<(), RuleError> {
        for (names, value) in [(idempotent, true), (not_idempotent, false)] {
            for name in names {
                let wanted = name.trim().trim_start_matches('/').replace('/', ".");
                let mut found = false;
                for route in &mut self.routes {
                    if route.rpc_name() == wanted {
                        Arc::make_mut(route).idempotent = value;
                        found = true;
                    }
                }
                if !found {
                    return Err(RuleError::Invalid {
                        rpc: wanted,
                        message: "named in the idempotency settings, but no HTTP route calls it".into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The most specific route for `method` and `path`; else which methods the path has; else not found.
    /// The label of the route a request would most likely reach: the first of `method` whose template
    /// [fits](PathTemplate::fits) `path`, found without decoding the path's values (to name a span before the
    /// request is handled; [`Self::find`] decides).
    pub fn label_for(&self, method: &Method, path: &str) -> Option<&Arc<str>> {
        self.routes
            .iter()
            .find(|route| route.http_method == *method && route.template.fits(path))
            .map(|route| route.template.label())
    }

    pub fn find(&self, method: &Method, path: &str) -> RouteMatch<'_> {
        // The method's own routes first: matching another method's template decodes its values for nothing.
        for route in self.routes.iter().filter(|route| route.http_method == *method) {
            if let Some(found) = route.template.matches(path) {
                return RouteMatch::Found(route, found);
            }
        }
        let mut allowed: Vec<Method> = Vec::new();
        for route in &self.routes {
            if !allowed.contains(&route.http_method) && route.template.matches(path).is_some() {
                allowed.push(route.http_method.clone());
            }
        }
        if allowed.is_empty() {
            RouteMatch::NotFound
        } else {
            allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            RouteMatch::MethodNotAllowed(allowed)
        }
    }
}

/// `option idempotency_level = IDEMPOTENT` (or `NO_SIDE_EFFECTS`) on the method.
fn marked_idempotent(rpc: &MethodDescriptor) -> bool {
    // google.protobuf.MethodOptions.IdempotencyLevel: 1 NO_SIDE_EFFECTS, 2 IDEMPOTENT.
    matches!(rpc.options().get_field_by_name("idempotency_level").as_deref(), Some(Value::EnumNumber(1 | 2)))
}

fn has_additional_bindings(rule: &DynamicMessage) -> bool {
    matches!(rule.get_field_by_name("additional_bindings").as_deref(), Some(Value::List(list)) if !list.is_empty())
}

fn string_field(rule: &DynamicMessage, name: &str) -> String {
    rule.get_field_by_name(name).and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn route(rpc: &MethodDescriptor, binding: HttpBinding, kind: CallKind, sse: SseOptions) -> Result<Route, RuleError> {
    let rpc_name = rpc.full_name().to_string();
    let invalid = |message: String| RuleError::Invalid { rpc: rpc_name.clone(), message };
    let HttpBinding { method: http_method, path, body, response_body } = binding;
    let template =
        PathTemplate::parse(&path).map_err(|source| RuleError::Template { rpc: rpc_name.clone(), source })?;

    let input = rpc.input();
    let mut path_fields = Vec::new();
    for variable in template.variables() {
        let mut chain = Vec::new();
        let mut message = input.clone();
        for (depth, name) in variable.field_path.iter().enumerate() {
            let field = message
                .get_field_by_name(name)
                .ok_or_else(|| invalid(format!("{path}: {} has no field {name:?}", message.full_name())))?;
            let last = depth + 1 == variable.field_path.len();
            if field.is_list() || field.is_map() {
                return Err(invalid(format!("{path}: path variable {name:?} is repeated; it must be a single value")));
            }
            match field.kind() {
                Kind::Message(next) if !last => message = next,
                Kind::Message(m) if last && !is_string_form_message(m.full_name()) => {
                    return Err(invalid(format!("{path}: path variable {name:?} is a message; it must be a scalar")));
                }
                _ if !last => {
                    return Err(invalid(format!("{path}: {name:?} is not a message, so it has no sub-fields")));
                }
                _ => {}
            }
            chain.push(field);
        }
        path_fields.push(PathField { path: chain });
    }

    let body = match body.as_str() {
        "" => BodyRule::None,
        "*" => BodyRule::Whole,
        name => BodyRule::Field(
            input
                .get_field_by_name(name)
                .ok_or_else(|| invalid(format!("body field {name:?} is not a field of {}", input.full_name())))?,
        ),
    };
    if kind == CallKind::ClientStreaming && matches!(body, BodyRule::None) {
        return Err(invalid(format!("{path}: a client-streaming RPC needs body: \"*\"")));
    }
    if kind == CallKind::ClientStreaming && !template.variables().is_empty() {
        return Err(invalid(format!(
            "{path}: a client-streaming RPC cannot bind path variables (each message has its own)"
        )));
    }
    let output = rpc.output();
    let response_body = match response_body.as_str() {
        "" => ResponseBody::Whole,
        name => ResponseBody::Field(output.get_field_by_name(name).ok_or_else(|| {
            invalid(format!("response_body field {name:?} is not a field of {}", output.full_name()))
        })?),
    };
    let raw_request_body = match &body {
        BodyRule::Whole => http_body::is_http_body(&input),
        BodyRule::Field(field) => http_body::is_http_body_field(field),
        BodyRule::None => false,
    };
    let raw_response_body = match &response_body {
        ResponseBody::Whole => http_body::is_http_body(&output),
        ResponseBody::Field(field) => http_body::is_http_body_field(field),
    };
    if raw_request_body && kind == CallKind::ClientStreaming {
        return Err(invalid(format!("{path}: a client-streaming RPC cannot take a google.api.HttpBody body")));
    }
    let grpc_path = format!("/{}/{}", rpc.parent_service().full_name(), rpc.name());
    let grpc_label = Arc::from(&grpc_path[1..]);
    let grpc_path = PathAndQuery::try_from(grpc_path).map_err(|e| invalid(format!("bad gRPC path: {e}")))?;
    let idempotent = http_method == Method::GET || http_method == Method::HEAD || marked_idempotent(rpc);
    // An HttpBody request takes its Content-Type even without a body: the general way writes it.
    let path_only = if raw_request_body { None } else { PathOnlyPlan::new(&path_fields) };
    Ok(Route {
        http_method,
        template,
        path_fields,
        body,
        response_body,
        rpc: rpc.clone(),
        grpc: GrpcMethod { path: grpc_path, label: grpc_label, response: rpc.output() },
        kind,
        sse,
        idempotent,
        cluster: 0,
        raw_request_body,
        raw_response_body,
        path_only,
        response_plan: Arc::new(MessagePlan::new(&output)),
        metrics: Arc::default(),
    })
}

fn sse_options(rpc: &MethodDescriptor, option: &Value) -> Result<SseOptions, String> {
    let Value::Message(option) = option else { return Err("portico.stream is not a StreamOptions".into()) };
    if !rpc.is_server_streaming() {
        return Err("portico.stream applies to server-streaming RPCs only".into());
    }
    let event_id = string_field(option, "event_id_field");
    let resume = string_field(option, "resume_field");
    let event_id_field = match event_id.as_str() {
        "" => None,
        name => Some(
            rpc.output()
                .get_field_by_name(name)
                .ok_or(format!("event_id_field {name:?} is not a field of {}", rpc.output().full_name()))?,
        ),
    };
    let resume_field = match resume.as_str() {
        "" => None,
        name => Some(
            rpc.input()
                .get_field_by_name(name)
                .ok_or(format!("resume_field {name:?} is not a field of {}", rpc.input().full_name()))?,
        ),
    };
    Ok(SseOptions { event_id_field, resume_field })
}

/// Well-known message types whose proto3 JSON form is a string (or number), so they can be bound from a path
/// or query parameter.
pub fn is_string_form_message(full_name: &str) -> bool {
    matches!(
        full_name,
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
            | "google.protobuf.BoolValue"
            | "google.protobuf.Int32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.FloatValue"
            | "google.protobuf.DoubleValue"
    )
}

/// Sorting helper for callers that list routes for people (OpenAPI): by path, then method.
pub fn by_path(a: &Route, b: &Route) -> Ordering {
    a.template
        .openapi_path()
        .cmp(&b.template.openapi_path())
        .then_with(|| a.http_method.as_str().cmp(b.http_method.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::DESCRIPTOR_POOL;

    fn idempotent_rpcs(table: &RouteTable) -> Vec<&str> {
        let mut names: Vec<&str> = table.routes().iter().filter(|r| r.idempotent).map(|r| r.rpc_name()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    #[test]
    fn get_routes_are_idempotent_and_settings_override_per_rpc() -> Result<(), RuleError> {
        let mut table = RouteTable::from_pool(&DESCRIPTOR_POOL)?;
        assert_eq!(
            idempotent_rpcs(&table),
            ["user.UserService.GetUser", "user.UserService.ListUsers", "user.UserService.WatchUsers"]
        );
        table.override_idempotency(
            &["user.UserService/UpdateUser".to_string()],
            &["user.UserService.WatchUsers".to_string()],
        )?;
        assert_eq!(
            idempotent_rpcs(&table),
            ["user.UserService.GetUser", "user.UserService.ListUsers", "user.UserService.UpdateUser"]
        );
        let typo = table.override_idempotency(&["user.UserService.GetUsr".to_string()], &[]);
        assert!(typo.is_err_and(|e| e.to_string().contains("user.UserService.GetUsr")));
        Ok(())
    }
}
