//! The chart of one run: over time, the workers the oracle would run, the service's
//! desired count, the worker tasks that exist, and the queue (in workers' worth of
//! tasks), drawn with plotters.
//!
//! SVG rather than PNG: plotters' bitmap text needs a font, found through fontconfig at
//! build time or shipped in the repository; SVG leaves the text to the viewer, scales,
//! and diffs as text.

use std::path::Path;

use plotters::prelude::*;

use crate::sim::Minute;

/// One plotted quantity of a minute.
type Value<'a> = Box<dyn Fn(&Minute) -> f64 + 'a>;

/// A chart that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {message}")]
pub struct ChartError {
    /// The file.
    pub path: String,
    /// Why.
    pub message: String,
}

/// Draws `timeline` (per minute) into the SVG file `path`, titled `title`.
pub fn draw(
    path: &Path,
    title: &str,
    timeline: &[Minute],
    concurrency: u32,
) -> Result<(), ChartError> {
    let fail = |e: &dyn std::fmt::Display| ChartError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let per = f64::from(concurrency.max(1));
    let hours = |m: &Minute| f64::from(m.minute) / 60.0;
    let oracle = move |m: &Minute| (m.demand as f64 / per).ceil();
    let queue = move |m: &Minute| m.queued as f64 / per;
    let top = timeline
        .iter()
        .map(|m| {
            oracle(m)
                .max(f64::from(m.desired))
                .max(m.workers as f64)
                .max(queue(m))
        })
        .fold(1.0, f64::max)
        * 1.1;
    let end = timeline.last().map_or(1.0, hours).max(1.0);

    let root = SVGBackend::new(path, (1200, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..end, 0f64..top)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("hours")
        .y_desc("workers")
        .draw()
        .map_err(|e| fail(&e))?;
    let series: [(&str, RGBColor, Value<'_>); 4] = [
        (
            "oracle (demand / concurrency)",
            RGBColor(150, 150, 150),
            Box::new(oracle),
        ),
        (
            "queued tasks / concurrency",
            RGBColor(230, 140, 0),
            Box::new(queue),
        ),
        (
            "desired count",
            RGBColor(30, 90, 200),
            Box::new(|m: &Minute| f64::from(m.desired)),
        ),
        (
            "worker tasks (billed)",
            RGBColor(200, 30, 30),
            Box::new(|m: &Minute| m.workers as f64),
        ),
    ];
    for (label, color, value) in series {
        chart
            .draw_series(LineSeries::new(
                timeline.iter().map(|m| (hours(m), value(m))),
                color.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_every_series_and_its_title() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.svg");
        let timeline: Vec<Minute> = (0..120)
            .map(|m| Minute {
                minute: m,
                demand: if (30..60).contains(&m) { 40 } else { 0 },
                queued: if (30..35).contains(&m) { 40 } else { 0 },
                desired: if (32..70).contains(&m) { 3 } else { 0 },
                workers: if (33..75).contains(&m) { 3 } else { 0 },
            })
            .collect();
        draw(&path, "bursts × deficit", &timeline, 16).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for text in [
            "bursts × deficit",
            "oracle (demand / concurrency)",
            "desired count",
            "worker tasks (billed)",
            "hours",
        ] {
            assert!(svg.contains(text), "no {text:?} in the chart");
        }
        assert!(svg.matches("<polyline").count() >= 4, "four series");
    }
}
