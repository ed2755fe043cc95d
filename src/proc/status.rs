//! `/proc/PID/status`: credentials, signal masks, capabilities and a few counters.

use super::{hex_u64, parse_err, pid_dir, read_string, task_dir, Result};
use std::path::Path;

/// The fields of `/proc/PID/status` haul uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    pub umask: Option<u32>,
    pub state: char,
    pub tgid: i32,
    pub pid: i32,
    pub ppid: i32,
    pub tracer_pid: i32,
    /// Real, effective, saved, filesystem.
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    pub threads: u32,
    pub sig_pnd: u64,
    pub shd_pnd: u64,
    pub sig_blk: u64,
    pub sig_ign: u64,
    pub sig_cgt: u64,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// The CPUs it may run on (`Cpus_allowed_list`).
    pub cpus_allowed: Vec<u32>,
    /// Seccomp mode: 0 none, 1 strict, 2 filter.
    pub seccomp: u8,
    /// The id in each PID namespace it is in, from the one /proc belongs to inward.
    pub nspid: Vec<i32>,
}

/// `/proc/PID/status`.
pub fn status(pid: i32) -> Result<Status> {
    let path = pid_dir(pid).join("status");
    parse_status(&path, &read_string(&path)?)
}

/// `/proc/PID/task/TID/status` (its `SigPnd` is the thread's own pending set).
pub fn task_status(pid: i32, tid: i32) -> Result<Status> {
    let path = task_dir(pid, tid).join("status");
    parse_status(&path, &read_string(&path)?)
}

fn ids(path: &Path, what: &str, v: &str) -> Result<[u32; 4]> {
    let n: Vec<u32> = v
        .split_whitespace()
        .map(|x| x.parse().map_err(|_| parse_err(path, what, v)))
        .collect::<Result<_>>()?;
    n.try_into().map_err(|_| parse_err(path, what, v))
}

/// Parses the text of a status file.
pub fn parse_status(path: &Path, s: &str) -> Result<Status> {
    let mut st = Status::default();
    for line in s.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        let int =
            |what: &str| -> Result<i64> { v.parse().map_err(|_| parse_err(path, what, line)) };
        match k {
            "Name" => st.name = v.to_string(),
            "Umask" => {
                st.umask = Some(u32::from_str_radix(v, 8).map_err(|_| parse_err(path, k, line))?)
            }
            "State" => st.state = v.chars().next().unwrap_or('?'),
            "Tgid" => st.tgid = int(k)? as i32,
            "Pid" => st.pid = int(k)? as i32,
            "PPid" => st.ppid = int(k)? as i32,
            "TracerPid" => st.tracer_pid = int(k)? as i32,
            "Uid" => st.uid = ids(path, k, v)?,
            "Gid" => st.gid = ids(path, k, v)?,
            "Groups" => {
                st.groups = v
                    .split_whitespace()
                    .map(|x| x.parse().map_err(|_| parse_err(path, k, line)))
                    .collect::<Result<_>>()?
            }
            "Threads" => st.threads = int(k)? as u32,
            "SigPnd" => st.sig_pnd = hex_u64(path, k, v)?,
            "ShdPnd" => st.shd_pnd = hex_u64(path, k, v)?,
            "SigBlk" => st.sig_blk = hex_u64(path, k, v)?,
            "SigIgn" => st.sig_ign = hex_u64(path, k, v)?,
            "SigCgt" => st.sig_cgt = hex_u64(path, k, v)?,
            "CapInh" => st.cap_inh = hex_u64(path, k, v)?,
            "CapPrm" => st.cap_prm = hex_u64(path, k, v)?,
            "CapEff" => st.cap_eff = hex_u64(path, k, v)?,
            "CapBnd" => st.cap_bnd = hex_u64(path, k, v)?,
            "CapAmb" => st.cap_amb = hex_u64(path, k, v)?,
            "NoNewPrivs" => st.no_new_privs = v == "1",
            "Seccomp" => st.seccomp = int(k)? as u8,
            "Cpus_allowed_list" => {
                st.cpus_allowed = cpu_list(v).ok_or_else(|| parse_err(path, k, line))?
            }
            "NSpid" => {
                st.nspid = v
                    .split_whitespace()
                    .map(|x| x.parse().map_err(|_| parse_err(path, k, line)))
                    .collect::<Result<_>>()?
            }
            _ => {}
        }
    }
    if st.tgid == 0 {
        return Err(parse_err(
            path,
            "status (no Tgid line)",
            s.lines().next().unwrap_or(""),
        ));
    }
    Ok(st)
}

/// A CPU list like `0-3,8,10-11`.
fn cpu_list(v: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in v.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<u32>().ok()?..=b.parse::<u32>().ok()?),
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Name:\tcounter\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\n\
        Ngid:\t0\nPid:\t4243\nPPid:\t1\nTracerPid:\t0\nUid:\t1000\t1001\t1002\t1003\n\
        Gid:\t100\t100\t100\t100\nFDSize:\t64\nGroups:\t4 24 27 \nNSpid:\t4243\t7\n\
        Threads:\t3\nSigQ:\t0/63432\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000100\n\
        SigBlk:\t0000000000010000\nSigIgn:\t0000000000001000\nSigCgt:\t0000000180004002\n\
        CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
        CapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n\
        Cpus_allowed:\tf\nCpus_allowed_list:\t0-2,5\n";

    #[test]
    fn status_fields_parse_from_text() {
        let st = parse_status(Path::new("status"), SAMPLE).unwrap();
        assert_eq!((st.name.as_str(), st.state), ("counter", 'S'));
        assert_eq!((st.tgid, st.pid, st.ppid), (4242, 4243, 1));
        assert_eq!(st.umask, Some(0o022));
        assert_eq!(st.uid, [1000, 1001, 1002, 1003]);
        assert_eq!(st.groups, vec![4, 24, 27]);
        assert_eq!(st.nspid, vec![4243, 7]);
        assert_eq!((st.threads, st.shd_pnd, st.sig_blk), (3, 0x100, 0x10000));
        assert_eq!(st.sig_cgt, 0x180004002);
        assert_eq!(st.cap_bnd, 0x1ffffffffff);
        assert!(st.no_new_privs);
        assert_eq!(st.seccomp, 2);
        assert_eq!(st.cpus_allowed, vec![0, 1, 2, 5]);
    }

    #[test]
    fn a_malformed_status_line_is_named() {
        let s = SAMPLE.replace("Uid:\t1000\t1001\t1002\t1003", "Uid:\t1000 x");
        let e = parse_status(Path::new("/proc/9/status"), &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/proc/9/status") && e.contains("Uid"), "{e}");
        let s = SAMPLE.replace("SigBlk:\t0000000000010000", "SigBlk:\tzz");
        assert!(parse_status(Path::new("status"), &s).is_err());
    }

    #[test]
    fn own_status_matches_our_ids() {
        let me = std::process::id() as i32;
        let st = status(me).unwrap();
        assert_eq!(st.tgid, me);
        assert_eq!(st.pid, me);
        assert_eq!(st.tracer_pid, 0);
        assert_eq!(st.uid[1], crate::sys::process::geteuid());
        assert!(st.threads >= 1);
        assert!(st.umask.is_some());
    }

    #[test]
    fn cpu_lists_expand() {
        assert_eq!(cpu_list("0-2,5,7-8"), Some(vec![0, 1, 2, 5, 7, 8]));
        assert_eq!(cpu_list("1"), Some(vec![1]));
        assert_eq!(cpu_list("x"), None);
    }

    #[test]
    fn status_without_tgid_is_an_error() {
        assert!(parse_status(Path::new("status"), "Name:\tx\n").is_err());
    }
}
