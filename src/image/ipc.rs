//! SysV IPC objects a tree uses: shared memory segments, semaphore sets, message queues.
//!
//! Which objects are the tree's (the kernel does not say which semaphore set or queue a
//! process uses): a segment some process of the tree has attached (its `/SYSV<key>` mapping,
//! whose inode is the shmid) or that one created (`cpid`) or last attached or detached
//! (`lpid`); a semaphore set one of whose semaphores a process of the tree last operated or
//! set (`semctl(GETPID)`); a queue a process of the tree last sent to or received from
//! (`lspid`, `lrpid`). A restore makes each again under the same id and key.
//!
//! A segment's contents are not in the manifest: they are pages of the set's page table, in
//! page space [`SYSV_SPACE_BASE`] + its index in [`IpcImage::shm`] (at offsets from 0), out
//! of the way of the processes' spaces (`ImageSet::processes`: space i is process i).

use serde::{Deserialize, Serialize};

/// The first page space of SysV shared memory segments: segment `i` of [`IpcImage::shm`] keeps
/// its pages in space `SYSV_SPACE_BASE + i`. A tree has fewer processes than this.
pub const SYSV_SPACE_BASE: u16 = 0xff00;

/// The longest message text a restore queues again: its injected `msgsnd` passes the
/// message (8 bytes of type, then the text) through the argument part of the restore's
/// scratch area (60 KiB). A dump refuses a queue holding a longer one (only possible where
/// `kernel.msgmax` was raised above its default of 8 KiB).
pub const MAX_MESSAGE: usize = 60 * 1024 - 8;

/// At most this many segments fit in their page spaces.
pub const MAX_SEGMENTS: usize = (u16::MAX - SYSV_SPACE_BASE) as usize + 1;

/// The SysV IPC objects of a set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcImage {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shm: Vec<ShmSegment>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sem: Vec<SemSet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub msg: Vec<MsgQueue>,
}

impl IpcImage {
    pub fn is_empty(&self) -> bool {
        self.shm.is_empty() && self.sem.is_empty() && self.msg.is_empty()
    }
}

/// What every SysV object has (`struct ipc_perm`, with the object's id).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcPerm {
    /// The id `shmget`/`semget`/`msgget` returned: `index + seq * 32768`.
    pub id: i32,
    /// Its key (0: `IPC_PRIVATE`, or a segment marked for deletion).
    pub key: i32,
    /// Permission bits (the low 9 bits of `mode`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The creator's ids (a restore cannot set them: they become haul's).
    pub cuid: u32,
    pub cgid: u32,
}

/// One shared memory segment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShmSegment {
    pub perm: IpcPerm,
    /// Its size in bytes (`shm_segsz`); its pages are in its page space.
    pub size: u64,
    /// The pid that created it (`shm_cpid`).
    pub cpid: i32,
    /// Marked for deletion (`IPC_RMID` while attached, `SHM_DEST`): the restore marks it again
    /// once the processes have attached it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    /// Locked in memory (`SHM_LOCK`, `SHM_LOCKED`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub locked: bool,
}

/// One semaphore set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemSet {
    pub perm: IpcPerm,
    /// Every semaphore's value (`semctl(GETALL)`), in order.
    pub values: Vec<u16>,
}

/// One message queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgQueue {
    pub perm: IpcPerm,
    /// Its capacity in bytes (`msg_qbytes`).
    pub qbytes: u64,
    /// The queued messages, oldest first (read with `MSG_COPY`, not taken).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<Message>,
}

/// One queued message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `mtype` (> 0).
    pub mtype: i64,
    pub data: Vec<u8>,
}

/// The page space of segment `index` of [`IpcImage::shm`].
pub fn shm_space(index: usize) -> u16 {
    SYSV_SPACE_BASE + index as u16
}
