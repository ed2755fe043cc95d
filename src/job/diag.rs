//! Diagnostics: one problem of a job file, with the file, the line and column of the offending
//! value (or key), the field path and a message written for the person editing the file.

use super::schema::READY_FORMS;
use super::spans::{parse_path, Anchor, Node};
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem of a job file.
///
/// Displays as `{file}:{line}:{col}: {field}: {message}`; without a position (`line == 0`, e.g.
/// the file is empty) as `{file}: {field}: {message}`; and without a field as
/// `{file}:{line}:{col}: {message}` / `{file}: {message}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when there is no position.
    pub line: usize,
    /// 1-based, in characters; 0 when there is no position.
    pub col: usize,
    /// Dotted path of the field, `predump.interval`, `process.command[0]`; may be empty.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl Diagnostic {
    /// A diagnostic without a position.
    pub fn whole_file(file: &Path, field: &str, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line: 0,
            col: 0,
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// A diagnostic at byte `offset` of `text` (none if `offset` is `None`).
    pub(crate) fn at(
        file: &Path,
        text: &str,
        offset: Option<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> Self {
        let (line, col) = offset.map(|o| line_col(text, o)).unwrap_or((0, 0));
        Diagnostic {
            file: file.to_path_buf(),
            line,
            col,
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// A diagnostic at the key or value of `field`, located in the spanned `tree`.
    pub(crate) fn at_field(
        file: &Path,
        text: &str,
        tree: Option<&Node>,
        field: &str,
        anchor: Anchor,
        message: impl Into<String>,
    ) -> Self {
        let offset = tree.and_then(|t| t.locate(&parse_path(field), anchor));
        Diagnostic::at(file, text, offset, field, message)
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, before[line_start..].chars().count() + 1)
}

/// 1-based line and column of byte `offset` in bytes that are not (all) UTF-8; columns count bytes.
pub(crate) fn line_col_bytes(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    (line, offset - line_start + 1)
}

/// Renders a serde path (`serde_path_to_error`) the way diagnostics print fields.
pub(crate) fn field_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// Turns a deserialisation error of the whole file into a diagnostic: the field from the serde
/// path, the position from the toml span (or, failing that, from the spanned tree), and serde's
/// wording rewritten for people (`did you mean`, `expected an integer`, ...).
pub(crate) fn from_de_error(
    file: &Path,
    text: &str,
    tree: Option<&Node>,
    err: serde_path_to_error::Error<toml::de::Error>,
) -> Diagnostic {
    let mut field = field_of(err.path());
    let inner = err.into_inner();
    let raw = inner.message().trim().to_string();
    let mut anchor = Anchor::Value;

    let message = if let Some(rest) = raw.strip_prefix("unknown field `") {
        // The serde path already ends with the unknown key.
        let (name, expected) = split_unknown(rest);
        let parent = field.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
        let is_section = parent.is_empty()
            && tree
                .and_then(|t| t.get(&parse_path(&field)))
                .is_some_and(|n| matches!(n.kind, super::spans::Kind::Table(_)));
        let what = if is_section {
            "unknown section"
        } else {
            "unknown key"
        };
        anchor = Anchor::Key;
        format!(
            "{what}; {}",
            suggest(
                &name,
                &expected,
                if is_section { "sections" } else { "keys" }
            )
        )
    } else if let Some(rest) = raw.strip_prefix("unknown variant `") {
        let (name, expected) = split_unknown(rest);
        let quoted: Vec<String> = expected.iter().map(|e| format!("\"{e}\"")).collect();
        match did_you_mean(&name, &expected) {
            Some(best) => format!("unknown value \"{name}\"; did you mean \"{best}\"?"),
            None => format!(
                "unknown value \"{name}\"; expected one of {}",
                quoted.join(", ")
            ),
        }
    } else if let Some(rest) = raw.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        field = if field.is_empty() {
            name.to_string()
        } else {
            format!("{field}.{name}")
        };
        anchor = Anchor::Key;
        if field == "process" {
            "missing section [process]: a job needs a process to launch or attach to".into()
        } else {
            "missing (this key is required)".into()
        }
    } else if raw.starts_with("wanted exactly 1 element") || raw == "wanted string or table" {
        // toml's wording for enums: a one-key table (`ready`) or a string (`mode`, `tracker`).
        if field.ends_with("ready") {
            READY_FORMS.to_string()
        } else if raw.starts_with("wanted exactly") {
            "expected exactly one key".to_string()
        } else {
            "expected a string".to_string()
        }
    } else if let Some(msg) = rewrite_invalid(&raw) {
        msg
    } else if raw.starts_with("number too large to fit")
        || raw.starts_with("number too small to fit")
    {
        // toml's own integers stop at 64 bits; it says so while parsing, before any field.
        let found = inner
            .span()
            .map(|s| value_text(text, s.start))
            .unwrap_or_default();
        let (what, limit) = if raw.contains("too large") {
            ("too large", i64::MAX)
        } else {
            ("too small", i64::MIN)
        };
        format!("{what}, found {found} (a TOML integer ends at {limit})")
    } else {
        // toml syntax errors come as several lines ("invalid table header\nexpected ...").
        raw.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(": ")
    };

    let offset = match inner.span() {
        // For unknown keys toml points at the key already; keep its span.
        Some(span) => Some(span.start),
        None => tree.and_then(|t| t.locate(&parse_path(&field), anchor)),
    };
    if field.is_empty() {
        // An error toml raised while parsing a value (before serde knew its field).
        if let Some(f) = offset.and_then(|o| field_at(text, o)) {
            field = f;
        }
    }
    Diagnostic::at(file, text, offset, &field, message)
}

/// The value written at byte `offset` of `text`, up to the next space, `,`, `]`, `}` or `#`.
fn value_text(text: &str, offset: usize) -> String {
    let rest = text.get(offset..).unwrap_or_default();
    let end = rest
        .find(|c: char| c.is_whitespace() || matches!(c, ',' | ']' | '}' | '#'))
        .unwrap_or(rest.len());
    rest[..end].to_string()
}

/// The field whose value is at byte `offset`, read from the text itself (the spanned tree cannot
/// be built from a file toml cannot parse): the `[section]` header above the line, then the keys
/// of the line up to the offset (`key = `, also inside inline tables). `None` when the offset is
/// not inside a value of a `key = value` line (a bad header, a multi-line array's later line).
pub(crate) fn field_at(text: &str, offset: usize) -> Option<String> {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);

    // Keys of the line: a stack of the inline tables (Some(key)) and arrays (None) open at the
    // offset, and the key whose value is being written.
    let mut open: Vec<Option<String>> = Vec::new();
    let mut key: Option<String> = None;
    let mut token = String::new();
    let mut quote: Option<char> = None;
    for c in before[line_start..].chars() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            token.push(c);
            continue;
        }
        match c {
            '"' | '\'' => {
                quote = Some(c);
                token.push(c);
            }
            '=' => {
                key = Some(
                    token
                        .trim()
                        .split('.')
                        .map(|k| k.trim().trim_matches(['"', '\'']))
                        .collect::<Vec<_>>()
                        .join("."),
                );
                token.clear();
            }
            '{' => {
                open.push(Some(key.take()?));
                token.clear();
            }
            '[' => {
                open.push(None);
                token.clear();
            }
            '}' | ']' => {
                if let Some(Some(k)) = open.pop() {
                    key = Some(k);
                }
                token.clear();
            }
            ',' => {
                if !matches!(open.last(), Some(None)) {
                    key = None;
                }
                token.clear();
            }
            _ => token.push(c),
        }
    }
    let key = key.filter(|k| !k.is_empty())?;

    let header = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| {
            let inner = l.trim_start_matches('[');
            let end = inner.find(']').unwrap_or(inner.len());
            inner[..end].trim().to_string()
        });
    let mut path: Vec<String> = header.into_iter().filter(|h| !h.is_empty()).collect();
    path.extend(open.into_iter().flatten());
    path.push(key);
    Some(path.join("."))
}

/// Splits "name`, expected one of `a`, `b`" into ("name", ["a", "b"]).
fn split_unknown(rest: &str) -> (String, Vec<String>) {
    let (name, tail) = rest.split_once('`').unwrap_or((rest, ""));
    let expected = tail
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect();
    (name.to_string(), expected)
}

/// The candidate closest to `name`, if it is close enough to be what was meant.
pub(crate) fn did_you_mean<'a>(name: &str, candidates: &'a [String]) -> Option<&'a str> {
    let best = candidates
        .iter()
        .map(|c| {
            (
                c,
                strsim::damerau_levenshtein(name, c),
                strsim::jaro_winkler(name, c),
            )
        })
        .min_by(|a, b| a.1.cmp(&b.1).then(b.2.total_cmp(&a.2)))?;
    let longest = name.chars().count().max(best.0.chars().count());
    (best.1 * 3 <= longest || best.2 >= 0.9).then_some(best.0.as_str())
}

/// `did you mean "x"?`, or the list of what is valid when nothing is close.
fn suggest(name: &str, expected: &[String], what: &str) -> String {
    match did_you_mean(name, expected) {
        Some(best) => format!("did you mean \"{best}\"?"),
        None if expected.is_empty() => format!("this table has no {what}"),
        None => format!("valid {what}: {}", expected.join(", ")),
    }
}

/// Rewrites serde's "invalid type: X, expected Y" / "invalid value: X, expected Y" in words that
/// do not mention Rust types.
fn rewrite_invalid(raw: &str) -> Option<String> {
    let (found, expected) = raw
        .strip_prefix("invalid type: ")
        .or_else(|| raw.strip_prefix("invalid value: "))?
        .split_once(", expected ")?;
    let found_h = humanize_found(found);
    let negative = found.starts_with("integer `-");
    let unsigned = matches!(expected, "u8" | "u16" | "u32" | "u64" | "usize");
    if unsigned && negative {
        return Some(format!("must not be negative, found {found_h}"));
    }
    if found.starts_with("integer `") && unsigned | matches!(expected, "i32" | "i64") {
        let max = match expected {
            "u8" => u8::MAX.to_string(),
            "u16" => u16::MAX.to_string(),
            "u32" => u32::MAX.to_string(),
            "i32" => i32::MAX.to_string(),
            _ => i64::MAX.to_string(),
        };
        return Some(format!("too large (at most {max}), found {found_h}"));
    }
    let expected_h = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number (0 or more)",
        "i8" | "i16" | "i32" | "i64" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a sequence" => "an array",
        "a string" => "a string",
        e if e.starts_with("struct ") || e == "a map" => "a table",
        e if e.starts_with("enum ") => "one of the allowed values",
        e => e,
    };
    Some(format!("expected {expected_h}, found {found_h}"))
}

/// serde's `integer \`-1\`` → `-1`, `sequence` → `an array`, `string "x"` stays.
fn humanize_found(found: &str) -> String {
    for prefix in ["integer `", "floating point `", "boolean `"] {
        if let Some(v) = found.strip_prefix(prefix) {
            return v.trim_end_matches('`').to_string();
        }
    }
    match found {
        "sequence" => "an array".into(),
        "map" => "a table".into(),
        f => f.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_position_and_field_only_when_known() {
        let mut d = Diagnostic {
            file: "jobs/x.toml".into(),
            line: 7,
            col: 12,
            field: "predump.interval".into(),
            message: "bad".into(),
        };
        assert_eq!(d.to_string(), "jobs/x.toml:7:12: predump.interval: bad");
        d.line = 0;
        assert_eq!(d.to_string(), "jobs/x.toml: predump.interval: bad");
        d.field.clear();
        assert_eq!(d.to_string(), "jobs/x.toml: bad");
    }

    #[test]
    fn line_col_counts_characters_from_one() {
        let t = "ab\ncdé = 1\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, t.find('=').unwrap()), (2, 5));
    }

    #[test]
    fn field_at_reads_the_section_and_keys_before_a_value() {
        let t = "[process]\ncommand = [\"a\"]\n\n[store]\nkeep = 999\n";
        assert_eq!(
            field_at(t, t.find("999").unwrap()).as_deref(),
            Some("store.keep")
        );
        let t = "[process]\nready = { file = \"x=y\", timeout = 5 }\n";
        assert_eq!(
            field_at(t, t.find('5').unwrap()).as_deref(),
            Some("process.ready.timeout")
        );
        let t = "name = \"a\"\nprocess.pid = 12\n";
        assert_eq!(
            field_at(t, t.find("12").unwrap()).as_deref(),
            Some("process.pid")
        );
        let t = "[process]\ncommand = [\"a\", 7]\n";
        assert_eq!(
            field_at(t, t.find('7').unwrap()).as_deref(),
            Some("process.command")
        );
        // Not in a value: a header.
        let t = "[process]\n[predump\n";
        assert_eq!(field_at(t, t.len() - 1), None);
    }

    #[test]
    fn did_you_mean_picks_close_names_only() {
        let keys: Vec<String> = ["interval", "max_iterations", "tracker"]
            .map(String::from)
            .into();
        assert_eq!(did_you_mean("intervall", &keys), Some("interval"));
        assert_eq!(did_you_mean("maxiterations", &keys), Some("max_iterations"));
        assert_eq!(did_you_mean("colour", &keys), None);
    }

    #[test]
    fn serde_unknown_field_wording_is_still_parsed() {
        // Guards the dependency on serde's wording of unknown fields.
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct S {
            alpha: Option<u32>,
            beta: Option<u32>,
        }
        let err = toml::from_str::<S>("gamma = 1").unwrap_err();
        let rest = err.message().strip_prefix("unknown field `").unwrap();
        assert_eq!(
            split_unknown(rest),
            ("gamma".to_string(), vec!["alpha".into(), "beta".into()])
        );
    }
}
