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
