//! The daemon's background push: the pages no fault asked for, copied in between faults
//! (`PushPolicy::Continuous`) or once the tree has been idle for `idle_push`
//! (`PushPolicy::Idle`), from the source's stream (every space of the tree under its page
//! keys, in the job's order) and then chunk by chunk. Each step stops as soon as a fault
//! waits, so a fault waits for at most one step ([`CHECK_PAGES`] pages, or [`STREAM_WAIT`]).

use std::time::Instant;

use super::{Copied, Daemon, Fatal, Space, Stream, BRIDGE_PAGES, CHECK_PAGES, STREAM_WAIT};
use crate::image::{split_key, PageId, PageRef, PAGE_SIZE};
use crate::lazy::missing::Missing;
use crate::lazy::{NextPush, PushOrder};
use crate::sys::uffd_restore as ur;
use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc};

const PAGE: u64 = PAGE_SIZE as u64;

impl Daemon {
    /// Whether every process of the tree is served (or gone): the stream is of no more use.
    fn tree_served(&self) -> bool {
        self.spaces
            .iter()
            .filter(|s| s.tree)
            .all(|s| s.dead || s.pending.is_empty())
    }

    /// One step of the background push: (part of) one batch of the stream of the tree's
    /// spaces (started here when the source has one), else `push_pages` pages fetched chunk by
    /// chunk.
    pub(super) fn push(&mut self) -> Result<(), Fatal> {
        if matches!(self.stream, Stream::NotStarted) {
            self.stream = Stream::Over;
            if !self.tree_served() {
                let Some(pages) = self.push_list() else {
                    // The hot-first order is still being worked out: faults only, meanwhile.
                    self.stream = Stream::NotStarted;
                    self.counting = true;
                    return Ok(());
                };
                self.counting = false;
                if let Some(st) = self.source.stream(&self.set, pages) {
                    self.stream = Stream::Running { st, partial: None };
                }
            }
        }
        let served = self.tree_served();
        let (batch, from) = match &mut self.stream {
            Stream::Running { .. } if served => {
                self.stream = Stream::Over;
                return self.push_chunk();
            }
            Stream::Running { st, partial } => match partial.take() {
                Some(p) => p,
                // Wait for the reader only briefly: faults must not queue behind it.
                None => match timed(&mut self.stats.push_wait, || st.next_within(STREAM_WAIT)) {
                    NextPush::NotYet => return Ok(()),
                    NextPush::Batch(Err(e)) => return Err(Fatal::Source(e)),
                    NextPush::Batch(Ok(b)) => (b, 0),
                    NextPush::End => {
                        self.stream = Stream::Over;
                        return self.push_chunk();
                    }
                },
            },
            _ => return self.push_chunk(),
        };
        let t = Instant::now();
        let next = self.copy_batch(&batch.addrs, &batch.bytes, from);
        self.stats.push_copy += t.elapsed();
        let next = next?;
        if let Stream::Running { st, partial } = &mut self.stream {
            match next {
                Some(k) => *partial = Some((batch, k)),
                None => st.recycle(batch),
            }
        }
        Ok(())
    }

    /// What the push of the tree's spaces copies, under their page keys, in the job's order
    /// (and records the order used): space after space in address order, or the most often
    /// dirtied first over the whole tree. `None` while it is being worked out: on a thread of
    /// its own ([`order_list`]), from a copy of what each space misses now, since a fault
    /// must not wait for it (hot first over a GiB of missing pages took 50–70 ms here when
    /// this thread worked it out). Pages faulted in meanwhile are skipped by the copy.
    fn push_list(&mut self) -> Option<Vec<(u64, PageRef)>> {
        if let Some(rx) = &self.listing {
            return match rx.try_recv() {
                Ok(list) => {
                    self.listing = None;
                    Some(list)
                }
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => {
                    // The thread panicked: the push goes on chunk by chunk in address order.
                    tracing::warn!(
                        pid = self.pid,
                        "working out the push order failed; pushing in address order"
                    );
                    self.stats.push_order = "address (working out the order failed)".into();
                    self.listing = None;
                    Some(Vec::new())
                }
            };
        }
        let counts = match self.opts.order {
            PushOrder::HotFirst => match self.source.dirty_counts(&self.image) {
                crate::lazy::DirtyCounts::NotYet => return None,
                crate::lazy::DirtyCounts::Ready(c) => c,
            },
            PushOrder::Address => None,
        };
        self.stats.push_order = match (&counts, self.opts.order) {
            (Some(_), _) => "hot-first".into(),
            (None, PushOrder::HotFirst) => {
                tracing::info!(
                    pid = self.pid,
                    "hot-first push: no pre-dump history to go by, pushing in address order"
                );
                "address (no pre-dump history to go by)".into()
            }
            (None, PushOrder::Address) => "address".into(),
        };
        let pending: Vec<Missing> = self
            .spaces
            .iter()
            .filter(|s| s.tree && !s.dead)
            .map(|s| s.pending.clone())
            .collect();
        let work = Arc::new((pending, counts));
        let theirs = work.clone();
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("haul-lazy-order".into())
            .spawn(move || {
                if let Err(e) = crate::sys::process::set_thread_nice(crate::lazy::COUNT_NICE) {
                    tracing::debug!("push order thread: {e}");
                }
                let _ = tx.send(order_list(&theirs.0, theirs.1.as_ref()));
            });
        match spawned {
            Ok(_) => {
                self.listing = Some(rx);
                None
            }
            Err(e) => {
                tracing::debug!("push order thread: {e}; working it out here");
                Some(order_list(&work.0, work.1.as_ref()))
            }
        }
    }

    /// The tree's space that page key `key` belongs to (not a forked child's: those share
    /// their parent's keys), if it is still served.
    fn space_of_key(&self, key: u64) -> Option<usize> {
        let base = crate::image::space_bounds(split_key(key).0).0;
        self.spaces
            .iter()
            .position(|s| s.tree && !s.dead && s.pending.key(0) == base)
    }

    /// Whether a fault or an event waits on any space being served.
    fn events_waiting(&self) -> bool {
        let fds: Vec<_> = self
            .spaces
            .iter()
            .filter(|s| !s.dead)
            .map(|s| s.uffd.as_raw_fd())
            .collect();
        ur::poll_readable(&fds, 0).map_or(true, |r| r.iter().any(|x| *x))
    }

    /// Copies the pages of a streamed batch (page keys `keys`) from its `from`th on that their
    /// spaces still miss, in runs of contiguous addresses. Stops early when a fault or an
    /// event waits (every [`CHECK_PAGES`] pages it looks): returns where to go on.
    fn copy_batch(
        &mut self,
        keys: &[u64],
        bytes: &[u8],
        from: usize,
    ) -> Result<Option<usize>, Fatal> {
        let mut k = from;
        let mut since_check = 0;
        while k < keys.len() {
            let Some(i) = self.space_of_key(keys[k]) else {
                k += 1;
                continue;
            };
            let addr = |sp: &Space, key: u64| sp.pending.addr_of(key);
            let wanted = |sp: &Space, key: u64| sp.pending.wanted(sp.pending.addr_of(key));
            if !wanted(&self.spaces[i], keys[k]) {
                k += 1;
                continue;
            }
            // At most CHECK_PAGES per copy: a fault that comes meanwhile waits for no more.
            let mut j = k + 1;
            while j < keys.len()
                && j - k < CHECK_PAGES
                && keys[j] == keys[j - 1] + PAGE
                && split_key(keys[j]).0 == split_key(keys[k]).0
                && wanted(&self.spaces[i], keys[j])
            {
                j += 1;
            }
            let data = &bytes[k * PAGE_SIZE..j * PAGE_SIZE];
            let start = addr(&self.spaces[i], keys[k]);
            let t = Instant::now();
            let copied = self.copy_bytes(i, start, data)?;
            self.note_copy(t);
            match copied {
                Copied::All => self.stats.pushed += (j - k) as u64,
                // Read the event, then go on from the first page still missing.
                Copied::Again => return Ok(Some(k)),
                // That process is gone: the rest of the batch may be another's.
                Copied::Gone => {}
            }
            since_check += j - k;
            k = j;
            if since_check >= CHECK_PAGES && k < keys.len() {
                since_check = 0;
                if self.events_waiting() {
                    return Ok(Some(k));
                }
            }
        }
        Ok(None)
    }

    /// Pushes the next `push_pages` missing pages in address order (after the stream, or for
    /// a source without one, or a forked child) of the first space that has any.
    fn push_chunk(&mut self) -> Result<(), Fatal> {
        let Some(i) = self
            .spaces
            .iter()
            .position(|s| !s.dead && !s.pending.is_empty())
        else {
            return Ok(());
        };
        let take = self.spaces[i].pending.first(self.opts.push_pages.max(1));
        let t = Instant::now();
        let copied = self.fetch_and_copy(i, &take)?;
        self.note_copy(t);
        if let Copied::All = copied {
            self.stats.pushed += take.len() as u64;
        }
        Ok(())
    }

    /// Counts a copy of the push that started at `t` (the longest is logged).
    fn note_copy(&mut self, t: Instant) {
        let us = crate::util::us(t.elapsed());
        self.stats.push_copy_max = self.stats.push_copy_max.max(us);
    }
}

/// The pages `pending` (one per space of the tree) miss, under their page keys: most often
/// dirtied first when there are `counts`, else in address order with the short runs of zero
/// pages between missing ones ([`BRIDGE_PAGES`]): one large copy instead of many small ones.
fn order_list(
    pending: &[Missing],
    counts: Option<&std::collections::HashMap<u64, u32>>,
) -> Vec<(u64, PageRef)> {
    match counts {
        None => pending
            .iter()
            .flat_map(|m| {
                m.all_bridged(BRIDGE_PAGES)
                    .into_iter()
                    .map(|(a, r)| (m.key(a), r))
            })
            .collect(),
        Some(counts) => {
            let pages = pending
                .iter()
                .flat_map(|m| m.all().into_iter().map(|(a, id)| (m.key(a), id)))
                .collect();
            hot_first(pages, counts)
        }
    }
}

/// The hot-first push order of `pages` (in address order): most often dirtied over the
/// pre-dumps first (`counts`; a page not in it counts 0). Stable: equally hot pages stay in
/// address order, so they are still copied in long runs. Each page's count is looked up
/// once, not at every comparison.
fn hot_first(
    pages: Vec<(u64, PageId)>,
    counts: &std::collections::HashMap<u64, u32>,
) -> Vec<(u64, PageRef)> {
    let mut pages: Vec<(u64, PageRef)> = pages
        .into_iter()
        .map(|(a, id)| (a, PageRef::Stored(id)))
        .collect();
    pages.sort_by_cached_key(|(a, _)| std::cmp::Reverse(counts.get(a).copied().unwrap_or(0)));
    pages
}

/// Runs `f`, adding the time it took to `total`.
fn timed<T>(total: &mut std::time::Duration, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    *total += t.elapsed();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_push_list_holds_what_the_snapshot_misses_hot_first_or_bridged_in_address_order() {
        let id = |n: u8| PageId([n; 16]);
        let set = crate::lazy::missing::set_with(&[
            (PAGE, PageRef::Stored(id(1))),
            (2 * PAGE, PageRef::Zero),
            (3 * PAGE, PageRef::Stored(id(3))),
            (4 * PAGE, PageRef::Lazy(id(4))),
            (5 * PAGE, PageRef::Stored(id(5))),
        ]);
        let mut m = Missing::new(set, 0, &[(PAGE, 6 * PAGE)]);
        // Faulted in before the snapshot: not pushed.
        m.remove(5 * PAGE);
        let m = [m];
        let counts =
            std::collections::HashMap::from([(m[0].key(4 * PAGE), 2), (m[0].key(3 * PAGE), 1)]);
        let keys =
            |l: Vec<(u64, PageRef)>| -> Vec<u64> { l.into_iter().map(|(k, _)| k / PAGE).collect() };
        assert_eq!(keys(order_list(&m, Some(&counts))), vec![4, 3, 1]);
        // Address order: the zero page between two missing ones is copied with them.
        let list = order_list(&m, None);
        assert_eq!(list[1], (2 * PAGE, PageRef::Zero));
        assert_eq!(keys(list), vec![1, 2, 3, 4]);
    }

    #[test]
    fn hot_first_pushes_the_most_dirtied_first_and_keeps_address_order_among_equals() {
        let id = |n: u8| PageId([n; 16]);
        let pages: Vec<(u64, PageId)> = (1..=6u8).map(|n| (u64::from(n) * PAGE, id(n))).collect();
        let counts = std::collections::HashMap::from([
            (2 * PAGE, 3),
            (4 * PAGE, 1),
            (5 * PAGE, 3),
            (6 * PAGE, 1),
        ]);
        let order: Vec<u64> = hot_first(pages, &counts)
            .into_iter()
            .map(|(a, r)| {
                assert!(matches!(r, PageRef::Stored(_)));
                a / PAGE
            })
            .collect();
        assert_eq!(order, vec![2, 5, 4, 6, 1, 3]);
    }
}
