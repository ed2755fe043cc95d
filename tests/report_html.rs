//! HTML reports (issue #18): a real pre-copy + lazy job run by `haul run` with
//! `[report] html = true`, its report rendered by `haul report --html`, and a history of runs
//! (one failed); each page opened in a real headless browser (the distribution's Chromium):
//! its screenshot must show the charts (not a blank page: the charts' own colours drawn), and
//! the DOM the browser built must hold one `<svg>` per chart, each with its title.
//!
//! Without Chromium (`./install-deps` installs it) the browser tests are skipped, and fail
//! under CI.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::tree::Session;
use common::{fixture, haul, wait_for};

/// The bars' colour in `report::charts` (`BAR`), and the failed runs' (`FAILED`).
const BAR: [u8; 3] = [0x3a, 0x6e, 0xa5];
const FAILED: [u8; 3] = [0xc0, 0x1c, 0x28];

/// The browser, or None (the test skipped: a failure under CI).
fn chromium(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        common::skip(test, "chromium is not installed (./install-deps)");
    }
    found
}

/// Runs headless Chromium on `page` with `args` (its own profile in `dir`), and returns its
/// stdout. Killed if it has not finished within two minutes.
fn browse(browser: &Path, dir: &Path, page: &Path, args: &[&str]) -> String {
    let profile = tempfile::tempdir_in(dir).unwrap();
    let out_file = dir.join(format!(
        "chromium-{}.out",
        profile.path().file_name().unwrap().to_string_lossy()
    ));
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let done = wait_for(Duration::from_secs(120), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !done {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    assert!(done, "chromium {args:?} did not finish within 2 minutes");
    assert!(status.success(), "chromium {args:?}: {status}");
    std::fs::read_to_string(&out_file).unwrap()
}

/// The screenshot's pixels as RGB.
fn pixels(png_file: &Path) -> Vec<[u8; 3]> {
    let decoder = png::Decoder::new(std::fs::File::open(png_file).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bytes = &buf[..info.buffer_size()];
    let step = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("screenshot in {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    bytes
        .chunks_exact(step)
        .map(|p| [p[0], p[1], p[2]])
        .collect()
}

/// How many pixels are `color` (give or take a little: the browser may blend).
fn count_near(pixels: &[[u8; 3]], color: [u8; 3]) -> usize {
    pixels
        .iter()
        .filter(|p| p.iter().zip(color).all(|(a, b)| a.abs_diff(b) <= 12))
        .count()
}

/// Opens `page` in the browser: checks its screenshot shows the charts (drawn in `colors`),
/// and returns the DOM the browser built.
fn render_in_browser(browser: &Path, dir: &Path, page: &Path, colors: &[[u8; 3]]) -> String {
    let shot = dir.join(format!(
        "{}.png",
        page.file_stem().unwrap().to_string_lossy()
    ));
    browse(
        browser,
        dir,
        page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,3000",
        ],
    );
    let px = pixels(&shot);
    let white = px.iter().filter(|p| **p == [255, 255, 255]).count();
    let distinct: std::collections::HashSet<[u8; 3]> = px.iter().copied().collect();
    assert!(
        white < px.len() * 99 / 100 && distinct.len() > 16,
        "{}: the screenshot is blank ({white} of {} pixels white, {} colours)",
        shot.display(),
        px.len(),
        distinct.len()
    );
    for &c in colors {
        let n = count_near(&px, c);
        assert!(
            n > 200,
            "{}: only {n} pixels of the charts' colour {c:02x?}: the charts did not render",
            shot.display()
        );
    }
    browse(browser, dir, page, &["--dump-dom"])
}

/// The `<figure data-chart=...>` elements of `dom`, each as (kind, its text).
fn figures(dom: &str) -> Vec<(String, String)> {
    dom.split("<figure data-chart=\"")
        .skip(1)
        .map(|f| {
            let kind = f[..f.find('"').unwrap()].to_string();
            let end = f.find("</figure>").expect("figure not closed");
            (kind, f[..end].to_string())
        })
        .collect()
}

/// Each figure of `dom` has exactly one `<svg>` with a `<title>` that is its caption.
fn check_figures(dom: &str) -> Vec<String> {
    let figs = figures(dom);
    assert_eq!(
        dom.matches("<svg").count(),
        figs.len(),
        "an <svg> outside a figure, or a figure without one"
    );
    for (kind, f) in &figs {
        assert_eq!(f.matches("<svg").count(), 1, "{kind}: {f}");
        let caption = between(f, "<figcaption>", "</figcaption>");
        let title = between(f, "<title>", "</title>");
        assert!(!caption.is_empty(), "{kind}: no caption");
        assert_eq!(
            caption, title,
            "{kind}: the chart's title is not its caption"
        );
        assert!(f.contains("<text"), "{kind}: no text label in the chart");
    }
    figs.into_iter().map(|(k, _)| k).collect()
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let a = s.find(start).unwrap_or_else(|| panic!("no {start} in {s}")) + start.len();
    let b = a + s[a..]
        .find(end)
        .unwrap_or_else(|| panic!("no {end} in {s}"));
    &s[a..b]
}

fn run(job: &Path) -> std::process::Output {
    let out = haul()
        .args(["run", "--plain"])
        .arg(job)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    out
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A counter pre-dumped 3 times, dumped and stopped, restored lazily from the store (the pages
/// left pushed after 200 ms without a fault), its report also written as HTML.
fn precopy_lazy_job(dir: &Path) -> PathBuf {
    let job = dir.join("pclazy.toml");
    std::fs::write(
        &job,
        format!(
            r#"
[process]
command = ["{}", "{{run_dir}}/counter.log"]
ready = {{ stdout_line = "ready" }}

[predump]
interval = "100ms"
max_iterations = 3

[dump]
leave_running = false

[restore]
mode = "lazy"
pid = "any"
from = "store"

[lazy]
idle_push = "200ms"

[store]
path = "store"

[report]
dir = "reports"
html = true
"#,
            fixture("counter").display()
        ),
    )
    .unwrap();
    job
}

#[test]
fn a_precopy_and_lazy_run_renders_its_charts_in_a_headless_browser() {
    let tmp = Session::start();
    let dir = tmp.path();
    let job = precopy_lazy_job(dir);
    let out = run(&job);
    assert!(out.status.success(), "haul run: {}", text(&out));
    let reports = dir.join("reports");
    let json = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("no report written");
    let r = haul::report::load(&json).unwrap().remove(0);
    // The figures the charts need are there: otherwise the page would have nothing to draw.
    let p = r.predump.as_ref().expect("no pre-copy figures");
    assert!(!p.iterations.is_empty(), "{p:?}");
    let l = r.lazy.as_ref().expect("no lazy figures");
    assert!(!l.resident.is_empty(), "no residency samples: {l:?}");
    assert!(l.faults_served > 0, "no fault served: {l:?}");
    // The histogram counts every fault served, once.
    let counted: u64 = l.fault_latency_histogram.iter().map(|b| b.count).sum();
    assert_eq!(counted, l.faults_served, "{l:?}");
    for w in l.fault_latency_histogram.windows(2) {
        assert_eq!(
            w[0].max_us + 1,
            w[1].min_us,
            "buckets not back to back: {l:?}"
        );
    }
    let p50 = l.fault_latency_p50;
    assert!(
        l.fault_latency_histogram
            .iter()
            .any(|b| b.count > 0 && (b.min_us..=b.max_us).contains(&p50)),
        "p50 {p50} µs is in no used bucket: {l:?}"
    );

    // `[report] html = true`: the page beside the JSON, same stem.
    let beside = json.with_extension("html");
    assert!(beside.is_file(), "no {}: {}", beside.display(), text(&out));

    // `haul report --html`.
    let page = dir.join("run.html");
    let rep = haul()
        .args(["report", "--html"])
        .arg(&page)
        .arg(&json)
        .output()
        .unwrap();
    assert!(rep.status.success(), "haul report --html: {}", text(&rep));
    assert!(
        String::from_utf8_lossy(&rep.stdout).contains(&page.display().to_string()),
        "{}",
        text(&rep)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    let run_page = std::fs::read_to_string(&beside).unwrap();
    let differ = html
        .lines()
        .zip(run_page.lines())
        .find(|(a, b)| a != b)
        .or_else(|| (html.lines().count() != run_page.lines().count()).then_some(("", "")));
    assert!(
        differ.is_none(),
        "the page of haul report --html and of the run differ: {differ:?}"
    );
    // Self-contained: nothing to fetch, nothing to run.
    for bad in ["<script", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(bad), "the page holds {bad:?}");
    }

    let Some(browser) = chromium("a_precopy_and_lazy_run_renders_its_charts_in_a_headless_browser")
    else {
        return;
    };
    let dom = render_in_browser(&browser, dir, &page, &[BAR]);
    let kinds = check_figures(&dom);
    let mut want = vec!["stages"];
    if r.pause.as_ref().is_some_and(|p| !p.phases.is_empty()) {
        want.push("pause");
    }
    want.extend(["predump", "resident", "latency"]);
    assert_eq!(kinds, want, "charts of the run");
    let predump = figures(&dom)
        .into_iter()
        .find(|(k, _)| k == "predump")
        .unwrap()
        .1;
    assert!(
        predump.contains(&format!("stopped: {}", p.stop_reason)),
        "the pre-dump chart does not say why pre-copy stopped: {predump}"
    );
    assert!(
        dom.contains(&format!("job {} · run {}", r.job, r.run)),
        "{dom}"
    );
}

/// A job that checkpoints a counter and leaves it running, and one whose process exits before
/// it is ready (a failed run), both into one history.
fn history_jobs(dir: &Path) -> (PathBuf, PathBuf) {
    let report = "[report]\ndir = \"reports\"\nhistory = \"reports/history.jsonl\"\n";
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[process]\ncommand = [\"{}\", \"{{run_dir}}/counter.log\"]\n\
             ready = {{ stdout_line = \"ready\" }}\n[dump]\nleave_running = true\n\
             [store]\npath = \"store\"\n{report}",
            fixture("counter").display()
        ),
    )
    .unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[process]\ncommand = [\"sh\", \"-c\", \"exit 3\"]\n\
             ready = {{ stdout_line = \"ready\" }}\n[store]\npath = \"store\"\n{report}"
        ),
    )
    .unwrap();
    (good, bad)
}

#[test]
fn a_history_renders_each_jobs_runs_with_the_failures_marked() {
    let tmp = Session::start();
    let dir = tmp.path();
    let (good, bad) = history_jobs(dir);
    for job in [&good, &bad, &good, &bad, &good] {
        let out = run(job);
        assert_eq!(
            out.status.success(),
            job == &good,
            "haul run {}: {}",
            job.display(),
            text(&out)
        );
    }
    let history = dir.join("reports/history.jsonl");
    let runs = haul::report::load(&history).unwrap();
    assert_eq!(runs.len(), 5);
    let page = dir.join("history.html");
    let rep = haul()
        .args(["report", "--html"])
        .arg(&page)
        .arg(&history)
        .output()
        .unwrap();
    assert!(rep.status.success(), "haul report --html: {}", text(&rep));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("job good: 3 runs, 0 failed or interrupted"),
        "{html}"
    );
    assert!(
        html.contains("job bad: 2 runs, 2 failed or interrupted"),
        "{html}"
    );

    let Some(browser) = chromium("a_history_renders_each_jobs_runs_with_the_failures_marked")
    else {
        return;
    };
    let dom = render_in_browser(&browser, dir, &page, &[BAR, FAILED]);
    let kinds = check_figures(&dom);
    let per_job = ["frozen", "image", "new", "dedup"];
    assert_eq!(kinds, [per_job, per_job].concat(), "charts of the history");
    for (kind, f) in figures(&dom) {
        let title = between(&f, "<title>", "</title>");
        let marked = f.contains("failed or interrupted");
        assert_eq!(
            marked,
            title.starts_with("bad:"),
            "{kind} {title}: failures marked only in the failing job's charts"
        );
    }
}

#[test]
fn haul_check_validates_the_html_key() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("j.toml");
    let head = "[process]\ncommand = [\"sleep\", \"1\"]\n[report]\n";
    std::fs::write(&job, format!("{head}html = true\n")).unwrap();
    let out = haul().arg("check").arg(&job).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(&job, format!("{head}html = \"yes\"\n")).unwrap();
    let out = haul().arg("check").arg(&job).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("{}:4:8: report.html", job.display())),
        "no file:line:col naming report.html: {said}"
    );
}

#[test]
fn haul_report_html_refuses_a_file_that_is_not_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("x.json");
    std::fs::write(&bad, "{\"garbage\": 1}\n").unwrap();
    let page = dir.path().join("out.html");
    let out = haul()
        .args(["report", "--html"])
        .arg(&page)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("x.json"),
        "{}",
        text(&out)
    );
    assert!(!page.exists(), "a page was written for a bad input");
}
