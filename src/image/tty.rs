//! Terminals: pty masters and slaves, and the terminal a process was started on.
//!
//! The dump records what it saw; the restore decides. A pty whose master is in the
//! checkpoint is made again as a new pair (a new index: `/dev/pts/N` changes). A terminal
//! outside the checkpoint (a slave whose master no process of the set holds, `/dev/ttyN`,
//! `/dev/console`, `/dev/tty`) is given back only as the restore says (`restore.tty`).

use serde::{Deserialize, Serialize};

/// Which end of which terminal an fd is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TtyRole {
    /// `/dev/ptmx` (or `/dev/pts/ptmx`): the master of pty `index`.
    Master,
    /// `/dev/pts/N`: the slave of pty `index` (N).
    #[default]
    Slave,
    /// Another terminal (`/dev/ttyN`, `/dev/console`, a serial line, `/dev/tty`).
    Other,
}

/// The whole termios of a terminal (`struct termios2`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    /// The control characters (`c_cc`, NCCS of them).
    pub cc: Vec<u8>,
    pub ispeed: u32,
    pub ospeed: u32,
}

impl Termios {
    pub fn of(t: &libc::termios2) -> Termios {
        Termios {
            iflag: t.c_iflag,
            oflag: t.c_oflag,
            cflag: t.c_cflag,
            lflag: t.c_lflag,
            line: t.c_line,
            cc: t.c_cc.to_vec(),
            ispeed: t.c_ispeed,
            ospeed: t.c_ospeed,
        }
    }

    /// As `struct termios2`, over `base` (whose control characters beyond ours stay).
    pub fn to_sys(&self, base: &libc::termios2) -> libc::termios2 {
        let mut t = *base;
        t.c_iflag = self.iflag;
        t.c_oflag = self.oflag;
        t.c_cflag = self.cflag;
        t.c_lflag = self.lflag;
        t.c_line = self.line;
        for (d, s) in t.c_cc.iter_mut().zip(&self.cc) {
            *d = *s;
        }
        t.c_ispeed = self.ispeed;
        t.c_ospeed = self.ospeed;
        t
    }
}

/// A window size (`struct winsize`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
    pub xpixel: u16,
    pub ypixel: u16,
}

impl WinSize {
    pub fn of(w: &libc::winsize) -> WinSize {
        WinSize {
            rows: w.ws_row,
            cols: w.ws_col,
            xpixel: w.ws_xpixel,
            ypixel: w.ws_ypixel,
        }
    }
    pub fn to_sys(self) -> libc::winsize {
        libc::winsize {
            ws_row: self.rows,
            ws_col: self.cols,
            ws_xpixel: self.xpixel,
            ws_ypixel: self.ypixel,
        }
    }
}

/// A terminal fd.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtyImage {
    pub role: TtyRole,
    /// The pty index (`/dev/pts/N`) of a master or slave; 0 for another terminal.
    pub index: u32,
    /// The path the fd had at dump time (`/dev/pts/3`, `/dev/ptmx`, `/dev/tty1`).
    pub path: String,
    /// Its device number (`st_rdev`).
    pub rdev: u64,
    pub termios: Termios,
    pub winsize: WinSize,
    /// The session whose controlling terminal it is (as the process holding this fd sees
    /// it in `/proc/PID/stat`), 0 if it is not that process's controlling terminal.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ctty_sid: i32,
    /// The foreground process group of that controlling terminal (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fg_pgrp: i32,
    /// Master only: packet mode (`TIOCPKT`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub packet: bool,
    /// Master only: the slave is locked (`TIOCSPTLCK`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub locked: bool,
    /// Master only: bytes written to the master that the slave has not read yet (its input,
    /// as the line discipline holds it: in canonical mode, complete lines).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input: Vec<u8>,
    /// Master only: bytes the slave wrote that the master has not read yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<u8>,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}
