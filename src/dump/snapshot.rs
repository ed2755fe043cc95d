//! The fork snapshot of a checkpoint that leaves its process running (`leave_running`).
//!
//! Copying a big process's memory was most of a checkpoint's freeze, and the kept buffers
//! it was copied into were most of the time to its commit: a GiB of fresh buffers costs
//! ~0.45 s of page faults here (freed memory goes back to the host), before the freeze.
//! Instead, under the freeze, the root is made to fork (an injected `clone(CLONE_PARENT)`,
//! ~20 ms per GiB of page tables), and is thawed at once. The child holds the memory as it
//! was under the freeze (copy on write), and after the thaw its pages are read from it
//! straight into the store writer's recycled buffers. Then it is killed.
//!
//! The child never runs an instruction of its own (born traced and stopped, with
//! `PTRACE_O_EXITKILL`; see `dump::keeper::make_child`, which it shares with the memory
//! keeper): injected syscalls close its copies of the fds (a listening socket or the end of a
//! pipe must not outlive the process's own close) and give it a session of its own (no
//! signal to the process's group reaches it).
//!
//! A fork does not copy everything. What it does not is still copied under the freeze:
//! shared mappings (the child shares them), and mappings marked `MADV_DONTFORK` (absent from
//! the child) or `MADV_WIPEONFORK` (empty in it). Before its pages are read, the child's
//! page tables are checked to hold every page the process had under the freeze (a mapping
//! marked after the checks read its flags would fail the dump there: nothing is committed).
//!
//! Only the root of the tree gets one, and only when its parent is the process that will
//! reap the child: `CLONE_PARENT` makes the child a sibling of the root, and a child of the
//! root itself would be a zombie of the root's, which it could see (`wait` with `__WALL`).
//! The checkpoint worker's parent is haul, which launched the root and reaps the child
//! ([`super::DumpStats::keepers`]). Also not for a process in a memory cgroup with less room
//! than its private memory (its writes after the thaw are copied, and charged there), nor
//! for one with a userfaultfd registered that is not haul's tracking. Without a snapshot,
//! the pages are copied into kept buffers under the freeze, as before. A fork that fails
//! (`pids.max`, no memory, the init of a PID namespace) falls back to that too.

use super::check::TreeSnapshot;
use super::freeze::Frozen;
use super::{DumpError, DumpOptions};
use crate::image::{Vma, VmaKind};

/// A fork of the root made under the freeze, stopped under haul's ptrace; killed when
/// dropped.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub pid: i32,
    /// Its parent is this process (the dump's): collecting its death as its tracer reaps it.
    /// Otherwise it is a child of this process's parent, which reaps it.
    ours: bool,
    ended: bool,
}

/// Why the root of the tree `before` gets no snapshot, if it does not. `tracked`: a pre-copy
/// registered its memory with haul's userfaultfd (`uw`). A `uw` mapping that is not haul's
/// belongs to another monitor: a fork would wait for it to read the fork event (with
/// `UFFD_FEATURE_EVENT_FORK`), or hand it a child it does not expect. `private`: the root's private memory
/// ([`super::check::memory_estimate`]).
pub(crate) fn unwanted(
    before: &TreeSnapshot,
    opts: &DumpOptions,
    tracked: bool,
    private: u64,
) -> Option<String> {
    if !opts.leave_running || opts.lazy {
        return Some("the process does not run on after the dump".into());
    }
    if !opts.snapshot {
        return Some("dump.snapshot = false".into());
    }
    let (root, snap) = before.members.first()?;
    let me = crate::sys::process::getpid();
    let reaper = opts.parent_reaps.then(crate::sys::process::getppid);
    if root.ppid != me && Some(root.ppid) != reaper {
        return Some(format!(
            "its parent (pid {}) is not haul, which would have to reap the fork",
            root.ppid
        ));
    }
    if snap.maps.iter().any(|m| m.path.starts_with("/SYSV")) {
        return Some("it attaches SysV shared memory".into());
    }
    let foreign = |f: &String| f == "um" || f == "ui" || (f == "uw" && !tracked);
    if let Some(m) = snap.maps.iter().find(|m| m.vm_flags.iter().any(foreign)) {
        return Some(format!(
            "{:#x}-{:#x} is registered with a userfaultfd that is not haul's",
            m.start, m.end
        ));
    }
    crate::proc::memcg_room_short(root.pid, private)
}

/// Whether a fork copies `vma`'s pages as they are: private memory, neither `MADV_DONTFORK`
/// (`dc`) nor `MADV_WIPEONFORK` (`wf`).
pub(crate) fn copies(vma: &Vma) -> bool {
    matches!(vma.kind, VmaKind::Anon | VmaKind::File | VmaKind::Memfd)
        && !vma.shared
        && !vma.vm_flags.iter().any(|f| f == "dc" || f == "wf")
}

/// Forks frozen process `f` (the root, whose parent reaps the child: see [`unwanted`]).
pub(crate) fn make(f: &mut Frozen) -> Result<Snapshot, DumpError> {
    let ours = crate::proc::stat(f.pid)?.ppid == crate::sys::process::getpid();
    let pid = super::keeper::make_child(
        f,
        crate::sys::remote::clone_snapshot,
        "snapshot",
        super::keeper::Leave::Session,
    )?;
    Ok(Snapshot {
        pid,
        ours,
        ended: false,
    })
}

impl Snapshot {
    /// Kills it and collects its death as its tracer. Returns its pid when this process's
    /// parent is to reap it.
    pub fn end(mut self) -> Option<i32> {
        self.ended = true;
        super::keeper::end_child(self.pid, "snapshot");
        (!self.ours).then_some(self.pid)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if !self.ended {
            super::keeper::end_child(self.pid, "snapshot");
        }
    }
}

/// Fails unless snapshot `pid` holds each of `vmas` (`[start, end)`, in order) as a fork copies
/// it: mapped over the whole range, neither `dc` nor `wf`. Reads its smaps (its flags are
/// those the process had at the fork: it never runs).
pub(crate) fn check_copied(pid: i32, vmas: &[(u64, u64)]) -> Result<(), DumpError> {
    let maps = crate::proc::maps_with_flags(pid)?;
    match uncopied(&maps, vmas) {
        None => Ok(()),
        Some((start, end, why)) => Err(DumpError::SnapshotChanged {
            snapshot: pid,
            start,
            end,
            why,
        }),
    }
}

/// The first of `vmas` that `maps` (sorted) do not hold as a fork copies it, and why.
fn uncopied(
    maps: &[crate::proc::MapEntry],
    vmas: &[(u64, u64)],
) -> Option<(u64, u64, &'static str)> {
    vmas.iter().find_map(|&(start, end)| {
        let mut at = start;
        for m in maps.iter().filter(|m| m.end > start && m.start < end) {
            if m.start > at {
                break;
            }
            if m.vm_flags.iter().any(|f| f == "wf") {
                return Some((start, end, "it is marked MADV_WIPEONFORK"));
            }
            if m.vm_flags.iter().any(|f| f == "dc") {
                return Some((start, end, "it is marked MADV_DONTFORK"));
            }
            at = m.end;
        }
        (at < end).then_some((start, end, "it is not mapped there"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real process (sleep, with a pipe on its stdin and stdout, a child of this test) is
    /// forked while frozen: the fork has its own address space (kcmp), holds none of its
    /// fds, leads a session of its own, is stopped under haul's ptrace, and is this test's
    /// child, not sleep's. Ending it reaps it here; sleep runs on, untraced, childless.
    #[test]
    fn a_snapshot_is_a_stopped_fork_that_holds_nothing_and_is_not_the_process_child() {
        let child = super::super::keeper::sleeper::sleeping();
        let pid = child.pid;
        let me = crate::sys::process::getpid();
        let checked = {
            let mut f = Frozen::seize_all(pid).expect("freeze sleep");
            let s = make(&mut f).expect("fork a snapshot");
            let st = crate::proc::stat(s.pid).expect("the snapshot's stat");
            let fds = crate::proc::fds(s.pid).expect("the snapshot's fds");
            let shared = crate::sys::kcmp::same_vm(pid, s.pid).expect("kcmp");
            let sp = s.pid;
            let to_reap = s.end();
            let gone = crate::proc::stat(sp).is_err();
            drop(f);
            (sp, st, fds, shared, to_reap, gone)
        };
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
        let untraced = crate::proc::status(pid).map(|s| s.tracer_pid);
        let state = crate::proc::stat(pid).map(|s| s.state);
        drop(child);
        let (sp, st, fds, shared, to_reap, gone) = checked;
        assert_eq!(shared, Some(false), "the snapshot shares sleep's memory");
        assert_eq!(st.state, 't', "the snapshot is not stopped under ptrace");
        assert_eq!(st.ppid, me, "the snapshot is not this test's child");
        assert!(fds.is_empty(), "the snapshot holds fds {fds:?}");
        assert_eq!((st.session, st.pgrp), (sp, sp), "not a session of its own");
        assert_eq!(
            to_reap, None,
            "this process's own child is left to another to reap"
        );
        assert!(
            gone,
            "the snapshot is still there after its end (a zombie?)"
        );
        assert_eq!(
            children.ok().as_deref().map(str::trim),
            Some(""),
            "sleep has a child"
        );
        assert_eq!(untraced.ok(), Some(0), "sleep is still traced");
        assert!(
            matches!(state, Ok('S' | 'R')),
            "sleep is not running: {state:?}"
        );
    }

    fn entry(start: u64, end: u64, flags: &[&str]) -> crate::proc::MapEntry {
        crate::proc::MapEntry {
            start,
            end,
            read: true,
            write: true,
            exec: false,
            shared: false,
            offset: 0,
            dev_major: 0,
            dev_minor: 0,
            inode: 0,
            path: String::new(),
            vm_flags: flags.iter().map(|f| f.to_string()).collect(),
        }
    }

    /// A VMA held whole (by one mapping or several back to back) passes; one with a hole, a
    /// `wf` or `dc` part, or none at all is named, with why.
    #[test]
    fn a_vma_the_fork_did_not_copy_is_named() {
        let maps = [
            entry(0x1000, 0x3000, &["rd", "wr"]),
            entry(0x3000, 0x5000, &["rd", "wr", "ac"]),
            entry(0x6000, 0x8000, &["rd", "wr"]),
            entry(0x8000, 0x9000, &["rd", "wr", "wf"]),
            entry(0xa000, 0xb000, &["rd", "dc"]),
        ];
        assert_eq!(uncopied(&maps, &[(0x1000, 0x5000), (0x6000, 0x8000)]), None);
        assert_eq!(
            uncopied(&maps, &[(0x1000, 0x5000), (0x4000, 0x7000)]),
            Some((0x4000, 0x7000, "it is not mapped there"))
        );
        assert_eq!(
            uncopied(&maps, &[(0x6000, 0x9000)]),
            Some((0x6000, 0x9000, "it is marked MADV_WIPEONFORK"))
        );
        assert_eq!(
            uncopied(&maps, &[(0xa000, 0xb000)]),
            Some((0xa000, 0xb000, "it is marked MADV_DONTFORK"))
        );
        assert_eq!(
            uncopied(&maps, &[(0xc000, 0xd000)]),
            Some((0xc000, 0xd000, "it is not mapped there"))
        );
    }
}
