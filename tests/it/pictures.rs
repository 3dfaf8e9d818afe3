//! Picture channels (`application/x-image`): class folders and `.lst` files of PNG and JPEG
//! files of any size and colour, made from the real Fashion-MNIST fixture and from real photos
//! (`tests/fixtures/pictures`, see `make_pictures.py`), through the real binary, `predict` and
//! `serve`.

use std::path::{Path, PathBuf};

use serde_json::Value;
use smtrain::config::FASHION_MNIST_CLASSES;
use smtrain::data::picture::{self, Shape};
use smtrain::data::{load_channel, Format};

use crate::predict::{claims_size, gray_jpeg, jpeg, predict_cmd};
use crate::serve::Server;
use crate::util::{fails_with, fixture, Job, Run};

/// A grayscale PNG at `path`, its folders made.
fn save_png(path: &Path, pixels: &[u8], w: u32, h: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    crate::predict::save_png(path, pixels, w, h);
}

/// The fixture's images and labels.
fn fashion(channel: &str) -> (Vec<u8>, Vec<u8>) {
    let ds = load_channel(channel, &fixture(channel), Format::Idx).unwrap();
    (ds.images().unwrap().0.to_vec(), ds.labels)
}

/// Writes a fixture channel as one folder per class (named as Fashion-MNIST's classes, with
/// '/' replaced), PNG files named by index; every 10th as JPEG when `jpeg`.
fn class_folders(dir: &Path, channel: &str, jpeg: bool) {
    let (pixels, labels) = fashion(channel);
    for (i, (img, &l)) in pixels.chunks_exact(784).zip(&labels).enumerate() {
        let class = FASHION_MNIST_CLASSES[l as usize].replace('/', "-");
        let folder = dir.join(class);
        std::fs::create_dir_all(&folder).unwrap();
        if jpeg && i % 10 == 0 {
            std::fs::write(folder.join(format!("{i:05}.jpg")), gray_jpeg(img)).unwrap();
        } else {
            save_png(&folder.join(format!("{i:05}.png")), img, 28, 28);
        }
    }
}

fn picture_job(hp: &[(&str, &str)]) -> Job {
    let job = Job::new();
    job.typed_channels(&[("train", "application/x-image"), ("test", "image")]).hyperparameters(hp);
    job
}

/// A job with only a train channel of pictures.
fn train_only(hp: &[(&str, &str)]) -> Job {
    let job = Job::new();
    job.typed_channels(&[("train", "application/x-image")]).hyperparameters(hp);
    job
}

#[test]
fn class_folders_train_with_the_folder_names_as_classes() {
    let hp = [("epochs", "3"), ("seed", "5")];
    let job = picture_job(&hp);
    class_folders(&job.path("input/data/train"), "train", true);
    class_folders(&job.path("input/data/test"), "test", false);
    job.write("input/data/train/README.txt", "stray files are ignored");
    let run = job.run().ok();
    assert!(run.stderr().contains("were ignored"), "{}", run.stderr());
    let card = job.json("model/model.json");
    let mut names: Vec<String> =
        FASHION_MNIST_CLASSES.iter().map(|c| c.replace('/', "-")).collect();
    names.sort();
    assert_eq!(card["class_names"], serde_json::json!(names));
    assert_eq!(card["input"]["kind"], "image");
    assert_eq!(card["data"]["train"]["samples"], 1000);
    let idx = Job::small(&hp);
    idx.run().ok();
    let acc = |j: &Job| j.json("model/metrics.json")["test"]["accuracy"].as_f64().unwrap();
    // Another sample order and a tenth of the pictures through JPEG: the same accuracy within
    // the spread of seeds on 200 test images.
    assert!((acc(&job) - acc(&idx)).abs() <= 0.05, "{} against IDX {}", acc(&job), acc(&idx));
    assert!(job.path("output/data/samples.png").exists());

    // predict names the folders' classes.
    let shoe = job.path("shoe.png");
    let (pixels, _) = fashion("test");
    save_png(&shoe, &pixels[..784], 28, 28);
    let out = predict_cmd(&job.path("model")).arg(&shoe).output().unwrap();
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(names.contains(&line["class_name"].as_str().unwrap().to_string()), "{line}");
}

#[test]
fn lst_files_in_the_idx_order_train_the_idx_weights_bit_for_bit() {
    let hp = [("epochs", "2"), ("seed", "5")];
    let idx = Job::small(&hp);
    idx.run().ok();
    let job = picture_job(&hp);
    for channel in ["train", "test"] {
        let (pixels, labels) = fashion(channel);
        let dir = job.path(&format!("input/data/{channel}"));
        let mut lst = String::new();
        for (i, (img, l)) in pixels.chunks_exact(784).zip(&labels).enumerate() {
            save_png(&dir.join(format!("img/{i}.png")), img, 28, 28);
            lst.push_str(&format!("{i}\t{l}.000000\timg/{i}.png\n"));
        }
        std::fs::write(dir.join(format!("{channel}.lst")), lst).unwrap();
    }
    job.run().ok();
    let weights = |j: &Job| std::fs::read(j.path("model/model.safetensors")).unwrap();
    assert!(weights(&job) == weights(&idx), ".lst pictures must train exactly as IDX");
}

#[test]
fn bad_picture_channels_are_refused_naming_the_file_or_line() {
    let (pixels, _) = fashion("train");
    let img = &pixels[..784];
    let two_classes = |job: &Job| {
        save_png(&job.path("input/data/train/a/1.png"), img, 28, 28);
        save_png(&job.path("input/data/train/b/1.png"), img, 28, 28);
    };
    let job = train_only(&[]);
    save_png(&job.path("input/data/train/a/1.png"), img, 28, 28);
    fails_with(&job, &["has 1 class folder(s) (a); a classifier needs at least two"]);

    let job = train_only(&[]);
    two_classes(&job);
    std::fs::create_dir_all(job.path("input/data/train/c")).unwrap();
    fails_with(&job, &["class folder \"c\" holds no PNG or JPEG picture"]);

    let job = train_only(&[]);
    two_classes(&job);
    job.write("input/data/train/b/2.png", b"\x89PNG\r\n\x1a\nnot really");
    fails_with(&job, &["b/2.png: is not a readable PNG image"]);

    let job = train_only(&[]);
    two_classes(&job);
    save_png(&job.path("input/data/train/b/2.png"), &pixels[..28 * 14], 28, 14);
    fails_with(
        &job,
        &[
            "b/2.png: is 14x28 pixels (height x width); expected 28x28",
            "every picture of a channel must have one size, or set image_size",
        ],
    );

    // Broken pictures are named, whichever decoder meets them.
    let job = train_only(&[]);
    two_classes(&job);
    let whole = gray_jpeg(img);
    job.write("input/data/train/b/cut.jpg", &whole[..whole.len() - 40]);
    fails_with(&job, &["b/cut.jpg: is a truncated JPEG image"]);
    let job = train_only(&[("image_size", "28")]);
    two_classes(&job);
    job.write("input/data/train/a/cmyk.jpg", jpeg(&[9; 8 * 8 * 4], 8, 8, CMYK));
    fails_with(&job, &["a/cmyk.jpg: is a CMYK JPEG", "save it as an RGB JPEG or PNG"]);
    // A bomb is refused from its header, with or without resizing.
    let job = train_only(&[("image_size", "28")]);
    two_classes(&job);
    job.write("input/data/train/b/bomb.png", claims_size(60_000, 60_000));
    fails_with(&job, &["b/bomb.png: is 60000x60000 pixels (height x width), over the limit"]);
    let job = train_only(&[]);
    job.write("input/data/train/a/bomb.png", claims_size(60_000, 60_000));
    save_png(&job.path("input/data/train/b/1.png"), img, 28, 28);
    fails_with(&job, &["a/bomb.png: is 60000x60000 pixels", "set image_size to resize"]);
    // The keys shape pictures only.
    let job = Job::small(&[("image_size", "32")]);
    fails_with(&job, &["hyperparameter \"image_size\" shapes pictures", "is IDX"]);
    let job = train_only(&[("image_size", "0")]);
    fails_with(&job, &["hyperparameter \"image_size\": value \"0\" has a bad entry \"0\""]);
    let job = train_only(&[("image_channels", "4")]);
    fails_with(&job, &["hyperparameter \"image_channels\": value \"4\" is not one of 1, 3"]);

    let job = train_only(&[]);
    save_png(&job.path("input/data/train/img.png"), img, 28, 28);
    for (lst, needle) in [
        ("0\t1\n", "train.lst:1: has 2 tab-separated fields; expected 3"),
        ("0\tx\timg.png\n", "train.lst:1: label \"x\" is not a number"),
        ("0\t1\timg.png\n1\t0\t../etc/passwd\n", "train.lst:2: path ../etc/passwd points outside"),
        ("0\t1\tnope.png\n", "train.lst:1: nope.png does not exist in the channel"),
    ] {
        job.write("input/data/train/train.lst", lst);
        fails_with(&job, &[needle]);
    }
    job.write("input/data/train/train.lst", "0\t7\timg.png\n1\t0\timg.png\n");
    job.hyperparameters(&[("num_classes", "3")]);
    fails_with(&job, &["label 7 at sample 0 is not below num_classes 3"]);

    let outside = tempfile::tempdir().unwrap();
    save_png(&outside.path().join("1.png"), img, 28, 28);
    let job = train_only(&[]);
    two_classes(&job);
    std::os::unix::fs::symlink(outside.path(), job.path("input/data/train/c")).unwrap();
    fails_with(&job, &["class folder \"c\" is a link to", "outside the channel"]);

    let job = picture_job(&[]);
    two_classes(&job);
    save_png(&job.path("input/data/test/z/1.png"), img, 28, 28);
    save_png(&job.path("input/data/test/a/1.png"), img, 28, 28);
    fails_with(
        &job,
        &["channel \"test\" has class folder \"z\", which channel \"train\" does not have"],
    );
}

const CMYK: jpeg_encoder::ColorType = jpeg_encoder::ColorType::Cmyk;

/// The real photos' class folders, and the two held-out crops.
fn photos(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pictures/photos").join(rel)
}

/// `(class, probabilities)` of each `predict` line for `files`.
fn predicted(model: &Path, files: &[PathBuf]) -> Vec<(String, Value)> {
    let run = Run(predict_cmd(model).args(["--top-k", "1"]).args(files).output().unwrap()).ok();
    run.stdout()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["class_name"].as_str().unwrap().to_string(), v["probabilities"].clone())
        })
        .collect()
}

/// `(class, probabilities)` of each prediction in a JSON answer of `serve`.
fn served((status, body): (u16, Vec<u8>)) -> Vec<(String, Value)> {
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["class_name"].as_str().unwrap().to_string(), p["probabilities"].clone()))
        .collect()
}

/// A uint8 `.npy` body of `shape`.
fn npy(shape: &[usize], data: &[u8]) -> Vec<u8> {
    crate::tables::npy("|u1", shape, data)
}

/// Real RGB photos of many sizes, end to end: class folders → train at another size than
/// 28×28 with augmentation → `predict` and `serve` a held-out JPEG → the right class, the two
/// bit for bit alike; arrays must come in the model's shape.
#[test]
fn real_rgb_photos_train_resized_and_serve_a_jpeg_to_the_right_class() {
    let hp = [
        ("epochs", "15"),
        ("image_size", "32,40"),
        ("augment_shift", "2"),
        ("augment_flip", "true"),
        ("seed", "3"),
    ];
    let job = picture_job(&hp);
    job.data_from("train", &photos("train")).data_from("test", &photos("test"));
    job.run().ok();
    let card = job.json("model/model.json");
    assert_eq!(card["input"]["shape"], serde_json::json!([32, 40, 3]), "{card}");
    assert_eq!(card["class_names"], serde_json::json!(["flower", "temple"]));
    let accuracy = job.json("model/metrics.json")["test"]["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.9, "test accuracy {accuracy} on 20 crops of two photos");
    assert!(job.path("output/data/predictions.png").exists());

    let model = job.path("model");
    let held = [photos("held-out/flower.jpg"), photos("held-out/temple.jpg")];
    let lines = predicted(&model, &held);
    let classes: Vec<&str> = lines.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(classes, ["flower", "temple"]);

    let server = Server::start(&model, &[]);
    for (file, want) in held.iter().zip(&lines) {
        let body = std::fs::read(file).unwrap();
        for ct in ["image/jpeg", "application/x-image"] {
            let got = served(server.post(ct, "", &body));
            assert_eq!(&got[..], std::slice::from_ref(want), "{ct} {}", file.display());
        }
        // The same picture sent as the model's array: the converted bytes, answered alike.
        let shape = Shape::new(32, 40, 3);
        let pixels = picture::load(&body, shape, true, picture::MAX_PIXELS).unwrap();
        let got = served(server.post("application/x-npy", "", &npy(&[1, 32, 40, 3], &pixels)));
        assert_eq!(&got[..], std::slice::from_ref(want), "npy {}", file.display());
    }
    let (status, body) = server.post("application/x-npy", "", &npy(&[1, 28, 28], &[0; 784]));
    assert_eq!(status, 400);
    let why = String::from_utf8_lossy(&body);
    assert!(why.contains("expected (N, 32, 40, 3) or (N, 3840)"), "{why}");
}

/// Pictures of every PNG and JPEG kind, converted and resized as `image_size` and
/// `image_channels` ask, train exactly as the same pixels converted beforehand, and `predict`
/// and `serve` convert them in the same way: the three agree bit for bit.
#[test]
fn every_picture_kind_is_converted_alike_in_training_predict_and_serve() {
    use png::ColorType::*;
    let (pixels, labels) = fashion("train");
    let raw = |job: &Job, i: usize, name: &str, bytes: Vec<u8>| {
        let class = if labels[i] < 5 { "low" } else { "high" };
        job.write(&format!("input/data/train/{class}/{i:03}-{name}"), bytes);
    };
    let shape = Shape::new(20, 24, 3);
    let hp = [("epochs", "2"), ("image_size", "20,24"), ("image_channels", "3"), ("seed", "4")];
    let pictures = train_only(&hp);
    let converted = train_only(&hp);
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for i in 0..120 {
        let grey = &pixels[i * 784..(i + 1) * 784];
        // Each kind at a size of its own: 28×28 as it is, or 2× with each pixel doubled.
        let big: Vec<u8> = (0..56 * 56).map(|j| grey[(j / 56 / 2) * 28 + (j % 56) / 2]).collect();
        let rgb: Vec<u8> = grey.iter().flat_map(|&g| [g, g / 2, 255 - g]).collect();
        let (name, bytes) = match i % 9 {
            0 => ("grey.png", png_bytes(grey, 28, 28, Grayscale, 8)),
            1 => ("grey16.png", png_bytes(&sixteen(&big), 56, 56, Grayscale, 16)),
            2 => ("grey-alpha.png", png_bytes(&with(grey, 1, 255), 28, 28, GrayscaleAlpha, 8)),
            3 => ("rgb.png", png_bytes(&rgb, 28, 28, Rgb, 8)),
            4 => ("rgba.png", png_bytes(&with(&rgb, 3, 128), 28, 28, Rgba, 8)),
            5 => ("rgb16.png", png_bytes(&sixteen(&rgb), 28, 28, Rgb, 16)),
            6 => ("grey.jpg", jpeg(&big, 56, 56, jpeg_encoder::ColorType::Luma)),
            7 => ("rgb.jpg", jpeg(&rgb, 28, 28, jpeg_encoder::ColorType::Rgb)),
            _ => ("progressive.jpg", progressive(&rgb, 28, 28)),
        };
        let path = dir.path().join(format!("{i:03}-{name}"));
        std::fs::write(&path, &bytes).unwrap();
        files.push(path);
        let want = picture::load(&bytes, shape, true, picture::MAX_PIXELS).unwrap();
        raw(&pictures, i, name, bytes);
        raw(&converted, i, "converted.png", png_bytes(&want, 24, 20, Rgb, 8));
    }
    // A palette PNG, as paint programs save them.
    let palette = palette_png(&pixels[..784]);
    std::fs::write(dir.path().join("palette.png"), &palette).unwrap();
    files.push(dir.path().join("palette.png"));
    pictures.run().ok();
    converted.run().ok();
    let weights = |j: &Job| std::fs::read(j.path("model/model.safetensors")).unwrap();
    assert!(weights(&pictures) == weights(&converted), "training converts as picture::load");
    assert_eq!(pictures.json("model/model.json")["input"]["shape"], serde_json::json!([20, 24, 3]));

    let model = pictures.path("model");
    let lines = predicted(&model, &files);
    assert_eq!(lines.len(), files.len());
    let server = Server::start(&model, &[]);
    for (file, want) in files.iter().zip(&lines) {
        let bytes = std::fs::read(file).unwrap();
        // predict's pixels are picture::load's: the converted picture answers alike.
        let same = dir.path().join("same.png");
        let pixels = picture::load(&bytes, shape, true, picture::MAX_PIXELS).unwrap();
        std::fs::write(&same, png_bytes(&pixels, 24, 20, Rgb, 8)).unwrap();
        assert_eq!(&predicted(&model, &[same])[0], want, "{}", file.display());
        let got = served(server.post("application/x-image", "", &bytes));
        assert_eq!(&got[..], std::slice::from_ref(want), "{}", file.display());
    }

    // Without image_channels, grey pictures stay grey: the first picture decides.
    let grey = train_only(&[("epochs", "1"), ("image_size", "14")]);
    for i in 0..20 {
        let class = if labels[i] < 5 { "low" } else { "high" };
        save_png(
            &grey.path(&format!("input/data/train/{class}/{i}.png")),
            &pixels[i * 784..][..784],
            28,
            28,
        );
    }
    grey.run().ok();
    assert_eq!(grey.json("model/model.json")["input"]["shape"], serde_json::json!([14, 14]));
}

fn png_bytes(data: &[u8], w: u32, h: u32, color: png::ColorType, bits: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(color);
    enc.set_depth(if bits == 16 { png::BitDepth::Sixteen } else { png::BitDepth::Eight });
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(data).unwrap();
    writer.finish().unwrap();
    out
}

/// 8-bit samples as 16-bit big-endian ones of the same value (v × 257).
fn sixteen(data: &[u8]) -> Vec<u8> {
    data.iter().flat_map(|&v| (v as u16 * 257).to_be_bytes()).collect()
}

/// `data`'s pixels of `channels` samples with an alpha sample added.
fn with(data: &[u8], channels: usize, alpha: u8) -> Vec<u8> {
    data.chunks(channels).flat_map(|p| p.iter().copied().chain([alpha])).collect()
}

fn progressive(data: &[u8], w: u16, h: u16) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
    enc.set_progressive(true);
    enc.encode(data, w, h, jpeg_encoder::ColorType::Rgb).unwrap();
    out
}

/// A 28×28 palette PNG of 16 greys, from grey pixels.
fn palette_png(grey: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, 28, 28);
    enc.set_color(png::ColorType::Indexed);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_palette((0..16u8).flat_map(|i| [i * 17, i * 17, i * 17]).collect::<Vec<u8>>());
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(&grey.iter().map(|&g| g / 16).collect::<Vec<u8>>()).unwrap();
    writer.finish().unwrap();
    out
}

/// Fashion-MNIST's whole test set as PNG class folders (1,000 pictures in each of 10), through
/// `predict`, gives a model trained on IDX the predictions it gives the IDX file.
#[test]
fn the_fashion_mnist_test_set_as_png_folders_predicts_as_the_idx_file() {
    const TEST: &str = "/usr/share/datasets/fashion-mnist";
    let images = Path::new(TEST).join("t10k-images-idx3-ubyte.gz");
    let labels = Path::new(TEST).join("t10k-labels-idx1-ubyte.gz");
    let test = smtrain::data::load_pair(&images, &labels).unwrap();
    let job = Job::small(&[("epochs", "1"), ("seed", "2")]);
    job.run().ok();
    let model = job.path("model");
    let want = predicted(&model, &[images]);
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, (img, &l)) in test.images().unwrap().0.chunks_exact(784).zip(&test.labels).enumerate() {
        let class = FASHION_MNIST_CLASSES[l as usize].replace('/', "-");
        let path = dir.path().join(class).join(format!("{i:05}.png"));
        save_png(&path, img, 28, 28);
        files.push(path);
    }
    for class in FASHION_MNIST_CLASSES {
        let n = std::fs::read_dir(dir.path().join(class.replace('/', "-"))).unwrap().count();
        assert_eq!(n, 1000, "{class}");
    }
    let mut got = Vec::new();
    for chunk in files.chunks(2500) {
        got.extend(predicted(&model, chunk));
    }
    assert_eq!(got.len(), 10_000);
    // The classes are the same; the probabilities the same but for the last float bits, as a
    // picture is one image per forward pass and the IDX file a batch of many.
    let differ = (0..10_000).filter(|&i| got[i].0 != want[i].0).count();
    assert_eq!(differ, 0, "of 10,000 pictures, {differ} are classified otherwise than in the IDX");
    let probs = |v: &Value| -> Vec<f64> {
        v.as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect()
    };
    let worst = (0..10_000)
        .flat_map(|i| {
            let (a, b) = (probs(&got[i].1), probs(&want[i].1));
            a.into_iter().zip(b).map(|(x, y)| (x - y).abs()).collect::<Vec<_>>()
        })
        .fold(0.0, f64::max);
    assert!(worst < 1e-5, "probabilities differ by up to {worst}");
}

/// A picture job stopped after an epoch resumes to the weights of an uninterrupted run.
#[test]
fn a_picture_job_stopped_after_an_epoch_resumes_bit_identically() {
    let hp = [
        ("epochs", "3"),
        ("image_size", "16,12"),
        ("augment_shift", "1"),
        ("augment_flip", "true"),
        ("hidden_units", "512,512"),
        ("batch_size", "4"),
        ("seed", "9"),
    ];
    let make = || {
        let job = train_only(&hp);
        job.data_from("train", &photos("train"));
        job
    };
    let reference = make();
    reference.run().ok();
    let job = make();
    crate::checkpoints::resumes_to_the_weights_of(&job, &reference);
}

/// Two hosts, each with its shard of the photos' class folders, train together; a shard that
/// lacks a class is refused on every host, naming both hosts' folders.
#[test]
fn two_hosts_train_sharded_class_folders_and_refuse_shards_without_a_class() {
    // Each host's class folders: (the photos' folder, the name it gets on the host).
    type Shard<'a> = &'a [(&'a str, &'a str)];
    let run_pair = |shards: [Shard; 2]| -> Vec<(Job, std::process::Output)> {
        let port = crate::distributed::free_port().to_string();
        let hosts = ["127.0.0.1", "127.0.0.2"];
        let mut ranks = Vec::new();
        for (rank, classes) in shards.iter().enumerate() {
            let job = Job::new();
            let spec = serde_json::json!({"train": {"ContentType": "application/x-image",
                "TrainingInputMode": "File", "S3DistributionType": "ShardedByS3Key"}});
            job.write("input/config/inputdataconfig.json", spec.to_string());
            job.hyperparameters(&[
                ("epochs", "2"),
                ("threads", "1"),
                ("image_size", "24"),
                ("distributed_port", &port),
            ]);
            let rc = serde_json::json!({"current_host": hosts[rank], "hosts": hosts});
            job.write("input/config/resourceconfig.json", rc.to_string());
            // Even files to host 0, odd ones to host 1, as a key-sharded copy splits them.
            for (class, name_here) in classes.iter() {
                let src = photos("train").join(class);
                let mut names: Vec<_> =
                    std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().file_name()).collect();
                names.sort();
                for name in names.iter().skip(rank).step_by(2) {
                    let bytes = std::fs::read(src.join(name)).unwrap();
                    let rel = format!("input/data/train/{name_here}/{}", name.to_string_lossy());
                    job.write(&rel, bytes);
                }
            }
            let child = job.command().stdout(std::process::Stdio::null()).spawn().unwrap();
            ranks.push((job, child));
        }
        ranks
            .into_iter()
            .map(|(job, child)| {
                let out = child.wait_with_output().unwrap();
                (job, out)
            })
            .collect()
    };
    let both: Shard = &[("flower", "flower"), ("temple", "temple")];
    let ranks = run_pair([both, both]);
    for (job, out) in &ranks {
        assert!(out.status.success(), "a rank failed: {:?}", job.failure());
    }
    let card = ranks[0].0.json("model/model.json");
    assert_eq!(card["class_names"], serde_json::json!(["flower", "temple"]));
    assert_eq!(card["input"]["shape"], serde_json::json!([24, 24, 3]));
    assert!(!ranks[1].0.path("model/model.json").exists(), "only the first host writes");

    let renamed: Shard = &[("flower", "flower"), ("temple", "tower")];
    let ranks = run_pair([both, renamed]);
    for (job, out) in &ranks {
        assert_eq!(out.status.code(), Some(1));
        let failure = job.failure().unwrap();
        assert!(failure.contains("class folders [flower, t"), "{failure}");
        assert!(failure.contains("every host needs pictures of every class"), "{failure}");
    }
}

/// scikit-learn's digits (1,797 real 8×8 scans), written as PNG class folders, train to the
/// test accuracy of scikit-learn's MLPClassifier on the same split (`digits-mlp.json`, written by
/// `tests/fixtures/make_digits_mlp.py`) or better.
#[test]
fn digits_as_png_folders_reach_the_accuracy_of_scikit_learns_mlp() {
    let read = |channel: &str| {
        let dir = crate::util::table_fixture(&format!("digits-npz/{channel}"));
        load_channel(channel, &dir, Format::Npz).unwrap()
    };
    let job = picture_job(&[("epochs", "100"), ("dropout", "0.3"), ("seed", "0")]);
    for channel in ["train", "test"] {
        let set = read(channel);
        let smtrain::data::Values::Floats(x) = &set.values else { panic!("digits are a table") };
        for (i, (scan, &label)) in x.chunks_exact(64).zip(&set.labels).enumerate() {
            // Ink 0–16 as pixels 0–255.
            let pixels: Vec<u8> = scan.iter().map(|&v| (v * 255.0 / 16.0).round() as u8).collect();
            let path = job.path(&format!("input/data/{channel}/digit-{label}/{i:04}.png"));
            save_png(&path, &pixels, 8, 8);
        }
    }
    job.run().ok();
    let ours = job.json("model/metrics.json")["test"]["accuracy"].as_f64().unwrap();
    let mlp: Value = serde_json::from_slice(
        &std::fs::read(crate::util::table_fixture("digits-mlp.json")).unwrap(),
    )
    .unwrap();
    let bar = mlp["mean"].as_f64().unwrap();
    assert!(ours >= bar, "digits as pictures: {ours} against MLPClassifier's {bar}");
}
