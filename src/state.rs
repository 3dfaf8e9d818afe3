//! What training carries from step to step: the dataset resident on the device, and the
//! training state a checkpoint holds (model, optimizer, position in the epoch, history).
//!
//! Both the epoch loop ([`crate::train`]) and a single step ([`crate::step`]) work on these;
//! neither depends on the other for them.

use tch::{Device, Kind, Tensor};

use crate::config::TrainConfig;
use crate::data::Dataset;
use crate::model::{self, Mlp};
use crate::optim::Optimizer;

/// A dataset resident on the training device, as it was read: image pixels stay bytes and are
/// scaled per batch, which keeps the 47 MB training set at 47 MB instead of 188 MB of floats;
/// table features are floats, already standardized.
pub struct DeviceData {
    /// `n × features`, `Uint8` (images) or `Float` (tables).
    pub images: Tensor,
    pub labels: Tensor,
    /// Each image's shape; `None` for a table.
    pub shape: Option<crate::data::Shape>,
    /// What the values are multiplied by before the first layer.
    pub scale: f64,
}

impl DeviceData {
    pub fn new(ds: &Dataset, device: Device) -> Self {
        let images = ds.values.tensor(ds.features()).to_device(device);
        let labels = Tensor::from_slice(&ds.labels).to_kind(Kind::Int64).to_device(device);
        Self { images, labels, shape: ds.input.image(), scale: ds.values.scale() }
    }

    /// Float inputs for the first layer.
    fn floats(&self, x: Tensor) -> Tensor {
        if x.kind() == Kind::Float {
            x
        } else {
            x.to_kind(Kind::Float) * self.scale
        }
    }

    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Float inputs (pixels in [0, 1], or features) and labels for the rows `idx`.
    pub(crate) fn batch(&self, idx: &Tensor) -> (Tensor, Tensor) {
        let x = self.floats(self.images.index_select(0, idx));
        (x, self.labels.index_select(0, idx))
    }

    /// Rows `start..start+len` in order.
    pub(crate) fn slice(&self, start: i64, len: i64) -> (Tensor, Tensor) {
        let x = self.floats(self.images.narrow(0, start, len));
        (x, self.labels.narrow(0, start, len))
    }
}

/// Loss and accuracy of a model on a dataset.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Score {
    pub loss: f64,
    pub accuracy: f64,
}

/// What one epoch achieved.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    pub learning_rate: f64,
    pub train: Score,
    pub validation: Option<Score>,
    pub samples: usize,
}

/// Everything training needs to continue exactly where it left off: the checkpoint's content.
pub struct TrainState {
    pub model: Mlp,
    pub optimizer: Optimizer,
    /// The epoch in progress (0-based) and the steps of it already taken.
    pub epoch: usize,
    pub step: usize,
    /// The current epoch's sample order (absent between epochs).
    pub order: Option<Tensor>,
    /// The current epoch's summed loss and correct count so far, left on the device.
    pub loss_sum: Tensor,
    pub correct: Tensor,
    /// Finished epochs.
    pub history: Vec<EpochStats>,
    /// The best validation loss so far, its epoch and its weights (early stopping only).
    pub best: Option<Best>,
    pub early_stop: Option<EarlyStop>,
}

pub struct Best {
    pub loss: f64,
    pub epoch: usize,
    pub params: Tensor,
}

impl TrainState {
    /// A fresh start: Glorot weights, zero optimizer state, epoch 0.
    pub fn new(cfg: &TrainConfig, features: usize, device: Device) -> Self {
        let sizes = model::layer_sizes(features, &cfg.hidden_units, cfg.num_classes);
        Self {
            model: Mlp::glorot(&sizes, cfg.seed, device),
            optimizer: Optimizer::new(cfg, model::param_count(&sizes), device),
            epoch: 0,
            step: 0,
            order: None,
            loss_sum: Tensor::zeros([], (Kind::Float, device)),
            correct: Tensor::zeros([], (Kind::Int64, device)),
            history: Vec::new(),
            best: None,
            early_stop: None,
        }
    }

    /// Whether training has nothing left to do.
    pub fn finished(&self, cfg: &TrainConfig) -> bool {
        self.early_stop.is_some() || self.epoch >= cfg.epochs
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EarlyStop {
    pub stopped_after_epoch: usize,
    pub best_epoch: usize,
}
