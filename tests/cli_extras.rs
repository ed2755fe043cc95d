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

/// Writes `name.toml` into `dir`: the counter fixture, launched and dumped, plus `extra`.
fn counter_job(dir: &Path, name: &str, extra: &str) -> std::path::PathBuf {
    let counter = common::fixture("counter");
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            "[process]\ncommand = [\"{}\", \"{{run_dir}}/counter.log\"]\nready = {{ stdout_line = \"ready\" }}\n{extra}",
            counter.display()
        ),
    )
    .unwrap();
    p
}

/// The Python with prometheus_client (Debian's python3-prometheus-client, in /usr/bin).
fn python_with_prometheus_client() -> Option<String> {
    ["/usr/bin/python3", "python3"].into_iter().find_map(|py| {
        Command::new(py)
            .args(["-c", "import prometheus_client"])
            .stderr(Stdio::null())
            .status()
            .ok()
            .filter(|s| s.success())
            .map(|_| py.to_string())
    })
}

#[test]
fn run_writes_prometheus_metrics_that_the_parser_reads() {
    let dir = tempfile::tempdir().unwrap();
    let j = counter_job(
        dir.path(),
        "count",
        "[report]\ndir = \"reports\"\nmetrics = \"textfile/haul-count.prom\"\n",
    );
    let out = haul().args(["run", "--plain"]).arg(&j).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_dir(dir.path().join("reports"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a run report");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    // Relative to the job file's folder, written whole: no temporary file is left beside it.
    let prom = dir.path().join("textfile/haul-count.prom");
    let text = std::fs::read_to_string(&prom).unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.path().join("textfile"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");

    // Strictly: every sample has HELP and TYPE lines before it, and `name{job="count"} value`.
    let mut declared = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert_eq!(kind, "gauge", "{l}");
            declared.push(name.to_string());
        } else if !l.starts_with("# HELP ") {
            let (name, value) = l
                .split_once("{job=\"count\"} ")
                .unwrap_or_else(|| panic!("{l}"));
            assert!(declared.iter().any(|d| d == name), "{name} without TYPE");
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}"
            );
            value.parse::<f64>().unwrap_or_else(|e| panic!("{l}: {e}"));
        }
    }
    assert!(text.ends_with('\n'));

    let Some(py) = python_with_prometheus_client() else {
        return skip(
            "run_writes_prometheus_metrics_that_the_parser_reads",
            "python3's prometheus_client is not installed (install-deps installs python3-prometheus-client)",
        );
    };
    let parsed = Command::new(&py)
        .arg("-c")
        .arg(
            "import sys, json\n\
             from prometheus_client.parser import text_string_to_metric_families\n\
             out = {}\n\
             for f in text_string_to_metric_families(open(sys.argv[1]).read()):\n\
             \x20   for s in f.samples:\n\
             \x20       out[s.name] = {'type': f.type, 'labels': s.labels, 'value': s.value}\n\
             print(json.dumps(out))\n",
        )
        .arg(&prom)
        .output()
        .unwrap();
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let m: serde_json::Value = serde_json::from_slice(&parsed.stdout).unwrap();
    let value = |name: &str| -> f64 {
        let s = &m[name];
        assert_eq!(s["labels"]["job"], "count", "{name}: {m}");
        assert_eq!(s["type"], "gauge", "{name}");
        s["value"]
            .as_f64()
            .unwrap_or_else(|| panic!("{name} missing: {m}"))
    };
    assert_eq!(value("haul_job_success"), 1.0);
    // The frozen time is the report's (µs there, seconds here).
    let frozen = r["frozen_time"].as_u64().unwrap();
    assert!(frozen > 0);
    assert_eq!(
        (value("haul_job_frozen_seconds") * 1e6).round() as u64,
        frozen
    );
    assert_eq!(
        (value("haul_job_duration_seconds") * 1e6).round() as u64,
        r["duration_us"].as_u64().unwrap()
    );
    assert_eq!(
        (value("haul_job_last_run_timestamp_seconds") * 1e6).round() as u64,
        r["started_us"].as_u64().unwrap()
    );
    assert_eq!(
        value("haul_job_image_logical_bytes") as u64,
        r["store"]["bytes_logical"].as_u64().unwrap()
    );
    assert_eq!(
        value("haul_job_image_new_bytes") as u64,
        r["store"]["bytes_new"].as_u64().unwrap()
    );
    assert!(value("haul_job_dedup_ratio") > 0.0);
    assert_eq!(value("haul_job_predump_iterations"), 0.0);
}

#[test]
fn check_refuses_a_metrics_file_that_is_not_prom() {
    let dir = tempfile::tempdir().unwrap();
    let j = counter_job(dir.path(), "m", "[report]\nmetrics = \"haul.txt\"\n");
    let out = haul().arg("check").arg(&j).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{said}");
    // file:line:col of the value, the key, and what is wrong.
    assert!(
        said.contains("m.toml:5:11: report.metrics: must name a .prom file"),
        "{said}"
    );
    // A folder where the file should be is named too.
    std::fs::create_dir(dir.path().join("d.prom")).unwrap();
    let j = counter_job(dir.path(), "m2", "[report]\nmetrics = \"d.prom\"\n");
    let out = haul().arg("check").arg(&j).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("report.metrics"), "{said}");
}

#[test]
fn systemd_accepts_the_example_service_and_timer() {
    if !have("systemd-analyze") {
        return skip(
            "systemd_accepts_the_example_service_and_timer",
            "systemd-analyze is not installed (install-deps installs systemd)",
        );
    }
    // `systemd-analyze verify` needs no running systemd. It checks that ExecStart's program
    // exists and that the Documentation= man pages open: the units are verified as written,
    // with haul's path replaced by this build's, and haul's own man pages in MANPATH.
    let dir = tempfile::tempdir().unwrap();
    let man1 = dir.path().join("man/man1");
    stdout_of(&["man", "--dir", man1.to_str().unwrap()]);
    let src = common::repo().join("examples/systemd");
    let mut units = Vec::new();
    for name in ["haul-checkpoint.service", "haul-checkpoint.timer"] {
        let text = std::fs::read_to_string(src.join(name)).unwrap();
        assert!(
            name.ends_with(".timer") || text.contains("ExecStart=/usr/local/bin/haul run "),
            "{name}"
        );
        let text = text.replace("/usr/local/bin/haul", common::haul_bin().to_str().unwrap());
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        units.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .env("MANPATH", dir.path().join("man"))
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {err}");
    // Warnings (an unknown key is only "ignoring") fail the test too.
    assert!(err.trim().is_empty(), "systemd-analyze verify: {err}");
    // The job the service runs is one of the examples, and valid.
    let job = common::repo().join("jobs/checkpoint-cron.toml");
    let out = haul().arg("check").arg(&job).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
