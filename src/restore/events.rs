//! Restoring event notification fds: epoll instances (after every fd they watch) and inotify
//! instances.
//!
//! **Epoll.** Every registration is made again with `EPOLL_CTL_ADD` at its fd number, with
//! its events and data. A one-shot registration that had fired (only `EPOLLONESHOT`, `EPOLLET`,
//! ... left of its mask) is made to fire again before any other is added: added for every
//! event, then taken by an `epoll_pwait` that does not wait, which disables it as the
//! program's own wait did. That needs its file to be ready for something now; one that is not
//! is armed for `EPOLLERR`/`EPOLLHUP` only (the kernel adds those to every registration) and
//! a warning says so. Level-triggered targets report what is ready by themselves; an
//! edge-triggered one that is ready is reported once more after the restore (the add checks
//! readiness), as if an edge had come.
//!
//! **Inotify.** Watch descriptors are handed out increasingly per instance (`idr_alloc_cyclic`
//! from one past the last given): each watch is added in wd order, a gap below it filled by a
//! watch on a path of no watch of the instance, removed at once; the `IN_IGNORED` events
//! those removals queue are read away. Events queued at the dump are not carried: a warning
//! says how many bytes were dropped.

use super::error::{At, StepResult};
use super::fds::{cloexec, move_fd};
use super::share::Shared;
use super::tree::Refusal;
use crate::image::events::{EpollImage, EpollTarget, InotifyImage};
use crate::image::{FdImage, FdKind, ProcessImage};
use crate::sys::remote::{self, Inject};
use std::os::unix::fs::MetadataExt;

/// Why an epoll or inotify instance could not be made as it was.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// A watch was given another watch descriptor than the dumped one.
    #[error("inotify watch {wd} of {path} was made again as watch {got}")]
    Wd { wd: i32, path: String, got: u64 },
}

/// The order in which the epoll fds of `p` (and the fds that share one) are restored, once
/// every other fd is in place: an epoll watched by another comes before it, and an fd that
/// shares the open file of a lower one comes after that one.
pub(super) fn epoll_order<'a>(p: &ProcessImage, later: Vec<&'a FdImage>) -> Vec<&'a FdImage> {
    let _ = p;
    let mut out: Vec<&'a FdImage> = Vec::with_capacity(later.len());
    let mut seen = vec![false; later.len()];
    for i in 0..later.len() {
        visit(&later, i, &mut seen, &mut out);
    }
    out
}

/// Puts `later[i]` into `out` after what it needs (depth first; the kernel allows no cycle
/// of epolls, and `seen` stops one anyway).
fn visit<'a>(later: &[&'a FdImage], i: usize, seen: &mut [bool], out: &mut Vec<&'a FdImage>) {
    if seen[i] {
        return;
    }
    seen[i] = true;
    let f = later[i];
    let index_of = |fd: i32| later.iter().position(|g| g.fd == fd);
    if let Some(j) = f.same_as.and_then(index_of) {
        visit(later, j, seen, out);
    }
    if let FdKind::Epoll(e) = &f.kind {
        for t in &e.targets {
            if let Some(j) = index_of(t.fd) {
                visit(later, j, seen, out);
            }
        }
    }
    out.push(f);
}

/// Every event a file can be ready for (`EPOLLERR` and `EPOLLHUP` the kernel adds itself).
const EVERY_EVENT: u32 = (libc::EPOLLIN
    | libc::EPOLLOUT
    | libc::EPOLLPRI
    | libc::EPOLLRDNORM
    | libc::EPOLLRDBAND
    | libc::EPOLLWRNORM
    | libc::EPOLLWRBAND
    | libc::EPOLLMSG
    | libc::EPOLLRDHUP) as u32;

/// Makes epoll instance `f` again at its number, with every target registered.
pub(super) fn make_epoll(
    rs: &mut dyn Inject,
    p: &ProcessImage,
    f: &FdImage,
    e: &EpollImage,
    _shared: &mut Shared,
) -> StepResult {
    let at = || format!("fd {}", f.fd);
    let flags = if cloexec(f) {
        libc::EPOLL_CLOEXEC as u64
    } else {
        0
    };
    let got = remote::epoll_create1(rs, flags).at(at)?;
    move_fd(rs, got, f)?;
    let ep = f.fd as u64;
    if f.flags & libc::O_NONBLOCK as u32 != 0 {
        remote::set_status_flags(rs, ep, f.flags).at(at)?;
    }
    // Fired one-shots first, alone in the instance: the wait that fires one takes nothing
    // else.
    for t in e.targets.iter().filter(|t| t.fired()) {
        fire_one_shot(rs, p, f, t)?;
    }
    for t in e.targets.iter().filter(|t| !t.fired()) {
        remote::epoll_ctl(rs, ep, libc::EPOLL_CTL_ADD, t.fd as u64, t.events, t.data).at(at)?;
    }
    Ok(())
}

/// Registers target `t` of epoll `f` (a one-shot registration that had fired) and makes it
/// fire, so that it is disabled as it was.
fn fire_one_shot(
    rs: &mut dyn Inject,
    p: &ProcessImage,
    f: &FdImage,
    t: &EpollTarget,
) -> StepResult {
    let at = || format!("fd {}", f.fd);
    let ep = f.fd as u64;
    let tfd = t.fd as u64;
    remote::epoll_ctl(
        rs,
        ep,
        libc::EPOLL_CTL_ADD,
        tfd,
        t.events | EVERY_EVENT,
        t.data,
    )
    .at(at)?;
    if remote::epoll_take_ready(rs, ep, 1).at(at)?.len() == 1 {
        return Ok(());
    }
    remote::epoll_ctl(rs, ep, libc::EPOLL_CTL_MOD, tfd, t.events, t.data).at(at)?;
    tracing::warn!(
        pid = p.pid,
        fd = f.fd,
        target = t.fd,
        "pid {} fd {}: epoll target fd {} had fired as one-shot; its file is not ready now, \
         so it is armed again for EPOLLERR and EPOLLHUP only",
        p.pid,
        f.fd,
        t.fd
    );
    Ok(())
}

/// How many gap-filling watches are added before the `IN_IGNORED` events their removals
/// queued are read away (well under the default `max_queued_events`, 16384).
const DRAIN_EVERY: u64 = 1024;

/// Makes inotify instance `f` again at its number, with its watches under their watch
/// descriptors.
pub(super) fn make_inotify(
    rs: &mut dyn Inject,
    p: &ProcessImage,
    f: &FdImage,
    i: &InotifyImage,
    _shared: &mut Shared,
) -> StepResult {
    let at = || format!("fd {}", f.fd);
    // Non-blocking while it is built (its queue is read away); its own flags after.
    let mut flags = libc::IN_NONBLOCK as u64;
    if cloexec(f) {
        flags |= libc::IN_CLOEXEC as u64;
    }
    let got = remote::inotify_init1(rs, flags).at(at)?;
    move_fd(rs, got, f)?;
    let fd = f.fd as u64;
    let mut watches: Vec<_> = i.watches.iter().collect();
    watches.sort_by_key(|w| w.wd);
    let filler = filler_path(i);
    let mut next = 1u64;
    let mut filled = 0u64;
    for w in watches {
        while next < w.wd as u64 {
            let d = remote::inotify_add_watch(rs, fd, filler, FILLER_MASK).at(at)?;
            remote::inotify_rm_watch(rs, fd, d).at(at)?;
            if d != next {
                return Err::<(), _>(EventsError::Wd {
                    wd: w.wd,
                    path: w.path.clone(),
                    got: d,
                })
                .at(at);
            }
            next = d + 1;
            filled += 1;
            if filled % DRAIN_EVERY == 0 {
                drain(rs, fd).at(at)?;
            }
        }
        let got =
            remote::inotify_add_watch(rs, fd, &w.path, w.mask | libc::IN_DONT_FOLLOW).at(at)?;
        if got != w.wd as u64 {
            return Err::<(), _>(EventsError::Wd {
                wd: w.wd,
                path: w.path.clone(),
                got,
            })
            .at(at);
        }
        next = got + 1;
    }
    if filled > 0 {
        drain(rs, fd).at(at)?;
    }
    if f.flags & libc::O_NONBLOCK as u32 == 0 {
        remote::set_status_flags(rs, fd, f.flags).at(at)?;
    }
    if i.queued_bytes > 0 {
        tracing::warn!(
            pid = p.pid,
            fd = f.fd,
            bytes = i.queued_bytes,
            "pid {} fd {}: {} bytes of inotify events queued at the dump were dropped",
            p.pid,
            f.fd,
            i.queued_bytes
        );
    }
    Ok(())
}

/// The mask of a gap-filling watch (any event: it is removed at once).
const FILLER_MASK: u32 = libc::IN_DELETE_SELF | libc::IN_DONT_FOLLOW;

/// A path every process can watch that no watch of `i` watches (adding a watch on a watched
/// inode would change that watch instead).
fn filler_path(i: &InotifyImage) -> &'static str {
    const CANDIDATES: [&str; 5] = ["/", "/dev", "/proc", "/tmp", "/etc"];
    CANDIDATES
        .into_iter()
        .find(|c| {
            std::fs::symlink_metadata(c).is_ok_and(|md| {
                !i.watches
                    .iter()
                    .any(|w| w.path == *c || (w.dev == md.dev() && w.ino == md.ino()))
            })
        })
        .unwrap_or("/")
}

/// Reads away what inotify instance `fd` (non-blocking) holds.
fn drain(rs: &mut dyn Inject, fd: u64) -> crate::sys::Result<()> {
    loop {
        match remote::read_discard(rs, fd, 4096, "read of the gap-filling watches' events") {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.errno() == Some(libc::EAGAIN) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Every inotify watch of `p` must find the inode it watched at its path (checked before any
/// process exists).
pub(super) fn check_watches(p: &ProcessImage) -> Result<(), Refusal> {
    for f in &p.fds {
        let FdKind::Inotify(i) = &f.kind else {
            continue;
        };
        for w in &i.watches {
            let why = match std::fs::symlink_metadata(&w.path) {
                Err(e) => format!("{} cannot be watched again: {e}", w.path),
                Ok(md) if md.dev() != w.dev || md.ino() != w.ino => format!(
                    "{} is not the same file any more (inode {} was {})",
                    w.path,
                    md.ino(),
                    w.ino
                ),
                Ok(_) => continue,
            };
            return Err(Refusal(format!(
                "fd {}: inotify watch {}: {why}",
                f.fd, w.wd
            )));
        }
    }
    Ok(())
}
