//! Never harm the target: `haul dump` killed with SIGKILL at random moments leaves the process
//! running, untraced, with its mappings, fds and registers intact (its counter goes on); a dump
//! that kills the process (`--kill`, migration) kills it only once its image set is committed,
//! so a full disk or a killed haul never loses it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixture, haul, next_random as next, read_numbers, wait_for};

/// The counter: killed and reaped when the test ends, whichever way.
struct Target(std::process::Child);

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigkill_of_haul_dump_at_random_moments_leaves_the_target_intact() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("counter.log");
    let store = dir.path().join("store");
    let mut cmd = Command::new(fixture("counter"));
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    // stderr too: a pipe inherited from the test harness would make the target undumpable.
    let mut target = Target(
        cmd.arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = target.0.id() as i32;
    assert!(wait_for(Duration::from_secs(10), || read_numbers(&log)
        .len()
        > 3));
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();

    // How long a whole dump takes here, so the kills land all over it.
    let t = Instant::now();
    let st = haul()
        .args([
            "dump",
            "--leave-running",
            "--pid",
            &pid.to_string(),
            "--store",
        ])
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let whole = t.elapsed().as_micros() as u64;

    let mut seed = common::seed("sigkill_of_haul_dump_at_random_moments_leaves_the_target_intact");
    for round in 0..20 {
        let delay = Duration::from_micros(next(&mut seed) % (whole + 1));
        let mut d = haul()
            .args([
                "dump",
                "--leave-running",
                "--pid",
                &pid.to_string(),
                "--store",
            ])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = d.kill();
        let _ = d.wait();

        let what =
            format!("round {round}, killed after {delay:?} of a {whole} µs dump (seed above)");
        assert!(
            wait_for(Duration::from_secs(5), || common::tracer_pid(pid)
                == Some(0)
                && !matches!(common::proc_state(pid), Some('T' | 't'))),
            "{what}: pid {pid} left traced or stopped"
        );
        let now = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert_eq!(
            now, maps,
            "{what}: mappings changed (a scratch page left behind?)"
        );
        let before = read_numbers(&log).len();
        assert!(
            wait_for(Duration::from_secs(5), || read_numbers(&log).len()
                > before + 2),
            "{what}: the counter stopped"
        );
        assert!(
            target.0.try_wait().unwrap().is_none(),
            "{what}: the target died"
        );
    }
    let n = read_numbers(&log);
    for (i, v) in n.iter().enumerate() {
        assert_eq!(*v, i as u64 + 1, "gap or repeat at line {}", i + 1);
    }
    // Whatever the killed dumps left in the store is not listed and verify passes.
    let out = haul()
        .args(["images", "verify", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Runs `haul images ls --json` on `store` and returns the sets listed.
fn sets_in(store: &std::path::Path) -> Vec<serde_json::Value> {
    let out = haul()
        .args(["images", "ls", "--json", "--store"])
        .arg(store)
        .output()
        .unwrap();
    if !store.join("sets").exists() {
        return Vec::new();
    }
    assert!(
        out.status.success(),
        "images ls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap_or_default()
}

/// A memwriter (a third of its pages random, so they do not compress) logging to `dir`.
fn memwriter(dir: &std::path::Path, mib: u32) -> common::Running {
    common::Running::logged(
        common::clean_command(fixture("memwriter"))
            .args([mib.to_string(), "0".to_string()])
            .arg(dir.join("mw.out")),
        &dir.join("mw.log"),
        true,
    )
}

#[test]
fn dump_kill_into_a_full_store_leaves_the_process_running_with_its_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = match common::Tmpfs::mount(&dir.path().join("small"), "20m") {
        Ok(t) => t,
        Err(why) => {
            return common::skip(
                "dump_kill_into_a_full_store_leaves_the_process_running_with_its_memory",
                &why,
            )
        }
    };
    // 256 MiB of which a third is random: far more than 20 MiB compressed.
    let m = memwriter(dir.path(), 256);
    let out = dir.path().join("mw.out");
    let (t1, sum1) = common::memwriter_report(m.pid, &out, 0);
    let st = haul()
        .args(["dump", "--kill", "--pid", &m.pid.to_string(), "--store"])
        .arg(&store.path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&st.stderr);
    assert_eq!(st.status.code(), Some(1), "{err}");
    assert!(
        err.contains("No space left") || err.contains("no space left"),
        "the error should say the disk is full: {err}"
    );
    assert!(
        !err.contains("went away"),
        "the error must not blame the process: {err}"
    );
    // Alive, untraced, running, with the same memory.
    assert!(common::alive(m.pid), "the process was killed: {err}");
    assert!(
        wait_for(Duration::from_secs(5), || common::tracer_pid(m.pid)
            == Some(0)
            && !matches!(common::proc_state(m.pid), Some('T' | 't'))),
        "pid {} left traced or stopped",
        m.pid
    );
    let (t2, sum2) = common::memwriter_report(m.pid, &out, t1);
    assert!(t2 > t1, "its ticks go on");
    assert_eq!(sum1, sum2, "its memory changed");
    assert!(
        sets_in(&store.path).is_empty(),
        "a failed dump committed a set"
    );
}

#[test]
fn sigkill_of_haul_and_its_worker_during_dump_kill_never_loses_the_process() {
    let name = "sigkill_of_haul_and_its_worker_during_dump_kill_never_loses_the_process";
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut seed = common::seed(name);

    // How long a whole `--kill` dump of this process takes here.
    let whole = {
        let sub = dir.path().join("probe");
        std::fs::create_dir_all(&sub).unwrap();
        let m = memwriter(&sub, 64);
        let t = Instant::now();
        let st = haul()
            .args([
                "dump",
                "--kill",
                "--name",
                "probe",
                "--pid",
                &m.pid.to_string(),
                "--store",
            ])
            .arg(&store)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        t.elapsed().as_micros() as u64
    };

    let (mut killed_with_set, mut survived) = (0, 0);
    for round in 0..10 {
        let sub = dir.path().join(format!("r{round}"));
        std::fs::create_dir_all(&sub).unwrap();
        let mut m = memwriter(&sub, 64);
        let job = format!("round{round}");
        // From a quarter of the dump on: the freeze, the write and the commit.
        let delay = Duration::from_micros(whole / 4 + next(&mut seed) % (whole + 1));
        let mut d = haul()
            .args([
                "dump",
                "--kill",
                "--name",
                &job,
                "--pid",
                &m.pid.to_string(),
                "--store",
            ])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        // The worker first (it holds the ptrace session), then haul itself.
        for w in common::children_of(d.id() as i32) {
            let _ = haul::sys::process::kill(w, libc::SIGKILL);
        }
        let _ = d.kill();
        let _ = d.wait();
        let what =
            format!("round {round}, killed after {delay:?} of a {whole} µs dump (seed above)");

        // Wait until the process is either gone or running free again.
        let mut dead = false;
        assert!(
            wait_for(Duration::from_secs(10), || {
                dead = m.child.try_wait().unwrap().is_some();
                dead || (common::tracer_pid(m.pid) == Some(0)
                    && !matches!(common::proc_state(m.pid), Some('T' | 't')))
            }),
            "{what}: pid {} left traced or stopped",
            m.pid
        );
        let sets: Vec<_> = sets_in(&store)
            .into_iter()
            .filter(|s| s["job"] == job.as_str())
            .collect();
        if dead {
            assert_eq!(
                sets.len(),
                1,
                "{what}: the process is dead but no image set of it was committed"
            );
            killed_with_set += 1;
        } else {
            // A process the worker had just killed (after the commit) may still have been
            // exiting when looked at: it is dead if it ends now; else it runs free and
            // reports.
            let out = sub.join("mw.out");
            let pid = m.pid;
            let child = &mut m.child;
            let mut died = false;
            let report = common::memwriter_report_unless(pid, &out, 0, || {
                died = child.try_wait().unwrap().is_some();
                died
            });
            match report {
                Some((t1, _)) => {
                    common::memwriter_report(pid, &out, t1);
                    survived += 1;
                }
                None if died => {
                    assert_eq!(
                        sets.len(),
                        1,
                        "{what}: the process died (it was exiting when first looked at) but \
                         no image set of it was committed"
                    );
                    killed_with_set += 1;
                }
                None => panic!("{what}: memwriter pid {pid} runs free but did not report"),
            }
        }
    }
    eprintln!(
        "{name}: {killed_with_set} killed after their set was committed, {survived} left running"
    );
    let out = haul()
        .args(["images", "verify", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
