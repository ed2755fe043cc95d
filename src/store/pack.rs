//! Pack files: frames of pages, a footer saying where each page is, and a fixed trailer (the
//! layout is in [`super::footer`]).
//!
//! A frame holds `npages` whole pages, either as one zstd frame (codec 1) or raw (codec 0: no
//! level was asked, or compression did not pay). Every frame decodes on its own, so one page costs
//! one frame decode. The pack id is the BLAKE3 of the whole file (first 16 bytes, hex); the file
//! lives at `packs/<first two hex digits>/<id>.pack`.

use super::footer::{
    trailer, CommittedPack, Footer, FormatError, FrameInfo, PackId, PageEntry, CODEC_RAW,
    CODEC_ZSTD,
};
use super::fsutil::{self, create_file, fsync_dir};
use super::StoreError;
use crate::image::{PageId, PAGE_SIZE};
use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

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
pub fn decode_frame(bytes: Vec<u8>, f: &FrameInfo) -> Result<Vec<u8>, FormatError> {
    let want = f.npages as usize * PAGE_SIZE;
    match f.codec {
        CODEC_RAW => {
            if bytes.len() != want {
                return Err(FormatError::RawFrameSize {
                    len: bytes.len(),
                    want,
                });
            }
            Ok(bytes)
        }
        CODEC_ZSTD => DCTX.with(|cell| {
            let mut slot = cell.borrow_mut();
            let d = match slot.as_mut() {
                Some(d) => d,
                None => slot.insert(zstd::bulk::Decompressor::new().map_err(FormatError::Io)?),
            };
            let out = d.decompress(&bytes, want).map_err(FormatError::Zstd)?;
            if out.len() != want {
                return Err(FormatError::DecodedSize {
                    len: out.len(),
                    want,
                });
            }
            Ok(out)
        }),
        c => Err(FormatError::UnknownCodec(c)),
    }
}

/// A pack being written under `tmp/`; becomes visible only through [`PackWriter::finish`].
pub struct PackWriter {
    file: File,
    tmp: PathBuf,
    hasher: blake3::Hasher,
    len: u64,
    footer: Footer,
    /// Written around the page cache ([`PackWriter::create_direct`]): a chunk of
    /// [`DIRECT_CHUNK`] bytes and how many of them are not written yet.
    direct: Option<(crate::sys::mem::PageBuf, usize)>,
}

/// The size of a pack's direct writes: whole pages, so that every write is aligned.
const DIRECT_CHUNK: usize = 1 << 20;

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
            direct: None,
        })
    }

    /// [`PackWriter::create`], written with `O_DIRECT` in whole chunks of [`DIRECT_CHUNK`]
    /// (the tail, footer and trailer through the page cache): for a set that is not read back
    /// soon (a migration whose restore adopts the process's memory). The pack's pages then
    /// cost no fresh page-cache memory (up to ~2 ms per MB on this kind of VM, where freed
    /// memory goes back to the host) and no copy into it: the device reads them from the
    /// chunk. As [`PackWriter::create`] where the filesystem has no direct I/O.
    pub fn create_direct(root: &Path) -> Result<PackWriter, StoreError> {
        let mut w = PackWriter::create(root)?;
        match crate::sys::file::set_direct(&w.file, true) {
            Ok(()) => w.direct = Some((crate::sys::mem::PageBuf::zeroed(DIRECT_CHUNK), 0)),
            Err(e) => tracing::debug!("no direct I/O for {}: {e}", w.tmp.display()),
        }
        Ok(w)
    }

    /// Whether it writes around the page cache ([`PackWriter::create_direct`]).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.footer.pages.is_empty()
    }

    fn write(&mut self, b: &[u8]) -> Result<(), StoreError> {
        self.hasher.update(b);
        self.len += b.len() as u64;
        if self.direct.is_none() {
            return self.write_file(b);
        }
        // Bytes gather in the chunk; each full chunk goes out in one aligned write.
        let mut rest = b;
        while !rest.is_empty() {
            let (chunk, used) = self.direct.as_mut().expect("direct");
            let n = rest.len().min(DIRECT_CHUNK - *used);
            chunk[*used..*used + n].copy_from_slice(&rest[..n]);
            *used += n;
            rest = &rest[n..];
            if *used == DIRECT_CHUNK {
                let (chunk, _) = self.direct.take().expect("direct");
                let r = self.write_file(&chunk);
                self.direct = Some((chunk, 0));
                r?;
            }
        }
        Ok(())
    }

    /// The bytes a direct pack holds back (less than a chunk) go out through the page cache,
    /// `O_DIRECT` off: the file's length need not be aligned.
    fn end_direct(&mut self) -> Result<(), StoreError> {
        if let Some((chunk, used)) = self.direct.take() {
            crate::sys::file::set_direct(&self.file, false).map_err(|e| {
                StoreError::io(format!("ending direct I/O on {}", self.tmp.display()), e)
            })?;
            self.write_file(&chunk[..used])?;
        }
        Ok(())
    }

    fn write_file(&mut self, b: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(b)
            .map_err(|e| StoreError::io(format!("writing pack {}", self.tmp.display()), e))
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
        self.finish_as(root, true)
    }

    /// [`PackWriter::finish`]; with `durable` false nothing is fsynced: for a bucket store's
    /// cache, whose packs are durable once uploaded (a copy lost in a crash is fetched again).
    pub fn finish_as(self, root: &Path, durable: bool) -> Result<CommittedPack, StoreError> {
        let tmp = self.tmp.clone();
        let r = self.finish_inner(root, durable);
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    fn finish_inner(mut self, root: &Path, durable: bool) -> Result<CommittedPack, StoreError> {
        self.end_direct()?;
        let footer = self.footer.encode();
        let t = trailer(self.len, &footer);
        self.write(&footer)?;
        self.write(&t)?;
        if durable {
            self.file
                .sync_all()
                .map_err(|e| StoreError::io(format!("fsync of pack {}", self.tmp.display()), e))?;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.hasher.finalize().as_bytes()[..16]);
        let id = PackId(id);
        let dest = id.path(root);
        if let Some(dir) = dest.parent() {
            if !dir.exists() {
                fsutil::create_dir(dir)?;
                if durable {
                    fsync_dir(&root.join("packs"))?;
                }
            }
        }
        std::fs::rename(&self.tmp, &dest).map_err(|e| {
            StoreError::io(
                format!("renaming {} to {}", self.tmp.display(), dest.display()),
                e,
            )
        })?;
        if let Some(dir) = dest.parent().filter(|_| durable) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(n: usize) -> Vec<u8> {
        (0..n * PAGE_SIZE).map(|i| (i / 64) as u8).collect()
    }

    #[test]
    fn frames_round_trip_raw_and_zstd() {
        let p = pages(3);
        let (raw, codec) = encode_frame(&p, None).unwrap();
        assert_eq!(codec, CODEC_RAW);
        let (z, zcodec) = encode_frame(&p, Some(3)).unwrap();
        assert_eq!(zcodec, CODEC_ZSTD);
        assert!(z.len() < p.len());
        for (bytes, codec) in [(raw, CODEC_RAW), (z, CODEC_ZSTD)] {
            let f = FrameInfo {
                offset: 0,
                clen: bytes.len() as u32,
                npages: 3,
                codec,
            };
            assert_eq!(decode_frame(bytes, &f).unwrap(), p);
        }
        let parts: Vec<&[u8]> = p.chunks(PAGE_SIZE).collect();
        assert_eq!(
            encode_frame_parts(&parts, None).unwrap(),
            (p.clone(), CODEC_RAW)
        );
    }

    #[test]
    fn incompressible_pages_are_stored_raw_even_when_a_level_is_asked() {
        let mut p = vec![0u8; PAGE_SIZE];
        blake3::Hasher::new()
            .update(b"noise")
            .finalize_xof()
            .fill(&mut p);
        assert_eq!(encode_frame(&p, Some(3)).unwrap().1, CODEC_RAW);
    }

    #[test]
    fn decode_frame_names_a_wrong_size_or_codec() {
        let f = FrameInfo {
            offset: 0,
            clen: 10,
            npages: 1,
            codec: CODEC_RAW,
        };
        assert!(matches!(
            decode_frame(vec![0; 10], &f),
            Err(FormatError::RawFrameSize {
                len: 10,
                want: PAGE_SIZE
            })
        ));
        let z = FrameInfo {
            npages: 2,
            codec: CODEC_ZSTD,
            ..f
        };
        let (one_page, _) = encode_frame(&pages(1), Some(3)).unwrap();
        assert!(matches!(
            decode_frame(one_page, &z),
            Err(FormatError::DecodedSize { len: PAGE_SIZE, .. })
        ));
        assert!(matches!(
            decode_frame(vec![0; 10], &FrameInfo { codec: 9, ..f }),
            Err(FormatError::UnknownCodec(9))
        ));
    }
}
