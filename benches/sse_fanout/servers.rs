//! The two `portico` processes the benchmark measures: each started as its own child, so its memory and CPU can
//! be read from /proc, and stopped (SIGTERM, then SIGKILL) when dropped, on error paths too.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::stop;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `portico` child and the address it logged.
pub struct Server {
    name: String,
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts `portico <args>`, under `wrapper` (a profiler's command line) when there is one, and waits for its
    /// `<marker> addr=…` log line. Its other log lines (warnings, with the benchmark's filter) are echoed to
    /// stderr with the server's name.
    pub fn start(
        name: &str,
        marker: &'static str,
        wrapper: &[String],
        args: &[OsString],
        log_filter: &str,
    ) -> Result<Self, BoxError> {
        let portico = env!("CARGO_BIN_EXE_portico");
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(portico);
                command
            }
            None => Command::new(portico),
        };
        let child = command
            .args(args)
            .env("RUST_LOG", log_filter)
            // The address is parsed from the text format.
            .env_remove("PORTICO_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start portico {name}: {e}"))?;
        // Owned before anything else can fail, so that every early return stops the process.
        let mut server = Server { name: name.to_string(), child, addr: SocketAddr::from(([127, 0, 0, 1], 0)) };
        let stderr = server.child.stderr.take().ok_or("stderr is piped")?;
        let (addr_tx, addr_rx) = mpsc::channel();
        // Also keeps the pipe drained, so the server never blocks on a full stderr.
        thread::spawn({
            let name = name.to_string();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let addr = line
                        .contains(marker)
                        .then(|| line.split("addr=").nth(1)?.split_whitespace().next()?.parse::<SocketAddr>().ok())
                        .flatten();
                    match addr {
                        Some(addr) => {
                            let _ = addr_tx.send(addr);
                        }
                        None => eprintln!("[{name}] {line}"),
                    }
                }
            }
        });
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        match addr_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(addr) => server.addr = addr,
            Err(_) => {
                let status = server.child.try_wait().ok().flatten();
                let how = status.map_or("did not".to_string(), |s| format!("exited ({s}) and did not"));
                return Err(format!("portico {name} {how} log `{marker} addr=…` (RUST_LOG={log_filter})").into());
            }
        }
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Err when the process has exited, naming it.
    pub fn ensure_running(&mut self) -> Result<(), BoxError> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(format!("portico {} has exited ({status})", self.name).into()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop::terminate(&mut self.child, &self.name);
    }
}
