//! Where each key and value of a job file sits (byte spans), so that rules checked after serde has
//! finished (cross-field rules, placeholders) can still point at a line and column.
//!
//! `toml::Table` carries no positions, so the file is deserialised a second time into [`Node`], a
//! small tree whose every key and value is wrapped in `toml::Spanned` (the toml deserializer fills
//! in spans for that wrapper on keys and on values).

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;
use std::ops::Range;

/// One value of the file with its span; tables keep the span of each key too.
#[derive(Debug)]
pub(crate) struct Node {
    /// Byte range of the value.
    pub span: Range<usize>,
    pub kind: Kind,
}

#[derive(Debug)]
pub(crate) enum Kind {
    /// Keys in file order with the span of the key itself.
    Table(Vec<(String, Range<usize>, Node)>),
    Array(Vec<Node>),
    Str,
    /// Numbers, booleans, dates: nothing below them to locate.
    Scalar,
}

/// A step of a field path: `process.command[0]` is `Key("process"), Key("command"), Index(0)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// Splits a field path as diagnostics print it (`a.b[2].c`) into steps.
pub(crate) fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            segs.push(Seg::Key(key.to_string()));
        }
        while let Some(close) = rest.find(']') {
            if let Ok(i) = rest[1..close].parse() {
                segs.push(Seg::Index(i));
            }
            rest = &rest[close + 1..];
        }
    }
    segs
}

/// What a diagnostic points at: the value (wrong values) or the key (keys that should not be
/// there, sections that miss something).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Anchor {
    Key,
    Value,
}

impl Node {
    /// Parses `text` into a spanned tree; `None` if the text is not TOML (serde reports that).
    pub fn parse(text: &str) -> Option<Node> {
        Node::deserialize(toml::Deserializer::new(text)).ok()
    }

    /// The node at `path`, if every step exists.
    pub fn get(&self, path: &[Seg]) -> Option<&Node> {
        let mut node = self;
        for seg in path {
            node = node.child(seg)?.1;
        }
        Some(node)
    }

    fn child(&self, seg: &Seg) -> Option<(Option<&Range<usize>>, &Node)> {
        match (&self.kind, seg) {
            (Kind::Table(entries), Seg::Key(k)) => entries
                .iter()
                .find(|(name, _, _)| name == k)
                .map(|(_, ks, n)| (Some(ks), n)),
            (Kind::Array(items), Seg::Index(i)) => items.get(*i).map(|n| (None, n)),
            _ => None,
        }
    }

    /// True when the key at `path` is written in the file.
    pub fn has(&self, path: &str) -> bool {
        self.get(&parse_path(path)).is_some()
    }

    /// Byte offset to report for `path`: its key or value as `anchor` asks; when the path does not
    /// exist (a missing key), the key of the deepest section that does. `None` at the top level.
    pub fn locate(&self, path: &[Seg], anchor: Anchor) -> Option<usize> {
        let mut node = self;
        let mut key_span: Option<&Range<usize>> = None;
        let mut exact = true;
        for seg in path {
            match node.child(seg) {
                Some((ks, child)) => {
                    node = child;
                    // An array element has no key of its own: its own span is the best "key".
                    key_span = ks.or(Some(&child.span));
                }
                None => {
                    exact = false;
                    break;
                }
            }
        }
        match (exact, anchor) {
            (true, Anchor::Value) if !path.is_empty() => Some(node.span.start),
            _ => key_span.map(|s| s.start),
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = toml::Spanned::<Kind>::deserialize(d)?;
        let span = spanned.span();
        Ok(Node {
            span,
            kind: spanned.into_inner(),
        })
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any TOML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Kind, E> {
        Ok(Kind::Scalar)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Kind, E> {
        Ok(Kind::Scalar)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Kind, E> {
        Ok(Kind::Scalar)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Kind, E> {
        Ok(Kind::Scalar)
    }
    fn visit_str<E>(self, _: &str) -> Result<Kind, E> {
        Ok(Kind::Str)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = seq.next_element::<Node>()? {
            items.push(n);
        }
        Ok(Kind::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<toml::Spanned<String>>()? {
            let span = key.span();
            let value = map.next_value::<Node>()?;
            entries.push((key.into_inner(), span, value));
        }
        Ok(Kind::Table(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_keys_and_indices() {
        assert_eq!(
            parse_path("process.command[1]"),
            vec![
                Seg::Key("process".into()),
                Seg::Key("command".into()),
                Seg::Index(1)
            ]
        );
        assert_eq!(parse_path(""), vec![]);
    }

    #[test]
    fn locate_finds_keys_values_and_array_elements() {
        let text = "[process]\ncommand = [\"a\", \"b\"]\n[predump]\ninterval = \"1s\"\n";
        let tree = Node::parse(text).unwrap();
        let at = |p: &str, a| tree.locate(&parse_path(p), a).unwrap();
        assert_eq!(
            &text[at("predump.interval", Anchor::Value)..][..4],
            "\"1s\""
        );
        assert_eq!(
            &text[at("predump.interval", Anchor::Key)..][..8],
            "interval"
        );
        assert_eq!(
            &text[at("process.command[1]", Anchor::Value)..][..3],
            "\"b\""
        );
        // A missing key points at its section's header.
        assert_eq!(
            &text[at("predump.tracker", Anchor::Value)..][..7],
            "predump"
        );
        assert!(tree.has("process.command") && !tree.has("process.pid"));
    }
}
