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

/// Where the cgroup hierarchies are mounted (the usual place; a hierarchy found elsewhere is
/// not looked at).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Why `need` more bytes charged to process `pid`'s memory cgroup might not fit, if they might
/// not: at some level of its cgroup path, the limit less the usage is smaller. cgroup v2's
/// `memory.max` and `memory.current`, or v1's `memory.limit_in_bytes` and
/// `memory.usage_in_bytes` (its memory hierarchy at `/sys/fs/cgroup/memory`). A level whose
/// files cannot be read (no memory controller there) sets no limit.
pub fn memcg_room_short(pid: i32, need: u64) -> Option<String> {
    let places = cgroups(pid, None).ok()?;
    let (mount, path, files) = if let Some(v1) = places
        .iter()
        .find(|p| p.id != 0 && p.controllers.split(',').any(|c| c == "memory"))
    {
        let root = std::path::Path::new(CGROUP_ROOT).join("memory");
        (
            root,
            &v1.path,
            ["memory.limit_in_bytes", "memory.usage_in_bytes"],
        )
    } else {
        let v2 = places.iter().find(|p| p.id == 0)?;
        let root = std::path::PathBuf::from(CGROUP_ROOT);
        (root, &v2.path, ["memory.max", "memory.current"])
    };
    let mut levels = Vec::new();
    let mut dir = mount.join(path.trim_start_matches('/'));
    while dir.starts_with(&mount) && dir != mount {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        if let (Some(max), Some(current)) = (read(files[0]), read(files[1])) {
            levels.push((dir.display().to_string(), max, current));
        }
        if !dir.pop() {
            break;
        }
    }
    room_short(&levels, need)
}

/// [`memcg_room_short`] over each level's (directory, `memory.max`, `memory.current`).
fn room_short(levels: &[(String, String, String)], need: u64) -> Option<String> {
    levels.iter().find_map(|(dir, max, current)| {
        let max: u64 = max.trim().parse().ok()?;
        let current: u64 = current.trim().parse().ok()?;
        let room = max.saturating_sub(current);
        (room < need).then(|| {
            format!(
                "its memory cgroup {dir} has {} MiB of room under its limit, less than the {} \
                 MiB its writes could need",
                room >> 20,
                need >> 20
            )
        })
    })
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

    /// The first level, from the cgroup up, whose room is less than asked names itself; `max`
    /// (no limit) and unreadable numbers set none.
    #[test]
    fn the_level_with_too_little_room_is_named() {
        let l = |d: &str, max: &str, cur: &str| (d.to_string(), max.into(), cur.into());
        let levels = [
            l("/sys/fs/cgroup/a/b", "max\n", "100\n"),
            l("/sys/fs/cgroup/a", "3145728\n", "1048576\n"),
        ];
        assert_eq!(room_short(&levels, 2 << 20), None);
        let short = room_short(&levels, (2 << 20) + 1).expect("short");
        assert!(short.contains("/sys/fs/cgroup/a has 2 MiB"), "{short}");
        assert_eq!(room_short(&[l("/x", "max", "5")], u64::MAX), None);
        assert_eq!(room_short(&[l("/x", "junk", "5")], u64::MAX), None);
    }
}
