//! Terminals (issue 14): a pty pair held whole by the process comes back with its termios,
//! window size and unread bytes; an interactive bash started on a pty of the test's comes back
//! onto a new pty that `haul restore --tty new` serves, with its shell variables; without
//! `--tty` such a terminal is refused by name, before anything is made.

mod common;

use std::io::{BufRead, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::tree::Session;
use common::{fixture, haul, send_signal, wait_for, Running};
use haul::sys::tty;

/// `haul dump [--kill] --json --pid PID --store STORE`: the set id.
fn dump(pid: i32, store: &Path, kill: bool) -> String {
    let mut c = haul();
    c.arg("dump");
    c.arg(if kill { "--kill" } else { "--leave-running" });
    let out = c
        .args(["--json", "--pid", &pid.to_string(), "--store"])
        .arg(store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "haul dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["set"].as_str().expect("set id").to_string()
}

/// Asks the ttyfix fixture for its report (SIGUSR1) and waits for a new one.
fn report(pid: i32, out: &Path) -> String {
    let _ = std::fs::remove_file(out);
    send_signal(pid, "USR1");
    assert!(
        wait_for(Duration::from_secs(10), || out.exists()),
        "ttyfix {pid} wrote no report"
    );
    std::fs::read_to_string(out).unwrap()
}

/// `haul restore SET --store STORE`: the restored pid.
fn restore(set: &str, store: &Path) -> i32 {
    let o = haul()
        .args(["restore", set, "--store"])
        .arg(store)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "haul restore: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

/// Asks the ttyfix fixture to read what waits at both ends of its pty (SIGUSR2).
fn take(pid: i32, out: &Path) -> String {
    let data = out.with_extension("out.data");
    let _ = std::fs::remove_file(&data);
    send_signal(pid, "USR2");
    assert!(
        wait_for(Duration::from_secs(10), || data.exists()),
        "ttyfix {pid} wrote no data"
    );
    std::fs::read_to_string(data).unwrap()
}

#[test]
fn a_pty_pair_comes_back_with_termios_winsize_and_its_unread_bytes() {
    let s = Session::start();
    let out = s.path().join("ttyfix.out");
    let log = s.path().join("ttyfix.log");
    let mut r = Running::logged(ttyfix().arg(&out), &log, true);
    let before = report(r.pid, &out);
    // Raw mode, VINTR 7, VMIN 3, 33x111, 12 bytes typed ahead, 10 bytes not read by the master.
    let f: Vec<&str> = before.split_whitespace().collect();
    assert_eq!(
        &f[4..],
        ["7", "3", "33", "111", "in=12", "out=10"],
        "{before}"
    );
    // A leave-running dump reads the bytes and puts them back: nothing changes.
    dump(r.pid, &s.store(), false);
    assert_eq!(report(r.pid, &out), before, "after a leave-running dump");

    let set = dump(r.pid, &s.store(), true);
    r.child.wait().unwrap();
    let pid = restore(&set, &s.store());
    assert_eq!(
        report(pid, &out),
        before,
        "termios, size and the unread bytes at both ends after the restore"
    );
    assert_eq!(take(pid, &out), "in=typed-ahead\n|out=unread-out|");
    common::send_signal(pid, "KILL");

    // In canonical mode a line not ended yet waits too, uncounted by FIONREAD: it comes back
    // as it was, still not ended (FIONREAD counts the first line only).
    let mut r = Running::logged(ttyfix().arg(&out).arg("canon"), &log, true);
    let canon = report(r.pid, &out);
    assert!(canon.ends_with(" in=9 out=10\n"), "{canon}");
    dump(r.pid, &s.store(), false);
    assert_eq!(report(r.pid, &out), canon, "after a leave-running dump");
    let set = dump(r.pid, &s.store(), true);
    r.child.wait().unwrap();
    let pid = restore(&set, &s.store());
    assert_eq!(
        report(pid, &out),
        canon,
        "canonical input after the restore"
    );
    assert_eq!(take(pid, &out), "in=line-one\npartial|out=unread-out|");
    common::send_signal(pid, "KILL");

    // A pty with nothing waiting comes back with its termios and window size, queues empty.
    let mut r = Running::logged(ttyfix().arg(&out).arg("empty"), &log, true);
    let empty = report(r.pid, &out);
    let f: Vec<&str> = empty.split_whitespace().collect();
    assert_eq!(&f[4..], ["7", "3", "33", "111", "in=0", "out=0"], "{empty}");
    let set = dump(r.pid, &s.store(), true);
    r.child.wait().unwrap();
    let pid = restore(&set, &s.store());
    assert_eq!(
        report(pid, &out),
        empty,
        "termios, size and empty queues after the restore"
    );
    common::send_signal(pid, "KILL");
}

/// The ttyfix fixture, without the stray descriptors of whoever ran the tests.
fn ttyfix() -> Command {
    let mut c = Command::new(fixture("ttyfix"));
    haul::sys::spawn::close_inherited_fds(&mut c);
    c
}

/// An interactive bash on a pty of the test's: (master, bash).
fn bash_on_pty(s: &Session) -> (OwnedFd, Running) {
    let m = tty::open_pty().unwrap();
    let slave = || Stdio::from(tty::open_peer(m.as_fd(), 0).unwrap());
    // setsid -c: a session of its own whose controlling terminal is the pty, as a terminal
    // emulator starts a shell.
    let mut cmd = Command::new("setsid");
    // Stray descriptors of whoever ran the tests (a jobserver pipe) would be refused.
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    let child = cmd
        .args(["-c", "bash", "--norc", "--noprofile", "-i"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PS1", "tty-prompt> ")
        .env("TERM", "dumb")
        .env("HOME", s.path())
        .current_dir(s.path())
        .stdin(slave())
        .stdout(slave())
        .stderr(slave())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    (m, Running { child, pid })
}

/// Reads from `rx` (chunks of what a terminal showed) into `seen` until `want` is in it.
fn wait_text(rx: &mpsc::Receiver<Vec<u8>>, seen: &mut String, want: &str) {
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while !seen.contains(want) {
        let left = end.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(b) => seen.push_str(&String::from_utf8_lossy(&b)),
            Err(_) => panic!("{want:?} never came; the terminal showed: {seen:?}"),
        }
    }
}

/// A thread that reads `r` and sends what it reads.
fn reader(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn an_interactive_bash_comes_back_onto_a_new_pty_with_its_variables() {
    let s = Session::start();
    let (m, mut bash) = bash_on_pty(&s);
    let mut master = std::fs::File::from(m.try_clone().unwrap());
    let rx = reader(std::fs::File::from(m));
    let mut seen = String::new();
    wait_text(&rx, &mut seen, "tty-prompt> ");
    master.write_all(b"X=before\n").unwrap();
    // The prompt after the assignment: bash waits at its next line.
    seen.clear();
    wait_text(&rx, &mut seen, "tty-prompt> ");

    let set = dump(bash.pid, &s.store(), true);
    bash.child.wait().unwrap();

    // No --tty: refused by name, nothing made.
    let o = haul()
        .args(["restore", &set, "--store"])
        .arg(s.store())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    let pid = bash.pid;
    assert!(
        err.contains(&format!("cannot restore: pid {pid} fd 0 (/dev/pts/")),
        "{err}"
    );
    assert!(
        err.contains(
            "the terminal it was started on, outside the checkpoint: say where it goes with \
             `--tty inherit` (the terminal of haul restore) or `--tty new` (a new pty that haul \
             restore serves), in a job file restore.tty = \"inherit\" or \"new\""
        ),
        "{err}"
    );
    assert!(!common::alive(pid), "the refused restore made pid {pid}");

    // --tty new: haul restore prints the pid, then relays its stdin/stdout to the new pty.
    let mut h = haul()
        .args(["restore", "--tty", "new", &set, "--store"])
        .arg(s.store())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(h.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), pid.to_string(), "the first line is the pid");
    let rx = reader(stdout);
    let mut input = h.stdin.take().unwrap();
    input.write_all(b"echo \"X is $X\"\n").unwrap();
    let mut seen = String::new();
    wait_text(&rx, &mut seen, "X is before");
    // Its terminal is a new pty, its controlling one, with bash's group in the foreground.
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = st.rsplit(')').next().unwrap().split_whitespace().collect();
    assert_eq!(f[3], pid.to_string(), "session: {st}");
    assert_ne!(f[4], "0", "no controlling terminal: {st}");
    assert_eq!(f[5], pid.to_string(), "foreground group: {st}");
    input.write_all(b"exit\n").unwrap();
    let status = h.wait().unwrap();
    let mut err = String::new();
    h.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "haul restore --tty new: {status:?} {err}");
    assert!(wait_for(Duration::from_secs(10), || !common::alive(pid)));
}

#[test]
fn an_interactive_bash_comes_back_into_the_terminal_of_haul_restore_with_tty_inherit() {
    let s = Session::start();
    let (m, mut bash) = bash_on_pty(&s);
    let mut master = std::fs::File::from(m.try_clone().unwrap());
    let rx = reader(std::fs::File::from(m));
    let mut seen = String::new();
    wait_text(&rx, &mut seen, "tty-prompt> ");
    master.write_all(b"X=inherited\n").unwrap();
    seen.clear();
    wait_text(&rx, &mut seen, "tty-prompt> ");
    let set = dump(bash.pid, &s.store(), true);
    bash.child.wait().unwrap();
    let pid = bash.pid;

    // haul restore runs on a terminal of its own (a new session whose controlling terminal
    // is a pty of the test's, as a login shell's), and gives it to the restored bash.
    let term = tty::open_pty().unwrap();
    let slave = || Stdio::from(tty::open_peer(term.as_fd(), 0).unwrap());
    let mut cmd = Command::new("setsid");
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    let mut h = cmd
        .arg("-c")
        .arg(common::haul_bin())
        .args(["restore", "--tty", "inherit", &set, "--store"])
        .arg(s.store())
        .stdin(slave())
        .stdout(slave())
        .stderr(slave())
        .spawn()
        .unwrap();
    let mut input = std::fs::File::from(term.try_clone().unwrap());
    let rx = reader(std::fs::File::from(term));
    let mut seen = String::new();
    wait_text(&rx, &mut seen, &pid.to_string());
    input.write_all(b"echo \"X is $X\"\n").unwrap();
    wait_text(&rx, &mut seen, "X is inherited");
    // bash runs in haul restore's session, as the foreground group of its terminal.
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = st.rsplit(')').next().unwrap().split_whitespace().collect();
    assert_eq!(f[3], h.id().to_string(), "session of haul restore: {st}");
    assert_ne!(f[4], "0", "no controlling terminal: {st}");
    assert_eq!(f[5], f[2], "its group in the foreground: {st}");
    input.write_all(b"exit\n").unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || h.try_wait().unwrap().is_some()),
        "haul restore --tty inherit did not return after the job exited: {seen:?}"
    );
    assert!(h.wait().unwrap().success(), "{seen:?}");
    assert!(wait_for(Duration::from_secs(10), || !common::alive(pid)));
}

/// Loads job file `text`; the error as text with its folder shown as `DIR`.
fn job_error(text: &str) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.toml");
    std::fs::write(&path, text).unwrap();
    haul::job::load(&path).err().map(|e| {
        e.to_string()
            .replace(&dir.path().display().to_string(), "DIR")
    })
}

#[test]
fn restore_tty_takes_inherit_or_new_and_names_a_bad_value_where_it_is() {
    let head = "[process]\ncommand = [\"sh\"]\n[restore]\n";
    for v in ["inherit", "new"] {
        assert_eq!(job_error(&format!("{head}tty = \"{v}\"\n")), None, "{v}");
    }
    assert_eq!(
        job_error(&format!("{head}tty = \"neww\"\n")).unwrap(),
        "DIR/x.toml:4:7: restore.tty: unknown value \"neww\"; did you mean \"new\"?"
    );
    let lazy = job_error(&format!(
        "{head}mode = \"lazy\"\npid = \"any\"\ntty = \"new\"\n"
    ));
    assert!(
        lazy.as_deref().is_some_and(|e| e.contains(
            "restore.tty: is for an eager restore: a lazy restore (mode = \"lazy\") cannot give \
             the job a terminal yet"
        )),
        "{lazy:?}"
    );
}
