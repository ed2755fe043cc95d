//! The mm-map step: `PR_SET_MM_MAP` gives the rebuilt process its code, data, brk, stack,
//! argument and environment addresses, its auxv and its `/proc/PID/exe`.

use super::error::StepResult;
use crate::image::ProcessImage;
use crate::sys::process::PrctlMmMap;
use crate::sys::remote::{self, Inject};

/// `PR_SET_MM_MAP` with the image's addresses, auxv and exe (opened for it, closed after).
/// `adopted`: the address space is the dumped process's own (`restore::adopt`), exe included,
/// which the kernel would not replace while the file is mapped (EBUSY): it is left as it is.
pub(super) fn set_mm(rs: &mut dyn Inject, p: &ProcessImage, adopted: bool) -> StepResult {
    let exe_fd = if adopted {
        u64::MAX
    } else {
        remote::open(rs, &p.exe, libc::O_RDONLY | libc::O_CLOEXEC)?
    };
    let m = &p.mm;
    let map = PrctlMmMap {
        start_code: m.start_code,
        end_code: m.end_code,
        start_data: m.start_data,
        end_data: m.end_data,
        start_brk: m.start_brk,
        brk: m.brk,
        start_stack: m.start_stack,
        arg_start: m.arg_start,
        arg_end: m.arg_end,
        env_start: m.env_start,
        env_end: m.env_end,
        auxv: 0,
        auxv_size: 0,
        exe_fd: exe_fd as u32,
    };
    let r = remote::prctl_mm_map(rs, &map, &p.auxv);
    if !adopted {
        let _ = remote::close(rs, exe_fd);
    }
    Ok(r?)
}
