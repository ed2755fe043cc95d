//! `haul doctor`: what this kernel and these privileges let haul do. Every check tries the
//! feature for real, on a throwaway child (forked for the purpose, killed and reaped after), a
//! throwaway buffer of haul's own, a throwaway socket pair or a throwaway nftables table; none
//! is inferred from a kernel version. Each check says what haul does when the feature is
//! missing (which dirty tracker pre-copy uses, which features are refused).
//!
//! *Needed* checks are what every checkpoint and restore uses (ptrace, `process_vm_readv`,
//! `pidfd_getfd`, `PR_SET_MM_MAP`): `haul doctor` exits 1 when one of them is missing. The others
//! are *optional*: without them haul still dumps and restores, and refuses (or replaces) only
//! what needs them.

mod probes;

use serde::Serialize;

/// Version of the JSON `haul doctor --json` prints; bumped when a field changes meaning.
pub const JSON_VERSION: u32 = 1;

/// One check: a feature, whether it works here, and what haul does about it.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Stable name (`ptrace`, `userfaultfd`, `pagemap_scan`, `cap_sys_admin`, ...).
    pub name: &'static str,
    pub ok: bool,
    /// True when haul cannot checkpoint or restore at all without it.
    pub needed: bool,
    /// What the probe did and saw (or the error that stopped it).
    pub detail: String,
    /// What haul uses it for when it works; what haul does instead, or refuses, when not.
    pub consequence: String,
}

/// The whole diagnosis.
#[derive(Clone, Debug, Serialize)]
pub struct Diagnosis {
    /// [`JSON_VERSION`].
    pub version: u32,
    pub haul_version: &'static str,
    /// The running kernel's release (for the reader: no check looks at it).
    pub kernel: String,
    /// True when every needed check passed.
    pub ok: bool,
    /// The dirty-page tracker `dump.precopy.tracker = "auto"` picks here.
    pub tracker: &'static str,
    pub checks: Vec<Check>,
}

impl Diagnosis {
    /// The needed checks that failed.
    pub fn missing_needed(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| c.needed && !c.ok).collect()
    }

    /// The check called `name`.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// Why a probe found a feature missing (or could not tell): the step and what failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{step}: {source}")]
    Sys {
        step: &'static str,
        #[source]
        source: crate::sys::SysError,
    },
    #[error("{step}: {source}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Track(#[from] crate::track::TrackError),
    #[error(transparent)]
    Proc(#[from] crate::proc::ProcError),
    #[error(transparent)]
    NetLock(#[from] crate::netlock::NetLockError),
    /// The call succeeded but did not do what it should have.
    #[error("{0}")]
    Wrong(String),
    /// The probe needs another feature that is missing.
    #[error("not tried: {0}")]
    Needs(&'static str),
}

/// Builds a [`ProbeError::Sys`] for `step`.
pub(crate) fn at(step: &'static str) -> impl FnOnce(crate::sys::SysError) -> ProbeError {
    move |source| ProbeError::Sys { step, source }
}

/// What each check means for haul: (name, needed, what it is used for, what happens without).
struct Meaning {
    needed: bool,
    uses: &'static str,
    without: &'static str,
}

fn meaning(name: &str) -> Meaning {
    let m = |needed, uses, without| Meaning {
        needed,
        uses,
        without,
    };
    match name {
        "ptrace" => m(
            true,
            "every dump freezes the process and reads its registers with it; every restore rebuilds through it",
            "haul can neither dump nor restore (allow ptrace: kernel.yama.ptrace_scope, CAP_SYS_PTRACE, seccomp of the container)",
        ),
        "process_vm_readv" => m(
            true,
            "dumps copy the process's memory with it",
            "haul cannot copy memory: dumps fail",
        ),
        "pidfd_getfd" => m(
            true,
            "dumps take the process's sockets, terminals, event fds and userfaultfds with it",
            "dumps of processes with sockets, pipes' peers, terminals fail, and uffd-wp tracking is refused",
        ),
        "prctl_mm_map" => m(
            true,
            "restores give the rebuilt process its code, data, stack, auxv and /proc/PID/exe with it",
            "restores fail",
        ),
        "clone3_set_tid" => m(
            false,
            "restores keep the processes' PIDs (clone3 set_tid)",
            "restores that keep PIDs fail; restore under new PIDs where the job allows it",
        ),
        "ns_last_pid" => m(
            false,
            "not used: haul sets PIDs with clone3 set_tid (listed for comparison with other tools)",
            "nothing: haul does not use it",
        ),
        "rseq" => m(
            false,
            "dumps record each thread's rseq registration and restores register it again",
            "threads' rseq registrations are not recorded: a restored thread starts without one",
        ),
        "userfaultfd" => m(
            false,
            "lazy restores (restore --lazy) serve missing pages with it; the uffd-wp tracker is built on it",
            "lazy restores are refused; pre-copy tracks with the hash tracker",
        ),
        "dev_userfaultfd" => m(
            false,
            "not used: haul creates userfaultfds with the syscall (listed because access rules differ)",
            "nothing: haul uses the userfaultfd syscall",
        ),
        "uffd_wp_async" => m(
            false,
            "pre-copy's uffd-wp tracker: written pages found without stopping the process",
            "pre-copy tracks with the hash tracker (reads every page each round); tracker = \"uffd-wp\" is refused",
        ),
        "pagemap_scan" => m(
            false,
            "dumps find resident pages with it and the uffd-wp tracker reads and re-protects written pages in one walk",
            "pre-copy tracks with the hash tracker; tracker = \"uffd-wp\" is refused",
        ),
        "soft_dirty" => m(
            false,
            "nothing yet: haul has no soft-dirty tracker (uffd-wp is preferred)",
            "tracker = \"soft-dirty\" is refused with this reason; auto uses uffd-wp or hash",
        ),
        "tcp_repair" => m(
            false,
            "dumps and restores of live TCP connections (TCP_REPAIR)",
            "dumps of processes with established TCP connections are refused",
        ),
        "nftables" => m(
            false,
            "the network lock of TCP connections to peers outside the checkpoint ([network] lock = \"nftables\")",
            "such dumps fail unless the job sets [network] lock = \"none\"",
        ),
        "cap_checkpoint_restore" => m(
            false,
            "clone3 set_tid and /proc/PID/exe of restored processes (or CAP_SYS_ADMIN)",
            "without it (and without CAP_SYS_ADMIN) restores cannot keep PIDs nor set /proc/PID/exe",
        ),
        "cap_sys_admin" => m(
            false,
            "what CAP_CHECKPOINT_RESTORE allows, on kernels or namespaces that want this one",
            "restores rely on CAP_CHECKPOINT_RESTORE",
        ),
        "cap_sys_ptrace" => m(
            false,
            "dumps of processes haul did not start and that run as another user",
            "only processes of haul's own user that ptrace_scope allows can be dumped",
        ),
        "cap_net_admin" => m(
            false,
            "TCP_REPAIR and the nftables network lock",
            "TCP connections cannot be dumped or locked",
        ),
        "cap_sys_resource" => m(
            false,
            "restoring resource limits above haul's own hard limits",
            "a restore of a process whose hard limits exceed haul's fails at the rlimit step",
        ),
        "cap_setuid" | "cap_setgid" => m(
            false,
            "restores of processes that run as another user or group",
            "only processes of haul's own user and group can be restored",
        ),
        _ => m(false, "", ""),
    }
}

/// Runs every check (a second or so: the nftables check starts `nft`).
pub fn diagnose() -> Diagnosis {
    let results = probes::run_all();
    let checks: Vec<Check> = results
        .into_iter()
        .map(|(name, r)| {
            let m = meaning(name);
            let (ok, detail) = match r {
                Ok(d) => (true, d),
                Err(e) => (false, crate::util::error_chain(&e)),
            };
            Check {
                name,
                ok,
                needed: m.needed,
                detail,
                consequence: if ok { m.uses } else { m.without }.to_string(),
            }
        })
        .collect();
    let works = |n: &str| checks.iter().any(|c| c.name == n && c.ok);
    let tracker = if works("uffd_wp_async") && works("pagemap_scan") && works("pidfd_getfd") {
        "uffd-wp"
    } else {
        "hash"
    };
    let ok = checks.iter().all(|c| c.ok || !c.needed);
    Diagnosis {
        version: JSON_VERSION,
        haul_version: env!("CARGO_PKG_VERSION"),
        kernel: crate::util::kernel_release(),
        ok,
        tracker,
        checks,
    }
}
