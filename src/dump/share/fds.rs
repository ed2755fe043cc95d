//! Open file descriptions, pipes and unix socket pairs shared between processes of a tree.
//!
//! The rules are one function over every process's fds ([`rules`]), run by [`check`] on the
//! snapshots (before the freeze) and again by [`link`] on the captured images (under it):
//! - an end of a pipe whose other end a process outside the tree holds (a pipe to the shell
//!   that launched it) is refused naming that process, and so is a unix socket pair end whose
//!   peer is outside; a pipe end whose other end nobody holds any more (the stdin `make`
//!   gives its jobs, its write end closed everywhere) is carried as it is;
//! - an end of a pipe open through two open file descriptions (not by dup, fork or passing:
//!   `/proc/PID/fd/N` opened again) is refused: a restore cannot make a second one.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;

use super::{Member, Refusals};
use crate::dump::DumpError;
use crate::image::{AnonFd, FdImage, FdKind, FdRef, ProcessImage};
use crate::sys::process;

/// One process's fds as the rules read them: its pid, its fds, and whether it shares the fd
/// table of an earlier one (its fds are that one's: not counted twice).
struct Table<'a> {
    pid: i32,
    fds: &'a [FdImage],
    files_of: Option<i32>,
}

/// Whether fd `a` of `pa` and fd `b` of `pb` are one open file description (kcmp, or a fake
/// in unit tests).
type SameFile<'s> = dyn FnMut(i32, i32, i32, i32) -> Result<bool, DumpError> + 's;

/// kcmp(KCMP_FILE); an fd closed meanwhile, or a process that exited meanwhile (before the
/// freeze: a shell's short-lived child), is no match. Under the freeze nothing exits by
/// itself; a process killed from outside is caught by the steps that follow, by name.
fn kcmp(pa: i32, a: i32, pb: i32, b: i32) -> Result<bool, DumpError> {
    match process::kcmp_file(pa, a, pb, b) {
        Ok(same) => Ok(same),
        Err(e) if matches!(e.errno(), Some(libc::EBADF | libc::ESRCH)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What may be the same open file description: only fds of the same object are compared.
fn key(k: &FdKind) -> (u8, u64, u64) {
    match k {
        FdKind::File { id, .. } => (0, id.dev, id.ino),
        FdKind::DevNull => (1, 0, 0),
        FdKind::DevZero => (2, 0, 0),
        FdKind::DevUrandom => (3, 0, 0),
        FdKind::Pipe { ino, write, .. } => (4, *ino, u64::from(*write)),
        FdKind::Anon(a) => (
            5,
            match a {
                AnonFd::EventFd { .. } => 0,
                AnonFd::TimerFd { .. } => 1,
                AnonFd::SignalFd { .. } => 2,
            },
            0,
        ),
        FdKind::UnixPair { ino, .. } => (6, *ino, 0),
        // Compared by kcmp with every fd of their kind (a kind may key by inode once its
        // record holds one).
        FdKind::Unix(u) => (7, u.ino, 0),
        FdKind::Inet(_) => (8, 0, 0),
        FdKind::Epoll(_) => (9, 0, 0),
        FdKind::Inotify(_) => (10, 0, 0),
        FdKind::Stored(_) => (11, 0, 0),
        FdKind::Tty(t) => (12, t.rdev, u64::from(t.index)),
    }
}

/// The first holder (in tree order: process, then fd number) of every fd's open file
/// description: `first[i][k]` for fd `k` of process `i`, None where that fd is the first.
/// `same_as` fds take their lower fd's first holder without a kcmp.
fn first_holders(
    tables: &[Table<'_>],
    same: &mut SameFile<'_>,
) -> Result<Vec<Vec<Option<FdRef>>>, DumpError> {
    // The first fds of each description so far, by key.
    let mut roots: HashMap<(u8, u64, u64), Vec<FdRef>> = HashMap::new();
    let mut first = Vec::with_capacity(tables.len());
    for t in tables {
        let mut mine = vec![None; t.fds.len()];
        if t.files_of.is_some() {
            first.push(mine);
            continue;
        }
        let mut order: Vec<usize> = (0..t.fds.len()).collect();
        order.sort_by_key(|&k| t.fds[k].fd);
        for k in order {
            let f = &t.fds[k];
            if let Some(low) = f.same_as {
                let of_low = t
                    .fds
                    .iter()
                    .position(|g| g.fd == low)
                    .and_then(|l| mine[l])
                    .filter(|r: &FdRef| r.pid != t.pid);
                mine[k] = of_low;
                continue;
            }
            let list = roots.entry(key(&f.kind)).or_default();
            let mut found = None;
            for r in list.iter() {
                if same(r.pid, r.fd, t.pid, f.fd)? {
                    found = Some(*r);
                    break;
                }
            }
            match found {
                // A description first held by this very process is a dup that fdinfo did not
                // show as such: leave it to `same_as`.
                Some(r) if r.pid != t.pid => mine[k] = Some(r),
                Some(_) => {}
                None => list.push(FdRef {
                    pid: t.pid,
                    fd: f.fd,
                }),
            }
        }
        first.push(mine);
    }
    Ok(first)
}

/// Notes in `found` every pipe or socket pair end whose other end no process of `tables`
/// holds, and every pipe end open through two descriptions (`first` from
/// [`first_holders`]).
/// Who outside the tree holds pipe `ino`, as (pid, fd): `None` when nobody does (its other
/// end is closed everywhere: a reader that will see end-of-file, a writer that will get
/// EPIPE, which a restore makes again by not giving that end to anyone).
type OutsideHolder<'s> = dyn FnMut(u64) -> Option<(i32, i32)> + 's;

/// Scans `/proc` for a holder of pipe `ino` that is not one of `members`.
///
/// A holder that descends from the root (`members[0]`) is not outside: before the freeze the
/// tree may have forked since it was listed (make starting a compiler with the jobserver
/// pipe), and the checks under the freeze, where the tree is exact, see it in the tree.
fn outside_holder(members: &[i32]) -> impl FnMut(u64) -> Option<(i32, i32)> + '_ {
    move |ino| {
        let target = format!("pipe:[{ino}]");
        let mut except = members.to_vec();
        loop {
            let (pid, fd) = crate::proc::fd_holder(&target, &except)?;
            match members.first() {
                Some(&root) if descends_from(pid, root) => except.push(pid),
                _ => return Some((pid, fd)),
            }
        }
    }
}

/// Whether `pid` is a descendant of `root` (its parents, read from `/proc`, lead there).
fn descends_from(pid: i32, root: i32) -> bool {
    let mut p = pid;
    for _ in 0..256 {
        match crate::proc::stat(p) {
            Ok(st) if st.ppid == root => return true,
            Ok(st) if st.ppid > 1 => p = st.ppid,
            _ => return false,
        }
    }
    false
}

fn rules(
    tables: &[Table<'_>],
    first: &[Vec<Option<FdRef>>],
    found: &mut Refusals,
    outside_of: &mut OutsideHolder<'_>,
) {
    let mut pipe_ends = HashSet::new();
    let mut sockets = HashSet::new();
    for t in tables {
        for f in t.fds {
            match f.kind {
                FdKind::Pipe { ino, write, .. } => {
                    pipe_ends.insert((ino, write));
                }
                FdKind::UnixPair { ino, .. } => {
                    sockets.insert(ino);
                }
                _ => {}
            }
        }
    }
    crate::dump::fdkinds::unix::rules(
        tables
            .iter()
            .filter(|t| t.files_of.is_none())
            .map(|t| (t.pid, t.fds)),
        found,
    );
    let pids: Vec<i32> = tables.iter().map(|t| t.pid).collect();
    crate::dump::fdkinds::inet::rules(
        tables
            .iter()
            .filter(|t| t.files_of.is_none())
            .map(|t| (t.pid, t.fds)),
        &pids,
        found,
    );
    // The descriptions of each pipe end met so far: (pid, fd) of the first.
    let mut described: HashMap<(u64, bool), (i32, i32)> = HashMap::new();
    for (i, t) in tables.iter().enumerate() {
        if t.files_of.is_some() {
            continue;
        }
        let (pid, n) = (t.pid, tables.len());
        let outside = if n == 1 {
            "another process".to_string()
        } else {
            format!("another process, outside the tree of {n} processes")
        };
        for (k, f) in t.fds.iter().enumerate() {
            match f.kind {
                FdKind::Pipe { ino, write, .. } => {
                    let (end, other) = if write {
                        ("write", "read")
                    } else {
                        ("read", "write")
                    };
                    if !pipe_ends.contains(&(ino, !write)) {
                        if let Some((op, ofd)) = outside_of(ino) {
                            found.add(DumpError::Unsupported(format!(
                                "pid {pid} fd {}: pipe:[{ino}] leads to {outside}: its {other} \
                                 end is held by no process of the tree, but by pid {op} fd {ofd}",
                                f.fd
                            )));
                        }
                    }
                    if f.same_as.is_some() || first[i][k].is_some() {
                        continue;
                    }
                    if let Some((p0, f0)) = described.insert((ino, write), (pid, f.fd)) {
                        described.insert((ino, write), (p0, f0));
                        found.add(DumpError::Unsupported(format!(
                            "pid {pid} fd {}: pipe:[{ino}] has its {end} end open twice (not by \
                             dup or fork: pid {p0} fd {f0} is another open file description of \
                             it): this is not supported yet",
                            f.fd
                        )));
                    }
                }
                FdKind::UnixPair { ino, peer, .. } if !sockets.contains(&peer) => {
                    found.add(DumpError::Unsupported(format!(
                        "pid {pid} fd {}: socket:[{ino}] (UNIX, a socket pair) leads to \
                         {outside}: its peer socket:[{peer}] is held by no process of the tree",
                        f.fd
                    )));
                }
                _ => {}
            }
        }
    }
}

pub(super) fn check(members: &[Member<'_>], found: &mut Refusals) -> Result<(), DumpError> {
    let tables: Vec<Table<'_>> = members
        .iter()
        .map(|m| Table {
            pid: m.pid,
            fds: &m.snapshot.fds,
            files_of: None,
        })
        .collect();
    let first = first_holders(&tables, &mut kcmp)?;
    let pids: Vec<i32> = members.iter().map(|m| m.pid).collect();
    rules(&tables, &first, found, &mut outside_holder(&pids));
    Ok(())
}

/// Under the freeze: which processes share an fd table (`files_of`), which fds share an open
/// file description with an earlier process's (`inherited`), the rules again (the tree may
/// have changed since [`check`]), then what each pipe and socket pair holds, read once, at
/// its first holder.
pub(super) fn link(procs: &mut [ProcessImage]) -> Result<(), DumpError> {
    for i in 1..procs.len() {
        if procs[i].files_of.is_some() {
            continue;
        }
        for j in 0..i {
            if procs[j].files_of.is_none() && process::same_fd_table(procs[j].pid, procs[i].pid)? {
                procs[i].files_of = Some(procs[j].pid);
                break;
            }
        }
    }
    let pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
    link_with(procs, &mut kcmp, &mut outside_holder(&pids))?;
    for p in procs.iter_mut().filter(|p| p.files_of.is_none()) {
        crate::dump::state::capture_pipes(p.pid, &mut p.fds)?;
        capture_queues(p.pid, &mut p.fds)?;
        crate::dump::fdkinds::capture(p.pid, &mut p.fds)?;
    }
    crate::dump::fdkinds::unix::mark_external(procs);
    Ok(())
}

/// Sets `inherited` and applies the rules, with `same` telling descriptions apart.
fn link_with(
    procs: &mut [ProcessImage],
    same: &mut SameFile<'_>,
    outside_of: &mut OutsideHolder<'_>,
) -> Result<(), DumpError> {
    let first = {
        let tables: Vec<Table<'_>> = procs
            .iter()
            .map(|p| Table {
                pid: p.pid,
                fds: &p.fds,
                files_of: p.files_of,
            })
            .collect();
        let first = first_holders(&tables, same)?;
        let mut found = Refusals::default();
        rules(&tables, &first, &mut found, outside_of);
        found.finish(procs.first().map_or(0, |p| p.pid))?;
        first
    };
    for (p, holders) in procs.iter_mut().zip(first) {
        for (f, h) in p.fds.iter_mut().zip(holders) {
            if f.same_as.is_none() {
                f.inherited = h;
            }
        }
    }
    Ok(())
}

/// What waits in each socket pair end, on its first fd in tree order (neither `same_as`
/// nor `inherited`), read through a copy of the fd without taking it. Fds in flight in a
/// queue (`SCM_RIGHTS`) are refused: they cannot be carried.
fn capture_queues(pid: i32, fds: &mut [FdImage]) -> Result<(), DumpError> {
    let mut pidfd = None;
    for f in fds
        .iter_mut()
        .filter(|f| f.same_as.is_none() && f.inherited.is_none())
    {
        let FdKind::UnixPair {
            ino,
            sock_type,
            queued,
            opts,
            ..
        } = &mut f.kind
        else {
            continue;
        };
        if pidfd.is_none() {
            pidfd = Some(process::pidfd_open(pid)?);
        }
        let Some(pidfd) = pidfd.as_ref() else {
            continue;
        };
        let sock = process::pidfd_getfd(pidfd, f.fd)?;
        let q = crate::sys::socket::peek_queue(sock.as_fd(), *sock_type == libc::SOCK_STREAM)?;
        *opts = crate::dump::fdkinds::unix::opts(&sock)?;
        if q.fds_in_flight {
            return Err(DumpError::Unsupported(format!(
                "pid {pid} fd {}: socket:[{ino}] (UNIX, a socket pair) has fds in flight in its \
                 queue (SCM_RIGHTS): this is not supported yet",
                f.fd
            )));
        }
        *queued = q.messages;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(fd: i32, kind: FdKind, same_as: Option<i32>) -> FdImage {
        FdImage {
            fd,
            flags: 0,
            kind,
            same_as,
            locks: Vec::new(),
            inherited: None,
        }
    }

    fn pipe(ino: u64, write: bool) -> FdKind {
        FdKind::Pipe {
            ino,
            write,
            size: 0,
            data: Vec::new(),
        }
    }

    fn pair(ino: u64, peer: u64) -> FdKind {
        FdKind::UnixPair {
            ino,
            peer,
            sock_type: libc::SOCK_STREAM,
            queued: Vec::new(),
            opts: Default::default(),
        }
    }

    fn proc(pid: i32, fds: Vec<FdImage>) -> ProcessImage {
        ProcessImage {
            pid,
            fds,
            ..Default::default()
        }
    }

    /// Descriptions named by (pid, fd) → description id.
    fn descriptions(
        d: &[((i32, i32), u32)],
    ) -> impl FnMut(i32, i32, i32, i32) -> Result<bool, DumpError> + '_ {
        move |pa, a, pb, b| {
            let of = |p, f| d.iter().find(|(k, _)| *k == (p, f)).map(|(_, v)| *v);
            Ok(of(pa, a).is_some() && of(pa, a) == of(pb, b))
        }
    }

    fn reasons(r: Result<(), DumpError>) -> Vec<String> {
        match r {
            Ok(()) => vec![],
            Err(DumpError::Unsupported(m)) => vec![m],
            Err(DumpError::Refusals { reasons, .. }) => {
                reasons.iter().map(|r| r.to_string()).collect()
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn fds_inherited_across_fork_point_at_their_first_holder() {
        // Parent 10: pipe 77 read end at fd 3 (dup at 5), write end at fd 4, a file at fd 6.
        // Child 11 kept fd 3 (same description) and holds the write end at fd 4 (same).
        // Grandchild 12: fd 6 the same file description as the parent's, fd 7 its own.
        let file = FdKind::File {
            path: "/f".into(),
            pos: 0,
            mode: 0,
            id: Default::default(),
        };
        let mut procs = vec![
            proc(
                10,
                vec![
                    fd(3, pipe(77, false), None),
                    fd(4, pipe(77, true), None),
                    fd(5, pipe(77, false), Some(3)),
                    fd(6, file.clone(), None),
                ],
            ),
            proc(
                11,
                vec![fd(3, pipe(77, false), None), fd(4, pipe(77, true), None)],
            ),
            proc(
                12,
                vec![fd(6, file.clone(), None), fd(7, file.clone(), None)],
            ),
        ];
        let d = [
            ((10, 3), 1),
            ((10, 5), 1),
            ((11, 3), 1),
            ((10, 4), 2),
            ((11, 4), 2),
            ((10, 6), 3),
            ((12, 6), 3),
            ((12, 7), 4),
        ];
        link_with(&mut procs, &mut descriptions(&d), &mut |_| None).unwrap();
        let inh = |p: usize, k: usize| procs[p].fds[k].inherited;
        assert_eq!(inh(0, 0), None);
        assert_eq!(inh(0, 2), None, "same_as wins");
        assert_eq!(inh(1, 0), Some(FdRef { pid: 10, fd: 3 }));
        assert_eq!(inh(1, 1), Some(FdRef { pid: 10, fd: 4 }));
        assert_eq!(inh(2, 0), Some(FdRef { pid: 10, fd: 6 }));
        assert_eq!(inh(2, 1), None);
    }

    #[test]
    fn a_pipe_or_pair_leading_outside_the_tree_is_refused_by_pid_fd_and_inode() {
        // The parent holds the write end, the child the read end: fine. Fd 5 of the child is
        // a pipe to the shell, fd 6 a socket pair whose peer is outside.
        let mut procs = vec![
            proc(
                10,
                vec![fd(4, pipe(77, true), None), fd(8, pair(500, 501), None)],
            ),
            proc(
                11,
                vec![
                    fd(3, pipe(77, false), None),
                    fd(5, pipe(88, true), None),
                    fd(6, pair(600, 601), None),
                    fd(9, pair(501, 500), None),
                ],
            ),
        ];
        let r = reasons(link_with(&mut procs, &mut descriptions(&[]), &mut |_| {
            Some((999, 4))
        }));
        assert_eq!(
            r,
            vec![
                "pid 11 fd 5: pipe:[88] leads to another process, outside the tree of 2 \
                 processes: its read end is held by no process of the tree, but by pid 999 fd 4",
                "pid 11 fd 6: socket:[600] (UNIX, a socket pair) leads to another process, \
                 outside the tree of 2 processes: its peer socket:[601] is held by no process \
                 of the tree"
            ]
        );
        // Alone, the child is refused for its pipe to the parent too (as one process).
        let r = reasons(link_with(
            &mut procs[1..],
            &mut descriptions(&[]),
            &mut |_| Some((999, 4)),
        ));
        assert_eq!(r.len(), 4, "{r:#?}");
        assert!(r[0].starts_with("pid 11 fd 3: pipe:[77] leads to another process: its write end"));
    }

    #[test]
    fn a_pipe_whose_other_end_is_closed_everywhere_is_carried() {
        // make gives its jobs a stdin pipe whose write end it has closed: nobody, inside the
        // tree or out, holds it. Only an end someone outside holds is refused.
        let mut procs = vec![proc(10, vec![fd(0, pipe(88, false), None)])];
        link_with(&mut procs, &mut descriptions(&[]), &mut |_| None).unwrap();
        let mut asked = Vec::new();
        let r = reasons(link_with(&mut procs, &mut descriptions(&[]), &mut |ino| {
            asked.push(ino);
            Some((999, 4))
        }));
        assert_eq!(asked, vec![88]);
        assert_eq!(r.len(), 1, "{r:#?}");
    }

    #[test]
    fn a_pipe_end_open_through_two_descriptions_is_refused() {
        let mut procs = vec![
            proc(
                10,
                vec![fd(3, pipe(77, false), None), fd(4, pipe(77, true), None)],
            ),
            // fd 3: /proc/10/fd/3 opened again, another description of the read end.
            proc(11, vec![fd(3, pipe(77, false), None)]),
        ];
        let r = reasons(link_with(&mut procs, &mut descriptions(&[]), &mut |_| {
            Some((999, 4))
        }));
        assert_eq!(
            r,
            vec![
                "pid 11 fd 3: pipe:[77] has its read end open twice (not by dup or fork: pid 10 \
                  fd 3 is another open file description of it): this is not supported yet"
            ]
        );
    }

    #[test]
    fn a_process_sharing_an_fd_table_is_not_counted_twice() {
        let mut procs = vec![
            proc(
                10,
                vec![fd(3, pipe(77, false), None), fd(4, pipe(77, true), None)],
            ),
            proc(
                11,
                vec![fd(3, pipe(77, false), None), fd(4, pipe(77, true), None)],
            ),
        ];
        procs[1].files_of = Some(10);
        link_with(&mut procs, &mut descriptions(&[]), &mut |_| None).unwrap();
        assert!(procs[1].fds.iter().all(|f| f.inherited.is_none()));
    }
}
