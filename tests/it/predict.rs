//! `train predict`: a saved model classifies IDX, PNG and JPEG images; bad files are named one
//! by one while the rest are classified.

use std::path::{Path, PathBuf};
use std::process::Command;

use smtrain::data::{load_channel, Format};

use crate::util::{fixture, Job, Run, BIN};

/// `train predict --model MODEL`, single-threaded like the other tests.
pub fn predict_cmd(model: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("predict").arg("--model").arg(model).env("OMP_NUM_THREADS", "1");
    cmd
}

/// The JSON lines a run printed.
pub struct Lines(pub Vec<serde_json::Value>, pub Run);

impl Lines {
    /// Runs `cmd`, which must succeed, and parses its stdout.
    pub fn of(cmd: &mut Command) -> Self {
        let run = Run(cmd.output().unwrap()).ok();
        Self::parse(run)
    }

    pub fn parse(run: Run) -> Self {
        let lines = run
            .stdout()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        Self(lines, run)
    }

    pub fn classes(&self) -> Vec<usize> {
        self.0.iter().map(|l| l["class"].as_u64().unwrap() as usize).collect()
    }
}

/// One trained model shared by the tests of this file that only read it.
fn trained() -> &'static Job {
    static JOB: std::sync::OnceLock<Job> = std::sync::OnceLock::new();
    JOB.get_or_init(|| {
        let job = Job::small(&[("epochs", "2"), ("seed", "9")]);
        job.run().ok();
        job
    })
}

fn test_images() -> PathBuf {
    fixture("test").join("images-idx3-ubyte.gz")
}

/// Writes an 8-bit PNG of `color` (`pixels` interleaved).
fn write_png(path: &Path, pixels: &[u8], w: u32, h: u32, color: png::ColorType) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut enc = png::Encoder::new(file, w, h);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(pixels).unwrap();
    writer.finish().unwrap();
}

pub(crate) fn save_png(path: &Path, pixels: &[u8], w: u32, h: u32) {
    write_png(path, pixels, w, h, png::ColorType::Grayscale);
}

pub(crate) fn jpeg(pixels: &[u8], w: u16, h: u16, color: jpeg_encoder::ColorType) -> Vec<u8> {
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 95).encode(pixels, w, h, color).unwrap();
    out
}

pub(crate) fn gray_jpeg(pixels: &[u8]) -> Vec<u8> {
    jpeg(pixels, 28, 28, jpeg_encoder::ColorType::Luma)
}

#[test]
fn predict_on_the_test_set_reproduces_the_reported_test_accuracy_exactly() {
    let job = trained();
    let metrics = job.json("model/metrics.json");
    let reported = metrics["test"]["accuracy"].as_f64().unwrap();
    let lines = Lines::of(predict_cmd(&job.path("model")).arg(test_images()));
    let test = load_channel("test", &fixture("test"), Format::Idx).unwrap();
    assert_eq!(lines.0.len(), 200);
    let right = lines.classes().iter().zip(&test.labels).filter(|(&p, &l)| p == l as usize).count();
    assert_eq!(right as f64 / 200.0, reported);
    assert!(right > 60 && right < 200, "{right}");
    // The whole probability vectors are the model's: their cross-entropy is the reported loss.
    let loss = lines
        .0
        .iter()
        .zip(&test.labels)
        .map(|(l, &y)| -l["probabilities"][y as usize].as_f64().unwrap().ln())
        .sum::<f64>()
        / 200.0;
    let reported_loss = metrics["test"]["loss"].as_f64().unwrap();
    assert!((loss - reported_loss).abs() < 1e-5, "{loss} vs {reported_loss}");

    let names = job.json("model/model.json")["class_names"].clone();
    for (i, l) in lines.0.iter().enumerate() {
        assert_eq!(l["source"], format!("{}#{i}", test_images().display()));
        let class = l["class"].as_u64().unwrap() as usize;
        assert_eq!(l["class_name"], names[class]);
        let p: Vec<f64> = serde_json::from_value(l["probabilities"].clone()).unwrap();
        assert_eq!(p.len(), 10);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-4);
        // top_k: 3 by default, best first, the first the predicted class.
        let top = l["top_k"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["class"], class);
        assert_eq!(top[0]["class_name"], names[class]);
        let tp: Vec<f64> = top.iter().map(|t| t["probability"].as_f64().unwrap()).collect();
        assert!(tp[0] >= tp[1] && tp[1] >= tp[2], "{tp:?}");
        assert_eq!(tp[1], p[top[1]["class"].as_u64().unwrap() as usize]);
        assert_eq!(tp[0], p.iter().cloned().fold(f64::MIN, f64::max));
    }
    assert!(lines.1.stderr().contains("classified 200 images from 1 file"), "{}", lines.1.stderr());
}

#[test]
fn a_model_tar_gz_and_an_output_file_give_the_same_predictions() {
    let job = trained();
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("model.tar.gz");
    smtrain::s3::upload::pack_dir(&job.path("model"), &tarball).unwrap();
    let from_dir = Lines::of(predict_cmd(&job.path("model")).arg(test_images()));
    let out = dir.path().join("predictions.jsonl");
    let run = Run(predict_cmd(&tarball)
        .args(["--top-k", "10", "-o"])
        .arg(&out)
        .arg(test_images())
        .output()
        .unwrap())
    .ok();
    assert_eq!(run.stdout(), "", "lines go to the file");
    let text = std::fs::read_to_string(&out).unwrap();
    let from_tar: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(from_tar.len(), 200);
    for (a, b) in from_dir.0.iter().zip(&from_tar) {
        assert_eq!(a["probabilities"], b["probabilities"]);
        assert_eq!(a["class"], b["class"]);
        assert_eq!(b["top_k"].as_array().unwrap().len(), 10);
    }
    // The archive is unpacked into a temporary folder that is removed afterwards.
    let tmp = tempfile::tempdir().unwrap();
    let run =
        Run(predict_cmd(&tarball).env("TMPDIR", tmp.path()).arg(test_images()).output().unwrap())
            .ok();
    assert_eq!(run.stdout().lines().count(), 200);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "temporary files left behind");
}

#[test]
fn png_and_jpeg_files_are_classified_like_the_same_idx_images() {
    let job = trained();
    let test = load_channel("test", &fixture("test"), Format::Idx).unwrap();
    let idx = Lines::of(predict_cmd(&job.path("model")).arg(test_images()));
    let dir = tempfile::tempdir().unwrap();
    let mut args = Vec::new();
    for i in 0..4 {
        let p = dir.path().join(format!("img{i}.png"));
        save_png(&p, &test.images().unwrap().0[i * 784..(i + 1) * 784], 28, 28);
        args.push(p);
    }
    let jpg = dir.path().join("photo.jpeg");
    std::fs::write(&jpg, gray_jpeg(&test.images().unwrap().0[..784])).unwrap();
    args.push(jpg.clone());
    let lines = Lines::of(predict_cmd(&job.path("model")).args(&args));
    assert_eq!(lines.0.len(), 5);
    for i in 0..4 {
        assert_eq!(lines.0[i]["source"], args[i].display().to_string());
        assert_eq!(lines.0[i]["class"], idx.0[i]["class"], "image {i}");
        let (a, b): (Vec<f64>, Vec<f64>) = (
            serde_json::from_value(lines.0[i]["probabilities"].clone()).unwrap(),
            serde_json::from_value(idx.0[i]["probabilities"].clone()).unwrap(),
        );
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "image {i}: {a:?} vs {b:?}");
        }
    }
    // A lossy JPEG of image 0 lands close to it.
    assert_eq!(lines.0[4]["source"], jpg.display().to_string());
    assert_eq!(lines.0[4]["class"], idx.0[0]["class"]);

    // --invert: a dark-on-light picture of image 0 reads as image 0.
    let inverted: Vec<u8> = test.images().unwrap().0[..784].iter().map(|&v| 255 - v).collect();
    let p = dir.path().join("inverted.png");
    save_png(&p, &inverted, 28, 28);
    let plain = Lines::of(predict_cmd(&job.path("model")).arg(&p));
    let fixed = Lines::of(predict_cmd(&job.path("model")).arg("--invert").arg(&p));
    assert_eq!(fixed.0[0]["probabilities"], lines.0[0]["probabilities"]);
    assert_ne!(plain.0[0]["probabilities"], lines.0[0]["probabilities"]);
}

/// A 1×1 grey PNG whose header claims `w × h` pixels (its CRC fixed), as a decompression bomb
/// claims its size.
pub(crate) fn claims_size(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, 1, 1);
    enc.set_color(png::ColorType::Grayscale);
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(&[0]).unwrap();
    writer.finish().unwrap();
    out[16..20].copy_from_slice(&w.to_be_bytes());
    out[20..24].copy_from_slice(&h.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&out[12..29]);
    out[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    out
}

#[test]
fn each_bad_image_gets_its_own_error_and_the_rest_are_classified() {
    let job = trained();
    let test = load_channel("test", &fixture("test"), Format::Idx).unwrap();
    let d = tempfile::tempdir().unwrap();
    let p = |name: &str| d.path().join(name);
    save_png(&p("good.png"), &test.images().unwrap().0[..784], 28, 28);
    std::fs::write(p("good.jpg"), gray_jpeg(&test.images().unwrap().0[784..2 * 784])).unwrap();
    save_png(&p("big.png"), &[0u8; 32 * 32], 32, 32);
    write_png(&p("rgb.png"), &[7u8; 28 * 28 * 3], 28, 28, png::ColorType::Rgb);
    write_png(&p("alpha.png"), &[7u8; 28 * 28 * 2], 28, 28, png::ColorType::GrayscaleAlpha);
    let colour = jpeg(&[90u8; 28 * 28 * 3], 28, 28, jpeg_encoder::ColorType::Rgb);
    std::fs::write(p("colour.jpg"), colour).unwrap();
    std::fs::write(p("notes.png"), "these are notes, not a picture\n").unwrap();
    let whole = gray_jpeg(&test.images().unwrap().0[..784]);
    // Cut inside the image data, as an interrupted download leaves it.
    std::fs::write(p("cut.jpg"), &whole[..whole.len() - 40]).unwrap();
    std::fs::write(p("empty.png"), "").unwrap();
    let cmyk = jpeg(&[90u8; 28 * 28 * 4], 28, 28, jpeg_encoder::ColorType::Cmyk);
    std::fs::write(p("cmyk.jpg"), cmyk).unwrap();
    std::fs::write(p("bomb.png"), claims_size(100_000, 100_000)).unwrap();
    let labels = fixture("test").join("labels-idx1-ubyte.gz");
    smtrain::data::write_idx(&p("small.idx"), &[3, 10, 10], &[0u8; 300], false).unwrap();
    let args: Vec<PathBuf> = vec![
        p("big.png"),
        p("good.png"),
        p("rgb.png"),
        p("alpha.png"),
        p("colour.jpg"),
        p("notes.png"),
        p("cut.jpg"),
        p("missing.png"),
        p("empty.png"),
        labels.clone(),
        p("small.idx"),
        d.path().to_path_buf(),
        p("cmyk.jpg"),
        p("bomb.png"),
        p("good.jpg"),
    ];
    let run = Run(predict_cmd(&job.path("model")).args(&args).output().unwrap());
    assert_eq!(run.code(), Some(1), "some files failed: {}", run.stderr());
    let lines = Lines::parse(run);
    let sources: Vec<&str> = lines.0.iter().map(|l| l["source"].as_str().unwrap()).collect();
    // Pictures of another size or colour are converted to the model's input, as in training.
    let good = ["big.png", "good.png", "rgb.png", "alpha.png", "colour.jpg", "good.jpg"];
    assert_eq!(sources, good.map(|f| p(f).display().to_string()));
    let stderr = lines.1.stderr();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    let expected = [
        (p("notes.png"), "is not a PNG, JPEG or IDX image file (it starts with bytes 74 68 65 73)"),
        (p("cut.jpg"), "is a truncated JPEG image"),
        (p("missing.png"), "cannot be read: No such file or directory"),
        (p("empty.png"), "is empty, not a PNG, JPEG or IDX image file"),
        (labels, "is an IDX file of 200 labels, not images"),
        (p("small.idx"), "holds 3 images of 10x10 pixels; the model expects 28x28"),
        (d.path().to_path_buf(), "is a folder, not an image file"),
        (p("cmyk.jpg"), "is a CMYK JPEG"),
        (p("bomb.png"), "is 100000x100000 pixels (height x width), over the limit of 67108864"),
    ];
    assert_eq!(errors.len(), expected.len(), "one line per bad file:\n{stderr}");
    for ((path, why), line) in expected.iter().zip(&errors) {
        let want = format!("error: {}: {why}", path.display());
        assert!(line.starts_with(&want), "got:  {line}\nwant: {want}");
    }
    assert!(
        stderr.contains("classified 6 images from 6 files; 9 files could not be classified"),
        "{stderr}"
    );
    // Every file bad is still exit 1, the inputs' fault; 2 is kept for the command failing.
    let run = Run(predict_cmd(&job.path("model")).args(&args[5..7]).output().unwrap());
    assert_eq!(run.code(), Some(1), "every file failed: {}", run.stderr());
    assert_eq!(run.stdout(), "");
    assert!(run.stderr().contains("classified 0 images from 0 files; 2 files could not be"));
}

#[test]
fn a_model_that_cannot_be_loaded_or_a_bad_option_classifies_nothing() {
    let job = trained();
    let run =
        Run(predict_cmd(Path::new("/nonexistent/model")).arg(test_images()).output().unwrap());
    assert_eq!(run.code(), Some(2));
    assert!(
        run.stderr().contains("error: model /nonexistent/model: No such file or directory"),
        "{}",
        run.stderr()
    );
    assert_eq!(run.stdout(), "");
    let run = Run(predict_cmd(&job.path("model"))
        .args(["--top-k", "11"])
        .arg(test_images())
        .output()
        .unwrap());
    assert_eq!(run.code(), Some(2));
    assert!(run.stderr().contains("--top-k 11: the model has 10 classes"), "{}", run.stderr());
    // The model folder is the default: <base-dir>/model.
    let run = Run(Command::new(BIN)
        .args(["predict", "--base-dir"])
        .arg(job.base())
        .arg(test_images())
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap())
    .ok();
    assert_eq!(run.stdout().lines().count(), 200);
}

/// A picture given as the model (`--model x.png`): the reason names the file in one clean line,
/// without the picture's bytes (CR, LF, SUB) reaching the terminal.
#[test]
fn a_picture_given_as_the_model_gives_one_clean_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend((0..900u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let path = dir.path().join("x.png");
    std::fs::write(&path, &png).unwrap();
    let out = predict_cmd(&path).arg(&path).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.starts_with("error: model archive "), "{stderr:?}");
    assert!(stderr.contains("x.png"), "{stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    let raw: Vec<char> = stderr.trim_end().chars().filter(|c| c.is_control()).collect();
    assert!(raw.is_empty(), "{stderr:?}");
}
