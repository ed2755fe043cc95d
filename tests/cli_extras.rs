//! The command line fitting in: completion scripts the shells accept, a man page that renders,
//! `haul doctor` telling what this machine allows, metrics a Prometheus textfile collector
//! reads, and systemd units that systemd accepts.

mod common;

use common::{haul, skip};
use std::path::Path;
use std::process::{Command, Stdio};

/// stdout of `haul ARGS`, which must succeed.
fn stdout_of(args: &[&str]) -> String {
    let out = haul().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "haul {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The subcommands `haul --help` lists (the names a person would complete and look up).
fn subcommands() -> Vec<String> {
    let help = stdout_of(&["--help"]);
    let mut in_commands = false;
    let mut names = Vec::new();
    for l in help.lines() {
        if l.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            if l.trim().is_empty() || !l.starts_with("  ") {
                break;
            }
            if let Some(n) = l.split_whitespace().next() {
                if l.starts_with("  ") && !l.starts_with("   ") && n != "help" {
                    names.push(n.to_string());
                }
            }
        }
    }
    assert!(names.len() >= 8, "commands in --help: {names:?}\n{help}");
    names
}

#[test]
fn bash_accepts_the_completion_script_and_completes_subcommands() {
    let script = stdout_of(&["completions", "bash"]);
    assert!(!script.trim().is_empty());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("haul.bash");
    std::fs::write(&file, &script).unwrap();
    // Source it, check the registration, and ask it for the completions of `haul d`.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p haul && COMP_WORDS=(haul d) COMP_CWORD=1 COMP_LINE='haul d' \
             COMP_POINT=6 && _haul haul d haul && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        ))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bash: {}\n{said}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("complete ") && said.contains(" haul"),
        "{said}"
    );
    for want in ["dump", "doctor"] {
        assert!(
            said.lines().any(|l| l == want),
            "{want} not offered: {said}"
        );
    }
}

#[test]
fn zsh_and_fish_accept_their_completion_scripts() {
    for (shell, check) in [("zsh", "zsh -n"), ("fish", "fish --no-execute")] {
        let script = stdout_of(&["completions", shell]);
        assert!(
            script.contains("doctor") && script.contains("completions"),
            "{shell} script lacks subcommands"
        );
        if !have(shell) {
            // Not installed by install-deps (not worth a shell each): the syntax is checked
            // where the shell is there.
            eprintln!("SKIPPED: {shell} syntax check: {shell} is not installed");
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("haul.{shell}"));
        std::fs::write(&file, &script).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{check} {}", file.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{check}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn unknown_shell_is_refused_naming_the_shells() {
    let out = haul().args(["completions", "tcsh"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bash") && err.contains("zsh") && err.contains("fish"),
        "{err}"
    );
}

/// The page as `groff -man -Tutf8` renders it (plain text, no overstrike).
fn render(page: &Path) -> Option<String> {
    let out = Command::new("groff")
        .args(["-man", "-Tutf8", "-P", "-cbou"])
        .arg(page)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "groff {}: {}",
        page.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn man_page_renders_and_names_every_subcommand() {
    let page = stdout_of(&["man"]);
    assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    if !have("groff") {
        return skip(
            "man_page_renders_and_names_every_subcommand",
            "groff is not installed (install-deps installs groff-base)",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("haul.1");
    std::fs::write(&file, &page).unwrap();
    let text = render(&file).unwrap();
    assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{text}");
    for sub in subcommands() {
        assert!(
            text.contains(&format!("haul-{sub}")) || text.contains(&sub),
            "man page does not mention {sub}:\n{text}"
        );
    }
    assert!(text.contains("haul-doctor(1)"), "{text}");
    // man itself reads it too, where man-db is there.
    if have("man") {
        let out = Command::new("man")
            .arg("-l")
            .arg(&file)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "man -l: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("SYNOPSIS"));
    }
}

#[test]
fn man_dir_writes_one_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    stdout_of(&["man", "--dir", out_dir.to_str().unwrap()]);
    for sub in subcommands() {
        let page = out_dir.join(format!("haul-{sub}.1"));
        assert!(page.is_file(), "{} missing", page.display());
    }
    assert!(out_dir.join("haul.1").is_file());
    assert!(out_dir.join("haul-images-ls.1").is_file());
    if have("groff") {
        let text = render(&out_dir.join("haul-doctor.1")).unwrap();
        assert!(text.contains("--json"), "{text}");
    }
}

/// `haul doctor --json`, parsed, and its exit code.
fn doctor() -> (serde_json::Value, i32) {
    let out = haul().args(["doctor", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json is not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, out.status.code().unwrap_or(-1))
}

fn check<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .expect("checks array")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {v:#}"))
}

/// This process's effective capabilities, read by the test itself.
fn cap_eff() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    u64::from_str_radix(l["CapEff:".len()..].trim(), 16).unwrap()
}

#[test]
fn doctor_says_what_this_machine_allows() {
    let (v, code) = doctor();
    assert_eq!(v["version"], 1, "{v:#}");
    for c in v["checks"].as_array().unwrap() {
        for k in ["name", "ok", "needed", "detail", "consequence"] {
            assert!(!c[k].is_null(), "{k} missing in {c}");
        }
        assert!(!c["detail"].as_str().unwrap().is_empty(), "{c}");
    }
    // Everything haul needs is here (the machine this runs on: CI and development).
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["ok"], true);
    for name in ["ptrace", "process_vm_readv", "pidfd_getfd", "prctl_mm_map"] {
        let c = check(&v, name);
        assert_eq!(c["ok"], true, "{c}");
        assert_eq!(c["needed"], true, "{c}");
    }
    for name in ["userfaultfd", "pagemap_scan", "uffd_wp_async"] {
        assert_eq!(check(&v, name)["ok"], true, "{}", check(&v, name));
    }
    assert_eq!(v["tracker"], "uffd-wp");

    // Soft-dirty: whether a page written after clear_refs shows bit 55, seen by the test itself
    // (our kernels are built without CONFIG_MEM_SOFT_DIRTY).
    let sd = check(&v, "soft_dirty");
    assert_eq!(sd["ok"], false, "{sd}");
    assert_eq!(sd["needed"], false);
    assert!(
        sd["consequence"].as_str().unwrap().contains("refused"),
        "{sd}"
    );

    // Capabilities against this process's own CapEff (the same user runs haul).
    let eff = cap_eff();
    for (name, bit) in [
        ("cap_sys_admin", 21),
        ("cap_sys_resource", 24),
        ("cap_net_admin", 12),
        ("cap_checkpoint_restore", 40),
    ] {
        assert_eq!(
            check(&v, name)["ok"],
            eff & (1u64 << bit) != 0,
            "{name}: CapEff {eff:#x}"
        );
    }
}

#[test]
fn doctor_tcp_repair_and_nftables_agree_with_what_the_test_sees() {
    let (v, _) = doctor();
    // TCP_REPAIR needs CAP_NET_ADMIN: the probe may not claim it without.
    let net_admin = cap_eff() & (1 << 12) != 0;
    assert_eq!(check(&v, "tcp_repair")["ok"], net_admin, "{v:#}");
    // nftables: the test adds and deletes a table of its own with the same tool.
    let nft = ["/usr/sbin/nft", "/sbin/nft"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(nft) = nft else {
        assert_eq!(check(&v, "nftables")["ok"], false);
        return skip("doctor nftables comparison", "nft is not installed");
    };
    let table = format!("haul_doctor_test_{}", std::process::id());
    let add = Command::new(nft)
        .args(["add", "table", "inet", &table])
        .status()
        .unwrap()
        .success();
    if add {
        let _ = Command::new(nft)
            .args(["delete", "table", "inet", &table])
            .status();
    }
    assert_eq!(check(&v, "nftables")["ok"], add, "{v:#}");
    // And the doctor's own table (named in its detail) is gone again.
    if add {
        let detail = check(&v, "nftables")["detail"]
            .as_str()
            .unwrap()
            .to_string();
        let name = detail.rsplit(' ').next().unwrap();
        assert!(name.starts_with("haul_lock_"), "{detail}");
        let tables = Command::new(nft).args(["list", "tables"]).output().unwrap();
        let tables = String::from_utf8_lossy(&tables.stdout);
        assert!(!tables.contains(name), "{name} left behind: {tables}");
    }
}

#[test]
fn doctor_reaps_its_throwaway_children() {
    let out = haul().args(["doctor"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ptrace") && text.contains("soft_dirty"),
        "{text}"
    );
    assert!(text.contains("MISSING"), "{text}");
    // The details name the children the probes forked. PID 1 here reaps nobody: a child haul
    // did not reap itself would still be in /proc as a zombie.
    let (v, _) = doctor();
    let mut pids = Vec::new();
    for c in v["checks"].as_array().unwrap() {
        let d = c["detail"].as_str().unwrap();
        for w in d
            .split(|ch: char| !ch.is_ascii_alphanumeric())
            .collect::<Vec<_>>()
            .windows(2)
        {
            if w[0] == "child" {
                if let Ok(p) = w[1].parse::<i32>() {
                    pids.push(p);
                }
            }
        }
        let d = c["detail"].as_str().unwrap();
        if let Some(p) = d.strip_prefix("clone3 gave a throwaway child the PID asked for (") {
            pids.push(p.trim_end_matches(')').parse().unwrap());
        }
    }
    assert!(pids.len() >= 3, "no child pids in {v:#}");
    for p in pids {
        let state = std::fs::read_to_string(format!("/proc/{p}/stat")).ok();
        if let Some(s) = state {
            // The pid may have been reused by an unrelated process, never by haul's zombie.
            assert!(!s.contains(") Z "), "child {p} left as a zombie: {s}");
        }
    }
}
