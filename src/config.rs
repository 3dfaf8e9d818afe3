//! Hyperparameters: the raw string map SageMaker hands us, parsed once into a typed
//! [`TrainConfig`]. Nothing past this module sees a string.
//!
//! Each value may be plain (`0.001`, `adam`) or JSON-encoded (`"\"adam\""`, `"[512, 256]"`), as
//! the SageMaker SDKs write them. Keys starting with `sagemaker_` or `_tuning` belong to the
//! platform and are ignored. Anything else that is unknown, malformed or out of range is a user
//! error naming the key, the value and what is allowed.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::Result;
use serde::Serialize;

use crate::error::{clip, quote, user};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adam,
    AdamW,
    Sgd,
    RmsProp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

/// How the learning rate changes from epoch to epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// The validated training configuration. Defaults reproduce the original notebook.
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
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 32,
            optimizer: OptimizerKind::Adam,
            learning_rate: 0.001,
            beta1: 0.9,
            beta2: 0.999,
            // Keras' default; PyTorch's is 1e-8.
            epsilon: 1e-7,
            momentum: 0.0,
            weight_decay: 0.0,
            hidden_units: vec![128],
            dropout: 0.0,
            seed: 42,
            num_classes: 10,
            class_names: FASHION_MNIST_CLASSES.iter().map(|s| s.to_string()).collect(),
            device: DeviceChoice::Auto,
            threads: 0,
            early_stopping_patience: 0,
            lr_schedule: LrSchedule::Constant,
            lr_step_epochs: 1,
            lr_decay: 0.1,
            min_learning_rate: 0.0,
            validation_split: 0.0,
            checkpoint_interval: 1,
            checkpoint_keep: 2,
            start_fresh: false,
            distributed_port: 29500,
            distributed_timeout: 300,
        }
    }
}

/// Every accepted key with what it means and its allowed values: the one source for parsing,
/// `--help`, and the documentation.
pub const KEYS: &[(&str, &str)] = &[
    ("epochs", "passes over the training data; 1 to 100000 (default 5)"),
    ("batch_size", "samples per optimizer step; 1 to 65536 (default 32)"),
    ("optimizer", "adam, adamw, sgd or rmsprop (default adam)"),
    ("learning_rate", "step size; > 0 and <= 10 (default 0.001)"),
    ("beta1", "Adam/AdamW first-moment decay; 0 to < 1 (default 0.9)"),
    ("beta2", "Adam/AdamW second-moment decay; 0 to < 1 (default 0.999)"),
    ("epsilon", "Adam/AdamW/RMSprop denominator term; > 0 and <= 1 (default 1e-7, as Keras)"),
    ("momentum", "SGD and RMSprop momentum; 0 to < 1 (default 0)"),
    ("weight_decay", "L2 penalty for adam, sgd and rmsprop, decoupled for adamw; 0 to 1 (default 0)"),
    ("hidden_units", "hidden layer widths, e.g. 128 or 512,256; 1 to 16 layers of 1 to 65536 (default 128)"),
    ("dropout", "dropout after each hidden layer; 0 to < 1 (default 0)"),
    ("seed", "random seed for initialisation, shuffling and dropout; 0 to 2^63-1 (default 42)"),
    ("num_classes", "number of classes; 2 to 256 (default 10)"),
    ("class_names", "comma-separated or JSON list, one per class (default: Fashion-MNIST names)"),
    ("device", "auto, cpu or cuda (default auto: the GPU when there is one)"),
    ("threads", "CPU threads; 0 = one per core, or OMP_NUM_THREADS when set (default 0)"),
    ("early_stopping_patience", "stop after this many epochs without a better validation loss, keeping the best epoch's weights; needs validation data; 0 = off (default 0)"),
    ("lr_schedule", "constant, step, exponential or cosine (default constant)"),
    ("lr_step_epochs", "epochs between decays for the step schedule; 1 to 100000 (default 1)"),
    ("lr_decay", "factor per decay for step and exponential; > 0 and <= 1 (default 0.1)"),
    ("min_learning_rate", "final rate of the cosine schedule; >= 0 and < learning_rate (default 0)"),
    ("validation_split", "fraction of training data held out for validation when there is no validation channel; 0 to 0.5 (default 0)"),
    ("checkpoint_interval", "epochs between checkpoints in /opt/ml/checkpoints; 0 = only on SIGTERM (default 1)"),
    ("checkpoint_keep", "checkpoints kept, newest first; 1 to 1000 (default 2)"),
    ("start_fresh", "true to ignore existing checkpoints instead of resuming; they are removed once the new run has its own (default false)"),
    ("distributed_port", "multi-host jobs: the first host's rendezvous port; 1024 to 65535 (default 29500)"),
    ("distributed_timeout", "multi-host jobs: seconds to wait for the other hosts and for each exchange with them; 1 to 86400 (default 300)"),
];

/// The hyperparameter table of `docs/contract.md`, rendered from [`KEYS`] (a test keeps the two
/// the same).
pub fn markdown_table() -> String {
    let mut t = String::from("| key | meaning, allowed values and default |\n| --- | --- |\n");
    for (key, help) in KEYS {
        t.push_str(&format!("| `{key}` | {} |\n", help.replace('|', "\\|")));
    }
    t
}

/// Keys other tools add that a user may reasonably pass and we accept as other names.
const ALIASES: &[(&str, &str)] = &[
    ("lr", "learning_rate"),
    ("batch", "batch_size"),
    ("num_epochs", "epochs"),
    ("n_epochs", "epochs"),
    ("hidden", "hidden_units"),
    ("units", "hidden_units"),
    ("patience", "early_stopping_patience"),
    ("eps", "epsilon"),
    ("wd", "weight_decay"),
];

/// One raw hyperparameter, with the helpers that turn it into a typed value or a clear error.
struct Raw<'a> {
    key: &'a str,
    raw: &'a str,
}

impl Raw<'_> {
    /// The value with one layer of JSON string encoding removed (`"\"adam\""` → `adam`).
    fn text(&self) -> String {
        match serde_json::from_str::<serde_json::Value>(self.raw) {
            Ok(serde_json::Value::String(s)) => s.trim().to_string(),
            _ => self.raw.trim().to_string(),
        }
    }

    fn bad(&self, what: impl fmt::Display) -> anyhow::Error {
        user(format!(
            "hyperparameter \"{}\": value {} {what}",
            clip(self.key, 256),
            quote(self.raw)
        ))
    }

    fn int(&self, lo: u64, hi: u64) -> Result<u64> {
        let text = self.text();
        let v: u64 = text
            .parse()
            .map_err(|_| self.bad(format_args!("is not a whole number (allowed: {lo} to {hi})")))?;
        if v < lo || v > hi {
            return Err(self.bad(format_args!("is out of range (allowed: {lo} to {hi})")));
        }
        Ok(v)
    }

    fn usize(&self, lo: usize, hi: usize) -> Result<usize> {
        Ok(self.int(lo as u64, hi as u64)? as usize)
    }

    /// A finite number in a range; `lo_open`/`hi_open` exclude the bound itself.
    fn float(&self, lo: f64, lo_open: bool, hi: f64, hi_open: bool) -> Result<f64> {
        let range = format!(
            "{}{lo}, {hi}{}",
            if lo_open { "(" } else { "[" },
            if hi_open { ")" } else { "]" }
        );
        let v: f64 = self
            .text()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| self.bad(format_args!("is not a number (allowed: {range})")))?;
        let below = if lo_open { v <= lo } else { v < lo };
        let above = if hi_open { v >= hi } else { v > hi };
        if below || above {
            return Err(self.bad(format_args!("is out of range (allowed: {range})")));
        }
        Ok(v)
    }

    fn bool(&self) -> Result<bool> {
        match self.text().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(self.bad("is not a boolean (allowed: true, false)")),
        }
    }

    fn choice<T: Copy>(&self, options: &[(&str, T)]) -> Result<T> {
        let text = self.text().to_ascii_lowercase();
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == text) {
            return Ok(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        Err(self.bad(format_args!("is not one of {}", names.join(", "))))
    }

    /// A list written as JSON (`[512, 256]`) or comma-separated (`512,256`).
    fn list(&self) -> Vec<String> {
        let items: Vec<String> = match serde_json::from_str::<serde_json::Value>(&self.text()) {
            Ok(serde_json::Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                })
                .collect(),
            _ => self.text().split(',').map(str::to_string).collect(),
        };
        items.into_iter().map(|s| s.trim().to_string()).collect()
    }

    fn usize_list(&self, max_len: usize, lo: usize, hi: usize) -> Result<Vec<usize>> {
        let allowed = format!("1 to {max_len} comma-separated whole numbers from {lo} to {hi}");
        let items = self.list();
        if items.is_empty() || items.len() > max_len || items.iter().any(|s| s.is_empty()) {
            return Err(self.bad(format_args!("is not a list of widths (allowed: {allowed})")));
        }
        items
            .iter()
            .map(|s| match s.parse::<usize>() {
                Ok(v) if (lo..=hi).contains(&v) => Ok(v),
                _ => Err(self.bad(format_args!("has a bad entry {s:?} (allowed: {allowed})"))),
            })
            .collect()
    }
}

/// Hyperparameter keys reserved for the platform and its tools.
pub fn is_platform_key(key: &str) -> bool {
    key.starts_with("sagemaker_") || key.starts_with("_tuning")
}

impl TrainConfig {
    /// Parses SageMaker's hyperparameter map, checking every key and value.
    pub fn from_hyperparameters(map: &BTreeMap<String, String>) -> Result<Self> {
        let mut cfg = Self::default();
        let mut class_names = None;
        for (key, raw) in map {
            if is_platform_key(key) {
                continue;
            }
            let v = Raw { key, raw };
            match key.as_str() {
                "epochs" => cfg.epochs = v.usize(1, 100_000)?,
                "batch_size" => cfg.batch_size = v.usize(1, 65_536)?,
                "optimizer" => {
                    cfg.optimizer = v.choice(&[
                        ("adam", OptimizerKind::Adam),
                        ("adamw", OptimizerKind::AdamW),
                        ("sgd", OptimizerKind::Sgd),
                        ("rmsprop", OptimizerKind::RmsProp),
                    ])?
                }
                "learning_rate" => cfg.learning_rate = v.float(0.0, true, 10.0, false)?,
                "beta1" => cfg.beta1 = v.float(0.0, false, 1.0, true)?,
                "beta2" => cfg.beta2 = v.float(0.0, false, 1.0, true)?,
                "epsilon" => cfg.epsilon = v.float(0.0, true, 1.0, false)?,
                "momentum" => cfg.momentum = v.float(0.0, false, 1.0, true)?,
                "weight_decay" => cfg.weight_decay = v.float(0.0, false, 1.0, false)?,
                "hidden_units" => cfg.hidden_units = v.usize_list(16, 1, 65_536)?,
                "dropout" => cfg.dropout = v.float(0.0, false, 1.0, true)?,
                "seed" => cfg.seed = v.int(0, i64::MAX as u64)?,
                "num_classes" => cfg.num_classes = v.usize(2, 256)?,
                "class_names" => class_names = Some((v.list(), raw.clone())),
                "device" => {
                    cfg.device = v.choice(&[
                        ("auto", DeviceChoice::Auto),
                        ("cpu", DeviceChoice::Cpu),
                        ("cuda", DeviceChoice::Cuda),
                        ("gpu", DeviceChoice::Cuda),
                    ])?
                }
                "threads" => cfg.threads = v.usize(0, 1024)?,
                "early_stopping_patience" => cfg.early_stopping_patience = v.usize(0, 100_000)?,
                "lr_schedule" => {
                    cfg.lr_schedule = v.choice(&[
                        ("constant", LrSchedule::Constant),
                        ("step", LrSchedule::Step),
                        ("exponential", LrSchedule::Exponential),
                        ("cosine", LrSchedule::Cosine),
                    ])?
                }
                "lr_step_epochs" => cfg.lr_step_epochs = v.usize(1, 100_000)?,
                "lr_decay" => cfg.lr_decay = v.float(0.0, true, 1.0, false)?,
                "min_learning_rate" => cfg.min_learning_rate = v.float(0.0, false, 10.0, false)?,
                "validation_split" => cfg.validation_split = v.float(0.0, false, 0.5, false)?,
                "checkpoint_interval" => cfg.checkpoint_interval = v.usize(0, 100_000)?,
                "checkpoint_keep" => cfg.checkpoint_keep = v.usize(1, 1000)?,
                "start_fresh" => cfg.start_fresh = v.bool()?,
                "distributed_port" => cfg.distributed_port = v.int(1024, 65_535)? as u16,
                "distributed_timeout" => cfg.distributed_timeout = v.int(1, 86_400)?,
                _ => return Err(unknown_key(key, raw)),
            }
        }
        cfg.class_names = match class_names {
            Some((names, raw)) => {
                if names.len() != cfg.num_classes || names.iter().any(|n| n.is_empty()) {
                    return Err(user(format!(
                        "hyperparameter \"class_names\": value {} names {} classes, but \
                         num_classes is {} (allowed: one non-empty name per class)",
                        quote(&raw),
                        names.len(),
                        cfg.num_classes
                    )));
                }
                names
            }
            None if cfg.num_classes == FASHION_MNIST_CLASSES.len() => cfg.class_names,
            None => (0..cfg.num_classes).map(|i| i.to_string()).collect(),
        };
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
        now.iter()
            .filter(|(k, v)| !neutral.contains(&k.as_str()) && saved.get(*k) != Some(v))
            .map(|(k, v)| {
                let was = saved.get(k).map_or_else(|| "-".to_string(), |x| x.to_string());
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

fn unknown_key(key: &str, raw: &str) -> anyhow::Error {
    let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
    let msg = format!("unknown hyperparameter \"{}\" (value {})", clip(key, 256), quote(raw));
    match suggest(key, &known) {
        Some(s) => user(format!("{msg}; did you mean \"{s}\"?")),
        None => user(format!("{msg}; accepted keys: {}", known.join(", "))),
    }
}

/// The accepted key a near-miss most likely meant: an alias, the same words spelt
/// differently (`learning-rate`, `learningRate`), or a small typo.
fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let squash = |s: &str| s.to_ascii_lowercase().replace(['-', '_', ' ', '.'], "");
    let k = squash(key);
    if let Some((_, target)) = ALIASES.iter().find(|(alias, _)| squash(alias) == k) {
        return known.iter().copied().find(|n| n == target);
    }
    if let Some(n) = known.iter().copied().find(|n| squash(n) == k) {
        return Some(n);
    }
    known
        .iter()
        .copied()
        .map(|n| (strsim::damerau_levenshtein(&k, &squash(n)), n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 5))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
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
        let cfg = parse(&[]).unwrap();
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
    fn platform_keys_are_ignored() {
        let cfg = parse(&[
            ("sagemaker_program", "\"train.py\""),
            ("sagemaker_region", "\"us-east-1\""),
            ("_tuning_objective_metric", "\"validation:accuracy\""),
        ])
        .unwrap();
        assert_eq!(cfg, TrainConfig::default());
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
        let cfg = parse(&[("num_classes", "3")]).unwrap();
        assert_eq!(cfg.class_names, ["0", "1", "2"]);
        let e = err(&[("num_classes", "3"), ("class_names", "[\"a\", \"b\"]")]);
        assert!(e.contains("names 2 classes, but num_classes is 3"), "{e}");
    }

    #[test]
    fn every_key_parses_its_documented_default() {
        let d = TrainConfig::default();
        let defaults = [
            ("epochs", "5"),
            ("batch_size", "32"),
            ("optimizer", "adam"),
            ("learning_rate", "0.001"),
            ("beta1", "0.9"),
            ("beta2", "0.999"),
            ("epsilon", "1e-7"),
            ("momentum", "0"),
            ("weight_decay", "0"),
            ("hidden_units", "128"),
            ("dropout", "0"),
            ("seed", "42"),
            ("num_classes", "10"),
            ("device", "auto"),
            ("threads", "0"),
            ("early_stopping_patience", "0"),
            ("lr_schedule", "constant"),
            ("lr_step_epochs", "1"),
            ("lr_decay", "0.1"),
            ("min_learning_rate", "0"),
            ("validation_split", "0"),
            ("checkpoint_interval", "1"),
            ("checkpoint_keep", "2"),
            ("start_fresh", "False"),
            ("distributed_port", "29500"),
            ("distributed_timeout", "300"),
        ];
        assert_eq!(parse(&defaults).unwrap(), d);
        for (k, _) in KEYS {
            assert!(
                *k == "class_names" || defaults.iter().any(|(dk, _)| dk == k),
                "{k} lacks a default check"
            );
        }
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
