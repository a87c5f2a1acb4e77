//! A client stream that the client resets is a failed call, never a short one.
//!
//! tonic's request decoder reads a request body that ends in an HTTP/2 reset with CANCEL (what grpc-go and
//! others send when a call is cancelled, and what any h2 client sends when it drops a stream) as the clean end
//! of the stream (`codec/decode.rs`: a `Cancelled` error on a request body ends it). For BatchCreateUsers that
//! means a batch cut off halfway looks whole: the handler stores the items that arrived, unless hyper happens to
//! drop the handler first (it checks for the reset only while the handler is pending). [`ResetFailsStreamLayer`]
//! closes that race for the server's client-streaming methods: their request body turns a CANCEL into ABORTED,
//! which the decoder passes on as the error it is, so the handler fails before it stores anything.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use prost_reflect::DescriptorPool;
use tonic::{Code, Status};
use tower::{Layer, Service};

/// Wraps the request body of every client-streaming method in [`ResetFails`].
#[derive(Debug, Clone)]
pub struct ResetFailsStreamLayer {
    /// `/package.Service/Method` of each client-streaming method; a handful, so a linear scan.
    client_streaming: Arc<[String]>,
}

impl ResetFailsStreamLayer {
    /// For the client-streaming methods of every service in `pool`.
    pub fn for_pool(pool: &DescriptorPool) -> Self {
        let client_streaming = pool
            .services()
            .flat_map(|service| service.methods().collect::<Vec<_>>())
            .filter(prost_reflect::MethodDescriptor::is_client_streaming)
            .map(|method| format!("/{}/{}", method.parent_service().full_name(), method.name()))
            .collect();
        Self { client_streaming }
    }
}

impl<S> Layer<S> for ResetFailsStreamLayer {
    type Service = ResetFailsStream<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResetFailsStream { inner, client_streaming: Arc::clone(&self.client_streaming) }
    }
}

/// See [`ResetFailsStreamLayer`].
#[derive(Debug, Clone)]
pub struct ResetFailsStream<S> {
    inner: S,
    client_streaming: Arc<[String]>,
}

impl<S> Service<Request<tonic::body::Body>> for ResetFailsStream<S>
where
    S: Service<Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let path = request.uri().path();
        if self.client_streaming.iter().any(|method| method == path) {
            return self.inner.call(request.map(|body| tonic::body::Body::new(ResetFails { inner: body })));
        }
        self.inner.call(request)
    }
}

pin_project_lite::pin_project! {
    /// A request body whose CANCEL error becomes ABORTED (see the module's text).
    pub struct ResetFails<B> {
        #[pin]
        inner: B,
    }
}

impl<B> Body for ResetFails<B>
where
    B: Body<Data = Bytes, Error = Status>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(match ready!(self.project().inner.poll_frame(cx)) {
            Some(Err(status)) if status.code() == Code::Cancelled => Some(Err(Status::aborted(format!(
                "the client reset the request stream before ending it ({}); nothing it sent was used",
                status.message()
            )))),
            other => other,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codec::{DecodeBuf, Decoder, Streaming};
    use tower::ServiceExt;

    /// Each gRPC message decodes to its length.
    struct Lengths;

    impl Decoder for Lengths {
        type Item = usize;
        type Error = Status;

        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<usize>, Status> {
            let length = bytes::Buf::remaining(buf);
            bytes::Buf::advance(buf, length);
            Ok(Some(length))
        }
    }

    /// One three-byte message, then the stream is reset with CANCEL.
    fn one_message_then_reset() -> tonic::body::Body {
        let frames: Vec<Result<Frame<Bytes>, Status>> = vec![
            Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 3, 1, 2, 3]))),
            Err(Status::cancelled("stream reset by peer: CANCEL")),
        ];
        tonic::body::Body::new(http_body_util::StreamBody::new(futures::stream::iter(frames)))
    }

    /// What a handler reading the request stream sees: its messages, then how the stream ended.
    async fn read_stream(request: Request<tonic::body::Body>) -> Result<(Vec<usize>, Result<(), Status>), Status> {
        let mut stream = Streaming::new_request(Lengths, request.into_body(), None, None);
        let mut items = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok((items, Ok(()))),
                Err(status) => return Ok((items, Err(status))),
            }
        }
    }

    #[tokio::test]
    async fn a_reset_client_stream_fails_instead_of_ending() -> Result<(), Box<dyn std::error::Error>> {
        // Without the layer, tonic reads the reset as the end: the hole this layer closes.
        let request = Request::builder().uri("/user.UserService/BatchCreateUsers").body(one_message_then_reset())?;
        let (items, end) = read_stream(request).await?;
        assert_eq!((items, end.is_ok()), (vec![3], true), "tonic alone ends the stream cleanly");

        let mut service =
            ResetFailsStreamLayer::for_pool(&crate::proto::DESCRIPTOR_POOL).layer(tower::service_fn(read_stream));
        let request = Request::builder().uri("/user.UserService/BatchCreateUsers").body(one_message_then_reset())?;
        let (items, end) = service.ready().await?.call(request).await?;
        assert_eq!(items, vec![3], "the message before the reset still arrives");
        let status = end.expect_err("a reset stream fails");
        assert_eq!(status.code(), Code::Aborted);
        assert!(status.message().contains("reset the request stream"), "{}", status.message());

        // A unary method's body is left as it is.
        let request = Request::builder().uri("/user.UserService/GetUser").body(one_message_then_reset())?;
        let (_, end) = service.ready().await?.call(request).await?;
        assert!(end.is_ok(), "only client-streaming methods are wrapped");
        Ok(())
    }
}
