//! Sidecar mode: the gateway in front of services it was not built with, from a descriptor-set file, from
//! .proto sources, and from server reflection (tonic's v1 and grpcio's v1alpha-only), with hot reload.
//!
//! The gateway runs as the real `portico` binary; the upstreams are echo servers (tests/common/echo.rs and
//! tests/support/echo_server.py) that answer each request with its own bytes, so one table of HTTP requests
//! shows what the gateway made of the descriptors, whatever their source.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::process::{Error, Process};
use common::{echo, python, rest};
use http::{Method, StatusCode};
use serde_json::{Value, json};

const PROTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/protos");
const BUILT_IN_PROTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
const ECHO_SERVER_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/echo_server.py");
/// The Python echo server's packages, pinned.
const GRPCIO: &[&str] = &["grpcio==1.85.3", "grpcio-reflection==1.85.1"];

/// `files` of tests/protos/{conformance,sidecar} compiled as `protoc --include_imports --include_source_info`
/// would.
fn descriptor_set(files: &[&str]) -> Result<Vec<u8>, Error> {
    let includes = [format!("{PROTOS}/conformance"), format!("{PROTOS}/sidecar"), BUILT_IN_PROTOS.to_string()];
    let mut compiler = protox::Compiler::new(includes)?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(files)?;
    Ok(compiler.encode_file_descriptor_set())
}

/// A `portico gateway` process.
struct Gateway {
    process: Process,
    addr: SocketAddr,
    admin: SocketAddr,
}

async fn gateway(args: &[&str]) -> Result<Gateway, Error> {
    let mut all = vec!["gateway", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let process = Process::start(&all, "info")?;
    let admin = process.address("admin listening").await?;
    let addr = process.address("gateway listening").await?;
    Ok(Gateway { process, addr, admin })
}

impl Gateway {
    async fn descriptors(&self) -> Result<Value, Error> {
        Ok(rest::get(self.admin, "/admin/descriptors").await?.json())
    }

    /// Waits until the admin view has counted `count` reloads, and returns it.
    async fn reloaded(&self, count: u64) -> Result<Value, Error> {
        for _ in 0..500 {
            let view = self.descriptors().await?;
            if view["last_reload"]["reloads"].as_u64() >= Some(count) {
                return Ok(view);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("no reload number {count}: {}", self.descriptors().await?).into())
    }

    /// Waits for the descriptors view to show what `shows` looks for. An edit in place is a truncation and a
    /// write, which may come as two reloads on a loaded machine: what counts is the view after the last one.
    async fn showing(&self, shows: impl Fn(&Value) -> bool) -> Result<Value, Error> {
        for _ in 0..500 {
            let view = self.descriptors().await?;
            if shows(&view) {
                return Ok(view);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("the descriptors view never showed the change: {}", self.descriptors().await?).into())
    }
}

/// A grpcio echo server (reflection v1alpha only) for the descriptors in `set_file`.
struct PythonEcho {
    child: std::process::Child,
    url: String,
}

impl Drop for PythonEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python_echo(set_file: &Path) -> Result<PythonEcho, Error> {
    use std::io::BufRead;
    let python = python::venv_python("grpcio-venv", GRPCIO);
    let mut child = std::process::Command::new(python)
        .arg(ECHO_SERVER_PY)
        .arg(set_file)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("stdout is piped")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let port = line.trim().strip_prefix("port=").ok_or_else(|| format!("the echo server said {line:?}"))?;
    Ok(PythonEcho { child, url: format!("http://127.0.0.1:{port}") })
}

/// One request of the conformance table.
struct Case {
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Vec<u8>,
}

fn case(method: &'static str, path: &'static str, body: Value) -> Case {
    let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    Case { method, path, headers: &[("content-type", "application/json")], body }
}

fn raw(
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &[u8],
) -> Case {
    Case { method, path, headers, body: body.to_vec() }
}

fn conformance_table() -> Vec<Case> {
    vec![
        case(
            "POST",
            "/v1/echoes/abc",
            json!({"name": "n", "nested": {"id": "x", "shade": "SHADE_DARK", "child": {"id": "y"}},
                   "counts": {"a": "5", "b": -2}, "byNumber": {"3": {"id": "k"}}, "asText": "hi", "maybe": 0,
                   "customName": "r", "tags": ["t1", "t2"], "shades": ["SHADE_LIGHT", 2], "revision": "9"}),
        ),
        case("POST", "/v1/echoes/abc", json!({"id": "zzz"})),
        case("POST", "/v1/echoes/abc", json!({"as_number": "12", "renamed": "proto name"})),
        case("POST", "/v1/echoes/abc", json!({"asText": "a", "asNumber": "1"})),
        case(
            "POST",
            "/v1/echoes/s",
            json!({"scalars": {"fDouble": "NaN", "fFloat": 1.5, "fInt32": -3, "fInt64": "-9007199254740993",
                   "fUint32": 4000000000u32, "fUint64": "18446744073709551615", "fSint32": -7, "fSint64": "-8",
                   "fFixed32": 9, "fFixed64": "10", "fSfixed32": -11, "fSfixed64": "-12", "fBool": true,
                   "fString": "ünïcödé", "fBytes": "aGVsbG8="}}),
        ),
        case(
            "POST",
            "/v1/echoes/w",
            json!({"wkt": {"at": "2024-01-02T03:04:05.123Z", "wait": "1.500s", "mask": "a,b.cD",
                   "doc": {"x": [1, "y", null, {"z": true}]}, "anyValue": 3.5, "list": ["a", 1],
                   "packed": {"@type": "type.googleapis.com/conformance.Nested", "id": "p"}, "nothing": {},
                   "wDouble": 1.25, "wFloat": 2, "wInt64": "-5", "wUint64": "6", "wInt32": 7, "wUint32": 8,
                   "wBool": false, "wString": "", "wBytes": "AA=="}}),
        ),
        case("POST", "/v1/echoes/w", json!({"wkt": {"at": "yesterday"}})),
        case("POST", "/v1/echoes/w", json!({"unknownField": 1})),
        case("GET", "/v1/shelves/s1/books/b2", Value::Null),
        case("GET", "/v1/nested/n1/c1", Value::Null),
        case("GET", "/v1/files/a/b/c:walk", Value::Null),
        case("PATCH", "/v1/echoes/n9", json!({"child": {"id": "c"}, "shade": "SHADE_LIGHT"})),
        case("POST", "/v1/tags", json!(["a", "b"])),
        case("POST", "/v1/names", json!({"name": "nm"})),
        case("POST", "/v1/echoes:search", json!({"name": "q"})),
        case("SEARCH", "/v1/echoes?name=q2", Value::Null),
        case(
            "GET",
            "/v1/query?scalars.fInt64=-5&scalars.f_bool=true&scalars.fBytes=aGk%3D&scalars.fDouble=1.5\
             &wkt.at=2024-01-01T00:00:00Z&wkt.wait=3s&wkt.wBool=false&wkt.wInt32=7&wkt.mask=a,b\
             &shade=SHADE_DARK&shades=1&shades=SHADE_DARK&tags=a&tags=b&maybe=3&customName=cn&nested.child.id=deep",
            Value::Null,
        ),
        case("GET", "/v1/query?wkt.wBool=yes", Value::Null),
        case("GET", "/v1/query?scalars.fInt32=99999999999", Value::Null),
        case("GET", "/v1/query?unknown=1", Value::Null),
        case("GET", "/v1/echoes:watch?name=w&revision=4", Value::Null),
        raw("GET", "/v1/echoes:watch?name=sse&revision=5", &[("accept", "text/event-stream")], b""),
        raw("POST", "/v1/echoes:collect", &[("content-type", "application/json")], br#"[{"name":"a"},{"name":"b"}]"#),
        raw("POST", "/v1/raw", &[("content-type", "text/plain; charset=utf-8")], b"hello raw"),
        raw("PUT", "/v1/uploads/f1", &[("content-type", "image/png")], b"\x89PNG\r\n\x1a\n\x00\xff"),
        raw("GET", "/v1/download?contentType=text/csv&data=YSxiCg%3D%3D", &[], b""),
        raw("GET", "/v1/download?data=", &[], b""),
        case("GET", "/v1/nope", Value::Null),
        case("DELETE", "/v1/raw", Value::Null),
    ]
}

/// (status, content type, body) of one request.
async fn answer(addr: SocketAddr, case: &Case) -> Result<(StatusCode, String, Vec<u8>), Error> {
    let method = Method::from_bytes(case.method.as_bytes())?;
    let reply = rest::send(addr, method, case.path, case.headers, case.body.clone()).await?;
    Ok((reply.status, reply.header("content-type").unwrap_or_default().to_string(), reply.body.to_vec()))
}

/// Each operation of an OpenAPI document without its descriptions: path, method, id, parameters, body and
/// response media types.
fn operations(document: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        for (method, operation) in item.as_object().into_iter().flatten() {
            let parameters: Vec<String> = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| format!("{}:{}:{}", p["in"], p["name"], p["schema"]))
                .collect();
            let keys =
                |value: &Value| value.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
            out.push(format!(
                "{method} {path} {} {parameters:?} {:?} {:?}",
                operation["operationId"],
                keys(&operation["requestBody"]["content"]),
                keys(&operation["responses"]["200"]["content"])
            ));
        }
    }
    out
}

/// A body in a form where equal answers compare equal: JSON parsed (the order of a map's entries is not part
/// of the proto3 JSON mapping), streams line by line, anything else as bytes.
fn comparable(content_type: &str, body: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(body);
    let parse = |line: &str| serde_json::from_str(line).unwrap_or_else(|_| Value::String(line.to_string()));
    if content_type.starts_with("application/json") {
        vec![parse(&text)]
    } else if content_type.starts_with("application/x-ndjson") {
        text.lines().map(parse).collect()
    } else if content_type.starts_with("text/event-stream") {
        text.lines().map(|line| line.strip_prefix("data:").map_or_else(|| Value::String(line.into()), &parse)).collect()
    } else {
        body.iter().map(|byte| json!(byte)).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_gives_the_same_answers() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let set = descriptor_set(&["conformance.proto"])?;
    let set_file = dir.path().join("conformance.pb");
    std::fs::write(&set_file, &set)?;
    let rust_echo = echo::start(set, "rust").await;
    let py_echo = python_echo(&set_file)?;
    let set_arg = set_file.display().to_string();
    let proto_path = format!("{PROTOS}/conformance");

    let sources: Vec<(&str, Gateway)> = vec![
        ("descriptor set", gateway(&["--upstream", &rust_echo.url(), "--descriptor-set", &set_arg]).await?),
        (
            ".proto sources",
            gateway(&["--upstream", &rust_echo.url(), "--proto", "conformance.proto", "--proto-path", &proto_path])
                .await?,
        ),
        ("tonic reflection (v1)", gateway(&["--upstream", &rust_echo.url(), "--reflection"]).await?),
        ("grpcio reflection (v1alpha)", gateway(&["--upstream", &py_echo.url, "--reflection"]).await?),
    ];

    let mut baseline = Vec::new();
    for case in conformance_table() {
        let expected = answer(sources[0].1.addr, &case).await?;
        for (name, gateway) in &sources[1..] {
            let got = answer(gateway.addr, &case).await?;
            assert_eq!(
                (got.0, &got.1, comparable(&got.1, &got.2)),
                (expected.0, &expected.1, comparable(&expected.1, &expected.2)),
                "{} {} from {name} differs from the descriptor-set file",
                case.method,
                case.path
            );
        }
        baseline.push((case.method, case.path, expected));
    }

    // The answers themselves, where the mapping says exactly what they must be.
    let find = |method: &str, path: &str| {
        baseline.iter().filter(|(m, p, _)| *m == method && *p == path).map(|(_, _, a)| a).collect::<Vec<_>>()
    };
    let json_of =
        |answer: &(StatusCode, String, Vec<u8>)| serde_json::from_slice::<Value>(&answer.2).unwrap_or_default();
    let created = find("POST", "/v1/echoes/abc");
    assert_eq!(created[0].0, StatusCode::OK);
    let echo = json_of(created[0]);
    assert_eq!(echo["id"], "abc", "the path sets id");
    assert_eq!(echo["counts"], json!({"a": "5", "b": "-2"}), "int64 map values as strings");
    assert_eq!(echo["byNumber"]["3"]["id"], "k");
    assert_eq!(echo["asText"], "hi");
    assert_eq!(echo["maybe"], 0, "proto3 optional keeps an explicit zero");
    assert_eq!(echo["customName"], "r", "json_name");
    assert_eq!(echo["shades"], json!(["SHADE_LIGHT", "SHADE_DARK"]));
    assert_eq!(created[1].0, StatusCode::BAD_REQUEST, "a body id that contradicts the path");
    assert_eq!(json_of(created[2])["asNumber"], "12", "proto names are accepted in");
    assert_eq!(created[3].0, StatusCode::BAD_REQUEST, "two members of one oneof");
    let scalars = json_of(find("POST", "/v1/echoes/s")[0]);
    assert_eq!(scalars["scalars"]["fUint64"], "18446744073709551615");
    assert_eq!(scalars["scalars"]["fDouble"], "NaN");
    assert_eq!(scalars["scalars"]["fBytes"], "aGVsbG8=");
    let wkt = find("POST", "/v1/echoes/w");
    let wkt0 = json_of(wkt[0]);
    assert_eq!(wkt0["wkt"]["at"], "2024-01-02T03:04:05.123Z");
    assert_eq!(wkt0["wkt"]["wait"], "1.500s");
    assert_eq!(wkt0["wkt"]["mask"], "a,b.cD");
    assert_eq!(wkt0["wkt"]["packed"]["@type"], "type.googleapis.com/conformance.Nested");
    assert_eq!(wkt0["wkt"]["packed"]["id"], "p");
    assert_eq!((wkt[1].0, wkt[2].0), (StatusCode::BAD_REQUEST, StatusCode::BAD_REQUEST));
    assert_eq!(json_of(find("GET", "/v1/shelves/s1/books/b2")[0])["name"], "shelves/s1/books/b2");
    let nested = json_of(find("GET", "/v1/nested/n1/c1")[0]);
    assert_eq!((&nested["nested"]["id"], &nested["nested"]["child"]["id"]), (&json!("n1"), &json!("c1")));
    assert_eq!(json_of(find("GET", "/v1/files/a/b/c:walk")[0])["name"], "a/b/c");
    let patched = json_of(find("PATCH", "/v1/echoes/n9")[0]);
    assert_eq!((&patched["id"], &patched["child"]["id"]), (&json!("n9"), &json!("c")), "response_body: nested");
    assert_eq!(json_of(find("POST", "/v1/tags")[0]), json!(["a", "b"]), "response_body on a repeated field");
    assert_eq!(json_of(find("POST", "/v1/names")[0]), json!("nm"), "response_body on a scalar field");
    assert_eq!(json_of(find("SEARCH", "/v1/echoes?name=q2")[0])["name"], "q2", "a custom HTTP method");
    let query = find(
        "GET",
        "/v1/query?scalars.fInt64=-5&scalars.f_bool=true&scalars.fBytes=aGk%3D&scalars.fDouble=1.5\
             &wkt.at=2024-01-01T00:00:00Z&wkt.wait=3s&wkt.wBool=false&wkt.wInt32=7&wkt.mask=a,b\
             &shade=SHADE_DARK&shades=1&shades=SHADE_DARK&tags=a&tags=b&maybe=3&customName=cn&nested.child.id=deep",
    );
    let query = json_of(query[0]);
    assert_eq!(query["scalars"]["fInt64"], "-5");
    assert_eq!(query["wkt"]["wBool"], false);
    assert_eq!(query["wkt"]["mask"], "a,b");
    assert_eq!(query["shades"], json!(["SHADE_LIGHT", "SHADE_DARK"]));
    assert_eq!(query["nested"]["child"]["id"], "deep");
    assert_eq!(query["customName"], "cn");
    for bad in ["/v1/query?wkt.wBool=yes", "/v1/query?scalars.fInt32=99999999999", "/v1/query?unknown=1"] {
        assert_eq!(find("GET", bad)[0].0, StatusCode::BAD_REQUEST, "{bad}");
    }
    let ndjson = String::from_utf8_lossy(&find("GET", "/v1/echoes:watch?name=w&revision=4")[0].2).into_owned();
    assert_eq!(ndjson.lines().count(), 3, "{ndjson}");
    assert!(ndjson.lines().all(|line| line.starts_with("{\"result\":{\"name\":\"w\"")), "{ndjson}");
    let sse = String::from_utf8_lossy(&find("GET", "/v1/echoes:watch?name=sse&revision=5")[0].2).into_owned();
    let ids: Vec<&str> = sse.lines().filter(|line| line.starts_with("id:")).map(|line| line[3..].trim()).collect();
    assert_eq!(ids, ["5", "5", "5"], "SSE ids from the event_id_field: {sse}");
    assert_eq!(json_of(find("POST", "/v1/echoes:collect")[0])["name"], "b", "a client stream's messages");
    let raw = find("POST", "/v1/raw")[0];
    assert_eq!(
        (raw.0, raw.1.as_str(), raw.2.as_slice()),
        (StatusCode::OK, "text/plain; charset=utf-8", &b"hello raw"[..])
    );
    let upload = find("PUT", "/v1/uploads/f1")[0];
    assert_eq!((upload.1.as_str(), upload.2.as_slice()), ("image/png", &b"\x89PNG\r\n\x1a\n\x00\xff"[..]));
    let download = find("GET", "/v1/download?contentType=text/csv&data=YSxiCg%3D%3D")[0];
    assert_eq!((download.1.as_str(), download.2.as_slice()), ("text/csv", &b"a,b\na,b\na,b\n"[..]));
    assert_eq!(find("GET", "/v1/nope")[0].0, StatusCode::NOT_FOUND);
    assert_eq!(find("DELETE", "/v1/raw")[0].0, StatusCode::METHOD_NOT_ALLOWED);

    // The same operations from every source. Descriptions come from the proto comments, which grpcio's
    // reflection does not serve, so only the sources that carry comments give identical documents.
    let document = rest::get(sources[0].1.addr, "/openapi.json").await?.json();
    for (index, (name, gateway)) in sources.iter().enumerate().skip(1) {
        let other = rest::get(gateway.addr, "/openapi.json").await?.json();
        assert_eq!(operations(&other), operations(&document), "OpenAPI operations from {name}");
        if index < 3 {
            assert_eq!(other, document, "the OpenAPI document from {name}");
        }
    }
    let raw_op = &document["paths"]["/v1/raw"]["post"];
    assert_eq!(raw_op["requestBody"]["content"], json!({"*/*": {}}), "any bytes");
    Ok(())
}

/// Writes `bytes` to `path` as config management tools do: aside, then an atomic rename over the old file.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, bytes)?;
    std::fs::rename(&aside, path)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request_and_a_broken_file_changes_nothing() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let with_inventory = descriptor_set(&["conformance.proto", "inventory.proto"])?;
    let without = descriptor_set(&["conformance.proto"])?;
    let upstream = echo::start(with_inventory.clone(), "echo").await;
    let set_file = dir.path().join("services.pb");
    std::fs::write(&set_file, &without)?;
    let mut gateway =
        gateway(&["--upstream", &upstream.url(), "--descriptor-set", &set_file.display().to_string()]).await?;
    assert_eq!(rest::get(gateway.addr, "/v1/items/x").await?.status, StatusCode::NOT_FOUND);

    // A client loop the whole time: every request must succeed, whichever table it met.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (stop, sent, failed, addr) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&failed), gateway.addr);
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let ok = rest::get(addr, "/v1/shelves/s/books/b").await.is_ok_and(|r| r.status == StatusCode::OK);
                sent.fetch_add(1, Ordering::SeqCst);
                if !ok {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for reload in 1..=20u64 {
        let adds_inventory = reload % 2 == 1;
        replace_file(&set_file, if adds_inventory { &with_inventory } else { &without })?;
        let view = gateway.reloaded(reload).await?;
        assert_eq!(view["last_reload"]["ok"], true, "{view}");
        assert_eq!(view["last_reload"]["trigger"], "file change");
        let expected = if adds_inventory { StatusCode::OK } else { StatusCode::NOT_FOUND };
        assert_eq!(rest::get(gateway.addr, "/v1/items/x").await?.status, expected, "after reload {reload}");
        let document = rest::get(gateway.addr, "/openapi.json").await?.json();
        assert_eq!(document["paths"].get("/v1/items/{sku}").is_some(), adds_inventory, "the document follows");
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await?;
    }
    assert!(sent.load(Ordering::SeqCst) > 20, "the client loop ran");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "requests failed during reloads");

    // A truncated file and garbage: the last good table keeps serving, and the admin view says why.
    for (reload, broken) in [(21, &without[..without.len() / 2]), (22, &b"not a descriptor set"[..])] {
        replace_file(&set_file, broken)?;
        let view = gateway.reloaded(reload).await?;
        assert_eq!(view["last_reload"]["ok"], false, "{view}");
        let error = view["last_reload"]["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains("services.pb"), "the error names the file: {error}");
        assert_eq!(view["services"][0]["name"], "conformance.Conformance", "{view}");
        assert_eq!(rest::get(gateway.addr, "/v1/shelves/s/books/b").await?.status, StatusCode::OK);
    }
    assert!(gateway.process.logs().iter().any(|l| l.contains("reload failed; the previous descriptors keep serving")));
    assert!(gateway.process.child.try_wait()?.is_none(), "a failed reload never stops the process");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_two_upstreams() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let conformance = descriptor_set(&["conformance.proto"])?;
    let inventory = descriptor_set(&["inventory.proto"])?;
    let (conformance_file, inventory_file) = (dir.path().join("conformance.pb"), dir.path().join("inventory.pb"));
    std::fs::write(&conformance_file, &conformance)?;
    std::fs::write(&inventory_file, &inventory)?;
    let main = echo::start(conformance, "main").await;
    let stock = echo::start(inventory, "stock").await;
    let sets = format!("{},{}", conformance_file.display(), inventory_file.display());
    let route = format!("inventory.Inventory={}", stock.url());
    let gateway =
        gateway(&["--upstream", &main.url(), "--service-upstream", &route, "--descriptor-set", &sets]).await?;

    let item = rest::get(gateway.addr, "/v1/items/sku-1").await?;
    assert_eq!(item.status, StatusCode::OK, "{}", item.text());
    assert_eq!(item.json()["sku"], "sku-1");
    assert_eq!(item.header("grpc-metadata-echo-server"), Some("stock"), "inventory calls go to their own cluster");
    let book = rest::get(gateway.addr, "/v1/shelves/s/books/b").await?;
    assert_eq!(book.header("grpc-metadata-echo-server"), Some("main"), "the rest go to the default upstream");
    assert_eq!((main.calls(), stock.calls()), (1, 1));

    let ready = rest::get(gateway.admin, "/admin/readyz").await?.json();
    let clusters: Vec<&str> =
        ready["clusters"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(clusters, ["default", "inventory.Inventory"], "{ready}");
    let upstreams = rest::get(gateway.admin, "/admin/upstreams").await?.json();
    assert_eq!(upstreams["upstreams"].as_array().map(Vec::len), Some(2), "{upstreams}");
    let view = gateway.descriptors().await?;
    assert_eq!(
        view["services"],
        json!([{"name": "conformance.Conformance", "cluster": "default", "routes": 15},
               {"name": "inventory.Inventory", "cluster": "inventory.Inventory", "routes": 1}]),
        "{view}"
    );
    assert_eq!(view["sources"].as_array().map(Vec::len), Some(2));

    // With the inventory cluster gone, its routes fail fast while the others still work.
    drop(stock);
    let mut status = StatusCode::OK;
    for _ in 0..100 {
        status = rest::get(gateway.addr, "/v1/items/sku-2").await?.status;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rest::get(gateway.addr, "/v1/shelves/s/books/b").await?.status, StatusCode::OK);
    Ok(())
}

/// Starts a gateway that must fail, and returns what it logged.
async fn failed_start(args: &[&str]) -> Result<String, Error> {
    let mut all = vec!["gateway", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut process = Process::start(&all, "info")?;
    let status = process.wait(Duration::from_secs(30)).await?;
    assert!(!status.success(), "the gateway started with {args:?}");
    Ok(process.logs().join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sources_fail_at_start_up_naming_the_place() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let upstream = "http://127.0.0.1:9";

    // A set built without --include_imports.
    let mut compiler = protox::Compiler::new([format!("{PROTOS}/sidecar"), BUILT_IN_PROTOS.to_string()])?;
    compiler.include_imports(false);
    compiler.open_files(["inventory.proto"])?;
    let no_imports = dir.path().join("no-imports.pb");
    std::fs::write(&no_imports, compiler.encode_file_descriptor_set())?;
    let logs = failed_start(&["--upstream", upstream, "--descriptor-set", &no_imports.display().to_string()]).await?;
    assert!(
        logs.contains("inventory.proto imports google/api/annotations.proto") && logs.contains("no-imports.pb"),
        "{logs}"
    );

    let missing = dir.path().join("missing.pb").display().to_string();
    let logs = failed_start(&["--upstream", upstream, "--descriptor-set", &missing]).await?;
    assert!(logs.contains("cannot read") && logs.contains("missing.pb"), "{logs}");

    std::fs::write(
        dir.path().join("broken.proto"),
        "syntax = \"proto3\";\npackage b;\nmessage M {\n  int32 = 1;\n}\n",
    )?;
    let include = dir.path().display().to_string();
    let logs = failed_start(&["--upstream", upstream, "--proto", "broken.proto", "--proto-path", &include]).await?;
    assert!(logs.contains("broken.proto:4:9"), "a compile error names file:line:column: {logs}");

    let sets = descriptor_set(&["inventory.proto", "clash.proto"])?;
    let clash = dir.path().join("clash.pb");
    std::fs::write(&clash, sets)?;
    let logs = failed_start(&["--upstream", upstream, "--descriptor-set", &clash.display().to_string()]).await?;
    assert!(
        logs.contains("clash.Clash.GetThing (GET /v1/items/{id})")
            && logs.contains("inventory.Inventory.GetItem (GET /v1/items/{sku})"),
        "a conflict across services names both RPCs and templates: {logs}"
    );

    let logs = failed_start(&[
        "--upstream",
        upstream,
        "--descriptor-set",
        &clash.display().to_string(),
        "--services",
        "inventory.Inventry",
    ])
    .await?;
    assert!(logs.contains("service inventory.Inventry is not in the descriptors"), "{logs}");

    // The same set, limited to one of the two services, loads.
    let gateway = gateway(&[
        "--upstream",
        upstream,
        "--descriptor-set",
        &clash.display().to_string(),
        "--services",
        "clash.Clash",
    ])
    .await?;
    assert_eq!(gateway.descriptors().await?["services"][0]["name"], "clash.Clash");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_routes_serve_services_without_rules() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let set = descriptor_set(&["plain.proto", "inventory.proto"])?;
    let set_file = dir.path().join("plain.pb");
    std::fs::write(&set_file, &set)?;
    let upstream = echo::start(set, "echo").await;
    let set_arg = set_file.display().to_string();

    // Without --auto-routes the service without rules is skipped, with a log line.
    let plain = gateway(&["--upstream", &upstream.url(), "--descriptor-set", &set_arg]).await?;
    plain.process.wait_for_line(|l| l.contains("plain.Plain") && l.contains("skipped"), Duration::from_secs(5)).await?;
    assert_eq!(rest::post_json(plain.addr, "/plain.Plain/Echo", &json!({})).await?.status, StatusCode::NOT_FOUND);
    assert_eq!(rest::get(plain.addr, "/v1/items/a").await?.status, StatusCode::OK);

    let auto = gateway(&["--upstream", &upstream.url(), "--descriptor-set", &set_arg, "--auto-routes"]).await?;
    let echoed = rest::post_json(auto.addr, "/plain.Plain/Echo", &json!({"text": "hi", "count": 2})).await?;
    assert_eq!((echoed.status, echoed.json()), (StatusCode::OK, json!({"text": "hi", "count": "2"})));
    let repeated = rest::post_json(auto.addr, "/plain.Plain/Repeat", &json!({"text": "r"})).await?;
    assert_eq!(repeated.text().lines().count(), 3, "a server stream: {}", repeated.text());
    for skipped in ["/plain.Plain/Gather", "/plain.Plain/Chat"] {
        assert_eq!(rest::post_json(auto.addr, skipped, &json!({})).await?.status, StatusCode::NOT_FOUND, "{skipped}");
    }
    assert_eq!(
        rest::get(auto.addr, "/v1/items/a").await?.status,
        StatusCode::OK,
        "annotated services keep their rules"
    );
    let document = rest::get(auto.addr, "/openapi.json").await?.json();
    assert!(document["paths"]["/plain.Plain/Echo"]["post"].is_object(), "auto routes are documented");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_follows_the_upstream_and_sighup() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let old = echo::start(descriptor_set(&["conformance.proto"])?, "old").await;
    let new = echo::start(descriptor_set(&["conformance.proto", "inventory.proto"])?, "new").await;
    let endpoints = dir.path().join("endpoints.json");
    std::fs::write(&endpoints, json!([old.url()]).to_string())?;
    let target = format!("file://{}", endpoints.display());
    let gateway = gateway(&[
        "--upstream",
        &target,
        "--upstream-file-poll",
        "100ms",
        "--reflection",
        "--reflection-refresh",
        "1h",
    ])
    .await?;
    assert_eq!(rest::get(gateway.addr, "/v1/items/x").await?.status, StatusCode::NOT_FOUND);

    // A new version of the service replaces the old endpoint: its descriptors are read at once.
    replace_file(&endpoints, json!([new.url()]).to_string().as_bytes())?;
    let view = gateway.reloaded(1).await?;
    assert_eq!(view["last_reload"]["trigger"], "endpoint change", "{view}");
    let item = rest::get(gateway.addr, "/v1/items/x").await?;
    assert_eq!((item.status, item.header("grpc-metadata-echo-server")), (StatusCode::OK, Some("new")));

    gateway.process.signal("-HUP")?;
    let view = gateway.reloaded(2).await?;
    assert_eq!((&view["last_reload"]["trigger"], &view["last_reload"]["ok"]), (&json!("SIGHUP"), &json!(true)));

    // Reflection is also read again on its interval.
    let periodic = self::gateway(&["--upstream", &new.url(), "--reflection", "--reflection-refresh", "1s"]).await?;
    let view = periodic.reloaded(1).await?;
    assert_eq!(
        (&view["last_reload"]["trigger"], &view["last_reload"]["ok"]),
        (&json!("reflection refresh"), &json!(true))
    );

    // The upstream gone: reflection is unreachable, the reload fails, the last table keeps serving routes.
    drop(new);
    gateway.process.signal("-HUP")?;
    let view = gateway.reloaded(3).await?;
    assert_eq!(view["last_reload"]["ok"], false, "{view}");
    assert!(view["last_reload"]["error"].as_str().is_some_and(|e| e.contains("reflection")), "{view}");
    assert_eq!(view["services"].as_array().map(Vec::len), Some(2), "{view}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_of_the_user_service_gives_the_embedded_api_and_reloads_keep_streams_open() -> Result<(), Error> {
    let users = common::start().await;
    let _ = users.client().await;
    let upstream = format!("http://{}", users.addr);
    let gateway = gateway(&["--upstream", &upstream, "--reflection"]).await?;

    // Reflection gives exactly the API the compiled-in descriptors give: the committed document.
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/openapi/user.openapi.json"
    ))?)?;
    assert_eq!(rest::get(gateway.addr, "/openapi.json").await?.json(), golden);

    // A watch opened before a reload goes on after it, on the table it started with.
    let response =
        rest::open(gateway.addr, Method::GET, "/v1/users:watch", &[("accept", "text/event-stream")], "").await?;
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = rest::Events::new(response.into_body());
    let marker = events.next().await?.ok_or("snapshot marker")?;
    assert_eq!(marker.json()["type"], "USER_EVENT_TYPE_SNAPSHOT_COMPLETE");
    gateway.process.signal("-HUP")?;
    assert_eq!(gateway.reloaded(1).await?["last_reload"]["ok"], true);
    let created = rest::post_json(
        gateway.addr,
        "/v1/users",
        &json!({"name": "Ada", "email": "ada@example.com", "password": "analytical-engine"}),
    )
    .await?;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text());
    let event = tokio::time::timeout(Duration::from_secs(10), events.next()).await??.ok_or("created event")?;
    assert_eq!(event.json()["type"], "USER_EVENT_TYPE_CREATED");
    assert_eq!(event.json()["user"]["id"], created.json()["id"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proto_sources_reload_when_edited_and_a_compile_error_changes_nothing() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let upstream = echo::start(descriptor_set(&["inventory.proto"])?, "echo").await;
    let source = std::fs::read_to_string(format!("{PROTOS}/sidecar/inventory.proto"))?;
    let file = dir.path().join("inventory.proto");
    std::fs::write(&file, &source)?;
    let include = dir.path().display().to_string();
    let gateway =
        gateway(&["--upstream", &upstream.url(), "--proto", "inventory.proto", "--proto-path", &include]).await?;
    assert_eq!(rest::get(gateway.addr, "/v1/items/a").await?.status, StatusCode::OK);

    // An edit in place (not a rename) is seen too: a second binding for the same RPC.
    let edited = source.replace(
        r#"{get: "/v1/items/{sku}"}"#,
        r#"{get: "/v1/items/{sku}" additional_bindings {get: "/v2/stock/{sku}"}}"#,
    );
    assert_ne!(edited, source);
    std::fs::write(&file, &edited)?;
    let view = gateway.showing(|view| view["routes"] == json!(2)).await?;
    assert_eq!(view["last_reload"]["ok"], json!(true), "{view}");
    assert_eq!(rest::get(gateway.addr, "/v2/stock/a").await?.json()["sku"], "a");

    std::fs::write(&file, edited.replace("message Item {", "message Item {\n  strin broken = 9;"))?;
    let view = gateway.showing(|view| view["last_reload"]["ok"] == json!(false)).await?;
    let error = view["last_reload"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("inventory.proto:") && error.contains("strin"), "{view}");
    assert_eq!(rest::get(gateway.addr, "/v2/stock/a").await?.status, StatusCode::OK, "the last good table serves");
    Ok(())
}
