//! SVG plots of a report, drawn with plotters.

use std::io;
use std::ops::Range;

use plotters::prelude::*;

use super::Report;

const SIZE: (u32, u32) = (800, 480);

fn plot_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("cannot draw a plot: {e}"))
}

/// A range around `values` for an axis, never empty.
fn span(values: impl Iterator<Item = f64>, from_zero: bool) -> Range<f64> {
    let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !low.is_finite() {
        return 0.0..1.0;
    }
    let low = if from_zero { low.min(0.0) } else { low };
    let high = if high > low { high } else { low + 1.0 };
    low..high + (high - low) * 0.05
}

/// The latency CDF of each variant: µs on x, quantile on y.
pub fn latency_cdf_svg(report: &Report) -> io::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let x = span(
            report
                .variants
                .iter()
                .flat_map(|v| v.latency_cdf.iter().map(|p| p.1)),
            true,
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: latency CDF", report.scenario),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(x, 0.0..1.0)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("latency (µs)")
            .y_desc("fraction of round trips")
            .draw()
            .map_err(plot_error)?;
        for (i, variant) in report.variants.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    variant.latency_cdf.iter().map(|&(q, us)| (us, q)),
                    color.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(variant.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// The mean busy share of each CPU, one bar per variant side by side.
pub fn cpu_busy_svg(report: &Report) -> io::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let cpus = report
            .variants
            .iter()
            .map(|v| v.cpu_busy.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let variants = report.variants.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: busy share per CPU", report.scenario),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..cpus as f64, 0.0..100.0)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("CPU")
            .y_desc("busy (%)")
            .x_labels(cpus + 1)
            .x_label_formatter(&|x| format!("{}", x.floor()))
            .draw()
            .map_err(plot_error)?;
        let width = 0.8 / variants as f64;
        for (i, variant) in report.variants.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(variant.cpu_busy.iter().enumerate().map(|(cpu, share)| {
                    let left = cpu as f64 + 0.1 + width * i as f64;
                    Rectangle::new([(left, 0.0), (left + width, share * 100.0)], color.filled())
                }))
                .map_err(plot_error)?
                .label(variant.name.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// Every rate metric (name ending in `_per_s`) per repetition, one line per variant and metric.
pub fn throughput_svg(report: &Report) -> io::Result<String> {
    let series: Vec<(String, Vec<f64>)> = report
        .variants
        .iter()
        .flat_map(|v| {
            v.metrics()
                .into_iter()
                .filter(|m| m.ends_with("_per_s"))
                .map(|m| (format!("{} {m}", v.name), v.values(m)))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let repetitions = series.iter().map(|s| s.1.len()).max().unwrap_or(1).max(1);
        let y = span(series.iter().flat_map(|s| s.1.iter().copied()), true);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: throughput per repetition", report.scenario),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(0.5..repetitions as f64 + 0.5, y)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("repetition")
            .y_desc("per second")
            .x_labels(repetitions)
            .x_label_formatter(&|x| format!("{}", x.round()))
            .draw()
            .map_err(plot_error)?;
        for (i, (name, values)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = values
                .iter()
                .enumerate()
                .map(|(r, v)| (r as f64 + 1.0, *v))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(plot_error)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, color.filled())),
                )
                .map_err(plot_error)?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}
