//! Fd kinds beyond files and pipes, one module each (issue 14): how each is recognised, or
//! refused by name, from `/proc` and sock_diag before the freeze and again under it (called
//! from `check::fds`), and what of its state only the fd itself tells, read under the freeze
//! through a `pidfd_getfd` copy once the tree's sharing is known (called from
//! `share::fds::link`). What a dump drops is reported through [`warnings`].

pub(crate) mod events;
pub(crate) mod inet;
pub(crate) mod stored;
pub(crate) mod tty;
pub(crate) mod unix;

use super::DumpError;
use crate::image::{FdImage, FdKind};
use crate::sys::process;

/// A refusal of something haul cannot carry yet.
fn unsupported(msg: String) -> DumpError {
    DumpError::Unsupported(msg)
}

/// What the dump of `p` dropped from its fds, one warning each (for the dump's figures and
/// the run's report).
pub(crate) fn warnings(p: &crate::image::ProcessImage) -> Vec<String> {
    let mut out = inet::warnings(p);
    out.extend(events::warnings(p));
    out
}

/// Captures, under the freeze, what only the fds themselves tell, for every fd of `pid`
/// whose kind needs it (each open file description once: not `same_as` a lower fd, not
/// `inherited` from an earlier process of the tree).
pub(crate) fn capture(pid: i32, fds: &mut [FdImage]) -> Result<(), DumpError> {
    let mut pidfd = None;
    for f in fds
        .iter_mut()
        .filter(|f| f.same_as.is_none() && f.inherited.is_none())
    {
        let capture: fn(&std::os::fd::OwnedFd, &mut FdImage) -> Result<(), DumpError> = match f.kind
        {
            FdKind::Unix(_) => unix::capture,
            FdKind::Inet(_) => inet::capture,
            FdKind::Epoll(_) | FdKind::Inotify(_) => events::capture,
            FdKind::Stored(_) => stored::capture,
            FdKind::Tty(_) => tty::capture,
            _ => continue,
        };
        if pidfd.is_none() {
            pidfd = Some(process::pidfd_open(pid)?);
        }
        if let Some(pidfd) = &pidfd {
            capture(pidfd, f)?;
        }
        tty::refuse_eof_marks(pid, f)?;
    }
    Ok(())
}
