//! JWT authentication at the gateway, end to end (gateway and UserService both on 127.0.0.1:0, both checking
//! tokens): every API route refuses a missing or bad token with 401, `WWW-Authenticate` and a Status body,
//! before any upstream call; good tokens of each algorithm pass and the service's rules come back as 403;
//! keys come from a JWKS file, an HS256 secret or a JWKS URL that rotates while the gateway runs.

mod common;

use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::jwt::{self, JwksServer, SigningKey};
use common::rest::{self, Reply};
use common::{TestResult, TestServer};
use http::{Method, StatusCode};
use portico::auth::{AuthConfig, KeySource};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Every route of the UserService, with a body where it takes one.
const ROUTES: &[(Method, &str, &str)] = &[
    (Method::GET, "/v1/users", ""),
    (Method::POST, "/v1/users", r#"{"name":"E","email":"e@example.com","password":"long-enough-1"}"#),
    (Method::GET, "/v1/users/1", ""),
    (Method::PATCH, "/v1/users/1", r#"{"name":"E"}"#),
    (Method::DELETE, "/v1/users/1", ""),
    (Method::GET, "/v1/users:watch", ""),
    (Method::POST, "/v1/users:batchCreate", r#"[{"name":"E","email":"e@example.com","password":"long-enough-1"}]"#),
];

struct Secured {
    addr: SocketAddr,
    _upstream: TestServer,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Secured {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn auth_config(keys: KeySource) -> AuthConfig {
    AuthConfig { issuer: Some(jwt::ISSUER.into()), audience: Some(jwt::AUDIENCE.into()), ..AuthConfig::new(keys) }
}

/// The UserService and the gateway in front of it, both checking tokens against `keys`.
async fn secured(keys: KeySource, dir: tempfile::TempDir) -> Secured {
    let config = auth_config(keys);
    let service_config = config.clone();
    let upstream = common::start_with(common::Backend::Sqlite, move |c| c.auth = Some(service_config)).await;
    let _ = upstream.client().await;
    let gateway = portico::gateway::GatewayConfig {
        upstreams: vec![format!("http://{}", upstream.addr)],
        auth: Some(config),
        ..Default::default()
    };
    let (addr, shutdown) = common::spawn_gateway(gateway).await;
    Secured { addr, _upstream: upstream, shutdown, _dir: dir }
}

async fn with_jwks_file(keys: &[&SigningKey]) -> Secured {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwt::jwks(keys)).expect("write JWKS");
    secured(KeySource::JwksFile(file), dir).await
}

async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<Reply, rest::Error> {
    let authorization = token.map(jwt::bearer);
    let mut headers = vec![("content-type", "application/json")];
    if let Some(value) = &authorization {
        headers.push(("authorization", value.as_str()));
    }
    rest::send(addr, method, path, &headers, Bytes::from(body.to_string())).await
}

fn assert_unauthenticated(reply: &Reply, context: &str) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{context}: {}", reply.text());
    assert_eq!(reply.json()["code"], 16, "{context}: google.rpc.Status UNAUTHENTICATED");
}

fn unsigned(header: serde_json::Value, claims: &serde_json::Value) -> String {
    format!("{}.{}.", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
}

#[tokio::test]
async fn every_route_refuses_missing_and_bad_tokens() -> TestResult {
    let key = SigningKey::es256("good");
    let gateway = with_jwks_file(&[&key]).await;
    let admin = jwt::claims("1", &["admin"]);

    // The classic confusion: an HS256 token whose "secret" is the public key the gateway trusts.
    let confused = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("good".into());
        let public = jwt::jwks(&[&key]);
        jsonwebtoken::encode(&header, &admin, &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()))?
    };
    let impostor = SigningKey::es256("good");
    let bad_tokens: Vec<(&str, String, &str)> = vec![
        ("alg none", unsigned(json!({"alg": "none", "typ": "JWT", "kid": "good"}), &admin), "malformed token"),
        ("HS256 with the public key", confused, "does not fit its key"),
        ("expired", key.sign(&jwt::with(admin.clone(), &[("exp", (jwt::now() - 3600).into())])), "expired"),
        ("not yet valid", key.sign(&jwt::with(admin.clone(), &[("nbf", (jwt::now() + 3600).into())])), "not valid yet"),
        ("wrong issuer", key.sign(&jwt::with(admin.clone(), &[("iss", "https://evil.test".into())])), "issuer"),
        ("wrong audience", key.sign(&jwt::with(admin.clone(), &[("aud", "someone-else".into())])), "audience"),
        ("no exp", key.sign(&jwt::with(admin.clone(), &[("exp", serde_json::Value::Null)])), "exp"),
        ("bad signature", impostor.sign(&admin), "signature"),
        ("unknown kid", SigningKey::es256("made-up").sign(&admin), "key id"),
        ("garbage", "abc".into(), "malformed token"),
        ("three garbage parts", "a.b.c".into(), "malformed token"),
    ];
    for (method, path, body) in ROUTES {
        let context = format!("{method} {path}");
        let missing = call(gateway.addr, method.clone(), path, None, body).await?;
        assert_unauthenticated(&missing, &context);
        assert_eq!(missing.header("www-authenticate"), Some("Bearer"), "{context}");

        let basic =
            rest::send(gateway.addr, method.clone(), path, &[("authorization", "Basic dXNlcjpwYXNz")], Bytes::new())
                .await?;
        assert_unauthenticated(&basic, &context);

        for (name, token, reason) in &bad_tokens {
            let reply = call(gateway.addr, method.clone(), path, Some(token), body).await?;
            assert_unauthenticated(&reply, &format!("{context} with {name}"));
            let challenge = reply.header("www-authenticate").unwrap_or_default();
            assert!(
                challenge.starts_with(r#"Bearer error="invalid_token", error_description=""#),
                "{name}: {challenge}"
            );
            assert!(challenge.contains(reason), "{name}: {challenge:?} should mention {reason:?}");
        }
    }
    // The operational endpoints, the document and its UI stay open.
    for path in ["/healthz", "/openapi.json", "/docs/"] {
        let reply = rest::get(gateway.addr, path).await?;
        assert_ne!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    Ok(())
}

#[tokio::test]
async fn tokens_of_each_algorithm_pass_and_the_service_decides_roles() -> TestResult {
    let (rs, es, ed) = (SigningKey::rs256("rs"), SigningKey::es256("es"), SigningKey::eddsa("ed"));
    let gateway = with_jwks_file(&[&rs, &es, &ed]).await;
    for key in [&rs, &es, &ed] {
        let admin = key.sign(&jwt::claims("1", &["admin"]));
        let reply = call(gateway.addr, Method::GET, "/v1/users", Some(&admin), "").await?;
        assert_eq!(reply.status, StatusCode::OK, "{:?}: {}", key.algorithm, reply.text());
    }
    let admin = es.sign(&jwt::claims("1", &["admin"]));
    let created = call(gateway.addr, Method::POST, "/v1/users", Some(&admin), ROUTES[1].2).await?;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap_or_default().to_string();

    // The service's rules, through the gateway: 403 with the role that is needed.
    let itself = ed.sign(&jwt::claims(&id, &[]));
    let listed = call(gateway.addr, Method::GET, "/v1/users", Some(&itself), "").await?;
    assert_eq!(listed.status, StatusCode::FORBIDDEN, "{}", listed.text());
    assert_eq!(listed.json()["code"], 7);
    assert!(listed.json()["message"].as_str().unwrap_or_default().contains("auditor"), "{}", listed.text());
    let own = call(gateway.addr, Method::GET, &format!("/v1/users/{id}"), Some(&itself), "").await?;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text());
    let promote =
        call(gateway.addr, Method::PATCH, &format!("/v1/users/{id}"), Some(&itself), r#"{"roles":["admin"]}"#).await?;
    assert_eq!(promote.status, StatusCode::FORBIDDEN, "{}", promote.text());
    Ok(())
}

#[tokio::test]
async fn an_hs256_secret_verifies_hs256_tokens_only() -> TestResult {
    let dir = tempfile::tempdir()?;
    let secret = "a-shared-secret-of-at-least-32-bytes!";
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{secret}\n"))?;
    let gateway = secured(KeySource::Hs256SecretFile(file), dir).await;
    let hs = |secret: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &jwt::claims("1", &["admin"]),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
    };
    assert_eq!(call(gateway.addr, Method::GET, "/v1/users", Some(&hs(secret)?), "").await?.status, StatusCode::OK);
    assert_unauthenticated(
        &call(gateway.addr, Method::GET, "/v1/users", Some(&hs("another-secret-also-32-bytes-long!")?), "").await?,
        "other secret",
    );
    let es = SigningKey::es256("es").sign(&jwt::claims("1", &["admin"]));
    assert_unauthenticated(&call(gateway.addr, Method::GET, "/v1/users", Some(&es), "").await?, "ES256 token");
    Ok(())
}

#[tokio::test]
async fn keys_rotate_through_the_jwks_url_without_a_restart() -> TestResult {
    let (old, new) = (SigningKey::es256("2026-old"), SigningKey::rs256("2026-new"));
    let issuer = JwksServer::start(jwt::jwks(&[&old])).await;
    let gateway = secured(KeySource::JwksUrl(issuer.url()), tempfile::tempdir()?).await;
    let old_token = old.sign(&jwt::claims("1", &["admin"]));
    let new_token = new.sign(&jwt::claims("1", &["admin"]));
    assert_eq!(call(gateway.addr, Method::GET, "/v1/users", Some(&old_token), "").await?.status, StatusCode::OK);

    // The issuer rotates: the new kid is accepted at once (the gateway and the service each read the JWKS
    // again on meeting it), and the removed kid is refused.
    issuer.replace(jwt::jwks(&[&new]));
    let reply = call(gateway.addr, Method::GET, "/v1/users", Some(&new_token), "").await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let removed = call(gateway.addr, Method::GET, "/v1/users", Some(&old_token), "").await?;
    assert_unauthenticated(&removed, "removed kid");
    assert!(removed.header("www-authenticate").unwrap_or_default().contains("2026-old"), "{:?}", removed.headers);
    Ok(())
}

#[tokio::test]
async fn made_up_key_ids_cannot_hammer_the_issuer() -> TestResult {
    let key = SigningKey::es256("real");
    let issuer = JwksServer::start(jwt::jwks(&[&key])).await;
    let gateway = secured(KeySource::JwksUrl(issuer.url()), tempfile::tempdir()?).await;
    // One call through both ends first: the service, started in the background, has then read its keys too.
    let real = key.sign(&jwt::claims("1", &["admin"]));
    assert_eq!(call(gateway.addr, Method::GET, "/v1/users", Some(&real), "").await?.status, StatusCode::OK);
    let before = issuer.fetches();
    for n in 0..20 {
        let made_up = SigningKey::es256(&format!("made-up-{n}")).sign(&jwt::claims("1", &["admin"]));
        assert_unauthenticated(&call(gateway.addr, Method::GET, "/v1/users", Some(&made_up), "").await?, "made-up kid");
    }
    let fetched = issuer.fetches() - before;
    assert!(fetched <= 1, "{fetched} JWKS fetches for 20 unknown key ids");
    // Real tokens still pass meanwhile.
    assert_eq!(call(gateway.addr, Method::GET, "/v1/users", Some(&real), "").await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn cors_preflights_need_no_token_and_refusals_carry_cors_headers() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwt::jwks(&[&SigningKey::es256("k")]))?;
    let auth = auth_config(KeySource::JwksFile(file));
    let upstream = common::start().await;
    let _ = upstream.client().await;
    let config = portico::gateway::GatewayConfig {
        upstreams: vec![format!("http://{}", upstream.addr)],
        cors_allowed_origins: vec!["https://app.example.com".into()],
        auth: Some(auth),
        ..Default::default()
    };
    let (addr, shutdown) = common::spawn_gateway(config).await;
    let origin = ("origin", "https://app.example.com");
    let preflight = rest::send(
        addr,
        Method::OPTIONS,
        "/v1/users",
        &[origin, ("access-control-request-method", "GET"), ("access-control-request-headers", "authorization")],
        Bytes::new(),
    )
    .await?;
    assert_eq!(preflight.status, StatusCode::OK, "{}", preflight.text());
    assert_eq!(preflight.header("access-control-allow-origin"), Some("https://app.example.com"));
    let refused = rest::send(addr, Method::GET, "/v1/users", &[origin], Bytes::new()).await?;
    assert_unauthenticated(&refused, "GET without a token");
    assert_eq!(
        refused.header("access-control-allow-origin"),
        Some("https://app.example.com"),
        "the browser can read the 401"
    );
    shutdown.cancel();
    Ok(())
}
