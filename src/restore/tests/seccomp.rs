//! The seccomp step: the shared chain installed in the main thread, each thread's own rest,
//! oldest first, with their flags and programs; strict mode; a failing install stops the step.

use super::*;
use crate::image::seccomp::{Filter, SeccompImage};
use crate::restore::seccomp::{install_own, install_shared};

fn f(n: u8, flags: u64) -> Filter {
    Filter {
        flags,
        program: vec![n; 16],
    }
}

/// Threads 10 (main), 11 and 12: 10 and 11 share filters A and B (TSYNC'ed), 12 has them and
/// C of its own.
fn process() -> ProcessImage {
    let mut img = SeccompImage::default();
    img.add_thread(10, vec![f(1, 0), f(2, 2)]);
    img.add_thread(11, vec![f(1, 0), f(2, 2)]);
    img.add_thread(12, vec![f(1, 0), f(2, 2), f(3, 0)]);
    ProcessImage {
        pid: 10,
        threads: [10, 11, 12]
            .map(|tid| ThreadImage {
                tid,
                ..Default::default()
            })
            .to_vec(),
        seccomp: Some(img),
        ..Default::default()
    }
}

/// (flags, program) of each seccomp call recorded.
fn installed(r: &Recorder) -> Vec<(u64, Vec<u8>)> {
    r.calls
        .iter()
        .map(|c| {
            assert_eq!(c.name(), "seccomp");
            assert_eq!(c.args[0], u64::from(libc::SECCOMP_SET_MODE_FILTER));
            let prog = c.arg_bytes(2).expect("sock_fprog written");
            let len = u16::from_ne_bytes([prog[0], prog[1]]) as usize;
            let at = u64_at(prog, 8);
            let insns = c.written_at(at).expect("program written").to_vec();
            assert_eq!(insns.len(), len * 8);
            let spec_allow = u64::from(libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW as u32);
            assert_eq!(
                c.args[1] & spec_allow,
                spec_allow,
                "speculation control kept"
            );
            (c.args[1] & !spec_allow, insns)
        })
        .collect()
}

#[test]
fn the_shared_chain_goes_to_the_main_thread_oldest_first_with_its_flags() {
    let p = process();
    let mut r = Recorder::new(10);
    install_shared(&mut r, &p).unwrap();
    assert_eq!(installed(&r), [(0, vec![1; 16]), (2, vec![2; 16])]);
    // Nothing more for the main thread or 11; 12 adds its own.
    let mut r = Recorder::new(10);
    install_own(&mut r, &p, 10).unwrap();
    install_own(&mut r, &p, 11).unwrap();
    assert!(r.calls.is_empty(), "{:?}", r.names());
    install_own(&mut r, &p, 12).unwrap();
    assert_eq!(installed(&r), [(0, vec![3; 16])]);
}

#[test]
fn a_thread_without_filters_makes_the_whole_chain_per_thread() {
    let mut p = process();
    p.threads.push(ThreadImage {
        tid: 13,
        ..Default::default()
    });
    let mut r = Recorder::new(10);
    install_shared(&mut r, &p).unwrap();
    assert!(r.calls.is_empty(), "{:?}", r.names());
    install_own(&mut r, &p, 10).unwrap();
    install_own(&mut r, &p, 13).unwrap();
    assert_eq!(installed(&r), [(0, vec![1; 16]), (2, vec![2; 16])]);
}

#[test]
fn strict_mode_is_set_by_its_own_call() {
    let mut img = SeccompImage::default();
    img.add_strict(11);
    let p = ProcessImage {
        pid: 10,
        threads: [10, 11]
            .map(|tid| ThreadImage {
                tid,
                ..Default::default()
            })
            .to_vec(),
        seccomp: Some(img),
        ..Default::default()
    };
    let mut r = Recorder::new(10);
    install_shared(&mut r, &p).unwrap();
    install_own(&mut r, &p, 10).unwrap();
    assert!(r.calls.is_empty());
    install_own(&mut r, &p, 11).unwrap();
    assert_eq!(r.names(), ["seccomp"]);
    assert_eq!(r.calls[0].args[0], u64::from(libc::SECCOMP_SET_MODE_STRICT));
}

#[test]
fn a_refused_filter_stops_the_step_with_its_errno() {
    let p = process();
    let mut r = Recorder::new(10);
    r.fail_nth(1, libc::EACCES);
    let e = install_shared(&mut r, &p).unwrap_err();
    assert_eq!(r.calls.len(), 2, "stopped at the failing call");
    match e {
        StepError::Sys(s) => assert_eq!(s.errno(), Some(libc::EACCES)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_process_without_seccomp_injects_nothing() {
    let p = ProcessImage {
        pid: 10,
        threads: vec![ThreadImage {
            tid: 10,
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut r = Recorder::new(10);
    install_shared(&mut r, &p).unwrap();
    install_own(&mut r, &p, 10).unwrap();
    assert!(r.calls.is_empty());
}
