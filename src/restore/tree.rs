//! The plan of a tree's restore: which process creates which child, and when; who makes a
//! session, who leads a process group and who joins one. Pure: it reads the image and haul's
//! own session and group, nothing else, so its rules are unit tests without root.
//!
//! **When a child is created.** A descendant is forked by an injected `clone3` in its parent
//! while the parent is still the parked copy (seized, rseq unregistered, scratch area mapped,
//! nothing of the image in it yet). So every process starts as the root does: with haul's
//! credentials and an address space that its own rebuild unmaps, and is rebuilt by the very
//! same steps from *seize* on. Later would not do: a child made after its parent's *creds*
//! would lack the privileges its own rebuild needs (and `clone3` with `set_tid` needs
//! `CAP_SYS_ADMIN` in the parent, which still has haul's credentials), and one made after its
//! parent's *files* or *map* would only inherit what its rebuild throws away. Threads come
//! later still (*threads*), so a parent forks while it has one thread, as a fork copies only
//! the caller.
//!
//! **Sessions** are inherited at fork and can only be left for a new one of one's own
//! (`setsid`), so a child in a session not its own must be forked while its parent is in that
//! session: before the parent's `setsid` if the child stayed in the session the parent left,
//! after it otherwise. A session leader of the tree calls `setsid` itself. The root does as a
//! lone process does (`fs::session_plan`); its own session, when it leads none, is outside the
//! tree, and descendants in it follow the root into whatever session the root gets.
//!
//! **Process groups** live in one session, and `setpgid(0, g)` needs group `g` to exist there:
//! once every process exists in its session, the group leaders (not session leaders, whose
//! `setsid` made their group) call `setpgid(0, 0)`, then every member joins its leader's
//! group. A member of the root's group that the root does not lead (outside the tree) joins
//! the group the root ends up in.
//!
//! A session or group whose leader is neither in the tree nor the root's own is refused
//! before anything is created, naming the pid and the id; so is a child that left its
//! parent's session in a way a fork cannot rebuild.

use std::collections::BTreeMap;

use super::fs::Session;
use crate::image::{ImageSet, ProcessImage, ZombieImage};

/// A child to create: a living descendant (index into `ImageSet::processes()`, ≥ 1) or a
/// zombie (index into `tree.zombies`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Child {
    Living(usize),
    Zombie(usize),
}

/// What a process does about its process group once every process of the tree exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Group {
    /// Nothing: its `setsid` made it the leader of its group (or it stays in haul's).
    Keep,
    /// `setpgid(0, 0)`: it leads a group of its own.
    Lead,
    /// The root only: into haul's group `g`, or a group of its own if that one is gone
    /// (`fs::session_plan`).
    Haul(i32),
    /// `setpgid(0, pid of leader)`, the leader being this process of the tree (image pid).
    Join(i32),
    /// Into the group the root ends up in (the root's group is outside the tree).
    JoinRoot,
}

/// What one process (living or zombie) does while the tree is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Node {
    /// Its image pid.
    pub pid: i32,
    /// `setsid` once it exists, between the two lists of children.
    pub setsid: bool,
    /// Children forked before its `setsid` (they stay in the session it leaves).
    pub before: Vec<Child>,
    /// Children forked after it (or all of them, when it makes no session).
    pub after: Vec<Child>,
    pub group: Group,
}

/// The whole plan: one node per living process in `ImageSet::processes()` order, one per
/// zombie in `tree.zombies` order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Plan {
    pub living: Vec<Node>,
    pub zombies: Vec<Node>,
}

impl Plan {
    /// The group step of every process, leaders first (they make the groups members join).
    pub fn group_order(&self) -> Vec<(Child, Group)> {
        let all = self
            .living
            .iter()
            .enumerate()
            .map(|(i, n)| (Child::Living(i), n.group))
            .chain(
                self.zombies
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (Child::Zombie(i), n.group)),
            );
        let (lead, join): (Vec<_>, Vec<_>) = all
            .filter(|(_, g)| *g != Group::Keep)
            .partition(|(_, g)| matches!(g, Group::Lead | Group::Haul(_)));
        lead.into_iter().chain(join).collect()
    }
}

/// Ids of sessions in the plan: the root's own (which it leads, or the outside one it was in,
/// which it leaves for a session of its own or stays in), haul's (the root is born there), or
/// the session a descendant leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sid {
    Root,
    Haul,
    Led(i32),
}

/// What the plan needs of a living process or a zombie.
struct Member {
    pid: i32,
    ppid: i32,
    sid: i32,
    pgid: i32,
    zombie: bool,
}

impl Member {
    fn of(p: &ProcessImage) -> Member {
        Member {
            pid: p.pid,
            ppid: p.ppid,
            sid: p.sid,
            pgid: p.pgid,
            zombie: false,
        }
    }
    fn of_zombie(z: &ZombieImage) -> Member {
        Member {
            pid: z.pid,
            ppid: z.ppid,
            sid: z.sid,
            pgid: z.pgid,
            zombie: true,
        }
    }
}

/// Why a tree cannot be rebuilt as it is (the message names pid and id). It ends up as the
/// reason of [`super::RestoreError::Incompatible`], which carries text (a known debt).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refusal(pub String);

impl From<&str> for Refusal {
    fn from(why: &str) -> Refusal {
        Refusal(why.to_string())
    }
}

/// Plans the creation of `set`'s tree; `ours` is haul's (session, process group). A one-process
/// set gets the root's plan of a lone process.
pub(super) fn plan(set: &ImageSet, ours: (i32, i32)) -> Result<Plan, Refusal> {
    let living: Vec<&ProcessImage> = set.processes().map(|(_, p)| p).collect();
    let Some(root) = living.first().copied() else {
        return Err(Refusal("the set holds no process".into()));
    };
    let members: Vec<Member> = living
        .iter()
        .map(|p| Member::of(p))
        .chain(set.tree.zombies.iter().map(Member::of_zombie))
        .collect();
    let index: BTreeMap<i32, usize> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.pid, i))
        .collect();
    if index.len() != members.len() {
        return Err(Refusal("a pid appears twice in the tree".into()));
    }
    let n_living = living.len();
    let is_tree = |pid: i32| index.contains_key(&pid);

    // Parents: the root's is outside; every other process's is a living process before it.
    for (i, m) in members.iter().enumerate().skip(1) {
        match index.get(&m.ppid) {
            Some(&j) if j < n_living && (m.zombie || j < i) => {}
            _ => {
                return Err(Refusal(format!(
                    "pid {} has parent {}, which is not a living process restored before it",
                    m.pid, m.ppid
                )))
            }
        }
    }

    // The session each process ends in.
    let root_plan = super::fs::session_plan(root, ours);
    let norm = |sid: i32| -> Result<Sid, ()> {
        if sid == root.sid || sid == root.pid {
            Ok(Sid::Root)
        } else if is_tree(sid) {
            Ok(Sid::Led(sid))
        } else {
            Err(())
        }
    };
    let mut setsid = vec![false; members.len()];
    let mut final_sid = vec![Sid::Root; members.len()];
    for (i, m) in members.iter().enumerate() {
        if i == 0 {
            setsid[0] = root_plan == Session::New;
            continue;
        }
        if m.sid == m.pid {
            setsid[i] = true;
            final_sid[i] = Sid::Led(m.pid);
            continue;
        }
        match norm(m.sid) {
            Ok(s) => final_sid[i] = s,
            Err(()) => {
                return Err(Refusal(format!(
                    "pid {} is in session {}, whose leader is neither in the tree nor the root's \
                     own session",
                    m.pid, m.sid
                )))
            }
        }
        if let Sid::Led(l) = final_sid[i] {
            let leader = &members[index[&l]];
            if leader.sid != leader.pid {
                return Err(Refusal(format!(
                    "pid {} is in session {}, but pid {l} of the tree no longer leads it",
                    m.pid, m.sid
                )));
            }
        }
    }
    let root_born = if setsid[0] { Sid::Haul } else { Sid::Root };

    // When each child is forked: the session it is to be in must be its parent's at that time.
    let mut born = vec![root_born; members.len()];
    let mut nodes: Vec<Node> = members
        .iter()
        .enumerate()
        .map(|(i, m)| Node {
            pid: m.pid,
            setsid: setsid[i],
            before: Vec::new(),
            after: Vec::new(),
            group: Group::Keep,
        })
        .collect();
    // Living children first, then zombies, each in image order.
    for (i, m) in members.iter().enumerate().skip(1) {
        let parent = index[&m.ppid];
        let child = if m.zombie {
            Child::Zombie(i - n_living)
        } else {
            Child::Living(i)
        };
        // The parent's session before and after its setsid.
        let (p_before, p_after) = (born[parent], final_sid[parent]);
        let early = if setsid[i] || final_sid[i] == p_after {
            false
        } else if setsid[parent] && final_sid[i] == p_before {
            true
        } else {
            return Err(Refusal(format!(
                "pid {} is in session {}, which its parent (pid {}) is not in and did not leave \
                 after forking it: a fork cannot put it back there",
                m.pid, m.sid, m.ppid
            )));
        };
        born[i] = if early { p_before } else { p_after };
        if early {
            nodes[parent].before.push(child);
        } else {
            nodes[parent].after.push(child);
        }
    }

    // Process groups.
    for (i, m) in members.iter().enumerate() {
        if i == 0 {
            nodes[0].group = match root_plan {
                Session::New | Session::Stay => Group::Keep,
                Session::Group(0) => Group::Lead,
                Session::Group(g) => Group::Haul(g),
            };
            continue;
        }
        nodes[i].group = if setsid[i] {
            if m.pgid != m.pid {
                return Err(Refusal(format!(
                    "pid {} leads session {} but is in process group {}: a session leader \
                     cannot change its group",
                    m.pid, m.sid, m.pgid
                )));
            }
            Group::Keep
        } else if m.pgid == m.pid {
            Group::Lead
        } else if is_tree(m.pgid) && m.pgid != root.pid {
            let l = &members[index[&m.pgid]];
            if l.pgid != l.pid {
                return Err(Refusal(format!(
                    "pid {} is in process group {}, but pid {} of the tree left it",
                    m.pid, m.pgid, l.pid
                )));
            }
            if final_sid[index[&m.pgid]] != final_sid[i] {
                return Err(Refusal(format!(
                    "pid {} is in process group {}, whose leader is in another session",
                    m.pid, m.pgid
                )));
            }
            Group::Join(m.pgid)
        } else if m.pgid == root.pgid {
            if final_sid[i] != final_sid[0] {
                return Err(Refusal(format!(
                    "pid {} is in process group {} (the root's) but not in the root's session",
                    m.pid, m.pgid
                )));
            }
            Group::JoinRoot
        } else {
            return Err(Refusal(format!(
                "pid {} is in process group {}, whose leader is neither in the tree nor the \
                 root's own group",
                m.pid, m.pgid
            )));
        };
    }
    let zombies = nodes.split_off(n_living);
    Ok(Plan {
        living: nodes,
        zombies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{SetKind, Tree};

    fn proc(pid: i32, ppid: i32, pgid: i32, sid: i32) -> ProcessImage {
        ProcessImage {
            pid,
            ppid,
            pgid,
            sid,
            ..Default::default()
        }
    }

    fn zombie(pid: i32, ppid: i32, pgid: i32, sid: i32) -> ZombieImage {
        ZombieImage {
            pid,
            ppid,
            pgid,
            sid,
            ..Default::default()
        }
    }

    fn set(all: Vec<ProcessImage>, zombies: Vec<ZombieImage>) -> ImageSet {
        let mut it = all.into_iter();
        ImageSet {
            id: "s".into(),
            job: "j".into(),
            created_us: 0,
            kind: SetKind::Dump,
            parent: None,
            kernel: String::new(),
            process: it.next(),
            tree: Tree {
                descendants: it.collect(),
                zombies,
                ..Default::default()
            },
            pages: Default::default(),
            figures: Default::default(),
        }
    }

    const HAUL: (i32, i32) = (5, 5);

    #[test]
    fn a_shell_with_background_jobs_in_its_own_session_and_group() {
        // sh (100) leads session and group; two jobs stay in both; one zombie job.
        let s = set(
            vec![
                proc(100, 1, 100, 100),
                proc(101, 100, 100, 100),
                proc(102, 100, 100, 100),
            ],
            vec![zombie(103, 100, 100, 100)],
        );
        let p = plan(&s, HAUL).unwrap();
        assert!(p.living[0].setsid);
        assert_eq!(p.living[0].before, []);
        assert_eq!(
            p.living[0].after,
            [Child::Living(1), Child::Living(2), Child::Zombie(0)]
        );
        // The root leads their group: they join whatever group the root ends up in.
        assert_eq!(p.living[1].group, Group::JoinRoot);
        assert_eq!(p.zombies[0].group, Group::JoinRoot);
        assert!(!p.living[1].setsid);
    }

    #[test]
    fn leaders_come_before_members_and_session_leaders_do_nothing() {
        // Root in haul's session and group; child 11 leads a group that 12 and zombie 13 join;
        // child 14 leads its own session.
        let s = set(
            vec![
                proc(10, 1, 5, 5),
                proc(11, 10, 11, 5),
                proc(12, 11, 11, 5),
                proc(14, 10, 14, 14),
            ],
            vec![zombie(13, 11, 11, 5)],
        );
        let p = plan(&s, HAUL).unwrap();
        assert_eq!(p.living[0].group, Group::Haul(5));
        assert_eq!(
            p.group_order(),
            [
                (Child::Living(0), Group::Haul(5)),
                (Child::Living(1), Group::Lead),
                (Child::Living(2), Group::Join(11)),
                (Child::Zombie(0), Group::Join(11)),
            ]
        );
        assert!(p.living[3].setsid);
        assert_eq!(p.living[3].group, Group::Keep);
        assert_eq!(p.living[0].after, [Child::Living(1), Child::Living(3)]);
        assert_eq!(p.living[1].after, [Child::Living(2), Child::Zombie(0)]);
    }

    #[test]
    fn a_child_left_in_the_session_its_parent_left_is_forked_before_the_parents_setsid() {
        // Root leads session 10; child 11 made session 11 after forking 12, which stayed in 10.
        let s = set(
            vec![
                proc(10, 1, 10, 10),
                proc(11, 10, 11, 11),
                proc(12, 11, 10, 10),
            ],
            vec![],
        );
        let p = plan(&s, HAUL).unwrap();
        assert!(p.living[1].setsid);
        assert_eq!(p.living[1].before, [Child::Living(2)]);
        assert_eq!(p.living[1].after, []);
        assert_eq!(p.living[2].group, Group::JoinRoot);
    }

    #[test]
    fn members_of_the_roots_outside_group_follow_the_root() {
        // The root is in haul's session and a group led outside the tree (by 7).
        let s = set(vec![proc(10, 1, 7, 5), proc(11, 10, 7, 5)], vec![]);
        let p = plan(&s, (5, 7)).unwrap();
        assert_eq!(p.living[0].group, Group::Haul(7));
        assert_eq!(p.living[1].group, Group::JoinRoot);
        assert!(!p.living[0].setsid && !p.living[1].setsid);
    }

    #[test]
    fn a_session_or_group_led_outside_the_tree_is_refused_naming_pid_and_id() {
        let s = set(vec![proc(10, 1, 10, 10), proc(11, 10, 99, 10)], vec![]);
        let e = plan(&s, HAUL).unwrap_err().0;
        assert!(
            e.contains("pid 11") && e.contains("process group 99"),
            "{e}"
        );
        let s = set(vec![proc(10, 1, 10, 10), proc(11, 10, 11, 98)], vec![]);
        let e = plan(&s, HAUL).unwrap_err().0;
        assert!(e.contains("pid 11") && e.contains("session 98"), "{e}");
        let s = set(vec![proc(10, 1, 10, 10)], vec![zombie(12, 10, 97, 10)]);
        let e = plan(&s, HAUL).unwrap_err().0;
        assert!(
            e.contains("pid 12") && e.contains("process group 97"),
            "{e}"
        );
    }

    #[test]
    fn a_parent_not_restored_before_its_child_is_refused() {
        let s = set(vec![proc(10, 1, 10, 10), proc(11, 12, 10, 10)], vec![]);
        let e = plan(&s, HAUL).unwrap_err().0;
        assert!(e.contains("pid 11 has parent 12"), "{e}");
        let s = set(vec![proc(10, 1, 10, 10)], vec![zombie(12, 13, 10, 10)]);
        assert!(plan(&s, HAUL)
            .unwrap_err()
            .0
            .contains("pid 12 has parent 13"));
    }

    #[test]
    fn a_lone_process_gets_the_plan_of_today() {
        let s = set(vec![proc(10, 1, 10, 10)], vec![]);
        let p = plan(&s, HAUL).unwrap();
        assert!(p.living[0].setsid);
        assert_eq!(p.living[0].group, Group::Keep);
        let s = set(vec![proc(10, 1, 10, 5)], vec![]);
        let p = plan(&s, HAUL).unwrap();
        assert!(!p.living[0].setsid);
        assert_eq!(p.living[0].group, Group::Lead);
        assert_eq!(p.group_order(), [(Child::Living(0), Group::Lead)]);
    }
}
