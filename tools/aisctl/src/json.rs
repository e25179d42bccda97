//! A tiny JSON writer: just what aisctl's output needs, without a serialization
//! framework. Values are built as a tree and written compactly; strings are escaped per
//! RFC 8259 (quote, backslash and every control character), everything else is written
//! as UTF-8 as it is.

use std::fmt::Write as _;

/// A JSON value. Objects keep their keys in the order given, so output is stable.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// Only unsigned integers occur in aisctl's schemas; they are exact up to `u64::MAX`
    /// (consumers that read numbers as doubles lose precision above 2^53).
    Uint(u64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// An object from `(key, value)` pairs.
    pub fn object<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Json)>) -> Json {
        Json::Object(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    /// A string, or `null` when it is empty (unknown).
    pub fn str_or_null(s: &str) -> Json {
        if s.is_empty() {
            Json::Null
        } else {
            Json::str(s)
        }
    }

    /// The compact text of this value.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    pub fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Uint(n) => {
                let _ = write!(out, "{n}");
            }
            Json::Str(s) => write_string(out, s),
            Json::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            Json::Object(pairs) => {
                out.push('{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// `s` as a JSON string literal.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars() {
        assert_eq!(Json::Null.to_text(), "null");
        assert_eq!(Json::Bool(true).to_text(), "true");
        assert_eq!(Json::Bool(false).to_text(), "false");
        assert_eq!(Json::Uint(0).to_text(), "0");
        assert_eq!(Json::Uint(u64::MAX).to_text(), "18446744073709551615");
        assert_eq!(Json::str_or_null("").to_text(), "null");
        assert_eq!(Json::str_or_null("a").to_text(), "\"a\"");
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(Json::str("plain").to_text(), r#""plain""#);
        assert_eq!(Json::str(r#"a"b\c"#).to_text(), r#""a\"b\\c""#);
        assert_eq!(
            Json::str("l1\nl2\r\t\u{8}\u{c}").to_text(),
            r#""l1\nl2\r\t\b\f""#
        );
        assert_eq!(
            Json::str("\u{0}\u{1f}\u{7f}").to_text(),
            r#""\u0000\u001f\u007f""#
        );
        // Non-ASCII stays UTF-8; '/' needs no escape.
        assert_eq!(Json::str("nœud/é😀").to_text(), "\"nœud/é😀\"");
    }

    #[test]
    fn nesting_keeps_order_and_separators() {
        let v = Json::object([
            ("b", Json::Uint(1)),
            ("a", Json::Array(vec![])),
            (
                "list",
                Json::Array(vec![Json::Null, Json::object([("k\"", Json::Bool(true))])]),
            ),
            ("empty", Json::Object(vec![])),
        ]);
        assert_eq!(
            v.to_text(),
            r#"{"b":1,"a":[],"list":[null,{"k\"":true}],"empty":{}}"#
        );
    }

    /// Every output of the writer is valid JSON: checked with a minimal validating
    /// parser over strings made of every awkward character.
    #[test]
    fn every_string_round_trips_through_a_validating_reader() {
        let awkward: Vec<char> = (0u32..0x80)
            .filter_map(char::from_u32)
            .chain(['é', '\u{2028}', '😀'])
            .collect();
        for (i, &c) in awkward.iter().enumerate() {
            let s: String = [c, 'x', awkward[(i * 7) % awkward.len()]].iter().collect();
            let text = Json::str(s.as_str()).to_text();
            assert_eq!(read_string(&text), Some(s.clone()), "{text}");
        }
    }

    /// Reads one JSON string literal (the whole of `text`), refusing raw control
    /// characters and unknown escapes as RFC 8259 does.
    fn read_string(text: &str) -> Option<String> {
        let inner = text.strip_prefix('"')?.strip_suffix('"')?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next()? {
                    '"' => out.push('"'),
                    '\\' => out.push('\\'),
                    '/' => out.push('/'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'u' => {
                        let hex: String = chars.by_ref().take(4).collect();
                        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    _ => return None,
                },
                '"' => return None,
                c if u32::from(c) < 0x20 => return None,
                c => out.push(c),
            }
        }
        Some(out)
    }
}
