//! Terminals: pty masters and slaves, and the terminal a process was started on.
//!
//! `kind` tells from `/proc` which end of which terminal an fd is and whether it is the
//! process's controlling terminal (`/proc/PID/stat` fields 7 and 8); `capture` reads, under
//! the freeze, what only the terminal tells: its whole termios and window size, and for a
//! master its packet mode, its lock and the bytes waiting in both directions. Those bytes
//! cannot be read without taking them, so they are read and at once written back (with echo
//! and input and output processing off meanwhile, so the line discipline neither echoes nor
//! transforms them a second time): the process finds them as they were if the dump leaves it
//! running.

use super::unsupported;
use crate::dump::DumpError;
use crate::image::tty::{Termios, TtyImage, TtyRole, WinSize};
use crate::image::{FdImage, FdKind};
use crate::proc;
use crate::sys::{process, tty};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// The major of the pty slaves (`/dev/pts/N`: major 136 + N / 256, minor N % 256).
const PTS_MAJOR: u32 = 136;

/// The record of terminal `fd` (a character device of a tty major), or its refusal.
pub(crate) fn kind(
    pid: i32,
    fd: i32,
    target: &str,
    info: &proc::FdInfo,
    md: &std::fs::Metadata,
) -> Result<FdKind, DumpError> {
    let rdev = md.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let (role, index) = match (major, minor) {
        (5, 2) => {
            // The index of a master: its fdinfo says it (Linux 4.15+); else the capture asks.
            let index = info
                .get("tty-index")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            (TtyRole::Master, index)
        }
        (PTS_MAJOR..=143, _) => (TtyRole::Slave, (major - PTS_MAJOR) * 256 + minor),
        // /dev/tty (the caller's controlling terminal), /dev/console, virtual consoles and
        // serial lines.
        (5, 0) | (5, 1) | (4, _) => (TtyRole::Other, 0),
        _ => {
            return Err(unsupported(format!(
                "pid {pid} fd {fd}: {target} (tty device {major}:{minor}) is not supported yet"
            )))
        }
    };
    let mut t = TtyImage {
        role,
        index,
        path: target.to_string(),
        rdev,
        ..TtyImage::default()
    };
    if role != TtyRole::Master {
        let st = proc::stat(pid)?;
        // /dev/tty is whatever the controlling terminal is.
        if st.tty_nr != 0 && (st.tty_nr == rdev || (major, minor) == (5, 0)) {
            t.ctty_sid = st.session;
            t.fg_pgrp = st.tpgid.max(0);
        }
    }
    Ok(FdKind::Tty(t))
}

/// What only the terminal tells (termios, window size, unread data), read under the freeze
/// through `pidfd`.
pub(crate) fn capture(pidfd: &OwnedFd, f: &mut FdImage) -> Result<(), DumpError> {
    let FdKind::Tty(t) = &mut f.kind else {
        return Ok(());
    };
    let copy = process::pidfd_getfd(pidfd, f.fd)?;
    let fd = copy.as_fd();
    let termios = tty::get_termios(fd)?;
    t.termios = Termios::of(&termios);
    t.winsize = WinSize::of(&tty::get_winsize(fd)?);
    if t.role != TtyRole::Master {
        return Ok(());
    }
    t.index = tty::pty_index(fd)?;
    t.packet = tty::packet_mode(fd)?;
    t.locked = tty::pty_locked(fd)?;
    if t.locked {
        // Nobody can have opened its slave: nothing waits on that side.
        t.output = take_output(&copy, t.packet)?;
        return Ok(());
    }
    // A slave of haul's own, to read what waits for the slave side (non-blocking: its own
    // open file description).
    let peer = tty::open_peer(fd, libc::O_NONBLOCK)?;
    t.input = take_input(&peer, &termios)?;
    // The input goes back even if the output cannot be read.
    let output = take_output(&copy, t.packet);
    let back = put_back(
        &copy,
        &peer,
        &termios,
        &t.input,
        output.as_deref().unwrap_or(&[]),
    );
    t.output = output?;
    back?;
    tracing::debug!(
        fd = f.fd,
        input = t.input.len(),
        output = t.output.len(),
        "pty {}: unread bytes",
        t.index
    );
    Ok(())
}

/// What waits for the slave side to read, taken through `peer`. In canonical mode a line not
/// ended yet is neither counted by `FIONREAD` nor readable, so the slave is switched to raw
/// mode for the read (its termios is put back however the read ends); written back later
/// under canonical mode, the bytes are cut into the same lines again ([`refuse_eof_marks`]
/// refuses what they cannot say).
fn take_input(peer: &OwnedFd, termios: &libc::termios2) -> Result<Vec<u8>, DumpError> {
    let canonical = termios.c_lflag & libc::ICANON != 0;
    if !canonical {
        return Ok(tty::take_available(peer.as_fd())?);
    }
    tty::set_termios(peer.as_fd(), &tty::make_raw(termios))?;
    let input = tty::take_available(peer.as_fd());
    let back = tty::set_termios(peer.as_fd(), termios);
    let input = input?;
    back?;
    Ok(input)
}

/// What waits for master `m` to read, taken (packet mode off meanwhile, so that no status
/// byte comes with it).
fn take_output(m: &OwnedFd, packet: bool) -> Result<Vec<u8>, DumpError> {
    if packet {
        tty::set_packet_mode(m.as_fd(), false)?;
    }
    let out = tty::take_available(m.as_fd());
    if packet {
        tty::set_packet_mode(m.as_fd(), true)?;
    }
    Ok(out?)
}

/// Writes `input` back into master `m` and `output` back into `slave`, under a termios
/// that neither echoes nor transforms them, then puts `termios` back.
fn put_back(
    m: &OwnedFd,
    slave: &OwnedFd,
    termios: &libc::termios2,
    input: &[u8],
    output: &[u8],
) -> Result<(), DumpError> {
    if input.is_empty() && output.is_empty() {
        return Ok(());
    }
    tty::set_termios(slave.as_fd(), &tty::quiet(termios))?;
    let wrote =
        tty::write_all(m.as_fd(), input).and_then(|()| tty::write_all(slave.as_fd(), output));
    tty::set_termios(slave.as_fd(), termios)?;
    Ok(wrote?)
}

/// Refuses a pty whose input waiting in canonical mode holds a NUL byte: it may be an
/// end-of-file mark (what VEOF leaves in the line discipline's buffer) or a typed ^@, which the
/// bytes alone cannot tell apart, and written back it would be a NUL either way. (The dump
/// has already put the bytes back: the process finds its input as it was.)
pub(crate) fn refuse_eof_marks(pid: i32, f: &FdImage) -> Result<(), DumpError> {
    let FdKind::Tty(t) = &f.kind else {
        return Ok(());
    };
    let canonical = t.termios.lflag & libc::ICANON != 0;
    if t.role != TtyRole::Master || !canonical || !t.input.contains(&0) {
        return Ok(());
    }
    Err(unsupported(format!(
        "pid {pid} fd {}: pty {}: the input waiting in canonical mode holds a NUL byte (an \
         end-of-file mark or a typed ^@, which haul cannot tell apart): not carried",
        f.fd, t.index
    )))
}
