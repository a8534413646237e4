//! Figures of a training run, as PNG and SVG: the loss, the learning rates and
//! the validation metrics, read back from the run's `metrics.jsonl`.
//!
//! Text is drawn with the DejaVu Sans font bundled in `assets/fonts/` (compiled
//! into the binary), so no system font, fontconfig or font cache is needed.
//! Every file is rendered in memory and written atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result, write_atomic};

/// Width and height, in pixels, of every PNG this module writes (and of the SVG canvas).
pub const FIGURE_SIZE: (u32, u32) = (1000, 600);

/// The bundled font (DejaVu Sans; licence in `assets/fonts/LICENSE-DejaVu.txt`).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

const FONT_FAMILY: &str = "sans-serif";

/// Matplotlib's `tab10` colours: distinct, colour-blind tolerable.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Series with at most this many points get a marker on every point.
const MARKER_LIMIT: usize = 60;

/// Registers the bundled font with plotters, once per process.
fn ensure_fonts() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        ["sans-serif", "serif", "monospace"]
            .iter()
            .all(|family| plotters::style::register_font(family, FontStyle::Normal, FONT).is_ok())
    });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "the bundled plot font (assets/fonts/DejaVuSans.ttf) could not be parsed",
        ))
    }
}

// ---------------------------------------------------------------------------
// Figure description
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    width: u32,
    opacity: f64,
    line: bool,
    markers: bool,
}

impl Series {
    fn new(label: impl Into<String>, points: Vec<(f64, f64)>, color: RGBColor) -> Self {
        let markers = points.len() <= MARKER_LIMIT;
        Series {
            label: label.into(),
            points,
            color,
            width: 2,
            opacity: 1.0,
            line: true,
            markers,
        }
    }
}

#[derive(Clone, Debug)]
struct Panel {
    title: Option<String>,
    x_label: String,
    y_label: String,
    series: Vec<Series>,
    log_y: bool,
    /// Shown instead of a chart when no series has a drawable point.
    empty_note: String,
    /// A heatmap `[row][column]` drawn instead of the series.
    heat: Option<Vec<Vec<f64>>>,
}

#[derive(Clone, Debug)]
struct Figure {
    title: String,
    panels: Vec<Panel>,
}

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/// Writes `loss`, `lr` and `validation` figures (each as `.png` and `.svg`) into
/// `run_dir`, from `run_dir/metrics.jsonl`. Returns the paths written.
///
/// - `loss`: training loss per step (faint), its exponential moving average,
///   and the validation loss at validation steps;
/// - `lr`: both learning rates per step, on a log scale when every value is
///   positive, else as two linear panels;
/// - `validation`: every validation metric (and the selection score, where it
///   is not one of them) against the step.
pub fn write_plots(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let metrics_path = run_dir.join("metrics.jsonl");
    let rows = read_metrics(&metrics_path)?;
    let mut written = Vec::with_capacity(6);
    for (stem, figure) in [
        ("loss", loss_figure(&rows)),
        ("lr", lr_figure(&rows)),
        ("validation", validation_figure(&rows)),
    ] {
        let [png, svg] = write_figure(&run_dir.join(stem), &figure)?;
        written.push(png);
        written.push(svg);
    }
    Ok(written)
}

/// One panel of [`plot_panels`]: axis labels and named `(x, y)` series.
pub struct PanelSpec {
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// Line charts stacked vertically in one figure (`{path_stem}.png` and `.svg`).
pub fn plot_panels(path_stem: &Path, title: &str, panels: &[PanelSpec]) -> Result<()> {
    let figure = Figure {
        title: title.to_string(),
        panels: panels
            .iter()
            .map(|p| chart_panel(&p.x_label, &p.y_label, &p.series, false))
            .collect(),
    };
    write_figure(path_stem, &figure).map(|_| ())
}

/// An untitled panel of named `(x, y)` series in palette order.
fn chart_panel(
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
) -> Panel {
    Panel {
        title: None,
        x_label: x_label.to_string(),
        y_label: y_label.to_string(),
        series: series
            .iter()
            .enumerate()
            .map(|(i, (name, points))| {
                Series::new(name.clone(), points.clone(), PALETTE[i % PALETTE.len()])
            })
            .collect(),
        log_y,
        empty_note: "no data".to_string(),
        heat: None,
    }
}

/// A heatmap of `values[row][column]` (`{path_stem}.png` and `.svg`), e.g. the
/// gate's weight per prompt token and space (the paper's Figure 8).
pub fn plot_heatmap(
    path_stem: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    values: &[Vec<f64>],
) -> Result<()> {
    let mut panel = chart_panel(x_label, y_label, &[], false);
    panel.heat = Some(values.to_vec());
    let figure = Figure {
        title: title.to_string(),
        panels: vec![panel],
    };
    write_figure(path_stem, &figure).map(|_| ())
}

/// Draws one line chart of `series` (each a name and its `(x, y)` points) and
/// writes it to `{path_stem}.png` and `{path_stem}.svg`.
///
/// Non-finite points are skipped; series of at most 60 points get markers.
/// With `log_y` every finite `y` must be positive. For sweep figures and the like.
pub fn plot_series(
    path_stem: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
) -> Result<()> {
    if log_y {
        for (name, points) in series {
            if let Some(&(x, y)) = points
                .iter()
                .find(|(x, y)| x.is_finite() && y.is_finite() && *y <= 0.0)
            {
                return Err(Error::invalid(format!(
                    "{}: a log-scale plot needs positive values, series `{name}` has y = {y} at x = {x}",
                    path_stem.display()
                )));
            }
        }
    }
    let figure = Figure {
        title: title.to_string(),
        panels: vec![chart_panel(x_label, y_label, series, log_y)],
    };
    write_figure(path_stem, &figure).map(|_| ())
}

// ---------------------------------------------------------------------------
// metrics.jsonl
// ---------------------------------------------------------------------------

/// A `null` (how serde_json writes NaN and infinities) reads as NaN; the field
/// itself stays required.
fn nullable<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    use serde::Deserialize;
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn nullable_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, f64>, D::Error> {
    use serde::Deserialize;
    let m = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(m.into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

#[derive(serde::Deserialize)]
struct Row {
    step: u64,
    #[serde(deserialize_with = "nullable")]
    loss: f64,
    #[serde(deserialize_with = "nullable")]
    lr_prompt: f64,
    #[serde(deserialize_with = "nullable")]
    lr_low_rank: f64,
    #[serde(default)]
    validation: Option<Validation>,
}

#[derive(serde::Deserialize)]
struct Validation {
    #[serde(deserialize_with = "nullable")]
    loss: f64,
    #[serde(default, deserialize_with = "nullable_map")]
    metrics: BTreeMap<String, f64>,
    #[serde(default = "nan", deserialize_with = "nullable")]
    selection: f64,
}

fn nan() -> f64 {
    f64::NAN
}

fn read_metrics(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).map_err(|e| match Error::io(path, e) {
        Error::NotFound { path, .. } => Error::NotFound {
            path,
            hint: "the metrics log of a training run".to_string(),
        },
        other => other,
    })?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(line).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            line: Some(i + 1),
            msg: e.to_string(),
        })?;
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(Error::data(path, "no training step logged"));
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------
// The three run figures
// ---------------------------------------------------------------------------

/// Debiased exponential moving average (TensorBoard's smoothing) over the finite values.
fn ema(points: &[(f64, f64)], span: f64) -> Vec<(f64, f64)> {
    let alpha = 1.0 / span.max(1.0);
    let (mut m, mut w) = (0.0, 0.0);
    let mut out = Vec::with_capacity(points.len());
    for &(x, y) in points {
        if !y.is_finite() {
            continue;
        }
        m = (1.0 - alpha) * m + alpha * y;
        w = (1.0 - alpha) * w + alpha;
        out.push((x, m / w));
    }
    out
}

fn loss_figure(rows: &[Row]) -> Figure {
    let train: Vec<(f64, f64)> = rows.iter().map(|r| (r.step as f64, r.loss)).collect();
    let finite = train.iter().filter(|p| p.1.is_finite()).count();
    let span = (finite as f64 / 60.0).clamp(1.0, 100.0).round();
    let validation: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| r.validation.as_ref().map(|v| (r.step as f64, v.loss)))
        .collect();

    let mut series = vec![Series {
        opacity: 0.3,
        width: 1,
        markers: false,
        ..Series::new("train loss", train.clone(), PALETTE[0])
    }];
    if finite >= 5 {
        series.push(Series {
            markers: false,
            ..Series::new(
                format!("train loss, EMA (span {span})"),
                ema(&train, span),
                RGBColor(8, 48, 107),
            )
        });
    }
    if !validation.is_empty() {
        series.push(Series {
            markers: true,
            ..Series::new("validation loss", validation, PALETTE[1])
        });
    }
    Figure {
        title: "Loss".to_string(),
        panels: vec![Panel {
            title: None,
            x_label: "step".to_string(),
            y_label: "loss".to_string(),
            series,
            log_y: false,
            empty_note: "no finite loss logged".to_string(),
            heat: None,
        }],
    }
}

fn lr_figure(rows: &[Row]) -> Figure {
    let prompt: Vec<(f64, f64)> = rows.iter().map(|r| (r.step as f64, r.lr_prompt)).collect();
    let low_rank: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| (r.step as f64, r.lr_low_rank))
        .collect();
    let positive = |s: &[(f64, f64)]| s.iter().all(|p| !p.1.is_finite() || p.1 > 0.0);
    let any_finite = |s: &[(f64, f64)]| s.iter().any(|p| p.1.is_finite());
    let one = |label: &str, points: Vec<(f64, f64)>, color| Series {
        markers: false,
        ..Series::new(label, points, color)
    };
    let note = "no finite learning rate logged".to_string();
    let panels =
        if positive(&prompt) && positive(&low_rank) && any_finite(&prompt) && any_finite(&low_rank)
        {
            vec![Panel {
                title: None,
                x_label: "step".to_string(),
                y_label: "learning rate".to_string(),
                series: vec![
                    one("prompt", prompt, PALETTE[0]),
                    one("low-rank", low_rank, PALETTE[1]),
                ],
                log_y: true,
                empty_note: note,
                heat: None,
            }]
        } else {
            vec![
                Panel {
                    title: Some("prompt".to_string()),
                    x_label: "step".to_string(),
                    y_label: "learning rate".to_string(),
                    series: vec![one("prompt", prompt, PALETTE[0])],
                    log_y: false,
                    empty_note: note.clone(),
                    heat: None,
                },
                Panel {
                    title: Some("low-rank".to_string()),
                    x_label: "step".to_string(),
                    y_label: "learning rate".to_string(),
                    series: vec![one("low-rank", low_rank, PALETTE[1])],
                    log_y: false,
                    empty_note: note,
                    heat: None,
                },
            ]
        };
    Figure {
        title: "Learning rates".to_string(),
        panels,
    }
}

fn validation_figure(rows: &[Row]) -> Figure {
    let mut metrics: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut selection = Vec::new();
    for r in rows {
        if let Some(v) = &r.validation {
            let x = r.step as f64;
            for (name, &value) in &v.metrics {
                metrics.entry(name.as_str()).or_default().push((x, value));
            }
            selection.push((x, v.selection));
        }
    }
    // The selection score is usually one of the metrics (or their mean): draw it
    // only when it differs from every metric.
    let same = |a: &[(f64, f64)], b: &[(f64, f64)]| {
        a.len() == b.len()
            && a.iter().zip(b).all(|(p, q)| {
                p.0 == q.0
                    && (p.1 == q.1 || (p.1 - q.1).abs() <= 1e-12 || (p.1.is_nan() && q.1.is_nan()))
            })
    };
    let mut series: Vec<Series> = metrics
        .iter()
        .enumerate()
        .map(|(i, (name, points))| Series::new(*name, points.clone(), PALETTE[i % PALETTE.len()]))
        .collect();
    if selection.iter().any(|p| p.1.is_finite()) && !metrics.values().any(|m| same(m, &selection)) {
        let color = PALETTE[series.len() % PALETTE.len()];
        series.push(Series {
            width: 3,
            ..Series::new("selection", selection, color)
        });
    }
    Figure {
        title: "Validation metrics".to_string(),
        panels: vec![Panel {
            title: None,
            x_label: "step".to_string(),
            y_label: "score".to_string(),
            series,
            log_y: false,
            empty_note: "no validation step logged yet".to_string(),
            heat: None,
        }],
    }
}

// ---------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------

fn with_ext(stem: &Path, ext: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Renders `figure` to `{stem}.png` and `{stem}.svg`, atomically each.
fn write_figure(stem: &Path, figure: &Figure) -> Result<[PathBuf; 2]> {
    ensure_fonts()?;
    let (w, h) = FIGURE_SIZE;
    let png_path = with_ext(stem, "png");
    let svg_path = with_ext(stem, "svg");

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, FIGURE_SIZE).into_drawing_area();
        draw_figure(&root, figure)
            .and_then(|()| root.present())
            .map_err(|e| Error::data(&svg_path, format!("rendering the plot: {e}")))?;
    }

    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, FIGURE_SIZE).into_drawing_area();
        draw_figure(&root, figure)
            .and_then(|()| root.present())
            .map_err(|e| Error::data(&png_path, format!("rendering the plot: {e}")))?;
    }
    let png =
        encode_png(&rgb, w, h).map_err(|e| Error::data(&png_path, format!("encoding PNG: {e}")))?;

    write_atomic(&png_path, &png)?;
    write_atomic(&svg_path, svg.as_bytes())?;
    Ok([png_path, svg_path])
}

fn encode_png(rgb: &[u8], w: u32, h: u32) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw_figure<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    figure: &Figure,
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let body = root.titled(&figure.title, (FONT_FAMILY, 26).into_font())?;
    let areas = body.split_evenly((figure.panels.len().max(1), 1));
    for (area, panel) in areas.iter().zip(&figure.panels) {
        draw_panel(area, panel)?;
    }
    Ok(())
}

/// `(lo, hi)` of the finite values, or `None`.
fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

fn padded(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    if hi > lo {
        let pad = (hi - lo) * frac;
        (lo - pad, hi + pad)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    }
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> DrawResult<DB> {
    if let Some(heat) = &panel.heat {
        return draw_heat(area, panel, heat);
    }
    // Only the drawable points: finite, and positive on a log axis.
    let series: Vec<Series> = panel
        .series
        .iter()
        .map(|s| Series {
            points: s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!panel.log_y || *y > 0.0))
                .collect(),
            ..s.clone()
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    let all = || series.iter().flat_map(|s| s.points.iter().copied());
    let (Some((x_lo, x_hi)), Some((y_lo, y_hi))) =
        (extent(all().map(|p| p.0)), extent(all().map(|p| p.1)))
    else {
        let (w, h) = area.dim_in_pixel();
        let style = (FONT_FAMILY, 20)
            .into_font()
            .color(&BLACK.mix(0.6))
            .pos(Pos::new(HPos::Center, VPos::Center));
        let mut text = panel.empty_note.clone();
        if let Some(t) = &panel.title {
            text = format!("{t}: {text}");
        }
        return area.draw(&Text::new(text, (w as i32 / 2, h as i32 / 2), style));
    };
    let (x0, x1) = padded(x_lo, x_hi, 0.02);

    let mut builder = ChartBuilder::on(area);
    builder
        .margin(12)
        .margin_right(24)
        .x_label_area_size(48)
        .y_label_area_size(84);
    if let Some(t) = &panel.title {
        builder.caption(t, (FONT_FAMILY, 18));
    }
    if panel.log_y {
        let lo = 10f64.powf(y_lo.log10().floor());
        let mut hi = 10f64.powf(y_hi.log10().ceil());
        if hi <= lo {
            hi = lo * 10.0;
        }
        let chart = builder.build_cartesian_2d(x0..x1, (lo..hi).log_scale())?;
        let norm = move |y: f64| (y.log10() - lo.log10()) / (hi.log10() - lo.log10());
        draw_chart(chart, panel, &series, (x0, x1), norm)
    } else {
        let (y0, y1) = padded(y_lo, y_hi, 0.05);
        let chart = builder.build_cartesian_2d(x0..x1, y0..y1)?;
        let norm = move |y: f64| (y - y0) / (y1 - y0);
        draw_chart(chart, panel, &series, (x0, x1), norm)
    }
}

/// Cells coloured from white (0) to the palette's blue (the largest value), each labelled.
fn draw_heat<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    heat: &[Vec<f64>],
) -> DrawResult<DB> {
    let rows = heat.len();
    let cols = heat.iter().map(Vec::len).max().unwrap_or(0);
    let max = heat
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-12);
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(12)
        .margin_right(24)
        .x_label_area_size(48)
        .y_label_area_size(84);
    let mut chart = builder.build_cartesian_2d(0f64..cols as f64, rows as f64..0f64)?;
    let fmt = |v: &f64| format!("{}", v.floor() as i64);
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .x_labels(cols.min(20))
        .y_labels(rows.min(30))
        .x_label_formatter(&fmt)
        .y_label_formatter(&fmt)
        .label_style((FONT_FAMILY, 15))
        .axis_desc_style((FONT_FAMILY, 17))
        .draw()?;
    let base = PALETTE[0];
    for (r, row) in heat.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let t = if v.is_finite() {
                (v / max).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let mix = |ch: u8| (255.0 - (255.0 - ch as f64) * t).round() as u8;
            let color = RGBColor(mix(base.0), mix(base.1), mix(base.2));
            let (x, y) = (c as f64, r as f64);
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x, y), (x + 1.0, y + 1.0)],
                color.filled(),
            )))?;
            if rows <= 40 && cols <= 16 {
                let text_color = if t > 0.6 { WHITE } else { BLACK };
                let style = (FONT_FAMILY, 12)
                    .into_font()
                    .color(&text_color)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                chart.draw_series(std::iter::once(Text::new(
                    format!("{v:.2}"),
                    (x + 0.5, y + 0.5),
                    style,
                )))?;
            }
        }
    }
    Ok(())
}

fn draw_chart<'a, DB, Y>(
    mut chart: ChartContext<'a, DB, Cartesian2d<RangedCoordf64, Y>>,
    panel: &Panel,
    series: &[Series],
    (x0, x1): (f64, f64),
    norm_y: impl Fn(f64) -> f64,
) -> DrawResult<DB>
where
    DB: DrawingBackend + 'a,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let x_fmt = |x: &f64| format_number(*x);
    let y_fmt = |y: &f64| format_number(*y);
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .x_labels(10)
        .y_labels(10)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style((FONT_FAMILY, 15))
        .axis_desc_style((FONT_FAMILY, 17))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(BLACK.mix(0.04))
        .draw()?;

    for s in series {
        let color = s.color.mix(s.opacity);
        let style = ShapeStyle {
            color,
            filled: false,
            stroke_width: s.width,
        };
        let fill = s.color.filled();
        let radius = s.width + 2;
        let mut legend_done = false;
        if s.line {
            let anno = chart.draw_series(LineSeries::new(s.points.iter().copied(), style))?;
            if !s.label.is_empty() {
                let markers = s.markers;
                // The legend swatch is always opaque, so faint lines stay identifiable.
                let swatch = ShapeStyle {
                    color: s.color.mix(s.opacity.max(0.6)),
                    filled: false,
                    stroke_width: s.width.max(2),
                };
                anno.label(s.label.as_str()).legend(move |(x, y)| {
                    let line = PathElement::new(vec![(x, y), (x + 24, y)], swatch);
                    let dot_style = if markers { fill } else { TRANSPARENT.filled() };
                    let dot = Circle::new((x + 12, y), radius, dot_style);
                    EmptyElement::at((0, 0)) + line + dot
                });
                legend_done = true;
            }
        }
        if s.markers {
            let anno = chart.draw_series(s.points.iter().map(|&p| Circle::new(p, radius, fill)))?;
            if !legend_done && !s.label.is_empty() {
                anno.label(s.label.as_str())
                    .legend(move |(x, y)| Circle::new((x + 12, y), radius, fill));
            }
        }
    }

    // A titled single-series panel names its series already.
    let redundant = panel.title.is_some() && series.len() == 1;
    if !redundant && series.iter().any(|s| !s.label.is_empty()) {
        chart
            .configure_series_labels()
            .position(legend_corner(series, (x0, x1), norm_y))
            .margin(12)
            .legend_area_size(32)
            .label_font((FONT_FAMILY, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
    }
    Ok(())
}

/// The plot corner with the fewest data points under it, for the legend.
fn legend_corner(
    series: &[Series],
    (x0, x1): (f64, f64),
    norm_y: impl Fn(f64) -> f64,
) -> SeriesLabelPosition {
    let corners = [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    let mut counts = [0usize; 4];
    for s in series {
        for &(x, y) in &s.points {
            let u = (x - x0) / (x1 - x0);
            let v = norm_y(y);
            for (i, &(_, right, upper)) in corners.iter().enumerate() {
                let in_x = if right { u >= 0.55 } else { u <= 0.45 };
                let in_y = if upper { v >= 0.6 } else { v <= 0.4 };
                if in_x && in_y {
                    counts[i] += 1;
                }
            }
        }
    }
    let best = (0..4).min_by_key(|&i| counts[i]).unwrap_or(0);
    corners[best].0.clone()
}

/// Tick labels: up to four significant digits, scientific outside [1e-3, 1e6).
fn format_number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 {
            "0".to_string()
        } else {
            v.to_string()
        };
    }
    let a = v.abs();
    if !(1e-3..1e6).contains(&a) {
        let s = format!("{v:.3e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = if mantissa.contains('.') {
            mantissa.trim_end_matches('0').trim_end_matches('.')
        } else {
            mantissa
        };
        return format!("{mantissa}e{exp}");
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" { "0".to_string() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_format() {
        assert_eq!(format_number(0.0), "0");
        assert_eq!(format_number(1e-4), "1e-4");
        assert_eq!(format_number(2.5e-4), "2.5e-4");
        assert_eq!(format_number(0.3), "0.3");
        assert_eq!(format_number(1500.0), "1500");
        assert_eq!(format_number(0.12345), "0.1235");
        assert_eq!(format_number(3.0000000000000004e-4), "3e-4");
    }

    #[test]
    fn ema_is_debiased() {
        let pts = [(0.0, 2.0), (1.0, 2.0), (2.0, f64::NAN), (3.0, 2.0)];
        let e = ema(&pts, 10.0);
        assert_eq!(e.len(), 3);
        assert!(e.iter().all(|p| (p.1 - 2.0).abs() < 1e-12));
    }
}
