//! Refusals of open files: the image of every fd, or the reason it cannot be carried (a
//! socket, a pipe to another process, a file renamed meanwhile, a lock of a kind a restore
//! cannot take again...).

use super::{process_gone, unsupported, Refusals};
use crate::dump::{fdkinds, DumpError};
use crate::image::{AnonFd, FdImage, FdKind, FileId, FileLock, LockKind};
use crate::proc;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// The image of every fd of `pid`, noting in `found` the refusal of each one that cannot be
/// carried (it is left out of the list). `frozen`: `pid` is under the freeze (its fds cannot
/// change while they are read).
pub(super) fn fd_images_into(
    pid: i32,
    found: &mut Refusals,
    policy: super::CheckPolicy,
    frozen: bool,
) -> Result<Vec<FdImage>, DumpError> {
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
        let kind = found.note(fd_kind(pid, fd, &target, &info, policy))?;
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
                inherited: None,
            });
        }
    }
    // Fds that are one open file description (dup, 2>&1) must stay one after a restore, or
    // their writes would overwrite each other at two offsets.
    for i in 1..out.len() {
        for j in 0..i {
            if out[j].same_as.is_none() && same_open_file(pid, out[j].fd, out[i].fd, frozen)? {
                out[i].same_as = Some(out[j].fd);
                break;
            }
        }
    }
    Ok(out)
}

/// Whether fds `a` and `b` of `pid` are one open file description. Before the freeze
/// (`frozen` false) a process may close one of them after it was listed (a shell's background
/// child reopens its stdin on /dev/null): `kcmp` then fails with EBADF, and the pair is taken
/// for two files; the check under the freeze lists the stable fds and compares them again.
/// Under the freeze an EBADF is an error.
fn same_open_file(pid: i32, a: i32, b: i32, frozen: bool) -> Result<bool, DumpError> {
    match crate::sys::process::same_open_file(pid, a, b) {
        Ok(same) => Ok(same),
        Err(e) if !frozen && e.errno() == Some(libc::EBADF) => Ok(false),
        Err(e) => Err(e.into()),
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

fn fd_kind(
    pid: i32,
    fd: i32,
    target: &str,
    info: &proc::FdInfo,
    policy: super::CheckPolicy,
) -> Result<FdKind, DumpError> {
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
        let ino: Option<u64> = ino.parse().ok();
        if let Some(i) = ino {
            if let Some(kind) = fdkinds::unix::kind(pid, fd, target, i)? {
                return Ok(kind);
            }
            if let Some(kind) = fdkinds::inet::kind(pid, fd, target, i, info, policy.tcp_pending)? {
                return Ok(kind);
            }
        }
        let kind = ino.and_then(|i| socket_kind(pid, i)).unwrap_or("socket");
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
        match name {
            "eventpoll" => return fdkinds::events::epoll(pid, fd, target, info),
            "inotify" => return fdkinds::events::inotify(pid, fd, target, info),
            "io_uring" => return Err(unsupported(io_uring_refusal(pid, fd, target))),
            _ => {}
        }
        let kind = match name {
            "eventfd" => "eventfd",
            "signalfd" => "signalfd",
            "timerfd" => "timerfd",
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
        return fdkinds::stored::kind(pid, fd, target, info, None);
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
        if ft.is_char_device() {
            return no("deleted device file");
        }
        return fdkinds::stored::kind(pid, fd, target, info, Some(&md));
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
            (4, _, _) | (5, _, _) | (136..=143, _, _) => {
                fdkinds::tty::kind(pid, fd, target, info, &md)
            }
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

/// Why an io_uring instance is refused, and how programs are made to do without one.
fn io_uring_refusal(pid: i32, fd: i32, target: &str) -> String {
    format!(
        "pid {pid} fd {fd}: {target} (io_uring) is not supported: its rings and the requests \
         in flight cannot be carried. Start the program without it: UV_USE_IO_URING=0 for \
         libuv (Node.js), or for every program the sysctl kernel.io_uring_disabled=2"
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn info(text: &str) -> proc::FdInfo {
        proc::parse_fdinfo(std::path::Path::new("fdinfo"), text).unwrap()
    }

    fn refusal(r: Result<impl std::fmt::Debug, DumpError>) -> String {
        match r {
            Err(DumpError::Unsupported(m)) => m,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn eventfd_timerfd_and_signalfd_state_is_read_from_fdinfo() {
        let ev = info("pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\neventfd-count:               2a\neventfd-id: 3\neventfd-semaphore: 1\n");
        assert_eq!(
            anon_fd("eventfd", &ev),
            Some(Some(AnonFd::EventFd {
                count: 42,
                semaphore: true
            }))
        );
        let tf = info("pos:\t0\nflags:\t02\nmnt_id:\t15\nclockid: 1\nticks: 3\nsettime flags: 01\nit_value: (0, 500)\nit_interval: (2, 5)\n");
        assert_eq!(
            anon_fd("timerfd", &tf),
            Some(Some(AnonFd::TimerFd {
                clock: 1,
                ticks: 3,
                value_ns: 500,
                interval_ns: 2_000_000_005
            }))
        );
        let sf = info("pos:\t0\nflags:\t02\nmnt_id:\t15\nsigmask:\t0000000000004002\n");
        assert_eq!(
            anon_fd("signalfd", &sf),
            Some(Some(AnonFd::SignalFd { mask: 0x4002 }))
        );
        // That kind, but without what a restore needs; and another kind.
        assert_eq!(anon_fd("timerfd", &sf), Some(None));
        assert_eq!(anon_fd("eventpoll", &ev), None);
    }

    #[test]
    fn advisory_locks_are_carried_and_other_kinds_refused() {
        let fi = info("pos:\t0\nflags:\t0100002\nmnt_id:\t30\nlock:\t1: POSIX  ADVISORY  WRITE 3671 fe:00:1046 5 14\nlock:\t2: FLOCK  ADVISORY  READ 3671 fe:00:1046 0 EOF\nlock:\t3: LEASE  ACTIVE    READ 3671 fe:00:1046 0 EOF\n");
        assert_eq!(
            file_lock(7, 3, "/tmp/f", &fi.locks[0]).unwrap(),
            FileLock {
                kind: LockKind::Posix,
                write: true,
                start: 5,
                len: 10
            }
        );
        // To the end of the file: length 0, as fcntl says it.
        let whole = file_lock(7, 3, "/tmp/f", &fi.locks[1]).unwrap();
        assert_eq!(
            (whole.kind, whole.write, whole.len),
            (LockKind::Flock, false, 0)
        );
        assert_eq!(
            refusal(file_lock(7, 3, "/tmp/f", &fi.locks[2])),
            "pid 7 fd 3: a LEASE ACTIVE READ lock on /tmp/f is not supported yet"
        );
    }

    #[test]
    fn fd_kinds_are_told_from_their_link_target() {
        let me = std::process::id() as i32;
        let wr = info("pos:\t0\nflags:\t01\nmnt_id:\t15\n");
        assert!(matches!(
            fd_kind(me, 4, "pipe:[123]", &wr, Default::default()),
            Ok(FdKind::Pipe {
                ino: 123,
                write: true,
                ..
            })
        ));
        let none = info("pos:\t0\nflags:\t02\nmnt_id:\t15\n");
        let cases = [
            ("anon_inode:bpf-map", "(bpf)"),
            ("anon_inode:[fanotify]", "(fanotify)"),
            ("anon_inode:[pidfd]", "(pidfd)"),
            ("anon_inode:[userfaultfd]", "(userfaultfd)"),
            ("anon_inode:[perf_event]", "(perf_event)"),
            ("net:[4026531840]", "(special file)"),
            // An inode no table of ours lists: a socket of unknown kind.
            ("socket:[4294967295]", "(socket)"),
        ];
        for (target, kind) in cases {
            assert_eq!(
                refusal(fd_kind(me, 5, target, &none, Default::default())),
                format!("pid {me} fd 5: {target} {kind} is not supported yet")
            );
        }
        assert!(refusal(fd_kind(
            me,
            5,
            "anon_inode:[io_uring]",
            &none,
            Default::default()
        ))
        .starts_with(&format!(
            "pid {me} fd 5: anon_inode:[io_uring] (io_uring) is not supported: "
        )));
        assert_eq!(
            refusal(fd_kind(
                me,
                6,
                "anon_inode:[eventfd]",
                &none,
                Default::default()
            )),
            format!("pid {me} fd 6: anon_inode:[eventfd]: its fdinfo is not understood")
        );
    }

    #[test]
    fn an_fd_closed_after_the_listing_is_another_file_before_the_freeze_and_an_error_under_it() {
        let me = crate::sys::process::getpid();
        let open = std::fs::File::open("/proc/self/status").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&open);
        // An fd number nothing holds: as if closed between the listing and kcmp.
        let closed = 4000;
        assert!(!same_open_file(me, fd, closed, false).unwrap());
        let err = same_open_file(me, fd, closed, true).unwrap_err();
        assert!(err.to_string().contains("Bad file descriptor"), "{err}");
        // Open fds are still compared.
        assert!(same_open_file(me, fd, fd, false).unwrap());
    }
}
