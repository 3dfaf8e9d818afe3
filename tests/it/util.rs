//! A temporary SageMaker base folder and helpers to fill it, run `train` in it, and read what
//! the run left behind.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_train");

/// What `output/data` holds after a job with test data, sorted.
pub const OUTPUT_DATA_FILES: [&str; 6] = [
    "confusion.png",
    "evaluation.json",
    "model_quality.json",
    "predictions.png",
    "samples.png",
    "training.png",
];

/// A host that `lost` in a multi-host job was noticed `after` the heartbeat's 15 s of silence
/// (not before, and not long after), and the `failure` line names it.
pub fn assert_noticed_by_the_heartbeat(after: std::time::Duration, failure: &str, lost: &str) {
    let limit = std::time::Duration::from_secs(15);
    let second = std::time::Duration::from_secs(1);
    assert!(after >= limit - second, "noticed after {after:?}");
    assert!(after < limit + 10 * second, "noticed after {after:?}");
    let reason = format!("{lost} is gone: it sent no heartbeat for 15 s");
    assert!(failure.contains(&reason), "{failure}");
}

/// The small slice of real Fashion-MNIST in `tests/fixtures` (see `make_fixtures.py`).
pub fn fixture(channel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fmnist-small").join(channel)
}

/// The real tables in `tests/fixtures/tables` (see `make_tables.py`), e.g. `wine-csv/train`.
pub fn table_fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tables").join(rel)
}

pub struct Job {
    dir: tempfile::TempDir,
}

impl Job {
    pub fn new() -> Self {
        Self { dir: tempfile::Builder::new().prefix("smtrain-it-").tempdir().unwrap() }
    }

    pub fn base(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.base().join(rel)
    }

    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) -> &Self {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
        self
    }

    /// Writes `hyperparameters.json` with string values, as SageMaker does.
    pub fn hyperparameters(&self, pairs: &[(&str, &str)]) -> &Self {
        let map: serde_json::Map<String, serde_json::Value> =
            pairs.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
        self.write("input/config/hyperparameters.json", serde_json::to_vec(&map).unwrap())
    }

    /// Declares File-mode channels in `inputdataconfig.json`.
    pub fn channels(&self, names: &[&str]) -> &Self {
        let map: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .map(|n| {
                let spec = serde_json::json!({"TrainingInputMode": "File",
                    "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"});
                (n.to_string(), spec)
            })
            .collect();
        self.write("input/config/inputdataconfig.json", serde_json::to_vec(&map).unwrap())
    }

    /// Declares File-mode channels with their `ContentType`s.
    pub fn typed_channels(&self, specs: &[(&str, &str)]) -> &Self {
        let map: serde_json::Map<String, serde_json::Value> = specs
            .iter()
            .map(|(n, content_type)| {
                let spec = serde_json::json!({"ContentType": content_type,
                    "TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
                    "RecordWrapperType": "None"});
                (n.to_string(), spec)
            })
            .collect();
        self.write("input/config/inputdataconfig.json", serde_json::to_vec(&map).unwrap())
    }

    /// Copies a fixture channel into `input/data/<channel>`.
    pub fn data(&self, channel: &str, from: &str) -> &Self {
        self.data_from(channel, &fixture(from))
    }

    /// Copies folder `from`, with its subfolders, into `input/data/<channel>`.
    pub fn data_from(&self, channel: &str, from: &Path) -> &Self {
        copy_tree(from, &self.path(&format!("input/data/{channel}")));
        self
    }

    /// The usual small job: fixture train and test channels.
    pub fn small(hp: &[(&str, &str)]) -> Self {
        let job = Self::new();
        job.channels(&["train", "test"])
            .data("train", "train")
            .data("test", "test")
            .hyperparameters(hp);
        job
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("train")
            .arg("--base-dir")
            .arg(self.base())
            .env("OMP_NUM_THREADS", "1")
            .env("RUST_LOG", "info")
            .env_remove("SAGEMAKER_BASE_DIR")
            .env_remove("TRAINING_JOB_NAME");
        cmd
    }

    pub fn run(&self) -> Run {
        Run(self.command().output().unwrap())
    }

    pub fn failure(&self) -> Option<String> {
        std::fs::read_to_string(self.path("output/failure")).ok()
    }

    pub fn succeeded(&self) -> bool {
        self.path("output/success").exists()
    }

    /// Names of the files in the model folder.
    pub fn model_files(&self) -> Vec<String> {
        names_in(&self.path("model"))
    }

    pub fn json(&self, rel: &str) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.path(rel)).unwrap()).unwrap()
    }
}

/// A finished run of the binary.
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.0.status.code()
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Panics with the output when the run failed.
    pub fn ok(self) -> Self {
        assert!(self.0.status.success(), "train failed: {:?}\n{}", self.code(), self.stderr());
        self
    }
}

/// Runs the job and checks the failure contract for bad input: exit 1, a one-line
/// `ClientError` in `output/failure` naming every needle, the same on stderr, no model files.
/// Returns the failure text.
pub fn fails_with(job: &Job, needles: &[&str]) -> String {
    let run = job.run();
    let failure =
        job.failure().unwrap_or_else(|| panic!("no failure file; stderr:\n{}", run.stderr()));
    assert_eq!(run.code(), Some(1), "{failure}");
    assert!(failure.starts_with("ClientError: "), "{failure}");
    assert_eq!(failure.lines().count(), 1, "{failure}");
    assert!(failure.len() <= 1025, "{} bytes: {failure}", failure.len());
    for n in needles {
        assert!(failure.contains(n), "failure lacks {n:?}: {failure}");
    }
    assert!(run.stderr().contains(failure.trim()), "stderr lacks the reason");
    assert!(job.model_files().is_empty(), "model files left: {:?}", job.model_files());
    assert!(!job.succeeded());
    failure
}

/// Makes a FIFO at `path` (nothing ever writes to it: reading it would block forever).
pub fn mkfifo(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

/// Files in `dir` (not recursive), sorted; empty when it does not exist.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// A `train` started in the background, its log read up to a line the test waited for.
pub struct Started {
    pub child: Child,
    /// The log up to and including the awaited line.
    pub log: String,
    rest: std::thread::JoinHandle<String>,
}

impl Started {
    /// Spawns `cmd` and waits for a log line containing `needle`. The rest of the log keeps
    /// being read, so the child never blocks on a full pipe.
    pub fn until(cmd: &mut Command, needle: &str) -> Self {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut log = String::new();
        while !log.lines().any(|l| l.contains(needle)) {
            let mut line = String::new();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "no {needle:?} line:\n{log}");
            log.push_str(&line);
        }
        let rest = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
            rest
        });
        Self { child, log, rest }
    }

    /// Waits for the exit; the exit status and the whole log.
    pub fn finish(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().unwrap();
        let rest = self.rest.join().unwrap();
        (status, self.log + &rest)
    }
}

/// Copies folder `from` into `to`, subfolders included.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
