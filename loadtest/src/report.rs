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

/// The run's target and workload, e.g. `redraft set P16`.
pub fn run_name(r: &RunResult) -> String {
    format!("{} {:?} P{}", r.label, r.config.workload.mix, r.config.pipeline)
        .replace(" Set ", " set ")
        .replace(" Get ", " get ")
}

/// Bars of throughput per run (log scale), for comparing several runs.
pub fn comparison_svg(path: &Path, results: &[RunResult]) -> Result<()> {
    let n = results.len().max(1);
    let root = SVGBackend::new(path, (900, 80 + 32 * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let max = results.iter().map(|r| r.throughput).fold(10.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("throughput, requests/s (log scale)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(10)
        .build_cartesian_2d((100.0..max * 2.0).log_scale(), 0.0..n as f64)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .draw()
        .map_err(plot_err)?;
    for (i, r) in results.iter().enumerate() {
        let y = (n - 1 - i) as f64;
        let colour = if r.label == "redraft" {
            RGBColor(200, 30, 60)
        } else {
            RGBColor(120, 120, 120)
        };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(100.0, y + 0.15), (r.throughput.max(100.0), y + 0.85)],
                colour.filled(),
            )))
            .map_err(plot_err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{}  {:.0}/s", run_name(r), r.throughput),
                (110.0, y + 0.5),
                ("sans-serif", 13).into_font().color(&BLACK),
            )))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// A placement simulation's timeline: the fewest and most replicas on a node
/// (top) and the replica moves in flight and shards short of replicas (bottom),
/// against simulated seconds.
pub fn simulation_svg(path: &Path, report: &redraft_placement::sim::SimReport) -> Result<()> {
    let timeline = &report.timeline;
    let end = timeline.last().map_or(1, |s| s.t.max(1)) as f64;
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(300);
    let most = timeline.iter().map(|s| s.replicas_max).max().unwrap_or(1) as f64;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("{:?}: replicas per node, fewest and most", report.config.scenario),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..end, 0.0..most * 1.1)
        .map_err(plot_err)?;
    chart.configure_mesh().draw().map_err(plot_err)?;
    for (pick, colour) in [
        (
            Box::new(|s: &redraft_placement::sim::Sample| s.replicas_min) as Box<dyn Fn(&_) -> usize>,
            BLUE,
        ),
        (Box::new(|s: &redraft_placement::sim::Sample| s.replicas_max), RED),
    ] {
        chart
            .draw_series(LineSeries::new(
                timeline.iter().map(|s| (s.t as f64, pick(s) as f64)),
                &colour,
            ))
            .map_err(plot_err)?;
    }
    let busiest = timeline
        .iter()
        .map(|s| s.moves_in_flight.max(s.under_replicated))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "moves in flight (black), shards short of replicas (red); simulated seconds",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..end, 0.0..busiest * 1.1)
        .map_err(plot_err)?;
    chart.configure_mesh().draw().map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(
            timeline.iter().map(|s| (s.t as f64, s.moves_in_flight as f64)),
            &BLACK,
        ))
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(
            timeline.iter().map(|s| (s.t as f64, s.under_replicated as f64)),
            &RED,
        ))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}
