//! Stopping a server a benchmark started, the way an operator would: SIGTERM, a few seconds to drain, then
//! SIGKILL. Shared by the benchmark binaries (included with `#[path]`; each bench is its own crate).

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server gets to drain after SIGTERM.
const GRACE: Duration = Duration::from_secs(5);

/// Sends SIGTERM to `child` (named `name` in the warning), waits up to [`GRACE`] for it to exit, then kills it.
pub fn terminate(child: &mut Child, name: &str) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // std cannot send SIGTERM, and the crate forbids the unsafe code a libc call needs; kill(1) can.
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).stderr(Stdio::null()).status();
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    eprintln!("portico {name} did not stop within {GRACE:?} of SIGTERM; killing it");
    let _ = child.kill();
    let _ = child.wait();
}
