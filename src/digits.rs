//! Whole numbers in decimal, written straight into a byte buffer.
//!
//! The request log line, proto3 JSON timestamps and `X-Forwarded-For` write a handful of small numbers per
//! request; through `core::fmt` (`write!` with widths and padding) those numbers cost more than everything
//! else the line or the timestamp does.

/// The two-digit text of 0 to 99, in order.
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
                            2021222324252627282930313233343536373839\
                            4041424344454647484950515253545556575859\
                            6061626364656667686970717273747576777879\
                            8081828384858687888990919293949596979899";

/// `value` (below 100) as two digits, `07` for 7; the last two digits of a larger value.
pub fn pair(value: u64) -> [u8; 2] {
    let at = (value % 100) as usize * 2;
    [PAIRS[at], PAIRS[at + 1]]
}

/// `value` in decimal, zero-padded to at least `width` digits (at most 20).
pub fn decimal(out: &mut Vec<u8>, mut value: u64, width: usize) {
    // Two digits per division: most numbers written here are below 100.
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    while value >= 100 {
        let pair = (value % 100) as usize * 2;
        value /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if value >= 10 {
        let pair = value as usize * 2;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        digits[at] = b'0' + value as u8;
    }
    out.extend_from_slice(&digits[at.min(digits.len().saturating_sub(width))..]);
}

/// An IP address as text: IPv4 dotted decimal written here, IPv6 through its `Display` (compressed form).
pub fn ip(out: &mut Vec<u8>, address: std::net::IpAddr) {
    match address {
        std::net::IpAddr::V4(v4) => {
            for (index, octet) in v4.octets().into_iter().enumerate() {
                if index > 0 {
                    out.push(b'.');
                }
                decimal(out, u64::from(octet), 1);
            }
        }
        std::net::IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(write: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        write(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn pairs_are_two_digits_as_format_writes_them() {
        for value in 0..250u64 {
            assert_eq!(String::from_utf8_lossy(&pair(value)), format!("{:02}", value % 100), "{value}");
        }
    }

    #[test]
    fn numbers_are_zero_padded_to_their_width_and_never_cut() {
        assert_eq!(written(|out| decimal(out, 0, 1)), "0");
        assert_eq!(written(|out| decimal(out, 0, 0)), "0");
        assert_eq!(written(|out| decimal(out, 7, 2)), "07");
        assert_eq!(written(|out| decimal(out, 2026, 4)), "2026");
        assert_eq!(written(|out| decimal(out, 12_345, 3)), "12345");
        assert_eq!(written(|out| decimal(out, 5, 9)), "000000005");
        assert_eq!(written(|out| decimal(out, u64::MAX, 1)), u64::MAX.to_string());
    }

    #[test]
    fn numbers_read_as_format_writes_them() {
        let mut values: Vec<u64> = (0..=1_000).collect();
        for power in 1..20 {
            let ten = 10u64.pow(power);
            values.extend([ten - 1, ten, ten + 1, ten / 3 * 2]);
        }
        values.push(u64::MAX);
        for value in values {
            for width in [0, 1, 2, 3, 4, 9, 20] {
                assert_eq!(written(|out| decimal(out, value, width)), format!("{value:0width$}"), "{value} {width}");
            }
        }
    }

    #[test]
    fn addresses_read_as_their_display_does() {
        for text in ["127.0.0.1", "0.0.0.0", "255.255.255.255", "10.20.3.40", "::1", "2001:db8::8:800:200c:417a"] {
            let address: std::net::IpAddr = text.parse().unwrap_or(std::net::IpAddr::from([1, 1, 1, 1]));
            assert_eq!(written(|out| ip(out, address)), address.to_string());
            assert_eq!(address.to_string(), text, "the case itself parses");
        }
    }
}
