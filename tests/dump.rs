//! The native dump on real processes: what it copies, that the target goes on unharmed (after
//! success, after a failure at each step), and what it refuses.

mod common;

use common::{clean_command, fixture, read_numbers, wait_for, Running};
use haul::dump::{dump, DumpError, DumpOptions, Step, VecSink};
use haul::image::{FdKind, VmaKind, PAGE_SIZE};
use std::path::Path;
use std::time::Duration;

fn running() -> DumpOptions {
    DumpOptions {
        leave_running: true,
        ..DumpOptions::default()
    }
}

fn memwriter(dir: &Path, mib: u32, per_sec: u32) -> (Running, std::path::PathBuf) {
    let out = dir.join("mw.out");
    let r = Running::logged(
        clean_command(fixture("memwriter"))
            .args([mib.to_string(), per_sec.to_string()])
            .arg(&out),
        &dir.join("mw.log"),
        true,
    );
    (r, out)
}

fn counter(dir: &Path) -> (Running, std::path::PathBuf) {
    let out = dir.join("counter.out");
    let r = Running::logged(
        clean_command(fixture("counter")).arg(&out),
        &dir.join("counter.log"),
        true,
    );
    (r, out)
}

/// The memwriter's big region: the largest anonymous private mapping.
fn region(pid: i32, mib: u64) -> (u64, u64) {
    let m = haul::proc::maps(pid).unwrap();
    let r = m
        .iter()
        .filter(|e| e.path.is_empty() && !e.shared && e.len() >= mib << 20)
        .max_by_key(|e| e.len())
        .expect("memwriter region");
    (r.start, r.end)
}

fn maps_text(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap()
}

fn fd_list(pid: i32) -> Vec<(i32, String)> {
    haul::proc::fds(pid)
        .unwrap()
        .into_iter()
        .filter_map(|fd| Some((fd, haul::proc::fd_target(pid, fd).ok()?)))
        .collect()
}

/// The target is running, untraced, with the same mappings and fds as before.
fn assert_unharmed(pid: i32, maps_before: &str, fds_before: &[(i32, String)]) {
    assert!(common::alive(pid), "pid {pid} died");
    assert_eq!(common::tracer_pid(pid), Some(0), "pid {pid} still traced");
    assert!(
        wait_for(Duration::from_secs(5), || !matches!(
            common::proc_state(pid),
            Some('T' | 't')
        )),
        "pid {pid} left stopped"
    );
    let now = maps_text(pid);
    if now != maps_before {
        let gone: Vec<&str> = maps_before
            .lines()
            .filter(|l| !now.lines().any(|n| n == *l))
            .collect();
        let new: Vec<&str> = now
            .lines()
            .filter(|l| !maps_before.lines().any(|n| n == *l))
            .collect();
        panic!("mappings of pid {pid} changed: gone {gone:#?}, new {new:#?}");
    }
    // A memwriter may hold its report's temp file open for a moment: allow it to close.
    wait_for(Duration::from_secs(2), || fd_list(pid) == fds_before);
    assert_eq!(fd_list(pid), fds_before, "fds of pid {pid} changed");
}

/// The counter's numbers go on past `before` with no gap and no repeat.
fn assert_counts_on(out: &Path, before: usize) {
    assert!(
        wait_for(Duration::from_secs(10), || read_numbers(out).len()
            > before + 10),
        "counter stopped counting"
    );
    for (i, v) in read_numbers(out).iter().enumerate() {
        assert_eq!(*v, i as u64 + 1, "gap or repeat at line {}", i + 1);
    }
}

#[test]
fn dump_copies_exactly_the_memwriter_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (m, out) = memwriter(dir.path(), 32, 0);
    let pid = m.pid;
    let (start, end) = region(pid, 32);
    let mut sink = VecSink::default();
    let o = dump(pid, &running(), &mut sink).unwrap();

    // Every page of the region, each once, in the sink.
    let mut addrs: Vec<u64> = sink.pages.iter().map(|(a, _)| *a).collect();
    addrs.sort_unstable();
    let before = addrs.len();
    addrs.dedup();
    assert_eq!(addrs.len(), before, "a page was sent twice");
    let in_region: Vec<u64> = addrs
        .iter()
        .copied()
        .filter(|a| (start..end).contains(a))
        .collect();
    assert_eq!(in_region.len() as u64, (end - start) / 4096);
    assert_eq!(o.stats.pages_written, sink.pages.len() as u64);
    assert!(o.stats.pages_zero >= (32 << 20) / 4096 / 3, "{:?}", o.stats);
    assert!(o.stats.pages_scanned >= o.stats.pages_written);

    // The content is what the process has (it does not write: rate 0).
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    use std::os::unix::fs::FileExt;
    let by_addr: std::collections::HashMap<u64, &Vec<u8>> =
        sink.pages.iter().map(|(a, d)| (*a, d)).collect();
    for i in [0u64, 1, 2, 3, 4, 5, 1000, 4097, 8191] {
        let a = start + i * 4096;
        let mut live = vec![0u8; PAGE_SIZE];
        mem.read_exact_at(&mut live, a).unwrap();
        assert_eq!(by_addr[&a], &live, "page {i} at {a:#x}");
        if i % 3 == 1 {
            assert!(live.starts_with(format!("page {i}: ").as_bytes()));
        }
    }

    // The state around the pages.
    let p = &o.process;
    assert_eq!(p.pid, pid);
    assert_eq!(p.threads.len(), 1);
    assert_eq!(p.threads[0].regs.len(), 216);
    assert!(!p.threads[0].xstate.is_empty());
    assert_eq!(p.threads[0].fpregs.len(), 512);
    assert_eq!(p.sigactions.len(), 64);
    assert!(p.sigactions[libc::SIGUSR1 as usize - 1].handler > 1);
    // SIGINT as the memwriter inherited it: default, unless the test itself runs with it
    // ignored (as a shell's background job does), which exec keeps.
    let own_ign = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let int_ignored = own_ign & (1 << (libc::SIGINT - 1)) != 0;
    assert_eq!(
        p.sigactions[libc::SIGINT as usize - 1].handler,
        u64::from(int_ignored)
    );
    assert_eq!(
        p.exe,
        fixture("memwriter")
            .canonicalize()
            .unwrap()
            .to_string_lossy()
    );
    assert!(p.mm.brk >= p.mm.start_brk && p.mm.start_brk > 0);
    assert!(p
        .vmas
        .iter()
        .any(|v| v.start == start && v.kind == VmaKind::Anon));
    assert!(p.vmas.iter().any(|v| v.kind == VmaKind::Vdso));
    assert!(p
        .vmas
        .iter()
        .any(|v| v.kind == VmaKind::File && v.file.is_some()));
    assert_eq!(p.fds.len(), 3);
    assert_eq!(p.fds[0].kind, FdKind::DevNull);
    assert!(matches!(&p.fds[1].kind, FdKind::File { path, .. } if path.ends_with("mw.log")));
    assert_eq!(p.rlimits.len(), 16);
    // No page of [vdso]/[vvar] was copied.
    for v in p
        .vmas
        .iter()
        .filter(|v| matches!(v.kind, VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock))
    {
        assert!(
            !addrs.iter().any(|a| (v.start..v.end).contains(a)),
            "{} copied",
            v.name
        );
    }
    drop(out);
}

#[test]
fn pages_beyond_the_buffer_go_to_the_sink_during_the_freeze() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _out) = memwriter(dir.path(), 16, 0);
    // Copied under the freeze (a fork snapshot would hold the pages instead of the buffer).
    let opts = DumpOptions {
        buffer: 8 << 20,
        snapshot: false,
        ..running()
    };
    let mut sink = VecSink::default();
    let o = dump(m.pid, &opts, &mut sink).unwrap();
    assert!(
        o.stats.pages_during_freeze >= (8 << 20) / 4096,
        "{:?}",
        o.stats
    );
    assert_eq!(o.stats.pages_written, sink.pages.len() as u64);
    let (start, end) = region(m.pid, 16);
    let n = sink
        .pages
        .iter()
        .filter(|(a, _)| (start..end).contains(a))
        .count() as u64;
    // Every one of the 16 MiB the memwriter wrote. (The mapping holding them has a few more
    // pages, malloc's header and tail, of which an untouched one is rightly not copied: the
    // full suite under load once saw 4098 of 4099.)
    assert!(
        n >= (16 << 20) / 4096 && n <= (end - start) / 4096,
        "{n} pages copied of the {} in the region",
        (end - start) / 4096
    );
}

#[test]
fn leave_running_keeps_the_memwriter_going_with_the_same_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (m, out) = memwriter(dir.path(), 64, 2000);
    let pid = m.pid;
    // Pause the dirtying so the region's checksum must not change across the dump.
    let (t1, sum1) = common::memwriter_pause(pid, &out, 0);
    let maps_before = maps_text(pid);
    let fds_before = fd_list(pid);
    let mut sink = VecSink::default();
    let o = dump(pid, &running(), &mut sink).unwrap();
    assert!(o.stats.frozen_time > 0 && o.stats.freezing_time > 0);
    assert_unharmed(pid, &maps_before, &fds_before);
    let (t2, sum2) = common::memwriter_report(pid, &out, t1);
    assert!(t2 > t1);
    assert_eq!(sum1, sum2, "memory changed across the dump");
}

/// A wavewriter of `mib` MiB (`fixtures/wavewriter.c`), and its log.
fn wavewriter(dir: &Path, mib: u32) -> (Running, std::path::PathBuf) {
    let log = dir.join("wave.log");
    let r = Running::logged(
        clean_command(fixture("wavewriter")).arg(mib.to_string()),
        &log,
        true,
    );
    (r, log)
}

/// The pass numbers at the start of each page of `[start, end)` in `sink`, in address order.
fn wave(sink: &VecSink, start: u64, end: u64) -> Vec<u64> {
    let mut v: Vec<(u64, u64)> = sink
        .pages
        .iter()
        .filter(|(a, _)| (start..end).contains(a))
        .map(|(a, d)| (*a, u64::from_ne_bytes(d[..8].try_into().unwrap())))
        .collect();
    v.sort_unstable();
    v.into_iter().map(|(_, g)| g).collect()
}

/// The wavewriter's `log` has passes past `after` (the number of lines now) and no torn page.
fn assert_waves_on(log: &Path, after: usize) {
    let text = || std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(10), || text().lines().count()
            > after + 20),
        "the wavewriter stopped: {}",
        text().lines().last().unwrap_or("")
    );
    assert!(!text().contains("torn"), "{}", text());
}

/// Held by the tests that count the wavewriters among this test process's children, so that
/// one does not see the other's.
static WAVES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The wavewriter's children of this test process: the one that runs, and any fork of it that
/// a checkpoint left behind (living or a zombie). Call with [`WAVES`] held.
fn wavewriters() -> Vec<i32> {
    common::children_of(std::process::id() as i32)
        .into_iter()
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "wavewriter")
        })
        .collect()
}

/// A checkpoint of a process that rewrites its memory without pause holds the memory of one
/// instant, the freeze's: the wavewriter's pages show a single wave (pass g up to some page,
/// g - 1 after it). Read after the thaw from a fork (the default for a child of the dumping
/// process), and copied under the freeze (`snapshot: false`). The fork is gone afterwards,
/// reaped, and the wavewriter goes on unharmed, its own checks passing.
#[test]
fn a_checkpoint_holds_the_memory_of_one_instant_while_the_process_writes_on() {
    let _one = WAVES.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (w, log) = wavewriter(dir.path(), 64);
    let pid = w.pid;
    let (start, end) = region(pid, 64);
    let maps_before = maps_text(pid);
    let fds_before = fd_list(pid);
    for snapshot in [true, false, true] {
        let lines = std::fs::read_to_string(&log).unwrap().lines().count();
        let mut sink = VecSink::default();
        let opts = DumpOptions {
            snapshot,
            ..running()
        };
        let o = dump(pid, &opts, &mut sink).unwrap();
        let pages = (64 << 20) / PAGE_SIZE as u64;
        if snapshot {
            assert!(o.stats.pages_from_snapshot >= pages, "{:?}", o.stats);
            assert!(o.stats.keepers.is_empty(), "{:?}", o.stats);
        } else {
            assert_eq!(o.stats.pages_from_snapshot, 0, "{:?}", o.stats);
        }
        let v = wave(&sink, start, end);
        assert!(v.len() as u64 >= pages, "{} pages of the region", v.len());
        let (hi, lo) = (v[0], v[v.len() - 1]);
        let steps = v.windows(2).filter(|p| p[0] != p[1]).count();
        assert!(
            hi >= 1
                && (hi == lo || hi == lo + 1)
                && steps <= 1
                && v.windows(2).all(|p| p[0] >= p[1]),
            "snapshot {snapshot}: not one wave: {hi} down to {lo} in {steps} steps ({:?} ...)",
            &v[..8]
        );
        assert_eq!(wavewriters(), vec![pid], "a fork of the wavewriter is left");
        assert_unharmed(pid, &maps_before, &fds_before);
        assert_waves_on(&log, lines);
    }
}

/// A checkpoint with a fork snapshot that fails at any step leaves the process running
/// unharmed, its memory as it was (its own checks pass), and no fork behind.
#[test]
fn a_failed_checkpoint_with_a_snapshot_leaves_no_fork_and_the_process_unharmed() {
    let _one = WAVES.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (w, log) = wavewriter(dir.path(), 8);
    let maps_before = maps_text(w.pid);
    let fds_before = fd_list(w.pid);
    for step in Step::ALL {
        let lines = std::fs::read_to_string(&log).unwrap().lines().count();
        let opts = DumpOptions {
            fail_at: Some(step),
            ..running()
        };
        let err = dump(w.pid, &opts, &mut VecSink::default()).unwrap_err();
        assert_eq!(err.step(), Some(step), "{err}");
        assert_eq!(wavewriters(), vec![w.pid], "a fork is left after {step}");
        assert_unharmed(w.pid, &maps_before, &fds_before);
        assert_waves_on(&log, lines);
    }
}

/// A new pids cgroup under this test process's own (cgroup v2 with the pids controller, or
/// v1's pids hierarchy), removed when dropped; None where neither can be made.
struct PidsCgroup(std::path::PathBuf);

impl PidsCgroup {
    fn make(name: &str) -> Option<PidsCgroup> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let (root, path) = match own
            .lines()
            .find_map(|l| l.split_once(":pids:").map(|(_, p)| p.to_string()))
        {
            Some(p) => (Path::new("/sys/fs/cgroup/pids").to_path_buf(), p),
            None => (
                Path::new("/sys/fs/cgroup").to_path_buf(),
                own.lines().find_map(|l| l.strip_prefix("0::"))?.to_string(),
            ),
        };
        let dir = root
            .join(path.trim_start_matches('/'))
            .join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let cg = PidsCgroup(dir);
        std::fs::write(cg.0.join("pids.max"), "1").ok()?;
        Some(cg)
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = wait_for(Duration::from_secs(5), || {
            std::fs::remove_dir(&self.0).is_ok() || !self.0.exists()
        });
    }
}

/// A fork that fails (the process's pids cgroup allows it no more tasks) leaves the
/// checkpoint to copy the memory under the freeze, as without a snapshot: it still holds the
/// memory of one instant, and the process goes on unharmed.
#[test]
fn a_checkpoint_whose_fork_fails_copies_under_the_freeze() {
    let name = "a_checkpoint_whose_fork_fails_copies_under_the_freeze";
    let Some(cg) = PidsCgroup::make("haul-test-nofork") else {
        return common::skip(name, "cannot make a pids cgroup here");
    };
    let dir = tempfile::tempdir().unwrap();
    let (w, log) = wavewriter(dir.path(), 16);
    std::fs::write(cg.0.join("cgroup.procs"), w.pid.to_string()).unwrap();
    let (start, end) = region(w.pid, 16);
    let maps_before = maps_text(w.pid);
    let fds_before = fd_list(w.pid);
    let lines = std::fs::read_to_string(&log).unwrap().lines().count();
    let mut sink = VecSink::default();
    let o = dump(w.pid, &running(), &mut sink).unwrap();
    assert_eq!(o.stats.pages_from_snapshot, 0, "{:?}", o.stats);
    let v = wave(&sink, start, end);
    assert!(v.len() as u64 >= (16 << 20) / PAGE_SIZE as u64);
    assert!(
        v.windows(2).all(|p| p[0] >= p[1]) && v[0] <= v[v.len() - 1] + 1,
        "not one wave: {} down to {}",
        v[0],
        v[v.len() - 1]
    );
    assert_unharmed(w.pid, &maps_before, &fds_before);
    assert_waves_on(&log, lines);
    drop(w);
    drop(cg);
}

#[test]
fn leave_running_keeps_the_counter_counting_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (c, out) = counter(dir.path());
    let maps_before = maps_text(c.pid);
    let fds_before = fd_list(c.pid);
    for _ in 0..3 {
        let before = read_numbers(&out).len();
        dump(c.pid, &running(), &mut VecSink::default()).unwrap();
        assert_unharmed(c.pid, &maps_before, &fds_before);
        assert_counts_on(&out, before);
    }
}

#[test]
fn dump_without_leave_running_kills_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, _out) = counter(dir.path());
    let o = dump(c.pid, &DumpOptions::default(), &mut VecSink::default()).unwrap();
    assert!(o.stats.pages_written > 0);
    let st = c.child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL));
}

#[test]
fn a_failure_at_any_step_leaves_the_process_unharmed() {
    let dir = tempfile::tempdir().unwrap();
    let (c, out) = counter(dir.path());
    let maps_before = maps_text(c.pid);
    let fds_before = fd_list(c.pid);
    for step in Step::ALL {
        // Not leave_running: a failed dump must not kill the process either, at any step,
        // the write of its pages included (it is killed only once they are all written).
        let opts = DumpOptions {
            fail_at: Some(step),
            ..DumpOptions::default()
        };
        let before = read_numbers(&out).len();
        let err = dump(c.pid, &opts, &mut VecSink::default()).unwrap_err();
        assert_eq!(err.step(), Some(step), "{err}");
        assert!(err.to_string().contains(step.name()), "{err}");
        assert_unharmed(c.pid, &maps_before, &fds_before);
        assert_counts_on(&out, before);
    }
}

#[test]
fn fail_at_names_parse_back() {
    for s in Step::ALL {
        assert_eq!(Step::parse(s.name()), Some(s));
    }
    assert_eq!(Step::parse("nope"), None);
}

/// The first reason a dump of `pid` is refused for (a process may have several).
fn refusal(pid: i32) -> String {
    match dump(pid, &running(), &mut VecSink::default()) {
        Err(e) if e.is_refusal() => e.reasons().remove(0),
        Err(e) => panic!("pid {pid}: expected a refusal, got {e:?}"),
        Ok(_) => panic!("pid {pid}: dump should have been refused"),
    }
}

#[test]
fn refuses_a_half_closed_tcp_connection_naming_its_four_tuple_and_state() {
    let dir = tempfile::tempdir().unwrap();
    // A connection to itself, half closed (CLOSE-WAIT and FIN-WAIT-2, states not carried):
    // both ends are refused, each with its 4-tuple.
    let script = "import socket,time\nl=socket.create_server(('127.0.0.1',0))\ns=socket.create_connection(l.getsockname())\nc,_=l.accept()\nc.shutdown(socket.SHUT_WR)\ns.recv(1)\nprint('ready',s.getsockname()[1],l.getsockname()[1],flush=True)\ntime.sleep(60)";
    let log = dir.path().join("py.log");
    let p = Running::logged(
        clean_command("/usr/bin/python3").args(["-c", script]),
        &log,
        false,
    );
    let mut ports = Vec::new();
    assert!(wait_for(Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        ports = text
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.parse::<u16>().ok())
            .collect();
        ports.len() == 2
    }));
    let (client, server) = (ports[0], ports[1]);
    let maps_before = maps_text(p.pid);
    let reasons = match dump(p.pid, &running(), &mut VecSink::default()) {
        Err(e) if e.is_refusal() => e.reasons(),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let fd_of = |port: u16| {
        fd_list(p.pid)
            .into_iter()
            .filter(|(_, t)| t.starts_with("socket:["))
            .map(|(fd, _)| fd)
            .find(|fd| {
                reasons.iter().any(|r| {
                    r.starts_with(&format!("pid {} fd {fd}: TCP 127.0.0.1:{port} ", p.pid))
                })
            })
    };
    let (cfd, sfd) = (fd_of(client).unwrap(), fd_of(server).unwrap());
    let want = |fd: i32, here: u16, there: u16| {
        format!(
            "pid {} fd {fd}: TCP 127.0.0.1:{here} -> 127.0.0.1:{there} (CLOSE-WAIT): only \
             established connections are carried, not connections in this state",
            p.pid
        )
    };
    assert!(reasons.contains(&want(cfd, client, server)), "{reasons:#?}");
    assert!(
        reasons.iter().any(|r| r.starts_with(&format!(
            "pid {} fd {sfd}: TCP 127.0.0.1:{server} -> 127.0.0.1:{client} (FIN-WAIT-",
            p.pid
        ))),
        "{reasons:#?}"
    );
    assert_eq!(maps_text(p.pid), maps_before);
    assert_eq!(common::tracer_pid(p.pid), Some(0));
}

#[test]
fn refuses_a_pipe_to_another_process() {
    let dir = tempfile::tempdir().unwrap();
    // Running::ready gives the fixture a pipe for stdout.
    let c = Running::ready(clean_command(fixture("counter")).arg(dir.path().join("c.out")));
    let msg = refusal(c.pid);
    // The read end is this test process's: the refusal names who holds it.
    let me = std::process::id();
    assert!(
        msg.starts_with(&format!("pid {} fd 1: pipe:[", c.pid))
            && msg.contains(&format!(
                "] leads to another process: its read end is held by no process of the tree, \
                 but by pid {me} fd "
            )),
        "{msg}"
    );
}

#[test]
fn refuses_fanotify_and_pidfd_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    for (make, kind) in [
        ("ctypes.CDLL(None).fanotify_init(0, 0)", "fanotify"),
        ("os.pidfd_open(os.getpid())", "pidfd"),
    ] {
        let script = format!(
            "import ctypes,os,select,time\nx={make}\nprint('ready',flush=True)\ntime.sleep(60)"
        );
        let p = Running::logged(
            clean_command("/usr/bin/python3").args(["-c", &script]),
            &dir.path().join("py.log"),
            true,
        );
        let (fd, target) = fd_list(p.pid).into_iter().find(|(fd, _)| *fd > 2).unwrap();
        assert_eq!(
            refusal(p.pid),
            format!(
                "pid {} fd {fd}: {target} ({kind}) is not supported yet",
                p.pid
            )
        );
    }
}

#[test]
fn refuses_pid_1_itself_its_parent_a_zombie_and_a_missing_pid() {
    assert!(refusal(1).contains("init"));
    let me = std::process::id() as i32;
    assert_eq!(refusal(me), format!("pid {me} is haul itself"));
    let parent = std::os::unix::process::parent_id() as i32;
    // (Under `unshare -pf cargo test` the parent is the namespace's init: refused as init.)
    if parent != 1 {
        assert!(refusal(parent).contains("ancestor"));
    }
    // A kernel thread, if this pid namespace shows any (kthreadd is pid 2 on a host).
    let kthread = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&p| {
            haul::proc::stat(p)
                .map(|s| s.is_kernel_thread())
                .unwrap_or(false)
        });
    if let Some(k) = kthread {
        assert!(refusal(k).contains("kernel thread"));
    }
    let missing = 4_194_304 + 17; // above any pid_max
    assert_eq!(refusal(missing), format!("pid {missing} does not exist"));

    let mut z = std::process::Command::new("true").spawn().unwrap();
    let zpid = z.id() as i32;
    assert!(wait_for(Duration::from_secs(5), || common::proc_state(
        zpid
    ) == Some('Z')));
    assert!(refusal(zpid).contains("zombie"));
    z.wait().unwrap();
}

#[test]
fn multi_threaded_capture_seizes_every_thread() {
    let dir = tempfile::tempdir().unwrap();
    let script = "import threading,time\nfor _ in range(3): threading.Thread(target=time.sleep,args=(60,),daemon=True).start()\nprint('ready',flush=True)\ntime.sleep(60)";
    let p = Running::logged(
        clean_command("/usr/bin/python3").args(["-c", script]),
        &dir.path().join("py.log"),
        true,
    );
    let maps_before = maps_text(p.pid);
    let fds_before = fd_list(p.pid);
    let o = dump(p.pid, &running(), &mut VecSink::default()).unwrap();
    assert_eq!(o.process.threads.len(), 4);
    // glibc sets every thread's clear_child_tid (pthread_join waits on it): each is kept.
    let addrs: std::collections::BTreeSet<u64> = o
        .process
        .threads
        .iter()
        .map(|t| t.clear_child_tid)
        .collect();
    assert_eq!(addrs.len(), 4, "clear_child_tid addresses: {addrs:?}");
    assert!(!addrs.contains(&0));
    assert_eq!(o.process.threads[0].tid, p.pid);
    assert!(o
        .process
        .threads
        .iter()
        .all(|t| t.regs.len() == 216 && t.rseq.is_some() == o.process.threads[0].rseq.is_some()));
    assert_unharmed(p.pid, &maps_before, &fds_before);
    for t in haul::proc::tids(p.pid).unwrap() {
        assert_eq!(haul::proc::task_status(p.pid, t).unwrap().tracer_pid, 0);
    }
}

#[test]
fn python_loop_goes_on_after_a_dump() {
    let dir = tempfile::tempdir().unwrap();
    let script = "import time\nn=0\nprint('ready',flush=True)\nwhile True:\n  n+=1\n  print(n,flush=True)\n  time.sleep(0.01)";
    let log = dir.path().join("py.log");
    let p = Running::logged(
        clean_command("/usr/bin/python3").args(["-c", script]),
        &log,
        true,
    );
    let maps_before = maps_text(p.pid);
    let fds_before = fd_list(p.pid);
    let o = dump(p.pid, &running(), &mut VecSink::default()).unwrap();
    assert!(o.stats.pages_written > 100);
    assert_unharmed(p.pid, &maps_before, &fds_before);
    let count = || read_numbers(&log).len();
    let before = count();
    assert!(wait_for(Duration::from_secs(10), || count() > before + 10));
    for (i, v) in read_numbers(&log).iter().enumerate() {
        assert_eq!(*v, i as u64 + 1);
    }
}

#[test]
fn gzip_dumped_mid_file_still_produces_a_valid_archive() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    // ~48 MiB of words: compressible, slow enough to catch gzip in the middle.
    let mut data = Vec::with_capacity(48 << 20);
    let mut x: u64 = 0x1234_5678_9abc_def1;
    while data.len() < 48 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(format!("{:x} word{} ", x & 0xffff_ffff, x % 1000).as_bytes());
    }
    std::fs::write(&input, &data).unwrap();
    let output = dir.path().join("input.gz");
    let out_file = std::fs::File::create(&output).unwrap();
    let mut child = clean_command("gzip")
        .args(["-6", "-c"])
        .arg(&input)
        .stdin(std::process::Stdio::null())
        .stdout(out_file)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    // Wait until it reads the input (its fd open with an offset > 0).
    let input_fd = || {
        fd_list(pid)
            .into_iter()
            .find(|(_, t)| Path::new(t) == input.as_path())
            .map(|(fd, _)| fd)
    };
    assert!(wait_for(Duration::from_secs(10), || {
        input_fd()
            .and_then(|fd| haul::proc::fdinfo(pid, fd).ok())
            .map(|i| i.pos > 0)
            .unwrap_or(false)
    }));
    let in_fd = input_fd().unwrap();
    let o = dump(pid, &running(), &mut VecSink::default()).unwrap();
    let f = o.process.fds.iter().find(|f| f.fd == in_fd).unwrap();
    match &f.kind {
        FdKind::File { path, pos, .. } => {
            assert_eq!(Path::new(path), input.as_path());
            assert!(
                *pos > 0 && *pos < data.len() as u64,
                "dumped mid-file at {pos}"
            );
        }
        k => panic!("fd {in_fd} is {k:?}"),
    }
    let st = child.wait().unwrap();
    assert!(st.success(), "gzip: {st}");
    let back = std::process::Command::new("gzip")
        .args(["-dc"])
        .arg(&output)
        .output()
        .unwrap();
    assert!(back.status.success());
    assert!(
        back.stdout == data,
        "decompressed output differs from the input"
    );
}

/// A sink that kills the target when it receives its first pages (during the freeze, without
/// a snapshot).
struct KillingSink {
    pid: i32,
    inner: VecSink,
}

impl haul::dump::PageSink for KillingSink {
    fn add_pages(&mut self, addrs: &[u64], data: haul::sys::mem::PageBuf) -> Result<(), DumpError> {
        if self.inner.pages.is_empty() {
            common::send_signal(self.pid, "KILL");
        }
        self.inner.add_pages(addrs, data)
    }
}

#[test]
fn a_process_killed_mid_dump_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mut m, _out) = memwriter(dir.path(), 32, 0);
    // Every page goes to the sink during the freeze. (With a fork snapshot, they are read
    // from the fork after the thaw: a process killed then has a whole image.)
    let opts = DumpOptions {
        buffer: 0,
        snapshot: false,
        ..running()
    };
    let mut sink = KillingSink {
        pid: m.pid,
        inner: VecSink::default(),
    };
    let err = dump(m.pid, &opts, &mut sink).unwrap_err();
    assert!(matches!(err, DumpError::Gone { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("pid {} went away during", m.pid)),
        "{err}"
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(m.child.wait().unwrap().signal(), Some(libc::SIGKILL));
}

/// Counts pages and drops them (figures without a store).
#[derive(Default)]
struct CountingSink {
    pages: u64,
}

impl haul::dump::PageSink for CountingSink {
    fn add_pages(&mut self, addrs: &[u64], data: haul::sys::mem::PageBuf) -> Result<(), DumpError> {
        assert_eq!(data.len(), addrs.len() * PAGE_SIZE);
        self.pages += addrs.len() as u64;
        Ok(())
    }
}

/// Figures, not a check: `cargo test --release --test dump -- --ignored --nocapture figures`.
/// Prewarms (DESIGN.md §4: this VM hands freed memory back), then dumps a 256 MiB memwriter
/// five times with leave_running and prints the medians.
#[test]
#[ignore]
fn figures_dump_of_a_256mib_memwriter() {
    // Step timings: HAUL_FIGURES_TRACE=1 prints every step's duration.
    if std::env::var_os("HAUL_FIGURES_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("haul=debug")
            .with_writer(std::io::stderr)
            .try_init();
    }
    for _ in 0..2 {
        let mut v = vec![0u8; 512 << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        std::hint::black_box(&v);
    }
    let dir = tempfile::tempdir().unwrap();
    let (m, _out) = memwriter(dir.path(), 256, 0);
    // Baseline measured side by side: the raw copy of the region alone (4 MiB reads into one
    // reused aligned buffer), the floor any dump of it has.
    let (start, end) = region(m.pid, 256);
    let raw_copy = || {
        use haul::sys::mem::{process_vm_read, AlignedBuf, RemoteRange};
        let mut buf = AlignedBuf::new(4 << 20).unwrap();
        let t = std::time::Instant::now();
        let mut a = start;
        while a < end {
            let len = (end - a).min(4 << 20) as usize;
            let n = process_vm_read(
                m.pid,
                &mut buf.as_mut_slice()[..len],
                &[RemoteRange { addr: a, len }],
            )
            .unwrap();
            assert_eq!(n, len);
            a += len as u64;
        }
        t.elapsed().as_micros() as u64
    };
    let mut base: Vec<u64> = (0..5).map(|_| raw_copy()).collect();
    base.sort_unstable();
    let base = base[2];
    println!(
        "baseline: raw process_vm_readv of the 256 MiB region {base} µs ({:.2} GB/s)",
        (end - start) as f64 / base as f64 / 1000.0
    );
    for (label, buffer) in [
        ("buffered (1 GiB)", 1u64 << 30),
        ("unbuffered (sink during freeze)", 0),
    ] {
        let opts = DumpOptions {
            buffer,
            ..running()
        };
        let mut runs = Vec::new();
        for _ in 0..5 {
            let mut sink = CountingSink::default();
            let o = dump(m.pid, &opts, &mut sink).unwrap();
            runs.push(o.stats);
        }
        let med = |f: fn(&haul::dump::DumpStats) -> u64| {
            let mut v: Vec<u64> = runs.iter().map(f).collect();
            v.sort_unstable();
            v[v.len() / 2]
        };
        let pages = runs[0].pages_written;
        let gib = (pages * 4096) as f64 / (1u64 << 30) as f64;
        let frozen = med(|s| s.frozen_time);
        println!(
            "{label}: pages {pages} ({:.0} MiB), freezing {} µs, frozen {} µs, memdump {} µs, memwrite {} µs, remote syscalls {}, frozen per GiB {:.1} ms, copy {:.2} GB/s",
            gib * 1024.0,
            med(|s| s.freezing_time),
            frozen,
            med(|s| s.memdump_time),
            med(|s| s.memwrite_time),
            runs[0].remote_syscalls,
            frozen as f64 / 1000.0 / gib,
            (pages * 4096) as f64 / med(|s| s.memdump_time) as f64 / 1000.0,
        );
        println!("  frozen / raw copy = {:.2}", frozen as f64 / base as f64);
    }
}

#[test]
fn copies_cow_pages_of_private_file_mappings_and_prot_none_pages_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, vec![b'f'; 8 * 4096]).unwrap();
    let script = r#"
import mmap, ctypes, sys, time
f = open(sys.argv[1], 'rb')
cow = mmap.mmap(f.fileno(), 8 * 4096, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
s = sum(cow[i * 4096] for i in range(8))   # every page of the file read: present, still the file's
cow[2 * 4096:2 * 4096 + 7] = b'changed'     # one page copied on write
anon = mmap.mmap(-1, 3 * 4096)
anon[4096:4096 + 6] = b'hidden'
libc = ctypes.CDLL(None)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
base = ctypes.addressof(ctypes.c_char.from_buffer(anon))
cbase = ctypes.addressof(ctypes.c_char.from_buffer(cow))
assert libc.mprotect(base + 4096, 4096, 0) == 0
f.close()
print(cbase, base + 4096, flush=True)
print('ready', flush=True)
time.sleep(60)
"#;
    let log = dir.path().join("py.log");
    let p = Running::logged(
        clean_command("/usr/bin/python3")
            .args(["-c", script])
            .arg(&data),
        &log,
        true,
    );
    let first = std::fs::read_to_string(&log).unwrap();
    let nums: Vec<u64> = first
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    let (cow, hidden) = (nums[0], nums[1]);
    let mut sink = VecSink::default();
    let o = dump(p.pid, &running(), &mut sink).unwrap();
    let in_cow: Vec<u64> = sink
        .pages
        .iter()
        .map(|(a, _)| *a)
        .filter(|a| (cow..cow + 8 * 4096).contains(a))
        .collect();
    assert_eq!(
        in_cow,
        vec![cow + 2 * 4096],
        "only the written page of the private file mapping"
    );
    let page = &sink
        .pages
        .iter()
        .find(|(a, _)| *a == cow + 2 * 4096)
        .unwrap()
        .1;
    assert!(page.starts_with(b"changedf"));
    let v = o.process.vmas.iter().find(|v| v.start == cow).unwrap();
    assert_eq!(v.kind, VmaKind::File);
    assert!(!v.shared);
    assert!(o.stats.pages_file >= 7, "{:?}", o.stats);
    let page = &sink
        .pages
        .iter()
        .find(|(a, _)| *a == hidden)
        .expect("PROT_NONE page copied")
        .1;
    assert!(page.starts_with(b"hidden"));
    let v = o.process.vmas.iter().find(|v| v.start == hidden).unwrap();
    assert_eq!(v.prot, 0);
}

#[test]
fn refuses_a_process_in_its_own_pid_namespace() {
    // Its init is killed with unshare (--kill-child) and reaped here, not left a zombie.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut u = Running::logged(
        clean_command("unshare").args([
            "--pid",
            "--fork",
            "--kill-child",
            "sh",
            "-c",
            "echo ready; exec sleep 60",
        ]),
        &dir.path().join("ns.log"),
        true,
    );
    let inner = haul::proc::children(u.pid)
        .unwrap()
        .into_iter()
        .next()
        .expect("unshare's child");
    assert_eq!(
        refusal(inner),
        format!(
            "pid {inner} lives in another PID namespace (it is pid 1 there): namespaces are not supported yet"
        )
    );
    let _ = u.child.kill();
    let _ = u.child.wait();
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(inner), None);
}

#[test]
fn refuses_a_file_lease_naming_the_fd_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("leased");
    std::fs::write(&file, "x").unwrap();
    let script = format!(
        "import fcntl, time\nf = open({file:?})\nfcntl.fcntl(f, fcntl.F_SETLEASE, fcntl.F_RDLCK)\nprint('ready', flush=True)\ntime.sleep(60)"
    );
    let p = Running::logged(
        clean_command("/usr/bin/python3").args(["-c", &script]),
        &dir.path().join("py.log"),
        true,
    );
    let (fd, _) = fd_list(p.pid)
        .into_iter()
        .find(|(_, t)| t.ends_with("leased"))
        .unwrap();
    let msg = refusal(p.pid);
    assert!(
        msg.starts_with(&format!("pid {} fd {fd}: a LEASE ", p.pid))
            && msg.ends_with(&format!("lock on {} is not supported yet", file.display())),
        "{msg}"
    );
}

#[test]
fn haul_dump_check_says_whether_a_process_can_be_checkpointed_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("c.log");
    let c = Running::logged(
        clean_command(fixture("counter")).arg(&log),
        &dir.path().join("out"),
        true,
    );
    let maps_before = maps_text(c.pid);
    let out = common::haul()
        .args(["dump", "--check", "--pid", &c.pid.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("pid {} can be checkpointed (1 thread, 4 fds)\n", c.pid)
    );
    assert_eq!(maps_text(c.pid), maps_before);
    assert_eq!(common::tracer_pid(c.pid), Some(0));
    let n = read_numbers(&log).len();
    assert!(wait_for(Duration::from_secs(5), || read_numbers(&log)
        .len()
        > n + 3));

    // A process with a pipe to another one: refused with the reason, exit 1.
    let p = Running::ready(clean_command(fixture("counter")).arg(dir.path().join("p.log")));
    let out = common::haul()
        .args(["dump", "--check", "--json", "--pid", &p.pid.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["checkpointable"], false, "{v}");
    assert!(v["reasons"][0]
        .as_str()
        .unwrap()
        .contains("leads to another process"));
}

#[test]
fn haul_dump_check_lists_every_reason_in_text_and_json() {
    // A child, a half-closed TCP connection, and stdout a pipe to the test: three reasons.
    let script = "import socket,subprocess,time\nl=socket.create_server(('127.0.0.1',0))\ns=socket.create_connection(l.getsockname())\nc,_=l.accept()\nc.shutdown(socket.SHUT_WR)\ns.recv(1)\nk=subprocess.Popen(['sleep','60'])\nprint('ready',flush=True)\ntime.sleep(60)";
    let p = Running::ready(clean_command(common::python3()).args(["-c", script]));
    let kids = || common::children_of(p.pid);
    assert!(wait_for(Duration::from_secs(10), || !kids().is_empty()));
    let pid = p.pid.to_string();
    let out = common::haul()
        .args(["dump", "--check", "--json", "--pid", &pid])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["checkpointable"], false, "{v}");
    let reasons: Vec<&str> = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let has = |what: &str| reasons.iter().any(|r| r.contains(what));
    // The child is part of the tree now: its own reasons are listed, naming it.
    let child = kids()[0];
    assert!(has(&format!("pid {child} fd ")), "{reasons:#?}");
    assert!(
        has("(CLOSE-WAIT): only established connections are carried"),
        "{reasons:#?}"
    );
    assert!(has("leads to another process"), "{reasons:#?}");

    let text = common::haul()
        .args(["dump", "--check", "--pid", &pid])
        .output()
        .unwrap();
    assert_eq!(text.status.code(), Some(1), "{text:?}");
    let lines = String::from_utf8_lossy(&text.stdout);
    assert!(
        lines.starts_with(&format!("pid {pid} cannot be checkpointed:\n")),
        "{lines}"
    );
    for r in &reasons {
        assert!(
            lines.contains(&format!("  {r}\n")),
            "{r} missing from {lines}"
        );
    }
    // A real dump refuses with all of them too, and touches nothing.
    let dump = common::haul()
        .args(["dump", "--leave-running", "--pid", &pid, "--store"])
        .arg(tempfile::tempdir().unwrap().path().join("s"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&dump.stderr);
    assert_eq!(dump.status.code(), Some(1), "{err}");
    assert!(reasons.iter().all(|r| err.contains(r)), "{err}");
    assert_eq!(common::tracer_pid(p.pid), Some(0));
}

#[test]
fn signals_that_arrive_while_frozen_all_reach_the_process_after_leave_running_dumps() {
    // Real-time signals queue (none merges with another), so every one sent must be received
    // once, with the sender's siginfo. They are sent all through twenty dumps, so many arrive
    // while the process is frozen. haul once took such a signal off the queue while passing
    // the threads through an interrupt and gave it back to PTRACE_DETACH, which drops it from
    // that stop, and sent the others again itself (another siginfo); and it held back one
    // met at its delivery stop while the freeze began, sent again with haul's siginfo. Sent
    // every 50 µs, so that the freeze meets some.
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("sig.log");
    let p = Running::logged(&mut clean_command(fixture("sigcount")), &log, true);
    let pid = p.pid;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                haul::sys::process::kill(pid, libc::SIGRTMIN()).expect("send SIGRTMIN");
                sent += 1;
                std::thread::sleep(Duration::from_micros(50));
            }
            sent
        })
    };
    for i in 0..20 {
        let out = common::haul()
            .args([
                "dump",
                "--leave-running",
                "--pid",
                &pid.to_string(),
                "--store",
            ])
            .arg(tmp.path().join("store"))
            .output()
            .unwrap();
        assert!(out.status.success(), "dump {i}: {out:?}");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let last = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .last()
            .map(str::to_string)
            .unwrap_or_default()
    };
    let want = format!("{sent} 0");
    assert!(
        wait_for(Duration::from_secs(20), || last() == want),
        "sent {sent} signals; the process received (count, with another siginfo): {}",
        last()
    );
}
