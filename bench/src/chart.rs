//! `chart.png`: certificates per second against concurrency, log-log, one
//! line per client and validation mode.
//!
//! plotters draws text with ab_glyph from a TTF loaded at run time (no
//! fontconfig or freetype needed): DejaVu Sans from Debian's
//! `fonts-dejavu-core`, which `bench/run.sh` installs. Without a font the
//! chart is drawn without any text, and the report says so.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::results::{Throughput, Tool};
use crate::stack::Mode;

/// Where Debian (and most distributions) put DejaVu Sans.
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers the first font found as `sans-serif`; false if none.
fn load_font() -> bool {
    for p in FONT_PATHS {
        if let Ok(bytes) = std::fs::read(p) {
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

fn color(tool: Tool, mode: Mode) -> RGBColor {
    match (tool, mode) {
        (Tool::Certfleet, Mode::Instant) => RGBColor(0, 90, 200),
        (Tool::Certfleet, Mode::Http01) => RGBColor(0, 150, 220),
        (Tool::Certfleet, Mode::Delay) => RGBColor(90, 190, 240),
        (Tool::Ceiling, Mode::Instant) => RGBColor(40, 40, 40),
        (Tool::Ceiling, Mode::Http01) => RGBColor(110, 110, 110),
        (Tool::Ceiling, Mode::Delay) => RGBColor(170, 170, 170),
        (Tool::Lego, Mode::Instant) => RGBColor(200, 40, 30),
        (Tool::Lego, Mode::Http01) => RGBColor(235, 120, 30),
        (Tool::Lego, Mode::Delay) => RGBColor(240, 180, 40),
        (Tool::Certfleet, Mode::Dns01) => RGBColor(20, 40, 120),
        (Tool::Ceiling, Mode::Dns01) => RGBColor(70, 70, 70),
        (Tool::Lego, Mode::Dns01) => RGBColor(140, 20, 20),
    }
}

/// Draws the chart. Returns whether text (title, axes, legend) could be
/// drawn.
///
/// # Errors
/// The PNG cannot be written.
pub fn draw(runs: &[Throughput], out: &Path) -> anyhow::Result<bool> {
    let text = load_font();
    let mut series: BTreeMap<(Tool, Mode), Vec<(u32, f64)>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.ok > 0) {
        series
            .entry((r.tool, r.mode))
            .or_default()
            .push((r.concurrency.max(1), r.certs_per_s.max(0.01)));
    }
    for pts in series.values_mut() {
        pts.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        // One point per concurrency: the best run there.
        pts.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                earlier.1 = earlier.1.max(later.1);
                true
            } else {
                false
            }
        });
    }
    let max_c = series
        .values()
        .flatten()
        .map(|p| p.0)
        .max()
        .unwrap_or(256)
        .max(8);
    let max_y = series.values().flatten().map(|p| p.1).fold(1.0, f64::max);

    let root = BitMapBackend::new(out, (1100, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(
                "certificates per second vs concurrency (one worker; lego: parallel processes)",
                ("sans-serif", 22),
            )
            .x_label_area_size(50)
            .y_label_area_size(70);
    }
    let mut chart = builder.build_cartesian_2d(
        (1u32..max_c * 2).log_scale(),
        (0.05f64..max_y * 2.0).log_scale(),
    )?;
    if text {
        chart
            .configure_mesh()
            .x_desc("concurrency (orders in flight / lego processes)")
            .y_desc("certificates / s")
            .label_style(("sans-serif", 15))
            .draw()?;
    } else {
        chart.configure_mesh().x_labels(0).y_labels(0).draw()?;
    }
    for ((tool, mode), pts) in &series {
        let c = color(*tool, *mode);
        let style = if *tool == Tool::Ceiling {
            ShapeStyle::from(&c).stroke_width(2)
        } else {
            ShapeStyle::from(&c).stroke_width(3)
        };
        let drawn = chart.draw_series(LineSeries::new(pts.iter().copied(), style))?;
        if text {
            drawn
                .label(format!("{} - {}", tool.as_str(), mode.as_str()))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))
                });
        }
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 5, c.filled())))?;
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()?;
    }
    root.present()?;
    Ok(text)
}
