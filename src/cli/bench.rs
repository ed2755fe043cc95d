//! `haul bench`: runs a benchmark and prints its report.

use haul::runner::progress::Activity;
use haul::runner::{exit, ProgressMode};
use haul::Error;

use super::{out, print_doc, BenchCommand};

/// `haul bench ...`; `quiet`: no progress on stderr.
pub fn run(what: BenchCommand, quiet: bool) -> Result<u8, Error> {
    let mode = if quiet {
        ProgressMode::Quiet
    } else {
        ProgressMode::Auto
    };
    match what {
        BenchCommand::Precopy {
            dir,
            fixtures,
            size,
            dirty_per_sec,
            predumps,
            interval,
            runs,
            json,
        } => {
            use haul::bench::dump as bench;
            let opts = bench::BenchOptions {
                dir,
                fixtures,
                mib: size >> 20,
                dirty_per_sec,
                predumps,
                interval,
                runs,
                ..Default::default()
            };
            let a = Activity::start(mode, "bench precopy", "running");
            let r = bench::run_bench(&opts)?;
            a.finish("done");
            if json {
                print_doc("bench-precopy", &r)?;
            } else {
                out(bench::report_text(&r).trim_end());
            }
            Ok(exit::OK)
        }
        BenchCommand::Lazy {
            dir,
            fixtures,
            size,
            prefetch,
            touches_per_sec,
            runs,
            json,
        } => {
            use haul::bench::lazy as bench;
            let opts = bench::BenchOptions {
                dir,
                fixtures,
                mib: size >> 20,
                runs,
                prefetch,
                touches_per_sec,
            };
            let a = Activity::start(mode, "bench lazy", "running");
            let r = bench::run_bench(&opts)?;
            a.finish("done");
            if json {
                print_doc("bench-lazy", &r)?;
            } else {
                out(bench::report_text(&r).trim_end());
            }
            Ok(exit::OK)
        }
        BenchCommand::Migrate {
            dir,
            fixtures,
            size,
            rate,
            paths,
            runs,
            fill,
            json,
        } => {
            use haul::bench::migrate as bench;
            let opts = bench::BenchOptions {
                dir,
                fixtures,
                mib: size >> 20,
                rate,
                runs,
                paths,
                fill,
            };
            let a = Activity::start(mode, "bench migrate", "running");
            let r = bench::run_bench(&opts)?;
            a.finish("done");
            if json {
                print_doc("bench-migrate", &r)?;
            } else {
                out(bench::report_text(&r).trim_end());
            }
            Ok(exit::OK)
        }
        BenchCommand::Bucket {
            store,
            dir,
            fixtures,
            size,
            runs,
            json,
        } => {
            use haul::bench::bucket as bench;
            let opts = bench::BenchOptions {
                dir,
                fixtures,
                store,
                mib: size >> 20,
                runs,
            };
            let a = Activity::start(mode, "bench bucket", "running");
            let r = bench::run_bench(&opts)?;
            a.finish("done");
            if json {
                print_doc("bench-bucket", &r)?;
            } else {
                out(bench::report_text(&r).trim_end());
            }
            Ok(exit::OK)
        }
        BenchCommand::Tree {
            dir,
            fixtures,
            processes,
            shared,
            private,
            runs,
            json,
        } => {
            use haul::bench::tree as bench;
            let opts = bench::BenchOptions {
                dir,
                fixtures,
                processes,
                shared_mib: shared >> 20,
                private_mib: private >> 20,
                runs,
            };
            let a = Activity::start(mode, "bench tree", "running");
            let r = bench::run_bench(&opts)?;
            a.finish("done");
            if json {
                print_doc("bench-tree", &r)?;
            } else {
                out(bench::report_text(&r).trim_end());
            }
            Ok(exit::OK)
        }
        BenchCommand::Store { dir, size, json } => {
            let opts = haul::bench::store::BenchOptions {
                dir,
                size,
                ..Default::default()
            };
            // A spinner on a terminal, timestamped lines otherwise.
            let progress = haul::runner::progress::Progress::new(mode);
            let bar = progress.job("bench store");
            let r = haul::bench::store::run_bench_with(&opts, &|step| bar.step(step));
            bar.finish(if r.is_ok() { "done" } else { "failed" }, r.is_err());
            let r = r?;
            if json {
                print_doc("bench-store", &r)?;
            } else {
                out(haul::bench::store::report_text(&r).trim_end());
            }
            Ok(exit::OK)
        }
    }
}
