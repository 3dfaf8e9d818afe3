//! Channels from S3 and artifacts back to S3, against a real S3-compatible server (s3s-fs on
//! 127.0.0.1, SigV4 enforced; see `s3/server.rs`), and against moto's server with IAM policies
//! enforced for requests that must be denied. No part of the S3 API is mocked. Each test
//! starts its own server.

pub(crate) mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;

use serde_json::json;
use smtrain::artifacts::load_model_dir;
use smtrain::data::load_pair;
use smtrain::s3::download::{download_channels, ChannelDownload};
use smtrain::s3::upload::upload_file;
use smtrain::s3::{S3Uri, TransferOptions};
use smtrain::state::DeviceData;
use smtrain::train::evaluate;
use tch::Device;

use crate::util::{fixture, Job, Run, Started, OUTPUT_DATA_FILES};
use server::{BreakingProxy, Fault, Keys, Server};

const FASHION: &str = "/usr/share/datasets/fashion-mnist";

/// `train` for `job`, pointed at `server` with a clean AWS environment: nothing from this
/// machine's profile files, and instance metadata off, so no request leaves 127.0.0.1.
fn command(job: &Job, server: Option<&Server>) -> Command {
    let mut cmd = job.command();
    for var in [
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL_S3",
        "AWS_CA_BUNDLE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "TRAINING_JOB_NAME",
        "SMTRAIN_S3_CONCURRENCY",
        "SMTRAIN_S3_MULTIPART_THRESHOLD",
        "SMTRAIN_S3_PART_SIZE",
        "SMTRAIN_S3_STALL_TIMEOUT",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/smtrain-test")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/smtrain-test");
    if let Some(s) = server {
        cmd.envs(s.env());
    }
    cmd
}

fn run(cmd: &mut Command) -> Run {
    Run(cmd.output().unwrap())
}

/// A bad-input run: exit 1, `ClientError` naming every needle, nothing trained or downloaded.
fn fails_before_training(job: &Job, run: &Run, needles: &[&str]) -> String {
    let failure = client_error(job, run, needles);
    assert!(!run.stdout().contains("metrics:"), "training started:\n{}", run.stdout());
    assert!(job.model_files().is_empty());
    assert!(!job.path("input/data").exists(), "something was downloaded");
    failure
}

/// Exit 1 and a one-line `ClientError` naming every needle in the failure file.
fn client_error(job: &Job, run: &Run, needles: &[&str]) -> String {
    let failure =
        job.failure().unwrap_or_else(|| panic!("no failure file; stderr:\n{}", run.stderr()));
    assert_eq!(run.code(), Some(1), "{failure}");
    assert!(failure.starts_with("ClientError: "), "{failure}");
    assert_eq!(failure.lines().count(), 1, "{failure}");
    for n in needles {
        assert!(failure.contains(n), "failure lacks {n:?}: {failure}");
    }
    failure
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

fn unpack(tarball: &[u8], into: &Path) {
    tar::Archive::new(flate2::read::GzDecoder::new(tarball)).unpack(into).unwrap();
}

fn fixture_file(channel: &str, name: &str) -> Vec<u8> {
    std::fs::read(fixture(channel).join(name)).unwrap()
}

/// Uploads the small fixture's train and test channels under `prefix`.
fn put_fixture(s: &Server, bucket: &str, prefix: &str) {
    for ch in ["train", "test"] {
        for f in ["images-idx3-ubyte.gz", "labels-idx1-ubyte.gz"] {
            s.put(bucket, &format!("{prefix}{ch}/{f}"), fixture_file(ch, f));
        }
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    // xorshift: incompressible enough, reproducible, no extra dependency.
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The real Fashion-MNIST goes up to the server, `train` downloads it, trains, and uploads
/// `model.tar.gz`; the weights in that tarball reproduce the reported test accuracy.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn real_fashion_mnist_round_trip_through_s3() {
    let s = Server::start();
    s.create_bucket("datasets");
    s.create_bucket("artifacts");
    for (ch, prefix) in [("train", "train"), ("test", "t10k")] {
        for kind in ["images-idx3", "labels-idx1"] {
            let name = format!("{prefix}-{kind}-ubyte.gz");
            s.put_file(
                "datasets",
                &format!("fashion/{ch}/{name}"),
                &Path::new(FASHION).join(&name),
            );
        }
    }
    let job = Job::new();
    job.hyperparameters(&[("epochs", "1"), ("batch_size", "128")]);
    let r = run(command(&job, Some(&s))
        .args(["--channel", "train=s3://datasets/fashion/train/"])
        .args(["--channel", "test=s3://datasets/fashion/test"])
        .args(["--output", "s3://artifacts/runs/"])
        .env("TRAINING_JOB_NAME", "e2e-job"))
    .ok();
    assert!(r.stderr().contains("channel downloaded"), "{}", r.stderr());
    // The channel folders hold exactly the objects, byte for byte.
    assert_eq!(
        files_under(&job.path("input/data/train")),
        ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    );
    assert_eq!(
        std::fs::read(job.path("input/data/test/t10k-images-idx3-ubyte.gz")).unwrap(),
        std::fs::read(Path::new(FASHION).join("t10k-images-idx3-ubyte.gz")).unwrap()
    );
    assert_eq!(
        s.keys("artifacts", ""),
        ["runs/e2e-job/output/model.tar.gz", "runs/e2e-job/output/output.tar.gz"]
    );

    let back = tempfile::tempdir().unwrap();
    unpack(&s.get("artifacts", "runs/e2e-job/output/model.tar.gz").unwrap(), back.path());
    assert_eq!(files_under(back.path()), ["metrics.json", "model.json", "model.safetensors"]);
    let data = tempfile::tempdir().unwrap();
    unpack(&s.get("artifacts", "runs/e2e-job/output/output.tar.gz").unwrap(), data.path());
    assert_eq!(files_under(data.path()), OUTPUT_DATA_FILES);
    let reported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.path().join("metrics.json")).unwrap()).unwrap();
    assert_eq!(reported, job.json("model/metrics.json"));
    let (model, card) = load_model_dir(back.path(), Device::Cpu).unwrap();
    assert_eq!(card.data["train"].samples, 60_000);
    let test = load_pair(
        &Path::new(FASHION).join("t10k-images-idx3-ubyte.gz"),
        &Path::new(FASHION).join("t10k-labels-idx1-ubyte.gz"),
    )
    .unwrap();
    assert_eq!(test.len(), 10_000);
    let score = evaluate(&model, &DeviceData::new(&test, Device::Cpu));
    assert_eq!(score.accuracy, reported["test"]["accuracy"].as_f64().unwrap());
    assert!(score.accuracy > 0.75, "one epoch on the real data: {}", score.accuracy);
}

/// Keys keep their path below the prefix; folder markers and keys that only share the
/// prefix's text are skipped; a stale channel folder is replaced, not merged.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn nested_keys_keep_their_paths_below_the_prefix() {
    let s = Server::start();
    s.create_bucket("bkt");
    s.put("bkt", "deep/train/a/b/c/images.gz", fixture_file("train", "images-idx3-ubyte.gz"));
    s.put("bkt", "deep/train/labels/l.gz", fixture_file("train", "labels-idx1-ubyte.gz"));
    s.put("bkt", "deep/train-old/stray.txt", "not below the prefix");
    let job = Job::new();
    job.write("input/data/train/stale.bin", "from an earlier run");
    job.hyperparameters(&[("epochs", "1")]);
    let r = run(command(&job, Some(&s))
        .args(["--channel", "train=s3://bkt/deep/train"])
        .args(["--channel", &format!("test={}", fixture("test").display())]))
    .ok();
    assert_eq!(files_under(&job.path("input/data/train")), ["a/b/c/images.gz", "labels/l.gz"]);
    assert!(r.stderr().contains("only share the prefix's text"), "{}", r.stderr());
    // The local test channel was read in place, not copied.
    assert!(!job.path("input/data/test").exists());
    assert_eq!(job.json("model/model.json")["data"]["test"]["samples"], 200);
    // No staging folder or temporary file is left.
    let data: Vec<_> = std::fs::read_dir(job.path("input/data")).unwrap().collect();
    assert_eq!(data.len(), 1, "{data:?}");
}

/// 2,345 small objects: more than two listing pages of 1,000, all downloaded, each intact.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn thousands_of_small_objects_span_listing_pages() {
    let s = Server::start();
    s.create_bucket("many");
    let objects: Vec<(String, Vec<u8>)> = (0..2345)
        .map(|i| (format!("set/d{}/obj-{i:05}", i % 7), random_bytes(100 + i % 200, i as u64)))
        .collect();
    s.put_many("many", objects.clone());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("input/data/train");
    let stop = AtomicBool::new(false);
    let channel = ChannelDownload {
        name: "train".into(),
        uri: "s3://many/set/".parse().unwrap(),
        dir: dest.clone(),
    };
    let done = s.block_on(download_channels(&s.s3, &[channel], &stop)).unwrap();
    assert_eq!(done[0].objects, 2345);
    assert_eq!(done[0].bytes, objects.iter().map(|(_, b)| b.len() as u64).sum::<u64>());
    assert_eq!(files_under(&dest).len(), 2345);
    for (key, bytes) in &objects {
        let rel = key.strip_prefix("set/").unwrap();
        assert_eq!(&std::fs::read(dest.join(rel)).unwrap(), bytes, "{key}");
    }
}

/// An object above the multipart threshold comes down as concurrent byte ranges, exactly.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn large_object_downloads_in_ranges_byte_for_byte() {
    let s = Server::start();
    s.create_bucket("big");
    let bytes = random_bytes(13 << 20 | 12345, 7);
    s.put("big", "x/blob.bin", bytes.clone());
    let opts = TransferOptions {
        concurrency: 3,
        multipart_threshold: 5 << 20,
        part_size: 5 << 20,
        ..TransferOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let channel = ChannelDownload {
        name: "train".into(),
        uri: "s3://big/x/blob.bin".parse().unwrap(),
        dir: dir.path().join("train"),
    };
    let done = s
        .block_on(download_channels(&s.client(opts), &[channel], &AtomicBool::new(false)))
        .unwrap();
    assert_eq!(done[0].objects, 1);
    assert!(std::fs::read(dir.path().join("train/blob.bin")).unwrap() == bytes);
}

/// A connection that breaks in the middle of a body is resumed from where it stopped, and the
/// file comes out exact.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn broken_download_is_resumed_byte_for_byte() {
    let s = Server::start();
    s.create_bucket("big");
    let bytes = random_bytes(9 << 20, 5);
    s.put("big", "x/blob.bin", bytes.clone());
    let proxy = BreakingProxy::start(s.port, Fault::OneDownloadAfter(3 << 20));
    let opts = TransferOptions { concurrency: 1, ..TransferOptions::default() };
    let dir = tempfile::tempdir().unwrap();
    let channel = ChannelDownload {
        name: "train".into(),
        uri: "s3://big/x/".parse().unwrap(),
        dir: dir.path().join("train"),
    };
    let client = s.client_at(&proxy.endpoint(), opts);
    s.block_on(download_channels(&client, &[channel], &AtomicBool::new(false))).unwrap();
    assert!(proxy.tripped(), "the connection was never broken");
    assert!(std::fs::read(dir.path().join("train/blob.bin")).unwrap() == bytes);
}

/// Puts a 96 MiB object under s3://big/train/ and starts `train` downloading it in 5 MiB
/// ranges, one at a time; returns once the object's temporary file has bytes in it, with the
/// temporary file's path.
fn big_download(
    s: &Server,
    job: &Job,
    seed: u64,
    env: &[(&str, &str)],
) -> (std::process::Child, String) {
    s.create_bucket("big");
    s.put("big", "train/blob.bin", random_bytes(96 << 20, seed));
    let mut child = command(job, Some(s))
        .args(["--channel", "train=s3://big/train/"])
        .env("SMTRAIN_S3_CONCURRENCY", "1")
        .env("SMTRAIN_S3_MULTIPART_THRESHOLD", "5MiB")
        .env("SMTRAIN_S3_PART_SIZE", "5MiB")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let partial = wait_for_partial(job, &mut child);
    (child, partial)
}

/// SIGTERM during a download stops the job promptly, as during training, and cleans up.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn sigterm_during_download_stops_and_cleans_up() {
    let s = Server::start();
    let job = Job::new();
    let (child, _) = big_download(&s, &job, 13, &[]);
    let sent = std::time::Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait_with_output().unwrap().status;
    assert!(sent.elapsed().as_secs_f64() < 5.0, "took {:?}", sent.elapsed());
    assert_eq!(status.code(), Some(143));
    assert!(job.failure().unwrap().starts_with("Stopped: stopped by SIGTERM"));
    assert!(files_under(&job.path("input/data")).is_empty());
}

/// Waits until `train` is writing the object's temporary file; returns its path.
fn wait_for_partial(job: &Job, child: &mut std::process::Child) -> String {
    let data = job.path("input/data");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let found = files_under(&data)
            .into_iter()
            .find(|f| f.ends_with(".blob.bin.part"))
            .filter(|f| std::fs::metadata(data.join(f)).map(|m| m.len() > 0).unwrap_or(false));
        if let Some(f) = found {
            return f;
        }
        assert!(std::time::Instant::now() < deadline, "the download never started");
        assert!(child.try_wait().unwrap().is_none(), "train exited before the download");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// A model over the (lowered) multipart threshold is uploaded in 5 MiB parts and reloads to
/// the same weights.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn model_over_the_threshold_goes_up_in_parts() {
    let s = Server::start();
    s.create_bucket("out");
    let job = Job::small(&[("epochs", "1"), ("hidden_units", "4096")]);
    let r = run(command(&job, Some(&s))
        .args(["--output", "s3://out/p"])
        .env("TRAINING_JOB_NAME", "big-model")
        .env("SMTRAIN_S3_MULTIPART_THRESHOLD", "5MiB")
        .env("SMTRAIN_S3_PART_SIZE", "5MiB"))
    .ok();
    let tarball = s.get("out", "p/big-model/output/model.tar.gz").expect("model.tar.gz uploaded");
    assert!(tarball.len() > 10 << 20, "{} bytes: not over two parts", tarball.len());
    let parts = (tarball.len() as u64).div_ceil(5 << 20);
    assert!(
        r.stderr().contains(&format!("parts={parts}")) && r.stderr().contains("multipart upload"),
        "{}",
        r.stderr()
    );
    let back = tempfile::tempdir().unwrap();
    unpack(&tarball, back.path());
    assert_eq!(
        std::fs::read(back.path().join("model.safetensors")).unwrap(),
        std::fs::read(job.path("model/model.safetensors")).unwrap()
    );
    let (model, _) = load_model_dir(back.path(), Device::Cpu).unwrap();
    assert_eq!(model.sizes(), [784, 4096, 10]);
    let leftovers: Vec<_> = std::fs::read_dir(s.root())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(".upload_id-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A multipart upload whose parts cannot get through is aborted: the error names the object
/// and part, and the server holds no parts and no object afterwards.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn failed_multipart_upload_is_aborted_leaving_no_parts() {
    let s = Server::start();
    s.create_bucket("out");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.tar.gz");
    std::fs::write(&file, random_bytes(12 << 20, 3)).unwrap();
    // One 5 MiB part may pass, then the connections break.
    let proxy = BreakingProxy::start(s.port, Fault::UploadsAfter(7 << 20));
    let opts = TransferOptions {
        concurrency: 1,
        multipart_threshold: 5 << 20,
        part_size: 5 << 20,
        ..TransferOptions::default()
    };
    let dest: S3Uri = "s3://out/runs/j/output/model.tar.gz".parse().unwrap();
    let err = s.block_on(upload_file(&s.client_at(&proxy.endpoint(), opts), &file, &dest));
    let err = format!("{:#}", err.unwrap_err());
    assert!(err.contains("s3://out/runs/j/output/model.tar.gz (part "), "{err}");
    assert!(err.contains("multipart upload was aborted"), "{err}");
    let names: Vec<String> = std::fs::read_dir(s.root())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".upload_id-")), "parts left: {names:?}");
    assert!(s.get("out", "runs/j/output/model.tar.gz").is_none());
}

/// The server dies while a large object downloads: the job fails (exit 2, the object named),
/// and nothing that looks like a finished file or channel is left.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn server_stopped_mid_download_leaves_no_complete_looking_file() {
    let mut s = Server::start();
    let job = Job::new();
    job.hyperparameters(&[("epochs", "1")]);
    // Kill the server as soon as the object's temporary file has bytes in it.
    let (child, partial) = big_download(&s, &job, 11, &[]);
    let data = job.path("input/data");
    s.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let failure = job.failure().expect("failure file");
    assert!(failure.starts_with("InternalError: "), "{failure}");
    assert!(failure.contains("s3://big/train/blob.bin"), "{failure}");
    assert!(!job.path("input/data/train").exists(), "a channel folder appeared");
    let left = files_under(&data);
    assert!(left.iter().all(|f| !f.ends_with("blob.bin")), "{left:?}");
    assert!(left.is_empty(), "staging not cleaned up (was {partial}): {left:?}");
}

/// The server stops answering mid-download (SIGSTOP): the stalled transfer is retried, then
/// fails the job naming the object, in seconds rather than never.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn a_server_that_hangs_mid_download_fails_the_job_naming_the_object() {
    let s = Server::start();
    let job = Job::new();
    let (child, _) = big_download(&s, &job, 17, &[("SMTRAIN_S3_STALL_TIMEOUT", "2")]);
    s.pause();
    let paused = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let waited = paused.elapsed();
    s.resume();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(waited.as_secs() < 90, "took {waited:?}:\n{stderr}");
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let failure = job.failure().expect("failure file");
    assert!(failure.contains("s3://big/train/blob.bin"), "{failure}");
    assert!(files_under(&job.path("input/data")).is_empty());
}

/// The server hangs while the artifacts go up: the job fails naming the object, the failure
/// reason's upload gives up too, and no model.tar.gz stands in the prefix.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn a_server_that_hangs_during_the_upload_fails_the_job_naming_the_object() {
    let s = Server::start();
    s.create_bucket("out");
    let job = Job::small(&[("epochs", "40")]);
    let started = Started::until(
        command(&job, Some(&s))
            .args(["--output", "s3://out/p/"])
            .env("TRAINING_JOB_NAME", "hung")
            .env("SMTRAIN_S3_STALL_TIMEOUT", "2"),
        "data loaded",
    );
    s.pause();
    let paused = std::time::Instant::now();
    let (status, log) = started.finish();
    let waited = paused.elapsed();
    s.resume();
    assert!(waited.as_secs() < 90, "took {waited:?}:\n{log}");
    assert_eq!(status.code(), Some(2), "{log}");
    let failure = job.failure().expect("failure file");
    assert!(failure.contains("s3://out/p/hung/output/output.tar.gz"), "{failure}");
    assert!(log.contains("could not upload the failure reason"), "{log}");
    let keys = s.keys("out", "");
    assert!(!keys.iter().any(|k| k.ends_with("model.tar.gz")), "{keys:?}");
}

/// A job name that already has artifacts is refused before training, as SageMaker refuses a
/// name twice, and the earlier run's objects stay alone under their prefix.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn a_reused_job_name_is_refused_before_training() {
    let s = Server::start();
    s.create_bucket("out");
    let job = Job::small(&[("epochs", "1")]);
    run(command(&job, Some(&s)).args(["--output", "s3://out/p/"]).env("TRAINING_JOB_NAME", "once"))
        .ok();
    let before = s.keys("out", "");
    assert_eq!(before, ["p/once/output/model.tar.gz", "p/once/output/output.tar.gz"]);
    let again = Job::small(&[("epochs", "1")]);
    let r = run(command(&again, Some(&s))
        .args(["--output", "s3://out/p/"])
        .env("TRAINING_JOB_NAME", "once"));
    client_error(&again, &r, &["job name \"once\" already has artifacts", "TRAINING_JOB_NAME"]);
    assert!(!r.stdout().contains("metrics:"), "trained anyway");
    assert_eq!(s.keys("out", ""), before);
}

/// After a failed run the failure reason is uploaded, so CI can show it.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn failure_reason_is_uploaded_after_a_failed_run() {
    let s = Server::start();
    s.create_bucket("out");
    let job = Job::small(&[("epochs", "0")]);
    // The S3-specific endpoint variable wins over the general one (which goes nowhere here).
    let r = run(command(&job, Some(&s))
        .args(["--output", "s3://out/ci/"])
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ENDPOINT_URL_S3", s.endpoint())
        .env("TRAINING_JOB_NAME", "bad-hp"));
    assert_eq!(r.code(), Some(1));
    let local = job.failure().unwrap();
    assert!(local.contains("epochs"), "{local}");
    assert_eq!(s.keys("out", ""), ["ci/bad-hp/output/failure"]);
    assert_eq!(s.get("out", "ci/bad-hp/output/failure").unwrap(), local.as_bytes());
}

/// The server goes away during training: the upload fails the job and names the object; the
/// local model is kept.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn failed_upload_after_training_fails_the_job_naming_the_object() {
    let mut s = Server::start();
    s.create_bucket("out");
    let job = Job::small(&[("epochs", "40")]);
    let started = Started::until(
        command(&job, Some(&s)).args(["--output", "s3://out/p/"]).env("TRAINING_JOB_NAME", "lost"),
        "data loaded",
    );
    s.kill();
    let (status, log) = started.finish();
    assert_ne!(status.code(), Some(0), "{log}");
    let failure = job.failure().expect("failure file");
    // output.tar.gz goes up first, so a model.tar.gz in the prefix means both are there.
    assert!(failure.contains("s3://out/p/lost/output/output.tar.gz"), "{failure}");
    assert!(!job.succeeded());
    assert_eq!(job.model_files(), ["metrics.json", "model.json", "model.safetensors"]);
    assert!(log.contains("could not upload the failure reason"), "{log}");
}

#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn empty_prefix_fails_before_training() {
    let s = Server::start();
    s.create_bucket("bkt");
    s.put("bkt", "data-old/x", "only shares the text");
    let job = Job::new();
    let r = run(command(&job, Some(&s)).args(["--channel", "train=s3://bkt/data"]));
    fails_before_training(&job, &r, &["no objects under s3://bkt/data", "data-old/x"]);
}

#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn missing_bucket_fails_before_training() {
    let s = Server::start();
    let job = Job::new();
    let r = run(command(&job, Some(&s)).args(["--channel", "train=s3://no-such-bucket/x/"]));
    fails_before_training(
        &job,
        &r,
        &["s3://no-such-bucket/x/", "NoSuchBucket", "bucket does not exist"],
    );
}

#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn missing_output_bucket_fails_before_training() {
    let s = Server::start();
    let job = Job::small(&[("epochs", "1")]);
    let r = run(command(&job, Some(&s)).args(["--output", "s3://no-such-bucket/runs/"]));
    let failure = job.failure().unwrap();
    assert_eq!(r.code(), Some(1), "{failure}");
    assert!(failure.contains("checking --output before training"), "{failure}");
    assert!(failure.contains("NoSuchBucket"), "{failure}");
    assert!(!r.stdout().contains("metrics:"));
}

#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn wrong_secret_fails_with_the_s3_code_and_a_hint() {
    let s = Server::start();
    s.create_bucket("bkt");
    put_fixture(&s, "bkt", "");
    let job = Job::new();
    let r = run(command(&job, Some(&s))
        .args(["--channel", "train=s3://bkt/train/"])
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret"));
    fails_before_training(&job, &r, &["SignatureDoesNotMatch", "check AWS_SECRET_ACCESS_KEY"]);
}

#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn unknown_access_key_fails_with_the_s3_code_and_a_hint() {
    let s = Server::start();
    s.create_bucket("bkt");
    put_fixture(&s, "bkt", "");
    let job = Job::new();
    let r = run(command(&job, Some(&s))
        .args(["--channel", "train=s3://bkt/train/"])
        .env("AWS_ACCESS_KEY_ID", "AKIAUNKNOWN"));
    // s3s answers NotSignedUp where AWS answers InvalidAccessKeyId; both get the same hint.
    fails_before_training(
        &job,
        &r,
        &["S3 error NotSignedUp (HTTP 403)", "check AWS_ACCESS_KEY_ID"],
    );
}

/// moto with the fixture's channels under `s3://datasets/fashion/`, an empty `artifacts`
/// bucket and an IAM user allowed only `statements`, IAM checks on; the server and the user's
/// keys. `None` (skip) when moto is not installed outside CI.
fn moto_with_user(statements: serde_json::Value) -> (Server, Keys) {
    let mut s = Server::start_moto();
    s.create_bucket("datasets");
    put_fixture(&s, "datasets", "fashion/");
    s.create_bucket("artifacts");
    let user = s.iam_user("trainer", &json!({"Version": "2012-10-17", "Statement": statements}));
    s.enforce_iam();
    (s, user)
}

/// A one-epoch job reading the fixture's train channel from `s` with `user`'s keys; the
/// command takes further arguments.
fn job_as(s: &Server, user: &Keys) -> (Job, Command) {
    let job = Job::new();
    job.hyperparameters(&[("epochs", "1")]);
    let mut cmd = command(&job, Some(s));
    cmd.envs(user.env()).args(["--channel", "train=s3://datasets/fashion/train/"]);
    (job, cmd)
}

fn allow(action: &str, resource: &str) -> serde_json::Value {
    json!({"Effect": "Allow", "Action": action, "Resource": resource})
}

/// The usual slip: a role that may read the objects but not list the bucket. The job fails
/// before anything is downloaded, with S3's code and the permission it lacks.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn denied_listing_fails_before_training_with_the_code_and_a_hint() {
    let (s, user) =
        moto_with_user(json!([allow("s3:GetObject", "arn:aws:s3:::datasets/fashion/*")]));
    let (job, mut cmd) = job_as(&s, &user);
    let r = run(&mut cmd);
    fails_before_training(
        &job,
        &r,
        &[
            "listing s3://datasets/fashion/train/: S3 error AccessDenied (HTTP 403)",
            "need s3:ListBucket on arn:aws:s3:::datasets (the bucket's ARN, no /*)",
        ],
    );
}

/// Listing allowed, reading not: the job fails before training, naming the object it could
/// not download, and leaves no channel folder and no staging folder behind.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn denied_download_fails_before_training_naming_the_object() {
    let (s, user) = moto_with_user(json!([allow("s3:ListBucket", "arn:aws:s3:::datasets")]));
    let (job, mut cmd) = job_as(&s, &user);
    let r = run(&mut cmd);
    let failure = client_error(&job, &r, &["AccessDenied (HTTP 403)"]);
    // The object named, and the permission it needs on that object's ARN.
    assert!(
        ["images-idx3-ubyte.gz", "labels-idx1-ubyte.gz"].iter().any(|f| {
            failure.contains(&format!("downloading s3://datasets/fashion/train/{f}: S3 error"))
                && failure.contains(&format!(
                    "need s3:GetObject on arn:aws:s3:::datasets/fashion/train/{f} "
                ))
        }),
        "{failure}"
    );
    assert!(!r.stdout().contains("metrics:"), "training started:\n{}", r.stdout());
    assert!(job.model_files().is_empty());
    let left: Vec<_> = std::fs::read_dir(job.path("input/data"))
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in input/data: {left:?}");
}

/// A role that may read its data and list the output bucket but not write there: the job
/// trains (S3 only says no at the upload), then fails naming the object; the local model
/// stays, and nothing lands in the bucket, not even the failure reason.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn denied_upload_fails_the_job_naming_the_object() {
    let (s, user) = moto_with_user(json!([
        allow("s3:ListBucket", "arn:aws:s3:::*"),
        allow("s3:GetObject", "arn:aws:s3:::datasets/*"),
    ]));
    let (job, mut cmd) = job_as(&s, &user);
    let r = run(cmd
        .args(["--channel", "test=s3://datasets/fashion/test/"])
        .args(["--output", "s3://artifacts/runs/"])
        .env("TRAINING_JOB_NAME", "denied-upload"));
    client_error(
        &job,
        &r,
        &[
            "uploading s3://artifacts/runs/denied-upload/output/output.tar.gz: S3 error \
             AccessDenied (HTTP 403)",
            "need s3:PutObject on arn:aws:s3:::artifacts/runs/denied-upload/output/output.tar.gz",
        ],
    );
    assert!(r.stdout().contains("metrics: test_loss="), "{}", r.stdout());
    assert!(!job.succeeded());
    assert_eq!(job.model_files(), ["metrics.json", "model.json", "model.safetensors"]);
    assert!(r.stderr().contains("could not upload the failure reason"), "{}", r.stderr());
    assert!(s.keys("artifacts", "").is_empty(), "{:?}", s.keys("artifacts", ""));
}

/// A least-privilege role that may write the output prefix but not list it: the check before
/// training only warns, and the artifacts are uploaded.
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn output_prefix_that_cannot_be_listed_only_warns() {
    let (s, user) = moto_with_user(json!([
        allow("s3:ListBucket", "arn:aws:s3:::datasets"),
        allow("s3:GetObject", "arn:aws:s3:::datasets/*"),
        allow("s3:PutObject", "arn:aws:s3:::artifacts/runs/*"),
    ]));
    let (_job, mut cmd) = job_as(&s, &user);
    let r =
        run(cmd.args(["--output", "s3://artifacts/runs/"]).env("TRAINING_JOB_NAME", "write-only"))
            .ok();
    assert!(r.stderr().contains("cannot list the output prefix (AccessDenied)"), "{}", r.stderr());
    assert_eq!(
        s.keys("artifacts", ""),
        ["runs/write-only/output/model.tar.gz", "runs/write-only/output/output.tar.gz"]
    );
}

#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn no_region_fails_with_a_hint() {
    let s = Server::start();
    let job = Job::new();
    let r = run(command(&job, Some(&s))
        .args(["--channel", "train=s3://bkt/train/"])
        .env_remove("AWS_REGION"));
    fails_before_training(&job, &r, &["no AWS region", "set AWS_REGION"]);
}

#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn no_credentials_fail_with_a_hint() {
    let s = Server::start();
    let job = Job::new();
    let r = run(command(&job, Some(&s))
        .args(["--channel", "train=s3://bkt/train/"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY"));
    fails_before_training(&job, &r, &["no AWS credentials", "AWS_ACCESS_KEY_ID"]);
}

/// Keys that would land outside the channel folder refuse the whole channel before anything
/// is written. (s3s-fs stores keys as files, so it can hold these two; `..`, `//` and absolute
/// keys are covered by the unit tests of `s3::location`.)
#[test]
#[ignore = "needs the S3 test servers: `make test` installs them and runs these"]
fn keys_that_would_leave_the_channel_folder_are_refused() {
    let s = Server::start();
    s.create_bucket("bkt");
    put_fixture(&s, "bkt", "");
    s.put("bkt", "train/%2e%2e/%2e%2e/escape.txt", "x");
    let job = Job::new();
    let r = run(command(&job, Some(&s)).args(["--channel", "train=s3://bkt/train/"]));
    fails_before_training(&job, &r, &["train/%2e%2e/%2e%2e/escape.txt", "percent-encoded"]);

    let s2 = Server::start();
    s2.create_bucket("bkt");
    put_fixture(&s2, "bkt", "");
    s2.put("bkt", "train/..\\..\\escape.txt", "x");
    let job = Job::new();
    let r = run(command(&job, Some(&s2)).args(["--channel", "train=s3://bkt/train/"]));
    fails_before_training(&job, &r, &["backslash"]);
    assert!(!job.base().parent().unwrap().join("escape.txt").exists());
}

/// Local folders given with --channel are used in place and replace inputdataconfig.json's
/// channels of the same name; the channel rules still apply.
#[test]
fn local_channel_paths_are_used_in_place_and_override_the_config() {
    let job = Job::new();
    job.channels(&["train", "test"]).data("test", "test");
    job.write("input/data/train/garbage.txt", "not IDX");
    job.hyperparameters(&[("epochs", "1")]);
    run(command(&job, None).args(["--channel", &format!("train={}", fixture("train").display())]))
        .ok();
    let card = job.json("model/model.json");
    assert_eq!(card["data"]["train"]["samples"], 1000);
    assert_eq!(card["data"]["test"]["samples"], 200);

    let only_cli = Job::new();
    only_cli.hyperparameters(&[("epochs", "1")]);
    run(command(&only_cli, None)
        .args(["--channel", &format!("train={}", fixture("train").display())])
        .args(["--channel", &format!("validation={}", fixture("test").display())]))
    .ok();
    let metrics = only_cli.json("model/metrics.json");
    assert!(metrics["epochs"][0]["validation_accuracy"].as_f64().is_some());
    assert!(!only_cli.path("input/data").exists(), "a local channel was copied");
}

#[test]
fn channel_flags_follow_the_channel_rules() {
    let dir: PathBuf = fixture("train");
    for (args, needle) in [
        (vec![format!("test={}", dir.display())], "\"train\" is not"),
        (vec![format!("bogus={}", dir.display())], "\"bogus\" is not a channel"),
        (
            vec![format!("train={}", dir.display()), format!("train={}", dir.display())],
            "given more than once",
        ),
        (vec!["train=/nonexistent/smtrain".to_string()], "/nonexistent/smtrain"),
    ] {
        let job = Job::new();
        let mut cmd = command(&job, None);
        for a in &args {
            cmd.args(["--channel", a]);
        }
        let r = run(&mut cmd);
        assert_eq!(r.code(), Some(1), "{args:?}: {}", r.stderr());
        let failure = job.failure().unwrap();
        assert!(failure.contains(needle), "{args:?}: {failure}");
    }
    // Malformed flags are refused by the parser, before anything runs, as the user's error.
    let job = Job::new();
    let r = run(command(&job, None).args(["--channel", "train"]));
    assert_eq!(r.code(), Some(1));
    assert!(r.stderr().contains("expected NAME=URI"), "{}", r.stderr());
    let r = run(command(&job, None).args(["--output", "/local/dir"]));
    assert!(r.stderr().contains("not an S3 URI"), "{}", r.stderr());
}

/// The image run as a laptop or CI user runs it: no mounts, the bundled Fashion-MNIST, and
/// `--output` to an S3 prefix (the server on this machine's loopback, reached through the host
/// network): `model.tar.gz` and `output.tar.gz` land under `<prefix>/<job>/output/`.
#[test]
#[ignore = "needs a Docker engine and the smtrain image: `make test` builds it and runs these"]
fn docker_image_without_mounts_uploads_its_model_to_the_output_prefix() {
    let image = crate::docker::image();
    let s = Server::start();
    s.create_bucket("artifacts");
    let mut cmd = Command::new("docker");
    cmd.args(["run", "--rm", "--network", "host", "--env", "OMP_NUM_THREADS=1"])
        .args(["--env", "TRAINING_JOB_NAME=docker-job"]);
    for (k, v) in s.env() {
        cmd.args(["--env", &format!("{k}={v}")]);
    }
    let out = cmd.args([&image, "train", "--output", "s3://artifacts/runs/"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        s.keys("artifacts", ""),
        ["runs/docker-job/output/model.tar.gz", "runs/docker-job/output/output.tar.gz"]
    );
    let back = tempfile::tempdir().unwrap();
    unpack(&s.get("artifacts", "runs/docker-job/output/model.tar.gz").unwrap(), back.path());
    let (_, card) = load_model_dir(back.path(), Device::Cpu).unwrap();
    assert_eq!(card.data["train"].samples, 60_000);
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.path().join("metrics.json")).unwrap()).unwrap();
    let acc = metrics["test"]["accuracy"].as_f64().unwrap();
    assert!(acc > 0.85, "test accuracy {acc}");
}
