//! gRPC's `grpc-timeout` header (PROTOCOL-HTTP2.md: up to 8 digits, then H, M, S, m, u or n), read and written
//! in one place: the gateway reads it from clients, the upstream layer writes it on every call.

use std::time::Duration;

/// The most digits the spec allows.
const MAX_COUNT: u128 = 99_999_999;

/// A `grpc-timeout` value as a server reads it: 1 to 8 ASCII digits and a unit. Zero and leading zeros are
/// read as written; whoever takes the value from a client decides whether to refuse them.
pub fn parse(text: &str) -> Option<Duration> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// `time_left` as a `grpc-timeout` value, rounded down to the coarsest unit that still counts at least 1000
/// of them (so the server's deadline is at most 0.1% earlier than ours, never later) within the spec's 8
/// digits: a 30 s deadline is `29999m` on almost every call, a value that repeats (so HPACK can index it).
/// Below a second the unit is `u` or `n` and the value differs on every call. A time too long even in hours is
/// capped rather than a panic (tonic's `Request::set_timeout` panics). Written without `format!`.
pub fn write(time_left: Duration) -> Vec<u8> {
    const PRECISE_ENOUGH: u128 = 1000;
    let seconds = u128::from(time_left.as_secs());
    // Coarsest first.
    let units = [
        (seconds / 3600, b'H'),
        (seconds / 60, b'M'),
        (seconds, b'S'),
        (time_left.as_millis(), b'm'),
        (time_left.as_micros(), b'u'),
        (time_left.as_nanos(), b'n'),
    ];
    let (count, unit) = units
        .into_iter()
        .find(|(count, _)| *count >= PRECISE_ENOUGH)
        .filter(|(count, _)| *count <= MAX_COUNT)
        .or_else(|| units.into_iter().rev().find(|(count, _)| *count <= MAX_COUNT))
        .unwrap_or((MAX_COUNT, b'H'));
    let mut text = Vec::with_capacity(9);
    // At most 8 digits: fits a u64.
    crate::digits::decimal(&mut text, u64::try_from(count).unwrap_or(u64::MAX), 1);
    text.push(unit);
    text
}

/// Whether a value [`write`] made differs from call to call (a unit finer than milliseconds).
pub fn varies_per_call(text: &[u8]) -> bool {
    matches!(text.last(), Some(b'u' | b'n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_as_the_spec_writes_them() {
        let table = [
            ("1S", Some(Duration::from_secs(1))),
            ("29999m", Some(Duration::from_millis(29_999))),
            ("0n", Some(Duration::ZERO)),
            ("007S", Some(Duration::from_secs(7))),
            ("99999999H", Some(Duration::from_secs(99_999_999 * 3600))),
            ("", None),
            ("n", None),
            ("123456789S", None),
            ("1s", None),
            ("+1S", None),
            ("1.5S", None),
        ];
        for (text, expected) in table {
            assert_eq!(parse(text), expected, "{text:?}");
        }
    }

    #[test]
    fn what_is_written_is_read_back() {
        for time_left in [Duration::ZERO, Duration::from_nanos(999), Duration::from_millis(500), Duration::MAX] {
            let text = write(time_left);
            let read = std::str::from_utf8(&text).ok().and_then(parse);
            assert!(read.is_some_and(|read| read <= time_left), "{time_left:?}: {text:?}");
        }
    }
}
