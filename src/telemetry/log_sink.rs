//! Where log lines go: a bounded in-memory buffer that one background thread writes to stderr in batches.
//!
//! A request's log line used to cost a `write` system call on the thread serving the request. Here a line is
//! a copy into the buffer under a short lock; the writer thread sleeps for up to [`BATCH_DELAY`] after the
//! first line of a batch and then writes everything gathered with one call, so thousands of lines a second cost
//! a few dozen system calls. Warnings and errors are not held back: they are written at once, after
//! whatever is buffered, so lines stay in order.
//!
//! The buffer is bounded: when stderr cannot keep up (a stalled pipe), lines beyond [`MAX_BUFFERED`] are
//! dropped and counted, and a line saying how many were lost is written when it drains. Memory never grows
//! with a slow reader and no request ever waits on one. A process killed with SIGKILL loses at most the last
//! [`BATCH_DELAY`] of info lines; a normal exit writes everything ([`flush`]).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// How long the writer gathers lines after the first one of a batch.
pub const BATCH_DELAY: Duration = Duration::from_millis(20);
/// Bytes held at most; lines beyond it are dropped (and counted) until the writer catches up.
pub const MAX_BUFFERED: usize = 4 * 1024 * 1024;

/// The process's log sink; the writer thread starts with the first line.
pub fn global() -> &'static LogSink {
    static SINK: OnceLock<LogSink> = OnceLock::new();
    SINK.get_or_init(|| {
        let sink = LogSink::default();
        // A sink without its thread would only fill up: if the thread cannot start, lines go straight out.
        if std::thread::Builder::new().name("portico-log".into()).spawn(|| global().write_batches()).is_err() {
            sink.direct.store(true, Ordering::Relaxed);
        }
        sink
    })
}

/// Writes every buffered line now (called at exit).
pub fn flush() {
    global().write_out();
}

/// See the module documentation.
#[derive(Default)]
pub struct LogSink {
    buffered: Mutex<Buffered>,
    /// Signalled when the first line of a batch arrives.
    arrived: Condvar,
    /// Set when the writer thread could not start: every line is written at once.
    direct: AtomicBool,
}

#[derive(Default)]
struct Buffered {
    lines: Vec<u8>,
    dropped: u64,
}

impl LogSink {
    /// Adds complete lines (each ending in `\n`). `urgent` lines (warnings and errors) are written at once,
    /// after the lines buffered before them.
    pub fn append(&self, lines: &[u8], urgent: bool) {
        if urgent || self.direct.load(Ordering::Relaxed) {
            // stderr's lock first, as everywhere here: whoever holds it writes the next bytes.
            let mut stderr = std::io::stderr().lock();
            let (buffered, dropped) = self.take();
            write_lines(&mut stderr, &buffered, dropped);
            write_lines(&mut stderr, lines, 0);
            return;
        }
        let mut buffered = self.lock();
        if buffered.lines.len() + lines.len() > MAX_BUFFERED {
            buffered.dropped += 1;
            return;
        }
        let first = buffered.lines.is_empty();
        buffered.lines.extend_from_slice(lines);
        if first {
            self.arrived.notify_one();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Buffered> {
        // A panic while holding the lock leaves only bytes behind, which are still fine to write.
        self.buffered.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Empties the buffer, returning its lines and the count of dropped ones.
    fn take(&self) -> (Vec<u8>, u64) {
        let mut buffered = self.lock();
        (std::mem::take(&mut buffered.lines), std::mem::take(&mut buffered.dropped))
    }

    /// The writer thread: waits for a first line, lets a batch gather, writes it.
    fn write_batches(&self) {
        loop {
            {
                let mut buffered = self.lock();
                while buffered.lines.is_empty() {
                    buffered = self.arrived.wait(buffered).unwrap_or_else(std::sync::PoisonError::into_inner);
                }
            }
            std::thread::sleep(BATCH_DELAY);
            self.write_out();
        }
    }

    /// Writes the buffered lines.
    fn write_out(&self) {
        let mut stderr = std::io::stderr().lock();
        let (lines, dropped) = self.take();
        write_lines(&mut stderr, &lines, dropped);
    }
}

fn write_lines(stderr: &mut impl Write, lines: &[u8], dropped: u64) {
    // Nowhere is left to report a failed write to stderr.
    let _ = stderr.write_all(lines);
    if dropped > 0 {
        let _ = writeln!(stderr, "portico: {dropped} log lines were dropped because stderr was not keeping up");
    }
}

/// The sink as a `tracing_subscriber` writer: each formatted event arrives in one `write_all` call.
#[derive(Debug, Clone, Copy)]
pub struct SinkWriter {
    urgent: bool,
}

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        global().append(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Makes [`SinkWriter`]s: warnings and errors urgent, the rest batched.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeSinkWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeSinkWriter {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter { urgent: true }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        SinkWriter { urgent: *meta.level() <= tracing::Level::WARN }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_drops_lines_and_counts_them() {
        // No writer thread: lines stay until written out by hand.
        let sink = LogSink::default();
        let line = vec![b'x'; 1024];
        for _ in 0..(MAX_BUFFERED / line.len()) + 10 {
            sink.append(&line, false);
        }
        let buffered = sink.lock();
        assert_eq!(buffered.lines.len(), MAX_BUFFERED);
        assert_eq!(buffered.dropped, 10);
    }
}
