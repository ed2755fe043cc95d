//! Stores on S3-compatible object storage (#17), against a real S3 server on loopback (moto's,
//! started by each test): a pre-copy job into a bucket, eager and lazy restores on a host whose
//! cache is empty (every page read from the bucket), two runs and gc at once on one bucket,
//! verify catching a corrupt object, push and pull, the server killed mid-upload and haul
//! killed mid-upload, and job-file errors.

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::tree::Session;
use common::{
    alive, fixture, haul, memwriter_pause, memwriter_report, proc_state, tracer_pid, wait_for,
    Running,
};
use s3::S3Server;

/// `haul` as a host of the fleet: credentials in the environment, its own cache directory.
fn host(cache: &Path) -> Command {
    let mut c = haul();
    c.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("HAUL_CACHE_DIR", cache)
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .env_remove("HAUL_STORE");
    c
}

/// A server with the bucket `fleet` (None, said why, when the server is not installed).
fn fleet(test: &str, dir: &Path) -> Option<S3Server> {
    let srv = S3Server::start(test, dir)?;
    srv.make_bucket("fleet");
    Some(srv)
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(o)).unwrap_or_else(|e| panic!("{e}: {}", ok(o)))
}

/// A memwriter (real pages: text, random and zero), paused, with its (ticks, checksum).
fn memwriter(dir: &Path, mib: u32) -> (Running, PathBuf, u64, String) {
    let out = dir.join("mw.report");
    let mut cmd = Command::new(fixture("memwriter"));
    cmd.arg(mib.to_string()).arg("2000").arg(&out);
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    let r = Running::logged(&mut cmd, &dir.join("mw.log"), true);
    let (t0, _) = memwriter_report(r.pid, &out, 0);
    let (t, c) = memwriter_pause(r.pid, &out, t0);
    (r, out, t, c)
}

/// The newest set of `job` in the store, as `images ls --json` on `cache` lists it.
fn newest_set(loc: &str, cache: &Path, job: &str) -> String {
    let v = json(
        &host(cache)
            .args(["images", "--store", loc, "ls", "--json", "--job", job])
            .output()
            .unwrap(),
    );
    let sets = v.as_array().cloned().unwrap_or_default();
    sets.last()
        .and_then(|s| s["id"].as_str())
        .unwrap_or_else(|| panic!("no set of {job}: {v}"))
        .to_string()
}

fn kill_pid(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
}

fn files_under(dir: &Path, sub: &str) -> usize {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.path().to_string_lossy().contains(sub))
        .count()
}

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

/// Every row of the loop's output is the one the loop computes: nothing lost or repeated.
fn exact_rows(out: &Path) {
    let mut d = std::collections::HashMap::new();
    for (i, row) in rows(out).iter().enumerate() {
        let n = i as i64 + 1;
        d.insert(n % 1000, n * n);
        assert_eq!(*row, (n, d.values().sum::<i64>()), "line {n}");
    }
}

/// A python loop pre-copied into the bucket; `restore`: "eager" or "lazy" (the loop is dumped
/// and restored), or "" (a checkpoint: it runs on).
fn py_job(dir: &Path, name: &str, store: &str, endpoint: &str, restore: &str) -> PathBuf {
    let script = dir.join("loop.py");
    std::fs::write(&script, PY_LOOP).unwrap();
    let job = dir.join(format!("{name}.toml"));
    let leave = restore.is_empty();
    let restore = match restore {
        "" => String::new(),
        mode => format!("[restore]\nmode = \"{mode}\"\npid = \"same\"\n"),
    };
    std::fs::write(
        &job,
        format!(
            r#"[process]
command = ["{py}", "{script}", "{out}"]
ready = {{ stdout_line = "ready" }}
[store]
path = "{store}"
endpoint = "{endpoint}"
region = "eu-west-3"
[predump]
interval = "150ms"
max_iterations = 3
stop_below = "1B"
[dump]
leave_running = {leave}
{restore}"#,
            py = common::python3().display(),
            script = script.display(),
            out = dir.join(format!("{name}.out")).display(),
        ),
    )
    .unwrap();
    job
}

/// Runs a job (as a host with `cache`), lets the restored loop write 30 more rows, checks every
/// row, and returns the run's report.
fn run_py_job(dir: &Path, job: &Path, name: &str, cache: &Path) -> serde_json::Value {
    let o = host(cache)
        .args(["run", "--plain"])
        .arg(job)
        .output()
        .unwrap();
    ok(&o);
    let report = std::fs::read_dir(dir.join("reports"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "json")
                && p.file_name().unwrap().to_string_lossy().starts_with(name)
        })
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    let pid = r["restored_pid"].as_i64().unwrap() as i32;
    assert_eq!(
        r["predump"]["iterations"].as_array().unwrap().len(),
        3,
        "{r}"
    );
    assert_eq!(r["store"]["path"], "s3://fleet/hosts", "{r}");
    let out = dir.join(format!("{name}.out"));
    let before = rows(&out).len();
    let grew = wait_for(Duration::from_secs(20), || rows(&out).len() >= before + 30);
    kill_pid(pid);
    assert!(grew, "{name}: the restored loop does not write");
    exact_rows(&out);
    r
}

#[test]
fn precopy_jobs_into_a_bucket_restore_eagerly_and_lazily_exactly_and_the_bucket_holds_the_sets() {
    let s = Session::start();
    let dir = s.path();
    let Some(srv) = fleet("bucket precopy job", dir) else {
        return;
    };
    let job = py_job(dir, "py", "s3://fleet/hosts", &srv.endpoint(), "eager");
    run_py_job(dir, &job, "py", &dir.join("cache-a"));
    // Post-copy through a bucket store: the restored loop runs at once and its memory is
    // served on demand (tests below restore from a host whose cache is empty).
    let lazy = dir.join("lazy");
    std::fs::create_dir_all(&lazy).unwrap();
    let job = py_job(&lazy, "pylazy", "s3://fleet/hosts", &srv.endpoint(), "lazy");
    let r = run_py_job(&lazy, &job, "pylazy", &dir.join("cache-lazy"));
    assert!(r["lazy"]["faults_served"].as_u64().unwrap_or(0) > 0, "{r}");

    // The bucket holds the sets (3 pre-dumps and the dump), their packs and the marker, and no
    // lock object once the run is over.
    let keys = srv.keys("fleet", "hosts/");
    for job in ["py", "pylazy"] {
        let sets = keys
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("hosts/sets/{job}/")))
            .count();
        assert_eq!(sets, 4, "{job}: {keys:?}");
    }
    assert!(
        keys.iter().any(|(k, _)| k.starts_with("hosts/packs/")),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|(k, _)| k == "hosts/HAUL-STORE"),
        "{keys:?}"
    );
    assert!(
        !keys.iter().any(|(k, _)| k.starts_with("hosts/locks/")),
        "{keys:?}"
    );
    // Another host sees the same sets, and verify reads every page and pack from the bucket.
    let loc = srv.location("fleet", "hosts");
    let v = json(
        &host(&dir.join("cache-b"))
            .args(["images", "--store", &loc, "verify", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["sets_checked"], 8, "{v}");
    assert!(v["pages_checked"].as_u64().unwrap() > 100, "{v}");
}

#[test]
fn a_host_with_an_empty_cache_restores_from_the_bucket_eagerly_and_lazily_exactly() {
    let s = Session::start();
    let dir = s.path();
    let Some(srv) = fleet("bucket restore elsewhere", dir) else {
        return;
    };
    let loc = srv.location("fleet", "mig");
    let (mut r, out, t, c) = memwriter(dir, 48);
    let o = host(&dir.join("cache-src"))
        .args(["dump", "--kill", "--name", "mw", "--store", &loc, "--pid"])
        .arg(r.pid.to_string())
        .output()
        .unwrap();
    ok(&o);
    r.child.wait().unwrap();
    let set = newest_set(&loc, &dir.join("cache-src"), "mw");

    // Eager, on a host with nothing cached: every pack comes from the bucket.
    let eager_cache = dir.join("cache-eager");
    let v = json(
        &host(&eager_cache)
            .args(["restore", &set, "--pid", "any", "--json", "--store", &loc])
            .output()
            .unwrap(),
    );
    let pid = v["pid"].as_i64().unwrap_or_else(|| panic!("{v}")) as i32;
    let (t2, c2) = memwriter_report(pid, &out, t);
    kill_pid(pid);
    assert_eq!(
        c2, c,
        "eager restore from the bucket: memory differs (ticks {t} -> {t2})"
    );
    assert!(
        files_under(&eager_cache, ".pack") > 0,
        "nothing fetched into the cache"
    );

    // Lazy, on another empty cache: faults and the push read the bucket by ranges.
    let mut cmd = host(&dir.join("cache-lazy"));
    cmd.args([
        "restore", &set, "--lazy", "--pid", "any", "--json", "--store", &loc,
    ]);
    let t3 = lazy_restore_exact(cmd, &out, t2, &c, "lazy restore from the bucket");

    // A page server on a fourth host serves the set from the bucket (its cache empty too) to
    // a lazy restore that has no store at all.
    let mut server = host(&dir.join("cache-ps"))
        .args([
            "page-server",
            "--listen",
            "127.0.0.1:0",
            "--set",
            &set,
            "--store",
            &loc,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("page server said {first:?}"))
        .to_string();
    let mut cmd = haul();
    cmd.args([
        "restore", &set, "--lazy", "--pid", "any", "--json", "--from", &addr,
    ]);
    lazy_restore_exact(
        cmd,
        &out,
        t3,
        &c,
        "lazy restore from a page server on the bucket",
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// Runs a `haul restore --lazy --json` to its end (every page resident), checking the
/// restored memwriter's memory against `want`; returns its ticks.
fn lazy_restore_exact(mut cmd: Command, out: &Path, after: u64, want: &str, what: &str) -> u64 {
    let mut restore = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(restore.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let pid: i32 = first
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{what}: pid line {first:?}"));
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let (t, c) = memwriter_report(pid, out, after);
    let done = wait_for(Duration::from_secs(120), || {
        matches!(restore.try_wait(), Ok(Some(_)))
    });
    if !done {
        let _ = restore.kill();
    }
    let status = restore.wait().unwrap();
    kill_pid(pid);
    assert!(done && status.success(), "{what}: {status}");
    assert_eq!(c, want, "{what}: memory differs (ticks {after} -> {t})");
    let v: serde_json::Value = serde_json::from_str(&rest.join().unwrap().unwrap()).unwrap();
    assert!(v["lazy"]["source_lost"].is_null(), "{what}: {v}");
    assert!(
        v["lazy"]["faults_served"].as_u64().unwrap() > 0,
        "{what}: {v}"
    );
    t
}

#[test]
fn two_runs_into_one_bucket_while_gc_runs_lose_nothing_and_gc_frees_what_rm_let_go() {
    let s = Session::start();
    let dir = s.path();
    let Some(srv) = fleet("bucket concurrent writers", dir) else {
        return;
    };
    let loc = srv.location("fleet", "shared");
    // Two hosts (their own caches), each pre-copying a python loop into the same bucket.
    let a = dir.join("a");
    let b = dir.join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let ja = py_job(&a, "alpha", "s3://fleet/shared", &srv.endpoint(), "");
    let jb = py_job(&b, "beta", "s3://fleet/shared", &srv.endpoint(), "");
    let ra = host(&a.join("cache"))
        .args(["run", "--plain"])
        .arg(&ja)
        .spawn()
        .unwrap();
    let rb = host(&b.join("cache"))
        .args(["run", "--plain"])
        .arg(&jb)
        .spawn()
        .unwrap();
    let run_a = std::thread::spawn(move || ra.wait_with_output().unwrap());
    let run_b = std::thread::spawn(move || rb.wait_with_output().unwrap());
    // A third host runs gc over and over meanwhile (grace 0: only the lock objects protect the
    // writers). gc may wait for a writer and then give up (exit 1, "in use"); it must never
    // break a set.
    let gc_cache = dir.join("cache-gc");
    // (From the moment the first run made the store.)
    assert!(wait_for(Duration::from_secs(60), || {
        srv.keys("fleet", "shared/")
            .iter()
            .any(|(k, _)| k == "shared/HAUL-STORE")
    }));
    let mut gcs = 0;
    while !(run_a.is_finished() && run_b.is_finished()) {
        let o = host(&gc_cache)
            .args(["images", "--store", &loc, "gc", "--grace", "0s", "--json"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() || err.contains("in use"), "gc: {err}");
        gcs += 1;
    }
    ok(&run_a.join().unwrap());
    ok(&run_b.join().unwrap());
    assert!(gcs > 0);
    // Everything either run wrote is whole, seen from a fourth host.
    let check = dir.join("cache-check");
    let v = json(
        &host(&check)
            .args(["images", "--store", &loc, "verify", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(v["ok"], true, "{v}");
    let alpha = newest_set(&loc, &check, "alpha");
    let beta = newest_set(&loc, &check, "beta");
    // Both loops ran on (leave_running): stop them, then bring back each final set from the
    // bucket and check the loop goes on exactly.
    for (d, name, set) in [(&a, "alpha", &alpha), (&b, "beta", &beta)] {
        let out = d.join(format!("{name}.out"));
        let pid = std::fs::read_dir(d.join("reports"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| {
                let r: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
                r["pid"].as_i64().unwrap() as i32
            })
            .unwrap();
        kill_pid(pid);
        // The output from the checkpoint on is what the restored loop writes again.
        let v = json(
            &host(&dir.join("cache-r"))
                .args(["images", "--store", &loc, "show", set, "--json"])
                .output()
                .unwrap(),
        );
        assert!(v["id"].as_str().is_some(), "{v}");
        let o = host(&dir.join("cache-r"))
            .args(["restore", set, "--pid", "any", "--json", "--store", &loc])
            .output()
            .unwrap();
        let r = json(&o);
        let rpid = r["pid"].as_i64().unwrap() as i32;
        let n0 = rows(&out).len();
        let wrote = wait_for(Duration::from_secs(20), || rows(&out).len() >= n0 + 5);
        kill_pid(rpid);
        assert!(wrote, "{name}: the restored loop does not write");
    }
    // rm both jobs' sets, then gc with no grace frees every pack.
    let l = json(
        &host(&check)
            .args(["images", "--store", &loc, "ls", "--json"])
            .output()
            .unwrap(),
    );
    for set in l.as_array().unwrap() {
        ok(&host(&check)
            .args(["images", "--store", &loc, "rm", set["id"].as_str().unwrap()])
            .output()
            .unwrap());
    }
    let g = json(
        &host(&gc_cache)
            .args(["images", "--store", &loc, "gc", "--grace", "0s", "--json"])
            .output()
            .unwrap(),
    );
    assert!(g["packs_removed"].as_u64().unwrap() > 0, "{g}");
    let left: Vec<_> = srv
        .keys("fleet", "shared/")
        .into_iter()
        .filter(|(k, _)| k.contains("/packs/") || k.contains("/sets/"))
        .collect();
    assert!(left.is_empty(), "gc left {left:?}");
}

#[test]
fn verify_names_a_corrupt_pack_and_a_corrupt_manifest_in_the_bucket() {
    let s = Session::start();
    let dir = s.path();
    let Some(srv) = fleet("bucket verify", dir) else {
        return;
    };
    let loc = srv.location("fleet", "v");
    let (r, _out, _, _) = memwriter(dir, 16);
    ok(&host(&dir.join("cache"))
        .args([
            "dump",
            "--leave-running",
            "--name",
            "mw",
            "--store",
            &loc,
            "--pid",
        ])
        .arg(r.pid.to_string())
        .output()
        .unwrap());
    let v = json(
        &host(&dir.join("cache"))
            .args(["images", "--store", &loc, "verify", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(v["ok"], true, "{v}");
    // One byte flipped in the middle of the biggest pack, written over the object.
    let (key, _) = srv
        .keys("fleet", "v/packs/")
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .unwrap();
    let mut bytes = srv.get("fleet", &key);
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x40;
    srv.put("fleet", &key, &bytes);
    // The host that wrote it has the pack in its cache: verify still reads the bucket.
    let o = host(&dir.join("cache"))
        .args(["images", "--store", &loc, "verify", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let pack_id = key.rsplit('/').next().unwrap().trim_end_matches(".pack");
    let named = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["kind"] == "pack" && p["message"].as_str().unwrap().contains(pack_id));
    assert!(named, "the corrupt pack is not named: {v}");
    // A manifest cut short is named too.
    let (mkey, _) = srv.keys("fleet", "v/sets/").into_iter().next().unwrap();
    let m = srv.get("fleet", &mkey);
    srv.put("fleet", &mkey, &m[..m.len() - 10]);
    let o = host(&dir.join("cache"))
        .args(["images", "--store", &loc, "verify"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    let set = mkey.rsplit('/').next().unwrap();
    assert!(
        text.contains("BAD manifest") && text.contains(set),
        "{text}"
    );
}

#[test]
fn push_and_pull_between_a_local_store_and_a_bucket_move_only_missing_pages() {
    let s = Session::start();
    let dir = s.path();
    let Some(srv) = fleet("bucket push pull", dir) else {
        return;
    };
    let loc = srv.location("fleet", "p");
    let local = dir.join("local");
    let (mut r, out, t, c) = memwriter(dir, 32);
    let dump = |kill: bool| {
        ok(&host(&dir.join("cache"))
            .args(["dump", if kill { "--kill" } else { "--leave-running" }])
            .args(["--name", "mw", "--store"])
            .arg(&local)
            .arg("--pid")
            .arg(r.pid.to_string())
            .output()
            .unwrap());
    };
    dump(false);
    let first = newest_set(local.to_str().unwrap(), &dir.join("cache"), "mw");
    dump(true);
    r.child.wait().unwrap();
    let second = newest_set(local.to_str().unwrap(), &dir.join("cache"), "mw");
    let push = |set: &str| {
        json(
            &host(&dir.join("cache"))
                .args(["images", "--store"])
                .arg(&local)
                .args(["push", set, "--to", &loc, "--json"])
                .output()
                .unwrap(),
        )
    };
    let p1 = push(&first);
    assert!(p1["pages_sent"].as_u64().unwrap() > 1000, "{p1}");
    let p2 = push(&second);
    // The memwriter was paused: the second set has the first one's pages.
    assert!(
        p2["pages_sent"].as_u64().unwrap() * 50 < p1["pages_sent"].as_u64().unwrap(),
        "second push sent too much: {p2} after {p1}"
    );
    assert!(p2["pages_skipped"].as_u64().unwrap() > 1000, "{p2}");
    // Pull the second set into a new local store on another host, and restore from it.
    let other = dir.join("other");
    let pulled = json(
        &host(&dir.join("cache-2"))
            .args(["images", "--store"])
            .arg(&other)
            .args(["pull", &second, "--from", &loc, "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(pulled["set"], second.as_str(), "{pulled}");
    assert!(pulled["pages_sent"].as_u64().unwrap() > 1000, "{pulled}");
    let v = json(
        &haul()
            .args(["restore", &second, "--pid", "any", "--json", "--store"])
            .arg(&other)
            .output()
            .unwrap(),
    );
    let pid = v["pid"].as_i64().unwrap() as i32;
    let (_, c2) = memwriter_report(pid, &out, t);
    kill_pid(pid);
    assert_eq!(c2, c, "restored from the pulled set: memory differs");
}

#[test]
fn a_dump_whose_server_dies_or_whose_haul_is_killed_mid_upload_leaves_no_set_and_the_process_runs_on(
) {
    let s = Session::start();
    let dir = s.path();
    let Some(mut srv) = fleet("bucket mid-upload", dir) else {
        return;
    };
    let loc = srv.location("fleet", "m");
    // 256 MiB with random pages: packs of 64 MiB, uploaded in parts.
    let (r, out, t, _) = memwriter(dir, 256);
    let cache = dir.join("cache");
    let uploading = |srv: &S3Server| {
        std::fs::read_to_string(&srv.log)
            .map(|l| l.contains("uploadId=") || l.contains("/m/packs/"))
            .unwrap_or(false)
    };

    // 1. haul SIGKILLed while it uploads: no set is visible, the process runs on.
    let mut d = host(&cache)
        .args([
            "dump",
            "--leave-running",
            "--name",
            "mw",
            "--store",
            &loc,
            "--pid",
        ])
        .arg(r.pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let began = wait_for(Duration::from_secs(60), || {
        uploading(&srv) || matches!(d.try_wait(), Ok(Some(_)))
    });
    let _ = d.kill();
    let _ = d.wait();
    assert!(began, "no upload began");
    // Its worker (a child of haul) may outlive it for a moment; wait until the target is
    // neither stopped nor traced.
    assert!(
        wait_for(Duration::from_secs(20), || tracer_pid(r.pid) == Some(0)
            && proc_state(r.pid) != Some('t')
            && proc_state(r.pid) != Some('T')),
        "the target is left stopped or traced"
    );
    let (t2, _) = memwriter_report(r.pid, &out, t);
    assert!(t2 > t && alive(r.pid));
    let sets: Vec<_> = srv.keys("fleet", "m/sets/").into_iter().collect();
    // Sets of the dump may only exist once whole: either none, or one that verifies.
    if !sets.is_empty() {
        let v = json(
            &host(&dir.join("cache-v"))
                .args(["images", "--store", &loc, "verify", "--json"])
                .output()
                .unwrap(),
        );
        assert_eq!(v["ok"], true, "a set is visible but not whole: {v}");
    }

    // 2. The server killed while haul uploads: the dump fails naming the bucket and the
    // object, and the process runs on.
    let mut d = host(&dir.join("cache-2"))
        .args([
            "dump",
            "--leave-running",
            "--name",
            "mw2",
            "--store",
            &loc,
            "--pid",
        ])
        .arg(r.pid.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log_len = std::fs::metadata(&srv.log).map(|m| m.len()).unwrap_or(0);
    let began = wait_for(Duration::from_secs(60), || {
        std::fs::read_to_string(&srv.log)
            .map(|l| {
                let tail = &l[(log_len as usize).min(l.len())..];
                tail.contains("uploadId=") || tail.contains("/m/packs/")
            })
            .unwrap_or(false)
            || matches!(d.try_wait(), Ok(Some(_)))
    });
    srv.kill();
    assert!(began, "no upload began");
    let mut err = String::new();
    d.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let st = d.wait().unwrap();
    assert!(!st.success(), "the dump succeeded with its server gone");
    assert!(
        err.contains("s3://fleet/m"),
        "the error does not name the bucket: {err}"
    );
    assert!(
        wait_for(Duration::from_secs(20), || tracer_pid(r.pid) == Some(0)
            && proc_state(r.pid) != Some('t')
            && proc_state(r.pid) != Some('T')),
        "the target is left stopped or traced"
    );
    let (t3, _) = memwriter_report(r.pid, &out, t2);
    assert!(t3 > t2, "the process does not run on");
}

#[test]
fn job_files_and_locations_with_credentials_or_bad_settings_are_refused_by_name() {
    let s = Session::start();
    let dir = s.path();
    let job = dir.join("creds.toml");
    std::fs::write(
        &job,
        "[process]\ncommand = [\"sleep\", \"100\"]\n[store]\npath = \"s3://fleet/x\"\nsecret_access_key = \"hunter2\"\n",
    )
    .unwrap();
    let o = haul().args(["check"]).arg(&job).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("creds.toml:5:1")
            && err.contains("store.secret_access_key")
            && err.contains("never read from a job file"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the secret is echoed: {err}");
    let job = dir.join("local.toml");
    std::fs::write(
        &job,
        "[process]\ncommand = [\"sleep\", \"100\"]\n[store]\npath = \"store\"\nendpoint = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let o = haul().args(["check"]).arg(&job).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    assert!(
        !o.status.success()
            && err.contains("store.endpoint")
            && err.contains("only for a store in a bucket"),
        "{err}"
    );
    let job = dir.join("badloc.toml");
    std::fs::write(
        &job,
        "[process]\ncommand = [\"sleep\", \"100\"]\n[store]\npath = \"s3://Bad_Bucket/x\"\n",
    )
    .unwrap();
    let o = haul().args(["check"]).arg(&job).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    assert!(
        !o.status.success() && err.contains("store.path") && err.contains("bucket name"),
        "{err}"
    );
    // On the command line: credentials in a location, an endpoint nobody serves, a bucket
    // that does not exist.
    let o = host(&dir.join("c"))
        .args([
            "images",
            "--store",
            "s3://fleet/x?secret_access_key=x",
            "ls",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("never taken from a store location"),
        "{err}"
    );
    let o = host(&dir.join("c"))
        .args([
            "images",
            "--store",
            "s3://fleet/x?endpoint=http://127.0.0.1:9",
            "ls",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("s3://fleet/x") && err.contains("HAUL-STORE"),
        "{err}"
    );
    if let Some(srv) = S3Server::start("bucket missing", dir) {
        let o = host(&dir.join("c"))
            .args([
                "images",
                "--store",
                &srv.location("nosuchbucket", "x"),
                "ls",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("s3://nosuchbucket/x"),
            "{err}"
        );
        let mut sleeper = Command::new("sleep");
        sleeper.arg("100");
        haul::sys::spawn::close_inherited_fds(&mut sleeper);
        let sl = Running::spawn(&mut sleeper);
        let o = host(&dir.join("c"))
            .args([
                "dump",
                "--leave-running",
                "--store",
                &srv.location("nosuchbucket", "x"),
                "--pid",
            ])
            .arg(sl.pid.to_string())
            .output()
            .unwrap();
        assert!(alive(sl.pid) && tracer_pid(sl.pid) == Some(0));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("is the bucket there"),
            "{err}"
        );
    }
}

#[test]
fn bench_bucket_measures_both_stores_checks_the_memory_and_leaves_the_bucket_as_it_was() {
    let s = Session::start();
    let dir = s.path();
    let Some(srv) = fleet("bench bucket", dir) else {
        return;
    };
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("mine"), "not the benchmark's").unwrap();
    let o = host(&dir.join("cache"))
        .args([
            "bench", "--quiet", "bucket", "--size", "32MiB", "--runs", "1", "--json",
        ])
        .args(["--store", &srv.location("fleet", "bench"), "--dir"])
        .arg(&work)
        .arg("--fixtures")
        .arg(common::repo().join("fixtures"))
        .output()
        .unwrap();
    let v = json(&o);
    assert_eq!(v["schema"], "haul/bench-bucket/1", "{v}");
    let run = &v["runs"][0];
    for k in [
        "local_dump_us",
        "local_restore_us",
        "bucket_dump_us",
        "bucket_restore_us",
    ] {
        assert!(run[k].as_u64().unwrap() > 0, "{k}: {v}");
    }
    // The whole image went up once (compressed), a re-dump of the unchanged process sent
    // little more than its manifest, and the restore fetched the image back.
    let first = run["first_bytes_sent"].as_u64().unwrap();
    assert!(first > 1 << 20, "{v}");
    assert!(
        run["redump_bytes_sent"].as_u64().unwrap() * 20 < first,
        "{v}"
    );
    assert!(
        run["restore_bytes_received"].as_u64().unwrap() >= first / 2,
        "{v}"
    );
    assert!(v["redump_share"].as_f64().unwrap() < 0.05, "{v}");
    // The bench removed what it wrote, in the bucket and in its work directory.
    let left = srv.keys("fleet", "bench/");
    assert!(left.is_empty(), "{left:?}");
    let names: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["mine"], "the work directory");
}
