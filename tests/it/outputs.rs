//! `output/data/` after a job: evaluation.json, model_quality.json and the pictures, checked against the numbers
//! and the data they claim to show.

use smtrain::data::{load_channel, Format};
use smtrain::plots::{self, Grid, Picture};

use crate::predict::{predict_cmd, Lines};
use crate::util::{fixture, Job, OUTPUT_DATA_FILES};

fn output_files(job: &Job) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(job.path("output/data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn png(job: &Job, name: &str) -> Picture {
    let bytes = std::fs::read(job.path(&format!("output/data/{name}"))).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is not a PNG");
    Picture::from_png(&bytes).unwrap()
}

/// Distinct colours: a blank or nearly blank picture has a handful.
fn colours(img: &Picture) -> usize {
    let mut seen: Vec<&[u8]> = img.rgb.chunks(3).collect();
    seen.sort();
    seen.dedup();
    seen.len()
}

fn has_colour(img: &Picture, c: plotters::style::RGBColor) -> bool {
    img.rgb.chunks(3).any(|p| p == [c.0, c.1, c.2])
}

/// Red or blue (anti-aliased) pixels in a rectangle.
fn tints(img: &Picture, (x, y, w, h): (u32, u32, u32, u32)) -> (usize, usize) {
    let (mut red, mut blue) = (0, 0);
    for yy in y..y + h {
        for xx in x..x + w {
            let [r, g, b] = img.get_pixel(xx, yy).map(i32::from);
            red += (r - g > 60 && r - b > 60) as usize;
            blue += (b - r > 60) as usize;
        }
    }
    (red, blue)
}

/// Every image cell of a grid shows its image: a few pixels each, through the binary colour map.
fn assert_grid_shows(
    img: &Picture,
    grid: Grid,
    image_box: (u32, u32, u32),
    images: &[u8],
    n: usize,
) {
    let (ix, iy, size) = image_box;
    for i in 0..n {
        let (cx, cy) = grid.cell(i);
        for (px, py) in [(0, 0), (size / 2, size / 3), (size / 3, size / 2), (size - 1, size - 1)] {
            let want = images[i * 784 + plots::source_pixel(px, py, (size, size), 28, 28)];
            let got = img.get_pixel(cx + ix + px, cy + iy + py);
            assert_eq!(got, [255 - want; 3], "cell {i} pixel ({px},{py})");
        }
    }
}

#[test]
fn a_job_writes_an_evaluation_and_plots_that_agree_with_its_metrics_and_data() {
    let job = Job::small(&[("epochs", "2"), ("seed", "5")]);
    job.run().ok();
    assert_eq!(output_files(&job), OUTPUT_DATA_FILES);
    let metrics = job.json("model/metrics.json");
    let eval = job.json("output/data/evaluation.json");
    let card = job.json("model/model.json");
    assert_eq!(eval["dataset"], "test");
    assert_eq!(eval["samples"], 200);
    // Exactly the reported numbers, not merely close.
    assert_eq!(eval["accuracy"].as_f64(), metrics["test"]["accuracy"].as_f64());
    assert_eq!(eval["loss"].as_f64(), metrics["test"]["loss"].as_f64());
    assert_eq!(eval["class_names"], card["class_names"]);

    // The matrix holds every test image once, its rows the true labels' counts.
    let test = load_channel("test", &fixture("test"), Format::Idx).unwrap();
    let matrix: Vec<Vec<u64>> = serde_json::from_value(eval["confusion_matrix"].clone()).unwrap();
    for (t, row) in matrix.iter().enumerate() {
        let support = test.labels.iter().filter(|&&l| l as usize == t).count() as u64;
        assert_eq!(row.iter().sum::<u64>(), support, "row {t}");
        assert_eq!(eval["per_class"][t]["support"], support);
        assert_eq!(eval["per_class"][t]["correct"], row[t]);
    }
    let trace: u64 = (0..10).map(|c| matrix[c][c]).sum();
    assert_eq!(trace as f64 / 200.0, eval["accuracy"].as_f64().unwrap());
    // The model really is better than chance and worse than perfect: the matrix is not trivial.
    assert!(trace > 60 && trace < 200, "{trace}");
    let f1 = eval["macro_average"]["f1"].as_f64().unwrap();
    assert!(f1 > 0.2 && f1 < 1.0, "{f1}");
    model_quality_is_the_evaluation(&job.json("output/data/model_quality.json"), &eval);

    // predictions.png: the first 15 test images, each caption blue exactly when `predict`
    // classifies the image right.
    let lines = Lines::of(
        predict_cmd(&job.path("model")).arg(fixture("test").join("images-idx3-ubyte.gz")),
    );
    let img = png(&job, "predictions.png");
    assert_eq!(img.dimensions(), plots::PREDICTIONS.size(15));
    assert!(colours(&img) > 200, "{} colours", colours(&img));
    assert_grid_shows(
        &img,
        plots::PREDICTIONS,
        plots::PREDICTIONS_IMAGE,
        test.images().unwrap().0,
        15,
    );
    let mut wrong = 0;
    for i in 0..15 {
        let (cx, cy) = plots::PREDICTIONS.cell(i);
        let caption =
            (cx + 4, cy + plots::PREDICTIONS_CAPTION_Y - 16, plots::PREDICTIONS.cell_w - 8, 22);
        let (red, blue) = tints(&img, caption);
        let right = lines.classes()[i] == test.labels[i] as usize;
        wrong += !right as usize;
        assert!(if right { blue > 20 && red == 0 } else { red > 20 && blue == 0 }, "cell {i}");
    }
    assert!(wrong > 0, "two epochs on 1,000 images get some of the first 15 wrong");

    // confusion.png: each cell's colour is its share of its row in evaluation.json's matrix.
    let img = png(&job, "confusion.png");
    let names: Vec<String> = serde_json::from_value(eval["class_names"].clone()).unwrap();
    let l = plots::confusion_layout(&names);
    assert_eq!(img.dimensions(), (l.width, l.height));
    for (t, row) in matrix.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (p, &count) in row.iter().enumerate() {
            let want = plots::blues(count as f64 / total as f64);
            let got = img.get_pixel(l.x + p as u32 * l.cell + 2, l.y + t as u32 * l.cell + 2);
            assert_eq!(got, [want.0, want.1, want.2], "cell ({t},{p}) for {count} of {total}");
        }
    }

    // samples.png: the first 25 training images.
    let train = load_channel("train", &fixture("train"), Format::Idx).unwrap();
    let img = png(&job, "samples.png");
    assert_eq!(img.dimensions(), plots::SAMPLES.size(25));
    assert_grid_shows(&img, plots::SAMPLES, plots::SAMPLES_IMAGE, train.images().unwrap().0, 25);

    // training.png: the training curves, no validation curve (there is no validation data).
    let img = png(&job, "training.png");
    assert_eq!(img.dimensions(), plots::TRAINING_SIZE);
    assert!(has_colour(&img, plots::BLUE));
    assert!(!has_colour(&img, plots::ORANGE));
    assert!(colours(&img) > 50);
}

/// `model_quality.json` is the test set's evaluation in Model Monitor's shape: the same numbers,
/// the same matrix keyed by class name, and bootstrap spreads of the binomial size.
fn model_quality_is_the_evaluation(quality: &serde_json::Value, eval: &serde_json::Value) {
    let m = &quality["multiclass_classification_metrics"];
    let n = eval["samples"].as_f64().unwrap();
    assert_eq!(quality["dataset"]["item_count"], eval["samples"]);
    for (metric, want) in [
        ("accuracy", &eval["accuracy"]),
        ("weighted_precision", &eval["weighted_average"]["precision"]),
        ("weighted_recall", &eval["weighted_average"]["recall"]),
        ("weighted_f1", &eval["weighted_average"]["f1"]),
    ] {
        let got = m[metric]["value"].as_f64().unwrap();
        assert!((got - want.as_f64().unwrap()).abs() < 1e-12, "{metric}: {got} vs {want}");
        let sd = m[metric]["standard_deviation"].as_f64().unwrap();
        // Accuracy's standard error is at most 1/(2 sqrt n) (with room for what 100 resamples
        // can tell); the weighted means spread somewhat more. A set neither perfect nor
        // hopeless has some spread.
        let most = if metric == "accuracy" { 0.75 } else { 2.0 };
        assert!(sd > 0.0 && sd < most / n.sqrt(), "{metric}: {sd}");
    }
    let names: Vec<&str> =
        eval["class_names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let matrix = m["confusion_matrix"].as_object().unwrap();
    assert_eq!(matrix.len(), names.len());
    for (t, actual) in names.iter().enumerate() {
        for (p, predicted) in names.iter().enumerate() {
            assert_eq!(
                matrix[*actual][*predicted], eval["confusion_matrix"][t][p],
                "{actual}/{predicted}"
            );
        }
    }
}

#[test]
fn without_a_test_channel_the_validation_data_is_evaluated() {
    let job = Job::new();
    job.channels(&["train"]).data("train", "train");
    job.hyperparameters(&[("epochs", "2"), ("validation_split", "0.2")]);
    job.run().ok();
    let eval = job.json("output/data/evaluation.json");
    let metrics = job.json("model/metrics.json");
    assert_eq!(eval["dataset"], "validation");
    assert_eq!(eval["samples"], 200);
    // Without early stopping the final model is the last epoch's, scored on the same data.
    let last = &metrics["epochs"][1];
    assert_eq!(eval["accuracy"].as_f64(), last["validation_accuracy"].as_f64());
    assert_eq!(eval["loss"].as_f64(), last["validation_loss"].as_f64());
    let img = png(&job, "training.png");
    assert!(has_colour(&img, plots::ORANGE), "validation curve");
    let title_row = png(&job, "predictions.png");
    assert!(colours(&title_row) > 200);
    // The validation data chose the model: its scores are no model quality to register.
    assert_eq!(output_files(&job).len(), 5);
    assert!(!output_files(&job).contains(&"model_quality.json".to_string()));
}

#[test]
fn without_test_or_validation_data_only_the_training_pictures_are_written() {
    let job = Job::new();
    job.channels(&["train"]).data("train", "train");
    job.hyperparameters(&[("epochs", "1")]);
    // Left by an earlier run in the same folder: must not pass for this run's.
    job.write("output/data/evaluation.json", "{}");
    job.write("output/data/model_quality.json", "{}");
    job.write("output/data/confusion.png", "old");
    let run = job.run().ok();
    assert_eq!(output_files(&job), ["samples.png", "training.png"]);
    assert!(run.stderr().contains("no test or validation data"), "{}", run.stderr());
    assert!(colours(&png(&job, "training.png")) > 50);
}
