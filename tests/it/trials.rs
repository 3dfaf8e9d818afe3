//! Jobs that share one checkpoint folder, as the trials of a SageMaker tuning job share one
//! `CheckpointConfig.S3Uri`: each keeps its own checkpoints under its job name, never fails on
//! another's and never deletes them; a spot restart (same name) resumes its own.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::util::{names_in, Job, Run};

/// A small job whose checkpoint folder (`checkpointconfig.json`'s `LocalPath`) is `shared`.
fn trial(shared: &Path, hp: &[(&str, &str)]) -> Job {
    let job = Job::small(hp);
    let config = serde_json::json!({ "LocalPath": shared });
    job.write("input/config/checkpointconfig.json", serde_json::to_vec(&config).unwrap());
    job
}

fn run_as(job: &Job, name: &str) -> Run {
    Run(job.command().env("TRAINING_JOB_NAME", name).output().unwrap())
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(snapshot(&path));
        } else {
            files.insert(path.clone(), std::fs::read(&path).unwrap());
        }
    }
    files
}

fn checkpoints(dir: &Path) -> Vec<String> {
    names_in(dir).into_iter().filter(|n| n.ends_with(".safetensors")).collect()
}

const FIRST: &[(&str, &str)] =
    &[("epochs", "3"), ("learning_rate", "0.001"), ("checkpoint_keep", "1")];
const SECOND: &[(&str, &str)] =
    &[("epochs", "3"), ("learning_rate", "0.002"), ("checkpoint_keep", "1")];

#[test]
fn trials_with_other_hyperparameters_share_a_checkpoint_folder_one_after_the_other() {
    let shared = tempfile::tempdir().unwrap();
    let first = trial(shared.path(), FIRST);
    run_as(&first, "tuning-001-aaaa").ok();
    let firsts = shared.path().join("tuning-001-aaaa");
    assert_eq!(checkpoints(&firsts), ["checkpoint-000000000096.safetensors"]);
    let left = snapshot(shared.path());

    let second = trial(shared.path(), SECOND);
    let run = run_as(&second, "tuning-002-bbbb").ok();
    assert!(!run.stderr().contains("resuming from checkpoint"), "{}", run.stderr());
    assert!(run.stdout().contains("metrics: epoch=1 "), "{}", run.stdout());
    let seconds = shared.path().join("tuning-002-bbbb");
    assert_eq!(checkpoints(&seconds), ["checkpoint-000000000096.safetensors"]);
    let now = snapshot(shared.path());
    for (path, bytes) in &left {
        assert_eq!(now.get(path), Some(bytes), "{} was changed or removed", path.display());
    }
}

#[test]
fn trials_with_other_hyperparameters_share_a_checkpoint_folder_side_by_side() {
    let shared = tempfile::tempdir().unwrap();
    let jobs = [trial(shared.path(), FIRST), trial(shared.path(), SECOND)];
    let names = ["tuning-001-aaaa", "tuning-002-bbbb"];
    let children: Vec<_> = jobs
        .iter()
        .zip(names)
        .map(|(job, name)| {
            let mut cmd = job.command();
            cmd.env("TRAINING_JOB_NAME", name).stdout(Stdio::null()).stderr(Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    for (child, job) in children.into_iter().zip(&jobs) {
        let out = child.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{:?}: {log}", job.failure());
        assert!(!log.contains("resuming from checkpoint"), "{log}");
    }
    for name in names {
        let own = checkpoints(&shared.path().join(name));
        assert_eq!(own, ["checkpoint-000000000096.safetensors"], "{name}");
    }
    assert!(checkpoints(shared.path()).is_empty());
}

/// A spot interruption: the job stopped mid-training, then started again under the same name,
/// resumes its own checkpoint, beside another trial's; a new job with the same settings
/// continues from it too, when it is the only one that fits.
#[test]
fn a_restarted_trial_resumes_its_own_checkpoint_beside_another_trials() {
    let shared = tempfile::tempdir().unwrap();
    run_as(&trial(shared.path(), SECOND), "tuning-002-bbbb").ok();
    let others = snapshot(&shared.path().join("tuning-002-bbbb"));

    let hp = [("epochs", "3"), ("hidden_units", "1024,1024"), ("batch_size", "8"), ("seed", "5")];
    let job = trial(shared.path(), &hp);
    let mut cmd = job.command();
    cmd.env("TRAINING_JOB_NAME", "tuning-003-cccc").stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("metrics: epoch=1 "), "{line}");
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(143), "{:?}", job.failure());
    let own = shared.path().join("tuning-003-cccc");
    assert!(!checkpoints(&own).is_empty());

    let run = run_as(&job, "tuning-003-cccc").ok();
    assert!(run.stderr().contains("resuming from checkpoint"), "{}", run.stderr());
    assert!(!run.stdout().contains("metrics: epoch=1 "), "{}", run.stdout());
    assert_eq!(snapshot(&shared.path().join("tuning-002-bbbb")), others);

    // Another job with the same settings and data: the stopped one's folder is the only one
    // it can continue, so it does, and leaves that folder as it was.
    let finished = snapshot(&own);
    let again = trial(shared.path(), &hp);
    let run = run_as(&again, "rerun-004-dddd").ok();
    assert!(run.stderr().contains("an earlier job's"), "{}", run.stderr());
    assert!(!run.stdout().contains("metrics: epoch="), "{}", run.stdout());
    assert_eq!(snapshot(&own), finished);
    let weights = |j: &Job| std::fs::read(j.path("model/model.safetensors")).unwrap();
    assert_eq!(weights(&again), weights(&job));
}
