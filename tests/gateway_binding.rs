//! The HttpRule binding rules, table-driven, on a test service that uses the whole grammar (not only
//! user.proto's): descriptors → route table → request message, without sockets.

use std::path::Path;

use http::Method;
use portico::gateway::rules::{RouteMatch, RouteTable, RuleError};
use portico::gateway::transcode::{self, TranscodeOptions, UnknownQueryParams};
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::json;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Compiles `files` (name → source) with the repository's proto/ on the include path.
fn compile(files: &[(&str, &str)]) -> Result<DescriptorPool, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    for (name, source) in files {
        std::fs::write(dir.path().join(name), source)?;
    }
    let proto_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let mut compiler = protox::Compiler::new([dir.path(), proto_dir.as_path()])?;
    compiler.include_imports(true);
    compiler.open_files(files.iter().map(|(name, _)| *name))?;
    Ok(DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice())?)
}

fn binding_table() -> Result<RouteTable, Box<dyn std::error::Error>> {
    let source = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/protos/binding.proto"))?;
    Ok(RouteTable::from_pool(&compile(&[("binding.proto", &source)])?)?)
}

/// Routes and transcodes one request; Ok(message as compact proto3 JSON, RPC name) or Err(400 message).
fn transcode(table: &RouteTable, method: Method, uri: &str, body: &str) -> Result<(serde_json::Value, String), String> {
    transcode_with(table, method, uri, body, UnknownQueryParams::Reject)
}

fn transcode_with(
    table: &RouteTable,
    method: Method,
    uri: &str,
    body: &str,
    unknown: UnknownQueryParams,
) -> Result<(serde_json::Value, String), String> {
    let (path, query) = uri.split_once('?').map_or((uri, None), |(p, q)| (p, Some(q)));
    let RouteMatch::Found(route, bindings) = table.find(&method, path) else {
        return Err(format!("no route for {method} {path}"));
    };
    let options = TranscodeOptions { max_json_depth: 16, unknown_query_params: unknown };
    let message =
        transcode::request_message(route, bindings, query, body.as_bytes(), &options).map_err(|e| e.to_string())?;
    Ok((serde_json::to_value(&message).map_err(|e| e.to_string())?, route.rpc.name().to_string()))
}

#[test]
fn path_body_and_query_bind_to_the_right_fields() -> TestResult {
    let table = binding_table()?;
    let cases: Vec<(Method, &str, &str, &str, serde_json::Value)> = vec![
        // Multi-segment variable: %2F stays encoded (reserved expansion).
        (Method::GET, "/v1/shelves/s1/books/b%2F2", "", "Get", json!({"name": "shelves/s1/books/b%2F2"})),
        // Additional binding, nested field path, single-segment variable fully decoded.
        (Method::GET, "/v1/inner/x%2Fy/id/42", "", "Get", json!({"inner": {"name": "x/y"}, "id": "42"})),
        // A literal route beats a wildcard one.
        (Method::GET, "/v1/shelves/me/books/latest", "", "Me", json!({})),
        // body: "field", response_body elsewhere; other fields from the query string.
        (
            Method::POST,
            "/v1/shelves/s1/books?id=5",
            r#"{"title":"T","pages":"12"}"#,
            "Create",
            json!({"name": "shelves/s1", "id": "5", "book": {"title": "T", "pages": "12"}}),
        ),
        // body: "*" with a path variable the body agrees with.
        (Method::PUT, "/v1/items/7", r#"{"name":"n","id":"7"}"#, "Replace", json!({"name": "n", "id": "7"})),
        // body: a repeated scalar field.
        (Method::POST, "/v1/tags", r#"["a","b"]"#, "Tags", json!({"tags": ["a", "b"]})),
        // Custom verb after a variable.
        (Method::POST, "/v1/items/9:archive", "{}", "Archive", json!({"id": "9"})),
        // Custom HTTP method.
        (Method::from_bytes(b"HEAD")?, "/v1/items/3:probe", "", "Probe", json!({"id": "3"})),
        // ** matches several segments, or none.
        (Method::GET, "/v1/files/a/b/c.txt", "", "Files", json!({"name": "a/b/c.txt"})),
        // Every kind of query parameter: repeated by repetition, enums by name or number, well-known types in
        // their JSON string form, nested paths, proto and JSON names.
        (
            Method::GET,
            "/v1/shelves/s/books/b?tags=x&tags=y&color=BLUE&colors=1&colors=BLUE&flag=true&at=2024-01-02T03:04:05Z\
            &wait=1.5s&mask=title,inner.count&limit=7&ratio=0.25&blob=AQI%3D&inner.count=3&page_token=p&big=18446744073709551615",
            "",
            "Get",
            json!({"name": "shelves/s/books/b", "tags": ["x", "y"], "color": "BLUE", "colors": ["RED", "BLUE"], "flag": true,
                "at": "2024-01-02T03:04:05Z", "wait": "1.500s", "mask": "title,inner.count", "limit": 7, "ratio": 0.25,
                "blob": "AQI=", "inner": {"count": 3}, "pageToken": "p", "big": "18446744073709551615"}),
        ),
        (
            Method::GET,
            "/v1/shelves/s/books/b?pageToken=q&inner.count=-2",
            "",
            "Get",
            json!({"name": "shelves/s/books/b", "pageToken": "q", "inner": {"count": -2}}),
        ),
    ];
    for (method, uri, body, rpc, expected) in cases {
        let (message, routed) =
            transcode(&table, method.clone(), uri, body).map_err(|e| format!("{method} {uri}: {e}"))?;
        assert_eq!(routed, rpc, "{method} {uri}");
        assert_eq!(message, expected, "{method} {uri}");
    }
    Ok(())
}

#[test]
fn conflicting_or_invalid_bindings_are_400s_naming_the_problem() -> TestResult {
    let table = binding_table()?;
    let cases: Vec<(Method, &str, &str, &str)> = vec![
        (Method::PUT, "/v1/items/7", r#"{"id":"8"}"#, "in the path but"),
        (Method::PUT, "/v1/items/7?name=x", "{}", "from the request body"),
        (Method::POST, "/v1/shelves/s1/books?book.title=x", "{}", "from the request body"),
        (Method::GET, "/v1/inner/a/id/1?id=2", "", "set by the path"),
        (Method::GET, "/v1/inner/a/id/notanumber", "", "64-bit integer"),
        (Method::GET, "/v1/files/x?color=GREEN", "", "expected one of COLOR_UNSPECIFIED, RED, BLUE"),
        (Method::GET, "/v1/files/x?flag=yes", "", "boolean"),
        (Method::GET, "/v1/files/x?at=yesterday", "", "Timestamp"),
        (Method::GET, "/v1/files/x?labels=a", "", "map fields cannot be set from the query string"),
        (Method::GET, "/v1/files/x?name=y", "", "set by the path"),
        (Method::GET, "/v1/files/x?ratio=1&ratio=2", "", "more than once"),
        (Method::GET, "/v1/files/x?nope=1&also=2", "", "unknown query parameters \"nope\", \"also\""),
        (Method::GET, "/v1/files/x?book=1", "", "unknown query parameter"),
        (Method::POST, "/v1/shelves/s1/books", r#"{"title":"T","extra":1}"#, "\"extra\""),
        (Method::POST, "/v1/shelves/s1/books", r#"{"pages":"many"}"#, "\"pages\""),
    ];
    for (method, uri, body, expected) in cases {
        let error = transcode(&table, method.clone(), uri, body).err().unwrap_or_default();
        assert!(error.contains(expected), "{method} {uri} {body}: {error:?} should mention {expected:?}");
    }
    // Unknown query parameters can be ignored by configuration; known ones still bind.
    let (message, _) =
        transcode_with(&table, Method::GET, "/v1/files/x?cachebust=123&flag=true", "", UnknownQueryParams::Ignore)?;
    assert_eq!(message, json!({"name": "x", "flag": true}));
    Ok(())
}

#[test]
fn matching_prefers_specific_routes_and_reports_allowed_methods() -> TestResult {
    let table = binding_table()?;
    let expect_allowed = |method: Method, path: &str, allowed: &[&str]| match table.find(&method, path) {
        RouteMatch::MethodNotAllowed(methods) => {
            assert_eq!(methods.iter().map(Method::as_str).collect::<Vec<_>>(), allowed, "{method} {path}");
        }
        RouteMatch::Found(route, _) => panic!("{method} {path} unexpectedly routed to {}", route.rpc_name()),
        RouteMatch::NotFound => panic!("{method} {path} not found"),
    };
    expect_allowed(Method::GET, "/v1/items/9:archive", &["POST", "PUT"]);
    expect_allowed(Method::DELETE, "/v1/shelves/s1/books", &["POST"]);
    assert!(matches!(table.find(&Method::GET, "/v1/nope"), RouteMatch::NotFound));
    assert!(matches!(table.find(&Method::GET, "/v1/shelves/s1/books/"), RouteMatch::NotFound), "trailing slash");
    assert!(matches!(table.find(&Method::GET, "/v1//books"), RouteMatch::NotFound));
    Ok(())
}

#[test]
fn response_body_selects_a_field() -> TestResult {
    let table = binding_table()?;
    for (uri, body, response, expected) in [
        (
            "/v1/shelves/s/books",
            "{}",
            json!({"book": {"name": "n", "title": "t", "pages": "3"}, "echo": "e"}),
            json!({"name": "n", "title": "t", "pages": "3"}),
        ),
        ("/v1/tags", "[]", json!({"tags": ["a"], "echo": "e"}), json!(["a"])),
    ] {
        let RouteMatch::Found(route, _) = table.find(&Method::POST, uri) else {
            return Err(format!("no route {uri}").into());
        };
        let message = DynamicMessage::deserialize(route.rpc.output(), response)?;
        let json: serde_json::Value = serde_json::from_slice(&transcode::response_json(route, &message)?)?;
        assert_eq!(json, expected, "{uri} {body}");
    }
    Ok(())
}

#[test]
fn bad_rules_fail_at_start_up_naming_the_rpc() -> TestResult {
    let service = |rules: &str| {
        format!(
            "syntax = \"proto3\"; package bad; import \"google/api/annotations.proto\";\n\
             message Req {{ string id = 1; string name = 2; repeated string tags = 3; Inner inner = 4; }}\n\
             message Inner {{ string x = 1; }}\n\
             message Res {{ string id = 1; }}\n\
             service S {{ {rules} }}"
        )
    };
    let cases = [
        (
            r#"rpc A(Req) returns (Res) { option (google.api.http) = { get: "/v1/x/{id}" }; }
            rpc B(Req) returns (Res) { option (google.api.http) = { get: "/v1/x/{name}" }; }"#,
            "bad.S.A (GET /v1/x/{id}) and bad.S.B (GET /v1/x/{name}) match the same requests",
        ),
        (
            r#"rpc A(Req) returns (Res) { option (google.api.http) = { get: "/v1/x/{id" }; }"#,
            "bad.S.A: template \"/v1/x/{id\"",
        ),
        (
            r#"rpc A(Req) returns (Res) { option (google.api.http) = { get: "/v1/x/{missing}" }; }"#,
            "has no field \"missing\"",
        ),
        (r#"rpc A(Req) returns (Res) { option (google.api.http) = { get: "/v1/x/{tags}" }; }"#, "is repeated"),
        (r#"rpc A(Req) returns (Res) { option (google.api.http) = { get: "/v1/x/{inner}" }; }"#, "is a message"),
        (
            r#"rpc A(Req) returns (Res) { option (google.api.http) = { post: "/v1/x" body: "nope" }; }"#,
            "body field \"nope\"",
        ),
        (
            r#"rpc A(Req) returns (Res) { option (google.api.http) = { get: "/v1/x" response_body: "nope" }; }"#,
            "response_body field \"nope\"",
        ),
        (r#"rpc A(stream Req) returns (Res) { option (google.api.http) = { post: "/v1/x" }; }"#, "needs body: \"*\""),
        (
            r#"rpc A(Req) returns (Res) { option (google.api.http) = { get: "/v1/x" additional_bindings { get: "/v1/y" additional_bindings { get: "/v1/z" } } }; }"#,
            "must not nest",
        ),
    ];
    for (rules, expected) in cases {
        let pool = compile(&[("bad.proto", &service(rules))])?;
        let error =
            RouteTable::from_pool(&pool).map(|_| ()).err().map(|e: RuleError| e.to_string()).unwrap_or_default();
        assert!(error.contains(expected), "{rules}\n→ {error:?} should mention {expected:?}");
    }
    Ok(())
}
