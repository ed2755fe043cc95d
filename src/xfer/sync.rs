//! Store-to-store sync: copy an image set's manifest and only the pages the destination lacks
//! (deduplicated against its index), from a local store (`push`) or a page server (`pull`).
//! The copy keeps the set's id, so a lazy restore on the destination names it alike.

use std::path::Path;
use std::time::Duration;

use super::{Client, XferError};
use crate::image::{ImageSet, PageId, PageRef, PAGE_SIZE};
use crate::store::Store;
use crate::sys::mem::PageBuf;

/// Pages fetched from the source at a time.
const BATCH: usize = 256;

/// Appends the content of each `(addr, id)` page to the buffer, each checked against its id.
pub type FetchPages<'a> = dyn FnMut(&[(u64, PageId)], &mut PageBuf) -> Result<(), XferError> + 'a;

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    pub set: String,
    /// The destination had the set already: nothing was copied.
    pub already_there: bool,
    /// Pages of the set's table (zero and lazy included).
    pub pages: u64,
    /// Stored pages the destination already held (not transferred).
    pub pages_skipped: u64,
    /// Pages transferred.
    pub pages_sent: u64,
    /// Page bytes transferred (4096 per page sent).
    pub bytes_sent: u64,
    /// Bytes received over the network, frames included (0 for a local push).
    pub bytes_network: u64,
}

fn store_err(context: String) -> impl FnOnce(crate::store::StoreError) -> XferError {
    move |source| XferError::Store {
        context,
        source: Box::new(source),
    }
}

/// Copies `set` into `dest`: the pages `dest` lacks come from `fetch` (which appends the content
/// of each `(addr, id)` to its buffer, checked against the id), the others are referenced; the
/// manifest is committed last, under the set's own id. A set `dest` holds already is left alone.
pub fn copy_set(
    set: &ImageSet,
    dest: &Store,
    level: Option<i32>,
    fetch: &mut FetchPages<'_>,
) -> Result<SyncReport, XferError> {
    let mut rep = SyncReport {
        set: set.id.clone(),
        ..Default::default()
    };
    if dest.load_set(&set.id).is_ok() {
        rep.already_there = true;
        return Ok(rep);
    }
    let into = dest.location().display().to_string();
    // A parent the destination lacks is not carried: a final dump's table is complete.
    let parent = set.parent.as_deref().filter(|p| dest.load_set(p).is_ok());
    // begin_set refreshes the index, so `has_page` sees every page committed before it.
    let mut w = dest
        .begin_set(&set.job, set.kind, parent, level)
        .map_err(store_err(format!("copying {} into {into}", set.id)))?;
    w.keep_identity(&set.id, set.created_us)
        .map_err(store_err(format!("copying into {into}")))?;
    let mut want: Vec<(u64, PageId)> = Vec::with_capacity(BATCH);
    let mut queued: std::collections::HashSet<PageId> = Default::default();
    let mut flush = |want: &mut Vec<(u64, PageId)>,
                     w: &mut crate::store::SetWriter<'_>,
                     rep: &mut SyncReport|
     -> Result<(), XferError> {
        if want.is_empty() {
            return Ok(());
        }
        let mut buf = w.buffer();
        buf.clear();
        fetch(want, &mut buf)?;
        if buf.len() != want.len() * PAGE_SIZE {
            return Err(XferError::Setup(format!(
                "set {}: {} bytes for {} pages",
                set.id,
                buf.len(),
                want.len()
            )));
        }
        let addrs: Vec<u64> = want.iter().map(|(a, _)| *a).collect();
        rep.pages_sent += want.len() as u64;
        rep.bytes_sent += buf.len() as u64;
        w.add_pages(&addrs, buf)
            .map_err(store_err(format!("writing set {} into {into}", set.id)))?;
        want.clear();
        Ok(())
    };
    for (addr, r) in set.pages.iter() {
        rep.pages += 1;
        match r {
            PageRef::Zero | PageRef::Lazy(_) => w.add_ref(addr, r),
            PageRef::Stored(id) if dest.has_page(&id) || queued.contains(&id) => {
                rep.pages_skipped += 1;
                w.add_ref(addr, r);
            }
            PageRef::Stored(id) => {
                queued.insert(id);
                want.push((addr, id));
                if want.len() >= BATCH {
                    flush(&mut want, &mut w, &mut rep)?;
                }
            }
        }
    }
    flush(&mut want, &mut w, &mut rep)?;
    w.commit(set.process.clone())
        .map_err(store_err(format!("committing set {} into {into}", set.id)))?;
    Ok(rep)
}

/// `haul images push SET --to DIR`: copies set `id` of `src` into `dest`.
pub fn push(
    src: &Store,
    id: &str,
    dest: &Store,
    level: Option<i32>,
) -> Result<SyncReport, XferError> {
    let set = src
        .load_set(id)
        .map_err(store_err(format!("reading set {id}")))?;
    let mut fetch = |pages: &[(u64, PageId)], out: &mut PageBuf| -> Result<(), XferError> {
        for (addr, pid) in pages {
            let p = src
                .read_page_at(pid, id, *addr)
                .map_err(store_err(format!("reading {}", src.location().display())))?;
            out.extend_from_slice(&p);
        }
        Ok(())
    };
    copy_set(&set, dest, level, &mut fetch)
}

/// `haul images pull SET --from HOST:PORT`: copies set `id` from the page server at `addr`
/// into the store at `dest`, which is created when missing, but only once the server has
/// answered with the set's manifest: an unreachable server, a refused token or an unknown set
/// leave nothing behind.
pub fn pull(
    addr: &str,
    token: &[u8],
    timeout: Duration,
    id: &str,
    dest: &Path,
    level: Option<i32>,
) -> Result<SyncReport, XferError> {
    let mut c = Client::connect(addr, token, timeout)?;
    let set = c.manifest(id)?;
    if set.id != id {
        return Err(XferError::Protocol {
            peer: addr.into(),
            message: format!("asked for set {id}, got the manifest of {}", set.id),
        });
    }
    let dest = Store::open_or_create(dest)?;
    let mut fetch = |pages: &[(u64, PageId)], out: &mut PageBuf| {
        let mut got = Vec::with_capacity(pages.len() * PAGE_SIZE);
        c.pages(id, pages, &mut got)?;
        out.extend_from_slice(&got);
        Ok(())
    };
    let mut rep = copy_set(&set, &dest, level, &mut fetch)?;
    rep.bytes_network = c.bytes;
    Ok(rep)
}
