//! The chart of one run: over time, the workers the oracle would run, the service's
//! desired count, the worker tasks that exist, and the queue (in workers' worth of
//! tasks), drawn with plotters as PNG or SVG (by the file's extension).
//!
//! Text is laid out by ab_glyph (pure Rust) with a TrueType font read at run time
//! ([`load_font`]): no fontconfig and no C library at build time, and no font file in the
//! repository.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
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

/// Where a TrueType font is looked for when none is named: DejaVu Sans or Liberation
/// Sans where Debian, Ubuntu, Fedora and Arch put them.
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

static FONT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Makes `font` (or the first of [`FONT_PATHS`] that exists) the charts' font, once per
/// process; later calls return the first result.
pub fn load_font(font: Option<&Path>) -> Result<PathBuf, ChartError> {
    FONT.get_or_init(|| {
        let path = match font {
            Some(p) => p.to_path_buf(),
            None => FONT_PATHS
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .ok_or_else(|| {
                    format!(
                        "no TrueType font found (looked for {}): pass --chart-font FILE.ttf, or install fonts-dejavu-core",
                        FONT_PATHS.join(", ")
                    )
                })?,
        };
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // plotters keeps fonts for the whole process: the bytes live as long.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a TrueType or OpenType font", path.display()))?;
        Ok(path)
    })
    .clone()
    .map_err(|message| ChartError {
        path: "the chart font".into(),
        message,
    })
}

/// Draws `timeline` (per minute) into `path`, a `.png` (1200 × 420) or an `.svg`, titled
/// `title`. [`load_font`] must have succeeded.
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
    let size = (1200, 420);
    match path.extension().and_then(|e| e.to_str()) {
        Some("png") => render(
            BitMapBackend::new(path, size).into_drawing_area(),
            title,
            timeline,
            concurrency,
        ),
        Some("svg") => render(
            SVGBackend::new(path, size).into_drawing_area(),
            title,
            timeline,
            concurrency,
        ),
        _ => Err("the chart's file name must end in .png or .svg".to_string()),
    }
    .map_err(|e| fail(&e))
}

fn render<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    timeline: &[Minute],
    concurrency: u32,
) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| e.to_string();
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
    fn a_png_chart_is_an_image_of_the_stated_size() {
        load_font(None).expect("a TrueType font (scripts/setup-system installs fonts-dejavu-core)");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.png");
        let timeline: Vec<Minute> = (0..120)
            .map(|m| Minute {
                minute: m,
                demand: if (30..60).contains(&m) { 40 } else { 0 },
                queued: 0,
                desired: 3,
                workers: 3,
            })
            .collect();
        draw(&path, "a png", &timeline, 16).unwrap();
        let png = std::fs::read(&path).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height, big-endian, at bytes 16..24.
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 1200);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 420);
        assert!(
            png.len() > 10_000,
            "a blank image would compress to far less"
        );
        let err = draw(&dir.path().join("run.gif"), "x", &timeline, 16).unwrap_err();
        assert!(err.to_string().contains(".png or .svg"), "{err}");
    }

    #[test]
    fn a_chart_has_every_series_and_its_title() {
        load_font(None).expect("a TrueType font (scripts/setup-system installs fonts-dejavu-core)");
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
