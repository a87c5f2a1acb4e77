//! The committed OpenAPI document, `openapi/user.openapi.json`: it is exactly what `portico openapi` prints, an
//! independent OpenAPI 3.1 validator accepts it, and it says the right things about the UserService's API.

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use common::python;

use serde_json::Value;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/user.openapi.json");
const REGENERATE: &str = "cargo run -- openapi > openapi/user.openapi.json";

/// The validator and the two packages that decide what it accepts, pinned so a new release cannot change the
/// verdict behind our back. Changing this list rebuilds the virtualenv.
const VALIDATOR_REQUIREMENTS: &[&str] =
    &["openapi-spec-validator==0.9.0", "openapi-schema-validator==0.9.0", "jsonschema==4.26.0"];

fn committed() -> String {
    fs::read_to_string(GOLDEN).unwrap_or_else(|e| panic!("cannot read {GOLDEN} ({e}); create it with `{REGENERATE}`"))
}

fn committed_json() -> Value {
    serde_json::from_str(&committed())
        .unwrap_or_else(|e| panic!("{GOLDEN} is not JSON ({e}); regenerate it with `{REGENERATE}`"))
}

#[test]
fn the_committed_document_is_what_the_binary_prints() {
    let output = Command::new(env!("CARGO_BIN_EXE_portico")).arg("openapi").output().expect("the portico binary runs");
    assert!(output.status.success(), "`portico openapi` failed: {}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8(output.stdout).expect("the document is UTF-8");
    let committed = fs::read_to_string(GOLDEN).unwrap_or_default();
    if printed != committed {
        let line = printed
            .lines()
            .zip(committed.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| printed.lines().count().min(committed.lines().count()));
        panic!(
            "{GOLDEN} is not what `portico openapi` prints (first difference at line {}):\n  \
             printed:   {:?}\n  committed: {:?}\n\
             The protos or the generator changed; regenerate the file with `{REGENERATE}` and review the diff.",
            line + 1,
            printed.lines().nth(line).unwrap_or("<end of output>"),
            committed.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn the_committed_document_is_valid_openapi_3_1() {
    let python = validator_python();
    let output = Command::new(&python)
        .args(["-m", "openapi_spec_validator", "--schema", "3.1", "--validation-errors", "all", GOLDEN])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        output.status.success(),
        "openapi-spec-validator rejects {GOLDEN}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn validator_python() -> PathBuf {
    python::venv_python("openapi-validator-venv", VALIDATOR_REQUIREMENTS)
}

fn parameter<'a>(operation: &'a Value, name: &str) -> &'a Value {
    operation["parameters"]
        .as_array()
        .and_then(|parameters| parameters.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("parameter {name} in {operation}"))
}

const STATUS_REF: &str = "#/components/schemas/google.rpc.Status";

#[test]
fn the_document_describes_the_user_api() {
    let doc = committed_json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "UserService API");

    let get_user = &doc["paths"]["/v1/users/{id}"]["get"];
    assert_eq!(get_user["operationId"], "GetUser");
    assert_eq!(get_user["tags"], serde_json::json!(["UserService"]));
    assert_eq!(get_user["summary"], "Returns one user by id.");
    let id = parameter(get_user, "id");
    assert_eq!(id["in"], "path");
    assert_eq!(id["required"], true);
    assert_eq!(id["schema"]["type"], "string", "int64 path parameters are strings");
    assert_eq!(id["schema"]["format"], "int64");
    assert_eq!(
        get_user["responses"]["200"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/user.User",
        "response_body: \"user\" answers the User itself"
    );

    // `{user.id}` shares the path of GET `/v1/users/{id}`: one OpenAPI path, one parameter name.
    let update = &doc["paths"]["/v1/users/{id}"]["patch"];
    assert_eq!(parameter(update, "id")["in"], "path");
    assert_eq!(parameter(update, "updateMask")["in"], "query");
    assert_eq!(
        update["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/user.User"
    );

    let list = &doc["paths"]["/v1/users"]["get"];
    assert_eq!(parameter(list, "pageSize")["schema"]["type"], "integer");
    assert_eq!(parameter(list, "filter")["in"], "query");
    let create = &doc["paths"]["/v1/users"]["post"];
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/user.CreateUserRequest"
    );

    let watch = &doc["paths"]["/v1/users:watch"]["get"];
    assert_eq!(watch["operationId"], "WatchUsers");
    let content = &watch["responses"]["200"]["content"];
    assert_eq!(content["text/event-stream"]["schema"]["type"], "string");
    let sse = content["text/event-stream"]["schema"]["description"].as_str().expect("the SSE format is described");
    assert!(sse.contains("`id:` is its `revision`") && sse.contains("`error` event"), "{sse}");
    assert_eq!(
        content["application/x-ndjson"]["schema"]["properties"]["result"]["$ref"],
        "#/components/schemas/user.UserEvent"
    );
    assert_eq!(content["application/x-ndjson"]["schema"]["properties"]["error"]["$ref"], STATUS_REF);
    assert_eq!(parameter(watch, "Last-Event-ID")["in"], "header");
    assert_eq!(parameter(watch, "sinceRevision")["schema"]["type"], "string");

    let batch = &doc["paths"]["/v1/users:batchCreate"]["post"]["requestBody"]["content"];
    assert_eq!(batch["application/json"]["schema"]["type"], "array");
    assert_eq!(batch["application/json"]["schema"]["items"]["$ref"], "#/components/schemas/user.CreateUserRequest");
    assert_eq!(batch["application/x-ndjson"]["schema"]["$ref"], "#/components/schemas/user.CreateUserRequest");

    let schemas = &doc["components"]["schemas"];
    for (message, field) in
        [("user.User", "id"), ("user.UserEvent", "revision"), ("user.WatchUsersRequest", "sinceRevision")]
    {
        let schema = &schemas[message]["properties"][field];
        assert_eq!(
            (&schema["type"], &schema["format"]),
            (&Value::from("string"), &Value::from("int64")),
            "{message}.{field}"
        );
    }
    assert_eq!(
        schemas["user.User"]["properties"]["createdAt"]["$ref"],
        "#/components/schemas/google.protobuf.Timestamp"
    );
    assert_eq!(schemas["google.protobuf.Timestamp"]["format"], "date-time");
    assert!(
        schemas["user.UserStatus"]["anyOf"][0]["enum"]
            .as_array()
            .is_some_and(|values| values.contains(&"USER_STATUS_ACTIVE".into()))
    );
    assert_eq!(schemas["user.User"]["description"], "A user account.");
    assert_eq!(schemas["google.rpc.Status"]["properties"]["code"]["type"], "integer");
    assert_eq!(schemas["google.rpc.Status"]["properties"]["details"]["type"], "array");

    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            operations += 1;
            for status in ["default", "400", "404", "500", "503", "504"] {
                assert_eq!(
                    operation["responses"][status]["content"]["application/json"]["schema"]["$ref"], STATUS_REF,
                    "{method} {path} answers {status} with a google.rpc.Status"
                );
            }
            assert_eq!(parameter(operation, "Grpc-Timeout")["in"], "header", "{method} {path}");
        }
    }
    assert_eq!(operations, 7, "one operation per RPC binding");
}

#[test]
fn operations_carry_the_access_rules_of_the_proto() {
    let doc = committed_json();
    let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!((scheme["type"].as_str(), scheme["scheme"].as_str()), (Some("http"), Some("bearer")));
    assert_eq!(scheme["bearerFormat"], "JWT");
    let security = |path: &str, method: &str| doc["paths"][path][method]["security"].clone();
    let admin = serde_json::json!({"bearerAuth": ["admin"]});
    let auditor = serde_json::json!({"bearerAuth": ["auditor"]});
    let any_token = serde_json::json!({"bearerAuth": []});
    assert_eq!(security("/v1/users", "get"), serde_json::json!([admin, auditor]), "ListUsers: admin or auditor");
    assert_eq!(security("/v1/users:watch", "get"), serde_json::json!([admin, auditor]));
    assert_eq!(security("/v1/users/{id}", "get"), serde_json::json!([admin, any_token]), "GetUser: admin or itself");
    assert_eq!(security("/v1/users/{id}", "patch"), serde_json::json!([admin, any_token]));
    for (path, method) in [("/v1/users", "post"), ("/v1/users/{id}", "delete"), ("/v1/users:batchCreate", "post")] {
        assert_eq!(security(path, method), serde_json::json!([admin]), "{method} {path}: admin only");
        assert!(doc["paths"][path][method]["responses"]["401"].is_object(), "{method} {path} documents 401");
        assert!(doc["paths"][path][method]["responses"]["403"].is_object(), "{method} {path} documents 403");
    }
    let patch = doc["paths"]["/v1/users/{id}"]["patch"]["description"].as_str().unwrap_or_default();
    assert!(patch.contains("Changing roles or status of the caller's own user needs admin"), "{patch}");
}
