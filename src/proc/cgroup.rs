//! `/proc/PID/cgroup` and `/proc/PID/task/TID/cgroup`: where a process or thread sits in each
//! cgroup hierarchy (see cgroups(7)).

use super::{pid_dir, read_string, task_dir, Result};
use crate::image::CgroupPlace;

/// The cgroup of process `pid` in each hierarchy, or of its thread `tid` when given.
pub fn cgroups(pid: i32, tid: Option<i32>) -> Result<Vec<CgroupPlace>> {
    let dir = match tid {
        Some(t) => task_dir(pid, t),
        None => pid_dir(pid),
    };
    Ok(parse_cgroups(&read_string(&dir.join("cgroup"))?))
}

/// Parses the lines `hierarchy-id:controllers:path` (cgroup v2's is `0::/path`).
pub fn parse_cgroups(text: &str) -> Vec<CgroupPlace> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let id = f.next()?.parse().ok()?;
            let controllers = f.next()?.to_string();
            let path = f.next()?.to_string();
            Some(CgroupPlace {
                id,
                controllers,
                path,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_and_v2_lines_and_skips_what_is_not_one() {
        let v = parse_cgroups("4:memory:/a/b\n9:name=systemd:/\n0::/x:y\nnonsense\n");
        assert_eq!(v.len(), 3);
        assert_eq!(
            v[0],
            CgroupPlace {
                id: 4,
                controllers: "memory".into(),
                path: "/a/b".into()
            }
        );
        assert_eq!(v[1].controllers, "name=systemd");
        // A path may hold a colon.
        assert_eq!((v[2].id, v[2].path.as_str()), (0, "/x:y"));
    }
}
