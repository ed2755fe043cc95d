//! The asking side: starts `haul __checkpoint-worker`, sends the request, forwards a stop
//! (SIGUSR1), and reads the answers.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::WORKER_COMMAND;
use super::{Answer, CheckpointOutcome, CheckpointRequest, SourceEnd, WorkerError};

/// A worker process started with a request, its answer lines arriving on a channel.
struct Spawned {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

fn spawn_worker(exe: &Path, req: &CheckpointRequest) -> Result<Spawned, WorkerError> {
    use std::io::BufRead;
    let mut cmd = Command::new(exe);
    cmd.arg(WORKER_COMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    crate::sys::spawn::close_inherited_fds(&mut cmd);
    if req.lazy.is_some() {
        // A lazy worker serves a source whose restored copy may be running: it must roll back
        // only when the haul that asked says so (after ending that copy) or dies, never on a
        // terminal's SIGINT to the whole group, which would thaw the source while the copy
        // runs on. Its own process group keeps such signals away.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().map_err(|source| WorkerError::Spawn {
        exe: exe.to_path_buf(),
        source,
    })?;
    let body = serde_json::to_vec(req).map_err(WorkerError::Encode)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&body).map_err(WorkerError::Send)?;
    }
    let stdout = child.stdout.take().ok_or(WorkerError::NoStdout)?;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines() {
            match l {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    Ok(Spawned { child, lines })
}

impl Spawned {
    /// Waits for the first answer line, forwarding `stop` to the worker (SIGUSR1) and its
    /// steps to `on_step`; an error naming its exit status when the worker ended without one.
    fn first_answer(
        &mut self,
        stop: &AtomicBool,
        on_step: &dyn Fn(&str),
    ) -> Result<Answer, WorkerError> {
        let mut asked_to_stop = false;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(5)) {
                Ok(l) => match Answer::decode(&l) {
                    Some(Answer::Step(s)) => on_step(&s),
                    Some(a) => return Ok(a),
                    None => {}
                },
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let st = self.child.wait().map_err(WorkerError::Wait)?;
                    return Err(WorkerError::NoAnswer(st));
                }
            }
            if stop.load(Ordering::Relaxed) && !asked_to_stop {
                let _ = crate::sys::process::kill(self.child.id() as i32, libc::SIGUSR1);
                asked_to_stop = true;
            }
        }
    }
}

/// Runs the checkpoint in a worker process (`exe __checkpoint-worker`). Setting `stop` asks the
/// worker to stop pre-dumping (it then ends tracking and answers `interrupted`).
fn checkpoint_in_worker(
    exe: &Path,
    req: &CheckpointRequest,
    stop: &AtomicBool,
    on_step: &dyn Fn(&str),
) -> Result<(CheckpointOutcome, Option<Handover>), WorkerError> {
    let mut w = spawn_worker(exe, req)?;
    match w.first_answer(stop, on_step) {
        Ok(a) => {
            // It has answered and only exits now (freeing its buffers takes a while): reaped
            // off the path to the restore, which a migration's pause waits for. With
            // `hand_keepers` its last line names the keepers it handed over.
            let Spawned { mut child, lines } = w;
            let (tx, rx) = std::sync::mpsc::channel();
            let hands = req.hand_keepers;
            std::thread::spawn(move || {
                if hands {
                    let handed = lines.iter().find_map(|l| match Answer::decode(&l) {
                        Some(Answer::Handed(pids)) => Some(pids),
                        _ => None,
                    });
                    let _ = tx.send(handed.unwrap_or_default());
                }
                drop(lines);
                child.wait()
            });
            let o = a.outcome()?;
            Ok((o, req.hand_keepers.then_some(Handover { rx })))
        }
        Err(e) => {
            let _ = w.child.wait();
            Err(e)
        }
    }
}

/// The memory keepers a worker hands over (`CheckpointRequest::hand_keepers`), as it names
/// them once every death of the dump is collected.
pub struct Handover {
    rx: std::sync::mpsc::Receiver<Vec<i32>>,
}

impl Handover {
    /// The keepers handed over, once the worker says so; none if it does not within
    /// `timeout` or ends without saying (a restore then writes the memory from the set).
    pub fn wait(&self, timeout: Duration) -> Vec<i32> {
        self.rx.recv_timeout(timeout).unwrap_or_default()
    }
}

/// Runs a lazy checkpoint (`req.lazy` set) in a worker process: returns its outcome (with the
/// address it serves the frozen source on) as soon as the dump is committed, and the worker,
/// which goes on serving. `stop` is forwarded until then.
fn lazy_checkpoint_in_worker(
    exe: &Path,
    req: &CheckpointRequest,
    stop: &AtomicBool,
    on_step: &dyn Fn(&str),
) -> Result<(CheckpointOutcome, SourceWorker), WorkerError> {
    if req.lazy.is_none() {
        return Err(WorkerError::Internal("not a lazy checkpoint request"));
    }
    let mut w = spawn_worker(exe, req)?;
    let a = w.first_answer(stop, on_step);
    let o = match a.and_then(Answer::outcome) {
        Ok(o) => o,
        Err(e) => {
            let _ = w.child.wait();
            return Err(e);
        }
    };
    Ok((o, SourceWorker { w: Some(w) }))
}

/// A checkpoint run in a worker: its outcome, for a lazy dump the worker that goes on serving
/// its frozen source, and with `hand_keepers` the keepers it hands over.
pub struct Ran {
    pub outcome: CheckpointOutcome,
    pub source: Option<SourceWorker>,
    pub handover: Option<Handover>,
}

/// Runs `req` in a worker process, lazy or not (see [`Ran`]).
pub fn run_in_worker(
    exe: &Path,
    req: &CheckpointRequest,
    stop: &AtomicBool,
    on_step: &dyn Fn(&str),
) -> Result<Ran, WorkerError> {
    if req.lazy.is_some() {
        let (outcome, w) = lazy_checkpoint_in_worker(exe, req, stop, on_step)?;
        Ok(Ran {
            outcome,
            source: Some(w),
            handover: None,
        })
    } else {
        let (outcome, handover) = checkpoint_in_worker(exe, req, stop, on_step)?;
        Ok(Ran {
            outcome,
            source: None,
            handover,
        })
    }
}

/// A worker serving a lazy dump's frozen source. Dropping it without [`SourceWorker::wait`]
/// rolls back (the source is thawed) and waits for the worker.
pub struct SourceWorker {
    w: Option<Spawned>,
}

impl SourceWorker {
    /// Asks the worker to roll back now: the source is thawed (unless it was already killed
    /// after `Done`).
    pub fn rollback(&mut self) {
        if let Some(w) = self.w.as_mut() {
            let _ = crate::sys::process::kill(w.child.id() as i32, libc::SIGUSR1);
        }
    }

    /// Waits until the worker ends and returns how the source ended. Setting `stop` asks it to
    /// roll back ([`SourceWorker::rollback`]).
    pub fn wait(mut self, stop: &AtomicBool) -> Result<SourceEnd, WorkerError> {
        let Some(mut w) = self.w.take() else {
            return Err(WorkerError::Internal("the source worker was waited for"));
        };
        let mut end = None;
        let mut asked = false;
        loop {
            match w.lines.recv_timeout(Duration::from_millis(20)) {
                Ok(l) => match Answer::decode(&l) {
                    Some(Answer::Source(e)) => end = Some(e),
                    Some(Answer::Error(e)) => {
                        let _ = w.child.wait();
                        return Err(WorkerError::Failed(e));
                    }
                    _ => {}
                },
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if stop.load(Ordering::Relaxed) && !asked {
                let _ = crate::sys::process::kill(w.child.id() as i32, libc::SIGUSR1);
                asked = true;
            }
        }
        let st = w.child.wait().map_err(WorkerError::Wait)?;
        end.ok_or(WorkerError::NoSourceEnd(st))
    }
}

impl Drop for SourceWorker {
    fn drop(&mut self) {
        if let Some(mut w) = self.w.take() {
            let _ = crate::sys::process::kill(w.child.id() as i32, libc::SIGUSR1);
            let _ = w.child.wait();
        }
    }
}
