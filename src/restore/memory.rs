//! The memory steps: the scratch area at a hole of both layouts, the old mappings unmapped,
//! every VMA mapped at its address, the pages filled, and the final protection, advice, locks
//! and names of each VMA.

use super::error::{At, StepError, StepResult};
use super::layout::{SCRATCH_LEN, SYSCALL_CODE};
use super::share::{Holder, MemShareError, MemTable};
use super::PageSource;
use crate::image::{ImageSet, PageRef, ProcessImage, Vma, VmaKind, PAGE_SIZE};
use crate::sys::remote::{self, Inject};

/// The lowest page-aligned address at or above 64 KiB with `len` bytes free of every range.
pub(super) fn find_hole(taken: &mut [(u64, u64)], len: u64) -> Option<u64> {
    taken.sort_unstable();
    let mut cand: u64 = 0x10000;
    for &(s, e) in taken.iter() {
        if cand + len <= s {
            return Some(cand);
        }
        cand = cand.max(e);
    }
    (cand.checked_add(len)? < 0x7fff_ffff_0000).then_some(cand)
}

/// Maps the scratch area (read, write, exec) at a hole of both the current layout `now` and
/// the image's, and writes the `syscall` instruction at its start. Returns its address.
pub(super) fn map_scratch(
    rs: &mut dyn Inject,
    now: &[(u64, u64)],
    p: &ProcessImage,
) -> StepResult<u64> {
    let mut taken = now.to_vec();
    taken.extend(p.vmas.iter().map(|v| (v.start, v.end)));
    let addr = find_hole(&mut taken, SCRATCH_LEN).ok_or(StepError::NoHole)?;
    let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u32;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
    let got = remote::mmap(rs, addr, SCRATCH_LEN, prot, flags, None, 0)?;
    if got != addr {
        return Err(StepError::ScratchMoved { want: addr, got });
    }
    rs.write_mem(addr, &SYSCALL_CODE)?;
    Ok(addr)
}

/// Unmaps every mapping of `now` (`(start, end, path)`) but the scratch area and the kernel's
/// own (`[vdso]` and its unit, `[vsyscall]`).
pub(super) fn unmap_old(
    rs: &mut dyn Inject,
    now: &[(u64, u64, String)],
    scratch: u64,
) -> StepResult {
    let keep = ["[vsyscall]", "[vdso]", "[vvar]", "[vvar_vclock]"];
    for (start, end, path) in now {
        if *start == scratch || keep.contains(&path.as_str()) {
            continue;
        }
        remote::munmap(rs, *start, end - start).at(|| format!("unmapping {path}"))?;
    }
    Ok(())
}

/// Whether the restore writes pages into this VMA (then it is mapped writable until filled).
fn filled(v: &Vma) -> bool {
    match v.kind {
        VmaKind::Anon => true,
        // A later mapping of a shared object: its first holder's pages fill the object.
        VmaKind::SharedAnon | VmaKind::DeletedShm => v.shared_with.is_none(),
        VmaKind::File | VmaKind::Memfd => !v.shared,
        _ => false,
    }
}

/// The `mmap(2)` protection and flags of `v`: writable for the fill only where the fill
/// writes (not in a VMA without pages, nor in one the lazy daemon fills: UFFDIO_COPY needs no
/// write permission). Each VMA mapped with its own protection saves an mprotect afterwards.
pub(super) fn map_prot_flags(v: &Vma, set: &ImageSet, lazy: &[(u64, u64)]) -> (u32, u64) {
    let fills = filled(v)
        && !lazy.iter().any(|&(s, _)| s == v.start)
        && set.pages.range(v.start, v.end).next().is_some();
    let prot = if fills {
        v.prot | (libc::PROT_READ | libc::PROT_WRITE) as u32
    } else {
        v.prot
    };
    let mut flags = libc::MAP_FIXED as u64;
    flags |= if v.shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    } as u64;
    if v.has_flag("gd") {
        flags |= libc::MAP_GROWSDOWN as u64;
    }
    if v.has_flag("nr") {
        flags |= libc::MAP_NORESERVE as u64;
    }
    // A later mapping of shared anonymous memory maps its first holder's object, a file.
    if v.kind == VmaKind::Anon || (v.kind == VmaKind::SharedAnon && v.shared_with.is_none()) {
        flags |= libc::MAP_ANONYMOUS as u64;
    }
    (prot, flags)
}

/// Maps every VMA at its address; returns, per VMA, the protection it was mapped with (None for
/// the kernel's own mappings, which are not mapped here).
pub(super) fn map_vmas(
    rs: &mut dyn Inject,
    set: &ImageSet,
    p: &ProcessImage,
    lazy: &[(u64, u64)],
    shared: &mut super::share::Shared,
) -> StepResult<Vec<Option<u32>>> {
    let me = rs.pid();
    let mut out = Vec::with_capacity(p.vmas.len());
    // The protection of the SysV segment attached last, which its later pieces have.
    let mut attached = 0;
    for v in &p.vmas {
        let (prot, flags) = map_prot_flags(v, set, lazy);
        let what = || format!("VMA {:#x}-{:#x} {}", v.start, v.end, v.name);
        // A shared mapping that may be made writable (VmFlags `mw`, from a file opened for
        // writing) needs the file opened so again, even while it is read-only: else a later
        // mprotect(PROT_WRITE) fails with EACCES.
        let may_write = v.prot & libc::PROT_WRITE as u32 != 0 || v.has_flag("mw");
        let mode = if v.shared && may_write {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        let holder = |shift| Holder {
            pid: me,
            start: v.start,
            end: v.end,
            shift,
        };
        match v.kind {
            VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall => {
                out.push(None);
                continue;
            }
            VmaKind::SharedAnon | VmaKind::DeletedShm if v.shared_with.is_some() => {
                map_shared_again(rs, v, prot, flags, mode, &shared.mem).at(what)?;
            }
            VmaKind::DeletedShm => {
                let h = holder(0);
                make_deleted_shm(rs, v, prot, flags).at(what)?;
                shared.mem.add(p.pid, v.start, h);
            }
            VmaKind::Anon | VmaKind::SharedAnon => {
                let h = holder(v.pgoff);
                remote::mmap(rs, v.start, v.len(), prot, flags, None, 0).at(what)?;
                if v.kind == VmaKind::SharedAnon {
                    shared.mem.add(p.pid, v.start, h);
                }
            }
            VmaKind::SysvShm => {
                // The segment (made before any process) is attached whole at the start of
                // the attachment; its later pieces (split by mprotect) are in it already.
                if v.pgoff == 0 {
                    attached = attach_sysv(rs, v).at(what)?;
                }
                out.push(Some(attached));
                continue;
            }
            // The set's one file, made by the first process that needs it.
            VmaKind::Memfd => super::stored::map(rs, v, prot, flags, shared).at(what)?,
            VmaKind::File => {
                let fd = remote::open(rs, &v.name, mode | libc::O_CLOEXEC).at(what)?;
                let r = remote::mmap(rs, v.start, v.len(), prot, flags, Some(fd), v.pgoff);
                let _ = remote::close(rs, fd);
                r.at(what)?;
            }
        }
        out.push(Some(prot));
    }
    Ok(out)
}

/// Attaches SysV segment `v.ino` at `v.start` by an injected `shmat`: read-only unless the
/// mapping may be written (VmFlags `mw`), executable if it is. Returns the protection the
/// kernel gave it.
fn attach_sysv(rs: &mut dyn Inject, v: &Vma) -> StepResult<u32> {
    let mut flags = 0;
    let mut prot = libc::PROT_READ as u32;
    if v.has_flag("mw") {
        prot |= libc::PROT_WRITE as u32;
    } else {
        flags |= libc::SHM_RDONLY;
    }
    if v.prot & libc::PROT_EXEC as u32 != 0 {
        flags |= libc::SHM_EXEC;
        prot |= libc::PROT_EXEC as u32;
    }
    let got = remote::shmat(rs, v.ino as i32, v.start, flags)?;
    if got != v.start {
        return Err(StepError::Moved {
            from: v.ino,
            want: v.start,
            got,
        });
    }
    Ok(prot)
}

/// Maps `v`, a later mapping of a shared memory object, from the object its first holder
/// (restored earlier) maps: opened through `/proc/PID/map_files/` of that process (the target
/// still has haul's credentials), mapped at `v`'s own offset into it, closed.
fn map_shared_again(
    rs: &mut dyn Inject,
    v: &Vma,
    prot: u32,
    flags: u64,
    mode: i32,
    mem: &MemTable,
) -> StepResult {
    let from = v.shared_with.ok_or(MemShareError::NoHolder {
        start: v.start,
        end: v.end,
        from_pid: 0,
        from_start: 0,
    })?;
    let h = mem.get(from).ok_or(MemShareError::NoHolder {
        start: v.start,
        end: v.end,
        from_pid: from.pid,
        from_start: from.start,
    })?;
    let off = v
        .pgoff
        .checked_sub(h.shift)
        .ok_or(MemShareError::BeforeHolder {
            start: v.start,
            end: v.end,
            pgoff: v.pgoff,
            shift: h.shift,
        })?;
    let fd = remote::open(rs, &h.map_files(), mode | libc::O_CLOEXEC)?;
    let r = remote::mmap(rs, v.start, v.len(), prot, flags, Some(fd), off);
    let _ = remote::close(rs, fd);
    r?;
    Ok(())
}

/// Makes a deleted tmpfs file again for its first holder: created at its path (never over
/// something there: `O_EXCL`), sized as it was, mapped, closed and unlinked at once (later
/// processes map it through this one's `map_files/`; the fill writes its pages). Unlinked
/// whatever fails after it was created, so nothing is left behind.
fn make_deleted_shm(rs: &mut dyn Inject, v: &Vma, prot: u32, flags: u64) -> StepResult {
    let create = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
    let fd = remote::open_mode(rs, &v.name, create, 0o600)?;
    let size = v.file.as_ref().map_or(v.pgoff + v.len(), |f| f.size);
    let r = remote::ftruncate(rs, fd, size)
        .and_then(|()| remote::mmap(rs, v.start, v.len(), prot, flags, Some(fd), v.pgoff));
    let _ = remote::close(rs, fd);
    let gone = remote::unlink(rs, &v.name);
    r?;
    gone?;
    Ok(())
}

/// The final state of each VMA mapped here: its protection (where it was mapped writable for
/// the fill), its advice and locks, and its name.
pub(super) fn protect(rs: &mut dyn Inject, p: &ProcessImage, temp: &[Option<u32>]) -> StepResult {
    for (v, tmp) in p.vmas.iter().zip(temp) {
        if let Some(tmp) = tmp {
            if *tmp != v.prot {
                remote::mprotect(rs, v.start, v.len(), v.prot)?;
            }
            madvise_flags(rs, v)?;
            name_anon(rs, v)?;
        }
    }
    Ok(())
}

/// Names anonymous memory as it was (`[anon:NAME]`, `[anon_shmem:NAME]` in maps), with
/// `prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME)`: allocators and runtimes name their arenas so.
fn name_anon(rs: &mut dyn Inject, v: &Vma) -> StepResult {
    let name = ["[anon:", "[anon_shmem:"]
        .iter()
        .find_map(|p| v.name.strip_prefix(p)?.strip_suffix(']'));
    if let Some(name) = name {
        remote::set_vma_anon_name(rs, v.start, v.len(), name)?;
    }
    Ok(())
}

/// The VmFlags that madvise can set and that matter to a restored process, with their advice:
/// not copied on fork, not dumped, huge pages wanted or not, mergeable (KSM), wiped on fork,
/// read ahead sequentially or not at all.
pub(super) const ADVICE: [(&str, i32); 8] = [
    ("dc", libc::MADV_DONTFORK),
    ("dd", libc::MADV_DONTDUMP),
    ("hg", libc::MADV_HUGEPAGE),
    ("nh", libc::MADV_NOHUGEPAGE),
    ("mg", libc::MADV_MERGEABLE),
    ("wf", libc::MADV_WIPEONFORK),
    ("sr", libc::MADV_SEQUENTIAL),
    ("rr", libc::MADV_RANDOM),
];

/// Applies the [`ADVICE`] flags of `v`, and its lock in memory (`lo`, or `lf` for locked on
/// fault).
pub(super) fn madvise_flags(rs: &mut dyn Inject, v: &Vma) -> StepResult {
    for (flag, advice) in ADVICE {
        if v.has_flag(flag) {
            remote::madvise(rs, v.start, v.len(), advice).at(|| format!("VmFlags {flag}"))?;
        }
    }
    if v.has_flag("lo") {
        remote::mlock2(rs, v.start, v.len(), v.has_flag("lf"))?;
    }
    Ok(())
}

/// The set with only the pages outside `lazy` (sorted, disjoint ranges of `p`'s addresses):
/// what a lazy restore still fills itself; `set` holds `p`'s pages under the keys `base + addr`
/// (and so does the result). Built from the other VMAs' entries only, so its cost does not
/// grow with the lazy memory.
pub(super) fn eager_part(
    set: &ImageSet,
    base: u64,
    p: &ProcessImage,
    lazy: &[(u64, u64)],
) -> ImageSet {
    let mut pages = crate::image::PageTable::new();
    for v in &p.vmas {
        if lazy.iter().any(|&(s, _)| s == v.start) {
            continue;
        }
        // The space's keys end at the next space's (the vsyscall page lies beyond them).
        let end = base
            .saturating_add(v.end)
            .min(base.saturating_add(1 << crate::image::SPACE_SHIFT));
        for (a, r) in set.pages.range(base.saturating_add(v.start).min(end), end) {
            pages.insert(a, r);
        }
    }
    set.with_only_pages(pages)
}

/// The pages of page space `space` of `set` as a set of their own: under their page keys
/// (`keyed`: what a page source reads, since a page server checks keys against the set), or
/// at the process's own addresses (what map, protect, verify and a lazy restore look at). A
/// set with no keys beyond space 0 is its own view in both senses (space 0 keys are
/// addresses), and is given back as it is.
pub(super) fn space_view(
    set: &ImageSet,
    space: u16,
    keyed: bool,
) -> std::borrow::Cow<'_, ImageSet> {
    // (Keys beyond space 0 are other processes', or stored files' and SysV segments'.)
    if set
        .pages
        .range(1 << crate::image::SPACE_SHIFT, u64::MAX)
        .next()
        .is_none()
    {
        return std::borrow::Cow::Borrowed(set);
    }
    let pages = if keyed {
        let (lo, hi) = crate::image::space_bounds(space);
        set.pages.range(lo, hi).collect()
    } else {
        set.pages_of(space).collect()
    };
    std::borrow::Cow::Owned(set.with_only_pages(pages))
}

/// The private anonymous memory of a process restored eagerly, registered (missing pages) with
/// a userfaultfd the process made, so that [`fill`] places its pages with `UFFDIO_COPY`: the
/// kernel allocates each page and copies into it, where `process_vm_writev` faults a zeroed
/// page in first and then copies into it (1 GiB on two threads here: 190–200 ms against
/// 275–290 ms). Nothing can fault there meanwhile: the process is stopped under haul, whose
/// injected syscalls use the scratch area. [`UffdFill::finish`] unregisters it all before
/// the next step; dropped, the fd's release does the same.
pub(super) struct UffdFill {
    uffd: userfaultfd::Uffd,
    /// Sorted, disjoint.
    ranges: Vec<(u64, u64)>,
    /// Runs `UFFDIO_COPY` did not place (address, bytes), written after the unregistration
    /// with `process_vm_writev` (which cannot fault pages in while a range is registered).
    left: std::sync::Mutex<Vec<(u64, Vec<u8>)>>,
}

impl UffdFill {
    /// Registers the private anonymous VMAs of `p` that hold pages of `set` (their own
    /// addresses), through a userfaultfd made by the process (`rs`). `None`, and the fill
    /// writes every page with `process_vm_writev` as before, when there is nothing to register,
    /// when transparent huge pages are on for all memory (a faulted-in page may then be a huge
    /// one, as in the dumped process, where `UFFDIO_COPY` makes small pages), or when the
    /// kernel refuses (the reason is logged).
    pub(super) fn start(rs: &mut dyn Inject, set: &ImageSet, p: &ProcessImage) -> Option<UffdFill> {
        let ranges = super::lazy_ranges(set, p);
        if ranges.is_empty() || crate::util::thp_always() {
            return None;
        }
        let made = (|| -> Result<userfaultfd::Uffd, StepError> {
            let t = remote::take_uffd(rs, libc::O_CLOEXEC as u64)?;
            let uffd = crate::sys::uffd::Uffd::from_owned(t.uffd);
            uffd.api(0)?;
            for &(start, end) in &ranges {
                uffd.register(
                    start,
                    end - start,
                    crate::sys::uffd::UFFDIO_REGISTER_MODE_MISSING,
                )?;
            }
            Ok(uffd.into_handler())
        })();
        match made {
            Ok(uffd) => Some(UffdFill {
                uffd,
                ranges,
                left: Default::default(),
            }),
            Err(e) => {
                tracing::debug!(pid = p.pid, "filling with process_vm_writev only: {e}");
                None
            }
        }
    }

    /// Whether `addr` is in a registered range, and where that stops being so (the end of its
    /// range, or the start of the next one).
    fn at(&self, addr: u64) -> (bool, u64) {
        let i = self.ranges.partition_point(|&(_, end)| end <= addr);
        match self.ranges.get(i) {
            Some(&(start, end)) if start <= addr => (true, end),
            Some(&(start, _)) => (false, start),
            None => (false, u64::MAX),
        }
    }

    /// Places `bytes` at `addr` (inside a registered range); what the kernel does not place is
    /// kept for [`UffdFill::finish`].
    fn copy(&self, addr: u64, bytes: &[u8]) {
        use crate::sys::uffd_restore::{copy_partial, CopyResult};
        let mut done = 0;
        // A partial copy with EAGAIN (the layout changing under it) is retried a few times.
        for _ in 0..4 {
            match copy_partial(&self.uffd, addr + done as u64, &bytes[done..]) {
                CopyResult::Done => return,
                CopyResult::Partial { copied, errno } => {
                    done += copied as usize;
                    if errno != libc::EAGAIN {
                        break;
                    }
                }
            }
        }
        // Never dropped: a poisoned lock (a panic elsewhere) still holds what was kept.
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        left.push((addr + done as u64, bytes[done..].to_vec()));
    }

    /// Unregisters every range, then writes what `UFFDIO_COPY` left with `process_vm_writev`.
    fn finish(self, pid: i32) -> StepResult {
        for &(start, end) in &self.ranges {
            self.uffd
                .unregister(start as *mut libc::c_void, (end - start) as usize)
                .map_err(|e| StepError::UffdFill {
                    at: start,
                    source: std::io::Error::from_raw_os_error(
                        crate::sys::uffd_restore::crate_errno(&e).unwrap_or(libc::EIO),
                    ),
                })?;
        }
        drop(self.uffd);
        let left = self.left.into_inner().unwrap_or_else(|e| e.into_inner());
        for (addr, bytes) in left {
            let range = crate::sys::mem::RemoteRange {
                addr,
                len: bytes.len(),
            };
            write_ranges(pid, &bytes, &[range])?;
        }
        Ok(())
    }
}

/// Writes every stored page of the set into the process: each batch the source decodes goes in
/// on the thread that decoded it (the store decodes on every core, so reading, checking and
/// writing share them), with `UFFDIO_COPY` where `uffd` registered the memory, else with one
/// `process_vm_writev` of its runs of contiguous pages. Zero pages of private file mappings
/// are written too (the file's content is not what the process had). The set's page keys are
/// `base` + the address (a process's page space, [`space_view`] with `keyed`). Returns the
/// number of pages written.
pub(super) fn fill(
    pid: i32,
    set: &ImageSet,
    base: u64,
    p: &ProcessImage,
    source: &dyn PageSource,
    uffd: Option<UffdFill>,
) -> StepResult<u64> {
    use crate::sys::mem::{RemoteRange, IOV_MAX};
    use std::sync::atomic::{AtomicU64, Ordering};
    let written = AtomicU64::new(0);
    let write_batch = |keys: &[u64], bytes: &[u8]| -> StepResult {
        let mut ranges: Vec<RemoteRange> = Vec::with_capacity(keys.len().min(IOV_MAX));
        // Pages of `bytes` from `from` on not written yet; the runs of `ranges` hold them.
        let mut from = 0;
        let mut i = 0;
        while i < keys.len() {
            // The run of contiguous pages from page i, all inside a registered range or all
            // outside (`process_vm_writev` cannot fault a page in inside one).
            let addr = keys[i] - base;
            let (registered, limit) = uffd.as_ref().map_or((false, u64::MAX), |u| u.at(addr));
            let mut j = i + 1;
            while j < keys.len() && {
                let next = addr + ((j - i) * PAGE_SIZE) as u64;
                keys[j] - base == next && next < limit
            } {
                j += 1;
            }
            let run = &bytes[i * PAGE_SIZE..j * PAGE_SIZE];
            match &uffd {
                Some(u) if registered => {
                    write_ranges(pid, &bytes[from * PAGE_SIZE..i * PAGE_SIZE], &ranges)?;
                    ranges.clear();
                    u.copy(addr, run);
                    from = j;
                }
                _ => {
                    if ranges.len() == IOV_MAX {
                        write_ranges(pid, &bytes[from * PAGE_SIZE..i * PAGE_SIZE], &ranges)?;
                        ranges.clear();
                        from = i;
                    }
                    ranges.push(RemoteRange {
                        addr,
                        len: run.len(),
                    });
                }
            }
            i = j;
        }
        write_ranges(
            pid,
            &bytes[from * PAGE_SIZE..keys.len() * PAGE_SIZE],
            &ranges,
        )?;
        written.fetch_add(keys.len() as u64, Ordering::Relaxed);
        Ok(())
    };
    // The sink's own failure comes back through the source: take it out again as it was.
    let filled = source
        .for_each_batch_par(set, &|keys: &[u64], bytes: &[u8]| {
            write_batch(keys, bytes).map_err(|e| Box::new(e) as super::BoxError)
        })
        .map_err(|e| match e.downcast::<StepError>() {
            Ok(own) => *own,
            Err(e) => StepError::Pages(e),
        });
    // Unregistered whatever the fill's outcome.
    let finished = uffd.map_or(Ok(()), |u| u.finish(pid));
    filled?;
    finished?;
    let mut pages = written.into_inner();

    let zero = vec![0u8; PAGE_SIZE];
    for v in p
        .vmas
        .iter()
        .filter(|v| matches!(v.kind, VmaKind::File | VmaKind::Memfd) && !v.shared)
    {
        for (key, r) in set.pages.range(base + v.start, base + v.end) {
            if r == PageRef::Zero {
                crate::sys::mem::process_vm_write(pid, key - base, &zero)?;
                pages += 1;
            }
        }
    }
    Ok(pages)
}

/// One `process_vm_writev` of `bytes` into `ranges` of process `pid`, all of it or an error.
fn write_ranges(pid: i32, bytes: &[u8], ranges: &[crate::sys::mem::RemoteRange]) -> StepResult {
    if bytes.is_empty() {
        return Ok(());
    }
    let n = crate::sys::mem::process_vm_write_ranges(pid, bytes, ranges)?;
    if n != bytes.len() {
        return Err(StepError::ShortFill {
            at: ranges.first().map(|r| r.addr).unwrap_or(0),
            wrote: n,
            len: bytes.len(),
        });
    }
    Ok(())
}
