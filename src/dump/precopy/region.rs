//! Mappings as pre-copy rounds see them: their identity across rounds, which of their pages a
//! dump holds, and what the pre-dumps stored for each page.

use crate::image::{PageRef, Vma, VmaKind};
use crate::sys::pagemap::{PAGE_IS_FILE, PAGE_IS_PRESENT, PAGE_IS_SWAPPED};
use crate::track::Area;

use super::PAGE;
/// Identity of a mapping across rounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Ident {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) prot: u32,
    pub(super) shared: bool,
    pub(super) pgoff: u64,
    pub(super) name: String,
}

/// Which pages of a mapping a dump holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pages {
    /// Every present or swapped page (anonymous memory).
    All,
    /// Only pages that are no longer the file's (private file mapping).
    NotFile,
}

/// A mapping as a pre-copy round sees it.
pub(super) struct Region {
    pub(super) ident: Ident,
    pub(super) pages: Pages,
    /// Private and writable: the tracker follows it.
    pub(super) tracked: bool,
    pub(super) readable: bool,
}

impl Region {
    pub(super) fn area(&self) -> Area {
        Area {
            start: self.ident.start,
            end: self.ident.end,
        }
    }

    pub(super) fn npages(&self) -> u64 {
        (self.ident.end - self.ident.start) / PAGE
    }

    /// From a line of `/proc/PID/maps`; None for mappings a dump does not copy.
    pub(super) fn from_map(m: &crate::proc::MapEntry) -> Option<Region> {
        let special = matches!(
            m.path.as_str(),
            "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]"
        );
        // Shared memory objects (shared anonymous, deleted tmpfs files) are copied whole.
        let shm = crate::dump::check::is_shared_anon(m) || crate::dump::check::is_deleted_shm(m);
        let file = m.inode != 0 && m.path.starts_with('/') && !shm;
        let pages = match (special, file, m.shared) {
            (true, _, _) | (false, true, true) => return None,
            (false, true, false) => Pages::NotFile,
            (false, false, _) => Pages::All,
        };
        Some(Region {
            ident: Ident {
                start: m.start,
                end: m.end,
                prot: m.prot(),
                shared: m.shared,
                pgoff: m.offset,
                name: m.path.clone(),
            },
            pages,
            tracked: !m.shared && m.write,
            readable: m.read,
        })
    }

    /// From a VMA of the final dump's image (same rules as [`Region::from_map`]).
    pub(super) fn from_vma(v: &Vma) -> Option<Region> {
        let pages = match (&v.kind, v.shared) {
            (VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall, _) => {
                return None
            }
            (VmaKind::File | VmaKind::Memfd, true) | (VmaKind::SysvShm, _) => return None,
            (VmaKind::File | VmaKind::Memfd, false) => Pages::NotFile,
            _ => Pages::All,
        };
        let write = v.prot & libc::PROT_WRITE as u32 != 0;
        Some(Region {
            ident: Ident {
                start: v.start,
                end: v.end,
                prot: v.prot,
                shared: v.shared,
                pgoff: v.pgoff,
                name: v.name.clone(),
            },
            pages,
            tracked: !v.shared && write,
            readable: v.prot & libc::PROT_READ as u32 != 0,
        })
    }
}

/// What the pre-dumps stored for the pages of one mapping: `refs[i]` for page i, None when
/// the page is not stored (never present, freed, or not read).
pub(super) struct Known {
    pub(super) ident: Ident,
    pub(super) refs: Vec<Option<PageRef>>,
}

/// Whether a page of `categories` belongs in a dump of a mapping holding `pages`.
pub(super) fn keep(pages: Pages, c: u64) -> bool {
    match pages {
        Pages::All => true,
        Pages::NotFile => {
            c & PAGE_IS_SWAPPED != 0 || (c & PAGE_IS_PRESENT != 0 && c & PAGE_IS_FILE == 0)
        }
    }
}

/// The intersection of two sorted lists of disjoint ranges.
pub(super) fn intersect(a: &[Area], b: &[Area]) -> Vec<Area> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let s = a[i].start.max(b[j].start);
        let e = a[i].end.min(b[j].end);
        if s < e {
            out.push(Area { start: s, end: e });
        }
        if a[i].end < b[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

pub(super) fn in_sorted(ranges: &[Area], a: u64) -> bool {
    let i = ranges.partition_point(|r| r.end <= a);
    ranges.get(i).is_some_and(|r| r.start <= a)
}

/// What the pre-dumps stored for page `addr` of the mapping `k`, if anything.
pub(super) fn lookup(k: &Known, addr: u64) -> Option<PageRef> {
    if addr < k.ident.start || addr >= k.ident.end {
        return None;
    }
    k.refs
        .get(((addr - k.ident.start) / PAGE) as usize)
        .copied()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::PageId;

    fn a(start: u64, end: u64) -> Area {
        Area {
            start: start * PAGE,
            end: end * PAGE,
        }
    }

    fn map(line: &str) -> crate::proc::MapEntry {
        crate::proc::parse_maps_line(std::path::Path::new("maps"), line).unwrap()
    }

    #[test]
    fn a_private_file_mapping_keeps_only_pages_that_are_no_longer_the_files() {
        assert!(keep(Pages::NotFile, PAGE_IS_SWAPPED));
        assert!(keep(Pages::NotFile, PAGE_IS_PRESENT));
        assert!(!keep(Pages::NotFile, PAGE_IS_PRESENT | PAGE_IS_FILE));
        assert!(!keep(Pages::NotFile, 0));
        assert!(keep(Pages::All, 0));
    }

    #[test]
    fn intersect_and_in_sorted_follow_page_ranges() {
        let x = [a(0, 4), a(6, 10), a(20, 21)];
        let y = [a(2, 7), a(9, 30)];
        assert_eq!(
            intersect(&x, &y),
            vec![a(2, 4), a(6, 7), a(9, 10), a(20, 21)]
        );
        assert!(intersect(&x, &[]).is_empty());
        assert!(in_sorted(&x, 3 * PAGE) && in_sorted(&x, 20 * PAGE));
        assert!(!in_sorted(&x, 4 * PAGE) && !in_sorted(&x, 21 * PAGE) && !in_sorted(&x, 11 * PAGE));
    }

    #[test]
    fn mappings_are_copied_tracked_or_left_out_by_kind() {
        assert!(Region::from_map(&map("1000-2000 r-xp 00000000 00:00 0 [vdso]")).is_none());
        // A shared file mapping is the file's: nothing to copy.
        assert!(Region::from_map(&map("1000-2000 rw-s 00000000 fe:00 12 /data")).is_none());
        let f = Region::from_map(&map("1000-3000 rw-p 00002000 fe:00 12 /data")).unwrap();
        assert_eq!((f.pages, f.tracked, f.npages()), (Pages::NotFile, true, 2));
        assert_eq!(f.ident.pgoff, 0x2000);
        let ro = Region::from_map(&map("1000-2000 r--p 00000000 00:00 0 ")).unwrap();
        assert_eq!(
            (ro.pages, ro.tracked, ro.readable),
            (Pages::All, false, true)
        );
        // Shared anonymous memory is copied whole, but not tracked (writes are not private).
        let shm =
            Region::from_map(&map("1000-2000 rw-s 00000000 00:01 5 /dev/zero (deleted)")).unwrap();
        assert_eq!((shm.pages, shm.tracked), (Pages::All, false));
        // So is a deleted tmpfs file mapped shared (a POSIX semaphore).
        let sem = map("1000-2000 rw-s 00000000 00:1b 13 /dev/shm/sem.x (deleted)");
        assert_eq!(Region::from_map(&sem).map(|r| r.pages), Some(Pages::All));
        assert_eq!(
            shm.area(),
            Area {
                start: 0x1000,
                end: 0x2000
            }
        );
    }

    #[test]
    fn lookup_answers_only_inside_the_mapping() {
        let id = PageId([3; 16]);
        let k = Known {
            ident: Ident {
                start: 0x10000,
                end: 0x13000,
                prot: 3,
                shared: false,
                pgoff: 0,
                name: String::new(),
            },
            refs: vec![Some(PageRef::Zero), None, Some(PageRef::Stored(id))],
        };
        assert_eq!(lookup(&k, 0x10000), Some(PageRef::Zero));
        assert_eq!(lookup(&k, 0x11000), None);
        assert_eq!(lookup(&k, 0x12000), Some(PageRef::Stored(id)));
        assert_eq!(lookup(&k, 0x13000), None);
        assert_eq!(lookup(&k, 0xf000), None);
    }
}
