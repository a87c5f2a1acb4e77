//! Opaque page tokens for ListUsers: a cursor (the last id returned), not an offset, so paging stays correct
//! while users are inserted or deleted between pages.
//!
//! A token is bound to the filter it was issued for: reusing it with another filter is an error rather than a
//! silently wrong page. Layout before base64url: version (1 byte) ‖ last id (i64 BE) ‖ FNV-1a-64 of the filter.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const VERSION: u8 = 1;
const LEN: usize = 1 + 8 + 8;

/// Why a page token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    #[error("page_token is malformed; pass the next_page_token of a previous response unchanged")]
    Malformed,
    #[error("page_token was issued for a different filter; list again from the first page")]
    FilterMismatch,
}

/// The token for the page after the user with id `last_id`, for `filter`.
pub fn encode(last_id: i64, filter: &str) -> String {
    let mut bytes = [0u8; LEN];
    bytes[0] = VERSION;
    bytes[1..9].copy_from_slice(&last_id.to_be_bytes());
    bytes[9..].copy_from_slice(&fnv1a(filter.as_bytes()).to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The last id of the previous page, from a token issued for `filter`.
pub fn decode(token: &str, filter: &str) -> Result<i64, PageTokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| PageTokenError::Malformed)?;
    let bytes: [u8; LEN] = bytes.try_into().map_err(|_| PageTokenError::Malformed)?;
    if bytes[0] != VERSION {
        return Err(PageTokenError::Malformed);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[1..9]);
    let mut hash = [0u8; 8];
    hash.copy_from_slice(&bytes[9..]);
    if u64::from_be_bytes(hash) != fnv1a(filter.as_bytes()) {
        return Err(PageTokenError::FilterMismatch);
    }
    let last_id = i64::from_be_bytes(id);
    if last_id <= 0 {
        return Err(PageTokenError::Malformed);
    }
    Ok(last_id)
}

/// FNV-1a: stable across Rust versions and processes, unlike `DefaultHasher`, so tokens outlive restarts.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_ids_for_the_same_filter() {
        for id in [1, 42, i64::MAX] {
            for filter in ["", "roles:admin", "name = \"Ada\""] {
                assert_eq!(decode(&encode(id, filter), filter), Ok(id));
            }
        }
    }

    #[test]
    fn refuses_other_filters_and_garbage() {
        let token = encode(7, "roles:admin");
        assert_eq!(decode(&token, "roles:ops"), Err(PageTokenError::FilterMismatch));
        let cases = ["", "x", "not base64!", &token[..token.len() - 1], &format!("{token}AA"), &encode(0, "")];
        for bad in cases {
            assert_eq!(decode(bad, ""), Err(PageTokenError::Malformed), "token {bad:?}");
        }
    }

    #[test]
    fn tokens_are_not_plain_offsets() {
        let token = encode(5, "");
        assert_ne!(token, "5");
        assert!(token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }
}
