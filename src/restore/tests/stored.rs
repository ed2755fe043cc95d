//! Memfds and deleted files: made once by the first holder, filled through haul's copy,
//! reopened for each fd and mapping, sealed last. The fake hands back REAL fds of this test
//! process (a memfd, a temporary file) at numbers >= 900, so that haul's `pidfd_getfd` of
//! "the target's" fd takes them and what it writes can be read back; each test has numbers
//! of its own (tests run in parallel in one process).

use super::*;
use crate::image::stored::{StoredFile, StoredKind, StoredObject};
use crate::restore::share::Shared;
use crate::restore::stored::StoredTable;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

const PAGE: usize = 4096;

fn obj(kind: StoredKind, size: u64, seals: u32) -> StoredObject {
    StoredObject {
        kind,
        dev: 5,
        ino: 77,
        size,
        mode: 0o100777,
        uid: 0,
        gid: 0,
        seals,
        space: crate::image::stored::FIRST_SPACE,
    }
}

fn fd_on(n: i32, flags: i32, pos: u64) -> FdImage {
    FdImage {
        fd: n,
        flags: flags as u32,
        kind: FdKind::Stored(StoredFile {
            dev: 5,
            ino: 77,
            pos,
        }),
        same_as: None,
        locks: Vec::new(),
        inherited: None,
    }
}

/// A real memfd of this process at number `at` (closed when the returned fd is dropped).
fn real_memfd(at: i32) -> OwnedFd {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let m = memfd_create(c"haul-test", MemFdCreateFlag::MFD_ALLOW_SEALING).expect("memfd");
    nix::unistd::dup2(m.as_raw_fd(), at).expect("dup2");
    take(at)
}

/// The fd at `at` as an owned fd (closed when dropped).
fn take(at: i32) -> OwnedFd {
    let pidfd = crate::sys::process::pidfd_open(std::process::id() as i32).unwrap();
    let copy = crate::sys::process::pidfd_getfd(&pidfd, at).unwrap();
    let _ = nix::unistd::close(at);
    nix::unistd::dup2(copy.as_raw_fd(), at).unwrap();
    copy
}

fn contents(at: i32) -> Vec<u8> {
    let mut v = Vec::new();
    std::fs::File::open(format!("/proc/self/fd/{at}"))
        .unwrap()
        .read_to_end(&mut v)
        .unwrap();
    v
}

#[test]
fn a_memfd_is_made_filled_through_hauls_copy_reopened_seeked_and_sealed_last() {
    let at = 900;
    let _guard = real_memfd(at);
    let seals = (libc::F_SEAL_GROW | libc::F_SEAL_SHRINK) as u32;
    let size = (3 * PAGE + 100) as u64;
    let pages = vec![(0, vec![1u8; PAGE]), (2 * PAGE as u64, vec![3u8; PAGE])];
    let mut shared = Shared {
        stored: StoredTable::with(vec![(
            obj(StoredKind::Memfd { name: "buf".into() }, size, seals),
            pages,
        )]),
        ..Default::default()
    };
    let f = fd_on(
        905,
        libc::O_RDWR | libc::O_CLOEXEC | libc::O_LARGEFILE,
        5000,
    );
    let p = ProcessImage {
        fds: vec![f],
        ..Default::default()
    };
    let mut r = Recorder::new(std::process::id() as i32);
    r.returns("memfd_create", at as i64);
    r.returns("open", 3);
    crate::restore::fds::restore_fds(&mut r, &p, &mut shared).unwrap();
    assert_eq!(
        r.names(),
        [
            "close_range",
            "memfd_create",
            "open",
            "close",
            "dup3",
            "close",
            "lseek"
        ]
    );
    let mc = &r.of("memfd_create")[0];
    assert_eq!(mc.arg_bytes(0), Some(&b"buf\0"[..]));
    assert_eq!(
        mc.args[1],
        (libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) as u64
    );
    let open = &r.of("open")[0];
    assert_eq!(open.arg_bytes(0), Some(&b"/proc/self/fd/900\0"[..]));
    assert_eq!(
        open.args[1],
        (libc::O_RDWR | libc::O_CLOEXEC | libc::O_LARGEFILE) as u64
    );
    assert_eq!(r.of("close")[0].args[0], at as u64, "the maker's fd closed");
    assert_eq!(r.of("dup3")[0].args[..2], [3, 905]);
    assert_eq!(r.of("lseek")[0].args[..2], [905, 5000]);
    // What haul wrote through its copy: the pages, a hole between them, the size.
    let c = contents(at);
    assert_eq!(c.len(), 3 * PAGE + 100);
    assert!(c[..PAGE].iter().all(|&b| b == 1));
    assert!(c[PAGE..2 * PAGE].iter().all(|&b| b == 0));
    assert!(c[2 * PAGE..3 * PAGE].iter().all(|&b| b == 3));
    let hole = nix::unistd::lseek(
        shared.stored.copy(5, 77).unwrap().as_raw_fd(),
        0,
        nix::unistd::Whence::SeekHole,
    )
    .unwrap();
    assert_eq!(hole, PAGE as i64, "page 1 stays a hole");
    // Not sealed until the whole set is built; then sealed as it was.
    let now = crate::sys::stored::seals(shared.stored.copy(5, 77).unwrap().as_fd()).unwrap();
    assert_eq!(now, 0);
    shared.stored.seal().unwrap();
    let copy = shared.stored.copy(5, 77).unwrap();
    assert_eq!(crate::sys::stored::seals(copy.as_fd()).unwrap(), seals);
}

#[test]
fn a_later_fd_or_mapping_of_the_same_file_opens_hauls_copy_again() {
    let at = 910;
    let _guard = real_memfd(at);
    let mut shared = Shared {
        stored: StoredTable::with(vec![(
            obj(StoredKind::Memfd { name: "m".into() }, PAGE as u64, 0),
            vec![],
        )]),
        ..Default::default()
    };
    // The first holder maps it.
    let mut v = vma(0x10000, 0x11000, VmaKind::Memfd, &[]);
    v.shared = true;
    v.ino = 77;
    v.file = Some(crate::image::FileId {
        dev: 5,
        ino: 77,
        size: PAGE as u64,
        mtime_ns: 0,
    });
    let p = ProcessImage {
        vmas: vec![v.clone()],
        ..Default::default()
    };
    let set = set_with(&[]);
    let mut r = Recorder::new(std::process::id() as i32);
    r.returns("memfd_create", at as i64);
    r.returns("mmap", 0x10000);
    crate::restore::memory::map_vmas(&mut r, &set, &p, &[], &mut shared).unwrap();
    assert_eq!(r.names(), ["memfd_create", "mmap", "close"]);
    let mmap = &r.of("mmap")[0];
    assert_eq!(mmap.args[4], at as u64);
    assert_eq!(
        mmap.args[3] & libc::MAP_SHARED as u64,
        libc::MAP_SHARED as u64
    );
    // A later process's fd on it: no second memfd, haul's copy opened again.
    let copy = shared.stored.copy(5, 77).unwrap().as_raw_fd();
    let q = ProcessImage {
        fds: vec![fd_on(915, libc::O_RDONLY, 0)],
        ..Default::default()
    };
    let mut r = Recorder::new(std::process::id() as i32);
    r.returns("open", 4);
    crate::restore::fds::restore_fds(&mut r, &q, &mut shared).unwrap();
    assert_eq!(
        r.names(),
        [
            "close_range",
            "open",
            "open",
            "close",
            "dup3",
            "close",
            "lseek"
        ]
    );
    let opens = r.of("open");
    let again = format!("/proc/{}/fd/{copy}\0", std::process::id());
    assert_eq!(opens[0].arg_bytes(0), Some(again.as_bytes()));
    assert_eq!(opens[1].arg_bytes(0), Some(&b"/proc/self/fd/4\0"[..]));
    assert_eq!(opens[1].args[1], libc::O_RDONLY as u64);
}

#[test]
fn a_failed_memfd_create_stops_the_step_with_its_errno_and_makes_nothing() {
    let mut shared = Shared {
        stored: StoredTable::with(vec![(
            obj(StoredKind::Memfd { name: "m".into() }, 0, 0),
            vec![],
        )]),
        ..Default::default()
    };
    let p = ProcessImage {
        fds: vec![fd_on(920, libc::O_RDWR, 0)],
        ..Default::default()
    };
    let mut r = Recorder::new(std::process::id() as i32);
    r.fail_nth(1, libc::EMFILE);
    let e = crate::restore::fds::restore_fds(&mut r, &p, &mut shared).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EMFILE));
    assert!(
        e.to_string().starts_with("fd 920: injected memfd_create m"),
        "{e}"
    );
    assert_eq!(r.names(), ["close_range", "memfd_create"]);
    assert!(shared.stored.copy(5, 77).is_none());
}

#[test]
fn a_deleted_file_whose_path_is_taken_is_made_with_o_tmpfile_in_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let at = 930;
    let real = std::fs::File::create(dir.path().join("real")).unwrap();
    nix::unistd::dup2(real.as_raw_fd(), at).unwrap();
    let _guard = take(at);
    let path = dir.path().join("gone").to_string_lossy().into_owned();
    let mut o = obj(StoredKind::Deleted { path: path.clone() }, 300, 0);
    o.mode = 0o100640;
    let mut shared = Shared {
        stored: StoredTable::with(vec![(o, vec![(0, vec![9u8; PAGE])])]),
        ..Default::default()
    };
    let p = ProcessImage {
        fds: vec![fd_on(935, libc::O_RDWR, 100)],
        ..Default::default()
    };
    let mut r = Recorder::new(std::process::id() as i32);
    r.fail_nth(1, libc::EEXIST);
    r.returns("open", at as i64);
    crate::restore::fds::restore_fds(&mut r, &p, &mut shared).unwrap();
    let opens = r.of("open");
    assert_eq!(
        opens[0].args[1],
        (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC) as u64
    );
    assert_eq!(opens[0].args[2], 0o640);
    let d = format!("{}\0", dir.path().display());
    assert_eq!(opens[1].arg_bytes(0), Some(d.as_bytes()));
    assert_eq!(
        opens[1].args[1],
        (libc::O_RDWR | libc::O_TMPFILE | libc::O_CLOEXEC) as u64
    );
    assert!(r.of("unlink").is_empty(), "nothing to unlink");
    // Filled through haul's copy: the file's 300 bytes, not the whole page.
    assert_eq!(contents(at), vec![9u8; 300]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(format!("/proc/self/fd/{at}"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o640);
}
