//! Restoring files whose contents the image stores: memfds (with their seals) and deleted
//! files still open (see `image::stored`).
//!
//! Each file is made once for the whole set, by the first process (in tree order; mappings,
//! in the *map* step, before fds, in *files*) that needs it: `memfd_create` injected (with
//! `MFD_ALLOW_SEALING`), or, for a deleted file, created at its old path and unlinked at
//! once (`O_TMPFILE` in the same directory if the path is taken now). haul takes its own copy
//! of the new fd (`pidfd_getfd`) and writes through it the size, the data pages (holes stay
//! holes), owner and mode. Every fd and mapping of the file, in any process, opens that copy
//! again (`/proc/<haul>/fd/N`): one file, whatever writes it. The seals go on last, once
//! every process is built ([`StoredTable::seal`]), since `F_SEAL_FUTURE_WRITE` would stop a
//! later writable shared mapping from being made.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use super::error::{At, StepResult};
use super::share::Shared;
use super::{BoxError, PageSource};
use crate::image::stored::{StoredFile, StoredKind, StoredObject};
use crate::image::{FdImage, ImageSet, ProcessImage, Vma};
use crate::sys::remote::{self, Inject};

/// What stops a stored file from being made again.
#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    /// An fd or mapping names a file the set's table lacks.
    #[error("the image has no stored file of device {dev:#x} inode {ino}")]
    NotInImage { dev: u64, ino: u64 },
    /// haul's write to its copy of the new file failed.
    #[error("{what} of {file}: {source}")]
    Write {
        what: &'static str,
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// A page of the file's contents lies beyond its size.
    #[error("{file}: a stored page at offset {off:#x} lies beyond its size {size}")]
    BeyondSize { file: String, off: u64, size: u64 },
}

/// Data pages of a file: (file offset, bytes), a run of whole pages each.
type Contents = Vec<(u64, Vec<u8>)>;

/// One stored file of the set: its record and its data pages.
struct Entry {
    obj: StoredObject,
    pages: Contents,
}

/// The stored files of the set as the restore makes them: their records and contents (read
/// from the page source before any process is built), and haul's copy of each made so far.
#[derive(Default)]
pub(crate) struct StoredTable {
    files: HashMap<(u64, u64), Entry>,
    made: HashMap<(u64, u64), OwnedFd>,
}

impl StoredTable {
    /// Every stored file of `set` with its contents, read from `source` (held in memory until
    /// the file is made: a dump stores at most `image::stored::MAX_BYTES` of a file).
    pub(crate) fn load(set: &ImageSet, source: &dyn PageSource) -> StepResult<StoredTable> {
        let mut t = StoredTable::default();
        for obj in &set.tree.files {
            let (lo, hi) = crate::image::space_bounds(obj.space);
            let mut pages = Vec::new();
            if set.pages.range(lo, hi).next().is_some() {
                let view = set.with_only_pages(set.pages.range(lo, hi).collect());
                let mut sink = |key: u64, data: &[u8]| -> Result<(), BoxError> {
                    pages.push((key - lo, data.to_vec()));
                    Ok(())
                };
                source
                    .for_each_page(&view, &mut sink)
                    .map_err(super::error::StepError::Pages)
                    .at(|| obj.describe())?;
            }
            t.files.insert(
                (obj.dev, obj.ino),
                Entry {
                    obj: obj.clone(),
                    pages,
                },
            );
        }
        Ok(t)
    }

    /// With the contents of `files` (tests).
    #[cfg(test)]
    pub(crate) fn with(files: Vec<(StoredObject, Contents)>) -> StoredTable {
        StoredTable {
            files: files
                .into_iter()
                .map(|(obj, pages)| ((obj.dev, obj.ino), Entry { obj, pages }))
                .collect(),
            made: HashMap::new(),
        }
    }

    /// haul's copy of the file made for (dev, ino), if it was made.
    #[cfg(test)]
    pub(crate) fn copy(&self, dev: u64, ino: u64) -> Option<&OwnedFd> {
        self.made.get(&(dev, ino))
    }

    /// Puts the seals of every file made on it (those it lacks), through haul's copies: the
    /// last change to each, once every process is built.
    pub(crate) fn seal(&self) -> StepResult {
        for (key, fd) in &self.made {
            let Some(e) = self.files.get(key) else {
                continue;
            };
            let now = crate::sys::stored::seals(fd.as_fd()).at(|| e.obj.describe())?;
            let want = e.obj.seals & !now;
            if want != 0 {
                crate::sys::stored::add_seals(fd.as_fd(), want).at(|| e.obj.describe())?;
            }
        }
        Ok(())
    }
}

/// An fd of the process on stored file (dev, ino), at the lowest free number, open
/// read-write and close-on-exec: the file made now if no process made it yet, else a new
/// open file description of the one made.
fn object_fd(rs: &mut dyn Inject, dev: u64, ino: u64, t: &mut StoredTable) -> StepResult<u64> {
    let flags = libc::O_RDWR | libc::O_CLOEXEC;
    if let Some(copy) = t.made.get(&(dev, ino)) {
        let path = format!("/proc/{}/fd/{}", std::process::id(), copy.as_raw_fd());
        return Ok(remote::open(rs, &path, flags)?);
    }
    let e = t
        .files
        .get(&(dev, ino))
        .ok_or(StoredError::NotInImage { dev, ino })?;
    let obj = &e.obj;
    let perm = obj.mode & 0o7777;
    let fd = match &obj.kind {
        StoredKind::Memfd { name } => {
            let mfd = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
            remote::memfd_create(rs, name, mfd)?
        }
        StoredKind::Deleted { path } => make_deleted(rs, path, perm)?,
    };
    let filled = remote::copy_fd(rs, fd)
        .map_err(super::error::StepError::from)
        .and_then(|copy| {
            fill(&copy, e)?;
            Ok(copy)
        });
    match filled {
        Ok(copy) => {
            t.made.insert((dev, ino), copy);
            Ok(fd)
        }
        Err(err) => {
            let _ = remote::close(rs, fd);
            Err(err)
        }
    }
}

/// Makes deleted file `path` again, unlinked, with permissions `perm`: created at `path`
/// (never over something there: `O_EXCL`) and unlinked at once, so its fd link reads as it
/// did; if `path` is taken now, an `O_TMPFILE` in the same directory. Returns its fd.
fn make_deleted(rs: &mut dyn Inject, path: &str, perm: u32) -> StepResult<u64> {
    let create = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
    match remote::open_mode(rs, path, create, perm) {
        Ok(fd) => {
            if let Err(e) = remote::unlink(rs, path) {
                let _ = remote::close(rs, fd);
                return Err(e.into());
            }
            Ok(fd)
        }
        Err(e) if e.errno() == Some(libc::EEXIST) => {
            let dir = std::path::Path::new(path)
                .parent()
                .map_or("/".to_string(), |d| d.to_string_lossy().into_owned());
            let dir = if dir.is_empty() { "/".to_string() } else { dir };
            let tmp = libc::O_RDWR | libc::O_TMPFILE | libc::O_CLOEXEC;
            Ok(remote::open_mode(rs, &dir, tmp, perm).at(|| format!("{path} is taken"))?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes the size, the data pages, owner and mode of `e` through haul's `copy`.
fn fill(copy: &OwnedFd, e: &Entry) -> StepResult {
    let obj = &e.obj;
    let file = std::fs::File::from(copy.try_clone().map_err(|source| StoredError::Write {
        what: "dup",
        file: obj.describe(),
        source,
    })?);
    let err = |what: &'static str| {
        move |source| StoredError::Write {
            what,
            file: obj.describe(),
            source,
        }
    };
    file.set_len(obj.size).map_err(err("ftruncate"))?;
    for (off, data) in &e.pages {
        // The last page stops at the end of the file.
        let len = (obj.size.saturating_sub(*off)).min(data.len() as u64) as usize;
        if len == 0 && !data.is_empty() {
            return Err(StoredError::BeyondSize {
                file: obj.describe(),
                off: *off,
                size: obj.size,
            }
            .into());
        }
        file.write_all_at(&data[..len], *off)
            .map_err(err("write"))?;
    }
    let md = file.metadata().map_err(err("fstat"))?;
    use std::os::unix::fs::MetadataExt;
    if md.uid() != obj.uid || md.gid() != obj.gid {
        std::os::unix::fs::fchown(&file, Some(obj.uid), Some(obj.gid)).map_err(err("fchown"))?;
    }
    if md.mode() & 0o7777 != obj.mode & 0o7777 {
        use std::os::unix::fs::PermissionsExt;
        let p = std::fs::Permissions::from_mode(obj.mode & 0o7777);
        file.set_permissions(p).map_err(err("fchmod"))?;
    }
    Ok(())
}

/// Makes stored file `f` again at its number: a new open file description of the set's one
/// file, with the fd's flags, offset and locks.
pub(super) fn make(
    rs: &mut dyn Inject,
    _p: &ProcessImage,
    f: &FdImage,
    s: &StoredFile,
    shared: &mut Shared,
) -> StepResult {
    let at = || format!("fd {}", f.fd);
    let t = object_fd(rs, s.dev, s.ino, &mut shared.stored).at(at)?;
    let drop_flags =
        libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_NOCTTY | libc::O_TMPFILE;
    let flags = f.flags & !(drop_flags as u32);
    let got = remote::reopen(rs, t, flags as i32);
    let closed = remote::close(rs, t);
    let got = got.at(at)?;
    closed.at(at)?;
    super::fds::move_fd(rs, got, f)?;
    if f.flags & libc::O_PATH as u32 == 0 {
        remote::lseek(rs, f.fd as u64, s.pos).at(at)?;
    }
    let name = shared
        .stored
        .files
        .get(&(s.dev, s.ino))
        .map_or_else(String::new, |e| e.obj.describe());
    for l in &f.locks {
        super::fds::take_lock(rs, f.fd, &name, l)?;
    }
    Ok(())
}

/// Maps memfd mapping `v` (`prot`, `flags` as `map_vmas` chose them) from the set's one
/// file: made now if no process made it yet.
pub(super) fn map(
    rs: &mut dyn Inject,
    v: &Vma,
    prot: u32,
    flags: u64,
    shared: &mut Shared,
) -> StepResult {
    let dev = v.file.as_ref().map_or(0, |f| f.dev);
    let t = object_fd(rs, dev, v.ino, &mut shared.stored)?;
    // A shared mapping that could never be made writable (no `mw`) is mapped from a read-only
    // open file description, as it was: a writable one would stop `F_SEAL_WRITE` (EBUSY).
    let may_write = v.prot & libc::PROT_WRITE as u32 != 0 || v.has_flag("mw");
    let from = if v.shared && !may_write {
        remote::reopen(rs, t, libc::O_RDONLY | libc::O_CLOEXEC).map(Some)
    } else {
        Ok(None)
    };
    let r = from.and_then(|ro| {
        let r = remote::mmap(
            rs,
            v.start,
            v.len(),
            prot,
            flags,
            Some(ro.unwrap_or(t)),
            v.pgoff,
        );
        if let Some(ro) = ro {
            let _ = remote::close(rs, ro);
        }
        r
    });
    let closed = remote::close(rs, t);
    r?;
    closed?;
    Ok(())
}

/// Before any process exists: the directory of every deleted file the set makes again is
/// there (else the restore is refused naming the file). To be called by `check_compat`.
pub(crate) fn check_dirs(set: &ImageSet) -> Result<(), crate::restore::tree::Refusal> {
    for obj in &set.tree.files {
        if let StoredKind::Deleted { path } = &obj.kind {
            let dir = std::path::Path::new(path).parent();
            if !dir.is_some_and(|d| d.as_os_str().is_empty() || d.is_dir()) {
                return Err(crate::restore::tree::Refusal(format!(
                    "{path} was open while deleted; a restore makes it again in its directory, \
                     which is gone"
                )));
            }
        }
    }
    Ok(())
}
