//! The process image model: what a checkpoint holds about a process (threads, VMAs, fds, signal
//! state, mm fields) and its page table. Pure data: no I/O, no kernel calls. The versioned,
//! checksummed encoding of manifests lives in [`encode`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

pub mod attrs;
pub mod encode;
pub mod events;
pub mod inet;
pub mod ipc;
pub mod seccomp;
pub mod stored;
pub mod tty;
pub mod unix;

pub use attrs::{ProcAttrs, ThreadAttrs};

/// Size of a page on the machines haul supports (x86_64).
pub const PAGE_SIZE: usize = 4096;

/// Identity of a page's content: the first 16 bytes of its BLAKE3 hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PageId(pub [u8; 16]);

impl PageId {
    /// Hashes one page (or any byte string) into its id.
    pub fn of(bytes: &[u8]) -> PageId {
        let h = blake3::hash(bytes);
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.as_bytes()[..16]);
        PageId(id)
    }

    /// The ids of many pages, each the same as [`PageId::of`] of it, in order.
    ///
    /// BLAKE3 hashes a 4 KiB page as four 1 KiB chunks joined by three parent nodes, and one
    /// page at a time fills only four SIMD lanes. Here the chunks of up to [`HASH_LANES`]
    /// pages are compressed side by side (all 16 lanes of AVX-512), then their parents: about
    /// 1.65× the throughput of one page at a time on this machine's cores. The crate's
    /// multi-input compression (`blake3::platform::Platform::hash_many`) is public but
    /// unstable, so `Cargo.toml` pins the crate's version, and a test compares every id with
    /// `blake3::hash`.
    pub fn of_pages(pages: &[&[u8; PAGE_SIZE]]) -> Vec<PageId> {
        let platform = blake3::platform::Platform::detect();
        let mut ids = Vec::with_capacity(pages.len());
        for group in pages.chunks(HASH_LANES) {
            hash_lanes(platform, group, &mut ids);
        }
        ids
    }

    /// Lower-case hexadecimal, 32 characters.
    pub fn to_hex(&self) -> String {
        crate::util::hex(&self.0)
    }

    /// Parses 32 hexadecimal characters.
    pub fn from_hex(s: &str) -> Option<PageId> {
        let v = crate::util::unhex(s)?;
        let arr: [u8; 16] = v.try_into().ok()?;
        Some(PageId(arr))
    }
}

/// How many pages [`PageId::of_pages`] hashes side by side: the widest SIMD degree of BLAKE3.
pub const HASH_LANES: usize = 16;

/// The BLAKE3 key words of plain hashing (its IV, from the specification) and its node flags.
const BLAKE3_IV: [u32; 8] = [
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
];
const CHUNK_START: u8 = 1;
const CHUNK_END: u8 = 1 << 1;
const PARENT: u8 = 1 << 2;
const ROOT: u8 = 1 << 3;

/// Hashes `pages` (at most [`HASH_LANES`]) side by side and appends their ids to `ids`.
fn hash_lanes(
    platform: blake3::platform::Platform,
    pages: &[&[u8; PAGE_SIZE]],
    ids: &mut Vec<PageId>,
) {
    use blake3::{IncrementCounter::No, CHUNK_LEN, OUT_LEN};
    const CHUNKS: usize = PAGE_SIZE / CHUNK_LEN;
    let n = pages.len();
    debug_assert!(n <= HASH_LANES);
    if n == 0 {
        return;
    }
    // The chaining values of the pages' chunks, page after page: (page, chunk) is at
    // (page * CHUNKS + chunk) * OUT_LEN, so each pair of siblings is one 64-byte parent block.
    let mut chunk_cvs = [0u8; HASH_LANES * CHUNKS * OUT_LEN];
    let mut lane_out = [0u8; HASH_LANES * OUT_LEN];
    for c in 0..CHUNKS {
        let inputs: [&[u8; CHUNK_LEN]; HASH_LANES] =
            std::array::from_fn(|i| block(&pages[i.min(n - 1)][c * CHUNK_LEN..]));
        // Every page's chunk `c` has chunk counter `c`.
        platform.hash_many(
            &inputs[..n],
            &BLAKE3_IV,
            c as u64,
            No,
            0,
            CHUNK_START,
            CHUNK_END,
            &mut lane_out[..n * OUT_LEN],
        );
        for (i, cv) in lane_out[..n * OUT_LEN].chunks_exact(OUT_LEN).enumerate() {
            let at = (i * CHUNKS + c) * OUT_LEN;
            chunk_cvs[at..at + OUT_LEN].copy_from_slice(cv);
        }
    }
    // Two parents per page, then its root.
    let mut parent_cvs = [0u8; HASH_LANES * 2 * OUT_LEN];
    let inputs: [&[u8; 2 * OUT_LEN]; 2 * HASH_LANES] =
        std::array::from_fn(|k| block(&chunk_cvs[k * 2 * OUT_LEN..]));
    platform.hash_many(
        &inputs[..2 * n],
        &BLAKE3_IV,
        0,
        No,
        PARENT,
        0,
        0,
        &mut parent_cvs[..2 * n * OUT_LEN],
    );
    let inputs: [&[u8; 2 * OUT_LEN]; HASH_LANES] =
        std::array::from_fn(|k| block(&parent_cvs[k * 2 * OUT_LEN..]));
    platform.hash_many(
        &inputs[..n],
        &BLAKE3_IV,
        0,
        No,
        PARENT | ROOT,
        0,
        0,
        &mut lane_out[..n * OUT_LEN],
    );
    ids.extend(lane_out[..n * OUT_LEN].chunks_exact(OUT_LEN).map(|h| {
        let mut id = [0u8; 16];
        id.copy_from_slice(&h[..16]);
        PageId(id)
    }));
}

/// The first `N` bytes of `b` as an array: for slices cut to hold them, so never short.
fn block<const N: usize>(b: &[u8]) -> &[u8; N] {
    b.first_chunk().expect("cut to hold a whole block")
}

/// A whole page of `b`, which holds one (whole pages cut from a buffer of pages).
pub fn as_page(b: &[u8]) -> &[u8; PAGE_SIZE] {
    block(b)
}

impl fmt::Debug for PageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageId({})", self.to_hex())
    }
}

impl fmt::Display for PageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Returns true when every byte of `page` is zero.
pub fn is_zero_page(page: &[u8]) -> bool {
    // Blocks of 256 bytes, each folded with `|` over fixed-size chunks (which the compiler
    // vectorises): a page with data is told apart by its first block most of the time, and
    // only an all-zero page is read to its end.
    page.chunks(256).all(|block| {
        let chunks = block.chunks_exact(16);
        chunks.remainder().iter().all(|&b| b == 0)
            && chunks.fold(0u128, |acc, c| {
                acc | u128::from_ne_bytes(c.try_into().unwrap_or([1; 16]))
            }) == 0
    })
}

/// Where the content of one page of a checkpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PageRef {
    /// The page is all zeroes: recorded, never stored.
    Zero,
    /// The page is in the store under this id.
    Stored(PageId),
    /// The page was left with its source to be served lazily (post-copy); the id says what it
    /// must hash to when it arrives.
    Lazy(PageId),
}

impl PageRef {
    /// The id of a page the store holds (`Stored`), else `None`.
    pub fn stored(&self) -> Option<PageId> {
        match *self {
            PageRef::Stored(id) => Some(id),
            _ => None,
        }
    }
}

/// The page table of an image set: page-aligned address → where its content is.
///
/// A pre-dump set holds only the pages written since its parent; a final dump's table is complete
/// (every present page of every dumped VMA), so a restore never walks a chain of sets.
///
/// Kept as one vector sorted by address: a migration builds, encodes and decodes the table of the
/// whole memory inside its pause, and a flat vector is built in bulk and walked in order without
/// an allocation per node (a `BTreeMap` of 176k entries took 20–30 ms to build here).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageTable {
    /// Strictly increasing addresses.
    entries: Vec<(u64, PageRef)>,
}

impl PageTable {
    pub fn new() -> Self {
        Self::default()
    }
    /// Where `addr` is, or where it would go.
    fn find(&self, addr: u64) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&addr, |(a, _)| *a)
    }
    /// Records where the page at `addr` (page-aligned) is; replaces an earlier entry. Cheap in
    /// address order (an append); anywhere else it shifts the entries after it.
    pub fn insert(&mut self, addr: u64, r: PageRef) {
        debug_assert_eq!(addr % PAGE_SIZE as u64, 0);
        match self.entries.last() {
            Some((last, _)) if *last < addr => self.entries.push((addr, r)),
            None => self.entries.push((addr, r)),
            Some(_) => match self.find(addr) {
                Ok(i) => self.entries[i].1 = r,
                Err(i) => self.entries.insert(i, (addr, r)),
            },
        }
    }
    pub fn get(&self, addr: u64) -> Option<PageRef> {
        self.find(addr).ok().map(|i| self.entries[i].1)
    }
    pub fn remove(&mut self, addr: u64) -> Option<PageRef> {
        self.find(addr).ok().map(|i| self.entries.remove(i).1)
    }
    /// Every entry in address order, as a slice.
    pub fn entries(&self) -> &[(u64, PageRef)] {
        &self.entries
    }
    /// Every entry in address order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, PageRef)> + '_ {
        self.entries.iter().copied()
    }
    /// Entries with `start <= addr < end`, in address order.
    pub fn range(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, PageRef)> + '_ {
        let lo = self.entries.partition_point(|(a, _)| *a < start);
        let hi = self.entries.partition_point(|(a, _)| *a < end).max(lo);
        self.entries[lo..hi].iter().copied()
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Counts of (zero, stored, lazy) entries.
    pub fn counts(&self) -> (u64, u64, u64) {
        let mut c = (0, 0, 0);
        for (_, r) in &self.entries {
            match r {
                PageRef::Zero => c.0 += 1,
                PageRef::Stored(_) => c.1 += 1,
                PageRef::Lazy(_) => c.2 += 1,
            }
        }
        c
    }
}

impl PageTable {
    /// The table of the entries of `first` then those of `then` (for an address given twice,
    /// the later entry wins, as with [`FromIterator`]). Two lists each in strictly increasing
    /// address order, as a set writer's pages and references are, are merged in one pass
    /// into the longer one; others are sorted.
    pub fn merged(first: Vec<(u64, PageRef)>, then: Vec<(u64, PageRef)>) -> PageTable {
        if !increasing(&first) || !increasing(&then) {
            return first.into_iter().chain(then).collect();
        }
        if first.is_empty() {
            return PageTable { entries: then };
        }
        if then.is_empty() {
            return PageTable { entries: first };
        }
        // Into the longer list, in place: a final dump's few new pages into its references
        // to the whole memory (a new table that size cost ~7 ms per GiB of pages here).
        let key = |(a, _): &(u64, PageRef)| *a;
        let entries = if first.len() >= then.len() {
            let mut big = first;
            crate::util::merge_into_sorted_by_key(&mut big, &then, true, key);
            big
        } else {
            let mut big = then;
            crate::util::merge_into_sorted_by_key(&mut big, &first, false, key);
            big
        };
        PageTable { entries }
    }
}

/// Whether the addresses of `v` strictly increase (a table's order, no address twice).
fn increasing(v: &[(u64, PageRef)]) -> bool {
    v.windows(2).all(|w| w[0].0 < w[1].0)
}

impl FromIterator<(u64, PageRef)> for PageTable {
    /// Builds a table from entries in any order; for an address given twice, the later entry
    /// wins (as with repeated [`PageTable::insert`]). Much faster than inserting one by one.
    fn from_iter<I: IntoIterator<Item = (u64, PageRef)>>(iter: I) -> Self {
        let mut v: Vec<(u64, PageRef)> = iter.into_iter().collect();
        // A decoded table is in order already: nothing to sort or drop (no pass over it).
        if increasing(&v) {
            return PageTable { entries: v };
        }
        // Stable: equal addresses keep their order. Already sorted runs (a decoded table, a
        // final dump's pages then its carried references) are merged, not sorted again.
        v.sort_by_key(|(a, _)| *a);
        // Keep the last of each address, in place.
        let mut n = 0;
        for i in 0..v.len() {
            if n > 0 && v[n - 1].0 == v[i].0 {
                v[n - 1].1 = v[i].1;
            } else {
                v[n] = v[i];
                n += 1;
            }
        }
        v.truncate(n);
        PageTable { entries: v }
    }
}

/// Kind of an image set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SetKind {
    /// A pre-copy iteration: only the pages written since the parent.
    PreDump,
    /// A final dump: complete page table and process state.
    Dump,
}

impl fmt::Display for SetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SetKind::PreDump => "pre-dump",
            SetKind::Dump => "dump",
        })
    }
}

/// Figures recorded with a set when it is committed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetFigures {
    /// Pages in the page table.
    pub pages: u64,
    /// Zero pages (recorded, not stored).
    pub pages_zero: u64,
    /// Pages left to be served lazily.
    pub pages_lazy: u64,
    /// Bytes of non-zero pages (page count × page size).
    pub bytes_logical: u64,
    /// Compressed bytes of the pages this set references (as stored, counting shared ones).
    pub bytes_stored: u64,
    /// Compressed bytes this set added to the store (pages no earlier set had).
    pub bytes_new: u64,
    /// Pages this set added to the store.
    pub pages_new: u64,
}

/// One checkpoint: manifest of an image set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSet {
    /// Unique id, `<job>-<yyyymmddThhmmss>-<rand>`; sortable by time within a job.
    pub id: String,
    pub job: String,
    /// Creation time, microseconds since the Unix epoch.
    pub created_us: u64,
    pub kind: SetKind,
    pub parent: Option<String>,
    /// `uname -r` of the machine that dumped.
    pub kernel: String,
    /// None for a pre-dump, which carries only pages. For a tree, the root (the job's
    /// process); the rest is in `tree`.
    pub process: Option<ProcessImage>,
    /// The descendants of `process`, living and zombie (empty for one process).
    pub tree: Tree,
    /// Every process's pages, each in its own page space (see [`page_key`]): the root's at
    /// their own addresses, descendant `i`'s in space `i + 1`.
    pub pages: PageTable,
    pub figures: SetFigures,
}

impl ImageSet {
    /// Every living process of the set with its page space, the root first (space 0), then
    /// the descendants in `tree` order (parents before their children). Empty for a pre-dump.
    pub fn processes(&self) -> impl Iterator<Item = (u16, &ProcessImage)> + '_ {
        self.process
            .iter()
            .chain(self.tree.descendants.iter())
            .enumerate()
            .map(|(i, p)| (i as u16, p))
    }

    /// The page space of living process `pid`.
    pub fn space_of(&self, pid: i32) -> Option<u16> {
        self.processes().find(|(_, p)| p.pid == pid).map(|(s, _)| s)
    }

    /// The pages of page space `space` at their own addresses, in address order.
    pub fn pages_of(&self, space: u16) -> impl Iterator<Item = (u64, PageRef)> + '_ {
        let (lo, hi) = space_bounds(space);
        self.pages.range(lo, hi).map(move |(k, r)| (k - lo, r))
    }

    /// This set with only `pages` and no process: the view a page source is read through
    /// for one process, one stored file or one SysV segment.
    pub fn with_only_pages(&self, pages: PageTable) -> ImageSet {
        ImageSet {
            id: self.id.clone(),
            job: self.job.clone(),
            created_us: self.created_us,
            kind: self.kind,
            parent: self.parent.clone(),
            kernel: self.kernel.clone(),
            process: None,
            tree: Tree::default(),
            pages,
            figures: self.figures.clone(),
        }
    }

    /// How many processes the set holds, zombies included (0 for a pre-dump).
    pub fn process_count(&self) -> usize {
        self.processes().count() + self.tree.zombies.len()
    }
}

/// Page keys: the top 16 bits of a page table key name the page space (the process), the low
/// 48 bits are the address in it (x86_64 user addresses are below 2^47). Space 0 is the root,
/// so a one-process set's keys are its addresses, as before trees existed; the store, which
/// dedups by content, never looks inside a key.
pub const SPACE_SHIFT: u32 = 48;

/// The page table key of `addr` in page space `space`.
pub fn page_key(space: u16, addr: u64) -> u64 {
    debug_assert!(addr < 1 << SPACE_SHIFT);
    (u64::from(space) << SPACE_SHIFT) | addr
}

/// A page table key split into (space, address).
pub fn split_key(key: u64) -> (u16, u64) {
    ((key >> SPACE_SHIFT) as u16, key & ((1 << SPACE_SHIFT) - 1))
}

/// The keys of page space `space`: `lo <= key < hi`.
pub fn space_bounds(space: u16) -> (u64, u64) {
    let lo = u64::from(space) << SPACE_SHIFT;
    (lo, lo + (1 << SPACE_SHIFT))
}

/// The processes below a set's root.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Living descendants, each with its parent earlier in the list (or the root): the
    /// order a restore creates them in. Process `i` has page space `i + 1`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub descendants: Vec<ProcessImage>,
    /// Descendants that had exited and were not yet reaped by their parent (a living process
    /// of the set). Restored as zombies, so the parent's `wait` still sees their status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zombies: Vec<ZombieImage>,
    /// The SysV IPC objects (shared memory, semaphores, message queues) the processes use,
    /// with their contents (see [`ipc`]); None when they use none. A one-process set may
    /// have them too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc: Option<ipc::IpcImage>,
    /// The files whose contents the set stores (memfds, deleted files still open), each with
    /// a page space of its own (see [`stored`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<stored::StoredObject>,
    /// The network lock a kill-mode dump left holding the tree's connections to peers outside
    /// it, for the restore to release once the restored copy runs (issue #15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netlock: Option<inet::LockRecord>,
}

impl Tree {
    pub fn is_empty(&self) -> bool {
        self.descendants.is_empty() && self.zombies.is_empty()
    }
}

/// A zombie: an exited process whose parent has not reaped it yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZombieImage {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub comm: String,
    /// What its parent's `wait` will report, as `wait(2)` encodes it (`/proc/PID/stat` field
    /// 52, `exit_code`): `(code << 8)` for an exit, the signal number (`| 0x80` for a core
    /// dump) for a kill.
    pub wait_status: i32,
    /// The signal its parent gets when it is created dead (`/proc/PID/stat` field 38).
    pub exit_signal: i32,
}

/// Where an fd of one process gets its open file description from another process of the
/// tree: fd `fd` of process `pid`, which comes earlier in the tree (so it is restored first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdRef {
    pub pid: i32,
    pub fd: i32,
}

/// Where a shared mapping's object comes from in another process of the tree: the mapping
/// that starts at `start` in process `pid` (earlier in the tree, so restored first; its
/// pages are stored there, not here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmaRef {
    pub pid: i32,
    pub start: u64,
}

fn sigchld() -> i32 {
    17
}

fn is_sigchld(v: &i32) -> bool {
    *v == 17
}

/// Process-wide state captured at dump time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessImage {
    /// Its cgroup in each hierarchy (restored there, or the restore fails naming it).
    #[serde(default)]
    pub cgroups: Vec<CgroupPlace>,
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    /// `/proc/PID/cmdline` as raw bytes (NUL-separated).
    pub cmdline: Vec<u8>,
    pub exe: String,
    pub cwd: String,
    pub umask: u32,
    pub personality: u32,
    pub creds: Creds,
    pub rlimits: Vec<Rlimit>,
    pub mm: MmFields,
    /// `/proc/PID/auxv` as (type, value) pairs, terminator excluded.
    pub auxv: Vec<(u64, u64)>,
    pub threads: Vec<ThreadImage>,
    pub vmas: Vec<Vma>,
    pub fds: Vec<FdImage>,
    /// Signal actions for signals 1..=64 (index 0 is signal 1); SIGKILL/SIGSTOP hold defaults.
    pub sigactions: Vec<SigAction>,
    /// Process-wide pending signals (bitmask).
    pub shared_pending: u64,
    /// Process group and session at dump time (0: not recorded, from an older image).
    #[serde(default)]
    pub pgid: i32,
    #[serde(default)]
    pub sid: i32,
    /// Armed interval timers (`setitimer(2)`: real, virtual, profiling).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub itimers: Vec<ITimer>,
    /// The queued `siginfo_t`s of `shared_pending` (raw, 128 bytes each, oldest first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_pending_info: Vec<Vec<u8>>,
    /// POSIX timers (`timer_create(2)`), by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub posix_timers: Vec<PosixTimer>,
    /// prctl-style attributes (dumpable, securebits, THP, subreaper, OOM, loginuid).
    #[serde(default)]
    pub attrs: ProcAttrs,
    /// The signal its parent gets when it exits (`/proc/PID/stat` field 38; SIGCHLD unless
    /// it was created by `clone(2)` with another).
    #[serde(default = "sigchld", skip_serializing_if = "is_sigchld")]
    pub exit_signal: i32,
    /// It shares its fd table with this earlier process of the tree (`CLONE_FILES`): a
    /// restore creates it sharing that one's table and restores no fds of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_of: Option<i32>,
    /// What `/proc` showed of the process under the freeze (`proc::observe`, field → value),
    /// which `--verify state` compares with the restored process. Empty in an image made
    /// before it was recorded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub observed: BTreeMap<String, String>,
    /// Its threads' seccomp filters (see [`seccomp`]), installed again as the last restore
    /// step; None when no thread is filtered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<seccomp::SeccompImage>,
}

/// One armed interval timer, as `getitimer(2)` reported it at dump time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ITimer {
    /// `ITIMER_REAL` (0), `ITIMER_VIRTUAL` (1) or `ITIMER_PROF` (2).
    pub which: u32,
    /// Time left until it next fires (µs).
    pub value_us: u64,
    /// Its period (µs; 0 = one-shot).
    pub interval_us: u64,
}

/// One POSIX timer: how it was created (from /proc/PID/timers) and its time left (from an
/// injected `timer_gettime(2)`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimer {
    /// The id `timer_create` returned (the process keeps it in its memory).
    pub id: i32,
    /// Its clock (`CLOCK_*`).
    pub clock: i32,
    /// `sigev_notify`: `SIGEV_SIGNAL` (0), `SIGEV_NONE` (1), or `SIGEV_THREAD_ID` (4) with
    /// `SIGEV_SIGNAL`.
    pub notify: i32,
    pub signo: i32,
    /// `sigev_value`, handed to the handler in `si_value`.
    pub sigval: u64,
    /// The thread a `SIGEV_THREAD_ID` timer signals (0 otherwise).
    pub tid: i32,
    /// Time left until it next fires (ns; 0 = disarmed).
    pub value_ns: u64,
    /// Its period (ns; 0 = one-shot).
    pub interval_ns: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    /// real, effective, saved, filesystem
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// RLIMIT_* number.
    pub resource: u32,
    /// u64::MAX is RLIM_INFINITY.
    pub cur: u64,
    pub max: u64,
}

/// The mm fields `prctl(PR_SET_MM_MAP)` restores (from `/proc/PID/stat`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

/// Where a process or thread sits in one cgroup hierarchy: a line of `/proc/PID/cgroup`
/// (`id:controllers:path`; cgroup v2's is `0::/path`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPlace {
    pub id: u32,
    pub controllers: String,
    pub path: String,
}

/// Per-thread state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadImage {
    /// Its cgroups where they differ from the process's (threaded cgroups); empty: the same.
    #[serde(default)]
    pub cgroups: Vec<CgroupPlace>,
    pub tid: i32,
    /// Raw `struct user_regs_struct` (216 bytes on x86_64), as read by PTRACE_GETREGS, with
    /// an interrupted syscall rewound to be run again (`Regs::restart_adjusted`).
    pub regs: Vec<u8>,
    /// The `-ERESTART*` code (-512 to -514) of the syscall `regs` rewinds, when the thread
    /// was stopped inside one (`pause`, `read`, `epoll_wait`, ...). The restore gives the
    /// kernel the syscall's own state back, so that a signal handled before the thread returns
    /// to it interrupts it with `EINTR` as it would have the live thread, instead of its being
    /// run again after the handler. `None` in images made before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<i64>,
    /// Raw NT_X86_XSTATE regset (its size as the kernel gave it).
    pub xstate: Vec<u8>,
    /// Raw NT_PRFPREG regset (512 bytes), used when XSTATE is unavailable.
    pub fpregs: Vec<u8>,
    /// Blocked signals.
    pub sigmask: u64,
    /// Thread-private pending signals.
    pub pending: u64,
    pub rseq: Option<Rseq>,
    /// (head, len) of the robust futex list.
    pub robust_list: Option<(u64, u64)>,
    pub sigaltstack: Option<SigAltStack>,
    pub comm: String,
    /// The thread's `clear_child_tid` address (set by `set_tid_address(2)` or
    /// `CLONE_CHILD_CLEARTID`; 0 if none): the kernel clears it and wakes its futex when the
    /// thread exits, which is what `pthread_join` waits for.
    #[serde(default)]
    pub clear_child_tid: u64,
    /// The queued `siginfo_t`s of `pending` (raw, 128 bytes each, oldest first), so that a
    /// restore queues them again with their sender, code and value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_info: Vec<Vec<u8>>,
    /// Scheduling (per thread in Linux); `None` in images made before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sched: Option<Sched>,
    /// Timer slack, parent-death signal, speculation control.
    #[serde(default)]
    pub attrs: ThreadAttrs,
}

/// A thread's scheduling: policy, priority, nice value and the CPUs it may run on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sched {
    /// `SCHED_*`.
    pub policy: u32,
    /// Real-time priority (0 for the normal policies).
    pub priority: u32,
    pub nice: i32,
    pub cpus: Vec<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rseq {
    pub addr: u64,
    pub len: u32,
    pub sig: u32,
    pub flags: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

/// One signal's disposition, in the kernel's `struct sigaction` layout terms.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAction {
    /// Handler address, or 0 = SIG_DFL, 1 = SIG_IGN.
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// What a mapping is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmaKind {
    /// Private anonymous memory (incl. `[stack]`, `[heap]`).
    Anon,
    /// Shared anonymous memory (`/dev/zero (deleted)`, `memfd`-less MAP_SHARED|MAP_ANONYMOUS).
    SharedAnon,
    /// A file mapping; private ones carry their written (copy-on-write) pages in the page table.
    File,
    Vdso,
    Vvar,
    VvarVclock,
    Vsyscall,
    /// A shared mapping of a tmpfs file that was deleted while mapped (`/dev/shm/sem.NAME
    /// (deleted)`: POSIX semaphores and shared memory, as `multiprocessing` makes them). Its
    /// pages are stored like shared anonymous memory's; `name` is the path without
    /// " (deleted)" and `file` its identity (size). A restore creates the file again at that
    /// path (refusing if something is there), maps it, fills it and unlinks it.
    DeletedShm,
    /// An attached SysV shared memory segment (`/SYSV<key> (deleted)` in maps); `ino` is its
    /// shmid. The segment and its pages are in `Tree::ipc` (see [`ipc`]): a restore attaches
    /// it again (`shmat`) at `start - pgoff`, and stores no pages for the mapping itself.
    SysvShm,
    /// A mapping of a memfd, shared or private: the file is a stored file of the set
    /// (`Tree::files`, by `file`'s dev and `ino`), whose contents the image keeps once
    /// (see [`stored`]); a private mapping carries its written pages like a private file
    /// mapping. A restore maps the one file made for the set at `pgoff`.
    Memfd,
}

/// Identity of a file at dump time, checked again at restore.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

/// One mapping of the address space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_READ | PROT_WRITE | PROT_EXEC bits.
    pub prot: u32,
    /// True for MAP_SHARED.
    pub shared: bool,
    /// Offset into the file, in bytes.
    pub pgoff: u64,
    pub kind: VmaKind,
    /// The file (for `File`), or the name shown in maps (`[heap]`, `[stack]`, ...).
    pub name: String,
    pub file: Option<FileId>,
    /// Two-letter VmFlags from smaps (`rd wr mr mw me ac gd ...`).
    pub vm_flags: Vec<String>,
    /// `SharedAnon`, `DeletedShm` and `Memfd`: the inode of the memory object
    /// (`/proc/PID/maps`), the same in every process that maps it; `SysvShm`: the segment's
    /// shmid.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub ino: u64,
    /// `SharedAnon` and `DeletedShm` mapped by an earlier process of the tree too: the
    /// restore maps that process's object (through `/proc/PID/map_files`) instead of a new
    /// one, and this mapping's pages are not stored (the earlier one's are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_with: Option<VmaRef>,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

impl Vma {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    pub fn pages(&self) -> u64 {
        self.len() / PAGE_SIZE as u64
    }
    pub fn has_flag(&self, f: &str) -> bool {
        self.vm_flags.iter().any(|x| x == f)
    }
}

/// One open file descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdImage {
    pub fd: i32,
    /// `open(2)` flags from fdinfo (O_CLOEXEC included).
    pub flags: u32,
    pub kind: FdKind,
    /// This fd shares its open file description (and so its offset) with the lower fd given
    /// here (`dup`, `2>&1`): a restore duplicates that one instead of opening the file again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_as: Option<i32>,
    /// File locks held through this fd, taken again by a restore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<FileLock>,
    /// This fd shares its open file description with an fd of an earlier process of the tree
    /// (inherited across `fork`, passed over a socket): a restore installs a copy of that
    /// one (one offset, one set of status flags) and does not create the object again;
    /// `kind` only describes it. Takes precedence over everything but `same_as`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherited: Option<FdRef>,
}

/// A file lock a process held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLock {
    pub kind: LockKind,
    /// An exclusive (write) lock, else shared (read).
    pub write: bool,
    /// First byte (0 for `flock`).
    pub start: u64,
    /// Bytes locked (0 = to the end of the file, as `fcntl(2)` means it).
    pub len: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockKind {
    /// `flock(2)`: owned by the open file description.
    Flock,
    /// `fcntl(2)` `F_SETLK` record lock: owned by the process.
    Posix,
    /// `fcntl(2)` `F_OFD_SETLK` record lock: owned by the open file description.
    Ofd,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FdKind {
    /// A regular file (or directory) by path, with its offset.
    File {
        path: String,
        pos: u64,
        mode: u32,
        id: FileId,
    },
    DevNull,
    DevZero,
    DevUrandom,
    /// One end of a pipe whose both ends are held in the checkpoint (by this process or by
    /// others of the tree; pipes to processes outside it are refused). The first read-end fd
    /// of the pipe in tree order (root first, then by fd number) carries what it held and its
    /// capacity; a restore creates the pipe there, and every other end of it that is not
    /// `inherited` or `same_as` gets the other end of that pipe.
    Pipe {
        /// The pipe's inode: the fds of one pipe share it.
        ino: u64,
        /// The write end, else the read end.
        write: bool,
        #[serde(default, skip_serializing_if = "is_zero")]
        size: u32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        data: Vec<u8>,
    },
    /// An eventfd, timerfd or signalfd.
    Anon(AnonFd),
    /// One end of an unbound unix socket pair (`socketpair(2)`) whose other end is held in
    /// the checkpoint too. The first end in tree order creates the pair; the other end (by
    /// `peer`) gets the second socket of it.
    UnixPair {
        /// This socket's inode, and its peer's.
        ino: u64,
        peer: u64,
        /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
        sock_type: i32,
        /// What waits to be read at this end: one element per datagram or record, or one
        /// element holding a stream's bytes. A restore sends them from the peer.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        queued: Vec<Vec<u8>>,
        /// Its socket options (buffer sizes, `SO_PASSCRED`, `SO_PEEK_OFF`).
        #[serde(default, skip_serializing_if = "unix::SockOpts::is_unset")]
        opts: unix::SockOpts,
    },
    /// Any other unix socket: bound (a path or an abstract name), listening (with its
    /// backlog), or connected to a socket of the checkpoint that is one (see [`unix`]).
    Unix(unix::UnixSocket),
    /// A TCP or UDP socket, IPv4 or IPv6, that is not connected: listening, or bound (see
    /// [`inet`]).
    Inet(inet::InetSocket),
    /// An epoll instance with its registered targets (see [`events`]).
    Epoll(events::EpollImage),
    /// An inotify instance with its watches (see [`events`]).
    Inotify(events::InotifyImage),
    /// A file whose contents the image stores because no path reaches them: a memfd (with its
    /// seals), a deleted file still open, a file in `/dev/shm` (see [`stored`]).
    Stored(stored::StoredFile),
    /// A terminal: a pty master or slave, or the terminal the process was started on (see
    /// [`tty`]).
    Tty(tty::TtyImage),
}

/// An eventfd, a timerfd or a signalfd (anonymous inodes whose whole state fdinfo shows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnonFd {
    /// `eventfd(2)`: its counter, and whether reads take 1 at a time.
    EventFd { count: u64, semaphore: bool },
    /// `timerfd_create(2)`: its clock, expirations not read yet, time left and period (ns).
    TimerFd {
        clock: i32,
        ticks: u64,
        value_ns: u64,
        interval_ns: u64,
    },
    /// `signalfd(2)`: the signals it reads.
    SignalFd { mask: u64 },
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_tables_are_the_tables_built_from_both_lists_in_turn() {
        let id = |n: u8| PageRef::Stored(PageId([n; 16]));
        let p = |a: u64, n: u8| (a * 0x1000, id(n));
        // In order, with an address in both (the second list's entry wins), runs of each
        // and a tail of one; then the same out of order, and empty lists.
        let cases = [
            (
                vec![p(1, 1), p(2, 2), p(5, 5), p(9, 9)],
                vec![p(2, 20), p(3, 30), p(4, 40), p(6, 60)],
            ),
            (vec![p(5, 5), p(1, 1)], vec![p(1, 10), p(7, 70)]),
            (vec![], vec![p(3, 3)]),
            (vec![p(3, 3)], vec![]),
        ];
        for (a, b) in cases {
            let built: PageTable = a.iter().chain(&b).copied().collect();
            assert_eq!(
                PageTable::merged(a.clone(), b.clone()),
                built,
                "{a:?} + {b:?}"
            );
        }
        let m = PageTable::merged(vec![p(1, 1), p(2, 2)], vec![p(2, 20)]);
        assert_eq!(m.entries(), &[p(1, 1), p(2, 20)]);
    }

    #[test]
    fn a_table_built_from_entries_keeps_the_later_entry_of_an_address() {
        let id = PageId::of(&[1u8; PAGE_SIZE]);
        let t: PageTable = [
            (0x3000, PageRef::Zero),
            (0x1000, PageRef::Zero),
            (0x3000, PageRef::Stored(id)),
            (0x2000, PageRef::Lazy(id)),
        ]
        .into_iter()
        .collect();
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(0x3000), Some(PageRef::Stored(id)));
        assert_eq!(t.counts(), (1, 1, 1));
        let addrs: Vec<u64> = t.range(0x1000, 0x3000).map(|(a, _)| a).collect();
        assert_eq!(addrs, vec![0x1000, 0x2000]);
    }

    #[test]
    fn a_table_inserted_into_out_of_order_stays_sorted_and_replaces_in_place() {
        let id = PageId::of(&[2u8; PAGE_SIZE]);
        let mut t = PageTable::new();
        for a in [0x5000, 0x1000, 0x3000, 0x7000, 0x3000] {
            t.insert(a, PageRef::Zero);
        }
        t.insert(0x1000, PageRef::Stored(id));
        let all: Vec<(u64, PageRef)> = t.iter().collect();
        assert_eq!(
            all,
            vec![
                (0x1000, PageRef::Stored(id)),
                (0x3000, PageRef::Zero),
                (0x5000, PageRef::Zero),
                (0x7000, PageRef::Zero),
            ]
        );
        assert_eq!(t.get(0x2000), None);
        assert_eq!(t.remove(0x3000), Some(PageRef::Zero));
        assert_eq!(t.remove(0x3000), None);
        // Bounds between, before, after and across entries; an empty or reversed range.
        let addrs = |lo, hi| t.range(lo, hi).map(|(a, _)| a).collect::<Vec<_>>();
        assert_eq!(addrs(0x1001, 0x7000), vec![0x5000]);
        assert_eq!(addrs(0, 0x1000), Vec::<u64>::new());
        assert_eq!(addrs(0x7000, u64::MAX), vec![0x7000]);
        assert_eq!(addrs(0x6000, 0x2000), Vec::<u64>::new());
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn page_ids_hash_content_and_zero_pages_are_told_apart() {
        let mut p = vec![0u8; PAGE_SIZE];
        assert!(is_zero_page(&p));
        let zero = PageId::of(&p);
        // A single byte set anywhere, in any block, makes it a page with data.
        for at in 0..PAGE_SIZE {
            p[at] = 0x80;
            assert!(!is_zero_page(&p), "byte {at} set");
            p[at] = 0;
        }
        assert!(is_zero_page(&p[..100]), "a short slice of zeroes");
        p[PAGE_SIZE - 1] = 1;
        assert!(!is_zero_page(&p));
        assert_ne!(PageId::of(&p), zero);
        assert_eq!(PageId::of(&p), PageId::of(&p.clone()));
        assert_eq!(PageId::from_hex(&zero.to_hex()), Some(zero));
    }

    #[test]
    fn pages_hashed_side_by_side_get_the_ids_of_one_at_a_time() {
        // Pseudo-random pages, a zero page and pages that differ in one byte of one chunk: every
        // group size from 0 to beyond two groups, so partial groups of lanes are covered.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut pages = vec![[0u8; PAGE_SIZE]; 2 * HASH_LANES + 3];
        for (k, p) in pages.iter_mut().enumerate().skip(1) {
            for b in p.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            p[(k * 997) % PAGE_SIZE] ^= 0x55;
        }
        pages[5] = pages[4];
        pages[5][3 * 1024 + 7] ^= 1;
        for n in 0..=pages.len() {
            let refs: Vec<&[u8; PAGE_SIZE]> = pages[..n].iter().collect();
            let want: Vec<PageId> = refs.iter().map(|p| PageId::of(&p[..])).collect();
            assert_eq!(PageId::of_pages(&refs), want, "{n} pages");
        }
        assert_ne!(PageId::of(&pages[4]), PageId::of(&pages[5]));
    }
}
