//! Hyperparameters: the raw string map SageMaker hands us, parsed once into a typed
//! [`TrainConfig`]. Nothing past this module sees a string.
//!
//! Each value may be plain (`0.001`, `adam`) or JSON-encoded (`"\"adam\""`, `"[512, 256]"`), as
//! the SageMaker SDKs write them. Keys starting with `sagemaker_` or `_tuning` belong to the
//! platform and are ignored. Anything else that is unknown, malformed or out of range is a user
//! error naming the key, the value and what is allowed.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::error::{quote, user};

mod keys;

pub use keys::{key, markdown_table, Key, Values, KEYS};

/// The Fashion-MNIST class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    AdamW,
    Sgd,
    RmsProp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Auto,
    Cpu,
    #[serde(alias = "gpu")]
    Cuda,
}

/// How the learning rate changes from epoch to epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The same rate throughout (Keras' and the notebook's default).
    Constant,
    /// Multiply by `lr_decay` every `lr_step_epochs` epochs (PyTorch's StepLR).
    Step,
    /// Multiply by `lr_decay` every epoch (ExponentialLR).
    Exponential,
    /// Cosine from `learning_rate` down to `min_learning_rate` over the run (CosineAnnealingLR).
    Cosine,
}

/// The validated training configuration. Defaults ([`KEYS`]) reproduce the original notebook.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub hidden_units: Vec<usize>,
    pub dropout: f64,
    /// Training images shifted by up to this many pixels each way, per image and step.
    pub augment_shift: usize,
    /// Training images mirrored left to right with probability 1/2, per image and step.
    pub augment_flip: bool,
    /// Picture channels: every picture resized to these rows and columns.
    pub image_size: Option<(usize, usize)>,
    /// Picture channels: every picture converted to this many channels (1 or 3).
    pub image_channels: Option<usize>,
    /// Weight moved from the label to a uniform target over all classes.
    pub label_smoothing: f64,
    pub seed: u64,
    pub num_classes: usize,
    pub class_names: Vec<String>,
    pub device: DeviceChoice,
    /// 0 means one per core.
    pub threads: usize,
    /// 0 means off.
    pub early_stopping_patience: usize,
    pub lr_schedule: LrSchedule,
    pub lr_step_epochs: usize,
    pub lr_decay: f64,
    pub min_learning_rate: f64,
    /// Fraction of the training data held out for validation when no validation channel exists.
    pub validation_split: f64,
    /// Epochs between checkpoints; 0 turns periodic checkpoints off (SIGTERM still writes one).
    pub checkpoint_interval: usize,
    /// How many checkpoints to keep.
    pub checkpoint_keep: usize,
    /// Ignore existing checkpoints instead of resuming from them.
    pub start_fresh: bool,
    /// Multi-host jobs: the master's port for the rendezvous.
    pub distributed_port: u16,
    /// Multi-host jobs: seconds to wait for the other hosts, and for any one exchange.
    pub distributed_timeout: u64,
}

impl Default for TrainConfig {
    /// The notebook's configuration on Fashion-MNIST: every key's default from [`KEYS`], and
    /// its 10 classes.
    fn default() -> Self {
        let mut cfg = Self::from_table();
        cfg.num_classes = FASHION_MNIST_CLASSES.len();
        cfg.class_names = default_class_names(cfg.num_classes, true);
        cfg
    }
}

/// Fashion-MNIST's names for 10 classes of IDX images, else the labels as numbers.
fn default_class_names(classes: usize, idx: bool) -> Vec<String> {
    if idx && classes == FASHION_MNIST_CLASSES.len() {
        FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        (0..classes).map(|i| i.to_string()).collect()
    }
}

/// Hyperparameter keys reserved for the platform and its tools.
pub fn is_platform_key(key: &str) -> bool {
    key.starts_with("sagemaker_") || key.starts_with("_tuning")
}

impl TrainConfig {
    /// Every field empty: what [`Default`] fills from the table.
    fn unset() -> Self {
        Self {
            epochs: 0,
            batch_size: 0,
            optimizer: OptimizerKind::Adam,
            learning_rate: 0.0,
            beta1: 0.0,
            beta2: 0.0,
            epsilon: 0.0,
            momentum: 0.0,
            weight_decay: 0.0,
            hidden_units: Vec::new(),
            dropout: 0.0,
            augment_shift: 0,
            augment_flip: false,
            image_size: None,
            image_channels: None,
            label_smoothing: 0.0,
            seed: 0,
            num_classes: 0,
            class_names: Vec::new(),
            device: DeviceChoice::Auto,
            threads: 0,
            early_stopping_patience: 0,
            lr_schedule: LrSchedule::Constant,
            lr_step_epochs: 0,
            lr_decay: 0.0,
            min_learning_rate: 0.0,
            validation_split: 0.0,
            checkpoint_interval: 0,
            checkpoint_keep: 0,
            start_fresh: false,
            distributed_port: 0,
            distributed_timeout: 0,
        }
    }

    /// Every key's default from [`KEYS`]; the classes are left to [`Self::resolve_classes`].
    fn from_table() -> Self {
        let mut cfg = Self::unset();
        for k in KEYS.iter().filter(|k| !k.default.is_empty()) {
            k.apply(&mut cfg, k.default).expect("every default parses (a test checks)");
        }
        cfg
    }

    /// Settles the classes once the data is known: `num_classes` from `class_names` or the
    /// largest label (`max_label`, over every channel), and names for them. Labels beyond an
    /// explicit `num_classes` are refused by [`crate::data::check_labels`].
    pub fn resolve_classes(&mut self, max_label: Option<u8>, idx: bool) {
        if self.num_classes == 0 {
            self.num_classes = match self.class_names.len() {
                0 => max_label.map_or(2, |l| (l as usize + 1).max(2)),
                n => n,
            };
        }
        if self.class_names.is_empty() {
            self.class_names = default_class_names(self.num_classes, idx);
        }
    }

    /// Parses SageMaker's hyperparameter map, checking every key and value.
    pub fn from_hyperparameters(map: &BTreeMap<String, String>) -> Result<Self> {
        let mut cfg = Self::from_table();
        let mut names = None;
        for (name, raw) in map.iter().filter(|(k, _)| !is_platform_key(k)) {
            let key = keys::key(name).ok_or_else(|| keys::unknown_key(name, raw))?;
            key.apply(&mut cfg, raw)?;
            if key.name == "class_names" {
                names = Some(raw);
            }
        }
        match names {
            Some(raw)
                if (cfg.num_classes != 0 && cfg.class_names.len() != cfg.num_classes)
                    || !(2..=256).contains(&cfg.class_names.len())
                    || cfg.class_names.iter().any(|n| n.is_empty()) =>
            {
                return Err(user(format!(
                    "hyperparameter \"class_names\": value {} names {} classes{} (allowed: one \
                     non-empty name per class, 2 to 256 classes)",
                    quote(raw),
                    cfg.class_names.len(),
                    match cfg.num_classes {
                        0 => String::new(),
                        n => format!(", but num_classes is {n}"),
                    }
                )));
            }
            _ => {}
        }
        if cfg.lr_schedule == LrSchedule::Cosine && cfg.min_learning_rate >= cfg.learning_rate {
            return Err(user(format!(
                "hyperparameter \"min_learning_rate\": value {} must be below learning_rate {}",
                cfg.min_learning_rate, cfg.learning_rate
            )));
        }
        Ok(cfg)
    }

    /// Hyperparameters whose values differ between `self` and `other` in a way that changes
    /// the trained weights (what a resumed run must agree on). Threads, device, checkpointing and
    /// early stopping only change how or when we get there; more epochs extend a run unless the
    /// schedule depends on the total.
    pub fn result_differences(&self, saved: &serde_json::Value) -> Vec<String> {
        let Ok(serde_json::Value::Object(now)) = serde_json::to_value(self) else {
            return vec!["<unserialisable configuration>".into()];
        };
        let Some(saved) = saved.as_object() else {
            return vec!["<unreadable saved configuration>".into()];
        };
        let mut neutral = vec![
            "threads",
            "device",
            "checkpoint_interval",
            "checkpoint_keep",
            "start_fresh",
            "early_stopping_patience",
            "distributed_port",
            "distributed_timeout",
        ];
        let cosine = serde_json::Value::from("cosine");
        if now.get("lr_schedule") != Some(&cosine) && saved.get("lr_schedule") != Some(&cosine) {
            neutral.push("epochs");
        }
        // A checkpoint written before a key existed trained with that key's default.
        let defaults = serde_json::to_value(Self::default()).unwrap_or_default();
        let saved_value = |k: &str| saved.get(k).or_else(|| defaults.get(k));
        now.iter()
            .filter(|(k, v)| !neutral.contains(&k.as_str()) && saved_value(k) != Some(*v))
            .map(|(k, v)| {
                let was = saved_value(k).map_or_else(|| "-".to_string(), |x| x.to_string());
                format!("{k} (checkpoint {was}, now {v})")
            })
            .collect()
    }

    /// The learning rate for a 0-based epoch under the configured schedule.
    pub fn learning_rate_at(&self, epoch: usize) -> f64 {
        let lr = self.learning_rate;
        match self.lr_schedule {
            LrSchedule::Constant => lr,
            LrSchedule::Step => lr * self.lr_decay.powi((epoch / self.lr_step_epochs) as i32),
            LrSchedule::Exponential => lr * self.lr_decay.powi(epoch as i32),
            LrSchedule::Cosine => {
                let t = epoch as f64 / self.epochs.max(1) as f64;
                let min = self.min_learning_rate;
                min + (lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<TrainConfig> {
        let map = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        TrainConfig::from_hyperparameters(&map)
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        let e = parse(pairs).unwrap_err();
        assert!(crate::error::is_user_error(&e));
        format!("{e:#}")
    }

    #[test]
    fn empty_map_gives_the_notebook_defaults() {
        let mut cfg = parse(&[]).unwrap();
        assert_eq!((cfg.num_classes, cfg.class_names.len()), (0, 0), "left to the data");
        cfg.resolve_classes(Some(9), true);
        assert_eq!(cfg, TrainConfig::default());
        assert_eq!((cfg.epochs, cfg.batch_size, cfg.hidden_units.clone()), (5, 32, vec![128]));
        assert_eq!((cfg.learning_rate, cfg.epsilon), (0.001, 1e-7));
        assert_eq!(cfg.class_names[9], "Ankle boot");
    }

    #[test]
    fn plain_and_json_encoded_strings_both_parse() {
        for (epochs, opt, lr) in [("3", "adamw", "0.01"), ("\"3\"", "\"adamw\"", "\"0.01\"")] {
            let cfg =
                parse(&[("epochs", epochs), ("optimizer", opt), ("learning_rate", lr)]).unwrap();
            assert_eq!(cfg.epochs, 3);
            assert_eq!(cfg.optimizer, OptimizerKind::AdamW);
            assert_eq!(cfg.learning_rate, 0.01);
        }
        let cfg = parse(&[("optimizer", "SGD"), ("device", "\"cpu\"")]).unwrap();
        assert_eq!((cfg.optimizer, cfg.device), (OptimizerKind::Sgd, DeviceChoice::Cpu));
    }

    #[test]
    fn hidden_units_accept_commas_and_json_lists() {
        assert_eq!(parse(&[("hidden_units", "512,256")]).unwrap().hidden_units, [512, 256]);
        assert_eq!(parse(&[("hidden_units", "[512, 256]")]).unwrap().hidden_units, [512, 256]);
        assert_eq!(parse(&[("hidden_units", "\"64\"")]).unwrap().hidden_units, [64]);
        let e = err(&[("hidden_units", "512,,256")]);
        assert!(e.contains("\"hidden_units\"") && e.contains("512,,256"), "{e}");
        let e = err(&[("hidden_units", "512,0")]);
        assert!(e.contains("bad entry \"0\""), "{e}");
    }

    #[test]
    fn values_that_leave_their_range_in_float32_are_refused() {
        for (key, value, becomes) in [
            ("beta1", "0.99999999", "becomes 1 in float32"),
            ("beta2", "0.99999999", "becomes 1 in float32"),
            ("epsilon", "1e-46", "becomes 0 in float32"),
            ("learning_rate", "4.9e-324", "becomes 0 in float32"),
        ] {
            let e = err(&[(key, value)]);
            assert!(e.contains(&format!("\"{key}\"")) && e.contains(becomes), "{e}");
            assert!(e.contains("allowed:"), "{e}");
        }
        assert_eq!(parse(&[("beta2", "0.9999999")]).unwrap().beta2, 0.9999999);
        assert_eq!(parse(&[("epsilon", "1e-40")]).unwrap().epsilon, 1e-40);
    }

    #[test]
    fn class_names_longer_than_64_characters_are_refused_by_number() {
        let ok = format!("{},b", "é".repeat(64));
        let cfg = parse(&[("num_classes", "2"), ("class_names", &ok)]).unwrap();
        assert_eq!(cfg.class_names[0].chars().count(), 64);
        let long = format!("a,{}", "x".repeat(50_000));
        let e = err(&[("num_classes", "2"), ("class_names", &long)]);
        assert!(e.starts_with("hyperparameter \"class_names\": value"), "{e}");
        assert!(e.contains("has a name (number 2) of 50000 characters"), "{e}");
        assert!(e.contains("at most 64 characters"), "{e}");
        assert!(e.len() < 2000, "{} bytes", e.len());
    }

    #[test]
    fn platform_keys_are_ignored() {
        let cfg = parse(&[
            ("sagemaker_program", "\"train.py\""),
            ("sagemaker_region", "\"us-east-1\""),
            ("_tuning_objective_metric", "\"validation:accuracy\""),
        ])
        .unwrap();
        assert_eq!(cfg, parse(&[]).unwrap());
    }

    #[test]
    fn malformed_values_name_key_value_and_range() {
        let e = err(&[("epochs", "five")]);
        assert_eq!(
            e,
            "hyperparameter \"epochs\": value \"five\" is not a whole number (allowed: 1 to 100000)"
        );
        let e = err(&[("epochs", "0")]);
        assert!(e.contains("out of range (allowed: 1 to 100000)"), "{e}");
        let e = err(&[("learning_rate", "-0.1")]);
        assert!(e.contains("\"learning_rate\"") && e.contains("(0, 10]"), "{e}");
        let e = err(&[("learning_rate", "nan")]);
        assert!(e.contains("is not a number"), "{e}");
        let e = err(&[("dropout", "1")]);
        assert!(e.contains("[0, 1)"), "{e}");
        let e = err(&[("optimizer", "adagrad")]);
        assert!(e.contains("is not one of adam, adamw, sgd, rmsprop"), "{e}");
    }

    #[test]
    fn unknown_keys_suggest_the_likely_one() {
        assert!(err(&[("learning-rate", "0.1")]).ends_with("did you mean \"learning_rate\"?"));
        assert!(err(&[("learningRate", "0.1")]).ends_with("did you mean \"learning_rate\"?"));
        assert!(err(&[("lr", "0.1")]).ends_with("did you mean \"learning_rate\"?"));
        assert!(err(&[("epoch", "3")]).ends_with("did you mean \"epochs\"?"));
        assert!(err(&[("batchsize", "3")]).ends_with("did you mean \"batch_size\"?"));
        let e = err(&[("colour", "blue")]);
        assert!(
            e.starts_with("unknown hyperparameter \"colour\" (value \"blue\"); accepted"),
            "{e}"
        );
    }

    #[test]
    fn class_names_must_match_num_classes() {
        let cfg = parse(&[("num_classes", "3"), ("class_names", "a, b ,c")]).unwrap();
        assert_eq!(cfg.class_names, ["a", "b", "c"]);
        let mut cfg = parse(&[("num_classes", "3")]).unwrap();
        cfg.resolve_classes(Some(1), true);
        assert_eq!(
            (cfg.num_classes, cfg.class_names.clone()),
            (3, vec!["0".into(), "1".into(), "2".into()])
        );
        let e = err(&[("num_classes", "3"), ("class_names", "[\"a\", \"b\"]")]);
        assert!(e.contains("names 2 classes, but num_classes is 3"), "{e}");
        let e = err(&[("class_names", "a")]);
        assert!(e.contains("names 1 classes (allowed"), "{e}");
    }

    #[test]
    fn classes_come_from_the_names_or_the_labels() {
        let mut cfg = parse(&[("class_names", "x,y,z")]).unwrap();
        cfg.resolve_classes(Some(1), false);
        assert_eq!(cfg.num_classes, 3);
        let mut cfg = parse(&[]).unwrap();
        cfg.resolve_classes(Some(9), false);
        assert_eq!((cfg.num_classes, cfg.class_names[9].as_str()), (10, "9"));
        let mut cfg = parse(&[]).unwrap();
        cfg.resolve_classes(Some(0), false);
        assert_eq!(cfg.num_classes, 2);
    }

    #[test]
    fn the_defaults_are_the_notebooks() {
        let d = TrainConfig::default();
        assert_eq!((d.epochs, d.batch_size, d.optimizer), (5, 32, OptimizerKind::Adam));
        assert_eq!((d.learning_rate, d.beta1, d.beta2, d.epsilon), (0.001, 0.9, 0.999, 1e-7));
        assert_eq!((d.hidden_units.clone(), d.dropout, d.seed), (vec![128], 0.0, 42));
        assert_eq!((d.augment_shift, d.augment_flip, d.label_smoothing), (0, false, 0.0));
        assert_eq!(
            (d.lr_schedule, d.weight_decay, d.validation_split),
            (LrSchedule::Constant, 0.0, 0.0)
        );
        // Writing every default out changes nothing.
        let all: Vec<(&str, &str)> =
            KEYS.iter().filter(|k| !k.default.is_empty()).map(|k| (k.name, k.default)).collect();
        let mut cfg = parse(&all).unwrap();
        cfg.resolve_classes(Some(9), true);
        assert_eq!(cfg, d);
    }

    #[test]
    fn result_differences_name_only_keys_that_change_weights() {
        let a = TrainConfig::default();
        let json = |c: &TrainConfig| serde_json::to_value(c).unwrap();
        let b = TrainConfig { threads: 4, epochs: 9, checkpoint_keep: 5, ..a.clone() };
        assert!(a.result_differences(&json(&b)).is_empty());
        let c = TrainConfig { learning_rate: 0.01, seed: 1, ..a.clone() };
        let d = a.result_differences(&json(&c));
        assert_eq!(
            d,
            ["learning_rate (checkpoint 0.01, now 0.001)", "seed (checkpoint 1, now 42)"]
        );
        let cos = TrainConfig { lr_schedule: LrSchedule::Cosine, ..a.clone() };
        let cos9 = TrainConfig { epochs: 9, ..cos.clone() };
        assert_eq!(cos.result_differences(&json(&cos9)), ["epochs (checkpoint 9, now 5)"]);
        // A checkpoint from before a key existed trained with its default.
        let mut old = json(&a);
        old.as_object_mut().unwrap().remove("label_smoothing");
        assert!(a.result_differences(&old).is_empty());
        let smooth = TrainConfig { label_smoothing: 0.1, ..a.clone() };
        assert_eq!(smooth.result_differences(&old), ["label_smoothing (checkpoint 0.0, now 0.1)"]);
    }

    #[test]
    fn augmentation_and_smoothing_are_validated() {
        let c =
            parse(&[("augment_shift", "2"), ("augment_flip", "true"), ("label_smoothing", "0.1")])
                .unwrap();
        assert_eq!((c.augment_shift, c.augment_flip, c.label_smoothing), (2, true, 0.1));
        assert!(err(&[("augment_shift", "9")]).contains("allowed: 0 to 8"));
        assert!(err(&[("augment_shift", "-1")]).contains("is not a whole number"));
        assert!(err(&[("augment_flip", "sometimes")]).contains("is not a boolean"));
        assert!(err(&[("label_smoothing", "1")]).contains("allowed: [0, 1)"));
        assert!(err(&[("label_smoothing", "nan")]).contains("is not a number"));
    }

    #[test]
    fn booleans_accept_python_and_json_spellings() {
        for (raw, want) in [("True", true), ("true", true), ("\"false\"", false), ("False", false)]
        {
            assert_eq!(parse(&[("start_fresh", raw)]).unwrap().start_fresh, want, "{raw}");
        }
        assert!(err(&[("start_fresh", "maybe")]).contains("is not a boolean"));
    }

    #[test]
    fn schedules_give_expected_rates() {
        let mut cfg = TrainConfig { learning_rate: 1.0, epochs: 4, ..TrainConfig::default() };
        cfg.lr_schedule = LrSchedule::Step;
        cfg.lr_step_epochs = 2;
        cfg.lr_decay = 0.5;
        let rates: Vec<f64> = (0..4).map(|e| cfg.learning_rate_at(e)).collect();
        assert_eq!(rates, [1.0, 1.0, 0.5, 0.5]);
        cfg.lr_schedule = LrSchedule::Cosine;
        assert_eq!(cfg.learning_rate_at(0), 1.0);
        assert!((cfg.learning_rate_at(2) - 0.5).abs() < 1e-12);
        cfg.lr_schedule = LrSchedule::Exponential;
        assert_eq!(cfg.learning_rate_at(3), 0.125);
    }
}
