//! A tonic codec for messages known only at run time: requests go out already encoded (so a retry resends the
//! same bytes), responses are decoded as `prost_reflect::DynamicMessage`s of the RPC's output type.

use bytes::{BufMut, Bytes};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends encoded requests; decodes responses as `response` messages.
///
/// A request item is a `Result`: an `Err` aborts the call. A client stream must never end cleanly when the
/// HTTP body behind it broke, or the server would take the items it got as the whole input (and a batch RPC
/// would commit them). Dropping the call future resets the HTTP/2 stream too, but hyper sends the request
/// body from its own task; the encoder error makes the reset explicit instead of depending on that.
#[derive(Debug, Clone)]
pub struct DynamicCodec {
    response: MessageDescriptor,
}

impl DynamicCodec {
    pub fn new(response: MessageDescriptor) -> Self {
        Self { response }
    }
}

impl Codec for DynamicCodec {
    type Encode = Result<Bytes, Status>;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder { response: self.response.clone() }
    }
}

#[derive(Debug)]
pub struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = Result<Bytes, Status>;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        // EncodeBuf grows as needed.
        dst.put_slice(&item?);
        Ok(())
    }
}

#[derive(Debug)]
pub struct DynamicDecoder {
    response: MessageDescriptor,
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        DynamicMessage::decode(self.response.clone(), src)
            .map(Some)
            .map_err(|e| Status::internal(format!("upstream sent an undecodable {}: {e}", self.response.full_name())))
    }
}
