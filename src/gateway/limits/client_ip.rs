//! The client's address: the peer's, or, when the peer is a trusted proxy, the nearest address in
//! `X-Forwarded-For` that is not a trusted proxy (addresses further left are whatever the client wrote).

use std::net::IpAddr;
use std::str::FromStr;

use crate::gateway::peer::Peer;

/// An address block such as `10.0.0.0/8` or `fd00::/8`; a bare address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// A malformed block.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an address block like 10.0.0.0/8 or fd00::/8")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, CidrError> {
        let error = || CidrError(text.to_string());
        let (address, prefix) = text.trim().split_once('/').map_or((text.trim(), None), |(a, p)| (a, Some(p)));
        let network: IpAddr = address.parse().map_err(|_| error())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(error)?,
            None => max,
        };
        Ok(Self { network, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(network) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(network) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The address a request comes from (None when the accept loop recorded no peer).
pub fn client_ip<B>(request: &http::Request<B>, trusted_proxies: &[Cidr]) -> Option<IpAddr> {
    let peer = request.extensions().get::<Peer>()?.addr().ip().to_canonical();
    let trusted = |ip: IpAddr| trusted_proxies.iter().any(|cidr| cidr.contains(ip));
    if !trusted(peer) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|hop| hop.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()))
        .collect::<Result<_, _>>()
        // A malformed chain cannot be trusted at all: the proxy itself is the client.
        .unwrap_or_default();
    Some(forwarded.into_iter().rev().find(|ip| !trusted(*ip)).unwrap_or(peer))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn request(peer: &str, forwarded: Option<&str>) -> http::Request<()> {
        let mut request = http::Request::new(());
        let peer: SocketAddr = format!("{peer}:1234").parse().expect("peer");
        request.extensions_mut().insert(Peer::new(peer));
        if let Some(forwarded) = forwarded {
            request.headers_mut().insert("x-forwarded-for", http::HeaderValue::from_str(forwarded).expect("header"));
        }
        request
    }

    #[test]
    fn blocks() -> Result<(), CidrError> {
        let block: Cidr = "10.1.0.0/16".parse()?;
        assert!(block.contains("10.1.200.3".parse().expect("ip")));
        assert!(!block.contains("10.2.0.1".parse().expect("ip")));
        assert!("::ffff:10.1.0.1".parse::<IpAddr>().is_ok_and(|ip| block.contains(ip)), "mapped v4 addresses");
        assert!("0.0.0.0/0".parse::<Cidr>()?.contains("8.8.8.8".parse().expect("ip")));
        assert!("fd00::/8".parse::<Cidr>()?.contains("fd12::1".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() -> Result<(), CidrError> {
        let proxies = ["10.0.0.0/8".parse::<Cidr>()?];
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        assert_eq!(client_ip(&request("203.0.113.9", Some("1.2.3.4")), &proxies), ip("203.0.113.9"), "untrusted peer");
        assert_eq!(client_ip(&request("10.0.0.2", Some("1.2.3.4")), &proxies), ip("1.2.3.4"));
        assert_eq!(
            client_ip(&request("10.0.0.2", Some("6.6.6.6, 1.2.3.4, 10.0.0.7")), &proxies),
            ip("1.2.3.4"),
            "the nearest untrusted hop; what the client wrote further left does not count"
        );
        assert_eq!(client_ip(&request("10.0.0.2", None), &proxies), ip("10.0.0.2"));
        assert_eq!(client_ip(&request("10.0.0.2", Some("garbage")), &proxies), ip("10.0.0.2"));
        Ok(())
    }
}
