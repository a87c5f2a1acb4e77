//! A cap on open server streams (SSE and NDJSON): a stream takes a slot before its upstream call starts and
//! holds it until its response body is dropped (the stream ended, or the client went away). Without a free
//! slot the request is answered 503 at once, and the upstream never sees it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::gateway::error::GatewayError;

/// The stream slots of a gateway; unlimited when no cap is configured.
#[derive(Debug, Clone)]
pub struct StreamSlots {
    slots: Option<(Arc<Semaphore>, usize)>,
}

/// A taken slot; give it to [`StreamSlot::hold_until_body_ends`].
#[derive(Debug)]
pub struct StreamSlot(Option<OwnedSemaphorePermit>);

impl StreamSlots {
    pub fn new(max_streams: Option<usize>) -> Self {
        Self { slots: max_streams.map(|max| (Arc::new(Semaphore::new(max)), max)) }
    }

    /// A slot for one more stream.
    ///
    /// # Errors
    ///
    /// 503 UNAVAILABLE (with `Retry-After`) when every slot is taken.
    pub fn take(&self) -> Result<StreamSlot, GatewayError> {
        let Some((slots, max)) = &self.slots else { return Ok(StreamSlot(None)) };
        Arc::clone(slots).try_acquire_owned().map(|permit| StreamSlot(Some(permit))).map_err(|_| {
            crate::telemetry::metrics::gateway().reject("streams");
            GatewayError::Unavailable {
                message: format!("the gateway has its limit of {max} streams open; retry shortly"),
                retry_after: std::time::Duration::from_secs(1),
            }
        })
    }
}

impl StreamSlot {
    /// The response, with the slot freed when its body is dropped.
    pub fn hold_until_body_ends(self, response: Response) -> Response {
        if self.0.is_none() {
            return response;
        }
        response.map(|body| Body::new(SlotBody { inner: body, _slot: self }))
    }
}

pin_project_lite::pin_project! {
    struct SlotBody {
        #[pin]
        inner: Body,
        _slot: StreamSlot,
    }
}

impl http_body::Body for SlotBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
