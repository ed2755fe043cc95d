//! Cross-field rules of a job file (DESIGN.md §2), checked after serde has read the values: each
//! rule names the field it is about and says what would be valid.

use super::placeholder::{self, has_placeholder};
use super::schema::{JobSpec, LazyPush, Output, PidPolicy, Ready, RestoreMode};
use super::spans::{Anchor, Node};
use std::path::Path;

/// One broken rule: the field, whether to point at its key or value, and the message.
#[derive(Debug)]
pub(crate) struct Problem {
    pub field: String,
    pub anchor: Anchor,
    pub message: String,
}

/// Placeholders a string may use, by where it is used. `{pid}` exists only after launch; a path
/// cannot use the placeholder it defines.
const BEFORE_LAUNCH: &[&str] = &["job", "run", "run_dir", "store"];
const AFTER_LAUNCH: &[&str] = &["job", "run", "run_dir", "store", "pid"];
const STORE_PATH: &[&str] = &["job", "run", "run_dir"];
const REPORT_DIR: &[&str] = &["job", "run", "store"];

/// Smallest `dump.buffer`.
pub const MIN_BUFFER: u64 = 1 << 20;
/// Largest `lazy.prefetch`.
pub const MAX_PREFETCH: u32 = 512;

/// Longest job name: it names files (`<job>-<run id>.json`, `.locks/<job>.lock`) and the run
/// dir, which must stay well within a file name's 255 bytes.
pub const MAX_NAME_LEN: usize = 100;

/// True when `name` can name a job (it names files and directories).
pub fn valid_name(name: &str) -> bool {
    name_problem(name).is_none()
}

/// What is wrong with `name` as a job name, if anything.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("must not be empty".into())
    } else if name.len() > MAX_NAME_LEN {
        Some(format!(
            "is too long ({} characters, at most {MAX_NAME_LEN}): it names files and folders",
            name.chars().count()
        ))
    } else if name == "." || name == ".." {
        Some(format!("\"{name}\" cannot name a job: it means a folder"))
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        Some(format!(
            "\"{name}\" is not a valid job name: use only letters, digits, '.', '_' and '-'"
        ))
    } else {
        None
    }
}

/// `"host:port"` of a page server: a non-empty host (`[v6]` allowed) and a port 1..=65535.
pub fn parse_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|&p| p > 0)?;
    let bare = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    let ok = !bare.is_empty() && !bare.chars().any(|c| c.is_whitespace() || c == '/');
    ok.then_some((host, port))
}

struct Checker<'a> {
    tree: &'a Node,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn at(&mut self, field: &str, anchor: Anchor, message: impl Into<String>) {
        self.problems.push(Problem {
            field: field.into(),
            anchor,
            message: message.into(),
        });
    }
    fn value(&mut self, field: &str, message: impl Into<String>) {
        self.at(field, Anchor::Value, message)
    }
    fn key(&mut self, field: &str, message: impl Into<String>) {
        self.at(field, Anchor::Key, message)
    }
    fn placeholders(&mut self, field: &str, s: &str, allowed: &[&str]) {
        if let Err(e) = placeholder::check(s, allowed) {
            self.value(field, e.to_string());
        }
    }
    fn path_placeholders(&mut self, field: &str, p: &Path, allowed: &[&str]) {
        // Paths come from TOML strings, so they are UTF-8.
        if let Some(s) = p.to_str() {
            self.placeholders(field, s, allowed);
        }
    }
    fn has(&self, field: &str) -> bool {
        self.tree.has(field)
    }
}

/// Checks every cross-field rule of `spec` (as written, before paths are resolved). `dir` is the
/// job file's folder (to check `process.cwd`); `default_name` the file's stem.
pub(crate) fn validate(
    spec: &JobSpec,
    tree: &Node,
    dir: &Path,
    default_name: &str,
) -> Vec<Problem> {
    let mut c = Checker {
        tree,
        problems: Vec::new(),
    };

    match &spec.name {
        Some(n) => {
            if let Some(why) = name_problem(n) {
                c.value("name", why);
            }
        }
        None if default_name.len() > MAX_NAME_LEN => c.value(
            "name",
            format!(
                "the file name is too long for a job name ({} characters, at most \
                 {MAX_NAME_LEN}); set name = \"...\"",
                default_name.chars().count()
            ),
        ),
        None if !valid_name(default_name) => c.value(
            "name",
            format!(
                "the file name \"{default_name}\" is not a valid job name (letters, digits, '.', \
                 '_' and '-' only); set name = \"...\""
            ),
        ),
        None => {}
    }

    process(&mut c, spec, dir);
    stages(&mut c, spec);
    paths(&mut c, spec, dir);

    if let Some(p) = &spec.store.path {
        c.path_placeholders("store.path", p, STORE_PATH);
    }
    bucket_settings(&mut c, spec);
    if spec.store.keep == Some(0) {
        c.value(
            "store.keep",
            "must be at least 1 (the newest image set), found 0",
        );
    }
    c.path_placeholders("report.dir", &spec.report.dir, REPORT_DIR);
    if let Some(h) = &spec.report.history {
        c.path_placeholders("report.history", h, BEFORE_LAUNCH);
    }
    if let Some(m) = &spec.report.metrics {
        c.path_placeholders("report.metrics", m, BEFORE_LAUNCH);
        if m.extension().is_none_or(|e| e != "prom") {
            c.value(
                "report.metrics",
                format!(
                    "must name a .prom file (node_exporter's textfile collector reads only \
                     *.prom), found \"{}\"",
                    m.display()
                ),
            );
        }
    }

    if let Some(v) = &spec.verify {
        if spec.restore.is_none() {
            c.key(
                "verify",
                "needs a [restore] section: verify judges the restored process",
            );
        }
        match v.command.first() {
            None => c.value(
                "verify.command",
                "must not be empty: give the program and its arguments",
            ),
            Some(p) if p.is_empty() => c.value("verify.command[0]", "the program name is empty"),
            Some(_) => {}
        }
        for (i, arg) in v.command.iter().enumerate() {
            c.placeholders(&format!("verify.command[{i}]"), arg, AFTER_LAUNCH);
        }
        if let Some(e) = &v.expect_stdout {
            c.placeholders("verify.expect_stdout", e, AFTER_LAUNCH);
        }
        if v.timeout.0.is_zero() {
            c.value("verify.timeout", "must be greater than 0");
        }
    }
    c.problems
}

/// `[process]`: what to run or attach to, and the settings that only a launch can apply.
fn process(c: &mut Checker, spec: &JobSpec, dir: &Path) {
    let p = &spec.process;
    let given: Vec<&str> = [
        ("command", p.command.is_some()),
        ("pid", p.pid.is_some()),
        ("pidfile", p.pidfile.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    match given.as_slice() {
        [] => c.key("process", "missing: one of command, pid, pidfile"),
        [_] => {}
        [a, b] => c.key(
            &format!("process.{b}"),
            format!("{a} and {b} exclude each other: give only one of command, pid, pidfile"),
        ),
        _ => c.key(
            "process.pidfile",
            "command, pid and pidfile exclude each other: give only one of them",
        ),
    }

    if let Some(cmd) = &p.command {
        match cmd.first() {
            None => c.value(
                "process.command",
                "must not be empty: give the program and its arguments",
            ),
            Some(prog) if prog.is_empty() => {
                c.value("process.command[0]", "the program name is empty")
            }
            Some(_) => {}
        }
        for (i, arg) in cmd.iter().enumerate() {
            if arg.contains('\0') {
                c.value(&format!("process.command[{i}]"), "contains a NUL character");
            }
            c.placeholders(&format!("process.command[{i}]"), arg, BEFORE_LAUNCH);
        }
    }
    if let Some(pid) = p.pid {
        if pid <= 0 {
            c.value(
                "process.pid",
                format!("must be a process ID greater than 0, found {pid}"),
            );
        } else if pid > i64::from(i32::MAX) {
            c.value(
                "process.pid",
                format!("is not a process ID (too large), found {pid}"),
            );
        }
    }
    if let Some(f) = &p.pidfile {
        if f.as_os_str().is_empty() {
            c.value("process.pidfile", "must not be empty");
        }
        c.path_placeholders("process.pidfile", f, BEFORE_LAUNCH);
    }

    // Settings a launch applies; an attached process already has its own.
    if p.command.is_none() && !given.is_empty() {
        for key in ["cwd", "env", "stdout", "stderr"] {
            let field = format!("process.{key}");
            if c.has(&field) {
                c.key(
                    &field,
                    format!("only applies to a launched process (with command); an attached process keeps its own {key}"),
                );
            }
        }
    }

    if let Some(cwd) = &p.cwd {
        c.path_placeholders("process.cwd", cwd, BEFORE_LAUNCH);
        let written = cwd.to_string_lossy();
        if cwd.as_os_str().is_empty() {
            c.value(
                "process.cwd",
                "must not be empty (leave it out for the job file's folder)",
            );
        } else if !has_placeholder(&written) && p.command.is_some() {
            let full = dir.join(cwd);
            match std::fs::metadata(&full) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => c.value(
                    "process.cwd",
                    format!("{} is not a directory", full.display()),
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => c.value(
                    "process.cwd",
                    format!("directory {} does not exist", full.display()),
                ),
                Err(e) => c.value("process.cwd", format!("cannot use {}: {e}", full.display())),
            }
        }
    }
    for (k, v) in &p.env {
        let field = format!("process.env.{k}");
        if k.is_empty() || k.contains(['=', '\0']) {
            c.key(
                &field,
                "an environment variable name must be non-empty, without '=' or NUL",
            );
        }
        if v.contains('\0') {
            c.value(&field, "contains a NUL character");
        }
        c.placeholders(&field, v, BEFORE_LAUNCH);
    }
    for (key, out) in [("stdout", &p.stdout), ("stderr", &p.stderr)] {
        if let Output::Path(path) = out {
            c.path_placeholders(&format!("process.{key}"), path, BEFORE_LAUNCH);
        }
    }
    let Some(ready) = &p.ready else { return };
    match &ready.when {
        Ready::File(f) => {
            if f.as_os_str().is_empty() {
                c.value("process.ready.file", "must not be empty");
            }
            c.path_placeholders("process.ready.file", f, AFTER_LAUNCH);
        }
        Ready::StdoutLine(l) if l.is_empty() => {
            c.value("process.ready.stdout_line", "must not be empty (any line would match)")
        }
        Ready::StdoutLine(_) if p.command.is_none() => c.key(
            "process.ready",
            "stdout_line needs a launched process (with command): haul cannot read an attached process's stdout",
        ),
        Ready::StdoutLine(_) if p.stdout == Output::Null => c.value(
            "process.stdout",
            "\"null\" discards the output that ready.stdout_line waits for: use \"log\" (the \
             default) or a file, or another ready condition",
        ),
        Ready::StdoutLine(_) | Ready::After(_) => {}
    }
    match (&ready.when, ready.timeout) {
        (Ready::After(_), Some(_)) => c.key(
            "process.ready.timeout",
            "does not apply to ready.after (a fixed wait); it bounds the wait for file or \
             stdout_line",
        ),
        (_, Some(t)) if t.0.is_zero() => c.value("process.ready.timeout", "must be greater than 0"),
        _ => {}
    }
}

/// The settings of an `s3://` store: a location that parses, settings only with a bucket,
/// and never credentials.
fn bucket_settings(c: &mut Checker, spec: &JobSpec) {
    use crate::store::bucket;
    let st = &spec.store;
    for (field, v) in [
        ("store.access_key_id", &st.access_key_id),
        ("store.secret_access_key", &st.secret_access_key),
        ("store.session_token", &st.session_token),
    ] {
        if v.is_some() {
            c.key(
                field,
                "credentials are never read from a job file: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) in the environment, or use a credentials file (AWS_SHARED_CREDENTIALS_FILE, default ~/.aws/credentials, profile $AWS_PROFILE)",
            );
        }
    }
    let is_bucket = st.path.as_deref().is_some_and(bucket::is_bucket)
        || (st.path.is_none()
            && std::env::var_os(super::STORE_ENV)
                .is_some_and(|v| bucket::is_bucket(Path::new(&v))));
    if let Some(p) = st.path.as_deref().filter(|p| bucket::is_bucket(p)) {
        if let Err(e) = bucket::BucketUrl::parse(&p.to_string_lossy()) {
            c.value("store.path", e.to_string());
        }
    }
    if !is_bucket {
        for (field, set) in [
            ("store.endpoint", st.endpoint.is_some()),
            ("store.region", st.region.is_some()),
            ("store.path_style", st.path_style.is_some()),
            ("store.cache", st.cache.is_some()),
        ] {
            if set {
                c.key(
                    field,
                    "only for a store in a bucket (store.path = \"s3://bucket/prefix\")",
                );
            }
        }
    }
    if let Some(e) = &st.endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            c.value("store.endpoint", "an http:// or https:// URL");
        }
    }
}

/// Paths the run will create or write, checked against what exists now (unless they hold a
/// placeholder): a store or report folder that is a file, a history or output file that is a
/// folder, a folder that cannot be created because a file is in the way. `dir` is the job
/// file's folder (relative paths are relative to it).
fn paths(c: &mut Checker, spec: &JobSpec, dir: &Path) {
    let plain = |p: &Path| !has_placeholder(&p.to_string_lossy());
    match &spec.store.path {
        Some(p) if crate::store::bucket::is_bucket(p) => {}
        Some(p) if plain(p) => {
            if let Some(why) = dir_problem(&dir.join(p)) {
                c.value("store.path", why);
            }
        }
        Some(_) => {}
        None => match std::env::var_os(super::STORE_ENV).filter(|v| !v.is_empty()) {
            Some(env) if crate::store::bucket::is_bucket(Path::new(&env)) => {}
            Some(env) => {
                if let Some(why) = dir_problem(Path::new(&env)) {
                    c.key(
                        "store.path",
                        format!("the store (${}): {why}", super::STORE_ENV),
                    );
                }
            }
            None => {
                if let Some(why) = dir_problem(&dir.join("haul-store")) {
                    c.key("store.path", format!("the default store: {why}"));
                }
            }
        },
    }
    let report_dir = &spec.report.dir;
    let mut report_dir_ok = plain(report_dir);
    if plain(report_dir) {
        if let Some(why) = dir_problem(&dir.join(report_dir)) {
            c.value("report.dir", why);
            report_dir_ok = false;
        }
    }
    match &spec.report.history {
        Some(h) if plain(h) => {
            if let Some(why) = file_problem(&dir.join(h), false) {
                c.value("report.history", why);
            }
        }
        Some(_) => {}
        None if report_dir_ok => {
            let h = dir
                .join(report_dir)
                .join(super::schema::defaults::HISTORY_FILE);
            if let Some(why) = file_problem(&h, false) {
                c.key("report", format!("the history (report.history): {why}"));
            }
        }
        None => {}
    }
    if let Some(m) = &spec.report.metrics {
        if plain(m) {
            if let Some(why) = file_problem(&dir.join(m), false) {
                c.value("report.metrics", why);
            }
        }
    }
    for (key, out) in [
        ("stdout", &spec.process.stdout),
        ("stderr", &spec.process.stderr),
    ] {
        if let Output::Path(p) = out {
            if plain(p) && !p.as_os_str().is_empty() {
                if let Some(why) = file_problem(&dir.join(p), true) {
                    c.value(&format!("process.{key}"), why);
                }
            }
        }
    }
}

/// Why the folder `p` cannot be used or created (with its parents), if it cannot.
fn dir_problem(p: &Path) -> Option<String> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some(format!("{} is a file, not a folder", p.display())),
        Err(_) => blocked_ancestor(p),
    }
}

/// Why the file `p` cannot be written, if it cannot: it is a folder, or its folder cannot be
/// created (with `parent_must_exist`: does not exist; the runner creates only its own folders).
fn file_problem(p: &Path, parent_must_exist: bool) -> Option<String> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Some(format!("{} is a folder; name a file", p.display())),
        Ok(_) => None,
        Err(_) => {
            let parent = p.parent()?;
            match std::fs::metadata(parent) {
                Ok(m) if m.is_dir() => None,
                Ok(_) => Some(format!("{} is a file, not a folder", parent.display())),
                Err(_) if parent_must_exist => {
                    Some(format!("folder {} does not exist", parent.display()))
                }
                Err(_) => blocked_ancestor(parent),
            }
        }
    }
}

/// For a path that does not exist: the nearest existing ancestor must be a folder, or the path
/// can never be created.
fn blocked_ancestor(p: &Path) -> Option<String> {
    for a in p.ancestors().skip(1) {
        match std::fs::metadata(a) {
            Ok(m) if m.is_dir() => return None,
            Ok(_) => {
                return Some(format!(
                    "cannot create {}: {} is a file, not a folder",
                    p.display(),
                    a.display()
                ))
            }
            Err(_) => {}
        }
    }
    None
}

/// `[predump]`, `[dump]`, `[restore]`, `[lazy]`: values and how the stages fit together.
fn stages(c: &mut Checker, spec: &JobSpec) {
    if let Some(pd) = &spec.predump {
        if pd.interval.0.is_zero() {
            c.value("predump.interval", "must be greater than 0");
        }
        if pd.max_iterations == 0 {
            c.value(
                "predump.max_iterations",
                "must be at least 1 (leave out [predump] for no pre-dumps), found 0",
            );
        }
        if pd.stop_below.0 == 0 {
            c.value("predump.stop_below", "must be greater than 0");
        }
        if pd.stop_growth.is_nan() || pd.stop_growth <= 1.0 {
            c.value(
                "predump.stop_growth",
                format!(
                    "must be greater than 1.0 (1.1 = stop when an iteration writes 10% more than the last), found {}",
                    pd.stop_growth
                ),
            );
        }
    }

    let d = &spec.dump;
    if d.buffer.0 < MIN_BUFFER {
        c.value(
            "dump.buffer",
            format!("must be at least 1MiB, found {} bytes", d.buffer.0),
        );
    }

    let remote = spec.restore.as_ref().is_some_and(|r| r.from != "store");
    if let Some(r) = &spec.restore {
        if r.from != "store" && parse_host_port(&r.from).is_none() {
            c.value(
                "restore.from",
                format!(
                    "expected \"store\" or \"host:port\" of a page server, found \"{}\"",
                    r.from
                ),
            );
        }
        if r.token_file.is_some() && !remote {
            c.value(
                "restore.token_file",
                "is the token of a page server: it needs restore.from = \"host:port\"",
            );
        }
        if r.mode == RestoreMode::Lazy && d.leave_running && !remote {
            c.value(
                "restore.mode",
                "\"lazy\" needs dump.leave_running = false (the original must stop before its pages \
                 are served) or restore.from = \"host:port\" of a page server",
            );
        }
        if r.tty.is_some() && r.mode == RestoreMode::Lazy {
            c.value(
                "restore.tty",
                "is for an eager restore: a lazy restore (mode = \"lazy\") cannot give the job a \
                 terminal yet",
            );
        }
        if r.pid == PidPolicy::Same && d.leave_running && !remote {
            c.value(
                "restore.pid",
                "\"same\" is impossible with dump.leave_running = true: the original keeps that PID; \
                 use pid = \"any\"",
            );
        }
    }
    if d.lazy && spec.restore.as_ref().map(|r| r.mode) != Some(RestoreMode::Lazy) {
        c.value(
            "dump.lazy",
            "needs a [restore] section with mode = \"lazy\": otherwise nobody serves the lazy pages",
        );
    }
    if d.lazy && d.leave_running {
        c.value(
            "dump.leave_running",
            "must be false with dump.lazy = true: the source stays frozen to serve its lazy \
             pages and is killed once the restore has every page",
        );
    }
    if let (true, Some(r)) = (d.lazy, &spec.restore) {
        if r.pid == PidPolicy::Same {
            c.value(
                "restore.pid",
                "\"same\" is impossible with dump.lazy = true: the frozen source keeps its PID \
                 until the restore has every page; use pid = \"any\"",
            );
        }
        if r.from != "store" {
            c.value(
                "restore.from",
                format!(
                    "must be \"store\" with dump.lazy = true (found \"{}\"): the lazy pages come \
                     from the checkpoint worker serving the frozen source, the rest from the store",
                    r.from
                ),
            );
        }
    }

    let l = &spec.lazy;
    if l.prefetch > MAX_PREFETCH {
        c.value(
            "lazy.prefetch",
            format!("must be at most {MAX_PREFETCH}, found {}", l.prefetch),
        );
    }
    if let Some(idle) = l.idle_push {
        if l.push == Some(LazyPush::Continuous) {
            c.key(
                "lazy.idle_push",
                "cannot go with push = \"continuous\", which pushes between faults and never \
                 waits for idle; remove idle_push, or set push = \"idle\"",
            );
        } else if idle.0.is_zero() {
            c.value("lazy.idle_push", "must be greater than 0");
        }
    }
    if l.source_timeout.0.is_zero() {
        c.value("lazy.source_timeout", "must be greater than 0");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_allow_only_file_safe_characters() {
        assert!(valid_name("counter-2.v1_a"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(".."));
    }

    #[test]
    fn host_port_needs_host_and_nonzero_port() {
        assert_eq!(parse_host_port("10.0.0.2:7070"), Some(("10.0.0.2", 7070)));
        assert_eq!(parse_host_port("[::1]:7070"), Some(("[::1]", 7070)));
        assert_eq!(parse_host_port("host:0"), None);
        assert_eq!(parse_host_port(":7070"), None);
        assert_eq!(parse_host_port("host"), None);
        assert_eq!(parse_host_port("::1:7070"), None);
        assert_eq!(parse_host_port("host:99999"), None);
    }
}
