//! The user's own data: CSV, Parquet and NumPy channels chosen by their `ContentType`, through
//! the real binary, on real UCI tables nobody here wrote (`tests/fixtures/tables`, made from
//! scikit-learn's wheel by `make_tables.py`) and on the real Fashion-MNIST fixture rewritten in
//! those formats.

use std::io::Write;
use std::path::Path;

use serde_json::Value;
use smtrain::data::{load_channel, Format, Values};

use crate::predict::predict_cmd;
use crate::serve::Server;
use crate::util::{fails_with, fixture, table_fixture, Job};

/// Enough epochs for the small tables to converge; quick at these sizes.
const HP: &[(&str, &str)] = &[("epochs", "30"), ("batch_size", "16"), ("seed", "3")];

/// A job whose channels are `(name, ContentType, fixture folder)`.
fn table_job(specs: &[(&str, &str, &str)], hp: &[(&str, &str)]) -> Job {
    let job = Job::new();
    let types: Vec<(&str, &str)> = specs.iter().map(|(n, t, _)| (*n, *t)).collect();
    job.typed_channels(&types).hyperparameters(hp);
    for (name, _, from) in specs {
        job.data_from(name, &table_fixture(from));
    }
    job
}

fn test_accuracy(job: &Job) -> f64 {
    job.json("model/metrics.json")["test"]["accuracy"].as_f64().unwrap()
}

#[test]
fn a_csv_table_trains_and_model_json_describes_its_features() {
    let job =
        table_job(&[("train", "text/csv", "wine-csv/train"), ("test", "csv", "wine-csv/test")], HP);
    let run = job.run().ok();
    assert!(run.stdout().contains("metrics: epoch=30 "), "{}", run.stdout());
    let accuracy = test_accuracy(&job);
    assert!(accuracy >= 0.9, "wine test accuracy {accuracy}");
    let card = job.json("model/model.json");
    assert_eq!(card["input"]["kind"], "table");
    assert_eq!(card["input"]["shape"], serde_json::json!([13]));
    assert_eq!(card["input"]["features"].as_array().unwrap().len(), 13);
    assert_eq!(card["input"]["standardize"]["mean"].as_array().unwrap().len(), 13);
    assert_eq!(card["architecture"]["layer_sizes"], serde_json::json!([13, 128, 3]));
    assert_eq!(card["class_names"], serde_json::json!(["0", "1", "2"]));
    assert_eq!(card["hyperparameters"]["num_classes"], 3);
    let data = job.path("output/data");
    for f in ["evaluation.json", "confusion.png", "training.png"] {
        assert!(data.join(f).exists(), "{f} missing");
    }
    for f in ["samples.png", "predictions.png"] {
        assert!(!data.join(f).exists(), "{f} drawn for a table");
    }
    let eval = job.json("output/data/evaluation.json");
    assert_eq!(eval["accuracy"].as_f64().unwrap(), accuracy);
    assert_eq!(eval["confusion_matrix"].as_array().unwrap().len(), 3);
}

#[test]
fn channels_may_each_use_another_format_and_read_alike() {
    // The validation channel (Parquet) and the test channel (.npz) hold the same rows: scored
    // by the same final model, they must agree exactly, whatever format carried them.
    let job = table_job(
        &[
            ("train", "text/csv", "wine-csv/train"),
            ("validation", "application/x-parquet", "wine-parquet/test"),
            ("test", "application/x-npz", "wine-npz/test"),
        ],
        HP,
    );
    job.run().ok();
    let m = job.json("model/metrics.json");
    let last = m["epochs"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["validation_accuracy"], m["test"]["accuracy"], "{m}");
    assert_eq!(last["validation_loss"], m["test"]["loss"], "{m}");
    assert!(test_accuracy(&job) >= 0.9);
}

#[test]
fn a_headed_csv_in_several_files_names_the_features() {
    let job = table_job(
        &[
            ("train", "text/csv; header=present", "cancer-csv/train"),
            ("test", "text/csv;header=present", "cancer-csv/test"),
        ],
        &[("epochs", "10"), ("seed", "3")],
    );
    job.run().ok();
    let card = job.json("model/model.json");
    let names = card["input"]["features"].as_array().unwrap();
    assert_eq!((names.len(), names[0].as_str()), (30, Some("mean_radius")));
    assert_eq!(card["data"]["train"]["samples"], 426, "both files, as one table");
    assert!(test_accuracy(&job) >= 0.9);
}

#[test]
fn compressed_npz_digits_train_ten_numbered_classes() {
    let job = table_job(
        &[("train", "npz", "digits-npz/train"), ("test", "npz", "digits-npz/test")],
        &[("epochs", "20"), ("seed", "3")],
    );
    job.run().ok();
    let card = job.json("model/model.json");
    assert_eq!(card["class_names"][9], "9", "not the Fashion-MNIST names");
    assert!(test_accuracy(&job) >= 0.9, "{}", test_accuracy(&job));
}

/// The Fashion-MNIST fixture's images and labels.
fn fashion(channel: &str) -> (Vec<u8>, Vec<u8>) {
    let ds = load_channel(channel, &fixture(channel), Format::Idx).unwrap();
    let (pixels, _) = ds.images().unwrap();
    (pixels.to_vec(), ds.labels)
}

/// `numpy.save`'s bytes for an array (format 1.0).
pub(crate) fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape =
        if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (11 + dict.len()) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(data);
    out
}

/// An `.npz` archive as `numpy.savez` writes it (stored entries).
fn npz(path: &Path, arrays: &[(&str, Vec<u8>)]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in arrays {
        zip.start_file(format!("{name}.npy"), opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn fashion_mnist_as_uint8_npz_trains_the_idx_weights_bit_for_bit() {
    let hp = [("epochs", "2"), ("seed", "5")];
    let idx = Job::small(&hp);
    idx.run().ok();
    let job = Job::new();
    job.typed_channels(&[("train", "application/x-npz"), ("test", "application/x-npz")])
        .hyperparameters(&hp);
    for channel in ["train", "test"] {
        let (pixels, labels) = fashion(channel);
        let n = labels.len();
        npz(
            &job.path(&format!("input/data/{channel}/fashion.npz")),
            &[("x", npy("|u1", &[n, 28, 28], &pixels)), ("y", npy("|u1", &[n], &labels))],
        );
    }
    job.run().ok();
    let weights = |j: &Job| std::fs::read(j.path("model/model.safetensors")).unwrap();
    assert!(weights(&job) == weights(&idx), "npz images must train exactly as IDX");
    let card = job.json("model/model.json");
    assert_eq!(card["input"]["kind"], "image");
    assert_eq!(card["class_names"][9], "9", "numbered: only IDX data gets the Fashion names");
    assert!(job.path("output/data/samples.png").exists());
}

#[test]
fn fashion_mnist_as_csv_reaches_the_idx_accuracy() {
    let hp = [("epochs", "3"), ("seed", "5")];
    let idx = Job::small(&hp);
    idx.run().ok();
    let job = Job::new();
    job.typed_channels(&[("train", "text/csv"), ("test", "text/csv")]).hyperparameters(&hp);
    for channel in ["train", "test"] {
        let (pixels, labels) = fashion(channel);
        let mut text = String::new();
        for (row, label) in pixels.chunks_exact(784).zip(&labels) {
            text.push_str(&label.to_string());
            for p in row {
                text.push(',');
                text.push_str(&p.to_string());
            }
            text.push('\n');
        }
        job.write(&format!("input/data/{channel}/fashion.csv"), text);
    }
    job.run().ok();
    let (a, b) = (test_accuracy(&job), test_accuracy(&idx));
    // 200 test images: one image is 0.005. Standardized pixels train a little differently
    // from pixels ÷ 255: as well, within the spread of seeds, or better.
    assert!(a >= b - 0.03, "CSV {a} against IDX {b}");
}

/// The wine test set's features as a label-less CSV, and its labels.
fn wine_test_rows(dir: &Path) -> (std::path::PathBuf, Vec<u64>) {
    let text = std::fs::read_to_string(table_fixture("wine-csv/test/wine.csv")).unwrap();
    let mut rows = String::new();
    let mut labels = Vec::new();
    for line in text.lines() {
        let (label, features) = line.split_once(',').unwrap();
        labels.push(label.parse().unwrap());
        rows.push_str(features);
        rows.push('\n');
    }
    let path = dir.join("rows.csv");
    std::fs::write(&path, rows).unwrap();
    (path, labels)
}

#[test]
fn predict_and_serve_answer_a_table_model_as_the_job_scored_it() {
    let job = table_job(
        &[("train", "text/csv", "wine-csv/train"), ("test", "text/csv", "wine-csv/test")],
        HP,
    );
    job.run().ok();
    let (rows, labels) = wine_test_rows(job.base());
    let out = predict_cmd(&job.path("model")).arg(&rows).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), labels.len());
    assert_eq!(lines[2]["source"], format!("{}:3", rows.display()));
    let classes: Vec<u64> = lines.iter().map(|l| l["class"].as_u64().unwrap()).collect();
    let right = classes.iter().zip(&labels).filter(|(p, l)| p == l).count();
    assert_eq!(right as f64 / labels.len() as f64, test_accuracy(&job), "the job's accuracy");

    let help = std::process::Command::new(crate::util::BIN)
        .args(["serve", "--help", "--model"])
        .arg(job.path("model"))
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("takes table rows of 13 features, without the label"), "{help}");
    assert!(help.contains("answers one of 3 classes: 0, 1, 2"), "{help}");

    let server = Server::start(&job.path("model"), &[]);
    let body = std::fs::read(&rows).unwrap();
    let (status, answer) = server.post("text/csv", "text/csv", &body);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let answer_text = String::from_utf8(answer).unwrap();
    let served: Vec<u64> =
        answer_text.lines().map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    assert_eq!(served, classes, "serve and predict agree");
    // The same batch gives the same bits.
    let served_p: Vec<f32> = first_line_probabilities(&answer_text);
    let predicted_p: Vec<f32> = lines[0]["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(served_p, predicted_p);
    let first: Vec<f64> = std::str::from_utf8(&body)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let json = serde_json::json!({"instances": [{"features": first}]});
    let (status, answer) = server.post("application/json", "", json.to_string().as_bytes());
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["predictions"][0]["class"].as_u64(), Some(classes[0]));
    let (status, answer) = server.post("text/csv", "", b"1,2,3\n");
    assert_eq!(status, 400);
    let why = String::from_utf8_lossy(&answer);
    assert!(why.contains("line 1 has 3 values; the model takes 13 features"), "{why}");
}

fn first_line_probabilities(csv: &str) -> Vec<f32> {
    csv.lines().next().unwrap().split(',').skip(1).map(|v| v.parse().unwrap()).collect()
}

#[test]
fn a_table_job_stopped_after_an_epoch_resumes_bit_identically() {
    let hp = [("epochs", "3"), ("hidden_units", "512,512"), ("batch_size", "4"), ("seed", "9")];
    let specs = [("train", "text/csv;header=present", "cancer-csv/train")];
    let reference = table_job(&specs, &hp);
    reference.run().ok();
    let job = table_job(&specs, &hp);
    crate::checkpoints::resumes_to_the_weights_of(&job, &reference);
    assert_eq!(job.json("model/model.json")["input"], reference.json("model/model.json")["input"]);
}

#[test]
fn bad_tables_are_refused_naming_file_line_column_and_value() {
    let csv = |text: &str| {
        let job = Job::new();
        job.typed_channels(&[("train", "text/csv")]).hyperparameters(&[]);
        job.write("input/data/train/data.csv", text);
        job
    };
    let cases: &[(&str, &[&str])] = &[
        ("1,2,3\n0,4\n", &["data.csv:2", "has 2 columns; expected 3"]),
        ("1,2,3\n0,4,x7\n", &["data.csv:2", "column 3 is \"x7\", not a number"]),
        ("1,2,3\n0,,5\n", &["data.csv:2", "column 2 is empty"]),
        ("1,2,NaN\n", &["data.csv:1", "column 3 is \"NaN\"", "finite"]),
        ("0.5,2,3\n", &["data.csv:1", "label 0.5 is not a whole number"]),
        ("-1,2,3\n", &["data.csv:1", "label -1 is negative"]),
        ("label,a,b\n1,2,3\n", &["data.csv:1", "text/csv;header=present"]),
    ];
    for (text, needles) in cases
        .iter()
        .chain([("nan,2,3\n", &["column 1 (the label) is \"nan\"", "finite"][..])].iter())
    {
        fails_with(&csv(text), needles);
    }
    let job = csv("0,1,2\n5,1,2\n");
    job.hyperparameters(&[("num_classes", "3")]);
    fails_with(&job, &["label 5 at sample 1 is not below num_classes 3"]);
}

#[test]
fn bad_channels_and_content_types_are_refused_with_a_reason() {
    let job = table_job(&[("train", "text/csv;label_size=2", "wine-csv/train")], &[]);
    fails_with(&job, &["label_size=2 is not supported"]);
    let job = table_job(&[("train", "application/x-recordio-protobuf", "wine-csv/train")], &[]);
    fails_with(&job, &["is not a format this trainer reads", "text/csv (csv)"]);
    let job = table_job(&[("train", "text/csv", "wine-csv/train")], &[]);
    job.data_from("train", &table_fixture("wine-parquet/train"));
    fails_with(&job, &["wine.parquet: is a Parquet file", "ContentType says CSV"]);
    let job = table_job(&[("train", "parquet", "bad/nulls")], &[]);
    fails_with(&job, &["nulls.parquet: column \"a\"", "null value"]);
    let job = table_job(&[("train", "parquet", "bad/text")], &[]);
    fails_with(&job, &["text.parquet: column \"colour\" holds text"]);
    let job = table_job(&[("train", "text/csv", "wine-csv/train")], &[]);
    job.typed_channels(&[("train", "text/csv"), ("test", "text/csv")]);
    std::fs::create_dir_all(job.path("input/data/test")).unwrap();
    fails_with(&job, &["channel \"test\"", "holds no files to read as CSV"]);
    let job = table_job(
        &[
            ("train", "text/csv", "wine-csv/train"),
            ("test", "text/csv;header=present", "cancer-csv/test"),
        ],
        &[],
    );
    fails_with(&job, &["channel \"test\" has 30 features but \"train\" has 13 features"]);
    let job = table_job(&[("train", "text/csv", "wine-csv/train")], &[("augment_flip", "true")]);
    fails_with(&job, &["augment_flip", "holds a table (13 features)"]);
    let job = Job::new();
    job.typed_channels(&[("train", "npz")]).hyperparameters(&[]);
    npz(&job.path("input/data/train/only-x.npz"), &[("x", npy("<f4", &[1, 1], &[0; 4]))]);
    fails_with(
        &job,
        &["only-x.npz: has no array \"y\"", "numpy.savez(file, x=features, y=labels)"],
    );
}

#[test]
fn two_hosts_train_a_sharded_table_with_the_statistics_of_all_shards() {
    let one = table_job(
        &[("train", "text/csv;header=present", "cancer-csv/train")],
        &[("epochs", "2"), ("threads", "1")],
    );
    one.run().ok();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let hosts = ["127.0.0.1", "127.0.0.2"];
    let mut ranks = Vec::new();
    for (rank, part) in ["part-0.csv", "part-1.csv"].iter().enumerate() {
        let job = Job::new();
        let spec = serde_json::json!({"train": {"ContentType": "text/csv;header=present",
            "TrainingInputMode": "File", "S3DistributionType": "ShardedByS3Key"}});
        job.write("input/config/inputdataconfig.json", spec.to_string());
        job.hyperparameters(&[("epochs", "2"), ("threads", "1"), ("distributed_port", &port)]);
        let rc = serde_json::json!({"current_host": hosts[rank], "hosts": hosts});
        job.write("input/config/resourceconfig.json", rc.to_string());
        let text = std::fs::read(table_fixture("cancer-csv/train").join(part)).unwrap();
        job.write(&format!("input/data/train/{part}"), text);
        let child = job
            .command()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        ranks.push((job, child));
    }
    for (_, child) in &mut ranks {
        let out = child.wait().unwrap();
        assert!(out.success(), "a rank failed");
    }
    let sharded = ranks[0].0.json("model/model.json");
    let whole = one.json("model/model.json");
    let means = |c: &Value| -> Vec<f64> {
        c["input"]["standardize"]["mean"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    for (a, b) in means(&sharded).iter().zip(means(&whole)) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "mean {a} over shards against {b}");
    }
    assert_eq!(sharded["class_names"], whole["class_names"]);
    assert!(!ranks[1].0.path("model/model.json").exists(), "only the first host writes");
}

#[test]
fn table_values_reach_training_as_written() {
    // The loader's view of a fixture equals what pandas wrote, row for row.
    let ds = load_channel("train", &table_fixture("wine-parquet/train"), Format::Parquet).unwrap();
    let csv =
        load_channel("train", &table_fixture("wine-csv/train"), Format::Csv { header: false })
            .unwrap();
    let npz = load_channel("train", &table_fixture("wine-npz/train"), Format::Npz).unwrap();
    assert_eq!(ds.labels, csv.labels);
    assert_eq!(ds.values, npz.values, "float64 in both, rounded alike");
    let (Values::Floats(a), Values::Floats(b)) = (&ds.values, &csv.values) else {
        panic!("floats")
    };
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{x} against {y}");
    }
}

#[test]
fn fifty_classes_get_their_evaluation_and_confusion_picture() {
    // A table whose class is written in its features: 50 classes, 20 rows each.
    let mut text = String::new();
    for i in 0..1000usize {
        let class = i % 50;
        text.push_str(&format!(
            "{class},{},{},{}\n",
            class as f32 + (i % 7) as f32 * 0.01,
            (class * 3 % 17),
            i % 5
        ));
    }
    let job = Job::new();
    job.typed_channels(&[("train", "text/csv"), ("test", "text/csv")])
        .hyperparameters(&[("epochs", "3"), ("seed", "1")]);
    job.write("input/data/train/t.csv", &text);
    job.write("input/data/test/t.csv", &text);
    job.run().ok();
    let eval = job.json("output/data/evaluation.json");
    let matrix = eval["confusion_matrix"].as_array().unwrap();
    assert_eq!((matrix.len(), matrix[49].as_array().unwrap().len()), (50, 50));
    assert_eq!(job.json("model/model.json")["class_names"][49], "49");
    let png = std::fs::read(job.path("output/data/confusion.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
}
