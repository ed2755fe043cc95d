//! `haul restore --tty inherit|new`: the terminal a shell job is restored onto, and what
//! `haul restore` does with it once the job runs.
//!
//! - `inherit`: haul's own terminal (its stdin, which must be its controlling terminal). The
//!   restored root joins haul's session in a group of its own, which becomes the foreground
//!   group; haul waits, as a shell waits for a foreground job, until the root exits, then
//!   takes the foreground back and puts its terminal's termios back as they were.
//! - `new`: a new pty (its window size haul's terminal's, if haul has one). The root leads a
//!   new session whose controlling terminal is the slave; haul relays between the master and
//!   its own stdin/stdout (stdin in raw mode if it is a terminal) until the root exits.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::image::ImageSet;
use crate::job::TtyPolicy;
use crate::restore::{TtyMode, TtyTarget};
use crate::sys::tty::{stdin, stdout};
use crate::sys::{process, tty, SysError};

/// Errors of `--tty`.
#[derive(Debug, thiserror::Error)]
pub enum TtyError {
    /// `--tty inherit` with a stdin that is not haul's controlling terminal.
    #[error(
        "--tty inherit: the stdin of haul restore is not its controlling terminal ({source}); \
         run it from a shell on a terminal, or use --tty new"
    )]
    NotATerminal {
        #[source]
        source: SysError,
    },
    #[error("--tty {mode}: {source}")]
    Sys {
        mode: &'static str,
        #[source]
        source: SysError,
    },
}

/// The terminal of a restore, and how haul's own is to be left.
#[derive(Debug)]
pub struct Terminal {
    mode: TtyMode,
    term: Arc<OwnedFd>,
    /// haul's stdin as it was, if it is a terminal: its termios (and with `inherit`, haul's
    /// process group, to take the foreground back).
    own: Option<(libc::termios2, i32)>,
}

/// The terminal `policy` asks for, if the set holds a terminal outside the checkpoint
/// (otherwise None: nothing to put anywhere).
pub fn prepare(policy: Option<TtyPolicy>, set: &ImageSet) -> Result<Option<Terminal>, TtyError> {
    let Some(policy) = policy else {
        return Ok(None);
    };
    if crate::restore::outside_terminals(set).is_empty() {
        tracing::warn!("--tty: the image holds no terminal outside the checkpoint; ignored");
        return Ok(None);
    }
    let own_termios = tty::get_termios(stdin()).ok();
    match policy {
        TtyPolicy::Inherit => {
            tty::foreground(stdin()).map_err(|source| TtyError::NotATerminal { source })?;
            let term = tty::reopen(stdin()).map_err(|source| TtyError::Sys {
                mode: "inherit",
                source,
            })?;
            Ok(Some(Terminal {
                mode: TtyMode::Inherit,
                term: Arc::new(term),
                own: own_termios.map(|t| (t, process::own_pgrp())),
            }))
        }
        TtyPolicy::New => {
            let sys = |source| TtyError::Sys {
                mode: "new",
                source,
            };
            let m = tty::open_pty().map_err(sys)?;
            if own_termios.is_some() {
                let w = tty::get_winsize(stdin()).map_err(sys)?;
                tty::set_winsize(m.as_fd(), &w).map_err(sys)?;
            }
            Ok(Some(Terminal {
                mode: TtyMode::New,
                term: Arc::new(m),
                own: own_termios.map(|t| (t, 0)),
            }))
        }
    }
}

impl Terminal {
    /// What the restore is given.
    pub fn target(&self) -> TtyTarget {
        TtyTarget {
            mode: self.mode,
            term: self.term.clone(),
        }
    }

    /// Waits until process `pid` (the restored root) exits: with `new`, relaying between the
    /// pty and haul's stdin/stdout meanwhile. haul's terminal is left as it was.
    pub fn serve(self, pid: i32) -> Result<(), TtyError> {
        let mode = self.mode.name();
        let sys = |source| TtyError::Sys { mode, source };
        let pidfd = process::pidfd_open(pid).map_err(sys)?;
        match self.mode {
            TtyMode::Inherit => loop {
                if tty::poll_in(&[pidfd.as_raw_fd()], -1).map_err(sys)?[0] {
                    return Ok(());
                }
            },
            TtyMode::New => {
                if let Some((t, _)) = &self.own {
                    tty::set_termios(stdin(), &tty::make_raw(t)).map_err(sys)?;
                }
                relay(self.term.as_fd(), pidfd.as_fd()).map_err(sys)
            }
        }
    }
}

/// Copies haul's stdin to `master` and `master` to haul's stdout until the process of
/// `pidfd` exits (then what the pty still holds is copied out).
fn relay(master: BorrowedFd<'_>, pidfd: BorrowedFd<'_>) -> crate::sys::Result<()> {
    let out = stdout();
    let (mut stdin_open, mut master_open) = (true, true);
    let mut buf = vec![0u8; 16384];
    loop {
        let mut fds = vec![pidfd.as_raw_fd()];
        if master_open {
            fds.push(master.as_raw_fd());
        }
        if stdin_open {
            fds.push(stdin().as_raw_fd());
        }
        let ready = tty::poll_in(&fds, -1)?;
        let mut i = 1;
        if master_open {
            if ready[i] {
                match tty::read(master, &mut buf) {
                    Ok(0) => master_open = false,
                    Ok(n) => tty::write_all(out, &buf[..n])?,
                    // EIO: no slave is open (the process closed its terminal).
                    Err(e) if e.errno() == Some(libc::EIO) => master_open = false,
                    Err(e) if e.errno() == Some(libc::EAGAIN) => {}
                    Err(e) => return Err(e),
                }
            }
            i += 1;
        }
        if stdin_open && ready[i] {
            match tty::read(stdin(), &mut buf) {
                Ok(0) => stdin_open = false,
                Ok(n) => tty::write_all(master, &buf[..n])?,
                Err(e) if e.errno() == Some(libc::EAGAIN) => {}
                Err(_) => stdin_open = false,
            }
        }
        if ready[0] {
            if master_open {
                let rest = tty::take_available(master).unwrap_or_default();
                tty::write_all(out, &rest)?;
            }
            return Ok(());
        }
    }
}

impl Drop for Terminal {
    /// haul's terminal as it was: its termios, and with `inherit` haul's group in the
    /// foreground again (whether the job ran or the restore failed).
    fn drop(&mut self) {
        if let Some((t, pgrp)) = &self.own {
            if self.mode == TtyMode::Inherit {
                let _ = tty::set_foreground(stdin(), *pgrp);
            }
            let _ = tty::set_termios(stdin(), t);
        }
    }
}
