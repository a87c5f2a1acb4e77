//! HTTPS at the gateway's edge: HTTP/2 (by ALPN) and HTTP/1.1 over rustls. The certificate and key files are
//! watched (polled every couple of seconds): a renewed pair is served to new connections without a restart,
//! while open connections go on with the one they started with. A pair that does not load is logged and
//! the current one kept.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::tls::{TlsError, certified_key, provider};

/// How often the files are checked for changes.
const RELOAD_POLL: Duration = Duration::from_secs(2);

/// The edge's certificate and key files (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeTlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Hands every handshake the pair loaded last.
#[derive(Debug)]
struct CurrentCertificate(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Loads the pair and starts watching it until `shutdown`.
///
/// # Errors
///
/// The files cannot be read or do not hold a certificate chain and a matching key.
pub fn acceptor(config: &EdgeTlsConfig, shutdown: &CancellationToken) -> Result<TlsAcceptor, TlsError> {
    let current = Arc::new(CurrentCertificate(ArcSwap::new(certified_key(&config.cert, &config.key)?)));
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(reload_on_change(config.clone(), current, shutdown.clone()));
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn modified(config: &EdgeTlsConfig) -> Option<(SystemTime, SystemTime)> {
    let time = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Some((time(&config.cert)?, time(&config.key)?))
}

async fn reload_on_change(config: EdgeTlsConfig, current: Arc<CurrentCertificate>, shutdown: CancellationToken) {
    let mut seen = modified(&config);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RELOAD_POLL) => {}
        }
        let now = modified(&config);
        if now == seen {
            continue;
        }
        // A renewal writes two files: a pair that does not match yet is tried again at the next poll.
        match certified_key(&config.cert, &config.key) {
            Ok(pair) => {
                current.0.store(pair);
                seen = now;
                tracing::info!(cert = %config.cert.display(), "TLS certificate reloaded");
            }
            Err(error) => tracing::warn!(%error, "cannot load the changed TLS certificate; serving the previous one"),
        }
    }
}
