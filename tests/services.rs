//! Real services nobody here wrote (issue #14): sshd, redis-server, nginx (a master and two
//! workers), python3's http.server and an asyncio echo server are started on a free port of
//! 127.0.0.1 with a config in the test's temp dir, used by their own client, left idle (no
//! client connected), checked with `haul dump --check`, dumped with `haul dump --kill`,
//! restored with `haul restore` (same PIDs), and must then serve a new client as before, with
//! the state they had: redis its keys, the echo server its connection count. Redis is also
//! restored lazily, and pre-copied by a `haul run` job while redis-benchmark writes.
//!
//! Everything is checked from outside, with the service's own client (ssh, redis-cli, curl).
//! The test process is the subreaper of what it dumps and restores ([`Session`]); tests run one
//! at a time and whatever is left below the test process is killed and reaped at its end.

mod common;
#[path = "common/services.rs"]
mod services;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::tree::Session;
use common::wait_for;
use services::{client, dump_kill, free_port, need, restore, LazyRestore, Service, ANSWER};

/// How long a client may take for one request to a restored service.
const CLIENT: Duration = Duration::from_secs(20);

// ---- sshd ----

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "haul-test", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The SSH banner on a fresh connection (sshd answers before any authentication).
fn ssh_banner(port: u16) -> bool {
    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 8];
    c.read_exact(&mut buf).is_ok() && buf.starts_with(b"SSH-2.0")
}

/// `ssh -p PORT -i KEY root@127.0.0.1 true`, with no known-hosts file and no user config.
fn ssh_true(port: u16, key: &Path) -> (bool, String) {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-o", "BatchMode=yes"])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=15"])
        .args(["-o", "IdentitiesOnly=yes", "-i"])
        .arg(key)
        .args(["-p", &port.to_string(), "root@127.0.0.1", "true"]);
    client(&mut cmd, CLIENT)
}

#[test]
fn sshd_restored_lets_a_new_client_log_in_with_its_key() {
    const T: &str = "sshd_restored_lets_a_new_client_log_in_with_its_key";
    let Some(p) = need(T, &["sshd", "ssh", "ssh-keygen"]) else {
        return;
    };
    let s = Session::start();
    let dir = s.path();
    // sshd's privilege separation directory.
    std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
    let (host_key, user_key) = (dir.join("host_key"), dir.join("user_key"));
    keygen(&host_key);
    keygen(&user_key);
    let auth = dir.join("authorized_keys");
    std::fs::copy(dir.join("user_key.pub"), &auth).unwrap();
    let port = free_port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile none\nUsePAM no\n\
             StrictModes no\nAuthorizedKeysFile {auth}\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nLogLevel INFO\n",
            host = host_key.display(),
            auth = auth.display()
        ),
    )
    .unwrap();
    // The absolute path: sshd re-executes itself for every connection.
    let mut cmd = Command::new(&p[0]);
    cmd.arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&config)
        .args(["-p", &port.to_string(), "-h"])
        .arg(&host_key)
        .args([
            "-o",
            "StrictModes=no",
            "-o",
            "PidFile=none",
            "-o",
            "UsePAM=no",
        ]);
    let mut svc = Service::start("sshd", cmd, port, dir, || ssh_banner(port));
    let (ok, out) = ssh_true(port, &user_key);
    assert!(
        ok,
        "ssh login before the checkpoint: {out}\n{}",
        svc.log_text()
    );
    svc.wait_idle(1);

    let set = dump_kill(&mut svc, &s.store());
    assert!(
        !ssh_banner(port),
        "port {port} still answers after the dump"
    );
    let pid = restore(&s.store(), &set, true);
    assert_eq!(pid, svc.pid, "restored under another pid");
    let (ok, out) = ssh_true(port, &user_key);
    assert!(ok, "ssh login after restore: {out}\n{}", svc.log_text());
    // And again: the restored sshd goes on accepting.
    let (ok, out) = ssh_true(port, &user_key);
    assert!(
        ok,
        "second ssh login after restore: {out}\n{}",
        svc.log_text()
    );
}

// ---- redis ----

fn redis_cli(port: u16, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    let (ok, out) = client(&mut cmd, CLIENT);
    (ok, out.trim_end().to_string())
}

/// redis-cli's answer to `args`, which must succeed.
fn redis(port: u16, args: &[&str]) -> String {
    let (ok, out) = redis_cli(port, args);
    assert!(ok, "redis-cli -p {port} {args:?}: {out}");
    out
}

fn redis_command(redis_server: &Path, port: u16, dir: &Path) -> Command {
    let mut cmd = Command::new(redis_server);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir);
    cmd
}

fn start_redis(redis_server: &Path, dir: &Path) -> Service {
    let port = free_port();
    let cmd = redis_command(redis_server, port, dir);
    Service::start("redis", cmd, port, dir, || {
        redis_cli(port, &["PING"]).1 == "PONG"
    })
}

/// Keys of every kind of size: 200 small ones, a hash, a list, and a 4 MiB string (its own
/// mapping in redis's allocator).
fn fill_redis(port: u16) {
    let mut mset = vec!["MSET".to_string()];
    for i in 0..200 {
        mset.push(format!("k{i}"));
        mset.push(format!("value-{i}-{}", i * i));
    }
    let args: Vec<&str> = mset.iter().map(String::as_str).collect();
    assert_eq!(redis(port, &args), "OK");
    assert_eq!(redis(port, &["HSET", "h", "a", "1", "b", "2"]), "2");
    assert_eq!(redis(port, &["RPUSH", "l", "x", "y", "z"]), "3");
    assert_eq!(redis(port, &["SETRANGE", "big", "4194303", "!"]), "4194304");
}

/// What [`fill_redis`] wrote is all there.
fn check_redis(port: u16) {
    assert_eq!(redis(port, &["DBSIZE"]), "203");
    check_redis_fill_but_size(port);
}

/// What [`fill_redis`] wrote, apart from the number of keys.
fn check_redis_fill_but_size(port: u16) {
    for i in [0, 1, 99, 199] {
        assert_eq!(
            redis(port, &["GET", &format!("k{i}")]),
            format!("value-{i}-{}", i * i)
        );
    }
    assert_eq!(redis(port, &["HGET", "h", "b"]), "2");
    assert_eq!(redis(port, &["LRANGE", "l", "0", "-1"]), "x\ny\nz");
    assert_eq!(redis(port, &["STRLEN", "big"]), "4194304");
    assert_eq!(redis(port, &["GETRANGE", "big", "4194303", "-1"]), "!");
}

/// New clients write and read.
fn redis_serves_new_clients(port: u16) {
    assert_eq!(redis(port, &["SET", "after", "restore"]), "OK");
    assert_eq!(redis(port, &["GET", "after"]), "restore");
    assert_eq!(redis(port, &["DEL", "after"]), "1");
}

#[test]
fn redis_restored_has_its_keys_and_serves_new_clients() {
    const T: &str = "redis_restored_has_its_keys_and_serves_new_clients";
    let Some(p) = need(T, &["redis-server", "redis-cli"]) else {
        return;
    };
    let s = Session::start();
    let mut svc = start_redis(&p[0], s.path());
    fill_redis(svc.port);
    svc.wait_idle(1);
    let set = dump_kill(&mut svc, &s.store());
    let pid = restore(&s.store(), &set, true);
    assert_eq!(pid, svc.pid, "restored under another pid");
    check_redis(svc.port);
    redis_serves_new_clients(svc.port);
    check_redis(svc.port);
}

#[test]
fn redis_restored_lazily_has_its_keys_and_serves_new_clients() {
    const T: &str = "redis_restored_lazily_has_its_keys_and_serves_new_clients";
    let Some(p) = need(T, &["redis-server", "redis-cli"]) else {
        return;
    };
    let s = Session::start();
    let mut svc = start_redis(&p[0], s.path());
    fill_redis(svc.port);
    svc.wait_idle(1);
    let set = dump_kill(&mut svc, &s.store());
    let lazy = LazyRestore::start(&s.store(), &set);
    assert_eq!(lazy.pid, svc.pid, "restored under another pid");
    // Served while its pages come in on demand, then after every page is resident.
    check_redis(svc.port);
    redis_serves_new_clients(svc.port);
    lazy.finish();
    check_redis(svc.port);
    redis_serves_new_clients(svc.port);
}

/// How many sets of job `job` are in `store` (pre-dumps included), as `haul images ls --json`
/// lists them.
fn sets_of(store: &Path, job: &str) -> usize {
    let out = common::haul()
        .args(["images", "ls", "--json", "--job", job, "--store"])
        .arg(store)
        .output()
        .expect("run haul images ls");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array().map_or(0, |l| l.len())
}

/// A `haul run` pre-copy job on redis: the test fills redis once it runs and then says it is
/// ready (the job waits for a file); redis-benchmark writes while the pre-dumps run, and has
/// ended (its connections closed) before the pre-copy converges on the idle server and the
/// final dump is taken. The restored redis has every key written before that dump.
#[test]
fn redis_precopied_by_a_job_while_benchmark_writes_keeps_every_key() {
    const T: &str = "redis_precopied_by_a_job_while_benchmark_writes_keeps_every_key";
    let Some(p) = need(T, &["redis-server", "redis-cli", "redis-benchmark"]) else {
        return;
    };
    let s = Session::start();
    let dir = s.path();
    let port = free_port();
    let seeded = dir.join("seeded");
    let job = dir.join("redis-precopy.toml");
    let argv: Vec<String> = redis_command(&p[0], port, dir)
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::fs::write(
        &job,
        format!(
            r#"[process]
command = [{cmd}]
ready = {{ file = "{seeded}", timeout = "30s" }}
[predump]
interval = "300ms"
max_iterations = 40
stop_below = "{stop_below}"
[dump]
leave_running = false
[restore]
mode = "eager"
pid = "same"
[store]
path = "{store}"
[report]
dir = "{reports}"
"#,
            cmd = std::iter::once(p[0].display().to_string())
                .chain(argv)
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            seeded = seeded.display(),
            stop_below = PRECOPY_STOP_BELOW,
            store = s.store().display(),
            reports = dir.join("reports").display(),
        ),
    )
    .unwrap();
    let run_log = dir.join("run.log");
    let mut run = common::haul()
        .args(["run", "--plain"])
        .arg(&job)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&run_log).unwrap())
        .stderr(std::fs::File::create(dir.join("run.err")).unwrap())
        .spawn()
        .expect("run haul run");
    let run_text = || {
        std::fs::read_to_string(&run_log).unwrap_or_default()
            + &std::fs::read_to_string(dir.join("run.err")).unwrap_or_default()
    };
    let up = wait_for(ANSWER, || redis_cli(port, &["PING"]).1 == "PONG");
    assert!(
        up,
        "redis launched by the job never answered: {}",
        run_text()
    );
    fill_redis(port);
    let idle = wait_for(ANSWER, || services::held_connections(port).is_empty());
    assert!(
        idle,
        "redis kept connections: {:?}",
        services::held_connections(port)
    );
    std::fs::write(&seeded, "").unwrap();
    // The first pre-dump is in the store: the pre-copy's checks (no client connected) passed.
    let first = wait_for(Duration::from_secs(30), || {
        sets_of(&s.store(), "redis-precopy") > 0 || run.try_wait().ok().flatten().is_some()
    });
    assert!(first, "no pre-dump in the store: {}", run_text());
    if let Some(st) = run.try_wait().expect("try_wait haul run") {
        panic!(
            "haul run ended before redis-benchmark wrote: {st}: {}",
            run_text()
        );
    }
    let mut bench = Command::new("redis-benchmark");
    bench
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-t", "set", "-n", "100000", "-r", "1000", "-d", "1024", "-q",
        ]);
    let (ok, out) = client(&mut bench, Duration::from_secs(60));
    assert!(ok, "redis-benchmark: {out}\n{}", run_text());
    let mut status = None;
    let ended = wait_for(Duration::from_secs(60), || {
        status = run.try_wait().expect("try_wait haul run");
        status.is_some()
    });
    assert!(ended, "haul run did not end: {}", run_text());
    assert!(
        status.is_some_and(|st| st.success()),
        "haul run: {status:?}: {}",
        run_text()
    );
    let report = std::fs::read_dir(dir.join("reports"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a run report");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    let iterations = r["predump"]["iterations"].as_array().map_or(0, |v| v.len());
    assert!(iterations >= 2, "pre-dumps: {r}");
    assert_eq!(r["pid"], r["restored_pid"], "{r}");
    // Every key of the benchmark (key:000000000000 .. key:000000000999, 1024 bytes each,
    // random ones) and of the fill is there.
    assert_eq!(redis(port, &["DBSIZE"]), "1203");
    for k in ["key:000000000000", "key:000000000500", "key:000000000999"] {
        assert_eq!(redis(port, &["STRLEN", k]), "1024", "{k}");
    }
    check_redis_fill_but_size(port);
    redis_serves_new_clients(port);
}

/// The pre-copy converges below this: an idle redis writes far less per round, redis-benchmark
/// writing 1 KiB values from 50 clients far more.
const PRECOPY_STOP_BELOW: &str = "256KiB";

// ---- nginx ----

/// 200 KiB of numbered lines: a lost or misplaced block changes it.
fn page() -> String {
    (0..4000)
        .map(|i| format!("line {i:06} of the static file\n"))
        .collect::<String>()
}

fn curl(port: u16, path: &str) -> (bool, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-f", "--max-time", "15"])
        .arg(format!("http://127.0.0.1:{port}/{path}"));
    client(&mut cmd, CLIENT)
}

#[test]
fn nginx_master_and_workers_restored_serve_the_static_file() {
    const T: &str = "nginx_master_and_workers_restored_serve_the_static_file";
    let Some(p) = need(T, &["nginx", "curl"]) else {
        return;
    };
    let s = Session::start();
    let dir = s.path();
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let page = page();
    std::fs::write(www.join("file"), &page).unwrap();
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let port = free_port();
    let conf = dir.join("nginx.conf");
    let temps: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|t| format!("    {t}_temp_path {}/{t};\n", tmp.display()))
        .collect();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\nuser root;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n    access_log off;\n{temps}    server {{\n        \
             listen 127.0.0.1:{port};\n        root {www};\n    }}\n}}\n",
            d = dir.display(),
            www = www.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(&p[0]);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("error.log"));
    let mut svc = Service::start("nginx", cmd, port, dir, || curl(port, "file").0);
    let (ok, got) = curl(port, "file");
    assert!(
        ok && got == page,
        "nginx before the checkpoint: {ok} {} bytes",
        got.len()
    );
    svc.wait_idle(3);
    let set = dump_kill(&mut svc, &s.store());
    assert!(
        !curl(port, "file").0,
        "port {port} still serves after the dump"
    );
    let pid = restore(&s.store(), &set, false);
    assert_eq!(pid, svc.pid, "restored under another pid");
    // Several requests: either worker may take each.
    for _ in 0..4 {
        let (ok, got) = curl(port, "file");
        assert!(
            ok && got == page,
            "nginx after restore: {ok}, {} bytes (want {}): {}\n{}",
            got.len(),
            page.len(),
            &got[..got.len().min(300)],
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
    }
    assert_eq!(
        services::tree_of(pid).len(),
        3,
        "the master and its two workers"
    );
}

// ---- python ----

#[test]
fn python_http_server_restored_serves_a_new_client() {
    const T: &str = "python_http_server_restored_serves_a_new_client";
    if need(T, &["curl"]).is_none() {
        return;
    }
    let s = Session::start();
    let dir = s.path();
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let page = page();
    std::fs::write(www.join("file"), &page).unwrap();
    let port = free_port();
    let mut cmd = Command::new(common::python3());
    cmd.args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(&www)
        .arg(port.to_string());
    let mut svc = Service::start("http.server", cmd, port, dir, || curl(port, "file").0);
    svc.wait_idle(1);
    let set = dump_kill(&mut svc, &s.store());
    let pid = restore(&s.store(), &set, true);
    assert_eq!(pid, svc.pid, "restored under another pid");
    for _ in 0..2 {
        let (ok, got) = curl(port, "file");
        assert!(
            ok && got == page,
            "http.server after restore: {ok}, {} bytes: {}\n{}",
            got.len(),
            &got[..got.len().min(300)],
            svc.log_text()
        );
    }
}

/// An asyncio echo server that numbers its connections: each reply is "N line", N the
/// connection's number, so a restored server that lost its state (or a fresh one) shows.
const ECHO: &str = r#"
import asyncio, sys
count = 0
async def handle(reader, writer):
    global count
    count += 1
    n = count
    while line := await reader.readline():
        writer.write(f"{n} ".encode() + line)
        await writer.drain()
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()
asyncio.run(main())
"#;

/// One connection to the echo server: sends `line`, returns the reply line.
fn echo(port: u16, line: &str) -> Option<String> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(CLIENT)).ok()?;
    c.write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut r = BufReader::new(c);
    let mut got = String::new();
    r.read_line(&mut got).ok()?;
    Some(got.trim_end().to_string())
}

#[test]
fn asyncio_echo_server_restored_serves_a_new_client_with_its_state() {
    let s = Session::start();
    let dir = s.path();
    let script = dir.join("echo.py");
    std::fs::write(&script, ECHO).unwrap();
    let port = free_port();
    let mut cmd = Command::new(common::python3());
    cmd.arg(&script).arg(port.to_string());
    let mut svc = Service::start("echo", cmd, port, dir, || echo(port, "hi").is_some());
    // Connections 2 and 3 (the probe that saw it answer was 1, or a later one).
    let first = echo(port, "one").expect("echo before the checkpoint");
    let n: u64 = first.split(' ').next().unwrap().parse().unwrap();
    assert_eq!(first, format!("{n} one"));
    svc.wait_idle(1);
    let set = dump_kill(&mut svc, &s.store());
    let pid = restore(&s.store(), &set, true);
    assert_eq!(pid, svc.pid, "restored under another pid");
    let got = echo(port, "after restore");
    assert_eq!(
        got,
        Some(format!("{} after restore", n + 1)),
        "echo after restore (log: {})",
        svc.log_text()
    );
}

// ---- the example job ----

/// `haul run jobs/redis.toml`, the example as a user runs it (from a copy of jobs/ in the
/// temp dir, so its store and reports land there): it pre-dumps, dumps, restores and its
/// `[verify]` passes; then, from outside, the restored redis has the key written before the
/// checkpoint and the one [verify] wrote after it.
#[test]
fn the_redis_example_job_runs_and_its_verify_passes() {
    const T: &str = "the_redis_example_job_runs_and_its_verify_passes";
    if need(T, &["redis-server", "redis-cli"]).is_none() {
        return;
    }
    let s = Session::start();
    let top = s.path();
    std::fs::create_dir(top.join("jobs")).unwrap();
    let job = top.join("jobs/redis.toml");
    std::fs::copy(common::repo().join("jobs/redis.toml"), &job).unwrap();
    let out = common::haul()
        .args(["run", "--plain"])
        .arg(&job)
        .current_dir(top)
        .output()
        .expect("run haul run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "haul run jobs/redis.toml: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = stdout
        .split_once("(report ")
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(r, _)| std::path::PathBuf::from(r))
        .unwrap_or_else(|| panic!("no report in {stdout}"));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["outcome"], "ok", "{r}");
    assert_eq!(r["verify"]["passed"], true, "{r}");
    assert!(
        r["predump"]["iterations"]
            .as_array()
            .is_some_and(|v| !v.is_empty()),
        "{r}"
    );
    let pid = r["restored_pid"].as_i64().expect("restored_pid") as i32;
    assert_eq!(r["pid"].as_i64(), Some(i64::from(pid)), "{r}");
    // The run's folder is the report's, without ".json".
    let sock = report.with_extension("").join("redis.sock");
    let sock = if sock.exists() {
        sock
    } else {
        std::fs::read_dir(top.join("reports"))
            .unwrap()
            .flatten()
            .map(|e| e.path().join("redis.sock"))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no redis.sock under {}", top.join("reports").display()))
    };
    let ask = |args: &[&str]| {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("-s").arg(&sock).args(args);
        let (ok, out) = client(&mut cmd, CLIENT);
        assert!(ok, "redis-cli -s {} {args:?}: {out}", sock.display());
        out.trim_end().to_string()
    };
    assert_eq!(
        ask(&["GET", "greeting"]),
        "hello from before the checkpoint"
    );
    assert_eq!(ask(&["GET", "after-restore"]), "yes");
    let info = ask(&["INFO", "server"]);
    assert!(
        info.lines()
            .any(|l| l.trim() == format!("process_id:{pid}")),
        "the redis answering is not the restored pid {pid}: {info}"
    );
}

/// A migration with `pid = "same"` of a real program holding enough memory to get a memory
/// keeper (`dump::keeper`): python with 48 MiB and a listening socket. The restored python
/// listens on the same port again and answers with the digest of the same bytes, and
/// afterwards no process but the restored one runs the script (the keeper is gone, reaped by
/// haul). That the keeper holds none of the fds is checked directly by the unit test
/// `dump::keeper::tests` (here its exit would often have closed them in time anyway).
#[test]
fn a_killed_process_with_a_memory_keeper_is_restored_on_its_port_and_the_keeper_is_gone() {
    let s = Session::start();
    let dir = s.path();
    let script = dir.join("holder.py");
    std::fs::write(
        &script,
        "import hashlib, os, socket\n\
         data = bytearray(os.urandom(1 << 20)) * 48\n\
         s = socket.socket()\n\
         s.bind(('127.0.0.1', 0))\n\
         s.listen(8)\n\
         print(s.getsockname()[1], hashlib.sha256(data).hexdigest(), flush=True)\n\
         print('ready', flush=True)\n\
         while True:\n    \
             c, _ = s.accept()\n    \
             c.sendall((hashlib.sha256(data).hexdigest() + '\\n').encode())\n    \
             c.close()\n",
    )
    .unwrap();
    let log = dir.join("holder.log");
    let ask = dir.join("ask.py");
    std::fs::write(
        &ask,
        "import socket, sys\n\
         port, want = open(sys.argv[1]).readline().split()\n\
         c = socket.create_connection(('127.0.0.1', int(port)), timeout=10)\n\
         got = c.makefile().readline().strip()\n\
         sys.exit(0 if got == want else 1)\n",
    )
    .unwrap();
    let py = common::python3();
    let job = dir.join("holder.toml");
    std::fs::write(
        &job,
        format!(
            r#"[process]
command = ["{py}", "{script}"]
stdout = "{log}"
ready = {{ stdout_line = "ready", timeout = "30s" }}
[dump]
leave_running = false
[restore]
mode = "eager"
pid = "same"
[verify]
command = ["{py}", "{ask}", "{log}"]
timeout = "20s"
[store]
path = "{store}"
[report]
dir = "{reports}"
"#,
            py = py.display(),
            script = script.display(),
            log = log.display(),
            ask = ask.display(),
            store = s.store().display(),
            reports = dir.join("reports").display(),
        ),
    )
    .unwrap();
    let out = common::haul()
        .env("RUST_LOG", "warn,haul::dump=debug")
        .arg("run")
        .arg(&job)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("memory keeper made"),
        "the dump made no memory keeper: {err}"
    );
    let report = std::fs::read_dir(dir.join("reports"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a report");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    let pid = r["restored_pid"].as_i64().expect("restored_pid") as i32;
    assert_eq!(
        Some(pid as i64),
        r["pid"].as_i64(),
        "restored under another pid"
    );
    // Asked again from here: the restored process serves the same bytes on the same port.
    let asked = Command::new(&py).arg(&ask).arg(&log).status().unwrap();
    assert!(
        asked.success(),
        "the restored python answers another digest"
    );
    let running: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("holder.py"))
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(
        running,
        vec![pid],
        "processes running the script after the migration"
    );
}
