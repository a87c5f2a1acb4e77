//! The DNS resolver against a real dnsmasq: all addresses of a name, updates seen at once, AAAA records,
//! NXDOMAIN as an empty answer, a silent server as an error, and IP literals without a query.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::dnsmasq::Dnsmasq;
use portico::upstream::dns::{DnsError, DnsResolver};

const TIMEOUT: Duration = Duration::from_millis(500);
const SERVICE: &str = "users.default.svc.cluster.local";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP address")
}

fn ips(texts: &[&str]) -> Vec<IpAddr> {
    texts.iter().map(|text| ip(text)).collect()
}

fn resolver_for(server: SocketAddr) -> DnsResolver {
    DnsResolver::new(Some(server), TIMEOUT).expect("resolver for a single server")
}

#[tokio::test]
async fn returns_every_ipv4_address_sorted() {
    let dns = Dnsmasq::start();
    dns.set(SERVICE, &ips(&["10.0.0.3", "10.0.0.1", "10.0.0.2"]));

    let found = resolver_for(dns.addr()).lookup(SERVICE).await.expect("lookup");

    assert_eq!(found, ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]));
}

#[tokio::test]
async fn sees_each_update_on_the_next_lookup() {
    let dns = Dnsmasq::start();
    let resolver = resolver_for(dns.addr());
    dns.set(SERVICE, &ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]));
    assert_eq!(resolver.lookup(SERVICE).await.expect("first lookup"), ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]));

    // One endpoint leaves and another joins; the very next lookup must see it (no cache in between).
    dns.set(SERVICE, &ips(&["10.0.0.2", "10.0.0.3", "10.0.0.4"]));
    assert_eq!(resolver.lookup(SERVICE).await.expect("after the update"), ips(&["10.0.0.2", "10.0.0.3", "10.0.0.4"]));

    // All endpoints gone: the name no longer exists, which is an empty answer, not an error.
    dns.set(SERVICE, &[]);
    assert_eq!(resolver.lookup(SERVICE).await.expect("after removal"), Vec::<IpAddr>::new());

    // And back again: the NXDOMAIN was not cached either.
    dns.set(SERVICE, &ips(&["10.0.0.5"]));
    assert_eq!(resolver.lookup(SERVICE).await.expect("after re-adding"), ips(&["10.0.0.5"]));
}

#[tokio::test]
async fn returns_aaaa_records() {
    let dns = Dnsmasq::start();
    let resolver = resolver_for(dns.addr());
    dns.set("dual.test", &ips(&["fd00::2", "10.0.0.9", "fd00::1"]));
    dns.set("v6only.test", &ips(&["fd00::7"]));

    // IPv4 sorts before IPv6.
    assert_eq!(
        resolver.lookup("dual.test").await.expect("dual-stack lookup"),
        ips(&["10.0.0.9", "fd00::1", "fd00::2"])
    );
    // No A record (NODATA) is not an error when the AAAA query finds something.
    assert_eq!(resolver.lookup("v6only.test").await.expect("IPv6-only lookup"), ips(&["fd00::7"]));
}

#[tokio::test]
async fn nonexistent_name_is_an_empty_answer() {
    let dns = Dnsmasq::start();
    dns.set(SERVICE, &ips(&["10.0.0.1"]));
    let resolver = resolver_for(dns.addr());

    assert_eq!(resolver.lookup("nobody.default.svc.cluster.local").await.expect("NXDOMAIN"), Vec::<IpAddr>::new());
    assert_eq!(resolver.lookup("nobody.test.").await.expect("NXDOMAIN, fully qualified"), Vec::<IpAddr>::new());
}

#[tokio::test]
async fn silent_server_is_an_error() {
    // Bound, so nothing answers "port unreachable" either: queries just go unanswered.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind a silent UDP socket");
    let resolver = resolver_for(silent.local_addr().expect("local addr"));

    let started = Instant::now();
    let result = resolver.lookup(SERVICE).await;
    let elapsed = started.elapsed();

    assert!(matches!(result, Err(DnsError::Timeout { .. })), "expected a timeout, got {result:?}");
    // Two tries of TIMEOUT each; the bound only catches a lookup that hangs or retries far too often.
    assert!(elapsed < TIMEOUT * 10, "the lookup took {elapsed:?}");
}

#[tokio::test]
async fn ip_literal_is_returned_without_a_query() {
    // A server that never answers: any query would turn into a timeout error.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind a silent UDP socket");
    let resolver = resolver_for(silent.local_addr().expect("local addr"));

    for (host, expected) in [("10.1.2.3", "10.1.2.3"), ("fd00::5", "fd00::5"), ("[fd00::5]", "fd00::5"), ("::1", "::1")]
    {
        assert_eq!(resolver.lookup(host).await.expect("IP literal"), vec![ip(expected)], "{host}");
    }
}

#[tokio::test]
async fn an_answer_too_big_for_udp_comes_over_tcp() {
    let dns = Dnsmasq::start();
    // 200 A records (about 3.2 kB) do not fit the 1232-byte UDP payload both sides use by default.
    let many: Vec<IpAddr> = (0..200u8).map(|n| IpAddr::from([10, 1, 0, n])).collect();
    dns.set(SERVICE, &many);

    assert_eq!(resolver_for(dns.addr()).lookup(SERVICE).await.expect("lookup over TCP"), many);
}
