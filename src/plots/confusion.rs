//! `confusion.png`: the confusion matrix as a heat map.

use super::*;

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
        (0..class_names.len())
            .map(|c| text_width(&class_name(class_names, c), LABEL_SIZE, false))
            .max()
            .unwrap_or(0)
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
