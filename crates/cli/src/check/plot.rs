//! `--plot FILE`: an SVG with two panels over the run's time axis, each
//! upgrade window shaded and each upgrade command's start drawn as a vertical
//! line labelled `upgrade N`:
//!
//! 1. latency of every request at the moment it started (log scale;
//!    successes blue, failures red crosses, their latency being the time
//!    until they failed);
//! 2. successful and failed requests per second, in 100 ms buckets.
//!
//! SVG only: the bitmap backends need a font rasteriser (and system fonts)
//! for the axis labels, while SVG text is drawn by the viewer. Dense runs are
//! thinned to a few quantile points per 100 ms bucket, so the file stays
//! small; every failure is drawn (up to 20 000).

use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;
use plotters::prelude::*;

use super::run::RunOutcome;
use super::summary::Summary;
use super::windows::end_of;

const SIZE: (u32, u32) = (1200, 800);
const BUCKET: Duration = Duration::from_millis(100);
/// Success points kept per bucket (quantiles, including min and max).
const POINTS_PER_BUCKET: usize = 12;
const MAX_FAILURE_MARKS: usize = 20_000;
const WINDOW_FILL: RGBAColor = RGBAColor(255, 165, 0, 0.18);
const UPGRADE_LINE: RGBColor = RGBColor(220, 110, 0);
const OK_COLOR: RGBColor = RGBColor(31, 100, 200);

/// Draws the plot and writes it to `path`.
pub fn write(path: &Path, outcome: &RunOutcome, summary: &Summary) -> anyhow::Result<()> {
    let svg = render(outcome, summary)?;
    std::fs::write(path, svg)?;
    Ok(())
}

/// The SVG document.
pub fn render(outcome: &RunOutcome, summary: &Summary) -> anyhow::Result<String> {
    let mut svg = String::new();
    draw(&mut svg, outcome, summary).map_err(|e| anyhow!("drawing failed: {e}"))?;
    Ok(svg)
}

/// (x, y) points.
type Series = Vec<(f64, f64)>;

/// An upgrade as drawn: its window and its number.
struct Mark {
    from: f64,
    to: f64,
    index: u32,
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(svg: &mut String, outcome: &RunOutcome, summary: &Summary) -> DrawResult {
    let samples = &outcome.report.samples;
    let marks: Vec<Mark> = summary
        .upgrades
        .iter()
        .map(|u| Mark {
            from: u.started_s,
            to: u.window_end_s,
            index: u.index,
        })
        .collect();
    let x_end = marks
        .iter()
        .map(|m| m.to)
        .fold(summary.elapsed_s.max(0.1), f64::max);

    let root = SVGBackend::with_string(svg, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(SIZE.1 / 2 + 40);

    // Panel 1: latency per request.
    let ok = thinned_successes(samples);
    let failed: Vec<(f64, f64)> = {
        let all: Vec<_> = samples.iter().filter(|s| !s.is_success()).collect();
        let step = all.len().div_ceil(MAX_FAILURE_MARKS).max(1);
        all.iter()
            .step_by(step)
            .map(|s| (s.start.as_secs_f64(), latency_ms(s.latency)))
            .collect()
    };
    let lat = ok.iter().chain(&failed).map(|p| p.1);
    let y_min = lat.clone().fold(f64::INFINITY, f64::min).clamp(0.001, 0.1);
    let y_max = lat.fold(1.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("{}: latency per request (ms, log)", summary.target),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_end, (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("latency ms")
        .draw()?;
    chart.draw_series(
        marks
            .iter()
            .map(|m| Rectangle::new([(m.from, y_min), (m.to, y_max)], WINDOW_FILL.filled())),
    )?;
    chart
        .draw_series(ok.iter().map(|&p| Circle::new(p, 1, OK_COLOR.filled())))?
        .label("ok")
        .legend(|(x, y)| Circle::new((x + 10, y), 3, OK_COLOR.filled()));
    chart
        .draw_series(
            failed
                .iter()
                .map(|&p| Cross::new(p, 4, RED.stroke_width(2))),
        )?
        .label("failed")
        .legend(|(x, y)| Cross::new((x + 10, y), 4, RED.stroke_width(2)));
    upgrade_lines(&mut chart, &marks, y_min, y_max)?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    // Panel 2: requests per second in 100 ms buckets.
    let (ok_rate, failed_rate) = rates(samples, summary.elapsed_s);
    let r_max = ok_rate
        .iter()
        .chain(&failed_rate)
        .map(|p| p.1)
        .fold(10.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("requests per second (100 ms buckets)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_end, 0f64..r_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("requests/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart.draw_series(
        marks
            .iter()
            .map(|m| Rectangle::new([(m.from, 0.0), (m.to, r_max)], WINDOW_FILL.filled())),
    )?;
    chart
        .draw_series(LineSeries::new(ok_rate, OK_COLOR.stroke_width(2)))?
        .label("ok/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], OK_COLOR));
    chart
        .draw_series(LineSeries::new(failed_rate, RED.stroke_width(2)))?
        .label("failed/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    upgrade_lines(&mut chart, &marks, 0.0, r_max)?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// A vertical line at each command start, labelled `upgrade N` at the top.
fn upgrade_lines<Y>(
    chart: &mut ChartContext<
        '_,
        SVGBackend<'_>,
        Cartesian2d<plotters::coord::types::RangedCoordf64, Y>,
    >,
    marks: &[Mark],
    y_low: Y::ValueType,
    y_high: Y::ValueType,
) -> DrawResult
where
    Y: Ranged,
    Y::ValueType: Clone + 'static,
{
    for &Mark {
        from: at, index, ..
    } in marks
    {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(at, y_low.clone()), (at, y_high.clone())],
            UPGRADE_LINE.stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("upgrade {index}"),
            (at, y_high.clone()),
            ("sans-serif", 12).into_font().color(&UPGRADE_LINE),
        )))?;
    }
    Ok(())
}

fn latency_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e3).max(0.001)
}

/// Successful samples as (start s, latency ms), at most
/// [`POINTS_PER_BUCKET`] quantile points per 100 ms bucket of start time.
fn thinned_successes(samples: &[handover_loadgen::Sample]) -> Vec<(f64, f64)> {
    let mut buckets: std::collections::BTreeMap<u128, Vec<(f64, f64)>> = Default::default();
    for s in samples.iter().filter(|s| s.is_success()) {
        let key = s.start.as_nanos() / BUCKET.as_nanos();
        buckets
            .entry(key)
            .or_default()
            .push((s.start.as_secs_f64(), latency_ms(s.latency)));
    }
    let mut points = Vec::new();
    for (_, mut bucket) in buckets {
        if bucket.len() <= POINTS_PER_BUCKET {
            points.extend(bucket);
            continue;
        }
        bucket.sort_by(|a, b| a.1.total_cmp(&b.1));
        let last = bucket.len() - 1;
        points.extend((0..POINTS_PER_BUCKET).map(|i| bucket[i * last / (POINTS_PER_BUCKET - 1)]));
    }
    points
}

/// (bucket middle s, per second) for successes and failures, by the time
/// each request ended; requests still in flight at the end of the last whole
/// bucket count in it.
fn rates(samples: &[handover_loadgen::Sample], elapsed: f64) -> (Series, Series) {
    let width = BUCKET.as_secs_f64();
    let n = ((elapsed / width).round() as usize).max(1);
    let (mut ok, mut failed) = (vec![0u64; n], vec![0u64; n]);
    for s in samples {
        let i = ((end_of(s).as_secs_f64() / width) as usize).min(n - 1);
        if s.is_success() {
            ok[i] += 1;
        } else {
            failed[i] += 1;
        }
    }
    let series = |counts: Vec<u64>| {
        counts
            .into_iter()
            .enumerate()
            .map(|(i, c)| ((i as f64 + 0.5) * width, c as f64 / width))
            .collect()
    };
    (series(ok), series(failed))
}
