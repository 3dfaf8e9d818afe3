//! What a hostile user or a failing host does to a job, and the promise it must keep: a
//! failure leaves a bounded one-line reason in `output/failure` and nothing that looks like a
//! result; nothing blocks, reads without end or allocates more than the host has. (The S3
//! stalls are in `s3.rs`, beside the server they pause.)

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::predict::predict_cmd;
use crate::util::{fails_with, fixture, mkfifo, names_in, Job, Run, Started, BIN};

/// Runs `job`, which must fail as a user error within `limit`; returns the failure.
fn fails_fast(job: &Job, limit: Duration, needles: &[&str]) -> String {
    let started = Instant::now();
    let failure = fails_with(job, needles);
    assert!(started.elapsed() < limit, "took {:?}: {failure}", started.elapsed());
    failure
}

#[test]
fn layers_too_large_for_memory_are_refused_before_allocating() {
    let job = Job::small(&[("hidden_units", "65536,65536,65536")]);
    fails_fast(
        &job,
        Duration::from_secs(30),
        &["8642166794 parameters", "of memory", "lower hidden_units, or give the job more memory"],
    );
}

/// A memory cgroup of its own for a child process, under this test process's cgroup (v1's
/// memory hierarchy) or at the root of v2's; removed when dropped.
struct MemoryCgroup {
    dir: std::path::PathBuf,
    procs: std::ffi::CString,
}

impl MemoryCgroup {
    /// A cgroup limited to `limit` bytes; `None` where none can be made (not root, no memory
    /// controller that this process may write to).
    fn new(limit: u64) -> Option<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let parent = own
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, path)| path.to_string()))
            .map(|path| Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')))
            .unwrap_or_else(|| Path::new("/sys/fs/cgroup").to_path_buf());
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = parent.join(format!("smtrain-it-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let group =
            Self { procs: std::ffi::CString::new(dir.join("cgroup.procs").to_str()?).ok()?, dir };
        let v1 = group.dir.join("memory.limit_in_bytes");
        let file = if v1.exists() { v1 } else { group.dir.join("memory.max") };
        std::fs::write(file, limit.to_string()).ok()?;
        Some(group)
    }

    /// Runs `cmd`'s process in this cgroup from before its exec.
    fn enter(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let procs = self.procs.clone();
        // SAFETY: only system calls (open, write, close) and arithmetic on the stack between
        // fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut digits = [0u8; 20];
                let mut pid = libc::getpid() as u32;
                let mut at = digits.len();
                loop {
                    at -= 1;
                    digits[at] = b'0' + (pid % 10) as u8;
                    pid /= 10;
                    if pid == 0 {
                        break;
                    }
                }
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let wrote = libc::write(fd, digits[at..].as_ptr().cast(), digits.len() - at);
                libc::close(fd);
                match wrote {
                    n if n > 0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
    }

    /// The most memory the cgroup's processes used at once (page cache included), if known.
    fn peak(&self) -> Option<u64> {
        ["memory.max_usage_in_bytes", "memory.peak"]
            .iter()
            .find_map(|f| std::fs::read_to_string(self.dir.join(f)).ok()?.trim().parse().ok())
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

const MIB: u64 = 1 << 20;

/// The notebook's job on the installed Fashion-MNIST (60,000 training images) under a
/// 300 MiB memory limit: the check counts what the process really holds and lets it train.
#[test]
fn a_job_under_a_tight_but_sufficient_memory_limit_trains() {
    let Some(group) = MemoryCgroup::new(300 * MIB) else {
        eprintln!("SKIPPED a_job_under_a_tight_but_sufficient_memory_limit_trains: no memory cgroup can be made here (needs root and cgroup v1's memory hierarchy or v2's root)");
        return;
    };
    let job = Job::new();
    job.hyperparameters(&[("epochs", "1")]);
    let mut cmd = job.command();
    group.enter(&mut cmd);
    let run = Run(cmd.output().unwrap());
    let log = run.stderr();
    let memory = log.lines().find(|l| l.contains("memory check")).unwrap_or_default();
    eprintln!("{memory}\npeak use of the cgroup: {:?} MiB", group.peak().map(|p| p / MIB));
    assert_eq!(run.code(), Some(0), "{:?}\n{log}", job.failure());
    assert!(memory.contains("the cgroup's memory limit of 300.0 MiB"), "{log}");
    assert!(job.succeeded());
}

/// Layers too large for the same limit are refused before they are allocated, with every part
/// in MiB and the changes that would help.
#[test]
fn layers_too_large_for_a_memory_limit_are_refused_with_every_part() {
    let Some(group) = MemoryCgroup::new(300 * MIB) else {
        eprintln!("SKIPPED layers_too_large_for_a_memory_limit_are_refused_with_every_part: no memory cgroup can be made here (needs root and cgroup v1's memory hierarchy or v2's root)");
        return;
    };
    let job = Job::new();
    job.hyperparameters(&[("epochs", "1"), ("hidden_units", "4096,4096")]);
    let mut cmd = job.command();
    group.enter(&mut cmd);
    let run = Run(cmd.output().unwrap());
    let failure = job.failure().unwrap_or_else(|| panic!("no failure: {}", run.stderr()));
    assert_eq!(run.code(), Some(1), "{failure}");
    for part in [
        "ClientError: hyperparameters hidden_units=[4096, 4096] and batch_size=32 need about ",
        "MiB of memory beyond what this process holds (the program, libtorch and the loaded data)",
        "611.5 MiB for the weights, gradients, optimizer state and checkpoint copies of 20037642 \
         parameters",
        "MiB of activations and inputs for 2000 rows at a time",
        "52.9 MiB for the data's copies for training and scoring",
        "32.0 MiB of head-room for libtorch",
        "but the cgroup's memory limit of 300.0 MiB, of which this process uses ",
        ": lower hidden_units, or give the job more memory (a higher memory limit",
    ] {
        assert!(failure.contains(part), "lacks {part:?}: {failure}");
    }
    assert!(job.model_files().is_empty() && !job.succeeded());
}

#[test]
fn a_batch_too_large_for_the_address_space_is_refused() {
    let job = Job::small(&[("hidden_units", "65536"), ("batch_size", "65536")]);
    let mut cmd = job.command();
    // SAFETY: setrlimit is async-signal-safe, as pre_exec requires.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 6_000_000 * 1024, rlim_max: 6_000_000 * 1024 };
            libc::setrlimit(libc::RLIMIT_AS, &lim);
            Ok(())
        });
    }
    let run = Run(cmd.output().unwrap());
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    let failure = job.failure().unwrap();
    assert!(failure.starts_with("ClientError: "), "{failure}");
    assert!(failure.contains("batch_size=65536") && failure.contains("lower"), "{failure}");
}

#[test]
fn omp_num_threads_beyond_the_cap_is_refused() {
    let job = Job::small(&[]);
    let run = Run(job.command().env("OMP_NUM_THREADS", "999999").output().unwrap());
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    let failure = job.failure().unwrap();
    assert!(
        failure.contains("OMP_NUM_THREADS=999999 is out of range (allowed: 1 to 1024"),
        "{failure}"
    );
    // A typo is refused as 0 is; libgomp's list for nested levels is left to it.
    let run = Run(job.command().env("OMP_NUM_THREADS", "abc").output().unwrap());
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    let failure = job.failure().unwrap();
    assert!(failure.contains("OMP_NUM_THREADS=\"abc\" is not a whole number"), "{failure}");
    let listed = Job::small(&[("epochs", "1")]);
    Run(listed.command().env("OMP_NUM_THREADS", "1,1").output().unwrap()).ok();
}

/// An abort (what a failed allocation or a fatal libtorch error ends in) still leaves a reason,
/// and no model.
#[test]
fn an_abort_mid_training_leaves_a_failure_file() {
    let job = Job::small(&[("epochs", "200")]);
    let started = Started::until(&mut job.command(), "epoch done");
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(started.child.id() as i32, libc::SIGABRT) };
    let (status, _) = started.finish();
    assert_eq!(status.code(), Some(2), "{status:?}");
    let failure = job.failure().expect("failure file");
    assert!(failure.starts_with("InternalError: the process aborted (SIGABRT)"), "{failure}");
    assert!(job.model_files().is_empty(), "{:?}", job.model_files());
}

#[test]
fn predict_refuses_layer_sizes_the_weights_do_not_have() {
    let job = Job::small(&[("epochs", "1")]);
    job.run().ok();
    let card = job.path("model/model.json");
    let mut json = job.json("model/model.json");
    json["architecture"]["layer_sizes"] = serde_json::json!([784, 4000000000u64, 10]);
    std::fs::write(&card, serde_json::to_vec(&json).unwrap()).unwrap();
    let run = Run(predict_cmd(&job.path("model"))
        .arg(fixture("test").join("images-idx3-ubyte.gz"))
        .output()
        .unwrap());
    assert_eq!(run.code(), Some(2), "{}", run.stderr());
    assert!(run.stderr().contains("layer_sizes [784, 4000000000, 10] need"), "{}", run.stderr());
}

#[test]
fn a_failed_rerun_removes_the_earlier_runs_results() {
    let job = Job::small(&[("epochs", "1")]);
    job.run().ok();
    assert_eq!(job.model_files().len(), 3);
    assert!(!names_in(&job.path("output/data")).is_empty());
    job.hyperparameters(&[("epochs", "0")]);
    fails_with(&job, &["epochs"]);
    assert!(
        names_in(&job.path("output/data")).is_empty(),
        "{:?}",
        names_in(&job.path("output/data"))
    );
}

/// `model/` on a file system too small for the weights: the job fails and leaves neither the
/// model nor its temporary files. Needs root, for the tmpfs.
#[test]
fn a_full_disk_leaves_no_model_behind() {
    // SAFETY: geteuid only reads.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED a_full_disk_leaves_no_model_behind: mounting a tmpfs needs root");
        return;
    }
    let job = Job::small(&[("epochs", "1")]);
    let model = job.path("model");
    std::fs::create_dir_all(&model).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "smtrain-full", model.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(mounted.success(), "mount -t tmpfs failed as root");
    let run = job.run();
    let left = job.model_files();
    let _ = Command::new("umount").arg(&model).status();
    assert_eq!(run.code(), Some(2), "{}", run.stderr());
    let failure = job.failure().unwrap();
    assert!(failure.contains("No space left on device"), "{failure}");
    assert!(left.is_empty(), "left in model/: {left:?}");
    assert!(names_in(&job.path("output/data")).is_empty());
}

#[test]
fn a_second_run_on_a_base_in_use_is_refused_and_writes_nothing() {
    let job = Job::small(&[("epochs", "400")]);
    let first = Started::until(&mut job.command(), "data loaded");
    let second = job.run();
    assert_eq!(second.code(), Some(1), "{}", second.stderr());
    assert!(
        second.stderr().contains("another training job is running in this folder"),
        "{}",
        second.stderr()
    );
    assert!(job.failure().is_none(), "the second run wrote a failure: {:?}", job.failure());
    assert!(first.finish().0.success());
    assert!(job.succeeded() && job.failure().is_none());
}

/// Config files that are FIFOs, devices, folders or broken links fail at once, as the user's
/// error, instead of blocking or reading forever.
#[test]
fn config_files_that_are_not_regular_files_fail_at_once() {
    let hp = "input/config/hyperparameters.json";
    type Make = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Make)> = vec![
        ("is a FIFO (named pipe), not a regular file", Box::new(|p: &Path| mkfifo(p))),
        (
            "is a character device",
            Box::new(|p: &Path| std::os::unix::fs::symlink("/dev/zero", p).unwrap()),
        ),
        ("is a folder", Box::new(|p: &Path| std::fs::create_dir_all(p).unwrap())),
        (
            "which does not exist",
            Box::new(|p: &Path| std::os::unix::fs::symlink("/nonexistent/hp.json", p).unwrap()),
        ),
    ];
    for (needle, make) in cases {
        let job = Job::small(&[]);
        std::fs::remove_file(job.path(hp)).unwrap();
        make(&job.path(hp));
        fails_fast(&job, Duration::from_secs(20), &["hyperparameters.json", needle]);
    }
    let job = Job::small(&[]);
    let rc = job.path("input/config/resourceconfig.json");
    let (a, b) = (job.path("loop-a"), job.path("loop-b"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    std::os::unix::fs::symlink(&a, &rc).unwrap();
    fails_fast(&job, Duration::from_secs(20), &["resourceconfig.json", "symbolic link loop"]);
}

/// A checkpoint that is a FIFO is refused at once, not waited on: with no other checkpoint to
/// resume from, the job says so rather than silently starting over.
#[test]
fn a_fifo_among_the_checkpoints_is_refused_at_once() {
    let job = Job::small(&[("epochs", "1")]);
    mkfifo(&job.path("checkpoints/checkpoint-000000000099.safetensors"));
    fails_fast(&job, Duration::from_secs(30), &["is a FIFO (named pipe)", "start_fresh=true"]);
}

#[test]
fn predict_reads_only_regular_files() {
    let job = Job::small(&[("epochs", "1")]);
    job.run().ok();
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero.png");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let fifo = dir.path().join("fifo.png");
    mkfifo(&fifo);
    let started = Instant::now();
    let run = Run(predict_cmd(&job.path("model")).arg(&zero).arg(&fifo).output().unwrap());
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    assert!(run.stderr().contains("zero.png: is a character device"), "{}", run.stderr());
    assert!(run.stderr().contains("fifo.png: is a FIFO"), "{}", run.stderr());
    // A model file that is a FIFO: nothing is classified, and nothing waits.
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(job.path("model/model.safetensors"), model.join("model.safetensors")).unwrap();
    mkfifo(&model.join("model.json"));
    let run = Run(predict_cmd(&model)
        .arg(fixture("test").join("images-idx3-ubyte.gz"))
        .output()
        .unwrap());
    assert_eq!(run.code(), Some(2), "{}", run.stderr());
    assert!(run.stderr().contains("model.json: is a FIFO"), "{}", run.stderr());
}

/// `-o` into a device or a FIFO writes into it; through a link, into the link's target;
/// a folder or a missing parent fails without leaving temporary files.
#[test]
fn predict_output_goes_into_what_it_names() {
    let job = Job::small(&[("epochs", "1")]);
    job.run().ok();
    let images = fixture("test").join("images-idx3-ubyte.gz");
    let d = tempfile::tempdir().unwrap();
    let out = |target: &Path| {
        Run(predict_cmd(&job.path("model")).arg("-o").arg(target).arg(&images).output().unwrap())
    };
    // A character device of our own: the same one as /dev/null.
    let null = d.path().join("null");
    let made = Command::new("mknod").arg(&null).args(["c", "1", "3"]).status().unwrap();
    if made.success() {
        out(&null).ok();
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&null).unwrap().file_type().is_char_device());
    } else {
        eprintln!(
            "SKIPPED the device case of predict_output_goes_into_what_it_names: mknod needs root"
        );
    }
    let fifo = d.path().join("fifo");
    mkfifo(&fifo);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    out(&fifo).ok();
    assert_eq!(reader.join().unwrap().lines().count(), 200);
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    let target = d.path().join("target.jsonl");
    let link = d.path().join("link.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    out(&link).ok();
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap().lines().count(), 200);
    let folder = d.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    let run = out(&folder);
    assert_eq!(run.code(), Some(2));
    assert!(run.stderr().contains("is a folder"), "{}", run.stderr());
    assert!(names_in(&folder).is_empty(), "{:?}", names_in(&folder));
    let run = out(&d.path().join("missing/out.jsonl"));
    assert_eq!(run.code(), Some(2));
    let left: Vec<String> =
        names_in(d.path()).into_iter().filter(|n| n.ends_with(".tmp")).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn data_that_leaves_nothing_to_train_on_or_score_is_refused() {
    let job = Job::new();
    job.channels(&["train"]).hyperparameters(&[("validation_split", "0.5")]);
    let dir = job.path("input/data/train");
    std::fs::create_dir_all(&dir).unwrap();
    smtrain::data::write_idx(&dir.join("images"), &[1, 28, 28], &[0; 784], false).unwrap();
    smtrain::data::write_idx(&dir.join("labels"), &[1], &[3], false).unwrap();
    fails_with(&job, &["validation_split", "of 1 training samples it holds out 1 and leaves 0"]);
    let job = Job::small(&[]);
    let test = job.path("input/data/test");
    std::fs::remove_dir_all(&test).unwrap();
    std::fs::create_dir_all(&test).unwrap();
    smtrain::data::write_idx(&test.join("images"), &[0, 28, 28], &[], false).unwrap();
    smtrain::data::write_idx(&test.join("labels"), &[0], &[], false).unwrap();
    fails_with(&job, &["test/images: holds 0 images of 28x28; no data to use"]);
}

#[test]
fn a_huge_value_or_thousands_of_stray_files_give_a_bounded_reason() {
    let huge = "9".repeat(10 << 20);
    let job = Job::small(&[("learning_rate", huge.as_str())]);
    fails_with(&job, &["hyperparameters.json: is 10485", "over the 1048576-byte limit"]);
    let large = "9".repeat(900 << 10);
    let job = Job::small(&[("learning_rate", large.as_str())]);
    let failure = fails_with(&job, &["hyperparameter \"learning_rate\"", "(921600 bytes in all)"]);
    assert!(failure.len() < 400, "{failure}");
    let job = Job::small(&[]);
    let stray = job.path("input/data/train/stray");
    std::fs::create_dir_all(&stray).unwrap();
    for i in 0..20_000 {
        std::fs::write(stray.join(format!("note-{i:05}.txt")), b"x").unwrap();
    }
    let failure = fails_with(&job, &["other files: stray/note-00000.txt", "and 19995 more"]);
    assert!(failure.len() <= 1025, "{}", failure.len());
}

#[test]
fn usage_errors_write_the_failure_file() {
    let job = Job::new();
    let run = Run(job.command().args(["--channel", "train"]).output().unwrap());
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    let failure = job.failure().expect("failure file");
    assert!(failure.starts_with("ClientError: command line: "), "{failure}");
    assert!(failure.contains("expected NAME=URI"), "{failure}");
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("Stopped:"));
}

#[test]
fn smaller_contract_holes_are_refused() {
    let job = Job::small(&[]);
    job.write(
        "input/config/inputdataconfig.json",
        r#"{"train": {"TrainingInputMode": "File", "RecordWrapperType": "RecordIO"}}"#,
    );
    fails_with(&job, &["channel \"train\" uses RecordWrapperType RecordIO"]);
    let job = Job::small(&[]);
    job.write("input/config/hyperparameters.json", r#"{"epochs": "1", "epochs": "500"}"#);
    fails_with(&job, &["hyperparameters.json", "key \"epochs\" appears twice"]);
    let job = Job::small(&[("early_stopping_patience", "2")]);
    fails_with(&job, &["\"early_stopping_patience\" is 2, but there is no validation data"]);
}

#[test]
fn stale_download_folders_are_cleaned_at_the_next_start() {
    let job = Job::small(&[("epochs", "1")]);
    job.write("input/data/.train.download-99999/blob.bin.part", vec![0u8; 4096]);
    job.run().ok();
    assert_eq!(names_in(&job.path("input/data")), ["test", "train"]);
}

/// Under a file size limit (`ulimit -f`) below a checkpoint's size: no death by SIGXFSZ (exit
/// 153 without a word), but a failure that names the limit, and no partial file left behind.
#[test]
fn a_file_size_limit_is_reported_and_leaves_no_partial_file() {
    use std::os::unix::process::CommandExt;
    // The default network's checkpoint is about 1.2 MB; the failure file is far below 256 KiB.
    let job = Job::small(&[("epochs", "1")]);
    let mut cmd = job.command();
    // SAFETY: setrlimit is async-signal-safe, as the child between fork and exec requires.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 256 << 10, rlim_max: 256 << 10 };
            match libc::setrlimit(libc::RLIMIT_FSIZE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        })
    };
    let out = cmd.output().unwrap();
    let failure = job.failure().unwrap_or_else(|| panic!("{:?}: no failure file", out.status));
    assert_eq!(out.status.code(), Some(2), "{failure}");
    assert!(failure.starts_with("InternalError: "), "{failure}");
    assert!(failure.contains("File too large") && failure.contains("ulimit -f"), "{failure}");
    let left: Vec<String> = crate::util::names_in(&job.path("checkpoints"))
        .into_iter()
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(job.model_files().is_empty(), "{:?}", job.model_files());
    assert!(!job.succeeded());
}

/// Partial checkpoints that a killed run left (its temporary names) are removed at the next
/// start, since SageMaker would sync them to S3; other files there are not ours to touch.
#[test]
fn a_killed_runs_partial_checkpoint_is_removed_at_the_next_start() {
    let job = Job::small(&[("epochs", "1")]);
    job.write("checkpoints/.checkpoint-000000000032.safetensors.4242.tmp", b"half a file");
    job.write("checkpoints/notes.txt", b"the user's");
    job.run().ok();
    let names = crate::util::names_in(&job.path("checkpoints"));
    assert_eq!(names, ["checkpoint-000000000032.safetensors", "notes.txt"]);
}

/// `model/` as a link to another folder: refused before anything is cleared, so a file there
/// that this run never wrote (a `model.json`) is left alone.
#[test]
fn a_model_folder_that_is_a_link_is_refused_and_its_files_left_alone() {
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("model.json"), b"someone else's").unwrap();
    let job = Job::small(&[("epochs", "1"), ("hidden_units", "0")]);
    std::os::unix::fs::symlink(elsewhere.path(), job.path("model")).unwrap();
    let run = job.run();
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    let failure = job.failure().unwrap();
    assert!(failure.starts_with("ClientError: "), "{failure}");
    for needle in ["model", "is a symbolic link", "real folders"] {
        assert!(failure.contains(needle), "{failure}");
    }
    assert!(failure.contains(&elsewhere.path().display().to_string()), "{failure}");
    let kept = std::fs::read(elsewhere.path().join("model.json")).unwrap();
    assert_eq!(kept, b"someone else's");
}
