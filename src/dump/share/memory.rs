//! Shared memory objects mapped by several processes of a tree: shared anonymous memory
//! inherited across fork, deleted tmpfs files (POSIX semaphores). (SysV IPC: `sysv.rs`.)
//!
//! One object (same kind, device and inode) is stored once: its first holder in tree order
//! keeps its pages, every later mapping of it gets `Vma::shared_with` naming that mapping and
//! is mapped from it by the restore, at its own offset into the object. A later mapping that
//! covers the first holder's part of the object only partly would make two objects of it, so
//! it is refused by name.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use super::{Member, Refusals};
use crate::dump::DumpError;
use crate::image::{ProcessImage, Vma, VmaKind, VmaRef, PAGE_SIZE};
use crate::proc::MapEntry;
use crate::sys::pagemap::{PageRegion, PAGE_IS_PRESENT};

/// What tells one shared memory object from another: (kind, device, inode).
type ObjKey = (u8, u64, u64);

/// One mapping as the linking rule sees it.
#[derive(Clone, Debug)]
struct Mapping {
    pid: i32,
    start: u64,
    end: u64,
    /// Offset into the object, in bytes.
    pgoff: u64,
    name: String,
    /// None: not a shared memory object.
    key: Option<ObjKey>,
}

/// For each mapping, in order: None (not shared, or the first to map its part of the object:
/// its pages are stored), the earlier stored mapping that covers its part of the object, or
/// the refusal of one that covers a stored mapping's part only partly (the object would come
/// back as two). An object mapped in disjoint pieces (a mapping split by `mprotect`) has each
/// piece stored and restored as an object of its own, as before trees.
fn link_all(maps: &[Mapping]) -> Vec<Result<Option<VmaRef>, DumpError>> {
    let mut stored: HashMap<ObjKey, Vec<&Mapping>> = HashMap::new();
    let bytes = |m: &Mapping| (m.pgoff, m.pgoff + (m.end - m.start));
    maps.iter()
        .map(|m| {
            let Some(key) = m.key else { return Ok(None) };
            let held = stored.entry(key).or_default();
            let (lo, hi) = bytes(m);
            if let Some(h) = held.iter().find(|h| {
                let (hlo, hhi) = bytes(h);
                hlo <= lo && hi <= hhi
            }) {
                return Ok(Some(VmaRef {
                    pid: h.pid,
                    start: h.start,
                }));
            }
            if let Some(h) = held.iter().find(|h| {
                let (hlo, hhi) = bytes(h);
                hlo < hi && lo < hhi
            }) {
                let (hlo, hhi) = bytes(h);
                return Err(DumpError::Unsupported(format!(
                    "pid {} mapping {:x}-{:x} ({}) maps bytes {lo:#x}-{hi:#x} of a shared memory \
                     object whose first holder, pid {} mapping {:x}-{:x}, maps only bytes \
                     {hlo:#x}-{hhi:#x} of them: it would come back as two objects (not \
                     supported yet)",
                    m.pid, m.start, m.end, m.name, h.pid, h.start, h.end
                )));
            }
            held.push(m);
            Ok(None)
        })
        .collect()
}

fn from_map(pid: i32, m: &MapEntry) -> Mapping {
    let tag = if crate::dump::check::is_shared_anon(m) {
        Some(1)
    } else if crate::dump::check::is_deleted_shm(m) {
        Some(2)
    } else {
        None
    };
    let dev = (u64::from(m.dev_major) << 32) | u64::from(m.dev_minor);
    Mapping {
        pid,
        start: m.start,
        end: m.end,
        pgoff: m.offset,
        name: m.path.clone(),
        key: tag.map(|t| (t, dev, m.inode)),
    }
}

/// Refuses what a restore could not give back: a mapping of a shared object that its first
/// holder in the tree does not cover, or that a process outside the tree maps too.
pub(super) fn check(members: &[Member<'_>], found: &mut Refusals) -> Result<(), DumpError> {
    let maps: Vec<Mapping> = members
        .iter()
        .flat_map(|mb| mb.snapshot.maps.iter().map(|m| from_map(mb.pid, m)))
        .collect();
    for r in link_all(&maps) {
        found.note(r)?;
    }
    let pids: BTreeSet<i32> = members.iter().map(|m| m.pid).collect();
    for e in outside_holders(&maps, &pids) {
        found.add(e);
    }
    Ok(())
}

/// Refuses each shared memory object of the tree that a process outside it maps too (a
/// restore would give the tree a copy of its own, and their writes would no longer meet): one
/// refusal per object, naming the member's mapping and the outside pid. Reads the maps of every
/// process, only when the tree maps a shared object at all; processes that vanish meanwhile
/// or whose maps cannot be read are passed over.
fn outside_holders(maps: &[Mapping], pids: &BTreeSet<i32>) -> Vec<DumpError> {
    let mut wanted: HashMap<ObjKey, &Mapping> = HashMap::new();
    for m in maps {
        if let Some(k) = m.key {
            wanted.entry(k).or_insert(m);
        }
    }
    let mut out = Vec::new();
    if wanted.is_empty() {
        return out;
    }
    let mut others: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|p| !pids.contains(p))
        .collect();
    others.sort_unstable();
    for pid in others {
        let Ok(theirs) = crate::proc::maps(pid) else {
            continue;
        };
        for m in &theirs {
            let Some(k) = from_map(pid, m).key else {
                continue;
            };
            if let Some(h) = wanted.remove(&k) {
                out.push(DumpError::Unsupported(format!(
                    "pid {} mapping {:x}-{:x} ({}) shares its memory object with pid {pid}, \
                     outside the tree: not supported yet",
                    h.pid, h.start, h.end, h.name
                )));
            }
        }
        if wanted.is_empty() {
            break;
        }
    }
    out
}

/// Marks every later mapping of a shared memory object with its first holder (`shared_with`).
pub(super) fn link(procs: &mut [ProcessImage]) -> Result<(), DumpError> {
    let maps: Vec<Mapping> = procs
        .iter()
        .flat_map(|p| {
            p.vmas.iter().map(|v| {
                let tag = match v.kind {
                    VmaKind::SharedAnon => Some(1),
                    VmaKind::DeletedShm => Some(2),
                    _ => None,
                };
                let dev = v.file.as_ref().map_or(0, |f| f.dev);
                Mapping {
                    pid: p.pid,
                    start: v.start,
                    end: v.end,
                    pgoff: v.pgoff,
                    name: v.name.clone(),
                    key: tag.map(|t| (t, dev, v.ino)),
                }
            })
        })
        .collect();
    let mut links = link_all(&maps).into_iter();
    for p in procs.iter_mut() {
        for v in &mut p.vmas {
            if let Some(r) = links.next() {
                v.shared_with = r?;
            }
        }
    }
    Ok(())
}

/// The pages of shared memory mapping `v` (of a frozen `pid`) that hold something, as regions
/// of its addresses: the object's data ranges (`SEEK_DATA` through `map_files/`), not the
/// pages in `pid`'s page tables, which miss those only another process touched and those
/// swapped out. (Reading them from `pid` faults them into its page tables: no new memory.)
pub(crate) fn object_regions(pid: i32, v: &Vma) -> Result<Vec<PageRegion>, DumpError> {
    let link = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
    let len = v.end - v.start;
    let page = PAGE_SIZE as u64;
    let ranges = crate::sys::shm::data_ranges(Path::new(&link), v.pgoff, v.pgoff + len)?;
    Ok(ranges
        .into_iter()
        .map(|(a, b)| {
            let lo = (a - v.pgoff) / page * page;
            let hi = ((b - v.pgoff).div_ceil(page) * page).min(len);
            PageRegion {
                start: v.start + lo,
                end: v.start + hi,
                categories: PAGE_IS_PRESENT,
            }
        })
        .filter(|r| r.end > r.start)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::FileId;

    fn shm(pid: i32, start: u64, len: u64, pgoff: u64, ino: u64) -> Mapping {
        Mapping {
            pid,
            start,
            end: start + len,
            pgoff,
            name: "/dev/zero (deleted)".into(),
            key: Some((1, 1, ino)),
        }
    }

    #[test]
    fn later_mappings_of_one_object_name_its_first_holder() {
        let maps = [
            shm(10, 0x1000, 0x4000, 0, 7),
            shm(10, 0x9000, 0x1000, 0, 8),
            Mapping {
                key: None,
                ..shm(11, 0x1000, 0x4000, 0, 7)
            },
            shm(11, 0x1000, 0x4000, 0, 7),
            // The middle of it, at another address.
            shm(12, 0x20000, 0x2000, 0x1000, 7),
            shm(12, 0x30000, 0x1000, 0, 8),
        ];
        let got: Vec<Option<VmaRef>> = link_all(&maps).into_iter().map(|r| r.unwrap()).collect();
        let r = |pid, start| Some(VmaRef { pid, start });
        assert_eq!(
            got,
            [
                None,
                None,
                None,
                r(10, 0x1000),
                r(10, 0x1000),
                r(10, 0x9000)
            ]
        );
    }

    #[test]
    fn disjoint_pieces_of_one_object_are_each_stored_and_linked_to_by_what_they_cover() {
        // One mapping split in three by mprotect, then a child mapping the middle piece.
        let maps = [
            shm(10, 0x1000, 0x1000, 0, 7),
            shm(10, 0x2000, 0x1000, 0x1000, 7),
            shm(10, 0x3000, 0x1000, 0x2000, 7),
            shm(11, 0x2000, 0x1000, 0x1000, 7),
        ];
        let got: Vec<Option<VmaRef>> = link_all(&maps).into_iter().map(|r| r.unwrap()).collect();
        let mid = Some(VmaRef {
            pid: 10,
            start: 0x2000,
        });
        assert_eq!(got, [None, None, None, mid]);
    }

    #[test]
    fn a_later_mapping_beyond_its_first_holder_is_refused_naming_both() {
        // The first holder maps object bytes 0x1000-0x3000; the later one 0-0x2000.
        let maps = [
            shm(10, 0x1000, 0x2000, 0x1000, 7),
            shm(11, 0x5000, 0x2000, 0, 7),
        ];
        let got = link_all(&maps);
        assert!(got[0].as_ref().unwrap().is_none());
        assert_eq!(got.len(), 2);
        let e = got[1].as_ref().unwrap_err().to_string();
        assert!(
            e.starts_with("pid 11 mapping 5000-7000 (/dev/zero (deleted))"),
            "{e}"
        );
        assert!(e.contains("first holder, pid 10 mapping 1000-3000"), "{e}");
        assert!(e.contains("bytes 0x1000-0x3000"), "{e}");
    }

    fn vma(kind: VmaKind, start: u64, ino: u64, dev: u64) -> Vma {
        let shm = kind == VmaKind::DeletedShm;
        Vma {
            start,
            end: start + 0x1000,
            prot: 3,
            shared: true,
            pgoff: 0,
            kind,
            name: "/dev/shm/sem.x".into(),
            file: shm.then_some(FileId {
                dev,
                ino,
                size: 0x1000,
                mtime_ns: 0,
            }),
            vm_flags: Vec::new(),
            ino,
            shared_with: None,
        }
    }

    #[test]
    fn link_sets_shared_with_by_kind_device_and_inode() {
        let p = |pid, vmas| ProcessImage {
            pid,
            vmas,
            ..Default::default()
        };
        let mut procs = [
            p(
                1,
                vec![
                    vma(VmaKind::DeletedShm, 0x1000, 5, 30),
                    vma(VmaKind::SharedAnon, 0x2000, 5, 0),
                ],
            ),
            p(
                2,
                vec![
                    vma(VmaKind::DeletedShm, 0x1000, 5, 30),
                    // Same inode on another tmpfs: another file.
                    vma(VmaKind::DeletedShm, 0x3000, 5, 31),
                    vma(VmaKind::SharedAnon, 0x4000, 5, 0),
                    vma(VmaKind::Anon, 0x5000, 0, 0),
                ],
            ),
        ];
        link(&mut procs).unwrap();
        let got: Vec<Option<VmaRef>> = procs[1].vmas.iter().map(|v| v.shared_with).collect();
        let r = |start| Some(VmaRef { pid: 1, start });
        assert_eq!(got, [r(0x1000), None, r(0x2000), None]);
        assert!(procs[0].vmas.iter().all(|v| v.shared_with.is_none()));
    }
}
