//! Page server and client (issue #7): bad input is refused without taking the server down, a
//! lazy restore through it is exact, and losing it (or the daemon) kills the restored process.

mod common;

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{alive, fixture, haul, memwriter_pause, memwriter_report, send_signal, Running};
use haul::dump::{dump_to_store, DumpOptions};
use haul::image::{ImageSet, PageRef};
use haul::lazy::{restore_lazy, LazyOptions, PushPolicy};
use haul::restore::RestoreOptions;
use haul::store::Store;
use haul::xfer::{Client, PageServer, RemoteSource, ServerOptions};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

fn adopt_orphans() {
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
}

struct Restored(i32);

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.0), nix::sys::signal::SIGKILL);
        let _ = waitpid(Pid::from_raw(self.0), None);
    }
}

/// A paused memwriter of `mib` MiB dumped (and killed) into a new store under `dir`; returns
/// the store, the set, and its last (ticks, checksum).
fn dumped_memwriter(dir: &Path, mib: u32) -> (Arc<Store>, ImageSet, u64, String) {
    let out = dir.join("report");
    let mut cmd = Command::new(fixture("memwriter"));
    cmd.arg(mib.to_string()).arg("20000").arg(&out);
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    let mut r = Running::logged(&mut cmd, &dir.join("log"), true);
    let (t0, _) = memwriter_report(r.pid, &out, 0);
    let (t2, c2) = memwriter_pause(r.pid, &out, t0);
    let store = Arc::new(Store::open_or_create(&dir.join("store")).unwrap());
    let d = dump_to_store(r.pid, &store, "test", &DumpOptions::default(), Some(1)).unwrap();
    r.child.wait().unwrap();
    (store, d.set, t2, c2)
}

fn serve(store: Arc<Store>, set: &str, token: Option<&[u8]>) -> String {
    let opts = ServerOptions {
        token: token.map(|t| t.to_vec()),
        ..Default::default()
    };
    let s = PageServer::bind("127.0.0.1:0", store, &[set.to_string()], opts).unwrap();
    let addr = s.local_addr().unwrap().to_string();
    std::thread::spawn(move || s.serve());
    addr
}

/// Sends raw bytes on a new connection and returns the server's first reply frame (kind,
/// text), or None if it just closed.
fn raw(addr: &str, bytes: &[u8]) -> Option<(u8, String)> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut b = Vec::new();
    let _ = s.read_to_end(&mut b);
    if b.len() < 5 {
        return None;
    }
    Some((b[4], String::from_utf8_lossy(&b[5..]).into_owned()))
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = ((payload.len() + 1) as u32).to_le_bytes().to_vec();
    v.push(kind);
    v.extend_from_slice(payload);
    v
}

fn hello(token: &[u8]) -> Vec<u8> {
    let mut p = b"HAULXFER".to_vec();
    p.extend_from_slice(&1u16.to_le_bytes());
    p.extend_from_slice(&(token.len() as u16).to_le_bytes());
    p.extend_from_slice(token);
    frame(1, &p)
}

#[test]
fn page_server_refuses_bad_input_and_keeps_serving() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (store, set, _, _) = dumped_memwriter(dir.path(), 4);
    let addr = serve(store, &set.id, Some(b"s3cret"));
    let (addr0, id0) = set
        .pages
        .iter()
        .find_map(|(a, r)| match r {
            PageRef::Stored(id) => Some((a, id)),
            _ => None,
        })
        .unwrap();
    let good = |what: &str| {
        let mut c = Client::connect(&addr, b"s3cret", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
        let mut out = Vec::new();
        c.pages(&set.id, &[(addr0, id0)], &mut out)
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
        assert_eq!(out.len(), 4096);
    };
    good("start");

    let r = raw(&addr, b"GET / HTTP/1.0\r\n\r\n");
    assert!(
        r.is_none_or(|(k, _)| k == 3),
        "garbage got a non-error reply"
    );
    good("garbage");

    let r = raw(&addr, &[0xff, 0xff, 0xff, 0x7f, 1]).unwrap();
    assert_eq!(r.0, 3);
    assert!(r.1.contains("bad hello"), "{}", r.1);
    good("oversized length");

    let mut truncated = hello(b"s3cret");
    truncated.truncate(truncated.len() - 3);
    let _ = raw(&addr, &truncated);
    good("truncated hello");

    let r = raw(&addr, &hello(b"guess")).unwrap();
    assert_eq!((r.0, r.1.as_str()), (3, "wrong token"));
    let err = Client::connect(&addr, b"nope", Duration::from_secs(5))
        .err()
        .unwrap();
    assert!(err.to_string().contains("wrong token"), "{err}");
    good("wrong token");

    let mut c = Client::connect(&addr, b"s3cret", Duration::from_secs(5)).unwrap();
    let err = c.manifest("someone-else").err().unwrap();
    assert!(err.to_string().contains("not served here"), "{err}");
    good("unknown set");

    // A page id the set does not hold at that address.
    let mut c = Client::connect(&addr, b"s3cret", Duration::from_secs(5)).unwrap();
    let err = c
        .pages(&set.id, &[(addr0 + 4096 * 1_000_000, id0)], &mut Vec::new())
        .err()
        .unwrap();
    assert!(err.to_string().contains("has no page"), "{err}");
    good("foreign page");

    // Too many pages at once, and a count that does not match the payload.
    let mut p = (set.id.len() as u16).to_le_bytes().to_vec();
    p.extend_from_slice(set.id.as_bytes());
    p.extend_from_slice(&100_000u32.to_le_bytes());
    let mut bytes = hello(b"s3cret");
    bytes.extend(frame(6, &p));
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&bytes).unwrap();
    let mut b = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read_to_end(&mut b);
    assert!(String::from_utf8_lossy(&b).contains("bad page request"));
    good("oversized page request");
}

#[test]
fn page_server_refuses_a_non_loopback_address_without_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_or_create(&dir.path().join("store")).unwrap());
    let err = PageServer::bind("0.0.0.0:0", store, &["x".into()], ServerOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("token"), "{err}");
}

#[test]
fn lazy_restore_through_the_page_server_is_exact() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (store, set, t, c) = dumped_memwriter(dir.path(), 32);
    let addr = serve(store, &set.id, None);
    let eager = RemoteSource::new(&addr, Vec::new(), Duration::from_secs(5));
    let remote_set = Arc::new(eager.manifest(&set.id).unwrap());
    assert_eq!(*remote_set, set);
    let lazy = Box::new(RemoteSource::new(&addr, Vec::new(), Duration::from_secs(5)));
    let lopts = LazyOptions {
        push: PushPolicy::Idle,
        idle_push: Duration::from_millis(200),
        ..Default::default()
    };
    let lr = restore_lazy(
        &remote_set,
        &eager,
        lazy,
        &RestoreOptions::default(),
        &lopts,
    )
    .unwrap();
    let g = Restored(lr.pid());
    let (_, c2) = memwriter_report(g.0, &dir.path().join("report"), t);
    assert_eq!(c2, c);
    let rep = lr.wait().unwrap();
    assert_eq!(rep.source_lost, None);
    assert!(rep.bytes_network > 4096 * 1000, "{rep:?}");
}

/// `haul page-server` as a child process (so that it can be killed), with `--token-file` when
/// given; killed and reaped when dropped.
struct ServerProcess {
    child: std::process::Child,
    addr: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn page_server_process(store: &Path, set: &str, token_file: Option<&Path>) -> ServerProcess {
    let mut cmd = haul();
    cmd.args([
        "page-server",
        "--listen",
        "127.0.0.1:0",
        "--set",
        set,
        "--store",
    ])
    .arg(store);
    if let Some(t) = token_file {
        cmd.arg("--token-file").arg(t);
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().strip_prefix("listening on ").map(String::from);
    let server = ServerProcess {
        child,
        addr: addr.clone().unwrap_or_default(),
    };
    assert!(addr.is_some(), "page server said {line:?}");
    server
}

#[test]
fn killed_page_server_gets_the_restored_process_killed_within_source_timeout() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (_store, set, t, _) = dumped_memwriter(dir.path(), 32);
    let mut server = page_server_process(&dir.path().join("store"), &set.id, None);
    let addr = server.addr.clone();
    let eager = RemoteSource::new(&addr, Vec::new(), Duration::from_secs(1));
    let lazy = Box::new(RemoteSource::new(&addr, Vec::new(), Duration::from_secs(1)));
    let lopts = LazyOptions {
        push: PushPolicy::Idle,
        idle_push: Duration::from_secs(60),
        prefetch: 0,
        source_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let set = Arc::new(set);
    let lr = restore_lazy(&set, &eager, lazy, &RestoreOptions::default(), &lopts).unwrap();
    let pid = lr.pid();
    let g = Restored(pid);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    send_signal(pid, "USR1");
    let rep = lr.wait().unwrap();
    assert!(rep.source_lost.is_some(), "{rep:?}");
    let st = waitpid(Pid::from_raw(pid), None).unwrap();
    std::mem::forget(g);
    assert_eq!(
        st,
        WaitStatus::Signaled(Pid::from_raw(pid), nix::sys::signal::SIGKILL, false)
    );
    let s = std::fs::read_to_string(dir.path().join("report")).unwrap();
    let ticks: u64 = s.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(ticks, t, "the process reported over memory it never got");
}

#[test]
fn killed_lazy_daemon_gets_the_restored_process_killed_by_its_watchdog() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (_store, set, t, _) = dumped_memwriter(dir.path(), 32);
    let mut daemon = haul()
        .args([
            "restore",
            &set.id,
            "--lazy",
            "--idle-push",
            "60s",
            "--store",
        ])
        .arg(dir.path().join("store"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(daemon.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid: i32 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no pid: {line:?}"));
    let g = Restored(pid);
    assert!(alive(pid));
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    // Faults now: with the daemon gone they must never be answered with zero pages.
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::SIGUSR1);
    let st = waitpid(Pid::from_raw(pid), None).unwrap();
    std::mem::forget(g);
    assert_eq!(
        st,
        WaitStatus::Signaled(Pid::from_raw(pid), nix::sys::signal::SIGKILL, false)
    );
    let s = std::fs::read_to_string(dir.path().join("report")).unwrap();
    let ticks: u64 = s.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(ticks, t, "the process reported over memory it never got");
}

// ---- protocol 2: Done, and the source mode of a lazy final dump ----

/// The "frozen process" of a source-mode server, faked: pages from the store, or garbage.
struct FakeLive {
    store: Arc<Store>,
    set: ImageSet,
    garbage: bool,
}

impl haul::xfer::LivePages for FakeLive {
    fn read_pages(&self, addrs: &[u64], out: &mut [u8]) -> Result<(), haul::restore::BoxError> {
        for (i, a) in addrs.iter().enumerate() {
            let page = &mut out[i * 4096..(i + 1) * 4096];
            match (self.garbage, self.set.pages.get(*a)) {
                (false, Some(PageRef::Stored(id))) => {
                    page.copy_from_slice(&self.store.read_page_at(&id, &self.set.id, *a)?)
                }
                _ => page.fill(0x5a),
            }
        }
        Ok(())
    }
}

#[test]
fn source_server_serves_lazy_pages_by_hash_needs_protocol_2_and_hands_done_to_its_holder() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (store, set, _, _) = dumped_memwriter(dir.path(), 4);
    // The same set as a lazy dump would record it: its stored pages become Lazy.
    let mut lazy_set = set.clone();
    let stored: Vec<(u64, haul::image::PageId)> = set
        .pages
        .iter()
        .filter_map(|(a, r)| match r {
            PageRef::Stored(id) => Some((a, id)),
            _ => None,
        })
        .collect();
    for &(a, id) in &stored {
        lazy_set.pages.insert(a, PageRef::Lazy(id));
    }
    let start = |garbage: bool| {
        let s = PageServer::bind_source("127.0.0.1:0", store.clone(), ServerOptions::default())
            .unwrap();
        let live = Arc::new(FakeLive {
            store: store.clone(),
            set: set.clone(),
            garbage,
        });
        s.serve_source(lazy_set.clone(), live).unwrap()
    };

    let serving = start(false);
    let addr = serving.local_addr().to_string();
    // A protocol-1 client could never say Done: refused.
    let r = raw(&addr, &hello(b"")).unwrap();
    assert_eq!(r.0, 3);
    assert!(r.1.contains("needs protocol 2"), "{}", r.1);
    // Lazy pages come from the source, checked against their ids.
    let mut c = Client::connect(&addr, b"", Duration::from_secs(5)).unwrap();
    assert_eq!(c.version(), 2);
    let mut out = Vec::new();
    c.pages(&set.id, &stored[..64], &mut out).unwrap();
    assert_eq!(out.len(), 64 * 4096);
    // Done goes to the holder of the source, whose answer the client gets.
    let id = set.id.clone();
    let client = std::thread::spawn(move || c.done(&id));
    let mut seen = Vec::new();
    let answer = loop {
        match serving
            .events
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
        {
            haul::xfer::SourceEvent::Connected => seen.push("connected"),
            haul::xfer::SourceEvent::Disconnected => seen.push("disconnected"),
            haul::xfer::SourceEvent::Done { reply, written } => {
                reply.send("source killed (test)".into()).unwrap();
                written.recv_timeout(Duration::from_secs(5)).unwrap();
                break client.join().unwrap();
            }
        }
    };
    assert_eq!(answer.unwrap(), "source killed (test)");
    assert_eq!(seen, ["connected"]);
    drop(serving);

    // A source whose page no longer hashes to its id is refused, never sent.
    let serving = start(true);
    let addr = serving.local_addr().to_string();
    let mut c = Client::connect(&addr, b"", Duration::from_secs(5)).unwrap();
    let e = c.pages(&set.id, &stored[..1], &mut Vec::new()).unwrap_err();
    assert!(e.to_string().contains("no longer hashes"), "{e}");
}

#[test]
fn store_page_server_speaks_protocol_1_and_has_nothing_to_release_on_done() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (store, set, _, _) = dumped_memwriter(dir.path(), 4);
    let addr = serve(store, &set.id, None);
    // Old clients still work.
    let r = raw(&addr, &hello(b"")).unwrap();
    assert_eq!(r.0, 2, "protocol 1 hello refused: {}", r.1);
    let src = RemoteSource::new(&addr, Vec::new(), Duration::from_secs(5));
    let m = src.done(&set.id).unwrap();
    assert!(m.contains("nothing to release"), "{m}");
    // Said once: asking again gives the same answer.
    assert_eq!(src.done(&set.id).unwrap(), m);
}

// ---- issue #10: what clients send cannot take the server's memory, nor lock others out ----

/// A field of /proc/PID/status, in KiB (VmRSS, VmHWM).
fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The frame limit the server used to read every frame with, hello included.
const HUGE: usize = 64 << 20;

/// Sends `prefix`, then a frame header of kind `kind` announcing [`HUGE`] bytes, then the body
/// in 1 MiB writes until the server closes the connection. Returns the body bytes it took and
/// the error that ended the writing (None: it took the whole body).
fn flood(addr: &str, prefix: &[u8], kind: u8) -> (usize, Option<std::io::Error>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = prefix.to_vec();
    head.extend_from_slice(&(HUGE as u32).to_le_bytes());
    head.push(kind);
    if let Err(e) = s.write_all(&head) {
        return (0, Some(e));
    }
    let chunk = vec![0u8; 1 << 20];
    let mut sent = 0;
    while sent < HUGE - 1 {
        let n = chunk.len().min(HUGE - 1 - sent);
        if let Err(e) = s.write_all(&chunk[..n]) {
            return (sent, Some(e));
        }
        sent += n;
    }
    (sent, None)
}

#[test]
fn huge_frames_are_cut_off_before_their_body_and_the_server_stays_small() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (_store, set, _, _) = dumped_memwriter(dir.path(), 4);
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let server = page_server_process(&dir.path().join("store"), &set.id, Some(&token));
    let pid = server.child.id();
    let peak0 = status_kib(pid, "VmHWM");
    // Eight clients announce a 64 MiB hello; four say hello with the token and then announce a
    // 64 MiB request. All at once.
    let floods: Vec<_> = (0..12)
        .map(|i| {
            let addr = server.addr.clone();
            std::thread::spawn(move || match i < 8 {
                true => flood(&addr, &[], 1),
                false => flood(&addr, &hello(b"s3cret"), 6),
            })
        })
        .collect();
    for (i, f) in floods.into_iter().enumerate() {
        let (sent, err) = f.join().unwrap();
        let what = if i < 8 { "before hello" } else { "after hello" };
        let err = err.unwrap_or_else(|| panic!("the server read a whole {HUGE}-byte frame {what}"));
        assert!(
            !matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the server neither read nor closed a huge frame {what} ({sent} bytes taken): {err}"
        );
    }
    let peak = status_kib(pid, "VmHWM");
    assert!(
        peak < peak0 + 32 * 1024,
        "the page server's RSS peaked at {peak} KiB (it started at {peak0} KiB)"
    );
    let mut c = Client::connect(&server.addr, b"s3cret", Duration::from_secs(10)).unwrap();
    assert_eq!(c.manifest(&set.id).unwrap(), set);
}

#[test]
fn silent_connections_do_not_lock_out_a_lazy_restore() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (_store, set, t, c) = dumped_memwriter(dir.path(), 32);
    let server = page_server_process(&dir.path().join("store"), &set.id, None);
    let addr = server.addr.clone();
    // Connections that never say hello, far more than the server serves at once.
    let silent: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let mut cl = Client::connect(&addr, b"", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("with 200 silent connections open: {e}"));
    assert_eq!(cl.manifest(&set.id).unwrap(), set);
    drop(cl);
    let eager = RemoteSource::new(&addr, Vec::new(), Duration::from_secs(5));
    let remote_set = Arc::new(eager.manifest(&set.id).unwrap());
    let lazy = Box::new(RemoteSource::new(&addr, Vec::new(), Duration::from_secs(5)));
    let lopts = LazyOptions {
        push: PushPolicy::Idle,
        idle_push: Duration::from_millis(200),
        ..Default::default()
    };
    let lr = restore_lazy(
        &remote_set,
        &eager,
        lazy,
        &RestoreOptions::default(),
        &lopts,
    )
    .unwrap();
    let g = Restored(lr.pid());
    let (_, c2) = memwriter_report(g.0, &dir.path().join("report"), t);
    assert_eq!(c2, c);
    let rep = lr.wait().unwrap();
    assert_eq!(rep.source_lost, None);
    // The server closed every silent connection, saying why: newer ones needed the room, or
    // no hello came in time.
    for (i, mut s) in silent.into_iter().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut b = Vec::new();
        let r = s.read_to_end(&mut b);
        let text = String::from_utf8_lossy(b.get(5..).unwrap_or_default());
        assert!(
            r.is_ok() && b.get(4) == Some(&3) && text.contains("hello"),
            "silent connection {i}: {r:?}, {text:?}"
        );
    }
}

#[test]
fn bad_addresses_and_an_open_listen_without_token_are_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    Store::open_or_create(&store).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let token = token.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["page-server", "--listen", "nonsense", "--set", "x"],
            "bad address \"nonsense\"",
        ),
        (
            &["page-server", "--listen", "127.0.0.1:99999", "--set", "x"],
            "bad address",
        ),
        (
            &["page-server", "--listen", "0.0.0.0:0", "--set", "x"],
            "a token file is required",
        ),
        (
            &[
                "page-server",
                "--listen",
                "192.0.2.1:0",
                "--set",
                "x",
                "--token-file",
                token,
            ],
            "not an address of this machine",
        ),
        (
            &[
                "restore", "x", "--lazy", "--pid", "any", "--from", "nonsense",
            ],
            "bad address \"nonsense\"",
        ),
        (
            &["images", "pull", "x", "--from", "127.0.0.1:port"],
            "bad address",
        ),
    ];
    for (args, want) in cases {
        let out = haul()
            .args(*args)
            .arg("--store")
            .arg(&store)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "haul {}: {err}", args.join(" "));
        assert!(err.contains(want), "haul {}: {err}", args.join(" "));
    }
}
