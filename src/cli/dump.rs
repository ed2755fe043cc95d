//! `haul dump`: builds the command from the arguments, runs it (`haul::runner::command`), and
//! prints what it did, as text or JSON.

use haul::runner::command::{self, DumpCommand, LazyServe};
use haul::runner::exit;
use haul::runner::progress::Activity;
use haul::runner::worker::SourceEndKind;
use haul::util::{human_bytes, human_us};
use haul::Error;

use super::{flush, out, print_doc, print_doc_line, progress_mode, DumpArgs};

/// `haul dump --pid PID ...`.
pub fn run(args: DumpArgs) -> Result<u8, Error> {
    if args.check {
        return check(&args);
    }
    let cmd = command_of(&args);
    if cmd.lazy.is_some() {
        return lazy(&args, &cmd);
    }
    let a = Activity::start(
        progress_mode(args.quiet),
        &format!("dump of pid {}", args.pid),
        match cmd.predump {
            Some(_) => "pre-dumping while it runs, then the final dump",
            None => "checkpointing",
        },
    );
    let d = command::dump(&cmd, &|s| a.step(s))?;
    a.finish("done");
    // A pid of the killed tree still taken: a restore with --pid same would fail.
    for t in &d.taken {
        eprintln!("warning: {t}");
    }
    // What the dump dropped (datagrams queued, connections not yet accepted).
    for w in &d.stats.warnings {
        eprintln!("warning: {w}");
    }
    if args.json {
        let taken: Vec<i32> = d.taken.iter().map(|t| t.pid).collect();
        let v = serde_json::json!({
            "set": d.set.id, "job": d.job, "pid": args.pid, "stats": d.stats,
            "figures": d.set.figures, "pruned": d.pruned, "predump": d.predump,
            "processes": d.set.process_count(), "pids_taken": taken,
        });
        print_doc("dump", &v)?;
        return Ok(exit::OK);
    }
    let f = &d.set.figures;
    out(&d.set.id);
    out(&format!(
        "  pid {}{} {}: frozen {} (freezing {}, memdump {}{}), write {}; {} pages ({} zero), {} logical, {} stored, {} new",
        args.pid,
        match d.set.process_count() {
            n if n > 1 => format!(" and its tree ({n} processes)"),
            _ => String::new(),
        },
        if args.leave_running { "left running" } else { "killed once committed" },
        human_us(d.stats.frozen_time),
        human_us(d.stats.freezing_time),
        human_us(d.stats.memdump_time),
        if d.stats.frozen_commit_time > 0 {
            format!(", commit {}", human_us(d.stats.frozen_commit_time))
        } else {
            String::new()
        },
        human_us(d.stats.memwrite_time),
        f.pages,
        f.pages_zero,
        human_bytes(f.bytes_logical),
        human_bytes(f.bytes_stored),
        human_bytes(f.bytes_new)
    ));
    if let Some(p) = &d.predump {
        out(&format!(
            "  pre-copy: {} pre-dumps with {} ({}), stopped: {}; final dump carried {} pages",
            p.iterations.len(),
            p.tracker,
            p.tracker_reason,
            p.stop_reason,
            d.stats.pages_skipped_parent
        ));
        for i in &p.iterations {
            out(&format!(
                "    {} {}: {} pages written, {} new, frozen {}, took {}",
                i.index,
                i.set,
                i.pages_written,
                human_bytes(i.bytes_new),
                human_us(i.frozen_time),
                human_us(i.duration_us)
            ));
        }
    }
    for p in &d.pruned {
        out(&format!("  pruned {p}"));
    }
    Ok(exit::OK)
}

/// The command the arguments ask for.
fn command_of(args: &DumpArgs) -> DumpCommand {
    DumpCommand {
        pid: args.pid,
        store: args.store.store.clone(),
        name: args.name.clone(),
        leave_running: args.leave_running,
        buffer: args.buffer,
        compression: args.compression,
        predump: args
            .predump
            .filter(|n| *n > 0)
            .map(|n| haul::job::PredumpSpec {
                interval: haul::job::Dur(args.interval),
                max_iterations: n,
                stop_below: haul::job::Size(args.stop_below),
                stop_growth: 1.1,
                tracker: args.tracker.into(),
            }),
        keep: args.keep,
        tcp_pending: args.tcp_pending.into(),
        network_lock: args.network_lock.into(),
        lazy: args.lazy.then(|| LazyServe {
            listen: args.listen.clone(),
            token_file: args.token_file.clone(),
            source_timeout: args.source_timeout,
        }),
    }
}

/// `haul dump --pid PID --lazy`: prints the set and the address as soon as the dump is
/// committed, then serves until a restore has every page (killed: exit 0) or none is connected
/// for the source timeout (resumed, rolled back: exit 1). SIGINT/SIGTERM roll back too.
fn lazy(args: &DumpArgs, cmd: &DumpCommand) -> Result<u8, Error> {
    let mode = progress_mode(args.quiet);
    let a = Activity::start(mode, &format!("dump of pid {}", args.pid), "checkpointing");
    let d = command::lazy_dump(cmd, &|s| a.step(s))?;
    a.finish("committed");
    let (set, o, addr) = (&d.set, &d.outcome, &d.addr);
    if args.json {
        print_doc_line(
            "dump-lazy",
            &serde_json::json!({
                "set": set.id, "job": set.job, "pid": args.pid, "serving": addr,
                "stats": o.stats, "figures": set.figures, "predump": o.predump,
            }),
        )?;
    } else {
        let f = &set.figures;
        out(&set.id);
        out(&format!("serving on {addr}"));
        out(&format!(
            "  pid {} frozen, serving its lazy pages: dump froze it for {} (memdump {}, write {}); {} pages: {} lazy, {} zero, {} stored ({} new)",
            args.pid,
            human_us(o.stats.frozen_time),
            human_us(o.stats.memdump_time),
            human_us(o.stats.memwrite_time),
            f.pages,
            f.pages_lazy,
            f.pages_zero,
            human_bytes(f.bytes_stored),
            human_bytes(f.bytes_new)
        ));
        out(&format!(
            "  restore it with: haul restore {} --lazy --pid any --from {addr}",
            set.id
        ));
    }
    flush();
    let a = Activity::start(
        mode,
        &format!("pid {}", args.pid),
        &format!("frozen, serving its pages on {addr}"),
    );
    let ended = d.wait()?;
    a.finish("ended");
    let end = &ended.end;
    if args.json {
        print_doc_line("dump-lazy-end", &serde_json::json!({ "source": end }))?;
    } else {
        let how = match end.kind {
            SourceEndKind::Killed => "killed",
            SourceEndKind::Thawed => "resumed",
            SourceEndKind::Gone => "gone",
        };
        out(&format!(
            "source {how} after {}: {}",
            human_us(end.served_us),
            end.detail
        ));
    }
    flush();
    if !ended.killed() {
        return Ok(exit::FAILED);
    }
    for p in ended.prune()? {
        if !args.json {
            out(&format!("  pruned {p}"));
        }
    }
    Ok(exit::OK)
}

/// `haul dump --check`: the dump's refusal checks alone, for the whole tree.
fn check(args: &DumpArgs) -> Result<u8, Error> {
    let policy = haul::dump::CheckPolicy {
        tcp_pending: args.tcp_pending.into(),
    };
    let pids = match haul::dump::precheck(args.pid, policy) {
        Ok(pids) => pids,
        // "No" is the answer asked for, with every reason: on stdout, exit 1.
        Err(e) if e.is_refusal() => {
            let reasons = e.reasons();
            if args.json {
                print_doc(
                    "dump-check",
                    &serde_json::json!({
                        "pid": args.pid, "checkpointable": false, "reasons": reasons,
                    }),
                )?;
            } else {
                out(&format!("pid {} cannot be checkpointed:", args.pid));
                for r in &reasons {
                    out(&format!("  {r}"));
                }
            }
            return Ok(exit::FAILED);
        }
        Err(e) => return Err(e.into()),
    };
    let count = |f: fn(i32) -> Option<usize>| pids.iter().filter_map(|&p| f(p)).sum::<usize>();
    let threads = count(|p| haul::proc::tids(p).ok().map(|t| t.len()));
    let fds = count(|p| haul::proc::fds(p).ok().map(|f| f.len()));
    if args.json {
        print_doc(
            "dump-check",
            &serde_json::json!({
                "pid": args.pid, "checkpointable": true, "processes": pids.len(),
                "pids": pids, "threads": threads, "fds": fds, "reasons": [],
            }),
        )?;
    } else {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        // One process reads as it always did; a tree says how many processes it has.
        let procs = if pids.len() > 1 {
            format!("{} processes, ", pids.len())
        } else {
            String::new()
        };
        out(&format!(
            "pid {} can be checkpointed ({procs}{}, {})",
            args.pid,
            plural(threads, "thread", "threads"),
            plural(fds, "fd", "fds")
        ));
    }
    Ok(exit::OK)
}
