//! `/proc/sysvipc/{shm,msg,sem}` (see proc(5)): every SysV IPC object of the reader's IPC
//! namespace, one row of numbers each.

/// The numeric columns of `/proc/sysvipc/KIND` (`shm`, `msg`, `sem`), header skipped; empty if
/// the kernel has no SysV IPC. The first two columns are the key and the id; then
/// `shm`: perms size cpid lpid nattch uid gid cuid cgid ...; `msg`: perms cbytes qnum lspid
/// lrpid uid gid cuid cgid ...; `sem`: perms nsems uid gid cuid cgid ...
pub fn sysvipc_rows(kind: &str) -> std::io::Result<Vec<Vec<i64>>> {
    let path = format!("/proc/sysvipc/{kind}");
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(parse_sysvipc(&t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The rows of a `/proc/sysvipc` file's text.
pub fn parse_sysvipc(text: &str) -> Vec<Vec<i64>> {
    text.lines()
        .skip(1)
        .map(|l| l.split_whitespace().map_while(|w| w.parse().ok()).collect())
        .filter(|r: &Vec<i64>| !r.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysvipc_rows_skip_the_header_and_keep_numbers() {
        let t = "       key      shmid perms    size  cpid  lpid nattch\n\
                 \x20        0          3   600    4096   100   200      1\n";
        assert_eq!(parse_sysvipc(t), [vec![0, 3, 600, 4096, 100, 200, 1]]);
        assert!(parse_sysvipc("key semid\n").is_empty());
    }
}
