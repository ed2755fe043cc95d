//! The network lock (issue #15): while a process with established TCP connections to peers
//! outside the checkpoint is frozen, and until its restored copy runs, the packets of those
//! connections are dropped (the peer retransmits), so the kernel neither answers them with a
//! RST (no socket) nor lets the socket's state drift from the image.
//!
//! `[network] lock = "nftables"` (the default) or `"none"`. A connection whose both ends are in
//! the checkpoint needs no lock: both ends are restored ([`outside`]). No `nft` runs when there
//! is nothing to lock.
//!
//! # How
//!
//! A lock is an nftables table of haul's own (family `inet`, named `haul_lock_<id>`), with a
//! chain on the input hook and one on the output hook at priority -300 (`raw`: before
//! conntrack, -200, so a dropped packet leaves no conntrack state either), and one `drop` rule
//! per connection and direction, matching its 4-tuple, with a counter (what it dropped shows
//! in `nft list ruleset`).
//!
//! The table has `flags owner`: the kernel removes it when the netlink socket that made it
//! closes. That socket is a *keeper*, an `nft -i` child of the process holding the lock (the
//! checkpoint worker, or the restoring haul), fed commands on its stdin (a pipe). When the
//! holder exits, however it dies (SIGKILL too), the pipe closes, `nft` reads end-of-file and
//! exits, and the kernel drops the table: a lock never outlives its holder, and the ruleset is
//! never left dirty. The keeper runs in a process group of its own, so a signal sent to haul's
//! group (a terminal's ^C) does not end the lock before haul has thawed the tree.
//!
//! After a kill-mode dump the lock must outlive the worker until a restore runs the copy:
//! [`NetLock::keep`] adds a plain table with the same rules (`haul_kept_<id>`, named at
//! [`NetLock::take`], so the dump records it in the image before the set is committed), then
//! ends the owner table. The restore removes it ([`remove_kept`]) once the restored tree runs;
//! on another host or network namespace it is simply not there. A kept table whose set is
//! never restored stays until removed by hand: `nft delete table inet haul_kept_<id>`.
//!
//! # Why the `nft` tool
//!
//! nftables is driven by the distribution's `nft` (nftables ≥ 0.9.9 for `flags owner`): it is
//! the reference implementation of the nf_tables netlink protocol, each line it reads (and each
//! `nft -f` file) is one atomic transaction, and an `nft -i` process is exactly the long-lived
//! netlink socket an owner table needs. The crates on crates.io (`nftnl`, `rustables`,
//! `nftables`) either wrap libnftnl (a C library to build and link) or shell out to `nft`
//! themselves, and none exposes owner tables, so they would add a dependency without taking
//! the tool away. `HAUL_NFT` names another `nft` binary (default: `nft` from `PATH`, then
//! `/usr/sbin/nft`).

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How connections are locked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockMode {
    /// Packets of the locked connections are dropped by nftables rules haul adds and removes.
    #[default]
    Nftables,
    /// No lock: a peer that sends during the freeze gets a RST and the connection is lost.
    None,
}

impl LockMode {
    /// The name job files and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            LockMode::Nftables => "nftables",
            LockMode::None => "none",
        }
    }
}

/// One connection to lock: the local and remote address and port, as the image has them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Conn {
    /// The end inside the checkpoint.
    pub local: SocketAddr,
    /// The peer.
    pub remote: SocketAddr,
}

impl std::fmt::Display for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TCP {} -> {}", self.local, self.remote)
    }
}

impl Conn {
    /// The same connection with IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, a dual-stack
    /// socket's) written as the IPv4 addresses they are on the wire.
    pub fn canonical(self) -> Conn {
        let (l, r) = (
            canonical_ip(self.local.ip()),
            canonical_ip(self.remote.ip()),
        );
        if l.is_ipv4() == r.is_ipv4() {
            Conn {
                local: SocketAddr::new(l, self.local.port()),
                remote: SocketAddr::new(r, self.remote.port()),
            }
        } else {
            self
        }
    }

    /// The connection seen from its other end.
    pub fn reversed(self) -> Conn {
        Conn {
            local: self.remote,
            remote: self.local,
        }
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Of the established connections of a checkpoint, those whose peer is outside it, each once
/// (canonical, sorted): a connection whose other end is also in `conns` is dropped, as both
/// ends are restored.
pub fn outside(conns: impl IntoIterator<Item = Conn>) -> Vec<Conn> {
    let all: std::collections::BTreeSet<Conn> = conns.into_iter().map(Conn::canonical).collect();
    all.iter()
        .filter(|c| !all.contains(&c.reversed()))
        .copied()
        .collect()
}

/// Why a lock could not be taken, kept or removed.
#[derive(Debug, thiserror::Error)]
pub enum NetLockError {
    /// `nft` could not be started (not installed).
    #[error(
        "the network lock needs nftables' `nft` tool ({}), which could not be started: \
         {source}; install nftables, or dump without a lock ([network] lock = \"none\" in the \
         job, --network-lock none): then a peer that sends while the process is frozen gets a \
         reset and its connection is lost",
        tool.display()
    )]
    Spawn {
        tool: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `nft` refused the table (no nf_tables in the kernel, no `CAP_NET_ADMIN`, ...).
    #[error(
        "the network lock: `nft` ({}) could not {} table inet {} for {}: {}; without a lock \
         ([network] lock = \"none\", --network-lock none) a peer that sends while the process \
         is frozen gets a reset",
        .0.tool.display(),
        .0.what,
        .0.table,
        .0.conns,
        .0.message
    )]
    Nft(Box<NftFailure>),
    /// Talking to `nft` failed.
    #[error("the network lock: {what} table inet {table} through `nft`: {source}")]
    Io {
        what: &'static str,
        table: String,
        #[source]
        source: std::io::Error,
    },
    /// `nft` did not answer in time (it was killed: the table is gone).
    #[error(
        "the network lock: `nft` did not create table inet {table} within {}s",
        after.as_secs()
    )]
    Timeout { table: String, after: Duration },
    /// A table name (from an image) that is not one haul makes.
    #[error("the network lock: {0:?} is not the name of a table haul keeps (haul_kept_...)")]
    BadName(String),
}

/// What `nft` refused ([`NetLockError::Nft`]; boxed, so that errors that carry a
/// `NetLockError` stay small).
#[derive(Debug)]
pub struct NftFailure {
    /// The `nft` binary run.
    pub tool: PathBuf,
    /// What it was asked to do to the table (`create`, `keep`, `remove`).
    pub what: &'static str,
    pub table: String,
    /// The connections, or what the table was for.
    pub conns: String,
    /// What `nft` said (its stderr), or how it ended.
    pub message: String,
}

/// How long `nft` may take to create a table (or a kept one), or to exit once told to.
const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `nft` binary: `HAUL_NFT`, else `nft` in `PATH`, else `/usr/sbin/nft`.
pub fn nft_tool() -> PathBuf {
    if let Some(p) = std::env::var_os("HAUL_NFT") {
        return PathBuf::from(p);
    }
    let in_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("nft"))
            .find(|p| p.is_file())
    });
    in_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nft"))
}

/// What the keeper's readers saw.
enum Line {
    Out(String),
    Err(String),
    OutEof,
    ErrEof,
}

/// The `nft -i` child whose netlink socket owns the lock's table.
struct Keeper {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Line>,
}

impl Keeper {
    fn spawn(tool: &Path) -> std::io::Result<Keeper> {
        let mut child = Command::new(tool)
            .arg("-i")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: only the end of its stdin (its holder's death) ends it.
            .process_group(0)
            .spawn()?;
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().map(BufReader::new);
        let err = child.stderr.take().map(BufReader::new);
        fn forward<R: Read + Send + 'static>(
            r: Option<BufReader<R>>,
            tx: mpsc::Sender<Line>,
            wrap: fn(String) -> Line,
            eof: Line,
        ) {
            std::thread::spawn(move || {
                if let Some(r) = r {
                    for l in r.lines() {
                        let Ok(l) = l else { break };
                        if tx.send(wrap(l)).is_err() {
                            return;
                        }
                    }
                }
                let _ = tx.send(eof);
            });
        }
        forward(out, tx.clone(), Line::Out, Line::OutEof);
        forward(err, tx, Line::Err, Line::ErrEof);
        Ok(Keeper {
            stdin: child.stdin.take(),
            child,
            lines,
        })
    }

    /// Closes its stdin and waits (at most [`NFT_TIMEOUT`], then kills it) for it to exit: its
    /// netlink socket is closed, so the table it owns is gone.
    fn end(&mut self) -> Option<std::process::ExitStatus> {
        drop(self.stdin.take());
        let deadline = Instant::now() + NFT_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(None) | Err(_) => {
                    let _ = self.child.kill();
                    return self.child.wait().ok();
                }
            }
        }
    }

    /// What it wrote to stderr until it exited (call after [`Keeper::end`]).
    fn stderr_rest(&self, mut first: Vec<String>) -> String {
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(Line::Err(l)) => first.push(l),
                Ok(Line::ErrEof) | Err(_) => break,
                Ok(_) => {}
            }
        }
        first
            .iter()
            .map(|l| l.trim_end())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// A unique suffix for the tables of one lock.
fn lock_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{}_{:x}_{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The nft match of a packet from `from` to `to` (`ip` or `ip6`; both of one family after
/// [`Conn::canonical`], else written as IPv6).
fn match_of(from: SocketAddr, to: SocketAddr) -> String {
    let (a, b) = match (from.ip(), to.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (IpAddr::V4(a), IpAddr::V4(b)),
        (a, b) => (IpAddr::V6(v6(a)), IpAddr::V6(v6(b))),
    };
    let fam = if a.is_ipv4() { "ip" } else { "ip6" };
    format!(
        "{fam} saddr {a} {fam} daddr {b} tcp sport {} tcp dport {}",
        from.port(),
        to.port()
    )
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// The table holding `conns` as one nft command on one line (one transaction): `owner` adds
/// `flags owner`.
fn table_command(table: &str, conns: &[Conn], owner: bool) -> String {
    let mut s = format!("add table inet {table} {{ ");
    if owner {
        s.push_str("flags owner; ");
    }
    for (chain, hook) in [("lock_in", "input"), ("lock_out", "output")] {
        // -300 is the `raw` priority: before conntrack (-200).
        let _ = write!(
            s,
            "chain {chain} {{ type filter hook {hook} priority -300; policy accept; "
        );
        for c in conns {
            let m = if hook == "input" {
                match_of(c.remote, c.local)
            } else {
                match_of(c.local, c.remote)
            };
            let _ = write!(s, "{m} counter drop; ");
        }
        s.push_str("}; ");
    }
    s.push('}');
    s
}

fn describe(conns: &[Conn]) -> String {
    let mut s = conns
        .iter()
        .take(4)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if conns.len() > 4 {
        let _ = write!(s, " and {} more", conns.len() - 4);
    }
    s
}

/// A held lock: released when dropped (or by [`NetLock::release`]), kept for a restore by
/// [`NetLock::keep`].
pub struct NetLock {
    tool: PathBuf,
    table: String,
    kept: String,
    conns: Vec<Conn>,
    keeper: Keeper,
    since: Instant,
}

impl std::fmt::Debug for NetLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetLock")
            .field("table", &self.table)
            .field("kept", &self.kept)
            .field("conns", &self.conns)
            .finish()
    }
}

/// Checks, before anything is frozen, that `nft` runs and may read the ruleset here (the
/// nftables kernel module and `CAP_NET_ADMIN`): `nft list tables`. A dump that will need a
/// lock fails here, naming the tool, instead of after a brief freeze.
pub fn check_tool(conns: &[Conn]) -> Result<(), NetLockError> {
    let tool = nft_tool();
    let out = Command::new(&tool)
        .args(["list", "tables"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetLockError::Spawn {
            tool: tool.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(NetLockError::Nft(Box::new(NftFailure {
        tool,
        what: "list the tables to create",
        table: "haul_lock_...".into(),
        conns: describe(conns),
        message: if said.is_empty() {
            format!("it ended ({})", out.status)
        } else {
            said
        },
    })))
}

impl NetLock {
    /// Locks `conns` (see the module documentation): returns once the table is in the
    /// kernel's ruleset. Fails, naming the tool and the table, if `nft` is missing or refuses.
    pub fn take(conns: &[Conn]) -> Result<NetLock, NetLockError> {
        let id = lock_id();
        let table = format!("haul_lock_{id}");
        let kept = format!("haul_kept_{id}");
        let conns: Vec<Conn> = conns.iter().map(|c| c.canonical()).collect();
        let tool = nft_tool();
        let mut keeper = Keeper::spawn(&tool).map_err(|source| NetLockError::Spawn {
            tool: tool.clone(),
            source,
        })?;
        let nft_err = |message: String, tool: &Path| {
            NetLockError::Nft(Box::new(NftFailure {
                tool: tool.to_path_buf(),
                what: "create",
                table: table.clone(),
                conns: describe(&conns),
                message,
            }))
        };
        // The table, then a listing of it: its last line (`}`) on stdout says the table is
        // there; an error goes to stderr.
        let cmds = format!(
            "{}\nlist table inet {table}\n",
            table_command(&table, &conns, true)
        );
        let written = keeper.stdin.as_mut().map_or(Ok(()), |w| {
            w.write_all(cmds.as_bytes()).and_then(|_| w.flush())
        });
        if let Err(source) = written {
            keeper.end();
            let said = keeper.stderr_rest(Vec::new());
            if !said.is_empty() {
                return Err(nft_err(said, &tool));
            }
            return Err(NetLockError::Io {
                what: "creating",
                table,
                source,
            });
        }
        let deadline = Instant::now() + NFT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match keeper.lines.recv_timeout(left) {
                Ok(Line::Out(l)) if l.trim_end() == "}" => break,
                Ok(Line::Out(_)) => {}
                Ok(Line::Err(l)) => {
                    keeper.end();
                    let said = keeper.stderr_rest(vec![l]);
                    return Err(nft_err(said, &tool));
                }
                Ok(Line::OutEof | Line::ErrEof) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = keeper.end();
                    let said = keeper.stderr_rest(Vec::new());
                    let how = st.map_or("it ended".to_string(), |s| format!("it ended ({s})"));
                    return Err(nft_err(if said.is_empty() { how } else { said }, &tool));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    keeper.end();
                    return Err(NetLockError::Timeout {
                        table,
                        after: NFT_TIMEOUT,
                    });
                }
            }
        }
        tracing::debug!(table = %table, conns = conns.len(), "network lock taken");
        Ok(NetLock {
            tool,
            table,
            kept,
            conns,
            keeper,
            since: Instant::now(),
        })
    }

    /// The owner table holding the lock now.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The name of the plain table [`NetLock::keep`] would leave (recorded in the image of a
    /// kill-mode dump before the set is committed).
    pub fn kept_name(&self) -> &str {
        &self.kept
    }

    /// The connections it holds (canonical).
    pub fn conns(&self) -> &[Conn] {
        &self.conns
    }

    /// When it was taken.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Gives the lock back: the packets of its connections flow again. Returns once the table
    /// is gone (its keeper has exited).
    pub fn release(self) {
        drop(self);
    }

    /// Keeps the lock after the process holding the connections was killed (a kill-mode
    /// dump): a plain table with the same rules ([`NetLock::kept_name`]) holds until a restore
    /// of the set removes it ([`remove_kept`]). The owner table goes once it is in place (also
    /// when it could not be made: the error says so).
    pub fn keep(self) -> Result<(), NetLockError> {
        let cmd = table_command(&self.kept, &self.conns, false);
        run_nft(&self.tool, &self.kept, "keep", &describe(&self.conns), &cmd)?;
        tracing::debug!(table = %self.kept, "network lock kept for the restore");
        Ok(())
    }
}

impl Drop for NetLock {
    fn drop(&mut self) {
        let st = self.keeper.end();
        if !st.is_some_and(|s| s.success()) {
            // Killed or failed: its socket is closed all the same, and the table with it.
            tracing::debug!(table = %self.table, status = ?st, "the lock's nft ended");
        }
        tracing::debug!(table = %self.table, "network lock released");
    }
}

/// Runs `nft -f -` with `cmd` (one transaction).
fn run_nft(
    tool: &Path,
    table: &str,
    what: &'static str,
    about: &str,
    cmd: &str,
) -> Result<(), NetLockError> {
    let io = |source| NetLockError::Io {
        what,
        table: table.to_string(),
        source,
    };
    let mut child = Command::new(tool)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetLockError::Spawn {
            tool: tool.to_path_buf(),
            source,
        })?;
    if let Some(mut w) = child.stdin.take() {
        w.write_all(cmd.as_bytes()).map_err(io)?;
        w.write_all(b"\n").map_err(io)?;
    }
    let out = child.wait_with_output().map_err(io)?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    Err(NetLockError::Nft(Box::new(NftFailure {
        tool: tool.to_path_buf(),
        what,
        table: table.to_string(),
        conns: about.to_string(),
        message: if said.is_empty() {
            out.status.to_string()
        } else {
            said
        },
    })))
}

/// Whether `name` is a table [`NetLock::keep`] makes (checked before a name from an image goes
/// to `nft`).
pub fn is_kept_name(name: &str) -> bool {
    name.strip_prefix("haul_kept_").is_some_and(|id| {
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// Removes the plain table a kill-mode dump kept (`nft delete table inet NAME`), if it is
/// there: one transaction that adds it (a no-op if it exists) and deletes it.
pub fn remove_kept(table: &str) -> Result<(), NetLockError> {
    if !is_kept_name(table) {
        return Err(NetLockError::BadName(table.to_string()));
    }
    let cmd = format!("add table inet {table}\ndelete table inet {table}");
    run_nft(&nft_tool(), table, "remove", "the kept lock", &cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(l: &str, r: &str) -> Conn {
        Conn {
            local: l.parse().unwrap(),
            remote: r.parse().unwrap(),
        }
    }

    #[test]
    fn connections_within_the_checkpoint_need_no_lock() {
        let got = outside([
            c("127.0.0.1:5000", "127.0.0.1:40000"),
            c("127.0.0.1:40000", "127.0.0.1:5000"),
            c("10.0.0.1:22", "10.0.0.9:50000"),
            c("10.0.0.1:22", "10.0.0.9:50000"),
            c("[::ffff:10.0.0.1]:80", "[::ffff:10.0.0.9]:50001"),
            c("[::ffff:127.0.0.1]:6000", "127.0.0.1:41000"),
            c("127.0.0.1:41000", "127.0.0.1:6000"),
        ]);
        assert_eq!(
            got,
            vec![
                c("10.0.0.1:22", "10.0.0.9:50000"),
                c("10.0.0.1:80", "10.0.0.9:50001")
            ]
        );
    }

    #[test]
    fn the_table_drops_each_direction_before_conntrack() {
        let t = table_command(
            "haul_lock_x",
            &[c("10.0.0.1:22", "10.0.0.9:50000"), c("[::1]:80", "[::1]:5")],
            true,
        );
        assert_eq!(
            t,
            "add table inet haul_lock_x { flags owner; \
             chain lock_in { type filter hook input priority -300; policy accept; \
             ip saddr 10.0.0.9 ip daddr 10.0.0.1 tcp sport 50000 tcp dport 22 counter drop; \
             ip6 saddr ::1 ip6 daddr ::1 tcp sport 5 tcp dport 80 counter drop; }; \
             chain lock_out { type filter hook output priority -300; policy accept; \
             ip saddr 10.0.0.1 ip daddr 10.0.0.9 tcp sport 22 tcp dport 50000 counter drop; \
             ip6 saddr ::1 ip6 daddr ::1 tcp sport 80 tcp dport 5 counter drop; }; }"
        );
        assert!(!table_command("haul_kept_x", &[], false).contains("owner"));
    }

    #[test]
    fn only_kept_table_names_reach_nft() {
        assert!(is_kept_name("haul_kept_12_ab_0"));
        assert!(!is_kept_name("haul_kept_"));
        assert!(!is_kept_name("haul_kept_x; flush ruleset"));
        assert!(!is_kept_name("filter"));
    }
}
