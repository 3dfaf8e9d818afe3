//! SIGTERM after the last training step: validation scoring, test scoring, the final
//! checkpoint, the model and the pictures each see the stop, and the job exits 143 within
//! seconds, leaving a resumable checkpoint and nothing in `model/` or `output/data/`.

use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::util::{names_in, Job, Started};

/// How long a stopped job may take to exit: SageMaker sends SIGKILL after its grace period,
/// and nothing after the last step may hold the stop up for long.
const PROMPT: Duration = Duration::from_secs(2);

/// The fixture's train set, decompressed: (images file, labels file).
fn fixture_train() -> (Vec<u8>, Vec<u8>) {
    let read = |name: &str| {
        let file = std::fs::File::open(crate::util::fixture("train").join(name)).unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(file), &mut out).unwrap();
        out
    };
    (read("images-idx3-ubyte.gz"), read("labels-idx1-ubyte.gz"))
}

/// A channel of `n` images: the fixture's train images over and over, as plain IDX files.
pub(crate) fn channel(job: &Job, name: &str, n: usize) {
    let (images, labels) = fixture_train();
    let (images, labels) = (&images[16..], &labels[8..]);
    let mut img = [0x0803u32, n as u32, 28, 28].iter().flat_map(|v| v.to_be_bytes()).collect();
    let mut lab = [0x0801u32, n as u32].iter().flat_map(|v| v.to_be_bytes()).collect();
    for i in 0..n {
        let j = i % labels.len();
        Vec::extend_from_slice(&mut img, &images[j * 784..(j + 1) * 784]);
        Vec::push(&mut lab, labels[j]);
    }
    job.write(&format!("input/data/{name}/images"), img);
    job.write(&format!("input/data/{name}/labels"), lab);
}

/// A wide network and 60,000 images to score after training: about 3 seconds of work per pass
/// over them on one thread, longer than a stop may take.
const WIDE: &[(&str, &str)] = &[("epochs", "1"), ("hidden_units", "1024,1024"), ("seed", "3")];
const SCORED: usize = 60_000;

/// A job whose work after training is slow: the fixture's train set and a large test set.
fn slow_tail(hp: &[(&str, &str)]) -> Job {
    let job = Job::new();
    job.channels(&["train", "test"]).data("train", "train").hyperparameters(hp);
    channel(&job, "test", SCORED);
    job
}

/// Starts the job, sends SIGTERM once a log line contains `needle`, and waits: the exit
/// status, the time from the signal to the exit, and the whole log.
fn stop_at(job: &Job, needle: &str, delay: Duration) -> (ExitStatus, Duration, String) {
    let started = Started::until(&mut job.command(), needle);
    std::thread::sleep(delay);
    let sent = Instant::now();
    // SAFETY: signals our own child.
    unsafe { libc::kill(started.child.id() as i32, libc::SIGTERM) };
    let (status, log) = started.finish();
    (status, sent.elapsed(), log)
}

/// What every stop must leave: exit 143 within [`PROMPT`], a `Stopped:` line naming
/// `stage`, no success and no result files. Returns the failure line.
fn stopped_promptly(job: &Job, run: (ExitStatus, Duration, String), stage: &str) -> String {
    let (status, took, log) = run;
    let failure = job.failure().unwrap_or_else(|| panic!("no failure file; log:\n{log}"));
    assert_eq!(status.code(), Some(143), "{failure}\n{log}");
    assert!(took < PROMPT, "took {took:?} to stop; log:\n{log}");
    assert!(failure.starts_with("Stopped: stopped by SIGTERM"), "{failure}");
    assert!(failure.contains(stage), "the reason lacks {stage:?}: {failure}");
    assert!(!job.succeeded());
    assert!(job.model_files().is_empty(), "{:?}", job.model_files());
    assert!(names_in(&job.path("output/data")).is_empty(), "{log}");
    failure
}

fn checkpoints(job: &Job) -> Vec<String> {
    names_in(&job.path("checkpoints")).into_iter().filter(|n| n.ends_with(".safetensors")).collect()
}

/// Runs the job again: it resumes from the finished training's checkpoint, trains no epoch
/// and writes the model.
fn resumes_without_training(job: &Job) {
    let run = job.run().ok();
    assert!(run.stderr().contains("resuming from checkpoint"), "{}", run.stderr());
    assert!(!run.stdout().contains("metrics: epoch="), "{}", run.stdout());
    assert!(run.stdout().contains("metrics: test_loss="), "{}", run.stdout());
    assert!(job.succeeded());
}

#[test]
fn a_stop_while_the_test_set_is_scored_ends_the_job_at_once() {
    let job = slow_tail(WIDE);
    let run = stop_at(&job, "epoch done", Duration::ZERO);
    let failure = stopped_promptly(&job, run, "after training finished");
    assert!(failure.contains("checkpoint") && failure.contains("resumes"), "{failure}");
    assert_eq!(checkpoints(&job), ["checkpoint-000000000032.safetensors"]);
    resumes_without_training(&job);
}

#[test]
fn a_stop_while_the_pictures_are_drawn_leaves_no_model() {
    let job = slow_tail(WIDE);
    let run = stop_at(&job, "model written", Duration::ZERO);
    stopped_promptly(&job, run, "while drawing output/data");
    assert_eq!(checkpoints(&job), ["checkpoint-000000000032.safetensors"]);
    resumes_without_training(&job);
}

/// `checkpoint_interval=0` keeps no checkpoint of a finished run; a stop after training still
/// leaves one to resume from.
#[test]
fn a_stop_after_training_writes_the_checkpoint_a_run_without_interval_kept_back() {
    let job = slow_tail(&[WIDE, &[("checkpoint_interval", "0")]].concat());
    let run = stop_at(&job, "epoch done", Duration::ZERO);
    stopped_promptly(&job, run, "after training finished");
    assert_eq!(checkpoints(&job), ["checkpoint-000000000032.safetensors"]);
    resumes_without_training(&job);
}

/// 64 training images (two steps) and a large validation set: a stop a second after the data
/// is loaded lands in the validation of epoch 1, after its last step. The resumed run ends with
/// the weights of an uninterrupted one (which the validation set does not change).
#[test]
fn a_stop_while_the_validation_set_is_scored_checkpoints_after_the_last_step() {
    let hp = [WIDE, &[("batch_size", "32")]].concat();
    let make = |validation: usize| {
        let job = Job::new();
        job.channels(&["train", "validation"]).hyperparameters(&hp);
        channel(&job, "train", 64);
        channel(&job, "validation", validation);
        job
    };
    let reference = make(200);
    reference.run().ok();
    let job = make(SCORED);
    let run = stop_at(&job, "data loaded", Duration::from_millis(1000));
    let failure = stopped_promptly(&job, run, "at epoch 1 step 2;");
    assert!(failure.contains("resumes"), "{failure}");
    assert_eq!(checkpoints(&job), ["checkpoint-000000000002.safetensors"]);
    let run = job.run().ok();
    assert!(run.stderr().contains("resuming from checkpoint"), "{}", run.stderr());
    let weights = |j: &Job| std::fs::read(j.path("model/model.safetensors")).unwrap();
    assert_eq!(weights(&job), weights(&reference));
    let epoch = |j: &Job| j.json("model/metrics.json")["epochs"][0].clone();
    assert_eq!(epoch(&job)["train_loss"], epoch(&reference)["train_loss"]);
    assert!(epoch(&job)["validation_loss"].is_number(), "{}", epoch(&job));
}

/// The image's entry point: blocks SIGTERM, SIGINT and SIGHUP, then execs what it is given.
const INIT: &str = env!("CARGO_BIN_EXE_smtrain-init");

/// A job that takes seconds, so that a stop in its first second cannot come after its end.
fn long_job() -> Job {
    Job::small(&[("epochs", "2"), ("hidden_units", "1024,1024"), ("batch_size", "8")])
}

/// Sends SIGTERM `ms` after spawning `cmd` (a [`long_job`]) and checks that the stop was
/// kept: exit 143, a `Stopped:` line, no success and no model.
fn stopped_at_start(job: &Job, cmd: &mut std::process::Command, ms: u64) {
    stopped_at_start_by(job, cmd, ms, libc::SIGTERM, "SIGTERM");
}

/// Like [`stopped_at_start`], with signal `sig`, whose name the `Stopped:` line must give.
fn stopped_at_start_by(job: &Job, cmd: &mut Command, ms: u64, sig: i32, name: &str) {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    let sent = Instant::now();
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(143), "{name} {ms} ms after the start: {status:?}");
    let failure = job.failure().unwrap_or_else(|| panic!("{name} {ms} ms: no failure file"));
    let expected = format!("Stopped: stopped by {name}");
    assert!(failure.starts_with(&expected), "{ms} ms: {failure}");
    assert!(took < PROMPT, "{name} {ms} ms: took {took:?} to stop");
    assert!(!job.succeeded(), "{ms} ms");
    assert!(job.model_files().is_empty(), "{ms} ms: {:?}", job.model_files());
}

/// `cmd` run through the image's entry point.
fn through_init(cmd: &Command) -> Command {
    let mut init = Command::new(INIT);
    init.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => init.env(k, v),
            None => init.env_remove(k),
        };
    }
    init
}

/// Through the image's entry point, a stop at any moment of the start is kept: the kernel's
/// exec and the loader mapping libtorch (the first 20 ms or so), libtorch's initialisers, the
/// job's set-up. (A signal that comes before the entry point itself has run an instruction,
/// on a busy machine a few milliseconds after the spawn, ends any process; it starts at 10 ms.)
#[test]
fn a_stop_at_any_moment_of_the_start_is_kept() {
    for ms in [10, 15, 20, 30, 50, 100, 200, 300, 400, 600, 800] {
        let job = long_job();
        stopped_at_start(&job, &mut through_init(&job.command()), ms);
    }
}

/// The binary alone keeps a stop from its own first instruction, before libtorch's
/// initialisers run: from the moment the loader has mapped the libraries (about 20 ms here).
#[test]
fn a_stop_while_libtorch_initialises_is_kept_without_the_entry_point() {
    for ms in [50, 100, 150, 200, 300, 400, 600] {
        let job = long_job();
        stopped_at_start(&job, &mut job.command(), ms);
    }
}

/// SIGHUP (a closed terminal or SSH session) stops the job as SIGTERM does, from the first
/// moments on: exit 143 and a `Stopped:` line naming it, through the entry point or not.
#[test]
fn sighup_at_the_start_stops_the_job() {
    for ms in [10, 100, 400] {
        let job = long_job();
        stopped_at_start_by(&job, &mut through_init(&job.command()), ms, libc::SIGHUP, "SIGHUP");
    }
    for ms in [100, 400] {
        let job = long_job();
        stopped_at_start_by(&job, &mut job.command(), ms, libc::SIGHUP, "SIGHUP");
    }
}

/// SIGHUP mid-training: a checkpoint at the stop, exit 143, and a run again resumes from it.
#[test]
fn sighup_mid_training_checkpoints_like_sigterm() {
    let job = Job::small(&[("epochs", "200")]);
    let started = Started::until(&mut job.command(), "epoch done");
    // SAFETY: signals our own child.
    unsafe { libc::kill(started.child.id() as i32, libc::SIGHUP) };
    let (status, log) = started.finish();
    let failure = job.failure().unwrap_or_else(|| panic!("no failure file; log:\n{log}"));
    assert_eq!(status.code(), Some(143), "{failure}\n{log}");
    assert!(failure.starts_with("Stopped: stopped by SIGHUP at epoch "), "{failure}");
    assert!(failure.contains("checkpoint") && failure.contains("resumes"), "{failure}");
    assert!(!checkpoints(&job).is_empty(), "{log}");
    assert!(job.model_files().is_empty() && !job.succeeded(), "{:?}", job.model_files());
}

/// SIGUSR1 and SIGUSR2 (nothing SageMaker sends; their default action ends a process) neither
/// end nor stop training, while libtorch starts or mid-epoch: each is logged, and the job
/// succeeds.
#[test]
fn sigusr1_and_sigusr2_are_ignored_with_a_log_line() {
    let job = Job::small(&[("epochs", "3")]);
    let mut cmd = job.command();
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    while !log.contains("epoch done") {
        let n = std::io::BufRead::read_line(&mut stderr, &mut log).unwrap();
        assert!(n > 0, "the job ended before its first epoch:\n{log}");
    }
    for sig in [libc::SIGUSR1, libc::SIGUSR2] {
        // SAFETY: signals our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
    }
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(job.succeeded() && job.failure().is_none(), "{log}");
    assert!(log.contains("SIGUSR1 ignored") && log.contains("SIGUSR2 ignored"), "{log}");
}
