//! Log lines to stderr (through the batching sink of `log_sink.rs`), as text or JSON. With tracing on, a line
//! logged inside a traced request ends with its `trace_id`, so it leads to the trace; the gateway's request
//! line itself is formatted by `access_log.rs` in the same format.
//!
//! A line's trace id comes from the request span current on its task (`spans.rs`), looked up only for a line
//! that is written. Spans of other crates (shown with `RUST_LOG=h2=debug` and the like) prefix lines as usual.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::telemetry::{access_log, log_sink, spans, traces};

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The formatting layer for `format`.
pub fn layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    // Colours only for a person at a terminal; files and log shippers get plain text.
    let ansi = std::io::stderr().is_terminal();
    access_log::configure(format, ansi);
    let fmt = tracing_subscriber::fmt::layer().with_writer(log_sink::MakeSinkWriter).with_ansi(ansi);
    match format {
        LogFormat::Text => {
            // The formatter's own ANSI setting, as the line may be formatted into a buffer first.
            let text = tracing_subscriber::fmt::format().with_ansi(ansi);
            fmt.event_format(WithTraceId { inner: text, json: false }).boxed()
        }
        LogFormat::Json => {
            // Other crates' spans go with each event, as with text.
            let json = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true);
            fmt.fmt_fields(JsonFields::new()).event_format(WithTraceId { inner: json, json: true }).boxed()
        }
    }
}

/// The trace id of the request span current on this task, when spans are exported.
fn current_trace_id() -> Option<traces::TraceIdHex> {
    let span_context = spans::current_span_context()?;
    span_context.is_valid().then(|| traces::TraceIdHex::new(&span_context))
}

/// An event formatter that adds `trace_id` to a line written inside a traced span: last in a text line,
/// a field of a JSON one.
struct WithTraceId<E> {
    inner: E,
    json: bool,
}

impl<S, N, E> FormatEvent<S, N> for WithTraceId<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let Some(trace_id) = current_trace_id() else {
            return self.inner.format_event(ctx, writer, event);
        };
        // The line as the inner formatter writes it (into a buffer this thread keeps), then the trace id in
        // front of its end: the last field of a text line, one more member of a JSON object.
        thread_local! {
            static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            self.inner.format_event(ctx, Writer::new(line), event)?;
            let body = line.strip_suffix('\n').unwrap_or(line);
            let trace_id = trace_id.as_str();
            match body.strip_suffix('}') {
                Some(object) if self.json => writeln!(writer, "{object},\"trace_id\":\"{trace_id}\"}}"),
                _ => writeln!(writer, "{body} trace_id={trace_id}"),
            }
        })
    }
}
