//! `haul bench bucket` (issue #17): a store in an S3-compatible bucket against a local store,
//! on the same memwriter. Each run dumps the paused memwriter (`leave_running`) into a fresh
//! local store and into a fresh prefix of the bucket (through a fresh cache), restores each set
//! eagerly (the bucket's from yet another empty cache: every pack comes from the bucket, as on
//! another host), checks the restored memory, and dumps the unchanged process into the bucket
//! again to count what a re-dump sends.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::lazy::{checksum, expect, Reaped};
use super::{build, median, prewarm, BoxErr, Target};
use crate::dump::{dump_to_store, DumpOptions};
use crate::restore::{PidChoice, RestoreOptions};
use crate::store::bucket::BucketUrl;
use crate::store::Store;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Where to work (a fresh subdirectory of it, removed afterwards).
    pub dir: PathBuf,
    /// Where `memwriter.c` is.
    pub fixtures: PathBuf,
    /// `s3://bucket/prefix[?endpoint=...]`: each run writes under a prefix of its own below it.
    pub store: String,
    pub mib: u64,
    pub runs: u32,
}

/// One run: durations in µs, bytes as the bucket client counted them.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BucketRun {
    pub local_dump_us: u64,
    pub local_restore_us: u64,
    pub bucket_dump_us: u64,
    pub bucket_restore_us: u64,
    /// Bytes sent by the first dump into the bucket, and by the re-dump of the same process.
    pub first_bytes_sent: u64,
    pub redump_bytes_sent: u64,
    /// Bytes the restore received from the bucket.
    pub restore_bytes_received: u64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BenchReport {
    pub mib: u64,
    pub runs: Vec<BucketRun>,
    pub median_local_dump_us: u64,
    pub median_bucket_dump_us: u64,
    pub median_local_restore_us: u64,
    pub median_bucket_restore_us: u64,
    /// Bucket / local, of the medians.
    pub dump_ratio: f64,
    pub restore_ratio: f64,
    /// Median re-dump bytes sent / first dump bytes sent.
    pub redump_share: f64,
}

pub fn run_bench(o: &BenchOptions) -> Result<BenchReport, super::BenchError> {
    super::in_work_dir(&o.dir, "bucket", |dir| run_inner(o, dir))
}

/// The bench's location for one store: its own prefix and its own cache directory.
fn location(base: &BucketUrl, prefix: &str, cache: &Path) -> PathBuf {
    let mut u = base.clone();
    u.prefix = if base.prefix.is_empty() {
        prefix.to_string()
    } else {
        format!("{}/{prefix}", base.prefix)
    };
    u.cache = Some(cache.to_path_buf());
    PathBuf::from(u.to_location())
}

fn run_inner(o: &BenchOptions, dir: &Path) -> Result<BenchReport, BoxErr> {
    crate::sys::host::set_child_subreaper()?;
    let base = BucketUrl::parse(&o.store)?;
    let memwriter = build(&o.fixtures, "memwriter", dir)?;
    let report = dir.join("mw.report");
    let mut mw = Target::start(
        Command::new(&memwriter).args([
            o.mib.to_string(),
            "0".into(),
            report.display().to_string(),
        ]),
        &dir.join("mw.log"),
    )?;
    let before = checksum(mw.pid, &report)?;
    let dopts = DumpOptions {
        leave_running: true,
        ..Default::default()
    };
    let ropts = RestoreOptions {
        pid: PidChoice::Any,
        ..Default::default()
    };
    let stamp = crate::util::now_us();
    let mut rep = BenchReport {
        mib: o.mib,
        ..Default::default()
    };
    for n in 0..o.runs {
        let mut run = BucketRun::default();
        // Local.
        let local = Store::open_or_create(&dir.join(format!("local-{n}")))?;
        prewarm((2 * o.mib) << 20);
        let t = Instant::now();
        let set = dump_to_store(mw.pid, &local, "bench-bucket", &dopts, Some(1))?.set;
        run.local_dump_us = crate::util::us(t.elapsed());
        // Read from the disk, as the bucket's restore reads from the bucket: the kernel's
        // copies of the packs are dropped first.
        local.drop_caches();
        drop(local);
        prewarm((2 * o.mib) << 20);
        let t = Instant::now();
        let reader = Store::open(&dir.join(format!("local-{n}")))?;
        let r = crate::restore::restore(&set, &reader, &ropts)?;
        run.local_restore_us = crate::util::us(t.elapsed());
        let g = Reaped(r.pid);
        expect(checksum(g.0, &report)?, &before, "local restore")?;
        drop(g);
        drop(reader);
        let _ = std::fs::remove_dir_all(dir.join(format!("local-{n}")));

        // The bucket: a prefix of this run's own, so nothing is deduplicated against an
        // earlier run.
        let prefix = format!("haul-bench-{stamp}-{n}");
        let loc = location(&base, &prefix, &dir.join(format!("cache-w{n}")));
        prewarm((2 * o.mib) << 20);
        let t = Instant::now();
        let bucket = Store::open_or_create(&loc)?;
        let set = dump_to_store(mw.pid, &bucket, "bench-bucket", &dopts, Some(1))?.set;
        run.bucket_dump_us = crate::util::us(t.elapsed());
        let remote = bucket.remote().ok_or("not a bucket store")?.clone();
        run.first_bytes_sent = remote.traffic().0;
        dump_to_store(mw.pid, &bucket, "bench-bucket", &dopts, Some(1))?;
        run.redump_bytes_sent = remote.traffic().0 - run.first_bytes_sent;
        // Another host: an empty cache.
        let loc_r = location(&base, &prefix, &dir.join(format!("cache-r{n}")));
        prewarm((2 * o.mib) << 20);
        let t = Instant::now();
        let reader = Store::open(&loc_r)?;
        let r = crate::restore::restore(&set, &reader, &ropts)?;
        // Opening the store (the listing of the bucket, the index) is part of the cost.
        run.bucket_restore_us = crate::util::us(t.elapsed());
        run.restore_bytes_received = reader.remote().map(|r| r.traffic().1).unwrap_or(0);
        let g = Reaped(r.pid);
        expect(checksum(g.0, &report)?, &before, "restore from the bucket")?;
        drop(g);
        // Leave the bucket as it was: the run's sets go, then its packs.
        for s in bucket.list_sets(None)? {
            bucket.remove_set(&s.id)?;
        }
        bucket.set_gc_grace(std::time::Duration::ZERO);
        bucket.gc()?;
        remote.delete(crate::store::MARKER)?;
        rep.runs.push(run);
    }
    mw.stop();
    let med = |f: fn(&BucketRun) -> u64| median(rep.runs.iter().map(f).collect());
    rep.median_local_dump_us = med(|r| r.local_dump_us);
    rep.median_bucket_dump_us = med(|r| r.bucket_dump_us);
    rep.median_local_restore_us = med(|r| r.local_restore_us);
    rep.median_bucket_restore_us = med(|r| r.bucket_restore_us);
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    rep.dump_ratio = ratio(rep.median_bucket_dump_us, rep.median_local_dump_us);
    rep.restore_ratio = ratio(rep.median_bucket_restore_us, rep.median_local_restore_us);
    rep.redump_share = ratio(med(|r| r.redump_bytes_sent), med(|r| r.first_bytes_sent));
    Ok(rep)
}

/// The report as text.
pub fn report_text(r: &BenchReport) -> String {
    let ms = |us: u64| format!("{:.0} ms", us as f64 / 1000.0);
    let mut s = format!(
        "bucket store against a local store: {} MiB memwriter, medians of {} runs\n",
        r.mib,
        r.runs.len()
    );
    s += &format!(
        "  dump (leave running, to committed): local {}, bucket {} ({:.2}x)\n",
        ms(r.median_local_dump_us),
        ms(r.median_bucket_dump_us),
        r.dump_ratio
    );
    s += &format!(
        "  eager restore, empty cache:         local {}, bucket {} ({:.2}x)\n",
        ms(r.median_local_restore_us),
        ms(r.median_bucket_restore_us),
        r.restore_ratio
    );
    s += &format!(
        "  re-dump of the unchanged process sends {:.2}% of the first dump's bytes\n",
        r.redump_share * 100.0
    );
    for (i, run) in r.runs.iter().enumerate() {
        s += &format!(
            "  run {}: local {} / {}, bucket {} / {}, sent {} B then {} B, restore received {} B\n",
            i + 1,
            ms(run.local_dump_us),
            ms(run.local_restore_us),
            ms(run.bucket_dump_us),
            ms(run.bucket_restore_us),
            run.first_bytes_sent,
            run.redump_bytes_sent,
            run.restore_bytes_received
        );
    }
    s
}
