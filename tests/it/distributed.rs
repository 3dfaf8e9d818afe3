//! Multi-host training on loopback: each rank is a real `train` process with its own base
//! folder and `resourceconfig.json`, its host named by a loopback address (127.0.0.1,
//! 127.0.0.2, …) so that every rank binds its own address, as hosts do.

use std::net::TcpListener;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::util::Job;

/// A port the kernel just handed out (free for the moment).
pub(crate) fn free_port() -> u16 {
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
    let hp = [
        ("epochs", "2"),
        ("dropout", "0.2"),
        ("validation_split", "0.1"),
        ("augment_shift", "2"),
        ("augment_flip", "true"),
        ("label_smoothing", "0.1"),
    ];
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

/// A two-rank job in which `upset` is done to the worker after the master's first epoch: how
/// long the master took to fail after it, and its failure line. The master must exit 2 with an
/// InternalError that points at the other host, and write no model.
fn master_fails_after(upset: impl FnOnce(&mut Rank), timeout: &str) -> (Duration, String) {
    let (port, hosts) = (free_port(), hosts(2));
    let hp = [("epochs", "10000"), ("checkpoint_interval", "0"), ("distributed_timeout", timeout)];
    let mut master = Rank::start(rank_job(&hp, port, &hosts, 0));
    let mut worker = Rank::start(rank_job(&hp, port, &hosts, 1));
    master.wait_for_log("epoch done", Duration::from_secs(120));
    upset(&mut worker);
    let at = Instant::now();
    let code = master.wait(Duration::from_secs(60));
    let after = at.elapsed();
    assert_eq!(code, 2, "{}", master.stderr());
    let failure = master.job.failure().unwrap();
    assert!(failure.starts_with("InternalError:"), "{failure}");
    assert!(failure.contains("another host probably stopped"), "{failure}");
    assert!(!master.job.path("model/model.safetensors").exists());
    (after, failure)
}

#[test]
fn a_host_that_dies_fails_the_other_promptly() {
    let kill = |worker: &mut Rank| {
        worker.child.kill().unwrap();
        worker.child.wait().unwrap();
    };
    let (after, _) = master_fails_after(kill, "300");
    assert!(after < Duration::from_secs(10), "the master noticed after {after:?}");
}

/// A host that stops answering without closing its connections (frozen here with SIGSTOP; a
/// lost machine, a cut network or a FIN that never arrives look the same): the other fails once
/// the heartbeat has been silent for 15 s, long before the distributed_timeout of 600 s.
#[test]
fn a_host_that_goes_silent_fails_the_other_within_the_heartbeat_limit() {
    let freeze = |worker: &mut Rank| {
        // SAFETY: signalling a child we own; dropping the Rank kills it, stopped or not.
        let sent = unsafe { libc::kill(worker.child.id() as i32, libc::SIGSTOP) };
        assert_eq!(sent, 0);
    };
    let (after, failure) = master_fails_after(freeze, "600");
    crate::util::assert_noticed_by_the_heartbeat(after, &failure, "127.0.0.2 (rank 1)");
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
fn stop_on_one_host_then_resume(sharded: bool) {
    // Enough epochs of the small fixture (a few ms each) that the stop lands mid-run.
    // Sharded hosts augment too: each rank draws its rows' moves of the global batch.
    let plain = [("epochs", "100"), ("checkpoint_interval", "0"), ("seed", "7")];
    let augmented = [("augment_shift", "2"), ("augment_flip", "true"), ("label_smoothing", "0.1")];
    let hp = [plain.as_slice(), if sharded { augmented.as_slice() } else { &[] }].concat();
    let start = |port: u16, hosts: &[String], r: usize| {
        let job = rank_job(&hp, port, hosts, r);
        if sharded {
            distribution(&job, "ShardedByS3Key", "FullyReplicated");
            train_shard(&job, [0..600, 600..1000][r].clone());
        }
        Rank::start(job)
    };
    let names = hosts(2);
    let port = free_port();
    let mut uninterrupted: Vec<Rank> = (0..2).map(|r| start(port, &names, r)).collect();
    for r in &mut uninterrupted {
        assert_eq!(r.wait(Duration::from_secs(300)), 0, "{}", r.stderr());
    }
    let want = weights(&uninterrupted[0].job);

    let port = free_port();
    let mut ranks: Vec<Rank> = (0..2).map(|r| start(port, &names, r)).collect();
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
fn a_stop_on_one_host_stops_all_and_they_resume_together() {
    stop_on_one_host_then_resume(false);
}

#[test]
fn sharded_hosts_resume_together_too() {
    stop_on_one_host_then_resume(true);
}

/// The fixture's train set, decompressed: (images file, labels file).
fn fixture_train() -> (Vec<u8>, Vec<u8>) {
    let read = |name: &str| {
        let path = crate::util::fixture("train").join(name);
        let mut out = Vec::new();
        let file = std::fs::File::open(path).unwrap();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(file), &mut out).unwrap();
        out
    };
    (read("images-idx3-ubyte.gz"), read("labels-idx1-ubyte.gz"))
}

/// Samples `range` of the fixture's train set as this job's train channel (plain IDX files).
fn train_shard(job: &Job, range: std::ops::Range<usize>) {
    let (images, labels) = fixture_train();
    let n = (range.end - range.start) as u32;
    let mut img = [0x0803u32, n, 28, 28].iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<_>>();
    img.extend_from_slice(&images[16 + range.start * 784..16 + range.end * 784]);
    let mut lab = [0x0801u32, n].iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<_>>();
    lab.extend_from_slice(&labels[8 + range.start..8 + range.end]);
    std::fs::remove_dir_all(job.path("input/data/train")).unwrap();
    job.write("input/data/train/shard-images", img).write("input/data/train/shard-labels", lab);
}

fn distribution(job: &Job, train: &str, test: &str) {
    let config = serde_json::json!({
        "train": {"TrainingInputMode": "File", "S3DistributionType": train},
        "test": {"TrainingInputMode": "File", "S3DistributionType": test},
    });
    job.write("input/config/inputdataconfig.json", serde_json::to_vec(&config).unwrap());
}

/// ShardedByS3Key: each host holds its own part of the train set; together they learn from
/// all of it, end with the same weights, and resume only on the same shards.
#[test]
fn sharded_train_channels_train_together_on_their_own_parts() {
    let hp = [("epochs", "3"), ("seed", "3")];
    let (port, hosts) = (free_port(), hosts(2));
    let mut ranks: Vec<Rank> = (0..2)
        .map(|r| {
            let job = rank_job(&hp, port, &hosts, r);
            distribution(&job, "ShardedByS3Key", "FullyReplicated");
            train_shard(&job, [0..500, 500..1000][r].clone());
            Rank::start(job)
        })
        .collect();
    for r in &mut ranks {
        assert_eq!(r.wait(Duration::from_secs(120)), 0, "{}", r.stderr());
    }
    assert_eq!(ranks[0].weights_digest(), ranks[1].weights_digest());
    assert!(ranks[0].stderr().contains("shards=[500, 500]"), "{}", ranks[0].stderr());
    assert!(ranks[1].job.model_files().is_empty());
    // One process on all 1000 samples, same settings: a different order, the same skill.
    let single = Job::small(&[hp.as_slice(), &[("threads", "1")]].concat());
    single.run().ok();
    let (a, b) = (test_accuracy(&ranks[0].job), test_accuracy(&single));
    assert!((a - b).abs() <= 0.05, "sharded: test accuracy {a}, one process on all data {b}");
    let card = ranks[0].job.json("model/model.json");
    assert!(card["data"]["train"]["fingerprint"].as_str().unwrap().starts_with("shards:"));
}

#[test]
fn only_the_train_channel_may_be_sharded() {
    let job = rank_job(&[], free_port(), &hosts(2), 0);
    distribution(&job, "FullyReplicated", "ShardedByS3Key");
    let run = job.run();
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    let failure = job.failure().unwrap();
    assert!(
        failure.contains("channel \"test\" uses S3DistributionType ShardedByS3Key"),
        "{failure}"
    );
    assert!(failure.contains("only \"train\" may be sharded"), "{failure}");
}

/// A stop while the hosts score a large validation set after the last step: the hosts agree on
/// it between batches of the scoring, as they do between steps, and both exit 143 within
/// seconds, the first host's checkpoint holding the finished steps (epoch 1 step 2).
#[test]
fn a_stop_during_the_validation_scoring_stops_every_host_promptly() {
    let hp = [("epochs", "1"), ("hidden_units", "1024,1024"), ("batch_size", "32"), ("seed", "3")];
    let (port, names) = (free_port(), hosts(2));
    let mut ranks: Vec<Rank> = (0..2)
        .map(|r| {
            let job = rank_job(&hp, port, &names, r);
            job.channels(&["train", "validation"]);
            std::fs::remove_dir_all(job.path("input/data/train")).unwrap();
            std::fs::remove_dir_all(job.path("input/data/test")).unwrap();
            crate::stops::channel(&job, "train", 64);
            crate::stops::channel(&job, "validation", 60_000);
            Rank::start(job)
        })
        .collect();
    ranks[1].wait_for_log("all hosts joined", Duration::from_secs(120));
    // Two steps take milliseconds; scoring 60,000 images with these layers takes seconds.
    std::thread::sleep(Duration::from_millis(1000));
    let sent = Instant::now();
    // SAFETY: signalling a child we own.
    unsafe { libc::kill(ranks[1].child.id() as i32, libc::SIGTERM) };
    for r in &mut ranks {
        assert_eq!(r.wait(Duration::from_secs(60)), 143, "{}", r.stderr());
        let took = sent.elapsed();
        assert!(took < Duration::from_secs(3), "took {took:?} to stop:\n{}", r.stderr());
        let failure = r.job.failure().unwrap();
        assert!(failure.contains("at epoch 1 step 2;"), "{failure}");
    }
    let checkpoints = |job: &Job| crate::util::names_in(&job.path("checkpoints"));
    assert_eq!(checkpoints(&ranks[0].job), ["checkpoint-000000000002.safetensors"]);
    assert!(checkpoints(&ranks[1].job).is_empty());
}
