//! The probes of `haul doctor`, each trying one feature for real and cleaning up after itself.
//! Syscalls go through `crate::sys` (and the trackers and network lock haul uses).

use super::{at, ProbeError};
use crate::sys::{self, host, process, ptrace, PAGE_SIZE};
use std::os::fd::AsFd;

type Probe = Result<String, ProbeError>;

/// Every check, in the order printed.
pub(super) fn run_all() -> Vec<(&'static str, Probe)> {
    let mut out = Vec::new();
    child_probes(&mut out);
    out.push(("clone3_set_tid", clone3_set_tid()));
    out.push(("ns_last_pid", ns_last_pid()));
    out.push(("userfaultfd", userfaultfd()));
    out.push(("dev_userfaultfd", dev_userfaultfd()));
    out.push(("uffd_wp_async", uffd_wp_async()));
    out.push(("pagemap_scan", pagemap_scan()));
    out.push(("soft_dirty", soft_dirty()));
    out.push(("tcp_repair", tcp_repair()));
    out.push(("nftables", nftables()));
    out.extend(capabilities());
    out
}

/// A child forked for a probe: stopped (SIGSTOP) from birth, killed and reaped when dropped
/// (haul reaps it itself: PID 1 may not).
struct Throwaway {
    pid: i32,
}

impl Throwaway {
    fn start(set_tid: Option<i32>) -> Result<Throwaway, sys::SysError> {
        Ok(Throwaway {
            pid: process::clone3_stopped_child(set_tid)?,
        })
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = process::kill(self.pid, libc::SIGKILL);
        // Traced or not, wait until it has ended (a ptrace stop may come first).
        for _ in 0..64 {
            match ptrace::wait_status(self.pid) {
                Ok(st) if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) => return,
                Ok(_) => continue,
                Err(_) => return,
            }
        }
        let _ = host::reap(self.pid);
    }
}

/// ptrace, process_vm_readv, pidfd_getfd, rseq and PR_SET_MM_MAP on one throwaway child.
fn child_probes(out: &mut Vec<(&'static str, Probe)>) {
    // Values the child inherits at known addresses: read back from it.
    let marker: Vec<u64> = vec![0x6861_756c_646f_6374 ^ u64::from(std::process::id()); 4];
    // A file the child inherits at a known fd number, to be taken back with pidfd_getfd.
    let ours: std::os::fd::OwnedFd = match std::fs::File::open("/proc/self/exe") {
        Ok(f) => f.into(),
        Err(e) => {
            for n in [
                "ptrace",
                "process_vm_readv",
                "pidfd_getfd",
                "rseq",
                "prctl_mm_map",
            ] {
                out.push((
                    n,
                    Err(ProbeError::Wrong(format!(
                        "cannot open /proc/self/exe for the probes: {e}"
                    ))),
                ));
            }
            return;
        }
    };
    let child = match Throwaway::start(None) {
        Ok(c) => c,
        Err(e) => {
            let msg = crate::util::error_chain(&e);
            for n in [
                "ptrace",
                "process_vm_readv",
                "pidfd_getfd",
                "rseq",
                "prctl_mm_map",
            ] {
                out.push((
                    n,
                    Err(ProbeError::Wrong(format!(
                        "could not fork a throwaway child: {msg}"
                    ))),
                ));
            }
            return;
        }
    };
    let pid = child.pid;
    let traced = ptrace_probe(pid);
    let stopped = traced.is_ok();
    out.push(("ptrace", traced));
    out.push(("process_vm_readv", vm_readv_probe(pid, &marker)));
    out.push(("pidfd_getfd", pidfd_getfd_probe(pid, &ours)));
    if stopped {
        out.push(("rseq", rseq_probe(pid)));
        out.push(("prctl_mm_map", mm_map_probe(pid)));
    } else {
        out.push(("rseq", Err(ProbeError::Needs("ptrace is missing"))));
        out.push(("prctl_mm_map", Err(ProbeError::Needs("ptrace is missing"))));
    }
    drop(child);
}

fn ptrace_probe(pid: i32) -> Probe {
    ptrace::seize(pid, 0).map_err(at("PTRACE_SEIZE of a throwaway child"))?;
    ptrace::interrupt(pid).map_err(at("PTRACE_INTERRUPT"))?;
    let stop = ptrace::wait_stop(pid).map_err(at("waiting for the ptrace stop"))?;
    Ok(format!(
        "seized and interrupted throwaway child {pid} (stop seen: {stop})"
    ))
}

fn vm_readv_probe(pid: i32, marker: &[u64]) -> Probe {
    let addr = marker.as_ptr() as u64;
    let len = std::mem::size_of_val(marker);
    let mut got = vec![0u8; len];
    let n = sys::mem::process_vm_read(pid, &mut got, &[sys::mem::RemoteRange { addr, len }])
        .map_err(at("process_vm_readv from a throwaway child"))?;
    let want: Vec<u8> = marker.iter().flat_map(|w| w.to_ne_bytes()).collect();
    if n != len || got != want {
        return Err(ProbeError::Wrong(format!(
            "read {n} bytes at {addr:#x} of child {pid}, not the {len} it has there"
        )));
    }
    Ok(format!("read {len} known bytes of throwaway child {pid}"))
}

fn pidfd_getfd_probe(pid: i32, ours: &std::os::fd::OwnedFd) -> Probe {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let pidfd = process::pidfd_open(pid).map_err(at("pidfd_open of a throwaway child"))?;
    let fd = ours.as_raw_fd();
    let copy = process::pidfd_getfd(&pidfd, fd).map_err(at("pidfd_getfd"))?;
    let ino = |f: std::os::fd::OwnedFd| std::fs::File::from(f).metadata().map(|m| m.ino());
    let step = "fstat of the file taken";
    let a = ino(copy).map_err(|source| ProbeError::Io { step, source })?;
    let b = ino(ours
        .try_clone()
        .map_err(|source| ProbeError::Io { step, source })?)
    .map_err(|source| ProbeError::Io { step, source })?;
    if a != b {
        return Err(ProbeError::Wrong(format!(
            "fd {fd} of child {pid} came back as another file (inode {a}, not {b})"
        )));
    }
    Ok(format!(
        "took fd {fd} (haul's executable, open) of throwaway child {pid}"
    ))
}

fn rseq_probe(pid: i32) -> Probe {
    match ptrace::get_rseq_config(pid).map_err(at("PTRACE_GET_RSEQ_CONFIGURATION"))? {
        Some(c) => Ok(format!(
            "read the rseq registration of child {pid} ({} bytes at {:#x}, signature {:#x})",
            c.rseq_abi_size, c.rseq_abi_pointer, c.signature
        )),
        None => Ok(format!(
            "PTRACE_GET_RSEQ_CONFIGURATION works (child {pid} has no rseq area registered)"
        )),
    }
}

/// `PR_SET_MM_MAP` injected into the child, as a restore does, with the child's own layout
/// and auxv.
fn mm_map_probe(pid: i32) -> Probe {
    use sys::remote::{self, RemoteSyscall};
    let st = crate::proc::stat(pid)?;
    let auxv = crate::proc::auxv(pid)?;
    let mut rs = RemoteSyscall::new(pid, pid).map_err(at("injecting into the child"))?;
    let scratch = rs
        .map_scratch(2 * PAGE_SIZE as u64)
        .map_err(at("mmap in the child"))?;
    rs.set_args_area(scratch, 2 * PAGE_SIZE as u64);
    let brk = rs
        .call_ok(process::nr::BRK, [0; 6], "brk(0)")
        .map_err(at("brk(0) in the child"))?;
    let map = process::PrctlMmMap {
        start_code: st.start_code,
        end_code: st.end_code,
        start_data: st.start_data,
        end_data: st.end_data,
        start_brk: st.start_brk,
        brk,
        start_stack: st.start_stack,
        arg_start: st.arg_start,
        arg_end: st.arg_end,
        env_start: st.env_start,
        env_end: st.env_end,
        auxv: 0,
        auxv_size: 0,
        // Unchanged: the kernel refuses a new exe while the old one is still mapped (EBUSY),
        // which a restore unmaps first; its capability is the cap_checkpoint_restore check.
        exe_fd: u32::MAX,
    };
    let r = remote::prctl_mm_map(&mut rs, &map, &auxv);
    let _ = rs.unmap_scratch();
    drop(rs);
    r.map_err(at("PR_SET_MM_MAP"))?;
    Ok(format!(
        "PR_SET_MM_MAP with its own layout and auxv in throwaway child {pid}"
    ))
}

/// A free PID near the last one given out (not a guarantee: [`clone3_set_tid`] retries).
fn free_pid_near(skip: i32) -> Result<i32, ProbeError> {
    let read = |p: &str| std::fs::read_to_string(p).ok()?.trim().parse::<i32>().ok();
    let last = read("/proc/sys/kernel/ns_last_pid").unwrap_or(1000);
    let max = read("/proc/sys/kernel/pid_max").unwrap_or(32768);
    let mut c = last + 200 + skip * 37;
    for _ in 0..1000 {
        if c >= max {
            c = 300;
        }
        if !std::path::Path::new(&format!("/proc/{c}")).exists() {
            return Ok(c);
        }
        c += 1;
    }
    Err(ProbeError::Wrong("no free PID found to ask for".into()))
}

fn clone3_set_tid() -> Probe {
    let mut last = None;
    for attempt in 0..5 {
        let want = free_pid_near(attempt)?;
        match Throwaway::start(Some(want)) {
            Ok(child) => {
                let got = child.pid;
                drop(child);
                if got != want {
                    return Err(ProbeError::Wrong(format!(
                        "asked clone3 for PID {want}, got {got}"
                    )));
                }
                return Ok(format!(
                    "clone3 gave a throwaway child the PID asked for ({want})"
                ));
            }
            // Taken meanwhile: try another.
            Err(e) if e.errno() == Some(libc::EEXIST) => last = Some(e),
            Err(e) => return Err(at("clone3 with set_tid")(e)),
        }
    }
    Err(at("clone3 with set_tid")(last.unwrap_or(
        sys::SysError::Invalid("every PID tried was taken".into()),
    )))
}

/// Writes the value it holds back into `/proc/sys/kernel/ns_last_pid` (the next PID stays the
/// same).
fn ns_last_pid() -> Probe {
    let path = "/proc/sys/kernel/ns_last_pid";
    let v = std::fs::read_to_string(path).map_err(|source| ProbeError::Io {
        step: "read /proc/sys/kernel/ns_last_pid",
        source,
    })?;
    let v = v.trim();
    std::fs::write(path, v).map_err(|source| ProbeError::Io {
        step: "write /proc/sys/kernel/ns_last_pid",
        source,
    })?;
    Ok(format!("wrote {v} (its own value) into {path}"))
}

fn userfaultfd() -> Probe {
    use sys::uffd::{Uffd, UFFD_USER_MODE_ONLY};
    let base = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let (uffd, how) = match Uffd::create(base) {
        Ok(u) => (u, "kernel and user faults"),
        Err(e) if e.errno() == Some(libc::EPERM) => (
            Uffd::create(base | UFFD_USER_MODE_ONLY)
                .map_err(at("userfaultfd(UFFD_USER_MODE_ONLY)"))?,
            "user faults only (UFFD_USER_MODE_ONLY: vm.unprivileged_userfaultfd = 0 and no CAP_SYS_PTRACE)",
        ),
        Err(e) => return Err(at("userfaultfd()")(e)),
    };
    let (features, _) = uffd.api(0).map_err(at("UFFDIO_API handshake"))?;
    Ok(format!(
        "userfaultfd() and UFFDIO_API work ({how}; features {features:#x})"
    ))
}

fn dev_userfaultfd() -> Probe {
    let uffd = sys::uffd::Uffd::create_from_dev(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .map_err(at("/dev/userfaultfd"))?;
    uffd.api(0)
        .map_err(at("UFFDIO_API on a /dev/userfaultfd fd"))?;
    Ok("USERFAULTFD_IOC_NEW on /dev/userfaultfd gave a working userfaultfd".into())
}

/// One round of haul's uffd-wp tracker on a buffer of haul's own: of four tracked pages, the
/// one written must be the one reported.
fn uffd_wp_async() -> Probe {
    use crate::track::{uffdwp::UffdWp, Area, Tracker};
    use sys::uffd::{Uffd, UFFD_USER_MODE_ONLY};
    let mut buf = sys::mem::AlignedBuf::new(4 * PAGE_SIZE).map_err(at("mmap of a probe buffer"))?;
    let start = buf.as_slice().as_ptr() as u64;
    let area = Area {
        start,
        end: start + 4 * PAGE_SIZE as u64,
    };
    let uffd = Uffd::create(libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY)
        .map_err(at("userfaultfd(UFFD_USER_MODE_ONLY)"))?;
    let mut t = UffdWp::new(process::getpid(), uffd)?;
    t.start(&[area])?;
    buf.as_mut_slice()[2 * PAGE_SIZE] = 1;
    std::hint::black_box(&mut buf);
    let dirty = t.collect(&[area]);
    t.stop()?;
    let dirty = dirty?;
    let page = start + 2 * PAGE_SIZE as u64;
    if dirty.pages() != 1 || !dirty.contains(page) {
        return Err(ProbeError::Wrong(format!(
            "wrote page 2 of 4 under async write-protect; PAGEMAP_SCAN reported {:?}",
            dirty.ranges()
        )));
    }
    Ok("UFFD_FEATURE_WP_ASYNC: of 4 protected pages, the one written was reported".into())
}

/// `PAGEMAP_SCAN` for the resident pages of a buffer of haul's own, against its pagemap.
fn pagemap_scan() -> Probe {
    use sys::pagemap::{Pagemap, ScanQuery};
    let buf = sys::mem::AlignedBuf::new(4 * PAGE_SIZE).map_err(at("mmap of a probe buffer"))?;
    let start = buf.as_slice().as_ptr() as u64;
    let end = start + 4 * PAGE_SIZE as u64;
    let pm = Pagemap::open(process::getpid()).map_err(at("open of our pagemap"))?;
    let regions = pm
        .scan(&ScanQuery::resident(start, end))
        .map_err(at("PAGEMAP_SCAN"))?;
    let scanned: u64 = regions.iter().map(|r| r.pages()).sum();
    let present = pm
        .entries(start, end)
        .map_err(at("read of our pagemap"))?
        .iter()
        .filter(|e| e.present())
        .count() as u64;
    drop(buf);
    if scanned != present {
        return Err(ProbeError::Wrong(format!(
            "PAGEMAP_SCAN found {scanned} resident pages where pagemap shows {present}"
        )));
    }
    Ok(format!(
        "PAGEMAP_SCAN found the {scanned} resident pages of a probe buffer"
    ))
}

/// Clears the soft-dirty bits of haul's own pages (`clear_refs` 4), writes one page of two, and
/// looks for bit 55 in the pagemap.
fn soft_dirty() -> Probe {
    use sys::pagemap::Pagemap;
    let mut buf = sys::mem::AlignedBuf::new(2 * PAGE_SIZE).map_err(at("mmap of a probe buffer"))?;
    let start = buf.as_slice().as_ptr() as u64;
    std::fs::write("/proc/self/clear_refs", "4").map_err(|source| ProbeError::Io {
        step: "write 4 into /proc/self/clear_refs",
        source,
    })?;
    buf.as_mut_slice()[PAGE_SIZE] = 1;
    std::hint::black_box(&mut buf);
    let pm = Pagemap::open(process::getpid()).map_err(at("open of our pagemap"))?;
    let e = pm
        .entries(start, start + 2 * PAGE_SIZE as u64)
        .map_err(at("read of our pagemap"))?;
    match (e.first(), e.get(1)) {
        (Some(clean), Some(written)) if written.soft_dirty() && !clean.soft_dirty() => {
            Ok("after clear_refs, only the page written shows the soft-dirty bit".into())
        }
        (Some(_), Some(written)) if !written.soft_dirty() => Err(ProbeError::Wrong(
            "a page written after clear_refs shows no soft-dirty bit (pagemap bit 55): the \
             kernel is built without CONFIG_MEM_SOFT_DIRTY"
                .into(),
        )),
        (Some(_), Some(_)) => Err(ProbeError::Wrong(
            "clear_refs did not clear the soft-dirty bit of a page not written".into(),
        )),
        _ => Err(ProbeError::Wrong("pagemap returned no entries".into())),
    }
}

/// Repair mode on and off on one end of a throwaway loopback connection.
fn tcp_repair() -> Probe {
    use std::net::{TcpListener, TcpStream};
    let io = |step| move |source| ProbeError::Io { step, source };
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("bind a loopback listener"))?;
    let addr = l.local_addr().map_err(io("the listener's address"))?;
    let c = TcpStream::connect(addr).map_err(io("connect over loopback"))?;
    let (_s, _) = l.accept().map_err(io("accept"))?;
    sys::tcprepair::repair_on(c.as_fd()).map_err(at("TCP_REPAIR on"))?;
    let on = sys::tcprepair::in_repair(c.as_fd()).map_err(at("getsockopt(TCP_REPAIR)"));
    sys::tcprepair::repair_off(c.as_fd(), false).map_err(at("TCP_REPAIR off"))?;
    if !on? {
        return Err(ProbeError::Wrong(
            "TCP_REPAIR was accepted but the socket is not in repair mode".into(),
        ));
    }
    Ok(format!(
        "repair mode on and off on a loopback connection to {addr}"
    ))
}

/// The lock haul takes for TCP connections, with no connection in it: an owner table added
/// through `nft` and removed again.
fn nftables() -> Probe {
    let lock = crate::netlock::NetLock::take(&[])?;
    let table = lock.table().to_string();
    lock.release();
    Ok(format!(
        "{}: added and removed table inet {table}",
        crate::netlock::nft_tool().display()
    ))
}

/// The capabilities haul's work depends on, from the effective set of this process.
fn capabilities() -> Vec<(&'static str, Probe)> {
    const CAPS: [(&str, u32, &str); 7] = [
        ("cap_checkpoint_restore", 40, "CAP_CHECKPOINT_RESTORE"),
        ("cap_sys_admin", 21, "CAP_SYS_ADMIN"),
        ("cap_sys_ptrace", 19, "CAP_SYS_PTRACE"),
        ("cap_net_admin", 12, "CAP_NET_ADMIN"),
        ("cap_sys_resource", 24, "CAP_SYS_RESOURCE"),
        ("cap_setuid", 7, "CAP_SETUID"),
        ("cap_setgid", 6, "CAP_SETGID"),
    ];
    let eff = crate::proc::status(process::getpid()).map(|s| s.cap_eff);
    CAPS.iter()
        .map(|&(name, bit, cap)| {
            let r = match &eff {
                Ok(e) if e & (1u64 << bit) != 0 => Ok(format!("{cap} is in the effective set")),
                Ok(_) => Err(ProbeError::Wrong(format!(
                    "{cap} is not in the effective set"
                ))),
                Err(e) => Err(ProbeError::Wrong(format!(
                    "cannot read our capabilities: {}",
                    crate::util::error_chain(e)
                ))),
            };
            (name, r)
        })
        .collect()
}
