//! Which stored pages an address space still misses, without copying the page table: the
//! image set's own table says which pages are stored, a bit per page of each lazy region says
//! which of them are resident (or gone) already, and pages that `mremap` moved are listed
//! apart. Building it costs a few bitmaps per region (32 KiB per GiB each) and one walk over
//! the table, in the daemon's thread, so the time to running does not grow with the image.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::image::{ImageSet, PageId, PageRef, PAGE_SIZE};

const PAGE: u64 = PAGE_SIZE as u64;

/// A lazy region (a private anonymous VMA as dumped) and its resident bits.
#[derive(Clone, Debug)]
struct Region {
    start: u64,
    end: u64,
    /// Bit set: the page is no longer missing (copied, or its memory went away).
    done: Vec<u64>,
    /// Bit set: the table has a stored (or lazy) page here. What the push and the faults ask
    /// per page, answered without a look-up in the table.
    stored: Vec<u64>,
    /// Bit set: the table has a zero page here.
    zero: Vec<u64>,
}

impl Region {
    fn bit(&self, addr: u64) -> (usize, u64) {
        let n = ((addr - self.start) / PAGE) as usize;
        (n / 64, 1u64 << (n % 64))
    }
    fn is_done(&self, addr: u64) -> bool {
        let (w, m) = self.bit(addr);
        self.done[w] & m != 0
    }
    /// (stored, zero) at `addr`, and whether it is still to be placed.
    fn state(&self, addr: u64) -> (bool, bool, bool) {
        let (w, m) = self.bit(addr);
        (
            self.stored[w] & m != 0,
            self.zero[w] & m != 0,
            self.done[w] & m == 0,
        )
    }
    /// Sets the bit; true when it was clear.
    fn set_done(&mut self, addr: u64) -> bool {
        let (w, m) = self.bit(addr);
        let was = self.done[w] & m == 0;
        self.done[w] |= m;
        was
    }
}

/// The stored pages an address space still misses.
#[derive(Clone, Debug)]
pub(super) struct Missing {
    set: Arc<ImageSet>,
    /// The first page key of the space's pages in the set's table (`image::space_bounds`):
    /// the page at address `a` is the table's entry `base + a`.
    base: u64,
    regions: Vec<Region>,
    /// Missing pages that `mremap` moved away from their dumped address.
    moved: BTreeMap<u64, PageId>,
    left: u64,
    /// Every region page below this is placed (see [`Missing::first`]).
    scan_from: u64,
}

fn stored(r: PageRef) -> Option<PageId> {
    match r {
        PageRef::Stored(id) | PageRef::Lazy(id) => Some(id),
        PageRef::Zero => None,
    }
}

impl Missing {
    /// Every stored page of page space `space` of `set` in `ranges` (the process's own
    /// addresses: sorted, disjoint, page-aligned) is missing.
    pub fn new(set: Arc<ImageSet>, space: u16, ranges: &[(u64, u64)]) -> Missing {
        let base = crate::image::space_bounds(space).0;
        let mut left = 0;
        let regions = ranges
            .iter()
            .map(|&(start, end)| {
                let words = (((end - start) / PAGE) as usize).div_ceil(64);
                let mut r = Region {
                    start,
                    end,
                    done: vec![0; words],
                    stored: vec![0; words],
                    zero: vec![0; words],
                };
                for (k, p) in set.pages.range(base + start, base + end) {
                    let (w, m) = r.bit(k - base);
                    match p {
                        PageRef::Stored(_) | PageRef::Lazy(_) => {
                            r.stored[w] |= m;
                            left += 1;
                        }
                        PageRef::Zero => r.zero[w] |= m,
                    }
                }
                r
            })
            .collect();
        Missing {
            set,
            base,
            regions,
            moved: BTreeMap::new(),
            left,
            scan_from: 0,
        }
    }

    /// The page key of address `addr` of this space.
    pub fn key(&self, addr: u64) -> u64 {
        self.base + addr
    }

    /// The address of page key `key` of this space.
    pub fn addr_of(&self, key: u64) -> u64 {
        key - self.base
    }

    /// The space's entries of the set's table in `[start, end)` (addresses), at their
    /// addresses.
    fn table(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, PageRef)> + '_ {
        let base = self.base;
        self.set
            .pages
            .range(base + start, base + end)
            .map(move |(k, r)| (k - base, r))
    }

    /// Stored pages still missing.
    pub fn left(&self) -> u64 {
        self.left
    }

    pub fn is_empty(&self) -> bool {
        self.left == 0
    }

    fn region(&self, addr: u64) -> Option<usize> {
        let i = self.regions.partition_point(|r| r.end <= addr);
        (i < self.regions.len() && self.regions[i].start <= addr).then_some(i)
    }

    /// The id of the page at `addr` if it is still missing.
    pub fn get(&self, addr: u64) -> Option<PageId> {
        if let Some(id) = self.moved.get(&addr) {
            return Some(*id);
        }
        let r = &self.regions[self.region(addr)?];
        match r.state(addr) {
            (true, _, true) => self.set.pages.get(self.base + addr).and_then(stored),
            _ => None,
        }
    }

    /// Whether the page at `addr` is still to be placed: a missing stored page, or a zero
    /// page of the dump nothing was placed at yet. One bit test, for the push.
    pub fn wanted(&self, addr: u64) -> bool {
        if self.moved.contains_key(&addr) {
            return true;
        }
        self.region(addr).is_some_and(|i| {
            let (stored, zero, open) = self.regions[i].state(addr);
            open && (stored || zero)
        })
    }

    /// Whether the page at `addr` was a zero page at the dump and nothing was placed there
    /// since (by this daemon; the process may have faulted it in itself).
    pub fn known_zero(&self, addr: u64) -> bool {
        self.region(addr).is_some_and(|i| {
            let (_, zero, open) = self.regions[i].state(addr);
            zero && open
        }) && !self.moved.contains_key(&addr)
    }

    /// A zero page was placed at `addr`.
    pub fn zero_placed(&mut self, addr: u64) {
        if let Some(i) = self.region(addr) {
            self.regions[i].set_done(addr);
        }
    }

    /// The page at `addr` is no longer missing (copied in, or its memory went away); for a
    /// zero page, it was placed.
    pub fn remove(&mut self, addr: u64) {
        if self.moved.remove(&addr).is_some() {
            self.left -= 1;
            return;
        }
        if let Some(i) = self.region(addr) {
            let (stored, _, _) = self.regions[i].state(addr);
            if self.regions[i].set_done(addr) && stored {
                self.left -= 1;
            }
        }
    }

    /// Every missing page in `[start, end)` in address order.
    pub fn range(&self, start: u64, end: u64) -> Vec<(u64, PageId)> {
        let mut out: Vec<(u64, PageId)> = Vec::new();
        let first = self.regions.partition_point(|r| r.end <= start);
        for r in self.regions[first..].iter().take_while(|r| r.start < end) {
            let (s, e) = (start.max(r.start), end.min(r.end));
            out.extend(
                self.table(s, e)
                    .filter(|(a, _)| !r.is_done(*a))
                    .filter_map(|(a, p)| stored(p).map(|id| (a, id))),
            );
        }
        if !self.moved.is_empty() {
            out.extend(self.moved.range(start..end).map(|(a, id)| (*a, *id)));
            out.sort_unstable_by_key(|(a, _)| *a);
        }
        out
    }

    /// Forgets every missing page in `[start, end)` and returns them.
    pub fn take_range(&mut self, start: u64, end: u64) -> Vec<(u64, PageId)> {
        let pages = self.range(start, end);
        for (a, _) in &pages {
            self.remove(*a);
        }
        pages
    }

    /// A missing page now lives at `addr` (moved there by `mremap`).
    pub fn insert_moved(&mut self, addr: u64, id: PageId) {
        if self.moved.insert(addr, id).is_none() {
            self.left += 1;
        }
    }

    /// Up to `n` missing pages in address order, from the lowest. Region pages once placed
    /// never go missing again, so the walk starts where the last one found its first page
    /// (the push asks for the next chunk many times; it must not walk the done ones again).
    pub fn first(&mut self, n: usize) -> Vec<(u64, PageId)> {
        let (out, first_region_page) = self.scan(self.scan_from, n);
        self.scan_from = first_region_page.unwrap_or(u64::MAX);
        out
    }

    /// Up to `n` missing pages: those of the regions from `from` on, then the moved ones;
    /// and the first region page found.
    fn scan(&self, from: u64, n: usize) -> (Vec<(u64, PageId)>, Option<u64>) {
        let mut out = Vec::with_capacity(n.min(self.left as usize));
        for r in self.regions.iter().filter(|r| r.end > from) {
            if out.len() >= n {
                break;
            }
            out.extend(
                self.table(r.start.max(from), r.end)
                    .filter(|(a, _)| !r.is_done(*a))
                    .filter_map(|(a, p)| stored(p).map(|id| (a, id)))
                    .take(n - out.len()),
            );
        }
        let first = out.first().map(|(a, _)| *a);
        if out.len() < n {
            out.extend(
                self.moved
                    .iter()
                    .take(n - out.len())
                    .map(|(a, id)| (*a, *id)),
            );
        }
        (out, first)
    }

    /// Every missing page in address order (the regions, then the moved ones), with the zero
    /// pages of runs of at most `max_gap` between two missing pages of a region: copying those
    /// zeroes too turns many small copies into few large ones (they were present at the dump).
    pub fn all_bridged(&self, max_gap: usize) -> Vec<(u64, PageRef)> {
        let mut out: Vec<(u64, PageRef)> = Vec::with_capacity(self.left as usize);
        for r in &self.regions {
            // Zero pages seen since the last stored one, contiguous with it.
            let mut gap: Vec<u64> = Vec::new();
            let mut last: Option<u64> = None;
            for (a, p) in self.table(r.start, r.end) {
                if r.is_done(a) {
                    gap.clear();
                    last = None;
                    continue;
                }
                let contiguous = last.is_some_and(|l| l + PAGE == a);
                match p {
                    PageRef::Zero => {
                        if contiguous && gap.len() < max_gap {
                            gap.push(a);
                            last = Some(a);
                        } else {
                            gap.clear();
                            last = None;
                        }
                    }
                    PageRef::Stored(id) | PageRef::Lazy(id) => {
                        if contiguous {
                            out.extend(gap.iter().map(|g| (*g, PageRef::Zero)));
                        }
                        gap.clear();
                        out.push((a, PageRef::Stored(id)));
                        last = Some(a);
                    }
                }
            }
        }
        out.extend(self.moved.iter().map(|(a, id)| (*a, PageRef::Stored(*id))));
        out
    }

    /// Every missing page: the regions in address order, then the moved ones.
    pub fn all(&self) -> Vec<(u64, PageId)> {
        self.scan(0, self.left as usize).0
    }
}

/// A set of one process's pages `pages` (address, reference), for tests.
#[cfg(test)]
pub(crate) fn set_with(pages: &[(u64, PageRef)]) -> Arc<ImageSet> {
    let mut t = crate::image::PageTable::new();
    for (a, r) in pages {
        t.insert(*a, *r);
    }
    Arc::new(ImageSet {
        tree: Default::default(),
        id: "t-1".into(),
        job: "t".into(),
        created_us: 0,
        kind: crate::image::SetKind::Dump,
        parent: None,
        kernel: String::new(),
        process: None,
        pages: t,
        figures: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PageId {
        PageId([n; 16])
    }

    #[test]
    fn only_stored_pages_in_the_ranges_are_missing() {
        let s = set_with(&[
            (0x1000, PageRef::Stored(id(1))),
            (0x2000, PageRef::Zero),
            (0x3000, PageRef::Lazy(id(3))),
            (0x9000, PageRef::Stored(id(9))),
        ]);
        let m = Missing::new(s, 0, &[(0x1000, 0x5000)]);
        assert_eq!(m.left(), 2);
        assert_eq!(m.get(0x1000), Some(id(1)));
        assert_eq!(m.get(0x2000), None);
        assert_eq!(m.get(0x3000), Some(id(3)));
        assert_eq!(m.get(0x9000), None, "outside the lazy ranges");
        assert_eq!(m.all(), vec![(0x1000, id(1)), (0x3000, id(3))]);
    }

    #[test]
    fn removing_counts_each_page_once() {
        let s = set_with(&[
            (0x1000, PageRef::Stored(id(1))),
            (0x2000, PageRef::Stored(id(2))),
            (0x3000, PageRef::Zero),
        ]);
        let mut m = Missing::new(s, 0, &[(0x1000, 0x4000)]);
        m.remove(0x1000);
        m.remove(0x1000);
        m.remove(0x3000);
        assert_eq!(m.left(), 1);
        assert_eq!(m.get(0x1000), None);
        assert_eq!(m.first(10), vec![(0x2000, id(2))]);
        m.remove(0x2000);
        assert!(m.is_empty());
    }

    #[test]
    fn known_zero_pages_are_placed_once() {
        let s = set_with(&[(0x1000, PageRef::Zero), (0x2000, PageRef::Stored(id(2)))]);
        let mut m = Missing::new(s, 0, &[(0x1000, 0x3000)]);
        assert!(m.known_zero(0x1000));
        assert!(!m.known_zero(0x2000));
        m.zero_placed(0x1000);
        assert!(!m.known_zero(0x1000));
        assert_eq!(m.left(), 1, "zero pages are not counted as missing");
    }

    #[test]
    fn bridging_takes_short_zero_runs_between_missing_pages_only() {
        let s = set_with(&[
            (0x1000, PageRef::Stored(id(1))),
            (0x2000, PageRef::Zero),
            (0x3000, PageRef::Stored(id(3))),
            (0x4000, PageRef::Zero),
            (0x5000, PageRef::Zero),
            (0x6000, PageRef::Zero),
            (0x7000, PageRef::Stored(id(7))),
            (0x8000, PageRef::Zero),
        ]);
        let m = Missing::new(s, 0, &[(0x1000, 0x9000)]);
        let got: Vec<u64> = m.all_bridged(2).iter().map(|(a, _)| *a).collect();
        assert_eq!(got, vec![0x1000, 0x2000, 0x3000, 0x7000]);
        let got: Vec<u64> = m.all_bridged(3).iter().map(|(a, _)| *a).collect();
        assert_eq!(
            got,
            vec![0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0x7000]
        );
    }

    #[test]
    fn first_resumes_where_the_missing_pages_start() {
        let s = set_with(
            &(1..=5u8)
                .map(|n| (u64::from(n) * 0x1000, PageRef::Stored(id(n))))
                .collect::<Vec<_>>(),
        );
        let mut m = Missing::new(s, 0, &[(0x1000, 0x6000)]);
        assert_eq!(m.first(2), vec![(0x1000, id(1)), (0x2000, id(2))]);
        m.remove(0x1000);
        m.remove(0x2000);
        assert_eq!(m.first(2), vec![(0x3000, id(3)), (0x4000, id(4))]);
        m.remove(0x4000);
        assert_eq!(m.first(2), vec![(0x3000, id(3)), (0x5000, id(5))]);
        m.remove(0x3000);
        m.remove(0x5000);
        assert!(m.first(2).is_empty());
    }

    #[test]
    fn mremap_moves_missing_pages_and_their_count() {
        let s = set_with(&[
            (0x1000, PageRef::Stored(id(1))),
            (0x2000, PageRef::Stored(id(2))),
            (0x3000, PageRef::Stored(id(3))),
        ]);
        let mut m = Missing::new(s, 0, &[(0x1000, 0x4000)]);
        m.remove(0x2000);
        let moved = m.take_range(0x1000, 0x4000);
        assert_eq!(moved, vec![(0x1000, id(1)), (0x3000, id(3))]);
        assert!(m.is_empty());
        for (a, p) in moved {
            m.insert_moved(a - 0x1000 + 0x70000, p);
        }
        assert_eq!(m.left(), 2);
        assert_eq!(m.get(0x70000), Some(id(1)));
        assert_eq!(m.get(0x1000), None);
        assert_eq!(m.range(0x70000, 0x73000).len(), 2);
        m.take_range(0x70000, 0x71000);
        assert_eq!(m.all(), vec![(0x72000, id(3))]);
    }

    #[test]
    fn wanted_means_stored_or_zero_inside_a_region_and_not_yet_placed() {
        let s = set_with(&[
            (0x1000, PageRef::Stored(id(1))),
            (0x2000, PageRef::Zero),
            (0x4000, PageRef::Stored(id(4))),
        ]);
        let mut m = Missing::new(s, 0, &[(0x1000, 0x4000)]);
        assert!(m.wanted(0x1000));
        assert!(m.wanted(0x2000), "a zero page of the dump is placed too");
        assert!(
            !m.wanted(0x3000),
            "never touched: read as zero the ordinary way"
        );
        assert!(!m.wanted(0x4000), "outside the lazy ranges");
        m.remove(0x1000);
        m.zero_placed(0x2000);
        assert!(!m.wanted(0x1000) && !m.wanted(0x2000));
        assert!(m.is_empty());
    }

    #[test]
    fn pages_between_regions_are_never_missing_and_first_walks_regions_then_moved_pages() {
        let s = set_with(&[
            (0x1000, PageRef::Stored(id(1))),
            (0x5000, PageRef::Stored(id(5))),
            (0x9000, PageRef::Stored(id(9))),
            (0xa000, PageRef::Stored(id(10))),
        ]);
        let mut m = Missing::new(s, 0, &[(0x1000, 0x2000), (0x9000, 0xb000)]);
        assert_eq!(m.left(), 3);
        assert_eq!(m.range(0, 0x10000).len(), 3);
        assert_eq!(m.get(0x5000), None, "between the regions");
        m.insert_moved(0x40000, id(7));
        assert_eq!(
            m.first(10),
            vec![
                (0x1000, id(1)),
                (0x9000, id(9)),
                (0xa000, id(10)),
                (0x40000, id(7))
            ]
        );
        m.remove(0x40000);
        assert_eq!(m.left(), 3, "a moved page counts once");
        m.remove(0x40000);
        assert_eq!(m.left(), 3);
    }

    #[test]
    fn a_process_of_a_tree_misses_the_pages_of_its_own_space_only() {
        use crate::image::page_key;
        let s = set_with(&[
            (0x1000, PageRef::Stored(id(1))),
            (0x2000, PageRef::Stored(id(2))),
            (page_key(1, 0x1000), PageRef::Stored(id(11))),
            (page_key(1, 0x2000), PageRef::Zero),
            (page_key(1, 0x3000), PageRef::Stored(id(13))),
            (page_key(2, 0x1000), PageRef::Stored(id(21))),
        ]);
        let mut m = Missing::new(s, 1, &[(0x1000, 0x4000)]);
        assert_eq!(m.left(), 2);
        assert_eq!(
            m.get(0x1000),
            Some(id(11)),
            "the space's own page, not the root's"
        );
        assert_eq!(m.get(0x2000), None);
        assert!(m.known_zero(0x2000));
        assert_eq!(m.all(), vec![(0x1000, id(11)), (0x3000, id(13))]);
        assert_eq!(m.range(0, 0x10000).len(), 2);
        let bridged: Vec<u64> = m.all_bridged(4).iter().map(|(a, _)| *a).collect();
        assert_eq!(bridged, vec![0x1000, 0x2000, 0x3000]);
        assert_eq!(m.key(0x3000), page_key(1, 0x3000));
        assert_eq!(m.addr_of(page_key(1, 0x3000)), 0x3000);
        assert_eq!(m.first(1), vec![(0x1000, id(11))]);
        m.remove(0x1000);
        m.remove(0x3000);
        assert!(m.is_empty());
    }

    #[test]
    fn munmap_of_part_of_a_region_forgets_only_those_pages() {
        let s = set_with(
            &(1..=4u8)
                .map(|n| (u64::from(n) * 0x1000, PageRef::Stored(id(n))))
                .collect::<Vec<_>>(),
        );
        let mut m = Missing::new(s, 0, &[(0x1000, 0x5000)]);
        let gone = m.take_range(0x2000, 0x4000);
        assert_eq!(gone, vec![(0x2000, id(2)), (0x3000, id(3))]);
        assert_eq!(m.all(), vec![(0x1000, id(1)), (0x4000, id(4))]);
        assert_eq!(m.left(), 2);
    }
}
