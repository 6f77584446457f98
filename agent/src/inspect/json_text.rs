//! The strings haul keeps from runc's JSON files: JSON escapes decoded, length and content
//! checked.
//!
//! serde-json-core, given no unescape buffer, hands over a string's raw text between the quotes
//! with its escapes still in. Go's encoding/json escapes `"`, `\`, control characters and, by
//! default, `<`, `>`, `&`, U+2028 and U+2029, so a bundle at `/tmp/haul-runc/edge&co` is written
//! as `/tmp/haul-runc/edge\u0026co` (fixtures/runc-1.1.5-escapes/state.json). haul decodes the
//! strings it keeps into a text buffer as large as the file (see `text_arena`), so such
//! containers can be migrated and no string is ever cut; strings it skips are never decoded.

use core::fmt;

use super::text_arena::TextArena;

/// Why a kept JSON string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextProblem {
    /// Longer than its limit once decoded.
    TooLong {
        /// Decoded length, in bytes.
        len: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    /// A backslash not followed by a valid JSON escape (or a lone UTF-16 surrogate).
    BadEscape,
    /// Contains a NUL character, which no path or name handed to the kernel can.
    Nul,
    /// The text buffer is full: only possible when a caller passes one smaller than the input.
    NoRoom,
}

impl fmt::Display for TextProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextProblem::TooLong { len, limit } => {
                write!(f, "is {len} bytes long, over the limit of {limit} bytes")
            }
            TextProblem::BadEscape => f.write_str("has an invalid JSON escape sequence"),
            TextProblem::Nul => f.write_str("contains a NUL character"),
            TextProblem::NoRoom => f.write_str("does not fit the text buffer left for decoding"),
        }
    }
}

/// Decodes the raw JSON string text `raw` (as serde-json-core returns it, quotes removed),
/// borrowing it when it has no escapes and decoding it into `arena` otherwise; then checks that
/// it is at most `limit` bytes long and has no NUL.
pub(crate) fn decode<'a>(
    raw: &'a str,
    arena: &mut TextArena<'a>,
    limit: usize,
) -> Result<&'a str, TextProblem> {
    let text = if raw.as_bytes().contains(&b'\\') {
        let bytes = arena.write(TextProblem::NoRoom, |out| unescape(raw.as_bytes(), out))?;
        core::str::from_utf8(bytes).map_err(|_| TextProblem::BadEscape)?
    } else {
        raw
    };
    if text.len() > limit {
        return Err(TextProblem::TooLong {
            len: text.len(),
            limit,
        });
    }
    if text.as_bytes().contains(&0) {
        return Err(TextProblem::Nul);
    }
    Ok(text)
}

/// Decodes the escapes of JSON string text `raw` into `out`; returns the decoded length.
///
/// Escapes (RFC 8259, section 7): `\"` `\\` `\/` `\b` `\f` `\n` `\r` `\t` and `\uXXXX`, where a
/// high surrogate must be followed by a `\uXXXX` low surrogate. Decoded text is never longer
/// than `raw`.
pub(crate) fn unescape(raw: &[u8], out: &mut [u8]) -> Result<usize, TextProblem> {
    let mut written = 0;
    let mut rest = raw;
    loop {
        let run_len = rest.iter().position(|&b| b == b'\\').unwrap_or(rest.len());
        let (run, tail) = rest.split_at(run_len);
        put(out, &mut written, run)?;
        let Some((_, after_backslash)) = tail.split_first() else {
            return Ok(written);
        };
        let (&kind, after_kind) = after_backslash
            .split_first()
            .ok_or(TextProblem::BadEscape)?;
        let (ch, after) = match kind {
            b'"' => ('"', after_kind),
            b'\\' => ('\\', after_kind),
            b'/' => ('/', after_kind),
            b'b' => ('\u{8}', after_kind),
            b'f' => ('\u{c}', after_kind),
            b'n' => ('\n', after_kind),
            b'r' => ('\r', after_kind),
            b't' => ('\t', after_kind),
            b'u' => unicode_escape(after_kind)?,
            _ => return Err(TextProblem::BadEscape),
        };
        let mut utf8 = [0u8; 4];
        put(out, &mut written, ch.encode_utf8(&mut utf8).as_bytes())?;
        rest = after;
    }
}

/// Decodes the `XXXX` of `\uXXXX` (and a following low surrogate escape, if `XXXX` is a high
/// surrogate) at the start of `s`; returns the character and what follows.
fn unicode_escape(s: &[u8]) -> Result<(char, &[u8]), TextProblem> {
    let (unit, rest) = hex4(s)?;
    if !(0xD800..0xDC00).contains(&unit) {
        // A lone low surrogate is not a char: from_u32 refuses it.
        return Ok((char::from_u32(unit).ok_or(TextProblem::BadEscape)?, rest));
    }
    let low_escape = rest.strip_prefix(b"\\u").ok_or(TextProblem::BadEscape)?;
    let (low, rest) = hex4(low_escape)?;
    if !(0xDC00..0xE000).contains(&low) {
        return Err(TextProblem::BadEscape);
    }
    let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
    Ok((char::from_u32(code).ok_or(TextProblem::BadEscape)?, rest))
}

/// Four hex digits at the start of `s`, and what follows.
fn hex4(s: &[u8]) -> Result<(u32, &[u8]), TextProblem> {
    let digits = s.get(..4).ok_or(TextProblem::BadEscape)?;
    let mut value = 0u32;
    for &d in digits {
        let digit = char::from(d).to_digit(16).ok_or(TextProblem::BadEscape)?;
        value = (value << 4) | digit;
    }
    Ok((value, s.get(4..).unwrap_or_default()))
}

/// Appends `bytes` to `out` at `*written`.
fn put(out: &mut [u8], written: &mut usize, bytes: &[u8]) -> Result<(), TextProblem> {
    let end = written
        .checked_add(bytes.len())
        .ok_or(TextProblem::NoRoom)?;
    out.get_mut(*written..end)
        .ok_or(TextProblem::NoRoom)?
        .copy_from_slice(bytes);
    *written = end;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(raw: &str) -> Result<String, TextProblem> {
        let mut buf = vec![0u8; raw.len()];
        let mut arena = TextArena::new(&mut buf);
        decode(raw, &mut arena, 64).map(str::to_owned)
    }

    #[test]
    fn decodes_what_go_escapes() {
        // Real runc 1.1.5 output (fixtures/runc-1.1.5-escapes/state.json).
        assert_eq!(
            decoded(r"/tmp/haul-runc/edge\u0026co").as_deref(),
            Ok("/tmp/haul-runc/edge&co")
        );
        assert_eq!(
            decoded(r#"say \"hi\" \u003cnow\u003e \u0026 then"#).as_deref(),
            Ok(r#"say "hi" <now> & then"#)
        );
        assert_eq!(
            decoded(r"a\\b\/c\b\f\n\r\t").as_deref(),
            Ok("a\\b/c\u{8}\u{c}\n\r\t")
        );
        assert_eq!(
            decoded(r"\u2028\u00e9\ud83d\ude00").as_deref(),
            Ok("\u{2028}é😀")
        );
        assert_eq!(decoded("plain, borrowed").as_deref(), Ok("plain, borrowed"));
    }

    #[test]
    fn refuses_bad_escapes_nul_and_long_text() {
        for bad in [
            r"\",
            r"\x",
            r"\u12",
            r"\u12g4",
            r"\ud83d",
            r"\ud83d\u0041",
            r"\ude00",
            r"\u+123",
        ] {
            assert_eq!(decoded(bad), Err(TextProblem::BadEscape), "{bad}");
        }
        assert_eq!(decoded(r"a\u0000b"), Err(TextProblem::Nul));
        assert_eq!(decoded("a\0b"), Err(TextProblem::Nul));
        let long = "x".repeat(65);
        assert_eq!(
            decoded(&long),
            Err(TextProblem::TooLong { len: 65, limit: 64 })
        );
        assert_eq!(decoded(&"x".repeat(64)).map(|s| s.len()), Ok(64));
        assert_eq!(
            decoded(&format!(r"{}\u0026", "x".repeat(63))).map(|s| s.len()),
            Ok(64)
        );
    }

    #[test]
    fn reports_a_full_text_buffer() {
        let mut buf = [0u8; 2];
        let mut arena = TextArena::new(&mut buf);
        assert_eq!(decode(r"abc\n", &mut arena, 64), Err(TextProblem::NoRoom));
    }
}
