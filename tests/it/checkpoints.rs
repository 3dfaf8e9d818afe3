//! Checkpoints and exact resume: a stopped or killed job, run again, ends exactly where an
//! uninterrupted one does; damaged checkpoints are skipped or refused, never trusted.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::util::Job;

/// Big enough that an epoch takes a noticeable fraction of a second, so a signal lands
/// mid-epoch; small enough to keep the test quick.
const HP: &[(&str, &str)] =
    &[("epochs", "3"), ("hidden_units", "1024,1024"), ("batch_size", "8"), ("seed", "5")];

fn weights(job: &Job) -> Vec<u8> {
    std::fs::read(job.path("model/model.safetensors")).unwrap()
}

/// metrics.json's text without the timings, which differ from run to run: compared as text, so
/// that every other number must match to the last digit.
fn metrics_without_timings(job: &Job) -> String {
    let text = std::fs::read_to_string(job.path("model/metrics.json")).unwrap();
    let timing = ["\"seconds\":", "\"samples_per_second\":", "_seconds\":"];
    let kept: Vec<&str> =
        text.lines().filter(|l| !timing.iter().any(|t| l.trim_start().contains(t))).collect();
    assert!(kept.iter().any(|l| l.contains("\"train_loss\":")), "{text}");
    kept.join("\n")
}

fn checkpoints(job: &Job) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(job.path("checkpoints"))
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "safetensors"));
    v.sort();
    v
}

/// Starts the job and returns once it has printed `lines` metric lines.
pub(crate) fn start_until(job: &Job, lines: usize) -> Child {
    let mut child = job.command().stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    for _ in 0..lines {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("metrics: epoch="), "unexpected output {line:?}");
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    child
}

/// Runs `job` until its second metric line (epoch 1's checkpoint is written by then), kills it,
/// runs it again, and checks that it resumed to the weights of `reference`, an uninterrupted run
/// of the same job.
pub(crate) fn resumes_to_the_weights_of(job: &Job, reference: &Job) {
    let mut child = start_until(job, 2);
    child.kill().unwrap();
    child.wait().unwrap();
    let run = job.run().ok();
    assert!(run.stderr().contains("resuming from checkpoint"), "{}", run.stderr());
    let weights = |j: &Job| std::fs::read(j.path("model/model.safetensors")).unwrap();
    assert!(weights(job) == weights(reference), "resumed weights differ");
}

/// [`HP`] with augmentation and label smoothing, whose random choices a resumed run must
/// draw again exactly.
const AUGMENTED: &[(&str, &str)] = &[
    ("epochs", "3"),
    ("hidden_units", "1024,1024"),
    ("batch_size", "8"),
    ("seed", "5"),
    ("augment_shift", "2"),
    ("augment_flip", "true"),
    ("label_smoothing", "0.1"),
];

fn uninterrupted(hp: &[(&str, &str)]) -> Job {
    let job = Job::small(hp);
    job.run().ok();
    job
}

#[test]
fn sigterm_mid_epoch_then_resume_is_bit_identical() {
    sigterm_mid_epoch_then_resume(HP);
}

#[test]
fn an_augmented_run_stopped_mid_epoch_resumes_bit_identical() {
    sigterm_mid_epoch_then_resume(AUGMENTED);
}

fn sigterm_mid_epoch_then_resume(hp: &[(&str, &str)]) {
    let reference = uninterrupted(hp);
    // A stop that lands mid-epoch: the signal goes some time after epoch 1's line, and on a
    // loaded machine that can still be before epoch 2's first step, so wait longer and retry.
    let mut waits = [150, 400, 1000, 2000].into_iter();
    let job = loop {
        let wait = waits.next().expect("no attempt stopped mid-epoch");
        let job = Job::small(hp);
        let mut child = start_until(&job, 1);
        std::thread::sleep(Duration::from_millis(wait));
        let sent = Instant::now();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert!(sent.elapsed() < Duration::from_secs(10), "took {:?} to stop", sent.elapsed());
        assert_eq!(status.code(), Some(143));
        let failure = job.failure().unwrap();
        assert!(failure.starts_with("Stopped: stopped by SIGTERM at epoch "), "{failure}");
        assert!(failure.contains("checkpoint") && failure.contains("resumes"), "{failure}");
        let written = checkpoints(&job);
        let newest = written.last().expect("a checkpoint was written on SIGTERM");
        // 1000 samples at batch 8: 125 steps an epoch; a mid-epoch position is not a multiple.
        let position: u64 =
            newest.file_stem().unwrap().to_string_lossy()["checkpoint-".len()..].parse().unwrap();
        if !position.is_multiple_of(125) {
            break job;
        }
        eprintln!("stopped at {position}, an epoch boundary, after {wait} ms; trying again");
    };

    let run = job.run().ok();
    assert!(run.stderr().contains("resuming from checkpoint"), "{}", run.stderr());
    assert_eq!(weights(&job), weights(&reference));
    assert_eq!(metrics_without_timings(&job), metrics_without_timings(&reference));
    // The resumed run prints only the epochs it ran.
    assert_eq!(run.stdout().matches("metrics: epoch=1 ").count(), 0);
}

#[test]
fn sigkill_after_an_epoch_then_resume_is_bit_identical() {
    let reference = uninterrupted(HP);
    let job = Job::small(HP);
    let mut child = start_until(&job, 2);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!checkpoints(&job).is_empty());
    job.run().ok();
    assert_eq!(weights(&job), weights(&reference));
    assert_eq!(metrics_without_timings(&job), metrics_without_timings(&reference));
}

#[test]
fn keeps_the_last_n_checkpoints() {
    let job = Job::small(&[("epochs", "4"), ("checkpoint_keep", "2")]);
    job.run().ok();
    let names: Vec<String> = checkpoints(&job)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // 1000 samples at batch 32: 32 steps an epoch; epochs 3 and 4 end at 96 and 128.
    assert_eq!(
        names,
        ["checkpoint-000000000096.safetensors", "checkpoint-000000000128.safetensors"]
    );
    let leftovers: Vec<_> = std::fs::read_dir(job.path("checkpoints"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

/// Runs 2 of 3 epochs, damages the newest checkpoint with `damage`, and resumes.
fn resume_after_damage(damage: impl Fn(&std::path::Path)) -> (Job, crate::util::Run) {
    let job = Job::small(&[("epochs", "2"), ("checkpoint_keep", "3")]);
    job.run().ok();
    let newest = checkpoints(&job).last().unwrap().clone();
    damage(&newest);
    std::fs::remove_dir_all(job.path("model")).unwrap();
    job.hyperparameters(&[("epochs", "3"), ("checkpoint_keep", "3")]);
    let run = job.run();
    (job, run)
}

#[test]
fn a_truncated_or_altered_checkpoint_is_skipped_for_the_previous_one() {
    let reference = Job::small(&[("epochs", "3")]);
    reference.run().ok();
    let truncate = |p: &std::path::Path| {
        let len = std::fs::metadata(p).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(p).unwrap().set_len(len / 2).unwrap();
    };
    let flip = |p: &std::path::Path| {
        let mut bytes = std::fs::read(p).unwrap();
        let i = bytes.len() - 100;
        bytes[i] ^= 0x40;
        std::fs::write(p, bytes).unwrap();
    };
    for (what, damage) in
        [("truncated", &truncate as &dyn Fn(&std::path::Path)), ("altered", &flip)]
    {
        let (job, run) = resume_after_damage(damage);
        let run = run.ok();
        let err = run.stderr();
        assert!(err.contains("skipping unusable checkpoint"), "{what}: {err}");
        if what == "altered" {
            assert!(err.contains("checksum mismatch"), "{err}");
        }
        assert!(err.contains("resuming from checkpoint"), "{what}: {err}");
        assert_eq!(weights(&job), weights(&reference), "{what}");
        assert_eq!(metrics_without_timings(&job), metrics_without_timings(&reference), "{what}");
    }
}

#[test]
fn no_valid_checkpoint_fails_clearly_instead_of_starting_over() {
    let job = Job::small(&[("epochs", "1")]);
    job.write("checkpoints/checkpoint-000000000032.safetensors", b"\x08\0\0\0\0\0\0\0{}      ");
    let huge =
        std::fs::File::create(job.path("checkpoints/checkpoint-000000000064.safetensors")).unwrap();
    huge.set_len(20 << 30).unwrap(); // sparse: claims 20 GiB
    let run = job.run();
    assert_eq!(run.code(), Some(1));
    let failure = job.failure().unwrap();
    assert!(failure.contains("no valid checkpoint to resume from"), "{failure}");
    assert!(
        failure.contains("checkpoint-000000000064.safetensors: 21474836480 bytes, more than"),
        "{failure}"
    );
    assert!(failure.contains("start_fresh=true"), "{failure}");
    assert!(job.model_files().is_empty());
}

#[test]
fn other_hyperparameters_are_named_and_start_fresh_overrides() {
    let job = Job::small(&[("epochs", "1")]);
    job.run().ok();
    std::fs::remove_dir_all(job.path("model")).unwrap();
    job.hyperparameters(&[("epochs", "2"), ("learning_rate", "0.01"), ("seed", "9")]);
    let run = job.run();
    assert_eq!(run.code(), Some(1));
    let failure = job.failure().unwrap();
    assert!(failure.contains("other hyperparameters: learning_rate (checkpoint 0.001, now 0.01), seed (checkpoint 42, now 9)"), "{failure}");

    job.hyperparameters(&[
        ("epochs", "2"),
        ("learning_rate", "0.01"),
        ("seed", "9"),
        ("start_fresh", "true"),
    ]);
    job.run().ok();
    // The fresh run's checkpoints replaced the earlier run's.
    let metrics = job.json("model/metrics.json");
    assert_eq!(metrics["epochs"].as_array().unwrap().len(), 2);
    assert_eq!(checkpoints(&job).len(), 2);
}

#[test]
fn checkpointconfig_local_path_is_honoured() {
    let job = Job::small(&[("epochs", "1")]);
    let dir = job.path("elsewhere/ckpt");
    job.write(
        "input/config/checkpointconfig.json",
        format!(r#"{{"LocalPath": "{}", "S3Uri": "s3://b/p"}}"#, dir.display()),
    );
    job.run().ok();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    assert!(checkpoints(&job).is_empty());
}

/// A checkpoint of other layer sizes fails the shape checks before the settings are compared;
/// the reason still names the key (`hidden_units`), not tensor shapes.
#[test]
fn a_checkpoint_of_other_layer_sizes_names_hidden_units() {
    let job = Job::small(&[("epochs", "1"), ("hidden_units", "64")]);
    job.run().ok();
    job.hyperparameters(&[("epochs", "2"), ("hidden_units", "256")]);
    let run = job.run();
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    let failure = job.failure().unwrap();
    assert!(failure.starts_with("ClientError: "), "{failure}");
    assert!(failure.contains("other hyperparameters: hidden_units"), "{failure}");
    assert!(!failure.contains("F32") && !failure.contains("expected"), "{failure}");
}
