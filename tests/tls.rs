//! TLS with real clients: HTTPS at the gateway's edge (a rustls client over h2 by ALPN and over HTTP/1.1, and
//! curl), a renewed certificate served without a restart while an open connection goes on; the UserService
//! with mTLS refusing clients without a certificate of its CA; the gateway reaching it over https with its
//! own client certificate.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::TestResult;
use common::pki::{Pair, Pki};
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portico::gateway::GatewayConfig;
use portico::gateway::tls::EdgeTlsConfig;
use portico::proto::user::ListUsersRequest;
use portico::proto::user::user_service_client::UserServiceClient;
use portico::upstream::tls::UpstreamTls;
use portico::user_service::ServiceTls;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A gateway serving HTTPS with `pair`, in front of a plain-text UserService.
async fn https_gateway(pair: &Pair) -> (SocketAddr, common::TestServer, CancellationToken) {
    let upstream = common::start().await;
    let _ = upstream.client().await;
    let config = GatewayConfig {
        upstreams: vec![format!("http://{}", upstream.addr)],
        tls: Some(EdgeTlsConfig { cert: pair.cert.clone(), key: pair.key.clone() }),
        ..Default::default()
    };
    let (addr, shutdown) = spawn(config).await;
    (addr, upstream, shutdown)
}

async fn spawn(config: GatewayConfig) -> (SocketAddr, CancellationToken) {
    let shutdown = CancellationToken::new();
    let started = portico::gateway::start(&portico::proto::DESCRIPTOR_POOL, config.clone(), shutdown.clone())
        .await
        .expect("gateway starts");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let token = shutdown.clone();
    tokio::spawn(async move {
        let served = match started.tls {
            Some(tls) => portico::gateway::serve_tls(listener, started.public, tls, &config, token).await,
            None => portico::gateway::serve(listener, started.public, &config, token).await,
        };
        served.expect("workers start");
    });
    (addr, shutdown)
}

fn client_config(ca: &std::path::Path, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, common::rest::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in portico::tls::certificates(ca)? {
        roots.add(certificate)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(portico::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<Tls, common::rest::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?)
}

fn get(path: &str) -> Result<http::Request<Empty<Bytes>>, http::Error> {
    http::Request::get(format!("https://localhost{path}")).body(Empty::new())
}

#[tokio::test]
async fn https_at_the_edge_serves_h2_by_alpn_and_http1() -> TestResult {
    let pki = Pki::new("edge");
    let (addr, _upstream, _shutdown) = https_gateway(&pki.issue("gateway")).await;

    let h2 = connect(addr, client_config(&pki.ca_path(), &[b"h2", b"http/1.1"])?).await?;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "HTTP/2 is chosen by ALPN");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(get("/v1/users")?).await?;
    assert_eq!((response.status(), response.version()), (StatusCode::OK, http::Version::HTTP_2));
    let body = response.into_body().collect().await?.to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("users"), "{body:?}");

    let h1 = connect(addr, client_config(&pki.ca_path(), &[b"http/1.1"])?).await?;
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(h1)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(get("/healthz")?).await?;
    assert_eq!((response.status(), response.version()), (StatusCode::OK, http::Version::HTTP_11));

    // curl, with the test CA: HTTP/2 over TLS.
    let url = format!("https://localhost:{}/v1/users", addr.port());
    let output = tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--cacert"])
        .arg(pki.ca_path())
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())])
        .args(["--output", "/dev/null", "--write-out", "%{http_version} %{http_code}", &url])
        .output()
        .await?;
    assert_eq!(String::from_utf8_lossy(&output.stdout), "2 200", "{}", String::from_utf8_lossy(&output.stderr));

    // Plain HTTP on the TLS port gets nowhere.
    assert!(common::rest::get(addr, "/healthz").await.is_err(), "plain HTTP is not served on the HTTPS listener");
    Ok(())
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart_or_a_dropped_connection() -> TestResult {
    let (old_ca, new_ca) = (Pki::new("old"), Pki::new("new"));
    let live = old_ca.issue("gateway");
    let (addr, _upstream, _shutdown) = https_gateway(&live).await;
    let old_trust = client_config(&old_ca.ca_path(), &[b"h2"])?;
    let new_trust = client_config(&new_ca.ca_path(), &[b"h2"])?;

    let open = connect(addr, Arc::clone(&old_trust)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(open)).await?;
    tokio::spawn(connection);
    assert_eq!(sender.send_request(get("/healthz")?).await?.status(), StatusCode::OK);
    assert!(
        connect(addr, Arc::clone(&new_trust)).await.is_err(),
        "the new CA does not sign the served certificate yet"
    );

    // Renewal: the new pair replaces the files (each by an atomic rename, as certificate tools do).
    let renewed = new_ca.issue("gateway-renewed");
    for (from, to) in [(&renewed.key, &live.key), (&renewed.cert, &live.cert)] {
        let staged = to.with_extension("staged");
        std::fs::copy(from, &staged)?;
        std::fs::rename(&staged, to)?;
    }
    let mut served_new = false;
    for _ in 0..100 {
        if connect(addr, Arc::clone(&new_trust)).await.is_ok() {
            served_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served_new, "new connections get the renewed certificate");
    // A fresh client config: the old one would resume its TLS session without seeing a certificate.
    let old_trust_fresh = client_config(&old_ca.ca_path(), &[b"h2"])?;
    assert!(connect(addr, old_trust_fresh).await.is_err(), "and no longer the old one");
    assert_eq!(sender.send_request(get("/healthz")?).await?.status(), StatusCode::OK, "the open connection goes on");
    Ok(())
}

/// A UserService serving gRPC over TLS with `server`, requiring client certificates of `client_ca`.
async fn mtls_user_service(server: &Pair, client_ca: &std::path::Path) -> common::TestServer {
    let tls = ServiceTls {
        cert: std::fs::read(&server.cert).expect("cert"),
        key: std::fs::read(&server.key).expect("key"),
        client_ca: Some(std::fs::read(client_ca).expect("client CA")),
    };
    let server = common::start_with(common::Backend::Sqlite, move |c| c.tls = Some(tls)).await;
    // Up when its port takes connections.
    for _ in 0..100 {
        if TcpStream::connect(server.addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
}

async fn list_over_tls(
    addr: SocketAddr,
    ca: &std::path::Path,
    identity: Option<&Pair>,
) -> Result<(), common::rest::Error> {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca)?)).domain_name("localhost");
    if let Some(pair) = identity {
        tls = tls.identity(Identity::from_pem(std::fs::read(&pair.cert)?, std::fs::read(&pair.key)?));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?.connect().await?;
    UserServiceClient::new(channel).list_users(ListUsersRequest::default()).await?;
    Ok(())
}

#[tokio::test]
async fn the_user_service_with_mtls_refuses_clients_without_a_certificate_of_its_ca() -> TestResult {
    let (servers, clients, strangers) = (Pki::new("servers"), Pki::new("clients"), Pki::new("strangers"));
    let service = mtls_user_service(&servers.issue("user-service"), &clients.ca_path()).await;

    list_over_tls(service.addr, &servers.ca_path(), Some(&clients.issue("gateway"))).await?;
    assert!(list_over_tls(service.addr, &servers.ca_path(), None).await.is_err(), "no client certificate");
    assert!(
        list_over_tls(service.addr, &servers.ca_path(), Some(&strangers.issue("intruder"))).await.is_err(),
        "a client certificate of another CA"
    );
    Ok(())
}

#[tokio::test]
async fn the_gateway_calls_an_https_upstream_with_its_client_certificate() -> TestResult {
    let (servers, clients) = (Pki::new("servers"), Pki::new("clients"));
    let service = mtls_user_service(&servers.issue("user-service"), &clients.ca_path()).await;
    let identity = clients.issue("gateway");
    let tls = |identity: Option<&Pair>| UpstreamTls {
        ca: Some(std::fs::read(servers.ca_path()).expect("CA")),
        identity: identity.map(|p| (std::fs::read(&p.cert).expect("cert"), std::fs::read(&p.key).expect("key"))),
    };
    let gateway_with = |tls: UpstreamTls| {
        let mut config = GatewayConfig {
            upstreams: vec![format!("https://localhost:{}", service.addr.port())],
            ..Default::default()
        };
        config.upstream.pool.tls = tls;
        config
    };

    let (addr, _shutdown) = spawn(gateway_with(tls(Some(&identity)))).await;
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        status = common::rest::get(addr, "/v1/users").await?.status;
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, StatusCode::OK, "the gateway reaches the mTLS upstream");

    // Sidecar mode over the same TLS: the routes come from the upstream's reflection, read with the same CA
    // and client certificate.
    let mut reflecting = gateway_with(tls(Some(&identity)));
    reflecting.descriptors.reflection = true;
    let (reflected, _reflected_shutdown) = spawn(reflecting).await;
    assert_eq!(common::rest::get(reflected, "/v1/users").await?.status, StatusCode::OK, "routes from reflection");

    // Without its certificate the upstream refuses the gateway: nothing gets through.
    let (refused, _refused_shutdown) = spawn(gateway_with(tls(None))).await;
    let reply = common::rest::get(refused, "/v1/users").await?;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
    Ok(())
}
