//! schemathesis, the API fuzzer users point at an OpenAPI document, against the gateway: the UserService's API
//! (`portico serve`) and the conformance service in sidecar mode. Every phase, stateful included; no server
//! error, and no response that the document does not describe. The conformance document is also checked by an
//! OpenAPI 3.1 validator.
//!
//! schemathesis is installed into `target/` from PyPI on first run, pinned. To explore beyond the fixed seed:
//! `SCHEMATHESIS_SEED=random scripts/test --test schemathesis`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::process::{Error, FAST_FLAGS, Process};
use common::{echo, python};

const SCHEMATHESIS: &[&str] = &["schemathesis==4.32.5"];
const VALIDATOR: &[&str] = &["openapi-spec-validator==0.9.0", "openapi-schema-validator==0.9.0", "jsonschema==4.26.0"];
const PROTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/protos");
const BUILT_IN_PROTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");

/// What the runs expect of the gateway. A 504 is what the gateway owes a client whose own `Grpc-Timeout`
/// (schemathesis sends values as short as `1n`) expires before the answer: the deadline is the client's
/// choice, the status is the mapping's. Every other 5xx is a failure.
const CONFIG: &str = r#"
[checks.not_a_server_error]
expected-statuses = ["1xx", "2xx", "3xx", "4xx", "504"]
"#;

/// Runs schemathesis against the document at `base`, every phase; returns the number of generated cases.
fn fuzz(dir: &Path, base: SocketAddr, max_examples: u32, extra: &[&str]) -> Result<u64, Error> {
    let python = python::venv_python("schemathesis-venv", SCHEMATHESIS);
    let config = dir.join("schemathesis.toml");
    std::fs::write(&config, CONFIG)?;
    let seed = std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261130".into());
    let mut command = Command::new(python);
    command
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config)
        .args(["run", &format!("http://{base}/openapi.json"), "--checks", "all"])
        // Positive-data acceptance is off: a service validates more than a schema can say (a page size must
        // not be negative, an email must be one), and says so with a 400 and `BadRequest` details.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--phases", "examples,coverage,fuzzing,stateful", "--max-examples", &max_examples.to_string()])
        .args(["--request-timeout", "10", "--no-color"])
        .args(extra)
        .current_dir(dir);
    if seed != "random" {
        command.args(["--seed", &seed]);
    }
    let output = command.output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The summary says "N generated, N passed".
    let generated = stdout
        .lines()
        .find_map(|line| line.split_once(" generated,").and_then(|(count, _)| count.trim().parse().ok()))
        .ok_or_else(|| format!("no case count in the output:\n{stdout}"))?;
    Ok(generated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_api_holds_up_under_schemathesis() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("users.db").display().to_string();
    // Run as the document says: every operation needs a bearer token. schemathesis sends an admin's token,
    // and checks that requests without it, or with a broken one, are refused with 401.
    let secret = "schemathesis-shared-secret-of-32-bytes";
    let secret_file = dir.path().join("jwt-secret");
    std::fs::write(&secret_file, secret)?;
    let secret_arg = secret_file.display().to_string();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &common::jwt::claims("1", &["admin"]),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?;
    let authorization = format!("Authorization: Bearer {token}");
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--db", &db];
    args.extend_from_slice(&["--jwt-hs256-secret-file", &secret_arg]);
    args.extend_from_slice(&FAST_FLAGS);
    let server = Process::start(&args, "warn,portico=info")?;
    let addr = server.address("gateway listening").await?;
    let dir_path = dir.path().to_path_buf();
    // The watch is an endless stream by design; schemathesis would wait for its end.
    let generated = tokio::task::spawn_blocking(move || {
        fuzz(&dir_path, addr, 250, &["--exclude-path", "/v1/users:watch", "--header", &authorization])
    })
    .await??;
    assert!(generated >= 2000, "only {generated} cases were generated");
    drop(server);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_document_is_valid_and_holds_up_under_schemathesis() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let mut compiler = protox::Compiler::new([format!("{PROTOS}/conformance"), BUILT_IN_PROTOS.to_string()])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(["conformance.proto"])?;
    let set = compiler.encode_file_descriptor_set();
    let set_file = dir.path().join("conformance.pb");
    std::fs::write(&set_file, &set)?;
    let upstream = echo::start(set, "echo").await;
    let set_arg = set_file.display().to_string();
    let gateway = Process::start(
        &["gateway", "--listen", "127.0.0.1:0", "--upstream", &upstream.url(), "--descriptor-set", &set_arg],
        "warn,portico=info",
    )?;
    let addr = gateway.address("gateway listening").await?;

    let document = common::rest::get(addr, "/openapi.json").await?.body;
    let document_file = dir.path().join("conformance.openapi.json");
    std::fs::write(&document_file, &document)?;
    let validator = python::venv_python("openapi-validator-venv", VALIDATOR);
    let validated = Command::new(validator)
        .args(["-m", "openapi_spec_validator", "--schema", "3.1", "--validation-errors", "all"])
        .arg(&document_file)
        .output()?;
    assert!(
        validated.status.success(),
        "the sidecar's document is not valid OpenAPI 3.1: {}",
        String::from_utf8_lossy(&validated.stdout)
    );

    let dir_path = dir.path().to_path_buf();
    let generated = tokio::task::spawn_blocking(move || fuzz(&dir_path, addr, 40, &[])).await??;
    assert!(generated >= 2000, "only {generated} cases were generated");
    assert!(!gateway.logs().iter().any(|line| line.contains("panicked")), "the gateway panicked");
    Ok(())
}
