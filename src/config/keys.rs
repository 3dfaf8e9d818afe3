//! The hyperparameter table: each key's name, allowed values, default and meaning, written once.
//! Parsing, [`TrainConfig::default`], `train --help` and docs/contract.md all come from [`KEYS`].

use std::fmt;

use anyhow::Result;
use serde::de::DeserializeOwned;

use super::TrainConfig;
use crate::error::{clip, quote, user};

/// What values a key takes.
pub enum Values {
    /// A whole number from `lo` to `hi`.
    Whole {
        lo: u64,
        hi: u64,
    },
    /// A finite number between `lo` and `hi`; an open end excludes the bound itself.
    Number {
        lo: f64,
        lo_open: bool,
        hi: f64,
        hi_open: bool,
    },
    Bool,
    /// One of these names, in any case.
    OneOf(&'static [&'static str]),
    /// A list of `1..=max_len` whole numbers from `lo` to `hi`, JSON or comma-separated.
    Widths {
        max_len: usize,
        lo: usize,
        hi: usize,
    },
    /// A list of non-empty names, JSON or comma-separated.
    Names {
        max_chars: usize,
    },
}

/// A parsed value, of the kind its key's [`Values`] allows.
pub enum Value {
    Whole(u64),
    Number(f64),
    Bool(bool),
    OneOf(&'static str),
    Widths(Vec<usize>),
    Names(Vec<String>),
}

/// One accepted hyperparameter.
pub struct Key {
    pub name: &'static str,
    /// What the key does; the allowed values and the default are added from the fields below.
    pub help: &'static str,
    pub values: Values,
    /// The default as a user would write it (empty: see `help`).
    pub default: &'static str,
    /// Stores a parsed value into the configuration.
    set: fn(&mut TrainConfig, Value),
}

impl Value {
    fn whole(self) -> u64 {
        match self {
            Value::Whole(v) => v,
            _ => unreachable!("the table pairs Whole with whole"),
        }
    }
    fn usize(self) -> usize {
        self.whole() as usize
    }
    fn number(self) -> f64 {
        match self {
            Value::Number(v) => v,
            _ => unreachable!("the table pairs Number with number"),
        }
    }
    fn bool(self) -> bool {
        matches!(self, Value::Bool(true))
    }
    fn one_of(self) -> &'static str {
        match self {
            Value::OneOf(name) => name,
            _ => unreachable!("the table pairs OneOf with one_of"),
        }
    }
    /// A name of [`Values::OneOf`] as the enum it names (the enums deserialise their names).
    fn variant<T: DeserializeOwned>(self) -> T {
        match self {
            Value::OneOf(name) => serde_json::from_value(name.into())
                .unwrap_or_else(|_| unreachable!("a test checks every listed name: {name}")),
            _ => unreachable!("the table pairs OneOf with variant"),
        }
    }
    fn widths(self) -> Vec<usize> {
        match self {
            Value::Widths(v) => v,
            _ => unreachable!("the table pairs Widths with widths"),
        }
    }
    fn names(self) -> Vec<String> {
        match self {
            Value::Names(v) => v,
            _ => unreachable!("the table pairs Names with names"),
        }
    }
}

use Values::*;

const LR_RANGE: Values = Number { lo: 0.0, lo_open: true, hi: 10.0, hi_open: false };
const FRACTION: Values = Number { lo: 0.0, lo_open: false, hi: 1.0, hi_open: true };
const EPOCHS: Values = Whole { lo: 1, hi: 100_000 };

/// Every accepted key, in the order `--help` and the docs list them.
pub const KEYS: &[Key] = &[
    Key {
        name: "epochs",
        help: "passes over the training data",
        values: EPOCHS,
        default: "5",
        set: |c, v| c.epochs = v.usize(),
    },
    Key {
        name: "batch_size",
        help: "samples per optimizer step",
        values: Whole { lo: 1, hi: 65_536 },
        default: "32",
        set: |c, v| c.batch_size = v.usize(),
    },
    Key {
        name: "optimizer",
        help: "the update rule",
        values: OneOf(&["adam", "adamw", "sgd", "rmsprop"]),
        default: "adam",
        set: |c, v| c.optimizer = v.variant(),
    },
    Key {
        name: "learning_rate",
        help: "step size",
        values: LR_RANGE,
        default: "0.001",
        set: |c, v| c.learning_rate = v.number(),
    },
    Key {
        name: "beta1",
        help: "Adam/AdamW first-moment decay",
        values: FRACTION,
        default: "0.9",
        set: |c, v| c.beta1 = v.number(),
    },
    Key {
        name: "beta2",
        help: "Adam/AdamW second-moment decay",
        values: FRACTION,
        default: "0.999",
        set: |c, v| c.beta2 = v.number(),
    },
    Key {
        name: "epsilon",
        help: "Adam/AdamW/RMSprop denominator term (the default is Keras'; PyTorch's is 1e-8)",
        values: Number { lo: 0.0, lo_open: true, hi: 1.0, hi_open: false },
        default: "1e-7",
        set: |c, v| c.epsilon = v.number(),
    },
    Key {
        name: "momentum",
        help: "SGD and RMSprop momentum",
        values: FRACTION,
        default: "0",
        set: |c, v| c.momentum = v.number(),
    },
    Key {
        name: "weight_decay",
        help: "L2 penalty for adam, sgd and rmsprop, decoupled for adamw",
        values: Number { lo: 0.0, lo_open: false, hi: 1.0, hi_open: false },
        default: "0",
        set: |c, v| c.weight_decay = v.number(),
    },
    Key {
        name: "hidden_units",
        help: "hidden layer widths, e.g. 128 or 512,256",
        values: Widths { max_len: 16, lo: 1, hi: 65_536 },
        default: "128",
        set: |c, v| c.hidden_units = v.widths(),
    },
    Key {
        name: "dropout",
        help: "dropout after each hidden layer",
        values: FRACTION,
        default: "0",
        set: |c, v| c.dropout = v.number(),
    },
    Key {
        name: "augment_shift",
        help: "shift each training image by up to this many pixels each way, drawn per image \
               and step; below the images' size",
        values: Whole { lo: 0, hi: 8 },
        default: "0",
        set: |c, v| c.augment_shift = v.usize(),
    },
    Key {
        name: "augment_flip",
        help: "mirror each training image left to right with probability 1/2, drawn per image \
               and step",
        values: Bool,
        default: "false",
        set: |c, v| c.augment_flip = v.bool(),
    },
    Key {
        name: "image_size",
        help: "picture channels (application/x-image): resize every picture to this height and \
               width, one number for a square (bilinear, antialiased when shrinking; default: \
               the first picture's size, which every picture must then have)",
        values: Widths { max_len: 2, lo: 1, hi: 4096 },
        default: "",
        set: |c, v| {
            let v = v.widths();
            c.image_size = Some((v[0], *v.last().expect("1 or 2 numbers")));
        },
    },
    Key {
        name: "image_channels",
        help: "picture channels (application/x-image): 1 converts every picture to grey, 3 to \
               RGB (default: as the first picture is)",
        values: OneOf(&["1", "3"]),
        default: "",
        set: |c, v| c.image_channels = Some(if v.one_of() == "1" { 1 } else { 3 }),
    },
    Key {
        name: "label_smoothing",
        help: "weight moved from the label to a uniform target over all classes, in the \
               training loss only",
        values: FRACTION,
        default: "0",
        set: |c, v| c.label_smoothing = v.number(),
    },
    Key {
        name: "seed",
        help: "random seed for initialisation, shuffling, dropout and augmentation",
        values: Whole { lo: 0, hi: i64::MAX as u64 },
        default: "42",
        set: |c, v| c.seed = v.whole(),
    },
    Key {
        name: "num_classes",
        help: "number of classes (default: as many as class_names names, else the largest \
               label + 1); labels beyond it are refused",
        values: Whole { lo: 2, hi: 256 },
        default: "",
        set: |c, v| c.num_classes = v.usize(),
    },
    Key {
        name: "class_names",
        help: "one name per class (default: the Fashion-MNIST names for 10 classes of IDX \
               images, else 0, 1, …)",
        values: Names { max_chars: 64 },
        default: "",
        set: |c, v| c.class_names = v.names(),
    },
    Key {
        name: "device",
        help: "auto picks the GPU when there is one; gpu means cuda",
        values: OneOf(&["auto", "cpu", "cuda", "gpu"]),
        default: "auto",
        set: |c, v| c.device = v.variant(),
    },
    Key {
        name: "threads",
        help: "CPU threads; 0 = one per core, or OMP_NUM_THREADS when set",
        values: Whole { lo: 0, hi: 1024 },
        default: "0",
        set: |c, v| c.threads = v.usize(),
    },
    Key {
        name: "early_stopping_patience",
        help: "stop after this many epochs without a better validation loss, keeping the best \
               epoch's weights; needs validation data; 0 = off",
        values: Whole { lo: 0, hi: 100_000 },
        default: "0",
        set: |c, v| c.early_stopping_patience = v.usize(),
    },
    Key {
        name: "lr_schedule",
        help: "how the rate changes from epoch to epoch",
        values: OneOf(&["constant", "step", "exponential", "cosine"]),
        default: "constant",
        set: |c, v| c.lr_schedule = v.variant(),
    },
    Key {
        name: "lr_step_epochs",
        help: "epochs between decays for the step schedule",
        values: EPOCHS,
        default: "1",
        set: |c, v| c.lr_step_epochs = v.usize(),
    },
    Key {
        name: "lr_decay",
        help: "factor per decay for step and exponential",
        values: Number { lo: 0.0, lo_open: true, hi: 1.0, hi_open: false },
        default: "0.1",
        set: |c, v| c.lr_decay = v.number(),
    },
    Key {
        name: "min_learning_rate",
        help: "final rate of the cosine schedule; below learning_rate",
        values: Number { lo: 0.0, lo_open: false, hi: 10.0, hi_open: false },
        default: "0",
        set: |c, v| c.min_learning_rate = v.number(),
    },
    Key {
        name: "validation_split",
        help: "fraction of training data held out for validation when there is no validation \
               channel",
        values: Number { lo: 0.0, lo_open: false, hi: 0.5, hi_open: false },
        default: "0",
        set: |c, v| c.validation_split = v.number(),
    },
    Key {
        name: "checkpoint_interval",
        help: "epochs between checkpoints in /opt/ml/checkpoints; 0 = only on SIGTERM",
        values: Whole { lo: 0, hi: 100_000 },
        default: "1",
        set: |c, v| c.checkpoint_interval = v.usize(),
    },
    Key {
        name: "checkpoint_keep",
        help: "checkpoints kept, newest first",
        values: Whole { lo: 1, hi: 1000 },
        default: "2",
        set: |c, v| c.checkpoint_keep = v.usize(),
    },
    Key {
        name: "start_fresh",
        help: "true to ignore existing checkpoints instead of resuming; they are removed once \
               the new run has its own",
        values: Bool,
        default: "false",
        set: |c, v| c.start_fresh = v.bool(),
    },
    Key {
        name: "distributed_port",
        help: "multi-host jobs: the first host's rendezvous port",
        values: Whole { lo: 1024, hi: 65_535 },
        default: "29500",
        set: |c, v| c.distributed_port = v.whole() as u16,
    },
    Key {
        name: "distributed_timeout",
        help: "multi-host jobs: seconds to wait for the other hosts and for each exchange with \
               them",
        values: Whole { lo: 1, hi: 86_400 },
        default: "300",
        set: |c, v| c.distributed_timeout = v.whole(),
    },
];

impl fmt::Display for Values {
    /// The allowed values, as error messages and the docs state them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Whole { lo, hi } => write!(f, "{lo} to {hi}"),
            Number { lo, lo_open, hi, hi_open } => write!(
                f,
                "{}{lo}, {hi}{}",
                if *lo_open { "(" } else { "[" },
                if *hi_open { ")" } else { "]" }
            ),
            Bool => f.write_str("true, false"),
            OneOf(names) => f.write_str(&names.join(", ")),
            Widths { max_len, lo, hi } => {
                write!(f, "1 to {max_len} comma-separated whole numbers from {lo} to {hi}")
            }
            Names { max_chars } => write!(
                f,
                "a comma-separated or JSON list of non-empty names of at most {max_chars} characters"
            ),
        }
    }
}

impl Key {
    /// What the key means, what it takes and its default: `--help`'s and the docs' line.
    pub fn describe(&self) -> String {
        let default = if self.default.is_empty() {
            String::new()
        } else {
            format!(" (default {})", self.default)
        };
        format!("{}; {}{default}", self.help, self.values)
    }

    /// Parses `raw` (plain or JSON-encoded) for this key and stores it into `cfg`.
    pub(super) fn apply(&self, cfg: &mut TrainConfig, raw: &str) -> Result<()> {
        let value = Raw { key: self.name, raw }.parse(&self.values)?;
        (self.set)(cfg, value);
        Ok(())
    }
}

/// The accepted key named `name`.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// docs/contract.md's table of hyperparameters.
pub fn markdown_table() -> String {
    let mut t = String::from("| key | meaning; allowed values (default) |\n| --- | --- |\n");
    for k in KEYS {
        t.push_str(&format!("| `{}` | {} |\n", k.name, k.describe().replace('|', "\\|")));
    }
    t
}

/// One raw hyperparameter, with the helpers that turn it into a typed value or a clear error.
struct Raw<'a> {
    key: &'a str,
    raw: &'a str,
}

impl Raw<'_> {
    fn parse(&self, values: &Values) -> Result<Value> {
        let allowed = format!("allowed: {values}");
        let text = self.text();
        let value = match values {
            Whole { lo, hi } => {
                let v: u64 = text
                    .parse()
                    .map_err(|_| self.bad(format_args!("is not a whole number ({allowed})")))?;
                if v < *lo || v > *hi {
                    return Err(self.bad(format_args!("is out of range ({allowed})")));
                }
                Value::Whole(v)
            }
            Number { lo, lo_open, hi, hi_open } => {
                let v: f64 = text
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite())
                    .ok_or_else(|| self.bad(format_args!("is not a number ({allowed})")))?;
                let outside = |v: f64| {
                    let below = if *lo_open { v <= *lo } else { v < *lo };
                    let above = if *hi_open { v >= *hi } else { v > *hi };
                    below || above
                };
                if outside(v) {
                    return Err(self.bad(format_args!("is out of range ({allowed})")));
                }
                // Training computes in float32: 0.99999999 is 1 there, 1e-46 is 0.
                let single = v as f32 as f64;
                if outside(single) {
                    return Err(self.bad(format_args!(
                        "becomes {single} in float32, the precision training uses, which is out \
                         of range ({allowed})"
                    )));
                }
                Value::Number(v)
            }
            Bool => match text.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Value::Bool(true),
                "false" | "0" | "no" => Value::Bool(false),
                _ => return Err(self.bad(format_args!("is not a boolean ({allowed})"))),
            },
            OneOf(names) => {
                let text = text.to_ascii_lowercase();
                match names.iter().find(|n| **n == text) {
                    Some(n) => Value::OneOf(n),
                    None => return Err(self.bad(format_args!("is not one of {values}"))),
                }
            }
            Widths { max_len, lo, hi } => Value::Widths(self.widths(*max_len, *lo, *hi, &allowed)?),
            Names { max_chars } => Value::Names(self.names(*max_chars, &allowed)?),
        };
        Ok(value)
    }

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

    /// Names no longer than `max_chars` each: a name is drawn in pictures and written into
    /// `model.json`, and neither has room for a book.
    fn names(&self, max_chars: usize, allowed: &str) -> Result<Vec<String>> {
        let items = self.list();
        match items.iter().map(|n| n.chars().count()).enumerate().find(|(_, c)| *c > max_chars) {
            Some((i, chars)) => Err(self.bad(format_args!(
                "has a name (number {}) of {chars} characters ({allowed})",
                i + 1
            ))),
            None => Ok(items),
        }
    }

    fn widths(&self, max_len: usize, lo: usize, hi: usize, allowed: &str) -> Result<Vec<usize>> {
        let items = self.list();
        if items.is_empty() || items.len() > max_len || items.iter().any(|s| s.is_empty()) {
            return Err(self.bad(format_args!("is not a list of widths ({allowed})")));
        }
        items
            .iter()
            .map(|s| match s.parse::<usize>() {
                Ok(v) if (lo..=hi).contains(&v) => Ok(v),
                _ => Err(self.bad(format_args!("has a bad entry {s:?} ({allowed})"))),
            })
            .collect()
    }
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

pub(super) fn unknown_key(key: &str, raw: &str) -> anyhow::Error {
    let known: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
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

    /// Every name a `OneOf` lists is a variant of the enum its key stores, and every key's
    /// default parses.
    #[test]
    fn every_listed_name_and_every_default_parses() {
        for k in KEYS {
            if let OneOf(names) = k.values {
                for name in names {
                    let mut cfg = TrainConfig::default();
                    k.apply(&mut cfg, name).unwrap();
                }
            }
            if !k.default.is_empty() {
                k.apply(&mut TrainConfig::default(), k.default).unwrap();
            }
        }
    }

    #[test]
    fn descriptions_state_range_and_default() {
        assert_eq!(
            key("epochs").unwrap().describe(),
            "passes over the training data; 1 to 100000 (default 5)"
        );
        assert_eq!(
            key("dropout").unwrap().describe(),
            "dropout after each hidden layer; [0, 1) (default 0)"
        );
        assert!(key("nonsense").is_none());
    }
}
