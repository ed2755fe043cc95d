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
