//! Picture channels (`application/x-image`): class folders and `.lst` files of PNG and JPEG
//! files, made from the real Fashion-MNIST fixture, through the real binary.

use std::path::Path;

use smtrain::config::FASHION_MNIST_CLASSES;
use smtrain::data::{load_channel, Format};

use crate::predict::{gray_jpeg, predict_cmd};
use crate::util::{fails_with, fixture, Job};

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
        &["b/2.png: is 28x14 pixels", "every picture of a channel must have one size"],
    );

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
