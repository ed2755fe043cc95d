//! The set writing of a pre-copy round: pages read from the running process a chunk at a
//! time, compared with what the pre-dumps stored, and handed to the set writer.

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::region::{lookup, Known};
use crate::dump::memory::{self, Run, CHUNK};
use crate::dump::DumpError;
use crate::image::{is_zero_page, PageId, PageRef, PAGE_SIZE};
use crate::store::SetWriter;
use crate::sys::mem::{AlignedBuf, ProcMem};
/// Copies the pages of a running process a chunk at a time into the set writer. With
/// `compare`, only pages whose content differs from what the pre-dumps stored are kept. Pages
/// go to the page space `space` of the set.
pub(super) struct RoundCopier {
    pid: i32,
    space: u16,
    buf: AlignedBuf,
    mem: Option<ProcMem>,
    runs: Vec<Run>,
    pages: usize,
}

impl RoundCopier {
    pub(super) fn new(pid: i32, space: u16) -> Result<RoundCopier, DumpError> {
        Ok(RoundCopier {
            pid,
            space,
            buf: AlignedBuf::new(CHUNK)?,
            mem: None,
            runs: Vec::new(),
            pages: 0,
        })
    }

    /// Queues `run`; returns the pages handed to the writer by the flushes it caused.
    pub(super) fn add(
        &mut self,
        mut run: Run,
        known: &BTreeMap<u64, Known>,
        compare: bool,
        writer: &mut SetWriter<'_>,
    ) -> Result<u64, DumpError> {
        let cap = CHUNK / PAGE_SIZE;
        let mut sent = 0;
        while run.pages > 0 {
            let take = run.pages.min(cap - self.pages);
            self.runs.push(Run { pages: take, ..run });
            self.pages += take;
            run.addr += (take * PAGE_SIZE) as u64;
            run.pages -= take;
            if self.pages == cap {
                sent += self.flush(known, compare, writer)?;
            }
        }
        Ok(sent)
    }

    pub(super) fn flush(
        &mut self,
        known: &BTreeMap<u64, Known>,
        compare: bool,
        writer: &mut SetWriter<'_>,
    ) -> Result<u64, DumpError> {
        self.flush_with(
            |addr| {
                if !compare {
                    return None;
                }
                let (_, k) = known.range(..=addr).next_back()?;
                lookup(k, addr)
            },
            writer,
        )
    }

    /// Reads the queued runs and hands the pages to the writer, leaving out those for which
    /// `previous(addr)` is the same content. A run the process unmapped meanwhile is skipped
    /// (its mapping is gone or new next round).
    pub(super) fn flush_with(
        &mut self,
        previous: impl Fn(u64) -> Option<PageRef> + Sync,
        writer: &mut SetWriter<'_>,
    ) -> Result<u64, DumpError> {
        if self.pages == 0 {
            return Ok(0);
        }
        let runs = std::mem::take(&mut self.runs);
        let pages = std::mem::replace(&mut self.pages, 0);
        let dst = &mut self.buf.as_mut_slice()[..pages * PAGE_SIZE];
        let mut ok = vec![true; runs.len()];
        if memory::read_runs(self.pid, &mut self.mem, &runs, dst).is_err() {
            // Not frozen: a mapping may have gone since maps was read. Read run by run.
            let mut off = 0;
            for (i, r) in runs.iter().enumerate() {
                let len = r.pages * PAGE_SIZE;
                if memory::read_runs(self.pid, &mut self.mem, &[*r], &mut dst[off..off + len])
                    .is_err()
                {
                    tracing::debug!(
                        pid = self.pid,
                        addr = r.addr,
                        "pre-dump skips a run it could not read"
                    );
                    ok[i] = false;
                }
                off += len;
            }
        }
        let addrs: Vec<u64> = runs
            .iter()
            .zip(&ok)
            .flat_map(|(r, ok)| {
                (0..r.pages).map(move |i| (*ok).then_some(r.addr + (i * PAGE_SIZE) as u64))
            })
            .map(|a| a.unwrap_or(u64::MAX))
            .collect();
        let dst = &self.buf.as_slice()[..pages * PAGE_SIZE];
        let send: Vec<bool> = dst
            .par_chunks(PAGE_SIZE)
            .zip(addrs.par_iter())
            .map(|(page, &a)| {
                if a == u64::MAX {
                    return false;
                }
                match previous(a) {
                    None => true,
                    Some(prev) => {
                        let now = if is_zero_page(page) {
                            PageRef::Zero
                        } else {
                            PageRef::Stored(PageId::of(page))
                        };
                        now != prev
                    }
                }
            })
            .collect();
        let n = send.iter().filter(|s| **s).count();
        if n == 0 {
            return Ok(0);
        }
        let mut data = writer.buffer();
        let mut out_addrs = Vec::with_capacity(n);
        for (i, (&a, &s)) in addrs.iter().zip(&send).enumerate() {
            if s {
                out_addrs.push(crate::image::page_key(self.space, a));
                data.extend_from_slice(&dst[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]);
            }
        }
        writer.add_pages(&out_addrs, data)?;
        Ok(n as u64)
    }
}
