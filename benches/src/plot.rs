//! The latency plot: latency by percentile for each scenario (open loop when it ran, otherwise
//! the last closed-loop round), x on a "nines" scale so the tail is visible.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// x = −log10(1 − p): 0 at p0, 1 at p90, 2 at p99, 3 at p99.9.
fn nines(percentile: f64) -> f64 {
    let q = (percentile / 100.0).min(0.9999);
    -(1.0 - q).log10()
}

pub fn latency(report: &Report, path: &Path) -> Result<(), String> {
    let series: Vec<(&str, &[(f64, u64)])> = if report.open_loop.is_empty() {
        report
            .scenarios
            .iter()
            .filter_map(|s| Some((s.name, s.rounds.last()?.distribution.as_slice())))
            .collect()
    } else {
        report
            .open_loop
            .iter()
            .map(|o| (o.name, o.result.distribution.as_slice()))
            .collect()
    };
    let title = match report.open_loop.first() {
        Some(o) => format!("Latency by percentile, open loop at {:.0} req/s", o.rate),
        None => "Latency by percentile, closed loop (last round)".to_owned(),
    };
    draw(&title, &series, path)
}

/// Up to p99.9, in milliseconds, on the "nines" x scale.
fn points(distribution: &[(f64, u64)]) -> impl Iterator<Item = (f64, f64)> + '_ {
    distribution
        .iter()
        .filter(|(p, _)| *p <= 99.9)
        .map(|(p, us)| (nines(*p), *us as f64 / 1000.0))
}

/// The latency axis: logarithmic, from a little below the fastest point to a little above the
/// slowest. A peer that cannot keep the open loop's rate has latencies in seconds; on a linear
/// axis every other line would lie flat along the bottom.
fn latency_axis_ms(series: &[(&str, &[(f64, u64)])]) -> std::ops::Range<f64> {
    let (low, high) = series
        .iter()
        .flat_map(|(_, d)| points(d))
        .fold((f64::MAX, 0.0f64), |(lo, hi), (_, ms)| {
            (lo.min(ms), hi.max(ms))
        });
    // Latencies are recorded in whole microseconds, at least 1.
    let low = if low > high { 0.1 } else { low.max(0.001) };
    let high = high.max(low * 10.0);
    low / 1.5..high * 1.5
}

/// A latency tick: as many decimals as its size needs, no float noise (0.2, 5, 1000).
fn ms_label(ms: f64) -> String {
    let text = format!("{ms:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Latency by percentile, one line per series (name, distribution), as SVG at `path`.
fn draw(title: &str, series: &[(&str, &[(f64, u64)])], path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0f64..3.0f64, latency_axis_ms(series).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms, log scale)")
        .x_labels(4)
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "p0".into(),
            1 => "p90".into(),
            2 => "p99".into(),
            _ => "p99.9".into(),
        })
        .y_label_formatter(&|ms| ms_label(*ms))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, distribution)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points(distribution), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    // Tails rise to the right, so the lower right is the corner lines cross least.
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The y coordinates of each series' line in an SVG, in drawing order (the series are
    /// drawn 2 px wide; axes, ticks and legend samples 1 px).
    fn line_heights(svg: &str) -> Vec<Vec<f64>> {
        svg.split("<polyline")
            .skip(1)
            .filter(|l| {
                l.split('>')
                    .next()
                    .is_some_and(|tag| tag.contains("stroke-width=\"2\""))
            })
            .filter_map(|l| {
                let points = l.split("points=\"").nth(1)?.split('"').next()?;
                Some(
                    points
                        .split_whitespace()
                        .filter_map(|xy| xy.split(',').nth(1)?.parse().ok())
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn a_saturated_peer_does_not_flatten_the_other_lines() {
        // Two proxies around a millisecond, and a peer that could not keep the rate (seconds).
        let fast: &[(f64, u64)] = &[(0.0, 300), (50.0, 1_000), (90.0, 1_800), (99.0, 3_000)];
        let also_fast: &[(f64, u64)] = &[(0.0, 400), (50.0, 1_200), (99.0, 4_000)];
        let saturated: &[(f64, u64)] = &[(0.0, 2_000_000), (99.9, 7_500_000)];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.svg");
        let series = [("a", fast), ("b", also_fast), ("peer", saturated)];
        draw("t", &series, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("log scale"), "the axis says it is logarithmic");
        let lines = line_heights(&svg);
        let extent = |ys: &Vec<f64>| {
            ys.iter().copied().fold(f64::MIN, f64::max)
                - ys.iter().copied().fold(f64::MAX, f64::min)
        };
        assert_eq!(lines.len(), 3, "one line per series");
        // On a linear axis up to 7.5 s the fast line would span 3 ms: under a pixel.
        let fast_extent = extent(&lines[0]);
        assert!(
            fast_extent > 50.0,
            "the fast line spans {fast_extent:.1} px of 540 ({lines:?})"
        );
    }

    #[test]
    fn latency_axis_covers_every_point() {
        let d: &[(f64, u64)] = &[(0.0, 250), (99.9, 40_000), (100.0, 900_000)];
        let axis = latency_axis_ms(&[("s", d)]);
        assert!(axis.start > 0.0 && axis.start < 0.25, "{axis:?}");
        // p100 is not plotted: the axis ends above p99.9, not above the maximum.
        assert!(axis.end > 40.0 && axis.end < 900.0, "{axis:?}");
        let empty = latency_axis_ms(&[]);
        assert!(empty.start > 0.0 && empty.end > empty.start, "{empty:?}");
    }

    #[test]
    fn latency_labels_have_no_float_noise() {
        assert_eq!(ms_label(0.30000000000000004), "0.3");
        assert_eq!(ms_label(5.0), "5");
        assert_eq!(ms_label(1000.0), "1000");
        assert_eq!(ms_label(0.025), "0.025");
    }

    #[test]
    fn nines_scale() {
        assert!(nines(0.0).abs() < 1e-9);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-6);
    }
}
