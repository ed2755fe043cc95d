//! The `[verify]` stage: the job's command against the restored process.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::RunError;
use crate::job::{expand, Job, Placeholders};
use crate::report::{RunReport, VerifyReport};

/// Runs the `[verify]` command with `{pid}` = the restored process; it passes when it exits 0
/// within its timeout and its stdout contains `expect_stdout`.
pub fn verify(job: &Job, ph: &Placeholders, report: &mut RunReport) -> Result<(), RunError> {
    let Some(spec) = &job.spec.verify else {
        return Ok(());
    };
    let argv: Vec<String> = spec
        .command
        .iter()
        .map(|a| expand(a, ph))
        .collect::<Result<_, _>>()
        .map_err(RunError::Placeholder)?;
    let expect = spec
        .expect_stdout
        .as_deref()
        .map(|e| expand(e, ph))
        .transpose()
        .map_err(RunError::Placeholder)?;
    let mut v = VerifyReport {
        command: argv.clone(),
        // The restore compared the state before the process ran; it would have failed.
        state: spec.state,
        ..Default::default()
    };
    match run_with_timeout(&argv, &job.dir, spec.timeout.0) {
        Err(e) => v.reason = e.to_string(),
        Ok((code, stdout)) => {
            v.reason = judge(code, &stdout, expect.as_deref());
            v.exit_code = code;
            v.stdout = stdout;
        }
    }
    v.passed = v.reason.is_empty();
    let result = if v.passed {
        Ok(())
    } else {
        Err(RunError::Verify(v.reason.clone()))
    };
    report.verify = Some(v);
    result
}

/// Why a verify command that ended with `code` and printed `stdout` failed; empty when it
/// passed (exit 0, and `expect` in its stdout).
fn judge(code: Option<i32>, stdout: &str, expect: Option<&str>) -> String {
    if code != Some(0) {
        return format!(
            "exited with {}",
            code.map(|c| c.to_string())
                .unwrap_or_else(|| "a signal".into())
        );
    }
    match expect {
        Some(e) if !stdout.contains(e) => format!("stdout does not contain \"{e}\""),
        _ => String::new(),
    }
}

/// Why the verify command could not be run to its end.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("verify.command is empty")]
    Empty,
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no stdout pipe")]
    NoStdout,
    #[error("timed out after {}", crate::job::Dur(*timeout))]
    TimedOut { timeout: Duration },
    #[error("cannot wait for {program}: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `argv` in `dir` in a process group of its own, stdout captured (first 64 KiB); the
/// group is killed after `timeout`. Output is read until the deadline at most: a background
/// child of the command that keeps stdout open does not hold the job (it is killed at the
/// deadline).
fn run_with_timeout(
    argv: &[String],
    dir: &std::path::Path,
    timeout: Duration,
) -> Result<(Option<i32>, String), VerifyError> {
    use std::os::unix::process::CommandExt;
    use std::sync::{mpsc, Arc, Mutex};
    const KEEP: usize = 64 * 1024;
    let (prog, args) = argv.split_first().ok_or(VerifyError::Empty)?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| VerifyError::Spawn {
        program: prog.clone(),
        source,
    })?;
    let group = child.id() as i32;
    let kill_group = || {
        let _ = crate::sys::process::killpg(group, libc::SIGKILL);
    };
    let mut stdout = child.stdout.take().ok_or(VerifyError::NoStdout)?;
    let captured = Arc::new(Mutex::new(Vec::new()));
    let (eof_tx, eof) = mpsc::channel::<()>();
    let buf = Arc::clone(&captured);
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        // Read to the end (the rest is drained, so the command never blocks on a full pipe).
        while let Ok(n @ 1..) = stdout.read(&mut chunk) {
            let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
            let room = KEEP.saturating_sub(b.len());
            b.extend_from_slice(&chunk[..n.min(room)]);
        }
        let _ = eof_tx.send(());
    });
    let end = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() >= end => {
                kill_group();
                let _ = child.wait();
                return Err(VerifyError::TimedOut { timeout });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(source) => {
                kill_group();
                return Err(VerifyError::Wait {
                    program: prog.clone(),
                    source,
                });
            }
        }
    };
    if eof
        .recv_timeout(end.saturating_duration_since(Instant::now()))
        .is_err()
    {
        // Something the command started still holds its stdout at the deadline.
        kill_group();
        let _ = eof.recv_timeout(Duration::from_secs(1));
    }
    let out = captured.lock().unwrap_or_else(|e| e.into_inner());
    Ok((status.code(), String::from_utf8_lossy(&out).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verify_command_passes_on_exit_0_with_the_expected_stdout() {
        assert_eq!(judge(Some(0), "count 7\n", Some("count")), "");
        assert_eq!(judge(Some(0), "", None), "");
    }

    #[test]
    fn a_verify_command_fails_on_another_exit_or_a_missing_line() {
        assert_eq!(judge(Some(3), "count", Some("count")), "exited with 3");
        assert_eq!(judge(None, "", None), "exited with a signal");
        assert_eq!(
            judge(Some(0), "nothing", Some("count")),
            "stdout does not contain \"count\""
        );
    }

    #[test]
    fn a_timed_out_verify_says_after_how_long_as_job_files_write_it() {
        let e = VerifyError::TimedOut {
            timeout: Duration::from_secs(5),
        };
        assert_eq!(e.to_string(), "timed out after 5s");
        assert!(
            run_with_timeout(&[], std::path::Path::new("/"), Duration::from_secs(1))
                .is_err_and(|e| matches!(e, VerifyError::Empty))
        );
    }
}
