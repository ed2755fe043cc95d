//! A recording [`Inject`] for unit tests: no process, no root. Every call is recorded with its
//! arguments and the bytes written before it; results are scripted (by default every call
//! returns 0), so a test can check a step's order and arguments, and make its Nth call fail.

use std::collections::{BTreeMap, HashMap};

use super::Inject;
use crate::sys::Result;

/// One recorded call, with the memory writes made since the call before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub nr: i64,
    pub args: [u64; 6],
    /// `(address, bytes)` written by the caller before this call (in order).
    pub writes: Vec<(u64, Vec<u8>)>,
}

impl Call {
    /// The bytes written at `addr` before this call (the last write there).
    pub fn written_at(&self, addr: u64) -> Option<&[u8]> {
        self.writes
            .iter()
            .rev()
            .find(|(a, _)| *a == addr)
            .map(|(_, b)| b.as_slice())
    }

    /// The bytes the call's argument `i` points at (written before the call).
    pub fn arg_bytes(&self, i: usize) -> Option<&[u8]> {
        self.written_at(self.args[i])
    }
}

type Hook = Box<dyn FnMut(&[u64; 6], &mut Memory) -> i64>;

/// The fake's memory: what was written, and what hooks put there for the caller to read.
#[derive(Default, Debug)]
pub struct Memory {
    bytes: BTreeMap<u64, u8>,
}

impl Memory {
    /// Puts `data` at `addr`.
    pub fn poke(&mut self, addr: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            self.bytes.insert(addr + i as u64, *b);
        }
    }

    /// Reads `buf.len()` bytes at `addr` (0 where nothing was put).
    pub fn peek(&self, addr: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.bytes.get(&(addr + i as u64)).copied().unwrap_or(0);
        }
    }
}

/// The recording fake of an injected-syscall session.
pub struct Recorder {
    pub pid: i32,
    pub tid: i32,
    /// Every call made so far.
    pub calls: Vec<Call>,
    pending: Vec<(u64, Vec<u8>)>,
    mem: Memory,
    hooks: HashMap<i64, Hook>,
    fail: HashMap<usize, i32>,
    args: Option<(u64, u64)>,
}

/// Where the fake's argument area is.
pub const ARGS_AT: u64 = 0x7000_0000;
/// How long the fake's argument area is.
pub const ARGS_LEN: u64 = 60 * 1024;

impl Recorder {
    /// A fake session of thread `pid` of process `pid`, with an argument area at [`ARGS_AT`].
    pub fn new(pid: i32) -> Recorder {
        Recorder {
            pid,
            tid: pid,
            calls: Vec::new(),
            pending: Vec::new(),
            mem: Memory::default(),
            hooks: HashMap::new(),
            fail: HashMap::new(),
            args: Some((ARGS_AT, ARGS_LEN)),
        }
    }

    /// Makes the `n`th call (0-based, counting every call) return `-errno`.
    pub fn fail_nth(&mut self, n: usize, errno: i32) -> &mut Self {
        self.fail.insert(n, errno);
        self
    }

    /// Answers every call of `nr` with `f(args, memory)` (its raw result).
    pub fn when(
        &mut self,
        nr: i64,
        f: impl FnMut(&[u64; 6], &mut Memory) -> i64 + 'static,
    ) -> &mut Self {
        self.hooks.insert(nr, Box::new(f));
        self
    }

    /// Answers every call of `nr` with `v`.
    pub fn returns(&mut self, nr: i64, v: i64) -> &mut Self {
        self.when(nr, move |_, _| v)
    }

    /// Removes the argument area (typed calls that pass pointers then fail).
    pub fn without_args_area(&mut self) -> &mut Self {
        self.args = None;
        self
    }

    /// The syscall numbers called, in order.
    pub fn nrs(&self) -> Vec<i64> {
        self.calls.iter().map(|c| c.nr).collect()
    }

    /// The calls of syscall `nr`, in order.
    pub fn of(&self, nr: i64) -> Vec<&Call> {
        self.calls.iter().filter(|c| c.nr == nr).collect()
    }

    /// The `prctl` options called, in order, with their second argument.
    pub fn prctls(&self) -> Vec<(u64, u64)> {
        self.of(libc::SYS_prctl)
            .iter()
            .map(|c| (c.args[0], c.args[1]))
            .collect()
    }
}

impl Inject for Recorder {
    fn pid(&self) -> i32 {
        self.pid
    }
    fn tid(&self) -> i32 {
        self.tid
    }
    fn call(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        let n = self.calls.len();
        self.calls.push(Call {
            nr,
            args,
            writes: std::mem::take(&mut self.pending),
        });
        if let Some(errno) = self.fail.get(&n) {
            return Ok(-i64::from(*errno));
        }
        Ok(match self.hooks.get_mut(&nr) {
            Some(f) => f(&args, &mut self.mem),
            None => 0,
        })
    }
    fn write_mem(&mut self, addr: u64, data: &[u8]) -> Result<()> {
        self.pending.push((addr, data.to_vec()));
        self.mem.poke(addr, data);
        Ok(())
    }
    fn read_mem(&mut self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.mem.peek(addr, buf);
        Ok(())
    }
    fn args_area(&self) -> Option<(u64, u64)> {
        self.args
    }
}
