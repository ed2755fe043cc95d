//! The signal and timer steps.

use super::*;

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
    crate::restore::signals::restore_sigactions(&mut r, &p).unwrap();
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
    assert_eq!(crate::restore::signals::siginfo_bit(&siginfo(1)), 1);
    assert_eq!(crate::restore::signals::siginfo_bit(&siginfo(64)), 1 << 63);
    assert_eq!(crate::restore::signals::siginfo_bit(&siginfo(0)), 0);
    assert_eq!(crate::restore::signals::siginfo_bit(&siginfo(65)), 0);
    assert_eq!(crate::restore::signals::siginfo_bit(&[1, 0]), 0);
}

#[test]
fn queued_siginfo_goes_to_the_thread_or_the_process() {
    let mut r = Recorder::new(50);
    let infos = vec![siginfo(libc::SIGUSR2), siginfo(libc::SIGKILL)];
    crate::restore::signals::queue_siginfo(&mut r, 51, &infos, false).unwrap();
    crate::restore::signals::queue_siginfo(&mut r, 51, &infos[..1], true).unwrap();
    assert_eq!(r.names(), ["rt_tgsigqueueinfo", "rt_sigqueueinfo"]);
    assert_eq!(r.calls[0].args[..3], [50, 51, libc::SIGUSR2 as u64]);
    assert_eq!(r.calls[0].arg_bytes(3), Some(infos[0].as_slice()));
    assert_eq!(r.calls[1].args[..2], [50, libc::SIGUSR2 as u64]);
}

#[test]
fn a_malformed_siginfo_is_refused_before_any_call() {
    let mut r = Recorder::new(50);
    let e = crate::restore::signals::queue_siginfo(&mut r, 50, &[vec![10, 0, 0, 0]], false)
        .unwrap_err();
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
    let v = crate::restore::signals::to_resend(&p, &threads);
    assert_eq!(
        v,
        [
            (Some(61), libc::SIGINT),
            (None, libc::SIGUSR1),
            (Some(60), libc::SIGUSR2)
        ]
    );
}

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
    crate::restore::timers::restore_posix_timers(&mut r, &p, &[(70, 0), (72, 0)]).unwrap();
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
    let e = crate::restore::timers::restore_posix_timers(&mut r, &p, &[(50, 0)]).unwrap_err();
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
    let e = crate::restore::timers::restore_posix_timers(&mut r, &p, &[]).unwrap_err();
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
    crate::restore::timers::restore_itimers(&mut r, &p).unwrap();
    let b = r.calls[0].arg_bytes(1).unwrap();
    let w: Vec<u64> = (0..4).map(|i| u64_at(b, 8 * i)).collect();
    assert_eq!(w, [1, 0, 2, 500_000]);
}
