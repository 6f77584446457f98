//! Decimal numbers as the kernel prints them in /proc files: ASCII digits only, no sign, no
//! spaces, no leading `+` (which `str::parse` would accept).

/// Parses `digits` as a `u64`; `None` if it is empty, has a non-digit or overflows.
pub(crate) fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &b| {
        let digit = char::from(b).to_digit(10)?;
        value.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Parses `digits` as a `u32`; `None` if it is empty, has a non-digit or overflows.
pub(crate) fn parse_u32(digits: &[u8]) -> Option<u32> {
    parse_u64(digits).and_then(|v| u32::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_digits_only() {
        assert_eq!(parse_u64(b"98019"), Some(98019));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u32(b"4294967296"), None);
        for bad in [&b""[..], b"+1", b"-1", b" 1", b"1 ", b"1a", b"0x1"] {
            assert_eq!(parse_u64(bad), None, "{bad:?}");
        }
    }
}
