//! TLS to `https://` upstreams: the CA that signs their certificates (the system's roots when none is given)
//! and, for upstreams that require it (mTLS), the gateway's client certificate. rustls on ring, through tonic.

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri};

/// PEM contents, read once at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// CA certificate(s) to verify upstreams with, instead of the system's roots.
    pub ca: Option<Vec<u8>>,
    /// The client certificate chain and key presented to upstreams.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl UpstreamTls {
    /// `endpoint` with TLS when `address` is `https://`; unchanged for `http://`.
    pub fn apply(&self, address: &Uri, endpoint: Endpoint) -> Endpoint {
        if address.scheme_str() != Some("https") {
            return endpoint;
        }
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        match endpoint.clone().tls_config(config) {
            Ok(endpoint) => endpoint,
            // The PEM files were parsed at start-up, so this is not expected; connecting in plain text to an
            // https endpoint fails every call, which the breaker and the log then show.
            Err(error) => {
                tracing::error!(%error, %address, "cannot set up TLS to the upstream");
                endpoint
            }
        }
    }
}
