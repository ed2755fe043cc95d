//! Dumping into the image store: the store's set writer is the dump's page sink, so pages are
//! hashed, deduplicated and compressed on rayon while the dump hands over more.

use std::time::Instant;

use super::{DumpError, DumpOptions, DumpStats, PageSink};
use crate::image::{ImageSet, SetKind};
use crate::store::{SetWriter, Store};
use crate::sys::mem::PageBuf;

impl PageSink for SetWriter<'_> {
    fn add_pages(&mut self, addrs: &[u64], data: PageBuf) -> Result<(), DumpError> {
        SetWriter::add_pages(self, addrs, data).map_err(|e| DumpError::Sink(Box::new(e)))
    }

    fn buffer(&mut self, len: usize) -> PageBuf {
        SetWriter::buffer_of_len(self, len)
    }

    fn add_ref(&mut self, addr: u64, r: crate::image::PageRef) -> Result<(), DumpError> {
        SetWriter::add_ref(self, addr, r);
        Ok(())
    }
}

/// A final dump committed to the store.
#[derive(Clone, Debug)]
pub struct StoredDump {
    pub set: ImageSet,
    pub stats: DumpStats,
}

/// Dumps the tree rooted at process `pid` into `store` as a final dump of `job`, compressed at
/// `level` (None: no compression). The set is listed only once committed: a failed dump leaves
/// no set (its packs, if any, are unreferenced and go at the next gc). `memwrite_time` includes
/// the commit. Without `leave_running`, the processes are killed only after the commit; any
/// failure before thaws every one.
pub fn dump_to_store(
    pid: i32,
    store: &Store,
    job: &str,
    opts: &DumpOptions,
    level: Option<i32>,
) -> Result<StoredDump, DumpError> {
    if opts.lazy {
        return Err(DumpError::Internal(
            "a lazy dump keeps the process frozen: use dump_to_store_lazy".into(),
        ));
    }
    let mut writer = store.begin_set(job, SetKind::Dump, None, level)?;
    if opts.around_page_cache() {
        writer.write_around_page_cache();
    }
    let (out, kept) = super::dump_planned(pid, opts, &mut writer, None)?;
    // A process to kill is still frozen here: an error before `end_frozen` drops the guard,
    // which thaws it. It dies only once its set is committed and fsynced.
    let t = Instant::now();
    let mut stats = out.stats;
    if kept.is_some() {
        stats.marks.push(super::mark("commit"));
    }
    writer.set_tree(out.tree);
    let set = writer.commit(Some(out.process))?;
    stats.memwrite_time += crate::util::us(t.elapsed());
    super::end_frozen(pid, kept, &mut stats, opts)?;
    Ok(StoredDump { set, stats })
}
