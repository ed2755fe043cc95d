//! `haul images`: list, show, verify, disk use, remove, gc, push and pull, as text or JSON.

use haul::image::ImageSet;
use haul::runner::exit;
use haul::runner::progress::Activity;
use haul::Error;
use serde::Serialize;

use super::{out, print_doc, print_doc_list, progress_mode, ImagesArgs};

/// `haul images ...`.
pub fn run(args: ImagesArgs) -> Result<u8, Error> {
    use super::ImagesCommand as C;
    use haul::util::human_bytes;
    let sync_text = |r: &haul::xfer::SyncReport| {
        if r.already_there {
            format!("{}: already there, nothing sent", r.set)
        } else {
            format!(
                "{}: {} pages, {} already there, {} sent ({})",
                r.set,
                r.pages,
                r.pages_skipped,
                r.pages_sent,
                human_bytes(r.bytes_sent)
            )
        }
    };
    if let C::Pull {
        set,
        from,
        token_file,
        compression,
        timeout,
        json,
    } = &args.command
    {
        let mode = progress_mode(args.quiet);
        if haul::store::bucket::is_bucket(std::path::Path::new(from)) {
            // From a bucket: the pages the local store lacks, read by ranges.
            let src = haul::store::Store::open(std::path::Path::new(from))?;
            let dest = haul::store::Store::open_or_create(&args.store.store)?;
            let a = Activity::start(
                mode,
                &format!("pull {set}"),
                &format!("from {}", src.location().display()),
            );
            let r = haul::xfer::push(&src, set, &dest, compression.level())?;
            a.finish("done");
            if *json {
                print_doc("images-pull", &r)?;
            } else {
                out(&sync_text(&r));
            }
            return Ok(exit::OK);
        }
        let token = match token_file {
            Some(f) => haul::xfer::read_token_file(f)?,
            None => Vec::new(),
        };
        // The store is created only once the server has answered.
        let dest = &args.store.store;
        let a = Activity::start(mode, &format!("pull {set}"), &format!("from {from}"));
        let r = haul::xfer::pull(from, &token, *timeout, set, dest, compression.level())?;
        a.finish("done");
        if *json {
            print_doc("images-pull", &r)?;
        } else {
            out(&sync_text(&r));
        }
        return Ok(exit::OK);
    }
    let store = haul::store::Store::open(&args.store.store)?;
    let mode = progress_mode(args.quiet);
    match args.command {
        C::Pull { .. } => Ok(exit::OK),
        C::Push {
            set,
            to,
            compression,
            json,
        } => {
            let dest = haul::store::Store::open_or_create(&to)?;
            let a = Activity::start(
                mode,
                &format!("push {set}"),
                &format!("to {}", dest.location().display()),
            );
            let r = haul::xfer::push(&store, &set, &dest, compression.level())?;
            a.finish("done");
            if json {
                print_doc("images-push", &r)?;
            } else {
                out(&sync_text(&r));
            }
            Ok(exit::OK)
        }
        C::Ls { job, json } => {
            let l = store.list(job.as_deref())?;
            if json {
                print_doc_list("images-ls", &l.rows())?;
            } else {
                out(l.text().trim_end());
            }
            // A damaged set is a failure to report, in the exit code too.
            Ok(if l.damaged.is_empty() {
                exit::OK
            } else {
                exit::FAILED
            })
        }
        C::Show { set, json } => {
            let s = store.load_set(&set)?;
            if json {
                print_doc(
                    "images-show",
                    &ShowJson {
                        view: haul::store::set_view(&s),
                        processes: process_rows(&s),
                        held: held_rows(&s),
                    },
                )?;
            } else {
                out(haul::store::show_text(&s).trim_end());
                let rows = process_rows(&s);
                if !rows.is_empty() {
                    out("");
                    out(processes_text(&rows).trim_end());
                }
                let held = held_rows(&s);
                if !held.is_empty() {
                    out("");
                    out(held_text(&held).trim_end());
                }
            }
            Ok(exit::OK)
        }
        C::Verify { set, json } => {
            let what = match &set {
                Some(s) => format!("verify {s}"),
                None => "verify".to_string(),
            };
            let a = Activity::start(mode, &what, "re-hashing pages and packs");
            let r = store.verify(set.as_deref())?;
            a.finish(if r.ok { "ok" } else { "FAILED" });
            if json {
                print_doc("images-verify", &r)?;
            } else {
                for p in &r.problems {
                    out(&format!("BAD {}: {}", p.kind, p.message));
                }
                out(&format!(
                    "{}: {} sets, {} pages, {} packs checked ({} read) in {}",
                    if r.ok { "ok" } else { "FAILED" },
                    r.sets_checked,
                    r.pages_checked,
                    r.packs_checked,
                    human_bytes(r.bytes_read),
                    haul::util::human_us(r.duration_us)
                ));
            }
            Ok(if r.ok { exit::OK } else { exit::FAILED })
        }
        C::Du { json } => {
            let a = Activity::start(mode, "du", "reading the manifests and packs");
            let r = store.du()?;
            a.finish("done");
            if json {
                print_doc("images-du", &r)?;
            } else {
                out(&du_text(&r));
            }
            Ok(exit::OK)
        }
        C::Rm { set } => {
            store.remove_set(&set)?;
            out(&format!(
                "removed {set} (run `haul images gc` to reclaim its pages)"
            ));
            Ok(exit::OK)
        }
        C::Gc { json, grace } => {
            store.set_gc_grace(grace);
            let a = Activity::start(mode, "gc", "removing and repacking");
            let r = store.gc()?;
            a.finish("done");
            if json {
                print_doc("images-gc", &r)?;
            } else {
                out(&format!(
                    "gc: {} packs removed, {} repacked, {} freed ({} -> {}), {} temp files removed, {} incomplete pre-dump sets removed",
                    r.packs_removed,
                    r.packs_repacked,
                    human_bytes(r.bytes_freed),
                    human_bytes(r.bytes_before),
                    human_bytes(r.bytes_after),
                    r.temp_files_removed,
                    r.incomplete_sets_removed.len()
                ));
                for id in &r.incomplete_sets_removed {
                    out(&format!("  removed incomplete {id}"));
                }
                // Each entry names what it is: "pack <id>: why" or "packs/<xx> (not listed: ...)".
                for p in &r.skipped {
                    out(&format!("  skipped {p} (see `haul images verify`)"));
                }
            }
            Ok(exit::OK)
        }
    }
}

/// The table of `haul images du`.
fn du_text(r: &haul::store::DuReport) -> String {
    use haul::util::human_bytes;
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let mut lines = vec![format!(
        "{:<24} {:>5} {:>12} {:>12} {:>12} {:>8}",
        "job", "sets", "logical", "referenced", "exclusive", "ratio"
    )];
    let mut logical = 0;
    for j in &r.jobs {
        logical += j.bytes_logical;
        lines.push(format!(
            "{:<24} {:>5} {:>12} {:>12} {:>12} {:>7.2}x",
            j.job,
            j.sets,
            human_bytes(j.bytes_logical),
            human_bytes(j.bytes_referenced),
            human_bytes(j.bytes_exclusive),
            ratio(j.bytes_logical, j.bytes_referenced)
        ));
    }
    let on_disk = r.bytes_packs + r.bytes_index + r.bytes_manifests + r.bytes_temp;
    lines.push(format!(
        "total: {} sets, {} logical, {} on disk ({} packs, {} index, {} manifests); compression {:.2}x, dedup {:.2}x, {:.2}x overall; {} distinct pages; {}",
        r.sets,
        human_bytes(logical.max(r.bytes_logical)),
        human_bytes(on_disk),
        human_bytes(r.bytes_packs),
        human_bytes(r.bytes_index),
        human_bytes(r.bytes_manifests),
        r.compression_ratio,
        r.dedup_ratio,
        ratio(logical.max(r.bytes_logical), on_disk),
        r.pages_stored,
        if r.unreadable_manifests > 0 {
            format!(
                "gc would refuse: {} manifests are unreadable (see `haul images verify`)",
                r.unreadable_manifests
            )
        } else {
            format!(
                "gc would free {} ({} packs removed, {} repacked)",
                human_bytes(r.bytes_gc_frees),
                r.gc_packs_removed,
                r.gc_packs_repacked
            )
        }
    ));
    if r.sets_incomplete > 0 {
        lines.push(format!(
            "{} of these sets are incomplete pre-dumps of a pre-copy that did not finish: gc removes them, and the other figures leave them out",
            r.sets_incomplete
        ));
    }
    lines.join("\n")
}

/// `haul images show --json`: the set's view, and every process of it.
#[derive(Serialize)]
struct ShowJson {
    #[serde(flatten)]
    view: haul::store::SetView,
    /// The root and its descendants, living and zombie, in tree order (see [`process_rows`]).
    processes: Vec<ProcessRow>,
    /// What else the set carries that a user may look for (see [`held_rows`]).
    held: Vec<HeldRow>,
}

/// One kernel object a set carries besides processes and memory, as `haul images show`
/// lists it: SysV IPC objects, stored files (memfds, deleted files), seccomp filters, TCP and
/// UDP sockets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
struct HeldRow {
    /// `sysv-shm`, `sysv-sem`, `sysv-msg`, `stored-file`, `seccomp`, `tcp`, `udp`.
    what: &'static str,
    /// The process (and fd) holding it, where one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fd: Option<i32>,
    /// It in words.
    detail: String,
}

/// What `set` carries besides processes and memory (see [`HeldRow`]), the set-wide objects
/// first, then each process's in tree order.
fn held_rows(set: &ImageSet) -> Vec<HeldRow> {
    use haul::image::inet::Transport;
    use haul::image::stored::StoredKind;
    use haul::image::FdKind;
    let row = |what, pid, fd, detail| HeldRow {
        what,
        pid,
        fd,
        detail,
    };
    let mut rows = Vec::new();
    if let Some(ipc) = &set.tree.ipc {
        for m in &ipc.shm {
            let gone = if m.removed {
                ", marked for deletion"
            } else {
                ""
            };
            rows.push(row(
                "sysv-shm",
                None,
                None,
                format!(
                    "shared memory id {} key {:#x}, {}{gone}",
                    m.perm.id,
                    m.perm.key,
                    haul::util::human_bytes(m.size)
                ),
            ));
        }
        for m in &ipc.sem {
            rows.push(row(
                "sysv-sem",
                None,
                None,
                format!(
                    "semaphore set id {} key {:#x}, {} semaphores",
                    m.perm.id,
                    m.perm.key,
                    m.values.len()
                ),
            ));
        }
        for m in &ipc.msg {
            let bytes: usize = m.messages.iter().map(|x| x.data.len()).sum();
            rows.push(row(
                "sysv-msg",
                None,
                None,
                format!(
                    "message queue id {} key {:#x}, {} messages ({bytes} bytes)",
                    m.perm.id,
                    m.perm.key,
                    m.messages.len()
                ),
            ));
        }
    }
    for f in &set.tree.files {
        let name = match &f.kind {
            StoredKind::Memfd { name } => format!("memfd {name}"),
            StoredKind::Deleted { path } => format!("deleted file {path}"),
        };
        let seals = if f.seals != 0 {
            format!(", seals {:#x}", f.seals)
        } else {
            String::new()
        };
        rows.push(row(
            "stored-file",
            None,
            None,
            format!("{name}, {}{seals}", haul::util::human_bytes(f.size)),
        ));
    }
    for (_, p) in set.processes() {
        if let Some(sc) = &p.seccomp {
            let strict = sc.threads.iter().filter(|t| t.strict).count();
            let mut d = format!(
                "{} seccomp filter{} on {} thread{}",
                sc.filters.len(),
                if sc.filters.len() == 1 { "" } else { "s" },
                sc.threads.len(),
                if sc.threads.len() == 1 { "" } else { "s" }
            );
            if strict > 0 {
                d += &format!(" ({strict} in strict mode)");
            }
            rows.push(row("seccomp", Some(p.pid), None, d));
        }
        for f in p
            .fds
            .iter()
            .filter(|f| f.same_as.is_none() && f.inherited.is_none())
        {
            let FdKind::Inet(sock) = &f.kind else {
                continue;
            };
            let what = match sock.transport {
                Transport::Tcp => "tcp",
                Transport::Udp => "udp",
            };
            let mut d = sock.describe();
            if sock.conn.is_some() {
                d += " (established)";
            }
            rows.push(row(what, Some(p.pid), Some(f.fd), d));
        }
    }
    rows
}

/// The table of [`held_rows`] for `haul images show`.
fn held_text(rows: &[HeldRow]) -> String {
    use std::fmt::Write;
    let mut s = format!("holds {}\n", rows.len());
    let _ = writeln!(s, "{:>8} {:>5}  {:<11}  what", "pid", "fd", "kind");
    for r in rows {
        let pid = r.pid.map_or("-".to_string(), |p| p.to_string());
        let fd = r.fd.map_or("-".to_string(), |f| f.to_string());
        let _ = writeln!(s, "{pid:>8} {fd:>5}  {:<11}  {}", r.what, r.detail);
    }
    s
}

/// One process of a set, as `haul images show` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
struct ProcessRow {
    pid: i32,
    ppid: i32,
    pgid: i32,
    sid: i32,
    comm: String,
    /// Command line, NUL separators shown as spaces (empty for a zombie: not recorded).
    cmdline: String,
    /// Thread ids (none for a zombie).
    threads: Vec<i32>,
    /// Levels below the root (the root is 0).
    depth: usize,
    zombie: bool,
    /// A zombie's status as its parent's `wait` will report it (`wait(2)` encoding).
    #[serde(skip_serializing_if = "Option::is_none")]
    wait_status: Option<i32>,
    /// The same in words: `exit 7`, `killed by SIGTERM`, `killed by SIGSEGV (core dumped)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    ended: Option<String>,
    /// Entries of its page table space (0 for a zombie).
    pages: u64,
    /// It shares the fd table of this process (`CLONE_FILES`).
    #[serde(skip_serializing_if = "Option::is_none")]
    files_of: Option<i32>,
}

/// A `wait(2)` status in words.
fn wait_status_text(st: i32) -> String {
    let sig = st & 0x7f;
    if sig == 0 {
        return format!("exit {}", (st >> 8) & 0xff);
    }
    let name = nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"));
    let core = if st & 0x80 != 0 { " (core dumped)" } else { "" };
    format!("killed by {name}{core}")
}

/// Every process of `set` (none for a pre-dump): the root first, each process followed by its
/// children (living and zombie) by ascending pid, so that a child is listed below its parent.
fn process_rows(set: &ImageSet) -> Vec<ProcessRow> {
    let mut rows: Vec<ProcessRow> = set
        .processes()
        .map(|(space, p)| ProcessRow {
            pid: p.pid,
            ppid: p.ppid,
            pgid: p.pgid,
            sid: p.sid,
            comm: p.comm.clone(),
            cmdline: String::from_utf8_lossy(&p.cmdline)
                .trim_end_matches('\0')
                .replace('\0', " "),
            threads: p.threads.iter().map(|t| t.tid).collect(),
            depth: 0,
            zombie: false,
            wait_status: None,
            ended: None,
            pages: set.pages_of(space).count() as u64,
            files_of: p.files_of,
        })
        .collect();
    rows.extend(set.tree.zombies.iter().map(|z| ProcessRow {
        pid: z.pid,
        ppid: z.ppid,
        pgid: z.pgid,
        sid: z.sid,
        comm: z.comm.clone(),
        cmdline: String::new(),
        threads: Vec::new(),
        depth: 0,
        zombie: true,
        wait_status: Some(z.wait_status),
        ended: Some(wait_status_text(z.wait_status)),
        pages: 0,
        files_of: None,
    }));
    tree_order(rows)
}

/// `rows` (the root first) walked from the root, children by ascending pid, each with its depth.
/// A row whose parent is not in the set (only the root should be so) starts a walk of its own,
/// so nothing is ever left out.
fn tree_order(mut rows: Vec<ProcessRow>) -> Vec<ProcessRow> {
    use std::collections::{BTreeMap, BTreeSet};
    let Some(root) = rows.first().map(|r| r.pid) else {
        return rows;
    };
    let pids: BTreeSet<i32> = rows.iter().map(|r| r.pid).collect();
    let mut children: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    let mut tops = vec![0];
    let mut by_pid: Vec<usize> = (1..rows.len()).collect();
    by_pid.sort_by_key(|&i| rows[i].pid);
    for i in by_pid {
        let r = &rows[i];
        if pids.contains(&r.ppid) && r.pid != root {
            children.entry(r.ppid).or_default().push(i);
        } else {
            tops.push(i);
        }
    }
    let mut slots: Vec<Option<ProcessRow>> = rows.drain(..).map(Some).collect();
    let mut out = Vec::with_capacity(slots.len());
    for top in tops {
        let mut stack = vec![(top, 0)];
        while let Some((i, depth)) = stack.pop() {
            let Some(mut r) = slots[i].take() else {
                continue;
            };
            r.depth = depth;
            if let Some(kids) = children.get(&r.pid) {
                stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
            }
            out.push(r);
        }
    }
    out
}

/// The process table of `haul images show`: one line per process, the command indented by
/// its depth in the tree, zombies with how they ended.
fn processes_text(rows: &[ProcessRow]) -> String {
    use std::fmt::Write;
    let zombies = rows.iter().filter(|r| r.zombie).count();
    let mut s = format!(
        "processes {}{}\n",
        rows.len(),
        match zombies {
            0 => String::new(),
            1 => " (1 zombie)".into(),
            n => format!(" ({n} zombies)"),
        }
    );
    let _ = writeln!(
        s,
        "{:>8} {:>8} {:>8} {:>8} {:>7} {:>8}  command",
        "pid", "ppid", "pgid", "sid", "threads", "pages"
    );
    for r in rows {
        let indent = "  ".repeat(r.depth);
        let (threads, pages, what) = if r.zombie {
            let ended = r.ended.as_deref().unwrap_or("?");
            (
                "-".into(),
                "-".into(),
                format!("[{}] zombie, {ended}", r.comm),
            )
        } else {
            let mut cmd = if r.cmdline.is_empty() {
                format!("[{}]", r.comm)
            } else {
                r.cmdline.clone()
            };
            if cmd.chars().count() > 72 {
                cmd = cmd.chars().take(71).collect::<String>() + "…";
            }
            if let Some(f) = r.files_of {
                cmd += &format!("  (fd table of {f})");
            }
            (r.threads.len().to_string(), r.pages.to_string(), cmd)
        };
        let _ = writeln!(
            s,
            "{:>8} {:>8} {:>8} {:>8} {:>7} {:>8}  {indent}{what}",
            r.pid, r.ppid, r.pgid, r.sid, threads, pages
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use haul::image::{ProcessImage, ThreadImage, ZombieImage};

    fn proc(pid: i32, ppid: i32, cmd: &str) -> ProcessImage {
        ProcessImage {
            pid,
            ppid,
            pgid: 100,
            sid: 100,
            comm: cmd.split(' ').next().unwrap().into(),
            cmdline: cmd.replace(' ', "\0").into_bytes(),
            threads: vec![ThreadImage {
                tid: pid,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn tree_set() -> ImageSet {
        let mut s = ImageSet {
            id: "t-1".into(),
            job: "t".into(),
            created_us: 0,
            kind: haul::image::SetKind::Dump,
            parent: None,
            kernel: String::new(),
            process: Some(proc(100, 1, "bash jobs.sh")),
            tree: Default::default(),
            pages: Default::default(),
            figures: Default::default(),
        };
        // Tree order: parents first, children by pid.
        s.tree.descendants = vec![proc(103, 100, "sh -c x"), proc(110, 100, "sleep 9")];
        s.tree.descendants.push(proc(120, 103, "cat"));
        s.tree.zombies = vec![
            ZombieImage {
                pid: 105,
                ppid: 103,
                pgid: 100,
                sid: 100,
                comm: "sh".into(),
                wait_status: 7 << 8,
                exit_signal: 17,
            },
            ZombieImage {
                pid: 101,
                ppid: 100,
                comm: "kid".into(),
                wait_status: libc::SIGSEGV | 0x80,
                exit_signal: 17,
                ..Default::default()
            },
        ];
        let key = haul::image::page_key;
        s.pages.insert(key(0, 0x1000), haul::image::PageRef::Zero);
        s.pages.insert(key(3, 0x1000), haul::image::PageRef::Zero);
        s.pages.insert(key(3, 0x2000), haul::image::PageRef::Zero);
        s
    }

    #[test]
    fn rows_list_each_process_below_its_parent_with_zombies_and_their_status() {
        let rows = process_rows(&tree_set());
        let got: Vec<(i32, usize, bool)> =
            rows.iter().map(|r| (r.pid, r.depth, r.zombie)).collect();
        assert_eq!(
            got,
            [
                (100, 0, false),
                (101, 1, true),
                (103, 1, false),
                (105, 2, true),
                (120, 2, false),
                (110, 1, false)
            ]
        );
        let by = |pid| rows.iter().find(|r| r.pid == pid).unwrap();
        assert_eq!(by(105).ended.as_deref(), Some("exit 7"));
        assert_eq!(
            by(101).ended.as_deref(),
            Some("killed by SIGSEGV (core dumped)")
        );
        // Page spaces: the root is 0, descendant i is i + 1 (cat, the third, is 3).
        assert_eq!((by(100).pages, by(120).pages, by(103).pages), (1, 2, 0));
        assert_eq!(by(103).cmdline, "sh -c x");
        let text = processes_text(&rows);
        assert!(text.starts_with("processes 6 (2 zombies)\n"), "{text}");
        assert!(text.contains("      [sh] zombie, exit 7"), "{text}");
        assert!(text.contains("    cat"), "{text}");
    }

    #[test]
    fn show_json_keeps_the_view_fields_and_adds_the_processes() {
        let s = tree_set();
        let v = serde_json::to_value(ShowJson {
            view: haul::store::set_view(&s),
            processes: process_rows(&s),
            held: held_rows(&s),
        })
        .unwrap();
        assert_eq!(v["id"], "t-1");
        assert_eq!(v["held"], serde_json::json!([]));
        assert_eq!(v["process"]["pid"], 100);
        assert_eq!(v["processes"].as_array().unwrap().len(), 6);
        assert_eq!(v["processes"][1]["wait_status"], libc::SIGSEGV | 0x80);
        assert_eq!(v["processes"][0]["threads"], serde_json::json!([100]));
        assert!(v["processes"][0].get("wait_status").is_none());
        // The root's one page has no VMA listed; the descendants' pages are theirs, not
        // "outside the VMAs" of the root (they were counted so before).
        assert_eq!(v["pages_outside_vmas"], 1);
    }

    #[test]
    fn a_pre_dump_has_no_processes() {
        let mut s = tree_set();
        s.process = None;
        s.tree = Default::default();
        assert!(process_rows(&s).is_empty());
    }

    #[test]
    fn show_lists_what_a_set_holds_besides_processes() {
        use haul::image::inet::{InetSocket, TcpConn, Transport};
        use haul::image::ipc::{IpcImage, IpcPerm, ShmSegment};
        use haul::image::seccomp::{SeccompImage, ThreadSeccomp};
        use haul::image::stored::{StoredKind, StoredObject};
        use haul::image::{FdImage, FdKind};
        let mut s = tree_set();
        s.tree.ipc = Some(IpcImage {
            shm: vec![ShmSegment {
                perm: IpcPerm {
                    id: 32769,
                    key: 0x1234,
                    ..Default::default()
                },
                size: 8192,
                removed: true,
                ..Default::default()
            }],
            ..Default::default()
        });
        s.tree.files = vec![StoredObject {
            kind: StoredKind::Memfd { name: "buf".into() },
            dev: 1,
            ino: 2,
            size: 4096,
            mode: 0o100600,
            uid: 0,
            gid: 0,
            seals: 0,
            space: 0xF000,
        }];
        s.tree.descendants[0].seccomp = Some(SeccompImage {
            filters: vec![Default::default(), Default::default()],
            threads: vec![ThreadSeccomp {
                tid: 103,
                strict: false,
                chain: vec![0, 1],
            }],
        });
        let root = s.process.as_mut().unwrap();
        root.fds.push(FdImage {
            fd: 5,
            kind: FdKind::Inet(InetSocket {
                family: libc::AF_INET,
                transport: Transport::Tcp,
                local: Some("127.0.0.1:22".parse().unwrap()),
                peer: Some("127.0.0.1:40000".parse().unwrap()),
                conn: Some(TcpConn::default()),
                ..Default::default()
            }),
            flags: 2,
            same_as: None,
            locks: Vec::new(),
            inherited: None,
        });
        let rows = held_rows(&s);
        let text = held_text(&rows);
        assert!(text.starts_with("holds 4\n"), "{text}");
        for want in [
            "sysv-shm     shared memory id 32769 key 0x1234, 8.0 KiB, marked for deletion",
            "stored-file  memfd buf, 4.0 KiB",
            "     100     5  tcp          TCP 127.0.0.1:22 -> 127.0.0.1:40000 (established)",
            "     103     -  seccomp      2 seccomp filters on 1 thread",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
    }
}
