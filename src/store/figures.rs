//! A set's figures at its commit: how many pages it holds, of which kinds, and what its
//! distinct stored pages cost (compressed bytes), in total and new in this set.
//!
//! A pre-copy's final dump counts inside the pause. Its table covers the whole memory and
//! nearly all of it is carried from the pre-dumps, so the pre-copy hands its writer a
//! [`ChainView`] made before the freeze: the table the set would have if nothing had changed,
//! with its stored pages already counted. The commit then walks both tables by address and
//! counts only the entries that differ. Without a view every distinct page is sorted and
//! costed again.

use super::index::Index;
use super::writer::Output;
use super::StoreError;
use crate::image::{PageId, PageRef, SetFigures, PAGE_SIZE};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};

/// The set's figures, and with `want_costs` the cost of each distinct page it holds: from
/// `view` when there is one and the costs are not wanted, else by counting every page.
pub(super) fn figures(
    out: &Output,
    idx: &Index,
    known: Option<&PageCosts>,
    view: Option<&ChainView>,
    want_costs: bool,
) -> Result<(SetFigures, PageCosts), StoreError> {
    if let (Some(v), false) = (view, want_costs) {
        if let Some(f) = count_from_view(out, idx, known, v)? {
            return Ok((f, PageCosts::default()));
        }
    }
    count_all(out, idx, known, want_costs)
}

/// The stored cost (compressed bytes) of distinct pages, sorted by id: what a set holds, for
/// the figures of the next set of its chain ([`SetWriter::know_costs`](super::SetWriter::know_costs)).
#[derive(Clone, Debug, Default)]
pub struct PageCosts(pub(super) Vec<(PageId, u64)>);

impl PageCosts {
    /// The pages of both, once each (by id).
    pub fn merged(&self, other: &PageCosts) -> PageCosts {
        PageCosts(crate::util::merge_sorted_by_key(
            &self.0,
            &other.0,
            |(id, _)| *id,
        ))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A page id as a number that sorts as the id does (its bytes, big-endian): one comparison
/// instead of a byte-wise one.
fn sort_key(id: &PageId) -> u128 {
    u128::from_be_bytes(id.0)
}

/// What [`figures`] finds in a chunk of the set's pages: stored bytes, new bytes, new pages,
/// and each page's cost when they are wanted.
type ChunkSums = (u64, u64, u64, Vec<(PageId, u64)>);

/// The set's figures, and with `want_costs` the cost of each distinct page it holds. A page's
/// cost comes from this writer (a new page), else from `known`, else from the index; a page
/// in none of them is refused (the set would reference a page the store does not hold).
fn count_all(
    out: &Output,
    idx: &Index,
    known: Option<&PageCosts>,
    want_costs: bool,
) -> Result<(SetFigures, PageCosts), StoreError> {
    let mut f = SetFigures::default();
    let mut stored: Vec<PageId> = Vec::with_capacity(out.table.len());
    for (_, r) in out.table.iter() {
        count_entry(&mut f, r);
        if let PageRef::Stored(id) = r {
            stored.push(id);
        }
    }
    // Each distinct page counts once. A final dump's table covers the whole memory and is
    // counted inside the pause: sorted and looked up on every core, and along `known` (sorted
    // the same way) rather than through the index's hash map, whose random probes were most
    // of a commit's time.
    stored.par_sort_unstable_by_key(sort_key);
    stored.dedup();
    let known: &[(PageId, u64)] = known.map_or(&[], |k| &k.0);
    // Per chunk of pages, each walking its part of `known`: (stored bytes, new bytes, new
    // pages, and with `want_costs` each page's cost), or the first page the store lacks.
    let chunk = (stored.len() / (rayon::current_num_threads() * 4)).max(1024);
    let chunks: Result<Vec<ChunkSums>, PageId> = stored
        .par_chunks(chunk)
        .map(|ids| {
            let mut k = known.partition_point(|(id, _)| sort_key(id) < sort_key(&ids[0]));
            let mut sums = (0, 0, 0, Vec::new());
            if want_costs {
                sums.3.reserve_exact(ids.len());
            }
            for id in ids {
                let cost = if let Some(cost) = out.new.get(id) {
                    sums.1 += cost;
                    sums.2 += 1;
                    *cost
                } else {
                    while k < known.len() && sort_key(&known[k].0) < sort_key(id) {
                        k += 1;
                    }
                    match known.get(k).filter(|(kid, _)| kid == id) {
                        Some((_, cost)) => *cost,
                        None => match idx.lookup(id) {
                            Some((loc, pack)) => pack.page_cost(loc.frame),
                            None => return Err(*id),
                        },
                    }
                };
                sums.0 += cost;
                if want_costs {
                    sums.3.push((*id, cost));
                }
            }
            Ok(sums)
        })
        .collect();
    let chunks = match chunks {
        Ok(c) => c,
        Err(page) => return Err(not_stored(out, page)),
    };
    let mut costs = Vec::with_capacity(if want_costs { stored.len() } else { 0 });
    for (bytes_stored, bytes_new, pages_new, c) in chunks {
        f.bytes_stored += bytes_stored;
        f.bytes_new += bytes_new;
        f.pages_new += pages_new;
        costs.extend(c);
    }
    let costs = PageCosts(costs);
    Ok((f, costs))
}

/// A pre-copy chain's view of the memory before its final dump: the table that set would have
/// if nothing changed since the last pre-dump, with its stored pages counted (by id: how many
/// entries name each, and its cost) and their total cost. See the module documentation.
#[derive(Debug)]
pub struct ChainView {
    table: Vec<(u64, PageRef)>,
    /// The distinct stored pages of `table`, sorted by id: (id, entries naming it, cost).
    ids: Vec<(PageId, u32, u64)>,
    bytes_stored: u64,
}

impl ChainView {
    /// The view of `table` (keys strictly increasing), each stored page's cost taken from
    /// `known` (sorted by id), else from the index. A table out of order, or a page the store
    /// does not hold, makes no view (the commit counts every page, and names such a page).
    pub(super) fn new(
        table: Vec<(u64, PageRef)>,
        idx: &Index,
        known: Option<&PageCosts>,
    ) -> Option<ChainView> {
        if !table.windows(2).all(|w| w[0].0 < w[1].0) {
            return None;
        }
        let mut stored: Vec<PageId> = table.iter().filter_map(|(_, r)| r.stored()).collect();
        stored.par_sort_unstable_by_key(sort_key);
        let known: &[(PageId, u64)] = known.map_or(&[], |k| &k.0);
        let mut ids: Vec<(PageId, u32, u64)> = Vec::new();
        let mut k = 0;
        for id in stored {
            if let Some(last) = ids.last_mut().filter(|l| l.0 == id) {
                last.1 += 1;
                continue;
            }
            while k < known.len() && sort_key(&known[k].0) < sort_key(&id) {
                k += 1;
            }
            let cost = match known.get(k).filter(|(kid, _)| *kid == id) {
                Some((_, cost)) => *cost,
                None => {
                    let (loc, pack) = idx.lookup(&id)?;
                    pack.page_cost(loc.frame)
                }
            };
            ids.push((id, 1, cost));
        }
        let bytes_stored = ids.iter().map(|(_, _, c)| c).sum();
        Some(ChainView {
            table,
            ids,
            bytes_stored,
        })
    }

    /// The number of entries of its table.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// The figures of `out` from `view`: the entries that differ between the two tables (by
/// address) change the counts of the view's pages; a page the view does not hold is costed as
/// [`count_all`] costs it. None if the view does not add up (an entry it lacks a count for):
/// then every page is counted.
fn count_from_view(
    out: &Output,
    idx: &Index,
    known: Option<&PageCosts>,
    view: &ChainView,
) -> Result<Option<SetFigures>, StoreError> {
    let mut f = SetFigures::default();
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    let (a, b) = (out.table.entries(), &view.table[..]);
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let ka = a.get(i).map_or(u64::MAX, |e| e.0);
        let kb = b.get(j).map_or(u64::MAX, |e| e.0);
        let mine = (ka <= kb).then(|| a[i].1);
        let was = (kb <= ka).then(|| b[j].1);
        i += usize::from(mine.is_some());
        j += usize::from(was.is_some());
        if let Some(r) = mine {
            count_entry(&mut f, r);
        }
        if mine == was {
            continue;
        }
        if let Some(id) = was.and_then(|r| r.stored()) {
            removed.push(id);
        }
        if let Some(id) = mine.and_then(|r| r.stored()) {
            added.push(id);
        }
    }
    // Per page of the view, how its count changed; pages the view does not hold.
    let mut change: HashMap<usize, i64> = HashMap::new();
    let mut outside: HashSet<PageId> = HashSet::new();
    let find = |id: &PageId| {
        view.ids
            .binary_search_by_key(&sort_key(id), |(v, _, _)| sort_key(v))
    };
    for id in &removed {
        match find(id) {
            Ok(n) => *change.entry(n).or_default() -= 1,
            Err(_) => return Ok(None),
        }
    }
    for id in &added {
        match find(id) {
            Ok(n) => *change.entry(n).or_default() += 1,
            Err(_) => {
                outside.insert(*id);
            }
        }
    }
    let held = |n: usize| i64::from(view.ids[n].1) + change.get(&n).copied().unwrap_or(0);
    let mut bytes_stored = view.bytes_stored;
    for &n in change.keys() {
        match held(n) {
            0 => bytes_stored -= view.ids[n].2,
            c if c < 0 => return Ok(None),
            _ => {}
        }
    }
    let known: &[(PageId, u64)] = known.map_or(&[], |k| &k.0);
    for id in &outside {
        let cost = match out.new.get(id) {
            Some(c) => *c,
            None => match known.binary_search_by_key(&sort_key(id), |(k, _)| sort_key(k)) {
                Ok(n) => known[n].1,
                Err(_) => match idx.lookup(id) {
                    Some((loc, pack)) => pack.page_cost(loc.frame),
                    None => return Err(not_stored(out, *id)),
                },
            },
        };
        bytes_stored += cost;
    }
    // A page this writer stored counts as new if the set holds it, at the cost it was
    // stored at (as `count_all` takes it).
    for (id, cost) in out.new.iter() {
        let holds = if outside.contains(id) {
            true
        } else if let Some(n) = find(id).ok().filter(|&n| held(n) > 0) {
            bytes_stored = bytes_stored - view.ids[n].2 + cost;
            true
        } else {
            false
        };
        if holds {
            f.pages_new += 1;
            f.bytes_new += cost;
        }
    }
    f.bytes_stored = bytes_stored;
    Ok(Some(f))
}

/// Counts one entry of a set's table in `f`: a page, zero or lazy, and its logical bytes.
fn count_entry(f: &mut SetFigures, r: PageRef) {
    f.pages += 1;
    match r {
        PageRef::Zero => f.pages_zero += 1,
        PageRef::Lazy(_) => f.pages_lazy += 1,
        PageRef::Stored(_) => {}
    }
    if r != PageRef::Zero {
        f.bytes_logical += PAGE_SIZE as u64;
    }
}

/// A set that would reference `page`, which the store does not hold: named by an address
/// of the set that holds it.
fn not_stored(out: &Output, page: PageId) -> StoreError {
    let addr = out
        .table
        .iter()
        .find(|(_, r)| *r == PageRef::Stored(page))
        .map_or(0, |(a, _)| a);
    StoreError::RefNotStored { addr, page }
}
