//! Rewrites a JSON document (runc's state.json) in one pass: replaces or removes the values at
//! given object paths and copies everything else byte for byte. haul's bounded model of
//! state.json covers only the fields it needs; runc needs the whole document on the
//! destination, so the registration patches the source's text instead of re-serializing.

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

    fn edit_for(&self, key: &str) -> Option<&Edit<'_>> {
        self.edits.iter().find(|e| {
            let p = match e {
                Edit::Set(p, _) | Edit::Remove(p) => p,
            };
            p.len() == self.path.len() + 1
                && p.iter().zip(self.path.iter()).all(|(a, b)| a == b)
                && p.last().is_some_and(|k| *k == key)
        })
    }

    /// Parses a string starting at `self.i` (at the quote); returns its decoded text.
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
                    match esc {
                        Some(b'u') => {
                            // Keys haul looks for are ASCII; keep the escape text as is.
                            text.extend_from_slice(
                                self.s.get(self.i..self.i + 6).unwrap_or_default(),
                            );
                            self.i += 6;
                        }
                        Some(c) => {
                            text.push(match c {
                                b'n' => b'\n',
                                b't' => b'\t',
                                b'r' => b'\r',
                                b'b' => 8,
                                b'f' => 12,
                                other => other,
                            });
                            self.i += 2;
                        }
                        None => return Err(self.err("unterminated escape")),
                    }
                }
                Some(c) if c < 0x20 => return Err(self.err("control character in string")),
                Some(c) => {
                    text.push(c);
                    self.i += 1;
                }
            }
        }
        if self.i > self.s.len() {
            return Err(self.err("unterminated string"));
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
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
                let key = self.string_raw()?;
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
                        self.member(&mut first, &key, &raw);
                    }
                    None => {
                        if !first {
                            self.out.push(',');
                        }
                        first = false;
                        self.out.push_str(&string(&key));
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
                Edit::Set(p, raw)
                    if p.len() == self.path.len() + 1
                        && p.iter().zip(self.path.iter()).all(|(a, b)| a == b) =>
                {
                    let k = p.last()?.to_string();
                    (!seen.contains(&k)).then(|| (k, raw.clone()))
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

    fn member(&mut self, first: &mut bool, key: &str, raw: &str) {
        if !*first {
            self.out.push(',');
        }
        *first = false;
        self.out.push_str(&string(key));
        self.out.push(':');
        self.out.push_str(raw);
    }
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

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string("a\"b\\c\n"), r#""a\"b\\c\n""#);
    }
}
