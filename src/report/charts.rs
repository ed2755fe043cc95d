//! The charts of an HTML report (`report::html`), each drawn by plotters' SVG backend into an
//! `<svg>` string the page inlines: no script, no network, nothing to load.
//!
//! Labels are SVG `<text>` (plotters escapes them); the browser lays them out with its own
//! fonts, plotters only estimates their size (no font crate is built in). Each chart carries its
//! title twice: drawn as its caption, and as the `<svg>`'s `<title>` and `aria-label`.

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{IterationReport, LatencyBucket, ReportError, ResidentSample};
use crate::util::human_us;

/// Width of every chart (px).
const WIDTH: u32 = 960;
const FONT: &str = "sans-serif";
const BAR: RGBColor = RGBColor(0x3a, 0x6e, 0xa5);
const LINE: RGBColor = RGBColor(0xd0, 0x6b, 0x1f);
const FAILED: RGBColor = RGBColor(0xc0, 0x1c, 0x28);

type DrawResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Draws one chart of `height` px with `draw`, and returns its `<svg>` element.
fn svg(
    title: &str,
    height: u32,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> DrawResult,
) -> Result<String, ReportError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| chart_error(title, e.into()))?;
        draw(&root).map_err(|e| chart_error(title, e))?;
        root.present().map_err(|e| chart_error(title, e.into()))?;
    }
    Ok(titled(out, title))
}

fn chart_error(title: &str, source: Box<dyn std::error::Error + Send + Sync>) -> ReportError {
    ReportError::Chart {
        chart: title.into(),
        source,
    }
}

/// Gives the `<svg>` element its title: a `<title>` child (what a browser shows on hover and
/// reads out) and the `class`, `role` and `aria-label` attributes.
fn titled(svg: String, title: &str) -> String {
    let t = super::html::escape(title);
    let Some(rest) = svg.strip_prefix("<svg ") else {
        return svg;
    };
    let Some(end) = rest.find('>') else {
        return svg;
    };
    format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"{t}\" {}><title>{t}</title>{}",
        &rest[..end],
        &rest[end + 1..]
    )
}

/// A unit to show µs in, chosen for the largest value: (µs per unit, unit name).
fn time_unit(max_us: u64) -> (f64, &'static str) {
    if max_us >= 10_000_000 {
        (1e6, "s")
    } else if max_us >= 2_000 {
        (1e3, "ms")
    } else {
        (1.0, "µs")
    }
}

/// A unit to show bytes in, chosen for the largest value: (bytes per unit, unit name).
fn byte_unit(max: u64) -> (f64, &'static str) {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut div = 1.0;
    let mut u = 0;
    while max as f64 / div >= 2048.0 && u + 1 < UNITS.len() {
        div *= 1024.0;
        u += 1;
    }
    (div, UNITS[u])
}

/// The top of an axis showing values up to `max`: a little above it, and never an empty range.
fn top(max: f64) -> f64 {
    if max > 0.0 && max.is_finite() {
        max * 1.1
    } else {
        1.0
    }
}

/// `n` segments 0..n on an axis (plotters' segmented range `0..k` has k+1 of them).
fn segments(
    n: u32,
) -> plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordu32> {
    (0..n.saturating_sub(1)).into_segmented()
}

/// Whole numbers as such on an axis of counts.
fn count_label(v: &f64) -> String {
    format!("{v:.0}")
}

/// One bar of a timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub label: String,
    pub start_us: u64,
    pub duration_us: u64,
    /// Drawn in red.
    pub failed: bool,
}

/// A timeline: one row per span, top to bottom, each a bar from its start for its duration,
/// with its duration written after it.
pub fn timeline(title: &str, spans: &[Span]) -> Result<String, ReportError> {
    let n = spans.len() as u32;
    let end = spans
        .iter()
        .map(|s| s.start_us + s.duration_us)
        .max()
        .unwrap_or(0);
    let (div, unit) = time_unit(end);
    let height = 90 + 26 * n.max(1);
    svg(title, height, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(110)
            // Room on the right for the duration written after the last bar.
            .build_cartesian_2d(0f64..top(end as f64 / div) * 1.15, segments(n))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n as usize)
            .y_label_formatter(&|y| match y {
                SegmentValue::CenterOf(i) => n
                    .checked_sub(i + 1)
                    .and_then(|row| spans.get(row as usize))
                    .map(|s| s.label.clone())
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc(format!("time ({unit})"))
            .label_style((FONT, 13))
            .draw()?;
        // Row i from the top is segment n-1-i from the bottom.
        let row = |i: usize| n - 1 - i as u32;
        chart.draw_series(spans.iter().enumerate().map(|(i, s)| {
            let x0 = s.start_us as f64 / div;
            // A zero-length span still shows as a hairline.
            let x1 = (s.start_us + s.duration_us) as f64 / div;
            let color = if s.failed { FAILED } else { BAR };
            let mut r = Rectangle::new(
                [
                    (x0, SegmentValue::Exact(row(i))),
                    (x1.max(x0), SegmentValue::Exact(row(i) + 1)),
                ],
                color.filled(),
            );
            r.set_margin(4, 4, 0, 0);
            r
        }))?;
        chart.draw_series(spans.iter().enumerate().map(|(i, s)| {
            let x = (s.start_us + s.duration_us) as f64 / div;
            let label = if s.failed {
                format!(" {} (failed)", human_us(s.duration_us))
            } else {
                format!(" {}", human_us(s.duration_us))
            };
            Text::new(
                label,
                (x, SegmentValue::CenterOf(row(i))),
                TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
            )
        }))?;
        Ok(())
    })
}

/// Pre-dump iterations: pages written by each (bars, left axis) and how long each took (line,
/// right axis).
pub fn predump(title: &str, iterations: &[IterationReport]) -> Result<String, ReportError> {
    let n = iterations.len() as u32;
    let max_pages = iterations
        .iter()
        .map(|i| i.pages_written)
        .max()
        .unwrap_or(0);
    let max_us = iterations.iter().map(|i| i.duration_us).max().unwrap_or(0);
    let (div, unit) = time_unit(max_us);
    svg(title, 380, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .right_y_label_area_size(70)
            .build_cartesian_2d(segments(n), 0f64..top(max_pages as f64))?
            .set_secondary_coord(segments(n), 0f64..top(max_us as f64 / div));
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n as usize)
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => iterations
                    .get(*i as usize)
                    .map(|it| format!("#{}", it.index))
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("pre-dump")
            .y_desc("pages written")
            .y_label_formatter(&count_label)
            .label_style((FONT, 13))
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc(format!("duration ({unit})"))
            .label_style((FONT, 13))
            .draw()?;
        chart
            .draw_series(iterations.iter().enumerate().map(|(i, it)| {
                let mut r = Rectangle::new(
                    [
                        (SegmentValue::Exact(i as u32), 0.0),
                        (SegmentValue::Exact(i as u32 + 1), it.pages_written as f64),
                    ],
                    BAR.mix(0.8).filled(),
                );
                r.set_margin(0, 0, 12, 12);
                r
            }))?
            .label("pages written")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], BAR.filled()));
        let points: Vec<(SegmentValue<u32>, f64)> = iterations
            .iter()
            .enumerate()
            .map(|(i, it)| {
                (
                    SegmentValue::CenterOf(i as u32),
                    it.duration_us as f64 / div,
                )
            })
            .collect();
        chart
            .draw_secondary_series(LineSeries::new(points.clone(), LINE.stroke_width(2)))?
            .label(format!("duration ({unit})"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], LINE.stroke_width(2)));
        chart
            .draw_secondary_series(points.into_iter().map(|p| Circle::new(p, 4, LINE.filled())))?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font((FONT, 13))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        Ok(())
    })
}

/// Pages resident over time since the restored processes ran.
pub fn resident(title: &str, samples: &[ResidentSample]) -> Result<String, ReportError> {
    let end = samples.iter().map(|s| s.at_us).max().unwrap_or(0);
    let max = samples.iter().map(|s| s.pages).max().unwrap_or(0);
    let (div, unit) = time_unit(end);
    svg(title, 340, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..top(end as f64 / div), 0f64..top(max as f64))?;
        chart
            .configure_mesh()
            .x_desc(format!("since running ({unit})"))
            .y_desc("pages resident")
            .y_label_formatter(&count_label)
            .label_style((FONT, 13))
            .draw()?;
        let points: Vec<(f64, f64)> = samples
            .iter()
            .map(|s| (s.at_us as f64 / div, s.pages as f64))
            .collect();
        chart.draw_series(LineSeries::new(points.clone(), BAR.stroke_width(2)))?;
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, BAR.filled())))?;
        Ok(())
    })
}

/// How many faults took how long: one bar per log2 bucket.
pub fn latency_histogram(title: &str, buckets: &[LatencyBucket]) -> Result<String, ReportError> {
    let n = buckets.len() as u32;
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(0);
    svg(title, 340, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 18))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(segments(n), 0u64..max + max / 10 + 1)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n as usize)
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => buckets
                    .get(*i as usize)
                    .map(|b| format!("≤{}", human_us(b.max_us)))
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("fault service time")
            .y_desc("faults")
            .label_style((FONT, 12))
            .draw()?;
        // Bars drawn one by one, in order (plotters' `Histogram` sums them in a hash map:
        // the same report would give a page that differs from one rendering to the next).
        chart.draw_series(buckets.iter().enumerate().map(|(i, b)| {
            let mut r = Rectangle::new(
                [
                    (SegmentValue::Exact(i as u32), 0),
                    (SegmentValue::Exact(i as u32 + 1), b.count),
                ],
                BAR.filled(),
            );
            r.set_margin(0, 0, 6, 6);
            r
        }))?;
        Ok(())
    })
}

/// What a chart over runs shows of each run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// µs.
    Time,
    Bytes,
    /// A plain number (a ratio).
    Ratio,
}

/// One run of a chart over runs.
#[derive(Clone, Debug, PartialEq)]
pub struct RunPoint {
    /// Under the x axis (a short date).
    pub label: String,
    /// Absent: the run has no such figure (nothing was stored).
    pub value: Option<f64>,
    /// Failed or interrupted: marked with a red cross (at its value, or on the axis).
    pub failed: bool,
}

/// A figure over the runs of a job, oldest first: a line through the runs that succeeded,
/// a red cross on each that did not.
pub fn over_runs(title: &str, measure: Measure, runs: &[RunPoint]) -> Result<String, ReportError> {
    let n = runs.len() as u32;
    let max = runs.iter().filter_map(|r| r.value).fold(0f64, f64::max);
    let (div, unit) = match measure {
        Measure::Time => {
            let (d, u) = time_unit(max as u64);
            (d, format!(" ({u})"))
        }
        Measure::Bytes => {
            let (d, u) = byte_unit(max as u64);
            (d, format!(" ({u})"))
        }
        Measure::Ratio => (1.0, String::new()),
    };
    let desc = title.rsplit(": ").next().unwrap_or(title).to_string() + &unit;
    svg(title, 320, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(segments(n), 0f64..top(max / div))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels((n as usize).min(12))
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => runs
                    .get(*i as usize)
                    .map(|r| r.label.clone())
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc("run")
            .y_desc(desc.as_str())
            .label_style((FONT, 12))
            .draw()?;
        let ok: Vec<(SegmentValue<u32>, f64)> = runs
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.failed)
            .filter_map(|(i, r)| Some((SegmentValue::CenterOf(i as u32), r.value? / div)))
            .collect();
        let line = chart.draw_series(LineSeries::new(ok.clone(), BAR.stroke_width(2)))?;
        if !ok.is_empty() {
            line.label("succeeded")
                .legend(|(x, y)| Circle::new((x + 6, y), 4, BAR.filled()));
        }
        chart.draw_series(ok.into_iter().map(|p| Circle::new(p, 4, BAR.filled())))?;
        let failed: Vec<(SegmentValue<u32>, f64)> = runs
            .iter()
            .enumerate()
            .filter(|(_, r)| r.failed)
            .map(|(i, r)| {
                (
                    SegmentValue::CenterOf(i as u32),
                    r.value.unwrap_or(0.0) / div,
                )
            })
            .collect();
        if !failed.is_empty() {
            chart
                .draw_series(
                    failed
                        .into_iter()
                        .map(|p| Cross::new(p, 6, FAILED.stroke_width(3))),
                )?
                .label("failed or interrupted")
                .legend(|(x, y)| Cross::new((x + 6, y), 5, FAILED.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font((FONT, 13))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_element_with_its_title_and_its_labels_as_text() {
        let spans = [
            Span {
                label: "launch".into(),
                start_us: 0,
                duration_us: 1_500,
                failed: false,
            },
            Span {
                label: "dump <&>".into(),
                start_us: 1_500,
                duration_us: 40_000,
                failed: true,
            },
        ];
        let s = timeline("Stages of \"a\" & <b>", &spans).unwrap();
        assert!(s.starts_with("<svg class=\"chart\" role=\"img\""), "{s}");
        assert!(
            s.contains("<title>Stages of &quot;a&quot; &amp; &lt;b&gt;</title>"),
            "{s}"
        );
        assert!(s.trim_end().ends_with("</svg>"), "{s}");
        // Labels are text the browser draws, escaped.
        assert!(s.contains("<text"), "{s}");
        assert!(s.contains("dump &lt;&amp;&gt;"), "{s}");
        assert!(s.contains("launch"), "{s}");
        assert!(!s.contains("dump <&>"), "{s}");
    }

    #[test]
    fn charts_of_nothing_or_of_zeros_still_draw() {
        assert!(timeline("t", &[]).unwrap().contains("</svg>"));
        let zero = [Span {
            label: "x".into(),
            start_us: 0,
            duration_us: 0,
            failed: false,
        }];
        assert!(timeline("t", &zero).unwrap().contains("</svg>"));
        assert!(predump("p", &[IterationReport::default()])
            .unwrap()
            .contains("</svg>"));
        assert!(resident("r", &[ResidentSample::default()])
            .unwrap()
            .contains("</svg>"));
        assert!(latency_histogram("h", &[]).unwrap().contains("</svg>"));
        let runs = [RunPoint {
            label: "x".into(),
            value: None,
            failed: true,
        }];
        assert!(over_runs("o", Measure::Bytes, &runs)
            .unwrap()
            .contains("</svg>"));
    }

    #[test]
    fn units_follow_the_largest_value() {
        assert_eq!(time_unit(500), (1.0, "µs"));
        assert_eq!(time_unit(5_000), (1e3, "ms"));
        assert_eq!(time_unit(60_000_000), (1e6, "s"));
        assert_eq!(byte_unit(100), (1.0, "B"));
        assert_eq!(byte_unit(5 << 20), (1024.0 * 1024.0, "MiB"));
    }
}
