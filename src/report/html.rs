//! HTML reports (`haul report --html`, `[report] html = true`): one self-contained page per
//! call, its charts inline SVG drawn by `report::charts`. No script, no stylesheet or font to
//! fetch: the page shows the same offline, from a mail attachment or a file URL.
//!
//! A run report gets its stage timeline, its pause timeline (when it has one), its pre-dump
//! iterations, and its lazy restore's residency over time and fault service times; a history
//! (`.jsonl`) gets, per job, the frozen time, image size, new bytes and dedup ratio over its
//! runs, failed runs marked. Every string from a report is escaped on its way into the page.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use super::charts::{self, Measure, RunPoint, Span};
use super::{io, Outcome, ReportError, RunReport};
use crate::util::{human_bytes, human_us};

/// `s` safe as HTML text and as a quoted attribute value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What a page shows, section after section.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// One run report.
    Run(&'a RunReport),
    /// A history: the runs of one or more jobs, oldest first; `file` names it.
    History {
        file: &'a str,
        reports: &'a [RunReport],
    },
}

const STYLE: &str = "\
body{font-family:sans-serif;margin:1.5em auto;max-width:1000px;color:#222}\
h1{font-size:1.5em}h2{border-bottom:2px solid #3a6ea5;padding-bottom:.2em;margin-top:2em}\
figure{margin:1.2em 0}figcaption{font-weight:bold;margin-bottom:.3em}\
svg.chart{display:block;max-width:100%;height:auto;border:1px solid #ddd}\
table{border-collapse:collapse;font-size:.9em}td,th{padding:.2em .6em;text-align:left;\
border-bottom:1px solid #eee}td.n{text-align:right}\
.ok{color:#26a269}.failed,.interrupted{color:#c01c28;font-weight:bold}\
pre{background:#f6f6f6;padding:.8em;overflow-x:auto}";

/// The whole page for `inputs`.
pub fn page(inputs: &[Input<'_>]) -> Result<String, ReportError> {
    let title = match inputs {
        [Input::Run(r)] => format!("haul report: job {} run {}", r.job, r.run),
        [Input::History { file, .. }] => format!("haul report: history {file}"),
        _ => "haul report".to_string(),
    };
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"generator\" content=\"haul {}\">\n<title>{}</title>\n<style>{STYLE}</style>\n\
         </head>\n<body>\n<h1>{}</h1>\n",
        escape(env!("CARGO_PKG_VERSION")),
        escape(&title),
        escape(&title)
    );
    for input in inputs {
        match input {
            Input::Run(r) => run_section(&mut s, r)?,
            Input::History { file, reports } => history_section(&mut s, file, reports)?,
        }
    }
    s.push_str("</body>\n</html>\n");
    Ok(s)
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Failed => "failed",
        Outcome::Interrupted => "interrupted",
    }
}

/// A chart in its figure: `kind` names it for scripts and tests (`data-chart`).
fn figure(s: &mut String, kind: &str, caption: &str, svg: &str) {
    let _ = write!(
        s,
        "<figure data-chart=\"{}\">\n<figcaption>{}</figcaption>\n{}\n</figure>\n",
        escape(kind),
        escape(caption),
        svg.trim_end()
    );
}

/// A table of (name, value) rows.
fn facts(s: &mut String, rows: &[(&str, String)]) {
    s.push_str("<table class=\"facts\">\n");
    for (k, v) in rows {
        let _ = writeln!(s, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
    }
    s.push_str("</table>\n");
}

fn run_section(s: &mut String, r: &RunReport) -> Result<(), ReportError> {
    let outcome = outcome_name(r.outcome);
    let _ = writeln!(
        s,
        "<section class=\"run\">\n<h2>job {} · run {} · <span class=\"{outcome}\">{outcome}</span></h2>",
        escape(&r.job),
        escape(&r.run)
    );
    let mut rows = vec![
        (
            "started",
            format!("{} on {} (kernel {})", r.started, r.host, r.kernel),
        ),
        ("duration", human_us(r.duration_us)),
    ];
    if let Some(pid) = r.pid {
        let how = if r.attached { "attached" } else { "launched" };
        rows.push(("process", format!("{pid} ({how})")));
    }
    if r.frozen_time > 0 || r.pages_written > 0 {
        rows.push((
            "dump",
            format!(
                "frozen {}, {} pages written, {} skipped (in a parent), {} left lazy",
                human_us(r.frozen_time),
                r.pages_written,
                r.pages_skipped_parent,
                r.pages_lazy
            ),
        ));
    }
    if let Some(st) = &r.store {
        rows.push((
            "image",
            format!(
                "set {}: {} logical, {} stored, {} new; compression {:.2}x, dedup {:.2}x",
                st.set,
                human_bytes(st.bytes_logical),
                human_bytes(st.bytes_stored),
                human_bytes(st.bytes_new),
                st.compression_ratio,
                st.dedup_ratio
            ),
        ));
    }
    if r.restore_time > 0 || r.restored_pid.is_some() {
        rows.push((
            "restore",
            format!(
                "pid {}, running after {}",
                r.restored_pid.map_or("-".into(), |p| p.to_string()),
                human_us(r.time_to_running)
            ),
        ));
    }
    if let Some(v) = &r.verify {
        let what = if v.passed {
            "passed".to_string()
        } else {
            format!("FAILED: {}", v.reason)
        };
        rows.push(("verify", what));
    }
    facts(s, &rows);
    for (class, list) in [("errors", &r.errors), ("warnings", &r.warnings)] {
        if !list.is_empty() {
            let _ = writeln!(s, "<ul class=\"{class}\">");
            for e in list {
                let _ = writeln!(s, "<li>{}</li>", escape(e));
            }
            s.push_str("</ul>\n");
        }
    }

    if !r.stages.is_empty() {
        // Stages run one after the other.
        let mut at = 0;
        let spans: Vec<Span> = r
            .stages
            .iter()
            .map(|st| {
                let span = Span {
                    label: st.name.clone(),
                    start_us: at,
                    duration_us: st.duration_us,
                    failed: !st.ok,
                };
                at += st.duration_us;
                span
            })
            .collect();
        let title = format!("Stage timeline ({})", human_us(at));
        figure(s, "stages", &title, &charts::timeline(&title, &spans)?);
    }
    if let Some(p) = r.pause.as_ref().filter(|p| !p.phases.is_empty()) {
        let spans: Vec<Span> = p
            .phases
            .iter()
            .map(|ph| Span {
                label: ph.name.clone(),
                start_us: ph.start_us,
                duration_us: ph.duration_us,
                failed: false,
            })
            .collect();
        let title = format!("Pause timeline ({} paused)", human_us(p.pause_us));
        figure(s, "pause", &title, &charts::timeline(&title, &spans)?);
    }
    if let Some(p) = r.predump.as_ref().filter(|p| !p.iterations.is_empty()) {
        let title = format!(
            "Pre-dump iterations (tracker {}, stopped: {})",
            p.tracker,
            if p.stop_reason.is_empty() {
                "?"
            } else {
                &p.stop_reason
            }
        );
        figure(
            s,
            "predump",
            &title,
            &charts::predump(&title, &p.iterations)?,
        );
    }
    if let Some(l) = &r.lazy {
        if !l.resident.is_empty() {
            let title = format!(
                "Lazy restore: pages resident over time (all after {})",
                human_us(l.time_to_all_resident)
            );
            figure(
                s,
                "resident",
                &title,
                &charts::resident(&title, &l.resident)?,
            );
        }
        if !l.fault_latency_histogram.is_empty() {
            let title = format!(
                "Lazy restore: fault service time ({} faults, p50 {}, p99 {})",
                l.faults_served,
                human_us(l.fault_latency_p50),
                human_us(l.fault_latency_p99)
            );
            let svg = charts::latency_histogram(&title, &l.fault_latency_histogram)?;
            figure(s, "latency", &title, &svg);
        }
    }
    let _ = writeln!(
        s,
        "<details><summary>Every figure (as <code>haul report</code> prints it)</summary>\n<pre>{}</pre></details>\n</section>",
        escape(super::render(r).trim_end())
    );
    Ok(())
}

/// A short label for a run under a chart's axis: `MM-DD hh:mm:ss` of its start, else its id.
fn run_label(r: &RunReport) -> String {
    // `started` is RFC 3339: yyyy-mm-ddThh:mm:ssZ.
    match (r.started.get(5..10), r.started.get(11..19)) {
        (Some(d), Some(t)) => format!("{d} {t}"),
        _ => r.run.clone(),
    }
}

fn history_section(s: &mut String, file: &str, reports: &[RunReport]) -> Result<(), ReportError> {
    // Jobs in the order they first ran.
    let mut jobs: Vec<&str> = Vec::new();
    for r in reports {
        if !jobs.contains(&r.job.as_str()) {
            jobs.push(&r.job);
        }
    }
    let _ = writeln!(
        s,
        "<section class=\"history\">\n<h2>history {}: {} runs of {} job{}</h2>",
        escape(file),
        reports.len(),
        jobs.len(),
        if jobs.len() == 1 { "" } else { "s" }
    );
    for job in jobs {
        let runs: Vec<&RunReport> = reports.iter().filter(|r| r.job == job).collect();
        let failed = runs.iter().filter(|r| r.outcome != Outcome::Ok).count();
        let _ = writeln!(
            s,
            "<h3>job {}: {} runs, {} failed or interrupted</h3>",
            escape(job),
            runs.len(),
            failed
        );
        let point = |r: &&RunReport, value: Option<f64>| RunPoint {
            label: run_label(r),
            value,
            failed: r.outcome != Outcome::Ok,
        };
        let series: [(&str, &str, Measure, Vec<RunPoint>); 4] = [
            (
                "frozen",
                "frozen time",
                Measure::Time,
                runs.iter()
                    .map(|r| point(r, Some(r.frozen_time as f64)))
                    .collect(),
            ),
            (
                "image",
                "image size",
                Measure::Bytes,
                runs.iter()
                    .map(|r| point(r, r.store.as_ref().map(|st| st.bytes_logical as f64)))
                    .collect(),
            ),
            (
                "new",
                "new bytes",
                Measure::Bytes,
                runs.iter()
                    .map(|r| point(r, r.store.as_ref().map(|st| st.bytes_new as f64)))
                    .collect(),
            ),
            (
                "dedup",
                "dedup ratio",
                Measure::Ratio,
                runs.iter()
                    .map(|r| point(r, r.store.as_ref().map(|st| st.dedup_ratio)))
                    .collect(),
            ),
        ];
        for (kind, what, measure, points) in &series {
            let title = format!("{job}: {what}");
            figure(
                s,
                kind,
                &title,
                &charts::over_runs(&title, *measure, points)?,
            );
        }
        s.push_str(
            "<table class=\"runs\">\n<tr><th>run</th><th>started</th><th>outcome</th>\
             <th>duration</th><th>frozen</th><th>image</th><th>new</th><th>dedup</th>\
             <th>error</th></tr>\n",
        );
        for r in &runs {
            let outcome = outcome_name(r.outcome);
            let (image, new, dedup) = match &r.store {
                Some(st) => (
                    human_bytes(st.bytes_logical),
                    human_bytes(st.bytes_new),
                    format!("{:.2}x", st.dedup_ratio),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{}</td><td class=\"{outcome}\">{outcome}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                escape(&r.run),
                escape(&r.started),
                escape(&human_us(r.duration_us)),
                escape(&human_us(r.frozen_time)),
                escape(&image),
                escape(&new),
                escape(&dedup),
                escape(r.errors.first().map_or("", |e| e.as_str()))
            );
        }
        s.push_str("</table>\n");
    }
    s.push_str("</section>\n");
    Ok(())
}

/// Writes `html` to `path` atomically (a temporary file beside it, renamed).
pub fn write_page(path: &Path, html: &str) -> Result<(), ReportError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, html).map_err(io(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io(format!("rename to {}", path.display())))?;
    Ok(())
}

impl RunReport {
    /// Writes `<dir>/<job>-<run>.html` (beside its JSON, `[report] html = true`); returns its
    /// path.
    pub fn write_html(&self, dir: &Path) -> Result<PathBuf, ReportError> {
        let html = page(&[Input::Run(self)])?;
        fs::create_dir_all(dir).map_err(io(format!("create report dir {}", dir.display())))?;
        let path = dir.join(format!("{}-{}.html", self.job, self.run));
        write_page(&path, &html)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{
        IterationReport, LatencyBucket, LazyReport, PausePhase, PauseReport, PredumpReport,
        ResidentSample, StageReport, StoreFigures,
    };

    fn full_run() -> RunReport {
        RunReport {
            job: "web<1>".into(),
            run: "20261129T000000Z-abcd".into(),
            started: "2026-11-29T00:00:00Z".into(),
            errors: vec!["boom <script>alert(1)</script>".into()],
            outcome: Outcome::Failed,
            stages: vec![
                StageReport {
                    name: "launch".into(),
                    duration_us: 2_000,
                    ok: true,
                    detail: String::new(),
                },
                StageReport {
                    name: "dump".into(),
                    duration_us: 30_000,
                    ok: false,
                    detail: "x".into(),
                },
            ],
            pause: Some(PauseReport {
                pause_us: 900,
                phases: vec![PausePhase {
                    name: "freeze".into(),
                    start_us: 0,
                    duration_us: 900,
                }],
            }),
            predump: Some(PredumpReport {
                tracker: "uffd-wp".into(),
                stop_reason: "converged".into(),
                iterations: vec![
                    IterationReport {
                        index: 1,
                        duration_us: 5_000,
                        pages_written: 1000,
                        ..Default::default()
                    },
                    IterationReport {
                        index: 2,
                        duration_us: 1_000,
                        pages_written: 10,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            lazy: Some(LazyReport {
                faults_served: 3,
                resident: vec![
                    ResidentSample { at_us: 0, pages: 0 },
                    ResidentSample {
                        at_us: 50_000,
                        pages: 100,
                    },
                ],
                fault_latency_histogram: LatencyBucket::log2_histogram(&[3, 40, 41]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_run_page_has_one_chart_per_figure_and_escapes_the_report() {
        let html = page(&[Input::Run(&full_run())]).unwrap();
        for kind in ["stages", "pause", "predump", "resident", "latency"] {
            assert!(html.contains(&format!("data-chart=\"{kind}\"")), "{kind}");
        }
        assert_eq!(html.matches("<svg ").count(), 5);
        assert!(html.contains("stopped: converged"));
        assert!(!html.contains("<script>"), "unescaped report text");
        assert!(html.contains("boom &lt;script&gt;"));
        assert!(html.contains("job web&lt;1&gt;"));
        // Nothing for the browser to fetch.
        assert!(!html.contains("http://") || !html.contains("src="));
        assert!(!html.contains("<script"));
    }

    #[test]
    fn a_run_without_pause_predump_or_lazy_has_only_its_stages() {
        let r = RunReport {
            pause: None,
            predump: None,
            lazy: None,
            ..full_run()
        };
        let html = page(&[Input::Run(&r)]).unwrap();
        assert_eq!(html.matches("<svg ").count(), 1);
        assert!(html.contains("data-chart=\"stages\""));
    }

    #[test]
    fn a_history_page_charts_each_job_and_marks_failures() {
        let ok = |job: &str, new: u64| RunReport {
            job: job.into(),
            run: "r".into(),
            started: "2026-11-29T10:20:00Z".into(),
            frozen_time: 1_000,
            store: Some(StoreFigures {
                bytes_logical: 10 << 20,
                bytes_new: new,
                dedup_ratio: 2.0,
                ..Default::default()
            }),
            ..Default::default()
        };
        let failed = RunReport {
            outcome: Outcome::Failed,
            errors: vec!["dump of pid 1 failed".into()],
            store: None,
            ..ok("a", 0)
        };
        let runs = [ok("a", 5 << 20), failed, ok("b", 1), ok("a", 1 << 20)];
        let html = page(&[Input::History {
            file: "history.jsonl",
            reports: &runs,
        }])
        .unwrap();
        assert_eq!(
            html.matches("<svg ").count(),
            8,
            "4 charts for each of 2 jobs"
        );
        assert!(html.contains("job a: 3 runs, 1 failed or interrupted"));
        // The failure is marked (and has its legend) in job a's charts, not in job b's.
        let chart = |title: &str| {
            html.split("<figure")
                .find(|f| f.contains(&format!("<title>{title}</title>")))
                .unwrap_or_else(|| panic!("no chart {title}"))
        };
        assert!(chart("a: frozen time").contains("failed or interrupted"));
        assert!(!chart("b: frozen time").contains("failed or interrupted"));
        assert!(html.contains("11-29 10:20:00"));
    }

    #[test]
    fn escape_covers_text_and_attributes() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
