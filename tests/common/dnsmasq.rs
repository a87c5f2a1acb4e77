//! A real, throwaway `dnsmasq` for DNS tests: authoritative only for the names a test gives it, TTL 0, on
//! 127.0.0.1 at a free port, killed on drop.
//!
//! Records live in a hosts directory (`--hostsdir`) that dnsmasq watches with inotify, so [`Dnsmasq::set`]
//! changes answers without a restart or a signal. Each name has its own file, replaced atomically: written in a
//! staging directory beside it, then renamed over the old one (dnsmasq sees `IN_MOVED_TO`, drops the old file's
//! records and reads the new file in one step, so it never serves a half-written file). Removing a name deletes
//! its file (`IN_DELETE`). Both were checked against dnsmasq 2.90 (Debian 12's `dnsmasq-base`).
//!
//! Everything here blocks (std sockets, short sleeps): it runs in test setup, where a few milliseconds on the
//! runtime thread do not matter, and it needs no runtime of its own.

use std::fs::{self, File};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The dnsmasq binary: `$DNSMASQ`, else Debian's dnsmasq-base.
fn binary() -> String {
    std::env::var("DNSMASQ").unwrap_or_else(|_| "/usr/sbin/dnsmasq".to_string())
}
/// Starts that lose the race for their port (another process took it after we released it) are retried.
const START_ATTEMPTS: usize = 5;
/// How long to wait for dnsmasq to come up or to serve an update before failing the test.
const WAIT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(10);
const QUERY_TIMEOUT: Duration = Duration::from_millis(250);
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// A running dnsmasq child process; killed (and its temp dir deleted) when dropped.
pub struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq on 127.0.0.1:<free port> (UDP and TCP), authoritative only for names it is given (no
    /// upstream servers, no /etc/hosts, no config file), TTL 0, in the foreground as a child process, with its
    /// records in a temp dir it watches. Waits until it answers before returning; panics if it does not.
    pub fn start() -> Self {
        let binary = binary();
        assert!(
            Path::new(&binary).exists(),
            "{binary} not found: run scripts/install-test-deps (or set DNSMASQ=/path/to/dnsmasq) to run the DNS tests"
        );
        let dir = tempfile::tempdir().expect("temp dir for dnsmasq");
        fs::create_dir(dir.path().join("hosts")).expect("create the hosts dir");
        fs::create_dir(dir.path().join("staging")).expect("create the staging dir");
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let mut child = spawn(dir.path(), port);
            match wait_until_answering(&mut child, addr, dir.path()) {
                Ok(()) => return Self { child, addr, dir },
                Err(status) => {
                    let log = read_log(dir.path());
                    assert!(
                        log.contains("Address already in use"),
                        "dnsmasq exited at startup ({status}); log:\n{log}"
                    );
                    eprintln!("dnsmasq lost port {port} to another process; retrying on another");
                }
            }
        }
        panic!("dnsmasq could not bind a free port in {START_ATTEMPTS} attempts");
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the addresses of `name` (an empty slice removes the name, so it answers NXDOMAIN). Returns only
    /// once dnsmasq serves exactly the new A and AAAA answers; panics if it does not within a few seconds.
    pub fn set(&self, name: &str, ips: &[IpAddr]) {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        assert!(
            !name.is_empty()
                && !name.starts_with('.')
                && !name.contains("..")
                && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.'),
            "Dnsmasq::set takes a plain host name, not {name:?}"
        );
        let live = self.dir.path().join("hosts").join(&name);
        if ips.is_empty() {
            match fs::remove_file(&live) {
                Err(err) if err.kind() != ErrorKind::NotFound => panic!("remove {}: {err}", live.display()),
                _ => {}
            }
        } else {
            // The staging dir is on the same file system, so the rename is atomic; it is outside the hosts dir,
            // so dnsmasq never sees the file while it is being written.
            let staged = self.dir.path().join("staging").join(&name);
            let contents: String = ips.iter().map(|ip| format!("{ip} {name}\n")).collect();
            write_file(&staged, &contents).unwrap_or_else(|err| panic!("write {}: {err}", staged.display()));
            fs::rename(&staged, &live).unwrap_or_else(|err| panic!("rename into {}: {err}", live.display()));
        }

        let expected = sorted(ips.to_vec());
        let deadline = Instant::now() + WAIT;
        loop {
            let served = self.addresses(&name);
            if served.as_ref() == Ok(&expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not serve {name} = {expected:?} within {WAIT:?}; last answer: {served:?}; its log:\n{}",
                self.log()
            );
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The A and AAAA addresses dnsmasq serves for `name` right now, sorted (empty for NXDOMAIN / no data).
    fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, String> {
        let mut all = Vec::new();
        for qtype in [TYPE_A, TYPE_AAAA] {
            let answer = query(self.addr, name, qtype)?;
            match answer.rcode {
                RCODE_NOERROR | RCODE_NXDOMAIN => all.extend(answer.addresses),
                rcode => return Err(format!("rcode {rcode} for type {qtype}")),
            }
        }
        Ok(sorted(all))
    }

    fn log(&self) -> String {
        read_log(self.dir.path())
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Polls until the freshly spawned dnsmasq answers a query. `Err` with its exit status if it exits first (the
/// port was taken, say); kills it and panics if it neither answers nor exits in time.
fn wait_until_answering(child: &mut Child, addr: SocketAddr, dir: &Path) -> Result<(), ExitStatus> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("poll the dnsmasq child") {
            return Err(status);
        }
        // Any answer will do: this name is not there, so it is NXDOMAIN.
        if query(addr, "startup-probe.invalid", TYPE_A).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            stop(child);
            panic!("dnsmasq did not answer within {WAIT:?}; its log:\n{}", read_log(dir));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

fn stop(child: &mut Child) {
    // Errors mean it has already exited (and, for `wait`, been reaped): nothing left to do.
    let _ = child.kill();
    let _ = child.wait();
}

/// What dnsmasq wrote to stderr, for failure messages.
fn read_log(dir: &Path) -> String {
    fs::read(dir.join("dnsmasq.log"))
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|err| format!("(no log: {err})"))
}

fn spawn(dir: &Path, port: u16) -> Child {
    let log = File::create(dir.join("dnsmasq.log")).expect("create the dnsmasq log");
    Command::new(binary())
        .args([
            // No /etc/dnsmasq.conf (nor the /etc/dnsmasq.d it may pull in): only the options below.
            "--conf-file=/dev/null",
            // Foreground, as one process: debug mode answers TCP inline instead of forking helpers that could
            // outlive the kill on drop, and does not drop privileges.
            "--no-daemon",
            // And if it did: as root dnsmasq would switch to `nobody`, which cannot read the 0700 temp dir, and
            // would go on running with no records (it only logs "bad dynamic directory"). Harmless as non-root.
            "--user=root",
            "--listen-address=127.0.0.1",
            // Bind 127.0.0.1 itself, not the wildcard address, so parallel instances and other DNS servers on
            // the machine do not collide.
            "--bind-interfaces",
            &format!("--port={port}"),
            // Authoritative for its own names only: no upstream servers, no /etc/hosts, and every other name
            // is local, so it answers NXDOMAIN (and NODATA for a missing type) rather than REFUSED.
            "--no-resolv",
            "--no-poll",
            "--no-hosts",
            "--local=/#/",
            &format!("--hostsdir={}", dir.join("hosts").display()),
            // TTL 0: no answer may be cached anywhere, so each update is visible at once. (That the resolver
            // ignores long TTLs is a unit test in dns.rs.)
            "--local-ttl=0",
            // No pid file, logs to stderr (which goes to dnsmasq.log in the temp dir).
            "--pid-file=",
            "--log-facility=-",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|err| panic!("start {}: {err}", binary()))
}

/// A port free on 127.0.0.1 for both UDP and TCP right now. Another process may take it before dnsmasq binds
/// it; `Dnsmasq::start` retries when that happens.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a UDP socket on 127.0.0.1");
        let port = udp.local_addr().expect("local addr").port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

fn write_file(path: &Path, contents: &str) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

fn sorted(mut ips: Vec<IpAddr>) -> Vec<IpAddr> {
    ips.sort_unstable();
    ips.dedup();
    ips
}

const RCODE_NOERROR: u8 = 0;
const RCODE_NXDOMAIN: u8 = 3;

/// One DNS answer, as far as these tests need it.
#[derive(Debug)]
struct Answer {
    rcode: u8,
    truncated: bool,
    addresses: Vec<IpAddr>,
}

/// Asks `server` for the `qtype` records of `name` over UDP, and over TCP when the UDP answer is truncated,
/// with a hand-built query: the harness must not depend on the resolver it tests.
fn query(server: SocketAddr, name: &str, qtype: u16) -> Result<Answer, String> {
    static NEXT_ID: AtomicU16 = AtomicU16::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);

    let mut packet = Vec::with_capacity(64);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00]); // flags: a standard query, recursion desired
    packet.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question, no other records
    for label in name.split('.') {
        let len = u8::try_from(label.len()).ok().filter(|len| (1..=63).contains(len));
        let len = len.ok_or_else(|| format!("bad label {label:?} in {name:?}"))?;
        packet.push(len);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes()); // class IN

    let answer = parse(&exchange_udp(server, &packet)?, id).ok_or("malformed answer over UDP")?;
    if !answer.truncated {
        return Ok(answer);
    }
    let answer = parse(&exchange_tcp(server, &packet)?, id).ok_or("malformed answer over TCP")?;
    if answer.truncated { Err("truncated answer over TCP".into()) } else { Ok(answer) }
}

fn exchange_udp(server: SocketAddr, packet: &[u8]) -> Result<Vec<u8>, String> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|err| format!("bind: {err}"))?;
    socket.connect(server).map_err(|err| format!("connect: {err}"))?;
    socket.set_read_timeout(Some(QUERY_TIMEOUT)).map_err(|err| format!("set timeout: {err}"))?;
    socket.send(packet).map_err(|err| format!("send: {err}"))?;
    let mut buf = vec![0u8; 65_535];
    let len = socket.recv(&mut buf).map_err(|err| format!("no answer over UDP: {err}"))?;
    buf.truncate(len);
    Ok(buf)
}

fn exchange_tcp(server: SocketAddr, packet: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect_timeout(&server, QUERY_TIMEOUT).map_err(|err| format!("connect: {err}"))?;
    stream.set_read_timeout(Some(QUERY_TIMEOUT)).map_err(|err| format!("set timeout: {err}"))?;
    // Over TCP each message is preceded by its length.
    let len = u16::try_from(packet.len()).map_err(|_| "query too long")?;
    stream.write_all(&[&len.to_be_bytes()[..], packet].concat()).map_err(|err| format!("send: {err}"))?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).map_err(|err| format!("no answer over TCP: {err}"))?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).map_err(|err| format!("short answer over TCP: {err}"))?;
    Ok(buf)
}

/// Parses the header, skips the questions and collects the A and AAAA records of the answer section. `None`
/// when the message is cut short or is not the response to query `id`.
fn parse(message: &[u8], id: u16) -> Option<Answer> {
    let word = |at: usize| message.get(at..at + 2).map(|bytes| u16::from_be_bytes([bytes[0], bytes[1]]));
    let flags = word(2)?;
    let is_response = flags & 0x8000 != 0;
    if word(0)? != id || !is_response {
        return None;
    }
    let truncated = flags & 0x0200 != 0;
    let rcode = (flags & 0x000f) as u8;
    let (questions, answers) = (word(4)?, word(6)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(message, at)? + 4; // type and class
    }
    let mut addresses = Vec::new();
    for _ in 0..answers {
        at = skip_name(message, at)?;
        let rtype = word(at)?;
        let rdlen = usize::from(word(at + 8)?); // after type, class and TTL
        at += 10;
        let rdata = message.get(at..at + rdlen)?;
        at += rdlen;
        match (rtype, rdata.len()) {
            (TYPE_A, 4) => addresses.push(IpAddr::V4(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]))),
            (TYPE_AAAA, 16) => addresses.push(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(rdata).ok()?))),
            _ => {}
        }
    }
    Some(Answer { rcode, truncated, addresses })
}

/// The offset just past the (possibly compressed) name at `at`.
fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *message.get(at)?;
        match len {
            0 => return Some(at + 1),
            // A compression pointer ends the name.
            len if len & 0xc0 == 0xc0 => return Some(at + 2),
            len => at += 1 + usize::from(len),
        }
    }
}
