//! Multi-host training on loopback: each rank is a real `train` process with its own base
//! folder and `resourceconfig.json`, its host named by a loopback address (127.0.0.1,
//! 127.0.0.2, …) so that every rank binds its own address, as hosts do.

use std::net::TcpListener;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::util::Job;

/// A port the kernel just handed out (free for the moment).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn hosts(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("127.0.0.{i}")).collect()
}

/// One rank's job folder, with this rank's `resourceconfig.json`.
fn rank_job(hp: &[(&str, &str)], port: u16, hosts: &[String], rank: usize) -> Job {
    let port = port.to_string();
    let mut hp = hp.to_vec();
    hp.extend([("distributed_port", port.as_str()), ("threads", "1")]);
    let job = Job::small(&hp);
    let rc = serde_json::json!({ "current_host": hosts[rank], "hosts": hosts });
    job.write("input/config/resourceconfig.json", serde_json::to_vec(&rc).unwrap());
    job
}

/// A rank running in the background, its stderr in its job folder (read while it runs).
struct Rank {
    job: Job,
    child: Child,
}

impl Rank {
    fn start(job: Job) -> Self {
        let log = std::fs::File::create(job.path("stderr.log")).unwrap();
        let child = job
            .command()
            .stdout(std::fs::File::create(job.path("stdout.log")).unwrap())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        Self { job, child }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.job.path("stderr.log")).unwrap_or_default()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.job.path("stdout.log")).unwrap_or_default()
    }

    /// The exit code, waiting at most `limit` (then the process is killed and the test fails).
    fn wait(&mut self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if start.elapsed() > limit {
                self.child.kill().ok();
                panic!("rank did not exit within {limit:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the log contains `text`.
    fn wait_for_log(&self, text: &str, limit: Duration) {
        let start = Instant::now();
        while !self.stderr().contains(text) {
            assert!(start.elapsed() < limit, "no {text:?} in the log:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The digest every rank logs of its final weights.
    fn weights_digest(&self) -> String {
        let log = self.stderr();
        let at = log.find("weights_blake3=").unwrap_or_else(|| panic!("no digest:\n{log}"));
        log[at + "weights_blake3=".len()..][..64].to_string()
    }
}

impl Drop for Rank {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Runs `n` ranks of one job to the end; panics unless all succeed.
fn run_ranks(n: usize, hp: &[(&str, &str)]) -> Vec<Rank> {
    let (port, hosts) = (free_port(), hosts(n));
    let mut ranks: Vec<Rank> = (0..n).map(|r| Rank::start(rank_job(hp, port, &hosts, r))).collect();
    for r in &mut ranks {
        let code = r.wait(Duration::from_secs(300));
        assert_eq!(code, 0, "{}", r.stderr());
    }
    ranks
}

/// The trained weights in `model.safetensors`, in the flat order the trainer keeps them.
fn weights(job: &Job) -> Vec<f32> {
    let bytes = std::fs::read(job.path("model/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = Vec::new();
    for i in 0.. {
        let Ok(w) = st.tensor(&format!("layers.{i}.weight")) else { break };
        for t in [w, st.tensor(&format!("layers.{i}.bias")).unwrap()] {
            out.extend(t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())));
        }
    }
    out
}

fn test_accuracy(job: &Job) -> f64 {
    job.json("model/metrics.json")["test"]["accuracy"].as_f64().unwrap()
}

#[test]
fn two_and_three_ranks_end_identical_and_match_one_process() {
    let hp = [("epochs", "2"), ("dropout", "0.2"), ("validation_split", "0.1")];
    let single = Job::small(&[hp.as_slice(), &[("threads", "1")]].concat());
    single.run().ok();
    let reference = weights(&single);
    for n in [2, 3] {
        let ranks = run_ranks(n, &hp);
        // Every rank has rank 0's exact weights, and rank 0 wrote them.
        let first = &ranks[0];
        let digest = blake3::hash(bytemuck_f32(&weights(&first.job))).to_hex().to_string();
        for r in &ranks {
            assert_eq!(r.weights_digest(), digest, "{n} ranks");
        }
        // Only the first host writes the model, prints metric lines and reports success with
        // a model; the others succeed without one.
        assert!(first.job.model_files().contains(&"model.safetensors".to_string()));
        assert!(first.stdout().contains("metrics: test_loss="), "{}", first.stdout());
        for r in &ranks[1..] {
            assert!(r.job.model_files().is_empty(), "{:?}", r.job.model_files());
            assert!(!r.stdout().contains("metrics:"), "{}", r.stdout());
            assert!(r.job.succeeded());
        }
        // The same training as one process at the same global batch, up to float rounding
        // (the ranks sum partial gradients in another order).
        let got = weights(&first.job);
        let diff = got.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-4, "{n} ranks: weights differ from one process by {diff}");
        let (a, b) = (test_accuracy(&first.job), test_accuracy(&single));
        eprintln!("{n} ranks: largest weight difference {diff:e}; test accuracy {a} vs {b}");
        assert!((a - b).abs() <= 0.01, "{n} ranks: test accuracy {a}, one process {b}");
        // Metrics are global: the epochs saw every training sample.
        let m = first.job.json("model/metrics.json");
        let one = single.json("model/metrics.json");
        for (e, o) in m["epochs"].as_array().unwrap().iter().zip(one["epochs"].as_array().unwrap())
        {
            let (x, y) = (e["train_loss"].as_f64().unwrap(), o["train_loss"].as_f64().unwrap());
            assert!((x - y).abs() < 1e-3, "{n} ranks: train loss {x}, one process {y}");
        }
    }
}

fn bytemuck_f32(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns; the length is scaled to bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 4) }
}

#[test]
fn a_host_that_never_comes_is_named() {
    let (port, hosts) = (free_port(), hosts(2));
    let hp = [("distributed_timeout", "3")];
    // The master alone: the second host never registers.
    let mut master = Rank::start(rank_job(&hp, port, &hosts, 0));
    assert_eq!(master.wait(Duration::from_secs(30)), 1, "{}", master.stderr());
    let failure = master.job.failure().unwrap();
    assert!(failure.contains("host 127.0.0.2 (rank 1) did not join"), "{failure}");
    assert!(failure.contains("distributed_timeout"), "{failure}");
    assert_eq!(failure.trim_end().lines().count(), 1, "{failure}");
    // A worker alone: nobody answers at the master's address.
    let mut worker = Rank::start(rank_job(&hp, free_port(), &hosts, 1));
    assert_eq!(worker.wait(Duration::from_secs(30)), 1, "{}", worker.stderr());
    let failure = worker.job.failure().unwrap();
    assert!(failure.contains("master host 127.0.0.1 did not answer on port"), "{failure}");
    assert!(!worker.job.path("model/model.safetensors").exists());
}

#[test]
fn a_host_that_dies_fails_the_other_promptly() {
    let (port, hosts) = (free_port(), hosts(2));
    let hp = [("epochs", "10000"), ("checkpoint_interval", "0")];
    let mut master = Rank::start(rank_job(&hp, port, &hosts, 0));
    let mut worker = Rank::start(rank_job(&hp, port, &hosts, 1));
    master.wait_for_log("epoch done", Duration::from_secs(120));
    worker.child.kill().unwrap();
    worker.child.wait().unwrap();
    let killed = Instant::now();
    let code = master.wait(Duration::from_secs(60));
    let after = killed.elapsed();
    assert_eq!(code, 2, "{}", master.stderr());
    assert!(after < Duration::from_secs(10), "the master noticed after {after:?}");
    let failure = master.job.failure().unwrap();
    assert!(failure.starts_with("InternalError:"), "{failure}");
    assert!(failure.contains("another host probably stopped"), "{failure}");
    assert!(!master.job.path("model/model.safetensors").exists());
}

#[test]
fn hosts_with_other_hyperparameters_refuse_to_train_together() {
    let (port, hosts) = (free_port(), hosts(2));
    let mut master = Rank::start(rank_job(&[("epochs", "1")], port, &hosts, 0));
    let mut worker =
        Rank::start(rank_job(&[("epochs", "1"), ("learning_rate", "0.01")], port, &hosts, 1));
    assert_eq!(worker.wait(Duration::from_secs(60)), 1, "{}", worker.stderr());
    assert_eq!(master.wait(Duration::from_secs(60)), 1, "{}", master.stderr());
    let failure = worker.job.failure().unwrap();
    assert!(failure.contains("learning_rate"), "{failure}");
    assert!(failure.contains("127.0.0.1 (rank 0)"), "{failure}");
    let failure = master.job.failure().unwrap();
    assert!(failure.contains("127.0.0.2 (rank 1) refused the starting state"), "{failure}");
}

/// SIGTERM reaches one host only: both stop at the same step, the first host writes the
/// checkpoint, and starting both again finishes with the uninterrupted run's exact weights.
#[test]
fn a_stop_on_one_host_stops_all_and_they_resume_together() {
    // Enough epochs of the small fixture (a few ms each) that the stop lands mid-run.
    let hp = [("epochs", "100"), ("checkpoint_interval", "0"), ("seed", "7")];
    let uninterrupted = run_ranks(2, &hp);
    let want = weights(&uninterrupted[0].job);

    let (port, hosts) = (free_port(), hosts(2));
    let mut ranks: Vec<Rank> =
        (0..2).map(|r| Rank::start(rank_job(&hp, port, &hosts, r))).collect();
    ranks[0].wait_for_log("epoch done", Duration::from_secs(120));
    // SAFETY: signalling a child we own.
    unsafe { libc::kill(ranks[1].child.id() as i32, libc::SIGTERM) };
    for r in &mut ranks {
        assert_eq!(r.wait(Duration::from_secs(60)), 143, "{}", r.stderr());
        assert!(r.job.failure().unwrap().starts_with("Stopped:"));
    }
    let checkpoints =
        |job: &Job| std::fs::read_dir(job.path("checkpoints")).map_or(0, |d| d.count());
    assert_eq!(checkpoints(&ranks[0].job), 1);
    assert_eq!(checkpoints(&ranks[1].job), 0);

    // The same folders again (the checkpoint is only on the first host).
    let port = free_port().to_string();
    let mut again: Vec<Rank> = ranks
        .into_iter()
        .map(|mut r| {
            r.child.wait().ok();
            let job = std::mem::replace(&mut r.job, Job::new());
            let hp =
                [hp.as_slice(), &[("distributed_port", port.as_str()), ("threads", "1")]].concat();
            job.hyperparameters(&hp);
            std::fs::remove_file(job.path("output/failure")).ok();
            Rank::start(job)
        })
        .collect();
    for r in &mut again {
        assert_eq!(r.wait(Duration::from_secs(300)), 0, "{}", r.stderr());
    }
    assert!(again[0].stderr().contains("resuming from checkpoint"), "{}", again[0].stderr());
    assert!(again[1].stderr().contains("starting state shared from=127.0.0.1 (rank 0)"));
    assert_eq!(weights(&again[0].job), want, "resumed weights differ from an uninterrupted run");
}

#[test]
fn sharded_channels_are_refused_before_waiting_for_peers() {
    let job = rank_job(&[], free_port(), &hosts(2), 0);
    let config = serde_json::json!({
        "train": {"TrainingInputMode": "File", "S3DistributionType": "ShardedByS3Key"},
        "test": {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"},
    });
    job.write("input/config/inputdataconfig.json", serde_json::to_vec(&config).unwrap());
    let run = job.run();
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    let failure = job.failure().unwrap();
    assert!(failure.contains("\"train\" uses S3DistributionType ShardedByS3Key"), "{failure}");
    assert!(failure.contains("use FullyReplicated"), "{failure}");
}
