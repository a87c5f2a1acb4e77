//! Reads a JWKS document: from a file, or with one HTTP/1.1 GET from an `http://` or `https://` URL (TLS by
//! rustls with the system's root certificates). Small on purpose: one request, a size cap, a timeout.

use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// No JWKS comes near this; a larger answer is refused rather than buffered.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Connect, TLS, request and body together.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a JWKS document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot read {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("invalid JWKS URL {0:?}: use http://host[:port]/path or https://…")]
    Url(String),
    #[error("cannot reach {url}: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("HTTP exchange with {url} failed: {reason}")]
    Http { url: String, reason: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: http::StatusCode },
    #[error("{url} did not answer within {FETCH_TIMEOUT:?}")]
    Timeout { url: String },
}

pub(crate) async fn read_file(path: &Path) -> Result<Bytes, FetchError> {
    tokio::fs::read(path)
        .await
        .map(Bytes::from)
        .map_err(|source| FetchError::File { path: path.display().to_string(), source })
}

/// GETs `url` and returns the body of a 200 answer.
pub(crate) async fn get(url: &str) -> Result<Bytes, FetchError> {
    tokio::time::timeout(FETCH_TIMEOUT, get_unbounded(url))
        .await
        .map_err(|_| FetchError::Timeout { url: url.to_string() })?
}

async fn get_unbounded(url: &str) -> Result<Bytes, FetchError> {
    let uri: http::Uri = url.parse().map_err(|_| FetchError::Url(url.to_string()))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(FetchError::Url(url.to_string())),
    };
    let host = uri.host().ok_or_else(|| FetchError::Url(url.to_string()))?.to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let connect_error = |source| FetchError::Connect { url: url.to_string(), source };
    let tcp =
        TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)).await.map_err(connect_error)?;
    let authority = uri.authority().map_or(host.clone(), |a| a.as_str().to_string());
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    if tls {
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| FetchError::Url(url.to_string()))?;
        let client =
            TLS_CLIENT.as_ref().map_err(|reason| FetchError::Http { url: url.to_string(), reason: reason.clone() })?;
        let stream =
            tokio_rustls::TlsConnector::from(Arc::clone(client)).connect(name, tcp).await.map_err(connect_error)?;
        exchange(url, TokioIo::new(stream), &authority, &path).await
    } else {
        exchange(url, TokioIo::new(tcp), &authority, &path).await
    }
}

async fn exchange<T>(url: &str, io: T, authority: &str, path: &str) -> Result<Bytes, FetchError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let http_error = |reason: String| FetchError::Http { url: url.to_string(), reason };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| http_error(e.to_string()))?;
    // The connection task ends with the exchange: the sender is dropped when this function returns.
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "JWKS connection ended with an error");
        }
    });
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json, application/jwk-set+json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| http_error(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| http_error(e.to_string()))?;
    if response.status() != http::StatusCode::OK {
        return Err(FetchError::Status { url: url.to_string(), status: response.status() });
    }
    let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
        .collect()
        .await
        .map_err(|e| http_error(format!("reading the body: {e}")))?;
    Ok(body.to_bytes())
}

/// Verifies issuers' certificates against the system's roots; ring is the only crypto provider in the tree.
/// Built once; an error (which ring's full protocol support rules out in practice) fails each https fetch.
static TLS_CLIENT: LazyLock<Result<Arc<rustls::ClientConfig>, String>> = LazyLock::new(|| {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "cannot load a system root certificate");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system root certificates for JWKS fetches");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
});
