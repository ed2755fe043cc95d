//! `/proc/PID/pagemap` (see proc_pid_pagemap(5) and Documentation/admin-guide/mm/pagemap.rst):
//! the per-page entries, and the `PAGEMAP_SCAN` ioctl that returns ranges of pages by category
//! (and, with `PM_SCAN_WP_MATCHING`, write-protects the written ones for uffd-wp tracking).

use super::{io_err, last_err, Result, PAGE_SIZE};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Bit 63 of a pagemap entry: the page is present in RAM.
pub const PM_PRESENT: u64 = 1 << 63;
/// Bit 62: the page is swapped out.
pub const PM_SWAPPED: u64 = 1 << 62;
/// Bit 61: the page is a file page or shared anonymous.
pub const PM_FILE: u64 = 1 << 61;
/// Bit 57: the pte is uffd-write-protected.
pub const PM_UFFD_WP: u64 = 1 << 57;
/// Bit 56: the page is exclusively mapped.
pub const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;
/// Bit 55: the pte is soft-dirty (not available on our kernels: DESIGN.md §4).
pub const PM_SOFT_DIRTY: u64 = 1 << 55;
/// Bits 0–54: the page frame number (zero without CAP_SYS_ADMIN).
pub const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// One decoded pagemap entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagemapEntry(pub u64);

impl PagemapEntry {
    pub fn present(self) -> bool {
        self.0 & PM_PRESENT != 0
    }
    pub fn swapped(self) -> bool {
        self.0 & PM_SWAPPED != 0
    }
    /// File page or shared anonymous page.
    pub fn file_or_shared(self) -> bool {
        self.0 & PM_FILE != 0
    }
    pub fn uffd_wp(self) -> bool {
        self.0 & PM_UFFD_WP != 0
    }
    pub fn exclusive(self) -> bool {
        self.0 & PM_MMAP_EXCLUSIVE != 0
    }
    pub fn soft_dirty(self) -> bool {
        self.0 & PM_SOFT_DIRTY != 0
    }
    pub fn pfn(self) -> u64 {
        self.0 & PM_PFN_MASK
    }
}

/// `/proc/PID/pagemap`, opened once for many reads or scans.
pub struct Pagemap {
    pid: i32,
    file: File,
}

impl Pagemap {
    /// Opens `/proc/PID/pagemap` read-only (needs ptrace read access to `pid`).
    pub fn open(pid: i32) -> Result<Pagemap> {
        let path = format!("/proc/{pid}/pagemap");
        let file = File::open(&path).map_err(|e| io_err(format!("open {path}"), e))?;
        Ok(Pagemap { pid, file })
    }

    /// The entries of the pages `[start, end)` (page-aligned), one per page, by pread(2) of
    /// 8 bytes per page.
    pub fn entries(&self, start: u64, end: u64) -> Result<Vec<PagemapEntry>> {
        let pages = (end.saturating_sub(start) / PAGE_SIZE as u64) as usize;
        let mut raw = vec![0u8; pages * 8];
        let off = start / PAGE_SIZE as u64 * 8;
        self.file.read_exact_at(&mut raw, off).map_err(|e| {
            io_err(
                format!("read /proc/{}/pagemap for {start:#x}-{end:#x}", self.pid),
                e,
            )
        })?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| {
                PagemapEntry(u64::from_ne_bytes([
                    c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
                ]))
            })
            .collect())
    }

    /// Runs `ioctl(fd, PAGEMAP_SCAN, &arg)` (ioctl(2), the kernel's pagemap.rst) over
    /// `[q.start, q.end)`, looping on `walk_end` until the whole range is walked, and returns
    /// every region found (adjacent regions of equal categories may come separately).
    pub fn scan(&self, q: &ScanQuery) -> Result<Vec<PageRegion>> {
        let mut out = Vec::new();
        let mut buf = vec![PageRegion::default(); 1024];
        let mut start = q.start;
        while start < q.end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: q.flags,
                start,
                end: q.end,
                walk_end: 0,
                vec: buf.as_mut_ptr() as u64,
                vec_len: buf.len() as u64,
                max_pages: q.max_pages,
                category_inverted: q.category_inverted,
                category_mask: q.category_mask,
                category_anyof_mask: q.category_anyof_mask,
                return_mask: q.return_mask,
            };
            // SAFETY: PAGEMAP_SCAN reads `arg` (a live, correctly sized pm_scan_arg) and writes at
            // most `vec_len` page_regions into `buf`, which holds that many; it updates walk_end.
            let n = unsafe { libc::ioctl(self.file.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
            if n < 0 {
                return Err(last_err(format!(
                    "ioctl(PAGEMAP_SCAN) on /proc/{}/pagemap for {start:#x}-{:#x}",
                    self.pid, q.end
                )));
            }
            out.extend_from_slice(&buf[..(n as usize).min(buf.len())]);
            if arg.walk_end <= start {
                break;
            }
            start = arg.walk_end;
            if q.max_pages != 0 {
                let found: u64 = out
                    .iter()
                    .map(|r| (r.end - r.start) / PAGE_SIZE as u64)
                    .sum();
                if found >= q.max_pages {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// `PAGEMAP_SCAN` = `_IOWR('f', 16, struct pm_scan_arg)` (linux/fs.h, Linux 6.7).
pub const PAGEMAP_SCAN: u64 = 0xc060_6610;
/// `PM_SCAN_WP_MATCHING`: write-protect the matching pages (uffd-wp async tracking).
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail (EPERM) on VMAs not registered for async uffd-wp.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
/// Page categories of `PAGEMAP_SCAN`.
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
pub const PAGE_IS_HUGE: u64 = 1 << 6;
pub const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;

/// `struct pm_scan_arg` (96 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

const _: () = assert!(std::mem::size_of::<PmScanArg>() == 96);

/// `struct page_region` (24 bytes): pages `[start, end)` sharing `categories`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

const _: () = assert!(std::mem::size_of::<PageRegion>() == 24);

impl PageRegion {
    pub fn pages(&self) -> u64 {
        (self.end - self.start) / PAGE_SIZE as u64
    }
}

/// What to ask `PAGEMAP_SCAN` for: see the kernel's pagemap.rst for the category semantics
/// (a page matches when `(categories ^ inverted) & mask == mask` and, if `anyof` is set,
/// `(categories ^ inverted) & anyof != 0`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ScanQuery {
    pub start: u64,
    pub end: u64,
    pub flags: u64,
    /// 0 = no limit.
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

impl ScanQuery {
    /// Pages present or swapped in `[start, end)`, reporting present/swapped/file/pfn-zero.
    pub fn resident(start: u64, end: u64) -> ScanQuery {
        ScanQuery {
            start,
            end,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE | PAGE_IS_PFNZERO,
            ..ScanQuery::default()
        }
    }

    /// Pages present or swapped in `[start, end)`, reporting only those two categories. Asked
    /// for nothing else (no `PAGE_IS_FILE`), the kernel reads no page's `struct page`: 3.4 ms
    /// per GiB of present pages here, against 15 for [`ScanQuery::resident`] and 13 for the
    /// pagemap entries.
    pub fn present_or_swapped(start: u64, end: u64) -> ScanQuery {
        ScanQuery {
            start,
            end,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            ..ScanQuery::default()
        }
    }

    /// The written pages of `[start, end)` under async uffd-wp, write-protecting them again
    /// (DESIGN.md §4: one tracking round).
    pub fn written_and_reprotect(start: u64, end: u64) -> ScanQuery {
        ScanQuery {
            start,
            end,
            flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            category_mask: PAGE_IS_WRITTEN,
            return_mask: PAGE_IS_WRITTEN,
            ..ScanQuery::default()
        }
    }
}
