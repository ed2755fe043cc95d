//! `haul images`: list, show, verify, disk use, remove, gc, push and pull, as text or JSON.

use haul::runner::exit;
use haul::Error;

use super::{out, print_json, ImagesArgs};

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
        let token = match token_file {
            Some(f) => haul::xfer::read_token_file(f)?,
            None => Vec::new(),
        };
        // The store is created only once the server has answered.
        let dest = &args.store.store;
        let r = haul::xfer::pull(from, &token, *timeout, set, dest, compression.level())?;
        if *json {
            print_json(&r)?;
        } else {
            out(&sync_text(&r));
        }
        return Ok(exit::OK);
    }
    let store = haul::store::Store::open(&args.store.store)?;
    match args.command {
        C::Pull { .. } => Ok(exit::OK),
        C::Push {
            set,
            to,
            compression,
            json,
        } => {
            let dest = haul::store::Store::open_or_create(&to)?;
            let r = haul::xfer::push(&store, &set, &dest, compression.level())?;
            if json {
                print_json(&r)?;
            } else {
                out(&sync_text(&r));
            }
            Ok(exit::OK)
        }
        C::Ls { job, json } => {
            let l = store.list(job.as_deref())?;
            if json {
                print_json(&l.rows())?;
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
                print_json(&haul::store::set_view(&s))?;
            } else {
                out(haul::store::show_text(&s).trim_end());
            }
            Ok(exit::OK)
        }
        C::Verify { set, json } => {
            let r = store.verify(set.as_deref())?;
            if json {
                print_json(&r)?;
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
            let r = store.du()?;
            if json {
                print_json(&r)?;
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
        C::Gc { json } => {
            let r = store.gc()?;
            if json {
                print_json(&r)?;
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
