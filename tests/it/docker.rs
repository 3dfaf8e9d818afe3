//! The image through the real Docker engine, run the ways SageMaker and users run it: a mounted
//! `/opt/ml` tree in File-mode layout, no mounts at all, `docker stop`, and two hosts on a private
//! network.
//!
//! The image comes from `SMTRAIN_IMAGE`, which `make test` sets after building it from
//! `docker/Dockerfile`. Without it these tests fail, unless `SMTRAIN_TESTS_ALLOW_SKIP=1` lets
//! them say SKIPPED; a missing engine or image always fails. Containers run one libtorch thread,
//! as the other tests do.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::util::{table_fixture, Job};

/// The image under test (`SMTRAIN_IMAGE`); a test that needs it cannot pass without it.
pub(crate) fn image() -> String {
    let image =
        std::env::var("SMTRAIN_IMAGE").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
            panic!(
                "SMTRAIN_IMAGE is not set: the Docker tests need the image (`make test` builds it)"
            )
        });
    let engine =
        Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output();
    match engine {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            panic!("the Docker engine is not reachable: {}", String::from_utf8_lossy(&out.stderr))
        }
        Err(e) => panic!("cannot run docker: {e}"),
    }
    let inspect = docker(&["image", "inspect", "--format", "{{.Id}}", &image]);
    assert!(
        inspect.status.success(),
        "image {image} does not exist: build it with `make docker-image`"
    );
    image
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).stdin(Stdio::null()).output().expect("cannot run docker")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A unique name for a container or network of this test run.
fn unique(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("smtrain-it-{what}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A named container, removed (with its anonymous volumes) when dropped, whatever happened.
struct Container(String);

impl Container {
    fn new() -> Self {
        Self(unique("c"))
    }

    fn name(&self) -> &str {
        &self.0
    }

    fn logs(&self) -> (String, String) {
        let out = docker(&["logs", &self.0]);
        (text(&out.stdout), text(&out.stderr))
    }

    fn exit_code(&self) -> i64 {
        let out = docker(&["inspect", "--format", "{{.State.ExitCode}}", &self.0]);
        text(&out.stdout).trim().parse().unwrap()
    }

    /// Waits for the container to exit and returns its exit code.
    fn wait(&self) -> i64 {
        let out = docker(&["wait", &self.0]);
        assert!(out.status.success(), "docker wait: {}", text(&out.stderr));
        text(&out.stdout).trim().parse().unwrap()
    }

    /// Polls the logs until `needle` appears (or the container exits, or `limit` passes).
    fn wait_for_log(&self, needle: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            let (out, err) = self.logs();
            if out.contains(needle) || err.contains(needle) {
                return;
            }
            let running = docker(&["inspect", "--format", "{{.State.Running}}", &self.0]);
            assert!(
                text(&running.stdout).trim() == "true",
                "container exited before logging {needle:?}:\n{out}\n{err}"
            );
            assert!(start.elapsed() < limit, "no {needle:?} in the logs after {limit:?}:\n{err}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "--force", "--volumes", &self.0]);
    }
}

/// A private Docker network, removed when dropped.
struct Network(String);

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.0]);
    }
}

/// `docker run` arguments that mount a job's tree the way SageMaker lays it out: the input
/// (config files and channels) read-only, as FastFile mode mounts channels, and the model,
/// output and checkpoint folders writable.
fn mounts(job: &Job) -> Vec<String> {
    let mut args = Vec::new();
    for (dir, mode) in [("input", ":ro"), ("model", ""), ("output", ""), ("checkpoints", "")] {
        std::fs::create_dir_all(job.path(dir)).unwrap();
        args.push("--volume".to_string());
        args.push(format!("{}:/opt/ml/{dir}{mode}", job.path(dir).display()));
    }
    args
}

/// Runs the image to completion with `extra` docker options and `args` for the binary.
fn run(image: &str, extra: &[String], args: &[&str]) -> Output {
    let mut cmd = Command::new("docker");
    cmd.args(["run", "--rm", "--env", "OMP_NUM_THREADS=1"]).args(extra).arg(image).args(args);
    cmd.stdin(Stdio::null()).output().expect("cannot run docker")
}

fn resourceconfig(job: &Job, current: &str, hosts: &[&str]) {
    let rc = serde_json::json!({
        "current_host": current,
        "hosts": hosts,
        "network_interface_name": "eth0",
        "current_instance_type": "ml.m5.large",
        "current_group_name": "homogeneousCluster",
    });
    job.write("input/config/resourceconfig.json", serde_json::to_vec(&rc).unwrap());
}

/// Checks that a model folder holds exactly the model's three files; returns its `model.json`.
fn model_folder_card(dir: &Path) -> serde_json::Value {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["metrics.json", "model.json", "model.safetensors"]);
    serde_json::from_slice(&std::fs::read(dir.join("model.json")).unwrap()).unwrap()
}

fn test_accuracy(metrics_json: &Path) -> f64 {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(metrics_json).unwrap()).unwrap();
    m["test"]["accuracy"].as_f64().unwrap()
}

#[test]
#[ignore = "needs a Docker engine and the smtrain image: `make test` builds it and runs these"]
fn image_is_slim_labelled_and_has_an_exec_form_entrypoint() {
    let image = image();
    let inspect = docker(&["image", "inspect", &image]);
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let info = &info[0];
    let size = info["Size"].as_u64().unwrap();
    assert!(size <= 600_000_000, "the cpu image is {size} bytes, over the 600 MB budget");
    let config = &info["Config"];
    let entrypoint = serde_json::json!(["/opt/smtrain/smtrain-init", "/opt/smtrain/train"]);
    assert_eq!(config["Entrypoint"], entrypoint);
    assert_eq!(config["Cmd"], serde_json::json!(["train"]));
    let labels = &config["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    let revision = labels["org.opencontainers.image.revision"].as_str().unwrap();
    assert!(
        revision.len() >= 40 && revision[..40].chars().all(|c| c.is_ascii_hexdigit()),
        "revision label is not a commit: {revision:?}"
    );
    for var in config["Env"].as_array().unwrap() {
        let var = var.as_str().unwrap().to_ascii_uppercase();
        for word in ["SECRET", "TOKEN", "PASSWORD", "AWS_", "KEY="] {
            assert!(!var.contains(word), "environment variable {var} in the image");
        }
    }

    // Inside: the binary and exactly the CPU libraries; every library resolves; the entry point
    // is linked statically; no toolchain, package caches or credentials.
    let script = r#"
        set -u
        ls /opt/smtrain/lib
        echo ---
        ldd /opt/smtrain/train /opt/smtrain/lib/*.so* | grep -c 'not found'
        ldd /opt/smtrain/smtrain-init 2>&1
        echo ---
        for t in cargo rustc rustup gcc cc g++ c++ ld make python3 pip pip3 strip; do
          command -v $t
        done
        ls -d /root/.cargo /root/.rustup /usr/local/cargo /root/.cache /root/.aws \
              /var/cache/apt/*.bin /var/lib/apt/lists/*_Packages /opt/torch* /src /out 2>/dev/null
        echo ---
        readlink -f /usr/local/bin/train
    "#;
    let out = run(&image, &["--entrypoint".into(), "/bin/sh".into()], &["-c", script]);
    let out = text(&out.stdout);
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts.len(), 4, "{out}");
    let mut libs: Vec<&str> = parts[0].lines().collect();
    libs.sort_unstable();
    assert_eq!(
        libs,
        ["libc10.so", "libcudart.so.13", "libcupti.so.13", "libgomp.so.1", "libtorch_cpu.so"],
        "the cpu image must carry exactly libtorch's CPU run set (no libtorch_cuda.so)"
    );
    let mut ldd = parts[1].lines();
    assert_eq!(ldd.next(), Some("0"), "unresolved libraries in the image");
    // The entry point is static: nothing is loaded before it blocks the stop signals.
    let init = ldd.next().unwrap_or_default();
    assert!(init.contains("not a dynamic executable"), "smtrain-init: {init}");
    assert_eq!(
        parts[2].trim(),
        "",
        "build tools, caches or credentials in the image:\n{}",
        parts[2]
    );
    assert_eq!(parts[3].trim(), "/opt/smtrain/train");
}

#[test]
#[ignore = "needs a Docker engine and the smtrain image: `make test` builds it and runs these"]
fn file_mode_job_writes_the_model_to_the_mounted_folder_like_the_host_binary() {
    let image = image();
    let hp = [("epochs", "1"), ("threads", "1"), ("seed", "5")];
    let job = Job::small(&hp);
    resourceconfig(&job, "algo-1", &["algo-1"]);
    let start = Instant::now();
    let out = run(&image, &mounts(&job), &["train"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    eprintln!("file-mode job in the container: {:.1} s", start.elapsed().as_secs_f64());

    assert_eq!(job.model_files(), ["metrics.json", "model.json", "model.safetensors"]);
    assert!(job.failure().is_none());
    assert!(job.succeeded());
    assert!(stdout.contains("metrics: epoch=1 "), "{stdout}");
    assert!(stdout.contains("metrics: test_loss="), "{stdout}");
    let card = job.json("model/model.json");
    assert_eq!(card["data"]["train"]["samples"], 1000);
    assert!(card["data"]["train"]["source"]
        .as_str()
        .unwrap()
        .starts_with("/opt/ml/input/data/train/"));
    assert_eq!(card["data"]["test"]["samples"], 200);

    // The same job through the host binary gives bit-identical weights: the image runs the
    // same program on the same libtorch.
    let host = Job::small(&hp);
    host.run().ok();
    let weights = |j: &Job| std::fs::read(j.path("model/model.safetensors")).unwrap();
    assert!(weights(&job) == weights(&host), "the container's weights differ from the host's");
}

#[test]
#[ignore = "needs a Docker engine and the smtrain image: `make test` builds it and runs these"]
fn a_csv_channel_trains_in_the_container_like_the_host_binary() {
    let image = image();
    let hp = [("epochs", "20"), ("threads", "1"), ("seed", "3")];
    let make = || {
        let job = Job::new();
        job.typed_channels(&[("train", "text/csv"), ("test", "text/csv")]).hyperparameters(&hp);
        job.data_from("train", &table_fixture("wine-csv/train"));
        job.data_from("test", &table_fixture("wine-csv/test"));
        job
    };
    let job = make();
    resourceconfig(&job, "algo-1", &["algo-1"]);
    let out = run(&image, &mounts(&job), &["train"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(job.succeeded());
    let card = job.json("model/model.json");
    assert_eq!(card["input"]["kind"], "table");
    assert_eq!(card["input"]["shape"], serde_json::json!([13]));
    assert!(test_accuracy(&job.path("model/metrics.json")) >= 0.9);
    let host = make();
    host.run().ok();
    let weights = |j: &Job| std::fs::read(j.path("model/model.safetensors")).unwrap();
    assert!(weights(&job) == weights(&host), "the container's weights differ from the host's");
}

#[test]
#[ignore = "needs a Docker engine and the smtrain image: `make test` builds it and runs these"]
fn a_picture_folder_channel_trains_in_the_container() {
    let image = image();
    let job = Job::new();
    job.typed_channels(&[("train", "application/x-image")])
        .hyperparameters(&[("epochs", "1"), ("threads", "1")]);
    let ds = smtrain::data::load_channel(
        "train",
        &crate::util::fixture("train"),
        smtrain::data::Format::Idx,
    )
    .unwrap();
    let (pixels, _) = ds.images().unwrap();
    for (i, (img, l)) in pixels.chunks_exact(784).zip(&ds.labels).take(200).enumerate() {
        let path = job.path(&format!("input/data/train/class-{l}/{i}.png"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        crate::predict::save_png(&path, img, 28, 28);
    }
    resourceconfig(&job, "algo-1", &["algo-1"]);
    let out = run(&image, &mounts(&job), &["train"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let card = job.json("model/model.json");
    assert_eq!(card["class_names"][0], "class-0");
    assert_eq!(card["data"]["train"]["samples"], 200);
}

#[test]
#[ignore = "needs a Docker engine and the smtrain image: `make test` builds it and runs these"]
fn bad_hyperparameters_leave_the_reason_in_the_failure_file() {
    let image = image();
    let job = Job::small(&[("epochs", "1"), ("threads", "1"), ("learning_rat", "0.01")]);
    let out = run(&image, &mounts(&job), &["train"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let failure = job.failure().expect("no failure file");
    assert!(failure.starts_with("ClientError: "), "{failure}");
    assert!(failure.contains("learning_rat"), "{failure}");
    assert!(failure.contains("learning_rate"), "no hint at the intended key: {failure}");
    assert!(job.model_files().is_empty(), "a failed job wrote {:?}", job.model_files());
    assert!(!job.succeeded());
}

#[test]
#[ignore = "needs a Docker engine and the smtrain image: `make test` builds it and runs these"]
fn no_argument_trains_and_help_explains_the_contract() {
    let image = image();
    let help = run(&image, &[], &["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let help = text(&help.stdout);
    for needle in [
        "input/config/hyperparameters.json",
        "output/failure",
        "model.safetensors",
        "learning_rate",
    ] {
        assert!(help.contains(needle), "--help does not mention {needle}:\n{help}");
    }

    // SageMaker SDK v3 local mode runs the image with no argument at all.
    let job = Job::small(&[("epochs", "1"), ("threads", "1")]);
    let out = run(&image, &mounts(&job), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(job.model_files(), ["metrics.json", "model.json", "model.safetensors"]);
}

#[test]
#[ignore = "needs a Docker engine and the smtrain image: `make test` builds it and runs these"]
fn without_mounts_trains_the_notebook_model_on_the_bundled_fashion_mnist() {
    let image = image();
    let c = Container::new();
    let start = Instant::now();
    let out = Command::new("docker")
        .args(["run", "--name", c.name(), "--env", "OMP_NUM_THREADS=1", &image, "train"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    eprintln!(
        "5 epochs on the bundled data in the container: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(stderr.contains("training on the installed Fashion-MNIST"), "{stderr}");
    assert_eq!(stdout.matches("metrics: epoch=").count(), 5, "{stdout}");

    // The model is inside the container: copy it out.
    let dir = tempfile::tempdir().unwrap();
    let cp = docker(&["cp", &format!("{}:/opt/ml/model", c.name()), dir.path().to_str().unwrap()]);
    assert!(cp.status.success(), "{}", text(&cp.stderr));
    let model = dir.path().join("model");
    let card = model_folder_card(&model);
    assert_eq!(card["data"]["train"]["samples"], 60000);
    assert_eq!(card["data"]["test"]["samples"], 10000);
    assert_eq!(card["hyperparameters"]["epochs"], 5);
    // The notebook reaches 0.86-0.88 after 5 epochs.
    let acc = test_accuracy(&model.join("metrics.json"));
    assert!(acc > 0.85, "test accuracy {acc}");
    assert!(stdout.contains(&format!("test_accuracy={acc:.6}")), "{stdout}");
}

/// Big enough that an epoch takes a noticeable time, so the signal lands mid-training; the
/// same settings as the host binary's checkpoint tests.
const STOP_HP: &[(&str, &str)] =
    &[("epochs", "4"), ("hidden_units", "1024,1024"), ("batch_size", "8"), ("seed", "5")];

/// Starts a job on the fixture, waits until its first epoch is done, sends `signal`, and checks
/// the contract: exit 143 well within the grace period, a checkpoint written, and the failure
/// file saying where training stood. Returns the job, so a caller can resume it.
fn stop_during_training(image: &str, signal: &str) -> Job {
    let job = Job::small(STOP_HP);
    let c = Container::new();
    let mut args = vec!["run", "--detach", "--name", c.name(), "--env", "OMP_NUM_THREADS=1"];
    let mounts = mounts(&job);
    args.extend(mounts.iter().map(String::as_str));
    args.extend([image, "train"]);
    let started = docker(&args);
    assert!(started.status.success(), "{}", text(&started.stderr));
    c.wait_for_log("metrics: epoch=1 ", Duration::from_secs(120));

    let start = Instant::now();
    let sent = if signal == "SIGTERM" {
        // What StopTrainingJob does: SIGTERM, and SIGKILL only after the grace period.
        docker(&["stop", "--time", "120", c.name()])
    } else {
        docker(&["kill", "--signal", signal, c.name()])
    };
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let code = c.wait();
    let took = start.elapsed();
    eprintln!("{signal}: the container exited {code} after {:.2} s", took.as_secs_f64());
    let (stdout, stderr) = c.logs();
    assert_eq!(code, 143, "{stderr}");
    assert_eq!(c.exit_code(), 143);
    assert!(took < Duration::from_secs(10), "{signal} took {took:?} to stop the job");
    assert!(!stdout.contains("test_accuracy="), "the job finished before the signal: {stdout}");
    assert!(!job.succeeded());
    let failure = job.failure().expect("failure file");
    assert!(failure.starts_with(&format!("Stopped: stopped by {signal} at epoch ")), "{failure}");
    let checkpoints: Vec<_> = std::fs::read_dir(job.path("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    assert!(!checkpoints.is_empty(), "no checkpoint after {signal}");
    job
}

/// `docker stop` at any moment after `docker run` returns, the first included: the binary is
/// PID 1, and a stop before its handler exists (while the loader maps libtorch and libtorch
/// initialises) must not be dropped. Exit 143, a `Stopped:` line, nothing that looks complete.
#[test]
#[ignore = "needs a Docker engine and the smtrain image: `make test` builds it and runs these"]
fn docker_stop_in_the_first_second_is_never_lost() {
    let image = image();
    for ms in [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000] {
        let job = Job::small(STOP_HP);
        let c = Container::new();
        let mut args = vec!["run", "--detach", "--name", c.name(), "--env", "OMP_NUM_THREADS=1"];
        let mounts = mounts(&job);
        args.extend(mounts.iter().map(String::as_str));
        args.extend([image.as_str(), "train"]);
        let started = docker(&args);
        assert!(started.status.success(), "{}", text(&started.stderr));
        std::thread::sleep(Duration::from_millis(ms));
        let start = Instant::now();
        let sent = docker(&["stop", "--time", "60", c.name()]);
        assert!(sent.status.success(), "{}", text(&sent.stderr));
        let code = c.wait();
        let took = start.elapsed();
        let (_, stderr) = c.logs();
        assert_eq!(code, 143, "docker stop {ms} ms after the start: exit {code}\n{stderr}");
        assert!(took < Duration::from_secs(10), "{ms} ms: took {took:?} to stop");
        let failure = job.failure().unwrap_or_else(|| panic!("{ms} ms: no failure file"));
        assert!(failure.starts_with("Stopped: stopped by SIGTERM"), "{ms} ms: {failure}");
        assert!(!job.succeeded(), "{ms} ms");
        assert!(job.model_files().is_empty(), "{ms} ms: {:?}", job.model_files());
    }
}

/// `docker run --pids-limit 4`: too few for the threads that load the channels. A reason that
/// names the limit, not a panic.
#[test]
#[ignore = "needs a Docker engine and the smtrain image: `make test` builds it and runs these"]
fn a_pids_limit_too_low_for_the_loaders_is_named() {
    let image = image();
    let job = Job::small(&[("epochs", "1")]);
    let mut extra = mounts(&job);
    extra.extend(["--pids-limit".to_string(), "4".to_string()]);
    let out = run(&image, &extra, &["train"]);
    let failure = job.failure().unwrap_or_else(|| panic!("no failure: {}", text(&out.stderr)));
    assert_eq!(out.status.code(), Some(2), "{failure}");
    assert!(failure.starts_with("InternalError: cannot start a thread to "), "{failure}");
    assert!(failure.contains("--pids-limit") && !failure.contains("panic"), "{failure}");
    assert!(!job.succeeded());
}

/// `docker stop` mid-training, then the same job run again (as SageMaker restarts a spot job with
/// /opt/ml/checkpoints restored): it resumes and ends bit-identical to an uninterrupted run.
#[test]
#[ignore = "needs a Docker engine and the smtrain image: `make test` builds it and runs these"]
fn docker_stop_checkpoints_and_a_rerun_resumes_bit_identically() {
    let image = image();
    let job = stop_during_training(&image, "SIGTERM");
    let out = run(&image, &mounts(&job), &["train"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("resuming from checkpoint"), "{}", text(&out.stderr));
    let reference = Job::small(STOP_HP);
    reference.run().ok();
    let weights = |j: &Job| std::fs::read(j.path("model/model.safetensors")).unwrap();
    assert_eq!(weights(&job), weights(&reference));
}

#[test]
#[ignore = "needs a Docker engine and the smtrain image: `make test` builds it and runs these"]
fn sigint_ends_training_likewise() {
    let image = image();
    stop_during_training(&image, "SIGINT");
}

/// Containers `algo-1` and `algo-2` on a private network, each with its own input, output and
/// resourceconfig.json, started detached: one multi-host job as SageMaker runs it.
struct Cluster {
    jobs: Vec<Job>,
    containers: Vec<Container>,
    net: Network,
}

const HOSTS: [&str; 2] = ["algo-1", "algo-2"];

impl Cluster {
    /// `model` is mounted as every host's /opt/ml/model (as SageMaker merges the hosts' model
    /// folders into one tar), so a second writer would show.
    fn start(image: &str, hp: &[(&str, &str)], model: &Path) -> Self {
        let net = Network(unique("net"));
        let created = docker(&["network", "create", "--driver", "bridge", "--internal", &net.0]);
        assert!(created.status.success(), "{}", text(&created.stderr));
        let jobs: Vec<Job> = HOSTS
            .iter()
            .map(|host| {
                let job = Job::small(hp);
                resourceconfig(&job, host, &HOSTS);
                job
            })
            .collect();
        let containers: Vec<Container> = HOSTS.iter().map(|_| Container::new()).collect();
        for ((host, job), c) in HOSTS.iter().zip(&jobs).zip(&containers) {
            let input = format!("{}:/opt/ml/input:ro", job.path("input").display());
            std::fs::create_dir_all(job.path("output")).unwrap();
            let output = format!("{}:/opt/ml/output", job.path("output").display());
            let model = format!("{}:/opt/ml/model", model.display());
            let started = docker(&[
                "run",
                "--detach",
                "--name",
                c.name(),
                "--network",
                &net.0,
                "--network-alias",
                host,
                "--hostname",
                host,
                "--env",
                "OMP_NUM_THREADS=1",
                "--volume",
                &input,
                "--volume",
                &output,
                "--volume",
                &model,
                image,
                "train",
            ]);
            assert!(started.status.success(), "{}", text(&started.stderr));
        }
        Self { jobs, containers, net }
    }
}

#[test]
#[ignore = "needs a Docker engine and the smtrain image: `make test` builds it and runs these"]
fn two_hosts_on_a_private_network_train_together() {
    let image = image();
    let model = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&image, &[("epochs", "2"), ("threads", "1")], model.path());
    let codes: Vec<i64> = cluster.containers.iter().map(Container::wait).collect();
    let logs: Vec<(String, String)> = cluster.containers.iter().map(Container::logs).collect();
    assert_eq!(codes, [0, 0], "{logs:?}");

    // Both trained, through the interface resourceconfig.json names, to the same weights;
    // algo-1 printed the metrics and wrote the model, algo-2 neither.
    let digest = |log: &str| {
        let at = log.find("weights_blake3=").unwrap_or_else(|| panic!("no digest:\n{log}"));
        log[at..][..15 + 64].to_string()
    };
    assert_eq!(digest(&logs[0].1), digest(&logs[1].1));
    for (_, err) in &logs {
        assert!(err.contains("all hosts joined"), "{err}");
        assert!(err.contains("epoch=2/2"), "{err}");
    }
    assert!(logs[0].0.contains("metrics: test_loss="), "{:?}", logs[0]);
    assert!(logs[1].1.contains("the first host writes the model"), "{:?}", logs[1]);
    assert!(!logs[1].0.contains("metrics:"), "{:?}", logs[1]);
    for job in &cluster.jobs {
        assert!(job.succeeded());
        assert!(job.failure().is_none());
    }
    let card = model_folder_card(model.path());
    assert_eq!(card["data"]["train"]["samples"], 1000);
}

/// A two-host job in which `upset` is done to algo-2 (given the cluster) after algo-1's first
/// epoch: how long algo-1 took to fail after it, and its failure line. algo-1 must exit 2 with
/// an InternalError that points at the other host, and write no model.
fn first_host_fails_after(upset: impl Fn(&Cluster), timeout: &str) -> (Duration, String) {
    let image = image();
    let model = tempfile::tempdir().unwrap();
    let hp = [
        ("epochs", "100000"),
        ("threads", "1"),
        ("checkpoint_interval", "0"),
        ("distributed_timeout", timeout),
    ];
    let cluster = Cluster::start(&image, &hp, model.path());
    cluster.containers[0].wait_for_log("epoch done", Duration::from_secs(120));
    upset(&cluster);
    let at = Instant::now();
    let code = cluster.containers[0].wait();
    let after = at.elapsed();
    assert_eq!(code, 2, "{:?}", cluster.containers[0].logs());
    let failure = cluster.jobs[0].failure().unwrap();
    assert!(failure.starts_with("InternalError:"), "{failure}");
    assert!(failure.contains("another host probably stopped"), "{failure}");
    assert!(!model.path().join("model.safetensors").exists());
    (after, failure)
}

#[test]
#[ignore = "needs a Docker engine and the smtrain image: `make test` builds it and runs these"]
fn killing_one_host_fails_the_other_promptly() {
    let kill = |cluster: &Cluster| {
        let killed = docker(&["kill", cluster.containers[1].name()]);
        assert!(killed.status.success(), "{}", text(&killed.stderr));
    };
    let (after, _) = first_host_fails_after(kill, "300");
    assert!(after < Duration::from_secs(30), "algo-1 noticed after {after:?}");
}

/// A host cut off from the network (its interface gone): no connection closes and nothing more
/// arrives from it, as when a machine is lost or a FIN never comes. The first host fails once
/// the heartbeat has been silent for 15 s, not after the distributed_timeout (600 s here).
#[test]
#[ignore = "needs a Docker engine and the smtrain image: `make test` builds it and runs these"]
fn a_host_cut_off_from_the_network_fails_the_other_within_the_heartbeat_limit() {
    let cut = |cluster: &Cluster| {
        let name = cluster.containers[1].name();
        let cut = docker(&["network", "disconnect", "--force", &cluster.net.0, name]);
        assert!(cut.status.success(), "{}", text(&cut.stderr));
    };
    let (after, failure) = first_host_fails_after(cut, "600");
    crate::util::assert_noticed_by_the_heartbeat(after, &failure, "algo-2 (rank 1)");
}

/// `IMAGE serve` as SageMaker hosting runs it: the model mounted at /opt/ml/model, port 8080
/// published, /ping and /invocations from outside the container, then `docker stop`.
#[test]
#[ignore = "needs a Docker engine and the smtrain image: `make test` builds it and runs these"]
fn serve_answers_from_outside_the_container_and_stops_cleanly() {
    let image = image();
    let model = crate::serve::model_dir_of_trained();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let c = Container::new();
    let publish = format!("127.0.0.1:{port}:8080");
    let mount = format!("{}:/opt/ml/model:ro", model.display());
    let started = docker(&[
        "run",
        "--detach",
        "--name",
        c.name(),
        "-p",
        &publish,
        "-v",
        &mount,
        "--env",
        "OMP_NUM_THREADS=1",
        &image,
        "serve",
    ]);
    assert!(started.status.success(), "{}", text(&started.stderr));
    c.wait_for_log("model ready", Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::serve::try_ping(port) != Some(200) {
        assert!(Instant::now() < deadline, "no 200 on /ping through the port:\n{}", c.logs().1);
        std::thread::sleep(Duration::from_millis(50));
    }
    let pixels: Vec<String> = (0..784).map(|i| (i % 256).to_string()).collect();
    let (status, body) = crate::serve::request(
        port,
        "POST",
        "/invocations",
        &[("Content-Type", "text/csv"), ("Accept", "application/json")],
        pixels.join(",").as_bytes(),
    );
    assert_eq!(status, 200, "{}", text(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["predictions"].as_array().unwrap().len(), 1);
    let stopped = Instant::now();
    assert!(docker(&["stop", "--time", "30", c.name()]).status.success());
    assert_eq!(c.exit_code(), 0, "{}", c.logs().1);
    assert!(stopped.elapsed() < Duration::from_secs(10));
}

/// `docker run --memory 300m` with the notebook's job on the bundled Fashion-MNIST: the memory
/// check counts what the process holds, found from the container's own cgroup, and the job
/// trains. Layers too large for the same limit are refused before they are allocated, every
/// part listed.
#[test]
#[ignore = "needs a Docker engine and the smtrain image: `make test` builds it and runs these"]
fn a_memory_limit_the_job_fits_trains_and_one_it_does_not_is_explained() {
    let image = image();
    let limited = |hp: &[(&str, &str)]| {
        let job = Job::new();
        job.hyperparameters(hp);
        let mut extra = mounts(&job);
        extra.extend(["--memory".to_string(), "300m".to_string()]);
        let out = run(&image, &extra, &["train"]);
        (job, out)
    };
    let (job, out) = limited(&[("epochs", "1")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let check = stderr.lines().find(|l| l.contains("memory check")).unwrap_or_default();
    eprintln!("{check}");
    assert!(check.contains("the cgroup's memory limit of 300.0 MiB"), "{stderr}");
    assert!(job.succeeded());

    let (job, out) = limited(&[("epochs", "1"), ("hidden_units", "4096,4096")]);
    let failure = job.failure().unwrap_or_else(|| panic!("no failure: {}", text(&out.stderr)));
    assert_eq!(out.status.code(), Some(1), "{failure}");
    for part in [
        "611.5 MiB for the weights",
        "MiB of activations",
        "52.9 MiB for the data's copies",
        "32.0 MiB of head-room",
        "the cgroup's memory limit of 300.0 MiB, of which this process uses ",
        ": lower hidden_units, or give the job more memory",
    ] {
        assert!(failure.contains(part), "lacks {part:?}: {failure}");
    }
}
