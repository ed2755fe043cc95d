//! The refusal list: what haul will not (or cannot yet) checkpoint, decided before touching
//! the process and checked again once it is frozen. Messages name the exact thing, e.g.
//! `pid 4242 fd 3: socket:[81723] (TCP) is not supported yet`.

mod fds;
mod maps;

pub(crate) use fds::file_id;
pub use fds::socket_kind;
pub(crate) use maps::{check_mapping, is_deleted_shm, is_shared_anon, is_sysv_shm};

use super::DumpError;
use crate::image::FdImage;
use crate::proc;
use fds::fd_images_into;
use std::os::unix::fs::MetadataExt;

fn refused(msg: String) -> DumpError {
    DumpError::Refused(msg)
}

fn unsupported(msg: String) -> DumpError {
    DumpError::Unsupported(msg)
}

/// Every refusal found, so that one check names them all (`haul dump --check` lists every
/// reason, not only the first): a refusal is noted and the checks go on; any other error
/// (the process vanished, /proc unreadable) ends them at once.
#[derive(Default)]
pub(crate) struct Refusals(Vec<DumpError>);

impl Refusals {
    /// Notes `r` if it is a refusal; passes any other error on.
    pub(crate) fn note<T>(&mut self, r: Result<T, DumpError>) -> Result<Option<T>, DumpError> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e @ (DumpError::Refused(_) | DumpError::Unsupported(_))) => {
                self.0.push(e);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Notes a refusal.
    pub(crate) fn add(&mut self, e: DumpError) {
        self.0.push(e);
    }

    /// None found: Ok; one: that refusal; several: [`DumpError::Refusals`] with all of them.
    pub(crate) fn finish(mut self, pid: i32) -> Result<(), DumpError> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(self.0.remove(0)),
            _ => Err(DumpError::Refusals {
                pid,
                reasons: self.0,
            }),
        }
    }
}

/// True when `pid` no longer exists, is a zombie or is exiting.
pub(crate) fn process_gone(pid: i32) -> bool {
    match proc::stat(pid) {
        Ok(st) => st.is_zombie() || st.is_exiting(),
        Err(_) => true,
    }
}

/// Every check that can be made without touching the processes, for the whole tree rooted at
/// `pid`: who each one is, then what it uses, then what they share with processes outside the
/// tree. Every reason is listed, each naming its pid. Returns the pids of the tree (tree
/// order, root first, zombies included).
pub fn precheck(pid: i32, policy: CheckPolicy) -> Result<Vec<i32>, DumpError> {
    let t = precheck_snapshot(pid, policy)?;
    let mut pids: Vec<i32> = t.members.iter().map(|(m, _)| m.pid).collect();
    pids.extend(t.zombies.iter().map(|z| z.pid));
    Ok(pids)
}

/// What the checks accept that a dump may lose, as the job or the command line says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckPolicy {
    /// Connections waiting in a TCP listen queue: refused, or dropped with a warning.
    pub tcp_pending: crate::job::TcpPending,
}

/// What the checks before the freeze read of a whole tree.
pub(crate) struct TreeSnapshot {
    /// The policy the checks ran with (the checks under the freeze use it again).
    pub policy: CheckPolicy,
    /// Each living process (tree order, root first) with what its checks read.
    pub members: Vec<(proc::TreeMember, Snapshot)>,
    /// Zombie descendants (not checked: nothing of them is restored but their exit status).
    pub zombies: Vec<proc::TreeMember>,
}

impl TreeSnapshot {
    /// The pids of the tree other than the root, zombies included.
    pub fn others(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.members.iter().skip(1).map(|(m, _)| m.pid).collect();
        v.extend(self.zombies.iter().map(|z| z.pid));
        v
    }

    /// What the checks read of `pid`.
    pub fn get(&self, pid: i32) -> Option<&Snapshot> {
        self.members
            .iter()
            .find(|(m, _)| m.pid == pid)
            .map(|(_, s)| s)
    }

    /// Estimated bytes a dump copies from the tree but its root.
    pub fn descendants_estimate(&self) -> u64 {
        self.members
            .iter()
            .skip(1)
            .map(|(m, _)| resident_estimate(m.pid).unwrap_or(0))
            .sum()
    }
}

/// [`precheck`], returning what it read so the checks under the freeze can reuse it.
pub(crate) fn precheck_snapshot(root: i32, policy: CheckPolicy) -> Result<TreeSnapshot, DumpError> {
    let mut found = Refusals::default();
    check_identity(root, &mut found)?;
    // haul's own ancestors are refused: their tree holds haul itself, never walked.
    let me = crate::sys::process::getpid();
    let tree = if is_ancestor(root, me) {
        proc::tree(root)?.into_iter().take(1).collect()
    } else {
        proc::tree(root)?
    };
    let mut members = Vec::new();
    let mut zombies = Vec::new();
    for m in tree {
        if m.zombie {
            zombies.push(m);
            continue;
        }
        if m.pid == root {
            let snap = check_uses_into(root, None, false, &mut found, policy)?;
            members.push((m, snap));
            continue;
        }
        // A descendant may exit while it is checked: the freeze finds the stable tree.
        let mut mine = Refusals::default();
        let r = check_identity(m.pid, &mut mine)
            .and_then(|()| check_uses_into(m.pid, None, false, &mut mine, policy));
        match r {
            Ok(snap) => {
                found.0.extend(mine.0);
                members.push((m, snap));
            }
            Err(_) if process_gone(m.pid) => {}
            Err(e) => return Err(e),
        }
    }
    let family: Vec<(i32, i32)> = members.iter().map(|(m, _)| (m.pid, m.ppid)).collect();
    check_own_memory(&family, &mut found)?;
    let list: Vec<crate::dump::share::Member<'_>> = members
        .iter()
        .map(|(m, snapshot)| crate::dump::share::Member {
            pid: m.pid,
            snapshot,
        })
        .collect();
    crate::dump::share::check(&list, &mut found)?;
    found.finish(root)?;
    Ok(TreeSnapshot {
        policy,
        members,
        zombies,
    })
}

/// The checks again under the freeze, for every process of the frozen tree (`pids`, tree
/// order): what each uses ([`check_uses_into`], reusing what `before` read of it; a process that
/// forked while the tree was frozen is checked afresh) and what they share with processes
/// outside the tree. Every reason is listed. Returns each process's snapshot, in `pids` order.
pub(crate) fn check_frozen(
    root: i32,
    pids: &[i32],
    before: &TreeSnapshot,
) -> Result<Vec<Snapshot>, DumpError> {
    let mut found = Refusals::default();
    let mut snaps = Vec::with_capacity(pids.len());
    for &pid in pids {
        snaps.push(check_uses_into(
            pid,
            before.get(pid),
            true,
            &mut found,
            before.policy,
        )?);
    }
    let mut family = Vec::with_capacity(pids.len());
    for &pid in pids {
        family.push((pid, proc::stat(pid)?.ppid));
    }
    check_own_memory(&family, &mut found)?;
    let list: Vec<crate::dump::share::Member<'_>> = pids
        .iter()
        .zip(&snaps)
        .map(|(&pid, snapshot)| crate::dump::share::Member { pid, snapshot })
        .collect();
    crate::dump::share::check(&list, &mut found)?;
    found.finish(root)?;
    Ok(snaps)
}

/// Every process of the tree has an address space of its own: one shared with its parent
/// (`CLONE_VM` without `CLONE_THREAD`, or a `vfork` child before its exec) would be restored as
/// two. Memory can only be shared that way from a parent, so each is compared with its parent.
/// `family`: (pid, ppid) in tree order, the root first (whose parent is outside the tree and
/// cannot share its memory with it: `check_identity` refuses haul's ancestors).
fn check_own_memory(family: &[(i32, i32)], found: &mut Refusals) -> Result<(), DumpError> {
    for &(pid, ppid) in family.iter().skip(1) {
        match crate::sys::kcmp::same_vm(pid, ppid) {
            Ok(Some(true)) => found.add(unsupported(format!(
                "pid {pid} shares its address space with its parent, pid {ppid} (CLONE_VM \
                 without a thread, or vfork before exec): this is not supported yet"
            ))),
            // No kcmp on this kernel: nothing to tell it by.
            Ok(_) => {}
            // Exited meanwhile: the freeze finds the stable tree.
            Err(_) if process_gone(pid) || process_gone(ppid) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Who the process is: not init, not haul or its ancestors, not a kernel thread, zombie,
/// thread, traced or stopped process, not someone else's.
fn check_identity(pid: i32, found: &mut Refusals) -> Result<(), DumpError> {
    if pid <= 0 {
        return Err(refused(format!("pid {pid} is not a process id")));
    }
    if pid == 1 {
        return Err(refused("pid 1 is init: it cannot be checkpointed".into()));
    }
    let me = crate::sys::process::getpid();
    if pid == me {
        return Err(refused(format!("pid {pid} is haul itself")));
    }
    let st = match proc::stat(pid) {
        Ok(st) => st,
        Err(e) if e.is_gone() => return Err(refused(format!("pid {pid} does not exist"))),
        Err(e) => return Err(e.into()),
    };
    if is_ancestor(pid, me) {
        found.add(refused(format!(
            "pid {pid} is an ancestor of haul (pid {me})"
        )));
    }
    if st.is_kernel_thread() {
        return Err(refused(format!(
            "pid {pid} ({}) is a kernel thread",
            st.comm
        )));
    }
    if st.is_zombie() {
        return Err(refused(format!(
            "pid {pid} ({}) is a zombie: it has already exited",
            st.comm
        )));
    }
    let status = proc::status(pid)?;
    if status.tgid != pid {
        return Err(refused(format!(
            "pid {pid} is a thread of process {}: give the process id",
            status.tgid
        )));
    }
    if status.tracer_pid != 0 {
        found.add(refused(format!(
            "pid {pid} is already traced by pid {}",
            status.tracer_pid
        )));
    }
    if matches!(st.state, 'T' | 't') {
        found.add(refused(format!(
            "pid {pid} is stopped (state {}): stopped processes are not supported yet",
            st.state
        )));
    }
    // NSpid lists its id in each PID namespace from /proc's inward: more levels than haul has
    // means a namespace of its own, whose ids a restore into haul's namespace would change.
    let own = proc::status(me)?;
    if status.nspid.len() > own.nspid.len() {
        found.add(unsupported(format!(
            "pid {pid} lives in another PID namespace (it is pid {} there): namespaces are not supported yet",
            status.nspid.last().copied().unwrap_or(0)
        )));
    }
    let euid = crate::sys::process::geteuid();
    if euid != 0 && status.uid.iter().any(|&u| u != euid) {
        found.add(refused(format!(
            "pid {pid} runs as uid {}: haul (uid {euid}) may not trace it",
            status.uid[1]
        )));
    }
    Ok(())
}

/// What [`check_uses_into`] read: the mappings (with VmFlags) and the fds, reused for the image
/// (reading smaps walks the page tables: once per freeze is enough).
pub(crate) struct Snapshot {
    pub maps: Vec<proc::MapEntry>,
    pub fds: Vec<FdImage>,
}

/// The checks on what the process uses (threads, fds, mappings); run before the
/// freeze and again under it. With `before` (what the check before the freeze read), the
/// mappings are read from the cheap `/proc/PID/maps` and take their VmFlags from `before`;
/// smaps is read again only if a mapping changed meanwhile (reading smaps walks the page
/// tables: ~5 ms for 256 MiB, which would all be frozen time). `frozen`: run under the freeze
/// (a process forked since the first check has no `before`). Every refusal is noted in `found`.
fn check_uses_into(
    pid: i32,
    before: Option<&Snapshot>,
    frozen: bool,
    found: &mut Refusals,
    policy: CheckPolicy,
) -> Result<Snapshot, DumpError> {
    // Seccomp is per thread. Its filters are read and suspended under the freeze (an
    // injected syscall must be neither refused nor killed by them), which needs privilege.
    for tid in proc::tids(pid)? {
        let mode = match proc::task_status(pid, tid) {
            Ok(st) => st.seccomp,
            // A thread that just exited: the freeze finds the stable set of threads.
            Err(e) if e.is_gone() => continue,
            Err(e) => return Err(e.into()),
        };
        if let Some(r) = crate::dump::seccomp::refusal(pid, tid, mode)? {
            found.add(r);
        }
    }
    check_places(pid, found)?;
    let fds = fd_images_into(pid, found, policy, frozen)?;
    let maps = match before {
        Some(b) => {
            let mut maps = proc::maps(pid)?;
            let same = |m: &proc::MapEntry, o: &proc::MapEntry| {
                (
                    m.start,
                    m.end,
                    m.prot(),
                    m.shared,
                    m.offset,
                    m.inode,
                    &m.path,
                ) == (
                    o.start,
                    o.end,
                    o.prot(),
                    o.shared,
                    o.offset,
                    o.inode,
                    &o.path,
                )
            };
            let mut all_known = true;
            for m in maps.iter_mut() {
                match b.maps.iter().find(|o| same(m, o)) {
                    Some(o) => m.vm_flags = o.vm_flags.clone(),
                    None => all_known = false,
                }
            }
            if all_known {
                maps
            } else {
                proc::maps_with_flags(pid)?
            }
        }
        None => proc::maps_with_flags(pid)?,
    };
    for m in &maps {
        found.note(check_mapping(pid, m))?;
    }
    Ok(Snapshot { maps, fds })
}

/// The namespaces a restore puts the process in are haul's own: one of the process's own would
/// be silently swapped for haul's (its network, its mounts, its hostname...).
const NAMESPACES: [(&str, &str); 9] = [
    ("net", "network"),
    ("mnt", "mount"),
    ("uts", "UTS (hostname)"),
    ("ipc", "IPC"),
    ("cgroup", "cgroup"),
    ("user", "user"),
    ("time", "time"),
    ("time_for_children", "time namespace for its children"),
    ("pid_for_children", "PID namespace for its children"),
];

/// Where the process is: its namespaces, its root and its current directory must be ones a
/// restore here gives back exactly, else they are refused by name.
fn check_places(pid: i32, found: &mut Refusals) -> Result<(), DumpError> {
    for (ns, what) in NAMESPACES {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}"));
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}"));
        match (theirs, ours) {
            (Ok(t), Ok(o)) if t != o => found.add(unsupported(format!(
                "pid {pid} is in a {what} namespace of its own ({}): namespaces are not supported yet",
                t.display()
            ))),
            (Err(e), _) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(DumpError::Io {
                    context: format!("pid {pid}: reading /proc/{pid}/ns/{ns}"),
                    source: e,
                })
            }
            // This kernel has no such namespace (neither side does), or they are one.
            _ => {}
        }
    }
    let id = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let root = id(&format!("/proc/{pid}/root"));
    if root.is_ok() && root.ok() != id("/").ok() {
        found.add(unsupported(format!(
            "pid {pid} runs in a chroot ({}): a changed root is not supported yet",
            proc::read_link(std::path::Path::new(&format!("/proc/{pid}/root"))).unwrap_or_default()
        )));
    }
    let cwd = proc::cwd(pid)?;
    let theirs = id(&format!("/proc/{pid}/cwd")).ok();
    if cwd.ends_with(" (deleted)") {
        found.add(unsupported(format!(
            "pid {pid}: its current directory {cwd} is deleted: this is not supported yet"
        )));
    } else if theirs.is_none() || id(&cwd).ok() != theirs {
        found.add(unsupported(format!(
            "pid {pid}: its current directory {cwd} is not that directory here any more \
             (another mount namespace, or a /proc directory of a process that is gone)"
        )));
    }
    Ok(())
}

/// An estimate of the bytes a dump will copy (anonymous resident memory), to size the buffers
/// before the freeze.
pub(crate) fn resident_estimate(pid: i32) -> Option<u64> {
    memory_estimate(pid).map(|(private, shared)| private + shared)
}

/// An estimate of process `pid`'s memory as (private, shared): its anonymous resident pages,
/// and the dirty pages of its shared mappings. One read of `smaps_rollup`, which walks the
/// page tables (~15 ms per GiB here).
pub(crate) fn memory_estimate(pid: i32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kib = |key: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Some((kib("Anonymous:") * 1024, kib("Shared_Dirty:") * 1024))
}

fn is_ancestor(pid: i32, me: i32) -> bool {
    let mut cur = me;
    for _ in 0..4096 {
        let Ok(st) = proc::stat(cur) else {
            return false;
        };
        if st.ppid == pid {
            return true;
        }
        if st.ppid <= 1 {
            return false;
        }
        cur = st.ppid;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_all_collected_and_other_errors_end_the_checks() {
        let mut found = Refusals::default();
        assert_eq!(found.note(Ok::<_, DumpError>(5)).unwrap(), Some(5));
        assert!(found
            .note::<()>(Err(refused("pid 3 is init".into())))
            .unwrap()
            .is_none());
        found.add(unsupported("pid 3 fd 4: socket".into()));
        // Not a refusal: passed on, not noted.
        let io = DumpError::Io {
            context: "reading /proc/3/maps".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(matches!(
            found.note::<()>(Err(io)),
            Err(DumpError::Io { .. })
        ));
        match found.finish(3) {
            Err(DumpError::Refusals { pid: 3, reasons }) => {
                let text: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
                assert_eq!(text.len(), 2, "{text:?}");
                assert!(text[0].contains("is init") && text[1].contains("socket"));
            }
            other => panic!("not every refusal: {other:?}"),
        }
        // One refusal is returned as itself; none is Ok.
        let mut one = Refusals::default();
        one.add(refused("x".into()));
        assert!(matches!(one.finish(3), Err(DumpError::Refused(m)) if m == "x"));
        assert!(Refusals::default().finish(3).is_ok());
    }
}
