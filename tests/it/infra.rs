//! The hyperparameters in `infra/`'s request templates, through the trainer's own parser: the
//! training job's must be accepted keys holding the notebook's defaults; the tuning job's static
//! values, and every value its ranges can reach, must be accepted too. (The templates'
//! hyperparameters are literal strings that rendering leaves alone; `infra/tests` checks that.)
//! The Algorithm specification (`infra/algorithm.json`) is generated from the key table here.

use std::collections::BTreeMap;

use serde_json::Value;
use smtrain::algorithm;
use smtrain::config::{is_platform_key, TrainConfig, KEYS};

fn template(name: &str) -> Value {
    let path = format!("{}/infra/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// A JSON object of strings as the map SageMaker writes to `hyperparameters.json`.
fn strings(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .expect("hyperparameters are an object")
        .iter()
        .map(|(k, v)| {
            (k.clone(), v.as_str().unwrap_or_else(|| panic!("{k}: {v} is not a string")).into())
        })
        .collect()
}

fn parse(map: &BTreeMap<String, String>) -> TrainConfig {
    TrainConfig::from_hyperparameters(map).unwrap_or_else(|e| panic!("{map:?}: {e:#}"))
}

fn assert_accepted_keys<'a>(keys: impl IntoIterator<Item = &'a String>) {
    let accepted: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
    for key in keys {
        // Platform keys would be ignored and aliases only tolerated: neither belongs in a template.
        assert!(accepted.contains(&key.as_str()), "{key} is not one of the trainer's keys");
        assert!(!is_platform_key(key), "{key} is a platform key");
    }
}

#[test]
fn training_job_hyperparameters_are_the_notebook_defaults() {
    let hp = strings(&template("training-job.json")["HyperParameters"]);
    assert_accepted_keys(hp.keys());
    // The template's data is the installed Fashion-MNIST, whose labels run to 9.
    let mut cfg = parse(&hp);
    cfg.resolve_classes(Some(9), true);
    assert_eq!(cfg, TrainConfig::default());
    // The values users come to change are spelt out, not left to the defaults.
    for key in ["epochs", "batch_size", "learning_rate", "hidden_units", "dropout", "optimizer"] {
        assert!(hp.contains_key(key), "the training job should show {key}");
    }
}

#[test]
fn tuning_job_static_values_and_every_range_end_parse() {
    let tpl = template("tuning-job.json");
    let fixed = strings(&tpl["TrainingJobDefinition"]["StaticHyperParameters"]);
    assert_accepted_keys(fixed.keys());
    parse(&fixed);

    let ranges = &tpl["HyperParameterTuningJobConfig"]["ParameterRanges"];
    let mut tuned = Vec::new();
    let mut values: Vec<(String, String)> = Vec::new();
    for kind in ["ContinuousParameterRanges", "IntegerParameterRanges"] {
        for range in ranges[kind].as_array().into_iter().flatten() {
            let name = range["Name"].as_str().unwrap().to_string();
            for end in ["MinValue", "MaxValue"] {
                values.push((name.clone(), range[end].as_str().unwrap().into()));
            }
            tuned.push(name);
        }
    }
    for range in ranges["CategoricalParameterRanges"].as_array().into_iter().flatten() {
        let name = range["Name"].as_str().unwrap().to_string();
        for value in range["Values"].as_array().unwrap() {
            values.push((name.clone(), value.as_str().unwrap().into()));
        }
        tuned.push(name);
    }
    assert_accepted_keys(&tuned);
    for key in &tuned {
        assert!(!fixed.contains_key(key), "{key} is both tuned and static");
    }
    for want in ["learning_rate", "batch_size", "hidden_units", "dropout"] {
        assert!(tuned.iter().any(|k| k == want), "the tuning job should tune {want}");
    }
    for (key, value) in values {
        // Each value SageMaker may pass, on top of the static ones, as one job would get it.
        let mut hp = fixed.clone();
        hp.insert(key.clone(), value.clone());
        let cfg = parse(&hp);
        if key == "batch_size" {
            assert_eq!(cfg.batch_size.to_string(), value, "integer ranges hold whole numbers");
        }
    }
}

/// The recipe (docs/recipe.md) is accepted, and the tuning job searches around it: each of its
/// values is either inside that key's range or the job's static value.
#[test]
fn the_recipe_parses_and_lies_inside_the_tuning_space() {
    let recipe = strings(&template("recipe-hyperparameters.json"));
    assert_accepted_keys(recipe.keys());
    let cfg = parse(&recipe);
    assert!(cfg.augment_shift > 0 && cfg.augment_flip && cfg.label_smoothing > 0.0, "{cfg:?}");

    let tpl = template("tuning-job.json");
    let fixed = strings(&tpl["TrainingJobDefinition"]["StaticHyperParameters"]);
    let ranges = &tpl["HyperParameterTuningJobConfig"]["ParameterRanges"];
    let range = |kind: &str, key: &str| {
        ranges[kind].as_array().into_iter().flatten().find(|r| r["Name"] == key).cloned()
    };
    for (key, value) in &recipe {
        let numeric = ["ContinuousParameterRanges", "IntegerParameterRanges"]
            .iter()
            .find_map(|kind| range(kind, key));
        if let Some(r) = numeric {
            let bound = |end: &str| r[end].as_str().unwrap().parse::<f64>().unwrap();
            let v: f64 = value.parse().unwrap();
            assert!(bound("MinValue") <= v && v <= bound("MaxValue"), "{key}={value} outside {r}");
        } else if let Some(r) = range("CategoricalParameterRanges", key) {
            let values: Vec<&str> =
                r["Values"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
            assert!(values.contains(&value.as_str()), "{key}={value} not among {values:?}");
        } else {
            assert_eq!(fixed.get(key), Some(value), "{key}: neither tuned nor the static value");
        }
    }
    // What the tuning job adds on top: a validation hold-out and a seed, nothing else.
    let extra: Vec<&String> = fixed.keys().filter(|k| !recipe.contains_key(*k)).collect();
    assert_eq!(extra, ["seed", "validation_split"]);
}

/// docs/recipe.md's sentence on `make tune` names every key the tuning job searches, and no
/// other.
#[test]
fn the_recipe_doc_names_the_keys_the_tuning_job_searches() {
    let tpl = template("tuning-job.json");
    let ranges = tpl["HyperParameterTuningJobConfig"]["ParameterRanges"].as_object().unwrap();
    let mut tuned: Vec<&str> = ranges
        .values()
        .flat_map(|kind| kind.as_array().unwrap())
        .map(|r| r["Name"].as_str().unwrap())
        .collect();
    tuned.sort();
    let doc =
        std::fs::read_to_string(format!("{}/docs/recipe.md", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let start = doc.find("`make tune` searches").expect("the sentence on make tune");
    let sentence = &doc[start..start + doc[start..].find(").\n").unwrap()];
    let mut named: Vec<&str> =
        KEYS.iter().map(|k| k.name).filter(|k| sentence.contains(&format!("`{k}`"))).collect();
    named.sort();
    assert_eq!(named, tuned, "docs/recipe.md: {sentence}");
}

/// `infra/algorithm-hyperparameters.json` and `infra/algorithm-content-types.json`, which
/// `infra/algorithm.json` includes, are the trainer's own (`smtrain::algorithm`, from the key
/// table and the formats it reads); `SMTRAIN_BLESS=1` rewrites them after a change.
#[test]
fn the_algorithm_spec_is_generated_from_the_trainer() {
    let files = [
        ("algorithm-hyperparameters.json", algorithm::hyperparameters()),
        ("algorithm-content-types.json", serde_json::json!(algorithm::content_types())),
    ];
    let bless = std::env::var("SMTRAIN_BLESS").is_ok_and(|v| v == "1");
    for (name, want) in files {
        let path = format!("{}/infra/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = serde_json::to_string_pretty(&want).unwrap() + "\n";
        if bless {
            std::fs::write(&path, text).unwrap();
        } else {
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(committed == text, "infra/{name} is stale: rerun with SMTRAIN_BLESS=1");
        }
    }
}

/// Every value the console or a tuning job can send from the specification is accepted: each
/// end of each range (open ends moved inside), each categorical value; and the defaults,
/// together, are the trainer's defaults.
#[test]
fn every_range_end_and_default_of_the_algorithm_spec_parses() {
    let spec = template("algorithm-hyperparameters.json");
    let spec = spec.as_array().unwrap();
    let names: Vec<&str> = spec.iter().map(|s| s["Name"].as_str().unwrap()).collect();
    assert_eq!(names, KEYS.iter().map(|k| k.name).collect::<Vec<_>>());
    let mut defaults = BTreeMap::new();
    for s in spec {
        let name = s["Name"].as_str().unwrap().to_string();
        let range = &s["Range"];
        let mut values: Vec<String> = Vec::new();
        for kind in ["IntegerParameterRangeSpecification", "ContinuousParameterRangeSpecification"]
        {
            for end in ["MinValue", "MaxValue"] {
                if let Some(v) = range[kind][end].as_str() {
                    values.push(v.into());
                }
            }
        }
        for v in range["CategoricalParameterRangeSpecification"]["Values"]
            .as_array()
            .into_iter()
            .flatten()
        {
            values.push(v.as_str().unwrap().into());
        }
        assert_eq!(values.is_empty(), s["Type"] == "FreeText", "{name}: {s}");
        for value in values {
            let one = BTreeMap::from([(name.clone(), value)]);
            parse(&one);
        }
        if let Some(d) = s["DefaultValue"].as_str() {
            defaults.insert(name, d.to_string());
        }
    }
    let mut cfg = parse(&defaults);
    cfg.resolve_classes(Some(9), true);
    assert_eq!(cfg, TrainConfig::default());
}

/// A job given every default the specification states, as the console fills them in, trains.
#[test]
fn a_job_with_the_algorithm_specs_defaults_trains() {
    let spec = template("algorithm-hyperparameters.json");
    let defaults: Vec<(&str, &str)> = spec
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| Some((s["Name"].as_str()?, s["DefaultValue"].as_str()?)))
        .collect();
    // Keys whose default the data decides (num_classes, class_names, image_size, …) have none.
    let stated = KEYS.iter().filter(|k| !k.default.is_empty()).count();
    assert_eq!(defaults.len(), stated, "every key with a default states it: {defaults:?}");
    let run = crate::util::Job::small(&defaults).run().ok();
    assert!(run.stdout().contains("metrics: test_loss="), "{}", run.stdout());
}

/// The content types the Algorithm and the Model Registry's versions offer for inference are
/// ones `train serve` reads (requests) and writes (answers).
#[test]
fn the_inference_content_types_are_the_servers() {
    use smtrain::serve::payload::{Input, Output};
    for name in ["algorithm.json", "model-package.json"] {
        let spec = &template(name)["InferenceSpecification"];
        for t in spec["SupportedContentTypes"].as_array().unwrap() {
            assert!(Input::from_content_type(t.as_str()).is_some(), "{name}: {t}");
        }
        for t in spec["SupportedResponseMIMETypes"].as_array().unwrap() {
            assert!(Output::from_accept(t.as_str()).is_some(), "{name}: {t}");
        }
    }
}
