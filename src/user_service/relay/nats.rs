//! How the relay and `events tail` reach NATS: credentials and TLS, as async-nats supports them. Secrets stay
//! in [`Secret`], whose `Debug` never shows them, so neither a logged config nor an error carries one.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectOptions};

use crate::user_service::store::redact_password;

/// A password or token: compared and passed on, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
}

/// For flags: any text is a secret.
impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(value))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How to authenticate to NATS (one way at a time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// None, or what the URL's `user:password@` carries.
    #[default]
    None,
    /// A credentials file (a user JWT and NKey seed, as `nsc` writes it); read at each connection.
    Credentials(PathBuf),
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
}

/// TLS towards NATS. Any of these turns TLS on (as does a `tls://` URL); the server's certificate is checked
/// against the system's roots, plus `ca` when set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// PEM CA certificate(s) to trust besides the system's.
    pub ca: Option<PathBuf>,
    /// PEM client certificate and key, for servers that verify clients.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
}

impl NatsTls {
    fn is_configured(&self) -> bool {
        self.ca.is_some() || self.client_certificate.is_some()
    }
}

/// Where and how to connect to NATS.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsTarget {
    /// `nats://host:port` or `tls://host:port`.
    pub url: String,
    pub auth: NatsAuth,
    pub tls: NatsTls,
}

impl std::fmt::Debug for NatsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTarget")
            .field("url", &self.redacted_url())
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .finish()
    }
}

impl NatsTarget {
    /// A target without credentials or TLS options.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), auth: NatsAuth::None, tls: NatsTls::default() }
    }

    /// The URL with any password masked, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact_password(&self.url)
    }

    /// Connects, giving up after `timeout`.
    ///
    /// Fails when the credentials file cannot be read or parsed, or the server cannot be reached, refuses the
    /// credentials, or fails the TLS handshake.
    pub async fn connect(&self, timeout: Duration) -> Result<Client, NatsConnectError> {
        let options = ConnectOptions::new().connection_timeout(timeout);
        let options = match &self.auth {
            NatsAuth::None => options,
            NatsAuth::Credentials(path) => options
                .credentials_file(path)
                .await
                .map_err(|source| NatsConnectError::Credentials { path: path.clone(), source })?,
            NatsAuth::UserPassword { user, password } => options.user_and_password(user.clone(), password.0.clone()),
            NatsAuth::Token(token) => options.token(token.0.clone()),
        };
        let mut options = options;
        if self.tls.is_configured() {
            options = options.require_tls(true);
        }
        if let Some(ca) = &self.tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((certificate, key)) = &self.tls.client_certificate {
            options = options.add_client_certificate(certificate.clone(), key.clone());
        }
        options
            .connect(self.url.as_str())
            .await
            .map_err(|source| NatsConnectError::Connect { url: self.redacted_url(), source })
    }
}

/// Why a connection to NATS failed (no secret in the message).
#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    #[error("cannot read the NATS credentials file {}: {source}", path.display())]
    Credentials { path: PathBuf, source: std::io::Error },
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect { url: String, source: async_nats::ConnectError },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug_output() {
        let target = NatsTarget {
            url: "nats://relay:hunter2@nats:4222".into(),
            auth: NatsAuth::UserPassword { user: "relay".into(), password: Secret::new("s3cret") },
            tls: NatsTls::default(),
        };
        let shown = format!("{target:?} {:?}", NatsAuth::Token(Secret::new("t0ken")));
        assert!(!shown.contains("s3cret") && !shown.contains("t0ken") && !shown.contains("hunter2"), "{shown}");
        assert_eq!(target.redacted_url(), "nats://relay:***@nats:4222");
    }
}
