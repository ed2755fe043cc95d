//! The process tree below a process: its descendants, living and zombie, in *tree order* (the
//! root, then a preorder walk with each process's children by ascending pid), the order an
//! image set lists them in and a restore creates them in (every parent before its children).
//!
//! Read from `/proc/PID/task/*/children`, which is exact only while the process cannot fork
//! or reap (proc(5)): a dump reads it again once the processes are frozen.

use super::{children, stat, Result};

/// One process of a tree as `/proc` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeMember {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    /// State Z (or X): it has exited and its parent has not reaped it yet.
    pub zombie: bool,
    /// stat field 38.
    pub exit_signal: i32,
    /// stat field 52: a zombie's wait status (0 for a living process).
    pub exit_code: i64,
    pub pgid: i32,
    pub sid: i32,
}

/// The processes of the tree rooted at `root`, in tree order, `root` first. A process that
/// exits while it is read is left out (a dump finds the stable set under the freeze); a
/// `root` that does not exist is an error.
pub fn tree(root: i32) -> Result<Vec<TreeMember>> {
    let mut out = Vec::new();
    // Children are pushed in descending order, so that they come out ascending.
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        let st = match stat(pid) {
            Ok(st) => st,
            Err(e) if e.is_gone() && pid != root => continue,
            Err(e) => return Err(e),
        };
        let zombie = st.is_zombie();
        out.push(TreeMember {
            pid,
            ppid: st.ppid,
            comm: st.comm,
            zombie,
            exit_signal: st.exit_signal,
            exit_code: st.exit_code,
            pgid: st.pgrp,
            sid: st.session,
        });
        if zombie {
            // A zombie's children were handed to a reaper when it exited.
            continue;
        }
        let kids = match children(pid) {
            Ok(k) => k,
            Err(e) if e.is_gone() && pid != root => continue,
            Err(e) => return Err(e),
        };
        stack.extend(kids.into_iter().rev());
    }
    Ok(out)
}

/// Puts `(pid, ppid)` pairs of a tree rooted at `root` in tree order: the root, then a preorder
/// walk, each process's children by ascending pid. Pairs not connected to the root are left
/// out. (The pure rule behind [`tree`], for whoever holds a tree from elsewhere.)
pub fn tree_order(root: i32, procs: &[(i32, i32)]) -> Vec<i32> {
    let mut out = Vec::with_capacity(procs.len());
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if out.contains(&pid) {
            continue;
        }
        out.push(pid);
        let mut kids: Vec<i32> = procs
            .iter()
            .filter(|&&(p, pp)| pp == pid && p != pid)
            .map(|&(p, _)| p)
            .collect();
        kids.sort_unstable_by(|a, b| b.cmp(a));
        stack.extend(kids);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_order_is_preorder_with_children_by_ascending_pid() {
        // 10 -> {30, 20}; 20 -> {21}; 30 -> {5}; 99 is not in the tree.
        let procs = [(30, 10), (5, 30), (21, 20), (20, 10), (99, 1), (10, 1)];
        assert_eq!(tree_order(10, &procs), vec![10, 20, 21, 30, 5]);
        // Every parent comes before its children.
        let order = tree_order(10, &procs);
        for &(p, pp) in &procs {
            if let (Some(i), Some(j)) = (
                order.iter().position(|&x| x == p),
                order.iter().position(|&x| x == pp),
            ) {
                assert!(j < i, "{pp} after its child {p}");
            }
        }
        assert_eq!(tree_order(7, &procs), vec![7]);
    }

    #[test]
    fn own_tree_starts_with_itself() {
        let me = std::process::id() as i32;
        let t = tree(me).unwrap();
        assert_eq!(t[0].pid, me);
        assert!(!t[0].zombie);
        assert!(tree(i32::MAX).is_err());
    }
}
