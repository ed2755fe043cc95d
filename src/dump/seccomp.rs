//! Seccomp at the dump: a filtered thread is checked for what haul needs to read and suspend
//! its filters (before the freeze and under it), its filters are suspended once every thread
//! is stopped (so that neither an injected syscall is refused nor the process killed by its
//! own filter for one), and every thread's filters are read, oldest first, under the freeze.

use super::freeze::Frozen;
use super::DumpError;
use crate::image::seccomp::{Filter, SeccompImage};
use crate::image::ProcessImage;
use crate::sys::seccomp as sc;

/// How a refusal names thread `tid` of `pid`.
fn who(pid: i32, tid: i32) -> String {
    if tid == pid {
        format!("pid {pid}")
    } else {
        format!("pid {pid} thread {tid}")
    }
}

/// The refusal of a thread under seccomp (`mode` 1 strict, 2 filter) that haul cannot read
/// and suspend: None when haul can (it has `CAP_SYS_ADMIN` and runs under no filter itself).
pub(crate) fn refusal(pid: i32, tid: i32, mode: u8) -> Result<Option<DumpError>, DumpError> {
    if mode == 0 || sc::can_suspend()? {
        return Ok(None);
    }
    let what = if mode == sc::MODE_STRICT {
        "strict mode"
    } else {
        "a filter"
    };
    Ok(Some(DumpError::Refused(format!(
        "{} runs under seccomp ({what}): haul needs CAP_SYS_ADMIN, and no seccomp filter of \
         its own, to read and suspend it",
        who(pid, tid)
    ))))
}

/// Suspends the seccomp filters of every stopped thread of `f` that runs under seccomp
/// (`PTRACE_O_SUSPEND_SECCOMP`). Called once every thread is stopped: none can install a
/// filter (nor sync one onto another) any more.
pub(crate) fn suspend_filtered(f: &Frozen) -> Result<(), DumpError> {
    for t in &f.threads {
        if sc::mode(f.pid, t.tid)? == 0 {
            continue;
        }
        match sc::suspend(t.tid) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EPERM) => {
                return Err(DumpError::Refused(format!(
                    "{} runs under seccomp: haul may not suspend its filters for the dump \
                     (ptrace PTRACE_O_SUSPEND_SECCOMP: permission denied; it needs \
                     CAP_SYS_ADMIN and no seccomp filter of its own)",
                    who(f.pid, t.tid)
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads the seccomp state of every thread of `f` into `process.seccomp` (None when no thread
/// is under seccomp). A filter that hands syscalls to a listener (`SECCOMP_RET_USER_NOTIF`:
/// the listener fd lives in some other process) is refused by name.
pub(crate) fn capture(f: &Frozen, process: &mut ProcessImage) -> Result<(), DumpError> {
    let mut image = SeccompImage::default();
    for t in &f.threads {
        match sc::mode(f.pid, t.tid)? {
            0 => {}
            sc::MODE_STRICT => image.add_strict(t.tid),
            _ => {
                let filters = sc::filters(t.tid)?;
                if let Some(i) = filters
                    .iter()
                    .position(|(_, prog)| sc::returns_user_notif(prog))
                {
                    return Err(DumpError::Unsupported(format!(
                        "{} runs under a seccomp filter (number {} of {}, oldest first) that \
                         hands syscalls to a user-space listener (SECCOMP_RET_USER_NOTIF): \
                         its listener cannot be carried",
                        who(f.pid, t.tid),
                        i + 1,
                        filters.len()
                    )));
                }
                let filters = filters
                    .into_iter()
                    .map(|(flags, program)| Filter { flags, program })
                    .collect();
                image.add_thread(t.tid, filters);
            }
        }
    }
    process.seccomp = (!image.threads.is_empty()).then_some(image);
    Ok(())
}
