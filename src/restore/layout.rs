//! The scratch area a rebuild maps into the parked process, shared by the steps.

use crate::image::PAGE_SIZE;

/// Size of the scratch area: one page of code, the rest for syscall arguments.
pub(super) const SCRATCH_LEN: u64 = 64 * 1024;
/// Where syscall arguments go inside the scratch area.
pub(super) const ARGS_OFF: u64 = PAGE_SIZE as u64;
/// How many bytes of syscall arguments fit the scratch area.
pub(super) const ARGS_LEN: u64 = SCRATCH_LEN - ARGS_OFF;
// A SysV message the dump accepts fits there, with its 8-byte type.
const _: () = assert!(crate::image::ipc::MAX_MESSAGE as u64 + 8 <= ARGS_LEN);
/// `syscall; int3`: the instruction injected syscalls run once the old address space is gone.
pub(super) const SYSCALL_CODE: [u8; 3] = [0x0f, 0x05, 0xcc];
