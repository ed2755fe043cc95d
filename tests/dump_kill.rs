//! Never harm the target: `haul dump` killed with SIGKILL at random moments leaves the process
//! running, untraced, with its mappings, fds and registers intact (its counter goes on).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixture, haul, read_numbers, wait_for};

/// A small xorshift so the moments vary from run to run but need no crate.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

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

    let mut seed = 0x9e3779b97f4a7c15u64 ^ std::process::id() as u64;
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

        let what = format!("round {round}, killed after {delay:?} of a {whole} µs dump");
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
