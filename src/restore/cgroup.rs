//! Cgroups: the restored process, and each thread that sat elsewhere (threaded cgroups), goes
//! back into the cgroup of each hierarchy it was dumped from. haul writes the ids into the
//! hierarchy's files itself (`cgroup.procs`, and `cgroup.threads` or v1's `tasks` for a
//! thread): nothing is injected. A cgroup that no longer exists fails the compatibility check,
//! naming it, before anything is created.

use std::path::{Path, PathBuf};

use crate::image::{CgroupPlace, ProcessImage};

/// Why a process cannot be put back into its cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading haul's own cgroups: {0}")]
    Own(#[source] crate::proc::ProcError),
    #[error("cgroup hierarchy {id}:{controllers} is not mounted here")]
    NotMounted { id: u32, controllers: String },
    #[error("cgroup {path} is outside the part of hierarchy {id}:{controllers} mounted at {at}")]
    Outside {
        path: String,
        id: u32,
        controllers: String,
        at: PathBuf,
    },
    #[error("its cgroup {path} ({dir}) no longer exists: create it, or restore elsewhere")]
    Gone { path: String, dir: PathBuf },
    #[error("moving {id} into cgroup {file}: {source}")]
    Move {
        id: i32,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A cgroup hierarchy mounted in haul's mount namespace.
#[derive(Debug)]
struct Mount {
    /// `cgroup2`, or v1's controllers (and `name=...`) from the super options.
    v2: bool,
    options: Vec<String>,
    /// The cgroup at the mount's root, and where it is mounted.
    root: String,
    at: PathBuf,
}

/// The cgroup file systems of `/proc/self/mountinfo` (see proc_pid_mountinfo(5)).
fn mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mounts(&text)
}

fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next()?;
            let superopts = right.next().unwrap_or("");
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            Some(Mount {
                v2,
                options: superopts.split(',').map(String::from).collect(),
                root: left.get(3)?.to_string(),
                at: PathBuf::from(unescape(left.get(4)?)),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The directory of cgroup `place` in the mounts, or why there is none.
fn dir_of(place: &CgroupPlace, mounts: &[Mount]) -> Result<PathBuf, CgroupError> {
    let m = mounts
        .iter()
        .find(|m| {
            if place.id == 0 && place.controllers.is_empty() {
                m.v2
            } else {
                !m.v2
                    && place
                        .controllers
                        .split(',')
                        .all(|c| m.options.iter().any(|o| o == c))
            }
        })
        .ok_or_else(|| CgroupError::NotMounted {
            id: place.id,
            controllers: place.controllers.clone(),
        })?;
    let rel = if m.root == "/" {
        Some(place.path.as_str())
    } else {
        place.path.strip_prefix(m.root.as_str())
    }
    .ok_or_else(|| CgroupError::Outside {
        path: place.path.clone(),
        id: place.id,
        controllers: place.controllers.clone(),
        at: m.at.clone(),
    })?;
    Ok(m.at.join(rel.trim_start_matches('/')))
}

/// The places of `p` (and of its threads) that are not where haul itself is: the only ones a
/// restore must move it into (a process haul spawns starts in haul's cgroups).
fn to_move<'a>(p: &'a ProcessImage, own: &[CgroupPlace]) -> Vec<&'a CgroupPlace> {
    let mut v: Vec<&CgroupPlace> = p.cgroups.iter().filter(|c| !own.contains(c)).collect();
    for t in &p.threads {
        v.extend(t.cgroups.iter().filter(|c| !own.contains(c)));
    }
    v
}

/// Every cgroup the restore must put the process in exists here, or the reason.
pub(super) fn check(p: &ProcessImage) -> Result<(), CgroupError> {
    let own =
        crate::proc::cgroups(crate::sys::process::getpid(), None).map_err(CgroupError::Own)?;
    let mounts = mounts();
    for c in to_move(p, &own) {
        let dir = dir_of(c, &mounts)?;
        if !dir.is_dir() {
            return Err(CgroupError::Gone {
                path: c.path.clone(),
                dir,
            });
        }
    }
    Ok(())
}

/// Writes `id` into `file` of cgroup directory `dir`.
fn join(dir: &Path, file: &str, id: i32) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, id.to_string()).map_err(|source| CgroupError::Move {
        id,
        file: path,
        source,
    })
}

/// Puts process `pid` into the cgroups of `p`, then each thread (`threads[i]` is the new tid
/// of `p.threads[i]`) whose cgroups differ into its own.
pub(super) fn place(pid: i32, p: &ProcessImage, threads: &[i32]) -> Result<(), CgroupError> {
    let own =
        crate::proc::cgroups(crate::sys::process::getpid(), None).map_err(CgroupError::Own)?;
    let mounts = mounts();
    for c in p.cgroups.iter().filter(|c| !own.contains(c)) {
        join(&dir_of(c, &mounts)?, "cgroup.procs", pid)?;
    }
    for (t, tid) in p.threads.iter().zip(threads) {
        for c in &t.cgroups {
            let dir = dir_of(c, &mounts)?;
            let file = if c.id == 0 { "cgroup.threads" } else { "tasks" };
            join(&dir, file, *tid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 23 0:39 /sub /mnt/cg\\040x rw - cgroup cgroup rw,cpu,cpuacct
";

    fn place(id: u32, controllers: &str, path: &str) -> CgroupPlace {
        CgroupPlace {
            id,
            controllers: controllers.into(),
            path: path.into(),
        }
    }

    #[test]
    fn finds_the_directory_of_each_hierarchy() {
        let m = parse_mounts(MOUNTINFO);
        assert_eq!(m.len(), 4, "{m:?}");
        assert_eq!(
            dir_of(&place(0, "", "/a/b"), &m).unwrap(),
            PathBuf::from("/sys/fs/cgroup/unified/a/b")
        );
        assert_eq!(
            dir_of(&place(4, "memory", "/x"), &m).unwrap(),
            PathBuf::from("/sys/fs/cgroup/memory/x")
        );
        assert_eq!(
            dir_of(&place(9, "name=systemd", "/"), &m).unwrap(),
            PathBuf::from("/sys/fs/cgroup/systemd/")
        );
        // A mount of a sub-tree, at a path with a space.
        assert_eq!(
            dir_of(&place(2, "cpu,cpuacct", "/sub/y"), &m).unwrap(),
            PathBuf::from("/mnt/cg x/y")
        );
        assert!(dir_of(&place(2, "cpu,cpuacct", "/other"), &m).is_err());
        assert!(dir_of(&place(7, "pids", "/"), &m)
            .unwrap_err()
            .to_string()
            .contains("not mounted here"));
    }

    #[test]
    fn only_places_other_than_hauls_own_need_a_move() {
        let own = vec![place(0, "", "/"), place(4, "memory", "/m")];
        let p = ProcessImage {
            cgroups: vec![place(0, "", "/job"), place(4, "memory", "/m")],
            threads: vec![Default::default()],
            ..Default::default()
        };
        let v = to_move(&p, &own);
        assert_eq!(v, vec![&place(0, "", "/job")]);
    }
}
