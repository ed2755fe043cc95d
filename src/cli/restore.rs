//! `haul restore SET [--lazy]`: builds the command from the arguments, runs it
//! (`haul::runner::command`), and prints the root's PID (or JSON, with every process's).

use haul::runner::command::{self, LazyRestoreCommand, RestoreCommand};
use haul::runner::exit;
use haul::runner::progress::Activity;
use haul::Error;

use super::{flush, out, print_doc, progress_mode, RestoreArgs, VerifyArg};

/// `haul restore SET ...`.
pub fn run(args: RestoreArgs) -> Result<u8, Error> {
    let cmd = RestoreCommand {
        set: args.set.clone(),
        store: args.store.store.clone(),
        pid: args.pid.into(),
        verify_state: args.verify == Some(VerifyArg::State),
        tty: args.tty.map(Into::into),
        network_lock: args.network_lock.into(),
    };
    if args.lazy {
        return lazy(&args, cmd);
    }
    // With --tty the job shares this terminal from the moment it runs: no spinner on it.
    let a = Activity::start(
        progress_mode(args.quiet || args.tty.is_some()),
        &format!("restore of {}", args.set),
        "loading the set and rebuilding the processes",
    );
    let mut r = command::restore(&cmd)?;
    // Before the PID is printed, and before a --tty job takes the terminal.
    a.finish("running");
    let terminal = r.terminal.take();
    if args.json {
        let o = &r.outcome;
        // Every process of a tree, as {"was": pid in the image, "pid": pid here}.
        let pids: Vec<_> = o
            .pids
            .iter()
            .map(|(was, now)| serde_json::json!({"was": was, "pid": now}))
            .collect();
        let v = serde_json::json!({
            "set": r.set.id, "pid": o.pid, "pids": pids, "restore_time": o.restore_time,
            "time_to_running": o.time_to_running, "pages_restored": o.pages_restored,
            "lock_time": o.lock_time,
        });
        print_doc("restore", &v)?;
    } else {
        out(&r.outcome.pid.to_string());
    }
    // --tty: the job runs on its terminal until it exits.
    if let Some(t) = terminal {
        flush();
        t.serve(r.outcome.pid)
            .map_err(haul::runner::CommandError::from)?;
    }
    Ok(exit::OK)
}

/// `haul restore SET --lazy [--from HOST:PORT]`: prints the PID as soon as the process runs,
/// then serves its memory in the foreground until every page is resident.
fn lazy(args: &RestoreArgs, restore: RestoreCommand) -> Result<u8, Error> {
    let cmd = LazyRestoreCommand {
        restore,
        from: args.from.clone(),
        token_file: args.token_file.clone(),
        push: args.push_policy()?,
        idle_push: args.idle_push.unwrap_or(haul::job::defaults::idle_push().0),
        prefetch: args.prefetch,
        source_timeout: args.source_timeout,
    };
    // Until the process runs; not while its pages come: it may be writing to this terminal.
    let a = Activity::start(
        progress_mode(args.quiet),
        &format!("restore of {}", args.set),
        "loading the set and rebuilding the processes",
    );
    let running = command::lazy_restore(&cmd)?;
    a.finish("running");
    let lr = &running.restore;
    let (pid, ttr, pages_lazy) = (lr.pid(), lr.outcome.time_to_running, lr.pages_lazy);
    let lock_time = lr.outcome.lock_time;
    let set = running.set.id.clone();
    out(&pid.to_string());
    flush();
    let ended = running.wait()?;
    let rep = &ended.report;
    if args.json {
        let released_msg = match &ended.released {
            Some(Ok(m)) => Some(m.clone()),
            _ => None,
        };
        let v = serde_json::json!({
            "set": set, "pid": pid, "time_to_running": ttr, "pages_lazy": pages_lazy,
            "lock_time": lock_time,
            "lazy": rep, "source_released": released_msg,
        });
        print_doc("restore-lazy", &v)?;
    }
    match (&rep.source_lost, &ended.released) {
        (Some(reason), _) => {
            // `reason` says what was lost ("page source lost: ...").
            eprintln!("haul: process {pid} killed: {reason}");
            Ok(exit::FAILED)
        }
        (None, Some(Err(e))) => {
            eprintln!(
                "haul: every page of process {pid} is resident, but the page server did not \
                 hear so ({e}): a frozen source may resume after its timeout"
            );
            Ok(exit::FAILED)
        }
        (None, _) => Ok(exit::OK),
    }
}
