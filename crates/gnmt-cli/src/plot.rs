//! PNG figures: line charts (training curves, gradient norms), the attention heat map and the
//! residual-stack schematic. Text uses an embedded DejaVu Sans, so no system font library is
//! needed (crates/gnmt-cli/assets/DejaVuSans.LICENSE).

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context};
use plotters::prelude::*;
use plotters::style::FontStyle;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is a valid TrueType file; a failure here would be a build defect.
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            eprintln!("warning: the embedded font could not be loaded; figures have no text");
        }
    });
}

fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

/// One named line of `(x, y)` points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed-looking (thinner, with point markers) when true: e.g. validation points.
    pub markers: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            markers: false,
        }
    }

    pub fn with_markers(mut self) -> Self {
        self.markers = true;
        self
    }
}

/// Colours that stay apart on white, then plotters' palette.
fn colour(i: usize) -> RGBColor {
    const FIXED: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    if i < FIXED.len() {
        FIXED[i]
    } else {
        let c = Palette99::pick(i).to_rgba();
        RGBColor(c.0, c.1, c.2)
    }
}

/// Range of the finite values, widened a little (and made non-empty).
fn span(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    let pad = ((hi - lo) * 0.05).max(1e-9 + hi.abs() * 1e-3);
    Some((lo - pad, hi + pad))
}

/// A line chart with a legend. With `log_y`, values are drawn as log10 (non-positive values
/// are left out) and the axis says so.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> anyhow::Result<()> {
    register_font();
    let series: Vec<Series> = series
        .iter()
        .map(|s| Series {
            points: s
                .points
                .iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0))
                .map(|&(x, y)| (x, if log_y { y.log10() } else { y }))
                .collect(),
            ..s.clone()
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = span(all().map(|p| p.0)).unwrap_or((0.0, 1.0));
    let (y0, y1) = span(all().map(|p| p.1)).unwrap_or((0.0, 1.0));
    let root = BitMapBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    // Integer x values over a short range (layer numbers): one tick per integer.
    let integral = all().all(|p| (p.0 - p.0.round()).abs() < 1e-9) && x1 - x0 <= 32.0;
    let x_ticks = if integral {
        (x1 - x0).round() as usize + 1
    } else {
        10
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(draw_err)?;
    let y_desc = if log_y {
        format!("log10 {y_label}")
    } else {
        y_label.to_string()
    };
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_desc)
        .x_labels(x_ticks)
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 {
                format!("{x:.0}")
            } else {
                format!("{x:.2}")
            }
        })
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(draw_err)?;
    for (i, s) in series.iter().enumerate() {
        let c = colour(i);
        let width = if s.markers { 1 } else { 2 };
        chart
            .draw_series(LineSeries::new(s.points.clone(), c.stroke_width(width)))
            .map_err(draw_err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
        if s.markers {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(draw_err)?;
        }
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(draw_err)?;
    }
    root.present()
        .map_err(draw_err)
        .with_context(|| format!("writing {}", path.display()))
}

/// A heat map of `values[row][col]` in [0, 1] (e.g. attention weights: one row per target
/// token, one column per source token), white to dark blue, with the labels on the axes.
pub fn heatmap(
    path: &Path,
    title: &str,
    rows: &[String],
    cols: &[String],
    values: &[Vec<f32>],
) -> anyhow::Result<()> {
    register_font();
    anyhow::ensure!(
        values.len() == rows.len() && values.iter().all(|r| r.len() == cols.len()),
        "heat map: {} x {} labels for a {} x {} matrix",
        rows.len(),
        cols.len(),
        values.len(),
        values.first().map_or(0, Vec::len)
    );
    let cell = 34i32;
    let (left, top) = (
        20 + 9 * rows.iter().map(|r| r.chars().count()).max().unwrap_or(1) as i32,
        70 + 9 * cols.iter().map(|c| c.chars().count()).max().unwrap_or(1) as i32,
    );
    let width = (left + cell * cols.len() as i32 + 30)
        .max(320)
        .max(20 + 11 * title.chars().count() as i32) as u32;
    let height = (top + cell * rows.len() as i32 + 30).max(200) as u32;
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let text = ("sans-serif", 15).into_font();
    root.draw(&Text::new(
        title.to_string(),
        (10, 10),
        ("sans-serif", 20).into_font(),
    ))
    .map_err(draw_err)?;
    for (j, c) in cols.iter().enumerate() {
        // Column labels written vertically, one character per line, reading downwards.
        let x = left + cell * j as i32 + cell / 2 - 5;
        for (k, ch) in c.chars().enumerate() {
            root.draw(&Text::new(
                ch.to_string(),
                (x, 40 + 9 * k as i32),
                text.clone(),
            ))
            .map_err(draw_err)?;
        }
    }
    for (i, (r, row)) in rows.iter().zip(values).enumerate() {
        let y = top + cell * i as i32;
        root.draw(&Text::new(r.clone(), (10, y + cell / 3), text.clone()))
            .map_err(draw_err)?;
        for (j, &v) in row.iter().enumerate() {
            let v = v.clamp(0.0, 1.0) as f64;
            let shade = |lo: f64, hi: f64| (hi + (lo - hi) * v) as u8;
            let colour = RGBColor(shade(8.0, 255.0), shade(48.0, 255.0), shade(107.0, 255.0));
            let x = left + cell * j as i32;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell - 1, y + cell - 1)],
                colour.filled(),
            ))
            .map_err(draw_err)?;
        }
    }
    root.present()
        .map_err(draw_err)
        .with_context(|| format!("writing {}", path.display()))
}

/// The encoder and decoder stacks of an `layers`-layer GNMT, with the identity paths of the
/// residual connections drawn around the layers they skip (`residual_from`: the first layer
/// with one; `None`: no residual connections).
pub fn residual_schematic(
    path: &Path,
    layers: usize,
    residual_from: Option<usize>,
) -> anyhow::Result<()> {
    register_font();
    let (box_w, box_h, gap) = (190i32, 34i32, 22i32);
    let height = (150 + layers as i32 * (box_h + gap)) as u32;
    let root = BitMapBackend::new(path, (760, height)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let font = ("sans-serif", 16).into_font();
    let title = match residual_from {
        Some(l) => format!("GNMT, {layers}+{layers} layers: residual connections from layer {l}"),
        None => format!("GNMT, {layers}+{layers} layers: no residual connections"),
    };
    root.draw(&Text::new(title, (20, 12), ("sans-serif", 20).into_font()))
        .map_err(draw_err)?;
    let bottom = height as i32 - 50;
    let identity = RGBColor(214, 39, 40);
    for (stack, x) in [("encoder", 80i32), ("decoder", 440)] {
        root.draw(&Text::new(
            format!("{stack} input"),
            (x + 40, bottom + 12),
            font.clone(),
        ))
        .map_err(draw_err)?;
        for l in 1..=layers {
            let y = bottom - (l as i32) * (box_h + gap);
            let label = match (stack, l) {
                ("encoder", 1) => "layer 1 (bidirectional)".to_string(),
                ("decoder", 1) => "layer 1 + attention".to_string(),
                _ => format!("layer {l}"),
            };
            root.draw(&Rectangle::new(
                [(x, y), (x + box_w, y + box_h)],
                RGBColor(222, 235, 247).filled(),
            ))
            .map_err(draw_err)?;
            root.draw(&Rectangle::new(
                [(x, y), (x + box_w, y + box_h)],
                BLACK.stroke_width(1),
            ))
            .map_err(draw_err)?;
            root.draw(&Text::new(label, (x + 12, y + 9), font.clone()))
                .map_err(draw_err)?;
            // The path from the layer below into this layer.
            let centre = x + box_w / 2;
            root.draw(&PathElement::new(
                vec![(centre, y + box_h), (centre, y + box_h + gap)],
                BLACK.stroke_width(1),
            ))
            .map_err(draw_err)?;
            if residual_from.is_some_and(|from| l >= from) {
                // Identity path: from below the layer, around its right side, added above it.
                let (below, above) = (y + box_h + gap / 2, y - gap / 2);
                let side = x + box_w + 24;
                root.draw(&PathElement::new(
                    vec![
                        (centre, below),
                        (side, below),
                        (side, above),
                        (centre + 9, above),
                    ],
                    identity.stroke_width(2),
                ))
                .map_err(draw_err)?;
                root.draw(&Circle::new((centre, above), 9, identity.stroke_width(2)))
                    .map_err(draw_err)?;
                root.draw(&Text::new("+", (centre - 5, above - 10), font.clone()))
                    .map_err(draw_err)?;
            }
        }
    }
    root.draw(&Text::new(
        "red: identity path (the layer's input added to its output)",
        (20, 40),
        font.color(&identity),
    ))
    .map_err(draw_err)?;
    root.present()
        .map_err(draw_err)
        .with_context(|| format!("writing {}", path.display()))
}
