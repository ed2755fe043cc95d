//! Refusals of mappings: the kinds of memory a restore cannot map again.

use super::unsupported;
use crate::dump::DumpError;
use crate::proc;

/// Refuses mappings haul cannot restore.
pub(crate) fn check_mapping(pid: i32, m: &proc::MapEntry) -> Result<(), DumpError> {
    let what = || {
        if m.path.is_empty() {
            format!("pid {pid} mapping {:x}-{:x}", m.start, m.end)
        } else {
            format!("pid {pid} mapping {:x}-{:x} ({})", m.start, m.end, m.path)
        }
    };
    let no = |kind: &str| {
        Err(unsupported(format!(
            "{}: {kind} is not supported yet",
            what()
        )))
    };
    if m.has_flag("ht") {
        return no("hugetlb memory");
    }
    let p = m.path.as_str();
    if is_sysv_shm(m) {
        // "/SYSV<key in hex> (deleted)"; the inode is the segment's shmid. The segment is
        // carried whole (`dump::share::sysv`), which refuses what it cannot carry.
        return Ok(());
    }
    if p.starts_with("/memfd:") {
        // Its contents are stored with the set's stored files (`fdkinds::stored`).
        return crate::dump::fdkinds::stored::check_mapping(pid, m);
    }
    if is_shared_anon(m) {
        return Ok(());
    }
    if p.ends_with(" (deleted)") {
        if !m.shared {
            return no("a private mapping of a deleted file");
        }
        // A deleted tmpfs file mapped shared (POSIX semaphores and shared memory after
        // unlink): its pages are stored and the file made again. On a disk it is refused.
        let link = format!("/proc/{pid}/map_files/{}", m.map_files_name());
        return match crate::sys::shm::on_tmpfs(std::path::Path::new(&link)) {
            Ok(true) => Ok(()),
            Ok(false) => no("a shared mapping of a deleted file outside tmpfs"),
            Err(e) => Err(DumpError::Sys(e)),
        };
    }
    if p.starts_with('[') {
        return match p {
            "[heap]" | "[stack]" | "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]" => Ok(()),
            _ if p.starts_with("[anon:") || p.starts_with("[stack:") => Ok(()),
            _ => no("this special mapping"),
        };
    }
    if m.has_flag("io") || m.has_flag("pf") {
        return no("a device (VM_IO/VM_PFNMAP) mapping");
    }
    if p.starts_with("/dev/") && m.inode != 0 {
        return no("a device mapping");
    }
    Ok(())
}

/// A shared mapping of a deleted file that [`check_mapping`] let through: a deleted tmpfs file
/// (`VmaKind::DeletedShm`). By name only; the filesystem is checked by `check_mapping`.
pub(crate) fn is_deleted_shm(m: &proc::MapEntry) -> bool {
    let p = m.path.as_str();
    m.shared
        && p.starts_with('/')
        && p.ends_with(" (deleted)")
        && !is_shared_anon(m)
        && !p.starts_with("/SYSV")
        && !p.starts_with("/memfd:")
}

/// An attached SysV shared memory segment: `/SYSV<key> (deleted)`, its inode the shmid.
pub(crate) fn is_sysv_shm(m: &proc::MapEntry) -> bool {
    m.path.starts_with("/SYSV") && m.shared
}

/// Shared anonymous memory shows as `/dev/zero (deleted)` (or `[anon_shmem:name]`).
pub(crate) fn is_shared_anon(m: &proc::MapEntry) -> bool {
    m.shared && (m.path == "/dev/zero (deleted)" || m.path.starts_with("[anon_shmem:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(line: &str) -> proc::MapEntry {
        proc::parse_maps_line(std::path::Path::new("maps"), line).unwrap()
    }

    fn refusal(m: &proc::MapEntry) -> String {
        match check_mapping(42, m) {
            Err(DumpError::Unsupported(msg)) => msg,
            other => panic!("{m:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn ordinary_mappings_pass() {
        for l in [
            "7f00-8000 rw-p 00000000 00:00 0 ",
            "55d0-55e0 rw-p 00000000 00:00 0 [heap]",
            "7ffd-7ffe rw-p 00000000 00:00 0 [stack]",
            "7ff0-7ff1 r-xp 00000000 00:00 0 [vdso]",
            "7f10-7f20 rw-p 00000000 00:00 0 [anon:jit cache]",
            "7f20-7f30 r-xp 00001000 fe:00 1046 /usr/lib/libc.so.6",
            "7f30-7f40 rw-s 00000000 00:01 77 /dev/zero (deleted)",
        ] {
            assert!(check_mapping(42, &map(l)).is_ok(), "{l} refused");
        }
    }

    #[test]
    fn memory_a_restore_cannot_map_again_is_refused_by_kind() {
        // An attached SysV segment is carried (dump::share::sysv refuses what it cannot).
        let m = map("7f00-7f10 rw-s 00000000 00:01 9 /SYSV00000000 (deleted)");
        assert!(check_mapping(42, &m).is_ok());
        assert!(is_sysv_shm(&m));
        let cases = [
            (
                "7f00-7f10 rw-p 00000000 fe:00 9 /tmp/x (deleted)",
                "a private mapping of a deleted file",
            ),
            (
                "7f00-7f10 rw-p 00000000 00:00 0 [uprobes]",
                "this special mapping",
            ),
            (
                "7f00-7f10 rw-s 00000000 00:05 12 /dev/fb0",
                "a device mapping",
            ),
        ];
        for (l, kind) in cases {
            assert!(
                refusal(&map(l)).ends_with(&format!("{kind} is not supported yet")),
                "{l}"
            );
        }
        let mut huge = map("7f00-7f10 rw-p 00000000 00:00 0 ");
        huge.vm_flags = vec!["rd".into(), "ht".into()];
        assert_eq!(
            refusal(&huge),
            "pid 42 mapping 7f00-7f10: hugetlb memory is not supported yet"
        );
        let mut io = map("7f00-7f10 rw-s 00000000 00:00 0 ");
        io.vm_flags = vec!["pf".into()];
        assert!(refusal(&io).contains("VM_IO/VM_PFNMAP"));
    }

    #[test]
    fn a_deleted_file_mapped_shared_is_told_by_name_from_memfd_sysv_and_shared_anon() {
        let sem = map("7f00-7f01 rw-s 00000000 00:1b 13 /dev/shm/sem.KbgX0A (deleted)");
        assert!(is_deleted_shm(&sem));
        for l in [
            "7f00-7f01 rw-p 00000000 00:1b 13 /dev/shm/sem.KbgX0A (deleted)",
            "7f00-7f01 rw-s 00000000 00:1b 13 /dev/shm/sem.KbgX0A",
            "7f00-7f01 rw-s 00000000 00:01 13 /dev/zero (deleted)",
            "7f00-7f01 rw-s 00000000 00:01 13 /memfd:x (deleted)",
            "7f00-7f01 rw-s 00000000 00:01 13 /SYSV0000002a (deleted)",
        ] {
            assert!(!is_deleted_shm(&map(l)), "{l}");
        }
    }

    #[test]
    fn shared_anonymous_memory_is_told_from_a_private_dev_zero() {
        assert!(is_shared_anon(&map(
            "1000-2000 rw-s 00000000 00:01 3 /dev/zero (deleted)"
        )));
        assert!(is_shared_anon(&map(
            "1000-2000 rw-s 00000000 00:01 3 [anon_shmem:x]"
        )));
        assert!(!is_shared_anon(&map(
            "1000-2000 rw-p 00000000 00:01 3 /dev/zero (deleted)"
        )));
    }
}
