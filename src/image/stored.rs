//! Files whose contents the image carries because no path reaches them: memfds (with their
//! seals) and deleted files still open.
//!
//! One [`StoredObject`] per file (by device and inode) in the whole set (`Tree::files`): its
//! identity, size, mode, owner and seals; its contents are pages of the set's page table in a
//! page space of its own ([`StoredObject::space`], from [`FIRST_SPACE`] up, which no process
//! uses), so they are deduplicated and compressed like memory, and a hole stays a hole (no
//! page). Every fd on it ([`StoredFile`]) and every mapping of it (`VmaKind::Memfd`) names
//! it by (dev, ino): a restore makes the file once, in the first process (in tree order,
//! mappings before fds) that needs it, and every later fd or mapping gets that very file.
//!
//! A file in `/dev/shm` that still exists (a POSIX `shm_open` object) is not stored: it is
//! reopened by its path like any file, and the restore checks its identity (device, inode,
//! size, mtime) as for any open file, so after a reboot or on another host the restore
//! fails naming it rather than running against a missing or different file.

use serde::{Deserialize, Serialize};

/// The first page space of stored file contents (object `i` has space `FIRST_SPACE + i`);
/// the SysV IPC segments use `0xE000..0xF000`, processes count up from 0.
pub const FIRST_SPACE: u16 = 0xF000;

/// The most stored files one set holds (the page spaces left above [`FIRST_SPACE`]).
pub const MAX_FILES: usize = (u16::MAX - FIRST_SPACE) as usize + 1;

/// The largest file whose contents a dump stores (bytes of data, holes not counted; a sparse
/// file may be larger). Larger ones are refused by name.
pub const MAX_BYTES: u64 = 1 << 30;

/// An fd on a stored file: which file, and the fd's own offset (its flags are
/// `FdImage::flags`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// The file's device and inode: its [`StoredObject`] in `Tree::files`.
    pub dev: u64,
    pub ino: u64,
    /// The fd's offset.
    pub pos: u64,
}

/// What a stored file is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoredKind {
    /// `memfd_create(2)` with this name (`/memfd:NAME` without the prefix).
    Memfd { name: String },
    /// A regular file deleted while open: `path` is where it was (its fd link without
    /// " (deleted)"). A restore creates it there again and unlinks it at once, or, if that
    /// path is taken now, makes it with `O_TMPFILE` in the same directory.
    Deleted { path: String },
}

/// One stored file of the set, with where its contents are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    pub kind: StoredKind,
    /// Its device and inode at dump time (what fds and mappings name it by).
    pub dev: u64,
    pub ino: u64,
    /// Its size in bytes.
    pub size: u64,
    /// `st_mode` (type and permission bits), owner and group.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// `F_GET_SEALS` (`F_SEAL_*`; a memfd made without `MFD_ALLOW_SEALING` has
    /// `F_SEAL_SEAL`), applied again after contents and size, as the restore's last change.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seals: u32,
    /// The page space of its contents: byte `o` of the file is in the page at key
    /// `page_key(space, o / 4096 * 4096)`; a page not in the table is a hole.
    pub space: u16,
}

impl StoredObject {
    /// How the object is named in messages: `memfd:NAME` or the deleted file's path.
    pub fn describe(&self) -> String {
        match &self.kind {
            StoredKind::Memfd { name } => format!("memfd:{name}"),
            StoredKind::Deleted { path } => format!("{path} (deleted)"),
        }
    }
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}
