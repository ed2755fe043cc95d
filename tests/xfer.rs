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
use haul::lazy::{restore_lazy, LazyOptions};
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

/// `haul page-server` as a child process (so that it can be killed); returns it and its address.
fn page_server_process(store: &Path, set: &str) -> (std::process::Child, String) {
    let mut child = haul()
        .args([
            "page-server",
            "--listen",
            "127.0.0.1:0",
            "--set",
            set,
            "--store",
        ])
        .arg(store)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    (child, addr)
}

#[test]
fn killed_page_server_gets_the_restored_process_killed_within_source_timeout() {
    adopt_orphans();
    let dir = tempfile::tempdir().unwrap();
    let (_store, set, t, _) = dumped_memwriter(dir.path(), 32);
    let (mut server, addr) = page_server_process(&dir.path().join("store"), &set.id);
    let eager = RemoteSource::new(&addr, Vec::new(), Duration::from_secs(1));
    let lazy = Box::new(RemoteSource::new(&addr, Vec::new(), Duration::from_secs(1)));
    let lopts = LazyOptions {
        idle_push: Duration::from_secs(60),
        prefetch: 0,
        source_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let set = Arc::new(set);
    let lr = restore_lazy(&set, &eager, lazy, &RestoreOptions::default(), &lopts).unwrap();
    let pid = lr.pid();
    let g = Restored(pid);
    server.kill().unwrap();
    server.wait().unwrap();
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
    fn read_pages(&self, addrs: &[u64], out: &mut [u8]) -> Result<(), String> {
        for (i, a) in addrs.iter().enumerate() {
            let page = &mut out[i * 4096..(i + 1) * 4096];
            match (self.garbage, self.set.pages.get(*a)) {
                (false, Some(PageRef::Stored(id))) => page.copy_from_slice(
                    &self
                        .store
                        .read_page_at(&id, &self.set.id, *a)
                        .map_err(|e| e.to_string())?,
                ),
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

// ---- issue #10: bad addresses are bad input ----

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
