//! tonic codecs for messages known only at run time: requests go out already encoded (so a retry resends the
//! same bytes); a stream's responses are decoded as `prost_reflect::DynamicMessage`s of the RPC's output type
//! ([`DynamicCodec`]), a unary answer is handed over as its wire bytes ([`WireCodec`]), which the gateway
//! prints as JSON straight from them.

use bytes::{Buf, BufMut, Bytes};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// The decode buffer a server stream starts with. tonic allocates its default of 8 KiB for every call and keeps
/// it for the call's life; a server stream lives as long as its watcher, while its messages (a change event)
/// are a few hundred bytes. The buffer grows when a message needs more, and keeps that size.
pub const STREAM_DECODE_BUFFER: usize = 512;

/// Sends encoded requests; decodes responses as `response` messages.
///
/// A request item is a `Result`: an `Err` aborts the call. A client stream must never end cleanly when the
/// HTTP body behind it broke, or the server would take the items it got as the whole input (and a batch RPC
/// would commit them). Dropping the call future resets the HTTP/2 stream too, but hyper sends the request
/// body from its own task; the encoder error makes the reset explicit instead of depending on that.
#[derive(Debug, Clone)]
pub struct DynamicCodec {
    response: MessageDescriptor,
    /// tonic's buffer settings, or its defaults when None.
    buffers: Option<BufferSettings>,
}

impl DynamicCodec {
    pub fn new(response: MessageDescriptor) -> Self {
        Self { response, buffers: None }
    }

    /// Starts the response decode buffer at `bytes` instead of tonic's 8 KiB (see [`STREAM_DECODE_BUFFER`]).
    #[must_use]
    pub fn with_decode_buffer(self, bytes: usize) -> Self {
        // The yield threshold only concerns encoding: tonic's default. A zero buffer size would make tonic's
        // decompression grow its output by nothing, so at least one byte.
        Self { buffers: Some(BufferSettings::new(bytes.max(1), 32 * 1024)), ..self }
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
        DynamicDecoder { response: self.response.clone(), buffers: self.buffers }
    }
}

/// Sends encoded requests, as [`DynamicCodec`] does; hands each response over undecoded, as its wire bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct WireCodec;

impl Codec for WireCodec {
    type Encode = Result<Bytes, Status>;
    type Decode = Bytes;
    type Encoder = DynamicEncoder;
    type Decoder = WireDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        WireDecoder
    }
}

#[derive(Debug)]
pub struct WireDecoder;

impl Decoder for WireDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
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
    buffers: Option<BufferSettings>,
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        DynamicMessage::decode(self.response.clone(), src)
            .map(Some)
            .map_err(|e| Status::internal(format!("upstream sent an undecodable {}: {e}", self.response.full_name())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.buffers.unwrap_or_default()
    }
}
