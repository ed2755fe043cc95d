//! Per-process and per-thread attributes set by `prctl(2)` and `/proc` files that a restore
//! gives back (issue #11: carry it or refuse it). Every field is `None` (or empty) in images
//! made before it was kept: a restore then leaves that attribute as the rebuilt process got it.
//!
//! Membarrier registrations (`MEMBARRIER_CMD_REGISTER_*`) are read with
//! `MEMBARRIER_CMD_GET_REGISTRATIONS`, which kernels before 6.3 lack: there they cannot be
//! read back, and a restored process that registered must register again (its expedited
//! commands return `EPERM` until it does). Not carried: the default timer slack of a thread
//! (what `PR_SET_TIMERSLACK 0` goes back to) is its parent's at creation: haul's after a
//! restore. The audit session id changes whenever the loginuid is set.

use serde::{Deserialize, Serialize};

/// `PR_SPEC_L1D_FLUSH` of linux/prctl.h (not in libc).
const PR_SPEC_L1D_FLUSH: i32 = 2;

/// The speculation controls kept, in [`ThreadAttrs::spec_ctrl`] order.
pub const SPEC_CTRLS: [i32; 3] = [
    libc::PR_SPEC_STORE_BYPASS,
    libc::PR_SPEC_INDIRECT_BRANCH,
    PR_SPEC_L1D_FLUSH,
];

/// Process-wide attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcAttrs {
    /// `PR_GET_DUMPABLE`: 0 or 1 (also what owns its `/proc/PID` files: root when 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dumpable: Option<u32>,
    /// `PR_GET_SECUREBITS` (`SECBIT_*`, `SECBIT_KEEP_CAPS` included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub securebits: Option<u32>,
    /// `PR_GET_THP_DISABLE`: 0, 1, or 1 | `PR_THP_DISABLE_EXCEPT_ADVISED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thp_disable: Option<u32>,
    /// `PR_GET_CHILD_SUBREAPER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_subreaper: Option<bool>,
    /// `/proc/PID/oom_score_adj`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
    /// Its membarrier registrations: the mask `MEMBARRIER_CMD_GET_REGISTRATIONS` gives (None:
    /// a kernel without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membarrier: Option<u32>,
    /// `/proc/PID/coredump_filter`: which mappings a core dump holds (core(5)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coredump_filter: Option<u32>,
    /// `/proc/PID/loginuid` (`u32::MAX`: unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loginuid: Option<u32>,
}

/// Per-thread attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadAttrs {
    /// `PR_GET_TIMERSLACK` (ns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer_slack_ns: Option<u64>,
    /// `PR_GET_PDEATHSIG` (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pdeathsig: Option<i32>,
    /// `PR_GET_SPECULATION_CTRL` of `PR_SPEC_STORE_BYPASS`, `PR_SPEC_INDIRECT_BRANCH` and
    /// `PR_SPEC_L1D_FLUSH`, in that order (0 where the kernel has no such control).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spec_ctrl: Vec<u32>,
}
