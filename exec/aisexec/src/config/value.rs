//! Parsers for single values. Each returns the message of a [`super::ConfigError`], which
//! the caller completes with the file, line and key.

use std::net::IpAddr;

/// Longest piece of a bad value quoted back in a message.
const QUOTE_MAX_CHARS: usize = 60;

/// `value` as shown in a message: quoted, escaped, and cut short if long.
pub(super) fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_MAX_CHARS) {
        Some((cut, _)) => format!("{:?}...", &value[..cut]),
        None => format!("{value:?}"),
    }
}

/// `on`/`off`, `yes`/`no`, `true`/`false` or `1`/`0`, in any case.
pub(super) fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "on" | "yes" | "true" | "1" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        _ => Err(format!(
            "{} is not a boolean: write on or off (yes/no and 1/0 also work)",
            quote(value)
        )),
    }
}

/// A decimal whole number in `min..=max`.
pub(super) fn parse_uint(value: &str, min: u64, max: u64) -> Result<u64, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{} is not a whole number", quote(value)));
    }
    let out_of_range = || format!("{value} is out of range: it must be from {min} to {max}");
    let mut n: u64 = 0;
    for digit in value.bytes().map(|b| u64::from(b - b'0')) {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(digit))
            .filter(|n| *n <= max)
            .ok_or_else(out_of_range)?;
    }
    if n < min {
        return Err(out_of_range());
    }
    Ok(n)
}

/// A `u32` in `min..=u32::MAX`.
pub(super) fn parse_u32(value: &str, min: u32) -> Result<u32, String> {
    let n = parse_uint(value, u64::from(min), u64::from(u32::MAX))?;
    u32::try_from(n).map_err(|_| format!("{value} is too large"))
}

/// An IPv4 or IPv6 address, written as numbers: host names are not looked up.
pub(super) fn parse_ip(value: &str) -> Result<IpAddr, String> {
    value.parse().map_err(|_| {
        format!(
            "{} is not an IP address (write it as numbers, e.g. 192.168.1.1 or fd00::1; host \
             names are not resolved)",
            quote(value)
        )
    })
}

/// A name such as a user, group or subsystem: non-empty, without blanks (which are most
/// often two `key: value` pairs written on one line).
pub(super) fn parse_word(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{} is not a single word (write one `key: value` per line)",
            quote(value)
        ));
    }
    Ok(value.to_owned())
}

/// Free text, such as a path or a cluster name: non-empty, no control characters.
pub(super) fn parse_text(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{} contains a control character", quote(value)));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint_bounds_and_overflow() {
        assert_eq!(parse_uint("0", 0, 10), Ok(0));
        assert_eq!(parse_uint("007", 0, 10), Ok(7));
        assert!(parse_uint("11", 0, 10).is_err());
        assert!(parse_uint("0", 1, 10).is_err());
        assert!(parse_uint("99999999999999999999999999", 0, u64::MAX).is_err());
        assert!(parse_uint("-1", 0, 10).is_err());
        assert!(parse_uint("+1", 0, 10).is_err());
        assert!(parse_uint("1 2", 0, 100).is_err());
        assert!(parse_uint("", 0, 100).is_err());
        assert_eq!(parse_u32("4294967295", 0), Ok(u32::MAX));
        assert!(parse_u32("4294967296", 0).is_err());
    }

    #[test]
    fn quote_cuts_long_values_on_a_char_boundary() {
        let long = "é".repeat(100);
        let q = quote(&long);
        assert!(q.ends_with("..."));
        assert_eq!(q.chars().filter(|c| *c == 'é').count(), QUOTE_MAX_CHARS);
        assert_eq!(quote("a\tb"), "\"a\\tb\"");
    }

    #[test]
    fn words_refuse_blanks() {
        assert_eq!(parse_word("CLM"), Ok("CLM".to_owned()));
        assert!(parse_word("CLM  debug: on").is_err());
        assert!(parse_word("").is_err());
    }
}
