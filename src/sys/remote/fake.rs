//! A recording [`Inject`] for unit tests: no process, no root. Every call is recorded with its
//! arguments and the bytes written before it; results are scripted (by default every call
//! returns 0), so a test can check a step's order and arguments, and make its Nth call fail.

use std::collections::{BTreeMap, HashMap};

use super::Inject;
use crate::sys::Result;

/// The syscalls the fake knows by name (the ones sys::remote injects), so that tests outside
/// `sys/` name calls instead of numbering them.
const NAMES: &[(&str, i64)] = &[
    ("bind", libc::SYS_bind),
    ("capset", libc::SYS_capset),
    ("chdir", libc::SYS_chdir),
    ("clone3", libc::SYS_clone3),
    ("close", libc::SYS_close),
    ("connect", libc::SYS_connect),
    ("close_range", libc::SYS_close_range),
    ("connect", libc::SYS_connect),
    ("dup3", libc::SYS_dup3),
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("eventfd2", libc::SYS_eventfd2),
    ("fcntl", libc::SYS_fcntl),
    ("flock", libc::SYS_flock),
    ("ftruncate", libc::SYS_ftruncate),
    ("inotify_add_watch", libc::SYS_inotify_add_watch),
    ("inotify_init1", libc::SYS_inotify_init1),
    ("inotify_rm_watch", libc::SYS_inotify_rm_watch),
    ("ioctl", libc::SYS_ioctl),
    ("listen", libc::SYS_listen),
    ("lseek", libc::SYS_lseek),
    ("madvise", libc::SYS_madvise),
    ("membarrier", libc::SYS_membarrier),
    ("memfd_create", libc::SYS_memfd_create),
    ("mlock2", libc::SYS_mlock2),
    ("mmap", libc::SYS_mmap),
    ("mprotect", libc::SYS_mprotect),
    ("mremap", libc::SYS_mremap),
    ("munmap", libc::SYS_munmap),
    ("open", libc::SYS_open),
    ("personality", libc::SYS_personality),
    ("pipe2", libc::SYS_pipe2),
    ("prctl", libc::SYS_prctl),
    ("prlimit64", libc::SYS_prlimit64),
    ("read", libc::SYS_read),
    ("recvmsg", libc::SYS_recvmsg),
    ("rseq", libc::SYS_rseq),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigqueueinfo", libc::SYS_rt_sigqueueinfo),
    ("rt_sigtimedwait", libc::SYS_rt_sigtimedwait),
    ("rt_tgsigqueueinfo", libc::SYS_rt_tgsigqueueinfo),
    ("seccomp", libc::SYS_seccomp),
    ("sendto", libc::SYS_sendto),
    ("sched_setaffinity", libc::SYS_sched_setaffinity),
    ("sched_setscheduler", libc::SYS_sched_setscheduler),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("set_tid_address", libc::SYS_set_tid_address),
    ("setfsgid", libc::SYS_setfsgid),
    ("setfsuid", libc::SYS_setfsuid),
    ("setgroups", libc::SYS_setgroups),
    ("setsockopt", libc::SYS_setsockopt),
    ("setitimer", libc::SYS_setitimer),
    ("setpgid", libc::SYS_setpgid),
    ("semctl", libc::SYS_semctl),
    ("shmat", libc::SYS_shmat),
    ("socket", libc::SYS_socket),
    ("shmdt", libc::SYS_shmdt),
    ("msgsnd", libc::SYS_msgsnd),
    ("setpriority", libc::SYS_setpriority),
    ("setresgid", libc::SYS_setresgid),
    ("setresuid", libc::SYS_setresuid),
    ("setsid", libc::SYS_setsid),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("socket", libc::SYS_socket),
    ("socketpair", libc::SYS_socketpair),
    ("signalfd4", libc::SYS_signalfd4),
    ("timer_create", libc::SYS_timer_create),
    ("timer_settime", libc::SYS_timer_settime),
    ("timerfd_create", libc::SYS_timerfd_create),
    ("timerfd_settime", libc::SYS_timerfd_settime),
    ("umask", libc::SYS_umask),
    ("unlink", libc::SYS_unlink),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("write", libc::SYS_write),
];

/// The number of syscall `name` (a test naming one the fake does not know fails).
pub fn nr_of(name: &str) -> i64 {
    NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, nr)| *nr)
        .unwrap_or_else(|| panic!("the fake knows no syscall {name:?}"))
}

/// The name of syscall `nr` ("?" for one the fake does not know).
pub fn name_of(nr: i64) -> &'static str {
    NAMES
        .iter()
        .find(|(_, n)| *n == nr)
        .map_or("?", |(name, _)| name)
}

/// One recorded call, with the memory writes made since the call before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The syscall number.
    pub nr: i64,
    /// Its six arguments.
    pub args: [u64; 6],
    /// `(address, bytes)` written by the caller before this call (in order).
    pub writes: Vec<(u64, Vec<u8>)>,
}

impl Call {
    /// The syscall's name.
    pub fn name(&self) -> &'static str {
        name_of(self.nr)
    }

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
    /// The process the fake stands for.
    pub pid: i32,
    /// The thread the fake stands for.
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

    /// Answers every call of syscall `name` with `f(args, memory)` (its raw result).
    pub fn when(
        &mut self,
        name: &str,
        f: impl FnMut(&[u64; 6], &mut Memory) -> i64 + 'static,
    ) -> &mut Self {
        self.hooks.insert(nr_of(name), Box::new(f));
        self
    }

    /// Answers every call of syscall `name` with `v`.
    pub fn returns(&mut self, name: &str, v: i64) -> &mut Self {
        self.when(name, move |_, _| v)
    }

    /// Removes the argument area (typed calls that pass pointers then fail).
    pub fn without_args_area(&mut self) -> &mut Self {
        self.args = None;
        self
    }

    /// The syscalls called, by name, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.calls.iter().map(Call::name).collect()
    }

    /// The calls of syscall `name`, in order.
    pub fn of(&self, name: &str) -> Vec<&Call> {
        let nr = nr_of(name);
        self.calls.iter().filter(|c| c.nr == nr).collect()
    }

    /// The `prctl` options called, in order, with their second argument.
    pub fn prctls(&self) -> Vec<(u64, u64)> {
        self.of("prctl")
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
