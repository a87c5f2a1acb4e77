//! The spans Portico exports, made with OpenTelemetry's API directly, and the request span that code running
//! inside a request finds without being handed it.
//!
//! None of them is a `tracing` span turned into an OpenTelemetry one by a bridge: a bridged span costs a slot in
//! the subscriber's registry, its fields visited into a builder, an enter and an exit on every poll of the
//! request's future and a conversion when it closes, which was most of what tracing added to a request. What the
//! bridge gave in return is kept here at a fraction of the cost: a request's server span (the gateway's HTTP
//! request, the UserService's call) is current for the request's future through a task-local
//! ([`RequestSpan::scope`]), set and unset once per poll, so that
//! - the store's statement spans take it as their parent ([`current_span_context`]),
//! - a log line written inside it ends with its trace id (`logs.rs`),
//! - a warning or an error logged inside it becomes one of its events ([`WarningsAsEvents`]).

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry::trace::{Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context as LayerContext;

use crate::telemetry::traces;

tokio::task_local! {
    static CURRENT: RequestSpan;
}

/// Starts a span of the process's tracer, the child of `parent` (a span of this process or a remote one), or
/// the root of a new trace. `None` while traces are not exported; a span the sampler drops is returned but
/// records nothing.
pub fn start(
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
    parent: Option<&SpanContext>,
) -> Option<opentelemetry_sdk::trace::Span> {
    Some(start_with(traces::tracer()?, name, kind, attributes, parent))
}

fn start_with(
    tracer: &SdkTracer,
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
    parent: Option<&SpanContext>,
) -> opentelemetry_sdk::trace::Span {
    let parent = parent.map_or_else(Context::new, |parent| Context::new().with_remote_span_context(parent.clone()));
    tracer.span_builder(name).with_kind(kind).with_attributes(attributes).start_with_context(tracer, &parent)
}

/// The server span of one request, shared by the layer that made it and whatever runs inside the request.
/// It ends when [`end`](Self::end) is called or its last handle is dropped.
#[derive(Clone)]
pub struct RequestSpan(Arc<Shared>);

struct Shared {
    context: SpanContext,
    span: Mutex<opentelemetry_sdk::trace::Span>,
}

impl RequestSpan {
    /// Starts a server span (see [`start`]); `None` while traces are not exported.
    pub fn start(
        name: impl Into<Cow<'static, str>>,
        attributes: Vec<KeyValue>,
        parent: Option<&SpanContext>,
    ) -> Option<Self> {
        Some(Self::new(start(name, SpanKind::Server, attributes, parent)?))
    }

    fn new(span: opentelemetry_sdk::trace::Span) -> Self {
        let context = span.span_context().clone();
        Self(Arc::new(Shared { context, span: Mutex::new(span) }))
    }

    /// The span's context: its trace id for the logs, its ids for `traceresponse` and its children.
    pub fn span_context(&self) -> &SpanContext {
        &self.0.context
    }

    /// Makes this the current request span while `future` is polled.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }

    /// Makes this the current request span while `run` runs (code outside the request's future: its
    /// creation, or the line written when its response is done with).
    pub fn sync_scope<R>(&self, run: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self.clone(), run)
    }

    pub fn set_attribute(&self, attribute: KeyValue) {
        self.with_span(|span| span.set_attribute(attribute));
    }

    /// Marks the span as failed (its status: error).
    pub fn set_error(&self) {
        self.with_span(|span| span.set_status(Status::error("")));
    }

    pub fn add_event(&self, name: impl Into<Cow<'static, str>>, attributes: Vec<KeyValue>) {
        self.with_span(|span| span.add_event(name, attributes));
    }

    /// Ends the span now (it is exported from here); later changes are ignored.
    pub fn end(&self) {
        self.with_span(opentelemetry::trace::Span::end);
    }

    fn with_span(&self, change: impl FnOnce(&mut opentelemetry_sdk::trace::Span)) {
        let mut span = self.0.span.lock().unwrap_or_else(PoisonError::into_inner);
        if span.is_recording() {
            change(&mut span);
        }
    }
}

/// The context of the request span current on this task, if any.
pub fn current_span_context() -> Option<SpanContext> {
    CURRENT.try_with(|span| span.span_context().clone()).ok()
}

/// The request span current on this task, if any.
fn with_current(use_span: impl FnOnce(&RequestSpan)) {
    let _ = CURRENT.try_with(use_span);
}

/// A `tracing` layer that adds each warning and error logged inside a request to the request's span, as an
/// event named after the line's message with its fields as attributes; an error also marks the span as
/// failed. The request's routine lines (the UserService's "grpc call" at info, say) are not events: they say
/// nothing the span's attributes do not.
#[derive(Debug, Clone, Copy, Default)]
pub struct WarningsAsEvents;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarningsAsEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _context: LayerContext<'_, S>) {
        let level = *event.metadata().level();
        if level > tracing::Level::WARN {
            return;
        }
        with_current(|span| {
            let mut fields = EventFields {
                message: None,
                attributes: vec![
                    KeyValue::new("level", level.as_str()),
                    KeyValue::new("target", event.metadata().target()),
                ],
            };
            event.record(&mut fields);
            let name = fields.message.unwrap_or_else(|| event.metadata().name().to_owned());
            span.add_event(name, fields.attributes);
            if level == tracing::Level::ERROR {
                span.set_error();
            }
        });
    }
}

/// An event's fields as span event attributes; its message becomes the event's name.
struct EventFields {
    message: Option<String>,
    attributes: Vec<KeyValue>,
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
        } else {
            self.attributes.push(KeyValue::new(field.name(), value.to_owned()));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(value) => self.record_i64(field, value),
            Err(_) => self.attributes.push(KeyValue::new(field.name(), value.to_string())),
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use opentelemetry::trace::{SpanKind, Status, TracerProvider as _};
    use opentelemetry::{KeyValue, Value};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::{RequestSpan, WarningsAsEvents, current_span_context, start_with};

    /// Keeps what it is given.
    #[derive(Debug, Clone, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).extend(batch);
            Ok(())
        }
    }

    fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
        attributes.iter().find(|attribute| attribute.key.as_str() == key).map(|attribute| &attribute.value)
    }

    #[tokio::test]
    async fn warnings_inside_a_request_become_events_of_its_span_and_its_children_find_it() {
        let kept = Kept::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(kept.clone()).build();
        let tracer = provider.tracer("test");
        let request = RequestSpan::new(start_with(&tracer, "GET /things/{id}", SpanKind::Server, Vec::new(), None));
        let subscriber = tracing_subscriber::registry().with(WarningsAsEvents);
        let _default = tracing::subscriber::set_default(subscriber);

        tracing::warn!(outside = true, "not inside any request");
        let child_parent = request
            .clone()
            .scope(async {
                tracing::info!("routine, not an event");
                tracing::warn!(attempts = 3_u64, endpoint = "10.0.0.7:50051", "upstream slow");
                tokio::task::yield_now().await;
                current_span_context()
            })
            .await;
        request.sync_scope(|| tracing::error!(code = "INTERNAL", "call failed"));
        assert!(current_span_context().is_none(), "the span is current only inside its scopes");
        request.end();

        let spans = kept.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let [span] = spans.as_slice() else { panic!("one span expected: {spans:#?}") };
        assert_eq!(child_parent.as_ref(), Some(&span.span_context), "children find the request span");
        let events: Vec<_> = span.events.iter().collect();
        assert_eq!(events.len(), 2, "{events:#?}");
        assert_eq!(events[0].name, "upstream slow");
        assert_eq!(attribute(&events[0].attributes, "level"), Some(&Value::from("WARN")));
        assert_eq!(attribute(&events[0].attributes, "attempts"), Some(&Value::I64(3)));
        assert_eq!(attribute(&events[0].attributes, "endpoint"), Some(&Value::from("10.0.0.7:50051")));
        assert_eq!(events[1].name, "call failed");
        assert_eq!(attribute(&events[1].attributes, "code"), Some(&Value::from("INTERNAL")));
        assert_eq!(span.status, Status::error(""), "an error logged inside marks the span as failed");
    }
}
