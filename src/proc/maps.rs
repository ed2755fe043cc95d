//! `/proc/PID/maps` and the `VmFlags` lines of `/proc/PID/smaps`.

use super::{parse_err, pid_dir, read_string, Result};
use std::path::Path;

/// One mapping of `/proc/PID/maps`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `s` (MAP_SHARED) rather than `p`.
    pub shared: bool,
    /// Offset into the file, in bytes.
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The path or pseudo-name (`[heap]`, `[stack]`, `[vdso]`, ...); empty for anonymous.
    pub path: String,
    /// Two-letter `VmFlags` of smaps (only filled by [`maps_with_flags`]).
    pub vm_flags: Vec<String>,
}

impl MapEntry {
    /// PROT_READ | PROT_WRITE | PROT_EXEC bits.
    pub fn prot(&self) -> u32 {
        let mut p = 0;
        if self.read {
            p |= libc::PROT_READ as u32;
        }
        if self.write {
            p |= libc::PROT_WRITE as u32;
        }
        if self.exec {
            p |= libc::PROT_EXEC as u32;
        }
        p
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    pub fn has_flag(&self, f: &str) -> bool {
        self.vm_flags.iter().any(|x| x == f)
    }

    /// The `start-end` name of this mapping under `/proc/PID/map_files/`.
    pub fn map_files_name(&self) -> String {
        format!("{:x}-{:x}", self.start, self.end)
    }
}

/// Parses one line of `/proc/PID/maps` (`path` is only for the error).
pub fn parse_maps_line(path: &Path, line: &str) -> Result<MapEntry> {
    let bad = || parse_err(path, "maps line", line);
    let mut rest = line;
    let mut field = || -> Option<&str> {
        let t = rest.trim_start();
        let end = t.find(char::is_whitespace).unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        (!f.is_empty()).then_some(f)
    };
    let range = field().ok_or_else(bad)?;
    let perms = field().ok_or_else(bad)?;
    let offset = field().ok_or_else(bad)?;
    let dev = field().ok_or_else(bad)?;
    let inode = field().ok_or_else(bad)?;
    let name = rest.trim_start().to_string();
    let (s, e) = range.split_once('-').ok_or_else(bad)?;
    let (maj, min) = dev.split_once(':').ok_or_else(bad)?;
    let p = perms.as_bytes();
    if p.len() < 4 {
        return Err(bad());
    }
    Ok(MapEntry {
        start: u64::from_str_radix(s, 16).map_err(|_| bad())?,
        end: u64::from_str_radix(e, 16).map_err(|_| bad())?,
        read: p[0] == b'r',
        write: p[1] == b'w',
        exec: p[2] == b'x',
        shared: p[3] == b's',
        offset: u64::from_str_radix(offset, 16).map_err(|_| bad())?,
        dev_major: u32::from_str_radix(maj, 16).map_err(|_| bad())?,
        dev_minor: u32::from_str_radix(min, 16).map_err(|_| bad())?,
        inode: inode.parse().map_err(|_| bad())?,
        path: name,
        vm_flags: Vec::new(),
    })
}

/// `/proc/PID/maps`.
pub fn maps(pid: i32) -> Result<Vec<MapEntry>> {
    let path = pid_dir(pid).join("maps");
    let s = read_string(&path)?;
    s.lines()
        .filter(|l| !l.is_empty())
        .map(|l| parse_maps_line(&path, l))
        .collect()
}

/// `/proc/PID/smaps`: the mappings with their `VmFlags`.
pub fn maps_with_flags(pid: i32) -> Result<Vec<MapEntry>> {
    let path = pid_dir(pid).join("smaps");
    let s = read_string(&path)?;
    parse_smaps(&path, &s)
}

/// Parses the text of an smaps file: each mapping with its `VmFlags` (`path` is only for the
/// error).
pub fn parse_smaps(path: &Path, s: &str) -> Result<Vec<MapEntry>> {
    let mut out: Vec<MapEntry> = Vec::new();
    for line in s.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.vm_flags = flags.split_whitespace().map(str::to_string).collect();
            }
            continue;
        }
        // A mapping header starts with "start-end"; field lines start with "Name:".
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            out.push(parse_maps_line(path, line)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_file_mapping_with_spaces_in_its_path() {
        let l = "7f00aa000000-7f00aa021000 r-xp 00002000 fd:01 123456     /opt/my dir/lib.so";
        let m = parse_maps_line(Path::new("maps"), l).unwrap();
        assert_eq!(m.start, 0x7f00aa000000);
        assert_eq!(m.end, 0x7f00aa021000);
        assert!(m.read && !m.write && m.exec && !m.shared);
        assert_eq!(m.offset, 0x2000);
        assert_eq!((m.dev_major, m.dev_minor, m.inode), (0xfd, 1, 123456));
        assert_eq!(m.path, "/opt/my dir/lib.so");
    }

    #[test]
    fn parses_an_anonymous_mapping() {
        let l = "7ffd1000-7ffd2000 rw-s 00000000 00:00 0 ";
        let m = parse_maps_line(Path::new("maps"), l).unwrap();
        assert!(m.shared && m.write);
        assert_eq!(m.path, "");
    }

    #[test]
    fn rejects_a_truncated_line() {
        assert!(parse_maps_line(Path::new("maps"), "7f00-7f10 r-xp").is_err());
    }

    #[test]
    fn smaps_gives_each_mapping_its_own_flags() {
        let s = "00400000-00401000 r-xp 00000000 fe:00 77 /bin/x\n\
                 Size:                  4 kB\n\
                 Rss:                   4 kB\n\
                 VmFlags: rd ex mr mw me\n\
                 7ffd1000-7ffd2000 rw-p 00000000 00:00 0          [stack]\n\
                 Size:                132 kB\n\
                 THPeligible:    0\n\
                 VmFlags: rd wr mr mw me gd ac\n";
        let m = parse_smaps(Path::new("smaps"), s).unwrap();
        assert_eq!(m.len(), 2);
        assert!(m[0].has_flag("ex") && !m[0].has_flag("gd"));
        assert_eq!(m[1].path, "[stack]");
        assert!(m[1].has_flag("gd") && m[1].has_flag("wr"));
    }

    #[test]
    fn prot_and_length_follow_the_permission_letters() {
        let m = parse_maps_line(Path::new("maps"), "1000-4000 r-xp 00000000 00:00 0 ").unwrap();
        assert_eq!(m.prot(), (libc::PROT_READ | libc::PROT_EXEC) as u32);
        assert_eq!(m.len(), 0x3000);
        let bad = parse_maps_line(Path::new("/proc/1/maps"), "zz-4000 r-xp 0 00:00 0")
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("/proc/1/maps") && bad.contains("zz-4000"),
            "{bad}"
        );
    }

    #[test]
    fn own_maps_have_stack_and_flags() {
        let pid = std::process::id() as i32;
        let m = maps_with_flags(pid).unwrap();
        let stack = m.iter().find(|e| e.path == "[stack]").unwrap();
        assert!(
            stack.has_flag("rd") && stack.has_flag("wr") && stack.has_flag("gd"),
            "{stack:?}"
        );
        assert!(maps(pid).unwrap().iter().any(|e| e.path == "[stack]"));
    }
}
