//! DNS resolution for upstream discovery: every A and AAAA address of a host name, asked fresh on each call.
//!
//! The caller re-resolves on its own schedule (for example a headless Kubernetes service every few seconds) and
//! must see each change at once, whatever TTL the server gave, so this wrapper turns hickory's response cache off.
//! It keeps "nobody is there" (NXDOMAIN, or a name without address records: `Ok(vec![])`) apart from "could not
//! find out" (timeout, SERVFAIL, REFUSED, I/O error: `Err`), because a caller that drops every endpoint on a
//! transient failure would turn a DNS hiccup into an outage.

use std::iter;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{self, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Resolver, TokioResolver, system_conf};

/// Why a lookup failed (transport error, timeout, SERVFAIL, bad configuration). NXDOMAIN and "no address
/// records" are not errors: [`DnsResolver::lookup`] returns an empty list for them.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The resolver could not be set up: `/etc/resolv.conf` is unreadable or lists no usable name server, or
    /// the timeout is zero.
    #[error("invalid DNS resolver configuration: {reason}")]
    Config { reason: String },
    /// `host` is neither an IP address nor a valid DNS name (empty, a label over 63 bytes, ...). No query was
    /// sent.
    #[error("{host:?} is not a valid host name: {reason}")]
    InvalidName { host: String, reason: String },
    /// No name server answered within the timeout, on any attempt.
    #[error("DNS lookup of {host:?} timed out")]
    Timeout { host: String },
    /// A name server answered with an error code (SERVFAIL, REFUSED, FORMERR, ...), so whether the name exists
    /// is unknown.
    #[error("DNS lookup of {host:?} failed: the server answered {} (rcode {rcode})", rcode_name(*rcode))]
    Server { host: String, rcode: u16 },
    /// Anything else that kept the lookup from getting an answer: an I/O error, a malformed or truncated
    /// response, no usable connection.
    #[error("DNS lookup of {host:?} failed: {reason}")]
    Transport { host: String, reason: String },
}

/// A DNS resolver for upstream discovery. Cheap to clone: clones share the connections to the name servers.
#[derive(Clone, Debug)]
pub struct DnsResolver {
    resolver: TokioResolver,
    /// The domains a name that is not fully qualified is tried in (resolv.conf's search list); empty when
    /// asking a single given server.
    search: Arc<[Name]>,
    /// A name with at least this many dots is tried as given before the search list, one with fewer after it.
    ndots: usize,
}

impl DnsResolver {
    /// `nameserver: None` reads the system configuration (`/etc/resolv.conf`: its name servers, search list and
    /// `ndots`, plus a snapshot of `/etc/hosts` taken now); `Some(addr)` asks only that server (UDP, with TCP
    /// when an answer is truncated), with no search list and no hosts file, so names are looked up exactly as
    /// given.
    ///
    /// `timeout` bounds each query; a query that times out is sent once more before the lookup fails, so a
    /// lookup against a silent server fails after about twice `timeout`.
    ///
    /// Fails with [`DnsError::Config`] when `timeout` is zero or the system configuration cannot be read.
    /// Needs no Tokio runtime; [`DnsResolver::lookup`] does.
    pub fn new(nameserver: Option<SocketAddr>, timeout: Duration) -> Result<Self, DnsError> {
        if timeout.is_zero() {
            return Err(DnsError::Config { reason: "the DNS timeout must be positive".into() });
        }
        match nameserver {
            Some(addr) => Self::single_server(addr, timeout),
            None => {
                let (config, options) = system_conf::read_system_conf().map_err(config_error)?;
                Self::from_system_config(config, options, timeout)
            }
        }
    }

    fn single_server(addr: SocketAddr, timeout: Duration) -> Result<Self, DnsError> {
        let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
            .into_iter()
            .map(|mut connection| {
                connection.port = addr.port();
                connection
            })
            .collect();
        let server = NameServerConfig::new(addr.ip(), true, connections);
        let mut options = ResolverOpts::default();
        // "Only that server": a name in /etc/hosts must not shadow what the server says.
        options.use_hosts_file = ResolveHosts::Never;
        Self::build(vec![server], options, timeout, Vec::new())
    }

    /// Takes the search list out of hickory's hands: hickory tries each candidate name in turn and reports the
    /// last one's result, so a timeout on the right candidate followed by NXDOMAIN on a later one would read as
    /// "nobody is there". [`DnsResolver::lookup`] walks the list itself and stops at the first failure.
    fn from_system_config(config: ResolverConfig, options: ResolverOpts, timeout: Duration) -> Result<Self, DnsError> {
        let (domain, search, name_servers) = config.into_parts();
        // As glibc does: the search list (from resolv.conf's `search` or `domain` line), else the domain part
        // of the host name.
        let search = if search.is_empty() { domain.into_iter().collect() } else { search };
        Self::build(name_servers, options, timeout, search)
    }

    fn build(
        name_servers: Vec<NameServerConfig>,
        mut options: ResolverOpts,
        timeout: Duration,
        search: Vec<Name>,
    ) -> Result<Self, DnsError> {
        let ndots = options.ndots;
        options.timeout = timeout;
        // hickory's `attempts` counts retries after the first try: 1 means two tries in all.
        options.attempts = 1;
        // A cache of size 0 stores nothing (its map is disabled): every lookup goes to the server. Without this a
        // TTL of minutes would hide endpoint changes from the caller's re-resolution.
        options.cache_size = 0;
        let resolver = Resolver::builder_with_config(
            ResolverConfig::from_name_servers(name_servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(options)
        .build()
        .map_err(config_error)?;
        Ok(Self { resolver, search: search.into(), ndots })
    }

    /// Every A and AAAA address of `host`, sorted and deduplicated, asked of the name server on every call (no
    /// caching, whatever the TTL). An IP address literal (`10.0.0.1`, `::1`, `[::1]`) is returned as it is,
    /// without a query.
    ///
    /// Returns `Ok(vec![])` when the server says the name does not exist (NXDOMAIN) or has no address records:
    /// an authoritative "nobody is there". Returns `Err` when it could not find out: [`DnsError::Timeout`],
    /// [`DnsError::Server`] (SERVFAIL, REFUSED, ...), [`DnsError::Transport`] (I/O errors), or
    /// [`DnsError::InvalidName`]. The A and AAAA queries run in parallel and either one failing fails the
    /// lookup, so a partial answer (only the IPv4 addresses because the AAAA query timed out) is never returned
    /// as complete.
    ///
    /// With the system configuration, a name that is not fully qualified (no trailing dot) is tried in each
    /// search domain, after the name as given if it has at least `ndots` dots and before it otherwise. The first
    /// candidate with an address answers; a failure on any candidate fails the lookup, since a later candidate
    /// could be a different service.
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Some(ip) = ip_literal(host) {
            return Ok(vec![ip]);
        }
        for candidate in self.candidates(parse_name(host)?) {
            let addresses = self.addresses_of(host, candidate).await?;
            if !addresses.is_empty() {
                return Ok(addresses);
            }
        }
        Ok(Vec::new())
    }

    /// The fully qualified names to try for `name`, in order.
    fn candidates(&self, name: Name) -> Vec<Name> {
        let as_given = fully_qualified(name.clone());
        if name.is_fqdn() || self.search.is_empty() {
            return vec![as_given];
        }
        let searched = self.search.iter().filter_map(|domain| name.clone().append_domain(domain).ok());
        // `localhost` is answered locally as given; searching would send it to the name servers first.
        if usize::from(name.num_labels()) > self.ndots || name.is_localhost() {
            iter::once(as_given).chain(searched.map(fully_qualified)).collect()
        } else {
            searched.map(fully_qualified).chain(iter::once(as_given)).collect()
        }
    }

    /// The A and AAAA addresses of one fully qualified `name`, sorted.
    async fn addresses_of(&self, host: &str, name: Name) -> Result<Vec<IpAddr>, DnsError> {
        // Two single-type lookups rather than `lookup_ip`: with `LookupIpStrategy::Ipv4AndIpv6`, `lookup_ip`
        // returns one family's addresses as the whole answer when the other query fails, and when both fail
        // reports only the A query's error, so an AAAA timeout can pass for NXDOMAIN.
        let (v4, v6) = tokio::join!(
            self.resolver.lookup(name.clone(), RecordType::A),
            self.resolver.lookup(name, RecordType::AAAA)
        );
        let mut addresses = addresses_in(host, v4)?;
        addresses.extend(addresses_in(host, v6)?);
        addresses.sort_unstable();
        addresses.dedup();
        Ok(addresses)
    }
}

fn fully_qualified(mut name: Name) -> Name {
    name.set_fqdn(true);
    name
}

fn config_error(err: NetError) -> DnsError {
    DnsError::Config { reason: err.to_string() }
}

/// `host` as an IP address, if it is one; also accepts a bracketed IPv6 address as URL authorities spell it.
fn ip_literal(host: &str) -> Option<IpAddr> {
    let unbracketed = host.strip_prefix('[').and_then(|rest| rest.strip_suffix(']'));
    match unbracketed {
        Some(inner) => inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse().ok(),
    }
}

fn parse_name(host: &str) -> Result<Name, DnsError> {
    // An empty string would parse as the root name and be looked up; it is always a caller's mistake.
    if host.is_empty() {
        return Err(DnsError::InvalidName { host: host.into(), reason: "empty host name".into() });
    }
    Name::from_utf8(host).map_err(|err| DnsError::InvalidName { host: host.into(), reason: err.to_string() })
}

/// The addresses of one single-type lookup; an authoritative "no such name" or "no such records" is empty.
fn addresses_in(host: &str, result: Result<Lookup, NetError>) -> Result<Vec<IpAddr>, DnsError> {
    match result {
        // Answers can hold a CNAME chain before the addresses; only the A and AAAA records count.
        Ok(lookup) => Ok(lookup.answers().iter().filter_map(|record| record.data.ip_addr()).collect()),
        Err(NetError::Dns(net::DnsError::NoRecordsFound(NoRecords {
            response_code: ResponseCode::NXDomain | ResponseCode::NoError,
            ..
        }))) => Ok(Vec::new()),
        Err(err) => Err(lookup_error(host, err)),
    }
}

fn lookup_error(host: &str, err: NetError) -> DnsError {
    let host = host.to_owned();
    match err {
        NetError::Timeout => DnsError::Timeout { host },
        NetError::Dns(net::DnsError::ResponseCode(code))
        | NetError::Dns(net::DnsError::NoRecordsFound(NoRecords { response_code: code, .. })) => {
            DnsError::Server { host, rcode: u16::from(code) }
        }
        other => DnsError::Transport { host, reason: other.to_string() },
    }
}

fn rcode_name(rcode: u16) -> &'static str {
    match rcode {
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "an error code",
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicU8, Ordering};

    use tokio::net::UdpSocket;

    use super::*;

    /// What the fake server does with one query.
    #[derive(Clone, Copy)]
    enum Reply {
        Silence,
        Rcode(u8),
        A(Ipv4Addr),
    }

    /// A UDP DNS server on 127.0.0.1 that answers each query as `reply` says for its name (lowercase, with the
    /// trailing dot) and record type.
    async fn fake_server(reply: impl Fn(&str, RecordType) -> Reply + Send + 'static) -> SocketAddr {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind the fake server");
        let addr = socket.local_addr().expect("local addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
                if let Some(response) = respond(&buf[..len], &reply) {
                    let _ = socket.send_to(&response, peer).await;
                }
            }
        });
        addr
    }

    /// The query's header and question, turned into a response with `reply`'s rcode or answer.
    fn respond(query: &[u8], reply: &impl Fn(&str, RecordType) -> Reply) -> Option<Vec<u8>> {
        let mut name = String::new();
        let mut end = 12;
        while *query.get(end)? != 0 {
            let label = query.get(end + 1..end + 1 + usize::from(query[end]))?;
            name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
            name.push('.');
            end += 1 + label.len();
        }
        let qtype = u16::from_be_bytes([*query.get(end + 1)?, *query.get(end + 2)?]);
        let mut response = query.get(..end + 5)?.to_vec();
        response[2] |= 0x80; // a response
        response[3] = 0x80; // recursion available, rcode 0
        response[6..12].fill(0); // no answer, authority or additional records yet
        match reply(&name, RecordType::from(qtype)) {
            Reply::Silence => return None,
            Reply::Rcode(rcode) => response[3] |= rcode,
            Reply::A(ip) => {
                response[7] = 1;
                // The question's name, type A, class IN, a TTL of one hour, 4 bytes of data.
                response.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4]);
                response.extend_from_slice(&ip.octets());
            }
        }
        Some(response)
    }

    const NXDOMAIN: u8 = 3;
    const SERVFAIL: u8 = 2;
    const REFUSED: u8 = 5;
    const TIMEOUT: Duration = Duration::from_millis(200);

    fn resolver(server: SocketAddr) -> DnsResolver {
        DnsResolver::new(Some(server), TIMEOUT).expect("resolver")
    }

    /// A resolver configured as if by this resolv.conf, but asking `server` whatever its `nameserver` line says.
    fn resolver_with_resolv_conf(server: SocketAddr, resolv_conf: &str) -> DnsResolver {
        let (config, options) = system_conf::parse_resolv_conf(resolv_conf).expect("parse resolv.conf");
        let (domain, search, mut name_servers) = config.into_parts();
        for name_server in &mut name_servers {
            name_server.ip = server.ip();
            for connection in &mut name_server.connections {
                connection.port = server.port();
            }
        }
        let config = ResolverConfig::from_parts(domain, search, name_servers);
        DnsResolver::from_system_config(config, options, TIMEOUT).expect("resolver")
    }

    const KUBERNETES: &str =
        "nameserver 127.0.0.1\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n";

    #[tokio::test]
    async fn servfail_is_an_error() {
        let server = fake_server(|_, _| Reply::Rcode(SERVFAIL)).await;
        let result = resolver(server).lookup("svc.test").await;
        assert!(matches!(result, Err(DnsError::Server { rcode: 2, .. })), "{result:?}");
    }

    #[tokio::test]
    async fn refused_is_an_error() {
        let server = fake_server(|_, _| Reply::Rcode(REFUSED)).await;
        let result = resolver(server).lookup("svc.test").await;
        assert!(matches!(result, Err(DnsError::Server { rcode: 5, .. })), "{result:?}");
    }

    #[tokio::test]
    async fn one_family_failing_fails_the_lookup() {
        // hickory's `lookup_ip` would return the A record here and drop the AAAA failure.
        let server = fake_server(|_, qtype| match qtype {
            RecordType::A => Reply::A(Ipv4Addr::new(10, 0, 0, 1)),
            _ => Reply::Rcode(SERVFAIL),
        })
        .await;
        let result = resolver(server).lookup("svc.test").await;
        assert!(matches!(result, Err(DnsError::Server { rcode: 2, .. })), "{result:?}");
    }

    #[tokio::test]
    async fn nxdomain_for_one_family_does_not_hide_a_timeout_for_the_other() {
        // hickory's `lookup_ip` would report the A query's NXDOMAIN, which reads as "nobody is there".
        let server = fake_server(|_, qtype| match qtype {
            RecordType::A => Reply::Rcode(NXDOMAIN),
            _ => Reply::Silence,
        })
        .await;
        let result = resolver(server).lookup("svc.test").await;
        assert!(matches!(result, Err(DnsError::Timeout { .. })), "{result:?}");
    }

    #[tokio::test]
    async fn answers_of_a_plain_server_are_returned() {
        let server = fake_server(|_, qtype| match qtype {
            RecordType::A => Reply::A(Ipv4Addr::new(10, 0, 0, 1)),
            _ => Reply::Rcode(0), // NODATA
        })
        .await;
        assert_eq!(resolver(server).lookup("svc.test").await.expect("lookup"), vec![IpAddr::from([10, 0, 0, 1])]);
    }

    #[tokio::test]
    async fn every_lookup_asks_the_server_whatever_the_ttl() {
        // Each A query gets the next address, with a TTL of an hour: a cache would repeat the first one.
        let queries = Arc::new(AtomicU8::new(0));
        let counted = Arc::clone(&queries);
        let server = fake_server(move |_, qtype| match qtype {
            RecordType::A => Reply::A(Ipv4Addr::new(10, 0, 0, counted.fetch_add(1, Ordering::Relaxed) + 1)),
            _ => Reply::Rcode(NXDOMAIN),
        })
        .await;
        let resolver = resolver(server);
        for n in 1..=3 {
            assert_eq!(resolver.lookup("svc.test").await.expect("lookup"), vec![IpAddr::from([10, 0, 0, n])]);
        }
        assert_eq!(queries.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_single_server_gets_names_as_given() {
        let server = fake_server(|name, qtype| match (name, qtype) {
            ("users.default.svc.cluster.local.", RecordType::A) => Reply::A(Ipv4Addr::new(10, 0, 0, 1)),
            _ => Reply::Rcode(NXDOMAIN),
        })
        .await;
        let resolver = resolver(server);
        let expected = vec![IpAddr::from([10, 0, 0, 1])];
        assert_eq!(resolver.lookup("users.default.svc.cluster.local").await.expect("lookup"), expected);
        assert_eq!(resolver.lookup("users.default.svc.cluster.local.").await.expect("lookup"), expected);
        assert_eq!(resolver.lookup("users").await.expect("no search list"), Vec::<IpAddr>::new());
    }

    #[tokio::test]
    async fn the_search_list_applies_with_the_system_configuration() {
        let server = fake_server(|name, qtype| match (name, qtype) {
            ("users.default.svc.cluster.local.", RecordType::A) => Reply::A(Ipv4Addr::new(10, 0, 0, 1)),
            ("users.svc.cluster.local.", RecordType::A) => Reply::A(Ipv4Addr::new(10, 0, 0, 2)),
            _ => Reply::Rcode(NXDOMAIN),
        })
        .await;
        let resolver = resolver_with_resolv_conf(server, KUBERNETES);
        // The first search domain with an answer wins; a name with fewer than ndots dots is searched first.
        assert_eq!(resolver.lookup("users").await.expect("lookup"), vec![IpAddr::from([10, 0, 0, 1])]);
        assert_eq!(
            resolver.lookup("users.default.svc.cluster.local").await.expect("lookup"),
            vec![IpAddr::from([10, 0, 0, 1])]
        );
        assert_eq!(resolver.lookup("nobody").await.expect("NXDOMAIN everywhere"), Vec::<IpAddr>::new());
    }

    #[tokio::test]
    async fn a_failure_on_a_search_candidate_fails_the_lookup() {
        // The right candidate times out; the next one exists but is another service, and the last is NXDOMAIN.
        // hickory's own search would report that last NXDOMAIN.
        let server = fake_server(|name, qtype| match (name, qtype) {
            ("users.default.svc.cluster.local.", _) => Reply::Silence,
            ("users.svc.cluster.local.", RecordType::A) => Reply::A(Ipv4Addr::new(10, 0, 0, 2)),
            _ => Reply::Rcode(NXDOMAIN),
        })
        .await;
        let result = resolver_with_resolv_conf(server, KUBERNETES).lookup("users").await;
        assert!(matches!(result, Err(DnsError::Timeout { .. })), "{result:?}");
    }

    #[tokio::test]
    async fn invalid_names_are_rejected_without_a_query() {
        let server = fake_server(|_, _| Reply::Silence).await;
        let resolver = resolver(server);
        for host in ["", "a..b", &"x".repeat(64)] {
            let result = resolver.lookup(host).await;
            assert!(matches!(result, Err(DnsError::InvalidName { .. })), "{host:?}: {result:?}");
        }
    }

    #[test]
    fn new_needs_no_runtime_and_rejects_a_zero_timeout() {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 53));
        assert!(DnsResolver::new(Some(addr), Duration::from_secs(1)).is_ok());
        assert!(matches!(DnsResolver::new(Some(addr), Duration::ZERO), Err(DnsError::Config { .. })));
    }

    #[test]
    fn system_configuration_is_read() {
        // Only builds the resolver (reads /etc/resolv.conf and /etc/hosts); sends no query.
        DnsResolver::new(None, Duration::from_secs(1)).expect("resolver from /etc/resolv.conf");
    }

    #[test]
    fn search_order_follows_ndots() {
        let server = SocketAddr::from((Ipv4Addr::LOCALHOST, 53));
        let resolver =
            resolver_with_resolv_conf(server, "nameserver 127.0.0.1\nsearch a.test b.test\noptions ndots:2\n");
        let candidates = |host: &str| -> Vec<String> {
            resolver.candidates(parse_name(host).expect("name")).iter().map(Name::to_string).collect()
        };
        assert_eq!(candidates("svc"), ["svc.a.test.", "svc.b.test.", "svc."]);
        assert_eq!(candidates("svc.ns"), ["svc.ns.a.test.", "svc.ns.b.test.", "svc.ns."]);
        assert_eq!(
            candidates("svc.ns.cluster"),
            ["svc.ns.cluster.", "svc.ns.cluster.a.test.", "svc.ns.cluster.b.test."]
        );
        assert_eq!(candidates("svc.ns."), ["svc.ns."]);
        assert_eq!(candidates("localhost"), ["localhost.", "localhost.a.test.", "localhost.b.test."]);
    }

    #[test]
    fn ip_literals() {
        assert_eq!(ip_literal("10.0.0.1"), Some(IpAddr::from([10, 0, 0, 1])));
        assert_eq!(ip_literal("[::1]"), Some(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)));
        assert_eq!(ip_literal("[10.0.0.1]"), None);
        assert_eq!(ip_literal("svc.test"), None);
    }
}
