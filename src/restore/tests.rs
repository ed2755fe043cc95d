//! Unit tests of the restore steps against the recording fake (no root, no process): the
//! order and arguments of the injected calls, and how a failing call stops a step.

use super::error::StepError;
use crate::image::{
    AnonFd, Creds, FdImage, FdKind, FileLock, ImageSet, LockKind, PageRef, PageTable, PosixTimer,
    ProcessImage, SetKind, SigAction, ThreadImage, Vma, VmaKind,
};
use crate::sys::remote::fake::Recorder;

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_ne_bytes(b[i..i + 8].try_into().unwrap())
}

fn vma(start: u64, end: u64, kind: VmaKind, flags: &[&str]) -> Vma {
    Vma {
        start,
        end,
        prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
        shared: false,
        pgoff: 0,
        kind,
        name: String::new(),
        file: None,
        vm_flags: flags.iter().map(|f| f.to_string()).collect(),
    }
}

fn set_with(pages: &[(u64, PageRef)]) -> ImageSet {
    let mut t = PageTable::new();
    for &(a, r) in pages {
        t.insert(a, r);
    }
    ImageSet {
        id: "job-1".into(),
        job: "job".into(),
        created_us: 0,
        kind: SetKind::Dump,
        parent: None,
        kernel: String::new(),
        process: None,
        pages: t,
        figures: Default::default(),
    }
}

fn stored() -> PageRef {
    PageRef::Stored(crate::image::PageId::of(b"x"))
}

fn non_root_creds() -> ProcessImage {
    ProcessImage {
        creds: Creds {
            uid: [1000; 4],
            gid: [100; 4],
            groups: vec![100, 27],
            cap_prm: 1 << 10,
            cap_eff: 1 << 10,
            cap_bnd: !(1 << 21),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A fake whose setfsuid/setfsgid keep the id they are given.
fn fs_ids_take(r: &mut Recorder) {
    for nr in ["setfsuid", "setfsgid"] {
        let mut now = 0u64;
        r.when(nr, move |a, _| {
            let prev = now;
            if a[0] != u64::from(u32::MAX) {
                now = a[0];
            }
            prev as i64
        });
    }
}

fn creds(r: &mut Recorder, p: &ProcessImage, bnd: u64) -> Result<(), StepError> {
    super::creds::creds_in_order(r, p, bnd, &mut || Ok(p.creds.cap_prm))
}

// --- credentials ---

#[test]
fn credentials_drop_the_bounding_set_before_setresuid_and_keep_caps_around_it() {
    let p = non_root_creds();
    let mut r = Recorder::new(50);
    fs_ids_take(&mut r);
    creds(&mut r, &p, u64::MAX >> 23).unwrap();
    let nrs = r.names();
    let pos = |name: &str| nrs.iter().position(|&n| n == name).unwrap();
    let drop_at = r
        .calls
        .iter()
        .position(|c| c.name() == "prctl" && c.args[0] == libc::PR_CAPBSET_DROP as u64)
        .unwrap();
    assert_eq!(
        r.calls[drop_at].args[1], 21,
        "the one capability the image lacks"
    );
    let keep: Vec<usize> = r
        .calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c.name() == "prctl" && c.args[0] == libc::PR_SET_KEEPCAPS as u64)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(keep.len(), 2);
    assert_eq!(r.calls[keep[0]].args[1], 1);
    assert_eq!(r.calls[keep[1]].args[1], 0);
    assert!(drop_at < pos("setgroups"));
    assert!(pos("setgroups") < keep[0]);
    assert!(keep[0] < pos("setresgid"));
    assert!(pos("setresgid") < pos("setresuid"));
    assert!(pos("setresuid") < pos("setfsuid"));
    assert!(pos("setfsgid") < pos("setfsuid"));
    assert!(pos("setfsuid") < keep[1]);
    assert!(keep[1] < pos("capset"), "capset after the uid change");
    assert_eq!(r.of("setresuid")[0].args[..3], [1000, 1000, 1000]);
    assert_eq!(r.of("setresgid")[0].args[..3], [100, 100, 100]);
}

#[test]
fn a_root_process_keeps_its_ids_and_only_sets_groups_and_caps() {
    let mut p = non_root_creds();
    p.creds.uid = [0; 4];
    p.creds.gid = [0; 4];
    let mut r = Recorder::new(50);
    creds(&mut r, &p, p.creds.cap_bnd).unwrap();
    assert_eq!(r.names(), ["setgroups", "capset"]);
    let g = r.calls[0].arg_bytes(1).unwrap();
    assert_eq!(g.len(), 8);
}

#[test]
fn no_permitted_caps_means_no_keepcaps() {
    let mut p = non_root_creds();
    p.creds.cap_prm = 0;
    p.creds.cap_eff = 0;
    let mut r = Recorder::new(50);
    fs_ids_take(&mut r);
    creds(&mut r, &p, p.creds.cap_bnd).unwrap();
    assert!(r
        .prctls()
        .iter()
        .all(|&(o, _)| o != libc::PR_SET_KEEPCAPS as u64));
}

#[test]
fn a_failing_setresuid_stops_the_step_with_its_errno() {
    let p = non_root_creds();
    let mut r = Recorder::new(50);
    fs_ids_take(&mut r);
    // bounding drop (1), setgroups, keepcaps, setresgid, then setresuid is call 4.
    r.fail_nth(4, libc::EPERM);
    let e = creds(&mut r, &p, u64::MAX >> 23).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EPERM));
    assert!(e.to_string().contains("setresuid"), "{e}");
    assert_eq!(r.calls.len(), 5, "nothing after the failed call");
    assert_eq!(r.calls.last().unwrap().name(), "setresuid");
}

#[test]
fn a_filesystem_id_that_does_not_take_is_an_error() {
    let p = non_root_creds();
    let mut r = Recorder::new(50);
    // setfsgid keeps returning 0: the gid stays 0.
    let e = creds(&mut r, &p, p.creds.cap_bnd).unwrap_err();
    assert!(
        matches!(
            e,
            StepError::FsId {
                call: "setfsgid",
                id: 100,
                now: 0
            }
        ),
        "{e:?}"
    );
    assert!(r.of("capset").is_empty());
}

#[test]
fn securebits_beyond_keep_caps_raise_the_permitted_set_first() {
    let mut p = non_root_creds();
    p.creds.cap_amb = 1 << 10;
    p.creds.cap_inh = 1 << 10;
    p.attrs.securebits = Some(libc::SECBIT_NO_CAP_AMBIENT_RAISE as u32);
    let mut r = Recorder::new(50);
    fs_ids_take(&mut r);
    super::creds::creds_in_order(&mut r, &p, p.creds.cap_bnd, &mut || Ok(0b111 << 8)).unwrap();
    let caps = r.of("capset");
    assert_eq!(caps.len(), 2);
    let first = caps[0].arg_bytes(0).unwrap();
    // effective and permitted = what the thread holds now; then the image's.
    assert_eq!(
        u32::from_ne_bytes(first[8..12].try_into().unwrap()),
        0b111 << 8
    );
    let last = caps[1].arg_bytes(0).unwrap();
    assert_eq!(u32::from_ne_bytes(last[8..12].try_into().unwrap()), 1 << 10);
    let tail: Vec<u64> = r.prctls().iter().map(|p| p.0).collect();
    let amb = tail.iter().position(|&o| o == libc::PR_CAP_AMBIENT as u64);
    let sec = tail
        .iter()
        .position(|&o| o == libc::PR_SET_SECUREBITS as u64);
    assert!(
        amb.unwrap() < sec.unwrap(),
        "ambient raise before the bits forbid it"
    );
    let c_idx = |i: usize| {
        r.calls
            .iter()
            .position(|c| std::ptr::eq(c, caps[i]))
            .unwrap()
    };
    let sec_idx = r
        .calls
        .iter()
        .position(|c| c.name() == "prctl" && c.args[0] == libc::PR_SET_SECUREBITS as u64)
        .unwrap();
    assert!(c_idx(0) < sec_idx && sec_idx < c_idx(1));
}

#[test]
fn no_new_privs_comes_last() {
    let mut p = non_root_creds();
    p.creds.no_new_privs = true;
    let mut r = Recorder::new(50);
    fs_ids_take(&mut r);
    creds(&mut r, &p, p.creds.cap_bnd).unwrap();
    assert_eq!(
        *r.prctls().last().unwrap(),
        (libc::PR_SET_NO_NEW_PRIVS as u64, 1)
    );
}

// --- signals ---

#[test]
fn only_changed_actions_are_set_and_sigkill_sigstop_never() {
    let mut actions = vec![SigAction::default(); 64];
    let h = SigAction {
        handler: 0x401000,
        flags: 0x0400_0000,
        restorer: 0x402000,
        mask: 0,
    };
    for sig in [libc::SIGKILL, libc::SIGSTOP, libc::SIGUSR1] {
        actions[sig as usize - 1] = h.clone();
    }
    actions[libc::SIGPIPE as usize - 1].handler = 1; // SIG_IGN
    let p = ProcessImage {
        sigactions: actions,
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    super::signals::restore_sigactions(&mut r, &p).unwrap();
    let sigs: Vec<u64> = r.calls.iter().map(|c| c.args[0]).collect();
    assert_eq!(sigs, [libc::SIGUSR1 as u64, libc::SIGPIPE as u64]);
    let b = r.calls[0].arg_bytes(1).unwrap();
    assert_eq!(
        [u64_at(b, 0), u64_at(b, 8), u64_at(b, 16)],
        [0x401000, 0x0400_0000, 0x402000]
    );
}

fn siginfo(sig: i32) -> Vec<u8> {
    let mut b = vec![0u8; crate::sys::ptrace::SIGINFO_SIZE];
    b[..4].copy_from_slice(&sig.to_ne_bytes());
    b
}

#[test]
fn siginfo_bit_is_the_signals_pending_bit() {
    assert_eq!(super::signals::siginfo_bit(&siginfo(1)), 1);
    assert_eq!(super::signals::siginfo_bit(&siginfo(64)), 1 << 63);
    assert_eq!(super::signals::siginfo_bit(&siginfo(0)), 0);
    assert_eq!(super::signals::siginfo_bit(&siginfo(65)), 0);
    assert_eq!(super::signals::siginfo_bit(&[1, 0]), 0);
}

#[test]
fn queued_siginfo_goes_to_the_thread_or_the_process() {
    let mut r = Recorder::new(50);
    let infos = vec![siginfo(libc::SIGUSR2), siginfo(libc::SIGKILL)];
    super::signals::queue_siginfo(&mut r, 51, &infos, false).unwrap();
    super::signals::queue_siginfo(&mut r, 51, &infos[..1], true).unwrap();
    assert_eq!(r.names(), ["rt_tgsigqueueinfo", "rt_sigqueueinfo"]);
    assert_eq!(r.calls[0].args[..3], [50, 51, libc::SIGUSR2 as u64]);
    assert_eq!(r.calls[0].arg_bytes(3), Some(infos[0].as_slice()));
    assert_eq!(r.calls[1].args[..2], [50, libc::SIGUSR2 as u64]);
}

#[test]
fn a_malformed_siginfo_is_refused_before_any_call() {
    let mut r = Recorder::new(50);
    let e = super::signals::queue_siginfo(&mut r, 50, &[vec![10, 0, 0, 0]], false).unwrap_err();
    assert!(matches!(e, StepError::BadSiginfo { len: 4 }), "{e:?}");
    assert!(r.calls.is_empty());
}

#[test]
fn signals_resent_are_the_pending_ones_not_queued_with_siginfo() {
    let bit = |s: i32| 1u64 << (s - 1);
    let p = ProcessImage {
        shared_pending: bit(libc::SIGUSR1) | bit(libc::SIGKILL) | bit(libc::SIGHUP),
        shared_pending_info: vec![siginfo(libc::SIGHUP)],
        threads: vec![
            ThreadImage {
                tid: 50,
                pending: bit(libc::SIGUSR2) | bit(libc::SIGTERM),
                pending_info: vec![siginfo(libc::SIGTERM)],
                ..Default::default()
            },
            ThreadImage {
                tid: 51,
                pending: bit(libc::SIGINT),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let threads = [(60, p.threads[0].pending), (61, p.threads[1].pending)];
    let v = super::signals::to_resend(&p, &threads);
    assert_eq!(
        v,
        [
            (Some(61), libc::SIGINT),
            (None, libc::SIGUSR1),
            (Some(60), libc::SIGUSR2)
        ]
    );
}

// --- timers ---

fn timer(id: i32, tid: i32, value_ns: u64) -> PosixTimer {
    PosixTimer {
        id,
        clock: libc::CLOCK_MONOTONIC,
        notify: if tid == 0 { 0 } else { libc::SIGEV_THREAD_ID },
        signo: libc::SIGALRM,
        sigval: 7,
        tid,
        value_ns,
        interval_ns: 0,
    }
}

#[test]
fn posix_timers_get_their_ids_under_restore_ids_and_signal_the_new_thread() {
    let p = ProcessImage {
        threads: vec![
            ThreadImage {
                tid: 50,
                ..Default::default()
            },
            ThreadImage {
                tid: 52,
                ..Default::default()
            },
        ],
        posix_timers: vec![timer(0, 0, 0), timer(4, 52, 1_500_000_000)],
        ..Default::default()
    };
    let mut r = Recorder::new(70);
    super::timers::restore_posix_timers(&mut r, &p, &[(70, 0), (72, 0)]).unwrap();
    assert_eq!(
        r.names(),
        [
            "prctl",
            "timer_create",
            "timer_create",
            "timer_settime",
            "prctl"
        ]
    );
    assert_eq!(
        r.prctls(),
        [
            (PR_TIMER_CREATE_RESTORE_IDS, 1),
            (PR_TIMER_CREATE_RESTORE_IDS, 0)
        ]
    );
    let ev = r.calls[2].arg_bytes(1).unwrap();
    assert_eq!(
        i32::from_ne_bytes(ev[16..20].try_into().unwrap()),
        72,
        "the rebuilt tid"
    );
    assert_eq!(r.calls[2].arg_bytes(2), Some(&4i32.to_ne_bytes()[..]));
    assert_eq!(r.calls[3].args[0], 4);
}

#[test]
fn a_timer_of_an_unknown_thread_fails_with_the_ids() {
    let p = ProcessImage {
        threads: vec![ThreadImage {
            tid: 50,
            ..Default::default()
        }],
        posix_timers: vec![timer(2, 99, 0)],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    let e = super::timers::restore_posix_timers(&mut r, &p, &[(50, 0)]).unwrap_err();
    assert_eq!(e.to_string(), "timer 2 signals thread 99, not in the image");
}

#[test]
fn a_timer_recreated_under_another_id_is_an_error() {
    let p = ProcessImage {
        posix_timers: vec![timer(3, 0, 0)],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.when("timer_create", |a, mem| {
        mem.poke(a[2], &0i32.to_ne_bytes());
        0
    });
    let e = super::timers::restore_posix_timers(&mut r, &p, &[]).unwrap_err();
    assert!(matches!(e, StepError::TimerId { id: 3, got: 0 }), "{e:?}");
}

#[test]
fn itimers_are_set_in_microseconds() {
    let p = ProcessImage {
        itimers: vec![crate::image::ITimer {
            which: 0,
            value_us: 2_500_000,
            interval_us: 1_000_000,
        }],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    super::timers::restore_itimers(&mut r, &p).unwrap();
    let b = r.calls[0].arg_bytes(1).unwrap();
    let w: Vec<u64> = (0..4).map(|i| u64_at(b, 8 * i)).collect();
    assert_eq!(w, [1, 0, 2, 500_000]);
}

// --- memory ---

#[test]
fn find_hole_takes_the_lowest_gap_at_or_above_64k() {
    use super::memory::find_hole;
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
        super::lazy_ranges(&set, &p),
        [(0x10000, 0x12000), (0x50000, 0x51000)]
    );
}

#[test]
fn vmas_are_mapped_writable_only_where_the_fill_writes() {
    use super::memory::map_prot_flags;
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
    super::memory::madvise_flags(&mut r, &v).unwrap();
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
    super::memory::madvise_flags(&mut r, &vma(0, 0x1000, VmaKind::Anon, &["lo"])).unwrap();
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
    super::memory::protect(&mut r, &p, &[Some(rw), None]).unwrap();
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
    let e = super::memory::map_vmas(&mut r, &set_with(&[]), &p, &[]).unwrap_err();
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
    use super::vdso::vdso_moves;
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
    let e = super::mm::set_mm(&mut r, &p).unwrap_err();
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

// --- files ---

fn fd(fd: i32, flags: i32, kind: FdKind) -> FdImage {
    FdImage {
        fd,
        flags: flags as u32,
        kind,
        same_as: None,
        locks: Vec::new(),
    }
}

fn file(path: &str, pos: u64) -> FdKind {
    FdKind::File {
        path: path.into(),
        pos,
        mode: 0,
        id: Default::default(),
    }
}

#[test]
fn a_file_is_reopened_moved_to_its_number_and_seeked() {
    let mut f = fd(
        7,
        libc::O_RDWR | libc::O_CLOEXEC | libc::O_CREAT,
        file("/tmp/a", 42),
    );
    f.locks.push(FileLock {
        kind: LockKind::Posix,
        write: true,
        start: 0,
        len: 10,
    });
    let mut dup = fd(8, 0, file("/tmp/a", 42));
    dup.same_as = Some(7);
    let p = ProcessImage {
        fds: vec![dup, f],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("open", 3);
    super::fds::restore_fds(&mut r, &p).unwrap();
    assert_eq!(
        r.names(),
        [
            "close_range",
            "open",
            "dup3",
            "close",
            "lseek",
            "fcntl",
            "dup3"
        ]
    );
    assert_eq!(
        r.calls[1].args[1],
        (libc::O_RDWR | libc::O_CLOEXEC) as u64,
        "O_CREAT left out"
    );
    assert_eq!(r.calls[2].args[..3], [3, 7, libc::O_CLOEXEC as u64]);
    assert_eq!(r.calls[3].args[0], 3);
    assert_eq!(r.calls[4].args[..3], [7, 42, libc::SEEK_SET as u64]);
    assert_eq!(r.calls[5].args[1], libc::F_SETLK as u64);
    assert_eq!(
        r.calls[6].args[..3],
        [7, 8, 0],
        "the dup shares fd 7, not cloexec"
    );
}

#[test]
fn an_o_path_fd_at_its_number_is_not_seeked() {
    let p = ProcessImage {
        fds: vec![fd(3, libc::O_PATH, file("/etc", 0))],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("open", 3);
    super::fds::restore_fds(&mut r, &p).unwrap();
    assert_eq!(r.names(), ["close_range", "open"]);
}

#[test]
fn a_lock_held_elsewhere_is_named_and_other_errors_kept() {
    let mut f = fd(3, 0, file("/tmp/l", 0));
    f.locks.push(FileLock {
        kind: LockKind::Flock,
        write: true,
        start: 0,
        len: 0,
    });
    let p = ProcessImage {
        fds: vec![f],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("open", 3);
    r.fail_nth(3, libc::EAGAIN);
    let e = super::fds::restore_fds(&mut r, &p).unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("write flock lock on /tmp/l (fd 3) is held by another process now"),
        "{m}"
    );
    let mut r = Recorder::new(50);
    r.returns("open", 3);
    r.fail_nth(3, libc::ENOLCK);
    let e = super::fds::restore_fds(&mut r, &p).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOLCK));
    assert!(
        e.to_string().starts_with("taking the write flock lock"),
        "{e}"
    );
}

fn pipe_end(n: i32, write: bool, data: &[u8]) -> FdImage {
    fd(
        n,
        if write {
            libc::O_WRONLY | libc::O_NONBLOCK
        } else {
            libc::O_CLOEXEC
        },
        FdKind::Pipe {
            ino: 77,
            write,
            size: if write { 0 } else { 65536 },
            data: data.to_vec(),
        },
    )
}

#[test]
fn a_pipe_whose_new_ends_are_swapped_gets_both_to_their_numbers() {
    let p = ProcessImage {
        fds: vec![pipe_end(4, false, b"hello"), pipe_end(3, true, b"")],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    // The kernel hands out 3 (read) and 4 (write): the opposite of the image.
    r.when("pipe2", |a, mem| {
        mem.poke(a[0], &3i32.to_ne_bytes());
        mem.poke(a[0] + 4, &4i32.to_ne_bytes());
        0
    });
    r.returns("fcntl", 9); // F_DUPFD gives 9; the other fcntls ignore it
    r.returns("write", 5);
    super::fds::restore_fds(&mut r, &p).unwrap();
    let calls: Vec<(&str, u64, u64)> = r
        .calls
        .iter()
        .map(|c| (c.name(), c.args[0], c.args[1]))
        .collect();
    let fc = "fcntl";
    assert_eq!(
        calls[1..],
        [
            ("pipe2", calls[1].1, 0),
            (fc, 3, libc::F_DUPFD as u64),
            ("close", 3, 0),
            ("dup3", 4, 3),
            ("close", 4, 0),
            ("dup3", 9, 4),
            ("close", 9, 0),
            (fc, 3, libc::F_SETPIPE_SZ as u64),
            ("write", 3, calls[9].2),
            (fc, 4, libc::F_SETFD as u64),
            (fc, 4, libc::F_SETFL as u64),
            (fc, 3, libc::F_SETFD as u64),
            (fc, 3, libc::F_SETFL as u64),
        ]
    );
    assert_eq!(r.calls[9].arg_bytes(1), Some(&b"hello"[..]));
    assert_eq!(
        r.calls[10].args[2],
        libc::FD_CLOEXEC as u64,
        "the read end is cloexec"
    );
    assert_eq!(r.calls[12].args[2], 0);
}

#[test]
fn a_pipe_that_takes_back_less_than_it_held_is_an_error() {
    let p = ProcessImage {
        fds: vec![pipe_end(3, false, b"hello"), pipe_end(4, true, b"")],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.when("pipe2", |a, mem| {
        mem.poke(a[0], &3i32.to_ne_bytes());
        mem.poke(a[0] + 4, &4i32.to_ne_bytes());
        0
    });
    r.returns("write", 2);
    let e = super::fds::restore_fds(&mut r, &p).unwrap_err();
    assert_eq!(e.to_string(), "pipe:[77] took 2 of 5 bytes back");
}

#[test]
fn a_periodic_timerfd_with_unread_ticks_is_rearmed_and_given_its_ticks() {
    let p = ProcessImage {
        fds: vec![fd(
            5,
            libc::O_NONBLOCK,
            FdKind::Anon(AnonFd::TimerFd {
                clock: libc::CLOCK_MONOTONIC,
                ticks: 3,
                value_ns: 0,
                interval_ns: 2_000_000_000,
            }),
        )],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("timerfd_create", 5);
    super::fds::restore_fds(&mut r, &p).unwrap();
    assert_eq!(
        r.names()[1..],
        ["timerfd_create", "timerfd_settime", "ioctl"]
    );
    assert_eq!(r.calls[1].args[1], libc::O_NONBLOCK as u64);
    let its = r.calls[2].arg_bytes(2).unwrap();
    assert_eq!([u64_at(its, 0), u64_at(its, 16)], [2, 2], "one period on");
    assert_eq!(r.calls[3].args[1], 0x4008_5400, "TFD_IOC_SET_TICKS");
    assert_eq!(r.calls[3].arg_bytes(2), Some(&3u64.to_ne_bytes()[..]));
}

#[test]
fn an_eventfd_gets_its_64_bit_count_by_a_write_and_a_failure_names_the_fd() {
    let p = ProcessImage {
        fds: vec![fd(
            6,
            0,
            FdKind::Anon(AnonFd::EventFd {
                count: 1 << 40,
                semaphore: true,
            }),
        )],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.returns("eventfd2", 3);
    super::fds::restore_fds(&mut r, &p).unwrap();
    assert_eq!(r.calls[1].args[1], libc::EFD_SEMAPHORE as u64);
    assert_eq!(
        r.calls[2].arg_bytes(1),
        Some(&(1u64 << 40).to_ne_bytes()[..])
    );
    let mut r = Recorder::new(50);
    r.fail_nth(1, libc::EMFILE);
    let e = super::fds::restore_fds(&mut r, &p).unwrap_err();
    assert!(e.to_string().starts_with("fd 6: injected eventfd2"), "{e}");
    assert_eq!(e.errno(), Some(libc::EMFILE));
}

// --- fs, limits, threads ---

#[test]
fn session_plan_follows_the_dumped_session_and_group() {
    use super::fs::{session_plan, Session};
    let p = |pid, sid, pgid| ProcessImage {
        pid,
        sid,
        pgid,
        ..Default::default()
    };
    assert_eq!(
        session_plan(&p(10, 10, 10), (5, 5)),
        Session::New,
        "a leader"
    );
    assert_eq!(
        session_plan(&p(10, 7, 7), (5, 5)),
        Session::New,
        "another session"
    );
    assert_eq!(session_plan(&p(10, 5, 8), (5, 5)), Session::Group(8));
    assert_eq!(
        session_plan(&p(10, 5, 10), (5, 5)),
        Session::Group(0),
        "its own group"
    );
    assert_eq!(
        session_plan(&p(10, 0, 0), (0, 0)),
        Session::Stay,
        "outside our namespace"
    );
    assert_eq!(session_plan(&p(10, 0, 0), (0, 3)), Session::Group(0));
}

#[test]
fn limits_are_set_one_prlimit64_each() {
    let p = ProcessImage {
        rlimits: vec![
            crate::image::Rlimit {
                resource: libc::RLIMIT_NOFILE,
                cur: 64,
                max: 128,
            },
            crate::image::Rlimit {
                resource: libc::RLIMIT_CORE,
                cur: 0,
                max: u64::MAX,
            },
        ],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    super::fs::restore_limits(&mut r, &p).unwrap();
    let res: Vec<u64> = r.calls.iter().map(|c| c.args[1]).collect();
    assert_eq!(res, [libc::RLIMIT_NOFILE as u64, libc::RLIMIT_CORE as u64]);
    let b = r.calls[1].arg_bytes(2).unwrap();
    assert_eq!((u64_at(b, 0), u64_at(b, 8)), (0, u64::MAX));
}

#[test]
fn a_thread_without_an_alternate_stack_gets_it_disabled_and_rseq_last() {
    let t = ThreadImage {
        tid: 50,
        robust_list: Some((0x5000, 24)),
        clear_child_tid: 0x6000,
        rseq: Some(crate::image::Rseq {
            addr: 0x7000,
            len: 32,
            sig: 0x5305_3053,
            flags: 0,
        }),
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    super::threads::thread_state(&mut r, &t).unwrap();
    assert_eq!(
        r.names(),
        ["set_robust_list", "sigaltstack", "set_tid_address", "rseq"]
    );
    let ss = r.calls[1].arg_bytes(0).unwrap();
    assert_eq!(
        i32::from_ne_bytes(ss[8..12].try_into().unwrap()),
        libc::SS_DISABLE
    );
    assert_eq!(r.calls[3].args[..4], [0x7000, 32, 0, 0x5305_3053]);
}

#[test]
fn registers_of_the_wrong_size_are_refused() {
    let t = ThreadImage {
        regs: vec![0; 100],
        ..Default::default()
    };
    assert!(matches!(
        super::threads::final_regs(&t),
        Err(StepError::BadRegs)
    ));
    let t = ThreadImage {
        regs: vec![0; crate::sys::ptrace::REGS_SIZE],
        ..Default::default()
    };
    assert_eq!(super::threads::final_regs(&t).unwrap().orig_rax, u64::MAX);
}

#[test]
fn a_step_error_keeps_its_source_and_the_message_names_the_step() {
    use std::error::Error;
    let sys = crate::sys::SysError::Io {
        context: "injected setsid in pid 5 (thread 5)".into(),
        source: std::io::Error::from_raw_os_error(libc::EPERM),
    };
    let e = super::RestoreError::Step {
        set: "s".into(),
        step: super::Step::Fs,
        source: Box::new(StepError::Sys(sys).at("session")),
    };
    let m = e.to_string();
    assert!(
        m.starts_with("set s: restore failed at step fs: session: injected setsid"),
        "{m}"
    );
    let src = e
        .source()
        .unwrap()
        .downcast_ref::<Box<StepError>>()
        .unwrap();
    assert_eq!(src.errno(), Some(libc::EPERM));
}
