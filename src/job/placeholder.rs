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

/// Splits `s` into literal text and placeholder names, or says what is malformed.
fn walk<'a>(s: &'a str, mut f: impl FnMut(Piece<'a>) -> Result<(), String>) -> Result<(), String> {
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
            return Err(format!("unmatched \"}}\" ({ESCAPE_HINT})"));
        } else {
            let close = tail
                .find('}')
                .ok_or_else(|| format!("unclosed \"{{\" in \"{s}\" ({ESCAPE_HINT})"))?;
            f(Piece::Name(&tail[1..close]))?;
            rest = &tail[close + 1..];
        }
    }
    f(Piece::Text(rest))
}

fn unknown(name: &str) -> String {
    let known: Vec<String> = NAMES.iter().map(|n| format!("{{{n}}}")).collect();
    let names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
    let hint = match super::diag::did_you_mean(name, &names) {
        Some(best) => format!("did you mean \"{{{best}}}\"? "),
        None => String::new(),
    };
    format!(
        "unknown placeholder \"{{{name}}}\"; {hint}known: {} ({ESCAPE_HINT})",
        known.join(", ")
    )
}

/// Substitutes the placeholders of `s`. Errors name an unknown or malformed placeholder, `{pid}`
/// before the PID is known, or a path value that is not UTF-8.
pub fn expand(s: &str, p: &Placeholders) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    walk(s, |piece| {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Name("job") => out.push_str(&p.job),
            Piece::Name("run") => out.push_str(&p.run),
            Piece::Name(n @ ("run_dir" | "store")) => {
                let path = if n == "run_dir" { &p.run_dir } else { &p.store };
                let v = path
                    .to_str()
                    .ok_or_else(|| format!("{{{n}}} is not UTF-8: {}", path.display()))?;
                out.push_str(v);
            }
            Piece::Name("pid") => match p.pid {
                Some(pid) => out.push_str(&pid.to_string()),
                None => return Err("{pid} is not known yet (the process has not started)".into()),
            },
            Piece::Name(n) => return Err(unknown(n)),
        }
        Ok(())
    })?;
    Ok(out)
}

/// [`expand`] for a path (job paths are UTF-8: they come from TOML strings).
pub fn expand_path(path: &Path, p: &Placeholders) -> Result<PathBuf, String> {
    let s = path
        .to_str()
        .ok_or_else(|| format!("path is not UTF-8: {}", path.display()))?;
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
pub(crate) fn check(s: &str, allowed: &[&str]) -> Result<(), String> {
    walk(s, |piece| match piece {
        Piece::Name(n) if !NAMES.contains(&n) => Err(unknown(n)),
        Piece::Name(n) if !allowed.contains(&n) => Err(format!(
            "placeholder \"{{{n}}}\" cannot be used here (allowed: {})",
            allowed
                .iter()
                .map(|a| format!("{{{a}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
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
        let e = expand("{jbo}", &values()).unwrap_err();
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
            .starts_with("unclosed \"{\""));
        assert!(expand("a}b", &values())
            .unwrap_err()
            .starts_with("unmatched \"}\""));
    }

    #[test]
    fn pid_before_launch_is_an_error() {
        let p = Placeholders {
            pid: None,
            ..values()
        };
        assert!(expand("{pid}", &p).unwrap_err().contains("not known yet"));
    }

    #[test]
    fn check_limits_placeholders_to_the_allowed_ones() {
        assert!(check("{job}-{run}", &["job", "run"]).is_ok());
        assert_eq!(
            check("{pid}", &["job"]).unwrap_err(),
            "placeholder \"{pid}\" cannot be used here (allowed: {job})"
        );
        assert!(has_placeholder("a{job}") && !has_placeholder("a{{job}}"));
    }
}
