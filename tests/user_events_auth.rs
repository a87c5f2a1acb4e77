//! The relay and `events tail` against NATS servers that demand a password, a token or TLS, started by the
//! test with a generated config (and, for TLS, a CA and certificates made by `openssl`): events arrive with the
//! right credentials, a wrong password, a missing token or a missing client certificate is refused, and no
//! secret shows in the logs or errors.

mod common;

use std::time::Duration;

use common::nats::{Certificates, NatsServer, free_port, read_stream_with};
use common::{Backend, TestResult, create, start_with};
use portico::user_service::relay::{NatsAuth, NatsTls, Secret};

const PASSWORD: &str = "correct-horse-battery";

/// Runs `portico events tail ARGS…`; returns whether it succeeded, its stdout and its stderr.
async fn events_tail(args: &[&str]) -> Result<(bool, String, String), Box<dyn std::error::Error + Send + Sync>> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["events", "tail", "--limit", "1"])
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output).await??;
    let (stdout, stderr) = (String::from_utf8(output.stdout)?, String::from_utf8_lossy(&output.stderr).into_owned());
    Ok((output.status.success(), stdout, stderr))
}

#[tokio::test]
async fn user_and_password() -> TestResult {
    let dir = tempfile::tempdir()?;
    let password_file = dir.path().join("nats-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n"))?;
    let extra = format!("authorization {{ user: relay, password: \"{PASSWORD}\" }}");
    let nats = NatsServer::start_configured(free_port(), tempfile::tempdir()?, &extra).await;
    let nats_url = nats.url.clone();
    let server = start_with(Backend::Sqlite, |config| {
        config.nats_url = Some(nats_url);
        config.nats_auth = NatsAuth::UserPassword { user: "relay".into(), password: Secret::new(PASSWORD) };
    })
    .await;
    create(&mut server.client().await, "Ada", "ada@example.com").await;
    let options = async_nats::ConnectOptions::with_user_and_password("relay".into(), PASSWORD.into());
    let published = read_stream_with(options, &nats.url, "USERS", 1).await?;
    assert_eq!(published[0].event["data"]["name"], "Ada");

    let password_file = password_file.to_string_lossy();
    let (ok, stdout, stderr) =
        events_tail(&["--nats-url", &nats.url, "--nats-user", "relay", "--nats-password-file", &password_file]).await?;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"Ada\""), "{stdout}");

    let (ok, _, stderr) =
        events_tail(&["--nats-url", &nats.url, "--nats-user", "relay", "--nats-password", "wrong-pw"]).await?;
    assert!(!ok, "a wrong password is refused");
    assert!(stderr.contains("cannot connect to NATS"), "{stderr}");
    assert!(!stderr.contains("wrong-pw"), "the password is not shown: {stderr}");

    let (ok, _, stderr) = events_tail(&["--nats-url", &nats.url, "--nats-user", "relay"]).await?;
    assert!(!ok && stderr.contains("invalid --nats-user"), "a user without a password: {stderr}");
    Ok(())
}

#[tokio::test]
async fn token() -> TestResult {
    const TOKEN: &str = "s3cret-t0ken";
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("nats-token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let extra = format!("authorization {{ token: \"{TOKEN}\" }}");
    let nats = NatsServer::start_configured(free_port(), tempfile::tempdir()?, &extra).await;
    let nats_url = nats.url.clone();
    let server = start_with(Backend::Sqlite, |config| {
        config.nats_url = Some(nats_url);
        config.nats_auth = NatsAuth::Token(Secret::new(TOKEN));
    })
    .await;
    create(&mut server.client().await, "Edsger", "edsger@example.com").await;
    let token_file = token_file.to_string_lossy();
    let (ok, stdout, stderr) = events_tail(&["--nats-url", &nats.url, "--nats-token-file", &token_file]).await?;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"Edsger\""), "{stdout}");
    let (ok, _, stderr) = events_tail(&["--nats-url", &nats.url]).await?;
    assert!(!ok && stderr.contains("cannot connect to NATS"), "no token: {stderr}");
    Ok(())
}

/// TLS with a server that verifies client certificates: the relay and `events tail` connect with the CA and a
/// client certificate; without the client certificate, the server refuses.
#[tokio::test]
async fn tls_with_client_certificates() -> TestResult {
    let dir = tempfile::tempdir()?;
    let certs = Certificates::generate(dir.path())?;
    let extra = format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true, timeout: 5 }}",
        certs.server_cert.display(),
        certs.server_key.display(),
        certs.ca.display()
    );
    let nats = NatsServer::start_configured(free_port(), tempfile::tempdir()?, &extra).await;
    let nats_url = nats.url.clone();
    let tls = NatsTls {
        ca: Some(certs.ca.clone()),
        client_certificate: Some((certs.client_cert.clone(), certs.client_key.clone())),
    };
    let relay_tls = tls.clone();
    let server = start_with(Backend::Sqlite, |config| {
        config.nats_url = Some(nats_url);
        config.nats_tls = relay_tls;
    })
    .await;
    create(&mut server.client().await, "Grace", "grace@example.com").await;
    let options = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(certs.ca.clone())
        .add_client_certificate(certs.client_cert.clone(), certs.client_key.clone());
    let published = read_stream_with(options, &nats.url, "USERS", 1).await?;
    assert_eq!(published[0].event["data"]["name"], "Grace");

    let (ca, cert, key) =
        (certs.ca.to_string_lossy(), certs.client_cert.to_string_lossy(), certs.client_key.to_string_lossy());
    let (ok, stdout, stderr) = events_tail(&[
        "--nats-url",
        &nats.url,
        "--nats-tls-ca",
        &ca,
        "--nats-tls-client-cert",
        &cert,
        "--nats-tls-client-key",
        &key,
    ])
    .await?;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"Grace\""), "{stdout}");

    let (ok, _, stderr) = events_tail(&["--nats-url", &nats.url, "--nats-tls-ca", &ca]).await?;
    assert!(!ok && stderr.contains("cannot connect to NATS"), "no client certificate: {stderr}");
    let (ok, _, stderr) =
        events_tail(&["--nats-url", &nats.url, "--nats-tls-ca", &ca, "--nats-tls-client-cert", &cert]).await?;
    assert!(!ok && stderr.contains("invalid --nats-tls-client-cert"), "a certificate without its key: {stderr}");
    Ok(())
}
