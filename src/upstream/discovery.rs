//! Where endpoints come from: targets and the tasks that keep their address lists current.
//!
//! - `http://host:port` (or `https://`): one endpoint, fixed.
//! - `dns://name:port` (also gRPC's `dns:///name:port`): every A and AAAA record of `name`, re-resolved every
//!   refresh interval and at once when an endpoint turns unhealthy. This is how Kubernetes headless Services
//!   and Consul's DNS interface list their instances. A failed lookup (timeout, SERVFAIL) keeps the last
//!   answer; an authoritative "no such name" or "no addresses" empties the list, as the DNS says.
//! - `file://path.json`: a JSON list of endpoint URLs, `["http://10.0.0.5:50051", ...]` or
//!   `{"endpoints": [...]}`, re-read when its contents change. A file that cannot be read or parsed keeps the
//!   last good list; at start-up it is an error.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tonic::transport::Uri;

use crate::upstream::dns::{DnsError, DnsResolver};
use crate::upstream::pool::{InvalidUrl, parse_url};

/// Discovery settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// How often DNS targets are re-resolved.
    pub dns_refresh: Duration,
    /// The DNS server to ask; `None` uses the system's (/etc/resolv.conf).
    pub dns_server: Option<SocketAddr>,
    pub dns_timeout: Duration,
    /// How often file targets are looked at for changes.
    pub file_poll: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            dns_refresh: Duration::from_secs(5),
            dns_server: None,
            dns_timeout: Duration::from_secs(2),
            file_poll: Duration::from_secs(1),
        }
    }
}

/// Re-resolving on a failure happens at most this often, so a flapping endpoint cannot flood the DNS server.
pub const MIN_RERESOLVE_INTERVAL: Duration = Duration::from_secs(1);

/// One `--upstream` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Static(Uri),
    Dns { host: String, port: u16 },
    File(PathBuf),
}

/// Why an `--upstream` entry cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Url(#[from] InvalidUrl),
    #[error("invalid DNS target {0:?}: expected dns://name:port")]
    Dns(String),
    #[error("invalid file target {0:?}: expected file://path.json")]
    File(String),
    #[error("cannot read endpoint file {path}: {reason}")]
    FileContents { path: PathBuf, reason: String },
}

impl Target {
    /// Parses an `--upstream` entry.
    ///
    /// # Errors
    ///
    /// An entry of an unknown scheme, or one without the parts its scheme needs.
    pub fn parse(text: &str) -> Result<Self, TargetError> {
        if let Some(rest) = text.strip_prefix("dns://") {
            // gRPC's form has an (empty) authority: dns:///name:port.
            let rest = rest.strip_prefix('/').unwrap_or(rest);
            let invalid = || TargetError::Dns(text.to_string());
            let (host, port) = rest.rsplit_once(':').ok_or_else(invalid)?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port: u16 = port.parse().map_err(|_| invalid())?;
            if host.is_empty() || host.contains('/') || port == 0 {
                return Err(invalid());
            }
            return Ok(Self::Dns { host: host.to_string(), port });
        }
        if let Some(path) = text.strip_prefix("file://") {
            if path.is_empty() {
                return Err(TargetError::File(text.to_string()));
            }
            return Ok(Self::File(PathBuf::from(path)));
        }
        Ok(Self::Static(parse_url(text)?))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static(uri) => write!(f, "{uri}"),
            Self::Dns { host, port } => write!(f, "dns://{host}:{port}"),
            Self::File(path) => write!(f, "file://{}", path.display()),
        }
    }
}

/// The endpoint URL of one resolved address.
pub fn address_url(ip: IpAddr, port: u16) -> Result<Uri, InvalidUrl> {
    parse_url(&format!("http://{}", SocketAddr::new(ip, port)))
}

/// Resolves a DNS target to endpoint URLs.
///
/// # Errors
///
/// The lookup's failure; an empty list is not one.
pub async fn resolve(resolver: &DnsResolver, host: &str, port: u16) -> Result<Vec<Uri>, DnsError> {
    let ips = resolver.lookup(host).await?;
    Ok(ips.into_iter().filter_map(|ip| address_url(ip, port).ok()).collect())
}

/// Reads an endpoint file.
///
/// # Errors
///
/// The file cannot be read, is not one of the two JSON shapes, or lists an invalid URL (named).
pub fn read_file(path: &Path) -> Result<(Vec<u8>, Vec<Uri>), TargetError> {
    let error = |reason: String| TargetError::FileContents { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let urls = parse_file(&bytes).map_err(error)?;
    Ok((bytes, urls))
}

fn parse_file(bytes: &[u8]) -> Result<Vec<Uri>, String> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum EndpointFile {
        List(Vec<String>),
        Object { endpoints: Vec<String> },
    }
    let file: EndpointFile = serde_json::from_slice(bytes)
        .map_err(|e| format!("expected a JSON list of endpoint URLs or {{\"endpoints\": [...]}} ({e})"))?;
    let (EndpointFile::List(urls) | EndpointFile::Object { endpoints: urls }) = file;
    urls.iter().map(|url| parse_url(url).map_err(|e| e.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_target() -> Result<(), TargetError> {
        let cases = [
            ("http://10.0.0.5:50051", "http://10.0.0.5:50051/"),
            ("dns://users.default.svc.cluster.local:50051", "dns://users.default.svc.cluster.local:50051"),
            ("dns:///users:50051", "dns://users:50051"),
            ("file:///etc/portico/endpoints.json", "file:///etc/portico/endpoints.json"),
            ("file://endpoints.json", "file://endpoints.json"),
        ];
        for (text, shown) in cases {
            assert_eq!(Target::parse(text)?.to_string(), shown, "{text}");
        }
        for bad in ["dns://users", "dns://users:0", "dns://:50051", "dns://users:port", "file://", "tcp://x:1", "x"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn reads_both_file_shapes_and_names_a_bad_url() {
        let list = parse_file(br#"["http://10.0.0.5:50051", "http://[fd00::1]:50051"]"#);
        assert_eq!(list.map(|urls| urls.len()), Ok(2));
        let object = parse_file(br#"{"endpoints": ["http://10.0.0.5:50051"]}"#);
        assert_eq!(object.map(|urls| urls.len()), Ok(1));
        let empty = parse_file(br#"{"endpoints": []}"#);
        assert_eq!(empty.map(|urls| urls.len()), Ok(0));
        let bad = parse_file(br#"["http://10.0.0.5:50051", "10.0.0.6:50051"]"#).err().unwrap_or_default();
        assert!(bad.contains("10.0.0.6:50051"), "{bad}");
        let not_json = parse_file(b"http://10.0.0.5:50051").err().unwrap_or_default();
        assert!(not_json.contains("JSON list"), "{not_json}");
    }

    #[test]
    fn resolved_addresses_become_urls() -> Result<(), InvalidUrl> {
        assert_eq!(address_url("10.1.2.3".parse().map_err(|_| fail())?, 50051)?.to_string(), "http://10.1.2.3:50051/");
        assert_eq!(address_url("fd00::7".parse().map_err(|_| fail())?, 50051)?.to_string(), "http://[fd00::7]:50051/");
        Ok(())
    }

    fn fail() -> InvalidUrl {
        InvalidUrl { url: String::new(), reason: "test address".into() }
    }
}
