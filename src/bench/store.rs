//! `haul bench store`: the store against the plain tool (`zstd -T2`) on the same synthetic image,
//! measured side by side after a prewarm (DESIGN.md §4: this VM's fresh memory is slow).
//!
//! The image: pages in rotation zero / text (a repeated sentence with the page number first) /
//! random. Figures: write throughput and stored size against `zstd -1 -T2` and `zstd -3 -T2`; a
//! second set with 1% of the pages changed (store growth, speed ratio); random single-page reads
//! with the frame cache and the kernel's page cache dropped (p50/p99), and with only the frame
//! cache dropped; a sequential read of the whole set; and a sweep of pages per frame (ratio
//! against single-page read latency) that justifies [`crate::store::DEFAULT_FRAME_PAGES`].

use super::WorkDir;
use crate::image::{ImageSet, SetKind, PAGE_SIZE};
use crate::store::{Store, StoreError};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The smallest image the benchmark accepts: below it there is nothing to time (and no ratio
/// to take).
pub const MIN_SIZE: u64 = 1 << 20;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Where to work: the benchmark makes a fresh subdirectory of it for its stores and raw
    /// file, and removes only that (see [`WorkDir`]).
    pub dir: PathBuf,
    /// Size of the synthetic image in bytes (default 1 GiB).
    pub size: u64,
    /// Random single-page reads to time.
    pub reads: usize,
    /// Also sweep pages per frame over {1, 4, 8, 16, 32, 64} on a sample of this many bytes
    /// (0: skip).
    pub frame_sweep_bytes: u64,
    /// Compare with the `zstd` command when it is installed.
    pub zstd: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            dir: std::env::temp_dir(),
            size: 1 << 30,
            reads: 2000,
            frame_sweep_bytes: 128 << 20,
            zstd: true,
        }
    }
}

/// One level's write figures, side by side with `zstd -L -T2`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WriteFigures {
    pub level: i32,
    pub store_us: u64,
    pub store_bytes: u64,
    pub store_mb_s: f64,
    pub zstd_us: Option<u64>,
    pub zstd_bytes: Option<u64>,
    pub zstd_mb_s: Option<f64>,
    /// store throughput / zstd throughput (target ≥ 1.5).
    pub speed_ratio: Option<f64>,
    /// store bytes / zstd bytes (target ≤ 1.0).
    pub size_ratio: Option<f64>,
}

/// One row of the frame-size sweep.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FrameRow {
    pub frame_pages: usize,
    /// Logical bytes of the non-zero pages / stored bytes.
    pub ratio: f64,
    pub read_p50_us: f64,
    pub read_p99_us: f64,
}

/// Everything `haul bench store` reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchReport {
    pub size: u64,
    pub pages: u64,
    pub frame_pages: usize,
    pub writes: Vec<WriteFigures>,
    /// Second set (level 3) with 1% of the pages changed.
    pub changed_us: u64,
    pub changed_growth_bytes: u64,
    /// growth / first set's stored bytes (target ≤ 0.02).
    pub changed_growth_ratio: f64,
    /// first set's time / second set's time (target ≥ 5).
    pub changed_speedup: f64,
    /// The same second set written as a dirty tracker feeds it: the changed pages through
    /// `add_pages`, the rest by reference (`add_ref`) from the first set.
    pub dirty_only_us: u64,
    pub dirty_only_speedup: f64,
    pub dirty_only_growth_ratio: f64,
    /// Single-page reads, frame cache and page cache dropped (targets p50 ≤ 100, p99 ≤ 300 µs).
    pub read_cold_p50_us: f64,
    pub read_cold_p99_us: f64,
    /// The device alone: 4 KiB pread of a pack after dropping its page cache.
    pub disk_4k_p50_us: f64,
    pub disk_4k_p99_us: f64,
    /// Single-page reads, frame cache dropped, packs in the page cache.
    pub read_warm_p50_us: f64,
    pub read_warm_p99_us: f64,
    /// Whole set through `read_set_pages`, GB/s of logical bytes (target ≥ 2).
    pub sequential_gb_s: f64,
    pub frame_sweep: Vec<FrameRow>,
    /// Each target with this run's figure: met or not.
    pub targets: Vec<TargetVerdict>,
}

/// One target of `haul bench store` and this run's verdict.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetVerdict {
    /// What is measured.
    pub what: String,
    pub value: f64,
    /// `>=` or `<=`.
    pub op: String,
    pub limit: f64,
    /// `x`, `%`, `us` or `GB/s`.
    pub unit: String,
    pub pass: bool,
}

/// Address of page 0 of the synthetic image.
const BASE_ADDR: u64 = 0x1000_0000;

const SENTENCE: &[u8] = b"The quick brown fox jumps over the lazy dog while haul keeps counting. ";

/// Page `n` of the synthetic image into `out`.
pub fn synthetic_page(n: u64, out: &mut [u8]) {
    match n % 3 {
        0 => out.fill(0),
        1 => {
            let head = format!("page {n}: ");
            let text = head.as_bytes().iter().chain(SENTENCE.iter().cycle());
            for (o, b) in out.iter_mut().zip(text) {
                *o = *b;
            }
        }
        _ => {
            let mut h = blake3::Hasher::new();
            h.update(&n.to_le_bytes());
            h.finalize_xof().fill(out);
        }
    }
}

fn image(size: u64) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    v.par_chunks_mut(PAGE_SIZE)
        .enumerate()
        .for_each(|(i, p)| synthetic_page(i as u64, p));
    v
}

/// Allocates, touches and frees twice `bytes`, twice.
fn prewarm(bytes: u64) {
    for _ in 0..2 {
        let mut v = vec![0u8; (2 * bytes) as usize];
        v.par_chunks_mut(PAGE_SIZE).for_each(|p| p[0] = 1);
        drop(v);
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn dir_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

fn io(context: &str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::io(context.to_string(), e)
}

/// Writes the whole image as one set, in batches of 1 MiB copied out of it (as the dumper
/// hands over its buffers).
fn write_image(
    store: &Store,
    job: &str,
    img: &[u8],
    level: Option<i32>,
) -> Result<(ImageSet, u64), StoreError> {
    let t = Instant::now();
    let mut w = store.begin_set(job, SetKind::Dump, None, level)?;
    const BATCH: usize = 256;
    for (b, chunk) in img.chunks(BATCH * PAGE_SIZE).enumerate() {
        let addrs: Vec<u64> = (0..chunk.len() / PAGE_SIZE)
            .map(|i| BASE_ADDR + ((b * BATCH + i) * PAGE_SIZE) as u64)
            .collect();
        let mut buf = w.buffer();
        buf.extend_from_slice(chunk);
        w.add_pages(&addrs, buf)?;
    }
    let t_commit = Instant::now();
    let set = w.commit(None)?;
    tracing::debug!(
        "{job}: wrote {} in {:?}, commit took {:?}",
        crate::util::human_bytes(img.len() as u64),
        t.elapsed(),
        t_commit.elapsed()
    );
    Ok((set, crate::util::us(t.elapsed())))
}

fn time_zstd(raw: &Path, level: i32) -> Option<(u64, u64)> {
    let out = raw.with_extension(format!("zst{level}"));
    let t = Instant::now();
    let st = Command::new("zstd")
        .arg(format!("-{level}"))
        .args(["-T2", "-q", "-f"])
        .arg(raw)
        .arg("-o")
        .arg(&out)
        .status()
        .ok()?;
    let us = crate::util::us(t.elapsed());
    if !st.success() {
        return None;
    }
    let size = std::fs::metadata(&out).ok()?.len();
    let _ = std::fs::remove_file(&out);
    Some((us, size))
}

/// Times `reads` single-page reads of random stored pages of `set`, each with the frame cache
/// dropped first (and the page cache too when `cold`). With `text_only`, only compressible
/// (text) pages are picked: they sit in zstd frames, so their latency shows what the frame
/// size costs.
fn random_reads(
    store: &Store,
    set: &ImageSet,
    reads: usize,
    cold: bool,
    text_only: bool,
) -> Result<(f64, f64), StoreError> {
    let ids: Vec<_> = set
        .pages
        .iter()
        .filter(|(a, _)| !text_only || ((a - BASE_ADDR) / PAGE_SIZE as u64) % 3 == 1)
        .filter_map(|(_, r)| r.stored())
        .collect();
    if ids.is_empty() {
        return Ok((0.0, 0.0));
    }
    let mut times = Vec::with_capacity(reads);
    for k in 0..reads {
        let h = blake3::hash(&(k as u64).to_le_bytes());
        let pick = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8])) as usize;
        let id = ids[pick % ids.len()];
        if cold {
            store.drop_caches();
        } else {
            store.forget_decoded_frames();
        }
        let t = Instant::now();
        store.read_page(&id)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok((pct(&times, 0.5), pct(&times, 0.99)))
}

/// The device's own latency: 4 KiB preads at random offsets of the packs, each with the page
/// cache of that file dropped first (what a cold single-page read cannot beat).
fn disk_reads(root: &Path, reads: usize) -> Result<(f64, f64), StoreError> {
    use std::os::unix::fs::FileExt;
    let packs: Vec<(PathBuf, u64)> = walkdir::WalkDir::new(root.join("packs"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().to_path_buf(),
                e.metadata().map(|m| m.len()).unwrap_or(0),
            )
        })
        .filter(|(_, l)| *l >= PAGE_SIZE as u64)
        .collect();
    if packs.is_empty() {
        return Ok((0.0, 0.0));
    }
    let mut times = Vec::with_capacity(reads);
    let mut buf = vec![0u8; PAGE_SIZE];
    for k in 0..reads {
        let h = blake3::hash(&(k as u64 + 1_000_000).to_le_bytes());
        let r = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]));
        let (path, len) = &packs[r as usize % packs.len()];
        let f = std::fs::File::open(path).map_err(io("opening a pack"))?;
        let _ = crate::sys::file::advise(&f, crate::sys::file::Advice::DontNeed);
        // Any whole page of the file (a small pack may hold only one).
        let off = (r >> 20) % (len / PAGE_SIZE as u64) * PAGE_SIZE as u64;
        let t = Instant::now();
        f.read_exact_at(&mut buf, off)
            .map_err(io("reading a pack"))?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok((pct(&times, 0.5), pct(&times, 0.99)))
}

const RUNS: usize = 3;

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Runs the benchmark. Takes minutes for 1 GiB on two cores; build in release mode.
pub fn run_bench(opts: &BenchOptions) -> Result<BenchReport, StoreError> {
    run_bench_with(opts, &|_| {})
}

/// [`run_bench`], telling `progress` what it starts before each step (`haul bench store`
/// shows it as it goes).
pub fn run_bench_with(
    opts: &BenchOptions,
    progress: &dyn Fn(&str),
) -> Result<BenchReport, StoreError> {
    if opts.size < MIN_SIZE {
        return Err(StoreError::BenchTooSmall {
            size: opts.size,
            min: MIN_SIZE,
        });
    }
    let size = opts.size / PAGE_SIZE as u64 * PAGE_SIZE as u64;
    let work = WorkDir::create(&opts.dir, "haul-bench-store").map_err(|e| {
        StoreError::io(
            format!("creating a work directory in {}", opts.dir.display()),
            e,
        )
    })?;
    let dir = work.path();
    progress(&format!(
        "prewarming memory, making a {} image",
        crate::util::human_bytes(size)
    ));
    prewarm(size);
    let img = image(size);
    let mut rep = BenchReport {
        size,
        pages: size / PAGE_SIZE as u64,
        frame_pages: crate::store::DEFAULT_FRAME_PAGES,
        ..Default::default()
    };
    let raw = dir.join("raw.bin");
    let have_zstd = opts.zstd && Command::new("zstd").arg("-V").output().is_ok();
    if have_zstd {
        std::fs::write(&raw, &img).map_err(io("writing raw.bin"))?;
    }
    let mut level3: Option<(Store, ImageSet, u64)> = None;
    for level in [1, 3] {
        // Store and zstd alternate, RUNS times each; medians are reported.
        let mut store_us = Vec::new();
        let mut zstd_us = Vec::new();
        let mut store_bytes = 0;
        let mut zstd_bytes = None;
        for run in 0..RUNS {
            progress(&format!(
                "write level {level}, run {} of {RUNS}: the store",
                run + 1
            ));
            let sdir = dir.join(format!("store{level}-{run}"));
            let store = Store::open_or_create(&sdir)?;
            let (set, us) = write_image(&store, "bench", &img, Some(level))?;
            store_us.push(us);
            store_bytes = dir_size(&sdir.join("packs"));
            if have_zstd {
                progress(&format!(
                    "write level {level}, run {} of {RUNS}: zstd -{level} -T2",
                    run + 1
                ));
                if let Some((zus, zb)) = time_zstd(&raw, level) {
                    zstd_us.push(zus);
                    zstd_bytes = Some(zb);
                }
            }
            if level == 3 && run == RUNS - 1 {
                level3 = Some((store, set, 0));
            } else {
                drop(store);
                let _ = std::fs::remove_dir_all(&sdir);
            }
        }
        let us = median(&mut store_us);
        if let Some(l3) = level3.as_mut() {
            l3.2 = us;
        }
        let mut f = WriteFigures {
            level,
            store_us: us,
            store_bytes,
            store_mb_s: size as f64 / us.max(1) as f64,
            ..Default::default()
        };
        if let (false, Some(zb)) = (zstd_us.is_empty(), zstd_bytes) {
            let zus = median(&mut zstd_us);
            let zmb = size as f64 / zus.max(1) as f64;
            f.zstd_us = Some(zus);
            f.zstd_bytes = Some(zb);
            f.zstd_mb_s = Some(zmb);
            f.speed_ratio = (zmb > 0.0).then(|| f.store_mb_s / zmb);
            f.size_ratio = Some(store_bytes as f64 / zb.max(1) as f64);
        }
        rep.writes.push(f);
    }
    let _ = std::fs::remove_file(&raw);
    let Some((store, set, first_us)) = level3 else {
        rep.targets = targets(&rep);
        return Ok(rep);
    };
    progress("second set, 1% of the pages changed, every page handed over again");
    // Second set, 1% of the pages changed (every 100th page), written two ways.
    // (a) Every page handed over again (no dirty tracking, or the `hash` tracker): the store
    //     hashes them all and keeps only the changed ones.
    let mut img2 = img;
    let changed: Vec<usize> = (0..img2.len() / PAGE_SIZE)
        .filter(|i| i % 100 == 7)
        .collect();
    for &i in &changed {
        let p = &mut img2[i * PAGE_SIZE..(i + 1) * PAGE_SIZE];
        p[100] = p[100].wrapping_add(1);
        p[101] = (i % 251) as u8;
    }
    let before = dir_size(&store.path().join("packs"));
    let (_set2, us2) = write_image(&store, "bench", &img2, Some(3))?;
    let after = dir_size(&store.path().join("packs"));
    rep.changed_us = us2;
    rep.changed_growth_bytes = after.saturating_sub(before);
    rep.changed_growth_ratio = rep.changed_growth_bytes as f64 / before.max(1) as f64;
    rep.changed_speedup = first_us as f64 / us2.max(1) as f64;
    // (b) With a dirty-page tracker (uffd-wp): only the changed pages are handed over, the
    //     others are carried from the parent set by reference.
    progress("second set, 1% of the pages changed, only those handed over");
    for &i in &changed {
        img2[i * PAGE_SIZE + 102] ^= 0x5a; // different content again: new pages
    }
    let t = Instant::now();
    let mut w = store.begin_set("bench", SetKind::Dump, Some(&set.id), Some(3))?;
    for (a, r) in set.pages.iter() {
        w.add_ref(a, r);
    }
    for chunk in changed.chunks(256) {
        let addrs: Vec<u64> = chunk
            .iter()
            .map(|i| BASE_ADDR + (i * PAGE_SIZE) as u64)
            .collect();
        let mut buf = w.buffer();
        for &i in chunk {
            buf.extend_from_slice(&img2[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]);
        }
        w.add_pages(&addrs, buf)?;
    }
    let set3 = w.commit(None)?;
    rep.dirty_only_us = crate::util::us(t.elapsed());
    rep.dirty_only_speedup = first_us as f64 / rep.dirty_only_us.max(1) as f64;
    rep.dirty_only_growth_ratio = set3.figures.bytes_new as f64 / before.max(1) as f64;
    drop(img2);
    // Reads, through a fresh handle.
    progress(&format!("{} random page reads, caches dropped", opts.reads));
    let reader = Store::open(store.path())?;
    (rep.read_cold_p50_us, rep.read_cold_p99_us) =
        random_reads(&reader, &set, opts.reads, true, false)?;
    (rep.disk_4k_p50_us, rep.disk_4k_p99_us) = disk_reads(store.path(), opts.reads)?;
    // Warm: every pack in the page cache, only the frame cache dropped before each read.
    progress(&format!(
        "{} random page reads, packs in the page cache",
        opts.reads
    ));
    for p in walkdir::WalkDir::new(store.path().join("packs"))
        .into_iter()
        .flatten()
    {
        if p.file_type().is_file() {
            let _ = std::fs::read(p.path());
        }
    }
    (rep.read_warm_p50_us, rep.read_warm_p99_us) =
        random_reads(&reader, &set, opts.reads, false, false)?;
    // Sequential: packs in the page cache (read once to warm), then the timed read.
    progress("sequential read of the set");
    for _ in 0..2 {
        let t = Instant::now();
        let mut sum = 0u64;
        reader.read_set_pages(&set, |_, b| -> Result<(), StoreError> {
            sum = sum.wrapping_add(b[b.len() - 1] as u64);
            Ok(())
        })?;
        rep.sequential_gb_s = size as f64 / t.elapsed().as_secs_f64() / 1e9;
        std::hint::black_box(sum);
    }
    drop(reader);
    drop(store);
    let _ = std::fs::remove_dir_all(dir.join(format!("store3-{}", RUNS - 1)));
    if opts.frame_sweep_bytes > 0 {
        let sample = image(opts.frame_sweep_bytes.min(size) / PAGE_SIZE as u64 * PAGE_SIZE as u64);
        for fp in [1usize, 4, 8, 16, 32, 64] {
            progress(&format!("frame size sweep: {fp} pages per frame"));
            let sdir = dir.join(format!("frames{fp}"));
            let store = Store::open_or_create(&sdir)?;
            store.set_frame_pages(fp);
            let (set, _) = write_image(&store, "sweep", &sample, Some(3))?;
            let (p50, p99) = random_reads(
                &Store::open(&sdir)?,
                &set,
                opts.reads.min(1000),
                false,
                true,
            )?;
            rep.frame_sweep.push(FrameRow {
                frame_pages: fp,
                ratio: set.figures.bytes_logical as f64 / set.figures.bytes_new.max(1) as f64,
                read_p50_us: p50,
                read_p99_us: p99,
            });
            drop(store);
            let _ = std::fs::remove_dir_all(&sdir);
        }
    }
    drop(work);
    rep.targets = targets(&rep);
    Ok(rep)
}

/// Each target the benchmark measures against, with this run's figure and whether it met it.
fn targets(r: &BenchReport) -> Vec<TargetVerdict> {
    let mut v = Vec::new();
    let mut add = |what: String, value: f64, at_least: bool, limit: f64, unit: &str| {
        v.push(TargetVerdict {
            what,
            value,
            op: if at_least { ">=" } else { "<=" }.into(),
            limit,
            unit: unit.into(),
            pass: if at_least {
                value >= limit
            } else {
                value <= limit
            },
        })
    };
    for w in &r.writes {
        if let Some(x) = w.speed_ratio {
            let what = format!(
                "write level {}: speed against zstd -{} -T2",
                w.level, w.level
            );
            add(what, x, true, 1.5, "x");
        }
        if let Some(x) = w.size_ratio {
            let what = format!(
                "write level {}: size against zstd -{} -T2",
                w.level, w.level
            );
            add(what, x, false, 1.0, "x");
        }
    }
    if r.changed_us > 0 {
        let what = "1% changed: store growth".to_string();
        add(what, r.changed_growth_ratio * 100.0, false, 2.0, "%");
        let what = "1% changed: faster than the first set".to_string();
        add(what, r.changed_speedup, true, 5.0, "x");
    }
    if r.sequential_gb_s > 0.0 {
        add(
            "cold random page read, p50".into(),
            r.read_cold_p50_us,
            false,
            100.0,
            "us",
        );
        add(
            "cold random page read, p99".into(),
            r.read_cold_p99_us,
            false,
            300.0,
            "us",
        );
        add(
            "sequential read".into(),
            r.sequential_gb_s,
            true,
            2.0,
            "GB/s",
        );
    }
    v
}

/// Text rendering of a report, with the targets next to the figures.
pub fn report_text(r: &BenchReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "image {} ({} pages, 1/3 zero, 1/3 text, 1/3 random), {} pages per frame",
        crate::util::human_bytes(r.size),
        r.pages,
        r.frame_pages
    );
    for w in &r.writes {
        let _ = writeln!(
            s,
            "write level {}: store {:.0} MB/s, {} | zstd -{} -T2 {} MB/s, {} | speed x{} (target >= 1.5), size x{} (target <= 1.0)",
            w.level,
            w.store_mb_s,
            crate::util::human_bytes(w.store_bytes),
            w.level,
            w.zstd_mb_s.map(|v| format!("{v:.0}")).unwrap_or("-".into()),
            w.zstd_bytes.map(crate::util::human_bytes).unwrap_or("-".into()),
            w.speed_ratio.map(|v| format!("{v:.2}")).unwrap_or("-".into()),
            w.size_ratio.map(|v| format!("{v:.3}")).unwrap_or("-".into()),
        );
    }
    let _ = writeln!(
        s,
        "1% changed, all pages handed over again: store grew {} ({:.2}%, target <= 2%), {:.1}x faster than the first set (target >= 5)",
        crate::util::human_bytes(r.changed_growth_bytes),
        r.changed_growth_ratio * 100.0,
        r.changed_speedup
    );
    let _ = writeln!(
        s,
        "1% changed, dirty pages only + refs: {:.0}x faster than the first set, grew {:.2}%",
        r.dirty_only_speedup,
        r.dirty_only_growth_ratio * 100.0
    );
    let _ = writeln!(
        s,
        "random page read, cold (frame+page cache dropped): p50 {:.0} us, p99 {:.0} us (targets 100 / 300)",
        r.read_cold_p50_us, r.read_cold_p99_us
    );
    let _ = writeln!(
        s,
        "  (the disk alone, 4 KiB pread after DONTNEED: p50 {:.0} us, p99 {:.0} us)",
        r.disk_4k_p50_us, r.disk_4k_p99_us
    );
    let _ = writeln!(
        s,
        "random page read, packs in page cache, frame cache dropped: p50 {:.0} us, p99 {:.0} us",
        r.read_warm_p50_us, r.read_warm_p99_us
    );
    let _ = writeln!(
        s,
        "sequential read of the set: {:.2} GB/s (target >= 2)",
        r.sequential_gb_s
    );
    for f in &r.frame_sweep {
        let _ = writeln!(
            s,
            "frame {:>2} pages: ratio {:.3}, read of a compressible page p50 {:.0} us, p99 {:.0} us",
            f.frame_pages, f.ratio, f.read_p50_us, f.read_p99_us
        );
    }
    if !r.targets.is_empty() {
        let _ = writeln!(s, "targets:");
        for t in &r.targets {
            let _ = writeln!(
                s,
                "  {}  {}: {} (target {} {})",
                if t.pass { "PASS" } else { "FAIL" },
                t.what,
                figure(t.value, &t.unit),
                t.op,
                figure(t.limit, &t.unit)
            );
        }
        let met = r.targets.iter().filter(|t| t.pass).count();
        let _ = writeln!(s, "{met} of {} targets met", r.targets.len());
    }
    s
}

/// A figure with its unit, as the targets are written.
fn figure(v: f64, unit: &str) -> String {
    match unit {
        "x" => format!("x{v:.2}"),
        "%" => format!("{v:.2}%"),
        "us" => format!("{v:.0} us"),
        u => format!("{v:.2} {u}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_pass_on_the_right_side_of_their_limit_and_are_only_set_for_what_ran() {
        let mut r = BenchReport {
            writes: vec![WriteFigures {
                level: 1,
                speed_ratio: Some(1.5),
                size_ratio: Some(1.01),
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = targets(&r);
        assert_eq!(
            t.len(),
            2,
            "no reads or changed set measured: no targets for them"
        );
        assert!(t[0].pass && t[0].op == ">=", "{:?}", t[0]);
        assert!(!t[1].pass && t[1].op == "<=", "{:?}", t[1]);
        // Without zstd there is nothing to compare against.
        r.writes[0].speed_ratio = None;
        r.writes[0].size_ratio = None;
        r.sequential_gb_s = 1.9;
        r.read_cold_p50_us = 100.0;
        r.read_cold_p99_us = 301.0;
        let t = targets(&r);
        let pass: Vec<(bool, &str)> = t.iter().map(|t| (t.pass, t.what.as_str())).collect();
        assert_eq!(
            pass,
            vec![
                (true, "cold random page read, p50"),
                (false, "cold random page read, p99"),
                (false, "sequential read"),
            ]
        );
    }

    #[test]
    fn the_report_says_pass_or_fail_and_counts_the_targets_met() {
        let mut r = BenchReport {
            sequential_gb_s: 2.5,
            read_cold_p50_us: 80.0,
            read_cold_p99_us: 400.0,
            ..Default::default()
        };
        r.targets = targets(&r);
        let text = report_text(&r);
        assert!(
            text.contains("PASS  cold random page read, p50: 80 us (target <= 100 us)"),
            "{text}"
        );
        assert!(text.contains("FAIL  cold random page read, p99"), "{text}");
        assert!(text.contains("2 of 3 targets met"), "{text}");
    }
}
