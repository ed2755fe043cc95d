//! The fs, limits and thread steps, and the step error.

use super::*;

#[test]
fn session_plan_follows_the_dumped_session_and_group() {
    use crate::restore::fs::{session_plan, Session};
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
    crate::restore::fs::restore_limits(&mut r, &p).unwrap();
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
    crate::restore::threads::thread_state(&mut r, &t).unwrap();
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
        crate::restore::threads::final_regs(&t),
        Err(StepError::BadRegs)
    ));
    let t = ThreadImage {
        regs: vec![0; crate::sys::ptrace::REGS_SIZE],
        ..Default::default()
    };
    assert_eq!(
        crate::restore::threads::final_regs(&t).unwrap().orig_rax,
        u64::MAX
    );
}

#[test]
fn a_step_error_keeps_its_source_and_the_message_names_the_step() {
    use std::error::Error;
    let sys = crate::sys::SysError::Io {
        context: "injected setsid in pid 5 (thread 5)".into(),
        source: std::io::Error::from_raw_os_error(libc::EPERM),
    };
    let e = crate::restore::RestoreError::Step {
        set: "s".into(),
        step: crate::restore::Step::Fs,
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

#[test]
fn an_interrupted_syscall_is_rewound_in_the_image_and_handed_back_to_the_kernel_at_the_end() {
    use crate::sys::ptrace::Regs;
    let live = Regs {
        rax: (-514i64) as u64, // -ERESTARTNOHAND
        orig_rax: libc::SYS_pause as u64,
        rip: 0x1002,
        ..Regs::default()
    };
    let code = live.restart_code().unwrap();
    let stored = live.restart_adjusted();
    assert_eq!((stored.rax, stored.rip), (libc::SYS_pause as u64, 0x1000));
    assert_eq!(stored.before_restart(code), live);
    // Neither a syscall's own result nor a restart block is handed back.
    let done = Regs { rax: 3, ..live };
    assert_eq!(done.restart_code(), None);
    let block = Regs {
        rax: (-516i64) as u64,
        ..live
    };
    assert_eq!(block.restart_code(), None);
    assert_eq!(block.restart_adjusted().rax, (-(libc::EINTR as i64)) as u64);
}
