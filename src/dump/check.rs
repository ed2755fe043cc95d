//! The refusal list: what haul will not (or cannot yet) checkpoint, decided before touching
//! the process and checked again once it is frozen. Messages name the exact thing, e.g.
//! `pid 4242 fd 3: socket:[81723] (TCP) is not supported yet`.

use super::DumpError;
use crate::image::{AnonFd, FdImage, FdKind, FileId, FileLock, LockKind};
use crate::proc;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

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
    fn note<T>(&mut self, r: Result<T, DumpError>) -> Result<Option<T>, DumpError> {
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
    fn add(&mut self, e: DumpError) {
        self.0.push(e);
    }

    /// None found: Ok; one: that refusal; several: [`DumpError::Refusals`] with all of them.
    fn finish(mut self, pid: i32) -> Result<(), DumpError> {
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

/// Every check that can be made without touching the process: who it is, then what it uses.
pub fn precheck(pid: i32) -> Result<(), DumpError> {
    precheck_snapshot(pid).map(|_| ())
}

/// [`precheck`], returning what it read so the checks under the freeze can reuse it.
pub(crate) fn precheck_snapshot(pid: i32) -> Result<Snapshot, DumpError> {
    let mut found = Refusals::default();
    check_identity(pid, &mut found)?;
    let snapshot = check_uses_into(pid, None, &mut found)?;
    found.finish(pid)?;
    Ok(snapshot)
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

/// What [`check_uses`] read: the mappings (with VmFlags) and the fds, reused for the image
/// (reading smaps walks the page tables: once per freeze is enough).
pub(crate) struct Snapshot {
    pub maps: Vec<proc::MapEntry>,
    pub fds: Vec<FdImage>,
}

/// The checks on what the process uses (threads, children, fds, mappings); run before the
/// freeze and again under it. With `before` (what the check before the freeze read), the
/// mappings are read from the cheap `/proc/PID/maps` and take their VmFlags from `before`;
/// smaps is read again only if a mapping changed meanwhile (reading smaps walks the page
/// tables: ~5 ms for 256 MiB, which would all be frozen time).
pub(crate) fn check_uses(pid: i32, before: Option<&Snapshot>) -> Result<Snapshot, DumpError> {
    let mut found = Refusals::default();
    let snapshot = check_uses_into(pid, before, &mut found)?;
    found.finish(pid)?;
    Ok(snapshot)
}

/// [`check_uses`], noting every refusal in `found`.
fn check_uses_into(
    pid: i32,
    before: Option<&Snapshot>,
    found: &mut Refusals,
) -> Result<Snapshot, DumpError> {
    // Seccomp is per thread. A filter could refuse haul's injected syscalls or kill the
    // process for them, and a restore would run the process without its sandbox.
    for tid in proc::tids(pid)? {
        let mode = match proc::task_status(pid, tid) {
            Ok(st) => st.seccomp,
            // A thread that just exited: the freeze finds the stable set of threads.
            Err(e) if e.is_gone() => continue,
            Err(e) => return Err(e.into()),
        };
        if mode != 0 {
            let who = if tid == pid {
                format!("pid {pid}")
            } else {
                format!("pid {pid} thread {tid}")
            };
            let what = if mode == 1 { "strict mode" } else { "a filter" };
            found.add(unsupported(format!(
                "{who} runs under seccomp ({what}): seccomp is not supported yet"
            )));
        }
    }
    let kids = proc::children(pid)?;
    if !kids.is_empty() {
        let list: Vec<String> = kids.iter().map(|k| k.to_string()).collect();
        found.add(unsupported(format!(
            "pid {pid} has child processes ({}): process trees are not supported yet",
            list.join(", ")
        )));
    }
    check_places(pid, found)?;
    let fds = fd_images_into(pid, found)?;
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
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kib = |key: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Some((kib("Anonymous:") + kib("Shared_Dirty:")) * 1024)
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

/// Refuses mappings haul cannot restore.
pub(crate) fn check_mapping(pid: i32, m: &proc::MapEntry) -> Result<(), DumpError> {
    let what = || {
        if m.path.is_empty() {
            format!("pid {pid} mapping {:x}-{:x}", m.start, m.end)
        } else {
            format!("pid {pid} mapping {:x}-{:x} ({})", m.start, m.end, m.path)
        }
    };
    let no = |kind: &str| {
        Err(unsupported(format!(
            "{}: {kind} is not supported yet",
            what()
        )))
    };
    if m.has_flag("ht") {
        return no("hugetlb memory");
    }
    let p = m.path.as_str();
    if p.starts_with("/SYSV") {
        return no("SysV shared memory");
    }
    if p.starts_with("/memfd:") {
        return no("a memfd mapping");
    }
    if is_shared_anon(m) {
        return Ok(());
    }
    if p.ends_with(" (deleted)") {
        return no("a mapping of a deleted file");
    }
    if p.starts_with('[') {
        return match p {
            "[heap]" | "[stack]" | "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]" => Ok(()),
            _ if p.starts_with("[anon:") || p.starts_with("[stack:") => Ok(()),
            _ => no("this special mapping"),
        };
    }
    if m.has_flag("io") || m.has_flag("pf") {
        return no("a device (VM_IO/VM_PFNMAP) mapping");
    }
    if p.starts_with("/dev/") && m.inode != 0 {
        return no("a device mapping");
    }
    Ok(())
}

/// Shared anonymous memory shows as `/dev/zero (deleted)` (or `[anon_shmem:name]`).
pub(crate) fn is_shared_anon(m: &proc::MapEntry) -> bool {
    m.shared && (m.path == "/dev/zero (deleted)" || m.path.starts_with("[anon_shmem:"))
}

/// The image of every fd of `pid`, noting in `found` the refusal of each one that cannot be
/// carried (it is left out of the list).
fn fd_images_into(pid: i32, found: &mut Refusals) -> Result<Vec<FdImage>, DumpError> {
    let mut out = Vec::new();
    for fd in proc::fds(pid)? {
        let target = match proc::fd_target(pid, fd) {
            Ok(t) => t,
            Err(e) if e.is_gone() && !process_gone(pid) => continue, // closed meanwhile
            Err(e) => return Err(e.into()),
        };
        let info = match proc::fdinfo(pid, fd) {
            Ok(i) => i,
            Err(e) if e.is_gone() && !process_gone(pid) => continue,
            Err(e) => return Err(e.into()),
        };
        let kind = found.note(fd_kind(pid, fd, &target, &info))?;
        let mut locks = Vec::new();
        for l in &info.locks {
            locks.extend(found.note(file_lock(pid, fd, &target, l))?);
        }
        if let Some(kind) = kind {
            out.push(FdImage {
                fd,
                flags: info.flags,
                kind,
                same_as: None,
                locks,
            });
        }
    }
    // Fds that are one open file description (dup, 2>&1) must stay one after a restore, or
    // their writes would overwrite each other at two offsets.
    for i in 1..out.len() {
        for j in 0..i {
            if out[j].same_as.is_none()
                && crate::sys::process::same_open_file(pid, out[j].fd, out[i].fd)?
            {
                out[i].same_as = Some(out[j].fd);
                break;
            }
        }
    }
    check_pipes(pid, &out, found);
    Ok(out)
}

/// A pipe can be rebuilt only when the process holds both of its ends, each through one open
/// file description (dups of it are fine): the other end of a pipe to another process would
/// be gone, and a second description of one end cannot be made again.
fn check_pipes(pid: i32, fds: &[FdImage], found: &mut Refusals) {
    for f in fds {
        let FdKind::Pipe { ino, write, .. } = f.kind else {
            continue;
        };
        let ends = |w: bool| {
            fds.iter().filter(move |g| {
                g.same_as.is_none()
                    && matches!(g.kind, FdKind::Pipe { ino: i, write: x, .. } if i == ino && x == w)
            })
        };
        if ends(!write).next().is_none() {
            found.add(unsupported(format!(
                "pid {pid} fd {}: pipe:[{ino}] leads to another process: pipes between processes are not supported yet",
                f.fd
            )));
        }
        if ends(write).count() > 1 {
            found.add(unsupported(format!(
                "pid {pid} fd {}: pipe:[{ino}] has its {} end open twice (not by dup): this is not supported yet",
                f.fd,
                if write { "write" } else { "read" }
            )));
        }
    }
}

/// The state of an eventfd, timerfd or signalfd from its fdinfo (`None`: another kind;
/// `Some(None)`: that kind, but fdinfo lacks what a restore needs).
fn anon_fd(name: &str, info: &proc::FdInfo) -> Option<Option<AnonFd>> {
    let num = |k: &str| info.get(k)?.trim().parse::<u64>().ok();
    let hex = |k: &str| u64::from_str_radix(info.get(k)?.trim(), 16).ok();
    // "(sec, nsec)"
    let ns = |k: &str| {
        let v = info.get(k)?.trim().strip_prefix('(')?.strip_suffix(')')?;
        let (s, n) = v.split_once(',')?;
        Some(s.trim().parse::<u64>().ok()? * 1_000_000_000 + n.trim().parse::<u64>().ok()?)
    };
    Some(match name {
        "eventfd" => (|| {
            Some(AnonFd::EventFd {
                count: hex("eventfd-count")?,
                semaphore: num("eventfd-semaphore").unwrap_or(0) == 1,
            })
        })(),
        "timerfd" => (|| {
            Some(AnonFd::TimerFd {
                clock: num("clockid")? as i32,
                ticks: num("ticks")?,
                value_ns: ns("it_value")?,
                interval_ns: ns("it_interval")?,
            })
        })(),
        "signalfd" => hex("sigmask").map(|mask| AnonFd::SignalFd { mask }),
        _ => return None,
    })
}

/// A lock held through fd `fd`, or the refusal of a kind a restore cannot take again.
fn file_lock(pid: i32, fd: i32, target: &str, l: &proc::FdLock) -> Result<FileLock, DumpError> {
    let kind = match l.kind.as_str() {
        "FLOCK" => Some(LockKind::Flock),
        "POSIX" => Some(LockKind::Posix),
        "OFDLCK" => Some(LockKind::Ofd),
        _ => None,
    };
    let write = match l.access.as_str() {
        "WRITE" => Some(true),
        "READ" => Some(false),
        _ => None,
    };
    match (kind, write, l.mode.as_str()) {
        (Some(kind), Some(write), "ADVISORY") => Ok(FileLock {
            kind,
            write,
            start: l.start,
            len: l.end.map_or(0, |e| e + 1 - l.start),
        }),
        _ => Err(unsupported(format!(
            "pid {pid} fd {fd}: a {} {} {} lock on {target} is not supported yet",
            l.kind, l.mode, l.access
        ))),
    }
}

fn fd_kind(pid: i32, fd: i32, target: &str, info: &proc::FdInfo) -> Result<FdKind, DumpError> {
    let (pos, flags) = (info.pos, info.flags);
    let no = |kind: &str| {
        Err(unsupported(format!(
            "pid {pid} fd {fd}: {target} ({kind}) is not supported yet"
        )))
    };
    if let Some(ino) = target
        .strip_prefix("socket:[")
        .and_then(|s| s.strip_suffix(']'))
    {
        let kind = ino
            .parse()
            .ok()
            .and_then(|i| socket_kind(pid, i))
            .unwrap_or("socket");
        return no(kind);
    }
    if let Some(ino) = target
        .strip_prefix("pipe:[")
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse().ok())
    {
        // Whether the other end is in the process too is checked once every fd is known.
        return Ok(FdKind::Pipe {
            ino,
            write: flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32,
            size: 0,
            data: Vec::new(),
        });
    }
    if let Some(name) = target.strip_prefix("anon_inode:") {
        let name = name.trim_matches(|c| c == '[' || c == ']');
        if let Some(anon) = anon_fd(name, info) {
            return anon.map(FdKind::Anon).ok_or_else(|| {
                unsupported(format!(
                    "pid {pid} fd {fd}: {target}: its fdinfo is not understood"
                ))
            });
        }
        let kind = match name {
            "eventfd" => "eventfd",
            "eventpoll" => "epoll",
            "signalfd" => "signalfd",
            "timerfd" => "timerfd",
            "inotify" => "inotify",
            "fanotify" => "fanotify",
            "userfaultfd" => "userfaultfd",
            "pidfd" => "pidfd",
            "io_uring" => "io_uring",
            "perf_event" => "perf_event",
            "bpf-map" | "bpf-prog" | "bpf_link" => "bpf",
            _ => "anonymous inode",
        };
        return no(kind);
    }
    if target.starts_with("/memfd:") {
        return no("memfd");
    }
    if !target.starts_with('/') {
        return no("special file");
    }
    let link = format!("/proc/{pid}/fd/{fd}");
    let md = match std::fs::metadata(&link) {
        Ok(m) => m,
        Err(e) => {
            return Err(DumpError::Io {
                context: format!("pid {pid} fd {fd}: stat {target}"),
                source: e,
            })
        }
    };
    let ft = md.file_type();
    // A file is restored as the same file or not at all: one that is deleted, or whose path
    // names another file now, is refused here rather than by the restore.
    if md.nlink() == 0 || target.ends_with(" (deleted)") {
        return no(if ft.is_char_device() {
            "deleted device file"
        } else {
            "deleted file"
        });
    }
    // The path must name the very file open (an O_PATH|O_NOFOLLOW fd is the link itself).
    let now = if ft.is_symlink() {
        std::fs::symlink_metadata(target)
    } else {
        std::fs::metadata(target)
    };
    if !now.is_ok_and(|n| n.dev() == md.dev() && n.ino() == md.ino()) {
        return Err(unsupported(format!(
            "pid {pid} fd {fd}: {target} no longer names the file it has open (renamed, \
             replaced, or in another mount namespace): this is not supported yet"
        )));
    }
    if ft.is_char_device() {
        let rdev = md.rdev();
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        // The well-known nodes by their names; another node of the same device (mknod'ed
        // elsewhere) is reopened by its own path, like /dev/random.
        return match (major, minor, target) {
            (1, 3, "/dev/null") => Ok(FdKind::DevNull),
            (1, 5, "/dev/zero") => Ok(FdKind::DevZero),
            (1, 9, "/dev/urandom") => Ok(FdKind::DevUrandom),
            (1, 3 | 5 | 8 | 9, _) => Ok(FdKind::File {
                path: target.to_string(),
                pos: 0,
                mode: md.mode(),
                id: file_id(&md),
            }),
            (4, _, _) | (5, _, _) | (136..=143, _, _) => no("tty"),
            _ => no("device"),
        };
    }
    if ft.is_block_device() {
        return no("block device");
    }
    if ft.is_fifo() {
        return no("fifo");
    }
    if ft.is_socket() {
        return no("socket");
    }
    Ok(FdKind::File {
        path: target.to_string(),
        pos,
        mode: md.mode(),
        id: file_id(&md),
    })
}

/// The identity of a file as `stat` sees it.
pub(crate) fn file_id(md: &std::fs::Metadata) -> FileId {
    FileId {
        dev: md.dev(),
        ino: md.ino(),
        size: md.size(),
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
    }
}

/// The kind of socket inode `ino` as the target's network namespace lists it
/// (`/proc/PID/net/*`): `TCP`, `UDP`, `UNIX`, ... or None when not found.
pub fn socket_kind(pid: i32, ino: u64) -> Option<&'static str> {
    // (file, inode column, name)
    const TABLES: [(&str, usize, &str); 11] = [
        ("tcp", 9, "TCP"),
        ("tcp6", 9, "TCPv6"),
        ("udp", 9, "UDP"),
        ("udp6", 9, "UDPv6"),
        ("udplite", 9, "UDP-Lite"),
        ("udplite6", 9, "UDP-Litev6"),
        ("raw", 9, "RAW"),
        ("raw6", 9, "RAWv6"),
        ("unix", 6, "UNIX"),
        ("netlink", 9, "NETLINK"),
        ("packet", 8, "PACKET"),
    ];
    let want = ino.to_string();
    for (file, col, name) in TABLES {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        if s.lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(col) == Some(want.as_str()))
        {
            return Some(name);
        }
    }
    None
}
