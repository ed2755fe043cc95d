//! The pack format shared by the writer ([`super::pack`]) and the index ([`super::index`]): pack
//! ids, the footer that says where each page is, the trailer, and the reading of both back.
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
//! It lives apart from the pack writer so that the index can read footers while the writer
//! writes index segments: pack → index → footer, one way.

use crate::image::PageId;
use std::fs::File;
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

/// Why a pack footer, a trailer, an index segment or a frame cannot be used. The messages are
/// the ones verify and the index have always printed.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The bytes end before the record does.
    #[error("truncated")]
    Truncated,
    /// Opening or reading the file failed.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    #[error("{0}")]
    Bucket(#[source] Box<super::bucket::BucketError>),
    #[error("footer claims {0} frames, too many for its size")]
    TooManyFrames(usize),
    #[error("frame {frame}: bad codec {codec} or page count {npages}")]
    BadFrame {
        frame: usize,
        codec: u8,
        npages: u16,
    },
    #[error("frame {0} ends past the frame data")]
    FramePastData(usize),
    #[error("footer claims {0} pages, too many for its size")]
    TooManyPages(usize),
    #[error("page {0} points outside the frames")]
    PageOutsideFrames(PageId),
    #[error("trailing bytes after the footer")]
    TrailingBytes,
    #[error("{0} bytes, shorter than a trailer (truncated)")]
    ShorterThanTrailer(u64),
    #[error("no pack trailer at the end (truncated or not a pack)")]
    NoTrailer,
    #[error("pack format version {found} is newer than this haul supports ({PACK_VERSION})")]
    NewerPack { found: u32 },
    #[error("trailer's footer position does not match the file size")]
    TrailerMismatch,
    #[error("footer checksum mismatch")]
    FooterChecksum,
    #[error("not an index segment")]
    NotASegment,
    #[error("checksum mismatch")]
    SegmentChecksum,
    #[error("segment version {0} is newer than supported")]
    NewerSegment(u32),
    #[error("segment names another pack")]
    SegmentOfAnotherPack,
    #[error("footer length mismatch")]
    SegmentFooterLength,
    #[error("raw frame holds {len} bytes, expected {want}")]
    RawFrameSize { len: usize, want: usize },
    #[error("zstd frame does not decode: {0}")]
    Zstd(#[source] std::io::Error),
    #[error("frame decoded to {len} bytes, expected {want}")]
    DecodedSize { len: usize, want: usize },
    #[error("unknown codec {0}")]
    UnknownCodec(u8),
}

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
    /// Key of the pack in a bucket store, relative to its prefix (the same layout as on disk).
    pub fn key(&self) -> String {
        let h = self.to_hex();
        format!("packs/{}/{h}.pack", &h[..2])
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
    pub fn decode(b: &[u8], data_len: u64) -> Result<Footer, FormatError> {
        let mut r = Reader(b);
        let nframes = r.u32()? as usize;
        if nframes > b.len() / FRAME_REC {
            return Err(FormatError::TooManyFrames(nframes));
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
                return Err(FormatError::BadFrame {
                    frame: i,
                    codec: f.codec,
                    npages: f.npages,
                });
            }
            if f.offset + f.clen as u64 > data_len {
                return Err(FormatError::FramePastData(i));
            }
            frames.push(f);
        }
        let npages = r.u32()? as usize;
        if npages > b.len() / PAGE_REC {
            return Err(FormatError::TooManyPages(npages));
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
                _ => return Err(FormatError::PageOutsideFrames(p.id)),
            }
            pages.push(p);
        }
        if !r.0.is_empty() {
            return Err(FormatError::TrailingBytes);
        }
        Ok(Footer { frames, pages })
    }
}

/// Little-endian fields read off the front of a byte slice.
pub(crate) struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.0.len() < n {
            return Err(FormatError::Truncated);
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    pub fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, FormatError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32, FormatError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    pub fn u64(&mut self) -> Result<u64, FormatError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

/// The trailer of a pack whose footer `footer` starts at `footer_off`.
pub(super) fn trailer(footer_off: u64, footer: &[u8]) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[..8].copy_from_slice(PACK_MAGIC);
    t[8..12].copy_from_slice(&PACK_VERSION.to_le_bytes());
    t[16..24].copy_from_slice(&footer_off.to_le_bytes());
    t[24..32].copy_from_slice(&(footer.len() as u64).to_le_bytes());
    t[32..48].copy_from_slice(&blake3::hash(footer).as_bytes()[..16]);
    t
}

/// Reads and checks the footer of a pack file (used to rebuild the index and by verify).
pub fn read_footer(path: &Path) -> Result<Footer, FormatError> {
    use std::os::unix::fs::FileExt;
    let f = File::open(path).map_err(FormatError::Io)?;
    let len = f.metadata().map_err(FormatError::Io)?.len();
    read_footer_with(len, |off, n| {
        let mut b = vec![0u8; n];
        f.read_exact_at(&mut b, off).map_err(FormatError::Io)?;
        Ok(b)
    })
}

/// Reads and checks the footer of a pack of `len` bytes through `read(offset, length)`: from
/// a file, or by ranges from a bucket.
pub fn read_footer_with(
    len: u64,
    mut read: impl FnMut(u64, usize) -> Result<Vec<u8>, FormatError>,
) -> Result<Footer, FormatError> {
    if len < TRAILER_LEN as u64 {
        return Err(FormatError::ShorterThanTrailer(len));
    }
    let t = read(len - TRAILER_LEN as u64, TRAILER_LEN)?;
    if t.len() != TRAILER_LEN || &t[..8] != PACK_MAGIC {
        return Err(FormatError::NoTrailer);
    }
    let mut r = Reader(&t[8..]);
    let version = r.u32()?;
    if version > PACK_VERSION {
        return Err(FormatError::NewerPack { found: version });
    }
    r.u32()?;
    let off = r.u64()?;
    let flen = r.u64()?;
    if off.checked_add(flen) != Some(len - TRAILER_LEN as u64) {
        return Err(FormatError::TrailerMismatch);
    }
    let footer = read(off, flen as usize)?;
    if footer.len() as u64 != flen || blake3::hash(&footer).as_bytes()[..16] != t[32..48] {
        return Err(FormatError::FooterChecksum);
    }
    Footer::decode(&footer, off)
}

/// A pack that was committed: renamed into `packs/` and its index segment written.
pub struct CommittedPack {
    pub id: PackId,
    pub len: u64,
    pub footer: Footer,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PageId {
        PageId([n; 16])
    }

    fn footer() -> Footer {
        Footer {
            frames: vec![
                FrameInfo {
                    offset: 0,
                    clen: 100,
                    npages: 2,
                    codec: CODEC_ZSTD,
                },
                FrameInfo {
                    offset: 100,
                    clen: 4096,
                    npages: 1,
                    codec: CODEC_RAW,
                },
            ],
            pages: vec![
                PageEntry {
                    id: id(1),
                    frame: 0,
                    slot: 0,
                },
                PageEntry {
                    id: id(2),
                    frame: 0,
                    slot: 1,
                },
                PageEntry {
                    id: id(3),
                    frame: 1,
                    slot: 0,
                },
            ],
        }
    }

    #[test]
    fn footer_round_trips_through_its_encoding() {
        let f = footer();
        let b = f.encode();
        assert_eq!(b.len(), 4 + 2 * FRAME_REC + 4 + 3 * PAGE_REC);
        assert_eq!(Footer::decode(&b, 4196).unwrap(), f);
    }

    #[test]
    fn footer_decode_refuses_frames_past_the_data_and_pages_outside_frames() {
        let b = footer().encode();
        // The raw frame ends at 4196: one byte less of data and it sticks out.
        assert!(matches!(
            Footer::decode(&b, 4195),
            Err(FormatError::FramePastData(1))
        ));
        let mut f = footer();
        f.pages[1].slot = 2;
        assert!(matches!(
            Footer::decode(&f.encode(), 4196),
            Err(FormatError::PageOutsideFrames(p)) if p == id(2)
        ));
        let mut extra = footer().encode();
        extra.push(0);
        assert!(matches!(
            Footer::decode(&extra, 4196),
            Err(FormatError::TrailingBytes)
        ));
        assert!(matches!(
            Footer::decode(&b[..b.len() - 1], 4196),
            Err(FormatError::Truncated)
        ));
    }

    #[test]
    fn trailer_points_at_the_footer_and_read_footer_checks_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pack");
        let data = vec![7u8; 4196];
        let fb = footer().encode();
        let mut file = data.clone();
        file.extend_from_slice(&fb);
        file.extend_from_slice(&trailer(data.len() as u64, &fb));
        std::fs::write(&path, &file).unwrap();
        assert_eq!(read_footer(&path).unwrap(), footer());
        // A flipped footer byte fails the footer checksum.
        let mut bad = file.clone();
        bad[data.len() + 5] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(matches!(
            read_footer(&path),
            Err(FormatError::FooterChecksum)
        ));
        // Cut short: no trailer at the end any more.
        std::fs::write(&path, &file[..file.len() - 1]).unwrap();
        assert!(matches!(read_footer(&path), Err(FormatError::NoTrailer)));
        std::fs::write(&path, &file[..10]).unwrap();
        assert!(matches!(
            read_footer(&path),
            Err(FormatError::ShorterThanTrailer(10))
        ));
        assert!(matches!(
            read_footer(&dir.path().join("none.pack")),
            Err(FormatError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound
        ));
    }

    #[test]
    fn pack_ids_round_trip_through_hex_and_live_under_their_first_two_digits() {
        let p = PackId([0xab; 16]);
        assert_eq!(PackId::from_hex(&p.to_hex()), Some(p));
        assert_eq!(PackId::from_hex("abc"), None);
        let path = p.path(Path::new("/s"));
        assert_eq!(
            path,
            Path::new("/s/packs/ab").join(format!("{}.pack", p.to_hex()))
        );
    }
}
