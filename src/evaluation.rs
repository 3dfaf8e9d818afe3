//! Evaluation: what a trained model predicts for a set of images, and what those predictions add
//! up to on a labelled set — accuracy, the confusion matrix, per-class precision, recall and F1.
//!
//! [`predict`] runs the model over the images in the same batches as [`train::evaluate`] and
//! takes the same argmax of the logits (torch's, which picks the first of equal maxima), so the
//! accuracy of its predictions is, to the bit, the accuracy `evaluate` reports. Everything else
//! here is arithmetic on class indices, without files or tensors.
//!
//! [`train::evaluate`]: crate::train::evaluate

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::model::Mlp;
use crate::train::EVAL_BATCH;

/// A model's output for `n` images.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    pub num_classes: usize,
    /// The predicted class of each image: the first index of its largest logit.
    pub classes: Vec<usize>,
    /// Row-major `n × num_classes` logits.
    pub logits: Vec<f32>,
    /// Row-major `n × num_classes` softmax probabilities.
    pub probabilities: Vec<f32>,
}

impl Predictions {
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// Image `i`'s probabilities.
    pub fn probabilities(&self, i: usize) -> &[f32] {
        &self.probabilities[i * self.num_classes..(i + 1) * self.num_classes]
    }

    /// Image `i`'s `k` most likely classes, best first: ordered by logit (so the first is always
    /// [`Self::classes`]`[i]`), equal logits by class index.
    pub fn top_k(&self, i: usize, k: usize) -> Vec<usize> {
        let logits = &self.logits[i * self.num_classes..(i + 1) * self.num_classes];
        let mut order: Vec<usize> = (0..self.num_classes).collect();
        // Stable: equal logits keep index order, as argmax does.
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        order.truncate(k);
        order
    }
}

/// Runs `model` over `images` (unsigned bytes, one row of `features` pixels per image, on any
/// device), each pixel multiplied by `scale`, in [`EVAL_BATCH`]-sized batches from the first.
pub fn predict(model: &Mlp, images: &Tensor, scale: f64) -> Predictions {
    let num_classes = *model.sizes().last().expect("a model has layers");
    tch::no_grad(|| {
        let n = images.size()[0];
        let mut classes = Vec::with_capacity(n as usize);
        let mut logits = Vec::with_capacity(n as usize * num_classes);
        let mut probabilities = Vec::with_capacity(n as usize * num_classes);
        let mut start = 0;
        while start < n {
            let len = EVAL_BATCH.min(n - start);
            // The same operations as DeviceData's batches in `train::evaluate`.
            let x = images.narrow(0, start, len).to_kind(Kind::Float) * scale;
            let out = model.forward(&x);
            let argmax = out.argmax(1, false).to_device(Device::Cpu);
            classes.extend(
                Vec::<i64>::try_from(&argmax).expect("argmax is int64").iter().map(|&c| c as usize),
            );
            let probs = out.softmax(1, Kind::Float);
            for (t, dst) in [(&out, &mut logits), (&probs, &mut probabilities)] {
                let cpu = t.to_device(Device::Cpu).reshape([-1]);
                dst.extend(Vec::<f32>::try_from(&cpu).expect("logits are float"));
            }
            start += len;
        }
        Predictions { num_classes, classes, logits, probabilities }
    })
}

/// The most multiply-adds a batch may take to run on [`SmallMlp`]: below this, libtorch's cost
/// per operation (a dozen dispatches of a few microseconds each) outweighs the arithmetic.
pub const SMALL_MACS: usize = 1_000_000;

/// A small model's weights in plain memory, for batches of a few inputs (what `serve` is sent
/// one at a time, and `predict`'s pictures): the same layers as [`Mlp::forward`] in Rust, with
/// no libtorch call. `predict` and `serve` both take this path for the same batches, so they
/// still answer alike bit for bit; its floats may differ from libtorch's in the last bits.
#[derive(Debug, Clone)]
pub struct SmallMlp {
    /// Each layer's weight, transposed (inputs × outputs, so one input's weights to every
    /// output lie together), and bias.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    /// Multiply-adds of one input.
    macs: usize,
}

impl SmallMlp {
    /// The model's weights, when one input costs at most [`SMALL_MACS`]; `None` otherwise.
    pub fn of(model: &Mlp) -> Option<Self> {
        let macs = model.sizes().windows(2).map(|w| w[0] * w[1]).sum();
        if macs > SMALL_MACS {
            return None;
        }
        let host = |t: &Tensor| {
            Vec::<f32>::try_from(&t.to_device(Device::Cpu).to_kind(Kind::Float).reshape([-1]))
                .expect("weights are float")
        };
        let layers = model.layers.iter().map(|l| (host(&l.weight.tr()), host(&l.bias))).collect();
        Some(Self { layers, macs })
    }

    /// Whether a batch of `count` inputs is small enough for this path.
    pub fn fits(&self, count: usize) -> bool {
        count.saturating_mul(self.macs) <= SMALL_MACS
    }

    /// Predictions for `values` (`count × inputs`, row-major), each multiplied by `scale` first.
    pub fn predict(&self, values: &[f32], scale: f32) -> Predictions {
        let mut h: Vec<f32> = values.iter().map(|&v| v * scale).collect();
        let last = self.layers.len() - 1;
        for (i, (w, b)) in self.layers.iter().enumerate() {
            let n = b.len();
            let k = w.len() / n;
            let mut out = Vec::with_capacity(h.len() / k * n);
            for x in h.chunks_exact(k) {
                out.extend_from_slice(b);
                let row = out.len() - n;
                // Input by input: pixels and ReLU outputs are often 0, and are skipped.
                for (&xj, wj) in x.iter().zip(w.chunks_exact(n)).filter(|(&xj, _)| xj != 0.0) {
                    for (o, &wv) in out[row..].iter_mut().zip(wj) {
                        *o += xj * wv;
                    }
                }
            }
            if i < last {
                out.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            h = out;
        }
        let num_classes = self.layers[last].1.len();
        let mut classes = Vec::with_capacity(h.len() / num_classes);
        let mut probabilities = Vec::with_capacity(h.len());
        for row in h.chunks_exact(num_classes) {
            // The first of equal maxima, as libtorch's argmax picks.
            let (best, max) =
                row.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                });
            classes.push(best);
            let exps: Vec<f32> = row.iter().map(|&v| (v - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            probabilities.extend(exps.iter().map(|e| e / sum));
        }
        Predictions { num_classes, classes, logits: h, probabilities }
    }
}

/// `evaluation.json`: how the final model does on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// `test`, or `validation` when the job had no test data.
    pub dataset: String,
    /// Where that data came from.
    pub source: String,
    pub samples: usize,
    /// Correct predictions over samples: the same number as `metrics.json`'s.
    pub accuracy: f64,
    /// Mean cross-entropy, as in `metrics.json`.
    pub loss: f64,
    pub class_names: Vec<String>,
    /// `confusion_matrix[t][p]`: images of true class `t` predicted as class `p`.
    pub confusion_matrix: Vec<Vec<u64>>,
    pub per_class: Vec<ClassStats>,
    /// Unweighted mean over classes.
    pub macro_average: Averages,
    /// Mean over classes weighted by support.
    pub weighted_average: Averages,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassStats {
    pub class: usize,
    pub name: String,
    /// Images whose true class this is.
    pub support: u64,
    /// Images predicted as this class.
    pub predicted: u64,
    /// Images of this class predicted as it.
    pub correct: u64,
    /// `correct / predicted`; 0 when nothing was predicted as this class.
    pub precision: f64,
    /// `correct / support`; 0 when no image has this class.
    pub recall: f64,
    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub f1: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Averages {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// Counts `[true][predicted]` pairs. Labels and predictions must be below `num_classes`.
pub fn confusion_matrix(labels: &[u8], predicted: &[usize], num_classes: usize) -> Vec<Vec<u64>> {
    assert_eq!(labels.len(), predicted.len(), "one prediction per label");
    let mut m = vec![vec![0u64; num_classes]; num_classes];
    for (&t, &p) in labels.iter().zip(predicted) {
        m[t as usize][p] += 1;
    }
    m
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Precision, recall and F1 of each class from a confusion matrix (zero where undefined, as
/// scikit-learn's `zero_division=0`).
pub fn class_stats(matrix: &[Vec<u64>], names: &[String]) -> Vec<ClassStats> {
    (0..matrix.len())
        .map(|c| {
            let support: u64 = matrix[c].iter().sum();
            let predicted: u64 = matrix.iter().map(|row| row[c]).sum();
            let correct = matrix[c][c];
            let (precision, recall) = (ratio(correct, predicted), ratio(correct, support));
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            let name = names.get(c).cloned().unwrap_or_else(|| c.to_string());
            ClassStats { class: c, name, support, predicted, correct, precision, recall, f1 }
        })
        .collect()
}

impl Evaluation {
    /// Scores `predicted` against `labels`; `loss` is [`crate::train::evaluate`]'s.
    pub fn new(
        dataset: &str,
        source: &str,
        class_names: &[String],
        labels: &[u8],
        predicted: &[usize],
        loss: f64,
    ) -> Self {
        let k = class_names.len();
        let matrix = confusion_matrix(labels, predicted, k);
        let per_class = class_stats(&matrix, class_names);
        let correct: u64 = (0..k).map(|c| matrix[c][c]).sum();
        let n = labels.len();
        let total: u64 = per_class.iter().map(|c| c.support).sum();
        let mean = |f: fn(&ClassStats) -> f64, weighted: bool| {
            let sum: f64 = per_class
                .iter()
                .map(|c| f(c) * if weighted { c.support as f64 } else { 1.0 })
                .sum();
            sum / if weighted { total.max(1) as f64 } else { k.max(1) as f64 }
        };
        let averages = |weighted| Averages {
            precision: mean(|c| c.precision, weighted),
            recall: mean(|c| c.recall, weighted),
            f1: mean(|c| c.f1, weighted),
        };
        Self {
            dataset: dataset.into(),
            source: source.into(),
            samples: n,
            // As `train::evaluate` divides: the count of correct predictions over the count.
            accuracy: correct as f64 / n as f64,
            loss,
            class_names: class_names.to_vec(),
            macro_average: averages(false),
            weighted_average: averages(true),
            confusion_matrix: matrix,
            per_class,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;
    use crate::state::DeviceData;
    use crate::train::{self, tests::toy};
    use std::sync::atomic::AtomicBool;

    fn names(k: usize) -> Vec<String> {
        (0..k).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn confusion_matrix_counts_true_by_predicted() {
        let m = confusion_matrix(&[0, 0, 1, 2, 2, 2], &[0, 1, 1, 2, 0, 2], 3);
        assert_eq!(m, [vec![1, 1, 0], vec![0, 1, 0], vec![1, 0, 2]]);
    }

    #[test]
    fn precision_recall_f1_match_hand_computed_values() {
        // Class 0: 1 of 2 predicted right (p=1/2), 1 of 2 found (r=1/2).
        // Class 1: predicted twice, once right (p=1/2); its one image found (r=1).
        // Class 2: predicted twice, both right (p=1); 2 of 3 found (r=2/3).
        let e =
            Evaluation::new("test", "s", &names(3), &[0, 0, 1, 2, 2, 2], &[0, 1, 1, 2, 0, 2], 0.5);
        let got: Vec<(u64, u64, u64, f64, f64, f64)> = e
            .per_class
            .iter()
            .map(|c| (c.support, c.predicted, c.correct, c.precision, c.recall, c.f1))
            .collect();
        assert_eq!(
            got,
            [
                (2, 2, 1, 0.5, 0.5, 0.5),
                (1, 2, 1, 0.5, 1.0, 2.0 / 3.0),
                (3, 2, 2, 1.0, 2.0 / 3.0, 0.8),
            ]
        );
        assert_eq!(e.accuracy, 4.0 / 6.0);
        assert_eq!(e.samples, 6);
        assert!((e.macro_average.recall - (0.5 + 1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-15);
        let weighted_f1 = (2.0 * 0.5 + 2.0 / 3.0 + 3.0 * 0.8) / 6.0;
        assert!((e.weighted_average.f1 - weighted_f1).abs() < 1e-15);
        assert_eq!(e.per_class[2].name, "c2");
    }

    #[test]
    fn classes_never_predicted_or_absent_score_zero_not_nan() {
        // Class 1 is never predicted, class 2 never occurs.
        let e = Evaluation::new("test", "s", &names(3), &[0, 1], &[0, 0], 0.0);
        assert_eq!(
            (e.per_class[1].precision, e.per_class[1].recall, e.per_class[1].f1),
            (0.0, 0.0, 0.0)
        );
        assert_eq!((e.per_class[2].precision, e.per_class[2].recall), (0.0, 0.0));
        assert_eq!(e.per_class[0].precision, 0.5);
        assert!(serde_json::to_string(&e).unwrap().contains("\"f1\":0.0"));
    }

    #[test]
    fn top_k_follows_logits_and_breaks_ties_by_index_like_argmax() {
        let p = Predictions {
            num_classes: 4,
            classes: vec![1],
            logits: vec![0.5, 2.0, 2.0, -1.0],
            probabilities: vec![0.1, 0.4, 0.4, 0.1],
        };
        assert_eq!(p.top_k(0, 3), [1, 2, 0]);
        assert_eq!(p.top_k(0, 9), [1, 2, 0, 3]);
        let t = Tensor::from_slice(&p.logits).view([1, 4]);
        assert_eq!(
            t.argmax(1, false).int64_value(&[0]),
            1,
            "torch's argmax takes the first maximum"
        );
    }

    /// The accuracy of `predict`'s classes is `train::evaluate`'s, bit for bit, across batch
    /// boundaries.
    #[test]
    fn the_small_path_answers_as_libtorch_within_float_rounding() {
        let sizes = crate::model::layer_sizes(784, &[128], 10);
        let model = Mlp::glorot(&sizes, 3, Device::Cpu);
        let small = SmallMlp::of(&model).expect("the notebook's model is small");
        assert!(small.fits(9) && !small.fits(10), "9 images of 101,632 multiply-adds fit");
        let pixels: Vec<u8> = (0..9 * 784).map(|i| ((i * 37 + i / 784 * 11) % 256) as u8).collect();
        let t = Tensor::from_slice(&pixels).view([9, 784]);
        let want = predict(&model, &t, 1.0 / 255.0);
        let values: Vec<f32> = pixels.iter().map(|&v| f32::from(v)).collect();
        let got = small.predict(&values, 1.0 / 255.0);
        assert_eq!(got.classes, want.classes);
        assert_eq!(got.num_classes, 10);
        for (a, b) in got.probabilities.iter().zip(&want.probabilities) {
            assert!((a - b).abs() < 1e-5, "{a} against {b}");
        }
        for (a, b) in got.logits.iter().zip(&want.logits) {
            assert!((a - b).abs() < 1e-4, "{a} against {b}");
        }
        let big = Mlp::glorot(&crate::model::layer_sizes(784, &[2048], 10), 3, Device::Cpu);
        assert!(SmallMlp::of(&big).is_none(), "1.6M multiply-adds per image are libtorch's");
    }

    #[test]
    fn predictions_reproduce_evaluate_exactly() {
        let cfg = TrainConfig {
            epochs: 2,
            num_classes: 4,
            hidden_units: vec![8],
            learning_rate: 0.01,
            ..TrainConfig::default()
        };
        let set = toy(256, 1);
        let data = DeviceData::new(&set, Device::Cpu);
        let out = train::train(&cfg, &data, None, &AtomicBool::new(false), |_| {}).unwrap();
        let held_out = toy(2 * EVAL_BATCH as usize + 17, 5);
        let held = DeviceData::new(&held_out, Device::Cpu);
        let score = train::evaluate(&out.model, &held);
        let p = predict(&out.model, &held.images, 1.0 / 255.0);
        assert_eq!(p.len(), held_out.len());
        let e = Evaluation::new("test", "toy", &names(4), &held_out.labels, &p.classes, score.loss);
        assert_eq!(e.accuracy, score.accuracy);
        assert!(
            score.accuracy > 0.5 && score.accuracy < 1.0,
            "{score:?}: a mix of right and wrong"
        );
        let row: f32 = p.probabilities(7).iter().sum();
        assert!((row - 1.0).abs() < 1e-5);
        let best = p.top_k(7, 1)[0];
        assert_eq!(best, p.classes[7]);
    }
}
