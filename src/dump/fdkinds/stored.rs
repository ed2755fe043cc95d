//! Files whose contents the image stores: memfds (with their seals) and deleted files still
//! open (see `image::stored`). `kind` recognises an fd on one (or refuses it by name),
//! `check_mapping` a mapping of a memfd; under the freeze, once every process is captured,
//! `store_contents` makes the set's table of stored files and copies each file's data (holes
//! left out) into its own page space.

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use super::unsupported;
use crate::dump::{DumpError, PageSink};
use crate::image::stored::{
    StoredFile, StoredKind, StoredObject, FIRST_SPACE, MAX_BYTES, MAX_FILES,
};
use crate::image::{page_key, FdImage, FdKind, ProcessImage, VmaKind, PAGE_SIZE};
use crate::proc;
use crate::sys;
use crate::sys::mem::PageBuf;
use std::os::fd::OwnedFd;

/// Pages read and handed to the sink at a time.
const BATCH_PAGES: u64 = 256;

/// The record of memfd or deleted file `fd` (`md`: its metadata, None for a memfd), or its
/// refusal.
pub(crate) fn kind(
    pid: i32,
    fd: i32,
    target: &str,
    info: &proc::FdInfo,
    md: Option<&std::fs::Metadata>,
) -> Result<FdKind, DumpError> {
    let link = format!("/proc/{pid}/fd/{fd}");
    let what = if md.is_some() {
        "deleted file"
    } else {
        "memfd"
    };
    let no = |why: String| {
        Err(unsupported(format!(
            "pid {pid} fd {fd}: {target} ({what}) {why}"
        )))
    };
    let md = match md {
        Some(m) => m.clone(),
        None => std::fs::metadata(&link).map_err(|e| DumpError::Io {
            context: format!("pid {pid} fd {fd}: stat {target}"),
            source: e,
        })?,
    };
    if what == "memfd" {
        if !sys::shm::on_tmpfs(std::path::Path::new(&link))? {
            return no("is on hugetlbfs (MFD_HUGETLB): this is not supported yet".into());
        }
    } else {
        if !md.file_type().is_file() {
            return no("is not a regular file: only deleted regular files are stored".into());
        }
        if md.nlink() > 0 {
            return no(format!(
                "still has {} other link(s): a restore would make a copy of it, no longer \
                 the file those names reach (not supported yet)",
                md.nlink()
            ));
        }
    }
    if let Some(why) = too_big(&md) {
        return no(why);
    }
    Ok(FdKind::Stored(StoredFile {
        dev: md.dev(),
        ino: md.ino(),
        pos: info.pos,
    }))
}

/// Why a file is too large to store (None: it is not).
fn too_big(md: &std::fs::Metadata) -> Option<String> {
    too_much(md.blocks() * 512)
}

/// Why `data` bytes of data are too many to store (None: they are not).
fn too_much(data: u64) -> Option<String> {
    (data > MAX_BYTES).then(|| {
        format!(
            "holds {} MiB of data: haul stores at most {} MiB of a file",
            data >> 20,
            MAX_BYTES >> 20
        )
    })
}

/// Refuses a memfd mapping haul cannot store (`m.path` starts with `/memfd:`): one on
/// hugetlbfs, or too large. Reads `/proc` only.
pub(crate) fn check_mapping(pid: i32, m: &proc::MapEntry) -> Result<(), DumpError> {
    let link = format!("/proc/{pid}/map_files/{}", m.map_files_name());
    let no = |why: String| {
        Err(unsupported(format!(
            "pid {pid} mapping {:x}-{:x} ({}): a memfd mapping {why}",
            m.start, m.end, m.path
        )))
    };
    let md = std::fs::metadata(&link).map_err(|e| DumpError::Io {
        context: format!("pid {pid}: stat mapped memfd {}", m.path),
        source: e,
    })?;
    if !sys::shm::on_tmpfs(std::path::Path::new(&link))? {
        return no("on hugetlbfs (MFD_HUGETLB) is not supported yet".into());
    }
    if let Some(why) = too_big(&md) {
        return no(why);
    }
    Ok(())
}

/// Refuses each stored file of the tree (memfd, deleted file; by device and inode) that a
/// process outside the tree holds too, by an fd or a mapping: a restore would give the tree a
/// copy of its own, and their writes would no longer meet. One refusal per file. Scans every
/// process's fds and maps, only when the tree holds such a file; processes that vanish
/// meanwhile or cannot be read are passed over.
pub(crate) fn check_outside(
    members: &[crate::dump::share::Member<'_>],
    found: &mut crate::dump::check::Refusals,
) {
    use std::collections::HashMap;
    // (dev, ino) -> how the first member holding it names it.
    let mut wanted: HashMap<(u64, u64), String> = HashMap::new();
    for m in members {
        for f in &m.snapshot.fds {
            if let FdKind::Stored(s) = &f.kind {
                wanted
                    .entry((s.dev, s.ino))
                    .or_insert_with(|| format!("pid {} fd {}", m.pid, f.fd));
            }
        }
        for e in m
            .snapshot
            .maps
            .iter()
            .filter(|e| e.path.starts_with("/memfd:"))
        {
            wanted.entry(map_key(e)).or_insert_with(|| {
                format!(
                    "pid {} mapping {:x}-{:x} ({})",
                    m.pid, e.start, e.end, e.path
                )
            });
        }
    }
    if wanted.is_empty() {
        return;
    }
    // A deleted tmpfs file mapped shared is made again as a mapping of its own
    // (`VmaKind::DeletedShm`): an fd on it would come back as another file.
    for m in members {
        for e in m
            .snapshot
            .maps
            .iter()
            .filter(|e| crate::dump::check::is_deleted_shm(e))
        {
            if let Some(fd) = wanted.remove(&map_key(e)) {
                found.add(unsupported(format!(
                    "{fd}: its deleted file is mapped shared too (pid {} mapping {:x}-{:x}):                      an fd and a shared mapping of one deleted file are not supported yet",
                    m.pid, e.start, e.end
                )));
            }
        }
    }
    let ours: HashSet<i32> = members.iter().map(|m| m.pid).collect();
    for pid in proc::pids().into_iter().filter(|p| !ours.contains(p)) {
        let mut theirs: Vec<((u64, u64), String)> = Vec::new();
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for e in rd.flatten() {
                let Ok(link) = std::fs::read_link(e.path()) else {
                    continue;
                };
                let link = link.to_string_lossy();
                if !(link.starts_with("/memfd:") || link.ends_with(" (deleted)")) {
                    continue;
                }
                if let Ok(md) = std::fs::metadata(e.path()) {
                    let fd = e.file_name().to_string_lossy().into_owned();
                    theirs.push(((md.dev(), md.ino()), format!("fd {fd}")));
                }
            }
        }
        if let Ok(maps) = proc::maps(pid) {
            for e in maps.iter().filter(|e| e.path.starts_with("/memfd:")) {
                theirs.push((map_key(e), format!("mapping {:x}-{:x}", e.start, e.end)));
            }
        }
        for (key, how) in theirs {
            if let Some(ours) = wanted.remove(&key) {
                found.add(unsupported(format!(
                    "{ours}: its memfd or deleted file is held by pid {pid} ({how}) too, \
                     outside the tree: a restore would give the tree a copy of its own (not \
                     supported yet)"
                )));
            }
        }
        if wanted.is_empty() {
            break;
        }
    }
}

/// The (device, inode) of the file a mapping maps, as `stat` gives them.
fn map_key(e: &proc::MapEntry) -> (u64, u64) {
    (libc::makedev(e.dev_major, e.dev_minor), e.inode)
}

/// The contents (and seals) are read for the whole set at once by [`store_contents`].
pub(crate) fn capture(_pidfd: &OwnedFd, _f: &mut FdImage) -> Result<(), DumpError> {
    Ok(())
}

/// One place a stored file can be read from: (dev, ino), the path haul opens it by, and what
/// it is.
type Source = ((u64, u64), String, StoredKind);

/// Every place process `p` holds a stored file at, mappings first.
fn sources(p: &ProcessImage) -> Result<Vec<Source>, DumpError> {
    let mut out = Vec::new();
    // The restore maps before it opens fds: the mappings come first.
    for v in p.vmas.iter().filter(|v| v.kind == VmaKind::Memfd) {
        let dev = v.file.as_ref().map_or(0, |f| f.dev);
        let name = memfd_name(&v.name);
        out.push((
            (dev, v.ino),
            format!("/proc/{}/map_files/{:x}-{:x}", p.pid, v.start, v.end),
            StoredKind::Memfd { name },
        ));
    }
    for f in &p.fds {
        let FdKind::Stored(s) = &f.kind else { continue };
        if f.same_as.is_some() || f.inherited.is_some() {
            continue;
        }
        let target = proc::fd_target(p.pid, f.fd)?;
        let kind = if target.starts_with("/memfd:") {
            StoredKind::Memfd {
                name: memfd_name(&target),
            }
        } else {
            StoredKind::Deleted {
                path: target.trim_end_matches(" (deleted)").to_string(),
            }
        };
        out.push(((s.dev, s.ino), format!("/proc/{}/fd/{}", p.pid, f.fd), kind));
    }
    Ok(out)
}

/// The name a memfd was created with, from its link or mapping name (`/memfd:NAME
/// (deleted)`).
pub(crate) fn memfd_name(shown: &str) -> String {
    let s = shown.strip_prefix("/memfd:").unwrap_or(shown);
    s.strip_suffix(" (deleted)").unwrap_or(s).to_string()
}

/// Under the freeze, after the processes' memory: the set's stored files (each once, in the
/// order a restore first needs them) with their contents handed to `sink`, each file's data
/// in its own page space (file offset = address in it), holes left out. The files are read
/// through an open file description of haul's own (`/proc/PID/fd/N` or `map_files/` opened
/// again), so the target's offsets are not moved.
pub(crate) fn store_contents(
    procs: &[ProcessImage],
    sink: &mut dyn PageSink,
) -> Result<Vec<StoredObject>, DumpError> {
    let mut out: Vec<StoredObject> = Vec::new();
    let mut seen = HashSet::new();
    for p in procs {
        for (key, path, kind) in sources(p)? {
            if !seen.insert(key) {
                continue;
            }
            if out.len() == MAX_FILES {
                return Err(unsupported(format!(
                    "the processes hold more than {MAX_FILES} memfds and deleted files: not \
                     supported"
                )));
            }
            let space = FIRST_SPACE + out.len() as u16;
            let fd = sys::stored::open_read(&path)?;
            let md = std::fs::File::from(fd.try_clone().map_err(|e| DumpError::Io {
                context: format!("dup of {path}"),
                source: e,
            })?)
            .metadata()
            .map_err(|e| DumpError::Io {
                context: format!("fstat {path}"),
                source: e,
            })?;
            let obj = StoredObject {
                kind,
                dev: key.0,
                ino: key.1,
                size: md.size(),
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                seals: sys::stored::seals(fd.as_fd())?,
                space,
            };
            if let Some(why) = too_big(&md) {
                return Err(unsupported(format!(
                    "pid {}: {} {why}",
                    p.pid,
                    obj.describe()
                )));
            }
            copy_file(fd, &obj, sink).map_err(|e| match e {
                DumpError::Io { context, source } => DumpError::Io {
                    context: format!("pid {}: {}: {context}", p.pid, obj.describe()),
                    source,
                },
                e => e,
            })?;
            out.push(obj);
        }
    }
    Ok(out)
}

/// Hands the data pages of `obj` (read from `fd`) to `sink` under its page space's keys.
fn copy_file(fd: OwnedFd, obj: &StoredObject, sink: &mut dyn PageSink) -> Result<(), DumpError> {
    let page = PAGE_SIZE as u64;
    let ranges = sys::stored::data_ranges(fd.as_fd(), 0, obj.size)?;
    let file = std::fs::File::from(fd);
    let mut pages: Vec<u64> = Vec::new();
    let mut last = None;
    for (a, b) in ranges {
        let mut at = a / page * page;
        if last == Some(at) {
            at += page; // the page is listed already (ranges that share a page)
        }
        while at < b.min(obj.size) {
            pages.push(at);
            last = Some(at);
            at += page;
        }
    }
    for batch in pages.chunks(BATCH_PAGES as usize) {
        let mut data = PageBuf::zeroed(batch.len() * PAGE_SIZE);
        for (i, &off) in batch.iter().enumerate() {
            let buf = &mut data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
            let mut got = 0;
            // Short at the end of the file: the rest of the page reads as zeroes.
            while got < PAGE_SIZE {
                let n = file
                    .read_at(&mut buf[got..], off + got as u64)
                    .map_err(|e| DumpError::Io {
                        context: format!("read at {}", off + got as u64),
                        source: e,
                    })?;
                if n == 0 {
                    break;
                }
                got += n;
            }
        }
        let keys: Vec<u64> = batch.iter().map(|&o| page_key(obj.space, o)).collect();
        sink.add_pages(&keys, data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_more_data_than_haul_stores_is_refused_naming_the_limit() {
        assert_eq!(too_much(MAX_BYTES), None);
        assert_eq!(
            too_much(MAX_BYTES + 4096).as_deref(),
            Some("holds 1024 MiB of data: haul stores at most 1024 MiB of a file")
        );
    }

    #[test]
    fn memfd_names_are_read_from_links_and_mappings() {
        assert_eq!(memfd_name("/memfd:buf (deleted)"), "buf");
        assert_eq!(memfd_name("/memfd:a b"), "a b");
        assert_eq!(memfd_name("/memfd: (deleted)"), "");
    }
}
