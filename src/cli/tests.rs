//! The command line as clap reads it: the spellings each option accepts, what it refuses, and
//! the groups of flags that go together.

use super::*;
use clap::{CommandFactory, Parser};

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("haul").chain(args.iter().copied()))
}

fn dump_args(extra: &[&str]) -> Result<DumpArgs, clap::Error> {
    let mut args = vec!["dump", "--pid", "42"];
    args.extend_from_slice(extra);
    match parse(&args)?.command {
        Command::Dump(d) => Ok(d),
        other => panic!("not a dump: {other:?}"),
    }
}

fn restore_args(extra: &[&str]) -> Result<RestoreArgs, clap::Error> {
    let mut args = vec!["restore", "set-1"];
    args.extend_from_slice(extra);
    match parse(&args)?.command {
        Command::Restore(r) => Ok(r),
        other => panic!("not a restore: {other:?}"),
    }
}

#[test]
fn every_tracker_spelling_maps_to_the_job_files_tracker() {
    use haul::job::Tracker;
    let cases = [
        ("auto", Tracker::Auto),
        ("uffd-wp", Tracker::UffdWp),
        ("soft-dirty", Tracker::SoftDirty),
        ("hash", Tracker::Hash),
    ];
    for (name, want) in cases {
        let d = dump_args(&["--leave-running", "--tracker", name]).unwrap();
        assert_eq!(Tracker::from(d.tracker), want, "{name}");
    }
    let d = dump_args(&["--leave-running"]).unwrap();
    assert_eq!(d.tracker, TrackerArg::Auto);
}

#[test]
fn an_unknown_tracker_is_refused_naming_the_known_ones() {
    let e = dump_args(&["--leave-running", "--tracker", "uffd"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
    assert_eq!(e.exit_code(), 2);
    let text = e.to_string();
    for t in ["'uffd'", "auto", "uffd-wp", "soft-dirty", "hash"] {
        assert!(text.contains(t), "{t}: {text}");
    }
}

#[test]
fn restore_pid_takes_same_or_any_and_defaults_to_same() {
    use haul::job::PidPolicy;
    let r = restore_args(&[]).unwrap();
    assert_eq!(PidPolicy::from(r.pid), PidPolicy::Same);
    let r = restore_args(&["--pid", "any"]).unwrap();
    assert_eq!(PidPolicy::from(r.pid), PidPolicy::Any);
    let e = restore_args(&["--pid", "1234"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
}

#[test]
fn restore_verify_takes_only_state() {
    assert_eq!(restore_args(&[]).unwrap().verify, None);
    let r = restore_args(&["--verify", "state"]).unwrap();
    assert_eq!(r.verify, Some(VerifyArg::State));
    let e = restore_args(&["--verify", "everything"]).unwrap_err();
    assert!(e.to_string().contains("'everything'"), "{e}");
}

#[test]
fn compression_takes_the_job_files_spellings() {
    use haul::job::Compression;
    let d = dump_args(&["--kill"]).unwrap();
    assert_eq!(d.compression, Compression::Zstd(3));
    assert_eq!(d.compression.level(), Some(3));
    let d = dump_args(&["--kill", "--compression", "none"]).unwrap();
    assert_eq!(d.compression, Compression::None);
    assert_eq!(d.compression.level(), None);
    let d = dump_args(&["--kill", "--compression", "zstd:19"]).unwrap();
    assert_eq!(d.compression.level(), Some(19));
    let e = dump_args(&["--kill", "--compression", "gzip"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
    assert!(e.to_string().contains("zstd:<1..19>"), "{e}");
}

#[test]
fn a_bad_duration_names_the_syntax_and_keeps_its_cause() {
    let e = parse_duration("fast").unwrap_err();
    assert_eq!(
        e.to_string(),
        "expected a duration like \"1s\", \"500ms\" or \"2m\", found \"fast\""
    );
    assert!(std::error::Error::source(&e).is_some());
    assert_eq!(
        parse_duration("200ms").unwrap(),
        std::time::Duration::from_millis(200)
    );
    // clap shows the message, not humantime's.
    let e = dump_args(&["--kill", "--interval", "fast"]).unwrap_err();
    assert!(!e.to_string().contains("expected number at 0"), "{e}");
}

#[test]
fn sizes_parse_as_in_job_files_and_benchmarks_refuse_tiny_ones() {
    assert_eq!(parse_size("256KiB").unwrap(), 256 << 10);
    assert!(matches!(
        parse_size("lots"),
        Err(ValueError::Unit(haul::job::UnitError::Size(_)))
    ));
    assert_eq!(parse_bench_size("1MiB").unwrap(), 1 << 20);
    assert!(matches!(
        parse_bench_size("4KiB"),
        Err(ValueError::TooSmall { size: 4096 })
    ));
}

#[test]
fn dump_needs_exactly_one_mode() {
    let e = dump_args(&[]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    let e = dump_args(&["--kill", "--leave-running"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    for mode in ["--kill", "--leave-running", "--lazy", "--check"] {
        assert!(dump_args(&[mode]).is_ok(), "{mode}");
    }
}

#[test]
fn lazy_dump_options_are_refused_with_another_mode() {
    for mode in ["--kill", "--leave-running", "--check"] {
        for opt in [
            &["--listen", "127.0.0.1:1"][..],
            &["--token-file", "t"][..],
            &["--source-timeout", "5s"][..],
        ] {
            let mut args = vec![mode];
            args.extend_from_slice(opt);
            assert!(
                dump_args(&args).is_err(),
                "{args:?} was accepted: the option would be ignored"
            );
        }
    }
    assert!(dump_args(&["--lazy", "--source-timeout", "5s"]).is_ok());
}

#[test]
fn lazy_restore_options_need_lazy() {
    assert!(dump_args(&["--lazy", "--listen", "0.0.0.0:1"]).is_ok());
    let e = restore_args(&["--from", "h:1"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    let e = restore_args(&["--lazy", "--token-file", "t"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
}

#[test]
fn page_server_needs_a_set_or_a_job() {
    let e = parse(&["page-server"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    assert!(parse(&["page-server", "--job", "web"]).is_ok());
    assert!(parse(&["page-server", "--set", "s", "--job", "web"]).is_ok());
}

#[test]
fn run_parallelism_starts_at_one() {
    let e = parse(&["run", "-j", "0", "a.toml"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
    match parse(&["run", "-j", "2", "a.toml"]).unwrap().command {
        Command::Run(r) => assert_eq!(r.parallel, Some(2)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_cli_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn restore_push_defaults_to_continuous_and_idle_push_alone_means_idle() {
    use haul::lazy::PushPolicy;
    use std::time::Duration;
    let cases: [(&[&str], PushPolicy); 5] = [
        (&[], PushPolicy::Continuous),
        (&["--push", "continuous"], PushPolicy::Continuous),
        (&["--push", "idle"], PushPolicy::Idle),
        (&["--idle-push", "300ms"], PushPolicy::Idle),
        (&["--push", "idle", "--idle-push", "1s"], PushPolicy::Idle),
    ];
    for (extra, want) in cases {
        let mut args = vec!["--lazy"];
        args.extend_from_slice(extra);
        let r = restore_args(&args).unwrap();
        assert_eq!(r.push_policy().unwrap(), want, "{extra:?}");
    }
    let r = restore_args(&["--lazy", "--idle-push", "300ms"]).unwrap();
    assert_eq!(r.idle_push, Some(Duration::from_millis(300)));
    let r = restore_args(&["--lazy", "--push", "continuous", "--idle-push", "1s"]).unwrap();
    let e = r.push_policy().unwrap_err();
    assert!(matches!(e, haul::Error::Usage(_)), "{e:?}");
    assert!(e.to_string().contains("--push continuous"), "{e}");
    let e = restore_args(&["--lazy", "--push", "eager"]).unwrap_err();
    assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
    let help = Cli::command()
        .find_subcommand_mut("restore")
        .unwrap()
        .render_long_help()
        .to_string();
    assert!(
        help.contains("--push <WHEN>") && help.contains("continuous") && help.contains("idle"),
        "{help}"
    );
}

#[test]
fn a_document_says_its_schema_first_and_keeps_every_field_of_its_body() {
    #[derive(serde::Serialize)]
    struct Body {
        set: &'static str,
        frozen_time: u64,
    }
    let v = serde_json::to_string(&Doc::new(
        "dump",
        &Body {
            set: "a-1",
            frozen_time: 7,
        },
    ))
    .unwrap();
    assert_eq!(v, r#"{"schema":"haul/dump/1","set":"a-1","frozen_time":7}"#);
    // A JSON map body (what `serde_json::json!` builds) takes it too.
    let m = serde_json::json!({"pid": 4, "reasons": []});
    let v: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&Doc::new("dump-check", &m)).unwrap()).unwrap();
    assert_eq!(v["schema"], "haul/dump-check/1");
    assert_eq!(v["pid"], 4);
}

#[test]
fn json_and_quiet_are_flags_of_the_commands_scripts_run() {
    assert!(matches!(
        parse(&["check", "--json", "a.toml"]).unwrap().command,
        Command::Check { json: true, .. }
    ));
    assert!(matches!(
        parse(&["report", "--json", "h.jsonl"]).unwrap().command,
        Command::Report { json: true, .. }
    ));
    match parse(&["run", "--json", "--quiet", "a.toml"])
        .unwrap()
        .command
    {
        Command::Run(r) => assert!(r.json && r.quiet),
        other => panic!("{other:?}"),
    }
    match parse(&["images", "verify", "--quiet"]).unwrap().command {
        Command::Images(i) => assert!(i.quiet),
        other => panic!("{other:?}"),
    }
    assert!(dump_args(&["--leave-running", "-q"]).unwrap().quiet);
}
