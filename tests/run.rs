//! `haul run` and `haul check` end to end: real job files, real processes, real reports.

mod common;

use common::{fixture, haul, read_numbers, wait_for};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Writes a job file `name.toml` into `dir` and returns its path.
fn job(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, body).unwrap();
    p
}

fn counter_job(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let counter = fixture("counter");
    job(
        dir,
        name,
        &format!(
            "[process]\ncommand = [\"{}\", \"{{run_dir}}/counter.log\"]\nready = {{ stdout_line = \"ready\" }}\n{extra}",
            counter.display()
        ),
    )
}

fn reports(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join("reports")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            out.push(serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap());
        }
    }
    out
}

#[test]
fn run_launches_waits_ready_and_writes_report() {
    let dir = tempfile::tempdir().unwrap();
    let j = counter_job(dir.path(), "count", "[process.env]\nLC_ALL = \"C\"\n");
    let out = haul().args(["run", "--plain"]).arg(&j).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("count: ok (report "), "{stdout}");

    let r = &reports(dir.path())[0];
    assert_eq!(r["job"], "count");
    assert_eq!(r["outcome"], "ok");
    assert!(r["frozen_time"].as_u64().unwrap() > 0, "{r}");
    assert!(r["pages_written"].as_u64().unwrap() > 0, "{r}");
    let stages: Vec<&str> = r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["launch", "ready", "dump"]);
    // The set is in the job's store and reads back intact.
    let set = r["store"]["set"].as_str().unwrap();
    let store = dir.path().join("haul-store");
    let out = haul()
        .args(["images", "verify"])
        .arg(set)
        .arg("--store")
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The run dir holds the process's own output: the counter started counting from 1.
    let run_dir = PathBuf::from(r["run_dir"].as_str().unwrap());
    let n = read_numbers(&run_dir.join("counter.log"));
    assert_eq!(n.first(), Some(&1), "{n:?}");
    assert!(std::fs::read_to_string(run_dir.join("stdout.log"))
        .unwrap()
        .contains("ready"));
    // The dump stopped the process (dump.leave_running defaults to false).
    assert!(!common::alive(r["pid"].as_i64().unwrap() as i32));
    // And the history got one line.
    let hist = std::fs::read_to_string(dir.path().join("reports/history.jsonl")).unwrap();
    assert_eq!(hist.lines().count(), 1);
}

#[test]
fn run_with_bad_command_fails_that_job_and_runs_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let bad = job(
        dir.path(),
        "bad",
        "[process]\ncommand = [\"/nonexistent/program\"]\n",
    );
    let good = counter_job(dir.path(), "good", "");
    let out = haul()
        .args(["run", "--plain", "-j", "1"])
        .arg(&bad)
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("bad: failed: launch: cannot launch /nonexistent/program")
            || stdout.contains("bad: failed: cannot launch /nonexistent/program"),
        "{stdout}"
    );
    assert!(stdout.contains("good: ok"), "{stdout}");
}

#[test]
fn run_with_missing_pid_or_garbage_pidfile_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    // The highest pid the kernel can hand out, plus one, never exists.
    let pid_max: i64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let nopid = job(
        dir.path(),
        "nopid",
        &format!("[process]\npid = {}\n", pid_max - 1),
    );
    std::fs::write(dir.path().join("garbage.pid"), "hello\n").unwrap();
    let garbage = job(
        dir.path(),
        "garbage",
        "[process]\npidfile = \"garbage.pid\"\n",
    );
    let out = haul()
        .args(["run", "--plain"])
        .arg(&nopid)
        .arg(&garbage)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("pid {}: no such process", pid_max - 1)),
        "{stdout}"
    );
    assert!(
        stdout.contains("garbage.pid: expected a process id, found \"hello\""),
        "{stdout}"
    );
}

#[test]
fn second_run_of_a_locked_job_says_so_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let j = counter_job(dir.path(), "busy", "");
    let locks = dir.path().join("reports/.locks");
    std::fs::create_dir_all(&locks).unwrap();
    let f = std::fs::File::create(locks.join("busy.lock")).unwrap();
    let _held = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let out = haul().args(["run", "--plain"]).arg(&j).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("busy: skipped (locked)"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("job busy is already running"));
}

#[test]
fn sigterm_to_runner_stops_launched_process_and_writes_report() {
    let dir = tempfile::tempdir().unwrap();
    // Ready never comes (the file is never created), so the runner is waiting when we signal it.
    let j = counter_job(dir.path(), "waiting", "").to_path_buf();
    let body = std::fs::read_to_string(&j)
        .unwrap()
        .replace("{ stdout_line = \"ready\" }", "{ file = \"never\" }");
    std::fs::write(&j, body).unwrap();
    let mut child = haul()
        .args(["run", "--plain"])
        .arg(&j)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the counter to be counting: its log appears in the run dir.
    let reports_dir = dir.path().join("reports");
    let started = wait_for(Duration::from_secs(10), || {
        std::fs::read_dir(&reports_dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().is_dir() && !read_numbers(&e.path().join("counter.log")).is_empty())
    });
    assert!(started, "counter never started");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(130));
    let r = &reports(dir.path())[0];
    assert_eq!(r["outcome"], "interrupted");
    let pid = r["pid"].as_i64().unwrap() as i32;
    assert!(!common::alive(pid), "launched process {pid} still runs");
}

#[test]
fn check_reports_each_file_and_fails_on_an_invalid_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = counter_job(dir.path(), "good", "");
    let bad = job(
        dir.path(),
        "bad",
        "[process]\ncommand = [\"x\"]\n[predump]\ninterval = \"fast\"\n",
    );
    let out = haul().arg("check").arg(&good).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("good.toml: ok"), "{stdout}");
    assert!(stdout.contains("bad.toml: invalid"), "{stdout}");
    assert!(
        stdout.contains("expected a duration like \"1s\", found \"fast\""),
        "{stdout}"
    );
    let out = haul().arg("check").arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn report_command_renders_a_run_and_a_history() {
    let dir = tempfile::tempdir().unwrap();
    let j = counter_job(dir.path(), "rep", "");
    assert!(haul()
        .args(["run", "-q"])
        .arg(&j)
        .status()
        .unwrap()
        .success());
    assert!(haul()
        .args(["run", "-q"])
        .arg(&j)
        .status()
        .unwrap()
        .success());
    let out = haul()
        .arg("report")
        .arg(dir.path().join("reports/history.jsonl"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("rep ")).count(),
        2,
        "{text}"
    );
    let one = std::fs::read_dir(dir.path().join("reports"))
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .unwrap();
    let out = haul().arg("report").arg(one.path()).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("job rep  run "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn store_keep_prunes_older_sets_of_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let j = counter_job(dir.path(), "kept", "[store]\nkeep = 2\n");
    for _ in 0..3 {
        let out = haul().args(["run", "-q"]).arg(&j).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = haul()
        .args(["images", "ls", "--json", "--job", "kept", "--store"])
        .arg(dir.path().join("haul-store"))
        .output()
        .unwrap();
    let sets: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sets.len(), 2, "{sets:?}");
    // The newest run's report names what it pruned.
    let mut reps = reports(dir.path());
    reps.sort_by_key(|r| r["started_us"].as_u64().unwrap());
    let pruned = reps
        .iter()
        .map(|r| r["store"]["pruned"].as_array().unwrap().len())
        .sum::<usize>();
    assert_eq!(pruned, 1);
}

// ---- the examples in jobs/, run for real ----

/// A child killed and reaped when dropped, whose first stdout line was read.
struct FirstLine {
    child: std::process::Child,
    line: String,
}

impl FirstLine {
    fn start(cmd: &mut std::process::Command) -> FirstLine {
        use std::io::BufRead;
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(|l| l.ok()).unwrap_or_default());
            for _ in lines {}
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        FirstLine { child, line }
    }
}

impl Drop for FirstLine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every example job in jobs/ runs end to end with `haul run` and ends `ok`, every stage ok.
/// They run from a copy of jobs/ in a temp folder (with `fixtures` linked beside it, as in the
/// repository), so nothing is written into the repository; what a job's comment says to do
/// first is done first: attach.toml gets a counter and its pidfile, migrate-remote.toml a page
/// server (on a free port and with the token in the temp folder instead of 127.0.0.1:7411 and
/// /tmp/haul-token, so that nothing else on the machine can collide with it).
#[test]
fn every_example_job_runs() {
    let counter = fixture("counter");
    let top = tempfile::tempdir().unwrap();
    let top = top.path();
    std::os::unix::fs::symlink(common::repo().join("fixtures"), top.join("fixtures")).unwrap();
    std::fs::create_dir(top.join("jobs")).unwrap();
    let token = top.join("haul-token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(common::repo().join("jobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    // In name order: migrate-remote's page server serves the store the jobs before it made.
    files.sort();
    assert!(files.len() >= 8, "{files:?}");
    let mut leftovers = Leftovers::default();
    for src in &files {
        let file = src.file_name().unwrap().to_str().unwrap();
        let copy = top.join("jobs").join(file);
        std::fs::copy(src, &copy).unwrap();
        let mut attached = None;
        let mut server = None;
        match file {
            "attach.toml" => {
                // mkdir -p runs && fixtures/bin/counter runs/attached.log > /dev/null &
                // echo $! > runs/counter.pid
                std::fs::create_dir_all(top.join("runs")).unwrap();
                let log = top.join("runs/attached.log");
                let mut cmd = common::clean_command(&counter);
                // Its stderr would be the test's pipe, which a checkpoint refuses (at a
                // terminal it would be the terminal).
                cmd.arg(&log)
                    .current_dir(top)
                    .stderr(std::process::Stdio::null());
                let c = common::Running::spawn(&mut cmd);
                assert!(
                    wait_for(Duration::from_secs(10), || !read_numbers(&log).is_empty()),
                    "the counter to attach to never started"
                );
                std::fs::write(top.join("runs/counter.pid"), format!("{}\n", c.pid)).unwrap();
                attached = Some((c, log));
            }
            "migrate-remote.toml" => {
                let s = FirstLine::start(
                    haul()
                        .args(["page-server", "--listen", "127.0.0.1:0"])
                        .args(["--store", "haul-store", "--job", "migrate-remote"])
                        .arg("--token-file")
                        .arg(&token)
                        .current_dir(top),
                );
                let addr = s
                    .line
                    .strip_prefix("listening on ")
                    .unwrap_or_else(|| panic!("page server said {:?}", s.line))
                    .to_string();
                let text = std::fs::read_to_string(&copy).unwrap();
                assert!(text.contains("\"127.0.0.1:7411\"") && text.contains("/tmp/haul-token"));
                let text = text
                    .replace("\"127.0.0.1:7411\"", &format!("\"{addr}\""))
                    .replace("/tmp/haul-token", token.to_str().unwrap());
                std::fs::write(&copy, text).unwrap();
                server = Some(s);
            }
            _ => {}
        }

        let out = haul()
            .args(["run", "--plain"])
            .arg(&copy)
            .current_dir(top)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = stdout
            .split_once("(report ")
            .and_then(|(_, r)| r.split_once(')'))
            .map(|(r, _)| PathBuf::from(r));
        let r: Option<serde_json::Value> = report
            .as_ref()
            .and_then(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok());
        for key in ["pid", "restored_pid"] {
            if let Some(pid) = r.as_ref().and_then(|r| r[key].as_i64()) {
                if common::alive(pid as i32)
                    && attached.as_ref().is_none_or(|(c, _)| c.pid != pid as i32)
                {
                    leftovers.0.push(pid as i32);
                }
            }
        }
        assert!(
            out.status.success(),
            "{file}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = r.unwrap_or_else(|| panic!("{file}: no report in {stdout}"));
        assert_eq!(r["outcome"], "ok", "{file}: {r}");
        for s in r["stages"].as_array().unwrap() {
            assert_eq!(s["ok"], true, "{file}: {s}");
        }
        // What the job promises about its process afterwards.
        if let Some((c, log)) = &attached {
            assert_eq!(r["pid"].as_i64(), Some(i64::from(c.pid)), "{file}: {r}");
            let n = read_numbers(log).len();
            assert!(
                wait_for(Duration::from_secs(10), || read_numbers(log).len() > n),
                "{file}: the attached counter stopped counting"
            );
        }
        if let Some(pid) = r["restored_pid"].as_i64() {
            assert!(common::alive(pid as i32), "{file}: restored {pid} is gone");
        }
        drop(server);
    }
}

// ---- waits end, paths fail plainly ----

/// Runs `haul run --plain JOB` in `dir` and returns (exit code, stdout + stderr).
fn run_plain(dir: &Path, j: &Path) -> (Option<i32>, String) {
    let out = haul()
        .args(["run", "--plain"])
        .arg(j)
        .current_dir(dir)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// Processes a test leaves running (restored or left running by a job): killed when dropped,
/// also when an assertion fails first.
#[derive(Default)]
struct Leftovers(Vec<i32>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
    }
}

#[test]
fn ready_file_that_never_appears_fails_after_ready_timeout_and_frees_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let j = counter_job(dir.path(), "late", "");
    let body = std::fs::read_to_string(&j).unwrap().replace(
        "{ stdout_line = \"ready\" }",
        "{ file = \"never\", timeout = \"1s\" }",
    );
    std::fs::write(&j, body).unwrap();
    let (code, text) = run_plain(dir.path(), &j);
    assert_eq!(code, Some(1), "{text}");
    let r = &reports(dir.path())[0];
    assert_eq!(r["outcome"], "failed");
    let want = format!(
        "ready.file {} did not appear within 1s (ready.timeout)",
        dir.path().join("never").display()
    );
    assert!(r["errors"][0].as_str().unwrap().contains(&want), "{r}");
    let ready = &r["stages"].as_array().unwrap()[1];
    assert_eq!(
        (&ready["name"], &ready["ok"]),
        (&"ready".into(), &false.into())
    );
    let pid = r["pid"].as_i64().unwrap() as i32;
    assert!(!common::alive(pid), "launched process {pid} still runs");
    // The lock went with the run: the next one runs (and fails the same way), not exit 3.
    let (code, text) = run_plain(dir.path(), &j);
    assert_eq!(code, Some(1), "{text}");
}

#[test]
fn verify_is_not_held_by_a_background_child_keeping_its_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let j = counter_job(
        dir.path(),
        "bg",
        "[dump]\nleave_running = true\n[restore]\npid = \"any\"\n[verify]\n\
         command = [\"sh\", \"-c\", \"sleep 1000 & echo $! > {run_dir}/bg.pid; echo OK\"]\n\
         expect_stdout = \"OK\"\ntimeout = \"2s\"\n",
    );
    let mut child = haul()
        .args(["run", "--plain"])
        .arg(&j)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut leftovers = Leftovers::default();
    // Not a speed check: the run must end at all (it used to wait for the sleep to end).
    let ended = wait_for(Duration::from_secs(120), || {
        child.try_wait().unwrap().is_some()
    });
    let runs: Vec<PathBuf> = std::fs::read_dir(dir.path().join("reports"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.ends_with(".locks"))
        .collect();
    let bg: Option<i32> = runs
        .iter()
        .find_map(|run| std::fs::read_to_string(run.join("bg.pid")).ok())
        .and_then(|p| p.trim().parse().ok());
    leftovers.0.extend(bg);
    if !ended {
        let _ = child.kill();
        let _ = child.wait();
        // No report names them: whatever runs with this test's folder in its command line.
        let mine = dir.path().to_str().unwrap().to_string();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&mine) {
                leftovers.0.push(pid);
            }
        }
    }
    let r = reports(dir.path()).into_iter().next();
    for key in ["pid", "restored_pid"] {
        if let Some(pid) = r.as_ref().and_then(|r| r[key].as_i64()) {
            leftovers.0.push(pid as i32);
        }
    }
    assert!(
        ended,
        "haul run is still waiting for the verify command's output"
    );
    let r = r.expect("a report");
    assert_eq!(r["outcome"], "ok", "{r}");
    assert_eq!(r["verify"]["passed"], true, "{r}");
    let bg = bg.expect("the verify command wrote its background child's pid");
    assert!(
        wait_for(Duration::from_secs(10), || !common::alive(bg)),
        "the verify command's background child {bg} was left running"
    );
}

#[test]
fn missing_cwd_is_named_instead_of_blaming_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let j = job(
        dir.path(),
        "nocwd",
        "[process]\ncommand = [\"sleep\", \"10\"]\ncwd = \"{run_dir}/nope/deeper\"\n",
    );
    let (code, text) = run_plain(dir.path(), &j);
    assert_eq!(code, Some(1), "{text}");
    let r = &reports(dir.path())[0];
    let want = format!(
        "cannot launch sleep: its working directory {}/nope/deeper (process.cwd) does not exist",
        r["run_dir"].as_str().unwrap()
    );
    assert!(text.contains(&want), "{text}");
    assert_eq!(r["errors"][0].as_str(), Some(want.as_str()), "{r}");
}

#[test]
fn a_history_that_is_a_folder_at_run_time_is_said_plainly() {
    let dir = tempfile::tempdir().unwrap();
    // A placeholder hides it from check: only the run can find the folder in the way.
    std::fs::create_dir(dir.path().join("h-hist")).unwrap();
    let j = counter_job(dir.path(), "hist", "[report]\nhistory = \"h-{job}\"\n");
    let (code, text) = run_plain(dir.path(), &j);
    assert_eq!(code, Some(1), "{text}");
    let r = &reports(dir.path())[0];
    let want = format!(
        "hist: failed: the job ran, but its report {}/reports/hist-{}.json was written but not \
         added to the history: open history {}/h-hist: Is a directory",
        dir.path().display(),
        r["run"].as_str().unwrap(),
        dir.path().display()
    );
    assert!(text.contains(&want), "{text}");
    assert!(!text.contains("Ok;") && !text.contains("Some("), "{text}");
}

#[test]
fn a_report_dir_that_is_a_file_at_run_time_says_no_report_was_written() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rd-nodir"), "").unwrap();
    let j = counter_job(dir.path(), "nodir", "[report]\ndir = \"rd-{job}\"\n");
    let (code, text) = run_plain(dir.path(), &j);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("nodir: failed: create ") && text.contains("; no report was written"),
        "{text}"
    );
}

#[test]
fn report_dir_alone_puts_the_history_inside_it() {
    let dir = tempfile::tempdir().unwrap();
    let j = counter_job(dir.path(), "rd", "[report]\ndir = \"elsewhere\"\n");
    let (code, text) = run_plain(dir.path(), &j);
    assert_eq!(code, Some(0), "{text}");
    let hist = std::fs::read_to_string(dir.path().join("elsewhere/history.jsonl")).unwrap();
    assert_eq!(hist.lines().count(), 1);
    assert!(!dir.path().join("reports").exists());
}

/// What `haul run` would refuse for the job file alone, `haul check` refuses too, naming the
/// field; and the run refuses it the same way, before anything starts.
#[test]
fn check_refuses_what_run_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("adir")).unwrap();
    std::fs::write(dir.path().join("afile"), "").unwrap();
    let long = "a".repeat(300);
    let cases = [
        (
            "growth",
            "[predump]\nstop_growth = inf\n",
            "predump.stop_growth",
        ),
        (
            "nan",
            "[predump]\nstop_growth = nan\n",
            "predump.stop_growth",
        ),
        (
            "keep",
            "[store]\nkeep = 99999999999999999999\n",
            "store.keep",
        ),
        ("hist", "[report]\nhistory = \"adir\"\n", "report.history"),
        ("store", "[store]\npath = \"afile\"\n", "store.path"),
        ("under", "[store]\npath = \"afile/s\"\n", "store.path"),
        ("rdir", "[report]\ndir = \"afile\"\n", "report.dir"),
        ("quiet", "stdout = \"null\"\n", "process.stdout"),
        ("out", "stdout = \"adir\"\n", "process.stdout"),
        ("long", &format!("name = \"{long}\"\n"), "name"),
    ];
    for (name, extra, field) in cases {
        // `name` is a top-level key: it goes before [process].
        let j = if let Some(n) = extra.strip_prefix("name = ") {
            let p = counter_job(dir.path(), name, "");
            let body = std::fs::read_to_string(&p).unwrap();
            std::fs::write(&p, format!("name = {n}{body}")).unwrap();
            p
        } else {
            counter_job(dir.path(), name, extra)
        };
        let out = haul().arg("check").arg(&j).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{name}: {text}");
        let file = j.display().to_string();
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&file) && l.contains(&format!(": {field}: "))),
            "{name}: {text}"
        );
        let (code, text) = run_plain(dir.path(), &j);
        assert_eq!(code, Some(2), "{name}: {text}");
    }
    assert!(!dir.path().join("reports").exists());
}

#[test]
fn verify_state_fails_the_run_naming_what_the_restore_did_not_give_back() {
    // Everything /proc shows is carried or refused, so the test builds the difference: the
    // test-only HAUL_TEST_TAMPER=umask has the restore give back umask 077, as a restore that
    // lost the umask would. The state check must say so instead of passing.
    let dir = tempfile::tempdir().unwrap();
    let j = job(
        dir.path(),
        "cg",
        &format!(
            r#"[process]
command = ["sh", "-c", "umask 022 && exec {counter} {{run_dir}}/counter.log"]
ready = {{ stdout_line = "ready" }}

[restore]
pid = "same"

[verify]
command = ["true"]
state = true
"#,
            counter = fixture("counter").display()
        ),
    );
    let out = haul()
        .args(["run", "--plain"])
        .arg(&j)
        .env("HAUL_TEST_TAMPER", "umask")
        .output()
        .unwrap();
    let r = &reports(dir.path())[0];
    let pid = r["pid"].as_i64().unwrap_or(0) as i32;
    let gone = wait_for(Duration::from_secs(5), || !common::alive(pid));
    assert_eq!(out.status.code(), Some(1), "{r}");
    let v = &r["verify"];
    assert_eq!(v["passed"], false, "{r}");
    assert_eq!(v["state"], true, "{r}");
    let diffs: Vec<&str> = v["state_differences"]
        .as_array()
        .unwrap_or_else(|| panic!("no state_differences: {r}"))
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(
        diffs
            .iter()
            .any(|d| d.ends_with("Umask: was \"0022\", now \"0077\"")),
        "{diffs:?}"
    );
    let stages: Vec<(&str, bool)> = r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["ok"].as_bool().unwrap()))
        .collect();
    assert!(stages.contains(&("restore", false)), "{stages:?}");
    assert!(r["restored_pid"].is_null(), "{r}");
    // Killed (before it ran).
    assert!(gone, "the restored process {pid} is still alive");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("differs from the image"), "{stdout}");
}

#[test]
fn a_helper_that_left_the_tree_but_kept_its_process_group_does_not_block_the_same_pid() {
    // The job's process leads its process group. A double-forked helper of the shell that
    // started it leaves the tree, but not the group; it exits and, orphaned, becomes a zombie
    // of haul (a subreaper). A zombie keeps its group, so the job's pid stays taken after the
    // dump killed the job until haul reaps that zombie too: the restore under the same pid
    // failed with "clone3 with set_tid: File exists".
    let dir = tempfile::tempdir().unwrap();
    let j = job(
        dir.path(),
        "grp",
        &format!(
            r#"[process]
command = ["sh", "-c", "( (sleep 0.1; echo x > {{run_dir}}/helper) & ); exec {counter} {{run_dir}}/counter.log"]
ready = {{ file = "{{run_dir}}/helper" }}

[restore]
pid = "same"

[verify]
command = ["true"]
"#,
            counter = fixture("counter").display()
        ),
    );
    let out = haul().args(["run", "--plain"]).arg(&j).output().unwrap();
    let r = &reports(dir.path())[0];
    let restored = r["restored_pid"].as_i64().unwrap_or(0) as i32;
    let _leftovers = Leftovers(vec![restored].into_iter().filter(|&p| p > 0).collect());
    assert_eq!(out.status.code(), Some(0), "{r}");
    assert_eq!(r["outcome"], "ok", "{r}");
    assert_eq!(restored, r["pid"].as_i64().unwrap() as i32, "{r}");
}

/// `haul run` of a launched process that rewrites its memory without pause
/// (`fixtures/wavewriter.c`), checkpointed with `leave_running`: the memory comes from a fork
/// of it made under the freeze (the report counts its pages), the restored copy goes on
/// checking every page of the image against the wave it must hold (it exits 3 on a torn page),
/// and by the time the verify command runs, haul holds no dead fork.
#[test]
fn a_checkpoint_read_from_a_fork_restores_the_memory_of_the_freeze() {
    let dir = tempfile::tempdir().unwrap();
    let wave = fixture("wavewriter");
    // The verify command: the restored copy has made 5 passes (5 writes) and runs, no page was
    // torn, and no child of haul's is a zombie. (Braces doubled: haul's placeholders.)
    let verify = "p={pid}; log={run_dir}/wave.log; \
                  until [ \"$(awk '/^syscw/ {{print $2}}' /proc/$p/io)\" -ge 5 ]; do \
                  kill -0 $p || {{ echo \"restored copy $p is gone\"; exit 1; }}; sleep 0.01; done; \
                  ! grep -m1 torn $log || exit 1; \
                  for c in $(cat /proc/$PPID/task/*/children); do \
                  [ \"$(awk '{{print $3}}' /proc/$c/stat)\" != Z ] || {{ echo \"zombie child $c\"; exit 1; }}; done; \
                  echo OK";
    let j = job(
        dir.path(),
        "wave",
        &format!(
            "[process]\ncommand = [\"{}\", \"64\"]\nstdout = \"{{run_dir}}/wave.log\"\n\
             ready = {{ stdout_line = \"ready\" }}\n\
             [dump]\nleave_running = true\n[restore]\npid = \"any\"\n[verify]\n\
             command = [\"sh\", \"-c\", \"{}\"]\nexpect_stdout = \"OK\"\ntimeout = \"60s\"\n\
             [store]\npath = \"{}\"\n[report]\ndir = \"{}\"\n",
            wave.display(),
            verify.replace('\\', "\\\\").replace('"', "\\\""),
            dir.path().join("store").display(),
            dir.path().join("reports").display(),
        ),
    );
    let (r, stderr) = run_once(dir.path(), &j);
    assert_eq!(r["outcome"], "ok", "{r}\n{stderr}");
    assert_eq!(r["verify"]["passed"], true, "{r}");
    assert!(
        r["pages_from_snapshot"].as_u64().unwrap() >= (64 << 20) / 4096,
        "{r}"
    );
}

/// The report of the only run of `j` (run with `haul run --plain`), after killing whatever it
/// left running (the process, its restored copy).
fn run_once(dir: &Path, j: &Path) -> (serde_json::Value, String) {
    let out = haul().args(["run", "--plain"]).arg(j).output().unwrap();
    let r = reports(dir).into_iter().next().expect("a report");
    for key in ["pid", "restored_pid"] {
        if let Some(pid) = r[key].as_i64() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    (r, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A job that stops the wave writer (64 MiB: it gets a memory keeper) and restores it with its
/// pid, comparing its state with the image (`[verify] state`); the verify command waits for 5
/// more passes of the restored copy and fails on a torn page (a page not of the pass its
/// neighbours are in: memory not of one instant). `extra` goes into `[restore]`; `predump`
/// before `[dump]`.
fn stopped_wave_job(dir: &Path, predump: &str, extra: &str) -> PathBuf {
    let wave = fixture("wavewriter");
    let verify = "p={pid}; log={run_dir}/wave.log; \
                  n=$(awk '/^syscw/ {{print $2}}' /proc/$p/io); \
                  until [ \"$(awk '/^syscw/ {{print $2}}' /proc/$p/io)\" -ge $((n + 5)) ]; do \
                  kill -0 $p || {{ echo \"restored copy $p is gone\"; exit 1; }}; sleep 0.01; done; \
                  ! grep -m1 torn $log || exit 1; echo OK";
    job(
        dir,
        "wave",
        &format!(
            "[process]\ncommand = [\"{}\", \"64\"]\nstdout = \"{{run_dir}}/wave.log\"\n\
             ready = {{ stdout_line = \"ready\" }}\n{predump}\
             [dump]\nleave_running = false\n[restore]\npid = \"same\"\n{extra}[verify]\n\
             state = true\ncommand = [\"sh\", \"-c\", \"{}\"]\nexpect_stdout = \"OK\"\n\
             timeout = \"60s\"\n[store]\npath = \"{}\"\n[report]\ndir = \"{}\"\n",
            wave.display(),
            verify.replace('\\', "\\\\").replace('"', "\\\""),
            dir.join("store").display(),
            dir.join("reports").display(),
        ),
    )
}

/// Issue #16: a process stopped by its dump and restored on the same host with its pid takes
/// its memory over from its memory keeper: no page is written again, the restored state is
/// the image's (`[verify] state`), and the memory is the one instant the set holds (the wave
/// writer finds no torn page over 5 more passes). With `adopt_memory = false` the same job
/// writes every page from the set, and passes the same checks. After pre-dumps (their
/// userfaultfd tracking gone before the restore adopts the memory) as without. Either way the
/// set verifies (`haul images verify`).
#[test]
fn a_stopped_process_restored_on_this_host_runs_on_the_memory_its_set_was_read_from() {
    let predump = "[predump]\ninterval = \"50ms\"\nmax_iterations = 2\n";
    for (predump, extra, adopted) in [
        ("", "", true),
        ("", "adopt_memory = false\n", false),
        (predump, "", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let j = stopped_wave_job(dir.path(), predump, extra);
        let (r, stderr) = run_once(dir.path(), &j);
        assert_eq!(r["outcome"], "ok", "{extra}: {r}\n{stderr}");
        assert_eq!(r["verify"]["passed"], true, "{extra}: {r}");
        assert_eq!(r["restored_pid"], r["pid"], "{r}");
        assert_eq!(r["memory_adopted"], adopted, "{extra}: {r}\n{stderr}");
        let restored = r["pages_restored"].as_u64().unwrap();
        if adopted {
            assert_eq!(restored, 0, "{r}");
            let stages = r["stages"].as_array().unwrap();
            let restore = stages.iter().find(|s| s["name"] == "restore").unwrap();
            assert!(
                restore["detail"].as_str().unwrap().contains("adopted"),
                "{r}"
            );
        } else {
            assert!(restored >= (64 << 20) / 4096, "{r}");
        }
        // The set (written around the page cache when adopted) reads back whole.
        let v = haul()
            .args(["images", "verify", "--store"])
            .arg(dir.path().join("store"))
            .output()
            .unwrap();
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    }
}

/// The python program of the adoption tests: 48 MiB of random bytes (in a `bytearray`, or in
/// a shared anonymous `mmap` with `shared`); a second thread that signals the main one every
/// 10 ms (`pthread_kill` finds it by the tid word in its thread descriptor, which the kernel
/// zeroes when the dumped process's thread exits while its memory is shared: a tid of 0 fails
/// with EINVAL); a main loop that makes and joins a thread, and every 10 rounds prints the
/// digest of the bytes and the signals caught so far.
fn python_program(shared: bool) -> String {
    let alloc = if shared {
        "import mmap\ndata = mmap.mmap(-1, 48 << 20)\ndata.write(os.urandom(48 << 20))\n"
    } else {
        "data = bytearray(os.urandom(48 << 20))\n"
    };
    format!(
        r#"import hashlib, os, signal, threading, time
{alloc}caught = []
signal.signal(signal.SIGUSR1, lambda *_: caught.append(1))
main = threading.get_ident()
def poke():
    while True:
        time.sleep(0.01)
        signal.pthread_kill(main, signal.SIGUSR1)
threading.Thread(target=poke, daemon=True).start()
print('ready', hashlib.sha256(data).hexdigest(), flush=True)
n = 0
while True:
    time.sleep(0.02)
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    n += 1
    if n % 10 == 0:
        print('digest', hashlib.sha256(data).hexdigest(), len(caught), flush=True)
"#
    )
}

/// The verify command of the adoption tests: 3 more digests from the restored python, each
/// the one it printed when ready, with more signals caught each time.
const PYTHON_VERIFY: &str = r#"import sys, time
log, pid = sys.argv[1], sys.argv[2]
lines = lambda: open(log).read().split('\n')
first = lines()[0].split()[1]
digests = lambda: [l for l in lines() if l.startswith('digest')]
seen = len(digests())
deadline = time.time() + 30
while len(digests()) < seen + 3:
    open('/proc/%s/stat' % pid).read()
    assert time.time() < deadline, 'no new digest'
    time.sleep(0.02)
counts = []
for l in digests():
    _, d, caught = l.split()
    assert d == first, 'memory changed: %s' % l
    counts.append(int(caught))
new = counts[seen - 1:] if seen else counts
assert all(a < b for a, b in zip(new, new[1:])), 'no more signals caught: %s' % counts
print('OK')
"#;

fn python_job(dir: &Path, shared: bool) -> PathBuf {
    std::fs::write(dir.join("prog.py"), python_program(shared)).unwrap();
    std::fs::write(dir.join("check.py"), PYTHON_VERIFY).unwrap();
    job(
        dir,
        "py",
        &format!(
            "[process]\ncommand = [\"python3\", \"{prog}\"]\nstdout = \"{{run_dir}}/py.log\"\n\
             ready = {{ stdout_line = \"ready\" }}\n\
             [dump]\nleave_running = false\n[restore]\npid = \"same\"\n[verify]\nstate = true\n\
             command = [\"python3\", \"{check}\", \"{{run_dir}}/py.log\", \"{{pid}}\"]\n\
             expect_stdout = \"OK\"\ntimeout = \"60s\"\n\
             [store]\npath = \"{store}\"\n[report]\ndir = \"{reports}\"\n",
            prog = dir.join("prog.py").display(),
            check = dir.join("check.py").display(),
            store = dir.join("store").display(),
            reports = dir.join("reports").display(),
        ),
    )
}

/// A real multi-threaded program (python) adopted: after the restore its threads still signal
/// each other (their tid words were not zeroed by the dumped process's exit), it makes and
/// joins threads, and its 48 MiB hash as before. And one holding its bytes in shared
/// anonymous memory, which a restore makes again as a new object, is not adopted: its memory
/// is written from the set, and passes the same checks.
#[test]
fn a_threaded_python_is_adopted_and_one_with_shared_memory_is_written_from_its_set() {
    for (shared, adopted) in [(false, true), (true, false)] {
        let dir = tempfile::tempdir().unwrap();
        let j = python_job(dir.path(), shared);
        let (r, stderr) = run_once(dir.path(), &j);
        assert_eq!(r["outcome"], "ok", "shared {shared}: {r}\n{stderr}");
        assert_eq!(r["verify"]["passed"], true, "shared {shared}: {r}");
        assert_eq!(
            r["memory_adopted"], adopted,
            "shared {shared}: {r}\n{stderr}"
        );
        if !adopted {
            assert!(
                r["pages_restored"].as_u64().unwrap() >= (48 << 20) / 4096,
                "{r}"
            );
        }
    }
}
