//! `output/data/model_quality.json`: the test set's scores in the shape SageMaker Model Monitor
//! writes for a multiclass classifier (`multiclass_classification_metrics`), which the Model
//! Registry shows as a model version's "Model quality" when the package's
//! `ModelMetrics.ModelQuality.Statistics` points at it.
//!
//! Each metric has a `value` (the same number as `evaluation.json`'s) and a
//! `standard_deviation`, estimated as Model Monitor does: by bootstrap, rescoring the set's
//! (label, prediction) pairs drawn with replacement.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Serialize, Serializer};

use crate::evaluation::{class_stats, Evaluation};

pub const MODEL_QUALITY_FILE: &str = "model_quality.json";
/// Bootstrap resamples per metric.
pub const RESAMPLES: usize = 100;
/// At most this many pairs are drawn per resample; a larger set's spread is scaled from it
/// (it shrinks as one over the square root of the count).
const MAX_DRAWS: u64 = 100_000;
/// Fixed, so that the same predictions always give the same file.
const SEED: u64 = 0x5eed;

/// Accuracy, weighted precision, weighted recall and weighted F1 of a confusion matrix.
fn scores(matrix: &[Vec<u64>]) -> [f64; 4] {
    let stats = class_stats(matrix, &[]);
    let total: u64 = stats.iter().map(|c| c.support).sum();
    let correct: u64 = stats.iter().map(|c| c.correct).sum();
    let weighted = |f: fn(&crate::evaluation::ClassStats) -> f64| {
        stats.iter().map(|c| f(c) * c.support as f64).sum::<f64>() / total.max(1) as f64
    };
    [
        correct as f64 / total.max(1) as f64,
        weighted(|c| c.precision),
        weighted(|c| c.recall),
        weighted(|c| c.f1),
    ]
}

/// The standard deviation of each of [`scores`] over bootstrap resamples of `matrix`'s pairs.
fn spread(matrix: &[Vec<u64>]) -> [f64; 4] {
    let k = matrix.len();
    let cells: Vec<(usize, u64)> = matrix
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, &count)| count > 0)
        .scan(0, |sum, (cell, &count)| {
            *sum += count;
            Some((cell, *sum))
        })
        .collect();
    let n = cells.last().map_or(0, |&(_, sum)| sum);
    if n == 0 {
        return [0.0; 4];
    }
    let draws = n.min(MAX_DRAWS);
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let runs: Vec<[f64; 4]> = (0..RESAMPLES)
        .map(|_| {
            let mut m = vec![vec![0u64; k]; k];
            for _ in 0..draws {
                let u = rng.gen_range(0..n);
                let cell = cells[cells.partition_point(|&(_, sum)| sum <= u)].0;
                m[cell / k][cell % k] += 1;
            }
            scores(&m)
        })
        .collect();
    let scale = (draws as f64 / n as f64).sqrt();
    std::array::from_fn(|i| {
        let mean = runs.iter().map(|r| r[i]).sum::<f64>() / RESAMPLES as f64;
        let var = runs.iter().map(|r| (r[i] - mean).powi(2)).sum::<f64>() / (RESAMPLES - 1) as f64;
        var.sqrt() * scale
    })
}

/// One metric: its value and its bootstrap standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metric {
    pub value: f64,
    pub standard_deviation: f64,
}

/// The file's content, its members in Model Monitor's order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelQuality {
    pub version: f64,
    pub dataset: Dataset,
    pub multiclass_classification_metrics: Metrics,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dataset {
    pub item_count: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    pub accuracy: Metric,
    pub weighted_precision: Metric,
    pub weighted_recall: Metric,
    pub weighted_f1: Metric,
    pub confusion_matrix: Confusion,
}

/// `{actual: {predicted: count}}`, rows and columns in class order (a JSON object keeps the
/// order it is written in; Studio shows it so).
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    pub labels: Vec<String>,
    pub counts: Vec<Vec<u64>>,
}

impl Serialize for Confusion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            self.labels
                .iter()
                .zip(&self.counts)
                .map(|(label, row)| (label, Row { labels: &self.labels, counts: row })),
        )
    }
}

struct Row<'a> {
    labels: &'a [String],
    counts: &'a [u64],
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.labels.iter().zip(self.counts))
    }
}

/// The file's content for an evaluation.
pub fn model_quality(eval: &Evaluation) -> ModelQuality {
    let values = scores(&eval.confusion_matrix);
    let deviations = spread(&eval.confusion_matrix);
    let metric = |i: usize| Metric { value: values[i], standard_deviation: deviations[i] };
    ModelQuality {
        version: 0.0,
        dataset: Dataset { item_count: eval.samples },
        multiclass_classification_metrics: Metrics {
            accuracy: metric(0),
            weighted_precision: metric(1),
            weighted_recall: metric(2),
            weighted_f1: metric(3),
            confusion_matrix: Confusion {
                labels: labels(&eval.class_names),
                counts: eval.confusion_matrix.clone(),
            },
        },
    }
}

/// Class names, or class indices where two classes share a name (a JSON object's keys differ).
fn labels(names: &[String]) -> Vec<String> {
    let distinct = names.iter().collect::<std::collections::BTreeSet<_>>().len() == names.len();
    match distinct {
        true => names.to_vec(),
        false => (0..names.len()).map(|c| c.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn file(e: &Evaluation) -> Value {
        serde_json::to_value(model_quality(e)).unwrap()
    }

    fn eval(labels: &[u8], predicted: &[usize], names: &[&str]) -> Evaluation {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        Evaluation::new("test", "s", &names, labels, predicted, 0.0)
    }

    #[test]
    fn values_are_the_evaluations_and_the_matrix_is_keyed_by_name() {
        let e = eval(&[0, 0, 1, 2, 2, 2], &[0, 1, 1, 2, 0, 2], &["a", "b", "c"]);
        let q = file(&e);
        let m = &q["multiclass_classification_metrics"];
        assert_eq!(m["accuracy"]["value"], e.accuracy);
        assert_eq!(m["weighted_precision"]["value"], e.weighted_average.precision);
        assert_eq!(m["weighted_recall"]["value"], e.weighted_average.recall);
        assert_eq!(m["weighted_f1"]["value"], e.weighted_average.f1);
        assert_eq!(m["confusion_matrix"]["c"]["a"], 1);
        assert_eq!(m["confusion_matrix"]["a"]["b"], 1);
        assert_eq!(q["dataset"]["item_count"], 6);
        let same = eval(&[0, 1], &[0, 0], &["x", "x"]);
        assert_eq!(
            file(&same)["multiclass_classification_metrics"]["confusion_matrix"]["1"]["0"],
            1
        );
        // Members in Model Monitor's order; rows and columns in class order, not by name.
        let text =
            serde_json::to_string(&model_quality(&eval(&[0, 1], &[1, 0], &["z", "a"]))).unwrap();
        assert!(text.starts_with(r#"{"version":0.0,"dataset":{"item_count":2},"#), "{text}");
        assert!(
            text.ends_with(r#""confusion_matrix":{"z":{"z":0,"a":1},"a":{"z":1,"a":0}}}}"#),
            "{text}"
        );
    }

    /// The bootstrap's spread of accuracy is the binomial one, sqrt(p(1-p)/n), within what 100
    /// resamples can tell; for a set larger than the draws too.
    #[test]
    fn the_standard_deviation_of_accuracy_is_the_binomial_one() {
        for n in [2_000usize, 300_000] {
            let labels: Vec<u8> = (0..n).map(|i| (i % 4) as u8).collect();
            let predicted: Vec<usize> =
                (0..n).map(|i| if i % 5 == 0 { (i + 1) % 4 } else { i % 4 }).collect();
            let e = eval(&labels, &predicted, &["a", "b", "c", "d"]);
            let q = file(&e);
            let sd = q["multiclass_classification_metrics"]["accuracy"]["standard_deviation"]
                .as_f64()
                .unwrap();
            let expected = (e.accuracy * (1.0 - e.accuracy) / n as f64).sqrt();
            assert!((sd / expected - 1.0).abs() < 0.3, "n={n}: {sd} vs {expected}");
            assert_eq!(q, file(&e), "the same predictions give the same file");
        }
    }

    #[test]
    fn a_perfect_or_empty_set_has_no_spread() {
        let e = eval(&[0, 1, 1], &[0, 1, 1], &["a", "b"]);
        let m = &file(&e)["multiclass_classification_metrics"];
        assert_eq!(m["accuracy"]["standard_deviation"], 0.0);
        let e = eval(&[], &[], &["a", "b"]);
        assert_eq!(file(&e)["multiclass_classification_metrics"]["weighted_f1"]["value"], 0.0);
    }
}
