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

mod confusion;
mod grids;
#[cfg(test)]
mod tests;
mod training;

pub use confusion::{blues, confusion, confusion_layout, ConfusionLayout};
pub use grids::{
    bar_span, predictions, samples, PREDICTIONS, PREDICTIONS_BARS, PREDICTIONS_CAPTION_Y,
    PREDICTIONS_IMAGE, PREDICTION_COUNT, SAMPLES, SAMPLES_IMAGE, SAMPLE_COUNT,
};
pub use training::{training, TRAINING_SIZE};

static FONT: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
static FONT_BOLD: &[u8] = include_bytes!("../fonts/DejaVuSans-Bold.ttf");

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

/// A picture's title: bold, centred over a canvas `width` pixels wide.
fn title(area: &Area, s: &str, width: u32) -> DrawResult<()> {
    text(area, s, (width as i32 / 2, 34), 22, true, &TEXT, HPos::Center)
}

/// The most characters [`fit_text`] looks at: more never fit in a picture's text.
const FIT_CHARS: usize = 200;

/// The longest prefix of `s` (ending in "…") that fits in `width` pixels. Only characters the
/// pen reaches before `width` are tried, so its time does not grow with the length of `s`.
fn fit_text(s: &str, size: u32, width: u32) -> String {
    let head: String = s.chars().take(FIT_CHARS).collect();
    if head.len() == s.len() && text_width(s, size, false) <= width {
        return s.to_string();
    }
    let (glyphs, _) = layout(&head, size, false);
    let within = glyphs.iter().take_while(|g| g.position.x <= width as f32).count();
    let chars: Vec<char> = head.chars().take(within).collect();
    (0..=chars.len())
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

/// Draws an image centred in the `size`-pixel box at `(x, y)`, framed: grey ones in the
/// notebook's `binary` colour map, RGB ones in their colours.
fn draw_image(
    area: &Area,
    pixels: &[u8],
    shape: crate::data::Shape,
    (x, y): (i32, i32),
    size: u32,
) -> DrawResult<()> {
    let (rows, cols, ch) = (shape.rows, shape.cols, shape.channels);
    let (w, h) = fit_image(rows, cols, size);
    let (x0, y0) = (x + (size - w) as i32 / 2, y + (size - h) as i32 / 2);
    for py in 0..h {
        for px in 0..w {
            let i = source_pixel(px, py, (w, h), rows, cols) * ch;
            let colour = match ch {
                1 => binary(pixels[i]),
                _ => RGBColor(pixels[i], pixels[i + 1], pixels[i + 2]),
            };
            area.draw_pixel((x0 + px as i32, y0 + py as i32), &colour)?;
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

/// The most pixels a class name takes in any picture (at the captions' 16 px).
const NAME_WIDTH: u32 = 200;

/// Class `c`'s name, cut to [`NAME_WIDTH`]: a long name would otherwise widen the confusion
/// matrix's margins, and its canvas, without bound.
fn class_name(names: &[String], c: usize) -> String {
    let name = names.get(c).cloned().unwrap_or_else(|| c.to_string());
    fit_text(&name, 16, NAME_WIDTH)
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
