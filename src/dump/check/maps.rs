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
    if p.starts_with("/SYSV") {
        return no("SysV shared memory");
    }
    if p.starts_with("/memfd:") {
        return no("a memfd mapping");
    }
    if is_shared_anon(m) {
        return Ok(());
    }
    if p.ends_with(" (deleted)") {
        return no("a mapping of a deleted file");
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

/// Shared anonymous memory shows as `/dev/zero (deleted)` (or `[anon_shmem:name]`).
pub(crate) fn is_shared_anon(m: &proc::MapEntry) -> bool {
    m.shared && (m.path == "/dev/zero (deleted)" || m.path.starts_with("[anon_shmem:"))
}
