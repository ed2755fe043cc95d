//! Restore end to end: real fixture processes are dumped, stopped, and rebuilt; the restored
//! process must continue exactly (counters without gap or repeat, same PID, same memory).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{fixture, read_numbers, wait_for, MemSource};
use haul::dump::{dump, DumpOptions, VecSink};
use haul::image::{is_zero_page, ImageSet, PageId, PageRef, PageTable, SetKind};
use haul::restore::{restore, PidChoice, RestoreOptions, Step};

/// Dumps `pid` (killing it) into memory and returns the image set and its page source.
fn dump_to_memory(pid: i32) -> (ImageSet, MemSource) {
    let mut sink = VecSink::default();
    let out = dump(
        pid,
        &DumpOptions {
            leave_running: false,
            ..Default::default()
        },
        &mut sink,
    )
    .expect("dump");
    let mut table = PageTable::new();
    let mut pages = HashMap::new();
    for (addr, page) in sink.pages {
        if is_zero_page(&page) {
            table.insert(addr, PageRef::Zero);
        } else {
            let id = PageId::of(&page);
            table.insert(addr, PageRef::Stored(id));
            pages.insert(id, page);
        }
    }
    let set = ImageSet {
        id: "test-set".into(),
        job: "test".into(),
        created_us: 0,
        kind: SetKind::Dump,
        parent: None,
        kernel: haul::util::kernel_release(),
        process: Some(out.process),
        tree: Default::default(),
        pages: table,
        figures: Default::default(),
    };
    (set, MemSource { pages })
}

/// Makes this test process the reaper of orphans, so restored processes (re-parented away from
/// the restorer) become our children and can be reaped: this machine's init does not reap.
fn adopt_orphans() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

/// Kills and reaps a restored process.
fn finish(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
}

fn start_counter(log: &Path) -> std::process::Child {
    let mut cmd = Command::new(fixture("counter"));
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    let child = cmd
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || read_numbers(log).len() >= 5),
        "counter did not count"
    );
    child
}

/// Numbers must be 1, 2, 3, ... with no gap and no repeat.
fn assert_consecutive(n: &[u64]) {
    for (i, v) in n.iter().enumerate() {
        assert_eq!(
            *v,
            i as u64 + 1,
            "gap or repeat at line {}: {:?}",
            i + 1,
            &n[i.saturating_sub(3)..(i + 3).min(n.len())]
        );
    }
}

#[test]
fn restored_counter_continues_without_gap_or_repeat_under_same_pid() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("counter.log");
    let mut child = start_counter(&log);
    let pid = child.id() as i32;
    let (set, src) = dump_to_memory(pid);
    child.wait().unwrap();
    let before = read_numbers(&log).len();

    let out = restore(&set, &src, &common::verified(PidChoice::Same)).expect("restore");
    assert_eq!(out.pid, pid, "restored under another pid");
    assert!(out.pages_restored > 0);
    let grew = wait_for(Duration::from_secs(10), || {
        read_numbers(&log).len() >= before + 20
    });
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    finish(pid);
    assert!(grew, "restored counter does not count; maps:\n{maps}");
    assert_consecutive(&read_numbers(&log));
}

#[test]
fn restore_is_refused_while_the_original_runs_and_any_pid_works() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("counter.log");
    let mut child = start_counter(&log);
    let pid = child.id() as i32;
    let (set, src) = dump_to_memory(pid);
    child.wait().unwrap();

    // Something else holds the pid: a restore under the same pid is refused, nothing is created.
    let mut blocker = Command::new("sleep").arg("30").spawn().unwrap();
    let comm = format!("/proc/{}/comm", blocker.id());
    assert!(wait_for(
        Duration::from_secs(5),
        || std::fs::read_to_string(&comm).unwrap_or_default().trim() == "sleep"
    ));
    let mut held = set.clone();
    let hp = held.process.as_mut().unwrap();
    hp.pid = blocker.id() as i32;
    hp.threads[0].tid = hp.pid;
    let e = restore(&held, &src, &RestoreOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("pid {} is in use (by sleep)", blocker.id())),
        "{e}"
    );
    blocker.kill().unwrap();
    blocker.wait().unwrap();

    let out = restore(&set, &src, &common::verified(PidChoice::Any)).expect("restore --pid any");
    let before = read_numbers(&log).len();
    let grew = wait_for(Duration::from_secs(10), || {
        read_numbers(&log).len() >= before + 10
    });
    finish(out.pid);
    assert!(grew);
    assert_consecutive(&read_numbers(&log));
}

#[test]
fn failure_at_each_restore_step_kills_the_half_built_process_and_names_the_step() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("counter.log");
    let mut child = start_counter(&log);
    let pid = child.id() as i32;
    let (set, src) = dump_to_memory(pid);
    child.wait().unwrap();
    for step in Step::ALL {
        let e = restore(
            &set,
            &src,
            &RestoreOptions {
                fail_at: Some(step),
                ..Default::default()
            },
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("at step {step}: failed on purpose")),
            "{msg}"
        );
        // Nothing is left behind: the pid is free again once the half-built process is reaped.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "step {step}: pid {pid} left behind"
        );
    }
    // And the set still restores after all those failures.
    let before = read_numbers(&log).len();
    let out = restore(&set, &src, &common::verified(PidChoice::Same)).expect("restore");
    let grew = wait_for(Duration::from_secs(10), || {
        read_numbers(&log).len() >= before + 10
    });
    finish(out.pid);
    assert!(grew);
    assert_consecutive(&read_numbers(&log));
}

#[test]
fn verify_state_names_what_the_restore_changed_and_kills_the_process_before_it_runs() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("counter.log");
    let mut child = start_counter(&log);
    let pid = child.id() as i32;
    let (set, src) = dump_to_memory(pid);
    child.wait().unwrap();
    let before = read_numbers(&log).len();
    let observed = &set.process.as_ref().unwrap().observed;
    let umask = observed["thread 0 Umask"].clone();
    assert_eq!(observed["thread 0 comm"], "counter", "{observed:?}");

    // A restore that gives back another umask than the one recorded (as a restore that lost
    // the attribute would): the state check names it, and the process never runs.
    let mut changed = set.clone();
    changed.process.as_mut().unwrap().umask = 0o077;
    let e = restore(&changed, &src, &common::verified(PidChoice::Same)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("thread 0 Umask: was \"{umask}\", now \"0077\"")),
        "{msg}"
    );
    assert!(msg.contains("killed before it ran"), "{msg}");
    assert!(
        !msg.contains("Uid") && !msg.contains("map ") && !msg.contains("fd "),
        "only the umask differs: {msg}"
    );
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} left behind"
    );
    assert_eq!(read_numbers(&log).len(), before, "the process ran");

    // The image as dumped restores, checked, and counts on.
    let out = restore(&set, &src, &common::verified(PidChoice::Same)).expect("restore");
    let grew = wait_for(Duration::from_secs(10), || {
        read_numbers(&log).len() >= before + 10
    });
    finish(out.pid);
    assert!(grew);
    assert_consecutive(&read_numbers(&log));
}

#[test]
fn verify_state_refuses_an_image_that_recorded_no_state_before_creating_anything() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("counter.log");
    let mut child = start_counter(&log);
    let pid = child.id() as i32;
    let (mut set, src) = dump_to_memory(pid);
    child.wait().unwrap();
    // As an image made by a haul that did not record the state.
    set.process.as_mut().unwrap().observed.clear();
    let e = restore(&set, &src, &common::verified(PidChoice::Same))
        .unwrap_err()
        .to_string();
    assert!(e.contains("records no state to compare with"), "{e}");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} was created"
    );
    // Without the check it restores.
    let out = restore(&set, &src, &RestoreOptions::default()).expect("restore");
    finish(out.pid);
}
