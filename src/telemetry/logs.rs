//! Log lines to stderr, as text or JSON. A request's lines carry its span's fields, `trace_id` among them
//! when tracing is on, so a line leads to its trace.

use std::io::IsTerminal;

use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

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
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    // Colours only for a person at a terminal; files and log shippers get plain text.
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => fmt.boxed(),
        // The current span and its parents go with each event, so every line of a request has its trace id.
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(true).with_span_list(true).boxed(),
    }
}
