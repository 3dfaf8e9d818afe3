//! `output/data/`, what people look at after a job (SageMaker uploads it as `output.tar.gz`):
//! `evaluation.json`, the test set's `model_quality.json` ([`crate::quality`]) and the pictures
//! of [`crate::plots`].
//!
//! The evaluation uses the test data, or the validation data when the job has no test channel;
//! with neither, only `training.png` and `samples.png` are written. The pictures of samples
//! (`samples.png`, `predictions.png`) are drawn only where the data are images.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use tch::Device;
use tracing::{info, warn};

use crate::artifacts::{write_atomic, write_json};
use crate::data::Dataset;
use crate::error::Stopped;
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
pub use crate::quality::MODEL_QUALITY_FILE;
/// Every file this module may write.
pub const FILES: [&str; 6] = [
    EVALUATION_FILE,
    MODEL_QUALITY_FILE,
    PREDICTIONS_PNG,
    CONFUSION_PNG,
    TRAINING_PNG,
    SAMPLES_PNG,
];

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
    /// A stop requested while the report is made ends it with [`Stopped`] within moments.
    pub stop: &'a AtomicBool,
}

impl Inputs<'_> {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// `Stopped`, naming what was being done, once a stop was requested.
    fn unless_stopped(&self, doing: &str) -> Result<()> {
        match self.stopped() {
            true => Err(Stopped(format!("drawing output/data ({doing})")).into()),
            false => Ok(()),
        }
    }
}

/// Images run through the model at once between two looks at the stop flag: a whole number
/// of [`train::EVAL_BATCH`]es, so the predictions are exactly those of one call.
const PREDICT_CHUNK: i64 = 5 * train::EVAL_BATCH;

/// Writes `output/data/`'s files into `dir`; returns their paths.
pub fn write(dir: &Path, inp: &Inputs) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    inp.unless_stopped(TRAINING_PNG)?;
    let mut written = vec![save_png(dir, TRAINING_PNG, plots::training(inp.metrics)?)?];
    match inp.train.images() {
        Some((pixels, shape)) => {
            inp.unless_stopped(SAMPLES_PNG)?;
            let samples = plots::samples(pixels, &inp.train.labels, shape, inp.class_names)?;
            written.push(save_png(dir, SAMPLES_PNG, samples)?);
        }
        // Nothing from an earlier run in the same folder may pass for this one's.
        None => remove_stale(dir, &[SAMPLES_PNG, PREDICTIONS_PNG]),
    }

    let target = match (inp.test, inp.validation) {
        (Some((set, score)), _) => Some(("test", set, score)),
        (None, Some(set)) => {
            let data = DeviceData::new(set, inp.device);
            let score = train::evaluate_unless(inp.model, &data, &|| inp.stopped());
            inp.unless_stopped("scoring the validation set")?;
            Some(("validation", set, score.expect("not stopped")))
        }
        (None, None) => None,
    };
    let Some((name, set, score)) = target else {
        info!(
            "no test or validation data: {EVALUATION_FILE}, {PREDICTIONS_PNG} and {CONFUSION_PNG} \
             are not written"
        );
        remove_stale(dir, &[EVALUATION_FILE, MODEL_QUALITY_FILE, PREDICTIONS_PNG, CONFUSION_PNG]);
        return Ok(written);
    };
    let data = DeviceData::new(set, inp.device);
    let predicted = predict(inp, &data.images, data.scale)?;
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
    // The Model Registry's "Model quality" is the test set's: validation data chose the model.
    let path = dir.join(MODEL_QUALITY_FILE);
    if name == "test" {
        write_json(&path, &crate::quality::model_quality(&eval))?;
        written.push(path);
    } else {
        remove_stale(dir, &[MODEL_QUALITY_FILE]);
    }
    if let Some((pixels, shape)) = set.images() {
        inp.unless_stopped(PREDICTIONS_PNG)?;
        written.push(save_png(
            dir,
            PREDICTIONS_PNG,
            plots::predictions(pixels, &set.labels, shape, &predicted, inp.class_names, name)?,
        )?);
    }
    inp.unless_stopped(CONFUSION_PNG)?;
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

/// The model's predictions for `images`, made a chunk at a time so that a stop is seen soon.
fn predict(inp: &Inputs, images: &tch::Tensor, scale: f64) -> Result<evaluation::Predictions> {
    let n = images.size()[0];
    let mut all: Option<evaluation::Predictions> = None;
    let mut start = 0;
    while start < n {
        inp.unless_stopped("predicting")?;
        let len = PREDICT_CHUNK.min(n - start);
        let part = evaluation::predict(inp.model, &images.narrow(0, start, len), scale);
        match &mut all {
            None => all = Some(part),
            Some(p) => {
                p.classes.extend(part.classes);
                p.logits.extend(part.logits);
                p.probabilities.extend(part.probabilities);
            }
        }
        start += len;
    }
    let num_classes = *inp.model.sizes().last().expect("a model has layers");
    Ok(all.unwrap_or_else(|| evaluation::Predictions {
        num_classes,
        classes: Vec::new(),
        logits: Vec::new(),
        probabilities: Vec::new(),
    }))
}

fn save_png(dir: &Path, name: &str, picture: plots::Picture) -> Result<PathBuf> {
    let path = dir.join(name);
    write_atomic(&path, &picture.png()?)?;
    Ok(path)
}
