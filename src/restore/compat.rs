//! The compatibility check that runs before anything is created: a clear error for each reason
//! an image cannot be restored here.

use std::os::unix::fs::MetadataExt;

use super::tree::Refusal;
use super::{process_of, PidChoice, RestoreError};
use crate::image::{FdKind, FileId, ImageSet, PageRef, ProcessImage, VmaKind};

/// Checks that `set` can be restored on this machine now (`lazy`: by a lazy restore, which
/// serves pages left lazy); returns its process image.
pub fn check_compat(
    set: &ImageSet,
    pid: PidChoice,
    lazy: bool,
) -> Result<&ProcessImage, RestoreError> {
    let bad = |reason: String| RestoreError::Incompatible {
        set: set.id.clone(),
        reason,
    };
    let root = process_of(set)?;
    // An eager restore cannot serve pages left to a lazy source. (A lazy restore need not
    // walk the page table for this: its daemon serves them.)
    if !lazy {
        let n = set
            .pages
            .iter()
            .filter(|(_, r)| matches!(r, PageRef::Lazy(_)))
            .count();
        if n > 0 {
            return Err(bad(format!(
                "{n} pages were left to be served lazily: restore it with --lazy"
            )));
        }
    }

    let here = crate::util::kernel_release();
    if set.kernel != here {
        return Err(bad(format!(
            "dumped on kernel {} but this is {here}: the vDSO layout is only known to match on the same kernel",
            set.kernel
        )));
    }
    check_tree(set, pid).map_err(|r| bad(r.0))?;
    // A deleted tmpfs file the set makes again must find its path free.
    super::share::check_paths(set).map_err(|e| bad(e.to_string()))?;
    // The SysV objects it makes again must find their ids and keys free (or their own left).
    super::share::sysv::plan(set).map_err(|r| bad(r.0))?;
    // A deleted file still open is made again in its directory.
    super::stored::check_dirs(set).map_err(|r| bad(r.0))?;
    // A TCP or UDP port the set binds again must be free (someone may have taken it).
    super::inet::check_ports(set).map_err(|r| bad(r.0))?;
    // The names its unix sockets bind must be free, or hold only what the dumped ones left.
    super::unix::check_names(set).map_err(|r| bad(r.0))?;
    for (_, p) in set.processes() {
        check_process(set, p, pid).map_err(|e| match e {
            // A descendant's reason names it.
            RestoreError::Incompatible { set, reason } if p.pid != root.pid => {
                RestoreError::Incompatible {
                    set,
                    reason: format!("pid {}: {reason}", p.pid),
                }
            }
            e => e,
        })?;
    }
    if pid == PidChoice::Same {
        for z in &set.tree.zombies {
            pid_free(z.pid, &format!("pid {} (a zombie)", z.pid)).map_err(|r| bad(r.0))?;
        }
    }
    Ok(root)
}

/// What a tree needs beyond what each of its processes needs: a plan of its sessions and
/// groups (`tree::plan`), fd tables shared with the parent, zombie statuses a process can end
/// with, and PIDs where the program cares (`pid = "any"`). A lazy restore serves every
/// process's private memory (each its own page space), so it needs nothing more.
fn check_tree(set: &ImageSet, pid: PidChoice) -> Result<(), Refusal> {
    let n = set.process_count();
    let ours = (
        crate::sys::process::own_sid(),
        crate::sys::process::own_pgrp(),
    );
    super::tree::plan(set, ours)?;
    for p in &set.tree.descendants {
        if let Some(f) = p.files_of {
            let parent = set
                .processes()
                .find(|(_, q)| q.pid == p.ppid)
                .map(|(_, q)| q);
            let ok = parent.is_some_and(|q| q.pid == f || q.files_of == Some(f));
            if !ok {
                return Err(Refusal(format!(
                    "pid {} shares the fd table of pid {f}, which is not its parent's \
                     (pid {}): a fork can only share its parent's",
                    p.pid, p.ppid
                )));
            }
        }
    }
    for z in &set.tree.zombies {
        zombie_status(z.wait_status).map_err(|why| {
            Refusal(format!(
                "zombie pid {} (status {:#x}): {why}",
                z.pid, z.wait_status
            ))
        })?;
    }
    if pid == PidChoice::Any && n > 1 {
        any_pid_cares(set)?;
    }
    Ok(())
}

/// Whether a process can be made to end so that `wait` reports `status`: an exit (any code),
/// or a kill by a signal whose default action ends the process, without a core dump (a
/// restore writes no core file).
pub(super) fn zombie_status(status: i32) -> Result<(), Refusal> {
    if status & !0xff00 == 0 {
        return Ok(());
    }
    let sig = status & 0x7f;
    if status & !0xff != 0 || sig == 0x7f {
        return Err(Refusal("not the status of an ended process".into()));
    }
    if status & 0x80 != 0 {
        return Err(Refusal(format!(
            "it was killed by signal {sig} and dumped core, which a restore does not do again"
        )));
    }
    let stops_or_ignored = [
        libc::SIGCHLD,
        libc::SIGCONT,
        libc::SIGURG,
        libc::SIGWINCH,
        libc::SIGSTOP,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
    ];
    if sig > 64 || stops_or_ignored.contains(&sig) {
        return Err(Refusal(format!(
            "signal {sig} does not end a process by default"
        )));
    }
    Ok(())
}

/// `pid = "any"` gives every process of a tree a new PID, and is refused where the image shows
/// that the program holds those PIDs somewhere haul cannot change them: a zombie (its parent
/// reaps it by the PID fork returned), or a descendant that leads a session or process group,
/// or that such a group or session is named after (a shell with job control keeps and signals
/// those ids). The one thing no image shows, a parent keeping its children's PIDs in its own
/// memory (`$!`, `Process.pid`) to wait for them, is the same risk as threads' ids today:
/// warned about, not refused.
pub(super) fn any_pid_cares(set: &ImageSet) -> Result<(), Refusal> {
    let why = "with pid = \"any\" every process gets a new PID, but";
    if let Some(z) = set.tree.zombies.first() {
        return Err(Refusal(format!(
            "{why} zombie pid {} is to be reaped by its parent (pid {}) under that PID: \
             restore with pid = \"same\"",
            z.pid, z.ppid
        )));
    }
    let desc: Vec<i32> = set.tree.descendants.iter().map(|p| p.pid).collect();
    for (_, p) in set.processes() {
        for (what, id) in [("process group", p.pgid), ("session", p.sid)] {
            if desc.contains(&id) {
                return Err(Refusal(format!(
                    "{why} pid {} is in {what} {id}, named after a process of the tree, whose \
                     id the program may keep: restore with pid = \"same\"",
                    p.pid
                )));
            }
        }
    }
    tracing::warn!(
        processes = set.process_count(),
        "restoring a process tree under new PIDs: a parent that kept its children's old PIDs \
         (to wait for or signal them) still names the old ones"
    );
    Ok(())
}

/// `pid` (named `what`) is below `pid_max`, not held by a zombie, and free.
fn pid_free(pid: i32, what: &str) -> Result<(), Refusal> {
    let max: i64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(i64::MAX);
    if i64::from(pid) >= max {
        return Err(Refusal(format!(
            "{what} is not below kernel.pid_max ({max}): use --pid any"
        )));
    }
    if let Ok(st) = crate::proc::stat(pid) {
        if st.is_zombie() {
            return Err(Refusal(format!(
                "{what} is held by a zombie: an exited process its parent (pid {}) has not reaped yet",
                st.ppid
            )));
        }
    }
    // /proc/TID answers for any thread's id, not only for process ids.
    if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        return Err(Refusal(format!(
            "{what} is in use (by {}); is the original still running? Stop it, or restore with --pid any",
            comm.trim()
        )));
    }
    Ok(())
}

/// What one process of the set needs here.
fn check_process(set: &ImageSet, p: &ProcessImage, pid: PidChoice) -> Result<(), RestoreError> {
    let bad = |reason: String| RestoreError::Incompatible {
        set: set.id.clone(),
        reason,
    };
    if p.threads.first().map(|t| t.tid) != Some(p.pid) {
        return Err(bad(format!(
            "the image of pid {} has no main thread",
            p.pid
        )));
    }
    super::seccomp::check(p).map_err(|r| bad(r.0))?;
    check_vdso_layout(p).map_err(|e| RestoreError::Vdso {
        set: set.id.clone(),
        source: Box::new(e),
    })?;

    if pid == PidChoice::Same {
        // Every thread gets its dumped id back, so each must be free.
        for t in &p.threads {
            let what = if t.tid == p.pid {
                format!("pid {}", p.pid)
            } else {
                format!("thread id {} (of pid {})", t.tid, p.pid)
            };
            pid_free(t.tid, &what).map_err(|r| bad(r.0))?;
        }
    }

    for v in &p.vmas {
        if v.kind == VmaKind::File {
            let id = v.file.as_ref().ok_or_else(|| {
                bad(format!(
                    "mapping {:#x}-{:#x} of {} has no file identity",
                    v.start, v.end, v.name
                ))
            })?;
            same_file(&v.name, id, true, false).map_err(|e| RestoreError::File {
                set: set.id.clone(),
                what: "mapped file".into(),
                source: Box::new(e),
            })?;
        }
    }
    super::cgroup::check(p).map_err(|e| RestoreError::Cgroup {
        set: set.id.clone(),
        source: Box::new(e),
    })?;
    for f in &p.fds {
        if let FdKind::File { path, id, mode, .. } = &f.kind {
            // An O_PATH|O_NOFOLLOW fd of a symlink is the link itself.
            let link = mode & libc::S_IFMT == libc::S_IFLNK;
            same_file(path, id, false, link).map_err(|e| RestoreError::File {
                set: set.id.clone(),
                what: format!("fd {}: file", f.fd),
                source: Box::new(e),
            })?;
        }
    }
    super::events::check_watches(p).map_err(|r| bad(r.0))?;
    // A restored process starts with haul's capabilities and can only be given fewer.
    let own_err = |what: &'static str| {
        move |e| RestoreError::Own {
            set: set.id.clone(),
            what,
            source: Box::new(e),
        }
    };
    let own =
        crate::proc::status(crate::sys::process::getpid()).map_err(own_err("capabilities"))?;
    let c = &p.creds;
    for (name, had, have) in [
        ("bounding", c.cap_bnd, own.cap_bnd),
        (
            "permitted",
            c.cap_prm | c.cap_eff | c.cap_inh | c.cap_amb,
            own.cap_prm,
        ),
    ] {
        if had & !have != 0 {
            return Err(bad(format!(
                "it held capabilities ({name} set {:#x}) that haul does not have here ({have:#x})",
                had & !have
            )));
        }
    }
    // The rebuilt process starts with haul's audit loginuid. An unset one it may set itself;
    // a set one only with CAP_AUDIT_CONTROL (and not at all where the kernel made loginuids
    // immutable, which the restore then reports).
    if let Some(want) = p.attrs.loginuid {
        let me = crate::sys::process::getpid();
        let ours = crate::proc::loginuid(me).map_err(own_err("loginuid"))?;
        let audit_control = 1u64 << CAP_AUDIT_CONTROL;
        if ours != want && ours != u32::MAX && own.cap_eff & audit_control == 0 {
            return Err(bad(format!(
                "its audit loginuid is {} and haul's is {ours}: changing it needs \
                 CAP_AUDIT_CONTROL, which haul does not have here",
                loginuid_name(want)
            )));
        }
    }
    if p.exe.ends_with(" (deleted)") {
        return Err(bad(format!("its executable {} was deleted", p.exe)));
    }
    Ok(())
}

/// `CAP_AUDIT_CONTROL` of linux/capability.h (not in libc).
const CAP_AUDIT_CONTROL: u32 = 30;

/// A loginuid as `/proc` shows it, naming the unset one.
fn loginuid_name(uid: u32) -> String {
    if uid == u32::MAX {
        "unset".into()
    } else {
        uid.to_string()
    }
}

/// Why a file of the image is not the one the process had.
#[derive(Debug, thiserror::Error)]
pub enum FileMismatch {
    /// It cannot be looked at (gone, no permission).
    #[error("{path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Another file (device or inode) is at its path now.
    #[error("{path} is not the same file any more (inode {now} was {was})")]
    Replaced { path: String, now: u64, was: u64 },
    /// A mapped file's size or mtime changed since the dump.
    #[error("{path} changed since the dump (size {now} was {was}, mtime differs: {mtime})")]
    Changed {
        path: String,
        now: u64,
        was: u64,
        mtime: bool,
    },
}

/// A mapped file must be exactly the file that was dumped (device, inode, size, mtime): its
/// pages are the process's code and data. An open file must be the same inode; its size and
/// mtime may have moved on (a log the original kept writing).
fn same_file(path: &str, id: &FileId, strict: bool, link: bool) -> Result<(), FileMismatch> {
    let md = if link {
        std::fs::symlink_metadata(path)
    } else {
        std::fs::metadata(path)
    }
    .map_err(|source| FileMismatch::Unreadable {
        path: path.into(),
        source,
    })?;
    if md.dev() != id.dev || md.ino() != id.ino {
        return Err(FileMismatch::Replaced {
            path: path.into(),
            now: md.ino(),
            was: id.ino,
        });
    }
    let mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
    if strict && (md.size() != id.size || mtime_ns != id.mtime_ns) {
        return Err(FileMismatch::Changed {
            path: path.into(),
            now: md.size(),
            was: id.size,
            mtime: mtime_ns != id.mtime_ns,
        });
    }
    Ok(())
}

/// Why the dumped vDSO unit cannot be moved into place here.
#[derive(Debug, thiserror::Error)]
pub enum VdsoMismatch {
    /// haul's own maps (this kernel's layout) cannot be read.
    #[error("reading our own maps: {0}")]
    OwnMaps(#[source] crate::proc::ProcError),
    /// A part of the unit has another size here.
    #[error("{name} was {was} bytes, this kernel's is {now}")]
    Size {
        name: &'static str,
        was: u64,
        now: u64,
    },
    /// A part of the unit sits elsewhere relative to `[vdso]` here.
    #[error("{name} is not where this kernel puts it relative to [vdso]")]
    Place { name: &'static str },
    /// The image has a part this kernel does not make.
    #[error("the image has {name} but this kernel has none")]
    Missing { name: &'static str },
    /// This kernel makes a part the image does not have.
    #[error("this kernel has {name} but the image has none")]
    Extra { name: &'static str },
}

/// The dumped `[vvar]`, `[vvar_vclock]` and `[vdso]` must have the sizes and relative layout of
/// this kernel's (read from haul's own maps), since the restore moves the kernel's unit.
fn check_vdso_layout(p: &ProcessImage) -> Result<(), VdsoMismatch> {
    let ours = crate::proc::maps(std::process::id() as i32).map_err(VdsoMismatch::OwnMaps)?;
    let unit = |name: &str| {
        ours.iter()
            .find(|m| m.path == name)
            .map(|m| (m.start, m.end))
    };
    let kinds = [
        (VmaKind::Vvar, "[vvar]"),
        (VmaKind::VvarVclock, "[vvar_vclock]"),
        (VmaKind::Vdso, "[vdso]"),
    ];
    let mut base: Option<(u64, u64)> = None; // (dumped vdso start, our vdso start)
    if let (Some(d), Some(o)) = (
        p.vmas.iter().find(|v| v.kind == VmaKind::Vdso),
        unit("[vdso]"),
    ) {
        base = Some((d.start, o.0));
    }
    for (kind, name) in kinds {
        let dumped = p.vmas.iter().find(|v| v.kind == kind);
        match (dumped, unit(name)) {
            (None, None) => {}
            (Some(d), Some(o)) => {
                if d.end - d.start != o.1 - o.0 {
                    return Err(VdsoMismatch::Size {
                        name,
                        was: d.end - d.start,
                        now: o.1 - o.0,
                    });
                }
                if let Some((db, ob)) = base {
                    if d.start.wrapping_sub(db) != o.0.wrapping_sub(ob) {
                        return Err(VdsoMismatch::Place { name });
                    }
                }
            }
            (Some(_), None) => return Err(VdsoMismatch::Missing { name }),
            (None, Some(_)) => return Err(VdsoMismatch::Extra { name }),
        }
    }
    Ok(())
}
