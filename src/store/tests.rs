//! Tests of the store's pieces working together on a store in a temporary directory: index
//! segments and their rebuilding, what gc plans and keeps, and the walks that count bytes.

use super::footer::{CommittedPack, PackId};
use super::index::{decode_segment, encode_segment, Index};
use super::maint::{dir_bytes, gc_plan, live_pages};
use super::pack::PackWriter;
use super::Store;
use crate::image::{PageId, SetKind, PAGE_SIZE};
use crate::sys::mem::PageBuf;
use std::path::Path;

/// A page whose bytes are `n` repeated (not a zero page).
fn page(n: u8) -> Vec<u8> {
    vec![n; PAGE_SIZE]
}

/// A bare store layout (what `Store::open` makes) without the marker.
fn layout(root: &Path) {
    for d in ["packs", "index", "sets", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
}

/// Writes one pack holding the pages `ns` (one raw frame each).
fn write_pack(root: &Path, ns: &[u8]) -> CommittedPack {
    let mut w = PackWriter::create(root).unwrap();
    for n in ns {
        let p = page(*n);
        w.append_frame(&p, super::footer::CODEC_RAW, &[PageId::of(&p)])
            .unwrap();
    }
    w.finish(root).unwrap()
}

#[test]
fn index_segment_round_trips_and_names_its_pack() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path());
    let c = write_pack(dir.path(), &[1, 2]);
    let seg = encode_segment(&c);
    let (len, footer) = decode_segment(&seg, &c.id).unwrap();
    assert_eq!((len, &footer), (c.len, &c.footer));
    let other = PackId([0; 16]);
    assert_eq!(
        decode_segment(&seg, &other).unwrap_err().to_string(),
        "segment names another pack"
    );
    let mut bad = seg.clone();
    bad[60] ^= 1;
    assert_eq!(
        decode_segment(&bad, &c.id).unwrap_err().to_string(),
        "checksum mismatch"
    );
}

#[test]
fn index_rebuilds_a_lost_segment_from_the_pack_footer() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path());
    let c = write_pack(dir.path(), &[1, 2, 3]);
    let seg = dir.path().join("index").join(format!("{}.idx", c.id));
    std::fs::remove_file(&seg).unwrap();
    let idx = Index::load(dir.path()).unwrap();
    assert_eq!(idx.rebuilt, vec![c.id]);
    assert_eq!(idx.pages.len(), 3);
    let (loc, info) = idx.lookup(&PageId::of(&page(2))).unwrap();
    assert_eq!((loc.frame, loc.slot, info.id), (1, 0, c.id));
    // Rebuilt on disk too.
    assert!(seg.exists());
}

#[test]
fn index_keeps_a_page_at_its_first_location_and_charges_the_frame_share() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path());
    let a = write_pack(dir.path(), &[1, 2]);
    let b = write_pack(dir.path(), &[2, 3]);
    let mut idx = Index::default();
    idx.add_committed(&a);
    idx.add_committed(&b);
    idx.add_committed(&a);
    assert_eq!(idx.packs.len(), 2);
    let (loc, info) = idx.lookup(&PageId::of(&page(2))).unwrap();
    assert_eq!((info.id, loc.frame), (a.id, 1));
    // Raw frames of one page cost a page each.
    assert_eq!(info.page_cost(1), PAGE_SIZE as u64);
    assert_eq!(info.page_cost(7), 0);
}

#[test]
fn a_refresh_reads_only_the_packs_another_process_added_and_reloads_when_one_went() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    layout(root);
    let a = write_pack(root, &[1, 2]);
    let mut idx = Index::load(root).unwrap();
    // A segment that went bad after the load: a refresh for one new pack does not read it
    // again (a full reload would rebuild it from the pack).
    let seg_a = root.join("index").join(format!("{}.idx", a.id));
    std::fs::write(&seg_a, b"not a segment").unwrap();
    let b = write_pack(root, &[2, 3]);
    idx.refresh(root).unwrap();
    assert!(idx.rebuilt.is_empty(), "only the new pack is read");
    assert_eq!(idx.packs.len(), 2);
    let at = |idx: &Index, n: u8| idx.lookup(&PageId::of(&page(n))).map(|(_, i)| i.id);
    // The page both packs hold stays at its first location, as a full load has it.
    assert_eq!(
        [at(&idx, 1), at(&idx, 2), at(&idx, 3)],
        [Some(a.id), Some(a.id), Some(b.id)]
    );
    // A pack whose segment came first (its rename next) is missing until it is there.
    let c = write_pack(root, &[4]);
    let aside = root.join("c.pack");
    std::fs::rename(c.id.path(root), &aside).unwrap();
    idx.refresh(root).unwrap();
    assert_eq!(idx.missing.get(&PageId::of(&page(4))), Some(&c.id));
    assert_eq!(at(&idx, 4), None);
    std::fs::rename(&aside, c.id.path(root)).unwrap();
    idx.refresh(root).unwrap();
    assert_eq!(at(&idx, 4), Some(c.id));
    assert!(idx.missing.is_empty());
    // A pack removed (gc): everything is loaded again, and its pages are gone.
    std::fs::remove_file(a.id.path(root)).unwrap();
    std::fs::remove_file(&seg_a).unwrap();
    idx.refresh(root).unwrap();
    assert_eq!(
        [at(&idx, 1), at(&idx, 2), at(&idx, 3), at(&idx, 4)],
        [None, Some(b.id), Some(b.id), Some(c.id)]
    );
    assert_eq!(idx.packs.len(), 2);
}

/// A directory entry under `packs/` that cannot be listed, as root too: a symlink to itself
/// (ELOOP).
fn unlistable(root: &Path, name: &str) {
    std::os::unix::fs::symlink(name, root.join("packs").join(name)).unwrap();
}

#[test]
fn index_records_a_packs_dir_it_cannot_list_and_indexes_the_others() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path());
    let c = write_pack(dir.path(), &[1]);
    let name = if c.id.to_hex().starts_with("zz") {
        "yy"
    } else {
        "zz"
    };
    unlistable(dir.path(), name);
    // A stray file is not a pack directory: passed over without a word.
    std::fs::write(dir.path().join("packs").join("README"), "x").unwrap();
    let idx = Index::load(dir.path()).unwrap();
    assert_eq!(idx.packs.len(), 1);
    assert_eq!(idx.unlisted.len(), 1);
    assert_eq!(idx.unlisted[0].name, name);
    assert_eq!(idx.unlisted[0].error.raw_os_error(), Some(libc::ELOOP));
}

/// Commits a one-page set of job `t` and returns its id and the page.
fn one_page_set(s: &Store, n: u8) -> (String, PageId) {
    let mut w = s.begin_set("t", SetKind::Dump, None, None).unwrap();
    w.add_pages(&[0x1000], PageBuf::copy_of(&page(n))).unwrap();
    let set = w.commit(None).unwrap();
    (set.id, PageId::of(&page(n)))
}

/// Makes the directory of the store's only pack unlistable (its content set aside, as a
/// directory whose permissions went wrong would hide it); returns the pack's id in hex.
fn hide_the_only_pack_dir(root: &Path) -> String {
    let pack = *Index::load(root).unwrap().by_pack.keys().next().unwrap();
    let hex = pack.to_hex();
    let packs = root.join("packs");
    std::fs::rename(packs.join(&hex[..2]), root.join("aside")).unwrap();
    unlistable(root, &hex[..2]);
    hex
}

#[test]
fn gc_keeps_the_segments_of_packs_in_a_dir_it_cannot_list() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_or_create(dir.path()).unwrap();
    let (id, _) = one_page_set(&s, 9);
    s.remove_set(&id).unwrap();
    let hex = hide_the_only_pack_dir(dir.path());
    let s = Store::open(dir.path()).unwrap();
    let rep = s.gc().unwrap();
    let seg = dir.path().join("index").join(format!("{hex}.idx"));
    assert!(
        seg.exists(),
        "gc removed the index segment of a pack it could not see"
    );
    assert_eq!(rep.stale_segments_removed, 0);
    assert!(
        rep.skipped
            .iter()
            .any(|m| m.contains(&format!("packs/{}", &hex[..2]))),
        "gc does not say it skipped packs/{}: {:?}",
        &hex[..2],
        rep.skipped
    );
}

#[test]
fn a_page_in_a_dir_the_index_cannot_list_is_unreadable_not_missing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_or_create(dir.path()).unwrap();
    let (_, page_id) = one_page_set(&s, 4);
    let hex = hide_the_only_pack_dir(dir.path());
    let s = Store::open(dir.path()).unwrap();
    let e = s.read_page(&page_id).unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "its directory cannot be listed (packs/{}",
            &hex[..2]
        )),
        "{e}"
    );
    // Once the directory is back, the page reads again.
    let packs = dir.path().join("packs");
    std::fs::remove_file(packs.join(&hex[..2])).unwrap();
    std::fs::rename(dir.path().join("aside"), packs.join(&hex[..2])).unwrap();
    assert_eq!(
        Store::open(dir.path())
            .unwrap()
            .read_page(&page_id)
            .unwrap(),
        page(4)
    );
}

#[test]
fn gc_plan_removes_dead_packs_repacks_mostly_dead_ones_and_keeps_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_or_create(dir.path()).unwrap();
    let (_, live_page) = one_page_set(&s, 1);
    let live = write_pack(dir.path(), &[1, 2]);
    let mostly_dead = write_pack(dir.path(), &[1, 3, 4]);
    let dead = write_pack(dir.path(), &[5]);
    let mut idx = Index::default();
    for c in [&live, &mostly_dead, &dead] {
        idx.add_committed(c);
    }
    let set = s.load_set(&s.list_sets(None).unwrap()[0].id).unwrap();
    let keep = live_pages(std::slice::from_ref(&set));
    assert!(keep.contains_key(&live_page));
    let plan = gc_plan(&idx, &keep);
    // Page 1 is indexed in `live` (its first location), so `mostly_dead` holds no live page.
    assert_eq!(plan.doomed, vec![mostly_dead.id, dead.id]);
    assert!(plan.repack.is_empty());
    // With page 3 live too, `mostly_dead` has 1 live page of 3: repacked, not removed.
    let mut keep3 = keep.clone();
    keep3.insert(PageId::of(&page(3)), ());
    let plan = gc_plan(&idx, &keep3);
    assert_eq!(plan.doomed, vec![dead.id]);
    assert_eq!(plan.repack.len(), 1);
    assert_eq!(plan.repack[0].0.id, mostly_dead.id);
    assert_eq!(plan.repack[0].1.len(), 1);
}

#[test]
fn dir_bytes_counts_files_and_reports_what_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("a")).unwrap();
    std::fs::write(dir.path().join("a/one"), [0u8; 10]).unwrap();
    std::fs::write(dir.path().join("two"), [0u8; 5]).unwrap();
    let t = dir_bytes(dir.path());
    assert_eq!((t.files, t.bytes, t.unread.len()), (2, 15, 0));
    // A directory that is not there is not an empty one.
    let t = dir_bytes(&dir.path().join("gone"));
    assert_eq!((t.files, t.unread.len()), (0, 1));
    // Permissions only stop a non-root reader.
    if crate::sys::process::geteuid() == 0 {
        eprintln!("skipped: an unreadable directory needs a non-root user (running as root)");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let t = dir_bytes(dir.path());
    std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!((t.files, t.bytes, t.unread.len()), (1, 5, 1));
}

#[test]
fn chain_states_keep_predumps_a_dump_names_and_drop_unheld_others() {
    use super::chains::{states, SetRef};
    use super::SetState;
    let dir = tempfile::tempdir().unwrap();
    let r = |id, kind, parent| SetRef {
        id,
        kind,
        parent,
        created_us: 0,
    };
    let sets = [
        r("p1", SetKind::PreDump, None),
        r("p2", SetKind::PreDump, Some("p1")),
        r("d", SetKind::Dump, Some("p2")),
        r("q1", SetKind::PreDump, None),
        r("q2", SetKind::PreDump, Some("q1")),
    ];
    // No lock file is held: the chain no dump names is incomplete.
    assert_eq!(
        states(dir.path(), &sets, false),
        vec![
            SetState::Ok,
            SetState::Ok,
            SetState::Ok,
            SetState::Incomplete,
            SetState::Incomplete
        ]
    );
    // In a bucket, a pre-copy may run on another host: a young pre-dump no dump names is in
    // progress, an old one (created at the epoch here) incomplete.
    let young = SetRef {
        created_us: crate::util::now_us(),
        ..r("y1", SetKind::PreDump, None)
    };
    assert_eq!(
        states(dir.path(), &[young, r("o1", SetKind::PreDump, None)], true),
        vec![SetState::InProgress, SetState::Incomplete]
    );
}

#[test]
fn a_panicking_thread_is_an_error_that_keeps_its_message() {
    let h = std::thread::spawn(|| -> u32 { panic!("pack {} is odd", 7) });
    match super::error::joined(h.join(), "pack finisher") {
        Err(e @ super::StoreError::Panicked { .. }) => {
            assert_eq!(
                e.to_string(),
                "the pack finisher thread panicked: pack 7 is odd"
            )
        }
        other => panic!("not a panic error: {other:?}"),
    }
    let h = std::thread::spawn(|| 5u32);
    assert_eq!(super::error::joined(h.join(), "x").unwrap(), 5);
}

/// Commits a set of job `job` holding pages `ns` at consecutive addresses; returns its id.
fn set_of(s: &Store, job: &str, ns: &[u8]) -> String {
    let mut w = s.begin_set(job, SetKind::Dump, None, None).unwrap();
    let addrs: Vec<u64> = (0..ns.len() as u64).map(|i| 0x10000 + i * 0x1000).collect();
    let data: Vec<u8> = ns.iter().flat_map(|n| page(*n)).collect();
    w.add_pages(&addrs, PageBuf::copy_of(&data)).unwrap();
    w.commit(None).unwrap().id
}

#[test]
fn du_splits_shared_pages_between_jobs_and_predicts_what_gc_frees() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_or_create(dir.path()).unwrap();
    set_of(&s, "a", &[1, 2]);
    let b = set_of(&s, "b", &[2, 3]);
    let p = PAGE_SIZE as u64;
    let du = s.du().unwrap();
    assert_eq!((du.sets, du.pages_stored, du.pages_referenced), (2, 3, 3));
    // Uncompressed: every page costs a page.
    assert_eq!(du.bytes_referenced, 3 * p);
    assert_eq!(du.bytes_logical, 4 * p);
    assert!(
        (du.dedup_ratio - 4.0 / 3.0).abs() < 1e-9,
        "{}",
        du.dedup_ratio
    );
    for j in &du.jobs {
        assert_eq!(
            (j.sets, j.bytes_referenced, j.bytes_exclusive),
            (1, 2 * p, p),
            "{j:?}"
        );
    }
    assert_eq!(du.bytes_gc_frees, 0);
    s.remove_set(&b).unwrap();
    let du = s.du().unwrap();
    assert_eq!((du.pages_referenced, du.bytes_unreferenced), (2, p));
    assert_eq!(du.gc_packs_removed, 1);
    let gc = s.gc().unwrap();
    assert!(gc.bytes_freed > 0);
    assert_eq!(du.bytes_gc_frees, gc.bytes_freed);
}

#[test]
fn a_sets_figures_count_each_distinct_page_once_and_name_a_reference_the_store_lacks() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open_or_create(d.path()).unwrap();
    let first = set_of(&s, "f", &[1, 2]);
    let first = s.load_set(&first).unwrap();
    // Page 3 three times and page 1 again (new here, then once more by reference), page 2
    // carried, and a zero page.
    let mut w = s.begin_set("f", SetKind::Dump, None, None).unwrap();
    let addrs = [0x1000, 0x2000, 0x3000, 0x4000, 0x5000];
    let data: Vec<u8> = [3, 3, 3, 1, 0].iter().flat_map(|n| page(*n)).collect();
    w.add_pages(&addrs, PageBuf::copy_of(&data)).unwrap();
    for (k, (_, r)) in first.pages.iter().enumerate() {
        w.add_ref(0x9000 + k as u64 * 0x1000, r);
    }
    let second = w.commit(None).unwrap();
    let f = &second.figures;
    assert_eq!((f.pages, f.pages_zero, f.pages_lazy), (7, 1, 0));
    assert_eq!(f.bytes_logical, 6 * PAGE_SIZE as u64);
    assert_eq!(f.pages_new, 1, "only page 3 is new to the store");
    // Pages 1, 2 and 3, each counted once.
    assert_eq!(f.bytes_stored, first.figures.bytes_stored + f.bytes_new);
    assert!(f.bytes_new > 0);

    // A reference to a page no pack holds is refused, naming its address.
    let mut w = s.begin_set("f", SetKind::Dump, None, None).unwrap();
    w.add_pages(&[0x1000], PageBuf::copy_of(&page(1))).unwrap();
    let missing = PageId::of(&page(42));
    w.add_ref(0x7000, crate::image::PageRef::Stored(missing));
    match w.commit(None) {
        Err(super::StoreError::RefNotStored { addr, page }) => {
            assert_eq!((addr, page), (0x7000, missing));
        }
        other => panic!("expected RefNotStored, got {other:?}"),
    }
}

/// `n` pages of distinct, compressible content (the same for the same `seed`).
fn pages_of(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|k| {
            let line = format!("page {k} of seed {seed} ").repeat(1 + k % 7);
            line.into_bytes().into_iter().cycle().take(PAGE_SIZE)
        })
        .collect()
}

#[test]
fn a_chains_figures_from_the_known_costs_are_the_index_ones() {
    use crate::image::PageRef;
    let d = tempfile::tempdir().unwrap();
    let s = Store::open_or_create(d.path()).unwrap();
    let addrs = |from: u64, n: usize| (0..n as u64).map(|k| from + k * 0x1000).collect::<Vec<_>>();
    let mut w = s.begin_set("c", SetKind::PreDump, None, Some(3)).unwrap();
    w.add_pages(&addrs(0x10_0000, 40), PageBuf::copy_of(&pages_of(1, 40)))
        .unwrap();
    let (first, costs) = w.commit_costed(None).unwrap();
    assert_eq!(costs.len(), 40);
    assert!(
        costs.0.windows(2).all(|p| p[0].0 < p[1].0),
        "sorted by id, once each"
    );
    assert_eq!(
        costs.0.iter().map(|(_, c)| c).sum::<u64>(),
        first.figures.bytes_stored
    );
    let known = std::sync::Arc::new(costs);
    // The final set: 10 new pages, one of them also one of the first's, and the first's
    // pages carried by reference; once with the known costs and once with the index alone.
    let write = |known: Option<std::sync::Arc<super::PageCosts>>| {
        let mut w = s
            .begin_set("c", SetKind::Dump, Some(&first.id), Some(3))
            .unwrap();
        if let Some(k) = known {
            w.know_costs(k);
        }
        let mut data = pages_of(2, 9);
        data.extend_from_slice(&pages_of(1, 1));
        w.add_pages(&addrs(0x20_0000, 10), PageBuf::copy_of(&data))
            .unwrap();
        for (a, r) in first.pages.iter() {
            w.add_ref(a, r);
        }
        w.add_ref(0x30_0000, PageRef::Zero);
        w.commit(None).unwrap()
    };
    let with_known = write(Some(known.clone()));
    // The second time, no page is new.
    let from_index = write(None);
    let (k, i) = (&with_known.figures, &from_index.figures);
    assert_eq!(
        (k.pages, k.pages_zero, k.pages_new, i.pages_new),
        (51, 1, 9, 0)
    );
    assert_eq!(
        (k.bytes_logical, k.bytes_stored),
        (i.bytes_logical, i.bytes_stored)
    );

    // The known costs are what the commit used: a page known at another cost counts that.
    let mut altered = (*known).clone();
    altered.0[0].1 += 1000;
    let altered_set = write(Some(std::sync::Arc::new(altered)));
    assert_eq!(
        altered_set.figures.bytes_stored,
        from_index.figures.bytes_stored + 1000
    );
}

#[test]
fn merged_costs_hold_each_page_of_both_once_in_order() {
    let id = |n: u8| PageId([n; 16]);
    let a = super::PageCosts(vec![(id(1), 10), (id(3), 30), (id(5), 50)]);
    let b = super::PageCosts(vec![(id(2), 20), (id(3), 31), (id(9), 90)]);
    let m = a.merged(&b);
    assert_eq!(
        m.0,
        vec![
            (id(1), 10),
            (id(2), 20),
            (id(3), 31),
            (id(5), 50),
            (id(9), 90)
        ]
    );
    assert_eq!(super::PageCosts::default().merged(&a).0, a.0);
}

/// A final dump's figures counted from its chain's view (the table as it stood at the last
/// pre-dump, counted before the freeze) are the figures counted page by page, whatever
/// changed: pages written anew (their old content still held elsewhere, or not), an address
/// dropped, a page carried to a new address, zero and lazy entries both ways, new pages.
#[test]
fn a_final_sets_figures_from_its_chain_view_are_the_ones_counted_page_by_page() {
    use crate::image::PageRef;
    let addrs = |from: u64, n: usize| (0..n as u64).map(|k| from + k * 0x1000).collect::<Vec<_>>();
    // The pre-dump: 30 distinct pages, then pages 0..10 again (each content at two
    // addresses), and a zero page.
    let predump = |s: &Store| {
        let mut w = s.begin_set("c", SetKind::PreDump, None, Some(3)).unwrap();
        let mut data = pages_of(1, 30);
        data.extend_from_slice(&pages_of(1, 10));
        w.add_pages(&addrs(0x10_0000, 40), PageBuf::copy_of(&data))
            .unwrap();
        w.add_ref(0x30_0000, PageRef::Zero);
        w.commit_costed(None).unwrap()
    };
    // The final set against that view: `view` = (its table, the costs the view counts with).
    let fin = |s: &Store,
               first: &crate::image::ImageSet,
               costs: &std::sync::Arc<super::PageCosts>,
               view: Option<&super::PageCosts>| {
        let table: Vec<(u64, PageRef)> = first.pages.iter().collect();
        let mut w = s
            .begin_set("c", SetKind::Dump, Some(&first.id), Some(3))
            .unwrap();
        w.know_costs(costs.clone());
        if let Some(k) = view {
            let v = s.chain_view(table.clone(), Some(k)).unwrap();
            w.know_view(std::sync::Arc::new(v.expect("a view of an ordered table")));
        }
        // Written anew: 0x10_0000 (its old content still at 0x11_e000), 0x10_5000 and
        // 0x10_6000 (their old content nowhere else), 0x10_7000 with page 2's content.
        let mut data = pages_of(2, 3);
        data.extend_from_slice(&pages_of(1, 3)[2 * PAGE_SIZE..]);
        w.add_pages(
            &[0x10_0000, 0x10_5000, 0x10_6000, 0x10_7000],
            PageBuf::copy_of(&data),
        )
        .unwrap();
        // Brand new pages at new addresses.
        w.add_pages(&addrs(0x40_0000, 2), PageBuf::copy_of(&pages_of(3, 2)))
            .unwrap();
        let written = [0x10_0000, 0x10_5000, 0x10_6000, 0x10_7000];
        for (a, r) in &table {
            match *a {
                a if written.contains(&a) => {}
                // Dropped (freed since the pre-dump).
                0x10_9000 | 0x10_a000 => {}
                // Zero now; and the zero page holds page 20's content.
                0x10_b000 => w.add_ref(*a, PageRef::Zero),
                0x30_0000 => w.add_ref(*a, table[20].1),
                // Left lazy.
                0x10_c000 => w.add_ref(*a, PageRef::Lazy(r.stored().unwrap())),
                a => w.add_ref(a, *r),
            }
        }
        // Page 25's content carried to a new address too.
        w.add_ref(0x50_0000, table[25].1);
        w.commit(None).unwrap()
    };
    let run = |view: Option<u64>| {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open_or_create(d.path()).unwrap();
        let (first, costs) = predump(&s);
        let costs = std::sync::Arc::new(costs);
        let mut seen = (*costs).clone();
        if let Some(extra) = view {
            seen.0[0].1 += extra;
        }
        let f = fin(&s, &first, &costs, view.map(|_| &seen));
        (f.figures, seen.0[0].0, first)
    };
    let (counted, _, first) = run(None);
    let (viewed, _, _) = run(Some(0));
    assert_eq!(viewed, counted);
    let f = &counted;
    assert_eq!((f.pages, f.pages_zero, f.pages_lazy), (42, 1, 1));
    assert_eq!(f.pages_new, 5, "pages 0..2 of seed 2 and both of seed 3");
    assert!(f.bytes_stored > f.bytes_new && f.bytes_new > 0);
    assert!(f.bytes_stored < first.figures.bytes_stored + f.bytes_new);
    // The view is what counted: a page it costs otherwise changes the total by as much, if
    // the final set still holds that page (the first page by id).
    let (skewed, id, _) = run(Some(1000));
    let held = first.pages.iter().any(|(a, r)| {
        r.stored() == Some(id) && ![0x10_5000, 0x10_6000, 0x10_9000, 0x10_a000].contains(&a)
    });
    assert!(held, "pick a page the final set holds");
    assert_eq!(skewed.bytes_stored, counted.bytes_stored + 1000);
}

/// A pack written around the page cache (`O_DIRECT`, in 1 MiB chunks) is the same file as
/// one written through it: same bytes, same id (the hash of the file), frames that cross a
/// chunk's end included, and its footer reads back. (The tail, footer and trailer go through
/// the page cache, so any length works.)
#[test]
fn a_pack_written_around_the_page_cache_is_the_same_pack() {
    // On the disk's filesystem: tmpfs has no direct I/O (the writer then writes normally).
    let base = std::env::current_dir().unwrap().join("target");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let mut ids = Vec::new();
    for direct in [false, true] {
        let root = dir.path().join(if direct { "direct" } else { "cached" });
        layout(&root);
        let mut w = match direct {
            true => PackWriter::create_direct(&root).unwrap(),
            false => PackWriter::create(&root).unwrap(),
        };
        assert_eq!(w.is_direct(), direct, "direct I/O on {}", root.display());
        // 700 frames of 3001 bytes: ~2 MiB, chunk ends inside frames.
        for n in 0..700u32 {
            let bytes: Vec<u8> = (0..3001u32).map(|i| (i * 7 + n) as u8).collect();
            let id = PageId::of(&page((n % 251) as u8));
            w.append_frame(&bytes, super::footer::CODEC_RAW, &[id])
                .unwrap();
        }
        let c = w.finish(&root).unwrap();
        let file = std::fs::read(c.id.path(&root)).unwrap();
        assert_eq!(
            &blake3::hash(&file).as_bytes()[..16],
            &c.id.0,
            "direct {direct}"
        );
        ids.push((c.id, file));
    }
    assert_eq!(ids[0].0, ids[1].0, "the two writes made different packs");
    assert!(ids[0].1 == ids[1].1);
}
