//! The freeze of a whole process tree (issue #13): the root, then its children, each process
//! frozen (every thread) before its children are read, so a fork racing the freeze is caught;
//! every frozen process's children are read again until no new one appears (a bounded number
//! of rounds). Zombies are not seized: their parent, frozen, cannot reap them, so they stay.
//!
//! The guard holds one [`Frozen`] per living process, in tree order. Dropping it thaws every
//! one (each `Frozen` restores what haul changed and detaches); [`FrozenTree::kill`] kills them
//! all once their set is committed.

use std::time::Instant;

use super::freeze::Frozen;
use super::{check, DumpError, Step};
use crate::image::{ZombieImage, PAGE_SIZE};
use crate::proc::{self, TreeMember};
use crate::sys::mem::PageBuf;

/// Rounds of "freeze what is new, read every frozen process's children again" before the tree
/// is declared unstable: each round freezes at least one process that forked meanwhile, so a
/// tree that is still growing after this many is forking faster than haul can freeze it.
const ROUNDS: usize = 64;

/// Every living process of a tree, frozen, in tree order (root first).
///
/// Fields drop in their order: on any error, established TCP sockets leave repair mode before
/// the processes are thawed, and the network lock goes last, once they run.
pub(crate) struct FrozenTree {
    /// The established TCP sockets haul switched into repair mode to read them (issue #15).
    pub repair: crate::sys::tcprepair::Repairing,
    pub procs: Vec<Frozen>,
    /// What `/proc` showed of each of `procs` when it was frozen (same order).
    pub members: Vec<TreeMember>,
    /// Zombie descendants (not seized), in tree order.
    pub zombies: Vec<TreeMember>,
    /// When the last process was stopped.
    stopped_at: Instant,
    /// The network lock holding the tree's connections to peers outside it (issue #15).
    pub lock: Option<crate::netlock::NetLock>,
}

/// Threads collecting the deaths of killed trees ([`DumpOptions::deaths_in_background`]).
static DEATHS: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// What is dropped only once those deaths are collected ([`after_deaths`]).
static AFTER_DEATHS: std::sync::Mutex<Vec<Box<dyn Send>>> = std::sync::Mutex::new(Vec::new());

/// Waits until the deaths collected in the background are all collected (the checkpoint
/// worker, before it exits), then drops what waited for them.
pub fn join_deaths() {
    let handles = DEATHS.lock().map(|mut v| std::mem::take(&mut *v));
    for h in handles.unwrap_or_default() {
        let _ = h.join();
    }
    let late = AFTER_DEATHS.lock().map(|mut v| std::mem::take(&mut *v));
    drop(late);
}

/// Adoptable memory keepers whose processes are dead, to hand over
/// ([`hand_over_keepers`]).
static ADOPTABLE: std::sync::Mutex<Vec<super::keeper::Keeper>> = std::sync::Mutex::new(Vec::new());

/// Keeps adoptable keeper `k` for [`hand_over_keepers`] (its process is dead). A keeper
/// never handed over dies with haul's checkpoint worker (`PTRACE_O_EXITKILL`).
pub(super) fn record_adoptable(k: super::keeper::Keeper) {
    match ADOPTABLE.lock() {
        Ok(mut v) => v.push(k),
        Err(_) => k.end(),
    }
}

/// Hands the adoptable memory keepers over to the restore that follows
/// (`DumpOptions::hand_keepers`, [`super::keeper::Keeper::hand_over`]) and returns their pids.
/// Call after [`join_deaths`] (every death collected) from the thread that made them: ptrace
/// requests come from a tracee's own tracer thread.
pub fn hand_over_keepers() -> Vec<i32> {
    let kept = ADOPTABLE
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default();
    kept.into_iter()
        .filter_map(|k| {
            k.hand_over()
                .map_err(|e| tracing::warn!("handing a memory keeper over to the restore: {e}"))
                .ok()
        })
        .collect()
}

/// Keeps `what` until [`join_deaths`] (a killed process's tracking, whose teardown is
/// cheap once the process and its memory keeper are gone).
pub(super) fn after_deaths(what: Box<dyn Send>) {
    match AFTER_DEATHS.lock() {
        Ok(mut v) => v.push(what),
        Err(_) => drop(what),
    }
}

/// Ends memory keepers whose processes are dead (their exits free the memory) on a thread of
/// their own, which [`join_deaths`] waits for; here if it cannot be started.
fn end_keepers(kept: Vec<super::keeper::Keeper>) {
    if kept.is_empty() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel::<Vec<super::keeper::Keeper>>();
    let spawned = std::thread::Builder::new()
        .name("haul-keepers".into())
        .spawn(move || {
            rx.into_iter()
                .flatten()
                .for_each(super::keeper::Keeper::finish)
        });
    let left = match spawned {
        Ok(h) => match tx.send(kept) {
            Ok(()) => {
                if let Ok(mut v) = DEATHS.lock() {
                    v.push(h);
                }
                return;
            }
            Err(std::sync::mpsc::SendError(back)) => back,
        },
        Err(e) => {
            tracing::warn!("ending the memory keepers on a thread: {e}");
            kept
        }
    };
    left.into_iter().for_each(super::keeper::Keeper::finish);
}

impl FrozenTree {
    /// Freezes the tree rooted at `root`: see the module documentation. A process that exits
    /// before it is frozen is simply not part of the tree; one that leaves the tree once frozen
    /// (killed from outside) fails the freeze, naming it. Any error thaws what was frozen.
    pub fn seize(root: i32) -> Result<FrozenTree, DumpError> {
        let mut t = FrozenTree {
            repair: Default::default(),
            procs: Vec::new(),
            members: Vec::new(),
            zombies: Vec::new(),
            stopped_at: Instant::now(),
            lock: None,
        };
        for _ in 0..ROUNDS {
            let mut changed = false;
            let mut order: Vec<TreeMember> = Vec::new();
            let mut zombies = Vec::new();
            let mut stack = vec![root];
            while let Some(pid) = stack.pop() {
                let known = t.members.iter().position(|m| m.pid == pid);
                let member = match known {
                    Some(i) => t.members[i].clone(),
                    None => {
                        let st = match proc::stat(pid) {
                            Ok(st) => st,
                            // Exited and reaped before it was frozen: not in the tree.
                            Err(e) if e.is_gone() && pid != root => continue,
                            Err(e) => return Err(e.into()),
                        };
                        let m = TreeMember {
                            pid,
                            ppid: st.ppid,
                            comm: st.comm.clone(),
                            zombie: st.is_zombie(),
                            exit_signal: st.exit_signal,
                            exit_code: st.exit_code,
                            pgid: st.pgrp,
                            sid: st.session,
                        };
                        if m.zombie {
                            if pid == root {
                                return Err(DumpError::Refused(format!(
                                    "pid {pid} ({}) is a zombie: it has already exited",
                                    m.comm
                                )));
                            }
                            zombies.push(m);
                            continue;
                        }
                        match Frozen::seize_all(pid) {
                            Ok(f) => t.procs.push(f),
                            // Exited while being frozen: it is a zombie now (seen next round)
                            // or gone.
                            Err(_) if pid != root && check::process_gone(pid) => {
                                changed = true;
                                continue;
                            }
                            Err(e) if pid == root => return Err(e),
                            Err(e) => return Err(member_err(root, &m, e)),
                        }
                        t.members.push(m.clone());
                        changed = true;
                        m
                    }
                };
                // Frozen: its list of children is exact now.
                let kids = match proc::children(pid) {
                    Ok(k) => k,
                    Err(e) if pid != root && check::process_gone(pid) => {
                        return Err(left(root, &member, Step::Seize, e.to_string()))
                    }
                    Err(e) => return Err(e.into()),
                };
                order.push(member);
                stack.extend(kids.into_iter().rev());
            }
            // A frozen process no longer reachable from the root left the tree.
            if let Some(m) = t
                .members
                .iter()
                .find(|m| !order.iter().any(|o| o.pid == m.pid))
            {
                return Err(left(
                    root,
                    m,
                    Step::Seize,
                    "it is no longer a descendant".into(),
                ));
            }
            t.sort(&order);
            t.zombies = zombies;
            if !changed {
                t.stopped_at = Instant::now();
                return Ok(t);
            }
        }
        Err(DumpError::Refused(format!(
            "the tree of pid {root} kept forking while haul froze it ({} processes after {ROUNDS} \
             rounds)",
            t.procs.len()
        )))
    }

    /// Puts `procs` and `members` in the order of `order` (tree order).
    fn sort(&mut self, order: &[TreeMember]) {
        let mut pairs: Vec<(Frozen, TreeMember)> =
            self.procs.drain(..).zip(self.members.drain(..)).collect();
        pairs.sort_by_key(|(f, _)| {
            order
                .iter()
                .position(|o| o.pid == f.pid)
                .unwrap_or(usize::MAX)
        });
        for (f, m) in pairs {
            self.procs.push(f);
            self.members.push(m);
        }
    }

    /// The pids of the living processes, tree order.
    pub fn pids(&self) -> Vec<i32> {
        self.procs.iter().map(|f| f.pid).collect()
    }

    /// How many processes the tree holds, zombies included.
    pub fn count(&self) -> usize {
        self.procs.len() + self.zombies.len()
    }

    /// How long the whole tree has been stopped so far.
    pub fn frozen_for(&self) -> std::time::Duration {
        self.stopped_at.elapsed()
    }

    /// Syscalls injected into every process so far.
    pub fn remote_syscalls(&self) -> u64 {
        self.procs.iter().map(|f| f.remote_syscalls()).sum()
    }

    /// The zombies as the image records them.
    pub fn zombie_images(&self) -> Vec<ZombieImage> {
        self.zombies
            .iter()
            .map(|z| ZombieImage {
                pid: z.pid,
                ppid: z.ppid,
                pgid: z.pgid,
                sid: z.sid,
                comm: z.comm.clone(),
                wait_status: z.exit_code as i32,
                exit_signal: z.exit_signal,
            })
            .collect()
    }

    /// Fails if a process of the tree went away (killed from outside) or the tree changed
    /// while frozen: the image would not be the tree any more.
    pub fn check_whole(&self, step: Step) -> Result<(), DumpError> {
        let root = self.procs.first().map(|f| f.pid).unwrap_or(0);
        for m in &self.members {
            if check::process_gone(m.pid) {
                let detail = "it was killed while frozen".to_string();
                if m.pid == root {
                    return Err(DumpError::Gone {
                        pid: root,
                        step,
                        detail,
                    });
                }
                return Err(left(root, m, step, detail));
            }
        }
        Ok(())
    }

    /// Lets every process go on (see [`Frozen::thaw`]); every one is thawed even if one
    /// fails, and the first error is returned.
    /// Repair mode ends first (a process never runs on a socket in repair mode), the network
    /// lock last (the peers' packets reach running processes).
    pub fn thaw(self) -> Result<(), DumpError> {
        let FrozenTree {
            repair,
            procs,
            lock,
            ..
        } = self;
        repair.resume();
        let mut first = None;
        for f in procs {
            if let Err(e) = f.thaw() {
                first.get_or_insert(e);
            }
        }
        if let Some(l) = lock {
            l.release();
        }
        first.map_or(Ok(()), Err)
    }

    /// Kills every process (SIGKILL, the deepest first), then collects each death as their
    /// tracer, so their parents (or, for orphans, the subreaper) can reap them. Each is sent
    /// its SIGKILL even if another's fails; the first error is returned.
    ///
    /// Established TCP sockets are closed still in repair mode (their peers are sent nothing),
    /// and the network lock is kept for the restore to release.
    /// `marks` gets `reap` once every SIGKILL is sent (the deaths are collected next). With
    /// `background` (and no connection or lock to deal with after the deaths), the deaths are
    /// collected on a thread of its own ([`join_deaths`] waits for it).
    ///
    /// A process holding much memory gets a memory keeper first (`dump::keeper`): its pid is
    /// free without waiting for its memory. Each keeper is ended once its process's death is
    /// collected, on a thread of its own. Returns their pids (orphans the launching haul
    /// reaps once they are gone).
    ///
    /// With `hand` and a tree of one process, its keeper is an adoptable one, handed over to
    /// the restore that follows (`DumpOptions::hand_keepers`).
    pub fn kill(
        self,
        marks: &mut Vec<crate::report::Mark>,
        background: bool,
        hand: bool,
    ) -> Result<Vec<i32>, DumpError> {
        let FrozenTree {
            repair,
            mut procs,
            lock,
            ..
        } = self;
        let mut first = None;
        let mut parents = vec![false; procs.len()];
        let keep = if hand && procs.len() == 1 {
            super::freeze::Keep::Adoptable
        } else {
            super::freeze::Keep::Yes
        };
        for (i, f) in procs.iter_mut().enumerate().rev() {
            match f.send_kill(keep) {
                Ok(p) => parents[i] = p,
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        let keepers: Vec<i32> = procs.iter().filter_map(Frozen::keeper_pid).collect();
        marks.push(super::mark("reap"));
        let end = |r: Result<(), DumpError>| r.map(|()| keepers.clone());
        let mut dying: Vec<(Frozen, bool)> = procs.into_iter().zip(parents).collect();
        if background && repair.is_empty() && lock.is_none() {
            // A thread of the tracer's thread group may wait for its tracees. The dying are
            // handed over once it runs: if it cannot be started, they are collected here.
            let (tx, rx) = std::sync::mpsc::channel::<Vec<(Frozen, bool)>>();
            let spawned = std::thread::Builder::new()
                .name("haul-deaths".into())
                .spawn(move || {
                    let kept: Vec<_> = rx
                        .into_iter()
                        .flatten()
                        .filter_map(|(f, p)| f.collect_death(p))
                        .collect();
                    for k in kept {
                        k.finish();
                    }
                });
            match spawned {
                Ok(h) => match tx.send(dying) {
                    Ok(()) => {
                        if let Ok(mut v) = DEATHS.lock() {
                            v.push(h);
                        }
                        return end(first.map_or(Ok(()), Err));
                    }
                    Err(std::sync::mpsc::SendError(back)) => dying = back,
                },
                Err(e) => tracing::warn!("collecting the deaths on a thread: {e}"),
            }
        }
        let kept: Vec<_> = dying
            .into_iter()
            .filter_map(|(f, p)| f.collect_death(p))
            .collect();
        end_keepers(kept);
        repair.close_silently();
        if let Some(l) = lock {
            if let Err(e) = l.keep() {
                tracing::warn!(error = %e, "the network lock could not be kept for the restore");
            }
        }
        end(first.map_or(Ok(()), Err))
    }

    /// The root alone, for the dumps that handle one process only (lazy); a tree of
    /// more is an internal error (they refuse trees before the freeze).
    pub fn into_root(mut self) -> Result<Frozen, DumpError> {
        if self.count() != 1 {
            return Err(DumpError::Internal(format!(
                "a dump of one process froze {} processes",
                self.count()
            )));
        }
        if !self.repair.is_empty() || self.lock.is_some() {
            // Dropping the tree thaws it, repair off first.
            return Err(DumpError::Refused(
                "a lazy dump (dump.lazy) does not carry established TCP connections yet: dump \
                 to the store and restore lazily from it instead"
                    .into(),
            ));
        }
        self.procs
            .pop()
            .ok_or_else(|| DumpError::Internal("the frozen tree has no root".into()))
    }
}

/// `e` about process `m` of the tree of `root`, naming it.
pub(crate) fn member_err(root: i32, m: &TreeMember, e: DumpError) -> DumpError {
    DumpError::Member {
        root,
        pid: m.pid,
        comm: m.comm.clone(),
        source: Box::new(e),
    }
}

/// Process `m` left the tree of `root` during `step`.
fn left(root: i32, m: &TreeMember, step: Step, detail: String) -> DumpError {
    member_err(
        root,
        m,
        DumpError::Gone {
            pid: m.pid,
            step,
            detail,
        },
    )
}

/// Refuses a tree of more than one process for a dump that handles one process only (`what`:
/// "a lazy dump"), naming the other processes. Before anything is frozen.
pub(crate) fn refuse_tree(root: i32, others: &[i32], what: &str) -> Result<(), DumpError> {
    if others.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = others.iter().map(|p| p.to_string()).collect();
    Err(DumpError::Unsupported(format!(
        "pid {root} has child processes ({}): {what} of a process tree is not supported yet",
        list.join(", ")
    )))
}

/// Each process's pages go to its own page space of the set: the address `a` of the process in
/// space `s` is handed to the sink as `image::page_key(s, a)`. Space 0 (the root) passes
/// addresses unchanged.
pub(crate) struct SpaceSink<'a> {
    pub inner: &'a mut dyn super::PageSink,
    pub space: u16,
}

impl super::PageSink for SpaceSink<'_> {
    fn add_pages(&mut self, addrs: &[u64], data: PageBuf) -> Result<(), DumpError> {
        if self.space == 0 {
            return self.inner.add_pages(addrs, data);
        }
        debug_assert_eq!(data.len(), addrs.len() * PAGE_SIZE);
        let keys: Vec<u64> = addrs
            .iter()
            .map(|&a| crate::image::page_key(self.space, a))
            .collect();
        self.inner.add_pages(&keys, data)
    }

    fn buffer(&mut self, len: usize) -> PageBuf {
        self.inner.buffer(len)
    }

    fn add_ref(&mut self, addr: u64, r: crate::image::PageRef) -> Result<(), DumpError> {
        self.inner
            .add_ref(crate::image::page_key(self.space, addr), r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::{PageSink, VecSink};
    use crate::image::{split_key, PageRef};

    #[test]
    fn a_space_sink_puts_addresses_in_its_page_space_and_space_0_keeps_them() {
        let mut inner = VecSink::default();
        {
            let mut s = SpaceSink {
                inner: &mut inner,
                space: 0,
            };
            s.add_pages(&[0x1000], PageBuf::copy_of(&[1; PAGE_SIZE]))
                .unwrap();
        }
        {
            let mut s = SpaceSink {
                inner: &mut inner,
                space: 3,
            };
            s.add_pages(
                &[0x1000, 0x7fff_f000],
                PageBuf::copy_of(&[2; 2 * PAGE_SIZE]),
            )
            .unwrap();
            s.add_ref(0x2000, PageRef::Zero).unwrap();
        }
        let keys: Vec<u64> = inner.pages.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys[0], 0x1000);
        assert_eq!(split_key(keys[1]), (3, 0x1000));
        assert_eq!(split_key(keys[2]), (3, 0x7fff_f000));
        assert_eq!(inner.pages[2].1[0], 2);
        assert_eq!(split_key(inner.refs[0].0), (3, 0x2000));
    }

    #[test]
    fn a_one_process_dump_refuses_a_tree_naming_the_others() {
        assert!(refuse_tree(10, &[], "pre-copy").is_ok());
        let e = refuse_tree(10, &[11, 14], "pre-copy").unwrap_err();
        assert!(e.is_refusal());
        assert_eq!(
            e.to_string(),
            "pid 10 has child processes (11, 14): pre-copy of a process tree is not supported yet"
        );
    }
}
