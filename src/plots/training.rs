//! `training.png`: loss and accuracy per epoch.

use super::*;

/// The two panels of `training.png` (loss, accuracy), side by side.
pub const TRAINING_SIZE: (u32, u32) = (1200, 520);
const TRAINING_TITLE: u32 = 50;

/// `training.png`: loss and accuracy per epoch, for training and (when there is any) validation
/// data, with the epoch early stopping kept.
pub fn training(metrics: &Metrics) -> Result<Picture> {
    let (w, h) = TRAINING_SIZE;
    let epochs = &metrics.epochs;
    render(w, h, |area| {
        title(area, "Training: loss and accuracy per epoch", w)?;
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

/// The values' range with a tenth of it as margin, never below 0 (nor above 1 for accuracy).
fn y_range(values: impl Iterator<Item = f64>, accuracy: bool) -> std::ops::Range<f64> {
    let values: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let (lo, hi) = if values.is_empty() { (0.0, 1.0) } else { (lo, hi) };
    let pad = ((hi - lo) * 0.1).max(0.01);
    if accuracy {
        (lo - pad).max(0.0)..(hi + pad).min(1.0)
    } else {
        (lo - pad).max(0.0)..hi + pad
    }
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
    let y_range = y_range(train.iter().chain(validation).map(|p| p.1), accuracy);
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
