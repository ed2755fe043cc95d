//! The SysV IPC objects of a restore: which id and key it may take (the leftover rule), and
//! the injected `shmat` that attaches a segment at its address.

use std::collections::BTreeSet;

use super::*;
use crate::restore::share::sysv::{judge, Found, Verdict};
use crate::sys::sysvipc::Kind;

fn found(id: i32, key: i32, pids: &[i32], nattch: i64) -> Found {
    Found {
        id,
        key,
        pids: pids.to_vec(),
        nattch,
        who: format!("held by {pids:?}"),
    }
}

#[test]
fn a_free_id_and_key_are_taken_and_the_tree_s_own_leftover_is_replaced() {
    let tree: BTreeSet<i32> = [100, 101].into();
    assert_eq!(judge(Kind::Shm, 5, 0x2a, &[], &tree), Verdict::Free);
    // Another object at another index with another key does not matter.
    let other = [found(6, 0x2b, &[7], 1)];
    assert_eq!(judge(Kind::Shm, 5, 0x2a, &other, &tree), Verdict::Free);
    // Same id, same key, made or last used by a dumped process, attached by none.
    for pids in [[100, 7], [7, 101]] {
        let left = [found(5, 0x2a, &pids, 0)];
        assert_eq!(judge(Kind::Shm, 5, 0x2a, &left, &tree), Verdict::Leftover);
    }
    // A private object (key 0) left behind too.
    let left = [found(32773, 0, &[101], 0)];
    assert_eq!(judge(Kind::Msg, 32773, 0, &left, &tree), Verdict::Leftover);
}

#[test]
fn anything_else_at_the_id_or_the_key_is_refused_naming_it() {
    let tree: BTreeSet<i32> = [100].into();
    let taken = |v: Verdict| match v {
        Verdict::Taken(why) => why,
        v => panic!("not refused: {v:?}"),
    };
    // Still attached (the original tree runs, or someone attached the leftover).
    let why = taken(judge(
        Kind::Shm,
        5,
        0x2a,
        &[found(5, 0x2a, &[100], 1)],
        &tree,
    ));
    assert_eq!(
        why,
        "SysV shm id 5 (key 0x2a) is taken: id 5 (key 0x2a) is there, held by [100]"
    );
    // Somebody else's object at the id, with the same key or another.
    taken(judge(Kind::Sem, 5, 0x2a, &[found(5, 0x2a, &[7], 0)], &tree));
    taken(judge(
        Kind::Sem,
        5,
        0x2a,
        &[found(5, 0x2b, &[100], 0)],
        &tree,
    ));
    // The same index under another sequence number: the kernel would not give the id.
    let why = taken(judge(
        Kind::Msg,
        5,
        0,
        &[found(32768 + 5, 0, &[100], 0)],
        &tree,
    ));
    assert!(why.contains("id 32773 (key 0x0) is there"), "{why}");
    // The key held by an object at another id.
    let why = taken(judge(Kind::Msg, 5, 0x2a, &[found(9, 0x2a, &[7], 0)], &tree));
    assert_eq!(
        why,
        "SysV msg id 5 (key 0x2a) is taken: its key names id 9 there, held by [7]"
    );
}

fn sysv_vma(start: u64, end: u64, pgoff: u64, prot: i32, flags: &[&str]) -> Vma {
    let mut v = vma(start, end, VmaKind::SysvShm, flags);
    v.shared = true;
    v.pgoff = pgoff;
    v.prot = prot as u32;
    v.ino = 7;
    v.name = "/SYSV0000002a (deleted)".into();
    v
}

#[test]
fn a_segment_is_attached_whole_at_its_address_read_only_unless_it_may_be_written() {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let p = ProcessImage {
        pid: 10,
        vmas: vec![
            // One attachment split in two by mprotect: attached once.
            sysv_vma(0x10000, 0x11000, 0, rw, &["mw"]),
            sysv_vma(0x11000, 0x13000, 0x1000, libc::PROT_READ, &["mw"]),
            // A read-only attachment.
            sysv_vma(0x20000, 0x23000, 0, libc::PROT_READ, &[]),
        ],
        ..Default::default()
    };
    let mut r = Recorder::new(50);
    r.when("shmat", |a, _| a[1] as i64);
    let mut shared = crate::restore::share::Shared::default();
    let prot =
        crate::restore::memory::map_vmas(&mut r, &set_with(&[]), &p, &[], &mut shared).unwrap();
    assert_eq!(r.names(), ["shmat", "shmat"]);
    assert_eq!(r.calls[0].args[..3], [7, 0x10000, 0]);
    assert_eq!(r.calls[1].args[..3], [7, 0x20000, libc::SHM_RDONLY as u64]);
    // Each piece is left with the attachment's protection; `protect` sets its own.
    assert_eq!(
        prot,
        [
            Some(rw as u32),
            Some(rw as u32),
            Some(libc::PROT_READ as u32)
        ]
    );

    // Landing elsewhere, or failing, stops the step naming the VMA.
    let mut r = Recorder::new(50);
    r.returns("shmat", 0x50000);
    let e =
        crate::restore::memory::map_vmas(&mut r, &set_with(&[]), &p, &[], &mut shared).unwrap_err();
    assert!(e.to_string().contains("VMA 0x10000-0x11000"), "{e}");
    let mut r = Recorder::new(50);
    r.fail_nth(0, libc::EINVAL);
    let e =
        crate::restore::memory::map_vmas(&mut r, &set_with(&[]), &p, &[], &mut shared).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL));
}

#[test]
fn the_root_sets_values_sends_messages_in_order_and_touches_every_segment() {
    use crate::image::ipc::{IpcImage, IpcPerm, Message, MsgQueue, SemSet, ShmSegment};
    let perm = |id| IpcPerm {
        id,
        ..Default::default()
    };
    let mut set = set_with(&[]);
    set.tree.ipc = Some(IpcImage {
        shm: vec![ShmSegment {
            perm: perm(3),
            size: 4096,
            ..Default::default()
        }],
        sem: vec![SemSet {
            perm: perm(4),
            values: vec![3, 7],
        }],
        msg: vec![MsgQueue {
            perm: perm(5),
            qbytes: 100,
            messages: vec![
                Message {
                    mtype: 9,
                    data: b"ab".to_vec(),
                },
                Message {
                    mtype: 2,
                    data: b"c".to_vec(),
                },
            ],
        }],
    });
    let mut r = Recorder::new(50);
    r.returns("shmat", 0x4000_0000);
    crate::restore::share::sysv::claim(&mut r, &set).unwrap();
    assert_eq!(r.names(), ["semctl", "msgsnd", "msgsnd", "shmat", "shmdt"]);
    let c = &r.calls;
    assert_eq!(c[0].args[..3], [4, 0, libc::SETALL as u64]);
    let vals: Vec<u8> = [3u16, 7].iter().flat_map(|v| v.to_ne_bytes()).collect();
    assert_eq!(c[0].written_at(c[0].args[3]), Some(vals.as_slice()));
    for (call, (t, d)) in c[1..3].iter().zip([(9i64, &b"ab"[..]), (2, &b"c"[..])]) {
        assert_eq!(call.args[0], 5);
        assert_eq!(call.args[2], d.len() as u64);
        assert_eq!(call.args[3], libc::IPC_NOWAIT as u64);
        let mut want = t.to_ne_bytes().to_vec();
        want.extend_from_slice(d);
        assert_eq!(call.written_at(call.args[1]), Some(want.as_slice()));
    }
    assert_eq!(c[3].args[..3], [3, 0, libc::SHM_RDONLY as u64]);
    assert_eq!(c[4].args[0], 0x4000_0000);

    // A failing call stops the step with its errno.
    let mut r = Recorder::new(50);
    r.fail_nth(1, libc::EAGAIN);
    let e = crate::restore::share::sysv::claim(&mut r, &set).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EAGAIN));
    assert_eq!(r.names(), ["semctl", "msgsnd"]);
}
