//! `samples.png` and `predictions.png`: images in a grid, with their classes and, for
//! predictions, a bar chart of the class probabilities.

use super::*;
use crate::data::Shape;

/// `samples.png`: 5 × 5 images with their class names under them.
pub const SAMPLES: Grid = Grid { top: 56, cols: 5, cell_w: 172, cell_h: 186 };
/// The image box of a `samples.png` cell, relative to the cell: (x, y, size).
pub const SAMPLES_IMAGE: (u32, u32, u32) = (16, 8, 140);
/// How many images `samples.png` shows.
pub const SAMPLE_COUNT: usize = 25;

/// `samples.png`: the first 25 training images with their class names, as the notebook's first
/// look at the data. `images` holds `shape.len()` bytes per image.
pub fn samples(
    images: &[u8],
    labels: &[u8],
    shape: Shape,
    class_names: &[String],
) -> Result<Picture> {
    let n = labels.len().min(SAMPLE_COUNT);
    let (w, h) = SAMPLES.size(n);
    render(w, h, |area| {
        title(area, "The first 25 training images", w)?;
        let (ix, iy, size) = SAMPLES_IMAGE;
        for i in 0..n {
            let (x, y) = SAMPLES.cell(i);
            let img = &images[i * shape.len()..(i + 1) * shape.len()];
            draw_image(area, img, shape, ((x + ix) as i32, (y + iy) as i32), size)?;
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
    shape: Shape,
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
            let img = &images[i * shape.len()..(i + 1) * shape.len()];
            let (ix, iy, size) = PREDICTIONS_IMAGE;
            draw_image(area, img, shape, ((cx + ix) as i32, (cy + iy) as i32), size)?;
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
