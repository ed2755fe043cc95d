//! `[report] metrics = "PATH.prom"`: the last run of a job in the Prometheus text exposition
//! format, for node_exporter's textfile collector. The file is replaced atomically (written
//! beside, then renamed), as the collector requires: it never reads half a file.
//!
//! One gauge per figure, labelled `job="NAME"`; figures of stages the run did not reach
//! (store figures of a run that failed before its dump) are left out rather than set to zero.

use super::{io, Outcome, ReportError, RunReport};
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

/// The exposition text of `r` (each metric with its HELP and TYPE lines).
pub fn render(r: &RunReport) -> String {
    let job = escape_label(&r.job);
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{{job=\"{job}\"}} {}", number(value));
    };
    let secs = |us: u64| us as f64 / 1e6;
    gauge(
        "haul_job_success",
        "Whether the last run of the job succeeded (1) or failed or was interrupted (0).",
        if r.outcome == Outcome::Ok { 1.0 } else { 0.0 },
    );
    gauge(
        "haul_job_last_run_timestamp_seconds",
        "When the last run of the job started, in seconds since the Unix epoch.",
        secs(r.started_us),
    );
    gauge(
        "haul_job_duration_seconds",
        "How long the last run of the job took.",
        secs(r.duration_us),
    );
    gauge(
        "haul_job_frozen_seconds",
        "How long the process was frozen by the final dump of the last run.",
        secs(r.frozen_time),
    );
    if let Some(s) = &r.store {
        gauge(
            "haul_job_image_logical_bytes",
            "Bytes of memory the last run's image set holds, before dedup and compression.",
            s.bytes_logical as f64,
        );
        gauge(
            "haul_job_image_stored_bytes",
            "Bytes the last run's image set takes in the store (compressed, shared pages once).",
            s.bytes_stored as f64,
        );
        gauge(
            "haul_job_image_new_bytes",
            "Bytes the last run added to the store (pages no earlier set had).",
            s.bytes_new as f64,
        );
        gauge(
            "haul_job_dedup_ratio",
            "Logical bytes of the last run's image set per byte it stores (after dedup).",
            s.dedup_ratio,
        );
    }
    gauge(
        "haul_job_predump_iterations",
        "Pre-dump iterations of the last run (0 without pre-copy).",
        r.predump.as_ref().map_or(0, |p| p.iterations.len()) as f64,
    );
    out
}

/// Writes [`render`] of `r` to `path` atomically: `.NAME.tmp` beside it, then `rename(2)`.
/// The folder is created if missing.
pub fn write(r: &RunReport, path: &Path) -> Result<(), ReportError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io(format!("create metrics dir {}", dir.display())))?;
    let name = path.file_name().map_or_else(
        || "metrics.prom".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    // The collector reads only `*.prom`: the temporary name must not end so.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    fs::write(&tmp, render(r)).map_err(io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        ReportError::Io {
            context: format!("rename to {}", path.display()),
            source: e,
        }
    })
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A sample value: Go's float syntax, with `NaN` and `+Inf`/`-Inf` spelled as the format wants.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{IterationReport, PredumpReport, StoreFigures};

    #[test]
    fn every_sample_has_help_and_type_and_the_escaped_job_label() {
        let r = RunReport {
            job: "a\"b\\c".into(),
            outcome: Outcome::Failed,
            started_us: 1_700_000_000_500_000,
            frozen_time: 1_500,
            store: Some(StoreFigures {
                bytes_logical: 4096,
                dedup_ratio: f64::INFINITY,
                ..StoreFigures::default()
            }),
            predump: Some(PredumpReport {
                iterations: vec![IterationReport::default(); 3],
                ..PredumpReport::default()
            }),
            ..RunReport::default()
        };
        let text = render(&r);
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples.len(), 9, "{text}");
        for s in &samples {
            let name = s.split('{').next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} gauge")), "{name}");
            assert!(s.contains("{job=\"a\\\"b\\\\c\"} "), "{s}");
        }
        assert!(text.contains("haul_job_success{job=\"a\\\"b\\\\c\"} 0\n"));
        assert!(text.contains("} 1700000000.5\n"), "{text}");
        assert!(text.contains("haul_job_frozen_seconds{job=\"a\\\"b\\\\c\"} 0.0015\n"));
        assert!(text.contains("haul_job_dedup_ratio{job=\"a\\\"b\\\\c\"} +Inf\n"));
        assert!(text.contains("haul_job_predump_iterations{job=\"a\\\"b\\\\c\"} 3\n"));
    }

    #[test]
    fn a_run_without_store_figures_leaves_them_out() {
        let text = render(&RunReport::default());
        assert!(!text.contains("_bytes"), "{text}");
        assert!(text.contains("haul_job_success{job=\"\"} 1\n"));
    }
}
