//! Placeholders in job strings: `{job}`, `{run}`, `{run_dir}`, `{store}`, `{pid}`; `{{` and `}}`
//! stand for literal braces. Unknown names are rejected when the job is loaded (by `check`); the
//! values are substituted at run time ([`expand`]).

use std::path::{Path, PathBuf};

/// Every placeholder name, in the order the docs list them.
pub const NAMES: [&str; 5] = ["job", "run", "run_dir", "store", "pid"];

/// Placeholders that expand to absolute paths: a relative path starting with one of them is not
/// joined to the job's folder.
pub(crate) const ABSOLUTE: [&str; 2] = ["{run_dir}", "{store}"];

/// Values of the placeholders for one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placeholders {
    /// `{job}`: the job's name.
    pub job: String,
    /// `{run}`: the run id.
    pub run: String,
    /// `{run_dir}`: `<report.dir>/<job>-<run id>` (computed by the runner).
    pub run_dir: PathBuf,
    /// `{store}`: the store's path.
    pub store: PathBuf,
    /// `{pid}`: the process's PID, known only once it is launched (or restored).
    pub pid: Option<i32>,
}

enum Piece<'a> {
    Text(&'a str),
    Name(&'a str),
}

const ESCAPE_HINT: &str = "write {{ and }} for literal braces";

/// Why a string's placeholders cannot be checked or expanded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    #[error("unmatched \"}}\" ({ESCAPE_HINT})")]
    Unmatched,
    #[error("unclosed \"{{\" in \"{text}\" ({ESCAPE_HINT})")]
    Unclosed { text: String },
    #[error("{}", unknown(.name))]
    Unknown { name: String },
    #[error("placeholder \"{{{name}}}\" cannot be used here (allowed: {})", braced(.allowed))]
    NotAllowed { name: String, allowed: Vec<String> },
    #[error("{{{name}}} is not UTF-8: {}", .path.display())]
    ValueNotUtf8 { name: &'static str, path: PathBuf },
    #[error("{{pid}} is not known yet (the process has not started)")]
    PidUnknown,
    #[error("path is not UTF-8: {}", .path.display())]
    PathNotUtf8 { path: PathBuf },
}

/// Splits `s` into literal text and placeholder names, or says what is malformed.
fn walk<'a>(
    s: &'a str,
    mut f: impl FnMut(Piece<'a>) -> Result<(), PlaceholderError>,
) -> Result<(), PlaceholderError> {
    let mut rest = s;
    while let Some(i) = rest.find(['{', '}']) {
        f(Piece::Text(&rest[..i]))?;
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            f(Piece::Text("{"))?;
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            f(Piece::Text("}"))?;
            rest = after;
        } else if tail.starts_with('}') {
            return Err(PlaceholderError::Unmatched);
        } else {
            let close = tail
                .find('}')
                .ok_or_else(|| PlaceholderError::Unclosed { text: s.into() })?;
            f(Piece::Name(&tail[1..close]))?;
            rest = &tail[close + 1..];
        }
    }
    f(Piece::Text(rest))
}

/// `{a}, {b}` for the names given.
fn braced<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| format!("{{{}}}", n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The message for an unknown placeholder: the closest known name, and every known one.
fn unknown(name: &str) -> String {
    let names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
    let hint = match super::diag::did_you_mean(name, &names) {
        Some(best) => format!("did you mean \"{{{best}}}\"? "),
        None => String::new(),
    };
    format!(
        "unknown placeholder \"{{{name}}}\"; {hint}known: {} ({ESCAPE_HINT})",
        braced(&NAMES)
    )
}

/// Substitutes the placeholders of `s`. Errors name an unknown or malformed placeholder, `{pid}`
/// before the PID is known, or a path value that is not UTF-8.
pub fn expand(s: &str, p: &Placeholders) -> Result<String, PlaceholderError> {
    let mut out = String::with_capacity(s.len());
    walk(s, |piece| {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Name("job") => out.push_str(&p.job),
            Piece::Name("run") => out.push_str(&p.run),
            Piece::Name(n @ ("run_dir" | "store")) => {
                let (name, path) = if n == "run_dir" {
                    ("run_dir", &p.run_dir)
                } else {
                    ("store", &p.store)
                };
                let v = path
                    .to_str()
                    .ok_or_else(|| PlaceholderError::ValueNotUtf8 {
                        name,
                        path: path.clone(),
                    })?;
                out.push_str(v);
            }
            Piece::Name("pid") => match p.pid {
                Some(pid) => out.push_str(&pid.to_string()),
                None => return Err(PlaceholderError::PidUnknown),
            },
            Piece::Name(n) => return Err(PlaceholderError::Unknown { name: n.into() }),
        }
        Ok(())
    })?;
    Ok(out)
}

/// [`expand`] for a path (job paths are UTF-8: they come from TOML strings).
pub fn expand_path(path: &Path, p: &Placeholders) -> Result<PathBuf, PlaceholderError> {
    let s = path.to_str().ok_or_else(|| PlaceholderError::PathNotUtf8 {
        path: path.to_path_buf(),
    })?;
    expand(s, p).map(PathBuf::from)
}

/// True when `s` holds at least one placeholder (not counting `{{`/`}}` escapes).
pub fn has_placeholder(s: &str) -> bool {
    let mut found = false;
    let _ = walk(s, |piece| {
        if let Piece::Name(_) = piece {
            found = true;
        }
        Ok(())
    });
    found
}

/// Checks at load time that `s` uses only placeholders of `allowed` and is well formed.
pub(crate) fn check(s: &str, allowed: &[&str]) -> Result<(), PlaceholderError> {
    walk(s, |piece| match piece {
        Piece::Name(n) if !NAMES.contains(&n) => Err(PlaceholderError::Unknown { name: n.into() }),
        Piece::Name(n) if !allowed.contains(&n) => Err(PlaceholderError::NotAllowed {
            name: n.into(),
            allowed: allowed.iter().map(|a| a.to_string()).collect(),
        }),
        _ => Ok(()),
    })
}

/// `s` with every brace doubled, so that [`expand`] gives back `s`.
pub(crate) fn escape(s: &str) -> String {
    s.replace('{', "{{").replace('}', "}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Placeholders {
        Placeholders {
            job: "counter".into(),
            run: "20250101-1".into(),
            run_dir: "/r/counter-20250101-1".into(),
            store: "/s".into(),
            pid: Some(42),
        }
    }

    #[test]
    fn expand_substitutes_every_placeholder() {
        let s = "{job} {run} {run_dir} {store} {pid}";
        assert_eq!(
            expand(s, &values()).unwrap(),
            "counter 20250101-1 /r/counter-20250101-1 /s 42"
        );
        assert_eq!(
            expand("{run_dir}/counter.log", &values()).unwrap(),
            "/r/counter-20250101-1/counter.log"
        );
    }

    #[test]
    fn expand_keeps_text_without_placeholders() {
        assert_eq!(expand("", &values()).unwrap(), "");
        assert_eq!(expand("plain text", &values()).unwrap(), "plain text");
    }

    #[test]
    fn doubled_braces_are_literal() {
        assert_eq!(expand("{{job}}", &values()).unwrap(), "{job}");
        assert_eq!(
            expand("{{\"a\": {pid}}}", &values()).unwrap(),
            "{\"a\": 42}"
        );
        assert_eq!(expand(&escape("/tmp/{x}"), &values()).unwrap(), "/tmp/{x}");
    }

    #[test]
    fn expand_rejects_unknown_placeholder_with_suggestion() {
        let e = expand("{jbo}", &values()).unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown placeholder \"{jbo}\"; did you mean \"{job}\"? known: {job}, {run}, \
             {run_dir}, {store}, {pid} (write {{ and }} for literal braces)"
        );
    }

    #[test]
    fn expand_rejects_unbalanced_braces() {
        assert!(expand("{job", &values())
            .unwrap_err()
            .to_string()
            .starts_with("unclosed \"{\""));
        assert!(expand("a}b", &values())
            .unwrap_err()
            .to_string()
            .starts_with("unmatched \"}\""));
    }

    #[test]
    fn pid_before_launch_is_an_error() {
        let p = Placeholders {
            pid: None,
            ..values()
        };
        assert!(expand("{pid}", &p)
            .unwrap_err()
            .to_string()
            .contains("not known yet"));
    }

    #[test]
    fn non_utf8_paths_are_named_in_the_error() {
        use std::os::unix::ffi::OsStrExt;
        let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/r/\xff"));
        let e = expand_path(&odd, &values()).unwrap_err();
        assert_eq!(e, PlaceholderError::PathNotUtf8 { path: odd.clone() });
        assert_eq!(e.to_string(), "path is not UTF-8: /r/\u{fffd}");
        let p = Placeholders {
            run_dir: odd,
            ..values()
        };
        assert_eq!(
            expand("{run_dir}/log", &p).unwrap_err().to_string(),
            "{run_dir} is not UTF-8: /r/\u{fffd}"
        );
    }

    #[test]
    fn check_limits_placeholders_to_the_allowed_ones() {
        assert!(check("{job}-{run}", &["job", "run"]).is_ok());
        assert_eq!(
            check("{pid}", &["job"]).unwrap_err().to_string(),
            "placeholder \"{pid}\" cannot be used here (allowed: {job})"
        );
        assert!(has_placeholder("a{job}") && !has_placeholder("a{{job}}"));
    }
}
