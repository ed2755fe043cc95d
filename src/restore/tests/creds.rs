//! The credentials step: order, arguments, and a failure mid-step.

use super::*;

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
    crate::restore::creds::creds_in_order(&mut r, &p, p.creds.cap_bnd, &mut || Ok(0b111 << 8))
        .unwrap();
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
