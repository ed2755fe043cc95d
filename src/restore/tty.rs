//! Restoring terminals: pty pairs, and a shell job onto the terminal of `haul restore` or a new
//! pty.
//!
//! - **A pty whose master is in the set** is made again by haul (`/dev/ptmx`): a new pair,
//!   so a new index (`/dev/pts/N` changes), with the dumped termios, window size, packet
//!   mode, lock and the bytes that waited in both directions (written back under a quiet
//!   termios, then the dumped one set). The master is installed where it was; every slave
//!   fd gets an open file description of its own (`TIOCGPTPEER`), as an `open` gave it. A
//!   session leader that had the pty as its controlling terminal takes it again (injected
//!   `TIOCSCTTY`) and gives it its foreground group (`TIOCSPGRP`).
//! - **A terminal outside the set** (a slave whose master no process of the set holds, a
//!   console, `/dev/tty`) goes where [`TtyTarget`] says, else the restore is refused before
//!   anything is made ([`check`]): `inherit` reopens haul's own terminal, whose session the
//!   root joins in a process group of its own that becomes the foreground one; `new` opens
//!   the slave of the pty whose master haul keeps, and the root leads a new session with it
//!   as its controlling terminal. Either way the dumped termios is set on it.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::error::{At, StepError, StepResult};
use super::share::Shared;
use crate::image::tty::{TtyImage, TtyRole};
use crate::image::{FdImage, FdKind, ImageSet, PageTable, ProcessImage};
use crate::sys::remote::{self, Inject};
use crate::sys::tty;

/// Where a terminal outside the checkpoint goes (`restore.tty`, `haul restore --tty`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtyMode {
    /// Onto the terminal of `haul restore` itself (a shell job).
    Inherit,
    /// Onto a new pty whose master `haul restore` serves.
    New,
}

impl TtyMode {
    pub fn name(self) -> &'static str {
        match self {
            TtyMode::Inherit => "inherit",
            TtyMode::New => "new",
        }
    }
}

/// The terminal a restore gives the process for the one it was started on.
#[derive(Clone, Debug)]
pub struct TtyTarget {
    pub mode: TtyMode,
    /// `Inherit`: haul's own terminal (its controlling terminal). `New`: the master of the
    /// new pty.
    pub term: Arc<OwnedFd>,
}

/// The terminals of a restore, as it builds them (one for the whole set, in `Shared`).
#[derive(Default)]
pub(crate) struct Ttys {
    target: Option<TtyTarget>,
    /// The root's image pid.
    root: i32,
    /// Image pid → pid here, of every process of the tree.
    pids: HashMap<i32, i32>,
    /// The masters of the set, by pty index.
    masters: HashMap<u32, TtyImage>,
    /// The new ptys made so far, by dumped index: (master, a slave kept open until the
    /// restore ends, so that what was written into it stays).
    made: HashMap<u32, (OwnedFd, OwnedFd)>,
    /// Whether the outside terminal got its termios (once).
    outside_set: bool,
}

/// Every terminal fd of the set that is outside the checkpoint: (pid, fd, path).
pub fn outside_terminals(set: &ImageSet) -> Vec<(i32, i32, String)> {
    let masters = masters(set);
    set.processes()
        .flat_map(|(_, p)| p.fds.iter().map(move |f| (p, f)))
        .filter_map(|(p, f)| match &f.kind {
            FdKind::Tty(t) if is_outside(t, &masters) => Some((p.pid, f.fd, t.path.clone())),
            _ => None,
        })
        .collect()
}

fn masters(set: &ImageSet) -> HashMap<u32, TtyImage> {
    set.processes()
        .flat_map(|(_, p)| p.fds.iter())
        .filter_map(|f| match &f.kind {
            FdKind::Tty(t) if t.role == TtyRole::Master => Some((t.index, t.clone())),
            _ => None,
        })
        .collect()
}

fn is_outside(t: &TtyImage, masters: &HashMap<u32, TtyImage>) -> bool {
    match t.role {
        TtyRole::Master => false,
        TtyRole::Slave => !masters.contains_key(&t.index),
        TtyRole::Other => true,
    }
}

/// Refuses, before anything is made, a set holding a terminal outside the checkpoint when
/// the restore does not say where it goes: the reason names every such fd and both options.
pub(crate) fn check(
    set: &ImageSet,
    target: Option<&TtyTarget>,
) -> Result<(), crate::restore::tree::Refusal> {
    let outside = outside_terminals(set);
    if outside.is_empty() || target.is_some() {
        return Ok(());
    }
    let list: Vec<String> = outside
        .iter()
        .map(|(pid, fd, path)| format!("pid {pid} fd {fd} ({path})"))
        .collect();
    Err(crate::restore::tree::Refusal(format!(
        "{} {} the terminal it was started on, outside the checkpoint: say where it goes with \
         `--tty inherit` (the terminal of haul restore) or `--tty new` (a new pty that haul \
         restore serves), in a job file restore.tty = \"inherit\" or \"new\"",
        list.join(", "),
        if list.len() == 1 { "is" } else { "are" }
    )))
}

/// The set as the tree is planned with a terminal target: the root (and whoever shared its
/// session or group) joins haul's session in a group of its own (`inherit`), or leads a new
/// session of its own (`new`), since that is where its terminal is the controlling one. None
/// when the plan is the image's (no target, or no terminal outside the set).
pub(crate) fn planned(
    set: &ImageSet,
    target: Option<&TtyTarget>,
    ours: (i32, i32),
) -> Option<ImageSet> {
    let mode = target?.mode;
    if outside_terminals(set).is_empty() {
        return None;
    }
    let mut s = ImageSet {
        id: set.id.clone(),
        job: set.job.clone(),
        created_us: set.created_us,
        kind: set.kind,
        parent: set.parent.clone(),
        kernel: set.kernel.clone(),
        process: set.process.clone(),
        tree: set.tree.clone(),
        pages: PageTable::new(),
        figures: set.figures.clone(),
    };
    let root = s.process.as_mut()?;
    let (old_sid, old_pgid, pid) = (root.sid, root.pgid, root.pid);
    let sid = match mode {
        TtyMode::Inherit => ours.0,
        TtyMode::New => pid,
    };
    let fix = |s_: &mut i32, g: &mut i32| {
        if *s_ == old_sid {
            *s_ = sid;
        }
        if *g == old_pgid {
            *g = pid;
        }
    };
    fix(&mut root.sid, &mut root.pgid);
    root.pgid = pid;
    for p in &mut s.tree.descendants {
        fix(&mut p.sid, &mut p.pgid);
    }
    for z in &mut s.tree.zombies {
        fix(&mut z.sid, &mut z.pgid);
    }
    Some(s)
}

/// Once every process exists in its session and group, before any is built: what the
/// terminal steps need (the target, the pids here), and with `inherit` the root's group made
/// the foreground group of haul's terminal (before it runs, so that it never reads it from
/// the background).
pub(crate) fn start(
    shared: &mut Shared,
    set: &ImageSet,
    target: Option<&TtyTarget>,
    pids: &[(i32, i32)],
) -> StepResult {
    let t = &mut shared.tty;
    t.target = target.cloned();
    t.root = set.process.as_ref().map_or(0, |p| p.pid);
    t.pids = pids.iter().copied().collect();
    t.masters = masters(set);
    if let (Some(tg), false) = (&t.target, outside_terminals(set).is_empty()) {
        if tg.mode == TtyMode::Inherit {
            let here = t.pids.get(&t.root).copied().unwrap_or(0);
            tty::set_foreground(tg.term.as_fd(), here).at(|| "haul's terminal".into())?;
        }
    }
    Ok(())
}

/// Gives `f` its terminal again at its number.
pub(super) fn make(
    rs: &mut dyn Inject,
    p: &ProcessImage,
    f: &FdImage,
    t: &TtyImage,
    shared: &mut Shared,
) -> StepResult {
    let at = || format!("fd {} ({})", f.fd, t.path);
    let ttys = &mut shared.tty;
    let fd = f.fd as u64;
    if t.role == TtyRole::Master {
        let (m, _) = ttys.pty(t).at(at)?;
        remote::install_fd(rs, m.as_fd(), fd, super::fds::cloexec(f)).at(at)?;
        remote::set_status_flags(rs, fd, f.flags).at(at)?;
        return Ok(());
    }
    if !is_outside(t, &ttys.masters) {
        let master = ttys.master_of(t).at(at)?;
        let s = tty::open_peer(master.as_fd(), 0).at(at)?;
        remote::install_fd(rs, s.as_fd(), fd, super::fds::cloexec(f)).at(at)?;
        remote::set_status_flags(rs, fd, f.flags).at(at)?;
        // A session leader takes its controlling terminal again.
        if t.ctty_sid != 0 && t.ctty_sid == p.pid && p.sid == p.pid {
            remote::set_ctty(rs, fd).at(at)?;
            if let Some(&g) = ttys.pids.get(&t.fg_pgrp) {
                remote::set_fg_pgrp(rs, fd, g).at(at)?;
            }
        }
        return Ok(());
    }
    let Some(target) = ttys.target.clone() else {
        return Err(StepError::NotYet {
            what: format!("{}: a terminal outside the checkpoint, with no --tty", at()),
        });
    };
    let s = match target.mode {
        TtyMode::Inherit => tty::reopen(target.term.as_fd()).at(at)?,
        TtyMode::New => tty::open_peer(target.term.as_fd(), 0).at(at)?,
    };
    if !ttys.outside_set {
        ttys.outside_set = true;
        let base = tty::get_termios(s.as_fd()).at(at)?;
        tty::set_termios(s.as_fd(), &t.termios.to_sys(&base)).at(at)?;
        if target.mode == TtyMode::New {
            let w = tty::get_winsize(s.as_fd()).at(at)?;
            if w.ws_row == 0 && w.ws_col == 0 {
                tty::set_winsize(s.as_fd(), &t.winsize.to_sys()).at(at)?;
            }
        }
    }
    remote::install_fd(rs, s.as_fd(), fd, super::fds::cloexec(f)).at(at)?;
    remote::set_status_flags(rs, fd, f.flags).at(at)?;
    // The root leads a new session (`planned`): the new pty becomes its terminal.
    if target.mode == TtyMode::New && p.pid == ttys.root && t.ctty_sid != 0 {
        remote::set_ctty(rs, fd).at(at)?;
        let here = ttys.pids.get(&p.pid).copied().unwrap_or(0);
        remote::set_fg_pgrp(rs, fd, here).at(at)?;
    }
    Ok(())
}

impl Ttys {
    /// The master of the new pty made for dumped pty `index` (unit tests look at it).
    #[cfg(test)]
    pub(crate) fn made_master(&self, index: u32) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.made.get(&index).map(|(m, _)| m.as_fd())
    }

    /// The new pty standing for the dumped pty of `t` (a master), made at its first fd.
    fn pty(&mut self, t: &TtyImage) -> crate::sys::Result<&(OwnedFd, OwnedFd)> {
        if let std::collections::hash_map::Entry::Vacant(e) = self.made.entry(t.index) {
            e.insert(make_pty(t)?);
        }
        Ok(&self.made[&t.index])
    }

    /// The master of the new pty for slave `t`, made from the master's record if no process
    /// made it yet (a slave holder restored before the master's).
    fn master_of(&mut self, t: &TtyImage) -> crate::sys::Result<&OwnedFd> {
        let Some(m) = self.masters.get(&t.index).cloned() else {
            return Err(crate::sys::SysError::Invalid(format!(
                "pty {} has no master in the set",
                t.index
            )));
        };
        Ok(&self.pty(&m)?.0)
    }
}

/// A new pty as master record `t` describes it: termios, window size, the waiting bytes,
/// packet mode and lock. Returns (master, a slave to keep open).
fn make_pty(t: &TtyImage) -> crate::sys::Result<(OwnedFd, OwnedFd)> {
    let m = tty::open_pty()?;
    let s = tty::open_peer(m.as_fd(), libc::O_NONBLOCK)?;
    let last = t.termios.to_sys(&tty::get_termios(s.as_fd())?);
    tty::set_winsize(m.as_fd(), &t.winsize.to_sys())?;
    if !t.input.is_empty() || !t.output.is_empty() {
        tty::set_termios(s.as_fd(), &tty::quiet(&last))?;
        tty::write_all(m.as_fd(), &t.input)?;
        tty::write_all(s.as_fd(), &t.output)?;
    }
    tty::set_termios(s.as_fd(), &last)?;
    if t.packet {
        tty::set_packet_mode(m.as_fd(), true)?;
    }
    if t.locked {
        tty::set_pty_locked(m.as_fd(), true)?;
    }
    Ok((m, s))
}
