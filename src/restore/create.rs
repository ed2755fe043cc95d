//! Creating the processes of a tree (the plan is `tree.rs`): the root parked as a lone process
//! is, every descendant and zombie forked by an injected `clone3` in its parent, each seized,
//! its session and group set; then the zombies end with their status. Holds the guard that
//! kills every process made so far when anything fails.

use super::error::{StepError, StepResult};
use super::layout::{ARGS_LEN, ARGS_OFF};
use super::tree::{Child, Group, Plan};
use super::{memory, RestoreError, Step};
use crate::image::{ImageSet, ProcessImage, ZombieImage};
use crate::sys::ptrace;
use crate::sys::remote::{self, RemoteSyscall};

/// A living process of the tree being rebuilt.
pub(super) struct Proc<'a> {
    pub p: &'a ProcessImage,
    pub space: u16,
    /// Its pid here (the image's with `pid = "same"`); 0 until it is made.
    pub pid: i32,
    /// Injection into its main thread (None until it is seized, and once it is let go).
    pub rs: Option<RemoteSyscall>,
    pub scratch: u64,
    /// Every thread made so far, main first, with its thread-private pending set.
    pub threads: Vec<(i32, u64)>,
}

/// A zombie of the tree, alive (parked) until [`end_zombies`].
pub(super) struct Zombie<'a> {
    pub z: &'a ZombieImage,
    pub pid: i32,
    /// Index of its parent in [`Made::living`].
    pub parent: usize,
    pub rs: Option<RemoteSyscall>,
    pub ended: bool,
}

/// Every process of the set, made or not yet (`living` in `ImageSet::processes()` order, with pid
/// 0 until made; `zombies` as they are made). Unless disarmed, dropping it kills them all and reaps what haul
/// traces, so that nothing half-built is left (the processes' parents, or init, reap them).
pub(super) struct Made<'a> {
    pub living: Vec<Proc<'a>>,
    pub zombies: Vec<Zombie<'a>>,
    pub armed: bool,
}

impl Drop for Made<'_> {
    fn drop(&mut self) {
        // Injection sessions first: they put registers back in stopped processes.
        for p in &mut self.living {
            p.rs = None;
        }
        for z in &mut self.zombies {
            z.rs = None;
        }
        if !self.armed {
            return;
        }
        for p in self.made() {
            let _ = crate::sys::process::kill(p.pid, libc::SIGKILL);
        }
        for z in self.zombies.iter().filter(|z| !z.ended) {
            let _ = crate::sys::process::kill(z.pid, libc::SIGKILL);
        }
        // haul traces them: reap the traces so that their parents (or init) can reap them (a
        // traced thread stays a zombie until its tracer waits for it).
        for p in self.made() {
            for &(tid, _) in p.threads.iter().skip(1) {
                let _ = ptrace::wait_stop(tid);
            }
            let _ = ptrace::wait_stop(p.pid);
        }
        for z in self.zombies.iter().filter(|z| !z.ended) {
            let _ = ptrace::wait_stop(z.pid);
        }
    }
}

impl<'a> Made<'a> {
    /// Every set's process, not yet made (root first, as [`ImageSet::processes`]).
    pub fn new(set: &'a ImageSet) -> Made<'a> {
        Made {
            living: set
                .processes()
                .map(|(space, p)| Proc {
                    p,
                    space,
                    pid: 0,
                    rs: None,
                    scratch: 0,
                    threads: Vec::new(),
                })
                .collect(),
            zombies: Vec::new(),
            armed: true,
        }
    }

    /// The living processes made so far (never pid 0: a kill of 0 is one of the caller's group).
    fn made(&self) -> impl Iterator<Item = &Proc<'a>> {
        self.living.iter().filter(|p| p.pid > 0)
    }

    /// Records that living process `i` was made with `pid`.
    pub fn made_as(&mut self, i: usize, pid: i32) {
        self.living[i].pid = pid;
        self.living[i].threads = vec![(pid, 0)];
    }

    /// The pid here of image pid `pid` (a living process or a zombie made so far).
    pub fn pid_of(&self, pid: i32) -> Option<i32> {
        self.made()
            .find(|p| p.p.pid == pid)
            .map(|p| p.pid)
            .or_else(|| self.zombies.iter().find(|z| z.z.pid == pid).map(|z| z.pid))
    }

    /// (image pid, pid here) of every process made, living ones in tree order, then zombies.
    pub fn pids(&self) -> Vec<(i32, i32)> {
        self.made()
            .map(|p| (p.p.pid, p.pid))
            .chain(self.zombies.iter().map(|z| (z.z.pid, z.pid)))
            .collect()
    }
}

/// Names the failure of a step: the step, and for a process other than the root, its pid.
pub(super) struct Ctx<'a> {
    pub set: &'a ImageSet,
    pub fail_at: Option<Step>,
    pub root: i32,
}

impl Ctx<'_> {
    pub fn err(&self, step: Step, pid: i32, source: StepError) -> RestoreError {
        let source = if pid == self.root {
            source
        } else {
            source.at(format!("pid {pid}"))
        };
        RestoreError::Step {
            set: self.set.id.clone(),
            step,
            source: Box::new(source),
        }
    }
    /// Enters a step: fails on purpose when the test switch names it.
    pub fn enter(&self, step: Step, pid: i32) -> Result<(), RestoreError> {
        if self.fail_at == Some(step) {
            return Err(self.err(step, pid, StepError::TestSwitch));
        }
        tracing::debug!(set = %self.set.id, pid, "restore step {step}");
        Ok(())
    }
    /// Runs `f` as step `s` of image pid `pid`, turning its error into a [`RestoreError::Step`].
    pub fn step<T, E: Into<StepError>>(
        &self,
        s: Step,
        pid: i32,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, RestoreError> {
        self.enter(s, pid)?;
        f().map_err(|e| self.err(s, pid, e.into()))
    }
}

/// The current mappings of `pid` as (start, end, path).
pub(super) fn maps(pid: i32) -> StepResult<Vec<(u64, u64, String)>> {
    Ok(crate::proc::maps(pid)?
        .into_iter()
        .map(|m| (m.start, m.end, m.path))
        .collect())
}

/// Seizes the root, parked by `spawn_parked`: `PTRACE_SEIZE` and an interrupt.
pub(super) fn seize_root(pid: i32) -> Result<(), crate::sys::SysError> {
    // Syscall stops of injected syscalls report SIGTRAP|0x80 (threads and children made later
    // inherit it).
    ptrace::seize(pid, ptrace::PTRACE_O_TRACESYSGOOD)?;
    ptrace::interrupt(pid)?;
    loop {
        if let ptrace::Stop::Event { .. } = ptrace::wait_stop(pid)? {
            return Ok(());
        }
        // A signal-delivery stop before the interrupt: let it go and wait again.
        ptrace::cont(pid, 0)?;
    }
}

/// Waits for the first stop of a child made by [`fork_child`] (it starts traced, with a
/// `PTRACE_EVENT_STOP` before its first instruction).
fn first_stop(pid: i32) -> StepResult {
    match ptrace::wait_stop(pid)? {
        ptrace::Stop::Event { .. } => Ok(()),
        stop => Err(StepError::FirstStop { tid: pid, stop }),
    }
}

/// The parked process `i` once seized: rseq unregistered and the scratch area mapped. Then its
/// session (children that stay in the one it leaves are forked first) and its children.
pub(super) fn prepare<'a>(
    c: &Ctx<'a>,
    made: &mut Made<'a>,
    plan: &Plan,
    i: usize,
    same: bool,
) -> Result<(), RestoreError> {
    let (pid, ipid) = (made.living[i].pid, made.living[i].p.pid);
    let p = made.living[i].p;
    if i > 0 {
        c.step(Step::Seize, ipid, || first_stop(pid))?;
    }
    let mut rs = c.step(Step::Seize, ipid, || RemoteSyscall::new(pid, pid))?;
    c.step(Step::Rseq, ipid, || -> StepResult {
        if let Some(r) = ptrace::get_rseq_config(pid)? {
            let (addr, len, sig) = (r.rseq_abi_pointer, r.rseq_abi_size, r.signature);
            remote::rseq_unregister(&mut rs, addr, len, sig)?;
        }
        Ok(())
    })?;
    let scratch = c.step(Step::Scratch, ipid, || -> StepResult<u64> {
        let now: Vec<(u64, u64)> = maps(pid)?.iter().map(|m| (m.0, m.1)).collect();
        let addr = memory::map_scratch(&mut rs, &now, p)?;
        rs.set_insn(addr);
        rs.set_args_area(addr + ARGS_OFF, ARGS_LEN);
        Ok(addr)
    })?;
    made.living[i].scratch = scratch;
    made.living[i].rs = Some(rs);
    let node = &plan.living[i];
    for &child in &node.before {
        fork_child(c, made, plan, i, child, same)?;
    }
    if node.setsid {
        c.step(Step::Fs, ipid, || {
            session(made.living[i].rs.as_mut().expect("seized"), p.pid, p.sid)
        })?;
    }
    for &child in &node.after {
        fork_child(c, made, plan, i, child, same)?;
    }
    Ok(())
}

/// `setsid` in the process `rs` drives (image pid `pid`, session `sid`).
fn session(rs: &mut RemoteSyscall, pid: i32, sid: i32) -> StepResult {
    if sid != pid {
        tracing::warn!(
            pid,
            sid,
            "the process's session is not haul's: it gets a session of its own"
        );
    }
    remote::setsid(rs).map_err(|e| StepError::from(e).at("session"))
}

/// Forks `child` of living process `i` by an injected `clone3` (with its pid when `same`, its
/// exit signal, `CLONE_FILES` when it shares its parent's fd table). A zombie is seized and
/// given its session at once (it has no rebuild of its own).
fn fork_child<'a>(
    c: &Ctx<'a>,
    made: &mut Made<'a>,
    plan: &Plan,
    i: usize,
    child: Child,
    same: bool,
) -> Result<(), RestoreError> {
    let set = c.set;
    let (ipid, exit_signal, files) = match child {
        Child::Living(j) => {
            let p = set.processes().nth(j).map(|(_, p)| p).expect("planned");
            (p.pid, p.exit_signal, p.files_of.is_some())
        }
        Child::Zombie(j) => {
            let z = &set.tree.zombies[j];
            (z.pid, z.exit_signal, false)
        }
    };
    let parent = made.living[i].pid;
    let pid = c.step(Step::Spawn, ipid, || -> StepResult<i32> {
        let rs = made.living[i].rs.as_mut().expect("seized");
        let what = format!("clone3 of child {ipid} in pid {parent}");
        let pid = remote::clone3_process(rs, files, exit_signal, same.then_some(ipid), &what)?;
        Ok(pid)
    })?;
    match child {
        Child::Living(j) => made.made_as(j, pid),
        Child::Zombie(j) => {
            let z = &set.tree.zombies[j];
            made.zombies.push(Zombie {
                z,
                pid,
                parent: i,
                rs: None,
                ended: false,
            });
            let scratch = made.living[i].scratch;
            let mut rs = c.step(Step::Seize, ipid, || -> StepResult<RemoteSyscall> {
                first_stop(pid)?;
                let mut rs = RemoteSyscall::new(pid, pid)?;
                // A copy of its parent's scratch area is at the same address.
                rs.set_insn(scratch);
                rs.set_args_area(scratch + ARGS_OFF, ARGS_LEN);
                Ok(rs)
            })?;
            if plan.zombies[j].setsid {
                c.step(Step::Fs, ipid, || session(&mut rs, z.pid, z.sid))?;
            }
            made.zombies.last_mut().expect("pushed").rs = Some(rs);
        }
    }
    if same && pid != ipid {
        return Err(c.err(
            Step::Spawn,
            ipid,
            StepError::ChildPid {
                want: ipid,
                got: pid,
            },
        ));
    }
    Ok(())
}

/// Every process into its process group, leaders first (step *fs*).
pub(super) fn groups(c: &Ctx<'_>, made: &mut Made<'_>, plan: &Plan) -> Result<(), RestoreError> {
    for (who, g) in plan.group_order() {
        let ipid = match who {
            Child::Living(i) => made.living[i].p.pid,
            Child::Zombie(i) => made.zombies[i].z.pid,
        };
        let target = match g {
            Group::Keep | Group::Lead | Group::Haul(_) => 0,
            Group::Join(l) => made.pid_of(l).expect("planned"),
            // The root has its group by now (leaders come first).
            Group::JoinRoot => {
                let root = made.living[0].pid;
                c.step(Step::Fs, ipid, || crate::proc::stat(root).map(|s| s.pgrp))?
            }
        };
        let rs = match who {
            Child::Living(i) => made.living[i].rs.as_mut(),
            Child::Zombie(i) => made.zombies[i].rs.as_mut(),
        }
        .expect("seized");
        c.step(Step::Fs, ipid, || -> StepResult {
            let r = match g {
                Group::Keep => Ok(()),
                Group::Lead => remote::setpgid(rs, 0),
                Group::Haul(g) => {
                    // haul's group is gone: a group of its own is the nearest thing.
                    remote::setpgid(rs, g).or_else(|_| remote::setpgid(rs, 0))
                }
                // The root's group reads 0 when its leader is outside our PID namespace: it
                // cannot be named, and the process stays in the group it was born in (0
                // would make it a group of its own).
                Group::JoinRoot if target == 0 => Ok(()),
                Group::Join(_) | Group::JoinRoot => remote::setpgid(rs, target),
            };
            r.map_err(|e| StepError::from(e).at("process group"))
        })?;
    }
    Ok(())
}

/// Ends every zombie with its status (step *spawn*: they are made as they were found), after
/// giving it its name; the signal its parent got for it is taken out of the parent's pending
/// set again, so that the parent's pending signals are the image's alone.
pub(super) fn end_zombies(c: &Ctx<'_>, made: &mut Made<'_>) -> Result<(), RestoreError> {
    for k in 0..made.zombies.len() {
        let (z, pid, parent) = {
            let z = &made.zombies[k];
            (z.z, z.pid, z.parent)
        };
        let mut rs = made.zombies[k].rs.take().expect("seized");
        c.step(Step::Spawn, z.pid, || -> StepResult {
            remote::set_name(&mut rs, &z.comm)?;
            // A signal that dumps core must not: no core file, and no "core dumped" bit the
            // image does not have (check_compat refused the status with it).
            remote::prctl(
                &mut rs,
                [libc::PR_SET_DUMPABLE as u64, 0, 0, 0, 0],
                "prctl PR_SET_DUMPABLE",
            )?;
            Ok(())
        })?;
        let got = c.step(Step::Spawn, z.pid, || rs.end_process(z.wait_status))?;
        made.zombies[k].ended = true;
        if got != z.wait_status {
            return Err(c.err(
                Step::Spawn,
                z.pid,
                StepError::ZombieStatus {
                    pid,
                    want: z.wait_status,
                    got,
                },
            ));
        }
        if z.exit_signal > 0 {
            let ppid = made.living[parent].p.pid;
            let prs = made.living[parent].rs.as_mut().expect("seized");
            c.step(Step::Spawn, ppid, || {
                remote::take_pending(prs, z.exit_signal).map(|_| ())
            })?;
        }
    }
    Ok(())
}
