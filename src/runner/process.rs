//! The job's process: launching a command or attaching to a running process, waiting for it to
//! be ready, and stopping it.

use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::RunError;
use crate::job::{expand, Output, Placeholders, ProcessSpec, Ready, ReadySpec};

/// How long a launched process gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The process a job works on.
pub struct Target {
    pub pid: i32,
    /// Set when haul launched it (then haul also reaps it).
    pub child: Option<Child>,
    /// Where its stdout goes, when it goes to a file (for `ready.stdout_line`).
    pub stdout_path: Option<PathBuf>,
    /// Set once a stage ended it on purpose (a dump that stops the process).
    pub gone: bool,
}

impl Target {
    pub fn launched(&self) -> bool {
        self.child.is_some()
    }

    /// True once the process has exited (reaped for a launched one).
    pub fn exited(&mut self) -> Option<String> {
        match &mut self.child {
            Some(c) => match c.try_wait() {
                Ok(Some(st)) => Some(st.to_string()),
                Ok(None) => None,
                Err(e) => Some(format!("cannot wait for it: {e}")),
            },
            None => {
                if pid_alive(self.pid) {
                    None
                } else {
                    Some("exited".into())
                }
            }
        }
    }
}

/// True while `/proc/PID` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

fn open_output(
    o: &Output,
    log: PathBuf,
    ph: &Placeholders,
) -> Result<(Stdio, Option<PathBuf>), RunError> {
    let path = match o {
        Output::Null => return Ok((Stdio::null(), None)),
        Output::Log => log,
        Output::Path(p) => {
            PathBuf::from(expand(&p.to_string_lossy(), ph).map_err(RunError::Placeholder)?)
        }
    };
    let f: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| RunError::Setup(format!("open {}: {e}", path.display())))?;
    Ok((Stdio::from(f), Some(path)))
}

/// Launches `spec.command` with its cwd and env, stdin from /dev/null and stdout/stderr as
/// configured, in a process group of its own (so a Ctrl-C at the terminal reaches only haul,
/// which then stops it cleanly).
pub fn launch(spec: &ProcessSpec, run_dir: &Path, ph: &Placeholders) -> Result<Target, RunError> {
    let argv = spec.command.as_deref().unwrap_or_default();
    let argv: Vec<String> = argv
        .iter()
        .map(|a| expand(a, ph))
        .collect::<Result<_, _>>()
        .map_err(RunError::Placeholder)?;
    let Some((prog, args)) = argv.split_first() else {
        return Err(RunError::Setup("process.command is empty".into()));
    };
    let mut cmd = Command::new(prog);
    cmd.args(args).stdin(Stdio::null()).process_group(0);
    crate::sys::spawn::close_inherited_fds(&mut cmd);
    let cwd = match &spec.cwd {
        Some(c) => {
            let c = PathBuf::from(expand(&c.to_string_lossy(), ph).map_err(RunError::Placeholder)?);
            // exec would blame a missing cwd on the program (ENOENT): name it first.
            check_cwd(prog, &c)?;
            cmd.current_dir(&c);
            Some(c)
        }
        None => None,
    };
    for (k, v) in &spec.env {
        cmd.env(k, expand(v, ph).map_err(RunError::Placeholder)?);
    }
    let (out, stdout_path) = open_output(&spec.stdout, run_dir.join("stdout.log"), ph)?;
    let (err, _) = open_output(&spec.stderr, run_dir.join("stderr.log"), ph)?;
    cmd.stdout(out).stderr(err);
    let child = cmd.spawn().map_err(|e| {
        // The cwd may have gone since it was checked.
        match cwd.as_deref().map(|c| check_cwd(prog, c)) {
            Some(Err(cwd_err)) => cwd_err,
            _ => RunError::Launch {
                command: prog.clone(),
                source: e,
            },
        }
    })?;
    Ok(Target {
        pid: child.id() as i32,
        child: Some(child),
        stdout_path,
        gone: false,
    })
}

/// The launch's working directory must be a directory that exists.
fn check_cwd(prog: &str, cwd: &Path) -> Result<(), RunError> {
    let err = |source| RunError::Cwd {
        command: prog.to_string(),
        cwd: cwd.to_path_buf(),
        source,
    };
    match std::fs::metadata(cwd) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(err(std::io::ErrorKind::NotADirectory.into())),
        Err(e) => Err(err(e)),
    }
}

/// Attaches to a running process by pid or pidfile, after checking that it exists, is not a
/// zombie, is not haul itself, and is not traced by someone else.
pub fn attach(spec: &ProcessSpec, ph: &Placeholders) -> Result<Target, RunError> {
    let pid = match (spec.pid, &spec.pidfile) {
        (Some(p), _) => {
            i32::try_from(p).map_err(|_| RunError::Attach(format!("pid {p} is out of range")))?
        }
        (None, Some(f)) => {
            let f = PathBuf::from(expand(&f.to_string_lossy(), ph).map_err(RunError::Placeholder)?);
            read_pidfile(&f)?
        }
        (None, None) => {
            return Err(RunError::Setup(
                "process needs command, pid or pidfile".into(),
            ))
        }
    };
    check_attachable(pid)?;
    Ok(Target {
        pid,
        child: None,
        stdout_path: None,
        gone: false,
    })
}

/// Reads a pidfile: one positive integer, surrounding whitespace allowed.
pub fn read_pidfile(path: &Path) -> Result<i32, RunError> {
    let text = std::fs::read(path)
        .map_err(|e| RunError::Attach(format!("pidfile {}: {e}", path.display())))?;
    let s = String::from_utf8_lossy(&text);
    let t = s.trim();
    match t.parse::<i32>() {
        Ok(p) if p > 0 => Ok(p),
        _ => {
            let shown: String = t.chars().take(40).collect();
            Err(RunError::Attach(format!(
                "pidfile {}: expected a process id, found \"{}\"",
                path.display(),
                shown.escape_debug()
            )))
        }
    }
}

/// Checks that `pid` is a live process we may trace.
pub fn check_attachable(pid: i32) -> Result<(), RunError> {
    if pid == std::process::id() as i32 {
        return Err(RunError::Attach(format!("pid {pid} is haul itself")));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| RunError::Attach(format!("pid {pid}: no such process")))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    if field("State:").is_some_and(|s| s.starts_with('Z')) {
        return Err(RunError::Attach(format!(
            "pid {pid} is a zombie (it has exited)"
        )));
    }
    if let Some(t) = field("TracerPid:")
        .and_then(|t| t.parse::<i32>().ok())
        .filter(|&t| t != 0)
    {
        return Err(RunError::Attach(format!(
            "pid {pid} is already traced by pid {t}"
        )));
    }
    let euid = crate::sys::process::geteuid();
    let uid = field("Uid:")
        .and_then(|u| u.split_whitespace().nth(1))
        .and_then(|u| u.parse::<u32>().ok());
    if euid != 0 && uid != Some(euid) {
        return Err(RunError::Attach(format!(
            "pid {pid} belongs to uid {}: haul (uid {euid}) may not trace it",
            uid.map(|u| u.to_string()).unwrap_or_else(|| "?".into())
        )));
    }
    Ok(())
}

/// Waits until the process is ready. Fails if it exits first, if the runner is interrupted, or
/// when a `file` or `stdout_line` condition is not met within `ready.timeout`.
pub fn wait_ready(
    target: &mut Target,
    ready: Option<&ReadySpec>,
    ph: &Placeholders,
    stop: &AtomicBool,
) -> Result<(), RunError> {
    let start = Instant::now();
    let Some(ready) = ready else {
        return check_exit(target);
    };
    let timeout = ready.timeout();
    let file = match &ready.when {
        Ready::File(f) => Some(PathBuf::from(
            expand(&f.to_string_lossy(), ph).map_err(RunError::Placeholder)?,
        )),
        _ => None,
    };
    let line = match &ready.when {
        Ready::StdoutLine(l) => match &target.stdout_path {
            Some(p) => Some((l.as_str(), p.clone())),
            // Validation rejects stdout = "null" with stdout_line; an attached process has none.
            None => {
                return Err(RunError::Setup(
                    "ready.stdout_line needs process.stdout to go to \"log\" or a file".into(),
                ))
            }
        },
        _ => None,
    };
    let deadline = match &ready.when {
        Ready::After(d) => d.0,
        _ => timeout.0,
    };
    loop {
        check_exit(target)?;
        if stop.load(Ordering::Relaxed) {
            return Err(RunError::Interrupted);
        }
        let elapsed = start.elapsed();
        if let Some(f) = &file {
            if f.exists() {
                return Ok(());
            }
        }
        if let Some((l, p)) = &line {
            if std::fs::read(p)
                .is_ok_and(|b| String::from_utf8_lossy(&b).lines().any(|x| x.contains(l)))
            {
                return Ok(());
            }
        }
        if elapsed >= deadline {
            return match (&ready.when, &file, &line) {
                (Ready::After(_), _, _) => Ok(()),
                (_, Some(f), _) => Err(RunError::NotReady(format!(
                    "ready.file {} did not appear within {timeout} (ready.timeout)",
                    f.display()
                ))),
                (_, _, Some((l, p))) => Err(RunError::NotReady(format!(
                    "ready.stdout_line: no line containing \"{l}\" in {} within {timeout} \
                     (ready.timeout)",
                    p.display()
                ))),
                _ => Ok(()),
            };
        }
        std::thread::sleep(
            Duration::from_millis(10)
                .min(deadline.saturating_sub(elapsed))
                .max(Duration::from_millis(1)),
        );
    }
}

fn check_exit(target: &mut Target) -> Result<(), RunError> {
    match target.exited() {
        Some(how) => Err(RunError::Exited {
            pid: target.pid,
            how,
        }),
        None => Ok(()),
    }
}

/// Stops a launched process: SIGTERM to its process group, then SIGKILL after [`STOP_GRACE`];
/// reaps it. Returns how it ended. Attached processes are not ours to stop here.
pub fn stop(target: &mut Target) -> Option<String> {
    use crate::sys::process::killpg;
    let child = target.child.as_mut()?;
    if let Ok(Some(st)) = child.try_wait() {
        return Some(format!("had already ended ({st})"));
    }
    let pg = target.pid;
    let _ = killpg(pg, libc::SIGTERM);
    let end = Instant::now() + STOP_GRACE;
    while Instant::now() < end {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(format!("stopped ({st})"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = killpg(pg, libc::SIGKILL);
    let st = child
        .wait()
        .map(|s| s.to_string())
        .unwrap_or_else(|e| e.to_string());
    Some(format!("killed after {}s ({st})", STOP_GRACE.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfile_holds_one_positive_number_with_whitespace_around() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("app.pid");
        std::fs::write(&f, " 4242\n").unwrap();
        assert_eq!(read_pidfile(&f).unwrap(), 4242);
        for bad in ["", "0", "-3", "12 13", "pid"] {
            std::fs::write(&f, bad).unwrap();
            let e = read_pidfile(&f).unwrap_err();
            assert!(
                e.to_string().contains("expected a process id"),
                "{bad:?}: {e}"
            );
        }
        let e = read_pidfile(&dir.path().join("missing.pid")).unwrap_err();
        assert!(matches!(e, RunError::Attach(_)), "{e:?}");
    }
}
