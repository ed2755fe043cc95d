//! Adopting the memory of the process a dump stopped (`restore.adopt_memory`, issue #16).
//!
//! A dump that kills a process holding much memory first gives it a memory keeper
//! (`dump::keeper`): a process that shares its address space. When the restore that follows
//! runs on the same host with `pid = "same"`, the worker hands that keeper over, stopped and
//! untraced, once the process is dead. The restore then makes the process it rebuilds by an
//! injected `clone3(CLONE_VM)` in the keeper, with the pid the process had (`set_tid`), and
//! ends the keeper: the address space is the rebuilt process's own, and its pages are the
//! ones the set was read from, none of them written again. Every other step of the rebuild
//! runs as for a parked process (`rebuild::build` skips only unmap, vDSO, map, fill and
//! protect).
//!
//! Why the memory is the set's: the dump read it under the freeze, and nothing wrote it since.
//! The process stayed frozen until it was killed after the commit; its threads were made to
//! leave nothing for the kernel to write at their exit (`remote::clear_exit_writes`); the
//! keeper never ran an instruction of its own. [`check`] compares the keeper's mappings with
//! the set's before anything is made.
//!
//! Only when the process's state is carried exactly this way ([`check`]): a lone process
//! (no descendant, no zombie); credentials, capabilities and `no_new_privs` those of haul
//! itself, which the rebuild's steps need as the process that runs them; no seccomp filter;
//! no mapping the restore makes again as a new object (shared anonymous memory, a memfd, a
//! deleted file, SysV shared memory), since the fds it restores would then name other objects
//! than the mappings; no terminal outside the checkpoint. Otherwise the keeper is ended and
//! the memory is written from the set, as it is when adopting fails before the process runs.

use super::error::{StepError, StepResult};
use crate::image::{ImageSet, ProcessImage, Vma, VmaKind};
use crate::sys::ptrace::{self, Stop, PTRACE_O_EXITKILL, PTRACE_O_TRACESYSGOOD};
use crate::sys::remote::{self, RemoteSyscall};

/// Why a set is not restored by adopting a keeper's memory (logged; the restore writes the
/// memory from the set instead).
#[derive(Debug, thiserror::Error)]
pub(super) enum NotAdopted {
    #[error("the set holds {0} processes: only a lone process is adopted")]
    Tree(usize),
    #[error("not an eager restore with pid = \"same\" and no outside terminal")]
    Mode,
    #[error("keeper {keeper}: its {what} differ from haul's own")]
    Creds { keeper: i32, what: &'static str },
    #[error("keeper {keeper}: the process has seccomp filters")]
    Seccomp { keeper: i32 },
    #[error("the {kind:?} mapping at {start:#x} ({name}) is made again by a restore")]
    Mapping {
        kind: VmaKind,
        start: u64,
        name: String,
    },
    #[error("keeper {keeper} is not handed over (state {state}, tracer {tracer})")]
    NotHanded {
        keeper: i32,
        state: char,
        tracer: i32,
    },
    #[error("keeper {keeper}: its mappings differ from the set's ({detail})")]
    Layout { keeper: i32, detail: String },
    #[error("keeper {keeper}: {source}")]
    Proc {
        keeper: i32,
        #[source]
        source: crate::proc::ProcError,
    },
}

/// A keeper whose memory the restore of a set can adopt: where the process starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Adoptable {
    pub keeper: i32,
    /// The keeper's session and group, which the process made from it starts in.
    pub sid: i32,
    pub pgrp: i32,
}

/// Whether process `p`, the lone process of `set`, can be restored from `keeper`'s memory (see
/// the module documentation). `eager_same`: an eager restore with `pid = "same"` and no
/// terminal to carry.
pub(super) fn check(
    set: &ImageSet,
    p: &ProcessImage,
    keeper: i32,
    eager_same: bool,
) -> Result<Adoptable, NotAdopted> {
    if !eager_same {
        return Err(NotAdopted::Mode);
    }
    let n = set.processes().count() + set.tree.zombies.len();
    if n != 1 {
        return Err(NotAdopted::Tree(n));
    }
    if let Some(v) = p.vmas.iter().find(|v| !carried(v)) {
        return Err(NotAdopted::Mapping {
            kind: v.kind.clone(),
            start: v.start,
            name: v.name.clone(),
        });
    }
    let proc_err = |source| NotAdopted::Proc { keeper, source };
    let st = crate::proc::status(keeper).map_err(proc_err)?;
    let stat = crate::proc::stat(keeper).map_err(proc_err)?;
    if stat.state != 'T' || st.tracer_pid != 0 {
        return Err(NotAdopted::NotHanded {
            keeper,
            state: stat.state,
            tracer: st.tracer_pid,
        });
    }
    if st.seccomp != 0 {
        return Err(NotAdopted::Seccomp { keeper });
    }
    let ours = crate::proc::status(crate::sys::process::getpid()).map_err(proc_err)?;
    let creds = [
        ("user ids", st.uid != ours.uid),
        ("group ids", st.gid != ours.gid),
        ("supplementary groups", st.groups != ours.groups),
        (
            "capabilities",
            (st.cap_inh, st.cap_prm, st.cap_eff, st.cap_bnd, st.cap_amb)
                != (
                    ours.cap_inh,
                    ours.cap_prm,
                    ours.cap_eff,
                    ours.cap_bnd,
                    ours.cap_amb,
                ),
        ),
        ("no_new_privs", st.no_new_privs != ours.no_new_privs),
    ];
    if let Some((what, _)) = creds.iter().find(|c| c.1) {
        return Err(NotAdopted::Creds { keeper, what });
    }
    let maps = crate::proc::maps(keeper).map_err(proc_err)?;
    if let Some(detail) = layout_difference(&p.vmas, &maps) {
        return Err(NotAdopted::Layout { keeper, detail });
    }
    Ok(Adoptable {
        keeper,
        sid: stat.session,
        pgrp: stat.pgrp,
    })
}

/// Whether the keeper's mapping of `v` is the restored process's as it is: private memory and
/// files, and the kernel's own areas; not an object a restore makes again.
fn carried(v: &Vma) -> bool {
    match v.kind {
        VmaKind::Anon
        | VmaKind::File
        | VmaKind::Vdso
        | VmaKind::Vvar
        | VmaKind::VvarVclock
        | VmaKind::Vsyscall => true,
        VmaKind::SharedAnon | VmaKind::DeletedShm | VmaKind::SysvShm | VmaKind::Memfd => false,
    }
}

/// What differs first between `maps` (the keeper's) and the set's `vmas` (ranges,
/// protections, sharing, offsets of files and names); None when nothing does.
fn layout_difference(vmas: &[Vma], maps: &[crate::proc::MapEntry]) -> Option<String> {
    if vmas.len() != maps.len() {
        return Some(format!(
            "{} mappings, the set has {}",
            maps.len(),
            vmas.len()
        ));
    }
    for (v, m) in vmas.iter().zip(maps) {
        let bit = |on: bool, b: i32| if on { b as u32 } else { 0 };
        let prot = bit(m.read, libc::PROT_READ)
            | bit(m.write, libc::PROT_WRITE)
            | bit(m.exec, libc::PROT_EXEC);
        let offset_matters = v.kind == VmaKind::File;
        if (v.start, v.end, v.prot, v.shared) != (m.start, m.end, prot, m.shared)
            || (offset_matters && v.pgoff != m.offset)
            || v.name != m.path
        {
            return Some(format!(
                "{:#x}-{:#x} {} against {:#x}-{:#x} {}",
                m.start, m.end, m.path, v.start, v.end, v.name
            ));
        }
    }
    None
}

/// Makes the process with pid `pid` from handed-over keeper `keeper` (its address space
/// shared, see the module documentation) and ends the keeper. Returns the new process, seized
/// and stopped before its first instruction, as a parked process is once seized. Any failure
/// ends the keeper (and a process made from it): the caller then restores as usual.
pub(super) fn make(keeper: i32, pid: i32) -> StepResult<i32> {
    let mut child = None;
    let made = (|| -> StepResult<i32> {
        ptrace::seize(keeper, PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL)?;
        ptrace::interrupt(keeper)?;
        // Never resumed: a keeper runs no instruction of its own (and would only exit).
        match ptrace::wait_stop(keeper)? {
            Stop::Event { .. } => {}
            stop => return Err(StepError::FirstStop { tid: keeper, stop }),
        }
        let mut r = RemoteSyscall::with_options(keeper, keeper, PTRACE_O_EXITKILL)?;
        let page = crate::image::PAGE_SIZE as u64;
        let at = r.map_scratch(page)?;
        r.set_args_area(at, page);
        let what = format!("clone3(CLONE_VM) of pid {pid} in its memory keeper {keeper}");
        let made = remote::clone3_sharing_mm(&mut r, pid, &what)?;
        child = Some(made);
        // The keeper's scratch page leaves the shared address space with its injector.
        drop(r);
        match ptrace::wait_stop(made)? {
            Stop::Event { .. } => Ok(made),
            stop => Err(StepError::FirstStop { tid: made, stop }),
        }
    })();
    end(keeper);
    // The keeper first: a process made from it then comes to haul (a subreaper), whose wait
    // as its tracer and parent frees the pid for the restore that follows.
    if let (Err(_), Some(c)) = (&made, child) {
        end(c);
    }
    made
}

/// Kills `pid`, which haul traces, and collects its death as its tracer.
fn end(pid: i32) {
    if crate::sys::process::kill(pid, libc::SIGKILL).is_ok() {
        for _ in 0..64 {
            if ptrace::wait_stop(pid).is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(start: u64, end: u64, kind: VmaKind, name: &str) -> Vma {
        Vma {
            name: name.into(),
            ..crate::restore::tests::vma(start, end, kind, &[])
        }
    }

    fn entry(start: u64, end: u64, path: &str) -> crate::proc::MapEntry {
        crate::proc::MapEntry {
            start,
            end,
            read: true,
            write: true,
            path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_layout_is_the_same_only_when_every_mapping_is() {
        let vmas = [
            vma(0x1000, 0x3000, VmaKind::Anon, ""),
            vma(0x5000, 0x6000, VmaKind::Anon, "[heap]"),
        ];
        let maps = [entry(0x1000, 0x3000, ""), entry(0x5000, 0x6000, "[heap]")];
        assert_eq!(layout_difference(&vmas, &maps), None);
        // One more mapping (a scratch page left behind), a moved end, another protection.
        let more = [maps[0].clone(), maps[1].clone(), entry(0x8000, 0x9000, "")];
        assert!(layout_difference(&vmas, &more).is_some());
        let mut moved = maps.clone();
        moved[1].end = 0x7000;
        assert!(layout_difference(&vmas, &moved)
            .unwrap()
            .contains("0x5000-0x7000"));
        let mut ro = maps.clone();
        ro[0].write = false;
        assert!(layout_difference(&vmas, &ro).is_some());
    }

    #[test]
    fn objects_a_restore_makes_again_are_not_adopted() {
        use VmaKind::*;
        let made_again = [SharedAnon, DeletedShm, SysvShm, Memfd].map(|k| (k, false));
        let kept = [Anon, File, Vdso, Vvar, VvarVclock, Vsyscall].map(|k| (k, true));
        for (kind, want) in made_again.into_iter().chain(kept) {
            let v = vma(0, 0x1000, kind, "x");
            assert_eq!(carried(&v), want, "{:?}", v.kind);
        }
    }
}
