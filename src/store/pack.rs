//! Pack files: frames of pages, a footer saying where each page is, and a fixed trailer.
//!
//! ```text
//! frame 0 | frame 1 | ... | footer | trailer (48 bytes)
//!
//! footer  = nframes: u32, then per frame  offset: u64, clen: u32, npages: u16, codec: u8, 0: u8
//!           npages: u32, then per page    id: [u8; 16], frame: u32, slot: u16
//! trailer = "HAULPACK", version: u32, 0: u32, footer_offset: u64, footer_len: u64,
//!           footer_hash: first 16 bytes of BLAKE3(footer)
//! ```
//!
//! A frame holds `npages` whole pages, either as one zstd frame (codec 1) or raw (codec 0: no
//! level was asked, or compression did not pay). Every frame decodes on its own, so one page costs
//! one frame decode. The pack id is the BLAKE3 of the whole file (first 16 bytes, hex); the file
//! lives at `packs/<first two hex digits>/<id>.pack`.

use super::fsutil::{self, create_file, fsync_dir};
use super::StoreError;
use crate::image::{PageId, PAGE_SIZE};
use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const PACK_MAGIC: &[u8; 8] = b"HAULPACK";
pub const PACK_VERSION: u32 = 1;
pub const TRAILER_LEN: usize = 48;
const FRAME_REC: usize = 16;
const PAGE_REC: usize = 22;

/// Frame stored as raw pages.
pub const CODEC_RAW: u8 = 0;
/// Frame stored as one zstd frame.
pub const CODEC_ZSTD: u8 = 1;

/// Identity of a pack: the first 16 bytes of the BLAKE3 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PackId(pub [u8; 16]);

impl PackId {
    pub fn to_hex(&self) -> String {
        crate::util::hex(&self.0)
    }
    pub fn from_hex(s: &str) -> Option<PackId> {
        let v = crate::util::unhex(s)?;
        Some(PackId(v.try_into().ok()?))
    }
    /// Path of the pack inside the store.
    pub fn path(&self, root: &Path) -> PathBuf {
        let h = self.to_hex();
        root.join("packs").join(&h[..2]).join(format!("{h}.pack"))
    }
}

impl std::fmt::Display for PackId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Where a frame is in its pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    pub offset: u64,
    pub clen: u32,
    pub npages: u16,
    pub codec: u8,
}

/// One page listed in a footer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageEntry {
    pub id: PageId,
    pub frame: u32,
    pub slot: u16,
}

/// A decoded footer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Footer {
    pub frames: Vec<FrameInfo>,
    pub pages: Vec<PageEntry>,
}

impl Footer {
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(8 + self.frames.len() * FRAME_REC + self.pages.len() * PAGE_REC);
        out.extend_from_slice(&(self.frames.len() as u32).to_le_bytes());
        for f in &self.frames {
            out.extend_from_slice(&f.offset.to_le_bytes());
            out.extend_from_slice(&f.clen.to_le_bytes());
            out.extend_from_slice(&f.npages.to_le_bytes());
            out.push(f.codec);
            out.push(0);
        }
        out.extend_from_slice(&(self.pages.len() as u32).to_le_bytes());
        for p in &self.pages {
            out.extend_from_slice(&p.id.0);
            out.extend_from_slice(&p.frame.to_le_bytes());
            out.extend_from_slice(&p.slot.to_le_bytes());
        }
        out
    }

    /// Decodes and checks a footer against the size of the data before it.
    pub fn decode(b: &[u8], data_len: u64) -> Result<Footer, String> {
        let mut r = Reader(b);
        let nframes = r.u32()? as usize;
        if nframes > b.len() / FRAME_REC {
            return Err(format!(
                "footer claims {nframes} frames, too many for its size"
            ));
        }
        let mut frames = Vec::with_capacity(nframes);
        for i in 0..nframes {
            let f = FrameInfo {
                offset: r.u64()?,
                clen: r.u32()?,
                npages: r.u16()?,
                codec: r.u8()?,
            };
            r.u8()?;
            if f.codec > CODEC_ZSTD || f.npages == 0 {
                return Err(format!(
                    "frame {i}: bad codec {} or page count {}",
                    f.codec, f.npages
                ));
            }
            if f.offset + f.clen as u64 > data_len {
                return Err(format!("frame {i} ends past the frame data"));
            }
            frames.push(f);
        }
        let npages = r.u32()? as usize;
        if npages > b.len() / PAGE_REC {
            return Err(format!(
                "footer claims {npages} pages, too many for its size"
            ));
        }
        let mut pages = Vec::with_capacity(npages);
        for _ in 0..npages {
            let mut id = [0u8; 16];
            id.copy_from_slice(r.take(16)?);
            let p = PageEntry {
                id: PageId(id),
                frame: r.u32()?,
                slot: r.u16()?,
            };
            match frames.get(p.frame as usize) {
                Some(f) if p.slot < f.npages => {}
                _ => return Err(format!("page {} points outside the frames", p.id)),
            }
            pages.push(p);
        }
        if !r.0.is_empty() {
            return Err("trailing bytes after the footer".into());
        }
        Ok(Footer { frames, pages })
    }
}

pub(crate) struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32, String> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    pub fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

fn trailer(footer_off: u64, footer: &[u8]) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[..8].copy_from_slice(PACK_MAGIC);
    t[8..12].copy_from_slice(&PACK_VERSION.to_le_bytes());
    t[16..24].copy_from_slice(&footer_off.to_le_bytes());
    t[24..32].copy_from_slice(&(footer.len() as u64).to_le_bytes());
    t[32..48].copy_from_slice(&blake3::hash(footer).as_bytes()[..16]);
    t
}

/// Reads and checks the footer of a pack file (used to rebuild the index and by verify).
pub fn read_footer(path: &Path) -> Result<Footer, String> {
    use std::os::unix::fs::FileExt;
    let f = File::open(path).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len < TRAILER_LEN as u64 {
        return Err(format!("{len} bytes, shorter than a trailer (truncated)"));
    }
    let mut t = [0u8; TRAILER_LEN];
    f.read_exact_at(&mut t, len - TRAILER_LEN as u64)
        .map_err(|e| e.to_string())?;
    if &t[..8] != PACK_MAGIC {
        return Err("no pack trailer at the end (truncated or not a pack)".into());
    }
    let mut r = Reader(&t[8..]);
    let version = r.u32()?;
    if version > PACK_VERSION {
        return Err(format!(
            "pack format version {version} is newer than this haul supports ({PACK_VERSION})"
        ));
    }
    r.u32()?;
    let off = r.u64()?;
    let flen = r.u64()?;
    if off.checked_add(flen) != Some(len - TRAILER_LEN as u64) {
        return Err("trailer's footer position does not match the file size".into());
    }
    let mut footer = vec![0u8; flen as usize];
    f.read_exact_at(&mut footer, off)
        .map_err(|e| e.to_string())?;
    if blake3::hash(&footer).as_bytes()[..16] != t[32..48] {
        return Err("footer checksum mismatch".into());
    }
    Footer::decode(&footer, off)
}

thread_local! {
    static CCTX: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// zstd of `pages` at `level`, or None when that does not shrink them.
fn compress(pages: &[u8], level: i32) -> Result<Option<Vec<u8>>, std::io::Error> {
    let c = CCTX.with(|cell| -> Result<Vec<u8>, std::io::Error> {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        match slot.as_mut() {
            Some((_, c)) => c.compress(pages),
            None => Err(std::io::Error::other("no compressor")),
        }
    })?;
    Ok((c.len() < pages.len()).then_some(c))
}

/// Encodes `pages` (whole pages) as one frame: zstd at `level`, or raw when `level` is None or
/// compression does not shrink it. Returns (bytes, codec).
pub fn encode_frame(pages: &[u8], level: Option<i32>) -> Result<(Vec<u8>, u8), std::io::Error> {
    match level.map(|l| compress(pages, l)).transpose()?.flatten() {
        Some(c) => Ok((c, CODEC_ZSTD)),
        None => Ok((pages.to_vec(), CODEC_RAW)),
    }
}

/// [`encode_frame`] of pages given as separate slices: they are gathered into one buffer, which
/// becomes the frame itself when it is stored raw.
pub fn encode_frame_parts(
    parts: &[&[u8]],
    level: Option<i32>,
) -> Result<(Vec<u8>, u8), std::io::Error> {
    let mut buf = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        buf.extend_from_slice(p);
    }
    match level.map(|l| compress(&buf, l)).transpose()?.flatten() {
        Some(c) => Ok((c, CODEC_ZSTD)),
        None => Ok((buf, CODEC_RAW)),
    }
}

/// Decodes one frame into its pages.
pub fn decode_frame(bytes: Vec<u8>, f: &FrameInfo) -> Result<Vec<u8>, String> {
    let want = f.npages as usize * PAGE_SIZE;
    match f.codec {
        CODEC_RAW => {
            if bytes.len() != want {
                return Err(format!(
                    "raw frame holds {} bytes, expected {want}",
                    bytes.len()
                ));
            }
            Ok(bytes)
        }
        CODEC_ZSTD => DCTX.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
            }
            let d = slot.as_mut().ok_or("no decompressor")?;
            let out = d
                .decompress(&bytes, want)
                .map_err(|e| format!("zstd frame does not decode: {e}"))?;
            if out.len() != want {
                return Err(format!(
                    "frame decoded to {} bytes, expected {want}",
                    out.len()
                ));
            }
            Ok(out)
        }),
        c => Err(format!("unknown codec {c}")),
    }
}

/// A pack being written under `tmp/`; becomes visible only through [`PackWriter::finish`].
pub struct PackWriter {
    file: File,
    tmp: PathBuf,
    hasher: blake3::Hasher,
    len: u64,
    footer: Footer,
}

/// A pack that was committed: renamed into `packs/` and its index segment written.
pub struct CommittedPack {
    pub id: PackId,
    pub len: u64,
    pub footer: Footer,
}

impl PackWriter {
    pub fn create(root: &Path) -> Result<PackWriter, StoreError> {
        let tmp = fsutil::temp_path(root, "pack");
        let file = create_file(&tmp)?;
        Ok(PackWriter {
            file,
            tmp,
            hasher: blake3::Hasher::new(),
            len: 0,
            footer: Footer::default(),
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.footer.pages.is_empty()
    }

    fn write(&mut self, b: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(b)
            .map_err(|e| StoreError::io(format!("writing pack {}", self.tmp.display()), e))?;
        self.hasher.update(b);
        self.len += b.len() as u64;
        Ok(())
    }

    /// Appends one encoded frame holding the pages `ids` (in slot order).
    pub fn append_frame(
        &mut self,
        bytes: &[u8],
        codec: u8,
        ids: &[PageId],
    ) -> Result<(), StoreError> {
        let frame = self.footer.frames.len() as u32;
        let info = FrameInfo {
            offset: self.len,
            clen: bytes.len() as u32,
            npages: ids.len() as u16,
            codec,
        };
        self.write(bytes)?;
        self.footer.frames.push(info);
        for (slot, id) in ids.iter().enumerate() {
            self.footer.pages.push(PageEntry {
                id: *id,
                frame,
                slot: slot as u16,
            });
        }
        Ok(())
    }

    /// Writes footer and trailer, fsyncs, renames to `packs/ab/<id>.pack` and fsyncs the
    /// directory, then writes the pack's index segment the same way.
    pub fn finish(self, root: &Path) -> Result<CommittedPack, StoreError> {
        let tmp = self.tmp.clone();
        let r = self.finish_inner(root);
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    fn finish_inner(mut self, root: &Path) -> Result<CommittedPack, StoreError> {
        let footer = self.footer.encode();
        let t = trailer(self.len, &footer);
        self.write(&footer)?;
        self.write(&t)?;
        self.file
            .sync_all()
            .map_err(|e| StoreError::io(format!("fsync of pack {}", self.tmp.display()), e))?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.hasher.finalize().as_bytes()[..16]);
        let id = PackId(id);
        let dest = id.path(root);
        if let Some(dir) = dest.parent() {
            if !dir.exists() {
                fsutil::create_dir(dir)?;
                fsync_dir(&root.join("packs"))?;
            }
        }
        std::fs::rename(&self.tmp, &dest).map_err(|e| {
            StoreError::io(
                format!("renaming {} to {}", self.tmp.display(), dest.display()),
                e,
            )
        })?;
        if let Some(dir) = dest.parent() {
            fsync_dir(dir)?;
        }
        let committed = CommittedPack {
            id,
            len: self.len,
            footer: std::mem::take(&mut self.footer),
        };
        super::index::write_segment(root, &committed)?;
        Ok(committed)
    }

    /// Deletes the temporary file (after an error); best effort.
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}
