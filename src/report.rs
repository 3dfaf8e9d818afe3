//! `output/data/`, what people look at after a job (SageMaker uploads it as `output.tar.gz`):
//! `evaluation.json` and the pictures of [`crate::plots`].
//!
//! The evaluation uses the test data, or the validation data when the job has no test channel;
//! with neither, only `training.png` and `samples.png` are written. The pictures of samples
//! (`samples.png`, `predictions.png`) are drawn only where the data are images.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tch::Device;
use tracing::{info, warn};

use crate::artifacts::{write_atomic, write_json};
use crate::data::Dataset;
use crate::evaluation::{self, Evaluation};
use crate::metrics::Metrics;
use crate::model::Mlp;
use crate::plots;
use crate::state::{DeviceData, Score};
use crate::train;

pub const EVALUATION_FILE: &str = "evaluation.json";
pub const PREDICTIONS_PNG: &str = "predictions.png";
pub const CONFUSION_PNG: &str = "confusion.png";
pub const TRAINING_PNG: &str = "training.png";
pub const SAMPLES_PNG: &str = "samples.png";
/// Every file this module may write.
pub const FILES: [&str; 5] =
    [EVALUATION_FILE, PREDICTIONS_PNG, CONFUSION_PNG, TRAINING_PNG, SAMPLES_PNG];

/// What the report is made from: the finished job's model, data and metrics.
pub struct Inputs<'a> {
    pub model: &'a Mlp,
    /// Where the model lives (the evaluation runs there, as `train::evaluate` did).
    pub device: Device,
    pub class_names: &'a [String],
    pub train: &'a Dataset,
    pub validation: Option<&'a Dataset>,
    /// The test set and `train::evaluate`'s score of it.
    pub test: Option<(&'a Dataset, Score)>,
    pub metrics: &'a Metrics,
}

/// Writes `output/data/`'s files into `dir`; returns their paths.
pub fn write(dir: &Path, inp: &Inputs) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = vec![save_png(dir, TRAINING_PNG, plots::training(inp.metrics)?)?];
    match inp.train.images() {
        Some((pixels, shape)) => written.push(save_png(
            dir,
            SAMPLES_PNG,
            plots::samples(pixels, &inp.train.labels, shape, inp.class_names)?,
        )?),
        // Nothing from an earlier run in the same folder may pass for this one's.
        None => remove_stale(dir, &[SAMPLES_PNG, PREDICTIONS_PNG]),
    }

    let target = match (inp.test, inp.validation) {
        (Some((set, score)), _) => Some(("test", set, score)),
        (None, Some(set)) => {
            let score = train::evaluate(inp.model, &DeviceData::new(set, inp.device));
            Some(("validation", set, score))
        }
        (None, None) => None,
    };
    let Some((name, set, score)) = target else {
        info!(
            "no test or validation data: {EVALUATION_FILE}, {PREDICTIONS_PNG} and {CONFUSION_PNG} \
             are not written"
        );
        remove_stale(dir, &[EVALUATION_FILE, PREDICTIONS_PNG, CONFUSION_PNG]);
        return Ok(written);
    };
    let data = DeviceData::new(set, inp.device);
    let predicted = evaluation::predict(inp.model, &data.images, data.scale);
    let eval = Evaluation::new(
        name,
        &set.source,
        inp.class_names,
        &set.labels,
        &predicted.classes,
        score.loss,
    );
    if eval.accuracy != score.accuracy {
        warn!(
            evaluation = eval.accuracy,
            metrics = score.accuracy,
            "the evaluation's accuracy differs from the one reported; this is a bug"
        );
    }
    let path = dir.join(EVALUATION_FILE);
    write_json(&path, &eval)?;
    written.push(path);
    if let Some((pixels, shape)) = set.images() {
        written.push(save_png(
            dir,
            PREDICTIONS_PNG,
            plots::predictions(pixels, &set.labels, shape, &predicted, inp.class_names, name)?,
        )?);
    }
    written.push(save_png(
        dir,
        CONFUSION_PNG,
        plots::confusion(&eval.confusion_matrix, inp.class_names, name, eval.accuracy)?,
    )?);
    info!(
        dataset = name,
        accuracy = format!("{:.4}", eval.accuracy),
        macro_f1 = format!("{:.4}", eval.macro_average.f1),
        "evaluation"
    );
    Ok(written)
}

fn remove_stale(dir: &Path, names: &[&str]) {
    for stale in names {
        let _ = std::fs::remove_file(dir.join(stale));
    }
}

fn save_png(dir: &Path, name: &str, picture: plots::Picture) -> Result<PathBuf> {
    let path = dir.join(name);
    write_atomic(&path, &picture.png()?)?;
    Ok(path)
}
