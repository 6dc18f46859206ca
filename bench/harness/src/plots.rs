//! SVG plots for `bench/REPORT.md`: one ratio chart per suite (bar at the median, a line
//! over the range the spreads allow, a red mark at the goal) and the growth curves.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::results::{Curve, SuiteResult};
use crate::stats::Verdict;

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e}")
}

/// Ratio bars of one suite, numbered as in the report's table. Returns how many were drawn.
pub fn ratios(result: &SuiteResult, path: &Path) -> Result<usize> {
    let bars: Vec<(usize, crate::stats::Range, Option<f64>, Option<Verdict>)> = result
        .ratios
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i + 1, r.range?, r.spec.goal, r.verdict)))
        .filter(|(_, r, _, _)| r.hi.is_finite() && r.lo.is_finite())
        .collect();
    if bars.is_empty() {
        return Ok(0);
    }
    let top = bars.iter().map(|(_, r, g, _)| r.hi.max(g.unwrap_or(0.0))).fold(0.0, f64::max) * 1.1;
    let n = bars.len() as f64;
    let width = (120 + 46 * bars.len()).max(480) as u32;
    let root = SVGBackend::new(path, (width, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("bench {}: ratio of medians, range from the spreads, goal in red (green met, amber unstable, red not met)", result.suite),
            ("sans-serif", 14),
        )
        .margin(12)
        .y_label_area_size(48)
        .x_label_area_size(10)
        .build_cartesian_2d(0f64..n, (-0.06 * top)..top)
        .map_err(err)?;
    chart.configure_mesh().disable_x_mesh().x_label_formatter(&|_| String::new()).y_desc("ratio").draw().map_err(err)?;
    for (slot, (number, range, goal, verdict)) in bars.iter().enumerate() {
        let x = slot as f64;
        let colour = match verdict {
            Some(Verdict::Met) => RGBColor(76, 153, 94),
            Some(Verdict::Missed) => RGBColor(204, 85, 68),
            Some(Verdict::Unstable) => RGBColor(222, 170, 60),
            None => RGBColor(140, 150, 170),
        };
        chart.draw_series([Rectangle::new([(x + 0.2, 0.0), (x + 0.8, range.median)], colour.filled())]).map_err(err)?;
        let whisker = [(x + 0.5, range.lo), (x + 0.5, range.hi)];
        let caps = [[(x + 0.4, range.lo), (x + 0.6, range.lo)], [(x + 0.4, range.hi), (x + 0.6, range.hi)]];
        chart.draw_series([PathElement::new(whisker, BLACK.stroke_width(1))]).map_err(err)?;
        chart.draw_series(caps.map(|c| PathElement::new(c, BLACK.stroke_width(1)))).map_err(err)?;
        if let Some(g) = goal {
            chart.draw_series([PathElement::new([(x + 0.05, *g), (x + 0.95, *g)], RED.stroke_width(2))]).map_err(err)?;
        }
        let label = TextStyle::from(("sans-serif", 12).into_font()).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        ));
        chart.draw_series([Text::new(number.to_string(), (x + 0.5, -0.03 * top), label)]).map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(bars.len())
}

/// One growth curve: a line per system.
pub fn curve(c: &Curve, path: &Path) -> Result<()> {
    let pts = c.series.iter().flat_map(|(_, p)| p.iter().copied());
    let (mut x1, mut y1) = (0f64, 0f64);
    for (x, y) in pts {
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    let root = SVGBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&c.name, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..(x1 * 1.05).max(1.0), 0f64..(y1 * 1.1).max(1e-9))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(c.x_label.as_str())
        .y_desc(c.y_label.as_str())
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(err)?;
    for (i, (system, points)) in c.series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
            .map_err(err)?
            .label(system.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(err)?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Better, Environment, Key, RatioSpec};

    #[test]
    fn draws_ratio_bars_and_a_curve() {
        let mut r = SuiteResult::new("t", true, 2, Environment::default());
        for (rep, (a, b)) in [(1.0, 4.0), (2.0, 5.0)].into_iter().enumerate() {
            r.add("w", "time", "a", rep, a, "s");
            r.add("w", "time", "b", rep, b, "s");
        }
        r.ratio(RatioSpec { name: "a / b".into(), num: Key::new("w", "time", "a"), den: Key::new("w", "time", "b"), better: Better::Lower, goal: Some(0.5), note: String::new() });
        let dir = std::env::temp_dir().join(format!("stead-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        assert_eq!(ratios(&r, &dir.join("r.svg")).expect("ratios"), 1);
        let svg = std::fs::read_to_string(dir.join("r.svg")).expect("svg");
        assert!(svg.starts_with("<svg") && svg.contains("<rect"));
        let c = Curve { name: "rss".into(), x_label: "connections".into(), y_label: "MB".into(), series: vec![("a".into(), vec![(0.0, 1.0), (10.0, 3.0)])] };
        curve(&c, &dir.join("c.svg")).expect("curve");
        assert!(std::fs::read_to_string(dir.join("c.svg")).expect("svg").contains("<polyline"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
