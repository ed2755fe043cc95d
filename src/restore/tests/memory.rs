//! The memory, vDSO and mm-map steps.

use super::*;

#[test]
fn find_hole_takes_the_lowest_gap_at_or_above_64k() {
    use crate::restore::memory::find_hole;
    assert_eq!(find_hole(&mut [], 0x1000), Some(0x10000));
    assert_eq!(find_hole(&mut [(0x10000, 0x20000)], 0x1000), Some(0x20000));
    // Unsorted input, a gap too small, then one that fits exactly.
    let mut t = [(0x40000, 0x50000), (0x10000, 0x30000), (0x31000, 0x38000)];
    assert_eq!(find_hole(&mut t, 0x8000), Some(0x38000));
    // Overlapping ranges do not move the candidate back.
    let mut t = [(0x10000, 0x90000), (0x20000, 0x30000)];
    assert_eq!(find_hole(&mut t, 0x1000), Some(0x90000));
    // Nothing below the top of the user address space.
    assert_eq!(find_hole(&mut [(0x10000, 0x7fff_ffff_0000)], 0x1000), None);
}

#[test]
fn lazy_ranges_are_private_anonymous_vmas_with_stored_pages() {
    let p = ProcessImage {
        vmas: vec![
            vma(0x10000, 0x12000, VmaKind::Anon, &[]),
            vma(0x20000, 0x21000, VmaKind::Anon, &[]),
            {
                let mut v = vma(0x30000, 0x31000, VmaKind::SharedAnon, &[]);
                v.shared = true;
                v
            },
            vma(0x40000, 0x41000, VmaKind::File, &[]),
            vma(0x50000, 0x51000, VmaKind::Anon, &[]),
        ],
        ..Default::default()
    };
    let set = set_with(&[
        (0x11000, stored()),
        (0x20000, PageRef::Zero),
        (0x30000, stored()),
        (0x40000, stored()),
        (0x50000, PageRef::Lazy(crate::image::PageId::of(b"y"))),
    ]);
    assert_eq!(
        crate::restore::lazy_ranges(&set, &p),
        [(0x10000, 0x12000), (0x50000, 0x51000)]
    );
}

#[test]
fn vmas_are_mapped_writable_only_where_the_fill_writes() {
    use crate::restore::memory::map_prot_flags;
    let set = set_with(&[(0x10000, stored())]);
    let mut ro = vma(0x10000, 0x11000, VmaKind::Anon, &["gd", "nr"]);
    ro.prot = libc::PROT_READ as u32;
    let (prot, flags) = map_prot_flags(&ro, &set, &[]);
    assert_eq!(prot, (libc::PROT_READ | libc::PROT_WRITE) as u32);
    let want = libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_GROWSDOWN;
    let want = (want | libc::MAP_NORESERVE | libc::MAP_ANONYMOUS) as u64;
    assert_eq!(flags, want);
    // Lazy: the daemon fills it with UFFDIO_COPY, no write permission needed.
    assert_eq!(map_prot_flags(&ro, &set, &[(0x10000, 0x11000)]).0, ro.prot);
    // No pages: nothing to write.
    let empty = set_with(&[]);
    assert_eq!(map_prot_flags(&ro, &empty, &[]).0, ro.prot);
    // A shared file mapping is never written by the fill.
    let mut f = vma(0x10000, 0x11000, VmaKind::File, &[]);
    f.shared = true;
    f.prot = libc::PROT_READ as u32;
    let (prot, flags) = map_prot_flags(&f, &set, &[]);
    assert_eq!(prot, libc::PROT_READ as u32);
    assert_eq!(flags, (libc::MAP_FIXED | libc::MAP_SHARED) as u64);
}

#[test]
fn madvise_flags_give_each_vmflag_its_advice_and_lock() {
    let v = vma(
        0x10000,
        0x12000,
        VmaKind::Anon,
        &["dd", "hg", "wf", "lo", "lf"],
    );
    let mut r = Recorder::new(50);
    crate::restore::memory::madvise_flags(&mut r, &v).unwrap();
    let adv: Vec<(&str, u64)> = r.calls.iter().map(|c| (c.name(), c.args[2])).collect();
    assert_eq!(
        adv,
        [
            ("madvise", libc::MADV_DONTDUMP as u64),
            ("madvise", libc::MADV_HUGEPAGE as u64),
            ("madvise", libc::MADV_WIPEONFORK as u64),
            ("mlock2", libc::MLOCK_ONFAULT as u64),
        ]
    );
    assert!(r.calls.iter().all(|c| c.args[..2] == [0x10000, 0x2000]));
    let mut r = Recorder::new(50);
    crate::restore::memory::madvise_flags(&mut r, &vma(0, 0x1000, VmaKind::Anon, &["lo"])).unwrap();
    assert_eq!((r.calls[0].name(), r.calls[0].args[2]), ("mlock2", 0));
}

#[test]
fn protect_restores_protection_advice_and_anon_names_only_where_mapped() {
    let mut named = vma(0x10000, 0x11000, VmaKind::Anon, &[]);
    named.prot = libc::PROT_READ as u32;
    named.name = "[anon:arena]".into();
    let vdso = vma(0x20000, 0x21000, VmaKind::Vdso, &["dd"]);
    let p = ProcessImage {
        vmas: vec![named, vdso],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
    crate::restore::memory::protect(&mut r, &p, &[Some(rw), None]).unwrap();
    assert_eq!(r.names(), ["mprotect", "prctl"]);
    assert_eq!(r.calls[0].args[2], libc::PROT_READ as u64);
    assert_eq!(r.calls[1].args[0], libc::PR_SET_VMA as u64);
    assert_eq!(r.calls[1].arg_bytes(4), Some(&b"arena\0"[..]));
}

#[test]
fn a_file_mapping_that_fails_still_closes_its_fd_and_names_the_vma() {
    let mut f = vma(0x10000, 0x11000, VmaKind::File, &[]);
    f.name = "/usr/lib/x.so".into();
    let p = ProcessImage {
        vmas: vec![
            vma(0x8000, 0x9000, VmaKind::Anon, &[]),
            f,
            vma(0x20000, 0x21000, VmaKind::Anon, &[]),
        ],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("open", 9);
    r.fail_nth(2, libc::EACCES); // anon mmap, open, then the file's mmap
    let e =
        crate::restore::memory::map_vmas(&mut r, &set_with(&[]), &p, &[], &mut Default::default())
            .unwrap_err();
    assert_eq!(e.errno(), Some(libc::EACCES));
    assert!(e.to_string().contains("/usr/lib/x.so"), "{e}");
    assert_eq!(
        r.names(),
        ["mmap", "open", "mmap", "close"],
        "closed, and the next VMA not mapped"
    );
    assert_eq!(r.calls[2].args[4], 9, "mapped from the opened fd");
    assert_eq!(r.calls[1].arg_bytes(0), Some(&b"/usr/lib/x.so\0"[..]));
}

#[test]
fn the_vdso_unit_moves_without_landing_on_itself() {
    use crate::restore::vdso::vdso_moves;
    let now = vec![
        (0x1000, 0x3000, "[vvar]".to_string()),
        (0x3000, 0x4000, "[vdso]".to_string()),
        (0x9000, 0xa000, "[heap]".to_string()),
    ];
    // Up by 0x1000: the highest part first.
    assert_eq!(
        vdso_moves(&now, 0x4000).unwrap(),
        [(0x3000, 0x4000, 0x4000), (0x1000, 0x3000, 0x2000)]
    );
    // Down: the lowest first.
    assert_eq!(
        vdso_moves(&now, 0x2000).unwrap(),
        [(0x1000, 0x3000, 0x0), (0x3000, 0x4000, 0x2000)]
    );
    assert!(vdso_moves(&now, 0x3000).unwrap().is_empty());
    assert!(matches!(
        vdso_moves(&now[2..], 0x3000),
        Err(StepError::NoVdso)
    ));
}

#[test]
fn set_mm_opens_the_exe_passes_its_fd_and_closes_it_even_on_failure() {
    let p = ProcessImage {
        exe: "/bin/true".into(),
        auxv: vec![(6, 4096)],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("open", 5);
    r.fail_nth(1, libc::EINVAL);
    let e = crate::restore::mm::set_mm(&mut r, &p, false).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL));
    assert_eq!(r.names(), ["open", "prctl", "close"]);
    let map = r.calls[1].arg_bytes(2).unwrap();
    assert_eq!(
        u32::from_ne_bytes(map[100..104].try_into().unwrap()),
        5,
        "exe_fd"
    );
    assert_eq!(r.calls[2].args[0], 5);
    let auxv = crate::sys::remote::auxv_bytes(&p.auxv);
    assert_eq!(auxv.len(), 32, "the pair and AT_NULL");
    assert_eq!(
        r.calls[1].written_at(u64_at(map, 88)),
        Some(auxv.as_slice())
    );
}

/// A shared mapping: shared anonymous memory, or a deleted tmpfs file named `name`.
fn shm(start: u64, end: u64, kind: VmaKind, pgoff: u64) -> Vma {
    let mut v = vma(start, end, kind, &[]);
    v.shared = true;
    v.pgoff = pgoff;
    v.name = match v.kind {
        VmaKind::DeletedShm => "/dev/shm/sem.haul-test".into(),
        _ => "/dev/zero (deleted)".into(),
    };
    v
}

fn map(
    r: &mut Recorder,
    p: &ProcessImage,
    set: &ImageSet,
    shared: &mut crate::restore::share::Shared,
) -> Result<Vec<Option<u32>>, StepError> {
    crate::restore::memory::map_vmas(r, set, p, &[], shared)
}

#[test]
fn a_later_mapping_of_shared_memory_maps_its_first_holders_object_through_map_files() {
    use crate::image::VmaRef;
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let shared_fixed = (libc::MAP_SHARED | libc::MAP_FIXED) as u64;
    // The first holder (image pid 10, restored as pid 50) maps object bytes 0x1000-0x5000.
    let first = ProcessImage {
        pid: 10,
        vmas: vec![shm(0x10000, 0x14000, VmaKind::SharedAnon, 0x1000)],
        ..Default::default()
    };
    let mut shared = crate::restore::share::Shared::default();
    let mut r = Recorder::new(50);
    map(&mut r, &first, &set_with(&[]), &mut shared).unwrap();
    assert_eq!(r.names(), ["mmap"]);
    assert_eq!(
        r.calls[0].args,
        [
            0x10000,
            0x4000,
            rw,
            shared_fixed | libc::MAP_ANONYMOUS as u64,
            u64::MAX,
            0
        ]
    );
    // Its child (image pid 11, restored as pid 60) maps object bytes 0x3000-0x4000 at its own
    // address: through the restored holder's map_files, at offset 0x2000 of the new object
    // (which starts where the holder's mapping did).
    let mut later = shm(0x30000, 0x31000, VmaKind::SharedAnon, 0x3000);
    later.shared_with = Some(VmaRef {
        pid: 10,
        start: 0x10000,
    });
    let child = ProcessImage {
        pid: 11,
        vmas: vec![later.clone()],
        ..Default::default()
    };
    let mut r = Recorder::new(60);
    r.returns("open", 7);
    let prot = map(&mut r, &child, &set_with(&[]), &mut shared).unwrap();
    assert_eq!(r.names(), ["open", "mmap", "close"]);
    assert_eq!(
        r.calls[0].arg_bytes(0),
        Some(&b"/proc/50/map_files/10000-14000\0"[..])
    );
    assert_eq!(r.calls[0].args[1], (libc::O_RDWR | libc::O_CLOEXEC) as u64);
    assert_eq!(
        r.calls[1].args,
        [0x30000, 0x1000, rw, shared_fixed, 7, 0x2000]
    );
    assert_eq!(r.calls[2].args[0], 7);
    assert_eq!(
        prot,
        [Some(rw as u32)],
        "not made writable: nothing to fill"
    );

    // A failing mmap stops the step with its errno, naming the VMA, and still closes.
    let mut r = Recorder::new(60);
    r.returns("open", 7);
    r.fail_nth(1, libc::ENOMEM);
    let e = map(&mut r, &child, &set_with(&[]), &mut shared).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOMEM));
    assert!(e.to_string().contains("VMA 0x30000-0x31000"), "{e}");
    assert_eq!(r.names(), ["open", "mmap", "close"]);

    // A holder that was never mapped: refused before any call.
    let mut r = Recorder::new(60);
    let e = map(
        &mut r,
        &child,
        &set_with(&[]),
        &mut crate::restore::share::Shared::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("pid 10's mapping at 0x10000"), "{e}");
    assert!(r.calls.is_empty());
}

#[test]
fn a_deleted_tmpfs_file_is_created_exclusively_sized_mapped_and_unlinked() {
    let mut v = shm(0x10000, 0x11000, VmaKind::DeletedShm, 0);
    v.file = Some(crate::image::FileId {
        dev: 30,
        ino: 5,
        size: 0x1000,
        mtime_ns: 0,
    });
    let p = ProcessImage {
        pid: 10,
        vmas: vec![v],
        ..Default::default()
    };
    let set = set_with(&[(0x10000, stored())]);
    let mut shared = crate::restore::share::Shared::default();
    let mut r = Recorder::new(50);
    r.returns("open", 8);
    map(&mut r, &p, &set, &mut shared).unwrap();
    assert_eq!(r.names(), ["open", "ftruncate", "mmap", "close", "unlink"]);
    let path = &b"/dev/shm/sem.haul-test\0"[..];
    assert_eq!(r.calls[0].arg_bytes(0), Some(path));
    let create = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
    assert_eq!(r.calls[0].args[1..3], [create as u64, 0o600]);
    assert_eq!(r.calls[1].args[..2], [8, 0x1000]);
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_SHARED | libc::MAP_FIXED) as u64;
    assert_eq!(r.calls[2].args, [0x10000, 0x1000, rw, flags, 8, 0]);
    assert_eq!(r.calls[4].arg_bytes(0), Some(path));
    // Later mappings of it map the restored file through pid 50.
    let h = shared
        .mem
        .get(crate::image::VmaRef {
            pid: 10,
            start: 0x10000,
        })
        .unwrap();
    assert_eq!(h.map_files(), "/proc/50/map_files/10000-11000");

    // A failing ftruncate stops the step with its errno; the file is closed and unlinked.
    let mut r = Recorder::new(50);
    r.returns("open", 8);
    r.fail_nth(1, libc::ENOSPC);
    let e = map(&mut r, &p, &set, &mut shared).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOSPC));
    assert!(e.to_string().contains("/dev/shm/sem.haul-test"), "{e}");
    assert_eq!(r.names(), ["open", "ftruncate", "close", "unlink"]);

    // Something at the path: refused by the exclusive create, and not unlinked (not ours).
    let mut r = Recorder::new(50);
    r.fail_nth(0, libc::EEXIST);
    let e = map(&mut r, &p, &set, &mut shared).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EEXIST));
    assert!(e.to_string().contains("/dev/shm/sem.haul-test"), "{e}");
    assert_eq!(r.names(), ["open"]);
}

#[test]
fn check_paths_refuses_a_deleted_shm_path_that_exists_naming_it() {
    use crate::restore::share::check_paths;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sem.x");
    let mut v = shm(0x10000, 0x11000, VmaKind::DeletedShm, 0);
    v.name = path.to_string_lossy().into_owned();
    let mut later = v.clone();
    later.shared_with = Some(crate::image::VmaRef {
        pid: 10,
        start: 0x10000,
    });
    let mut set = set_with(&[]);
    set.process = Some(ProcessImage {
        pid: 10,
        vmas: vec![v],
        ..Default::default()
    });
    set.tree.descendants.push(ProcessImage {
        pid: 11,
        vmas: vec![later],
        ..Default::default()
    });
    check_paths(&set).unwrap();
    std::fs::write(&path, b"").unwrap();
    let e = check_paths(&set).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{} exists: pid 10", path.display())),
        "{e}"
    );
}
