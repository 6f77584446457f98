//! Rewrites a JSON document (runc's state.json) in one pass: replaces or removes the values at
//! given object paths and copies everything else byte for byte. haul's bounded model of
//! state.json covers only the fields it needs; runc needs the whole document on the
//! destination, so the registration patches the source's text instead of re-serializing.
//!
//! Keys are matched the way runc's decoder (Go's encoding/json) matches them to its fields:
//! after decoding escapes, and without regard to case (Go folds `K` U+212A to `k` and `ſ` U+017F
//! to `s` as well). Otherwise `"HOOKS"` or `"hook\u0073"` would slip past the removal of
//! `hooks` and still reach runc. Every member matching an edit's path is edited, duplicates too.

use std::fmt;

/// Deepest nesting accepted (runc's state.json nests about 5 levels).
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit<'a> {
    /// Replace (or add) the value at the path with this raw JSON.
    Set(&'a [&'a str], String),
    /// Remove the member at the path.
    Remove(&'a [&'a str]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchError {
    pub offset: usize,
    pub what: &'static str,
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed JSON at byte {}: {}", self.offset, self.what)
    }
}

/// Encodes `s` as a JSON string literal.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Applies `edits` to `input`.
pub fn patch(input: &str, edits: &[Edit<'_>]) -> Result<String, PatchError> {
    let mut p = Patcher {
        s: input.as_bytes(),
        i: 0,
        out: String::with_capacity(input.len() + 256),
        edits,
        path: Vec::new(),
    };
    p.ws_copy();
    p.value(0)?;
    p.ws_copy();
    if p.i != p.s.len() {
        return Err(p.err("trailing data"));
    }
    Ok(p.out)
}

struct Patcher<'a, 'e> {
    s: &'a [u8],
    i: usize,
    out: String,
    edits: &'e [Edit<'e>],
    path: Vec<String>,
}

impl Patcher<'_, '_> {
    fn err(&self, what: &'static str) -> PatchError {
        PatchError {
            offset: self.i,
            what,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn copy_range(&mut self, from: usize) {
        if let Some(b) = self.s.get(from..self.i) {
            self.out.push_str(&String::from_utf8_lossy(b));
        }
    }

    fn ws_skip(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn ws_copy(&mut self) {
        let from = self.i;
        self.ws_skip();
        self.copy_range(from);
    }

    /// Whether `p` names a member of the object being parsed (its parent is `self.path`).
    fn in_this_object(&self, p: &[&str]) -> bool {
        p.len() == self.path.len() + 1
            && p.iter().zip(self.path.iter()).all(|(a, b)| same_key(b, a))
    }

    fn edit_for(&self, key: &str) -> Option<&Edit<'_>> {
        self.edits.iter().find(|e| {
            let p = match e {
                Edit::Set(p, _) | Edit::Remove(p) => p,
            };
            self.in_this_object(p) && p.last().is_some_and(|k| same_key(key, k))
        })
    }

    /// Parses a string starting at `self.i` (at the quote); returns its decoded text. Escapes
    /// must be JSON's; `\u` escapes are decoded, a surrogate pair into one character and a lone
    /// surrogate into U+FFFD, as Go's decoder does.
    fn string_raw(&mut self) -> Result<String, PatchError> {
        if self.peek() != Some(b'"') {
            return Err(self.err("expected a string"));
        }
        self.i += 1;
        let mut text = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    let esc = self.s.get(self.i + 1).copied();
                    self.i += 2;
                    let c = match esc {
                        Some(b'u') => self.unicode_escape()?,
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(_) => return Err(self.err("bad escape")),
                        None => return Err(self.err("unterminated escape")),
                    };
                    let mut utf8 = [0u8; 4];
                    text.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
                Some(c) if c < 0x20 => return Err(self.err("control character in string")),
                Some(c) => {
                    text.push(c);
                    self.i += 1;
                }
            }
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// Four hex digits at `self.i` (after `\u`), consumed.
    fn hex4(&mut self) -> Result<u32, PatchError> {
        let digits = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.err("bad \\u escape"))?;
        let v = u32::from_str_radix(digits, 16).map_err(|_| self.err("bad \\u escape"))?;
        self.i += 4;
        Ok(v)
    }

    /// The character of a `\u` escape (at its hex digits), joining a surrogate pair.
    fn unicode_escape(&mut self) -> Result<char, PatchError> {
        let first = self.hex4()?;
        if (0xd800..0xdc00).contains(&first) && self.s.get(self.i..self.i + 2) == Some(&b"\\u"[..])
        {
            let saved = self.i;
            self.i += 2;
            let second = self.hex4()?;
            if (0xdc00..0xe000).contains(&second) {
                let c = 0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00);
                return Ok(char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER));
            }
            // Not a pair: the second escape stands on its own.
            self.i = saved;
        }
        Ok(char::from_u32(first).unwrap_or(char::REPLACEMENT_CHARACTER))
    }

    fn value(&mut self, depth: usize) -> Result<(), PatchError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => {
                let from = self.i;
                self.string_raw()?;
                self.copy_range(from);
                Ok(())
            }
            Some(_) => {
                let from = self.i;
                while let Some(c) = self.peek() {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
                if self.i == from {
                    return Err(self.err("expected a value"));
                }
                let lit = self.s.get(from..self.i).unwrap_or_default();
                let ok = lit == b"true"
                    || lit == b"false"
                    || lit == b"null"
                    || lit
                        .iter()
                        .all(|c| c.is_ascii_digit() || b"+-.eE".contains(c));
                if !ok {
                    return Err(self.err("bad literal"));
                }
                self.copy_range(from);
                Ok(())
            }
            None => Err(self.err("unexpected end")),
        }
    }

    /// Skips a value without copying it.
    fn skip_value(&mut self, depth: usize) -> Result<(), PatchError> {
        let saved = self.out.len();
        self.value(depth)?;
        self.out.truncate(saved);
        Ok(())
    }

    fn array(&mut self, depth: usize) -> Result<(), PatchError> {
        self.out.push('[');
        self.i += 1;
        self.ws_copy();
        if self.peek() == Some(b']') {
            self.i += 1;
            self.out.push(']');
            return Ok(());
        }
        loop {
            self.value(depth + 1)?;
            self.ws_copy();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.out.push(',');
                    self.ws_copy();
                }
                Some(b']') => {
                    self.i += 1;
                    self.out.push(']');
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), PatchError> {
        self.out.push('{');
        self.i += 1;
        let mut seen: Vec<String> = Vec::new();
        let mut first = true;
        self.ws_skip();
        if self.peek() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                self.ws_skip();
                let key_from = self.i;
                let key = self.string_raw()?;
                // The key's own text: escapes as the source wrote them.
                let raw_key =
                    String::from_utf8_lossy(self.s.get(key_from..self.i).unwrap_or_default())
                        .into_owned();
                self.ws_skip();
                if self.peek() != Some(b':') {
                    return Err(self.err("expected ':'"));
                }
                self.i += 1;
                self.ws_skip();
                match self.edit_for(&key).cloned() {
                    Some(Edit::Remove(_)) => self.skip_value(depth + 1)?,
                    Some(Edit::Set(_, raw)) => {
                        self.skip_value(depth + 1)?;
                        self.member(&mut first, &raw_key, &raw);
                    }
                    None => {
                        if !first {
                            self.out.push(',');
                        }
                        first = false;
                        self.out.push_str(&raw_key);
                        self.out.push(':');
                        self.path.push(key.clone());
                        let r = self.value(depth + 1);
                        self.path.pop();
                        r?;
                    }
                }
                seen.push(key);
                self.ws_skip();
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(b'}') => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(self.err("expected ',' or '}'")),
                }
            }
        }
        // Members to add that this object lacks.
        let adds: Vec<(String, String)> = self
            .edits
            .iter()
            .filter_map(|e| match e {
                Edit::Set(p, raw) if self.in_this_object(p) => {
                    let k = p.last()?;
                    (!seen.iter().any(|s| same_key(s, k))).then(|| (string(k), raw.clone()))
                }
                _ => None,
            })
            .collect();
        for (k, raw) in adds {
            self.member(&mut first, &k, &raw);
        }
        self.out.push('}');
        Ok(())
    }

    /// Appends `"key":raw`; `key` is JSON text already (quoted, escaped).
    fn member(&mut self, first: &mut bool, key: &str, raw: &str) {
        if !*first {
            self.out.push(',');
        }
        *first = false;
        self.out.push_str(key);
        self.out.push(':');
        self.out.push_str(raw);
    }
}

/// Whether the decoded key `key` is the field name `name` (ASCII, as in an edit's path) to Go's
/// encoding/json: equal ignoring ASCII case, where `K` (U+212A KELVIN SIGN) is a `k` and `ſ`
/// (U+017F LONG S) an `s`. The dotted and dotless `i` (U+0130, U+0131) count as `i` too: Go
/// does not fold them to `i`, so at worst a key no Go program reads is edited.
fn same_key(key: &str, name: &str) -> bool {
    let fold = |c: char| match c {
        '\u{212a}' => 'k',
        '\u{17f}' => 's',
        '\u{130}' | '\u{131}' => 'i',
        c => c.to_ascii_lowercase(),
    };
    key.chars().map(fold).eq(name.chars().map(fold))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_removes_and_adds_members_and_copies_the_rest() {
        let src = r#"{"id":"a","n":1,"config":{"rootfs":"/x","Hooks":{"prestart":null},"l":[1,2]},"z":"q\"x"}"#;
        let out = patch(
            src,
            &[
                Edit::Set(&["id"], string("b")),
                Edit::Set(&["config", "rootfs"], string("/y")),
                Edit::Remove(&["config", "Hooks"]),
                Edit::Set(&["config", "new"], "true".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"id":"b","n":1,"config":{"rootfs":"/y","l":[1,2],"new":true},"z":"q\"x"}"#
        );
    }

    #[test]
    fn the_real_state_json_round_trips_and_patches() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/runc-1.1.5-cgroupv1-hybrid/state.json"
        ))
        .unwrap();
        let same = patch(&text, &[]).unwrap();
        let strip = |s: &str| s.split_whitespace().collect::<String>();
        assert_eq!(strip(&same), strip(&text));
        let out = patch(
            &text,
            &[
                Edit::Set(&["id"], string("web2")),
                Edit::Set(&["init_process_pid"], "4242".into()),
                Edit::Remove(&["config", "Hooks"]),
            ],
        )
        .unwrap();
        assert!(out.contains(r#""id":"web2""#));
        assert!(out.contains(r#""init_process_pid":4242"#));
        assert!(!out.contains("Hooks"));
        assert!(out.contains(r#""rootfs":"/srv/bundles/ctp/rootfs""#));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            "",
            "{",
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            "[1,2",
            r#""abc"#,
            "{}x",
            "nul",
        ] {
            assert!(patch(bad, &[]).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(patch(&deep, &[]).is_err());
    }

    /// The registration's kind of edits: set a member, add one, remove `config.hooks`.
    fn registration_edits() -> [Edit<'static>; 3] {
        [
            Edit::Set(&["id"], string("web2")),
            Edit::Set(&["init_process_pid"], "4242".into()),
            Edit::Remove(&["config", "hooks"]),
        ]
    }

    /// Found by fuzzing (fixtures/fuzz-crashes/json_patch/key-escapes-rewritten): keys were
    /// re-encoded from a half-decoded text, so `\u` escapes in keys changed on every pass and
    /// a `\u` followed by a control byte was accepted. Keys are copied as written now, and a
    /// bad escape is an error.
    #[test]
    fn keys_keep_their_escapes_and_bad_escapes_are_refused() {
        let src = r#"{"a\u0041":1,"b\n\/":{"c\ud83d\ude00":[true]},"lone\udc00":null}"#;
        assert_eq!(patch(src, &[]).unwrap(), src);
        let once = patch(src, &registration_edits()).unwrap();
        assert_eq!(patch(&once, &registration_edits()).unwrap(), once);
        for bad in [
            r#"{"a\x":1}"#,
            r#"{"a\u12":1}"#,
            r#"{"a\u00zz":1}"#,
            r#"["\q"]"#,
        ] {
            assert!(patch(bad, &[]).is_err(), "{bad}");
        }
        let found = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/fuzz-crashes/json_patch/key-escapes-rewritten"
        ))
        .unwrap();
        let found = String::from_utf8(found).unwrap();
        let err = patch(&found, &registration_edits()).unwrap_err();
        assert_eq!(err.what, "bad \\u escape", "{err}");
        // Without its bad escape the same document patches to a fixed point.
        let fixed = found.replace("\\u\u{10}036", "\\u0036");
        let once = patch(&fixed, &registration_edits()).unwrap();
        assert_eq!(patch(&once, &registration_edits()).unwrap(), once);
    }

    /// runc's decoder (Go) matches keys to fields ignoring case and after unescaping; every
    /// spelling it would read as `config.Hooks` must go, in every copy of `config`.
    #[test]
    fn hooks_are_removed_however_they_are_spelled() {
        let hook = r#"{"poststop":[{"path":"/bin/sh"}]}"#;
        for key in [
            "Hooks",
            "hooks",
            "HOOKS",
            "hOoKs",
            "hook\\u0073",
            "\\u0048ooks",
            "hoo\u{212a}s",
            "hook\u{17f}",
            "hoo\\u212as",
        ] {
            let src = format!(r#"{{"id":"a","config":{{"rootfs":"/r","{key}":{hook},"x":1}}}}"#);
            let out = patch(&src, &registration_edits()).unwrap();
            assert_eq!(
                out, r#"{"id":"web2","config":{"rootfs":"/r","x":1},"init_process_pid":4242}"#,
                "{key}"
            );
        }
        let src = format!(
            r#"{{"config":{{"Hooks":null}},"CONFIG":{{"Hooks":{hook}}},"Config":{{"hooks":{hook}}}}}"#
        );
        let out = patch(&src, &registration_edits()).unwrap();
        assert!(!out.contains("poststop"), "{out}");
        // A key that only looks alike to a human stays.
        let src = r#"{"config":{"hook":1,"hooks2":2,"h\u00f6oks":3}}"#;
        let out = patch(src, &registration_edits()).unwrap();
        assert!(
            out.contains(r#""hook":1,"hooks2":2,"h\u00f6oks":3"#),
            "{out}"
        );
    }

    #[test]
    fn every_copy_of_a_set_member_gets_the_value_and_none_is_added_twice() {
        let out = patch(r#"{"id":"a","ID":"b","Id":"c"}"#, &registration_edits()).unwrap();
        assert_eq!(
            out,
            r#"{"id":"web2","ID":"web2","Id":"web2","init_process_pid":4242}"#
        );
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string("a\"b\\c\n"), r#""a\"b\\c\n""#);
    }
}
