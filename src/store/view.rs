//! `haul images show`: a serialisable view of one set, and its text rendering.

use crate::image::{ImageSet, PageRef, SetFigures, SetKind, VmaKind};
use serde::Serialize;
use std::fmt::Write;

/// The process part of [`SetView`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessView {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    pub exe: String,
    pub cwd: String,
    /// Command line, NUL separators shown as spaces.
    pub cmdline: String,
    pub threads: Vec<i32>,
    pub fds: usize,
    /// File locks held through those fds.
    pub file_locks: usize,
    /// POSIX timers (`timer_create`).
    pub posix_timers: usize,
}

/// One VMA with what the page table holds for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VmaView {
    pub start: u64,
    pub end: u64,
    /// `rwxp` / `rwxs` as in /proc/PID/maps.
    pub perms: String,
    pub kind: VmaKind,
    pub name: String,
    /// Pages the VMA spans.
    pub pages: u64,
    pub pages_stored: u64,
    pub pages_zero: u64,
    pub pages_lazy: u64,
}

/// Everything `haul images show SET [--json]` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SetView {
    pub id: String,
    pub job: String,
    pub kind: SetKind,
    pub created_us: u64,
    /// RFC 3339, UTC.
    pub created: String,
    pub parent: Option<String>,
    pub kernel: String,
    pub process: Option<ProcessView>,
    pub vmas: Vec<VmaView>,
    /// Page-table entries outside every VMA (a pre-dump has no VMA list: all of them).
    pub pages_outside_vmas: u64,
    pub figures: SetFigures,
    /// bytes_logical / bytes_stored.
    pub compression_ratio: f64,
}

/// Builds the view of a set.
pub fn set_view(set: &ImageSet) -> SetView {
    let mut vmas = Vec::new();
    let mut inside = 0u64;
    if let Some(p) = &set.process {
        for v in &p.vmas {
            let (mut stored, mut zero, mut lazy) = (0, 0, 0);
            for (_, r) in set.pages.range(v.start, v.end) {
                match r {
                    PageRef::Stored(_) => stored += 1,
                    PageRef::Zero => zero += 1,
                    PageRef::Lazy(_) => lazy += 1,
                }
            }
            inside += stored + zero + lazy;
            let perm = |bit: u32, c: char| if v.prot & bit != 0 { c } else { '-' };
            vmas.push(VmaView {
                start: v.start,
                end: v.end,
                perms: format!(
                    "{}{}{}{}",
                    perm(libc::PROT_READ as u32, 'r'),
                    perm(libc::PROT_WRITE as u32, 'w'),
                    perm(libc::PROT_EXEC as u32, 'x'),
                    if v.shared { 's' } else { 'p' }
                ),
                kind: v.kind.clone(),
                name: v.name.clone(),
                pages: v.pages(),
                pages_stored: stored,
                pages_zero: zero,
                pages_lazy: lazy,
            });
        }
    }
    let f = &set.figures;
    SetView {
        id: set.id.clone(),
        job: set.job.clone(),
        kind: set.kind,
        created_us: set.created_us,
        created: crate::util::rfc3339_us(set.created_us),
        parent: set.parent.clone(),
        kernel: set.kernel.clone(),
        process: set.process.as_ref().map(|p| ProcessView {
            pid: p.pid,
            ppid: p.ppid,
            comm: p.comm.clone(),
            exe: p.exe.clone(),
            cwd: p.cwd.clone(),
            cmdline: String::from_utf8_lossy(&p.cmdline)
                .trim_end_matches('\0')
                .replace('\0', " "),
            threads: p.threads.iter().map(|t| t.tid).collect(),
            fds: p.fds.len(),
            file_locks: p.fds.iter().map(|f| f.locks.len()).sum(),
            posix_timers: p.posix_timers.len(),
        }),
        vmas,
        // The VMAs listed are the root's: the other processes of a tree have page spaces
        // of their own (`haul images show` lists them), which are not "outside" its VMAs.
        pages_outside_vmas: match &set.process {
            Some(_) => (set.pages_of(0).count() as u64).saturating_sub(inside),
            None => set.pages.len() as u64,
        },
        figures: f.clone(),
        compression_ratio: if f.bytes_stored > 0 {
            f.bytes_logical as f64 / f.bytes_stored as f64
        } else {
            0.0
        },
    }
}

/// Text rendering of [`set_view`] for `haul images show`.
pub fn show_text(set: &ImageSet) -> String {
    use crate::util::human_bytes as hb;
    let v = set_view(set);
    let mut s = String::new();
    let _ = writeln!(s, "set      {}", v.id);
    let _ = writeln!(s, "job      {}", v.job);
    let _ = writeln!(s, "kind     {}", v.kind);
    let _ = writeln!(s, "created  {}", v.created);
    let _ = writeln!(s, "parent   {}", v.parent.as_deref().unwrap_or("-"));
    let _ = writeln!(s, "kernel   {}", v.kernel);
    if let Some(p) = &v.process {
        let _ = writeln!(s, "process  pid {} (ppid {}) {}", p.pid, p.ppid, p.comm);
        let _ = writeln!(s, "exe      {}", p.exe);
        let _ = writeln!(s, "cmdline  {}", p.cmdline);
        let _ = writeln!(s, "cwd      {}", p.cwd);
        let tids: Vec<String> = p.threads.iter().map(|t| t.to_string()).collect();
        let _ = writeln!(s, "threads  {} ({})", p.threads.len(), tids.join(" "));
        let _ = writeln!(
            s,
            "fds      {} ({} file locks, {} POSIX timers)",
            p.fds, p.file_locks, p.posix_timers
        );
    }
    let f = &v.figures;
    let _ = writeln!(
        s,
        "pages    {} ({} zero, {} lazy, {} new)",
        f.pages, f.pages_zero, f.pages_lazy, f.pages_new
    );
    let _ = writeln!(
        s,
        "bytes    logical {}, stored {} ({:.2}x), new {}",
        hb(f.bytes_logical),
        hb(f.bytes_stored),
        v.compression_ratio,
        hb(f.bytes_new)
    );
    if !v.vmas.is_empty() {
        let _ = writeln!(
            s,
            "\n{:<33} {:<4} {:>8} {:>8} {:>8} {:>8}  name",
            "range", "perm", "pages", "stored", "zero", "lazy"
        );
        for m in &v.vmas {
            let _ = writeln!(
                s,
                "{:016x}-{:016x} {:<4} {:>8} {:>8} {:>8} {:>8}  {}",
                m.start,
                m.end,
                m.perms,
                m.pages,
                m.pages_stored,
                m.pages_zero,
                m.pages_lazy,
                m.name
            );
        }
    }
    if v.pages_outside_vmas > 0 {
        let _ = writeln!(s, "pages outside the VMAs listed: {}", v.pages_outside_vmas);
    }
    s
}
