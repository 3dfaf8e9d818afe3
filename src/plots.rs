//! The pictures in `output/data`, drawn into RGB buffers with plotters and encoded as PNG.
//!
//! Text uses DejaVu Sans, compiled into the binary (`src/fonts`, with its licence), so a
//! container without any system font draws the same pictures. Images are shown as the notebook
//! shows them, with matplotlib's `binary` colour map: pixel 0 (Fashion-MNIST's background) white,
//! 255 black. The layouts are public so that tests can find what should be where.

use std::error::Error;
use std::sync::{Once, OnceLock};

use ab_glyph::{point, Font, FontRef, Glyph, PxScale, ScaleFont};
use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::HPos;
use plotters::style::{register_font, FontStyle};

use crate::evaluation::Predictions;
use crate::metrics::Metrics;

static FONT: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");
static FONT_BOLD: &[u8] = include_bytes!("fonts/DejaVuSans-Bold.ttf");

/// Right, the true class, the training curve (matplotlib's tab:blue).
pub const BLUE: RGBColor = RGBColor(31, 119, 180);
/// Wrong, the predicted class when wrong (tab:red).
pub const RED: RGBColor = RGBColor(214, 39, 40);
/// The validation curve (tab:orange).
pub const ORANGE: RGBColor = RGBColor(255, 127, 14);
/// Bars of the other classes.
pub const GREY: RGBColor = RGBColor(150, 150, 150);
const TEXT: RGBColor = RGBColor(30, 30, 30);
const MUTED: RGBColor = RGBColor(90, 90, 90);
const FRAME: RGBColor = RGBColor(190, 190, 190);
const ZERO: RGBColor = RGBColor(185, 185, 185);

type DrawResult<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for family in ["sans-serif", "serif", "monospace"] {
            // The fonts are compiled in: failing to parse them is a build defect.
            register_font(family, FontStyle::Normal, FONT).ok().expect("embedded font parses");
            register_font(family, FontStyle::Bold, FONT_BOLD).ok().expect("embedded font parses");
        }
    });
}

/// An RGB picture: `height` rows of `width` pixels, 3 bytes each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Picture {
    pub fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn get_pixel(&self, x: u32, y: u32) -> [u8; 3] {
        assert!(
            x < self.width && y < self.height,
            "({x}, {y}) is outside {}x{}",
            self.width,
            self.height
        );
        let i = 3 * (y as usize * self.width as usize + x as usize);
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// The picture as an 8-bit RGB PNG.
    pub fn png(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, self.width, self.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(&self.rgb)?;
        w.finish()?;
        Ok(out)
    }

    /// Reads back an 8-bit RGB PNG such as [`Self::png`] writes.
    pub fn from_png(bytes: &[u8]) -> Result<Self> {
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info()?;
        let mut rgb = vec![0; reader.output_buffer_size().unwrap_or(0)];
        let frame = reader.next_frame(&mut rgb)?;
        if (frame.color_type, frame.bit_depth) != (png::ColorType::Rgb, png::BitDepth::Eight) {
            anyhow::bail!("a {:?} {:?} PNG, not 8-bit RGB", frame.bit_depth, frame.color_type);
        }
        rgb.truncate(frame.buffer_size());
        Ok(Self { width: frame.width, height: frame.height, rgb })
    }
}

/// Draws on a white `w × h` canvas.
fn render(w: u32, h: u32, draw: impl FnOnce(&Area) -> DrawResult<()>) -> Result<Picture> {
    fonts();
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root).map_err(|e| anyhow!("drawing a plot: {e}"))?;
        root.present().map_err(|e| anyhow!("drawing a plot: {e}"))?;
    }
    Ok(Picture { width: w, height: h, rgb: buf })
}

fn font(size: u32, bold: bool) -> FontDesc<'static> {
    let style = if bold { FontStyle::Bold } else { FontStyle::Normal };
    FontDesc::new(FontFamily::SansSerif, size as f64, style)
}

fn face(bold: bool) -> &'static FontRef<'static> {
    static FACES: OnceLock<(FontRef<'static>, FontRef<'static>)> = OnceLock::new();
    let (regular, heavy) = FACES.get_or_init(|| {
        let parse = |b| FontRef::try_from_slice(b).expect("embedded font parses");
        (parse(FONT), parse(FONT_BOLD))
    });
    if bold {
        heavy
    } else {
        regular
    }
}

/// Lays out `s` on one line: each glyph at its pen position (kerned, fractional), and the
/// line's advance width.
fn layout(s: &str, size: u32, bold: bool) -> (Vec<Glyph>, f32) {
    let scaled = face(bold).as_scaled(PxScale::from(size as f32));
    let mut caret = 0.0f32;
    let mut prev = None;
    let mut glyphs = Vec::with_capacity(s.len());
    for c in s.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            caret += scaled.kern(p, id);
        }
        glyphs.push(id.with_scale_and_position(size as f32, point(caret, 0.0)));
        caret += scaled.h_advance(id);
        prev = Some(id);
    }
    (glyphs, caret)
}

fn text_width(s: &str, size: u32, bold: bool) -> u32 {
    layout(s, size, bold).1.ceil() as u32
}

/// Draws `s` with its baseline through `(x, y)`, aligned on `x` by `h`; `upward` turns it a
/// quarter turn anticlockwise (reading bottom to top, its baseline the vertical through `x`).
/// Glyphs keep their bearings, kerning and fractional positions, anti-aliased (plotters' own
/// ab_glyph text drops the bearings, which spaces letters unevenly).
#[allow(clippy::too_many_arguments)]
fn draw_text(
    area: &Area,
    s: &str,
    (x, y): (i32, i32),
    size: u32,
    bold: bool,
    color: &RGBColor,
    h: HPos,
    upward: bool,
) -> DrawResult<()> {
    let (glyphs, width) = layout(s, size, bold);
    let start = match h {
        HPos::Left => 0.0,
        HPos::Center => -width / 2.0,
        HPos::Right => -width,
    };
    for mut g in glyphs {
        g.position.x += start;
        let Some(outline) = face(bold).outline_glyph(g) else { continue };
        let b = outline.px_bounds();
        let mut result = Ok(());
        outline.draw(|gx, gy, coverage| {
            if coverage <= 0.0 || result.is_err() {
                return;
            }
            // Offsets from the pen's start on the baseline.
            let (dx, dy) = (b.min.x as i32 + gx as i32, b.min.y as i32 + gy as i32);
            let (px, py) = if upward { (x + dy, y - dx) } else { (x + dx, y + dy) };
            result = area.draw_pixel((px, py), &color.mix(coverage.min(1.0) as f64));
        });
        result?;
    }
    Ok(())
}

/// [`draw_text`], left to right.
fn text(
    area: &Area,
    s: &str,
    at: (i32, i32),
    size: u32,
    bold: bool,
    color: &RGBColor,
    h: HPos,
) -> DrawResult<()> {
    draw_text(area, s, at, size, bold, color, h, false)
}

/// The longest prefix of `s` (ending in "…") that fits in `width` pixels.
fn fit_text(s: &str, size: u32, width: u32) -> String {
    if text_width(s, size, false) <= width {
        return s.to_string();
    }
    let chars: Vec<char> = s.chars().collect();
    (0..chars.len())
        .rev()
        .map(|n| chars[..n].iter().collect::<String>() + "…")
        .find(|t| text_width(t, size, false) <= width)
        .unwrap_or_default()
}

/// Where a `rows × cols` image goes in a square box of `size` pixels: an integer scale when the
/// image fits at least once (sharp pixels), else shrunk. Returns the drawn width and height.
pub fn fit_image(rows: usize, cols: usize, size: u32) -> (u32, u32) {
    let longest = rows.max(cols).max(1) as u32;
    if longest <= size {
        let s = size / longest;
        (cols as u32 * s, rows as u32 * s)
    } else {
        (
            ((cols as u64 * size as u64) / longest as u64).max(1) as u32,
            ((rows as u64 * size as u64) / longest as u64).max(1) as u32,
        )
    }
}

/// The source pixel shown at (`px`, `py`) of an image drawn `w × h`: nearest neighbour.
pub fn source_pixel(px: u32, py: u32, (w, h): (u32, u32), rows: usize, cols: usize) -> usize {
    let r = (py as usize * rows) / h as usize;
    let c = (px as usize * cols) / w as usize;
    r * cols + c
}

/// matplotlib's `binary` colour map: 0 white, 255 black.
pub fn binary(v: u8) -> RGBColor {
    RGBColor(255 - v, 255 - v, 255 - v)
}

/// Draws a grayscale image centred in the `size`-pixel box at `(x, y)`, framed.
fn draw_image(
    area: &Area,
    pixels: &[u8],
    rows: usize,
    cols: usize,
    (x, y): (i32, i32),
    size: u32,
) -> DrawResult<()> {
    let (w, h) = fit_image(rows, cols, size);
    let (x0, y0) = (x + (size - w) as i32 / 2, y + (size - h) as i32 / 2);
    for py in 0..h {
        for px in 0..w {
            let v = pixels[source_pixel(px, py, (w, h), rows, cols)];
            area.draw_pixel((x0 + px as i32, y0 + py as i32), &binary(v))?;
        }
    }
    area.draw(&Rectangle::new([(x0 - 1, y0 - 1), (x0 + w as i32, y0 + h as i32)], FRAME))?;
    Ok(())
}

/// Cells laid out in rows of `cols`, below a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub top: u32,
    pub cols: u32,
    pub cell_w: u32,
    pub cell_h: u32,
}

impl Grid {
    /// The top-left corner of cell `i`.
    pub fn cell(&self, i: usize) -> (u32, u32) {
        let i = i as u32;
        ((i % self.cols) * self.cell_w, self.top + (i / self.cols) * self.cell_h)
    }

    /// Canvas size for `n` cells.
    pub fn size(&self, n: usize) -> (u32, u32) {
        let rows = (n as u32).div_ceil(self.cols).max(1);
        (self.cols * self.cell_w, self.top + rows * self.cell_h)
    }
}

/// `samples.png`: 5 × 5 images with their class names under them.
pub const SAMPLES: Grid = Grid { top: 56, cols: 5, cell_w: 172, cell_h: 186 };
/// The image box of a `samples.png` cell, relative to the cell: (x, y, size).
pub const SAMPLES_IMAGE: (u32, u32, u32) = (16, 8, 140);
/// How many images `samples.png` shows.
pub const SAMPLE_COUNT: usize = 25;

/// `samples.png`: the first 25 training images with their class names, as the notebook's first
/// look at the data. `images` holds `rows × cols` bytes per image.
pub fn samples(
    images: &[u8],
    labels: &[u8],
    (rows, cols): (usize, usize),
    class_names: &[String],
) -> Result<Picture> {
    let n = labels.len().min(SAMPLE_COUNT);
    let (w, h) = SAMPLES.size(n);
    render(w, h, |area| {
        text(
            area,
            "The first 25 training images",
            (w as i32 / 2, 34),
            22,
            true,
            &TEXT,
            HPos::Center,
        )?;
        let (ix, iy, size) = SAMPLES_IMAGE;
        for i in 0..n {
            let (x, y) = SAMPLES.cell(i);
            let img = &images[i * rows * cols..(i + 1) * rows * cols];
            draw_image(area, img, rows, cols, ((x + ix) as i32, (y + iy) as i32), size)?;
            let name = class_name(class_names, labels[i] as usize);
            let name = fit_text(&name, 16, SAMPLES.cell_w - 8);
            let baseline = (y + iy + size + 24) as i32;
            text(
                area,
                &name,
                ((x + SAMPLES.cell_w / 2) as i32, baseline),
                16,
                false,
                &TEXT,
                HPos::Center,
            )?;
        }
        Ok(())
    })
}

fn class_name(names: &[String], c: usize) -> String {
    names.get(c).cloned().unwrap_or_else(|| c.to_string())
}

/// `predictions.png`: 5 rows of 3 (image, bar chart) pairs.
pub const PREDICTIONS: Grid = Grid { top: 92, cols: 3, cell_w: 420, cell_h: 188 };
/// The image box of a `predictions.png` cell, relative to the cell: (x, y, size).
pub const PREDICTIONS_IMAGE: (u32, u32, u32) = (18, 10, 112);
/// The bar chart's plot box in a `predictions.png` cell: (x, y, width, height); bars go from
/// its bottom (probability 0) to its top (probability 1).
pub const PREDICTIONS_BARS: (u32, u32, u32, u32) = (160, 10, 240, 112);
/// The caption's baseline, relative to the cell.
pub const PREDICTIONS_CAPTION_Y: u32 = 162;
/// How many images `predictions.png` shows.
pub const PREDICTION_COUNT: usize = 15;

/// The `[left, right)` pixel columns of class `c`'s bar among `k`, relative to the bar box.
pub fn bar_span(c: usize, k: usize) -> (u32, u32) {
    let slot = PREDICTIONS_BARS.2 as f64 / k as f64;
    let pad = (slot * 0.15).floor();
    (
        (c as f64 * slot + pad) as u32,
        ((c + 1) as f64 * slot - pad).max(c as f64 * slot + pad + 1.0) as u32,
    )
}

/// `predictions.png`: the notebook's grid — the first 15 images, each with its predicted class,
/// confidence and true class (blue when right, red when wrong) beside a bar chart of its class
/// probabilities (the predicted class red when wrong, the true class blue).
pub fn predictions(
    images: &[u8],
    labels: &[u8],
    (rows, cols): (usize, usize),
    predicted: &Predictions,
    class_names: &[String],
    dataset: &str,
) -> Result<Picture> {
    let n = predicted.len().min(labels.len()).min(PREDICTION_COUNT);
    let k = predicted.num_classes;
    let (w, h) = PREDICTIONS.size(n);
    let right = (0..n).filter(|&i| predicted.classes[i] == labels[i] as usize).count();
    render(w, h, |area| {
        let title = format!("Predictions for the first {n} {dataset} images: {right} of {n} right");
        text(area, &title, (w as i32 / 2, 32), 22, true, &TEXT, HPos::Center)?;
        let legend_y = 66;
        let mut x = 24;
        for (s, color) in [
            ("Predicted class, confidence (true class):  ", &MUTED),
            ("right", &BLUE),
            ("  ", &MUTED),
            ("wrong", &RED),
            (&format!(".   Bars: probability of each class 0–{};  ", k - 1), &MUTED),
            ("true class", &BLUE),
            (",  ", &MUTED),
            ("predicted when wrong", &RED),
        ] {
            text(area, s, (x, legend_y), 15, false, color, HPos::Left)?;
            x += text_width(s, 15, false) as i32;
        }
        for i in 0..n {
            let (cx, cy) = PREDICTIONS.cell(i);
            let img = &images[i * rows * cols..(i + 1) * rows * cols];
            let (ix, iy, size) = PREDICTIONS_IMAGE;
            draw_image(area, img, rows, cols, ((cx + ix) as i32, (cy + iy) as i32), size)?;
            let (truth, guess) = (labels[i] as usize, predicted.classes[i]);
            let probs = predicted.probabilities(i);
            draw_bars(area, (cx, cy), probs, truth, guess)?;
            let color = if truth == guess { &BLUE } else { &RED };
            let caption = format!(
                "{} {:.0}% ({})",
                class_name(class_names, guess),
                100.0 * probs[guess],
                class_name(class_names, truth)
            );
            let caption = fit_text(&caption, 16, PREDICTIONS.cell_w - 12);
            let at = ((cx + PREDICTIONS.cell_w / 2) as i32, (cy + PREDICTIONS_CAPTION_Y) as i32);
            text(area, &caption, at, 16, false, color, HPos::Center)?;
        }
        Ok(())
    })
}

fn draw_bars(
    area: &Area,
    (cx, cy): (u32, u32),
    probs: &[f32],
    truth: usize,
    guess: usize,
) -> DrawResult<()> {
    let (bx, by, bw, bh) = PREDICTIONS_BARS;
    let (x0, y0) = ((cx + bx) as i32, (cy + by) as i32);
    let bottom = y0 + bh as i32;
    // Gridlines at 0.5 and 1, the axis at 0.
    for (frac, color) in [(0.5, RGBColor(230, 230, 230)), (1.0, RGBColor(230, 230, 230))] {
        let y = bottom - (frac * bh as f64).round() as i32;
        area.draw(&PathElement::new(vec![(x0, y), (x0 + bw as i32, y)], color))?;
    }
    let k = probs.len();
    for (c, &p) in probs.iter().enumerate() {
        let color = if c == truth {
            BLUE
        } else if c == guess {
            RED
        } else {
            GREY
        };
        let (l, r) = bar_span(c, k);
        let top = bottom - (p.clamp(0.0, 1.0) as f64 * bh as f64).round() as i32;
        if top < bottom {
            area.draw(&Rectangle::new(
                [(x0 + l as i32, top), (x0 + r as i32, bottom)],
                color.filled(),
            ))?;
        }
    }
    area.draw(&PathElement::new(vec![(x0, bottom), (x0 + bw as i32, bottom)], MUTED))?;
    // Class numbers under the bars, as many as fit.
    let slot = bw as f64 / k as f64;
    let every = (18.0 / slot).ceil().max(1.0) as usize;
    for c in (0..k).step_by(every) {
        let x = x0 + ((c as f64 + 0.5) * slot) as i32;
        text(area, &c.to_string(), (x, bottom + 17), 13, false, &MUTED, HPos::Center)?;
    }
    text(area, "1", (x0 - 5, y0 + 5), 12, false, &MUTED, HPos::Right)?;
    text(area, "0", (x0 - 5, bottom + 5), 12, false, &MUTED, HPos::Right)?;
    Ok(())
}

/// `12345` as `12,345`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// matplotlib's `Blues` colour map at `t` in [0, 1].
pub fn blues(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (247, 251, 255),
        (222, 235, 247),
        (198, 219, 239),
        (158, 202, 225),
        (107, 174, 214),
        (66, 146, 198),
        (33, 113, 181),
        (8, 81, 156),
        (8, 48, 107),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 } * (STOPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Where `confusion.png` puts its cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfusionLayout {
    /// Top-left corner of the cell of (true 0, predicted 0).
    pub x: u32,
    pub y: u32,
    /// Cell side in pixels.
    pub cell: u32,
    pub width: u32,
    pub height: u32,
    /// Whether class names label the rows and columns (else class numbers, when names do not fit).
    pub names: bool,
    /// Whether each cell shows its count.
    pub counts: bool,
}

const CONFUSION_GRID: u32 = 720;
const CONFUSION_TITLE: u32 = 78;
const LABEL_SIZE: u32 = 15;

/// The cell size and margins for `k` classes with these names.
pub fn confusion_layout(class_names: &[String]) -> ConfusionLayout {
    let k = class_names.len().max(1) as u32;
    let cell = (CONFUSION_GRID / k).clamp(4, 72);
    let names = cell >= 18;
    let longest = if names {
        class_names.iter().map(|n| text_width(n, LABEL_SIZE, false)).max().unwrap_or(0)
    } else {
        30
    };
    let x = 40 + longest + 12;
    let y = CONFUSION_TITLE;
    let grid = cell * k;
    ConfusionLayout {
        x,
        y,
        cell,
        width: (x + grid + 40).max(640),
        height: y + grid + 12 + longest + 44,
        names,
        counts: cell >= 30,
    }
}

/// `confusion.png`: the confusion matrix as a heat map, rows the true class and columns the
/// predicted one; each cell coloured by its share of its row (so the diagonal reads as per-class
/// recall) and showing its count.
pub fn confusion(
    matrix: &[Vec<u64>],
    class_names: &[String],
    dataset: &str,
    accuracy: f64,
) -> Result<Picture> {
    let l = confusion_layout(class_names);
    let k = matrix.len();
    let n: u64 = matrix.iter().flatten().sum();
    render(l.width, l.height, |area| {
        let title = format!(
            "Confusion matrix: {dataset} set, {} images, accuracy {:.1}%",
            thousands(n),
            100.0 * accuracy
        );
        text(area, &title, (l.width as i32 / 2, 32), 22, true, &TEXT, HPos::Center)?;
        let note = "colour: share of the true class's images; number: count of images";
        text(area, note, (l.width as i32 / 2, 58), 15, false, &MUTED, HPos::Center)?;
        let cell = l.cell as i32;
        let (gx, gy) = (l.x as i32, l.y as i32);
        let count_size = (l.cell * 2 / 7).clamp(10, 17);
        for (t, row) in matrix.iter().enumerate() {
            let total: u64 = row.iter().sum();
            for (p, &count) in row.iter().enumerate() {
                let share = if total == 0 { 0.0 } else { count as f64 / total as f64 };
                let (x, y) = (gx + p as i32 * cell, gy + t as i32 * cell);
                area.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], blues(share).filled()))?;
                if l.counts {
                    // Zeros recede, so the confusions stand out.
                    let color = match (count, share > 0.5) {
                        (0, _) => ZERO,
                        (_, true) => WHITE,
                        _ => TEXT,
                    };
                    let baseline = y + cell / 2 + count_size as i32 * 3 / 8;
                    text(
                        area,
                        &count.to_string(),
                        (x + cell / 2, baseline),
                        count_size,
                        t == p,
                        &color,
                        HPos::Center,
                    )?;
                }
            }
        }
        let grid = cell * k as i32;
        area.draw(&Rectangle::new([(gx, gy), (gx + grid, gy + grid)], MUTED))?;
        // Row labels, right-aligned against the grid; column labels read upwards below it.
        let every = if l.names { 1 } else { (16 / l.cell.max(1)).max(1) as usize * 5 };
        for c in (0..k).step_by(every) {
            let label = if l.names { class_name(class_names, c) } else { c.to_string() };
            let mid = c as i32 * cell + cell / 2;
            text(area, &label, (gx - 8, gy + mid + 5), LABEL_SIZE, false, &TEXT, HPos::Right)?;
            let at = (gx + mid + LABEL_SIZE as i32 * 3 / 8, gy + grid + 8);
            draw_text(area, &label, at, LABEL_SIZE, false, &TEXT, HPos::Right, true)?;
        }
        draw_text(area, "true class", (24, gy + grid / 2), 16, true, &TEXT, HPos::Center, true)?;
        text(
            area,
            "predicted class",
            (gx + grid / 2, l.height as i32 - 12),
            16,
            true,
            &TEXT,
            HPos::Center,
        )?;
        Ok(())
    })
}

/// The two panels of `training.png` (loss, accuracy), side by side.
pub const TRAINING_SIZE: (u32, u32) = (1200, 520);
const TRAINING_TITLE: u32 = 50;

/// `training.png`: loss and accuracy per epoch, for training and (when there is any) validation
/// data, with the epoch early stopping kept.
pub fn training(metrics: &Metrics) -> Result<Picture> {
    let (w, h) = TRAINING_SIZE;
    let epochs = &metrics.epochs;
    render(w, h, |area| {
        text(
            area,
            "Training: loss and accuracy per epoch",
            (w as i32 / 2, 34),
            22,
            true,
            &TEXT,
            HPos::Center,
        )?;
        let body = area.margin(TRAINING_TITLE, 0, 0, 0);
        let (left, right) = body.split_horizontally(w / 2);
        let train_loss: Vec<(f64, f64)> =
            epochs.iter().map(|e| (e.epoch as f64, e.train_loss)).collect();
        let val_loss: Vec<(f64, f64)> =
            epochs.iter().filter_map(|e| Some((e.epoch as f64, e.validation_loss?))).collect();
        let train_acc: Vec<(f64, f64)> =
            epochs.iter().map(|e| (e.epoch as f64, e.train_accuracy)).collect();
        let val_acc: Vec<(f64, f64)> =
            epochs.iter().filter_map(|e| Some((e.epoch as f64, e.validation_accuracy?))).collect();
        let kept = metrics.early_stop.map(|e| e.best_epoch as f64);
        panel(&left, "Loss", "mean cross-entropy", &train_loss, &val_loss, kept, false)?;
        panel(&right, "Accuracy", "share of images right", &train_acc, &val_acc, kept, true)?;
        Ok(())
    })
}

fn panel(
    area: &Area,
    title: &str,
    y_desc: &str,
    train: &[(f64, f64)],
    validation: &[(f64, f64)],
    kept: Option<f64>,
    accuracy: bool,
) -> DrawResult<()> {
    let last = train.iter().chain(validation).map(|p| p.0).fold(1.0, f64::max);
    let values: Vec<f64> =
        train.iter().chain(validation).map(|p| p.1).filter(|v| v.is_finite()).collect();
    let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let (lo, hi) = if values.is_empty() { (0.0, 1.0) } else { (lo, hi) };
    let pad = ((hi - lo) * 0.1).max(0.01);
    let y_range = if accuracy {
        (lo - pad).max(0.0)..(hi + pad).min(1.0)
    } else {
        (lo - pad).max(0.0)..hi + pad
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, font(18, true))
        .margin(16)
        .margin_right(28)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(0.5..last + 0.5, y_range)?;
    let x_fmt = |x: &f64| if x.fract() == 0.0 { format!("{x:.0}") } else { String::new() };
    let y_fmt = |y: &f64| if accuracy { format!("{:.0}%", y * 100.0) } else { format!("{y:.2}") };
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_labels((last as usize).min(12))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(font(14, false))
        .axis_desc_style(font(15, false))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    if let Some(epoch) = kept {
        let (y0, y1) = (chart.y_range().start, chart.y_range().end);
        chart
            .draw_series(DashedLineSeries::new(
                [(epoch, y0), (epoch, y1)],
                6,
                4,
                MUTED.stroke_width(1),
            ))?
            .label(format!("kept: epoch {epoch:.0} (early stopping)"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], MUTED));
    }
    for (name, points, color) in [("train", train, BLUE), ("validation", validation, ORANGE)] {
        let Some(&(_, final_value)) = points.last() else { continue };
        let shown = if accuracy {
            format!("{:.2}%", 100.0 * final_value)
        } else {
            format!("{final_value:.4}")
        };
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(3)))?
            .label(format!("{name} (last {shown})"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3))
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(if accuracy {
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperRight
        })
        .label_font(font(14, false))
        .background_style(WHITE.mix(0.9))
        .border_style(FRAME)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::EpochMetrics;

    fn names() -> Vec<String> {
        crate::config::TrainConfig::default().class_names
    }

    fn is(px: [u8; 3], c: RGBColor) -> bool {
        px == [c.0, c.1, c.2]
    }

    enum Tint {
        Red,
        Blue,
    }

    /// Pixels of (anti-aliased) red or blue in the rectangle.
    fn tinted(img: &Picture, (x, y, w, h): (u32, u32, u32, u32), t: Tint) -> usize {
        let mut n = 0;
        for yy in y..y + h {
            for xx in x..x + w {
                let [r, g, b] = img.get_pixel(xx, yy).map(i32::from);
                n += match t {
                    Tint::Red => r - g > 60 && r - b > 60,
                    Tint::Blue => b - r > 60,
                } as usize;
            }
        }
        n
    }

    /// Pixels that are neither white nor near-white.
    fn inked(img: &Picture, (x, y, w, h): (u32, u32, u32, u32)) -> usize {
        let mut n = 0;
        for yy in y..y + h {
            for xx in x..x + w {
                n += (img.get_pixel(xx, yy).iter().map(|&v| v as u32).sum::<u32>() < 600) as usize;
            }
        }
        n
    }

    /// 28×28 images whose pixel (r, c) is `(i * 7 + r * 3 + c * 5) % 256`.
    fn gradient_images(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                (0..28 * 28).map(move |j| ((i * 7 + (j / 28) * 3 + (j % 28) * 5) % 256) as u8)
            })
            .collect()
    }

    #[test]
    fn thousands_are_separated() {
        let got: Vec<String> = [0, 999, 1000, 10000, 1234567].map(thousands).into();
        assert_eq!(got, ["0", "999", "1,000", "10,000", "1,234,567"]);
    }

    #[test]
    fn images_fit_their_box_sharply_or_shrunk() {
        assert_eq!(fit_image(28, 28, 140), (140, 140));
        assert_eq!(fit_image(28, 28, 112), (112, 112));
        assert_eq!(fit_image(28, 14, 112), (56, 112));
        assert_eq!(fit_image(300, 150, 100), (50, 100));
        assert_eq!(source_pixel(139, 139, (140, 140), 28, 28), 28 * 28 - 1);
        assert_eq!(source_pixel(5, 4, (140, 140), 28, 28), 1);
    }

    #[test]
    fn samples_show_each_image_in_the_binary_colour_map_with_its_name() {
        let images = gradient_images(30);
        let labels: Vec<u8> = (0..30).map(|i| (i % 10) as u8).collect();
        let img = samples(&images, &labels, (28, 28), &names()).unwrap();
        assert_eq!(img.dimensions(), SAMPLES.size(25));
        assert_eq!(img.dimensions(), (860, 986));
        let (ix, iy, size) = SAMPLES_IMAGE;
        for i in [0, 12, 24] {
            let (cx, cy) = SAMPLES.cell(i);
            for (px, py) in [(0, 0), (70, 33), (139, 139)] {
                let want = images[i * 784 + source_pixel(px, py, (size, size), 28, 28)];
                let got = img.get_pixel(cx + ix + px, cy + iy + py);
                assert!(
                    is(got, binary(want)),
                    "cell {i} ({px},{py}): {got:?}, want {}",
                    255 - want
                );
            }
            // The name is drawn under the image.
            let name_box = (cx + 4, cy + iy + size + 6, SAMPLES.cell_w - 8, 24);
            assert!(inked(&img, name_box) > 30, "no class name under cell {i}");
        }
    }

    fn predictions_fixture() -> (Vec<u8>, Vec<u8>, Predictions) {
        let n = 16;
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        // Image i is predicted as its label when i is even, else as label + 1.
        let classes: Vec<usize> =
            (0..n).map(|i| (labels[i] as usize + if i % 2 == 0 { 0 } else { 1 }) % 10).collect();
        let mut probabilities = vec![0.02f32; n * 10];
        for (i, &c) in classes.iter().enumerate() {
            probabilities[i * 10 + c] = 0.82;
        }
        let p =
            Predictions { num_classes: 10, classes, logits: probabilities.clone(), probabilities };
        (gradient_images(n), labels, p)
    }

    #[test]
    fn predictions_colour_captions_and_bars_by_right_and_wrong() {
        let (images, labels, p) = predictions_fixture();
        let img = predictions(&images, &labels, (28, 28), &p, &names(), "test").unwrap();
        assert_eq!(img.dimensions(), PREDICTIONS.size(15));
        assert_eq!(img.dimensions(), (1260, 1032));
        let (bx, by, _, bh) = PREDICTIONS_BARS;
        for (i, &label) in labels.iter().enumerate().take(15) {
            let (cx, cy) = PREDICTIONS.cell(i);
            let right = i % 2 == 0;
            let caption = (cx + 4, cy + PREDICTIONS_CAPTION_Y - 16, PREDICTIONS.cell_w - 8, 22);
            let (blue, red) = (tinted(&img, caption, Tint::Blue), tinted(&img, caption, Tint::Red));
            if right {
                assert!(blue > 20 && red == 0, "cell {i}: right, caption blue {blue} red {red}");
            } else {
                assert!(red > 20 && blue == 0, "cell {i}: wrong, caption blue {blue} red {red}");
            }
            // Bar heights: the predicted class reaches 0.82 of the box, the others 0.02.
            let bottom = cy + by + bh - 1;
            let bar_top = |c: usize| {
                let (l, r) = bar_span(c, 10);
                let x = cx + bx + (l + r) / 2;
                (cy + by..=bottom)
                    .find(|&y| {
                        !is(img.get_pixel(x, y), WHITE)
                            && !is(img.get_pixel(x, y), RGBColor(230, 230, 230))
                    })
                    .map(|y| bottom + 1 - y)
            };
            let guess = p.classes[i];
            let truth = label as usize;
            let h = bar_top(guess).unwrap();
            assert!((h as f64 - 0.82 * bh as f64).abs() <= 1.0, "cell {i}: bar height {h}");
            let (l, r) = bar_span(guess, 10);
            let px = img.get_pixel(cx + bx + (l + r) / 2, bottom - 2);
            assert!(is(px, if right { BLUE } else { RED }), "cell {i}: predicted bar {px:?}");
            let (l, r) = bar_span(truth, 10);
            assert!(is(img.get_pixel(cx + bx + (l + r) / 2, bottom), BLUE), "cell {i}: true bar");
            let other = (truth + 5) % 10;
            let (l, r) = bar_span(other, 10);
            assert!(is(img.get_pixel(cx + bx + (l + r) / 2, bottom), GREY), "cell {i}: other bar");
        }
    }

    #[test]
    fn confusion_cells_are_coloured_by_row_share() {
        let k = 10;
        let mut m = vec![vec![0u64; k]; k];
        for (t, row) in m.iter_mut().enumerate() {
            row[t] = 8 + t as u64;
            row[(t + 1) % k] = 2;
        }
        let img = confusion(&m, &names(), "test", 0.8).unwrap();
        let l = confusion_layout(&names());
        assert!(l.names && l.counts, "{l:?}");
        assert_eq!(img.dimensions(), (l.width, l.height));
        for (t, row) in m.iter().enumerate() {
            let total = (8 + t + 2) as f64;
            for (p, &count) in row.iter().enumerate() {
                let (x, y) = (l.x + p as u32 * l.cell + 3, l.y + t as u32 * l.cell + 3);
                let want = blues(count as f64 / total);
                assert!(is(img.get_pixel(x, y), want), "cell ({t},{p}): {:?}", img.get_pixel(x, y));
            }
        }
        // The diagonal is dark, the empty cells light; labels are drawn left of and below the grid.
        assert!(blues(0.8).0 < 60 && blues(0.0).0 > 240);
        let grid = l.cell * k as u32;
        assert!(inked(&img, (10, l.y, l.x - 12, grid)) > 500, "row labels");
        assert!(inked(&img, (l.x, l.y + grid + 4, grid, 60)) > 500, "column labels");
    }

    #[test]
    fn confusion_scales_to_many_and_few_classes() {
        for k in [2, 40, 256] {
            let names: Vec<String> = (0..k).map(|i| format!("class {i}")).collect();
            let m: Vec<Vec<u64>> =
                (0..k).map(|t| (0..k).map(|p| (t == p) as u64).collect()).collect();
            let img = confusion(&m, &names, "validation", 1.0).unwrap();
            let l = confusion_layout(&names);
            assert_eq!(img.dimensions(), (l.width, l.height));
            assert!(is(img.get_pixel(l.x + 1, l.y + 1), blues(1.0)), "k={k}");
        }
    }

    fn epoch(e: usize, loss: f64, acc: f64, val: Option<(f64, f64)>) -> EpochMetrics {
        EpochMetrics {
            epoch: e,
            learning_rate: 0.001,
            train_loss: loss,
            train_accuracy: acc,
            validation_loss: val.map(|v| v.0),
            validation_accuracy: val.map(|v| v.1),
            seconds: 1.0,
            samples_per_second: 1.0,
        }
    }

    fn metrics(epochs: Vec<EpochMetrics>) -> Metrics {
        Metrics { epochs, test: None, early_stop: None, data_load_seconds: 0.0, train_seconds: 0.0 }
    }

    /// Mean row of the pixels of colour `c` in columns `[x0, x1)`.
    fn mean_y(img: &Picture, x0: u32, x1: u32, c: RGBColor) -> Option<f64> {
        let ys: Vec<u32> = (x0..x1)
            .flat_map(|x| (0..img.height()).filter(move |&y| is(img.get_pixel(x, y), c)))
            .collect();
        (!ys.is_empty()).then(|| ys.iter().sum::<u32>() as f64 / ys.len() as f64)
    }

    #[test]
    fn training_curves_go_the_way_the_numbers_go() {
        let m = metrics(
            (1..=5)
                .map(|e| {
                    let t = e as f64;
                    epoch(e, 1.0 / t, 0.6 + 0.06 * t, Some((1.2 / t + 0.1, 0.55 + 0.05 * t)))
                })
                .collect(),
        );
        let img = training(&m).unwrap();
        assert_eq!(img.dimensions(), TRAINING_SIZE);
        let half = TRAINING_SIZE.0 / 2;
        // Loss falls: its blue pixels sit higher (smaller y) near epoch 1 than near epoch 5.
        let (early, late) =
            (mean_y(&img, 90, 200, BLUE).unwrap(), mean_y(&img, 400, 560, BLUE).unwrap());
        assert!(early < late, "loss: early {early} late {late}");
        // Accuracy rises.
        let (early, late) = (
            mean_y(&img, half + 90, half + 200, BLUE).unwrap(),
            mean_y(&img, half + 400, half + 480, BLUE).unwrap(),
        );
        assert!(early > late, "accuracy: early {early} late {late}");
        // Validation loss lies above training loss everywhere.
        assert!(mean_y(&img, 90, 560, ORANGE).unwrap() < mean_y(&img, 90, 560, BLUE).unwrap());

        let no_val = metrics((1..=3).map(|e| epoch(e, 0.5, 0.8, None)).collect());
        let img = training(&no_val).unwrap();
        assert_eq!(mean_y(&img, 0, TRAINING_SIZE.0, ORANGE), None, "no validation, no orange");
        assert!(mean_y(&img, 0, half, BLUE).is_some());
        // One epoch still draws its point.
        let one = metrics(vec![epoch(1, 0.5, 0.8, None)]);
        assert!(mean_y(&training(&one).unwrap(), 0, half, BLUE).is_some());
    }

    #[test]
    fn png_round_trips() {
        let img = samples(&gradient_images(3), &[0, 1, 2], (28, 28), &names()).unwrap();
        let back = Picture::from_png(&img.png().unwrap()).unwrap();
        assert_eq!(back, img);
        assert_eq!(back.get_pixel(SAMPLES_IMAGE.0, SAMPLES_IMAGE.1), [255; 3], "pixel 0 is white");
    }
}
