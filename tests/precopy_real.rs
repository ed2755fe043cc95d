//! Pre-copy on a real program nobody here wrote: `haul run` pre-dumps a python3 loop while it
//! runs, dumps it, restores it, and the loop goes on with exactly the right values.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{haul, wait_for};

const PY_LOOP: &str = r#"
import sys, time
d = {}
big = []
n = 0
f = open(sys.argv[1], "a", buffering=1)
print("ready", flush=True)
while True:
    n += 1
    d[n % 1000] = n * n
    big.append(bytes([n % 251]) * 20000)
    f.write(f"{n} {sum(d.values())}\n")
    time.sleep(0.01)
"#;

fn rows(p: &Path) -> Vec<(i64, i64)> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn haul_run_precopies_a_python_loop_and_the_restored_loop_goes_on_exactly() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("loop.py");
    std::fs::write(&script, PY_LOOP).unwrap();
    let out = dir.path().join("py.out");
    let job = dir.path().join("py.toml");
    std::fs::write(
        &job,
        format!(
            r#"[process]
command = ["{py}", "{script}", "{out}"]
ready = {{ stdout_line = "ready" }}
[predump]
interval = "150ms"
max_iterations = 3
stop_below = "1B"
[dump]
leave_running = false
[restore]
mode = "eager"
pid = "same"
"#,
            py = common::python3().display(),
            script = script.display(),
            out = out.display()
        ),
    )
    .unwrap();
    let o = haul().args(["run", "--plain"]).arg(&job).output().unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let report = std::fs::read_dir(dir.path().join("reports"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    let pid = r["restored_pid"].as_i64().unwrap() as i32;
    assert_eq!(r["pid"], r["restored_pid"]);
    assert_eq!(
        r["predump"]["iterations"].as_array().unwrap().len(),
        3,
        "{r}"
    );
    assert_eq!(r["predump"]["tracker"], "uffd-wp");
    // The final dump carried the pages the last pre-dump had and that did not change since.
    assert!(r["pages_skipped_parent"].as_u64().unwrap() > 0, "{r}");
    assert!(
        r["pages_written"].as_u64().unwrap() < r["pages_skipped_parent"].as_u64().unwrap(),
        "{r}"
    );

    let before = rows(&out).len();
    let grew = wait_for(Duration::from_secs(10), || rows(&out).len() >= before + 30);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    assert!(grew, "the restored python loop does not write");
    let mut d = std::collections::HashMap::new();
    for (i, row) in rows(&out).iter().enumerate() {
        let n = i as i64 + 1;
        d.insert(n % 1000, n * n);
        assert_eq!(
            *row,
            (n, d.values().sum::<i64>()),
            "line {n} (restored after line {before})"
        );
    }
}
