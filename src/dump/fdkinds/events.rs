//! Epoll and inotify instances: recognised (or refused by name) before the freeze, their
//! state captured under it.
//!
//! An epoll's fdinfo lists every registration (`tfd: N events: HEX data: HEX pos:P ino:HEX
//! sdev:HEX`). A registration is keyed by the file and the fd number it was made with, and
//! outlives the close of that fd while the file lives on elsewhere: such a target cannot be
//! registered again at its number, so it is refused (kcmp `KCMP_EPOLL_TFD` tells, or the
//! inode where there is no kcmp). An inotify's fdinfo lists every watch (`inotify wd:HEX
//! ino:HEX sdev:HEX mask:HEX ignored_mask:HEX fhandle-bytes:HEX fhandle-type:HEX
//! f_handle:HEX`); the watched inode's path is found by opening its file handle on a mount
//! of its filesystem.

use super::unsupported;
use crate::dump::DumpError;
use crate::image::events::{EpollImage, EpollTarget, InotifyImage, InotifyWatch};
use crate::image::{FdImage, FdKind};
use crate::proc;
use crate::sys;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// The most watches a restore adds and removes to give an inotify instance its watch
/// descriptors back (they are handed out increasingly: a gap below a wd is filled so).
pub(crate) const MAX_WD_FILL: i64 = 65536;

/// The record of epoll instance `fd`, or its refusal.
pub(crate) fn epoll(
    pid: i32,
    fd: i32,
    target: &str,
    info: &proc::FdInfo,
) -> Result<FdKind, DumpError> {
    let lines = parse_epoll(info).ok_or_else(|| {
        unsupported(format!(
            "pid {pid} fd {fd}: {target}: its fdinfo is not understood"
        ))
    })?;
    let mut targets = Vec::with_capacity(lines.len());
    for (i, t) in lines.iter().enumerate() {
        // The how-manyth registration made with this fd number (kcmp counts them so).
        let toff = lines[..i].iter().filter(|u| u.fd == t.fd).count() as u32;
        let same = match sys::kcmp::epoll_target_is(pid, t.fd, fd, t.fd, toff)? {
            Some(same) => same,
            // No kcmp: the inode at that number must be the target's.
            None => std::fs::metadata(format!("/proc/{pid}/fd/{}", t.fd))
                .is_ok_and(|m| m.ino() == t.ino && m.dev() == user_dev(t.sdev)),
        };
        if !same {
            let open = std::fs::symlink_metadata(format!("/proc/{pid}/fd/{}", t.fd)).is_ok();
            return Err(unsupported(format!(
                "pid {pid} fd {fd}: epoll target fd {} is closed but still registered (its \
                 file lives on elsewhere{}): this is not supported",
                t.fd,
                if open {
                    format!("; fd {} is another file now", t.fd)
                } else {
                    String::new()
                }
            )));
        }
        targets.push(EpollTarget {
            fd: t.fd,
            events: t.events,
            data: t.data,
        });
    }
    Ok(FdKind::Epoll(EpollImage { targets }))
}

/// One `tfd:` line of an epoll's fdinfo.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TfdLine {
    pub fd: i32,
    pub events: u32,
    pub data: u64,
    pub ino: u64,
    /// The kernel's `dev_t` of the target's filesystem (major << 20 | minor).
    pub sdev: u64,
}

/// The `tfd:` lines of an epoll's fdinfo (None: one is not understood).
pub(crate) fn parse_epoll(info: &proc::FdInfo) -> Option<Vec<TfdLine>> {
    info.other
        .iter()
        .filter(|(k, _)| k == "tfd")
        .map(|(_, v)| {
            let (fd, rest) = v.trim().split_once(char::is_whitespace)?;
            let f = fields(rest);
            let hex = |k: &str| u64::from_str_radix(field_of(&f, k)?, 16).ok();
            Some(TfdLine {
                fd: fd.parse().ok()?,
                events: u32::try_from(hex("events")?).ok()?,
                data: hex("data")?,
                ino: hex("ino")?,
                sdev: hex("sdev")?,
            })
        })
        .collect()
}

/// `key: value` and `key:value` pairs of a line, in order.
fn fields(s: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut it = s.split_whitespace();
    while let Some(t) = it.next() {
        match t.split_once(':') {
            Some((k, "")) => {
                if let Some(v) = it.next() {
                    out.push((k, v));
                }
            }
            Some((k, v)) => out.push((k, v)),
            None => {}
        }
    }
    out
}

fn field_of<'a>(f: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// A kernel `dev_t` (as fdinfo prints `s_dev`: major << 20 | minor) as `stat` gives it.
pub(crate) fn user_dev(sdev: u64) -> u64 {
    libc::makedev((sdev >> 20) as u32, (sdev & 0xfffff) as u32)
}

/// One `inotify` line of an inotify's fdinfo.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct WatchLine {
    pub wd: i32,
    pub ino: u64,
    pub sdev: u64,
    pub mask: u32,
    /// (type, bytes) of the inode's file handle; None where the filesystem gives none.
    pub handle: Option<(i32, Vec<u8>)>,
}

/// The watch lines of an inotify's fdinfo (None: one is not understood).
pub(crate) fn parse_inotify(info: &proc::FdInfo) -> Option<Vec<WatchLine>> {
    info.other
        .iter()
        .filter(|(k, _)| k == "inotify wd")
        .map(|(_, v)| {
            let (wd, rest) = v.trim().split_once(char::is_whitespace)?;
            let f = fields(rest);
            let hex = |k: &str| u64::from_str_radix(field_of(&f, k)?, 16).ok();
            let handle = (|| {
                let n = hex("fhandle-bytes")? as usize;
                let ty = hex("fhandle-type")? as i32;
                let h = field_of(&f, "f_handle")?;
                let bytes: Option<Vec<u8>> = (0..h.len() / 2)
                    .map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
                    .collect();
                bytes.filter(|b| b.len() == n).map(|b| (ty, b))
            })();
            Some(WatchLine {
                wd: i32::from_str_radix(wd, 16).ok()?,
                ino: hex("ino")?,
                sdev: hex("sdev")?,
                mask: u32::try_from(hex("mask")?).ok()?,
                handle,
            })
        })
        .collect()
}

/// The record of inotify instance `fd`, or its refusal.
pub(crate) fn inotify(
    pid: i32,
    fd: i32,
    target: &str,
    info: &proc::FdInfo,
) -> Result<FdKind, DumpError> {
    let lines = parse_inotify(info).ok_or_else(|| {
        unsupported(format!(
            "pid {pid} fd {fd}: {target}: its fdinfo is not understood"
        ))
    })?;
    let mut watches = Vec::with_capacity(lines.len());
    for w in &lines {
        let dev = user_dev(w.sdev);
        let path = watched_path(w, dev).ok_or_else(|| {
            unsupported(format!(
                "pid {pid} fd {fd}: inotify watch {} (inode {} on device {}:{}): no path \
                 leads to the inode it watches: this is not supported",
                w.wd,
                w.ino,
                libc::major(dev),
                libc::minor(dev)
            ))
        })?;
        watches.push(InotifyWatch {
            wd: w.wd,
            path,
            mask: w.mask,
            dev,
            ino: w.ino,
        });
    }
    watches.sort_by_key(|w| w.wd);
    let highest = watches.last().map_or(0, |w| i64::from(w.wd));
    let fill = highest - watches.len() as i64;
    if fill > MAX_WD_FILL {
        return Err(unsupported(format!(
            "pid {pid} fd {fd}: inotify watch descriptors up to {highest} would take {fill} \
             watches added and removed to be made again (more than {MAX_WD_FILL}): this is not \
             supported"
        )));
    }
    Ok(FdKind::Inotify(InotifyImage {
        watches,
        queued_bytes: 0,
    }))
}

/// The path of the inode watch `w` watches (user `dev`): its file handle opened on a mount
/// of its filesystem (haul's mounts), the path kept only if it names that very inode.
fn watched_path(w: &WatchLine, dev: u64) -> Option<String> {
    let (ty, handle) = w.handle.as_ref()?;
    for mount in mounts_of(dev) {
        let Ok(m) = std::fs::File::open(&mount) else {
            continue;
        };
        let Ok(got) = sys::events::open_by_handle(m.as_fd(), *ty, handle) else {
            continue;
        };
        let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{}", got.as_raw_fd())) else {
            continue;
        };
        let Some(path) = path.to_str().map(str::to_string) else {
            continue;
        };
        // The watch is on the inode itself: a symlink is not followed (IN_DONT_FOLLOW).
        if std::fs::symlink_metadata(&path).is_ok_and(|md| md.dev() == dev && md.ino() == w.ino) {
            return Some(path);
        }
    }
    None
}

/// The mount points (in haul's mount namespace) of the filesystem on device `dev`, those
/// mounting its root first.
fn mounts_of(dev: u64) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let mut out: Vec<(bool, String)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            if f.get(2) != Some(&want.as_str()) {
                return None;
            }
            Some((f.get(3) != Some(&"/"), unescape(f.get(4)?)))
        })
        .collect();
    out.sort_by_key(|(not_root, _)| *not_root);
    out.into_iter().map(|(_, p)| p).collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What only the instance itself tells, read under the freeze through `pidfd`: the bytes of
/// events an inotify instance holds unread (dropped: a restore warns of them).
pub(crate) fn capture(pidfd: &OwnedFd, f: &mut FdImage) -> Result<(), DumpError> {
    if let FdKind::Inotify(i) = &mut f.kind {
        let copy = sys::process::pidfd_getfd(pidfd, f.fd)?;
        i.queued_bytes = sys::events::bytes_ready(copy.as_fd())?;
        if i.queued_bytes > 0 {
            tracing::warn!(
                fd = f.fd,
                bytes = i.queued_bytes,
                "an inotify instance holds {} bytes of events unread: they are not carried, \
                 a restore drops them",
                i.queued_bytes
            );
        }
    }
    Ok(())
}

/// What the dump of `p` dropped from its inotify instances (the events queued unread), one
/// warning each.
pub(crate) fn warnings(p: &crate::image::ProcessImage) -> Vec<String> {
    p.fds
        .iter()
        .filter_map(|f| match &f.kind {
            FdKind::Inotify(i) if i.queued_bytes > 0 => Some(format!(
                "pid {} fd {}: inotify: {} bytes of events queued unread were dropped",
                p.pid, f.fd, i.queued_bytes
            )),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(text: &str) -> proc::FdInfo {
        proc::parse_fdinfo(std::path::Path::new("fdinfo"), text).unwrap()
    }

    #[test]
    fn epoll_fdinfo_lines_give_fd_events_data_and_inode() {
        // As kernel 6.18 prints them.
        let fi = info(
            "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1044\n\
             tfd:        8 events: 40000019 data:                8  pos:0 ino:414 sdev:10\n\
             tfd:        6 events: 8000001d data:     deadbeef1111  pos:0 ino:e9d48 sdev:9\n\
             tfd:        9 events: 40000000 data:                9  pos:0 ino:414 sdev:10\n",
        );
        let t = parse_epoll(&fi).unwrap();
        assert_eq!(
            t,
            [
                TfdLine {
                    fd: 8,
                    events: 0x4000_0019,
                    data: 8,
                    ino: 0x414,
                    sdev: 0x10
                },
                TfdLine {
                    fd: 6,
                    events: 0x8000_001d,
                    data: 0xdead_beef_1111,
                    ino: 0xe9d48,
                    sdev: 9
                },
                TfdLine {
                    fd: 9,
                    events: 0x4000_0000,
                    data: 9,
                    ino: 0x414,
                    sdev: 0x10
                },
            ]
        );
        let fired = |events| EpollTarget {
            fd: 9,
            events,
            data: 0,
        };
        assert!(fired(0x4000_0000).fired());
        assert!(fired(0xc000_0000).fired(), "ONESHOT|ET fired");
        assert!(!fired(0x4000_0019).fired(), "armed");
        assert!(!fired(0).fired(), "not one-shot");
        let bad = info("pos:\t0\nflags:\t02\nmnt_id:\t17\ntfd:        x events: 1\n");
        assert_eq!(parse_epoll(&bad), None);
        assert_eq!(parse_epoll(&info("pos:\t0\n")), Some(vec![]));
    }

    #[test]
    fn inotify_fdinfo_lines_give_wd_mask_and_handle() {
        let fi = info(
            "pos:\t0\nflags:\t00\nmnt_id:\t17\nino:\t1044\n\
             inotify wd:1f ino:5c8a6 sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 \
             fhandle-type:1 f_handle:a6c8050000000000\n\
             inotify wd:2 ino:13 sdev:fe00001 mask:80000002 ignored_mask:0\n",
        );
        let w = parse_inotify(&fi).unwrap();
        assert_eq!(
            w,
            [
                WatchLine {
                    wd: 0x1f,
                    ino: 0x5c8a6,
                    sdev: 0xfe0_0000,
                    mask: 0x300,
                    handle: Some((1, vec![0xa6, 0xc8, 5, 0, 0, 0, 0, 0]))
                },
                WatchLine {
                    wd: 2,
                    ino: 0x13,
                    sdev: 0xfe0_0001,
                    mask: 0x8000_0002,
                    handle: None
                },
            ]
        );
        assert_eq!(user_dev(0xfe0_0001), libc::makedev(254, 1));
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
