//! TCP and UDP sockets that are not connected (issue 14): listeners and bound UDP sockets,
//! IPv4, IPv6 and dual-stack, dumped (the process killed) and restored with their addresses,
//! backlogs and options, then used by clients from outside; python's http.server serving
//! after a restore; a port taken meanwhile; connections not yet accepted (refused, or dropped
//! with `--tcp-pending drop`); the `dump.tcp_pending` job key.

mod common;

use common::tree::Session;
use common::{clean_command, wait_for, Running};
use haul::dump::{dump_to_store, DumpOptions};
use haul::image::ImageSet;
use haul::store::Store;
use haul::sys::inetdiag;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn launch(mut cmd: Command, log: &Path) -> Running {
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    Running::logged(&mut cmd, log, true)
}

/// The ports the inetsock fixture printed (A B C D E).
fn ports(log: &Path) -> Vec<u16> {
    let text = std::fs::read_to_string(log).unwrap();
    let line = text.lines().find(|l| l.starts_with("ports ")).unwrap();
    line.split_whitespace()
        .skip(1)
        .map(|w| w.parse().unwrap())
        .collect()
}

/// Asks the fixture for its report (SIGUSR1) and returns its rows.
fn report(pid: i32, out: &Path) -> Vec<String> {
    // Emptied, not removed: the fixture appends to the file it opened.
    std::fs::File::create(out).unwrap();
    common::send_signal(pid, "USR1");
    let mut rows = Vec::new();
    let ok = wait_for(WAIT, || {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        rows = text.lines().map(str::to_string).collect();
        rows.last().map(String::as_str) == Some("end")
    });
    assert!(ok, "no report from pid {pid}: {rows:?}");
    rows
}

/// (state, backlog) of the TCP listener or UDP socket at `addr`, from sock_diag (outside).
fn diag(addr: SocketAddr, tcp: bool) -> Option<(u8, u32)> {
    let proto = if tcp {
        libc::IPPROTO_TCP
    } else {
        libc::IPPROTO_UDP
    };
    [libc::AF_INET, libc::AF_INET6]
        .into_iter()
        .flat_map(|f| inetdiag::sockets(f, proto).unwrap())
        .find(|s| s.local == addr && s.ino != 0)
        .map(|s| (s.state, s.wqueue))
}

fn dump_kill(r: &mut Running, store: &Store, opts: &DumpOptions) -> ImageSet {
    let d = dump_to_store(r.pid, store, "test", opts, Some(1))
        .unwrap_or_else(|e| panic!("dump of pid {}: {e}", r.pid));
    r.child.wait().expect("reap the dumped original");
    d.set
}

fn restore(set: &ImageSet, store: &Store) -> Result<i32, haul::restore::RestoreError> {
    let out = haul::restore::restore(
        set,
        store,
        &common::verified(haul::restore::PidChoice::Same),
    )?;
    Ok(out.pid)
}

/// Sends `what` on a new connection to `addr` and returns the whole answer.
fn ask(addr: SocketAddr, what: &str) -> String {
    let mut c = TcpStream::connect_timeout(&addr, WAIT).unwrap_or_else(|e| panic!("{addr}: {e}"));
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(what.as_bytes()).unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

/// Sends datagram `what` to `addr` from a socket of the same family; returns the answer.
fn ask_udp(addr: SocketAddr, what: &str) -> String {
    let me = if addr.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let u = UdpSocket::bind(me).unwrap();
    u.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 512];
    // UDP may drop: ask again until answered.
    for _ in 0..40 {
        u.send_to(what.as_bytes(), addr).unwrap();
        if let Ok((n, _)) = u.recv_from(&mut buf) {
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    panic!("no answer from {addr}");
}

#[test]
fn listeners_and_udp_sockets_come_back_with_their_options_and_serve() {
    let s = Session::start();
    let (log, out) = (s.path().join("log"), s.path().join("report"));
    let mut cmd = Command::new(common::fixture("inetsock"));
    cmd.arg(&out);
    let mut r = launch(cmd, &log);
    let p = ports(&log);
    let a: SocketAddr = format!("127.0.0.1:{}", p[0]).parse().unwrap();
    let b: SocketAddr = format!("[::1]:{}", p[1]).parse().unwrap();
    let c4: SocketAddr = format!("127.0.0.1:{}", p[2]).parse().unwrap();
    let c6: SocketAddr = format!("[::1]:{}", p[2]).parse().unwrap();
    let c_any: SocketAddr = format!("[::]:{}", p[2]).parse().unwrap();
    let d: SocketAddr = format!("127.0.0.1:{}", p[3]).parse().unwrap();
    let e: SocketAddr = format!("[::1]:{}", p[4]).parse().unwrap();
    // A (SO_REUSEADDR) served a connection and closed it first: its port has a connection
    // in TIME-WAIT, which the restore binds over.
    assert_eq!(ask(a, "before"), "A before");
    let time_wait = || {
        inetdiag::sockets(libc::AF_INET, libc::IPPROTO_TCP)
            .unwrap()
            .iter()
            .any(|s| s.local == a && s.state == 6)
    };
    assert!(wait_for(WAIT, time_wait), "no TIME-WAIT on {a}");
    let before = report(r.pid, &out);
    let backlogs = |()| {
        [
            diag(a, true),
            diag(b, true),
            diag(c_any, true),
            diag(d, false),
            diag(e, false),
        ]
    };
    let diag_before = backlogs(());
    assert_eq!(
        diag_before.map(|d| d.map(|(_, b)| b)),
        [Some(7), Some(3), Some(12), Some(0), Some(0)]
    );

    let store = Store::open_or_create(&s.store()).unwrap();
    let set = dump_kill(&mut r, &store, &DumpOptions::default());
    assert!(time_wait(), "the TIME-WAIT is gone before the restore");
    let pid = restore(&set, &store).unwrap_or_else(|e| panic!("restore: {e}"));
    assert_eq!(report(pid, &out), before);
    assert_eq!(backlogs(()), diag_before);
    // Each restored socket is the one the process serves.
    assert_eq!(ask(a, "to a"), "A to a");
    assert_eq!(ask(b, "to b"), "B to b");
    assert_eq!(ask(c4, "v4 to c"), "C v4 to c", "dual-stack over IPv4");
    assert_eq!(ask(c6, "v6 to c"), "C v6 to c");
    assert_eq!(ask_udp(d, "to d"), "D to d");
    assert_eq!(ask_udp(e, "to e"), "E to e");
}

/// A free port on 127.0.0.1 (the kernel's choice, released again).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn python_http_server_serves_after_restore() {
    let s = Session::start();
    let port = free_port().to_string();
    let dir = s.path().join("www");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), "hello from before\n").unwrap();
    let log = s.path().join("http.log");
    let mut cmd = clean_command(common::python3());
    cmd.args(["-m", "http.server", "--bind", "127.0.0.1", &port])
        .current_dir(&dir);
    let mut r = Running::logged(&mut cmd, &log, false);
    let get = || -> Option<String> {
        let mut c = TcpStream::connect(format!("127.0.0.1:{port}")).ok()?;
        c.set_read_timeout(Some(WAIT)).ok()?;
        c.write_all(b"GET /hello.txt HTTP/1.0\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut s = String::new();
        c.read_to_string(&mut s).ok()?;
        Some(s)
    };
    assert!(
        wait_for(WAIT, || get().is_some()),
        "http.server did not start"
    );
    // bash -c exec'd python: the pid is python's.
    let out = common::haul()
        .args([
            "dump",
            "--kill",
            "--json",
            "--pid",
            &r.pid.to_string(),
            "--store",
        ])
        .arg(s.store())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    r.child.wait().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let store = Store::open(&s.store()).unwrap();
    let set = store.load_set(v["set"].as_str().unwrap()).unwrap();
    restore(&set, &store).unwrap_or_else(|e| panic!("restore: {e}"));
    let got = get().expect("no answer after the restore");
    assert!(got.starts_with("HTTP/1.0 200"), "{got}");
    assert!(got.ends_with("hello from before\n"), "{got}");
    // curl, a client nobody here wrote.
    let curl = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}/hello.txt"))
        .output();
    match curl {
        Ok(c) => assert_eq!(
            String::from_utf8_lossy(&c.stdout),
            "hello from before\n200",
            "{c:?}"
        ),
        Err(e) => common::skip(
            "python_http_server_serves_after_restore (curl)",
            &e.to_string(),
        ),
    }
}

#[test]
fn a_port_taken_meanwhile_fails_the_restore_naming_it_before_anything_is_made() {
    let s = Session::start();
    let (log, out) = (s.path().join("log"), s.path().join("report"));
    let mut cmd = Command::new(common::fixture("inetsock"));
    cmd.arg(&out);
    let mut r = launch(cmd, &log);
    let p = ports(&log);
    let store = Store::open_or_create(&s.store()).unwrap();
    let set = dump_kill(&mut r, &store, &DumpOptions::default());
    // Someone else takes A's port meanwhile.
    let thief = std::net::TcpListener::bind(format!("127.0.0.1:{}", p[0])).unwrap();
    let err = restore(&set, &store)
        .expect_err("the restore should fail")
        .to_string();
    let fd = set.process.as_ref().unwrap().fds.iter().find(|f| {
        matches!(&f.kind, haul::image::FdKind::Inet(i) if i.local.map(|a| a.port()) == Some(p[0]))
    });
    let fd = fd.unwrap().fd;
    let want = format!(
        "pid {} fd {fd}: TCP 127.0.0.1:{} (listening): address 127.0.0.1 port {} cannot be bound \
         here (held by pid {} (",
        r.pid,
        p[0],
        p[0],
        std::process::id()
    );
    assert!(err.contains(&want), "{err}\nwant: {want}");
    assert!(err.contains("Address already in use"), "{err}");
    // Nothing was made: the pid is free.
    assert!(!Path::new(&format!("/proc/{}", r.pid)).exists());
    // Once the port is free again, the same set restores.
    drop(thief);
    let pid = restore(&set, &store).unwrap_or_else(|e| panic!("restore: {e}"));
    assert_eq!(
        ask(format!("127.0.0.1:{}", p[0]).parse().unwrap(), "x"),
        "A x"
    );
    assert_eq!(pid, r.pid);
}

/// A python listener that never accepts; prints its port, then "ready".
const NO_ACCEPT: &str = "import socket,time\nl=socket.socket()\nl.bind(('127.0.0.1',0))\nl.listen(5)\nprint(l.getsockname()[1])\nprint('ready',flush=True)\ntime.sleep(600)";

#[test]
fn connections_not_yet_accepted_are_refused_by_name_or_dropped_with_a_warning() {
    let s = Session::start();
    let log = s.path().join("py.log");
    let mut r = Running::logged(
        clean_command(common::python3()).args(["-c", NO_ACCEPT]),
        &log,
        true,
    );
    let port: u16 = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let c1 = TcpStream::connect(addr).unwrap();
    let _c2 = TcpStream::connect(addr).unwrap();
    assert!(wait_for(WAIT, || {
        inetdiag::sockets(libc::AF_INET, libc::IPPROTO_TCP)
            .unwrap()
            .iter()
            .any(|s| s.local == addr && s.state == 10 && s.rqueue == 2)
    }));
    let fd = haul::proc::fds(r.pid)
        .unwrap()
        .into_iter()
        .find(|&fd| haul::proc::fd_target(r.pid, fd).is_ok_and(|t| t.starts_with("socket:[")))
        .unwrap();
    let pid = r.pid.to_string();
    let check = |extra: &[&str]| {
        common::haul()
            .args(["dump", "--check", "--pid", &pid])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = check(&[]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let want = format!(
        "pid {pid} fd {fd}: TCP 127.0.0.1:{port} (listening) has 2 connections not yet \
         accepted: they are not carried (with dump.tcp_pending = \"drop\" or --tcp-pending \
         drop they are dropped and their clients see a reset)"
    );
    let text = String::from_utf8_lossy(&refused.stdout);
    assert!(text.contains(&want), "{text}\nwant: {want}");
    assert!(check(&["--tcp-pending", "drop"]).status.success());
    // A dump without the flag is refused the same way and leaves the process as it was.
    let store = s.store();
    let dump = |extra: &[&str]| {
        common::haul()
            .args(["dump", "--kill", "--json", "--pid", &pid, "--store"])
            .arg(&store)
            .args(extra)
            .output()
            .unwrap()
    };
    let no = dump(&[]);
    assert_eq!(no.status.code(), Some(1), "{no:?}");
    assert!(
        String::from_utf8_lossy(&no.stderr).contains(&want),
        "{no:?}"
    );
    assert!(common::alive(r.pid));
    let yes = dump(&["--tcp-pending", "drop"]);
    assert!(yes.status.success(), "{yes:?}");
    r.child.wait().unwrap();
    let warning = format!(
        "pid {pid} fd {fd}: TCP 127.0.0.1:{port} (listening): 2 connections not yet accepted \
         were dropped (their clients see a reset)"
    );
    let err = String::from_utf8_lossy(&yes.stderr);
    assert!(err.contains(&format!("warning: {warning}")), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&yes.stdout).unwrap();
    assert_eq!(v["stats"]["warnings"][0], warning.as_str(), "{v}");
    // The clients of the dropped connections see a reset.
    c1.set_read_timeout(Some(WAIT)).unwrap();
    let e = (&c1)
        .read(&mut [0u8; 8])
        .expect_err("the connection was reset");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    // Restored, the listener listens again with its backlog and an empty queue.
    let st = Store::open(&store).unwrap();
    let set = st.load_set(v["set"].as_str().unwrap()).unwrap();
    restore(&set, &st).unwrap_or_else(|e| panic!("restore: {e}"));
    assert_eq!(diag(addr, true), Some((10, 5)));
    let _c3 = TcpStream::connect(addr).unwrap();
}

#[test]
fn a_half_closed_connection_is_refused_with_its_four_tuple() {
    let s = Session::start();
    let script = "import socket,time\nl=socket.create_server(('127.0.0.1',0))\nprint(l.getsockname()[1])\nprint('ready',flush=True)\nc,a=l.accept()\nprint(c.fileno(),a[1],flush=True)\ntime.sleep(600)";
    let log = s.path().join("py.log");
    let r = Running::logged(
        clean_command(common::python3()).args(["-c", script]),
        &log,
        true,
    );
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let port: u16 = lines()[0].parse().unwrap();
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(wait_for(WAIT, || lines().len() >= 3));
    let l = lines();
    let mut it = l[2].split_whitespace();
    let (fd, peer) = (it.next().unwrap(), it.next().unwrap());
    // The client shuts down its side: the server's end is in CLOSE-WAIT, a state not carried
    // (an established connection is: tests/tcp_established.rs).
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let me = c.local_addr().unwrap();
    assert!(wait_for(WAIT, || {
        inetdiag::sockets(libc::AF_INET, libc::IPPROTO_TCP)
            .unwrap()
            .iter()
            .any(|s| s.remote == me && s.state == 8)
    }));
    let out = common::haul()
        .args(["dump", "--check", "--pid", &r.pid.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let want = format!(
        "pid {} fd {fd}: TCP 127.0.0.1:{port} -> 127.0.0.1:{peer} (CLOSE-WAIT): only \
         established connections are carried, not connections in this state",
        r.pid
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&want), "{text}\nwant: {want}");
}

#[test]
fn an_option_not_carried_is_named_by_dump_check_before_anything_is_frozen() {
    // UDP_CORK (a UDP socket holding back what it sends) is not carried: `--check`, which
    // freezes nothing, names it as the dump would.
    let s = Session::start();
    let script = "import socket,time\nu=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nu.bind(('127.0.0.1',0))\nu.setsockopt(socket.IPPROTO_UDP,1,1)\nprint(u.fileno(),u.getsockname()[1])\nprint('ready',flush=True)\ntime.sleep(600)";
    let log = s.path().join("py.log");
    let r = Running::logged(
        clean_command(common::python3()).args(["-c", script]),
        &log,
        true,
    );
    let first = std::fs::read_to_string(&log).unwrap();
    let mut it = first.lines().next().unwrap().split_whitespace();
    let (fd, port) = (it.next().unwrap(), it.next().unwrap());
    let want = format!(
        "pid {} fd {fd}: UDP 127.0.0.1:{port} has UDP_CORK set: this option is not carried yet",
        r.pid
    );
    let out = common::haul()
        .args(["dump", "--check", "--pid", &r.pid.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&want), "{text}\nwant: {want}");
    let out = common::haul()
        .args(["dump", "--kill", "--pid", &r.pid.to_string(), "--store"])
        .arg(s.path().join("store"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&want),
        "{out:?}"
    );
    assert!(common::alive(r.pid) && common::tracer_pid(r.pid) == Some(0));
}

#[test]
fn dump_tcp_pending_is_a_job_key_checked_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.toml");
    let job = "[process]\ncommand = [\"a\"]\n\n[dump]\ntcp_pending = \"drop\"\n";
    std::fs::write(&path, job).unwrap();
    let j = haul::job::load(&path).unwrap();
    assert_eq!(j.spec.dump.tcp_pending, haul::job::TcpPending::Drop);
    std::fs::write(&path, "[process]\ncommand = [\"a\"]\n").unwrap();
    let j = haul::job::load(&path).unwrap();
    assert_eq!(j.spec.dump.tcp_pending, haul::job::TcpPending::Refuse);
    std::fs::write(&path, job.replace("\"drop\"", "\"dorp\"")).unwrap();
    let err = haul::job::load(&path).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}:5:15: dump.tcp_pending: unknown value \"dorp\"; did you mean \"drop\"?",
            path.display()
        )
    );
}
