//! The image as a SageMaker Algorithm (`CreateAlgorithm`): the parts of `infra/algorithm.json`
//! that only the trainer knows, so that the console's forms can never offer what it refuses.
//!
//! [`hyperparameters`] turns each key of [`KEYS`] into a `HyperParameterSpecification`, and
//! [`content_types`] lists the channel formats [`format::ACCEPTED`] names. A test writes both
//! into `infra/` (`SMTRAIN_BLESS=1`) and fails when the committed files differ.

use serde_json::{json, Value};

use crate::config::{Key, Values, KEYS};
use crate::data::format;

/// The largest integer end the specification states: what AWS's own algorithms write for an
/// unbounded integer (2³¹). A wider key (`seed`) is offered up to here.
pub const INTEGER_END: u64 = 1 << 31;

/// Keys that say how a job runs, not what it learns: a tuning job has nothing to gain from them.
pub const NOT_TUNABLE: &[&str] = &[
    "num_classes",
    "class_names",
    "seed",
    "device",
    "threads",
    "validation_split",
    "checkpoint_interval",
    "checkpoint_keep",
    "start_fresh",
    "distributed_port",
    "distributed_timeout",
];

/// `TrainingSpecification.SupportedHyperParameters`: every key once, in the table's order.
pub fn hyperparameters() -> Value {
    Value::Array(KEYS.iter().map(specification).collect())
}

fn specification(key: &Key) -> Value {
    let (kind, range) = match &key.values {
        Values::Whole { lo, hi } => (
            "Integer",
            Some(json!({"IntegerParameterRangeSpecification": {
                "MinValue": lo.min(&INTEGER_END).to_string(),
                "MaxValue": hi.min(&INTEGER_END).to_string(),
            }})),
        ),
        Values::Number { lo, lo_open, hi, hi_open } => (
            "Continuous",
            Some(json!({"ContinuousParameterRangeSpecification": {
                "MinValue": closed_end(*lo, *lo_open, true),
                "MaxValue": closed_end(*hi, *hi_open, false),
            }})),
        ),
        Values::Bool => ("Categorical", Some(categorical(&["true", "false"]))),
        Values::OneOf(names) => ("Categorical", Some(categorical(names))),
        Values::Widths { .. } | Values::Names { .. } => ("FreeText", None),
    };
    let mut spec = json!({
        "Name": key.name,
        "Description": key.describe(),
        "Type": kind,
        "IsTunable": !NOT_TUNABLE.contains(&key.name),
        "IsRequired": false,
    });
    if let Some(range) = range {
        spec["Range"] = range;
    }
    // An empty default means "decided from the data": sending "" would be refused.
    if !key.default.is_empty() {
        spec["DefaultValue"] = key.default.into();
    }
    spec
}

fn categorical(values: &[&str]) -> Value {
    json!({"CategoricalParameterRangeSpecification": {"Values": values}})
}

/// A range end the service can state: it has no open ends, so an open one becomes the nearest
/// float32 inside it (training computes in float32, where nothing lies between the two).
fn closed_end(bound: f64, open: bool, lower: bool) -> String {
    if !open {
        return bound.to_string();
    }
    let b = bound as f32;
    let inside = if lower { b.next_up() } else { b.next_down() };
    // Display writes 1e-45 with all its zeros.
    let plain = inside.to_string();
    match plain.len() > 12 {
        true => format!("{inside:e}"),
        false => plain,
    }
}

/// The media types of [`format::ACCEPTED`], which names each format this trainer reads once.
pub fn content_types() -> Vec<&'static str> {
    format::ACCEPTED.split([',', ' ']).filter(|word| word.contains('/')).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::key;

    #[test]
    fn open_ends_become_the_nearest_float32_inside() {
        assert_eq!(closed_end(0.0, true, true), "1e-45");
        assert_eq!(closed_end(1.0, true, false), "0.99999994");
        assert_eq!(closed_end(0.5, false, false), "0.5");
        assert_eq!(closed_end(10.0, false, false), "10");
    }

    #[test]
    fn each_kind_of_key_has_its_type() {
        let spec = |name: &str| specification(key(name).unwrap());
        assert_eq!(spec("epochs")["Type"], "Integer");
        assert_eq!(
            spec("seed")["Range"]["IntegerParameterRangeSpecification"]["MaxValue"],
            "2147483648"
        );
        assert_eq!(spec("dropout")["Type"], "Continuous");
        assert_eq!(
            spec("augment_flip")["Range"]["CategoricalParameterRangeSpecification"]["Values"],
            json!(["true", "false"])
        );
        assert_eq!(spec("hidden_units")["Type"], "FreeText");
        assert!(spec("num_classes").get("DefaultValue").is_none());
        assert_eq!(spec("device")["IsTunable"], false);
    }

    #[test]
    fn every_untunable_name_is_a_key() {
        for name in NOT_TUNABLE {
            assert!(key(name).is_some(), "{name}");
        }
    }

    #[test]
    fn content_types_are_the_accepted_media_types() {
        let types = content_types();
        assert!(types.contains(&"text/csv") && types.contains(&"application/x-idx"), "{types:?}");
        for t in types {
            assert!(format::Format::parse(Some(t)).is_ok(), "{t}");
        }
    }
}
