//! A tonic codec for `prost_reflect::DynamicMessage`: the gateway calls any RPC it found in the descriptors,
//! with message types known only at run time.

use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Encodes requests of any type; decodes responses as `response` messages.
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
    type Encode = Result<DynamicMessage, Status>;
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
    type Item = Result<DynamicMessage, Status>;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        // EncodeBuf grows as needed, so encoding cannot run out of space.
        item?.encode(dst).map_err(|e| Status::internal(format!("cannot encode request: {e}")))
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
