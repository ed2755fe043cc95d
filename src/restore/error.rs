//! What a step of the rebuild fails with: the source kept (the injected call with its errno,
//! the `/proc` read, the cgroup write), and what it was acting on.

use crate::sys::SysError;

/// Why a step of the rebuild failed (inside [`RestoreError::Step`](super::RestoreError)).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A syscall (injected or haul's own) failed: the error names the call, the pid and thread,
    /// and keeps the errno.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// A syscall failed while acting on `what` (an fd, a VMA, a timer, a thread).
    #[error("{what}: {source}")]
    At {
        what: String,
        #[source]
        source: Box<StepError>,
    },
    /// The userfaultfd of a lazy restore could not be made or taken.
    #[error(transparent)]
    Uffd(#[from] crate::sys::remote::TakeUffdError),
    /// Reading `/proc` of the process (or of haul) failed.
    #[error(transparent)]
    Proc(#[from] crate::proc::ProcError),
    /// Putting the process back into its cgroups failed.
    #[error(transparent)]
    Cgroup(#[from] super::cgroup::CgroupError),
    /// Making the set's SysV IPC objects failed.
    #[error(transparent)]
    Sysv(#[from] super::share::SysvError),
    /// Taking or releasing the network lock of the set's connections failed.
    #[error(transparent)]
    NetLock(#[from] crate::netlock::NetLockError),
    /// Reading the set's pages failed (the store names the pack and page).
    #[error(transparent)]
    Pages(super::BoxError),
    /// The test switch `$HAUL_RESTORE_FAIL_AT` names this step.
    #[error("failed on purpose (test switch)")]
    TestSwitch,
    /// No room for the scratch area between the old and the new layout.
    #[error("no hole for a scratch area")]
    NoHole,
    /// The scratch area was mapped elsewhere.
    #[error("scratch mapped at {got:#x}, not {want:#x}")]
    ScratchMoved { want: u64, got: u64 },
    /// A part of the vDSO unit was moved elsewhere.
    #[error("mremap moved {from:#x} to {got:#x}, not {want:#x}")]
    Moved { from: u64, want: u64, got: u64 },
    /// The parked process has no vDSO to move to the dumped address.
    #[error("this process has no [vdso] to move")]
    NoVdso,
    /// The userfaultfd of an eager fill could not unregister a range.
    #[error("unregistering the filled range at {at:#x} from its userfaultfd: {source}")]
    UffdFill { at: u64, source: std::io::Error },
    /// `process_vm_writev` wrote less than asked.
    #[error("process_vm_writev from {at:#x} wrote {wrote} of {len} bytes")]
    ShortFill { at: u64, wrote: usize, len: usize },
    /// setfsuid/setfsgid did not take.
    #[error("{call} {id}: the thread's id stays {now}")]
    FsId {
        call: &'static str,
        id: u32,
        now: u32,
    },
    /// A queued `siginfo_t` of the image has no signal or a wrong size.
    #[error("a queued siginfo of the image is malformed ({len} bytes)")]
    BadSiginfo { len: usize },
    /// Re-sending a pending signal failed (`tid`: to that thread, else to the process).
    #[error("re-sending pending signal {sig}{}: {source}", to_thread(*.tid))]
    Resend {
        sig: i32,
        tid: Option<i32>,
        #[source]
        source: SysError,
    },
    /// A `SIGEV_THREAD_ID` timer names a thread the image does not have.
    #[error("timer {id} signals thread {tid}, not in the image")]
    TimerThread { id: i32, tid: i32 },
    /// `PR_TIMER_CREATE_RESTORE_IDS` did not give the timer its id.
    #[error("timer {id} was recreated as timer {got}")]
    TimerId { id: i32, got: i32 },
    /// `clone3` with `set_tid` gave another thread id.
    #[error("thread {want} was created as {got}")]
    ThreadId { want: i32, got: i32 },
    /// `clone3` with `set_tid` gave a child process another pid.
    #[error("child {want} was created as pid {got}")]
    ChildPid { want: i32, got: i32 },
    /// A zombie ended with another status than the image's.
    #[error("zombie {pid} ended with wait status {got:#x}, not {want:#x}")]
    ZombieStatus { pid: i32, want: i32, got: i32 },
    /// A new thread did not stop as a traced new thread does.
    #[error("thread {tid}: expected its first stop, got {stop}")]
    FirstStop {
        tid: i32,
        stop: crate::sys::ptrace::Stop,
    },
    /// A thread moved to a stop in signal delivery before it runs stopped otherwise.
    #[error("thread {tid}: expected the stop of PTRACE_INTERRUPT before it runs, got {stop}")]
    ReleaseStop {
        tid: i32,
        stop: crate::sys::ptrace::Stop,
    },
    /// The image's registers are not `struct user_regs_struct`.
    #[error("registers of the image are not 216 bytes")]
    BadRegs,
    /// The image's XSTATE cannot be set on this CPU.
    #[error("XSTATE does not fit this CPU: {0}")]
    Xstate(#[source] SysError),
    /// A pipe of the image lacks one of its ends.
    #[error("pipe:[{ino}] has no {end} end in the image")]
    PipeEnd { ino: u64, end: &'static str },
    /// A pipe took back less than it held.
    #[error("pipe:[{ino}] took {wrote} of {len} bytes back")]
    PipeShort { ino: u64, wrote: u64, len: usize },
    /// A file lock is held by another process now (taken without waiting).
    #[error("the {what} is held by another process now")]
    LockHeld { what: String },
    /// Taking a file lock failed otherwise.
    #[error("taking the {what}: {source}")]
    Lock {
        what: String,
        #[source]
        source: SysError,
    },
    /// The process's loginuid could not be set.
    #[error("{source} (the loginuid of haul's restores is {now})")]
    Loginuid {
        now: u32,
        #[source]
        source: Box<StepError>,
    },
    /// Detaching from a rebuilt thread failed.
    #[error("detach thread {tid}: {source}")]
    Detach {
        tid: i32,
        #[source]
        source: SysError,
    },
    /// `--verify state` could not read the restored process.
    #[error("--verify state: reading the restored process: {0}")]
    Verify(#[source] crate::proc::ProcError),
    /// The lazy daemon did not start.
    #[error(transparent)]
    LazyStart(super::BoxError),
    /// The image holds something this build records but cannot rebuild yet.
    #[error("{what} cannot be restored yet")]
    NotYet { what: String },
    /// An epoll or inotify instance could not be made as it was.
    #[error(transparent)]
    Events(#[from] super::events::EventsError),
    /// A shared memory object could not be made or mapped again.
    #[error(transparent)]
    SharedMem(#[from] super::share::MemShareError),
    /// A memfd or deleted file could not be made again with its contents.
    #[error(transparent)]
    Stored(#[from] super::stored::StoredError),
}

fn to_thread(tid: Option<i32>) -> String {
    tid.map(|t| format!(" to thread {t}")).unwrap_or_default()
}

impl StepError {
    /// Wraps `self` with what the step was acting on.
    pub fn at(self, what: impl Into<String>) -> StepError {
        StepError::At {
            what: what.into(),
            source: Box::new(self),
        }
    }

    /// The errno of the failed syscall, if a syscall failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            StepError::Sys(e) | StepError::Xstate(e) | StepError::Lock { source: e, .. } => {
                e.errno()
            }
            StepError::Resend { source, .. } | StepError::Detach { source, .. } => source.errno(),
            StepError::At { source, .. } | StepError::Loginuid { source, .. } => source.errno(),
            _ => None,
        }
    }
}

/// Adds "what it acted on" to a step's error.
pub(super) trait At<T> {
    /// Wraps the error with `what` (built only on failure).
    fn at(self, what: impl FnOnce() -> String) -> Result<T, StepError>;
}

impl<T, E: Into<StepError>> At<T> for Result<T, E> {
    fn at(self, what: impl FnOnce() -> String) -> Result<T, StepError> {
        self.map_err(|e| e.into().at(what()))
    }
}

/// Result of a step.
pub(super) type StepResult<T = ()> = Result<T, StepError>;
