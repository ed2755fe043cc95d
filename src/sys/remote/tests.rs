//! The typed calls against the recording fake: numbers, arguments and the kernel struct bytes
//! they write (no root, no process).

use super::fake::{Recorder, ARGS_AT, ARGS_LEN};
use super::*;

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes(b[i..i + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_ne_bytes(b[i..i + 8].try_into().unwrap())
}

#[test]
fn capset_writes_a_version_3_header_then_low_and_high_words() {
    let mut r = Recorder::new(7);
    let eff = 0x0000_0001_8000_0002;
    let prm = 0x0000_0003_0000_0004;
    let inh = 0x0000_0005_0000_0006;
    capset(&mut r, eff, prm, inh).unwrap();
    let c = &r.calls[0];
    assert_eq!(c.name(), "capset");
    assert_eq!(c.args[1], c.args[0] + 8, "data follows the 8-byte header");
    let b = c.arg_bytes(0).unwrap();
    assert_eq!(b.len(), 8 + 2 * 12);
    assert_eq!(u32_at(b, 0), 0x2008_0522, "_LINUX_CAPABILITY_VERSION_3");
    assert_eq!(u32_at(b, 4), 0, "pid 0: the calling thread");
    // {eff, prm, inh} of capabilities 0-31, then of 32-63.
    let words: Vec<u32> = (0..6).map(|i| u32_at(b, 8 + 4 * i)).collect();
    assert_eq!(words, [0x8000_0002, 4, 6, 1, 3, 5]);
}

#[test]
fn setgroups_passes_the_count_and_the_gids() {
    let mut r = Recorder::new(7);
    setgroups(&mut r, &[10, 20, 65534]).unwrap();
    let c = &r.calls[0];
    assert_eq!((c.name(), c.args[0]), ("setgroups", 3));
    let b = c.arg_bytes(1).unwrap();
    assert_eq!([u32_at(b, 0), u32_at(b, 4), u32_at(b, 8)], [10, 20, 65534]);
}

#[test]
fn prctl_mm_map_writes_the_104_byte_struct_pointing_at_the_auxv() {
    let mut r = Recorder::new(7);
    let map = crate::sys::process::PrctlMmMap {
        start_code: 0x1000,
        env_end: 0xe000,
        exe_fd: 9,
        ..Default::default()
    };
    let auxv: Vec<u8> = [6u64, 4096, 0, 0]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    prctl_mm_map(&mut r, &map, &[(6, 4096)]).unwrap();
    let c = &r.calls[0];
    assert_eq!(c.name(), "prctl");
    assert_eq!(c.args[0], libc::PR_SET_MM as u64);
    assert_eq!(c.args[1], libc::PR_SET_MM_MAP as u64);
    assert_eq!(c.args[3], 104, "sizeof(struct prctl_mm_map)");
    let b = c.arg_bytes(2).unwrap();
    assert_eq!(b.len(), 104);
    assert_eq!(u64_at(b, 0), 0x1000, "start_code");
    assert_eq!(u64_at(b, 80), 0xe000, "env_end");
    let auxv_at = u64_at(b, 88);
    assert_eq!(c.written_at(auxv_at), Some(auxv.as_slice()));
    assert_eq!(u32_at(b, 96), auxv.len() as u32, "auxv_size");
    assert_eq!(u32_at(b, 100), 9, "exe_fd");
}

#[test]
fn rt_sigaction_writes_the_kernels_struct_not_glibcs() {
    let mut r = Recorder::new(7);
    let a = SigAction {
        handler: 0x40_1000,
        flags: (libc::SA_SIGINFO | libc::SA_RESTART) as u64,
        restorer: 0x40_2000,
        mask: 1 << 9,
    };
    rt_sigaction(&mut r, libc::SIGUSR1, &a).unwrap();
    let c = &r.calls[0];
    assert_eq!(c.name(), "rt_sigaction");
    assert_eq!(c.args[0], libc::SIGUSR1 as u64);
    assert_eq!(
        (c.args[2], c.args[3]),
        (0, 8),
        "no old action; 8-byte sigset"
    );
    let b = c.arg_bytes(1).unwrap();
    assert_eq!(b.len(), 32);
    assert_eq!(
        [u64_at(b, 0), u64_at(b, 8), u64_at(b, 16), u64_at(b, 24)],
        [a.handler, a.flags, a.restorer, a.mask]
    );
}

#[test]
fn sigaltstack_drops_ss_onstack_and_keeps_ss_disable_alone() {
    let b = stack_bytes(0x7000, libc::SS_ONSTACK, 8192);
    assert_eq!(b.len(), 24);
    assert_eq!(u64_at(&b, 0), 0x7000);
    assert_eq!(u32_at(&b, 8), 0, "SS_ONSTACK is a state, not a flag");
    assert_eq!(u64_at(&b, 16), 8192);
    let b = stack_bytes(0, libc::SS_DISABLE | libc::SS_ONSTACK, 0);
    assert_eq!(u32_at(&b, 8) as i32, libc::SS_DISABLE);
    let mut r = Recorder::new(7);
    sigaltstack(&mut r, 0x7000, 0, 8192).unwrap();
    assert_eq!(r.calls[0].name(), "sigaltstack");
    assert_eq!(r.calls[0].args[1], 0, "no old stack asked");
}

#[test]
fn timer_create_writes_the_sigevent_and_presets_the_id() {
    let mut r = Recorder::new(7);
    // The kernel (under PR_TIMER_CREATE_RESTORE_IDS) keeps the id it was given.
    r.when("timer_create", |_, _| 0);
    let ev = SigEvent {
        value: 0xabcd,
        signo: libc::SIGALRM,
        notify: libc::SIGEV_THREAD_ID,
        tid: 4242,
    };
    let id = timer_create(&mut r, libc::CLOCK_MONOTONIC, &ev, 3).unwrap();
    assert_eq!(id, 3);
    let c = &r.calls[0];
    assert_eq!(c.args[0], libc::CLOCK_MONOTONIC as u64);
    let b = c.arg_bytes(1).unwrap();
    assert_eq!(b.len(), 64);
    assert_eq!(u64_at(b, 0), 0xabcd, "sigev_value");
    assert_eq!(u32_at(b, 8) as i32, libc::SIGALRM, "sigev_signo");
    assert_eq!(u32_at(b, 12) as i32, libc::SIGEV_THREAD_ID, "sigev_notify");
    assert_eq!(u32_at(b, 16), 4242, "sigev_notify_thread_id");
    assert_eq!(c.args[2], c.args[1] + 64, "the id right after the sigevent");
    assert_eq!(c.arg_bytes(2), Some(&3i32.to_ne_bytes()[..]));
}

#[test]
fn timer_create_returns_the_id_the_kernel_wrote() {
    let mut r = Recorder::new(7);
    r.when("timer_create", |a, mem| {
        mem.poke(a[2], &9i32.to_ne_bytes());
        0
    });
    let id = timer_create(&mut r, 0, &SigEvent::default(), 3).unwrap();
    assert_eq!(id, 9);
}

#[test]
fn timer_create_restore_ids_is_prctl_77_on_then_off() {
    let mut r = Recorder::new(7);
    timer_create_restore_ids(&mut r, true).unwrap();
    timer_create_restore_ids(&mut r, false).unwrap();
    assert_eq!(r.prctls(), [(77, 1), (77, 0)]);
}

#[test]
fn interval_and_value_splits_seconds_and_fractions() {
    let b = interval_and_value(1_500_000, 2_000_001, 1_000_000);
    let w: Vec<u64> = (0..4).map(|i| u64_at(&b, 8 * i)).collect();
    assert_eq!(w, [1, 500_000, 2, 1]);
    let b = interval_and_value(0, 3_000_000_007, 1_000_000_000);
    let w: Vec<u64> = (0..4).map(|i| u64_at(&b, 8 * i)).collect();
    assert_eq!(w, [0, 0, 3, 7]);
}

#[test]
fn setitimer_and_timer_settime_take_micro_and_nanoseconds() {
    let mut r = Recorder::new(7);
    setitimer(&mut r, libc::ITIMER_REAL as u32, 0, 1_000_001).unwrap();
    timer_settime(&mut r, 5, 1, 1_000_000_002).unwrap();
    let it = r.calls[0].arg_bytes(1).unwrap();
    assert_eq!((u64_at(it, 16), u64_at(it, 24)), (1, 1));
    let c = &r.calls[1];
    assert_eq!((c.name(), c.args[0], c.args[1]), ("timer_settime", 5, 0));
    let ts = c.arg_bytes(2).unwrap();
    assert_eq!([u64_at(ts, 8), u64_at(ts, 16), u64_at(ts, 24)], [1, 1, 2]);
}

#[test]
fn a_failed_call_names_it_and_keeps_the_errno() {
    let mut r = Recorder::new(31);
    r.fail_nth(0, libc::EPERM);
    let e = setresuid(&mut r, [1000, 1000, 1000]).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EPERM));
    let m = e.to_string();
    assert!(
        m.contains("injected setresuid in pid 31 (thread 31)"),
        "{m}"
    );
}

#[test]
fn arguments_that_do_not_fit_the_area_are_refused_before_any_call() {
    let mut r = Recorder::new(7);
    let big = vec![1u8; ARGS_LEN as usize + 1];
    assert!(write(&mut r, 3, &big, "write").is_err());
    let ok = vec![1u8; ARGS_LEN as usize];
    assert_eq!(put(&mut r, &ok).unwrap(), ARGS_AT);
    let mut r = Recorder::new(7);
    r.without_args_area();
    assert!(chdir(&mut r, "/").is_err());
    assert!(r.calls.is_empty());
}

#[test]
fn names_with_a_nul_byte_are_refused() {
    assert!(cstr("a\0b").is_err());
    assert_eq!(cstr("ab").unwrap(), b"ab\0");
    let mut r = Recorder::new(7);
    assert!(open(&mut r, "/tmp/x\0y", 0).is_err());
    assert!(r.calls.is_empty());
}

#[test]
fn set_name_keeps_15_bytes_and_a_nul() {
    let mut r = Recorder::new(7);
    set_name(&mut r, "a-very-long-thread-name").unwrap();
    let c = &r.calls[0];
    assert_eq!((c.args[0], c.name()), (libc::PR_SET_NAME as u64, "prctl"));
    let b = c.arg_bytes(1).unwrap();
    assert_eq!(&b[..15], b"a-very-long-thr");
    assert_eq!(b[15], 0);
}

#[test]
fn set_fs_id_reads_the_id_back_with_minus_one() {
    let mut r = Recorder::new(7);
    r.when("setfsuid", |a, _| {
        if a[0] == u64::from(u32::MAX) {
            1000
        } else {
            0
        }
    });
    assert_eq!(set_fs_id(&mut r, FsId::Uid, 1000).unwrap(), 1000);
    let args: Vec<u64> = r.calls.iter().map(|c| c.args[0]).collect();
    assert_eq!(args, [1000, u64::from(u32::MAX)]);
}

#[test]
fn cpu_mask_sets_one_bit_per_cpu_in_whole_words() {
    assert!(cpu_mask(&[]).is_empty());
    let m = cpu_mask(&[0, 3, 65]);
    assert_eq!(m.len(), 16);
    assert_eq!(m[0], 0b1001);
    assert_eq!(m[8], 0b10);
}

#[test]
fn prlimit64_writes_cur_then_max_for_the_process_itself() {
    let mut r = Recorder::new(7);
    prlimit64(&mut r, libc::RLIMIT_NOFILE, 1024, u64::MAX).unwrap();
    let c = &r.calls[0];
    assert_eq!(
        (c.args[0], c.args[1], c.args[3]),
        (0, libc::RLIMIT_NOFILE as u64, 0)
    );
    let b = c.arg_bytes(2).unwrap();
    assert_eq!((u64_at(b, 0), u64_at(b, 8)), (1024, u64::MAX));
}

#[test]
fn clone3_thread_asks_for_the_tid_only_when_given() {
    let mut r = Recorder::new(7);
    r.returns("clone3", 4243);
    assert_eq!(
        clone3_thread(&mut r, 0x9000, 4096, Some(4243), "t").unwrap(),
        4243
    );
    let c = &r.calls[0];
    assert_eq!(c.args[1], 88, "clone_args version 2");
    let b = c.arg_bytes(0).unwrap();
    assert_eq!(u64_at(b, 0), THREAD_FLAGS);
    assert_ne!(THREAD_FLAGS & libc::CLONE_PTRACE as u64, 0);
    assert_eq!(
        (u64_at(b, 40), u64_at(b, 48)),
        (0x9000, 4096),
        "stack, stack_size"
    );
    let set_tid = u64_at(b, 64);
    assert_eq!(u64_at(b, 72), 1, "set_tid_size");
    assert_eq!(c.written_at(set_tid), Some(&4243i32.to_ne_bytes()[..]));
    let mut r = Recorder::new(7);
    clone3_thread(&mut r, 0x9000, 4096, None, "t").unwrap();
    let b = r.calls[0].arg_bytes(0).unwrap().to_vec();
    assert_eq!((u64_at(&b, 64), u64_at(&b, 72)), (0, 0));
}

#[test]
fn pipe2_reads_both_ends_the_kernel_wrote() {
    let mut r = Recorder::new(7);
    r.when("pipe2", |a, mem| {
        mem.poke(a[0], &5i32.to_ne_bytes());
        mem.poke(a[0] + 4, &6i32.to_ne_bytes());
        0
    });
    assert_eq!(pipe2(&mut r).unwrap(), (5, 6));
}

#[test]
fn flock_bytes_follow_struct_flock() {
    let b = flock_bytes(true, 100, 50);
    assert_eq!(b.len(), 32);
    assert_eq!(i16::from_ne_bytes([b[0], b[1]]), libc::F_WRLCK as i16);
    assert_eq!(i16::from_ne_bytes([b[2], b[3]]), libc::SEEK_SET as i16);
    assert_eq!((u64_at(&b, 8), u64_at(&b, 16)), (100, 50));
    assert_eq!(u32_at(&b, 24), 0, "l_pid 0, as OFD locks need");
}

#[test]
fn take_uffd_reports_a_refused_userfaultfd_with_its_errno_and_closes_nothing() {
    let mut r = Recorder::new(7);
    r.fail_nth(0, libc::EPERM);
    let e = take_uffd(&mut r, 0x80800).unwrap_err();
    assert_eq!(e.refused_errno(), Some(libc::EPERM));
    assert!(e.to_string().contains("userfaultfd(0x80800)"), "{e}");
    assert_eq!(r.names(), ["userfaultfd"]);
}

#[test]
fn take_uffd_closes_the_targets_copy_even_when_it_cannot_be_taken() {
    // No process has this pid: pidfd_open fails, and the target's uffd is still closed.
    let mut r = Recorder::new(i32::MAX - 3);
    r.returns("userfaultfd", 12);
    let e = take_uffd(&mut r, 0).unwrap_err();
    assert_eq!(e.refused_errno(), None, "{e}");
    assert_eq!(r.names(), ["userfaultfd", "close"]);
    assert_eq!(r.calls[1].args[0], 12);
}
