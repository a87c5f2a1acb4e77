//! The peer a connection comes from, tagged on each of its requests: its address (for the rate limiter's
//! client address) and that address as `X-Forwarded-For` writes it, rendered once per connection rather than
//! on every request.

use std::net::SocketAddr;

use http::HeaderValue;

/// A connection's peer.
#[derive(Debug, Clone)]
pub struct Peer {
    addr: SocketAddr,
    /// The address alone, without the port, in its canonical text form.
    forwarded_for: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Self {
        let mut text = Vec::with_capacity(15);
        crate::digits::ip(&mut text, addr.ip());
        // Digits, dots, hex and colons: always a valid header value.
        let forwarded_for = HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static(""));
        Self { addr, forwarded_for }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address as the hop `X-Forwarded-For` gets.
    pub fn forwarded_for(&self) -> &HeaderValue {
        &self.forwarded_for
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hop_is_the_address_without_its_port() {
        for (addr, hop) in [("203.0.113.7:443", "203.0.113.7"), ("[2001:db8::1]:8080", "2001:db8::1")] {
            let peer = Peer::new(addr.parse().expect("a socket address"));
            assert_eq!(peer.forwarded_for(), hop);
            assert_eq!(peer.addr().to_string(), addr);
        }
    }
}
