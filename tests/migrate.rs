//! Migration (issue #7): `haul run` restoring lazily from a page server, store-to-store sync
//! (`haul images push` / `pull`) that sends only the pages the destination lacks, and a
//! post-copy migration between two network namespaces.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{fixture, haul, wait_for, Running};
use haul::dump::{dump_to_store, DumpOptions};
use haul::store::Store;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

fn adopt_orphans() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

/// A restored process: killed and reaped when dropped.
struct Restored(i32);

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(self.0), None);
    }
}

/// A `haul page-server` (or any command printing `listening on ADDR` first): killed and reaped
/// when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// Its stderr is passed on to the test's and kept: a server that ends before it prints its
    /// address fails the test with what it said and how it ended.
    fn start(cmd: &mut Command) -> Server {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn page server");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let kept = said.clone();
        let passing = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("{line}");
                if let Ok(mut k) = kept.lock() {
                    k.push_str(&line);
                    k.push('\n');
                }
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
            let _ = tx.send(first);
            for _ in lines {}
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let Some(addr) = line.strip_prefix("listening on ").map(String::from) else {
            // Its stdout ended (it exits, or has) or it said nothing for 20 s.
            let mut status = None;
            wait_for(Duration::from_secs(5), || {
                status = child.try_wait().ok().flatten();
                status.is_some()
            });
            let _ = child.kill();
            let _ = child.wait();
            wait_for(Duration::from_secs(5), || passing.is_finished());
            let ended = status.map_or("did not end".into(), |s| s.to_string());
            panic!(
                "page server said {line:?}, then ended ({ended}); its stderr:\n{}",
                said.lock().map(|s| s.clone()).unwrap_or_default()
            );
        };
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

// ---- piece 1: haul run, [restore] from = "host:port" ----

/// Writes the job `mig` (a counter, dumped and stopped into `store-a`, restored lazily from
/// the page server at `from` with the token in `token`) into `dir`.
fn remote_job(dir: &Path, from: &str) -> PathBuf {
    let job = dir.join("mig.toml");
    std::fs::write(
        &job,
        format!(
            r#"
[process]
command = ["{}", "{{run_dir}}/counter.log"]
ready = {{ stdout_line = "ready" }}

[dump]
leave_running = false

[restore]
mode = "lazy"
pid = "same"
from = "{from}"
token_file = "token"

[lazy]
idle_push = "200ms"

[store]
path = "store-a"

[report]
dir = "reports"
history = "reports/history.jsonl"

[verify]
command = [
  "sh", "-c",
  '''sleep 0.3; awk 'NR > 1 && $1 != prev + 1 {{{{ bad = 1 }}}} {{{{ prev = $1 }}}} END {{{{ print ((bad || NR < 2) ? "GAP" : "OK") }}}}' {{run_dir}}/counter.log''',
]
expect_stdout = "OK"
timeout = "10s"
"#,
            fixture("counter").display(),
        ),
    )
    .unwrap();
    std::fs::write(dir.join("token"), "run-token\n").unwrap();
    job
}

/// Runs `job` and returns haul's output and the report (restored process killed on drop).
fn run_job(
    job: &Path,
    reports: &Path,
) -> (
    std::process::Output,
    haul::report::RunReport,
    Option<Restored>,
) {
    run_job_with(haul(), job, reports)
}

/// [`run_job`] with `haul` as the command to run (e.g. under `ip netns exec`).
fn run_job_with(
    mut haul: Command,
    job: &Path,
    reports: &Path,
) -> (
    std::process::Output,
    haul::report::RunReport,
    Option<Restored>,
) {
    let out = haul
        .args(["run", "--plain"])
        .arg(job)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report = std::fs::read_dir(reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| haul::report::load(&p).unwrap().remove(0))
        .expect("no report written");
    let guard = report.restored_pid.map(Restored);
    (out, report, guard)
}

/// A page server on loopback for `store` with the token `run-token`, serving `what`.
fn loopback_server(store: &Path, what: &[&str]) -> Server {
    let token = store.with_file_name("server-token");
    std::fs::write(&token, "run-token\n").unwrap();
    Server::start(
        haul()
            .args(["page-server", "--listen", "127.0.0.1:0", "--token-file"])
            .arg(&token)
            .args(what)
            .arg("--store")
            .arg(store),
    )
}

#[test]
fn haul_run_restores_lazily_from_a_page_server_started_for_the_job() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let store_a = dir.path().join("store-a");
    Store::open_or_create(&store_a).unwrap();
    // The source side: a page server for the job, started before the job dumps.
    let server = loopback_server(&store_a, &["--job", "mig"]);
    let job = remote_job(dir.path(), &server.addr);
    let (out, r, _guard) = run_job(&job, &dir.path().join("reports"));
    assert!(
        out.status.success(),
        "haul run: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r.restored_pid, r.pid, "restored under another pid");
    let v = r.verify.expect("no verify outcome");
    assert!(v.passed, "verify: {v:?}");
    let lazy = r.lazy.expect("no lazy figures");
    assert!(lazy.source_lost.is_none(), "{lazy:?}");
    // The lazy pages came over the network, 4 KiB each plus framing.
    let served = lazy.faults_served + lazy.pages_prefetched + lazy.pages_pushed;
    assert!(served > 0, "{lazy:?}");
    assert!(lazy.bytes_network >= served * 4096, "{lazy:?}");
    eprintln!(
        "haul run from a page server: {served} pages served lazily, {} bytes over the network",
        lazy.bytes_network
    );
}

#[test]
fn haul_run_fails_naming_the_page_server_refusal_when_it_does_not_serve_the_job() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let store_a = dir.path().join("store-a");
    Store::open_or_create(&store_a).unwrap();
    let server = loopback_server(&store_a, &["--job", "someone-else"]);
    let job = remote_job(dir.path(), &server.addr);
    let (out, r, _guard) = run_job(&job, &dir.path().join("reports"));
    assert!(!out.status.success());
    assert!(r.restored_pid.is_none(), "{r:?}");
    let errors = r.errors.join("\n");
    assert!(errors.contains("not served here"), "{errors}");
    // The dump is in the store all the same: nothing is lost.
    let set = r.store.expect("no store figures").set;
    Store::open(&store_a).unwrap().load_set(&set).unwrap();
}

// ---- piece 2: store-to-store sync ----

/// A running `dirtier` (see fixtures/dirtier.c): rewrites exactly the pages it is told to.
struct Dirtier {
    run: Running,
    dir: PathBuf,
    seq: u64,
}

impl Dirtier {
    fn start(dir: &Path, pages: u64) -> Dirtier {
        let mut cmd = Command::new(fixture("dirtier"));
        cmd.arg(pages.to_string()).arg(dir);
        haul::sys::spawn::close_inherited_fds(&mut cmd);
        let run = Running::logged(&mut cmd, &dir.join("log"), true);
        Dirtier {
            run,
            dir: dir.to_path_buf(),
            seq: 0,
        }
    }

    /// Sends one command and waits for its answer (the acknowledged sequence number).
    fn cmd(&mut self, line: &str) {
        let tmp = self.dir.join("cmd.tmp");
        std::fs::write(&tmp, format!("{line}\n")).unwrap();
        std::fs::rename(&tmp, self.dir.join("cmd")).unwrap();
        self.seq += 1;
        let want = self.seq.to_string();
        kill(Pid::from_raw(self.run.pid), Signal::SIGUSR1).unwrap();
        let ok = wait_for(Duration::from_secs(20), || {
            std::fs::read_to_string(self.dir.join("ack"))
                .is_ok_and(|s| s.split_whitespace().next() == Some(want.as_str()))
        });
        assert!(ok, "dirtier did not answer {line:?}");
    }
}

/// Pages the fixture's own loop may write outside its region per command (stack, .data/.bss,
/// libc data and TLS), as tests/precopy.rs measured.
const OUTSIDE_MAX: u64 = 24;

fn sync_cli(args: &[&str], stores: &[(&str, &Path)]) -> serde_json::Value {
    let mut c = haul();
    c.args(args);
    for (flag, p) in stores {
        c.arg(flag).arg(p);
    }
    json_of(&c.arg("--json").output().unwrap())
}

fn verify_store(store: &Path) {
    let out = haul()
        .args(["images", "verify", "--store"])
        .arg(store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify {}: {}",
        store.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn push_and_pull_send_only_the_pages_the_destination_lacks() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let fx = dir.path().join("fx");
    std::fs::create_dir(&fx).unwrap();
    const PAGES: u64 = 4096;
    let mut d = Dirtier::start(&fx, PAGES);
    let store = std::sync::Arc::new(Store::open_or_create(&a).unwrap());
    let keep = DumpOptions {
        leave_running: true,
        ..Default::default()
    };
    let set1 = dump_to_store(d.run.pid, &store, "dirt", &keep, Some(1))
        .unwrap()
        .set
        .id;

    // First push: every stored page goes.
    let r1 = sync_cli(&["images", "push", &set1], &[("--store", &a), ("--to", &b)]);
    let sent1 = r1["pages_sent"].as_u64().unwrap();
    assert!(sent1 >= PAGES, "{r1}");
    // Twice: nothing.
    let again = sync_cli(&["images", "push", &set1], &[("--store", &a), ("--to", &b)]);
    assert_eq!(again["already_there"], true, "{again}");
    assert_eq!(again["pages_sent"], 0, "{again}");
    // Without the manifest but with the pages: still nothing (dedup against the index).
    let rm = haul()
        .args(["images", "rm", &set1, "--store"])
        .arg(&b)
        .output()
        .unwrap();
    assert!(rm.status.success());
    let again = sync_cli(&["images", "push", &set1], &[("--store", &a), ("--to", &b)]);
    assert_eq!(again["already_there"], false, "{again}");
    assert_eq!(again["pages_sent"], 0, "{again}");
    assert_eq!(again["pages_skipped"].as_u64().unwrap(), sent1, "{again}");

    // 1% of the region rewritten, then the final dump (which stops the process).
    let changed: Vec<String> = (0..PAGES / 100)
        .map(|i| (i * 100 + 7).to_string())
        .collect();
    d.cmd(&format!("w {}", changed.join(" ")));
    let kill_opts = DumpOptions {
        leave_running: false,
        ..Default::default()
    };
    let set2 = dump_to_store(d.run.pid, &store, "dirt", &kill_opts, Some(1))
        .unwrap()
        .set
        .id;
    let _ = d.run.child.wait();
    let r2 = sync_cli(&["images", "push", &set2], &[("--store", &a), ("--to", &b)]);
    let sent2 = r2["pages_sent"].as_u64().unwrap();
    let n = changed.len() as u64;
    assert!(
        sent2 >= n && sent2 <= n + OUTSIDE_MAX,
        "{n} pages changed, {sent2} sent: {r2}"
    );
    eprintln!(
        "push: first {} bytes ({sent1} pages), after 1% changed {} bytes ({sent2} pages, {:.2}%)",
        r1["bytes_sent"],
        r2["bytes_sent"],
        100.0 * sent2 as f64 / sent1 as f64
    );
    verify_store(&b);

    // The same over the page server protocol into a third store.
    let server = haul::xfer::PageServer::bind(
        "127.0.0.1:0",
        store.clone(),
        &[set1.clone(), set2.clone()],
        Default::default(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap().to_string();
    std::thread::spawn(move || server.serve());
    let p1 = sync_cli(
        &["images", "pull", &set1, "--from", &addr],
        &[("--store", &c)],
    );
    assert_eq!(p1["pages_sent"].as_u64().unwrap(), sent1, "{p1}");
    let p2 = sync_cli(
        &["images", "pull", &set2, "--from", &addr],
        &[("--store", &c)],
    );
    assert_eq!(p2["pages_sent"].as_u64().unwrap(), sent2, "{p2}");
    let (net1, net2) = (
        p1["bytes_network"].as_u64().unwrap(),
        p2["bytes_network"].as_u64().unwrap(),
    );
    assert!(
        net2 * 20 < net1,
        "second pull moved {net2} bytes, first {net1}"
    );
    eprintln!("pull: first {net1} bytes on the wire, after 1% changed {net2}");
    verify_store(&c);
    // The copies are the same sets.
    let src = Store::open(&a).unwrap();
    for s in [&set1, &set2] {
        let want = src.load_set(s).unwrap();
        for dest in [&b, &c] {
            let got = Store::open(dest).unwrap().load_set(s).unwrap();
            assert_eq!((&got.process, &got.pages), (&want.process, &want.pages));
        }
    }
}

// ---- piece 3: post-copy migration between two network namespaces ----

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespace tests take turns: `ip netns add/exec` of two tests at once were seen to race
/// (a page server started with `ip netns exec` exited before it listened).
static NETNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Two network namespaces joined by a veth pair: `src` has `addr_src`, `dst` the other end.
/// Dropping it deletes both namespaces (and with them the veth pair).
struct NetPair {
    src: String,
    dst: String,
    addr_src: String,
}

impl NetPair {
    /// `Ok(None)` when the kernel refuses `ip netns add` (no privilege): the caller skips.
    fn make() -> Result<Option<NetPair>, String> {
        // Unique per test (several run at once in this process) and per process.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = std::process::id().wrapping_mul(8).wrapping_add(n);
        let src = format!("haul-mig-src-{id}");
        let dst = format!("haul-mig-dst-{id}");
        if let Err(e) = ip(&["netns", "add", &src]) {
            // Said on stderr, and a failure under CI, where namespaces must work.
            common::skip(
                "a migration test between network namespaces",
                &format!("cannot make a network namespace ({e})"),
            );
            return Ok(None);
        }
        let pair = NetPair {
            src,
            dst,
            // 10.x.y.0/24 exists only inside these two namespaces.
            addr_src: format!("10.{}.{}.1", 100 + (id >> 8) % 100, id % 256),
        };
        ip(&["netns", "add", &pair.dst])?;
        let (va, vb) = (
            format!("hms{}", id % 100_000),
            format!("hmd{}", id % 100_000),
        );
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        ip(&["link", "set", &va, "netns", &pair.src])?;
        ip(&["link", "set", &vb, "netns", &pair.dst])?;
        let net = pair.addr_src.trim_end_matches(".1").to_string();
        for (ns, dev, host) in [(&pair.src, &va, "1"), (&pair.dst, &vb, "2")] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{net}.{host}/24"),
                "dev",
                dev,
            ])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(Some(pair))
    }

    /// `ip netns exec NS haul ARGS...`
    fn haul_in(&self, ns: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(common::haul_bin());
        c
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.src]);
        let _ = ip(&["netns", "del", &self.dst]);
    }
}

#[test]
fn memwriter_migrates_lazily_between_two_network_namespaces() {
    adopt_orphans();
    let _turn = NETNS.lock().unwrap_or_else(|e| e.into_inner());
    let net = match NetPair::make() {
        Ok(Some(n)) => n,
        Ok(None) => return,
        Err(e) => panic!("setting up the namespaces: {e}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let token = dir.path().join("token");
    std::fs::write(&token, "migrate-me\n").unwrap();

    // The source: a paused memwriter, dumped (and stopped) into store A.
    let out = dir.path().join("report");
    let mut cmd = Command::new(fixture("memwriter"));
    cmd.arg("64").arg("20000").arg(&out);
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    let mut r = Running::logged(&mut cmd, &dir.path().join("log"), true);
    common::memwriter_report(r.pid, &out, 0);
    let (t2, sum) = common::memwriter_pause(r.pid, &out, 0);
    let store = Store::open_or_create(&a).unwrap();
    let kill_opts = DumpOptions {
        leave_running: false,
        ..Default::default()
    };
    let set = dump_to_store(r.pid, &store, "mw", &kill_opts, Some(1))
        .unwrap()
        .set;
    let _ = r.child.wait();

    // The page server in the source namespace, on its veth address, with a token.
    let listen = format!("{}:7411", net.addr_src);
    let server = Server::start(
        net.haul_in(&net.src)
            .args([
                "page-server",
                "--listen",
                &listen,
                "--set",
                &set.id,
                "--store",
            ])
            .arg(&a)
            .arg("--token-file")
            .arg(&token),
    );
    assert_eq!(server.addr, listen);

    // The destination namespace cannot reach it without the token...
    let denied = net
        .haul_in(&net.dst)
        .args(["images", "pull", &set.id, "--from", &listen, "--store"])
        .arg(&b)
        .output()
        .unwrap();
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("token"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );

    // ... and with it restores lazily: it prints the pid at once, then serves until every
    // page is resident and prints its figures.
    let mut restore = net
        .haul_in(&net.dst)
        .args([
            "restore",
            &set.id,
            "--lazy",
            "--from",
            &listen,
            "--token-file",
        ])
        .arg(&token)
        .args(["--pid", "any", "--idle-push", "300ms", "--json", "--store"])
        .arg(&b)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(restore.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let pid: i32 = first
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("restore said {first:?}"));
    let _restored = Restored(pid);
    let (_, got) = common::memwriter_report(pid, &out, t2);
    assert_eq!(got, sum, "the migrated memwriter's memory differs");
    let rest: String = lines.map(|l| l.unwrap() + "\n").collect();
    let status = restore.wait().unwrap();
    assert!(status.success(), "lazy restore failed: {rest}");
    let fig: serde_json::Value = serde_json::from_str(&rest).unwrap();
    let bytes = fig["lazy"]["bytes_network"].as_u64().unwrap();
    assert!(bytes >= fig["pages_lazy"].as_u64().unwrap() * 4096, "{fig}");
    eprintln!(
        "netns migration: {} pages lazy, {bytes} bytes over the veth, {} faults served",
        fig["pages_lazy"], fig["lazy"]["faults_served"]
    );
    // Still exact once every page is there.
    let (_, after) = common::memwriter_report(pid, &out, t2 + 1);
    assert_eq!(after, sum);

    // A pull across the namespaces gives the destination its own verified copy.
    let pulled = net
        .haul_in(&net.dst)
        .args(["images", "pull", &set.id, "--from", &listen, "--token-file"])
        .arg(&token)
        .args(["--json", "--store"])
        .arg(&b)
        .output()
        .unwrap();
    let p = json_of(&pulled);
    assert!(p["pages_sent"].as_u64().unwrap() > 0, "{p}");
    verify_store(&b);
    drop(server);
}

#[test]
fn haul_run_of_the_migration_job_restores_across_two_network_namespaces() {
    adopt_orphans();
    let _turn = NETNS.lock().unwrap_or_else(|e| e.into_inner());
    let net = match NetPair::make() {
        Ok(Some(n)) => n,
        Ok(None) => return,
        Err(e) => panic!("setting up the namespaces: {e}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let store_a = dir.path().join("store-a");
    Store::open_or_create(&store_a).unwrap();
    let token = dir.path().join("server-token");
    std::fs::write(&token, "run-token\n").unwrap();
    // The source namespace serves the job's dumps on its veth address...
    let listen = format!("{}:7412", net.addr_src);
    let server = Server::start(
        net.haul_in(&net.src)
            .args([
                "page-server",
                "--listen",
                &listen,
                "--job",
                "mig",
                "--store",
            ])
            .arg(&store_a)
            .arg("--token-file")
            .arg(&token),
    );
    // ...and `haul run` of the migration job runs in the destination namespace: the dump goes
    // to the store, every lazy page comes over the veth from the source's page server.
    let job = remote_job(dir.path(), &server.addr);
    let (out, report, _guard) =
        run_job_with(net.haul_in(&net.dst), &job, &dir.path().join("reports"));
    assert!(
        out.status.success(),
        "haul run: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report.restored_pid, report.pid);
    assert!(
        report.verify.as_ref().is_some_and(|v| v.passed),
        "{:?}",
        report.verify
    );
    let lazy = report.lazy.expect("no lazy figures");
    assert!(lazy.source_lost.is_none(), "{lazy:?}");
    assert!(lazy.bytes_network > 0, "{lazy:?}");
    eprintln!(
        "haul run across namespaces: {} bytes over the veth, {} faults",
        lazy.bytes_network, lazy.faults_served
    );
}

// ---- dump.lazy: the lazy pages stay in the frozen source, served by the checkpoint worker ----

/// Writes the job `lazymig` (a counter, pre-dumped `predumps` times, lazy final dump, restored
/// lazily under any PID from the frozen source, `verify` as its check) into `dir`.
fn lazy_dump_job(dir: &Path, predumps: u32, verify: &str) -> PathBuf {
    let job = dir.join("lazymig.toml");
    let predump = if predumps > 0 {
        format!("[predump]\ninterval = \"100ms\"\nmax_iterations = {predumps}\n")
    } else {
        String::new()
    };
    std::fs::write(
        &job,
        format!(
            r#"
[process]
command = ["{}", "{{run_dir}}/counter.log"]
ready = {{ stdout_line = "ready" }}

{predump}
[dump]
leave_running = false
lazy = true

[restore]
mode = "lazy"
pid = "any"

[lazy]
idle_push = "200ms"
source_timeout = "5s"

[store]
path = "store"

[report]
dir = "reports"
history = "reports/history.jsonl"

[verify]
command = ["sh", "-c", '''{verify}''']
timeout = "10s"
"#,
            fixture("counter").display(),
        ),
    )
    .unwrap();
    job
}

const COUNTS_ON: &str = r#"sleep 0.3; awk 'NR > 1 && $1 != prev + 1 {{ bad = 1 }} {{ prev = $1 }} END {{ if (bad || NR < 2) exit 1 }}' {run_dir}/counter.log"#;

#[test]
fn haul_run_with_a_lazy_dump_serves_the_frozen_source_then_kills_it() {
    adopt_orphans();
    for predumps in [0, 2] {
        let dir = tempfile::tempdir().unwrap();
        let job = lazy_dump_job(dir.path(), predumps, COUNTS_ON);
        let (out, r, guard) = run_job(&job, &dir.path().join("reports"));
        assert!(
            out.status.success(),
            "haul run ({predumps} pre-dumps): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(r.pages_lazy > 0, "no page was left lazy: {r:?}");
        let src = r.source.clone().expect("no source in the report");
        assert_eq!(src.ended, "killed", "{src:?}");
        assert!(src.serve_addr.starts_with("127.0.0.1:"), "{src:?}");
        let stage = r
            .stages
            .iter()
            .find(|s| s.name == "source")
            .expect("source stage");
        assert!(stage.ok, "{stage:?}");
        assert!(
            r.verify.as_ref().is_some_and(|v| v.passed),
            "{:?}",
            r.verify
        );
        let lazy = r.lazy.clone().expect("no lazy figures");
        assert!(
            lazy.source_lost.is_none() && lazy.bytes_network > 0,
            "{lazy:?}"
        );
        // The source is gone, the restored counter runs under another PID.
        let (pid, restored) = (r.pid.unwrap(), r.restored_pid.unwrap());
        assert_ne!(pid, restored);
        assert!(!common::alive(pid), "the source {pid} still runs");
        assert!(common::alive(restored));
        // The report says so when rendered.
        let text = haul::report::render(&r);
        assert!(
            text.contains("killed: the restore has every page"),
            "{text}"
        );
        drop(guard);
    }
}

#[test]
fn haul_run_with_a_lazy_dump_rolls_back_when_verify_fails() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let job = lazy_dump_job(dir.path(), 0, "exit 1");
    let (out, r, _guard) = run_job(&job, &dir.path().join("reports"));
    assert!(!out.status.success(), "a failed verify must fail the run");
    let src = r.source.clone().expect("no source in the report");
    assert_eq!(src.ended, "thawed", "{src:?}");
    // Never two copies: the restored one was ended before the source resumed.
    let restored = r.restored_pid.expect("no restore ran");
    assert!(
        !common::alive(restored),
        "restored copy {restored} still runs"
    );
    assert!(r.verify.is_some_and(|v| !v.passed));
}
