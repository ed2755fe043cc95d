//! Live connections carried across a checkpoint (issue #15), checked with real programs from
//! outside:
//!
//! - a TCP echo server (python) in the checkpoint and its client outside: a numbered stream
//!   sent before, during (while the server is dumped and gone, the network lock holding its
//!   packets) and after the checkpoint comes back once, in order;
//! - redis-server with 8 clients issuing `INCR` on their own keys while it is pre-copied,
//!   dumped and restored (eagerly and lazily): each goes on on the same connection, its counter
//!   equals its replies, and its longest wait for a reply (the pause) is printed with haul's
//!   frozen and lock times (the issue's benchmark figures);
//! - an ssh session: `sshd -D` in one network namespace, `ssh -tt` on a pty in another, a shell
//!   that keeps its variable across a pre-copied dump and lazy restore of the sshd tree (also
//!   when the tree moves to a third namespace with its address), the client never seeing an
//!   error.
//!
//! The services run in network namespaces of their own ([`netns`]), and so does the haul that
//! dumps and restores them (haul refuses a process in another network namespace than its own):
//! whatever a lock leaves there goes with the namespace. Every process is below the test
//! process ([`Session`]) and is killed and reaped when the test ends; the namespaces are deleted.

mod common;
#[allow(dead_code)]
#[path = "common/netns.rs"]
mod netns;
#[allow(dead_code)]
#[path = "common/services.rs"]
mod services;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::tree::Session;
use common::wait_for;
use netns::Net;
use services::need;

/// How long a stream may take to flow again, or a service to answer, after a restore (a peer
/// that retransmitted into the lock waits for its next retransmission timeout).
const FLOW: Duration = Duration::from_secs(60);

// ---- haul in a namespace ----

/// Runs `cmd` (a haul command with `--json`) and returns its JSON; it must succeed.
fn haul_json(mut cmd: Command, what: &str) -> serde_json::Value {
    let out = cmd.stdin(Stdio::null()).output().expect("run haul");
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: JSON: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `haul dump --kill --json --pid PID` in namespace `ns`, with `predumps` pre-dumps (200 ms
/// apart) first; returns the set id and haul's JSON.
fn dump_kill(
    net: &Net,
    ns: &str,
    pid: i32,
    name: &str,
    store: &Path,
    predumps: u32,
) -> (String, serde_json::Value) {
    let mut cmd = net.haul(ns);
    cmd.args(["dump", "--kill", "--json", "--name", name, "--pid"])
        .arg(pid.to_string())
        .arg("--store")
        .arg(store);
    if predumps > 0 {
        cmd.args(["--predump", &predumps.to_string(), "--interval", "200ms"]);
    }
    let v = haul_json(
        cmd,
        &format!("haul dump --kill of {name} (pid {pid}) in {ns}"),
    );
    let set = v["set"].as_str().expect("set id").to_string();
    (set, v)
}

/// Waits until every process of `set` is gone (the root, our child, reaped by the caller; the
/// others re-parented to the test process, reaped here).
fn wait_dumped_gone(store: &Path, set: &str) {
    services::wait_gone(&services::set_pids(store, set));
}

/// `haul restore --json SET` in namespace `ns` (same PIDs); returns the root's pid and haul's
/// JSON.
fn restore(net: &Net, ns: &str, store: &Path, set: &str) -> (i32, serde_json::Value) {
    let mut cmd = net.haul(ns);
    cmd.args(["restore", "--json", set, "--store"]).arg(store);
    let v = haul_json(cmd, &format!("haul restore {set} in {ns}"));
    (v["pid"].as_i64().expect("pid") as i32, v)
}

/// A `haul restore --lazy --json SET` in the foreground in a namespace: the restored root's pid
/// (its first line), then its figures when every page is resident.
struct LazyRestore {
    haul: Child,
    pid: i32,
    rest: std::thread::JoinHandle<String>,
}

impl LazyRestore {
    fn start(net: &Net, ns: &str, store: &Path, set: &str) -> LazyRestore {
        let mut haul = net
            .haul(ns)
            .args(["restore", "--lazy", "--json", "--idle-push", "500ms", set])
            .arg("--store")
            .arg(store)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run haul restore --lazy");
        let stdout = haul.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let rest = std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(|l| l.ok()).unwrap_or_default());
            lines.map_while(Result::ok).collect::<Vec<_>>().join("\n")
        });
        let line = rx.recv_timeout(FLOW).unwrap_or_default();
        let Ok(pid) = line.trim().parse::<i32>() else {
            let _ = haul.kill();
            let _ = haul.wait();
            let mut err = String::new();
            if let Some(mut e) = haul.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("haul restore --lazy {set} in {ns} printed {line:?} instead of a pid: {err}");
        };
        LazyRestore { haul, pid, rest }
    }

    /// Waits until haul has made every page resident and exited 0; returns its JSON figures.
    fn finish(mut self) -> serde_json::Value {
        let mut status = None;
        let ok = wait_for(FLOW, || {
            status = self.haul.try_wait().expect("try_wait haul restore --lazy");
            status.is_some()
        });
        if !ok {
            let _ = self.haul.kill();
            let _ = self.haul.wait();
        }
        let mut err = String::new();
        if let Some(mut e) = self.haul.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        assert!(
            ok,
            "haul restore --lazy never finished serving pid {}: {err}",
            self.pid
        );
        let out = self.rest.join().unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "haul restore --lazy of pid {} ended {status:?}: {out}{err}",
            self.pid
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("lazy restore JSON: {e}: {out}"))
    }
}

/// The fields of haul's JSON `v` (and of its `stats`) whose name says `lock`, as
/// `name=value`: the network lock's figures, however the lock reports them.
fn lock_figures(v: &serde_json::Value) -> String {
    let mut out = Vec::new();
    for obj in [Some(v), v.get("stats")].into_iter().flatten() {
        if let Some(m) = obj.as_object() {
            for (k, x) in m {
                if k.contains("lock") {
                    out.push(format!("{k}={x}"));
                }
            }
        }
    }
    if out.is_empty() {
        "none reported".to_string()
    } else {
        out.join(" ")
    }
}

/// Asserts that namespace `ns` holds no nftables rule any more: a lock left nothing behind.
fn assert_no_rules(net: &Net, ns: &str, when: &str) {
    let mut rules = String::new();
    let clean = wait_for(Duration::from_secs(5), || {
        rules = net.ruleset(ns);
        rules.trim().is_empty()
    });
    assert!(clean, "{when}: the ruleset of {ns} is not empty:\n{rules}");
}

/// Starts `cmd` (in a namespace) the way the runner does, stdout and stderr into `log`, and
/// waits until it prints `ready` there.
fn start_logged(mut cmd: Command, log: &Path) -> common::Running {
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    common::Running::logged(&mut cmd, log, true)
}

/// One namespace `svc` joined to the test's own by a veth pair: the test (the clients) at
/// `SUBNET.2`, the service at `SUBNET.1`, returned.
fn service_net(test: &str) -> Option<(Net, String)> {
    let net = Net::make(test, &["svc"])?;
    let s = net.subnet(0);
    net.veth(
        None,
        &format!("{s}.2/24"),
        &net.ns("svc"),
        &format!("{s}.1/24"),
        0,
    );
    Some((net, format!("{s}.1")))
}

/// Connects to `addr:port` until it answers (the veth may take a moment to come up).
fn connect(addr: &str, port: u16) -> TcpStream {
    let mut c = None;
    let ok = wait_for(FLOW, || {
        c = TcpStream::connect((addr, port)).ok();
        c.is_some()
    });
    assert!(ok, "nothing answers on {addr}:{port}");
    let c = c.unwrap();
    c.set_read_timeout(Some(FLOW)).unwrap();
    c.set_nodelay(true).unwrap();
    c
}

// ---- the echo server ----

/// An echo server: listens on ADDR:PORT, says `ready`, then echoes what each client (one at a
/// time) sends until it closes.
const ECHO: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
"#;

/// What the stream's two ends count: lines sent, lines echoed back in order, the first fault.
#[derive(Default)]
struct Stream {
    /// Lines the writer began to write (a write blocks once the socket's send buffer is
    /// full, as it may while the server is gone), and lines written.
    offered: AtomicU64,
    sent: AtomicU64,
    echoed: AtomicU64,
    stop: AtomicBool,
    fault: Mutex<Option<String>>,
}

impl Stream {
    fn fault(&self, what: String) {
        self.fault.lock().unwrap().get_or_insert(what);
    }

    fn faulted(&self) -> Option<String> {
        self.fault.lock().unwrap().clone()
    }

    /// Waits until `cond` holds or the stream faults; panics naming `what` otherwise.
    fn wait(&self, what: &str, mut cond: impl FnMut(&Stream) -> bool) {
        let ok = wait_for(FLOW, || cond(self) || self.faulted().is_some());
        if let Some(f) = self.faulted() {
            panic!("{what}: the stream broke: {f}");
        }
        assert!(
            ok,
            "{what}: {} lines sent, {} echoed",
            self.sent.load(Ordering::SeqCst),
            self.echoed.load(Ordering::SeqCst)
        );
    }
}

#[test]
fn echo_stream_sent_before_during_and_after_the_checkpoint_comes_back_once_in_order() {
    const T: &str =
        "echo_stream_sent_before_during_and_after_the_checkpoint_comes_back_once_in_order";
    if need(T, &["ip", "nsenter", "nft"]).is_none() {
        return;
    }
    let s = Session::start();
    let Some((net, addr)) = service_net(T) else {
        return;
    };
    let dir = s.path();
    let script = dir.join("echo.py");
    std::fs::write(&script, ECHO).unwrap();
    let ns = net.ns("svc");
    let port = 7000;
    let mut cmd = net.cmd(&ns, common::python3());
    cmd.arg(&script).arg(&addr).arg(port.to_string());
    let mut server = start_logged(cmd, &dir.join("echo.log"));

    let conn = connect(&addr, port);
    // Nagle's algorithm on: lines written while nothing is acknowledged (the server is gone)
    // gather in few segments instead of filling the send buffer with one each.
    conn.set_nodelay(false).unwrap();
    let st = Arc::new(Stream::default());
    // The writer: a numbered line every millisecond or so until told to stop.
    let writer = {
        let (st, mut w) = (st.clone(), conn.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !st.stop.load(Ordering::SeqCst) {
                st.offered.store(i + 1, Ordering::SeqCst);
                if let Err(e) = w.write_all(format!("{i:08}\n").as_bytes()) {
                    st.fault(format!("writing line {i}: {e}"));
                    return;
                }
                i += 1;
                st.sent.store(i, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
            // Every line is sent: the server sees the end of the stream and closes.
            if let Err(e) = w.shutdown(Shutdown::Write) {
                st.fault(format!("shutdown after {i} lines: {e}"));
            }
        })
    };
    // The reader: each line must be the next number; the stream ends when the server closes.
    let reader = {
        let (st, r) = (st.clone(), conn.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut lines = BufReader::new(r).lines();
            let mut want = 0u64;
            loop {
                match lines.next() {
                    None => return,
                    Some(Err(e)) => return st.fault(format!("reading line {want}: {e}")),
                    Some(Ok(l)) if l != format!("{want:08}") => {
                        return st.fault(format!("line {want}: got {l:?}"))
                    }
                    Some(Ok(_)) => {
                        want += 1;
                        st.echoed.store(want, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    st.wait("before the checkpoint", |st| {
        st.echoed.load(Ordering::SeqCst) >= 300
    });

    // During: the writer goes on while haul dumps, and after the server is gone.
    let at_dump = st.offered.load(Ordering::SeqCst);
    let (set, dumped) = dump_kill(&net, &ns, server.pid, "echo", &s.store(), 0);
    server.child.wait().expect("reap the dumped server");
    wait_dumped_gone(&s.store(), &set);
    // Lines are offered while it is gone: 20 of them, or until the writer blocks (its send
    // buffer full of what the lock holds back).
    let at_gone = st.offered.load(Ordering::SeqCst);
    st.wait("while the server is gone", |st| {
        let offered = st.offered.load(Ordering::SeqCst);
        offered >= at_gone + 20 || (offered > at_gone && offered > st.sent.load(Ordering::SeqCst))
    });
    let at_restore = st.offered.load(Ordering::SeqCst);
    let (pid, restored) = restore(&net, &ns, &s.store(), &set);
    assert_eq!(pid, server.pid, "restored under another pid");
    assert_no_rules(&net, &ns, "after the restore");

    // After: everything sent so far, and 300 more lines, come back.
    st.wait("after the restore", |st| {
        st.echoed.load(Ordering::SeqCst) >= at_restore + 300
    });
    st.stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    reader.join().unwrap();
    if let Some(f) = st.faulted() {
        panic!("the stream broke: {f}");
    }
    let (sent, echoed) = (
        st.sent.load(Ordering::SeqCst),
        st.echoed.load(Ordering::SeqCst),
    );
    assert_eq!(echoed, sent, "{sent} lines sent, {echoed} echoed back");
    eprintln!(
        "echo: {sent} lines, {} offered during the dump, {} while the server was gone; frozen \
         {} µs; lock: dump {}, restore {}",
        at_gone - at_dump,
        at_restore - at_gone,
        dumped["stats"]["frozen_time"],
        lock_figures(&dumped),
        lock_figures(&restored)
    );
}

// ---- both ends in the checkpoint ----

/// A server and its client in one tree, over loopback: the parent listens on 127.0.0.1:PORT,
/// its child connects and sends numbers that the parent sends back; the child checks each and
/// logs it (every 5 ms), or logs `BAD` and exits.
const PINGPONG: &str = r#"
import os, socket, sys, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[2])))
srv.listen(1)
if os.fork() == 0:
    srv.close()
    c = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
    r = c.makefile("rb")
    log = open(sys.argv[1], "a", buffering=1)
    i = 0
    while True:
        c.sendall(b"%d\n" % i)
        if r.readline() != b"%d\n" % i:
            log.write("BAD\n")
            sys.exit(1)
        log.write("%d\n" % i)
        i += 1
        time.sleep(0.005)
s, _ = srv.accept()
r = s.makefile("rb")
while line := r.readline():
    s.sendall(line)
"#;

#[test]
fn a_client_and_server_of_one_tree_carry_on_over_loopback_without_a_lock() {
    const T: &str = "a_client_and_server_of_one_tree_carry_on_over_loopback_without_a_lock";
    if need(T, &["ip", "nsenter", "nft"]).is_none() {
        return;
    }
    let s = Session::start();
    let Some(net) = Net::make(T, &["svc"]) else {
        return;
    };
    let dir = s.path();
    let ns = net.ns("svc");
    let script = dir.join("pingpong.py");
    std::fs::write(&script, PINGPONG).unwrap();
    let log = dir.join("pingpong.log");
    let mut cmd = net.cmd(&ns, common::python3());
    cmd.arg(&script).arg(&log).arg("7100");
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    let mut tree = common::Running::logged(&mut cmd, &dir.join("tree.log"), false);
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    };
    let ok = wait_for(FLOW, || lines().len() >= 50);
    assert!(ok, "the client never got 50 answers: {:?}", lines());

    let (set, dumped) = dump_kill(&net, &ns, tree.pid, "pingpong", &s.store(), 0);
    tree.child.wait().expect("reap the dumped server");
    wait_dumped_gone(&s.store(), &set);
    let at_restore = lines().len();
    let (pid, _) = restore(&net, &ns, &s.store(), &set);
    assert_eq!(pid, tree.pid, "restored under another pid");
    let ok = wait_for(FLOW, || {
        lines().len() >= at_restore + 50 || lines().contains(&"BAD".into())
    });
    let got = lines();
    assert!(
        ok,
        "the client stopped after the restore: {} lines",
        got.len()
    );
    for (i, l) in got.iter().enumerate() {
        assert_eq!(l, &i.to_string(), "line {i} of the client's log");
    }
    let lock = dumped["stats"]["lock_time"].as_u64().unwrap_or(0);
    assert_eq!(
        lock, 0,
        "a lock was taken with both ends in the checkpoint: {dumped}"
    );
    assert_no_rules(&net, &ns, "after the restore");
}

// ---- redis with live clients ----

/// One RESP command (an array of bulk strings).
fn resp(args: &[&str]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    v
}

/// A redis client of the test: `INCR` on its own key in a loop, on one connection.
struct RedisClient {
    replies: AtomicU64,
    fault: Mutex<Option<String>>,
}

/// What a client saw: its replies, its longest wait for one (the pause), and its counter as
/// `GET` read it at the end on the same connection.
struct ClientEnd {
    replies: u64,
    longest: Duration,
    counter: Option<u64>,
}

fn run_client(
    n: usize,
    mut c: TcpStream,
    me: Arc<RedisClient>,
    stop: Arc<AtomicBool>,
) -> ClientEnd {
    let key = format!("live:{n}");
    let incr = resp(&["INCR", &key]);
    let mut r = BufReader::new(c.try_clone().unwrap());
    let (mut replies, mut longest, mut last) = (0u64, Duration::ZERO, Instant::now());
    let mut line = String::new();
    let fail = |what: String| {
        me.fault.lock().unwrap().get_or_insert(what);
    };
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = c.write_all(&incr) {
            fail(format!("client {n}: INCR {}: {e}", replies + 1));
            break;
        }
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => {
                fail(format!(
                    "client {n}: the connection closed after {replies} replies"
                ));
                break;
            }
            Err(e) => {
                fail(format!("client {n}: reply {}: {e}", replies + 1));
                break;
            }
            Ok(_) => {}
        }
        if line.trim_end() != format!(":{}", replies + 1) {
            fail(format!(
                "client {n}: INCR {} answered {line:?}",
                replies + 1
            ));
            break;
        }
        replies += 1;
        longest = longest.max(last.elapsed());
        last = Instant::now();
        me.replies.store(replies, Ordering::SeqCst);
    }
    // The counter, on the same connection.
    let mut counter = None;
    if me.fault.lock().unwrap().is_none() && c.write_all(&resp(&["GET", &key])).is_ok() {
        let mut head = String::new();
        let mut val = String::new();
        if r.read_line(&mut head).is_ok() && r.read_line(&mut val).is_ok() {
            counter = val.trim_end().parse().ok();
        }
    }
    ClientEnd {
        replies,
        longest,
        counter,
    }
}

/// redis in its namespace with 8 clients outside it issuing `INCR` while it is pre-copied (2
/// pre-dumps), dumped with `--kill` and restored (`lazy` or eagerly).
fn redis_with_live_clients(test: &str, lazy: bool) {
    let Some(p) = need(test, &["redis-server", "ip", "nsenter", "nft"]) else {
        return;
    };
    let s = Session::start();
    let Some((net, addr)) = service_net(test) else {
        return;
    };
    let dir = s.path();
    let ns = net.ns("svc");
    let port = 6379;
    let mut cmd = net.cmd(&ns, &p[0]);
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        &addr,
        "--protected-mode",
        "no",
    ])
    .args(["--save", "", "--appendonly", "no", "--dir"])
    .arg(dir);
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    let log = dir.join("redis.log");
    let mut redis = common::Running::logged(&mut cmd, &log, false);
    // redis answers PING on a connection of its own, closed before the clients start.
    let mut said = String::new();
    let up = wait_for(FLOW, || {
        said.clear();
        let Ok(mut c) = TcpStream::connect((addr.as_str(), port)) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        c.write_all(&resp(&["PING"])).is_ok()
            && BufReader::new(c).read_line(&mut said).is_ok()
            && said.trim_end() == "+PONG"
    });
    assert!(
        up,
        "redis said {said:?}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    const CLIENTS: usize = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<Arc<RedisClient>> = (0..CLIENTS)
        .map(|_| {
            Arc::new(RedisClient {
                replies: AtomicU64::new(0),
                fault: Mutex::new(None),
            })
        })
        .collect();
    let threads: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(n, me)| {
            let (c, me, stop) = (connect(&addr, port), me.clone(), stop.clone());
            std::thread::spawn(move || run_client(n, c, me, stop))
        })
        .collect();
    let faults = || -> Vec<String> {
        clients
            .iter()
            .filter_map(|c| c.fault.lock().unwrap().clone())
            .collect()
    };
    let counts = || -> Vec<u64> {
        clients
            .iter()
            .map(|c| c.replies.load(Ordering::SeqCst))
            .collect()
    };
    // Each client has replies before the checkpoint...
    let ok = wait_for(FLOW, || {
        counts().iter().all(|&n| n >= 100) || !faults().is_empty()
    });
    assert!(
        faults().is_empty() && ok,
        "before the checkpoint: {:?} {:?}",
        faults(),
        counts()
    );

    // ... goes on while redis is pre-copied and dumped, waits while it is gone...
    let (set, dumped) = dump_kill(&net, &ns, redis.pid, "redis-live", &s.store(), 2);
    redis.child.wait().expect("reap the dumped redis");
    let at_restore = counts();
    let lazy_restore;
    let restored;
    if lazy {
        let l = LazyRestore::start(&net, &ns, &s.store(), &set);
        assert_eq!(l.pid, redis.pid, "restored under another pid");
        lazy_restore = Some(l);
        restored = serde_json::Value::Null;
    } else {
        let (pid, v) = restore(&net, &ns, &s.store(), &set);
        assert_eq!(pid, redis.pid, "restored under another pid");
        lazy_restore = None;
        restored = v;
    }
    // ... and carries on, on the same connection, after the restore.
    let ok = wait_for(FLOW, || {
        counts()
            .iter()
            .zip(&at_restore)
            .all(|(&n, &was)| n >= was + 100)
            || !faults().is_empty()
    });
    let lazy_fig = lazy_restore.map(LazyRestore::finish);
    stop.store(true, Ordering::SeqCst);
    let ends: Vec<ClientEnd> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        faults().is_empty() && ok,
        "after the restore: {:?}; replies at the restore {at_restore:?}, now {:?}\n{}",
        faults(),
        counts(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    for (n, e) in ends.iter().enumerate() {
        assert_eq!(
            e.counter,
            Some(e.replies),
            "client {n}: counter live:{n} against its {} replies",
            e.replies
        );
    }
    assert_no_rules(&net, &ns, "after the restore");

    // The benchmark figures.
    let pauses: Vec<String> = ends
        .iter()
        .map(|e| format!("{:.1}", e.longest.as_secs_f64() * 1e3))
        .collect();
    let iterations = dumped["predump"]["iterations"]
        .as_array()
        .map_or(0, Vec::len);
    eprintln!(
        "redis live clients ({}): longest pause per client (ms) [{}]; dump: {} pre-dumps, \
         frozen {} µs; lock: dump {}, restore {}; time to running {} µs",
        if lazy {
            "pre-copy + lazy restore"
        } else {
            "pre-copy + eager restore"
        },
        pauses.join(", "),
        iterations,
        dumped["stats"]["frozen_time"],
        lock_figures(&dumped),
        lock_figures(lazy_fig.as_ref().unwrap_or(&restored)),
        lazy_fig.as_ref().unwrap_or(&restored)["time_to_running"],
    );
}

#[test]
fn redis_clients_carry_on_across_a_precopied_dump_and_restore() {
    redis_with_live_clients(
        "redis_clients_carry_on_across_a_precopied_dump_and_restore",
        false,
    );
}

#[test]
fn redis_clients_carry_on_across_a_precopied_dump_and_lazy_restore() {
    redis_with_live_clients(
        "redis_clients_carry_on_across_a_precopied_dump_and_lazy_restore",
        true,
    );
}

// ---- the ssh session ----

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

/// The prompt of the session's shell: its output after a command shows it is done (and idle).
const PROMPT: &str = "haul-ready> ";

/// An `ssh -tt` client on a pty (`script` gives it one), driven by the test: what it types goes
/// to the pty, what the session prints is collected, ssh's own stderr goes to a file.
struct SshClient {
    script: Child,
    stdin: std::process::ChildStdin,
    out: Arc<Mutex<String>>,
    err: PathBuf,
    marks: u32,
}

impl SshClient {
    fn start(net: &Net, ns: &str, dir: &Path, key: &Path, host: &str) -> SshClient {
        let err = dir.join("ssh.err");
        // The remote command: an interactive bash with a prompt of ours and no rc files.
        let ssh = format!(
            "exec ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=15 \
             -o IdentitiesOnly=yes -i {key} -tt root@{host} \
             \"env PS1='{PROMPT}' bash --norc --noprofile -i\" 2>{err}",
            key = key.display(),
            err = err.display(),
        );
        let mut cmd = net.cmd(ns, "script");
        cmd.args(["-q", "-f", "-e", "-c", &ssh, "/dev/null"])
            .env("SHELL", "/bin/sh")
            .env("TERM", "dumb")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        haul::sys::spawn::close_inherited_fds(&mut cmd);
        let mut script = cmd.spawn().expect("run script -c ssh");
        let stdin = script.stdin.take().unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        for r in [
            Box::new(script.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(script.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut r = r;
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        SshClient {
            script,
            stdin,
            out,
            err,
            marks: 0,
        }
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn errors(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Types `line` followed by an echo of a new mark, and waits until the mark and the prompt
    /// after it are printed: the shell ran the line and waits, idle, for the next. Returns
    /// what the session printed from the line on.
    fn run(&mut self, line: &str) -> String {
        self.marks += 1;
        let m = self.marks;
        let start = self.output().len();
        // `mark""N` as typed (and echoed) is not `markN` as printed.
        writeln!(self.stdin, "{line}; echo haul-mark\"\"{m}").expect("type into ssh");
        self.stdin.flush().unwrap();
        let want = format!("haul-mark{m}");
        let mut seen = String::new();
        let ok = wait_for(FLOW, || {
            seen = self.output()[start..].to_string();
            seen.find(&want).is_some_and(|i| seen[i..].contains(PROMPT))
        });
        assert!(
            ok,
            "the session did not run {line:?}: it printed {seen:?}; ssh's stderr: {}",
            self.errors()
        );
        seen
    }

    /// The client still runs and has said nothing on its stderr.
    fn assert_fine(&mut self, when: &str) {
        let st = self.script.try_wait().expect("try_wait script");
        assert!(
            st.is_none(),
            "{when}: the ssh client ended ({st:?}): {}\nstderr: {}",
            self.output(),
            self.errors()
        );
        assert_eq!(self.errors(), "", "{when}: ssh's stderr");
    }

    /// Types `exit`: ssh must end with status 0 and no error.
    fn exit(mut self) {
        writeln!(self.stdin, "exit").expect("type exit");
        let mut st = None;
        let ok = wait_for(FLOW, || {
            st = self.script.try_wait().expect("try_wait script");
            st.is_some()
        });
        assert!(ok, "ssh did not end after exit: {}", self.output());
        assert!(
            st.is_some_and(|s| s.success()),
            "ssh ended {st:?}: {}\nstderr: {}",
            self.output(),
            self.errors()
        );
        assert_eq!(self.errors(), "", "ssh's stderr");
    }
}

impl Drop for SshClient {
    fn drop(&mut self) {
        let _ = self.script.kill();
        let _ = self.script.wait();
    }
}

/// The sshd tree of a session (sshd, its session processes, the user's shell) checkpointed with
/// pre-copy and restored lazily while the client waits; with `moved`, the service address
/// moves from namespace `a` to `b` between the dump and the restore, as a floating IP would.
fn ssh_session(test: &str, moved: bool) {
    let Some(p) = need(
        test,
        &[
            "sshd",
            "ssh",
            "ssh-keygen",
            "script",
            "ip",
            "nsenter",
            "nft",
        ],
    ) else {
        return;
    };
    let s = Session::start();
    let tags: &[&str] = if moved { &["c", "a", "b"] } else { &["c", "a"] };
    let Some(net) = Net::make(test, tags) else {
        return;
    };
    let (c, a) = (net.ns("c"), net.ns("a"));
    // The client's namespace c reaches a over 10.x.y.0/24, and b over the next subnet; the
    // service address is on a's loopback, routed from c through a.
    let (s0, s1, svc) = (net.subnet(0), net.subnet(1), format!("{}.1", net.subnet(2)));
    net.veth(
        Some(&c),
        &format!("{s0}.2/24"),
        &a,
        &format!("{s0}.1/24"),
        0,
    );
    netns::ip_ok(&["-n", &a, "addr", "add", &format!("{svc}/32"), "dev", "lo"]);
    netns::ip_ok(&[
        "-n",
        &c,
        "route",
        "add",
        &format!("{svc}/32"),
        "via",
        &format!("{s0}.1"),
    ]);
    if moved {
        let b = net.ns("b");
        net.veth(
            Some(&c),
            &format!("{s1}.2/24"),
            &b,
            &format!("{s1}.1/24"),
            1,
        );
        // b answers the client's address through its own link.
        netns::ip_ok(&[
            "-n",
            &b,
            "route",
            "add",
            &format!("{s0}.2/32"),
            "via",
            &format!("{s1}.2"),
        ]);
    }

    let dir = s.path();
    std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
    let (host_key, user_key) = (dir.join("host_key"), dir.join("user_key"));
    keygen(&host_key);
    keygen(&user_key);
    let auth = dir.join("authorized_keys");
    std::fs::copy(dir.join("user_key.pub"), &auth).unwrap();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port 22\nListenAddress {svc}\nHostKey {host}\nPidFile none\nUsePAM no\n\
             StrictModes no\nAuthorizedKeysFile {auth}\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nLogLevel INFO\n",
            host = host_key.display(),
            auth = auth.display()
        ),
    )
    .unwrap();
    // The absolute path: sshd re-executes itself for every connection.
    let mut cmd = net.cmd(&a, &p[0]);
    cmd.args(["-D", "-e", "-f"]).arg(&config);
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    let log = dir.join("sshd.log");
    let mut sshd = common::Running::logged(&mut cmd, &log, false);
    let up = wait_for(FLOW, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Server listening"))
    });
    assert!(
        up,
        "sshd never listened: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let mut ssh = SshClient::start(&net, &c, dir, &user_key, &svc);
    ssh.run("X=before");
    ssh.assert_fine("before the checkpoint");
    let tree = services::tree_of(sshd.pid);
    assert!(
        tree.len() >= 3,
        "sshd (pid {}) has no session below it: {tree:?}\n{}",
        sshd.pid,
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // The session is idle (the prompt is printed and read): pre-copy, dump, and the tree is
    // gone.
    let (set, dumped) = dump_kill(&net, &a, sshd.pid, "sshd-live", &s.store(), 2);
    sshd.child.wait().expect("reap the dumped sshd");
    wait_dumped_gone(&s.store(), &set);
    ssh.assert_fine("after the dump");

    let to = if moved {
        let b = net.ns("b");
        netns::ip_ok(&["-n", &a, "addr", "del", &format!("{svc}/32"), "dev", "lo"]);
        netns::ip_ok(&["-n", &b, "addr", "add", &format!("{svc}/32"), "dev", "lo"]);
        netns::ip_ok(&[
            "-n",
            &c,
            "route",
            "replace",
            &format!("{svc}/32"),
            "via",
            &format!("{s1}.1"),
        ]);
        b
    } else {
        a.clone()
    };
    let lazy = LazyRestore::start(&net, &to, &s.store(), &set);
    assert_eq!(lazy.pid, sshd.pid, "restored under another pid");
    let said = ssh.run("echo v=$X");
    assert!(
        said.contains("v=before"),
        "echo $X after the restore printed {said:?}"
    );
    ssh.assert_fine("after the restore");
    let fig = lazy.finish();
    assert_no_rules(&net, &to, "after the restore");
    // Once every page is resident the session goes on, and ends cleanly.
    let said = ssh.run("echo w=$X");
    assert!(said.contains("w=before"), "{said:?}");
    ssh.exit();
    eprintln!(
        "ssh session{}: {} processes, {} pre-dumps, frozen {} µs; lock: dump {}, restore {}; \
         time to running {} µs",
        if moved {
            " moved to another namespace"
        } else {
            ""
        },
        dumped["processes"],
        dumped["predump"]["iterations"]
            .as_array()
            .map_or(0, Vec::len),
        dumped["stats"]["frozen_time"],
        lock_figures(&dumped),
        lock_figures(&fig),
        fig["time_to_running"],
    );
    if moved {
        eprintln!(
            "the ruleset left in the source namespace: {:?}",
            net.ruleset(&a)
        );
    }
}

#[test]
fn ssh_session_keeps_its_shell_across_a_precopied_dump_and_lazy_restore() {
    ssh_session(
        "ssh_session_keeps_its_shell_across_a_precopied_dump_and_lazy_restore",
        false,
    );
}

#[test]
fn ssh_session_keeps_its_shell_when_sshd_moves_to_another_namespace_with_its_address() {
    ssh_session(
        "ssh_session_keeps_its_shell_when_sshd_moves_to_another_namespace_with_its_address",
        true,
    );
}
