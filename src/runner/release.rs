//! After a dump that killed a process tree: its pids are made free again for a restore with
//! `pid = "same"`, which follows at once. The worker killed every process and collected each
//! death as their tracer; a killed process stays a zombie until its parent reaps it. haul is a
//! child subreaper ([`become_subreaper`]), so the descendants of a process it launched come to
//! haul when their parents die, and haul reaps them here (PID 1 does not reap everywhere, so
//! nobody else would). A pid held by a parent that is not haul and does not reap is named.

use std::time::{Duration, Instant};

/// How long haul waits for the pids of a killed tree to be free.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pid of a killed tree that is still taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    pub pid: i32,
    pub comm: String,
    /// Its state letter (Z: a zombie nobody reaped).
    pub state: char,
    /// Its parent, who should reap it.
    pub ppid: i32,
    /// Set when the pid itself is gone but is still the process group or session of another
    /// process (a zombie keeps its links): that process's pid. `comm`, `state` and `ppid`
    /// are then that process's. A pid that leads a group or session cannot be given to a
    /// new process (`clone3` with `set_tid` fails with EEXIST).
    pub leader_of: Option<i32>,
}

impl std::fmt::Display for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(holder) = self.leader_of {
            return write!(
                f,
                "pid {} is still taken: it is the process group or session of pid {holder} \
                 ({}, state {}, parent {})",
                self.pid, self.comm, self.state, self.ppid
            );
        }
        if self.state == 'Z' {
            write!(
                f,
                "pid {} ({}) is still taken: a zombie of pid {}, which has not reaped it",
                self.pid, self.comm, self.ppid
            )
        } else {
            write!(
                f,
                "pid {} ({}) is still taken (state {}, parent {})",
                self.pid, self.comm, self.state, self.ppid
            )
        }
    }
}

/// Makes haul a child subreaper: orphans among the descendants of the processes it launched
/// come to haul, which reaps them ([`release`]).
pub fn become_subreaper() {
    if let Err(e) = crate::sys::host::set_child_subreaper() {
        tracing::warn!("cannot become a child subreaper: {e}");
    }
}

/// Waits until every pid of `pids` (the processes of a killed tree) is free, reaping those
/// that are haul's own zombies, for at most `timeout`; returns those still taken, named. A
/// pid is free only once no process is left with it as its process group or session either:
/// a zombie of haul's (a process that left the tree, say a double-forked helper of its
/// group, orphaned to haul) is reaped for that too.
pub fn release(pids: &[i32], timeout: Duration) -> Vec<Taken> {
    let me = crate::sys::process::getpid();
    let end = Instant::now() + timeout;
    let mut left: Vec<i32> = pids.to_vec();
    loop {
        let mut taken = Vec::new();
        // Every process, read once a round, only when a pid of the tree is gone.
        let mut everyone: Option<Vec<crate::proc::Stat>> = None;
        left.retain(|&pid| {
            let (st, leader_of) = match crate::proc::stat(pid) {
                Ok(st) => (st, None),
                Err(_) => {
                    let all = everyone.get_or_insert_with(|| {
                        crate::proc::pids()
                            .into_iter()
                            .filter_map(|p| crate::proc::stat(p).ok())
                            .collect()
                    });
                    match all.iter().find(|s| s.pgrp == pid || s.session == pid) {
                        None => return false, // gone, and no one's group: free
                        Some(s) => (s.clone(), Some(s.pid)),
                    }
                }
            };
            if st.ppid == me && st.is_zombie() {
                match crate::sys::host::reap_if_ended(st.pid) {
                    Ok(true) if leader_of.is_none() => return false,
                    Ok(_) => {}
                    Err(e) => tracing::debug!(pid = st.pid, "reaping: {e}"),
                }
            }
            taken.push(Taken {
                pid,
                comm: st.comm,
                state: st.state,
                ppid: st.ppid,
                leader_of,
            });
            true
        });
        if taken.is_empty() || Instant::now() >= end {
            // (A holder reaped in the last round is seen gone in the next one.)
            return taken;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reaps the memory keepers of a killed tree (`dump::keeper`) that came to haul, and the fork
/// snapshot of a checkpoint (`dump::snapshot`): each is killed by the worker, and is a child
/// of haul's when haul launched the process (a keeper an orphan of it, a snapshot its sibling;
/// the snapshot has no exit signal). One that is not haul's child is its own parent's to reap.
/// Waits at most [`RELEASE_TIMEOUT`] in all (a keeper frees the memory it held as it exits).
///
/// A keeper handed over for a restore to adopt (`restore.adopt_memory`) that it did not is
/// still stopped, untraced: haul kills it here.
pub fn reap_keepers(pids: &[i32]) {
    let me = crate::sys::process::getpid();
    let end = Instant::now() + RELEASE_TIMEOUT;
    for &pid in pids {
        if let Ok(st) = crate::proc::stat(pid) {
            if st.ppid == me && st.state == 'T' {
                if let Err(e) = crate::sys::process::kill(pid, libc::SIGKILL) {
                    tracing::debug!(pid, "ending a memory keeper nobody adopted: {e}");
                }
            }
        }
        loop {
            match crate::proc::stat(pid) {
                Ok(st) if st.ppid == me => {}
                _ => break,
            }
            match crate::sys::host::reap_if_ended(pid) {
                Ok(false) if Instant::now() < end => std::thread::sleep(Duration::from_millis(2)),
                Ok(false) => {
                    tracing::warn!(pid, "a memory keeper is still not gone: left unreaped");
                    break;
                }
                Ok(true) => break,
                Err(e) => {
                    tracing::debug!(pid, "reaping a memory keeper: {e}");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_that_stays_taken_names_its_parent() {
        let t = Taken {
            pid: 42,
            comm: "sleep".into(),
            state: 'Z',
            ppid: 7,
            leader_of: None,
        };
        assert_eq!(
            t.to_string(),
            "pid 42 (sleep) is still taken: a zombie of pid 7, which has not reaped it"
        );
        // A pid nobody holds is free at once; our own live pid stays taken.
        let me = std::process::id() as i32;
        let got = release(&[i32::MAX, me], Duration::ZERO);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].pid, me);
    }
}
