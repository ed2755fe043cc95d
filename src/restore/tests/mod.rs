//! Unit tests of the restore steps against the recording fake (no root, no process): the
//! order and arguments of the injected calls, and how a failing call stops a step.

mod creds;
mod events;
mod files;
mod inet;
mod memory;
mod seccomp;
mod signals;
mod steps;
mod stored;
mod sysv;
mod tree;
mod tty;
mod unix;

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

pub(super) fn vma(start: u64, end: u64, kind: VmaKind, flags: &[&str]) -> Vma {
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
        ino: 0,
        shared_with: None,
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
        tree: Default::default(),
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
