//! The model folder: `model.safetensors`, `model.json` and `metrics.json`, each written to a
//! temporary name, flushed to disk and renamed, so that nothing half-written ever looks
//! complete (SageMaker tars whatever is there when the container exits).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::config::TrainConfig;
use crate::data::{Input, Shape, Standardize};
use crate::files;
use crate::metrics::Metrics;
use crate::model::{self, Mlp};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const MODEL_FILE: &str = "model.json";
pub const METRICS_FILE: &str = "metrics.json";
/// Every file of the model folder.
pub const MODEL_DIR_FILES: [&str; 3] = [WEIGHTS_FILE, MODEL_FILE, METRICS_FILE];
/// The largest `model.json` read.
pub const MAX_CARD: u64 = 16 << 20;
/// Bumped when `model.json`'s meaning changes.
pub const FORMAT_VERSION: u32 = 1;

/// Where a dataset came from, recorded so a model says what it learned from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    pub source: String,
    pub samples: usize,
    pub fingerprint: String,
}

/// `model.json`: everything needed to use the weights without this program's source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub format_version: u32,
    pub architecture: Architecture,
    pub input: InputSpec,
    pub class_names: Vec<String>,
    pub hyperparameters: serde_json::Value,
    pub versions: Versions,
    pub data: std::collections::BTreeMap<String, DataRecord>,
    pub device: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    /// `mlp`: dense layers with ReLU between them, softmax over the last.
    pub kind: String,
    /// Widths from input to output, e.g. `[784, 128, 10]`.
    pub layer_sizes: Vec<usize>,
    pub activation: String,
    pub output: String,
    /// How the tensors in the weights file are named and laid out.
    pub weights: String,
    pub parameters: usize,
}

/// What the first layer takes, and how raw values become that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// `image` (pixels 0–255) or `table` (named features); cards without it are images.
    #[serde(default = "image_kind")]
    pub kind: String,
    /// Images: rows and columns. Tables: the number of features.
    pub shape: Vec<usize>,
    /// What the training data held: `uint8` pixels or `float32` features.
    pub dtype: String,
    /// Values are multiplied by this before the first layer (after `standardize`).
    pub scale: f64,
    /// Tables: the feature names, in column order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    /// Tables: `(x − mean) / std` per feature, in float32, before the first layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standardize: Option<Standardize>,
}

fn image_kind() -> String {
    "image".into()
}

impl InputSpec {
    pub fn new(input: &Input, scaling: Option<&Standardize>) -> Self {
        match input {
            // Grey images keep the two-number shape Fashion-MNIST models have always had.
            Input::Image(shape) => Self {
                kind: image_kind(),
                shape: match shape.channels {
                    1 => vec![shape.rows, shape.cols],
                    c => vec![shape.rows, shape.cols, c],
                },
                dtype: "uint8".into(),
                scale: 1.0 / 255.0,
                features: None,
                standardize: None,
            },
            Input::Table { names } => Self {
                kind: "table".into(),
                shape: vec![names.len()],
                dtype: "float32".into(),
                scale: 1.0,
                features: Some(names.clone()),
                standardize: scaling.cloned(),
            },
        }
    }

    /// The input this card describes, checked against the first layer's width.
    pub fn input(&self, first_layer: usize) -> std::result::Result<Input, String> {
        let input = match (self.kind.as_str(), self.shape.as_slice(), &self.features) {
            ("image", [rows, cols], _) => Input::Image(Shape::new(*rows, *cols, 1)),
            ("image", [rows, cols, 3], _) => Input::Image(Shape::new(*rows, *cols, 3)),
            ("table", [n], Some(names)) if names.len() == *n => {
                Input::Table { names: names.clone() }
            }
            _ => {
                return Err(format!(
                    "input kind {:?} with shape {:?} is not an image [rows, cols] (grey) or \
                     [rows, cols, 3] (RGB), or a table [features] with one name per feature",
                    self.kind, self.shape
                ))
            }
        };
        if input.features() != first_layer {
            return Err(format!(
                "input shape {:?} does not match the first layer's {first_layer} inputs",
                self.shape
            ));
        }
        match (&input, &self.standardize) {
            (Input::Table { .. }, Some(s)) if s.features() != first_layer || !s.is_valid() => {
                Err(format!(
                    "input standardize has {} means and {} deviations for {first_layer} \
                     features, or values that are not finite and positive",
                    s.mean.len(),
                    s.std.len()
                ))
            }
            (Input::Table { .. }, None) => Err("a table input needs standardize".into()),
            _ => Ok(input),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    pub trainer: String,
    pub tch: String,
    pub libtorch: String,
}

impl ModelCard {
    pub fn new(
        cfg: &TrainConfig,
        model: &Mlp,
        input: &Input,
        scaling: Option<&Standardize>,
        data: std::collections::BTreeMap<String, DataRecord>,
        device: String,
    ) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            architecture: Architecture {
                kind: "mlp".into(),
                layer_sizes: model.sizes().to_vec(),
                activation: "relu".into(),
                output: "softmax".into(),
                weights: "layers.{i}.weight (out, in) and layers.{i}.bias (out), float32; \
                          logits = x @ weight.T + bias"
                    .into(),
                parameters: model::param_count(model.sizes()),
            },
            input: InputSpec::new(input, scaling),
            class_names: cfg.class_names.clone(),
            hyperparameters: serde_json::to_value(cfg).expect("config serialises"),
            versions: Versions {
                trainer: env!("CARGO_PKG_VERSION").into(),
                tch: "0.26.0".into(),
                libtorch: "2.13.0".into(),
            },
            data,
            device,
        }
    }
}

/// Writes `bytes` to `path` via a temporary file in the same folder, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_name(path);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    commit(&tmp, path)
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Renames a finished temporary file into place and syncs the folder.
fn commit(tmp: &Path, path: &Path) -> Result<()> {
    if let Err(e) = fs::rename(tmp, path) {
        let _ = fs::remove_file(tmp);
        return Err(e).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()));
    }
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).ok();
    }
    Ok(())
}

pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    write_atomic(path, &text)
}

/// Writes the whole model folder. Weights first and metrics last, so a folder with
/// `metrics.json` is a complete one.
/// On failure, none of the three files is left: a folder with only some of them would still
/// load in `predict`.
pub fn write_model_dir(dir: &Path, model: &Mlp, card: &ModelCard, metrics: &Metrics) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = (|| {
        let weights = dir.join(WEIGHTS_FILE);
        let tmp = temp_name(&weights);
        let cpu: Vec<(String, Tensor)> =
            model.named().into_iter().map(|(n, t)| (n, t.to_device(Device::Cpu))).collect();
        if let Err(e) = Tensor::write_safetensors(&cpu, &tmp) {
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("writing {}", tmp.display()));
        }
        File::open(&tmp).and_then(|f| f.sync_all()).ok();
        commit(&tmp, &weights)?;
        write_json(&dir.join(MODEL_FILE), card)?;
        write_json(&dir.join(METRICS_FILE), metrics)
    })();
    if result.is_err() {
        remove_ours(dir, &MODEL_DIR_FILES);
    }
    result
}

/// Removes `names` from `dir`, and the temporary files [`write_atomic`] makes for them (of any
/// process: one that was killed leaves its own behind).
pub fn remove_ours(dir: &Path, names: &[&str]) -> usize {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = names
            .iter()
            .any(|n| name == *n || (name.starts_with(&format!(".{n}.")) && name.ends_with(".tmp")));
        if ours && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Loads a model folder written by [`write_model_dir`].
pub fn load_model_dir(dir: &Path, device: Device) -> Result<(Mlp, ModelCard)> {
    let card_path = dir.join(MODEL_FILE);
    let card: ModelCard = serde_json::from_slice(&files::read_limited(&card_path, MAX_CARD)?)
        .with_context(|| format!("parsing {}", card_path.display()))?;
    if card.format_version != FORMAT_VERSION {
        bail!(
            "{}: format_version {} is not {FORMAT_VERSION}, which this trainer reads",
            card_path.display(),
            card.format_version
        );
    }
    let weights = dir.join(WEIGHTS_FILE);
    let expected = model::param_count_checked(&card.architecture.layer_sizes)
        .and_then(|n| n.checked_mul(4))
        .with_context(|| {
            format!(
                "{}: layer_sizes {:?} are not a model this program can hold",
                card_path.display(),
                card.architecture.layer_sizes
            )
        })?;
    // The weights file is the tensors plus a small JSON header: a file far from the size the
    // card implies is refused before libtorch reads it or we allocate for it.
    let len = files::open_regular(&weights)?.metadata()?.len();
    if (len as u128) < expected as u128 || len as u128 > expected as u128 + MAX_CARD as u128 {
        bail!(
            "{}: {len} bytes, but {MODEL_FILE}'s layer_sizes {:?} need {expected} bytes of \
             float32 weights",
            weights.display(),
            card.architecture.layer_sizes
        );
    }
    let named = Tensor::read_safetensors(&weights)
        .with_context(|| format!("reading {}", weights.display()))?;
    let model = Mlp::from_named(&card.architecture.layer_sizes, &named, device)
        .with_context(|| format!("loading {}", weights.display()))?;
    Ok((model, card))
}

/// A model folder for tests: a fresh 784 → `hidden` → 10 network with the defaults' card.
#[cfg(test)]
pub(crate) fn write_test_model(dir: &Path, hidden: usize) -> (Mlp, ModelCard) {
    let cfg = TrainConfig::default();
    let model = Mlp::glorot(&model::layer_sizes(784, &[hidden], 10), 1, Device::Cpu);
    let image = Input::Image(Shape::new(28, 28, 1));
    let card = ModelCard::new(&cfg, &model, &image, None, Default::default(), "cpu".into());
    let metrics = Metrics {
        epochs: vec![],
        test: None,
        early_stop: None,
        data_load_seconds: 0.0,
        train_seconds: 0.0,
    };
    write_model_dir(dir, &model, &card, &metrics).unwrap();
    (model, card)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_leaves_no_temporary_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn model_dir_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let (model, card) = write_test_model(d.path(), 128);
        let (back, back_card) = load_model_dir(d.path(), Device::Cpu).unwrap();
        assert!(back.flat.equal(&model.flat));
        assert_eq!(back_card, card);
        assert_eq!(back_card.architecture.parameters, 101_770);
        let names: Vec<_> =
            fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }
}
