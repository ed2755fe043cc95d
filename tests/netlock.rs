//! The network lock (issue #15) with the real `nft` and the kernel's real ruleset: while held,
//! a connection's packets are dropped in both directions (no RST, the peer retransmits after
//! the release); its owner table goes with the process holding it, SIGKILL too; a dump runs no
//! `nft` when there is nothing to lock; `[network] lock` is a job key.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{fixture, haul, read_numbers, skip, wait_for};
use haul::netlock::{Conn, NetLock};

/// Whether `nft` runs here; else the test is skipped (`common::skip`).
fn nft_here(test: &str) -> bool {
    let ok = Command::new(haul::netlock::nft_tool())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(test, "nft (nftables) is not installed");
    }
    ok
}

/// `nft ARGS` (stdout; a failure is an empty string, as for a table that is not there).
fn nft(args: &[&str]) -> String {
    let o = Command::new(haul::netlock::nft_tool())
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The names of the `inet` tables in the ruleset.
fn tables() -> Vec<String> {
    nft(&["list", "tables"])
        .lines()
        .filter_map(|l| l.strip_prefix("table inet ").map(str::to_string))
        .collect()
}

/// The haul tables of the ruleset whose rules name TCP port `port`, with their listing.
fn haul_tables_on(port: u16) -> Vec<(String, String)> {
    tables()
        .into_iter()
        .filter(|t| t.starts_with("haul_"))
        .filter_map(|t| {
            let l = nft(&["list", "table", "inet", &t]);
            l.contains(&format!("tcp sport {port} ")).then_some((t, l))
        })
        .collect()
}

/// Packets the rule of `listing` for packets from port `from` to port `to` has dropped.
fn dropped(listing: &str, from: u16, to: u16) -> u64 {
    let pat = format!("tcp sport {from} tcp dport {to} counter packets ");
    listing
        .lines()
        .find_map(|l| l.split_once(&pat))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The TCP state of the socket bound to `local` with peer `remote` (sock_diag).
fn tcp_state(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> Option<u8> {
    haul::sys::inetdiag::sockets(libc::AF_INET, libc::IPPROTO_TCP)
        .unwrap()
        .into_iter()
        .find(|s| s.local == local && s.remote == remote)
        .map(|s| s.state)
}

#[test]
fn a_locked_connection_loses_no_byte_and_gets_no_reset() {
    let test = "a_locked_connection_loses_no_byte_and_gets_no_reset";
    if !nft_here(test) {
        return;
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut server, _) = l.accept().unwrap();
    let (s_addr, c_addr) = (server.local_addr().unwrap(), client.local_addr().unwrap());
    // The server's end is the one "in the checkpoint".
    let conn = Conn {
        local: s_addr,
        remote: c_addr,
    };
    let lock = NetLock::take(&[conn]).unwrap();
    let table = lock.table().to_string();
    assert!(table.starts_with("haul_lock_"), "{table}");
    let listing = nft(&["list", "table", "inet", &table]);
    assert!(listing.contains("flags owner"), "{listing}");
    for (hook, from, to) in [("input", c_addr, s_addr), ("output", s_addr, c_addr)] {
        assert!(
            listing.contains(&format!(
                "type filter hook {hook} priority raw; policy accept;"
            )),
            "{hook}: {listing}"
        );
        let rule = format!(
            "ip saddr {} ip daddr {} tcp sport {} tcp dport {} counter packets",
            from.ip(),
            to.ip(),
            from.port(),
            to.port()
        );
        assert!(listing.contains(&rule), "{rule}\n{listing}");
    }

    client.write_all(b"sent while locked").unwrap();
    // The segment was sent, and dropped on its way in.
    assert!(
        wait_for(Duration::from_secs(10), || dropped(
            &nft(&["list", "table", "inet", &table]),
            c_addr.port(),
            s_addr.port()
        ) > 0),
        "no packet of the client was dropped:\n{}",
        nft(&["list", "table", "inet", &table])
    );
    server.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let e = server.read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
    // No reset: both ends still established, no error pending.
    assert_eq!(client.take_error().unwrap().map(|e| e.to_string()), None);
    assert_eq!(tcp_state(c_addr, s_addr), Some(1));
    assert_eq!(tcp_state(s_addr, c_addr), Some(1));

    lock.release();
    assert!(!tables().contains(&table), "{:?}", tables());
    // The client's retransmission arrives.
    server.set_nonblocking(false).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut got = [0u8; 17];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"sent while locked");
    client.write_all(b"after").unwrap();
    let mut got = [0u8; 5];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"after");
    assert_eq!(client.take_error().unwrap().map(|e| e.to_string()), None);
}

/// The environment variable that makes [`holds_a_lock_until_killed`] a lock holder.
const HOLDER: &str = "HAUL_TEST_NETLOCK_HOLDER";

/// Not a test of its own: the process [`the_lock_goes_with_its_holder_killed_by_sigkill`] runs
/// (this test binary again) to hold a lock, on port `$HAUL_TEST_NETLOCK_HOLDER`, until killed.
#[test]
#[ignore = "a helper process of the_lock_goes_with_its_holder_killed_by_sigkill"]
fn holds_a_lock_until_killed() {
    let port: u16 = std::env::var(HOLDER).unwrap().parse().unwrap();
    let lock = NetLock::take(&[Conn {
        local: format!("127.0.0.1:{port}").parse().unwrap(),
        remote: "127.0.0.1:9".parse().unwrap(),
    }])
    .unwrap();
    println!("TABLE {}", lock.table());
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::park();
    }
}

#[test]
fn the_lock_goes_with_its_holder_killed_by_sigkill() {
    let test = "the_lock_goes_with_its_holder_killed_by_sigkill";
    if !nft_here(test) {
        return;
    }
    // The keeper nft is orphaned when its holder dies: this test reaps it.
    haul::sys::host::set_child_subreaper().unwrap();
    // A port nobody uses here, to find the table by.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "holds_a_lock_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env(HOLDER, port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(holder.stdout.take().unwrap());
    let mut table = None;
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if let Some(t) = line.trim().strip_prefix("TABLE ") {
            table = Some(t.to_string());
            break;
        }
        line.clear();
    }
    let table = table.expect("the holder printed no table");
    let held = haul_tables_on(port);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].0, table);
    assert!(held[0].1.contains("flags owner"), "{}", held[0].1);
    let keepers: Vec<i32> = common::children_of(holder.id() as i32)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "nft")
        })
        .collect();
    assert_eq!(keepers.len(), 1, "the holder's keeper nft");

    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || haul_tables_on(port).is_empty()),
        "the table outlived its holder: {:?}",
        haul_tables_on(port)
    );
    assert!(!tables().contains(&table));
    for k in keepers {
        let _ = haul::sys::host::reap(k);
    }
}

#[test]
fn a_dump_without_connections_runs_no_nft() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("counter.log");
    let mut cmd = Command::new(fixture("counter"));
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    let target = common::Running::spawn(cmd.arg(&log).stderr(Stdio::null()));
    let pid = target.pid;
    assert!(wait_for(Duration::from_secs(10), || read_numbers(&log)
        .len()
        > 2));
    // An nft that cannot run: any call of it would fail the dump.
    let out = haul()
        .args([
            "dump",
            "--leave-running",
            "--pid",
            &pid.to_string(),
            "--store",
        ])
        .arg(dir.path().join("store"))
        .env("HAUL_NFT", dir.path().join("no-such-nft"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = read_numbers(&log).len();
    assert!(wait_for(Duration::from_secs(10), || read_numbers(&log)
        .len()
        > n));
    drop(target);
}

#[test]
fn network_lock_is_a_job_key_checked_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.toml");
    let job = "[process]\ncommand = [\"a\"]\n\n[network]\nlock = \"none\"\n";
    std::fs::write(&path, job).unwrap();
    let j = haul::job::load(&path).unwrap();
    assert_eq!(j.spec.network.lock, haul::netlock::LockMode::None);
    std::fs::write(&path, "[process]\ncommand = [\"a\"]\n").unwrap();
    let j = haul::job::load(&path).unwrap();
    assert_eq!(j.spec.network.lock, haul::netlock::LockMode::Nftables);
    std::fs::write(&path, job.replace("\"none\"", "\"nftable\"")).unwrap();
    let err = haul::job::load(&path).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}:5:8: network.lock: unknown value \"nftable\"; did you mean \"nftables\"?",
            path.display()
        )
    );
    std::fs::write(&path, job.replace("lock =", "lok =")).unwrap();
    let err = haul::job::load(&path).unwrap_err().to_string();
    assert!(err.contains("network.lok: unknown key"), "{err}");
}

/// A python process connected to `server` that echoes what it receives, with stdio on
/// /dev/null (a pipe to the test would be refused); accepted by the test, which keeps its end.
fn echo_client(server: &TcpListener) -> (common::Running, TcpStream) {
    let script = "import socket,sys\n\
                  s=socket.create_connection(('127.0.0.1',int(sys.argv[1])))\n\
                  while True:\n\
                  \x20   d=s.recv(100)\n\
                  \x20   if not d: break\n\
                  \x20   s.sendall(d)\n";
    let mut cmd = Command::new(common::python3());
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    cmd.args(["-c", script])
        .arg(server.local_addr().unwrap().port().to_string())
        .stderr(Stdio::null());
    let p = common::Running::spawn(&mut cmd);
    let (conn, _) = server.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    (p, conn)
}

/// Sends `what` on `conn` and reads it back.
fn echoes(conn: &mut TcpStream, what: &[u8]) {
    conn.write_all(what).unwrap();
    let mut got = vec![0u8; what.len()];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(got, what);
}

/// `pid` and every descendant of it.
fn descendants(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        all.extend(common::children_of(all[i]));
        i += 1;
    }
    all
}

/// Reaps those of `pids` that ended as orphans of this test (its subreaper): only these, never
/// a child another test of this binary is waiting for.
fn reap_orphans(pids: &[i32]) {
    for &p in pids {
        wait_for(Duration::from_secs(10), || !common::alive(p));
        let _ = haul::sys::host::reap_if_ended(p);
    }
}

#[test]
fn sigkill_of_haul_while_locked_leaves_no_rule_and_the_process_runs_on() {
    let test = "sigkill_of_haul_while_locked_leaves_no_rule_and_the_process_runs_on";
    if !nft_here(test) {
        return;
    }
    haul::sys::host::set_child_subreaper().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let (target, mut conn) = echo_client(&server);
    echoes(&mut conn, b"before");
    let port = conn.peer_addr().unwrap().port();
    let held = dir.path().join("held");
    let mut cmd = haul();
    cmd.args([
        "dump",
        "--leave-running",
        "--pid",
        &target.pid.to_string(),
        "--store",
    ])
    .arg(dir.path().join("store"))
    .env("HAUL_TEST_HOLD_LOCKED", &held)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut d = cmd.spawn().unwrap();
    let haul_pid = d.id() as i32;
    // Frozen and locked (or refused before anything).
    assert!(
        wait_for(Duration::from_secs(60), || held.exists()
            || d.try_wait().unwrap().is_some()),
        "the dump neither locked nor ended"
    );
    if !held.exists() {
        let out = d.wait_with_output().unwrap();
        panic!("the dump ended: {}", String::from_utf8_lossy(&out.stderr));
    }
    let tables = haul_tables_on(port);
    assert_eq!(tables.len(), 1, "{tables:?}");
    assert!(tables[0].1.contains("flags owner"), "{}", tables[0].1);
    assert_eq!(common::proc_state(target.pid), Some('t'));

    // The worker and its keeper nft, orphaned by the kill.
    let orphans: Vec<i32> = descendants(haul_pid)
        .into_iter()
        .filter(|&p| p != haul_pid)
        .collect();
    assert!(orphans.len() >= 2, "worker and keeper: {orphans:?}");
    // haul and its checkpoint worker (one process group), with SIGKILL.
    let st = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{}", d.id())])
        .status()
        .unwrap();
    assert!(st.success());
    d.wait().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || haul_tables_on(port).is_empty()),
        "the lock outlived haul: {:?}",
        haul_tables_on(port)
    );
    assert!(wait_for(Duration::from_secs(10), || common::tracer_pid(
        target.pid
    ) == Some(0)
        && common::proc_state(target.pid) != Some('t')));
    // The connection goes on.
    echoes(&mut conn, b"after the kill");
    reap_orphans(&orphans);
}

#[test]
fn a_kill_mode_dump_keeps_the_lock_until_the_restore_runs() {
    let test = "a_kill_mode_dump_keeps_the_lock_until_the_restore_runs";
    if !nft_here(test) {
        return;
    }
    // The restored process is orphaned when haul restore exits: this test reaps it.
    haul::sys::host::set_child_subreaper().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut target, mut conn) = echo_client(&server);
    echoes(&mut conn, b"before");
    let port = conn.peer_addr().unwrap().port();
    let out = haul()
        .args([
            "dump",
            "--kill",
            "--pid",
            &target.pid.to_string(),
            "--store",
        ])
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let set = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    target.child.wait().unwrap();
    // The kept table holds the connection while no process has it.
    let tables = haul_tables_on(port);
    assert_eq!(tables.len(), 1, "{tables:?}");
    assert!(tables[0].0.starts_with("haul_kept_"), "{}", tables[0].0);
    assert!(!tables[0].1.contains("flags owner"), "{}", tables[0].1);
    conn.write_all(b"while dumped").unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || dropped(
            &nft(&["list", "table", "inet", &tables[0].0]),
            server.local_addr().unwrap().port(),
            port
        ) > 0),
        "{}",
        nft(&["list", "table", "inet", &tables[0].0])
    );

    let out = haul()
        .args(["restore", &set, "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: i32 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        haul_tables_on(port).is_empty(),
        "{:?}",
        haul_tables_on(port)
    );
    // What the peer sent meanwhile arrives (retransmitted), and the connection goes on.
    let mut got = [0u8; 12];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"while dumped");
    echoes(&mut conn, b"after the restore");
    common::send_signal(pid, "KILL");
    reap_orphans(&[pid]);
}

#[test]
fn without_nft_the_dump_fails_naming_it_and_the_process_runs_on() {
    let test = "without_nft_the_dump_fails_naming_it_and_the_process_runs_on";
    if !nft_here(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let (target, mut conn) = echo_client(&server);
    echoes(&mut conn, b"before");
    let missing = dir.path().join("no-such-nft");
    let dump = |lock: &str| {
        haul()
            .args([
                "dump",
                "--leave-running",
                "--network-lock",
                lock,
                "--pid",
                &target.pid.to_string(),
                "--store",
            ])
            .arg(dir.path().join("store"))
            .env("HAUL_NFT", &missing)
            .output()
            .unwrap()
    };
    let out = dump("nftables");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "the network lock needs nftables' `nft` tool ({})",
            missing.display()
        )) && err.contains("[network] lock = \"none\""),
        "{err}"
    );
    assert!(wait_for(Duration::from_secs(10), || common::tracer_pid(
        target.pid
    ) == Some(0)
        && common::proc_state(target.pid) != Some('t')));
    echoes(&mut conn, b"after the failed dump");
    // Without a lock, no nft is needed.
    let out = dump("none");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    echoes(&mut conn, b"after the dump without a lock");
}
