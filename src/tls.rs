//! PEM files → rustls types, for every TLS end of Portico: the gateway's edge, the UserService, and the
//! gateway's connections to https upstreams. rustls with ring only (never OpenSSL, never aws-lc).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Why certificates or keys could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no usable PEM private key: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("TLS configuration failed: {0}")]
    Config(#[from] rustls::Error),
}

/// The crypto provider of every TLS config here.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A file's bytes, for tonic's PEM-taking configs.
///
/// # Errors
///
/// The file cannot be read.
pub fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

/// Every certificate in a PEM file (a chain: leaf first).
///
/// # Errors
///
/// The file cannot be read or holds no certificate.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certificates: Vec<_> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certificates)
}

/// A certificate chain and its private key (PKCS#8, PKCS#1 or SEC1 PEM), ready to serve.
///
/// # Errors
///
/// Either file cannot be read or parsed, the key is of a kind ring cannot sign with, or it does not match the
/// certificate.
pub fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certificates(cert)?;
    let key_error = |reason: String| TlsError::Key { path: key.to_path_buf(), reason };
    let der = PrivateKeyDer::from_pem_slice(&read_pem(key)?).map_err(|e| key_error(e.to_string()))?;
    let signing = provider().key_provider.load_private_key(der).map_err(|e| key_error(e.to_string()))?;
    let pair = CertifiedKey::new(chain, signing);
    // A renewal caught between writing the two files must not be served.
    pair.keys_match().map_err(|e| key_error(format!("does not match the certificate in {}: {e}", cert.display())))?;
    Ok(Arc::new(pair))
}
