//! The kernel doors on real processes: ptrace stops, injected syscalls, pagemap and
//! PAGEMAP_SCAN, pidfd_getfd, and the /proc parsers.

mod common;

use common::{fixture, read_numbers, wait_for, Running};
use haul::sys::pagemap::{Pagemap, ScanQuery, PAGE_IS_PRESENT};
use haul::sys::process::{self, nr};
use haul::sys::ptrace::{self, Stop};
use haul::sys::remote::RemoteSyscall;
use std::time::Duration;

/// Seizes and stops every thread of `pid`, runs `f`, then detaches them all.
fn stopped<T>(pid: i32, f: impl FnOnce() -> T) -> T {
    let tids = haul::proc::tids(pid).unwrap();
    for &t in &tids {
        ptrace::seize(t, 0).unwrap();
        ptrace::interrupt(t).unwrap();
        match ptrace::wait_stop(t).unwrap() {
            Stop::Event { .. } => {}
            other => panic!("thread {t}: expected an interrupt stop, got {other:?}"),
        }
    }
    let out = f();
    for &t in &tids {
        ptrace::detach(t, 0).unwrap();
    }
    out
}

fn counter(dir: &std::path::Path) -> (Running, std::path::PathBuf) {
    let out = dir.join("counter.log");
    let r = Running::ready(common::clean_command(fixture("counter")).arg(&out));
    (r, out)
}

/// The counter's numbers went on after `before` numbers, with no gap and no repeat.
fn assert_counts_on(out: &std::path::Path, before: usize) {
    assert!(
        wait_for(Duration::from_secs(10), || read_numbers(out).len()
            > before + 20),
        "counter stopped counting"
    );
    let n = read_numbers(out);
    for (i, v) in n.iter().enumerate() {
        assert_eq!(*v, i as u64 + 1, "counter gap or repeat at line {}", i + 1);
    }
}

#[test]
fn injected_getpid_returns_the_target_pid_and_counter_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (c, out) = counter(dir.path());
    let pid = c.pid;
    let before = read_numbers(&out).len();
    let (got, regs_before, regs_after) = stopped(pid, || {
        let before = ptrace::getregs(pid).unwrap();
        let mut r = RemoteSyscall::new(pid, pid).unwrap();
        let got = r.call(nr::GETPID, [0; 6]).unwrap();
        let got2 = r.call(nr::GETTID, [0; 6]).unwrap();
        assert_eq!(got, got2);
        assert!(r.take_signals().is_empty());
        drop(r);
        (got, before, ptrace::getregs(pid).unwrap())
    });
    assert_eq!(got, pid as i64);
    assert_eq!(
        regs_before, regs_after,
        "registers must be restored after injection"
    );
    assert_counts_on(&out, before);
}

#[test]
fn injected_mmap_and_munmap_leave_maps_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (c, out) = counter(dir.path());
    let pid = c.pid;
    let maps = || std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let before_maps = maps();
    let before = read_numbers(&out).len();
    stopped(pid, || {
        let mut r = RemoteSyscall::new(pid, pid).unwrap();
        let addr = r.map_scratch(4096).unwrap();
        let during = maps();
        assert_ne!(during, before_maps, "scratch page must show in maps");
        r.write_mem(addr, b"hello scratch").unwrap();
        let mut back = [0u8; 13];
        r.read_mem(addr, &mut back).unwrap();
        assert_eq!(&back, b"hello scratch");
        r.unmap_scratch().unwrap();
    });
    assert_eq!(maps(), before_maps);
    assert_counts_on(&out, before);
}

#[test]
fn dropping_the_injector_unmaps_its_scratch_page() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _out) = counter(dir.path());
    let pid = c.pid;
    let maps = || std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let before_maps = maps();
    stopped(pid, || {
        let mut r = RemoteSyscall::new(pid, pid).unwrap();
        r.map_scratch(8192).unwrap();
    });
    assert_eq!(maps(), before_maps);
}

#[test]
fn injected_rt_sigaction_reads_the_handlers_flags_and_masks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sig.out");
    let s = Running::ready(common::clean_command(fixture("sigfix")).arg(&out));
    let pid = s.pid;
    let acts = stopped(pid, || {
        let mut r = RemoteSyscall::new(pid, pid).unwrap();
        let scratch = r.map_scratch(4096).unwrap();
        let mut acts = Vec::new();
        for sig in [libc::SIGUSR1, libc::SIGUSR2, libc::SIGALRM, libc::SIGTERM] {
            r.call_ok(
                nr::RT_SIGACTION,
                [sig as u64, 0, scratch, 8, 0, 0],
                "rt_sigaction",
            )
            .unwrap();
            let mut b = [0u8; 32];
            r.read_mem(scratch, &mut b).unwrap();
            let w = |i: usize| u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
            acts.push((w(0), w(1), w(3)));
        }
        r.unmap_scratch().unwrap();
        acts
    });
    let bit = |s: i32| 1u64 << (s - 1);
    let (h1, f1, m1) = acts[0];
    assert!(h1 > 1);
    assert_ne!(f1 & libc::SA_RESTART as u64, 0);
    assert_eq!(m1, bit(libc::SIGUSR2));
    let (_, f2, m2) = acts[1];
    assert_ne!(f2 & libc::SA_SIGINFO as u64, 0);
    assert_ne!(f2 & libc::SA_NODEFER as u64, 0);
    assert_eq!(m2, bit(libc::SIGALRM));
    assert_eq!(acts[2].2, 0);
    assert_eq!(acts[3].0, 1, "SIGTERM is ignored (SIG_IGN = 1)");
    // The process still handles signals: one SIGUSR1 is counted.
    common::send_signal(pid, "USR1");
    assert!(wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&out)
            .map(|s| s.starts_with("usr1=1 "))
            .unwrap_or(false)
    }));
}

#[test]
fn regsets_sigmask_and_rseq_of_a_stopped_thread() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sig.out");
    let s = Running::ready(common::clean_command(fixture("sigfix")).arg(&out));
    let pid = s.pid;
    stopped(pid, || {
        let xs = ptrace::getregset(pid, ptrace::NT_X86_XSTATE).unwrap();
        assert!(xs.len() >= 576, "XSTATE is {} bytes", xs.len());
        let fp = ptrace::getregset(pid, ptrace::NT_PRFPREG).unwrap();
        assert_eq!(fp.len(), 512);
        let mask = ptrace::get_sigmask(pid).unwrap();
        assert_eq!(
            mask,
            1u64 << (libc::SIGPIPE - 1),
            "sigfix blocks exactly SIGPIPE"
        );
        // glibc ≥ 2.35 registers an rseq area for every thread.
        let rseq = ptrace::get_rseq_config(pid).unwrap();
        if let Some(c) = rseq {
            assert!(c.rseq_abi_size >= 32);
            assert_eq!(c.signature, 0x5305_3053);
        }
        let (head, len) = process::get_robust_list(pid).unwrap();
        assert!(head != 0 && len > 0, "glibc sets a robust list head");
        let regs = ptrace::getregs(pid).unwrap();
        assert_eq!(
            haul::sys::ptrace::Regs::from_bytes(&regs.to_bytes()),
            Some(regs)
        );
    });
}

#[test]
fn restart_adjustment_follows_the_kernel_rules() {
    let mut r = ptrace::Regs {
        rip: 0x1002,
        orig_rax: 35,
        ..Default::default()
    };
    r.rax = (-516i64) as u64;
    let a = r.restart_adjusted();
    assert_eq!((a.rax as i64, a.rip), (-(libc::EINTR as i64), 0x1002));
    for code in [-512i64, -513, -514] {
        r.rax = code as u64;
        let a = r.restart_adjusted();
        assert_eq!((a.rax, a.rip), (35, 0x1000));
    }
    r.rax = (-4i64) as u64;
    assert_eq!(r.restart_adjusted(), r);
    r.orig_rax = u64::MAX;
    r.rax = (-512i64) as u64;
    assert_eq!(r.restart_adjusted(), r, "not in a syscall: unchanged");
}

#[test]
fn pagemap_and_pagemap_scan_see_only_touched_pages() {
    // A large zeroed Vec comes straight from mmap: untouched pages are not present.
    const PAGES: usize = 512;
    let mut v = vec![0u8; (PAGES + 1) * 4096];
    let base = (v.as_ptr() as u64).div_ceil(4096) * 4096;
    let off = (base - v.as_ptr() as u64) as usize;
    for i in (0..PAGES).step_by(2) {
        v[off + i * 4096 + 7] = 1;
    }
    let me = std::process::id() as i32;
    let pm = Pagemap::open(me).unwrap();
    let end = base + (PAGES as u64) * 4096;
    let e = pm.entries(base, end).unwrap();
    assert_eq!(e.len(), PAGES);
    for (i, x) in e.iter().enumerate() {
        assert_eq!(x.present(), i % 2 == 0, "page {i}: {x:?}");
        if i % 2 == 0 {
            assert!(!x.file_or_shared() && x.exclusive());
        }
    }
    let regions = pm.scan(&ScanQuery::resident(base, end)).unwrap();
    let pages: Vec<u64> = regions
        .iter()
        .filter(|r| r.categories & PAGE_IS_PRESENT != 0)
        .flat_map(|r| (r.start..r.end).step_by(4096))
        .collect();
    let want: Vec<u64> = (0..PAGES as u64)
        .step_by(2)
        .map(|i| base + i * 4096)
        .collect();
    assert_eq!(pages, want);
    std::hint::black_box(&v);
}

#[test]
fn pagemap_scan_walks_a_large_target_completely() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mw.out");
    let m = Running::ready(
        common::clean_command(fixture("memwriter"))
            .args(["64", "0"])
            .arg(&out),
    );
    let maps = haul::proc::maps(m.pid).unwrap();
    // The 64 MiB region is the largest anonymous mapping.
    let region = maps
        .iter()
        .filter(|e| e.path.is_empty())
        .max_by_key(|e| e.len())
        .unwrap();
    assert!(region.len() >= 64 << 20);
    let pm = Pagemap::open(m.pid).unwrap();
    let regions = pm
        .scan(&ScanQuery::resident(region.start, region.end))
        .unwrap();
    let present: u64 = regions.iter().map(|r| r.pages()).sum();
    assert!(present >= (64 << 20) / 4096, "{present} pages present");
    let entries = pm.entries(region.start, region.end).unwrap();
    assert_eq!(
        entries.iter().filter(|e| e.present()).count() as u64,
        present
    );
}

#[test]
fn pidfd_getfd_takes_a_copy_of_the_targets_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::write(&input, vec![b'x'; 100_000]).unwrap();
    let f = Running::ready(
        common::clean_command(fixture("filefix"))
            .arg(&input)
            .arg(dir.path().join("out")),
    );
    let pidfd = process::pidfd_open(f.pid).unwrap();
    let fd = haul::proc::fds(f.pid)
        .unwrap()
        .into_iter()
        .find(|&fd| haul::proc::fd_target(f.pid, fd).unwrap() == input.to_string_lossy())
        .unwrap();
    let ours = process::pidfd_getfd(&pidfd, fd).unwrap();
    let ours = std::fs::File::from(ours);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        ours.metadata().unwrap().ino(),
        std::fs::metadata(&input).unwrap().ino()
    );
}

#[test]
fn proc_parsers_read_a_real_process() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sig.out");
    let bin = fixture("sigfix");
    let s = Running::ready(
        common::clean_command(&bin)
            .arg(&out)
            .current_dir(dir.path()),
    );
    let pid = s.pid;
    let st = haul::proc::stat(pid).unwrap();
    assert_eq!(st.ppid as u32, std::process::id());
    assert_eq!(st.comm, "sigfix");
    assert!(st.start_brk > 0 && st.arg_end > st.arg_start && st.env_end > st.env_start);
    let status = haul::proc::status(pid).unwrap();
    let bit = |s: i32| 1u64 << (s - 1);
    assert_eq!(status.sig_blk, bit(libc::SIGPIPE));
    assert_eq!(status.sig_ign & bit(libc::SIGTERM), bit(libc::SIGTERM));
    let caught = bit(libc::SIGUSR1) | bit(libc::SIGUSR2) | bit(libc::SIGALRM);
    assert_eq!(status.sig_cgt & caught, caught);
    assert_eq!(status.threads, 1);
    assert_eq!(status.tracer_pid, 0);
    assert_eq!(haul::proc::tids(pid).unwrap(), vec![pid]);
    assert!(haul::proc::children(pid).unwrap().is_empty());
    assert_eq!(haul::proc::comm(pid).unwrap(), "sigfix");
    assert_eq!(
        haul::proc::exe(pid).unwrap(),
        bin.canonicalize().unwrap().to_string_lossy()
    );
    assert_eq!(
        haul::proc::cwd(pid).unwrap(),
        dir.path().canonicalize().unwrap().to_string_lossy()
    );
    let cmd = haul::proc::cmdline(pid).unwrap();
    assert!(cmd.ends_with(format!("{}\0", out.display()).as_bytes()));
    assert_eq!(haul::proc::fds(pid).unwrap(), vec![0, 1, 2]);
    assert_eq!(haul::proc::fd_target(pid, 0).unwrap(), "/dev/null");
    assert!(haul::proc::fd_target(pid, 1).unwrap().starts_with("pipe:["));
    let maps = haul::proc::maps_with_flags(pid).unwrap();
    assert!(maps.iter().any(|m| m.path == "[vdso]"));
    assert!(maps
        .iter()
        .any(|m| m.path == bin.canonicalize().unwrap().to_string_lossy()
            && m.exec
            && m.has_flag("ex")));
    let auxv = haul::proc::auxv(pid).unwrap();
    assert!(auxv.iter().any(|&(k, _)| k == libc::AT_ENTRY));
    assert_eq!(haul::proc::personality(pid).unwrap(), 0);
}

#[test]
fn wait_reports_a_killed_tracee_as_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _out) = counter(dir.path());
    let pid = c.pid;
    ptrace::seize(pid, 0).unwrap();
    process::kill(pid, libc::SIGKILL).unwrap();
    let err = loop {
        match ptrace::wait_stop(pid) {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, haul::sys::SysError::Gone { .. }), "{err}");
}

#[test]
fn a_signal_arriving_during_injection_stays_queued_and_is_delivered_on_detach() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sig.out");
    let s = Running::ready(common::clean_command(fixture("sigfix")).arg(&out));
    let pid = s.pid;
    ptrace::seize(pid, 0).unwrap();
    ptrace::interrupt(pid).unwrap();
    ptrace::wait_stop(pid).unwrap();
    let mask = ptrace::get_sigmask(pid).unwrap();
    let mut r = RemoteSyscall::new(pid, pid).unwrap();
    // Queued during the injection: blocked meanwhile, it stays queued (siginfo and all)
    // instead of stopping the single step.
    process::tgkill(pid, pid, libc::SIGUSR2).unwrap();
    assert_eq!(r.call(nr::GETPID, [0; 6]).unwrap(), pid as i64);
    assert_eq!(r.take_signals(), Vec::<i32>::new());
    let queued = ptrace::peek_siginfo(pid, false).unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0][..4], libc::SIGUSR2.to_ne_bytes());
    drop(r);
    assert_eq!(
        ptrace::get_sigmask(pid).unwrap(),
        mask,
        "mask not given back"
    );
    ptrace::detach(pid, 0).unwrap();
    common::send_signal(pid, "USR1");
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::read_to_string(&out)
            .map(|s| s.starts_with("usr1=1 usr2=1 "))
            .unwrap_or(false)),
        "SIGUSR2 was lost: {:?}",
        std::fs::read_to_string(&out)
    );
}

#[test]
fn injection_into_a_busy_loop_uses_the_vdso_and_leaves_it_spinning() {
    let b =
        Running::spawn(common::clean_command("/usr/bin/python3").args(["-c", "while True: pass"]));
    let pid = b.pid;
    assert!(wait_for(Duration::from_secs(10), || haul::proc::exe(pid)
        .map(|e| e.contains("python"))
        .unwrap_or(false)));
    let (got, insn, before, after) = stopped(pid, || {
        let before = ptrace::getregs(pid).unwrap();
        let mut r = RemoteSyscall::new(pid, pid).unwrap();
        let got = r.call(nr::GETPID, [0; 6]).unwrap();
        let insn = r.insn_addr();
        drop(r);
        (got, insn, before, ptrace::getregs(pid).unwrap())
    });
    assert_eq!(got, pid as i64);
    assert_eq!(before, after);
    let vdso = haul::proc::maps(pid)
        .unwrap()
        .into_iter()
        .find(|m| m.path == "[vdso]")
        .unwrap();
    if (before.orig_rax as i64) < 0 {
        assert!(
            (vdso.start..vdso.end).contains(&insn),
            "insn {insn:#x} not in [vdso]"
        );
    }
    assert!(wait_for(Duration::from_secs(5), || common::proc_state(pid)
        == Some('R')));
}

#[test]
fn uffd_wp_async_and_pagemap_scan_report_exactly_the_written_pages() {
    use haul::sys::mem::AlignedBuf;
    use haul::sys::uffd::*;
    const PAGES: usize = 64;
    let mut buf = AlignedBuf::new(PAGES * 4096).unwrap();
    let start = buf.as_slice().as_ptr() as u64;
    let len = (PAGES * 4096) as u64;
    let uffd = Uffd::create(libc::O_CLOEXEC | libc::O_NONBLOCK).unwrap();
    let (features, _) = uffd
        .api(UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED)
        .unwrap();
    assert_ne!(features & UFFD_FEATURE_WP_ASYNC, 0);
    uffd.register(start, len, UFFDIO_REGISTER_MODE_WP).unwrap();
    uffd.writeprotect(start, len, true, false).unwrap();
    let pm = Pagemap::open(std::process::id() as i32).unwrap();
    let scan = || {
        pm.scan(&ScanQuery::written_and_reprotect(start, start + len))
            .unwrap()
            .iter()
            .flat_map(|r| (r.start..r.end).step_by(4096))
            .map(|a| ((a - start) / 4096) as usize)
            .collect::<Vec<_>>()
    };
    assert!(scan().is_empty(), "nothing written yet");
    for p in [3usize, 4, 40] {
        buf.as_mut_slice()[p * 4096 + 9] = 0xaa;
    }
    assert_eq!(scan(), vec![3, 4, 40]);
    // The scan protected them again: a new round sees only new writes.
    buf.as_mut_slice()[7 * 4096] = 1;
    assert_eq!(scan(), vec![7]);
    uffd.unregister(start, len).unwrap();
}

#[test]
fn process_vm_read_fills_an_aligned_buffer_from_many_ranges() {
    use haul::sys::mem::{process_vm_read, AlignedBuf, RemoteRange};
    let mut src = AlignedBuf::new(3000 * 4096).unwrap();
    for (i, c) in src.as_mut_slice().chunks_mut(4096).enumerate() {
        c[..8].copy_from_slice(&(i as u64).to_ne_bytes());
    }
    let base = src.as_slice().as_ptr() as u64;
    // 1500 one-page ranges (more than IOV_MAX in one call): every other page.
    let ranges: Vec<RemoteRange> = (0..1500u64)
        .map(|i| RemoteRange {
            addr: base + i * 2 * 4096,
            len: 4096,
        })
        .collect();
    let mut dst = AlignedBuf::new(1500 * 4096).unwrap();
    assert_eq!(dst.as_slice().as_ptr() as usize % 4096, 0);
    let n = process_vm_read(std::process::id() as i32, dst.as_mut_slice(), &ranges).unwrap();
    assert_eq!(n, 1500 * 4096);
    for (i, c) in dst.as_slice().chunks(4096).enumerate() {
        assert_eq!(u64::from_ne_bytes(c[..8].try_into().unwrap()), i as u64 * 2);
    }
}

/// Figures, not a check: `cargo test --release --test sys -- --ignored --nocapture figures`.
/// PAGEMAP_SCAN against reading pagemap entries over a 256 MiB resident region.
#[test]
#[ignore]
fn figures_pagemap_scan_against_pagemap_entries() {
    let dir = tempfile::tempdir().unwrap();
    let m = Running::ready(
        common::clean_command(fixture("memwriter"))
            .args(["256", "0"])
            .arg(dir.path().join("mw.out")),
    );
    let maps = haul::proc::maps(m.pid).unwrap();
    let r = maps
        .iter()
        .filter(|e| e.path.is_empty())
        .max_by_key(|e| e.len())
        .unwrap();
    let pm = Pagemap::open(m.pid).unwrap();
    let med = |f: &dyn Fn() -> usize| {
        let mut v: Vec<u128> = (0..7)
            .map(|_| {
                let t = std::time::Instant::now();
                std::hint::black_box(f());
                t.elapsed().as_micros()
            })
            .collect();
        v.sort_unstable();
        v[3]
    };
    let scan = med(&|| pm.scan(&ScanQuery::resident(r.start, r.end)).unwrap().len());
    let entries = med(&|| {
        pm.entries(r.start, r.end)
            .unwrap()
            .iter()
            .filter(|e| e.present())
            .count()
    });
    println!("256 MiB resident: PAGEMAP_SCAN {scan} µs, pagemap entries {entries} µs");
}

#[test]
fn clone3_gives_a_stopped_child_the_pid_asked_for() {
    let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // A free pid near the top of the range (retry if one is taken meanwhile).
    let mut got = None;
    for want in (pid_max - 200..pid_max - 100).rev() {
        if std::path::Path::new(&format!("/proc/{want}")).exists() {
            continue;
        }
        match process::clone3_stopped_child(Some(want)) {
            Ok(pid) => {
                got = Some((want, pid));
                break;
            }
            Err(e) if e.errno() == Some(libc::EEXIST) => continue,
            Err(e) => panic!("clone3: {e}"),
        }
    }
    let (want, pid) = got.expect("no free pid");
    assert_eq!(pid, want);
    assert_eq!(common::proc_state(pid), Some('T'));
    process::kill(pid, libc::SIGKILL).unwrap();
    // Reap it (it is our child): waitpid reports the death.
    let err = loop {
        match ptrace::wait_stop(pid) {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, haul::sys::SysError::Gone { .. }), "{err}");
    assert_eq!(common::proc_state(pid), None);
}

/// The `SigIgn` and `SigCgt` sets of `pid`, from /proc/PID/status.
fn ignored_and_caught(pid: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line[name.len()..].trim(), 16).unwrap()
    };
    (field("SigIgn:"), field("SigCgt:"))
}

#[test]
fn a_parked_restore_child_has_reset_every_signal_action_when_its_pid_is_known() {
    // The test binary itself ignores SIGPIPE and catches SIGSEGV/SIGBUS (Rust's runtime does),
    // so a child that had not reset them yet would show them.
    let (ign, cgt) = ignored_and_caught("self");
    assert_ne!(
        ign | cgt,
        0,
        "the test binary has no signal actions to inherit"
    );
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    let pid = haul::sys::spawn::spawn_parked(None).expect("spawn_parked");
    let seen = ignored_and_caught(&pid.to_string());
    process::kill(pid, libc::SIGKILL).unwrap();
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    assert_eq!(
        seen,
        (0, 0),
        "pid {pid}: (SigIgn, SigCgt) right after spawn_parked"
    );
}

#[test]
fn prctl_mm_map_is_104_bytes_in_field_order() {
    let m = process::PrctlMmMap {
        start_code: 1,
        env_end: 11,
        auxv: 12,
        auxv_size: 13,
        exe_fd: 14,
        ..Default::default()
    };
    let b = m.to_bytes();
    assert_eq!(b.len(), 104);
    assert_eq!(u64::from_ne_bytes(b[0..8].try_into().unwrap()), 1);
    assert_eq!(u64::from_ne_bytes(b[80..88].try_into().unwrap()), 11);
    assert_eq!(u64::from_ne_bytes(b[88..96].try_into().unwrap()), 12);
    assert_eq!(u32::from_ne_bytes(b[96..100].try_into().unwrap()), 13);
    assert_eq!(u32::from_ne_bytes(b[100..104].try_into().unwrap()), 14);
}
