//! Files whose contents the image stores (issue #14): memfds with their seals, mapped or not,
//! in one process or shared by a tree, and deleted files still open. The fixture (and a
//! python3 program) is dumped into a real store (killed) and restored under the same pids;
//! what it sees is checked by the process itself and from outside (fd links, fdinfo, seals,
//! maps, inodes).
//!
//! Every test makes itself the subreaper first: restored processes are re-parented away from
//! haul, and this machine's init does not reap.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{fixture, send_signal, wait_for, Running};
use haul::dump::{dump_to_store, DumpOptions};
use haul::image::stored::StoredKind;
use haul::image::{ImageSet, VmaKind};
use haul::store::Store;

fn adopt_orphans() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

/// Restored processes: killed and reaped when dropped (also when a test panics).
struct Restored(Vec<i32>);

impl Drop for Restored {
    fn drop(&mut self) {
        for &pid in self.0.iter().rev() {
            let p = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(p, nix::sys::signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(p, None);
        }
    }
}

fn launch(mut cmd: Command, log: &Path) -> Running {
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    Running::logged(&mut cmd, log, true)
}

/// `/proc/PID/maps` as "range perms offset path" lines, and the inode of each.
fn maps(pid: i32) -> Vec<(String, u64)> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                format!("{} {} {} {}", f[0], f[1], f[2], f[5..].join(" ")),
                f[4].parse().unwrap(),
            )
        })
        .collect()
}

fn lines(m: &[(String, u64)]) -> Vec<String> {
    m.iter().map(|(l, _)| l.clone()).collect()
}

/// The inode of the mapping whose path is `path`.
fn mapped_ino(pid: i32, path: &str) -> u64 {
    maps(pid)
        .into_iter()
        .find(|(l, _)| l.ends_with(path))
        .unwrap_or_else(|| panic!("pid {pid} maps no {path}"))
        .1
}

/// What an fd is, seen from outside: its link, the `pos` and `flags` of its fdinfo, its seals
/// (`F_GET_SEALS` through the file opened again), and its inode.
#[derive(Debug, PartialEq, Eq)]
struct FdView {
    link: String,
    pos: String,
    flags: String,
    seals: i32,
}

fn fd_view(pid: i32, fd: i32) -> (FdView, u64) {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let field = |k: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let f = std::fs::File::open(format!("/proc/{pid}/fd/{fd}")).unwrap();
    let seals = nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_GET_SEALS).unwrap_or(-1);
    let ino = f.metadata().unwrap().ino();
    (
        FdView {
            link,
            pos: field("pos:"),
            flags: field("flags:"),
            seals,
        },
        ino,
    )
}

/// The storedfd fixture's report lines:
/// ROLE SEALS HASH SIZE POS HOLE WRITE_SEEN DPOS DHASH DNLINK TREE0.
fn reports(out: &Path) -> Vec<Vec<u64>> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().map(|w| w.parse().unwrap()).collect())
        .collect()
}

/// Asks `pid` for a report and returns it (waits for the line to appear).
fn report(pid: i32, out: &Path) -> Vec<u64> {
    let n = reports(out).len();
    send_signal(pid, "USR1");
    let mut got = Vec::new();
    assert!(
        wait_for(Duration::from_secs(10), || {
            let r = reports(out);
            got = r.get(n).cloned().unwrap_or_default();
            r.len() > n
        }),
        "pid {pid} did not report into {}",
        out.display()
    );
    got
}

fn new_store(dir: &Path) -> Store {
    Store::open_or_create(&dir.join("store")).expect("create store")
}

fn dump_kill(r: &mut Running, store: &Store) -> ImageSet {
    let pid = r.pid;
    let d = dump_to_store(pid, store, "test", &DumpOptions::default(), Some(1))
        .unwrap_or_else(|e| panic!("dump of pid {pid}: {e}"));
    let _ = r.child.wait();
    // Restored from the manifest as written, as `haul restore` reads it.
    let back = store.load_set(&d.set.id).expect("load the set back");
    assert_eq!(
        back.tree.files, d.set.tree.files,
        "the manifest keeps the stored files"
    );
    back
}

/// Files of `dir` whose name starts with `prefix`.
fn files_with(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// The report fields that must be the same before and after (WRITE_SEEN and TREE0 aside).
fn lasting(r: &[u64]) -> Vec<u64> {
    [1, 2, 3, 4, 5, 7, 8, 9].iter().map(|&i| r[i]).collect()
}

#[test]
fn memfds_and_a_deleted_file_come_back_with_contents_holes_seals_and_offsets() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reports");
    let mut cmd = Command::new(fixture("storedfd"));
    cmd.arg(&out);
    let mut r = launch(cmd, &dir.path().join("log"));
    let pid = r.pid;
    let before = report(pid, &out);
    // Sealed GROW|SHRINK, 4 pages + 100 bytes at offset 5000, the first hole at page 2, the
    // write through the fd seen in the mapping, the deleted file at 100 with no link.
    let seals = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK;
    assert_eq!(before[1], seals as u64, "{before:?}");
    assert_eq!(
        before[3..8],
        [4 * 4096 + 100, 5000, 2 * 4096, 1, 100],
        "{before:?}"
    );
    assert_eq!(before[9], 0, "{before:?}");
    let fds_before: Vec<_> = (3..=5).map(|fd| fd_view(pid, fd)).collect();
    let maps_before = maps(pid);

    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    // Four files (sealed, shared, deleted, the mapped-only tree memfd); the sealed one's data
    // pages only (0, 1, 3): its holes are not stored.
    let files = &set.tree.files;
    assert_eq!(files.len(), 4, "{files:?}");
    let sealed = files
        .iter()
        .find(|f| {
            f.kind
                == StoredKind::Memfd {
                    name: "haul-sealed".into(),
                }
        })
        .expect("the sealed memfd in the image");
    assert_eq!(sealed.seals, seals as u32);
    let (lo, hi) = haul::image::space_bounds(sealed.space);
    let offsets: Vec<u64> = set.pages.range(lo, hi).map(|(k, _)| k - lo).collect();
    assert_eq!(offsets, [0, 4096, 3 * 4096]);
    assert!(
        files
            .iter()
            .any(|f| matches!(&f.kind, StoredKind::Deleted { path } if path.starts_with(&*dir.path().to_string_lossy()))),
        "{files:?}"
    );
    let p = set.process.as_ref().unwrap();
    assert_eq!(
        p.vmas.iter().filter(|v| v.kind == VmaKind::Memfd).count(),
        2
    );

    let outcome = haul::restore::restore(
        &set,
        &store,
        &common::verified(haul::restore::PidChoice::Same),
    )
    .unwrap_or_else(|e| panic!("restore of pid {pid}: {e}"));
    let _guard = Restored(vec![outcome.pid]);
    assert_eq!(outcome.pid, pid);
    // From outside: the same links, offsets, flags and seals; the same maps.
    let fds_after: Vec<_> = (3..=5).map(|fd| fd_view(pid, fd)).collect();
    for (b, a) in fds_before.iter().zip(&fds_after) {
        assert_eq!(a.0, b.0);
    }
    assert_eq!(lines(&maps(pid)), lines(&maps_before));
    // The fd and the mapping of "haul-shared" are one file.
    assert_eq!(
        fds_after[1].1,
        mapped_ino(pid, "/memfd:haul-shared (deleted)")
    );
    // Nothing left behind where the deleted file was made again.
    assert!(
        files_with(dir.path(), "storedfd-deleted-").is_empty(),
        "{:?}",
        files_with(dir.path(), "storedfd-deleted-")
    );
    // What the process sees: the same bytes, holes, size, seals and offsets; a write through
    // the fd is seen in the mapping.
    let after = report(pid, &out);
    assert_eq!(lasting(&after), lasting(&before), "{before:?} {after:?}");
    assert_eq!(
        after[6], 1,
        "a write through the fd is not in the mapping: {after:?}"
    );
}

#[test]
fn a_memfd_mapped_by_parent_and_child_is_one_file_after_restore() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reports");
    let mut cmd = Command::new(fixture("storedfd"));
    cmd.arg(&out).arg("fork");
    let mut r = launch(cmd, &dir.path().join("log"));
    let parent = r.pid;
    let kids = common::children_of(parent);
    assert_eq!(kids.len(), 1, "{kids:?}");
    let child = kids[0];
    let (pm, cm) = (maps(parent), maps(child));
    let before = report(parent, &out);
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    // The child, killed with its parent, came to this test process (the subreaper): reap it,
    // or its pid stays taken by a zombie.
    let _ = haul::sys::host::reap(child);
    // Each file once for the tree.
    assert_eq!(set.tree.files.len(), 4, "{:?}", set.tree.files);

    let outcome = haul::restore::restore(
        &set,
        &store,
        &common::verified(haul::restore::PidChoice::Same),
    )
    .unwrap_or_else(|e| panic!("restore of the tree of pid {parent}: {e}"));
    let _guard = Restored(vec![outcome.pid, child]);
    assert_eq!(common::children_of(parent), [child]);
    assert_eq!(lines(&maps(parent)), lines(&pm));
    assert_eq!(lines(&maps(child)), lines(&cm));
    for name in ["/memfd:haul-tree (deleted)", "/memfd:haul-shared (deleted)"] {
        assert_eq!(
            mapped_ino(parent, name),
            mapped_ino(child, name),
            "{name}: two files after restore"
        );
    }
    // The inherited fds are one open file description: one offset.
    for fd in 3..=5 {
        let (p, pi) = fd_view(parent, fd);
        let (c, ci) = fd_view(child, fd);
        assert_eq!((p, pi), (c, ci), "fd {fd}");
    }
    let base = report(parent, &out);
    assert_eq!(lasting(&base), lasting(&before), "{before:?} {base:?}");
    // A write by the child into the tree mapping is seen by the parent.
    send_signal(child, "USR2");
    let mut seen = Vec::new();
    assert!(
        wait_for(Duration::from_secs(10), || {
            seen = report(parent, &out);
            seen[10] == base[10] + 1
        }),
        "the parent never saw the child's write: {base:?} {seen:?}"
    );
    let theirs = report(child, &out);
    assert_eq!(theirs[0], 1);
    assert_eq!(theirs[10], seen[10]);
    assert_eq!(theirs[6], 1, "{theirs:?}");
}

#[test]
fn a_python_memfd_keeps_its_bytes_mapping_offset_and_seals() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reports");
    // A real program: python's os.memfd_create, written, mapped, sealed; on SIGUSR1 it
    // bumps byte 0 through the mapping and reports what the fd reads.
    // (It polls rather than pause(): a signal that lands between python's check and its
    // pause() would wait for the next one.)
    let script = "import os,mmap,fcntl,signal,sys,time\n\
        pat=bytes(range(256))*64\n\
        fd=os.memfd_create('py-buf',os.MFD_ALLOW_SEALING)\n\
        os.write(fd,pat)\n\
        m=mmap.mmap(fd,len(pat))\n\
        os.lseek(fd,1234,0)\n\
        fcntl.fcntl(fd,fcntl.F_ADD_SEALS,fcntl.F_SEAL_SHRINK|fcntl.F_SEAL_GROW)\n\
        def rep(s,f):\n\
        \x20   m[0]=(m[0]+1)%256\n\
        \x20   d=os.pread(fd,len(pat)+10,0)\n\
        \x20   ok=int(len(d)==len(pat) and d[1:]==pat[1:])\n\
        \x20   open(sys.argv[1],'a').write('%d %d %d %d %d\\n'%(ok,d[0],os.lseek(fd,0,1),fcntl.fcntl(fd,fcntl.F_GET_SEALS),fd))\n\
        signal.signal(signal.SIGUSR1,rep)\n\
        print('ready',flush=True)\n\
        while True: time.sleep(0.05)\n";
    let mut cmd = common::clean_command(common::python3());
    cmd.args(["-c", script]).arg(&out);
    let mut r = Running::logged(&mut cmd, &dir.path().join("log"), true);
    let pid = r.pid;
    let before = report(pid, &out);
    let seals = (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW) as u64;
    assert_eq!(before[..4], [1, 1, 1234, seals], "{before:?}");
    let fd = before[4] as i32;
    let view = fd_view(pid, fd).0;
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    let outcome = haul::restore::restore(
        &set,
        &store,
        &common::verified(haul::restore::PidChoice::Same),
    )
    .unwrap_or_else(|e| panic!("restore of pid {pid}: {e}"));
    let _guard = Restored(vec![outcome.pid]);
    assert_eq!(fd_view(pid, fd).0, view);
    let after = report(pid, &out);
    assert_eq!(after, [1, 2, 1234, seals, fd as u64], "{after:?}");
    // From outside: the bytes the program wrote, byte 0 as it set it.
    let bytes = std::fs::read(format!("/proc/{pid}/fd/{fd}")).unwrap();
    assert_eq!(bytes.len(), 16384);
    assert_eq!(bytes[0], 2);
    assert!(bytes[1..]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == ((i + 1) % 256) as u8));
}

/// `haul dump --check` of `pid`: its exit code and text.
fn check(pid: i32) -> (Option<i32>, String) {
    let out = common::haul()
        .args(["dump", "--check", "--pid", &pid.to_string()])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_deleted_directory_and_a_deleted_name_of_a_linked_file_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("gone-dir");
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let script = format!(
        "import os,time\nos.mkdir({d:?})\nos.dup2(os.open({d:?},os.O_RDONLY),40)\nos.rmdir({d:?})\n\
         open({a:?},'w').write('x')\nos.link({a:?},{b:?})\nos.dup2(os.open({a:?},os.O_RDONLY),41)\n\
         os.unlink({a:?})\nprint('ready',flush=True)\ntime.sleep(600)"
    );
    let p = Running::logged(
        common::clean_command(common::python3()).args(["-c", &script]),
        &dir.path().join("log"),
        true,
    );
    let (code, text) = check(p.pid);
    assert_eq!(code, Some(1), "{text}");
    let pid = p.pid;
    assert!(
        text.contains(&format!(
            "pid {pid} fd 40: {} (deleted) (deleted file) is not a regular file: only deleted \
             regular files are stored",
            d.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "pid {pid} fd 41: {} (deleted) (deleted file) still has 1 other link(s): a restore \
             would make a copy of it, no longer the file those names reach (not supported yet)",
            a.display()
        )),
        "{text}"
    );
}

#[test]
fn a_restore_is_refused_naming_a_deleted_file_whose_directory_is_gone() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let f = sub.join("f");
    let script = format!(
        "import os,time\nfd=os.open({f:?},os.O_RDWR|os.O_CREAT)\nos.write(fd,b'abc')\n\
         os.unlink({f:?})\nprint('ready',flush=True)\ntime.sleep(600)"
    );
    let mut cmd = common::clean_command(common::python3());
    cmd.args(["-c", &script]);
    let mut r = Running::logged(&mut cmd, &dir.path().join("log"), true);
    let store = new_store(dir.path());
    let set = dump_kill(&mut r, &store);
    std::fs::remove_dir(&sub).unwrap();
    let e = match haul::restore::restore(
        &set,
        &store,
        &common::verified(haul::restore::PidChoice::Same),
    ) {
        Ok(o) => {
            let _guard = Restored(vec![o.pid]);
            panic!("the restore should be refused")
        }
        Err(e) => e,
    };
    assert!(
        e.to_string().contains(&format!(
            "{} was open while deleted; a restore makes it again in its directory, which is gone",
            f.display()
        )),
        "{e}"
    );
}

#[test]
fn a_memfd_another_process_holds_too_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let script = "import os,time\nfd=os.memfd_create('lent')\nos.write(fd,b'x')\n\
                  print('ready',flush=True)\ntime.sleep(600)";
    let p = Running::logged(
        common::clean_command(common::python3()).args(["-c", script]),
        &dir.path().join("log"),
        true,
    );
    let pid = p.pid;
    let fd = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy() == "/memfd:lent (deleted)")
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .expect("the memfd");
    let (code, text) = check(pid);
    assert_eq!(code, Some(0), "alone, it is carried: {text}");
    // This test process opens it too: it is no longer the tree's alone.
    let held = std::fs::File::open(format!("/proc/{pid}/fd/{fd}")).unwrap();
    let (code, text) = check(pid);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "pid {pid} fd {fd}: its memfd or deleted file is held by pid {} (fd {}) too, \
             outside the tree: a restore would give the tree a copy of its own (not supported \
             yet)",
            std::process::id(),
            held.as_raw_fd()
        )),
        "{text}"
    );
}

#[test]
fn a_deleted_tmpfs_file_both_open_and_mapped_shared_is_refused_by_name() {
    if std::fs::metadata("/dev/shm").is_err() {
        return common::skip(
            "a_deleted_tmpfs_file_both_open_and_mapped_shared_is_refused_by_name",
            "no /dev/shm",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = format!("/dev/shm/haul-stored-both-{}", std::process::id());
    let script = format!(
        "import os,mmap,time\nfd=os.open({path:?},os.O_RDWR|os.O_CREAT)\nos.ftruncate(fd,4096)\n\
         m=mmap.mmap(fd,4096)\nos.unlink({path:?})\nprint('ready',flush=True)\ntime.sleep(600)"
    );
    let p = Running::logged(
        common::clean_command(common::python3()).args(["-c", &script]),
        &dir.path().join("log"),
        true,
    );
    let (code, text) = check(p.pid);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("pid {} fd ", p.pid))
            && text.contains(&format!(
                ": its deleted file is mapped shared too (pid {} mapping ",
                p.pid
            ))
            && text
                .contains("an fd and a shared mapping of one deleted file are not supported yet"),
        "{text}"
    );
}
