//! Successful jobs: what they write, what they print, and that it is right.

use smtrain::artifacts::load_model_dir;
use smtrain::data::{load_channel, Format};
use smtrain::state::DeviceData;
use smtrain::train::evaluate;
use tch::Device;

use crate::util::{fixture, Job};

#[test]
fn small_job_trains_one_epoch_and_writes_every_artifact() {
    let job = Job::small(&[("epochs", "1"), ("seed", "3")]);
    let run = job.run().ok();
    assert_eq!(job.model_files(), ["metrics.json", "model.json", "model.safetensors"]);
    assert!(job.succeeded());
    assert!(job.failure().is_none());

    let metrics = job.json("model/metrics.json");
    assert_eq!(metrics["epochs"].as_array().unwrap().len(), 1);
    let test_acc = metrics["test"]["accuracy"].as_f64().unwrap();
    assert!(test_acc > 0.5, "one epoch on 1000 images should beat chance: {test_acc}");
    let card = job.json("model/model.json");
    assert_eq!(card["architecture"]["layer_sizes"], serde_json::json!([784, 128, 10]));
    assert_eq!(card["hyperparameters"]["epochs"], 1);
    assert_eq!(card["class_names"][0], "T-shirt/top");
    assert!(card["data"]["train"]["fingerprint"].as_str().unwrap().starts_with("blake3:"));
    assert_eq!(card["data"]["test"]["samples"], 200);
    assert!(run.stdout().contains("metrics: epoch=1 "));
    assert!(run.stdout().contains("metrics: test_loss="));
    // Logs carry no colour codes when not at a terminal.
    assert!(!run.stderr().contains('\u{1b}'), "ANSI escapes in logs");
}

#[test]
fn reloaded_weights_reproduce_the_reported_test_accuracy() {
    let job = Job::small(&[("epochs", "2")]);
    job.run().ok();
    let reported = job.json("model/metrics.json")["test"].clone();
    let (model, _) = load_model_dir(&job.path("model"), Device::Cpu).unwrap();
    let test = load_channel("test", &fixture("test"), Format::Idx).unwrap();
    let score = evaluate(&model, &DeviceData::new(&test, Device::Cpu));
    assert_eq!(score.accuracy, reported["accuracy"].as_f64().unwrap());
    assert!((score.loss - reported["loss"].as_f64().unwrap()).abs() < 1e-9);
}

#[test]
fn same_seed_gives_bit_identical_weights() {
    let hp = [("epochs", "2"), ("seed", "11"), ("dropout", "0.2")];
    let (a, b, c) = (
        Job::small(&hp),
        Job::small(&hp),
        Job::small(&[("epochs", "2"), ("seed", "12"), ("dropout", "0.2")]),
    );
    for j in [&a, &b, &c] {
        j.run().ok();
    }
    let weights = |j: &Job| std::fs::read(j.path("model/model.safetensors")).unwrap();
    assert_eq!(weights(&a), weights(&b));
    assert_ne!(weights(&a), weights(&c));
}

/// The notebook's defaults train exactly the weights they trained before augmentation and
/// label smoothing existed: the golden digest beside `tests/fixtures/golden/default-weights.sh`,
/// which made it with the earlier binary.
#[test]
fn the_defaults_train_the_same_weights_as_before() {
    use sha2::Digest;
    let job = Job::small(&[]);
    job.run().ok();
    let weights = std::fs::read(job.path("model/model.safetensors")).unwrap();
    let got = format!("{:x}", sha2::Sha256::digest(&weights));
    let golden = fixture("../golden/default-weights.sha256");
    let want = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(got, want.trim(), "the defaults' weights changed (golden: {})", golden.display());
}

/// Augmentation and label smoothing change what is learnt, and each choice is seeded.
#[test]
fn augmentation_and_label_smoothing_train_seeded_models() {
    let extras = [("augment_shift", "2"), ("augment_flip", "true"), ("label_smoothing", "0.1")];
    let hp = [&[("epochs", "2")][..], &extras].concat();
    let (a, b, plain) = (Job::small(&hp), Job::small(&hp), Job::small(&[("epochs", "2")]));
    for j in [&a, &b, &plain] {
        let run = j.run().ok();
        assert!(run.stdout().contains("metrics: test_loss="), "{}", run.stdout());
    }
    let weights = |j: &Job| std::fs::read(j.path("model/model.safetensors")).unwrap();
    assert_eq!(weights(&a), weights(&b));
    assert_ne!(weights(&a), weights(&plain));
    // The card records what the model was trained with.
    let card = a.json("model/model.json");
    assert_eq!(card["hyperparameters"]["augment_shift"], 2, "{card}");
    assert_eq!(card["hyperparameters"]["label_smoothing"], 0.1, "{card}");
    let acc = a.json("model/metrics.json")["test"]["accuracy"].as_f64().unwrap();
    assert!(acc > 0.6, "test accuracy {acc}");
}

#[test]
fn metric_regexes_capture_the_numbers_in_metrics_json() {
    let job = Job::small(&[("epochs", "2"), ("validation_split", "0.2")]);
    let run = job.run().ok();
    let out = run.stdout();
    let metrics = job.json("model/metrics.json");
    let last = &metrics["epochs"][1];
    let expected = [
        ("train:loss", last["train_loss"].as_f64()),
        ("train:accuracy", last["train_accuracy"].as_f64()),
        ("validation:loss", last["validation_loss"].as_f64()),
        ("validation:accuracy", last["validation_accuracy"].as_f64()),
        ("test:loss", metrics["test"]["loss"].as_f64()),
        ("test:accuracy", metrics["test"]["accuracy"].as_f64()),
        ("epoch", Some(2.0)),
        ("learning_rate", last["learning_rate"].as_f64()),
        ("epoch:seconds", last["seconds"].as_f64()),
        ("train:samples_per_second", last["samples_per_second"].as_f64()),
    ];
    let defs: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/infra/metric-definitions.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(defs.len(), expected.len(), "every definition is checked");
    for (name, want) in expected {
        let def = defs.iter().find(|d| d["Name"] == name).unwrap_or_else(|| panic!("no {name}"));
        let re = regex::Regex::new(def["Regex"].as_str().unwrap()).unwrap();
        // SageMaker keeps the last value a regex captured; so do we.
        let got: Vec<f64> = out
            .lines()
            .filter_map(|l| re.captures(l))
            .map(|c| c[1].parse::<f64>().unwrap())
            .collect();
        let got = *got.last().unwrap_or_else(|| panic!("{name} captured nothing in:\n{out}"));
        let want = want.unwrap();
        let tol = 1e-6 * want.abs().max(1.0);
        assert!((got - want).abs() <= tol, "{name}: captured {got}, metrics.json has {want}");
    }
}

#[test]
fn validation_channel_is_scored_every_epoch() {
    let job = Job::new();
    job.channels(&["train", "validation"]).data("train", "train").data("validation", "test");
    job.hyperparameters(&[("epochs", "2")]);
    let run = job.run().ok();
    assert_eq!(run.stdout().matches("validation_accuracy=").count(), 2);
    let metrics = job.json("model/metrics.json");
    assert!(metrics["test"].is_null());
    assert!(metrics["epochs"][1]["validation_accuracy"].as_f64().unwrap() > 0.5);
}

#[test]
fn json_encoded_hyperparameters_and_platform_keys_work_end_to_end() {
    let job = Job::small(&[
        ("epochs", "\"1\""),
        ("optimizer", "\"adamw\""),
        ("hidden_units", "[64, 32]"),
        ("lr_schedule", "cosine"),
        ("sagemaker_program", "\"train.py\""),
        ("_tuning_objective_metric", "\"validation:accuracy\""),
    ]);
    job.run().ok();
    let card = job.json("model/model.json");
    assert_eq!(card["architecture"]["layer_sizes"], serde_json::json!([784, 64, 32, 10]));
    assert_eq!(card["hyperparameters"]["optimizer"], "adamw");
}

/// SageMaker's DNS can lag at start: a host waits for the master's name, logging, and names it
/// when it never resolves.
#[test]
fn a_master_whose_name_never_resolves_is_named() {
    let job = Job::small(&[("epochs", "1"), ("distributed_timeout", "2")]);
    job.write(
        "input/config/resourceconfig.json",
        r#"{"current_host":"algo-2","hosts":["algo-1.invalid","algo-2"],"network_interface_name":"eth0"}"#,
    );
    let run = job.run();
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    assert!(job.model_files().is_empty());
    assert!(run.stderr().contains("master does not resolve yet"), "{}", run.stderr());
    let failure = job.failure().unwrap();
    assert!(failure.contains("master host algo-1.invalid (rank 0"), "{failure}");
    assert!(failure.contains("did not resolve within the distributed_timeout"), "{failure}");
}

#[test]
fn sigterm_stops_within_seconds_with_a_reason() {
    let job = Job::small(&[("epochs", "100000")]);
    let mut child = job
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the first epoch so the signal lands mid-training.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(line.starts_with("metrics: epoch=1"), "{line}");
    let sent = std::time::Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(sent.elapsed().as_secs_f64() < 10.0, "took {:?}", sent.elapsed());
    assert_eq!(status.code(), Some(143));
    let failure = job.failure().expect("failure file");
    assert!(failure.starts_with("Stopped: stopped by SIGTERM"), "{failure}");
    assert!(job.model_files().is_empty());
}

/// The notebook's defaults on the real Fashion-MNIST (60,000 / 10,000), with no channels
/// configured: the job the README promises.
#[test]
fn defaults_on_real_fashion_mnist_reach_85_percent() {
    let job = Job::new();
    job.hyperparameters(&[]);
    let run = job.run().ok();
    assert!(run.stderr().contains("training on the installed Fashion-MNIST"));
    let metrics = job.json("model/metrics.json");
    assert_eq!(metrics["epochs"].as_array().unwrap().len(), 5);
    let acc = metrics["test"]["accuracy"].as_f64().unwrap();
    assert!(acc >= 0.85, "test accuracy {acc}");
    let card = job.json("model/model.json");
    assert_eq!(card["data"]["train"]["samples"], 60000);
    assert_eq!(card["data"]["test"]["samples"], 10000);
}
