//! `--json` end to end: each command's JSON parsed from a real run, its fields checked against
//! what the test knows on its own (the job names it wrote, where it put the error, the set that
//! `images ls` lists, the refusals it provoked), and every document's `schema` (docs/json.md).

mod common;

use common::tree::Session;
use common::{clean_command, fixture, haul, Running};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Writes `dir/<file>.toml` for a job named `name` that launches the counter and dumps it.
fn counter_job(dir: &Path, file: &str, name: &str) -> PathBuf {
    let p = dir.join(format!("{file}.toml"));
    std::fs::write(
        &p,
        format!(
            "name = \"{name}\"\n[process]\ncommand = [{:?}, \"{{run_dir}}/c.log\"]\n\
             ready = {{ stdout_line = \"ready\" }}\n[store]\npath = \"store\"\n\
             [report]\ndir = \"reports\"\n",
            fixture("counter").display().to_string()
        ),
    )
    .unwrap();
    p
}

/// A job file with an unknown key on a line the test chooses, indented: returns the file and
/// the line and column (1-based) where the key starts, found in the text as written.
fn invalid_job(dir: &Path) -> (PathBuf, usize, usize) {
    let p = dir.join("broken.toml");
    let text =
        "name = \"broken\"\n[process]\ncommand = [\"/bin/true\"]\n\n[store]\n   no_such_key = 1\n";
    std::fs::write(&p, text).unwrap();
    let (i, l) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("no_such_key"))
        .unwrap();
    (p, i + 1, l.find("no_such_key").unwrap() + 1)
}

/// Each line of `out` as JSON.
fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `haul ARGS` run in `dir`: (exit code, stdout, stderr).
fn haul_in(dir: &Path, args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = haul().current_dir(dir).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), out.stdout, err)
}

/// stdout of `haul ARGS` in `dir` parsed as one JSON document; the command must exit `code`.
fn doc(dir: &Path, args: &[&str], code: i32) -> Value {
    let (rc, out, err) = haul_in(dir, args);
    assert_eq!(rc, code, "haul {args:?}: {err}");
    serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!(
            "haul {args:?}: not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out)
        )
    })
}

#[test]
fn check_json_gives_each_file_its_job_and_each_error_its_line_and_column() {
    let s = Session::start();
    let good = counter_job(s.path(), "good", "alpha");
    let (bad, line, column) = invalid_job(s.path());
    let (rc, out, err) = haul_in(
        s.path(),
        &[
            "check",
            "--json",
            good.to_str().unwrap(),
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(rc, 2, "an invalid file exits 2 with --json too: {err}");
    let v = json_lines(&out);
    assert_eq!(v.len(), 2, "one line per file: {v:?}");
    for o in &v {
        assert_eq!(o["schema"], "haul/check/1", "{o}");
    }
    // In the order given.
    assert_eq!(v[0]["file"], good.to_str().unwrap());
    assert_eq!(v[0]["job"], "alpha");
    assert_eq!(v[0]["valid"], true);
    assert_eq!(v[0]["errors"], serde_json::json!([]));
    assert_eq!(v[1]["file"], bad.to_str().unwrap());
    assert_eq!(v[1]["valid"], false);
    assert!(v[1]["job"].is_null(), "{}", v[1]);
    let errors = v[1]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e["file"], bad.to_str().unwrap());
    assert_eq!(e["line"], line as u64, "{e}");
    assert_eq!(e["column"], column as u64, "{e}");
    assert_eq!(e["field"], "store.no_such_key", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("unknown key"),
        "{e}"
    );

    // Every file valid: exit 0.
    let (rc, out, err) = haul_in(s.path(), &["check", "--json", good.to_str().unwrap()]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(json_lines(&out).len(), 1);
}

#[test]
fn run_json_gives_a_line_per_job_whose_figures_are_its_report_and_its_set_the_stores() {
    let s = Session::start();
    let one = counter_job(s.path(), "one", "first");
    let two = counter_job(s.path(), "two", "second");
    let (bad, _, _) = invalid_job(s.path());
    let files = [&one, &two, &bad].map(|p| p.to_str().unwrap().to_string());
    let mut args = vec!["run", "--json", "-j", "1"];
    args.extend(files.iter().map(String::as_str));
    let (rc, out, err) = haul_in(s.path(), &args);
    assert_eq!(rc, 2, "an invalid file decides the exit code: {err}");
    // The progress went to stderr, stdout is JSON only.
    assert!(err.contains("first: ok"), "{err}");
    let v = json_lines(&out);
    assert_eq!(v.len(), 3, "{v:?}");
    let by_job = |name: &str| {
        v.iter()
            .find(|o| o["job"] == name)
            .unwrap_or_else(|| panic!("no line for {name}: {v:?}"))
    };

    let b = by_job("broken");
    assert_eq!(b["schema"], "haul/run/1");
    assert_eq!(b["outcome"], "invalid");
    assert_eq!(b["exit_code"], 2);
    assert!(b["report"].is_null());
    assert!(b["error"].as_str().unwrap().contains("no_such_key"), "{b}");

    let listed = doc(s.path(), &["images", "--store", "store", "ls", "--json"], 0);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for (name, file) in [("first", &one), ("second", &two)] {
        let o = by_job(name);
        assert_eq!(o["schema"], "haul/run/1");
        assert_eq!(o["outcome"], "ok", "{o}");
        assert_eq!(o["exit_code"], 0);
        assert!(o["error"].is_null());
        assert_eq!(o["file"], file.to_str().unwrap());
        // The figures are the report's.
        let report_path = o["report"].as_str().unwrap();
        let report: Value = serde_json::from_slice(&std::fs::read(report_path).unwrap()).unwrap();
        assert_eq!(report["job"], name);
        for f in [
            "run",
            "pid",
            "processes",
            "duration_us",
            "frozen_time",
            "freezing_time",
            "memdump_time",
            "pages_scanned",
            "pages_written",
        ] {
            assert_eq!(o[f], report[f], "{f}: {o}");
        }
        assert!(o["frozen_time"].as_u64().unwrap() > 0, "{o}");
        assert_eq!(o["set"], report["store"]["set"]);
        assert_eq!(o["bytes_new"], report["store"]["bytes_new"]);
        // The set is the one the store lists for the job, of the process the report names.
        let set = listed
            .iter()
            .find(|r| r["job"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {listed:?}"));
        assert_eq!(set["schema"], "haul/images-ls/1");
        assert_eq!(o["set"], set["id"], "{o}\n{set}");
        assert_eq!(o["pid"], set["pid"]);
        assert_eq!(set["state"], "ok");

        // images show and verify of that set say the same.
        let id = set["id"].as_str().unwrap();
        let show = doc(
            s.path(),
            &["images", "--store", "store", "show", id, "--json"],
            0,
        );
        assert_eq!(show["schema"], "haul/images-show/1");
        assert_eq!(show["id"], id);
        assert_eq!(show["job"], name);
        let verify = doc(
            s.path(),
            &["images", "--store", "store", "verify", id, "--json"],
            0,
        );
        assert_eq!(verify["schema"], "haul/images-verify/1");
        assert_eq!(verify["ok"], true);
        assert_eq!(verify["sets_checked"], 1);
        assert_eq!(verify["pages_checked"], set["figures"]["pages"]);
    }
    let du = doc(s.path(), &["images", "--store", "store", "du", "--json"], 0);
    assert_eq!(du["schema"], "haul/images-du/1");
    assert_eq!(du["sets"], 2);
}

#[test]
fn report_json_is_the_run_report_and_a_history_is_an_array_of_them() {
    let s = Session::start();
    let job = counter_job(s.path(), "hist", "hist");
    for _ in 0..2 {
        let (rc, _, err) = haul_in(s.path(), &["run", job.to_str().unwrap()]);
        assert_eq!(rc, 0, "{err}");
    }
    let reports = s.path().join("reports");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");

    // One report: the object of the file, every field of it the same, and the schema.
    let written: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    let printed = doc(
        s.path(),
        &["report", "--json", files[0].to_str().unwrap()],
        0,
    );
    assert_eq!(printed["schema"], "haul/report/1");
    for (k, want) in written.as_object().unwrap() {
        assert_eq!(&printed[k], want, "{k}");
    }

    // The history: an array, a report per run, in the order they ran.
    let history = reports.join("history.jsonl");
    let printed = doc(
        s.path(),
        &["report", "--json", history.to_str().unwrap()],
        0,
    );
    let runs = printed.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{printed}");
    // Run ids within one second sort by their random suffix: match the files by run id.
    let written: Vec<Value> = files
        .iter()
        .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
        .collect();
    for r in runs {
        assert_eq!(r["schema"], "haul/report/1");
        assert_eq!(r["job"], "hist");
        let w = written
            .iter()
            .find(|w| w["run"] == r["run"])
            .unwrap_or_else(|| panic!("{} is no report file's run", r["run"]));
        assert_eq!(r["frozen_time"], w["frozen_time"]);
        assert_eq!(r["started_us"], w["started_us"]);
    }
    assert!(
        runs[0]["started_us"].as_u64() <= runs[1]["started_us"].as_u64(),
        "oldest first: {printed}"
    );
}

#[test]
fn dump_check_json_lists_every_refusal_and_dump_json_names_the_set_ls_lists() {
    let s = Session::start();
    // Two refusals the test makes: stdout a pipe to the test, and a pidfd (stderr goes to
    // /dev/null, not to the test's pipe, which would be a third).
    let script =
        "import os,time\nx=os.pidfd_open(os.getpid())\nprint('ready',flush=True)\ntime.sleep(60)";
    let p = Running::ready(
        clean_command(common::python3())
            .args(["-c", script])
            .stderr(std::process::Stdio::null()),
    );
    let pid = p.pid.to_string();
    let pidfd = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|l| std::fs::read_link(l).is_ok_and(|t| t.to_string_lossy().contains("pidfd")))
        .and_then(|l| l.file_name()?.to_str()?.parse::<i32>().ok())
        .expect("the pidfd in /proc/PID/fd");
    let v = doc(s.path(), &["dump", "--check", "--json", "--pid", &pid], 1);
    assert_eq!(v["schema"], "haul/dump-check/1");
    assert_eq!(v["pid"], p.pid);
    assert_eq!(v["checkpointable"], false);
    let reasons: Vec<&str> = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:#?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with(&format!("pid {pid} fd 1: pipe:["))
                && r.contains("leads to another process")),
        "{reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with(&format!("pid {pid} fd {pidfd}: ")) && r.contains("(pidfd)")),
        "{reasons:#?}"
    );
    drop(p);

    // A process that can be checkpointed: yes, then a real dump whose set the store lists.
    let log = s.path().join("c.log");
    let c = Running::logged(
        clean_command(fixture("counter")).arg(&log),
        &s.path().join("out"),
        true,
    );
    let pid = c.pid.to_string();
    let v = doc(s.path(), &["dump", "--check", "--json", "--pid", &pid], 0);
    assert_eq!(v["schema"], "haul/dump-check/1");
    assert_eq!(v["checkpointable"], true);
    assert_eq!(v["reasons"], serde_json::json!([]));
    assert_eq!(v["pids"], serde_json::json!([c.pid]));
    let d = doc(
        s.path(),
        &[
            "dump",
            "--leave-running",
            "--json",
            "--pid",
            &pid,
            "--store",
            "store",
            "--name",
            "counted",
        ],
        0,
    );
    assert_eq!(d["schema"], "haul/dump/1");
    assert_eq!(d["job"], "counted");
    assert_eq!(d["pid"], c.pid);
    let listed = doc(s.path(), &["images", "--store", "store", "ls", "--json"], 0);
    assert_eq!(listed[0]["id"], d["set"], "{listed}\n{d}");
    assert_eq!(listed[0]["job"], "counted");
    assert_eq!(d["figures"]["pages"], listed[0]["figures"]["pages"]);
}
