//! The image store, exercised through real files in temp dirs: round trips, dedup, crashes of a
//! writer process, corruption, concurrency, format versions, a full disk, index rebuilds,
//! retention and gc.

mod common;

use haul::image::{ImageSet, PageId, PageRef, ProcessImage, SetKind, PAGE_SIZE};
use haul::store::{Store, StoreError};
use haul::sys::mem::PageBuf;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const PS: usize = PAGE_SIZE;

/// Page `n` of test data: every third is zero, every third a text page (a repeated sentence
/// with the page number first), every third pseudo-random (seeded).
fn page(n: u64, seed: u64) -> Vec<u8> {
    match n % 3 {
        0 => vec![0; PS],
        1 => {
            let mut p = format!("page {n} ").into_bytes();
            while p.len() < PS {
                p.extend_from_slice(b"The quick brown fox jumps over the lazy dog. ");
            }
            p.truncate(PS);
            p
        }
        _ => {
            let mut p = vec![0; PS];
            let mut h = blake3::Hasher::new();
            h.update(&n.to_le_bytes());
            h.update(&seed.to_le_bytes());
            h.finalize_xof().fill(&mut p);
            p
        }
    }
}

const BASE: u64 = 0x7f00_0000_0000;

/// Writes pages `0..n` (at BASE + i*4096) in batches of `batch` pages.
fn write_set(store: &Store, job: &str, n: u64, seed: u64, level: Option<i32>) -> ImageSet {
    let mut w = store.begin_set(job, SetKind::Dump, None, level).unwrap();
    add_range(&mut w, 0..n, seed);
    w.commit(Some(process())).unwrap()
}

fn add_range(w: &mut haul::store::SetWriter<'_>, r: std::ops::Range<u64>, seed: u64) {
    let v: Vec<u64> = r.collect();
    for chunk in v.chunks(200) {
        let addrs: Vec<u64> = chunk.iter().map(|i| BASE + i * PS as u64).collect();
        let mut data = Vec::with_capacity(chunk.len() * PS);
        for i in chunk {
            data.extend_from_slice(&page(*i, seed));
        }
        w.add_pages(&addrs, PageBuf::copy_of(&data)).unwrap();
    }
}

fn process() -> ProcessImage {
    ProcessImage {
        pid: 4242,
        comm: "fixture".into(),
        exe: "/bin/fixture".into(),
        ..Default::default()
    }
}

/// Reads every page of `set` and checks it against the generator.
fn check_set_content(store: &Store, set: &ImageSet, seed: u64) {
    let mut seen = 0u64;
    store
        .read_set_pages(set, |addr, bytes| -> Result<(), StoreError> {
            assert_eq!(bytes.len() % PS, 0);
            for (k, p) in bytes.chunks(PS).enumerate() {
                let i = (addr - BASE) / PS as u64 + k as u64;
                assert_eq!(p, &page(i, seed)[..], "page {i}");
                seen += 1;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(seen, set.pages.len() as u64);
}

fn tmp_store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open_or_create(&d.path().join("store")).unwrap();
    (d, s)
}

fn packs(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walk(&root.join("packs"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn store_round_trips_zero_text_and_random_pages() {
    let (_d, store) = tmp_store();
    let set = write_set(&store, "rt", 300, 1, Some(3));
    assert_eq!(set.figures.pages, 300);
    assert_eq!(set.figures.pages_zero, 100);
    assert_eq!(set.figures.bytes_logical, 200 * PS as u64);
    assert_eq!(set.figures.pages_new, 200);
    assert!(set.figures.bytes_stored > 0 && set.figures.bytes_stored < 200 * PS as u64);
    let loaded = store.load_set(&set.id).unwrap();
    assert_eq!(loaded, set);
    // Single pages, through a fresh handle (no cache).
    let fresh = Store::open(store.path()).unwrap();
    for (addr, r) in set.pages.iter() {
        let i = (addr - BASE) / PS as u64;
        match r {
            PageRef::Zero => assert_eq!(i % 3, 0),
            PageRef::Stored(id) => assert_eq!(fresh.read_page(&id).unwrap(), page(i, 1)),
            PageRef::Lazy(_) => panic!("no lazy pages were written"),
        }
    }
    check_set_content(&fresh, &set, 1);
    let ls = store.list_sets(None).unwrap();
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0].id, set.id);
    assert_eq!(ls[0].figures, set.figures);
    assert_eq!(store.latest_set("rt").unwrap().unwrap().id, set.id);
    assert!(store.verify(None).unwrap().ok);
    let text = haul::store::show_text(&set);
    assert!(
        text.contains(&set.id) && text.contains("pid 4242"),
        "{text}"
    );
}

#[test]
fn store_round_trips_uncompressed_frames_and_refs() {
    let (_d, store) = tmp_store();
    let first = write_set(&store, "raw", 90, 2, None);
    assert_eq!(
        first.figures.bytes_new,
        60 * PS as u64,
        "raw frames store pages as they are"
    );
    // A second set carries the first's pages by reference and adds a lazy one.
    let mut w = store
        .begin_set("raw", SetKind::Dump, Some(&first.id), None)
        .unwrap();
    for (a, r) in first.pages.iter() {
        w.add_ref(a, r);
    }
    let lazy = PageId::of(b"elsewhere");
    w.add_ref(BASE + 1000 * PS as u64, PageRef::Lazy(lazy));
    let second = w.commit(None).unwrap();
    assert_eq!(second.parent.as_deref(), Some(first.id.as_str()));
    assert_eq!(second.figures.pages_new, 0);
    assert_eq!(second.figures.pages_lazy, 1);
    assert_eq!(second.figures.bytes_stored, first.figures.bytes_stored);
    let mut n = 0;
    store
        .read_set_pages(&second, |_, b| -> Result<(), StoreError> {
            n += b.len() / PS;
            Ok(())
        })
        .unwrap();
    assert_eq!(n, 90, "lazy pages are not in the store and are left out");
}

#[test]
fn store_refuses_ref_to_page_it_does_not_hold() {
    let (_d, store) = tmp_store();
    let mut w = store
        .begin_set("refs", SetKind::Dump, None, Some(1))
        .unwrap();
    w.add_ref(BASE, PageRef::Stored(PageId::of(b"never stored")));
    let e = w.commit(None).unwrap_err();
    assert!(matches!(e, StoreError::RefNotStored { .. }), "{e}");
    assert!(store.list_sets(None).unwrap().is_empty());
}

#[test]
fn store_dedups_identical_sets_across_sets_and_jobs() {
    let (_d, store) = tmp_store();
    let a = write_set(&store, "alpha", 600, 7, Some(3));
    let size_after_first: u64 = packs(store.path())
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();
    let b = write_set(&store, "alpha", 600, 7, Some(3));
    let c = write_set(&store, "beta", 600, 7, Some(3));
    for s in [&b, &c] {
        assert_eq!(s.figures.pages_new, 0);
        assert_eq!(s.figures.bytes_new, 0);
        assert_eq!(s.figures.bytes_stored, a.figures.bytes_stored);
    }
    let size_after_three: u64 = packs(store.path())
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();
    assert_eq!(size_after_first, size_after_three);
    check_set_content(&store, &c, 7);
    let du = store.du().unwrap();
    assert_eq!(du.sets, 3);
    assert_eq!(du.jobs.len(), 2);
    assert!((du.dedup_ratio - 3.0).abs() < 1e-9, "{}", du.dedup_ratio);
    assert_eq!(du.bytes_unreferenced, 0);
}

#[test]
fn store_dedups_pages_repeated_within_one_batch() {
    let (_d, store) = tmp_store();
    let mut w = store
        .begin_set("rep", SetKind::Dump, None, Some(3))
        .unwrap();
    let p = page(2, 9);
    let addrs: Vec<u64> = (0..50).map(|i| BASE + i * PS as u64).collect();
    w.add_pages(&addrs, PageBuf::copy_of(&p.repeat(50)))
        .unwrap();
    let s = w.commit(None).unwrap();
    assert_eq!(s.figures.pages_new, 1);
    assert_eq!(s.figures.pages, 50);
}

#[test]
fn store_creates_private_dirs_and_files() {
    let (_d, store) = tmp_store();
    write_set(&store, "perm", 30, 3, Some(1));
    for e in walkdir::WalkDir::new(store.path()) {
        let e = e.unwrap();
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        if e.file_type().is_dir() {
            assert_eq!(mode, 0o700, "{}", e.path().display());
        } else {
            assert_eq!(mode, 0o600, "{}", e.path().display());
        }
    }
}

// ---- child writer process -------------------------------------------------------------------

/// Not a test by itself: the writer process other tests start (re-executing this binary).
/// HAUL_TEST_STORE: store dir; HAUL_TEST_JOB; HAUL_TEST_PAGES; HAUL_TEST_SEED;
/// HAUL_TEST_LOOP=1: write sets forever; HAUL_TEST_READY: file created once the pages are
/// written; HAUL_TEST_HOLD: file to wait for before committing.
#[test]
#[ignore]
fn writer_child() {
    let Ok(dir) = std::env::var("HAUL_TEST_STORE") else {
        return;
    };
    let var = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let job = std::env::var("HAUL_TEST_JOB").unwrap_or_else(|_| "child".into());
    let n = var("HAUL_TEST_PAGES", 3000);
    let mut seed = var("HAUL_TEST_SEED", 1);
    let store = Store::open_or_create(Path::new(&dir)).unwrap();
    store.set_pack_target(var("HAUL_TEST_PACK", 64 << 20));
    loop {
        let mut w = store.begin_set(&job, SetKind::Dump, None, Some(1)).unwrap();
        add_range(&mut w, 0..n, seed);
        if let Ok(ready) = std::env::var("HAUL_TEST_READY") {
            std::fs::write(ready, b"ready").unwrap();
        }
        if let Ok(hold) = std::env::var("HAUL_TEST_HOLD") {
            while !Path::new(&hold).exists() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        w.commit(Some(process())).unwrap();
        if std::env::var("HAUL_TEST_LOOP").is_err() {
            return;
        }
        seed += 1;
    }
}

fn spawn_writer(dir: &Path, envs: &[(&str, String)]) -> Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "writer_child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("HAUL_TEST_STORE", dir)
    .stdout(std::process::Stdio::null());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

fn wait_ok(mut c: Child) {
    let st = c.wait().unwrap();
    assert!(st.success(), "writer child failed: {st}");
}

/// Deterministic pseudo-random delays for the kill test.
fn delay_ms(i: u64, max: u64) -> u64 {
    let h = blake3::hash(&i.to_le_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap()) % max
}

#[test]
fn store_survives_sigkill_of_writer_at_20_moments() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("store");
    Store::open_or_create(&dir).unwrap();
    for i in 0..20u64 {
        let mut c = spawn_writer(
            &dir,
            &[
                ("HAUL_TEST_JOB", "crash".into()),
                ("HAUL_TEST_PAGES", "3000".into()),
                ("HAUL_TEST_SEED", (i * 1000).to_string()),
                ("HAUL_TEST_LOOP", "1".into()),
                ("HAUL_TEST_PACK", (1 << 20).to_string()),
            ],
        );
        // The moment of the kill, not a wait for anything: deterministic per i, printed.
        let ms = 20 + delay_ms(i, 300);
        eprintln!("kill {i}: after {ms} ms");
        std::thread::sleep(Duration::from_millis(ms));
        c.kill().unwrap();
        c.wait().unwrap();
        let store = Store::open(&dir).unwrap();
        let rep = store.verify(None).unwrap();
        assert!(rep.ok, "after kill {i}: {:#?}", rep.problems);
        for s in store.list_sets(None).unwrap() {
            // A listed set is complete: every page is there and right.
            let set = store.load_set(&s.id).unwrap();
            assert_eq!(set.pages.len(), 3000);
        }
    }
    let store = Store::open(&dir).unwrap();
    let before = store.verify(None).unwrap();
    let gc = store.gc().unwrap();
    let after = store.verify(None).unwrap();
    eprintln!("before gc: {before:?}\ngc: {gc:?}");
    assert!(after.ok, "{:#?}", after.problems);
    assert_eq!(after.temp_files, 0, "gc removes temp files ({gc:?})");
    assert_eq!(
        after.packs_unreferenced, 0,
        "gc removes unreferenced packs ({gc:?})"
    );
    assert_eq!(after.sets_checked, before.sets_checked);
    // (Packs at most half dead are kept as they are: du may still count some dead bytes.)
    let du = store.du().unwrap();
    assert!(du.bytes_unreferenced <= du.bytes_referenced, "{du:?}");
    for s in store.list_sets(None).unwrap() {
        let set = store.load_set(&s.id).unwrap();
        store
            .read_set_pages(&set, |_, _| -> Result<(), StoreError> { Ok(()) })
            .unwrap();
    }
}

#[test]
fn store_keeps_sets_of_two_writer_processes_intact() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("store");
    Store::open_or_create(&dir).unwrap();
    let a = spawn_writer(
        &dir,
        &[
            ("HAUL_TEST_JOB", "one".into()),
            ("HAUL_TEST_SEED", "11".into()),
        ],
    );
    let b = spawn_writer(
        &dir,
        &[
            ("HAUL_TEST_JOB", "two".into()),
            ("HAUL_TEST_SEED", "22".into()),
        ],
    );
    wait_ok(a);
    wait_ok(b);
    let store = Store::open(&dir).unwrap();
    let rep = store.verify(None).unwrap();
    assert!(rep.ok, "{:#?}", rep.problems);
    for (job, seed) in [("one", 11), ("two", 22)] {
        let s = store.latest_set(job).unwrap().unwrap();
        check_set_content(&store, &store.load_set(&s.id).unwrap(), seed);
    }
}

#[test]
fn gc_waits_for_active_writer_then_refuses_and_keeps_its_data() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("store");
    let store = Store::open_or_create(&dir).unwrap();
    // Some garbage for gc to find: a set removed, its pack unreferenced.
    // (pages far above the child's, so that it cannot dedup against them)
    let mut w = store
        .begin_set("gone", SetKind::Dump, None, Some(3))
        .unwrap();
    add_range(&mut w, 10_000..10_060, 5);
    let old = w.commit(None).unwrap();
    store.remove_set(&old.id).unwrap();
    let ready = d.path().join("ready");
    let hold = d.path().join("hold");
    let child = spawn_writer(
        &dir,
        &[
            ("HAUL_TEST_JOB", "live".into()),
            ("HAUL_TEST_SEED", "33".into()),
            ("HAUL_TEST_PACK", (256 << 10).to_string()),
            ("HAUL_TEST_READY", ready.display().to_string()),
            ("HAUL_TEST_HOLD", hold.display().to_string()),
        ],
    );
    let t = Instant::now();
    while !ready.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "writer child never got ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    store.set_lock_timeout(Duration::from_millis(300));
    let e = store.gc().unwrap_err();
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("gc"), "{e}");
    std::fs::write(&hold, b"go").unwrap();
    wait_ok(child);
    let gc = store.gc().unwrap();
    assert!(gc.packs_removed >= 1, "{gc:?}");
    let s = store.latest_set("live").unwrap().unwrap();
    check_set_content(&store, &store.load_set(&s.id).unwrap(), 33);
    assert!(store.verify(None).unwrap().ok);
}

#[test]
fn gc_waits_for_writer_in_same_process() {
    let (_d, store) = tmp_store();
    let other = Store::open(store.path()).unwrap();
    other.set_lock_timeout(Duration::from_millis(100));
    let w = store
        .begin_set("held", SetKind::Dump, None, Some(1))
        .unwrap();
    assert!(matches!(other.gc(), Err(StoreError::Locked { .. })));
    drop(w);
    other.gc().unwrap();
}

// ---- corruption ---------------------------------------------------------------------------

/// A set whose pages all sit in one pack; returns (store, set, pack path).
fn one_pack_set() -> (tempfile::TempDir, Store, ImageSet, PathBuf) {
    let (d, store) = tmp_store();
    let set = write_set(&store, "bad", 300, 4, Some(3));
    let p = packs(store.path());
    assert_eq!(p.len(), 1);
    (d, store, set, p[0].clone())
}

/// Reads the whole set; every delivered page must be right, and the read must fail.
fn read_must_fail_cleanly(store: &Store, set: &ImageSet) -> StoreError {
    let e = store
        .read_set_pages(set, |addr, bytes| -> Result<(), StoreError> {
            for (k, p) in bytes.chunks(PS).enumerate() {
                let i = (addr - BASE) / PS as u64 + k as u64;
                assert_eq!(p, &page(i, 4)[..], "wrong bytes delivered for page {i}");
            }
            Ok(())
        })
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&set.id), "error names the set: {msg}");
    assert!(msg.contains("page "), "error names the page: {msg}");
    e
}

#[test]
fn store_rejects_flipped_byte_in_pack() {
    let (_d, store, set, pack) = one_pack_set();
    let mut b = std::fs::read(&pack).unwrap();
    // A byte inside the frame data (frames come first).
    let pos = b.len() / 3;
    b[pos] ^= 0x55;
    std::fs::write(&pack, &b).unwrap();
    let fresh = Store::open(store.path()).unwrap();
    let e = read_must_fail_cleanly(&fresh, &set);
    let pack_id = pack.file_stem().unwrap().to_str().unwrap();
    assert!(e.to_string().contains(pack_id), "error names the pack: {e}");
    // read_page of every stored page: right bytes or an error, never wrong bytes.
    let mut errors = 0;
    for (addr, r) in set.pages.iter() {
        if let PageRef::Stored(id) = r {
            match fresh.read_page_at(&id, &set.id, addr) {
                Ok(p) => assert_eq!(p, page((addr - BASE) / PS as u64, 4)),
                Err(e) => {
                    errors += 1;
                    assert!(e.to_string().contains(&id.to_hex()), "{e}");
                }
            }
        }
    }
    assert!(errors > 0);
    let rep = fresh.verify(None).unwrap();
    assert!(!rep.ok);
    assert!(
        rep.problems.iter().any(|p| p.kind == "pack"),
        "{:#?}",
        rep.problems
    );
    assert!(
        rep.problems.iter().any(|p| p.kind == "page"
            && p.set.as_deref() == Some(set.id.as_str())
            && p.addr.is_some()),
        "{:#?}",
        rep.problems
    );
    assert!(!fresh.verify(Some(&set.id)).unwrap().ok);
}

/// The parallel read of a restore (`read_set_pages_par`): pages of raw frames are read
/// straight into the batch, runs of them at once, beside pages decoded from zstd frames and
/// zero pages; every page comes out right, and a flipped byte inside a raw page is refused by
/// address, never delivered.
#[test]
fn parallel_reads_give_every_page_and_refuse_a_flipped_raw_page() {
    let (_d, store, set, pack) = one_pack_set();
    let opts = haul::store::ReadOptions { skip_zero: false };
    let read = |store: &Store| {
        let got = std::sync::Mutex::new(std::collections::BTreeMap::new());
        let r = store.read_set_pages_par(&set, opts, |addrs, bytes| -> Result<(), StoreError> {
            for (a, p) in addrs.iter().zip(bytes.chunks(PS)) {
                let i = (a - BASE) / PS as u64;
                assert_eq!(p, &page(i, 4)[..], "wrong bytes delivered for page {i}");
                got.lock().unwrap().insert(*a, ());
            }
            Ok(())
        });
        (r, got.into_inner().unwrap().len())
    };
    let (r, n) = read(&store);
    r.unwrap();
    assert_eq!(n, 300);

    // Page 2 is incompressible, so stored raw: flip a byte in its middle.
    let want = page(2, 4);
    let mut b = std::fs::read(&pack).unwrap();
    let at = b
        .windows(64)
        .position(|w| w == &want[..64])
        .expect("page 2 is stored raw in the pack");
    assert_eq!(&b[at..at + PS], &want[..]);
    b[at + 2000] ^= 0x55;
    std::fs::write(&pack, &b).unwrap();
    let fresh = Store::open(store.path()).unwrap();
    let (r, _) = read(&fresh);
    let e = r.unwrap_err();
    assert!(matches!(e, StoreError::PageCorrupt { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&set.id), "error names the set: {msg}");
    assert!(
        msg.contains(&format!("{:#x}", BASE + 2 * PS as u64)),
        "error names the address: {msg}"
    );
}

#[test]
fn store_reports_truncated_pack() {
    let (_d, store, set, pack) = one_pack_set();
    let len = pack.metadata().unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let fresh = Store::open(store.path()).unwrap();
    let e = read_must_fail_cleanly(&fresh, &set);
    assert!(e.to_string().contains("truncated"), "{e}");
    let rep = fresh.verify(None).unwrap();
    assert!(rep
        .problems
        .iter()
        .any(|p| p.kind == "page" && p.message.contains("truncated")));
    assert!(rep.problems.iter().any(|p| p.kind == "pack"));
}

#[test]
fn store_reports_missing_pack() {
    let (_d, store, set, pack) = one_pack_set();
    std::fs::remove_file(&pack).unwrap();
    let pack_id = pack.file_stem().unwrap().to_str().unwrap().to_string();
    // Both an open handle and a fresh one say which pack is missing.
    for s in [&store, &Store::open(store.path()).unwrap()] {
        let e = read_must_fail_cleanly(s, &set);
        assert!(
            e.to_string().contains("missing") && e.to_string().contains(&pack_id),
            "{e}"
        );
    }
    let rep = Store::open(store.path()).unwrap().verify(None).unwrap();
    assert!(!rep.ok);
    assert!(rep
        .problems
        .iter()
        .all(|p| p.pack.as_deref() == Some(pack_id.as_str())));
    // gc must not make things worse: the set still says what is missing.
    store.gc().unwrap();
    assert!(read_must_fail_cleanly(&store, &set)
        .to_string()
        .contains(&pack_id));
}

#[test]
fn store_rejects_corrupted_manifest() {
    let (_d, store) = tmp_store();
    let good = write_set(&store, "m", 30, 6, Some(3));
    let bad = write_set(&store, "m", 30, 8, Some(3));
    let path = store.path().join("sets").join("m").join(&bad.id);
    let mut b = std::fs::read(&path).unwrap();
    let n = b.len();
    b[n - 5] ^= 1;
    std::fs::write(&path, &b).unwrap();
    let e = store.load_set(&bad.id).unwrap_err();
    assert!(matches!(e, StoreError::Manifest { .. }), "{e}");
    assert!(
        e.to_string().contains(&bad.id) && e.to_string().contains("checksum"),
        "{e}"
    );
    let rep = store.verify(None).unwrap();
    assert_eq!(rep.problems.len(), 1, "{:#?}", rep.problems);
    assert_eq!(rep.problems[0].kind, "manifest");
    assert_eq!(rep.problems[0].set.as_deref(), Some(bad.id.as_str()));
    // gc refuses rather than treat the unreadable set's pages as garbage.
    assert!(matches!(store.gc(), Err(StoreError::GcRefused { .. })));
    store.remove_set(&bad.id).unwrap();
    store.gc().unwrap();
    check_set_content(&store, &store.load_set(&good.id).unwrap(), 6);
}

#[test]
fn store_names_newer_manifest_version() {
    let (_d, store) = tmp_store();
    let s = write_set(&store, "v", 3, 1, Some(3));
    let path = store.path().join("sets").join("v").join(&s.id);
    let mut b = std::fs::read(&path).unwrap();
    b[8..12].copy_from_slice(&9u32.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    let e = store.load_set(&s.id).unwrap_err();
    assert!(e.to_string().contains("version 9"), "{e}");
}

// ---- format, not-a-store, full disk -------------------------------------------------------

#[test]
fn store_refuses_newer_format_version() {
    let (_d, store) = tmp_store();
    std::fs::write(
        store.path().join("HAUL-STORE"),
        "haul-store\nformat 7\npage-size 4096\n",
    )
    .unwrap();
    let e = Store::open(store.path()).err().unwrap();
    assert!(matches!(e, StoreError::NewerFormat { found: 7, .. }), "{e}");
    assert!(e.to_string().contains("format version 7"), "{e}");
    assert!(Store::open_or_create(store.path()).is_err());
}

#[test]
fn store_refuses_path_that_is_not_a_store() {
    let d = tempfile::tempdir().unwrap();
    let e = Store::open(&d.path().join("nope")).err().unwrap();
    assert!(
        matches!(e, StoreError::NotAStore { .. }) && e.to_string().contains("does not exist"),
        "{e}"
    );
    std::fs::write(d.path().join("file.txt"), "x").unwrap();
    let e = Store::open(d.path()).err().unwrap();
    assert!(e.to_string().contains("not a haul store"), "{e}");
    let e = Store::open_or_create(d.path()).err().unwrap();
    assert!(e.to_string().contains("non-empty"), "{e}");
    std::fs::write(d.path().join("HAUL-STORE"), "something else\n").unwrap();
    assert!(matches!(
        Store::open(d.path()),
        Err(StoreError::NotAStore { .. })
    ));
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn store_full_disk_gives_clear_error_and_stays_consistent() {
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        // Said on stderr, and a failure under CI, where tmpfs mounts must work.
        return common::skip(
            "store_full_disk_gives_clear_error_and_stays_consistent",
            "cannot mount a tmpfs here",
        );
    }
    let _guard = Unmount(mnt.clone());
    let store = Store::open_or_create(&mnt.join("store")).unwrap();
    let small = write_set(&store, "small", 60, 1, Some(3));
    // ~4 MiB of random pages cannot fit in 2 MiB.
    let mut w = store.begin_set("big", SetKind::Dump, None, None).unwrap();
    let mut err = None;
    for chunk in 0..8u64 {
        let addrs: Vec<u64> = (0..128)
            .map(|i| BASE + (chunk * 128 + i) * PS as u64)
            .collect();
        let mut data = Vec::new();
        for i in 0..128 {
            data.extend_from_slice(&page((chunk * 128 + i) * 3 + 2, 99));
        }
        if let Err(e) = w.add_pages(&addrs, PageBuf::copy_of(&data)) {
            err = Some(e);
            break;
        }
    }
    let err = match err {
        Some(e) => {
            drop(w);
            e
        }
        None => w.commit(None).unwrap_err(),
    };
    assert!(matches!(err, StoreError::DiskFull { .. }), "{err}");
    assert!(err.to_string().contains("no space left"), "{err}");
    let store = Store::open(store.path()).unwrap();
    let rep = store.verify(None).unwrap();
    assert!(rep.ok, "{:#?}", rep.problems);
    let ls = store.list_sets(None).unwrap();
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0].id, small.id);
    check_set_content(&store, &small, 1);
    store.gc().unwrap();
    // Space is back: a small set fits again.
    write_set(&store, "small", 30, 2, Some(3));
}

// ---- index, retention, gc ------------------------------------------------------------------

#[test]
fn store_rebuilds_deleted_index_from_pack_footers() {
    let (_d, store) = tmp_store();
    store.set_pack_target(128 << 10);
    let set = write_set(&store, "idx", 900, 12, Some(3));
    assert!(packs(store.path()).len() > 1);
    std::fs::remove_dir_all(store.path().join("index")).unwrap();
    let fresh = Store::open(store.path()).unwrap();
    check_set_content(&fresh, &set, 12);
    assert!(fresh.verify(None).unwrap().ok);
    assert_eq!(
        walk(&store.path().join("index")).len(),
        packs(store.path()).len()
    );
}

#[test]
fn store_rebuilds_corrupt_index_segment() {
    let (_d, store) = tmp_store();
    let set = write_set(&store, "idx2", 120, 13, Some(3));
    let seg = walk(&store.path().join("index")).pop().unwrap();
    let mut b = std::fs::read(&seg).unwrap();
    b[60] ^= 0xff;
    std::fs::write(&seg, &b).unwrap();
    let fresh = Store::open(store.path()).unwrap();
    check_set_content(&fresh, &set, 13);
    assert!(fresh.verify(None).unwrap().ok);
}

#[test]
fn prune_keeps_newest_sets_of_the_job() {
    let (_d, store) = tmp_store();
    let mut ids = Vec::new();
    for seed in 0..5 {
        ids.push(write_set(&store, "keep", 30, seed, Some(1)).id);
    }
    let other = write_set(&store, "other", 30, 50, Some(1));
    let removed = store.prune("keep", 2).unwrap();
    assert_eq!(removed, ids[..3].to_vec());
    let left: Vec<String> = store
        .list_sets(Some("keep"))
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left, ids[3..].to_vec());
    assert!(store.load_set(&other.id).is_ok());
    // keep = 0 still keeps the newest.
    assert_eq!(store.prune("keep", 0).unwrap(), vec![ids[3].clone()]);
    let gc = store.gc().unwrap();
    assert!(gc.packs_removed >= 1, "{gc:?}");
    check_set_content(&store, &store.load_set(&ids[4]).unwrap(), 4);
    check_set_content(&store, &other, 50);
}

#[test]
fn gc_repacks_mostly_dead_pack_and_keeps_live_pages() {
    let (_d, store) = tmp_store();
    let big = write_set(&store, "big", 300, 21, Some(3));
    // A second set keeps 30 of the 200 stored pages alive by reference.
    let mut w = store
        .begin_set("small", SetKind::Dump, None, Some(3))
        .unwrap();
    for (a, r) in big.pages.iter().take(45) {
        w.add_ref(a, r);
    }
    let small = w.commit(None).unwrap();
    store.remove_set(&big.id).unwrap();
    let before = packs(store.path());
    let gc = store.gc().unwrap();
    assert_eq!(gc.packs_repacked, 1, "{gc:?}");
    assert_eq!(gc.pages_moved, 30);
    assert!(gc.bytes_freed > 0);
    let after = packs(store.path());
    assert_eq!(after.len(), 1);
    assert_ne!(before, after);
    let fresh = Store::open(store.path()).unwrap();
    check_set_content(&fresh, &small, 21);
    // The handle that ran gc reads the moved pages too.
    check_set_content(&store, &small, 21);
    assert!(fresh.verify(None).unwrap().ok);
}

#[test]
fn reader_handle_follows_gc_by_another_handle() {
    let (_d, store) = tmp_store();
    let big = write_set(&store, "a", 300, 31, Some(3));
    let mut w = store.begin_set("b", SetKind::Dump, None, Some(3)).unwrap();
    for (a, r) in big.pages.iter().take(30) {
        w.add_ref(a, r);
    }
    let small = w.commit(None).unwrap();
    let reader = Store::open(store.path()).unwrap();
    store.remove_set(&big.id).unwrap();
    store.gc().unwrap();
    for (addr, r) in small.pages.iter() {
        if let PageRef::Stored(id) = r {
            assert_eq!(
                reader.read_page(&id).unwrap(),
                page((addr - BASE) / PS as u64, 31)
            );
        }
    }
    // A writer on the stale handle must not dedup against the removed pack.
    let again = write_set(&reader, "c", 300, 31, Some(3));
    check_set_content(&Store::open(store.path()).unwrap(), &again, 31);
}

#[test]
fn dropped_writer_lists_nothing_and_gc_reclaims_its_packs() {
    let (_d, store) = tmp_store();
    store.set_pack_target(64 << 10);
    let mut w = store
        .begin_set("drop", SetKind::Dump, None, Some(3))
        .unwrap();
    add_range(&mut w, 0..600, 40);
    drop(w);
    assert!(store.list_sets(None).unwrap().is_empty());
    assert!(
        !packs(store.path()).is_empty(),
        "full packs were committed before the drop"
    );
    let gc = store.gc().unwrap();
    assert!(gc.packs_removed > 0);
    assert!(packs(store.path()).is_empty());
    assert!(walk(&store.path().join("tmp")).is_empty());
}

#[test]
fn store_rejects_bad_job_names_and_batch_shapes() {
    let (_d, store) = tmp_store();
    for bad in ["", "../x", "a/b", ".hidden"] {
        assert!(matches!(
            store.begin_set(bad, SetKind::Dump, None, None),
            Err(StoreError::BadJobName { .. })
        ));
    }
    let mut w = store.begin_set("ok", SetKind::PreDump, None, None).unwrap();
    assert!(matches!(
        w.add_pages(&[BASE, BASE + 4096], PageBuf::copy_of(&[0; 4096])),
        Err(StoreError::BatchShape { .. })
    ));
    assert!(matches!(
        store.load_set("nope-1-2"),
        Err(StoreError::SetNotFound { .. })
    ));
}

/// The store benchmark (run in release mode:
/// `cargo test --release --test store bench_store -- --ignored --nocapture`);
/// HAUL_BENCH_SIZE overrides the image size in bytes.
#[test]
#[ignore]
fn bench_store() {
    let mut opts = haul::bench::store::BenchOptions::default();
    if let Some(s) = std::env::var("HAUL_BENCH_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.size = s;
        opts.frame_sweep_bytes = opts.frame_sweep_bytes.min(s);
    }
    let rep = haul::bench::store::run_bench(&opts).unwrap();
    println!("{}", haul::bench::store::report_text(&rep));
    println!("{}", serde_json::to_string_pretty(&rep).unwrap());
}

#[test]
fn set_writer_later_entry_for_an_address_wins() {
    let (_d, store) = tmp_store();
    let mut w = store
        .begin_set("later", SetKind::Dump, None, Some(1))
        .unwrap();
    w.add_pages(
        &[BASE, BASE + PS as u64],
        PageBuf::copy_of(&[page(1, 0), page(2, 0)].concat()),
    )
    .unwrap();
    w.add_ref(BASE, PageRef::Zero);
    w.add_pages(&[BASE + PS as u64], PageBuf::copy_of(&page(4, 0)))
        .unwrap();
    let s = w.commit(None).unwrap();
    assert_eq!(s.pages.get(BASE), Some(PageRef::Zero));
    assert_eq!(
        s.pages.get(BASE + PS as u64),
        Some(PageRef::Stored(PageId::of(&page(4, 0))))
    );
    assert_eq!(s.figures.pages, 2);
}

/// A pre-dump set (90 pages of `seed`) as a pre-copy writes it.
fn write_predump(store: &Store, job: &str, parent: Option<&str>, seed: u64) -> ImageSet {
    let mut w = store
        .begin_set(job, SetKind::PreDump, parent, Some(1))
        .unwrap();
    add_range(&mut w, 0..90, seed);
    w.commit(None).unwrap()
}

fn states(store: &Store) -> Vec<(String, haul::store::SetState)> {
    let l = store.list(None).unwrap();
    assert!(l.damaged.is_empty(), "{:?}", l.damaged);
    l.sets.into_iter().map(|s| (s.id, s.state)).collect()
}

/// gc tells a pre-copy in progress (the handle writing it is open) from one that will never
/// finish (that handle is gone): it keeps the first, and removes the pre-dumps of the second
/// that no dump names, with their pages.
#[test]
fn gc_keeps_a_precopy_in_progress_and_removes_an_abandoned_one() {
    use haul::store::SetState::{InProgress, Incomplete, Ok as Done};
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("store");
    let writer = Store::open_or_create(&dir).unwrap();
    let other = write_set(&writer, "other", 60, 70, Some(1));
    let p1 = write_predump(&writer, "pc", None, 71);
    let p2 = write_predump(&writer, "pc", Some(&p1.id), 72);
    // Another handle (as `haul images gc` in another process would be) keeps them.
    let gc_side = Store::open(&dir).unwrap();
    let st = states(&gc_side);
    assert_eq!(
        st.iter().filter(|(_, s)| *s == InProgress).count(),
        2,
        "{st:?}"
    );
    let gc = gc_side.gc().unwrap();
    assert!(gc.incomplete_sets_removed.is_empty(), "{gc:?}");
    // The final dump names the chain, carrying p2's pages by reference: they are still there.
    let mut w = writer
        .begin_set("pc", SetKind::Dump, Some(&p2.id), Some(1))
        .unwrap();
    for (a, r) in p2.pages.iter() {
        w.add_ref(a, r);
    }
    let fin = w.commit(Some(process())).unwrap();
    check_set_content(&gc_side, &fin, 72);
    assert!(states(&gc_side).iter().all(|(_, s)| *s == Done));
    assert!(
        walk(&dir.join("precopy")).is_empty(),
        "the chain's locks are let go"
    );
    // A second pre-copy, abandoned: its handle goes away without a final dump.
    let q1 = write_predump(&writer, "pc", None, 73);
    let q2 = write_predump(&writer, "pc", Some(&q1.id), 74);
    assert_eq!(walk(&dir.join("precopy")).len(), 2);
    assert!(gc_side.gc().unwrap().incomplete_sets_removed.is_empty());
    drop(writer);
    let st = states(&gc_side);
    let incomplete: Vec<&String> = st
        .iter()
        .filter(|(_, s)| *s == Incomplete)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(incomplete, vec![&q1.id, &q2.id], "{st:?}");
    let du = gc_side.du().unwrap();
    assert_eq!(du.sets_incomplete, 2);
    let gc = gc_side.gc().unwrap();
    assert_eq!(
        gc.incomplete_sets_removed,
        vec![q1.id.clone(), q2.id.clone()]
    );
    assert_eq!(gc.bytes_freed, du.bytes_gc_frees, "du: {du:?}\ngc: {gc:?}");
    assert!(gc.bytes_freed > 0, "{gc:?}");
    assert!(
        walk(&dir.join("precopy")).is_empty(),
        "stale lock files are removed"
    );
    // What is left is whole.
    let left: Vec<String> = states(&gc_side).into_iter().map(|(id, _)| id).collect();
    assert_eq!(left, vec![other.id.clone(), p1.id, p2.id, fin.id.clone()]);
    check_set_content(&gc_side, &other, 70);
    check_set_content(&gc_side, &fin, 72);
    assert!(gc_side.verify(None).unwrap().ok);
}
