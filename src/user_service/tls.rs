//! gRPC over TLS for the UserService, with client certificates required when a client CA is configured
//! (mTLS): a client without a certificate signed by that CA fails the handshake and never reaches a method.

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// PEM contents, read and checked at start-up.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceTls {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    /// Clients must present a certificate signed by this CA.
    pub client_ca: Option<Vec<u8>>,
}

/// Never prints the key.
impl std::fmt::Debug for ServiceTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTls").field("mtls", &self.client_ca.is_some()).finish_non_exhaustive()
    }
}

impl ServiceTls {
    pub(crate) fn server_config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, &self.key));
        match &self.client_ca {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}
