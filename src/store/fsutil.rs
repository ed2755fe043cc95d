//! File-system helpers of the store: private permissions, temp names, atomic replacement.

use super::StoreError;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Opens (creating it, 0600) a file that is only ever locked, never written.
pub fn open_lock(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))
}

/// Creates a directory readable by its owner only (0700); an existing one is fine.
pub fn create_dir(path: &Path) -> Result<(), StoreError> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(StoreError::io(
            format!("creating directory {}", path.display()),
            e,
        )),
    }
}

/// Creates a new file readable by its owner only (0600); fails if it exists.
pub fn create_file(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))
}

/// fsyncs a directory so that a rename or creation inside it is durable.
pub fn fsync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("fsync of directory {}", path.display()), e))
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh, unique name under `<root>/tmp/` (same file system as the store, so renames work).
/// `gc` removes whatever is left there by crashed writers.
pub fn temp_path(root: &Path, kind: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    root.join("tmp")
        .join(format!("{kind}-{}-{t}-{n}.tmp", std::process::id()))
}

/// Writes `bytes` to `dest` atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(root: &Path, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_renamed(root, dest, &[bytes], true)
}

/// [`write_atomic`] of `parts` one after the other (a manifest's head, then its page table:
/// not copied into one buffer first).
pub fn write_atomic_parts(root: &Path, dest: &Path, parts: &[&[u8]]) -> Result<(), StoreError> {
    write_renamed(root, dest, parts, true)
}

/// Writes `bytes` to `dest` atomically for readers (temp file, rename) but without fsync: for
/// a cache that is rebuilt when a crash leaves it missing, short or corrupt (the index
/// segments), so that no commit waits on the disk for it.
pub fn write_cache(root: &Path, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_renamed(root, dest, &[bytes], false)
}

fn write_renamed(
    root: &Path,
    dest: &Path,
    parts: &[&[u8]],
    durable: bool,
) -> Result<(), StoreError> {
    let tmp = temp_path(root, "file");
    let r = (|| {
        let mut f = create_file(&tmp)?;
        for bytes in parts {
            f.write_all(bytes)
                .map_err(|e| StoreError::io(format!("writing {}", tmp.display()), e))?;
        }
        if durable {
            f.sync_all()
                .map_err(|e| StoreError::io(format!("fsync of {}", tmp.display()), e))?;
        }
        std::fs::rename(&tmp, dest).map_err(|e| {
            StoreError::io(
                format!("renaming {} to {}", tmp.display(), dest.display()),
                e,
            )
        })?;
        if let Some(dir) = dest.parent().filter(|_| durable) {
            fsync_dir(dir)?;
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}
