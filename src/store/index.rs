//! The page index: page id → (pack, frame, slot), kept as one segment file per pack.
//!
//! `index/<pack id>.idx` is written right after its pack is renamed into place:
//!
//! ```text
//! "HAULIDX\n", version: u32, 0: u32, pack id: [u8; 16], pack length: u64, footer length: u64,
//! footer (the pack's footer, same encoding), BLAKE3 (32 bytes) of everything before
//! ```
//!
//! On open every segment is loaded into a hash map. A pack without a segment (a crash between
//! the two renames, or a deleted `index/`) or with a corrupt one gets its segment rebuilt from the
//! pack's own footer. Segments whose pack is gone are kept aside: their pages are not offered for
//! deduplication, only used to name the missing pack in errors.

use super::footer::{read_footer, CommittedPack, Footer, FormatError, FrameInfo, PackId, Reader};
use super::fsutil;
use super::StoreError;
use crate::image::PageId;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};

const SEG_MAGIC: &[u8; 8] = b"HAULIDX\n";
const SEG_VERSION: u32 = 1;
const SEG_HEAD: usize = 48;

/// Page ids are already uniformly random: hash them by taking their first 8 bytes.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut a = [0u8; 8];
            a[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(a);
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

pub type IdMap<V> = HashMap<PageId, V, BuildHasherDefault<IdHasher>>;

/// Where a page is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// Position in [`Index::packs`].
    pub pack: u32,
    pub frame: u32,
    pub slot: u16,
}

/// What the index knows of one pack.
#[derive(Clone, Debug)]
pub struct PackInfo {
    pub id: PackId,
    pub len: u64,
    pub frames: Vec<FrameInfo>,
    pub npages: u32,
}

impl PackInfo {
    /// Compressed bytes attributed to one page of `frame` (the frame's share per page).
    pub fn page_cost(&self, frame: u32) -> u64 {
        self.frames
            .get(frame as usize)
            .map(|f| f.clen as u64 / f.npages.max(1) as u64)
            .unwrap_or(0)
    }
}

/// A `packs/xx/` directory the index could not list.
#[derive(Debug)]
pub struct UnlistedDir {
    /// Its name under `packs/` (the first two hex digits of the pack ids it holds).
    pub name: String,
    pub error: std::io::Error,
}

impl UnlistedDir {
    /// True when pack `id` would live in this directory.
    pub fn holds(&self, id: &PackId) -> bool {
        id.to_hex().starts_with(&self.name)
    }
}

impl std::fmt::Display for UnlistedDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "packs/{}: {}", self.name, self.error)
    }
}

/// The in-memory index.
#[derive(Default)]
pub struct Index {
    pub packs: Vec<PackInfo>,
    pub by_pack: HashMap<PackId, u32>,
    pub pages: IdMap<Loc>,
    /// Pages whose pack is listed by a segment but missing from `packs/`.
    pub missing: IdMap<PackId>,
    /// Packs whose footer could not be read to rebuild their segment, with the reason.
    pub unreadable: Vec<(PackId, FormatError)>,
    /// `packs/xx/` directories that could not be listed: the packs in them are unknown to this
    /// load (their pages read as missing, and gc must leave their index segments alone).
    pub unlisted: Vec<UnlistedDir>,
    /// Segments rebuilt from pack footers by the last load.
    pub rebuilt: Vec<PackId>,
    /// Names seen by the last load (segments, packs), to notice changes cheaply.
    seen: (BTreeSet<PackId>, BTreeSet<PackId>),
}

pub(super) fn seg_path(root: &Path, id: &PackId) -> PathBuf {
    root.join("index").join(format!("{}.idx", id.to_hex()))
}

pub(super) fn encode_segment(c: &CommittedPack) -> Vec<u8> {
    let footer = c.footer.encode();
    let mut out = Vec::with_capacity(SEG_HEAD + footer.len() + 32);
    out.extend_from_slice(SEG_MAGIC);
    out.extend_from_slice(&SEG_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&c.id.0);
    out.extend_from_slice(&c.len.to_le_bytes());
    out.extend_from_slice(&(footer.len() as u64).to_le_bytes());
    out.extend_from_slice(&footer);
    let h = blake3::hash(&out);
    out.extend_from_slice(h.as_bytes());
    out
}

pub(super) fn decode_segment(b: &[u8], want: &PackId) -> Result<(u64, Footer), FormatError> {
    if b.len() < SEG_HEAD + 32 || &b[..8] != SEG_MAGIC {
        return Err(FormatError::NotASegment);
    }
    let (body, sum) = b.split_at(b.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err(FormatError::SegmentChecksum);
    }
    let mut r = Reader(&body[8..]);
    let version = r.u32()?;
    if version > SEG_VERSION {
        return Err(FormatError::NewerSegment(version));
    }
    r.u32()?;
    if r.take(16)? != want.0 {
        return Err(FormatError::SegmentOfAnotherPack);
    }
    let len = r.u64()?;
    let flen = r.u64()?;
    if flen as usize != r.0.len() {
        return Err(FormatError::SegmentFooterLength);
    }
    let data_len = len.saturating_sub(flen + super::footer::TRAILER_LEN as u64);
    Ok((len, Footer::decode(r.0, data_len)?))
}

/// Writes the index segment of a freshly committed pack. Not fsynced: a segment is a cache
/// of the pack's own footer, checked on load and rebuilt from the pack when a crash left it
/// missing, short or corrupt.
pub fn write_segment(root: &Path, c: &CommittedPack) -> Result<(), StoreError> {
    fsutil::write_cache(root, &seg_path(root, &c.id), &encode_segment(c))
}

/// Pack ids present under `packs/`, and the `packs/xx/` directories that could not be listed
/// (a plain file there is not a pack directory and is passed over).
pub fn list_packs(root: &Path) -> Result<(BTreeSet<PackId>, Vec<UnlistedDir>), StoreError> {
    let mut out = BTreeSet::new();
    let mut unlisted = Vec::new();
    let dir = root.join("packs");
    let rd = std::fs::read_dir(&dir)
        .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
    for sub in rd {
        let sub = sub.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        let inner = match std::fs::read_dir(sub.path()) {
            Ok(inner) => inner,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => continue,
            Err(error) => {
                unlisted.push(UnlistedDir {
                    name: sub.file_name().to_string_lossy().into_owned(),
                    error,
                });
                continue;
            }
        };
        for f in inner {
            let f = match f {
                Ok(f) => f,
                Err(error) => {
                    unlisted.push(UnlistedDir {
                        name: sub.file_name().to_string_lossy().into_owned(),
                        error,
                    });
                    break;
                }
            };
            let name = f.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(".pack").and_then(PackId::from_hex) {
                out.insert(id);
            }
        }
    }
    Ok((out, unlisted))
}

fn list_segments(root: &Path) -> Result<BTreeSet<PackId>, StoreError> {
    let dir = root.join("index");
    let mut out = BTreeSet::new();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A deleted index/ is rebuilt from pack footers.
            fsutil::create_dir(&dir)?;
            return Ok(out);
        }
        Err(e) => return Err(StoreError::io(format!("listing {}", dir.display()), e)),
    };
    for f in rd.flatten() {
        let name = f.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name.strip_suffix(".idx").and_then(PackId::from_hex) {
            out.insert(id);
        }
    }
    Ok(out)
}

impl Index {
    /// Loads every segment, rebuilding those that are missing or corrupt from pack footers.
    pub fn load(root: &Path) -> Result<Index, StoreError> {
        Index::load_from(root, None)
    }

    /// [`Index::load`], with the packs that exist given by the caller instead of listed under
    /// `packs/`: a bucket store's cache indexes the packs of the bucket (see
    /// [`super::bucket`]), whether or not it holds them locally.
    pub fn load_from(root: &Path, present: Option<&BTreeSet<PackId>>) -> Result<Index, StoreError> {
        let (packs, unlisted) = match present {
            Some(p) => (p.clone(), Vec::new()),
            None => list_packs(root)?,
        };
        let segs = list_segments(root)?;
        let mut idx = Index::default();
        for d in &unlisted {
            tracing::warn!(
                "cannot list {d}: the packs in it are not indexed (their pages read as \
                 missing, gc leaves them alone); fix its permissions and run `haul images verify`"
            );
        }
        idx.unlisted = unlisted;
        for id in segs.union(&packs) {
            idx.take_in(root, id, segs.contains(id), packs.contains(id));
        }
        idx.seen = (segs, packs);
        Ok(idx)
    }

    /// Indexes pack `id` as [`Index::load_from`] finds it: from its segment (`have_seg`), or
    /// from the pack's own footer when the segment is missing or corrupt (and the segment is
    /// written again); a segment whose pack is gone (`have_pack` false) only names the pack
    /// its pages are missing from.
    fn take_in(&mut self, root: &Path, id: &PackId, have_seg: bool, have_pack: bool) {
        let from_seg = if have_seg {
            std::fs::read(seg_path(root, id))
                .map_err(FormatError::Io)
                .and_then(|b| decode_segment(&b, id))
                .map_err(|e| tracing::debug!("index segment of pack {id}: {e}"))
        } else {
            Err(())
        };
        match (from_seg, have_pack) {
            (Ok((len, footer)), true) => self.add(*id, len, &footer),
            (Ok((_, footer)), false) => {
                for p in &footer.pages {
                    self.missing.insert(p.id, *id);
                }
            }
            (Err(_), true) => {
                let path = id.path(root);
                // The length goes into the segment: a pack that cannot be measured is
                // unreadable, not a pack of 0 bytes.
                let read = read_footer(&path).and_then(|footer| {
                    let len = std::fs::metadata(&path).map_err(FormatError::Io)?.len();
                    Ok((footer, len))
                });
                match read {
                    Ok((footer, len)) => {
                        let c = CommittedPack {
                            id: *id,
                            len,
                            footer,
                        };
                        // Best effort: a read-only store still works from memory.
                        if let Err(e) = write_segment(root, &c) {
                            tracing::warn!("cannot rewrite index segment of pack {id}: {e}");
                        }
                        self.add(*id, len, &c.footer);
                        self.rebuilt.push(*id);
                    }
                    Err(reason) => self.unreadable.push((*id, reason)),
                }
            }
            (Err(_), false) => {}
        }
    }

    /// Reloads when segments or packs appeared or disappeared since the last load.
    pub fn refresh(&mut self, root: &Path) -> Result<(), StoreError> {
        self.refresh_from(root, None)
    }

    /// [`Index::refresh`] with the packs that exist given (see [`Index::load_from`]).
    pub fn refresh_from(
        &mut self,
        root: &Path,
        present: Option<&BTreeSet<PackId>>,
    ) -> Result<(), StoreError> {
        let (packs, unlisted) = match present {
            Some(p) => (p.clone(), Vec::new()),
            None => list_packs(root)?,
        };
        let segs = list_segments(root)?;
        if self.seen.0 == segs && self.seen.1 == packs {
            return Ok(());
        }
        if !self.only_added(&segs, &packs) || !unlisted.is_empty() || !self.unlisted.is_empty() {
            *self = Index::load_from(root, present)?;
            return Ok(());
        }
        // Only new packs (another process committed): index those alone. Reloading every
        // segment took a restore 20-30 ms of a migration's pause for one new pack.
        let new: Vec<PackId> = segs
            .union(&packs)
            .filter(|id| !self.seen.0.contains(id) && !self.seen.1.contains(id))
            .copied()
            .collect();
        for id in &new {
            self.take_in(root, id, segs.contains(id), packs.contains(id));
        }
        self.seen = (segs, packs);
        Ok(())
    }

    /// True when `segs` and `packs` only add to what the last load saw: nothing removed, and
    /// no pack it knew changed state (a segment whose pack appeared, or one that failed to
    /// load). A segment written for a pack it indexed (rebuilt) changes nothing.
    fn only_added(&self, segs: &BTreeSet<PackId>, packs: &BTreeSet<PackId>) -> bool {
        let (seen_segs, seen_packs) = &self.seen;
        if !seen_segs.is_subset(segs) || !seen_packs.is_subset(packs) {
            return false;
        }
        let known = |id: &PackId| seen_segs.contains(id) || seen_packs.contains(id);
        let pack_appeared = packs.iter().any(|id| !seen_packs.contains(id) && known(id));
        let seg_of_unindexed = segs
            .iter()
            .any(|id| !seen_segs.contains(id) && known(id) && !self.by_pack.contains_key(id));
        !pack_appeared && !seg_of_unindexed
    }

    /// Adds a pack's pages; a page already indexed keeps its first location.
    pub fn add(&mut self, id: PackId, len: u64, footer: &Footer) {
        if self.by_pack.contains_key(&id) {
            return;
        }
        let n = self.packs.len() as u32;
        self.packs.push(PackInfo {
            id,
            len,
            frames: footer.frames.clone(),
            npages: footer.pages.len() as u32,
        });
        self.by_pack.insert(id, n);
        self.pages.reserve(footer.pages.len());
        for p in &footer.pages {
            self.pages.entry(p.id).or_insert(Loc {
                pack: n,
                frame: p.frame,
                slot: p.slot,
            });
        }
    }

    /// Records a pack this process just committed.
    pub fn add_committed(&mut self, c: &CommittedPack) {
        self.add(c.id, c.len, &c.footer);
        self.seen.0.insert(c.id);
        self.seen.1.insert(c.id);
    }

    pub fn lookup(&self, id: &PageId) -> Option<(Loc, &PackInfo)> {
        let loc = *self.pages.get(id)?;
        Some((loc, self.packs.get(loc.pack as usize)?))
    }
}
