//! The latency plot: latency by percentile for each scenario (open loop when it ran, otherwise
//! the last closed-loop round), x on a "nines" scale so the tail is visible.

use std::path::Path;

use plotters::prelude::*;

use crate::report::{Report, RoundResult};

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
    let series: Vec<(&str, &RoundResult)> = if report.open_loop.is_empty() {
        report
            .scenarios
            .iter()
            .filter_map(|s| Some((s.name, s.rounds.last()?)))
            .collect()
    } else {
        report
            .open_loop
            .iter()
            .map(|o| (o.name, &o.result))
            .collect()
    };
    let title = match report.open_loop.first() {
        Some(o) => format!("Latency by percentile, open loop at {:.0} req/s", o.rate),
        None => "Latency by percentile, closed loop (last round)".to_owned(),
    };
    let max_ms = series
        .iter()
        .flat_map(|(_, r)| r.distribution.iter())
        .filter(|(p, _)| *p <= 99.9)
        .map(|(_, us)| *us as f64 / 1000.0)
        .fold(0.1f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0f64..3.0f64, 0.0f64..max_ms)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(4)
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "p0".into(),
            1 => "p90".into(),
            2 => "p99".into(),
            _ => "p99.9".into(),
        })
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, r)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = r
            .distribution
            .iter()
            .filter(|(p, _)| *p <= 99.9)
            .map(|(p, us)| (nines(*p), *us as f64 / 1000.0))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::nines;

    #[test]
    fn nines_scale() {
        assert!(nines(0.0).abs() < 1e-9);
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-6);
    }
}
