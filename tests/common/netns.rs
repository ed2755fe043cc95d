//! Network namespaces for the live-connection tests (issue #15): namespaces joined by veth
//! pairs (to each other or to the test's own namespace), commands run inside one, and their
//! removal (with every veth, address, route and nftables table in them) when the guard drops,
//! whether the test passed or failed.
//!
//! Commands run in a namespace through `nsenter --net=/run/netns/NAME`, not `ip netns exec`:
//! the latter also gives each command a mount namespace of its own (to remount /sys), which a
//! checkpoint refuses by name (haul restores into its own namespaces, so the process must share
//! them). `nsenter --net` changes the network namespace only, and execs the program (its pid is
//! the program's).
//!
//! It is not under tests/common/mod.rs (every test binary would build it): a test file includes
//! it with `#[path = "common/netns.rs"]`.

use std::ffi::OsStr;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// Runs `ip ARGS`; the error names the command and what ip said.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip ARGS` and panics naming it when it fails (the setup of a test).
pub fn ip_ok(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

/// The namespace tests take turns, as in tests/migrate.rs: `ip netns add/del` of two tests at
/// once were seen to race.
static NETNS: Mutex<()> = Mutex::new(());

/// Network namespaces made by one test: deleted (with what is in them) when dropped.
pub struct Net {
    /// The namespaces, as `ip netns` names them.
    names: Vec<String>,
    /// The id that makes names, link names and subnets unique to this test.
    id: u32,
    _turn: MutexGuard<'static, ()>,
}

impl Net {
    /// Makes the namespaces `tags` (each named `haul-live-TAG-ID`; use [`Net::ns`] for the
    /// name), with their loopback up. `None` when the kernel refuses `ip netns add` (no
    /// privilege): the test is skipped then (a failure under CI).
    pub fn make(test: &str, tags: &[&str]) -> Option<Net> {
        let turn = NETNS.lock().unwrap_or_else(|e| e.into_inner());
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = (std::process::id().wrapping_mul(8).wrapping_add(n)) % 100_000;
        let mut net = Net {
            names: Vec::new(),
            id,
            _turn: turn,
        };
        for tag in tags {
            let name = format!("haul-live-{tag}-{id}");
            if let Err(e) = ip(&["netns", "add", &name]) {
                crate::common::skip(test, &format!("cannot make a network namespace ({e})"));
                return None;
            }
            net.names.push(name.clone());
            ip_ok(&["-n", &name, "link", "set", "lo", "up"]);
        }
        Some(net)
    }

    /// The name of the namespace made for `tag`.
    pub fn ns(&self, tag: &str) -> String {
        let name = format!("haul-live-{tag}-{}", self.id);
        assert!(self.names.contains(&name), "no namespace {tag} was made");
        name
    }

    /// The subnet `10.A.B.0/24` number `k` (0..4) of this test: `10.A.B` without the host.
    /// Unique per test and process, and apart from tests/migrate.rs's `10.100-199.*`.
    pub fn subnet(&self, k: u32) -> String {
        assert!(k < 4);
        format!(
            "10.{}.{}",
            200 + (self.id / 64) % 50,
            (self.id % 64) * 4 + k
        )
    }

    /// A veth pair between namespace `a` (None: the test's own) and `b`, with `addr_a` and
    /// `addr_b` (`10.x.y.z/24`), both ends up; returns the two link names.
    pub fn veth(
        &self,
        a: Option<&str>,
        addr_a: &str,
        b: &str,
        addr_b: &str,
        k: u32,
    ) -> (String, String) {
        let (la, lb) = (format!("hl{}a{k}", self.id), format!("hl{}b{k}", self.id));
        ip_ok(&["link", "add", &la, "type", "veth", "peer", "name", &lb]);
        if let Some(a) = a {
            ip_ok(&["link", "set", &la, "netns", a]);
        }
        ip_ok(&["link", "set", &lb, "netns", b]);
        let in_a = |args: &[&str]| match a {
            Some(ns) => {
                let mut v = vec!["-n", ns];
                v.extend_from_slice(args);
                ip_ok(&v)
            }
            None => ip_ok(args),
        };
        in_a(&["addr", "add", addr_a, "dev", &la]);
        in_a(&["link", "set", &la, "up"]);
        ip_ok(&["-n", b, "addr", "add", addr_b, "dev", &lb]);
        ip_ok(&["-n", b, "link", "set", &lb, "up"]);
        (la, lb)
    }

    /// `nsenter --net=/run/netns/NS PROGRAM`: the program runs in namespace `ns` (and nothing
    /// else changes: see the module documentation).
    pub fn cmd(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}")).arg(program);
        c
    }

    /// `haul` in namespace `ns`, with the environment of [`crate::common::haul`].
    pub fn haul(&self, ns: &str) -> Command {
        let mut c = self.cmd(ns, crate::common::haul_bin());
        c.env_remove("HAUL_STORE").env("RUST_LOG", "warn");
        c
    }

    /// The nftables ruleset of namespace `ns` (`nft list ruleset`): what a lock left behind.
    pub fn ruleset(&self, ns: &str) -> String {
        let out = self
            .cmd(ns, "nft")
            .args(["list", "ruleset"])
            .output()
            .expect("run nft list ruleset");
        assert!(
            out.status.success(),
            "nft list ruleset in {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its links (and the peers of its veths), addresses,
        // routes and nftables tables.
        for n in &self.names {
            let _ = ip(&["netns", "del", n]);
        }
    }
}
