//! Progress of a command's long operation (`runner::progress::Activity`): timestamped lines on
//! a stderr that is not a terminal once it takes more than a second, none with `--quiet`.

mod common;

use common::haul;
use std::net::TcpListener;

/// `haul images pull` from a server that accepts the connection and never answers: it waits
/// out its `--timeout` (longer than a second, so the progress shows) and fails.
fn pull_from_a_silent_server(extra: &[&str]) -> (Option<i32>, String, u16) {
    // Connections queue in the listen backlog; nothing ever reads or answers them.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let from = format!("127.0.0.1:{port}");
    let out = haul()
        .args(["images", "--store"])
        .arg(dir.path().join("store"))
        .args(["pull", "job-1", "--from", &from, "--timeout", "3s"])
        .args(extra)
        .output()
        .unwrap();
    drop(silent);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        port,
    )
}

#[test]
fn a_long_operation_says_what_it_does_on_timestamped_lines_unless_quiet() {
    let (code, err, port) = pull_from_a_silent_server(&[]);
    assert_eq!(code, Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.ends_with(&format!(" pull job-1: from 127.0.0.1:{port}")))
        .unwrap_or_else(|| panic!("no progress line: {err}"));
    // `<RFC 3339 time> what: step`.
    let ts = line.split(' ').next().unwrap();
    assert!(
        humantime::parse_rfc3339(ts).is_ok(),
        "not a timestamp: {ts:?} in {line:?}"
    );
    // It failed: main says why, the progress adds no final line.
    assert!(err.contains("haul: "), "{err}");
    assert!(!err.contains("took"), "{err}");

    let (code, err, _) = pull_from_a_silent_server(&["--quiet"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains("pull job-1:"), "--quiet: {err}");
    assert!(err.contains("haul: "), "the error still shows: {err}");
}

#[test]
fn a_pre_copy_dump_shows_each_pre_dump_as_the_worker_commits_it() {
    // A python that writes to every page of 4 MiB twenty times a second.
    let dir = tempfile::tempdir().unwrap();
    let script = "import time\nb=bytearray(4<<20)\nprint('ready',flush=True)\n\
                  while True:\n for i in range(0,len(b),4096): b[i]=(b[i]+1)%256\n time.sleep(0.05)\n";
    let p = common::Running::logged(
        common::clean_command(common::python3()).args(["-c", script]),
        &dir.path().join("py.log"),
        true,
    );
    let dump = |extra: &[&str]| {
        let out = haul()
            .args([
                "dump",
                "--leave-running",
                "--predump",
                "2",
                "--interval",
                "1500ms",
            ])
            .args(["--stop-below", "0", "--pid", &p.pid.to_string(), "--store"])
            .arg(dir.path().join("store"))
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        err
    };
    // Past a second the current step shows, then each new one: both pre-dumps (the first is
    // committed within the first second, the second 1.5 s after it), then the final dump.
    let err = dump(&[]);
    let steps: Vec<&str> = err
        .lines()
        .filter_map(|l| l.split_once(&format!(" dump of pid {}: ", p.pid)))
        .map(|(_, step)| step)
        .collect();
    let at = |what: &str| steps.iter().position(|s| s.starts_with(what));
    let (one, two, last) = (
        at("pre-dump 1 committed: "),
        at("pre-dump 2 committed: "),
        at("final dump after 2 pre-dumps (stopped: max_iterations)"),
    );
    assert!(
        matches!((one, two, last), (Some(a), Some(b), Some(c)) if a < b && b < c),
        "{err}"
    );
    // The pages the python wrote between the two pre-dumps: all 1,024 of its buffer.
    let written: u64 = steps[two.unwrap()]
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", steps[two.unwrap()]));
    assert!(written >= 1024, "{}", steps[two.unwrap()]);
    assert!(common::alive(p.pid));
    let err = dump(&["--quiet"]);
    assert!(!err.contains("pre-dump"), "--quiet: {err}");
}
