//! `haul images` on a store the tests fill with real dumps: ls, show, du, verify (and a
//! corrupted pack it must name), rm, gc.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{fixture, haul, read_numbers, wait_for, Running};

fn images(store: &Path, args: &[&str]) -> (i32, String) {
    let o = haul()
        .arg("images")
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().unwrap_or(-1), text)
}

/// Two dumps of a running counter (leave-running), as jobs `a` and `b`.
fn fill(dir: &Path) -> (std::path::PathBuf, Vec<String>) {
    let store = dir.join("store");
    let log = dir.join("c.log");
    let mut cmd = Command::new(fixture("counter"));
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    cmd.arg(&log).stderr(Stdio::null());
    let c = Running::spawn(&mut cmd);
    assert!(wait_for(Duration::from_secs(10), || read_numbers(&log)
        .len()
        > 2));
    let mut sets = Vec::new();
    for name in ["a", "b"] {
        let o = haul()
            .args([
                "dump",
                "--leave-running",
                "--pid",
                &c.pid.to_string(),
                "--name",
                name,
                "--store",
            ])
            .arg(&store)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        sets.push(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap()
                .to_string(),
        );
    }
    (store, sets)
}

#[test]
fn images_ls_show_du_describe_the_sets() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sets) = fill(dir.path());
    let (code, ls) = images(&store, &["ls"]);
    assert_eq!(code, 0, "{ls}");
    for s in &sets {
        assert!(ls.contains(s.as_str()), "{ls}");
    }
    let (_, only_a) = images(&store, &["ls", "--job", "a"]);
    assert!(
        only_a.contains(&sets[0]) && !only_a.contains(&sets[1]),
        "{only_a}"
    );
    let (code, show) = images(&store, &["show", &sets[0]]);
    assert_eq!(code, 0);
    assert!(
        show.contains("counter") && show.contains("[heap]") && show.contains("kind     dump"),
        "{show}"
    );
    let (_, json) = images(&store, &["show", &sets[0], "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["id"], sets[0].as_str());
    let (code, du) = images(&store, &["du"]);
    assert_eq!(code, 0);
    // The second dump of the same process shares almost every page with the first.
    let (_, duj) = images(&store, &["du", "--json"]);
    let d: serde_json::Value = serde_json::from_str(&duj).unwrap();
    assert!(d["dedup_ratio"].as_f64().unwrap() > 1.5, "{du}");
}

#[test]
fn images_verify_names_a_corrupted_pack_and_rm_gc_reclaim() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sets) = fill(dir.path());
    assert_eq!(images(&store, &["verify"]).0, 0);
    // Flip one byte in the middle of a pack.
    let pack = walkdir::WalkDir::new(store.join("packs"))
        .into_iter()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .unwrap()
        .into_path();
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0xff;
    std::fs::write(&pack, &bytes).unwrap();
    let (code, out) = images(&store, &["verify"]);
    assert_eq!(code, 1, "{out}");
    let id = pack.file_stem().unwrap().to_string_lossy().to_string();
    assert!(out.contains("BAD") && out.contains(&id[..16]), "{out}");
    // Removing both sets makes the bad pack garbage: gc deletes it and the store verifies again.
    for s in &sets {
        assert_eq!(images(&store, &["rm", s]).0, 0);
    }
    let (code, gc) = images(&store, &["gc"]);
    assert_eq!(code, 0, "{gc}");
    assert!(images(&store, &["ls"]).1.lines().count() <= 1);
    assert_eq!(
        images(&store, &["verify"]).0,
        0,
        "{}",
        images(&store, &["verify"]).1
    );
}

/// `images pull` from a server that is not there used to create an empty store at the
/// destination before trying to connect.
#[test]
fn images_pull_from_an_unreachable_server_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound, then closed again.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dest = dir.path().join("new/store");
    let (code, out) = images(
        &dest,
        &[
            "pull",
            "job-20261201T000000-abcdef",
            "--from",
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "5s",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "pull left {left:?} behind: {out}");
}

/// `images ... --json`: exit code and the parsed JSON (stdout).
fn images_json(store: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let o = haul()
        .arg("images")
        .arg("--store")
        .arg(store)
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "images {args:?} --json: {e}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap_or(-1), v)
}

/// The (id, state) of every row of `images ls --json`.
fn ls_states(store: &Path) -> Vec<(String, String)> {
    let (_, v) = images_json(store, &["ls"]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or_default().to_string(),
                r["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The manifests of `job` in the store.
fn manifests(store: &Path, job: &str) -> Vec<String> {
    std::fs::read_dir(store.join("sets").join(job))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A memwriter of 4 MiB dirtying `dirty` pages a second, with nothing but files open.
fn memwriter(dir: &Path, dirty: u32) -> Running {
    let mut cmd = Command::new(fixture("memwriter"));
    haul::sys::spawn::close_inherited_fds(&mut cmd);
    cmd.args(["4", &dirty.to_string()]).arg(dir.join("mw.out"));
    Running::logged(&mut cmd, &dir.join("mw.log"), true)
}

fn dump(store: &Path, pid: i32, name: &str, extra: &[&str]) -> std::process::Command {
    let mut c = haul();
    c.args([
        "dump",
        "--leave-running",
        "--pid",
        &pid.to_string(),
        "--name",
        name,
    ])
    .args(extra)
    .arg("--store")
    .arg(store);
    c
}

/// An interrupted pre-copy used to leave pre-dump sets that `images ls` listed as any other
/// and `gc` never removed, while `du` counted bytes that gc then did not free. While the
/// pre-copy runs its sets are kept; once its haul is killed they are incomplete, `du` says
/// what gc will free and gc frees exactly that.
#[test]
fn images_gc_sweeps_the_sets_an_interrupted_precopy_left() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // Nothing dirtied, and --stop-below 0: the pre-copy neither converges nor diverges, it
    // goes on until it is stopped.
    let mw = memwriter(dir.path(), 0);
    // A complete dump first: it must come through untouched.
    let o = dump(&store, mw.pid, "done", &[]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let done = String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    // Its tick counter moves on before the pre-copy starts, so the pre-dumps hold at least one
    // page the complete dump does not (on a loaded machine it may not have ticked at all, and
    // then every pre-dumped page is shared with "done" and gc has nothing to free).
    let (t0, _) = common::memwriter_report(mw.pid, &dir.path().join("mw.out"), 0);
    common::memwriter_report(mw.pid, &dir.path().join("mw.out"), t0);
    // A long pre-copy, killed (SIGKILL, by pid) once it has pre-dumped twice.
    let mut pc = dump(
        &store,
        mw.pid,
        "pc",
        &[
            "--predump",
            "200",
            "--interval",
            "300ms",
            "--stop-below",
            "0",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(60), || manifests(&store, "pc").len()
            >= 2),
        "the pre-copy never wrote two pre-dumps"
    );
    // In progress: listed as such, and gc keeps it.
    let states = ls_states(&store);
    let pre: Vec<&(String, String)> = states
        .iter()
        .filter(|(id, _)| id.starts_with("pc-"))
        .collect();
    assert!(pre.len() >= 2, "{states:?}");
    assert!(pre.iter().all(|(_, st)| st == "in-progress"), "{states:?}");
    let (code, gc) = images_json(&store, &["gc"]);
    assert_eq!(code, 0, "{gc}");
    assert_eq!(gc["incomplete_sets_removed"], serde_json::json!([]), "{gc}");
    assert!(
        manifests(&store, "pc").len() >= 2,
        "gc removed a pre-copy in progress"
    );
    pc.kill().unwrap();
    pc.wait().unwrap();
    // Its worker stops pre-dumping once its haul is gone, and lets go of the chain.
    assert!(
        wait_for(Duration::from_secs(60), || ls_states(&store)
            .iter()
            .filter(|(id, _)| id.starts_with("pc-"))
            .all(|(_, st)| st == "incomplete")),
        "the sets of the killed pre-copy never became incomplete: {:?}",
        ls_states(&store)
    );
    assert!(common::alive(mw.pid), "the target did not survive");
    let left = manifests(&store, "pc");
    assert!(left.len() >= 2, "{left:?}");
    let (code, ls) = images(&store, &["ls"]);
    assert_eq!(code, 0, "incomplete sets are no damage: {ls}");
    assert!(ls.contains("incomplete") && ls.contains("gc"), "{ls}");
    // What du says gc would free is what gc frees.
    let (_, du) = images_json(&store, &["du"]);
    assert_eq!(du["sets_incomplete"], left.len() as u64, "{du}");
    let promised = du["bytes_gc_frees"].as_u64().unwrap();
    assert!(promised > 0, "{du}");
    let (code, gc) = images_json(&store, &["gc"]);
    assert_eq!(code, 0, "{gc}");
    assert_eq!(
        gc["bytes_freed"].as_u64().unwrap(),
        promised,
        "du: {du}\ngc: {gc}"
    );
    let mut removed: Vec<String> = gc["incomplete_sets_removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    removed.sort();
    let mut left = left;
    left.sort();
    assert_eq!(removed, left, "{gc}");
    assert_eq!(ls_states(&store), vec![(done.clone(), "ok".to_string())]);
    let (_, du) = images_json(&store, &["du"]);
    assert_eq!(du["bytes_gc_frees"], 0, "{du}");
    let (code, v) = images(&store, &["verify"]);
    assert_eq!(code, 0, "{v}");
}

/// The pre-dumps of a pre-copy that finished belong to its dump: gc keeps them as long as the
/// dump is there, and removes them with it.
#[test]
fn images_gc_keeps_the_predumps_a_dump_names_until_the_dump_goes() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mw = memwriter(dir.path(), 2000);
    let o = dump(
        &store,
        mw.pid,
        "pc",
        &["--predump", "2", "--interval", "50ms"],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let set = String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    let states = ls_states(&store);
    assert_eq!(states.len(), 3, "{states:?}");
    assert!(states.iter().all(|(_, st)| st == "ok"), "{states:?}");
    let (_, gc) = images_json(&store, &["gc"]);
    assert_eq!(gc["incomplete_sets_removed"], serde_json::json!([]), "{gc}");
    assert_eq!(ls_states(&store).len(), 3);
    assert_eq!(images(&store, &["rm", &set]).0, 0);
    let states = ls_states(&store);
    assert!(
        states.iter().all(|(_, st)| st == "incomplete"),
        "{states:?}"
    );
    let (_, du) = images_json(&store, &["du"]);
    let (_, gc) = images_json(&store, &["gc"]);
    assert_eq!(
        gc["incomplete_sets_removed"].as_array().unwrap().len(),
        2,
        "{gc}"
    );
    assert_eq!(
        gc["bytes_freed"], du["bytes_gc_frees"],
        "du: {du}\ngc: {gc}"
    );
    assert!(ls_states(&store).is_empty());
    drop(mw);
}

/// Flips one byte of `path` at `at` (from the end when negative).
fn flip(path: &Path, at: i64) {
    let mut b = std::fs::read(path).unwrap();
    let i = if at < 0 { b.len() as i64 + at } else { at } as usize;
    b[i] ^= 0xff;
    std::fs::write(path, &b).unwrap();
}

/// `images ls` used to skip a set whose manifest is corrupt (a warning, exit 0), and did not
/// look at the page table at all: both are listed as damaged, and ls fails.
#[test]
fn images_ls_lists_damaged_manifests_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sets) = fill(dir.path());
    assert_eq!(images(&store, &["ls"]).0, 0);
    // Set a: a byte of its meta section (right after the 96-byte header); set b: the last byte
    // of its page table.
    flip(&store.join("sets/a").join(&sets[0]), 100);
    flip(&store.join("sets/b").join(&sets[1]), -1);
    let (code, out) = images(&store, &["ls"]);
    assert_eq!(code, 1, "{out}");
    for s in &sets {
        assert!(
            out.lines()
                .any(|l| l.starts_with(s.as_str()) && l.contains("DAMAGED")),
            "{s} not listed as damaged:\n{out}"
        );
    }
    assert!(out.contains("checksum"), "{out}");
    let (code, v) = images_json(&store, &["ls"]);
    assert_eq!(code, 1);
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    assert!(rows.iter().all(|r| r["state"] == "damaged"), "{v}");
    assert_eq!(images(&store, &["ls", "--job", "a"]).0, 1);
}

/// `images verify SET` checked only the set's pages ("0 packs checked"): a pack whose footer
/// is damaged passed it while the whole-store verify failed. Both hash the packs now.
#[test]
fn images_verify_of_one_set_checks_the_footers_of_its_packs() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sets) = fill(dir.path());
    let packs: Vec<std::path::PathBuf> = walkdir::WalkDir::new(store.join("packs"))
        .into_iter()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .map(|e| e.into_path())
        .collect();
    assert!(!packs.is_empty());
    for s in &sets {
        let (code, out) = images(&store, &["verify", s]);
        assert_eq!(code, 0, "{out}");
    }
    // Damage each pack's footer (where the trailer says it is), not its frames: every page
    // still reads back right.
    for p in &packs {
        let b = std::fs::read(p).unwrap();
        let t = &b[b.len() - 48..];
        let footer = u64::from_le_bytes(t[16..24].try_into().unwrap());
        let len = u64::from_le_bytes(t[24..32].try_into().unwrap());
        flip(p, (footer + len / 2) as i64);
    }
    let (code, whole) = images(&store, &["verify"]);
    assert_eq!(code, 1, "{whole}");
    for s in &sets {
        let (code, one) = images(&store, &["verify", s]);
        assert_eq!(code, 1, "verify {s} passed a damaged footer:\n{one}");
        assert!(one.contains("BAD pack"), "{one}");
        let (_, v) = images_json(&store, &["verify", s]);
        assert!(v["packs_checked"].as_u64().unwrap() >= 1, "{v}");
        assert_eq!(v["ok"], false, "{v}");
    }
}

/// gc's text names what it left alone as it is: a pack directory it could not list is
/// "packs/xx", not an "unreadable pack" (the store keeps its index segments, verify says why).
#[test]
fn images_gc_names_a_pack_directory_it_could_not_list() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    haul::store::Store::open_or_create(&store).unwrap();
    // A directory entry under packs/ that cannot be listed, as root too: a symlink to itself.
    std::os::unix::fs::symlink("zz", store.join("packs").join("zz")).unwrap();
    let (code, gc) = images(&store, &["gc"]);
    assert_eq!(code, 0, "{gc}");
    let line = gc
        .lines()
        .find(|l| l.contains("skipped"))
        .unwrap_or_else(|| panic!("gc does not say what it skipped: {gc}"));
    assert!(
        line.contains("skipped packs/zz") && line.contains("(not listed"),
        "{line}"
    );
    assert!(
        !line.contains("pack pack") && !line.contains("unreadable pack"),
        "{line}"
    );
}
