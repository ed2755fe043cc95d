//! Unix sockets other than socket pairs (issue #14): bound to a path or an abstract name,
//! listening with their backlog, datagram sockets with what waits in them, a connection
//! accepted from a listener with bytes queued both ways, and their options; all carried by
//! a dump and restore, and checked from outside (the fixture's own report, and new clients
//! that connect to the restored listeners). Refused by name: fds in flight, and a peer
//! outside the checkpoint.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::tree::Session;
use common::{clean_command, fixture, send_signal, wait_for, Running};
use haul::dump::{dump_to_store, DumpOptions};
use haul::image::{FdKind, ImageSet};
use haul::restore::restore;
use haul::store::Store;

/// Dumps `r` into a new store under `dir` (killing it) and reaps it.
fn dump_kill(r: &mut Running, dir: &Path) -> (ImageSet, Store) {
    let store = Store::open_or_create(&dir.join("store")).expect("create store");
    let d = dump_to_store(r.pid, &store, "test", &DumpOptions::default(), Some(1))
        .unwrap_or_else(|e| panic!("dump of pid {}: {e}", r.pid));
    r.child.wait().expect("reap the dumped original");
    (d.set, store)
}

/// Sends `sig` to `pid` and waits until `out` holds one more `end` line than before;
/// returns the lines of that report.
fn report(pid: i32, out: &Path, sig: &str) -> Vec<String> {
    let ends = |s: &str| s.lines().filter(|l| *l == "end").count();
    let before = ends(&std::fs::read_to_string(out).unwrap_or_default());
    send_signal(pid, sig);
    let mut text = String::new();
    let ok = wait_for(Duration::from_secs(10), || {
        text = std::fs::read_to_string(out).unwrap_or_default();
        ends(&text) > before
    });
    assert!(ok, "no report from pid {pid} after SIG{sig}: {text}");
    let report = text.split("end\n").nth(before).unwrap_or_default();
    report.lines().map(String::from).collect()
}

/// One message to a stream listener at `path`, and its answer.
fn ask_stream(path: &Path, msg: &str) -> String {
    let mut s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {path:?}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(msg.as_bytes()).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    got
}

/// One message to the seqpacket listener at abstract `name`, and its answer (python3 as the
/// client: std has no seqpacket sockets).
fn ask_seqpacket(name: &str, msg: &str) -> String {
    let out = Command::new(common::python3())
        .args([
            "-c",
            "import socket,sys\n\
             s=socket.socket(socket.AF_UNIX,socket.SOCK_SEQPACKET)\n\
             s.settimeout(10)\n\
             s.connect('\\0'+sys.argv[1])\ns.send(sys.argv[2].encode())\n\
             print(s.recv(100).decode())\n",
            name,
            msg,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn unix_sockets_come_back_bound_listening_connected_with_their_queues_and_options() {
    let s = Session::start();
    let dir = s.path().join("socks");
    std::fs::create_dir(&dir).unwrap();
    let out = s.path().join("out");
    let mut cmd = clean_command(fixture("unixsock"));
    cmd.arg(&dir).arg(&out);
    let mut r = Running::logged(&mut cmd, &s.path().join("log"), true);
    let pid = r.pid;
    let before = report(pid, &out, "USR1");
    assert_eq!(before.len(), 9, "{before:#?}");
    let (set, store) = dump_kill(&mut r, s.path());
    let p = set.process.as_ref().expect("one process");
    let kinds: Vec<(i32, &str)> = p
        .fds
        .iter()
        .filter(|f| (20..=25).contains(&f.fd))
        .map(|f| {
            let k = match &f.kind {
                FdKind::Unix(_) => "unix",
                FdKind::UnixPair { .. } => "pair",
                _ => "other",
            };
            (f.fd, k)
        })
        .collect();
    assert_eq!(
        kinds,
        (20..=25).map(|fd| (fd, "unix")).collect::<Vec<_>>(),
        "every socket of the fixture is a unix socket of the image"
    );
    // The socket files the original left behind are still there: the restore replaces them.
    assert!(dir.join("listen.sock").exists());
    let got = restore(
        &set,
        &store,
        &common::verified(haul::restore::PidChoice::Same),
    )
    .unwrap_or_else(|e| panic!("restore of pid {pid}: {e}"));
    assert_eq!(got.pid, pid);
    let after = report(pid, &out, "USR1");
    assert_eq!(
        after, before,
        "names, peers, listening, options, fd flags and socket file modes"
    );
    let queues = report(pid, &out, "USR2");
    let d2 = dir.join("d2.sock");
    assert_eq!(
        queues,
        [
            format!("d1 dgram-one from {}", d2.display()),
            format!("d1 dgram-two from {}", d2.display()),
            "client to-client".to_string(),
            "accepted to-accepted".to_string(),
        ]
    );
    // New clients from outside, served by the restored listeners.
    assert_eq!(ask_stream(&dir.join("listen.sock"), "hello"), "echo hello");
    assert_eq!(
        ask_seqpacket(&format!("haul-unixsock-{pid}"), "packet"),
        "echo packet"
    );
    assert_eq!(ask_stream(&dir.join("listen.sock"), "again"), "echo again");
}

#[test]
fn a_python_unix_stream_server_serves_new_clients_after_restore() {
    let s = Session::start();
    let path = s.path().join("server.sock");
    let script = "import socketserver,sys\n\
        class H(socketserver.StreamRequestHandler):\n\
        \x20def handle(self):\n\
        \x20 self.wfile.write(b'served '+self.rfile.readline())\n\
        srv=socketserver.UnixStreamServer(sys.argv[1],H)\n\
        print('ready',flush=True)\n\
        srv.serve_forever()\n";
    let mut cmd = clean_command(common::python3());
    cmd.args(["-c", script]).arg(&path);
    let mut r = Running::logged(&mut cmd, &s.path().join("log"), true);
    assert_eq!(ask_stream(&path, "one\n"), "served one\n");
    let (set, store) = dump_kill(&mut r, s.path());
    let got = restore(
        &set,
        &store,
        &common::verified(haul::restore::PidChoice::Same),
    )
    .unwrap_or_else(|e| panic!("restore: {e}"));
    assert_eq!(got.pid, r.pid);
    assert_eq!(ask_stream(&path, "two\n"), "served two\n");
    assert_eq!(ask_stream(&path, "three\n"), "served three\n");
}

/// The inode of fd `fd` of `pid` (`socket:[N]`).
fn inode(pid: i32, fd: i32) -> String {
    let t = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    let t = t.to_string_lossy();
    t.split(":[")
        .nth(1)
        .unwrap()
        .trim_end_matches(']')
        .to_string()
}

/// `haul dump --check --json` of `pid`: exit code and reasons.
fn check_reasons(pid: i32) -> (Option<i32>, Vec<String>) {
    let out = common::haul()
        .args(["dump", "--check", "--json", "--pid", &pid.to_string()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let reasons = v["reasons"]
        .as_array()
        .map(|a| a.iter().map(|r| r.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    (out.status.code(), reasons)
}

#[test]
fn a_peer_outside_the_tree_and_fds_in_flight_are_refused_by_name() {
    let s = Session::start();
    let path = s.path().join("l.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    // fd 40: connected to the test's listener (the peer, fd of the test, is outside).
    // fd 41: a connection accepted on a listener of its own (fd 43), with an fd in flight
    // sent from its client (fd 42).
    let script = "import os,socket,sys,time\n\
        c=socket.socket(socket.AF_UNIX)\nc.connect(sys.argv[1])\nos.dup2(c.fileno(),40)\n\
        l=socket.socket(socket.AF_UNIX)\nl.bind(sys.argv[1]+'.l')\nl.listen()\n\
        k=socket.socket(socket.AF_UNIX)\nk.connect(sys.argv[1]+'.l')\na,_=l.accept()\n\
        socket.send_fds(k,[b'x'],[0])\n\
        os.dup2(a.fileno(),41)\nos.dup2(k.fileno(),42)\nos.dup2(l.fileno(),43)\n\
        for s in (c,l,k,a): s.close()\n\
        print('ready',flush=True)\ntime.sleep(120)\n";
    let mut cmd = clean_command(common::python3());
    cmd.args(["-c", script]).arg(&path);
    let r = Running::logged(&mut cmd, &s.path().join("log"), true);
    let (accepted, _) = listener.accept().unwrap();
    use std::os::fd::AsRawFd;
    let me = std::process::id() as i32;
    let (c, peer) = (inode(r.pid, 40), inode(me, accepted.as_raw_fd()));
    let (a, k) = (inode(r.pid, 41), inode(r.pid, 42));
    let (code, reasons) = check_reasons(r.pid);
    assert_eq!(code, Some(1), "{reasons:#?}");
    assert_eq!(
        reasons,
        [
            format!(
                "pid {} fd 41: socket:[{a}] (UNIX, a stream socket accepted on {}.l, connected \
                 to socket:[{k}]) has fds in flight in its queue (SCM_RIGHTS): this is not \
                 supported yet",
                r.pid,
                path.display()
            ),
            format!(
                "pid {} fd 40: socket:[{c}] (UNIX, an unbound stream socket, connected to \
                 socket:[{peer}]) leads to another process: its peer socket:[{peer}] (bound to \
                 {}) is held by no process of the tree, but by pid {me} fd {}",
                r.pid,
                path.display(),
                accepted.as_raw_fd()
            ),
        ]
    );
    // A dump says the same and leaves the process running.
    let store = Store::open_or_create(&s.store()).unwrap();
    let e = dump_to_store(r.pid, &store, "test", &DumpOptions::default(), Some(1))
        .expect_err("refused");
    assert!(e.to_string().contains(&reasons[0]), "{e}");
    assert!(e.to_string().contains(&reasons[1]), "{e}");
    assert_eq!(common::tracer_pid(r.pid), Some(0));
    assert!(common::alive(r.pid));
    // A datagram socket's fd in flight (fd 44, sent from fd 45) is named by the dump, under
    // the freeze (a peek before it would hide empty datagrams from the capture).
    let script = "import os,socket,sys,time\n\
        d=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\nd.bind(sys.argv[1]+'.d')\n\
        os.dup2(d.fileno(),44)\n\
        e=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\nos.dup2(e.fileno(),45)\n\
        e.connect(sys.argv[1]+'.d')\nsocket.send_fds(e,[b'x'],[0])\nd.close();e.close()\n\
        print('ready',flush=True)\ntime.sleep(120)\n";
    let mut cmd = clean_command(common::python3());
    cmd.args(["-c", script]).arg(&path);
    let r = Running::logged(&mut cmd, &s.path().join("log2"), true);
    let e = dump_to_store(r.pid, &store, "test", &DumpOptions::default(), Some(1))
        .expect_err("refused")
        .to_string();
    let d = inode(r.pid, 44);
    assert!(
        e.contains(&format!(
            "pid {} fd 44: socket:[{d}] (UNIX, a datagram socket bound to {}.d) has fds in \
             flight in its queue (SCM_RIGHTS): this is not supported yet",
            r.pid,
            path.display()
        )),
        "{e}"
    );
    assert_eq!(common::tracer_pid(r.pid), Some(0));
    assert!(common::alive(r.pid));
}

#[test]
fn a_socket_pair_keeps_its_buffer_sizes_passcred_and_peek_offset() {
    // Left open by the process-tree issue: a pair's options were not carried.
    let s = Session::start();
    let out = s.path().join("out");
    let script = "import socket,signal,sys\n\
        S=socket.SOL_SOCKET;PEEK_OFF=42\n\
        a,b=socket.socketpair()\n\
        a.setsockopt(S,socket.SO_SNDBUF,70000)\nb.setsockopt(S,socket.SO_RCVBUF,30000)\n\
        a.setsockopt(S,socket.SO_PASSCRED,1)\nb.setsockopt(S,PEEK_OFF,0)\n\
        a.send(b'hello')\nb.recv(2,socket.MSG_PEEK)\n\
        def rep(*_):\n\
        \x20with open(sys.argv[1],'a') as f:\n\
        \x20 f.write(' '.join(str(x.getsockopt(S,o)) for x in (a,b) for o in \
        (socket.SO_SNDBUF,socket.SO_RCVBUF,socket.SO_PASSCRED,PEEK_OFF))+'\\n')\n\
        def peek(*_):\n\
        \x20with open(sys.argv[1],'a') as f:\n\
        \x20 f.write('peek '+b.recv(10,socket.MSG_PEEK).decode()+'\\n')\n\
        signal.signal(signal.SIGUSR1,rep)\nsignal.signal(signal.SIGUSR2,peek)\n\
        print('ready',flush=True)\n\
        while True: signal.pause()\n";
    let mut cmd = clean_command(common::python3());
    cmd.args(["-c", script]).arg(&out);
    let mut r = Running::logged(&mut cmd, &s.path().join("log"), true);
    let lines = |n: usize| {
        let mut got = Vec::new();
        let ok = wait_for(Duration::from_secs(10), || {
            got = std::fs::read_to_string(&out)
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect();
            got.len() >= n
        });
        assert!(ok, "no line {n}: {got:?}");
        got
    };
    send_signal(r.pid, "USR1");
    let before = lines(1)[0].clone();
    assert_eq!(before, "140000 212992 1 -1 212992 60000 0 2", "as set");
    let (set, store) = dump_kill(&mut r, s.path());
    let got = restore(
        &set,
        &store,
        &common::verified(haul::restore::PidChoice::Same),
    )
    .unwrap_or_else(|e| panic!("restore: {e}"));
    assert_eq!(got.pid, r.pid);
    send_signal(r.pid, "USR1");
    assert_eq!(lines(2)[1], before);
    send_signal(r.pid, "USR2");
    assert_eq!(
        lines(3)[2],
        "peek llo",
        "the peek offset is past the 2 bytes peeked"
    );
}

#[test]
fn a_restore_is_refused_naming_the_path_when_a_live_listener_took_it() {
    let s = Session::start();
    let path = s.path().join("server.sock");
    let script = "import socket,sys,time\n\
        l=socket.socket(socket.AF_UNIX)\nl.bind(sys.argv[1])\nl.listen(4)\n\
        print('ready',flush=True)\ntime.sleep(120)\n";
    let mut cmd = clean_command(common::python3());
    cmd.args(["-c", script]).arg(&path);
    let mut r = Running::logged(&mut cmd, &s.path().join("log"), true);
    let (set, store) = dump_kill(&mut r, s.path());
    std::fs::remove_file(&path).unwrap();
    let _taken = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let e = match restore(
        &set,
        &store,
        &common::verified(haul::restore::PidChoice::Same),
    ) {
        Ok(got) => panic!("restored as pid {} over a live listener", got.pid),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains(&format!(
            "binds {}: a live socket is bound there and accepts connections",
            path.display()
        )),
        "{e}"
    );
    assert!(
        UnixStream::connect(&path).is_ok(),
        "the live listener's socket file was left alone"
    );
}

/// A connection whose peer was closed (as sshd's session process holds the end of its
/// monitor pair once the pre-auth child is gone): it comes back with what waited in it, then
/// end of file, and writing into it still fails with EPIPE. A seqpacket one is refused by name
/// (its end of file reads as an empty record).
#[test]
fn a_stream_whose_peer_is_closed_comes_back_with_its_bytes_then_end_of_file() {
    let s = Session::start();
    let out = s.path().join("out");
    let script = "import socket,signal,sys,time\n\
        a,b=socket.socketpair()\n\
        b.sendall(b'left behind'); b.close()\n\
        if len(sys.argv) > 2:\n\
        \x20c,d=socket.socketpair(socket.AF_UNIX,socket.SOCK_SEQPACKET); d.close()\n\
        def rep(*_):\n\
        \x20r=[]\n\
        \x20while (x:=a.recv(4)): r.append(x)\n\
        \x20try: a.send(b'x'); r.append(b'|sent')\n\
        \x20except BrokenPipeError: r.append(b'|EPIPE')\n\
        \x20open(sys.argv[1],'wb').write(b''.join(r)+b'\\nend\\n')\n\
        signal.signal(signal.SIGUSR1,rep)\n\
        print('ready',flush=True)\n\
        while True: time.sleep(1)\n";
    let mut cmd = clean_command(common::python3());
    cmd.args(["-c", script]).arg(&out).arg("seqpacket");
    let seq = Running::logged(&mut cmd, &s.path().join("log-seq"), true);
    let (code, reasons) = check_reasons(seq.pid);
    assert_eq!(code, Some(1), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("seqpacket") && r.contains("connected to a peer that is closed")),
        "{reasons:?}"
    );
    drop(seq);

    let mut cmd = clean_command(common::python3());
    cmd.args(["-c", script]).arg(&out);
    let mut r = Running::logged(&mut cmd, &s.path().join("log"), true);
    let (set, store) = dump_kill(&mut r, s.path());
    let fds = &set.process.as_ref().expect("one process").fds;
    let closed = fds
        .iter()
        .filter(|f| matches!(&f.kind, FdKind::Unix(u) if u.peer_closed))
        .count();
    assert_eq!(closed, 1, "{fds:?}");
    let got = restore(
        &set,
        &store,
        &common::verified(haul::restore::PidChoice::Same),
    )
    .unwrap_or_else(|e| panic!("restore: {e}"));
    assert_eq!(got.pid, r.pid);
    assert_eq!(report(got.pid, &out, "USR1"), ["left behind|EPIPE"]);
    send_signal(got.pid, "KILL");
}

#[test]
fn a_datagram_socket_connected_to_a_logging_socket_outside_is_connected_again_by_name() {
    // As a service's syslog socket connected to /dev/log: the test is the logging daemon.
    let s = Session::start();
    let path = s.path().join("log.sock");
    let log = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    log.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let script = "import os,signal,socket,sys,time\n\
        d=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\nd.connect(sys.argv[1])\n\
        d.send(b'before')\n\
        signal.signal(signal.SIGUSR1,lambda *a: d.send(b'after %d' % os.getpid()))\n\
        print('ready',flush=True)\nwhile True: time.sleep(1)\n";
    let mut cmd = clean_command(common::python3());
    cmd.args(["-c", script]).arg(&path);
    let mut r = Running::logged(&mut cmd, &s.path().join("log"), true);
    let mut buf = [0u8; 64];
    let n = log.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"before");
    let (code, reasons) = check_reasons(r.pid);
    assert_eq!(code, Some(0), "{reasons:#?}");
    let (set, store) = dump_kill(&mut r, s.path());
    let restored = restore(
        &set,
        &store,
        &common::verified(haul::restore::PidChoice::Same),
    )
    .unwrap_or_else(|e| panic!("restore: {e}"));
    send_signal(restored.pid, "USR1");
    let n = log.recv(&mut buf).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&buf[..n]),
        format!("after {}", restored.pid)
    );
    send_signal(restored.pid, "KILL");

    // With nothing bound at that name any more, the restore is refused naming it, before
    // anything is made.
    drop(log);
    std::fs::remove_file(&path).unwrap();
    // (Its pid must be free again for a restore under the same pid: reap it, as its
    // subreaper.)
    assert!(wait_for(Duration::from_secs(20), || {
        let pid = nix::unistd::Pid::from_raw(restored.pid);
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        !common::alive(restored.pid)
    }));
    let e = restore(
        &set,
        &store,
        &common::verified(haul::restore::PidChoice::Same),
    )
    .expect_err("refused")
    .to_string();
    assert!(
        e.contains(&format!(
            "is connected to {}, outside the checkpoint: no datagram socket is bound there here",
            path.display()
        )),
        "{e}"
    );
    assert!(!common::alive(restored.pid));
}
