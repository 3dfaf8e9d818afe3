//! Metrics: the lines SageMaker's `MetricDefinitions` regexes read from stdout, and
//! `metrics.json`.
//!
//! One stable format: a line starting `metrics:` followed by space-separated `name=value` pairs,
//! no tabs (CloudWatch turns them into `#011`). No metric name ends with another metric's name,
//! so a regex `name=([^ ]+)` never matches the wrong pair. The regexes users put in their jobs
//! live in `infra/metric-definitions.json`; the tests run them over the real output.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::state::{EarlyStop, Score};

/// Every metric name the trainer prints.
pub const METRIC_NAMES: &[&str] = &[
    "epoch",
    "learning_rate",
    "train_loss",
    "train_accuracy",
    "validation_loss",
    "validation_accuracy",
    "epoch_seconds",
    "samples_per_second",
    "test_loss",
    "test_accuracy",
];

/// One epoch's metrics as reported and saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub learning_rate: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub validation_loss: Option<f64>,
    pub validation_accuracy: Option<f64>,
    pub seconds: f64,
    pub samples_per_second: f64,
}

/// Everything `metrics.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub epochs: Vec<EpochMetrics>,
    pub test: Option<Score>,
    pub early_stop: Option<EarlyStopRecord>,
    pub data_load_seconds: f64,
    pub train_seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlyStopRecord {
    pub stopped_after_epoch: usize,
    pub best_epoch: usize,
}

impl From<EarlyStop> for EarlyStopRecord {
    fn from(e: EarlyStop) -> Self {
        Self { stopped_after_epoch: e.stopped_after_epoch, best_epoch: e.best_epoch }
    }
}

fn push(line: &mut String, name: &str, value: f64) {
    debug_assert!(METRIC_NAMES.contains(&name), "undeclared metric {name}");
    let _ = write!(line, " {name}={value:.6}");
}

/// The metric line for one epoch.
pub fn epoch_line(m: &EpochMetrics) -> String {
    let mut line = format!("metrics: epoch={}", m.epoch);
    push(&mut line, "learning_rate", m.learning_rate);
    push(&mut line, "train_loss", m.train_loss);
    push(&mut line, "train_accuracy", m.train_accuracy);
    if let (Some(l), Some(a)) = (m.validation_loss, m.validation_accuracy) {
        push(&mut line, "validation_loss", l);
        push(&mut line, "validation_accuracy", a);
    }
    push(&mut line, "epoch_seconds", m.seconds);
    push(&mut line, "samples_per_second", m.samples_per_second);
    line
}

/// The metric line for the final test evaluation.
pub fn test_line(s: &Score) -> String {
    let mut line = String::from("metrics:");
    push(&mut line, "test_loss", s.loss);
    push(&mut line, "test_accuracy", s.accuracy);
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_line_golden() {
        let m = EpochMetrics {
            epoch: 2,
            learning_rate: 0.001,
            train_loss: 0.3712345678,
            train_accuracy: 0.86,
            validation_loss: Some(0.4),
            validation_accuracy: Some(0.85),
            seconds: 1.25,
            samples_per_second: 48000.0,
        };
        assert_eq!(
            epoch_line(&m),
            "metrics: epoch=2 learning_rate=0.001000 train_loss=0.371235 train_accuracy=0.860000 \
             validation_loss=0.400000 validation_accuracy=0.850000 epoch_seconds=1.250000 \
             samples_per_second=48000.000000"
        );
        let no_val = EpochMetrics { validation_loss: None, validation_accuracy: None, ..m };
        assert!(!epoch_line(&no_val).contains("validation"));
        assert!(!epoch_line(&no_val).contains('\t'));
    }

    #[test]
    fn test_line_golden() {
        let s = Score { loss: 0.35, accuracy: 0.8765 };
        assert_eq!(test_line(&s), "metrics: test_loss=0.350000 test_accuracy=0.876500");
    }

    #[test]
    fn no_metric_name_ends_with_another() {
        for a in METRIC_NAMES {
            for b in METRIC_NAMES {
                assert!(a == b || !a.ends_with(b), "{a} ends with {b}");
            }
        }
    }
}
