//! Versioned, checksummed encoding of image-set manifests (owned by the store issue).
//!
//! A manifest file is laid out as follows (all integers little-endian):
//!
//! ```text
//!  0  magic        8 bytes  "HAULSET\n"
//!  8  version      u32      MANIFEST_VERSION
//! 12  reserved     u32      0
//! 16  meta_len     u64      bytes of the compressed meta section
//! 24  table_len    u64      bytes of the compressed page-table section
//! 32  meta_hash    32 bytes BLAKE3 of the compressed meta section
//! 64  table_hash   32 bytes BLAKE3 of the compressed page-table section
//! 96  meta         zstd frame: JSON of the set's summary and process image
//!     table        zstd frame: the page table as runs (below)
//! ```
//!
//! The meta section comes first and has its own checksum so that listing sets reads only the
//! small head of each manifest. The page table is a sequence of runs of contiguous pages:
//! `start: u64, count: u32`, then per page a tag byte (0 zero, 1 stored, 2 lazy) followed by the
//! 16-byte page id for stored and lazy pages: at most 17 bytes per page before compression.

use super::{
    ImageSet, PageId, PageRef, PageTable, ProcessImage, SetFigures, SetKind, Tree, PAGE_SIZE,
};
use serde::{Deserialize, Serialize};
use std::io::Write;

/// Magic bytes opening every manifest.
pub const MANIFEST_MAGIC: &[u8; 8] = b"HAULSET\n";
/// The manifest format this build writes and the newest it reads: 2 for a set of several
/// processes (a tree), whose descendants an older build would silently leave behind; a
/// one-process set is still written as 1, which every build reads.
pub const MANIFEST_VERSION: u32 = 2;
/// The version of a one-process set.
const ONE_PROCESS_VERSION: u32 = 1;
/// Size of the fixed header before the two sections.
pub const HEADER_LEN: usize = 96;

const TAG_ZERO: u8 = 0;
const TAG_STORED: u8 = 1;
const TAG_LAZY: u8 = 2;

/// Errors decoding (or, rarely, encoding) a manifest. The store adds which file it was.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("not a haul manifest (bad magic)")]
    BadMagic,
    #[error("manifest format version {found} is newer than this haul supports ({supported}); upgrade haul")]
    NewerVersion { found: u32, supported: u32 },
    #[error("manifest is truncated: {0}")]
    Truncated(&'static str),
    #[error("manifest {section} checksum mismatch (the file is corrupt)")]
    Checksum { section: &'static str },
    #[error("manifest {section} does not decompress: {source}")]
    Decompress {
        section: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest meta is not valid: {0}")]
    Meta(#[from] serde_json::Error),
    #[error("manifest page table is malformed: {0}")]
    Table(String),
    #[error("compressing manifest: {0}")]
    Compress(#[source] std::io::Error),
}

/// The summary part of a manifest: everything but the page table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetMeta {
    pub id: String,
    pub job: String,
    pub created_us: u64,
    pub kind: SetKind,
    pub parent: Option<String>,
    pub kernel: String,
    pub figures: SetFigures,
    pub process: Option<ProcessImage>,
    /// The root's descendants, and what the set holds beside its processes (SysV IPC
    /// objects, stored files); absent in a one-process set without them.
    #[serde(default, skip_serializing_if = "holds_nothing")]
    pub tree: Tree,
}

/// A tree with no other process, no SysV IPC objects and no stored files: left out of the
/// manifest.
fn holds_nothing(t: &Tree) -> bool {
    t.is_empty() && t.ipc.is_none() && t.files.is_empty() && t.netlock.is_none()
}

impl SetMeta {
    fn of(set: &ImageSet) -> SetMeta {
        SetMeta {
            id: set.id.clone(),
            job: set.job.clone(),
            created_us: set.created_us,
            kind: set.kind,
            parent: set.parent.clone(),
            kernel: set.kernel.clone(),
            figures: set.figures.clone(),
            process: set.process.clone(),
            tree: set.tree.clone(),
        }
    }
}

/// Encodes the page table as runs of contiguous pages (see the module doc).
pub fn encode_table(table: &PageTable) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_table_len(table));
    // Writing to a Vec never fails.
    let _ = encode_table_to(table, &mut out);
    out
}

/// The runs of contiguous pages of `table`, as `(first entry, entry count)`.
fn runs(entries: &[(u64, PageRef)]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        if i >= entries.len() {
            return None;
        }
        let start = entries[i].0;
        let mut j = i + 1;
        while j < entries.len()
            && entries[j].0 == start + ((j - i) * PAGE_SIZE) as u64
            && j - i < u32::MAX as usize
        {
            j += 1;
        }
        let run = (i, j - i);
        i = j;
        Some(run)
    })
}

/// The length of [`encode_table`]'s output.
fn encoded_table_len(table: &PageTable) -> usize {
    let entries = table.entries();
    let refs: usize = entries
        .iter()
        .map(|(_, r)| if *r == PageRef::Zero { 1 } else { 17 })
        .sum();
    refs + runs(entries).count() * 12
}

/// [`encode_table`] into `w`.
fn encode_table_to(table: &PageTable, w: &mut impl Write) -> std::io::Result<()> {
    let entries = table.entries();
    for (i, n) in runs(entries) {
        w.write_all(&entries[i].0.to_le_bytes())?;
        w.write_all(&(n as u32).to_le_bytes())?;
        for (_, r) in &entries[i..i + n] {
            match r {
                PageRef::Zero => w.write_all(&[TAG_ZERO])?,
                PageRef::Stored(id) => {
                    w.write_all(&[TAG_STORED])?;
                    w.write_all(&id.0)?;
                }
                PageRef::Lazy(id) => {
                    w.write_all(&[TAG_LAZY])?;
                    w.write_all(&id.0)?;
                }
            }
        }
    }
    Ok(())
}

/// Decodes a page table encoded by [`encode_table`].
pub fn decode_table(mut b: &[u8]) -> Result<PageTable, EncodeError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], EncodeError> {
        if b.len() < n {
            return Err(EncodeError::Table(format!(
                "needed {n} more bytes, {} left",
                b.len()
            )));
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h)
    }
    // Entries come in address order: collected first, the table is built in bulk (a
    // migration's restore decodes a table of the whole memory inside its pause).
    let mut entries: Vec<(u64, PageRef)> = Vec::with_capacity(b.len() / 17 + 1);
    while !b.is_empty() {
        let start = u64::from_le_bytes(take(&mut b, 8)?.try_into().unwrap_or_default());
        let count = u32::from_le_bytes(take(&mut b, 4)?.try_into().unwrap_or_default());
        if start % PAGE_SIZE as u64 != 0 {
            return Err(EncodeError::Table(format!(
                "run start {start:#x} is not page-aligned"
            )));
        }
        for k in 0..count as u64 {
            let addr = start
                .checked_add(k * PAGE_SIZE as u64)
                .ok_or_else(|| EncodeError::Table(format!("run at {start:#x} overflows")))?;
            let tag = take(&mut b, 1)?[0];
            let r = match tag {
                TAG_ZERO => PageRef::Zero,
                TAG_STORED | TAG_LAZY => {
                    let mut id = [0u8; 16];
                    id.copy_from_slice(take(&mut b, 16)?);
                    if tag == TAG_STORED {
                        PageRef::Stored(PageId(id))
                    } else {
                        PageRef::Lazy(PageId(id))
                    }
                }
                t => {
                    return Err(EncodeError::Table(format!(
                        "unknown page tag {t} at {addr:#x}"
                    )))
                }
            };
            entries.push((addr, r));
        }
    }
    Ok(entries.into_iter().collect())
}

/// zstd level of a manifest's page table. A final dump that stops the process writes its
/// manifest (a page table of the whole memory, ~3 MB per 176k pages) inside the pause, and a
/// migration's restore reads it there. The table is mostly page hashes, which do not
/// compress: level 1 saved nothing measurable (3.0 MB either way for 176k pages). A fast
/// (negative) level stores them as they are, which also makes the restore's decompression a
/// copy (commit and load each a few ms shorter per GiB). Runs of zero pages (a tag byte each)
/// still compress at this level.
const TABLE_LEVEL: i32 = -5;

/// Encodes a whole manifest: the metadata compressed with zstd level 3, the page table with
/// [`TABLE_LEVEL`].
pub fn encode_manifest(set: &ImageSet) -> Result<Vec<u8>, EncodeError> {
    encode_manifest_with(set, compress_table(&set.pages)?)
}

/// The page table's part of a manifest: [`encode_table`], compressed at [`TABLE_LEVEL`]. A
/// set writer works it out beside its figures, then writes it after [`manifest_head`].
///
/// The table is encoded in pieces straight into the compressor, whose output buffer is sized
/// once: a final dump does this inside its pause, where every fresh MB costs ~0.5 ms of page
/// faults (the encoded table of 1 GiB of memory is ~4.5 MB). The frame records its size, for
/// the reader's one-buffer decompression.
pub fn compress_table(table: &PageTable) -> Result<Vec<u8>, EncodeError> {
    let len = encoded_table_len(table);
    let out = Vec::with_capacity(zstd::zstd_safe::compress_bound(len));
    let mut z = zstd::stream::Encoder::new(out, TABLE_LEVEL).map_err(EncodeError::Compress)?;
    z.include_contentsize(true).map_err(EncodeError::Compress)?;
    z.set_pledged_src_size(Some(len as u64))
        .map_err(EncodeError::Compress)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 16, z);
    encode_table_to(table, &mut w).map_err(EncodeError::Compress)?;
    let z = w
        .into_inner()
        .map_err(|e| EncodeError::Compress(e.into_error()))?;
    z.finish().map_err(EncodeError::Compress)
}

/// [`encode_manifest`] with `table`, the [`compress_table`] of `set.pages`.
pub fn encode_manifest_with(set: &ImageSet, table: Vec<u8>) -> Result<Vec<u8>, EncodeError> {
    let mut out = manifest_head(set, &table)?;
    out.extend_from_slice(&table);
    Ok(out)
}

/// A manifest up to its page table (magic, header, meta): [`encode_manifest_with`] is this
/// followed by `table`, which a store writes after it rather than copy both into one buffer.
pub fn manifest_head(set: &ImageSet, table: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let meta_json = serde_json::to_vec(&SetMeta::of(set))?;
    let meta = zstd::bulk::compress(&meta_json, 3).map_err(EncodeError::Compress)?;
    let mut out = Vec::with_capacity(HEADER_LEN + meta.len());
    out.extend_from_slice(MANIFEST_MAGIC);
    // An older build reads a version-1 manifest and would silently leave out what it does
    // not know: descendants, SysV IPC objects, seccomp filters. Only a set with none of them
    // is written as version 1.
    let plain = holds_nothing(&set.tree) && set.processes().all(|(_, p)| p.seccomp.is_none());
    let version = if plain {
        ONE_PROCESS_VERSION
    } else {
        MANIFEST_VERSION
    };
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    out.extend_from_slice(&(table.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(&meta).as_bytes());
    out.extend_from_slice(blake3::hash(table).as_bytes());
    out.extend_from_slice(&meta);
    Ok(out)
}

/// The fixed header of a manifest, decoded and checked for magic and version.
#[derive(Clone, Debug)]
pub struct ManifestHeader {
    pub version: u32,
    pub meta_len: u64,
    pub table_len: u64,
    pub meta_hash: [u8; 32],
    pub table_hash: [u8; 32],
}

/// Decodes the fixed header (the first [`HEADER_LEN`] bytes).
pub fn decode_header(b: &[u8]) -> Result<ManifestHeader, EncodeError> {
    if b.len() < 12 {
        return Err(EncodeError::Truncated("header"));
    }
    if &b[..8] != MANIFEST_MAGIC {
        return Err(EncodeError::BadMagic);
    }
    let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if version > MANIFEST_VERSION {
        return Err(EncodeError::NewerVersion {
            found: version,
            supported: MANIFEST_VERSION,
        });
    }
    if version == 0 {
        return Err(EncodeError::Table(
            "version 0 is not a valid manifest version".into(),
        ));
    }
    if b.len() < HEADER_LEN {
        return Err(EncodeError::Truncated("header"));
    }
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let mut meta_hash = [0u8; 32];
    meta_hash.copy_from_slice(&b[32..64]);
    let mut table_hash = [0u8; 32];
    table_hash.copy_from_slice(&b[64..96]);
    Ok(ManifestHeader {
        version,
        meta_len: u64_at(16),
        table_len: u64_at(24),
        meta_hash,
        table_hash,
    })
}

fn section<'a>(
    b: &'a [u8],
    start: u64,
    len: u64,
    hash: &[u8; 32],
    name: &'static str,
) -> Result<&'a [u8], EncodeError> {
    let end = start
        .checked_add(len)
        .filter(|e| *e <= b.len() as u64)
        .ok_or(EncodeError::Truncated(name))?;
    let s = &b[start as usize..end as usize];
    checksum(s, hash, name)?;
    Ok(s)
}

/// Whether section `s` hashes to `hash`.
fn checksum(s: &[u8], hash: &[u8; 32], name: &'static str) -> Result<(), EncodeError> {
    if blake3::hash(s).as_bytes() != hash {
        return Err(EncodeError::Checksum { section: name });
    }
    Ok(())
}

/// Largest section decompressed in one buffer sized from its frame header; a larger (or
/// unsized) one is streamed.
const SIZED_UP_TO: u64 = 1 << 30;

fn decompress(s: &[u8], name: &'static str) -> Result<Vec<u8>, EncodeError> {
    let err = |source| EncodeError::Decompress {
        section: name,
        source,
    };
    // Written by `zstd::bulk::compress`, which records the size: one buffer of that size,
    // filled once (a streamed decode grows its buffer by copies, fresh memory each time,
    // inside a migration's pause).
    match zstd::zstd_safe::get_frame_content_size(s) {
        Ok(Some(n)) if n <= SIZED_UP_TO => zstd::bulk::decompress(s, n as usize).map_err(err),
        _ => zstd::stream::decode_all(s).map_err(err),
    }
}

/// Decodes the meta section only. `b` must hold at least the header and the meta section.
pub fn decode_meta(b: &[u8]) -> Result<SetMeta, EncodeError> {
    let h = decode_header(b)?;
    let meta = section(b, HEADER_LEN as u64, h.meta_len, &h.meta_hash, "meta")?;
    Ok(serde_json::from_slice(&decompress(meta, "meta")?)?)
}

/// Decodes a whole manifest.
pub fn decode_manifest(b: &[u8]) -> Result<ImageSet, EncodeError> {
    let h = decode_header(b)?;
    let meta = section(b, HEADER_LEN as u64, h.meta_len, &h.meta_hash, "meta")?;
    let table_start = HEADER_LEN as u64 + h.meta_len;
    // The table runs to the end of the manifest.
    let table = (table_start.checked_add(h.table_len) == Some(b.len() as u64))
        .then(|| &b[table_start as usize..]);
    // The page table (a restore reads one of the whole memory inside a migration's pause) is
    // decoded while its checksum and the meta are worked out beside it. Errors come in the
    // order the steps would meet them one after the other: a table that fails its checksum is
    // refused as corrupt, whatever its decoding said.
    let ((meta, checked), pages) = rayon::join(
        || {
            let meta =
                decompress(meta, "meta").and_then(|m| Ok(serde_json::from_slice::<SetMeta>(&m)?));
            (
                meta,
                table.map(|t| checksum(t, &h.table_hash, "page table")),
            )
        },
        || table.map(|t| decompress(t, "page table").and_then(|t| decode_table(&t))),
    );
    let meta = meta?;
    let (Some(checked), Some(pages)) = (checked, pages) else {
        return Err(EncodeError::Truncated("page table"));
    };
    checked?;
    let pages = pages?;
    Ok(ImageSet {
        id: meta.id,
        job: meta.job,
        created_us: meta.created_us,
        kind: meta.kind,
        parent: meta.parent,
        kernel: meta.kernel,
        process: meta.process,
        tree: meta.tree,
        pages,
        figures: meta.figures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImageSet {
        let mut pages = PageTable::new();
        for i in 0..10u64 {
            pages.insert(0x1000 * i, PageRef::Zero);
        }
        pages.insert(0x7000_0000, PageRef::Stored(PageId([7; 16])));
        pages.insert(0x7000_1000, PageRef::Lazy(PageId([9; 16])));
        ImageSet {
            id: "j-1".into(),
            job: "j".into(),
            created_us: 5,
            kind: SetKind::Dump,
            parent: Some("j-0".into()),
            kernel: "6.18".into(),
            process: Some(ProcessImage {
                pid: 42,
                comm: "x".into(),
                ..Default::default()
            }),
            tree: Tree::default(),
            pages,
            figures: SetFigures::default(),
        }
    }

    #[test]
    fn manifest_round_trips() {
        let s = sample();
        let b = encode_manifest(&s).unwrap();
        assert_eq!(decode_manifest(&b).unwrap(), s);
        assert_eq!(decode_meta(&b).unwrap().id, "j-1");
        // One process: still version 1, which older builds read.
        assert_eq!(decode_header(&b).unwrap().version, 1);
    }

    #[test]
    fn a_tree_round_trips_as_version_2_with_each_process_in_its_page_space() {
        let mut s = sample();
        let child = ProcessImage {
            pid: 43,
            ppid: 42,
            ..Default::default()
        };
        s.tree.descendants.push(child);
        s.tree.zombies.push(crate::image::ZombieImage {
            pid: 44,
            ppid: 42,
            wait_status: 3 << 8,
            ..Default::default()
        });
        let key = crate::image::page_key(1, 0x7000_0000);
        s.pages.insert(key, PageRef::Stored(PageId([3; 16])));
        let b = encode_manifest(&s).unwrap();
        assert_eq!(decode_header(&b).unwrap().version, 2);
        let back = decode_manifest(&b).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.space_of(43), Some(1));
        assert_eq!(back.process_count(), 3);
        let child_pages: Vec<_> = back.pages_of(1).collect();
        assert_eq!(
            child_pages,
            vec![(0x7000_0000, PageRef::Stored(PageId([3; 16])))]
        );
        // The root's space holds its own pages only.
        assert!(back.pages_of(0).all(|(a, _)| a < 1 << 47));
        assert_eq!(crate::image::split_key(key), (1, 0x7000_0000));
    }

    #[test]
    fn page_table_costs_at_most_17_bytes_per_page() {
        let mut t = PageTable::new();
        for i in 0..1000u64 {
            t.insert(0x10000 + i * 0x1000, PageRef::Stored(PageId([i as u8; 16])));
        }
        assert!(encode_table(&t).len() <= 1000 * 17 + 12);
    }

    #[test]
    fn a_compressed_table_records_its_size_and_is_the_encoded_table() {
        // Runs, zero pages, stored and lazy ones, and enough of them for several blocks.
        let mut pages = sample().pages;
        for i in 0..70_000u64 {
            let id = PageId(
                *blake3::hash(&i.to_le_bytes())
                    .as_bytes()
                    .first_chunk()
                    .unwrap(),
            );
            let r = match i % 5 {
                0 => PageRef::Zero,
                1 => PageRef::Lazy(id),
                _ => PageRef::Stored(id),
            };
            pages.insert(0x10_0000_0000 + 0x1000 * (i + i / 1000), r);
        }
        let encoded = encode_table(&pages);
        assert_eq!(encoded.len(), encoded_table_len(&pages));
        let z = compress_table(&pages).unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&z).unwrap(),
            Some(encoded.len() as u64),
            "the reader sizes its buffer from the frame"
        );
        let back = decompress(&z, "page table").unwrap();
        assert!(
            back == encoded,
            "the compressed table is not the encoded one"
        );
        assert_eq!(decode_table(&back).unwrap(), pages);
        // The manifest's head then its table is the manifest.
        let set = ImageSet { pages, ..sample() };
        let mut parts = manifest_head(&set, &z).unwrap();
        parts.extend_from_slice(&z);
        assert_eq!(decode_manifest(&parts).unwrap(), set);
    }

    #[test]
    fn manifest_rejects_flipped_byte() {
        let b = encode_manifest(&sample()).unwrap();
        let table_start = b.len() - decode_header(&b).unwrap().table_len as usize;
        // In the meta, in the table, and in the table's zstd frame header (the table then
        // does not even decompress: still refused as corrupt, by its checksum).
        for pos in [HEADER_LEN + 3, b.len() - 2, table_start, table_start + 4] {
            let mut c = b.clone();
            c[pos] ^= 0x40;
            let got = decode_manifest(&c);
            assert!(
                matches!(got, Err(EncodeError::Checksum { .. })),
                "byte {pos}: {got:?}"
            );
        }
        // Cut short: the table is refused as truncated.
        let got = decode_manifest(&b[..b.len() - 1]);
        assert!(
            matches!(got, Err(EncodeError::Truncated("page table"))),
            "{got:?}"
        );
    }

    #[test]
    fn page_table_is_written_as_runs_of_contiguous_pages() {
        let t: PageTable = [
            (0x1000, PageRef::Zero),
            (0x2000, PageRef::Stored(PageId([1; 16]))),
            (0x9000, PageRef::Lazy(PageId([2; 16]))),
        ]
        .into_iter()
        .collect();
        let b = encode_table(&t);
        // Two runs: (start, count) heads of 12 bytes, a tag per page, 16 bytes per id.
        assert_eq!(b.len(), 2 * 12 + 3 + 2 * 16);
        assert_eq!(&b[..12], &[0x00, 0x10, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(decode_table(&b).unwrap(), t);
        assert!(decode_table(&[]).unwrap().is_empty());
    }

    #[test]
    fn page_table_decode_names_what_is_wrong() {
        let t: PageTable = [(0x1000, PageRef::Stored(PageId([1; 16])))]
            .into_iter()
            .collect();
        let b = encode_table(&t);
        let cut = decode_table(&b[..b.len() - 1]).unwrap_err().to_string();
        assert!(cut.contains("needed 16 more bytes, 15 left"), "{cut}");
        let mut tag = b.clone();
        tag[12] = 9;
        let e = decode_table(&tag).unwrap_err().to_string();
        assert!(e.contains("unknown page tag 9 at 0x1000"), "{e}");
        let mut odd = b.clone();
        odd[0] = 1;
        let e = decode_table(&odd).unwrap_err().to_string();
        assert!(e.contains("0x1001 is not page-aligned"), "{e}");
    }

    #[test]
    fn manifest_names_newer_version() {
        let mut b = encode_manifest(&sample()).unwrap();
        b[8..12].copy_from_slice(&7u32.to_le_bytes());
        let e = decode_manifest(&b).unwrap_err();
        assert!(e.to_string().contains("version 7"), "{e}");
    }
}
