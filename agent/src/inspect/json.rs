//! serde-json-core glue: sequences and maps that keep at most N items and count the rest, and
//! serde-json-core's errors in words.
//!
//! serde-json-core reports a full heapless container as a generic error that names neither the
//! field nor the limit. These containers never fail when full: they keep the first N items,
//! skip the rest and count them all, so the caller can say "has more than 64 mounts (70 found,
//! limit 64)". A JSON `null` (Go writes a nil slice or map as `null`) is an empty container.

use core::fmt;
use core::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A JSON array of which the first `N` items are kept.
#[derive(Debug)]
pub(crate) struct BoundedSeq<T, const N: usize> {
    /// The first `N` items.
    pub(crate) items: heapless::Vec<T, N>,
    /// How many items the array has.
    pub(crate) total: usize,
}

impl<T, const N: usize> Default for BoundedSeq<T, N> {
    fn default() -> Self {
        Self {
            items: heapless::Vec::new(),
            total: 0,
        }
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for BoundedSeq<T, N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_option(SeqVisitor(PhantomData))
    }
}

struct SeqVisitor<T, const N: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for SeqVisitor<T, N> {
    type Value = BoundedSeq<T, N>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(BoundedSeq::default())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(BoundedSeq::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = BoundedSeq::default();
        loop {
            let more = if out.items.is_full() {
                seq.next_element::<IgnoredAny>()?.is_some()
            } else {
                match seq.next_element::<T>()? {
                    Some(item) => {
                        // Cannot fail: the vector is not full.
                        let _ = out.items.push(item);
                        true
                    }
                    None => false,
                }
            };
            if !more {
                return Ok(out);
            }
            out.total = out.total.saturating_add(1);
        }
    }
}

/// A JSON object of string keys and string values of which the first `N` entries are kept.
#[derive(Debug)]
pub(crate) struct BoundedMap<'a, const N: usize> {
    /// The first `N` entries, in file order, as raw (still escaped) JSON string text.
    pub(crate) entries: heapless::Vec<(&'a str, &'a str), N>,
    /// How many entries the object has.
    pub(crate) total: usize,
}

impl<const N: usize> Default for BoundedMap<'_, N> {
    fn default() -> Self {
        Self {
            entries: heapless::Vec::new(),
            total: 0,
        }
    }
}

impl<'de: 'a, 'a, const N: usize> Deserialize<'de> for BoundedMap<'a, N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_option(MapVisitor(PhantomData))
    }
}

struct MapVisitor<'a, const N: usize>(PhantomData<&'a ()>);

impl<'de: 'a, 'a, const N: usize> Visitor<'de> for MapVisitor<'a, N> {
    type Value = BoundedMap<'a, N>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of strings or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(BoundedMap::default())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(BoundedMap::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BoundedMap::default();
        while let Some(key) = map.next_key::<&'de str>()? {
            if out.entries.is_full() {
                map.next_value::<IgnoredAny>()?;
            } else {
                let value = map.next_value::<&'de str>()?;
                // Cannot fail: the vector is not full.
                let _ = out.entries.push((key, value));
            }
            out.total = out.total.saturating_add(1);
        }
        Ok(out)
    }
}

/// What serde-json-core found wrong with a JSON file, in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError(&'static str);

impl JsonError {
    /// Describes a serde-json-core error. Its errors carry no position in the file.
    pub(crate) fn from_serde(e: &serde_json_core::de::Error) -> Self {
        use serde_json_core::de::Error as E;
        JsonError(match e {
            E::EofWhileParsingList
            | E::EofWhileParsingObject
            | E::EofWhileParsingString
            | E::EofWhileParsingNumber
            | E::EofWhileParsingValue => "it ends in the middle of a value (truncated?)",
            E::ExpectedColon => "a `:` is missing after an object key",
            E::ExpectedListCommaOrEnd => "a `,` or `]` is missing in an array",
            E::ExpectedObjectCommaOrEnd => "a `,` or `}` is missing in an object",
            E::ExpectedSomeIdent => "a bare word is not `true`, `false` or `null`",
            E::ExpectedSomeValue => "a value is missing or malformed",
            E::InvalidNumber => "a number is malformed or out of range",
            E::InvalidType => "a value has the wrong type",
            E::InvalidUnicodeCodePoint => "a string is not valid UTF-8",
            E::KeyMustBeAString => "an object key is not a string",
            E::TrailingCharacters => "something follows the JSON value",
            E::TrailingComma => "an array or object has a trailing comma",
            E::CustomError => "a value has the wrong type, or a key appears twice",
            _ => "it is not valid JSON",
        })
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Default, Debug)]
    #[serde(default)]
    struct Doc<'a> {
        #[serde(borrow)]
        list: BoundedSeq<&'a str, 2>,
        #[serde(borrow)]
        map: BoundedMap<'a, 2>,
    }

    fn parse(json: &str) -> Result<Doc<'_>, JsonError> {
        serde_json_core::from_str::<Doc<'_>>(json)
            .map(|(doc, _)| doc)
            .map_err(|e| JsonError::from_serde(&e))
    }

    #[test]
    fn keeps_up_to_the_limit_and_counts_the_rest() -> Result<(), JsonError> {
        let at = parse(r#"{"list":["a","b"],"map":{"k":"v","":"w"}}"#)?;
        assert_eq!(
            (at.list.items.as_slice(), at.list.total),
            (&["a", "b"][..], 2)
        );
        assert_eq!(
            (at.map.entries.as_slice(), at.map.total),
            (&[("k", "v"), ("", "w")][..], 2)
        );
        let over = parse(r#"{"list":["a","b",{"x":[1]}],"map":{"a":"1","b":"2","c":{"d":null}}}"#)?;
        assert_eq!(
            (over.list.items.as_slice(), over.list.total),
            (&["a", "b"][..], 3)
        );
        assert_eq!((over.map.entries.len(), over.map.total), (2, 3));
        Ok(())
    }

    #[test]
    fn null_and_missing_are_empty_and_strings_stay_raw() -> Result<(), JsonError> {
        let doc = parse(r#"{"list":null,"map":null}"#)?;
        assert_eq!((doc.list.total, doc.map.total), (0, 0));
        let doc = parse(r#"{"other":[1,2]}"#)?;
        assert_eq!((doc.list.total, doc.map.total), (0, 0));
        let doc = parse(r#"{"list":["a\u0026b"]}"#)?;
        assert_eq!(doc.list.items.as_slice(), &[r"a\u0026b"][..]);
        Ok(())
    }

    #[test]
    fn wrong_shapes_are_errors_in_words() {
        assert_eq!(
            parse(r#"{"list":{"a":"b"}}"#).err(),
            Some(JsonError("a value has the wrong type"))
        );
        assert_eq!(
            parse(r#"{"map":{"a":1}}"#).err(),
            Some(JsonError("a value has the wrong type"))
        );
        assert!(parse(r#"{"list":["a""#).is_err());
        assert!(parse(r#"{"list":[]} x"#).is_err());
    }
}
