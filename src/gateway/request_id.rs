//! Request ids for requests that arrive without an `X-Request-Id`: random (version 4) UUIDs.
//!
//! tower-http's `MakeRequestUuid` draws each one from the operating system's generator, a `getrandom` system
//! call per request on the hot path. A request id names log lines and traces across processes; it is not a
//! secret and guards nothing, so a fast thread-local generator (fastrand, seeded once per thread) is enough,
//! and its 122 random bits make collisions as unlikely as the operating system's would.

use http::{HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

/// Makes a version 4 UUID per request, without a system call.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeRandomRequestId;

impl MakeRequestId for MakeRandomRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        Some(RequestId::new(uuid_v4(fastrand::u128(..))))
    }
}

/// `bits` as a version 4 (random), variant 1 UUID in its hyphenated lowercase form.
fn uuid_v4(bits: u128) -> HeaderValue {
    // The version nibble is the high half of byte 6, the variant the top two bits of byte 8 (RFC 9562).
    let bits = (bits & !(0xF << 76)) | (0x4 << 76);
    let bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 36];
    let mut at = 0;
    for (index, byte) in bits.to_be_bytes().iter().enumerate() {
        if matches!(index, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0xF)];
        at += 2;
    }
    // Hex digits and hyphens are always a valid header value.
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_4_uuids_and_differ() {
        assert_eq!(uuid_v4(0), "00000000-0000-4000-8000-000000000000");
        assert_eq!(uuid_v4(u128::MAX), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(uuid_v4(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef), "01234567-89ab-4def-8123-456789abcdef");
        let request = Request::new(());
        let mut make = MakeRandomRequestId;
        let (a, b) = (make.make_request_id(&request), make.make_request_id(&request));
        assert_ne!(a.map(|id| id.header_value().clone()), b.map(|id| id.header_value().clone()));
    }
}
