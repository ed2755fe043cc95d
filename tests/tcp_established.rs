//! Established TCP connections carried with the kernel's repair mode (issue #15): both ends of
//! a loopback connection in one tree, with bytes queued both ways (unread in a receive queue,
//! never sent in a send queue), dumped with `--kill` and restored, IPv4 and IPv6; a server in
//! the tree with its client outside (this test) carrying on on the same 4-tuple; a
//! `--leave-running` dump that leaves the connection untouched and out of repair mode; a
//! failed dump that leaves no socket in repair mode; states not carried refused by name.

mod common;

use common::tree::Session;
use common::{clean_command, wait_for, Running};
use haul::sys::{inetdiag, process, tcprepair};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
/// What tcpconn sends after the restore, each way (its `MORE`).
const MORE: u64 = 300_000;

fn launch(mut cmd: Command, log: &Path) -> Running {
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    Running::logged(&mut cmd, log, false)
}

/// The words after `prefix` on the log's line that starts with it, once there.
fn log_line(log: &Path, prefix: &str) -> Vec<String> {
    let mut got = None;
    let ok = wait_for(WAIT, || {
        got = std::fs::read_to_string(log).ok().and_then(|t| {
            t.lines().find(|l| l.starts_with(prefix)).map(|l| {
                l[prefix.len()..]
                    .split_whitespace()
                    .map(String::from)
                    .collect()
            })
        });
        got.is_some()
    });
    assert!(
        ok,
        "no line {prefix:?} in {}: {}",
        log.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
    got.unwrap()
}

/// Every TCP socket with local or remote port `port`, as sock_diag shows it from outside:
/// (local, remote, state, unread bytes, unsent/unacknowledged bytes), sorted.
fn tcp_by_port(port: u16) -> Vec<(SocketAddr, SocketAddr, u8, u32, u32)> {
    tcp_where(|l, r| l == port || r == port)
}

/// [`tcp_by_port`] of the connections between ports `a` and `b` only: a client's ephemeral
/// port may also be the local port of an earlier connection of another test, in TIME-WAIT
/// to another server.
fn tcp_between(a: u16, b: u16) -> Vec<(SocketAddr, SocketAddr, u8, u32, u32)> {
    tcp_where(|l, r| (l, r) == (a, b) || (l, r) == (b, a))
}

fn tcp_where(keep: impl Fn(u16, u16) -> bool) -> Vec<(SocketAddr, SocketAddr, u8, u32, u32)> {
    let mut v: Vec<_> = [libc::AF_INET, libc::AF_INET6]
        .into_iter()
        .flat_map(|f| inetdiag::sockets(f, libc::IPPROTO_TCP).unwrap())
        .filter(|s| s.state != 10 && keep(s.local.port(), s.remote.port()))
        .map(|s| (s.local, s.remote, s.state, s.rqueue, s.wqueue))
        .collect();
    v.sort();
    v
}

/// The 4-tuples and states of `conns`.
fn tuples(conns: &[(SocketAddr, SocketAddr, u8, u32, u32)]) -> Vec<(SocketAddr, SocketAddr, u8)> {
    conns.iter().map(|c| (c.0, c.1, c.2)).collect()
}

/// The fds of `pid` that are TCP sockets with local address `local`, and their inodes.
fn fds_of(pid: i32, local: SocketAddr, remote: SocketAddr) -> Vec<i32> {
    let inos: Vec<u64> = [libc::AF_INET, libc::AF_INET6]
        .into_iter()
        .flat_map(|f| inetdiag::sockets(f, libc::IPPROTO_TCP).unwrap())
        .filter(|s| s.local == local && s.remote == remote && s.ino != 0)
        .map(|s| s.ino)
        .collect();
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let t = std::fs::read_link(e.path()).unwrap_or_default();
        if inos
            .iter()
            .any(|i| t.to_str() == Some(&format!("socket:[{i}]")))
        {
            out.push(e.file_name().to_str().unwrap().parse().unwrap());
        }
    }
    out
}

/// Whether fd `fd` of `pid` (a TCP socket) is in repair mode, read through a copy.
fn in_repair(pid: i32, fd: i32) -> bool {
    let pidfd = process::pidfd_open(pid).unwrap();
    let copy = process::pidfd_getfd(&pidfd, fd).unwrap();
    tcprepair::in_repair(copy.as_fd()).unwrap()
}

/// `haul dump --kill` through the command line; returns the set id once `pids` are gone
/// (reaped: the root is our child, the others were re-parented here).
fn dump_kill(r: &mut Running, store: &Path, pids: &[i32]) -> String {
    let out = common::haul()
        .args([
            "dump",
            "--kill",
            "--json",
            "--pid",
            &r.pid.to_string(),
            "--store",
        ])
        .arg(store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "haul dump --kill: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    r.child.wait().unwrap();
    let gone = wait_for(WAIT, || {
        pids.iter().all(|&p| {
            let _ = waitpid(Pid::from_raw(p), Some(WaitPidFlag::WNOHANG));
            !Path::new(&format!("/proc/{p}")).exists()
        })
    });
    assert!(gone, "dumped with --kill, still there: {pids:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["set"].as_str().unwrap().to_string()
}

/// `haul restore SET --verify state` (same pids); returns the root's pid.
fn restore(store: &Path, set: &str) -> i32 {
    let out = common::haul()
        .args(["restore", "--json", "--verify", "state", set, "--store"])
        .arg(store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "haul restore {set}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["pid"].as_i64().unwrap() as i32
}

/// Waits for `pid` (our child now) to exit and returns its exit code.
fn exit_code(pid: i32) -> i32 {
    let mut code = None;
    let ok = wait_for(WAIT, || {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => code = Some(c),
            Ok(WaitStatus::Signaled(_, s, _)) => code = Some(128 + s as i32),
            _ => {}
        }
        code.is_some()
    });
    assert!(ok, "pid {pid} did not exit");
    code.unwrap()
}

fn both_ends_in_the_tree(fam: &str) {
    let s = Session::start();
    let log = s.path().join("log");
    let mut cmd = Command::new(common::fixture("tcpconn"));
    cmd.arg(fam);
    let mut r = launch(cmd, &log);
    let server_filled: u64 = log_line(&log, "server filled ")[0].parse().unwrap();
    let client_filled: u64 = log_line(&log, "client filled ")[0].parse().unwrap();
    let pids: Vec<i32> = log_line(&log, "pids ")
        .iter()
        .map(|w| w.parse().unwrap())
        .collect();
    let tuple: Vec<u16> = log_line(&log, "tuple ")
        .iter()
        .map(|w| w.parse().unwrap())
        .collect();
    // This connection only: another test's connection to a server on the same port may be in
    // TIME-WAIT still.
    let conn = || tcp_between(tuple[0], tuple[1]);
    // Both ends hold bytes: each receive queue unread, each send queue unsent.
    let before = conn();
    assert_eq!(before.len(), 2, "{before:?}");
    // Unread bytes both ways, and bytes not acknowledged (the client's autotuned send buffer
    // holds megabytes never sent).
    for c in &before {
        assert_eq!(c.2, inetdiag::TCP_ESTABLISHED, "{c:?}");
        assert!(c.3 > 0, "unread bytes: {c:?}");
    }
    assert!(before.iter().any(|c| c.4 > 100_000), "{before:?}");
    let before = tuples(&before);

    let set = dump_kill(&mut r, &s.store(), &pids);
    assert!(conn().is_empty(), "closed silently");
    let root = restore(&s.store(), &set);
    assert_eq!(root, pids[0]);
    // The same connection, the same 4-tuple, bytes queued still (how many moved on since is
    // TCP's business: a window the restore announces again lets unsent bytes go).
    let after = conn();
    assert_eq!(tuples(&after), before);
    assert!(after.iter().all(|c| c.3 > 0), "{after:?}");
    for &p in &pids {
        let (l, rem) = (before[0].0, before[0].1);
        let fds = [fds_of(p, l, rem), fds_of(p, rem, l)].concat();
        assert_eq!(fds.len(), 1, "pid {p} holds its end");
        assert!(
            !in_repair(p, fds[0]),
            "pid {p} fd {}: out of repair mode",
            fds[0]
        );
    }
    for &p in &pids {
        common::send_signal(p, "USR1");
    }
    // Every byte arrives once, in order, both ways.
    let got_s = log_line(&log, "server got ");
    let got_c = log_line(&log, "client got ");
    assert_eq!(
        got_s,
        [(client_filled + MORE).to_string(), "ok".into()],
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(got_c, [(server_filled + MORE).to_string(), "ok".into()]);
    assert_eq!(log_line(&log, "child exited "), ["0"]);
    assert_eq!(exit_code(root), 0);
}

#[test]
fn both_ends_in_the_tree_carry_on_ipv4() {
    both_ends_in_the_tree("4");
}

#[test]
fn both_ends_in_the_tree_carry_on_ipv6() {
    both_ends_in_the_tree("6");
}

/// A python echo server on `host`, serving one connection; returns it and its port. With
/// `fork`, a child it forks once connected holds the connection too (and sleeps).
fn echo_server(s: &Session, host: &str, fork: bool) -> (Running, u16) {
    let log = s.path().join("echo.log");
    let script = "import os,socket,sys,time\n\
        l=socket.create_server((sys.argv[1],0),family=socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)\n\
        print('port',l.getsockname()[1],flush=True)\n\
        c,_=l.accept()\n\
        c.setsockopt(socket.IPPROTO_TCP,socket.TCP_NODELAY,1)\n\
        if sys.argv[2]=='fork':\n\
        \x20   k=os.fork()\n\
        \x20   if k==0:\n\
        \x20       time.sleep(1000)\n\
        \x20       os._exit(0)\n\
        \x20   print('kid',k,flush=True)\n\
        while True:\n\
        \x20   d=c.recv(65536)\n\
        \x20   if not d: break\n\
        \x20   c.sendall(d)\n\
        print('done',flush=True)\n";
    let mut cmd = clean_command(common::python3());
    cmd.args(["-c", script, host, if fork { "fork" } else { "-" }]);
    let r = Running::logged(&mut cmd, &log, false);
    let port = log_line(&log, "port ")[0].parse().unwrap();
    (r, port)
}

/// Position-keyed bytes `from..from+len` of the stream the test sends.
fn pattern(from: u64, len: usize) -> Vec<u8> {
    (from..from + len as u64)
        .map(|i| ((i.wrapping_mul(2654435761) >> 13) ^ (i >> 11)) as u8)
        .collect()
}

/// Sends `len` bytes of the pattern from `*sent` and reads back the echo of `len` bytes,
/// checking it.
fn exchange(c: &mut TcpStream, sent: &mut u64, len: usize) {
    let out = pattern(*sent, len);
    c.write_all(&out).unwrap();
    let mut back = vec![0u8; len];
    c.read_exact(&mut back).unwrap();
    assert!(back == out, "the echo of bytes {sent}.. differs");
    *sent += len as u64;
}

#[test]
fn a_server_in_the_tree_carries_on_with_its_client_outside_on_the_same_four_tuple() {
    let s = Session::start();
    let (mut r, port) = echo_server(&s, "127.0.0.1", false);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let me = c.local_addr().unwrap();
    let mut sent = 0;
    exchange(&mut c, &mut sent, 100_000);
    // Echoed but not read yet when the server is dumped: it waits in our receive queue.
    let pending = pattern(sent, 50_000);
    c.write_all(&pending).unwrap();
    sent += pending.len() as u64;
    assert!(wait_for(WAIT, || tcprepair::inq(c.as_fd()).unwrap() == 50_000));
    let before = tuples(&tcp_between(me.port(), addr.port()));
    assert_eq!(before.len(), 2, "{before:?}");
    assert_eq!(fds_of(r.pid, addr, me).len(), 1);

    // The client stays quiet from the dump to the end of the restore (no network lock here).
    let server = r.pid;
    let set = dump_kill(&mut r, &s.store(), &[server]);
    let pid = restore(&s.store(), &set);
    assert_eq!(
        tuples(&tcp_between(me.port(), addr.port())),
        before,
        "the same 4-tuple, established"
    );
    let fds = fds_of(pid, addr, me);
    assert_eq!(fds.len(), 1, "pid {pid} holds the connection");
    assert!(!in_repair(pid, fds[0]));

    let mut back = vec![0u8; pending.len()];
    c.read_exact(&mut back).unwrap();
    assert!(back == pending, "the echo read after the restore differs");
    for _ in 0..5 {
        exchange(&mut c, &mut sent, 64_000);
    }
    assert_eq!(c.local_addr().unwrap(), me);
    assert_eq!(c.peer_addr().unwrap(), addr);
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "nothing echoed twice: {} bytes",
        rest.len()
    );
    assert_eq!(exit_code(pid), 0);
}

#[test]
fn a_leave_running_dump_leaves_the_connection_untouched_and_out_of_repair_mode() {
    let s = Session::start();
    let (r, port) = echo_server(&s, "::1", false);
    let addr: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let mut c = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let me = c.local_addr().unwrap();
    let mut sent = 0;
    exchange(&mut c, &mut sent, 80_000);
    let before = tuples(&tcp_between(me.port(), addr.port()));
    let out = common::haul()
        .args([
            "dump",
            "--leave-running",
            "--json",
            "--pid",
            &r.pid.to_string(),
            "--store",
        ])
        .arg(s.store())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(tuples(&tcp_between(me.port(), addr.port())), before);
    let fds = fds_of(r.pid, addr, me);
    assert_eq!(fds.len(), 1);
    assert!(!in_repair(r.pid, fds[0]), "the socket left in repair mode");
    assert_eq!(common::tracer_pid(r.pid), Some(0));
    // The image holds the connection with its sequence numbers.
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let store = haul::store::Store::open(&s.store()).unwrap();
    let set = store.load_set(v["set"].as_str().unwrap()).unwrap();
    let conns: Vec<_> = set
        .process
        .as_ref()
        .unwrap()
        .fds
        .iter()
        .filter_map(|f| match &f.kind {
            haul::image::FdKind::Inet(i) => i.conn.as_ref().map(|c| (i.peer, c)),
            _ => None,
        })
        .collect();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].0, Some(me));
    assert_eq!(conns[0].1.state, inetdiag::TCP_ESTABLISHED);
    // A restore while the original runs is refused by the connection's 4-tuple, before
    // anything is made.
    let opts = haul::restore::RestoreOptions {
        pid: haul::restore::PidChoice::Any,
        ..Default::default()
    };
    let e = haul::restore::restore(&set, &store, &opts)
        .expect_err("a restore beside the original is refused");
    let want = format!(
        "pid {} fd {}: TCP {addr} -> {me} (ESTABLISHED): a TCP socket here has this 4-tuple \
         already (ESTABLISHED)",
        r.pid, fds[0]
    );
    assert!(e.to_string().contains(&want), "{e}\nwant: {want}");
    assert_eq!(tuples(&tcp_between(me.port(), addr.port())), before);
    for _ in 0..3 {
        exchange(&mut c, &mut sent, 40_000);
    }
}

#[test]
fn a_dump_that_fails_after_reading_leaves_no_socket_in_repair_mode() {
    let s = Session::start();
    let (r, port) = echo_server(&s, "127.0.0.1", false);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let me = c.local_addr().unwrap();
    let mut sent = 0;
    exchange(&mut c, &mut sent, 10_000);
    let store = haul::store::Store::open_or_create(&s.store()).unwrap();
    // Memory is copied after the connections are read in repair mode.
    let opts = haul::dump::DumpOptions {
        fail_at: Some(haul::dump::Step::Memory),
        ..Default::default()
    };
    let e = haul::dump::dump_to_store(r.pid, &store, "test", &opts, Some(1))
        .expect_err("the dump fails on purpose");
    assert!(e.to_string().contains("injected"), "{e}");
    let fds = fds_of(r.pid, addr, me);
    assert_eq!(fds.len(), 1);
    assert!(!in_repair(r.pid, fds[0]), "the socket left in repair mode");
    assert_eq!(common::tracer_pid(r.pid), Some(0));
    exchange(&mut c, &mut sent, 10_000);
}

#[test]
fn states_not_carried_are_refused_by_name_and_nothing_is_touched() {
    let s = Session::start();
    let log = s.path().join("py.log");
    // c: CLOSE-WAIT (its peer shut down writing), a: FIN-WAIT-2; e/f an established pair.
    let script = "import socket,time\n\
        l=socket.create_server(('127.0.0.1',0))\n\
        c=socket.create_connection(l.getsockname())\n\
        a,_=l.accept()\n\
        a.shutdown(socket.SHUT_WR)\n\
        e=socket.create_connection(l.getsockname())\n\
        f,_=l.accept()\n\
        print('ready',c.getsockname()[1],l.getsockname()[1],e.getsockname()[1],flush=True)\n\
        time.sleep(600)\n";
    let mut cmd = clean_command(common::python3());
    cmd.args(["-c", script]);
    let r = Running::logged(&mut cmd, &log, false);
    let w: Vec<u16> = log_line(&log, "ready ")
        .iter()
        .map(|w| w.parse().unwrap())
        .collect();
    let (cport, lport, eport) = (w[0], w[1], w[2]);
    let lo = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    let states = || tcp_by_port(cport);
    assert!(wait_for(WAIT, || {
        let st: Vec<u8> = states().iter().map(|s| s.2).collect();
        st.contains(&8) && st.contains(&5)
    }));
    let before = (states(), tcp_by_port(eport));
    let cfd = fds_of(r.pid, lo(cport), lo(lport))[0];
    let afd = fds_of(r.pid, lo(lport), lo(cport))[0];

    let out = common::haul()
        .args(["dump", "--check", "--json", "--pid", &r.pid.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reasons: Vec<String> = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let want = |fd: i32, here: u16, there: u16, state: &str| {
        format!(
            "pid {} fd {fd}: TCP 127.0.0.1:{here} -> 127.0.0.1:{there} ({state}): only \
             established connections are carried, not connections in this state",
            r.pid
        )
    };
    assert!(
        reasons.contains(&want(cfd, cport, lport, "CLOSE-WAIT")),
        "{reasons:#?}"
    );
    assert!(
        reasons.contains(&want(afd, lport, cport, "FIN-WAIT-2")),
        "{reasons:#?}"
    );
    assert_eq!(
        reasons.len(),
        2,
        "the established pair is no reason: {reasons:#?}"
    );

    let out = common::haul()
        .args(["dump", "--kill", "--pid", &r.pid.to_string(), "--store"])
        .arg(s.store())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("(CLOSE-WAIT)"), "{err}");
    // Nothing touched: running, not traced, the same sockets, none in repair mode.
    assert!(common::alive(r.pid));
    assert_eq!(common::tracer_pid(r.pid), Some(0));
    assert_eq!((states(), tcp_by_port(eport)), before);
    for fd in [
        cfd,
        afd,
        fds_of(r.pid, lo(eport), lo(lport))[0],
        fds_of(r.pid, lo(lport), lo(eport))[0],
    ] {
        assert!(!in_repair(r.pid, fd), "fd {fd}");
    }
}

#[test]
fn a_connection_two_processes_of_the_tree_hold_is_read_once_and_comes_back_shared() {
    let s = Session::start();
    let (mut r, port) = echo_server(&s, "127.0.0.1", true);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let me = c.local_addr().unwrap();
    let kid: i32 = log_line(&s.path().join("echo.log"), "kid ")[0]
        .parse()
        .unwrap();
    let mut sent = 0;
    exchange(&mut c, &mut sent, 30_000);
    let before = tuples(&tcp_between(me.port(), addr.port()));
    assert_eq!(fds_of(kid, addr, me).len(), 1, "the child holds it");

    let server = r.pid;
    let set = dump_kill(&mut r, &s.store(), &[server, kid]);
    let pid = restore(&s.store(), &set);
    assert_eq!(tuples(&tcp_between(me.port(), addr.port())), before);
    // One socket, held by both.
    let (pfd, kfd) = (fds_of(pid, addr, me), fds_of(kid, addr, me));
    assert_eq!((pfd.len(), kfd.len()), (1, 1), "both hold the connection");
    let link = |p: i32, fd: i32| std::fs::read_link(format!("/proc/{p}/fd/{fd}")).unwrap();
    assert_eq!(link(pid, pfd[0]), link(kid, kfd[0]));
    assert!(!in_repair(pid, pfd[0]));
    for _ in 0..3 {
        exchange(&mut c, &mut sent, 30_000);
    }
}

#[test]
fn a_connection_a_process_outside_the_tree_holds_too_is_refused_naming_it() {
    // The parent makes the connection and forks; only the child is dumped: the parent, outside
    // the tree, holds the same socket. A kill-mode dump would leave the parent's socket in
    // repair mode, and a restore would make the 4-tuple twice.
    let s = Session::start();
    let log = s.path().join("py.log");
    let script = "import os,socket,time\n\
        l=socket.create_server(('127.0.0.1',0))\n\
        c=socket.create_connection(l.getsockname())\n\
        a,_=l.accept()\n\
        l.close()\n\
        k=os.fork()\n\
        if k == 0:\n\
        \x20a.close(); time.sleep(600)\n\
        print('ready',k,c.fileno(),flush=True)\n\
        time.sleep(600)\n";
    let mut cmd = clean_command(common::python3());
    cmd.args(["-c", script]);
    let r = Running::logged(&mut cmd, &log, false);
    let w: Vec<i32> = log_line(&log, "ready ")
        .iter()
        .map(|w| w.parse().unwrap())
        .collect();
    let (kid, fd) = (w[0], w[1]);
    let out = common::haul()
        .args(["dump", "--check", "--json", "--pid", &kid.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reasons: Vec<String> = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let want = format!("is held by pid {} fd {fd} too, outside the tree", r.pid);
    assert!(
        reasons.len() == 1
            && reasons[0].starts_with(&format!("pid {kid} fd {fd}: TCP 127.0.0.1:"))
            && reasons[0].contains(&want),
        "{reasons:#?}"
    );
    // The dump says the same and touches nothing.
    let out = common::haul()
        .args(["dump", "--kill", "--pid", &kid.to_string(), "--store"])
        .arg(s.store())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&want),
        "{out:?}"
    );
    assert!(common::alive(kid) && common::tracer_pid(kid) == Some(0));
}
