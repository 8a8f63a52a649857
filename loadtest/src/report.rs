//! Reports: a text table, JSON files and SVG charts.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use crate::runner::RunResult;

/// One line per result: throughput and percentiles in milliseconds.
pub fn table(results: &[RunResult]) -> String {
    let mut out = format!(
        "{:<28} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
        "target", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9", "max ms", "errors"
    );
    for r in results {
        let ms = |us: u64| us as f64 / 1000.0;
        out.push_str(&format!(
            "{:<28} {:>12.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.1} {:>8}\n",
            r.label,
            r.throughput,
            ms(r.latency.p50_us),
            ms(r.latency.p90_us),
            ms(r.latency.p99_us),
            ms(r.latency.p999_us),
            ms(r.latency.max_us),
            r.errors
        ));
    }
    out
}

/// Writes results as pretty JSON.
pub fn write_json(path: &Path, results: &[RunResult]) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(results)?)?;
    Ok(())
}

/// Reads results written by [`write_json`] (a list or a single result).
pub fn read_json(path: &Path) -> Result<Vec<RunResult>> {
    let text = std::fs::read_to_string(path)?;
    Ok(serde_json::from_str::<Vec<RunResult>>(&text).or_else(|_| serde_json::from_str(&text).map(|r| vec![r]))?)
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing chart: {e:?}")
}

/// Throughput (top) and p50/p99 latency (bottom) per second, one colour per run.
pub fn timeline_svg(path: &Path, results: &[RunResult]) -> Result<()> {
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(300);
    let seconds = results.iter().map(|r| r.timeline.len()).max().unwrap_or(1).max(1) as u64;
    let max_rate = results
        .iter()
        .flat_map(|r| r.timeline.iter().map(|s| s.requests))
        .max()
        .unwrap_or(1)
        .max(1);
    let max_ms = results
        .iter()
        .flat_map(|r| r.timeline.iter().map(|s| s.p99_us))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        / 1000.0;
    let mut chart = ChartBuilder::on(&top)
        .caption("throughput (requests/s)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0..seconds, 0..max_rate + max_rate / 10)
        .map_err(plot_err)?;
    chart.configure_mesh().x_desc("second").draw().map_err(plot_err)?;
    for (i, r) in results.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                r.timeline.iter().map(|s| (s.t, s.requests)),
                colour.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(r.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("latency p50 (solid) and p99 (thin), ms", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0..seconds, 0.0..max_ms * 1.1)
        .map_err(plot_err)?;
    chart.configure_mesh().x_desc("second").draw().map_err(plot_err)?;
    for (i, r) in results.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let ms = |us: u64| us as f64 / 1000.0;
        chart
            .draw_series(LineSeries::new(
                r.timeline.iter().map(|s| (s.t, ms(s.p50_us))),
                colour.stroke_width(2),
            ))
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(
                r.timeline.iter().map(|s| (s.t, ms(s.p99_us))),
                colour.stroke_width(1),
            ))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Bars of throughput per run, for comparing several runs.
pub fn comparison_svg(path: &Path, results: &[RunResult]) -> Result<()> {
    let root = SVGBackend::new(path, (900, 120 + 40 * results.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let max = results.iter().map(|r| r.throughput).fold(1.0, f64::max);
    let n = results.len() as u32;
    let mut chart = ChartBuilder::on(&root)
        .caption("throughput (requests/s)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(260)
        .build_cartesian_2d(0.0..max * 1.15, (0..n).into_segmented())
        .map_err(plot_err)?;
    let labels: Vec<String> = results.iter().map(|r| r.label.clone()).collect();
    chart
        .configure_mesh()
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(results.iter().enumerate().map(|(i, r)| {
            let i = i as u32;
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (r.throughput, SegmentValue::Exact(i + 1)),
                ],
                Palette99::pick(i as usize).filled(),
            );
            bar.set_margin(6, 6, 0, 0);
            bar
        }))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}
