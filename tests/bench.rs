//! `haul bench store|precopy|lazy` run for real on tiny images: what they leave in the
//! directory they are given, what they say while they run, and the sizes they refuse. The
//! figures themselves are not asserted (speed is never asserted in tests).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{haul, repo};

/// Every file under `dir` with its content.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(dir).unwrap().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// A directory the user might well point `--dir` at: files of their own in it.
fn user_dir(root: &Path) -> std::path::PathBuf {
    let dir = root.join("scratch");
    std::fs::create_dir_all(dir.join("keep/nested")).unwrap();
    std::fs::write(dir.join("sentinel"), b"do not delete me").unwrap();
    std::fs::write(dir.join("keep/nested/data"), b"mine too").unwrap();
    dir
}

fn run_bench(args: &[&str], dir: &Path) -> std::process::Output {
    haul()
        .current_dir(repo())
        .arg("bench")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .unwrap()
}

/// `bench store --dir DIR` used to delete DIR with everything in it, before and after.
#[test]
fn bench_store_keeps_what_was_in_its_dir_and_reports_as_it_goes() {
    let root = tempfile::tempdir().unwrap();
    let dir = user_dir(root.path());
    let before = snapshot(&dir);
    let o = run_bench(&["store", "--size", "1MiB"], &dir);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        snapshot(&dir),
        before,
        "bench store changed {}",
        dir.display()
    );
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(left.len(), 2, "its work directory is gone: {left:?}");
    // Progress while it runs: stderr is not a terminal here, so plain lines, one per step.
    for step in [
        "bench store: prewarming",
        "write level 1, run 1 of 3",
        "write level 3, run 3 of 3",
        "random page reads",
        "sequential read",
    ] {
        assert!(
            stderr.contains(step),
            "no progress line {step:?}:\n{stderr}"
        );
    }
    // A verdict for each target, and the tally.
    let verdicts: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("PASS ") || l.trim_start().starts_with("FAIL "))
        .collect();
    assert!(verdicts.len() >= 5, "{stdout}");
    for what in [
        "store growth",
        "cold random page read, p99",
        "sequential read",
    ] {
        assert!(
            verdicts.iter().any(|l| l.contains(what)),
            "no verdict for {what}:\n{stdout}"
        );
    }
    assert!(stdout.contains("targets met"), "{stdout}");
    assert!(!stdout.contains("NaN"), "{stdout}");
}

/// `bench store --size 0` printed ratios of "xNaN": a size too small to measure is bad input.
#[test]
fn bench_refuses_a_size_too_small_to_measure() {
    let root = tempfile::tempdir().unwrap();
    for what in ["store", "precopy", "lazy"] {
        for size in ["0", "4KiB"] {
            let o = run_bench(&[what, "--size", size], root.path());
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert_eq!(
                o.status.code(),
                Some(2),
                "bench {what} --size {size}: {stderr}"
            );
            assert!(
                stderr.contains("--size") && stderr.contains("too small"),
                "bench {what} --size {size}: {stderr}"
            );
            assert!(!String::from_utf8_lossy(&o.stdout).contains("NaN"));
        }
    }
    // The library refuses too (and never divides by zero).
    let opts = haul::bench::store::BenchOptions {
        dir: root.path().to_path_buf(),
        size: 0,
        ..Default::default()
    };
    let e = haul::bench::store::run_bench(&opts).unwrap_err();
    assert!(e.to_string().contains("too small"), "{e}");
}

/// `bench precopy --dir DIR` used to delete DIR with everything in it.
#[test]
fn bench_precopy_keeps_what_was_in_its_dir() {
    let root = tempfile::tempdir().unwrap();
    let dir = user_dir(root.path());
    let before = snapshot(&dir);
    let o = run_bench(
        &[
            "precopy",
            "--size",
            "1MiB",
            "--runs",
            "1",
            "--predumps",
            "1",
            "--interval",
            "50ms",
        ],
        &dir,
    );
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        snapshot(&dir),
        before,
        "bench precopy changed {}",
        dir.display()
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
}

/// `bench lazy --dir DIR` used to delete DIR with everything in it.
#[test]
fn bench_lazy_keeps_what_was_in_its_dir() {
    let root = tempfile::tempdir().unwrap();
    let dir = user_dir(root.path());
    let before = snapshot(&dir);
    let o = run_bench(&["lazy", "--size", "1MiB", "--runs", "1"], &dir);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        snapshot(&dir),
        before,
        "bench lazy changed {}",
        dir.display()
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
}

/// A `--dir` that does not exist yet is made for the run and gone again afterwards; `--quiet`
/// leaves stderr without progress.
#[test]
fn bench_store_removes_a_dir_it_made() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("new/deeper");
    let o = run_bench(&["store", "--size", "1MiB", "--quiet"], &dir);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // --quiet: none of the progress lines the test above sees without it.
    assert!(
        !stderr.contains("bench store:"),
        "progress despite --quiet:\n{stderr}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("targets met"));
    assert!(!dir.exists());
    assert!(
        root.path().join("new").is_dir(),
        "only the directory it made goes"
    );
}

/// `bench migrate` runs real migrations (`haul run`, `pid = "same"`) of the pause writer: each
/// path's report carries its pause as a timeline of back-to-back phases, and haul never claims
/// a pause the process did not see (the workload's own longest gap between ticks covers it).
/// The restored processes are gone afterwards, and the directory is left as it was.
#[test]
fn bench_migrate_times_each_path_as_the_process_saw_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = user_dir(root.path());
    let before = snapshot(&dir);
    let o = run_bench(
        &[
            "migrate",
            "--size",
            "16MiB",
            "--runs",
            "1",
            "--json",
            "--path",
            "full",
            "--path",
            "precopy-lazy",
            "--path",
            "checkpoint",
        ],
        &dir,
    );
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let paths = r["paths"].as_array().unwrap();
    let names: Vec<&str> = paths.iter().map(|p| p["path"].as_str().unwrap()).collect();
    assert_eq!(names, ["full", "precopy-lazy", "checkpoint"]);
    for p in paths {
        let run = &p["runs"][0];
        let seen = run["pause_us"].as_u64().unwrap();
        let t = &run["timeline"];
        let pause = t["pause_us"].as_u64().unwrap();
        let phases = t["phases"].as_array().unwrap();
        let names: Vec<&str> = phases.iter().map(|x| x["name"].as_str().unwrap()).collect();
        let want: &[&str] = match p["path"].as_str().unwrap() {
            // haul launched the writer: a checkpoint forks it (`dump.snapshot`).
            "checkpoint" => &["freeze", "state", "fork", "copy", "thaw"],
            _ => &[
                "freeze", "state", "copy", "write", "commit", "kill", "reap", "handover",
            ],
        };
        assert!(names.starts_with(want), "{}: {names:?}", p["path"]);
        if p["path"] != "checkpoint" {
            assert!(
                names.ends_with(&["load", "release", "restore"]),
                "{}: {names:?}",
                p["path"]
            );
        }
        // Back to back from the freeze to running.
        let mut at = 0;
        for x in phases {
            assert_eq!(x["start_us"].as_u64().unwrap(), at, "{t}");
            at += x["duration_us"].as_u64().unwrap();
        }
        assert_eq!(at, pause, "{t}");
        // The process printed nothing while haul says it was paused (a few ms of slack: the
        // restored process may print before haul marks it running).
        assert!(
            seen + 5_000 >= pause,
            "{}: the process saw a {seen} µs gap, haul claims {pause} µs",
            p["path"]
        );
    }
    assert_eq!(
        snapshot(&dir),
        before,
        "bench migrate changed {}",
        dir.display()
    );
    assert!(
        !std::process::Command::new("pgrep")
            .args(["-f", "pausewriter 16"])
            .status()
            .unwrap()
            .success(),
        "a pause writer outlived the benchmark"
    );
}
