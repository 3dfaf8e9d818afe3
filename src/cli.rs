//! The command line: parse arguments, set up logging and signals, run the job, and turn its
//! result into what SageMaker reads: exit code, `output/failure`, `output/success`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::artifacts::{self, write_atomic};
use crate::config::KEYS;
use crate::contract::{Paths, DEFAULT_BASE_DIR};
use crate::crash;
use crate::error::{failure_line, is_user_error, Stopped};
use crate::job::{self, Summary};
use crate::predict;
use crate::s3::{self, ChannelArg, S3Uri};

/// Exit code for errors in the job's input (hyperparameters, channels, data).
pub const EXIT_USER_ERROR: u8 = 1;
/// Exit code for failures of the trainer or its environment.
pub const EXIT_INTERNAL_ERROR: u8 = 2;
/// Exit code after a stop, SIGTERM, SIGINT or SIGHUP (128 + SIGTERM), as shells report a terminated process.
pub const EXIT_STOPPED: u8 = 143;

/// What `-h` (the short help) adds, at the top level and after `train`.
const SHORT_HELP_HINT: &str = "Run `train --help` for the whole contract and every hyperparameter.";

#[derive(Debug, Parser)]
#[command(
    name = "train",
    version,
    about = "SageMaker training container: trains a dense network on IDX images or your own tables (CSV, Parquet, NumPy) with libtorch",
    long_about = None,
    after_long_help = after_help(),
    after_help = SHORT_HELP_HINT
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// The contract's base folder; every path below derives from it.
    #[arg(long, global = true, env = "SAGEMAKER_BASE_DIR", default_value = DEFAULT_BASE_DIR)]
    base_dir: PathBuf,

    /// Training's options, also accepted without the `train` subcommand.
    #[command(flatten)]
    train: TrainArgs,
}

/// Options of training only: before or after `train`, and not offered by `predict`.
#[derive(Debug, Default, clap::Args)]
struct TrainArgs {
    /// A channel from S3 or a local folder, e.g. train=s3://bucket/prefix/ or
    /// test=/data/test (repeatable). Adds to, or replaces, inputdataconfig.json's channels; S3
    /// objects are downloaded into input/data/<NAME>/ before training.
    #[arg(long = "channel", value_name = "NAME=URI")]
    channels: Vec<ChannelArg>,

    /// Upload model.tar.gz and output.tar.gz (after success) or the failure reason (after a
    /// failure) to s3://BUCKET/PREFIX/<job-name>/output/.
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    output: Option<S3Uri>,
}

impl TrainArgs {
    /// Those given before the subcommand, then those after it (the later `--output` wins).
    fn then(mut self, later: TrainArgs) -> TrainArgs {
        self.channels.extend(later.channels);
        TrainArgs { channels: self.channels, output: later.output.or(self.output) }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train (the default; SageMaker runs `IMAGE train`).
    // SageMaker's `IMAGE train --help` lands here: the same contract as `train --help`.
    #[command(after_long_help = after_help(), after_help = SHORT_HELP_HINT)]
    Train(TrainArgs),
    /// Classify images with a trained model: one JSON line per image on stdout.
    #[command(after_long_help = predict::HELP)]
    Predict(PredictArgs),
    /// Serve a trained model over HTTP: SageMaker endpoints and batch transform (`IMAGE serve`).
    #[command(after_long_help = crate::serve::HELP)]
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The model folder (model.json and model.safetensors), or a model.tar.gz
    /// [default: <base-dir>/model, where SageMaker unpacks it]
    #[arg(long, value_name = "DIR|model.tar.gz")]
    model: Option<PathBuf>,
}

impl Default for Command {
    fn default() -> Self {
        Command::Train(TrainArgs::default())
    }
}

#[derive(Debug, clap::Args)]
struct PredictArgs {
    /// The model: a folder with model.json and model.safetensors, or a model.tar.gz
    /// [default: <base-dir>/model]
    #[arg(long, value_name = "DIR|model.tar.gz")]
    model: Option<PathBuf>,
    /// How many of the most likely classes each line lists under "top_k"
    #[arg(long, value_name = "K", default_value_t = 3)]
    top_k: usize,
    /// Write the JSON lines to FILE (atomically) instead of stdout
    #[arg(short = 'o', long = "out", value_name = "FILE")]
    out: Option<PathBuf>,
    /// Take 255 - pixel first, for dark objects on a light background (the model expects light
    /// objects on black, as Fashion-MNIST)
    #[arg(long)]
    invert: bool,
    /// PNG or JPEG files (grayscale, the model's input size), or IDX image files (gzipped or not)
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

fn after_help() -> String {
    let mut s = String::from(
        "CONTRACT (all paths under --base-dir, default /opt/ml):
  input/config/hyperparameters.json   string values, plain or JSON-encoded (keys below;
                                      sagemaker_* and _tuning* keys are ignored)
  input/config/inputdataconfig.json   channels: train (required), validation (optional,
                                      scored every epoch), test (optional, scored at the end);
                                      File or FastFile mode. No file, or no channels: the
                                      folders train, validation and test in input/data/ are
                                      the channels (anything else there fails the job); with
                                      input/data/ empty, the installed Fashion-MNIST in
                                      /usr/share/datasets/fashion-mnist
  input/config/resourceconfig.json    hosts; every host trains, data-parallel; only hosts[0]
                                      writes the model
  input/config/checkpointconfig.json  its LocalPath, when present, replaces checkpoints/
  input/data/<channel>/               one IDX images file and one IDX labels file, gzipped
                                      or not, found by header up to 16 folders deep; with
                                      a ContentType, that format (text/csv,
                                      application/x-parquet, application/x-npz,
                                      application/x-npy, application/x-image; docs/data.md)
  checkpoints/                        resumable state, every checkpoint_interval epochs and
                                      on SIGTERM; the next run resumes from it unless
                                      start_fresh is true
  model/                              model.safetensors, model.json, metrics.json
  output/failure                      why a job failed, one line of at most 1024 bytes
                                      starting ClientError: (your input; exit 1),
                                      InternalError: (ours or the system's; exit 2) or
                                      Stopped: (SIGTERM, SIGINT or SIGHUP; exit 143). A
                                      second run in a folder in use is refused (exit 1) and
                                      writes nothing
  output/success                      written when a job succeeds
  output/data/                        evaluation.json, model_quality.json (the test set's,
                                      as Model Monitor writes it), predictions.png,
                                      confusion.png, training.png, samples.png (uploaded as
                                      output.tar.gz)

PREDICT: `train predict --help` classifies images with a trained model.

METRICS on stdout, one line per epoch and one for the test set:
  metrics: epoch=1 learning_rate=0.001000 train_loss=0.498 train_accuracy=0.825 ...
  (regexes for SageMaker MetricDefinitions: infra/metric-definitions.json)

HYPERPARAMETERS:
",
    );
    for k in KEYS {
        s.push_str(&format!("  {:<24}", k.name));
        // Wrapped here, indented under the description: clap would wrap at the margin.
        let mut width = 0;
        for word in k.describe().split(' ') {
            if width > 0 && width + 1 + word.len() > 70 {
                s.push_str("\n                          ");
                width = 0;
            }
            s.push(' ');
            s.push_str(word);
            width += 1 + word.len();
        }
        s.push('\n');
    }
    s.push_str(
        "
S3 (--channel NAME=s3://..., --output s3://...):
  Every object under a channel's prefix (read as a folder) lands in input/data/<NAME>/ at its
  key's path below the prefix; keys that would leave that folder are refused. --output gets
  <prefix>/<job-name>/output/model.tar.gz and output.tar.gz, or output/failure.
  Credentials and region: aws-config's standard chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
  AWS_SESSION_TOKEN, AWS_PROFILE and the profile files, container credentials, instance
  metadata; AWS_REGION). Custom endpoints: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (addressed
  path-style).

ENVIRONMENT:
  SAGEMAKER_BASE_DIR   same as --base-dir
  OMP_NUM_THREADS      CPU threads when the threads hyperparameter is 0 (1 to 1024)
  RUST_LOG             log filter (default info)
  TRAINING_JOB_NAME    the job name in --output's layout (default: smtrain-<UTC time>-<hex>)
  SMTRAIN_S3_CONCURRENCY           S3 requests in flight at once (default 16)
  SMTRAIN_S3_MULTIPART_THRESHOLD   files at or above this are moved in parts (default 16MiB)
  SMTRAIN_S3_PART_SIZE             size of those parts, 5MiB to 5GiB (default 8MiB)
  SMTRAIN_S3_STALL_TIMEOUT         seconds a request may go unanswered or a transfer make no
                                   progress before it is retried (3 attempts), then fails the
                                   job naming the object; 1 to 3600 (default 60)",
    );
    s
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // CloudWatch shows raw bytes: colour only for a person at a terminal.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// SIGTERM (SageMaker's and `docker stop`'s), SIGINT and SIGHUP set `stop`; every stage of the
/// job checks it. As PID 1 in a container, a process without handlers would ignore SIGTERM
/// entirely. One that came before these handlers existed was noted by `early`'s. SIGUSR1 and
/// SIGUSR2 are only logged: their default action would end hours of training without a reason.
fn install_signal_handlers(stop: &Arc<AtomicBool>, which: &Arc<AtomicUsize>) -> Result<()> {
    for sig in crate::early::STOPS {
        signal_hook::flag::register(sig, Arc::clone(stop))?;
        signal_hook::flag::register_usize(sig, Arc::clone(which), sig as usize)?;
    }
    for sig in crate::early::IGNORED {
        // SAFETY: the handler only calls write(2), which is async-signal-safe.
        unsafe { signal_hook::low_level::register(sig, move || log_ignored(sig)) }?;
    }
    if let Some(sig) = crate::early::take() {
        which.store(sig as usize, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
    }
    Ok(())
}

/// Says on stderr that `sig` was ignored; runs in the signal handler, so it only writes a
/// message fixed in advance.
fn log_ignored(sig: i32) {
    let msg: &[u8] = match sig {
        signal_hook::consts::SIGUSR1 => {
            b"SIGUSR1 ignored: training stops on SIGTERM, SIGINT or SIGHUP\n"
        }
        _ => b"SIGUSR2 ignored: training stops on SIGTERM, SIGINT or SIGHUP\n",
    };
    // SAFETY: writes a static buffer to stderr; a failed write is of no consequence.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

fn signal_name(sig: usize) -> &'static str {
    match sig as i32 {
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Entry point of the `train` binary: its exit code.
pub fn main() -> u8 {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging();
    let paths = Paths::new(&cli.base_dir);
    match cli.command.unwrap_or_default() {
        Command::Train(after) => {
            let args = cli.train.then(after);
            let opts = job::Options { channels: args.channels };
            run_train(&paths, &opts, args.output.as_ref())
        }
        Command::Serve(args) => {
            crate::early::release();
            let model = args.model.unwrap_or_else(|| crate::serve::default_model(paths.base()));
            match crate::serve::main(&model) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    EXIT_INTERNAL_ERROR
                }
            }
        }
        Command::Predict(_) if !cli.train.channels.is_empty() || cli.train.output.is_some() => {
            Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--channel and --output are training options; predict takes neither",
                )
                .exit()
        }
        Command::Predict(args) => {
            crate::early::release();
            if let Err(e) = crate::device::env_threads() {
                eprintln!("error: {e:#}");
                return predict::EXIT_FAILED;
            }
            let opts = predict::Options {
                model: args.model.unwrap_or_else(|| paths.model_dir()),
                inputs: args.images,
                top_k: args.top_k,
                invert: args.invert,
            };
            predict::main(&opts, args.out.as_deref())
        }
    }
}

fn run_train(paths: &Paths, opts: &job::Options, output: Option<&S3Uri>) -> u8 {
    // Refused before anything under the base is touched: the files there are the other run's.
    let _lock = match lock_base(paths) {
        Ok(lock) => lock,
        Err(e) => {
            let line = failure_line("ClientError", &e);
            tracing::error!("{line}");
            eprintln!("{line}");
            return EXIT_USER_ERROR;
        }
    };
    // Refused before anything is cleared: through a link, the files to clear are not ours.
    if let Err(e) = real_result_folders(paths) {
        let line = failure_line("ClientError", &e);
        tracing::error!("{line}");
        eprintln!("{line}");
        write_verdict(paths, "failure", &format!("{line}\n"));
        return EXIT_USER_ERROR;
    }
    crash::install(paths, exit_now, EXIT_INTERNAL_ERROR);
    clear_earlier_run(paths);
    let stop = Arc::new(AtomicBool::new(false));
    let which = Arc::new(AtomicUsize::new(0));
    // With --output, the destination is checked before training and filled after it.
    let mut upload: Option<s3::Output> = None;
    // Whether the model folder and output/data are complete: a failure after that (an upload)
    // leaves them, since they are this run's real result.
    let mut complete = false;
    let result = install_signal_handlers(&stop, &which)
        .and_then(|()| {
            upload = output.map(s3::Output::prepare).transpose()?;
            let summary = job::run(paths, opts, &stop)?;
            complete = true;
            Ok(summary)
        })
        .and_then(|summary| {
            if let (Some(up), Summary::Trained { .. }) = (&upload, &summary) {
                up.upload_artifacts(paths)?;
            }
            Ok(summary)
        });
    match result {
        Ok(Summary::Trained { test, model_dir }) => {
            tracing::info!(
                model = %model_dir.display(),
                test_accuracy = test.map(|t| format!("{:.4}", t.accuracy)).unwrap_or_else(|| "-".into()),
                "training job succeeded"
            );
            finish_ok(paths)
        }
        Ok(Summary::Worker { host, rank, leader }) => {
            tracing::info!(%host, rank, %leader, "training job succeeded on this host");
            finish_ok(paths)
        }
        Err(err) => {
            if !complete {
                clear_results(paths);
            }
            fail_job(paths, &err, which.load(Ordering::Relaxed), upload.as_ref())
        }
    }
}

/// The folders a job clears of an earlier run's results and then fills, `model/` and
/// `output/data/`, must be real folders: through a symbolic link, the `model.json` a failed run
/// removes could be a file of another folder that this run never wrote.
fn real_result_folders(paths: &Paths) -> Result<()> {
    for dir in [paths.model_dir(), paths.output_data_dir()] {
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
            let target = std::fs::read_link(&dir).unwrap_or_default();
            return Err(crate::error::user(format!(
                "{} is a symbolic link (to {}); the model and output/data folders must be real \
                 folders, since a job removes what an earlier run left in them: mount the \
                 folder there instead",
                dir.display(),
                target.display()
            )));
        }
    }
    Ok(())
}

/// A stale verdict or result from an earlier run in the same folder would contradict this one.
fn clear_earlier_run(paths: &Paths) {
    for stale in [paths.failure_file(), paths.success_file()] {
        let _ = std::fs::remove_file(stale);
    }
    let removed = clear_results(paths) + s3::download::remove_stale_staging(&paths.data_dir());
    if removed > 0 {
        tracing::info!(
            files = removed,
            "removed what an earlier run left in model/, output/data/ and input/data/"
        );
    }
}

/// Reports a failed job (the failure file, stderr, the output prefix) and picks its exit code;
/// `signal` is the one that stopped it, if any.
fn fail_job(paths: &Paths, err: &anyhow::Error, signal: usize, upload: Option<&s3::Output>) -> u8 {
    let (line, code) = if err.is::<Stopped>() {
        let detail = err.downcast_ref::<Stopped>().map_or("", |s| s.0.as_str());
        let why = anyhow::anyhow!("stopped by {}{detail}", signal_name(signal));
        (failure_line("Stopped", &why), EXIT_STOPPED)
    } else if is_user_error(err) {
        (failure_line("ClientError", err), EXIT_USER_ERROR)
    } else if past_file_size_limit(err) {
        let why = anyhow::anyhow!(
            "{err:#}; the process's file size limit (ulimit -f, RLIMIT_FSIZE) is below what the \
             job writes: raise it or remove it"
        );
        (failure_line("InternalError", &why), EXIT_INTERNAL_ERROR)
    } else {
        (failure_line("InternalError", err), EXIT_INTERNAL_ERROR)
    };
    // The log keeps the whole reason; the failure file and stderr's last line the bounded one
    // SageMaker shows.
    tracing::error!("{err:#}");
    eprintln!("{line}");
    write_verdict(paths, "failure", &format!("{line}\n"));
    if let Some(up) = upload {
        up.upload_failure(&format!("{line}\n"));
    }
    code
}

/// Whether a write failed with EFBIG: past the file size limit (SIGXFSZ is ignored for this).
fn past_file_size_limit(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.raw_os_error() == Some(libc::EFBIG))
}

/// Removes the model folder's and `output/data/`'s files (and their temporary files); returns
/// how many there were.
fn clear_results(paths: &Paths) -> usize {
    artifacts::remove_ours(&paths.model_dir(), &artifacts::MODEL_DIR_FILES)
        + artifacts::remove_ours(&paths.output_data_dir(), &crate::report::FILES)
}

/// The base folder, locked for this run until the process ends: two runs in one folder would
/// each write a verdict and a model into the other's.
fn lock_base(paths: &Paths) -> Result<std::fs::File> {
    use anyhow::Context;
    let base = paths.base();
    std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
    let dir = std::fs::File::open(base).with_context(|| format!("opening {}", base.display()))?;
    match dir.try_lock() {
        Ok(()) => Ok(dir),
        Err(std::fs::TryLockError::WouldBlock) => Err(crate::error::user(format!(
            "{}: another training job is running in this folder; wait for it to end, or give \
             this one another --base-dir",
            base.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("locking {}", base.display())))
        }
    }
}

/// A command line that cannot be parsed. For training it is the job's input like any other,
/// so the failure file says what was wrong (SageMaker shows nothing else); `predict` keeps
/// clap's exit code 2 and writes no file.
/// The command line; `serve --help` ends with what the model it would serve takes.
fn parse() -> Result<Cli, clap::Error> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cmd = Cli::command();
    if let Some(summary) = serve_help_model(&args) {
        let help = format!("{}\n\n{summary}", crate::serve::HELP);
        cmd = cmd.mut_subcommand("serve", |c| c.after_long_help(help));
    }
    cmd.try_get_matches_from(args).and_then(|m| Cli::from_arg_matches(&m))
}

/// For `serve --help`: the model `--model` (or the default folder) names, as its `model.json`
/// describes it; `None` for any other command line, or where no model loads.
fn serve_help_model(args: &[std::ffi::OsString]) -> Option<String> {
    let has = |s: &str| args.iter().any(|a| a == s);
    if !has("serve") || !(has("--help") || has("-h")) {
        return None;
    }
    let after = |flag: &str| {
        args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(PathBuf::from)
    };
    let base = after("--base-dir")
        .or_else(|| std::env::var_os("SAGEMAKER_BASE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BASE_DIR));
    let model = after("--model").unwrap_or_else(|| crate::serve::default_model(&base));
    Some(crate::serve::describe_model(&model))
}

fn usage_error(e: clap::Error) -> u8 {
    use clap::error::ErrorKind;
    let _ = e.print();
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        return e.exit_code() as u8;
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.iter().any(|a| a == "predict" || a == "serve") {
        return predict::EXIT_FAILED;
    }
    let rendered = e.render().to_string();
    let first = rendered.lines().find(|l| !l.trim().is_empty()).unwrap_or("unreadable arguments");
    let why = anyhow::anyhow!("command line: {}", first.trim_start_matches("error: "));
    let line = failure_line("ClientError", &why);
    let paths = Paths::new(base_dir_from(&args));
    // Only into a folder no other run is using.
    if let Ok(_lock) = lock_base(&paths) {
        write_verdict(&paths, "failure", &format!("{line}\n"));
    }
    EXIT_USER_ERROR
}

/// `--base-dir` as the arguments give it, else `SAGEMAKER_BASE_DIR`, else `/opt/ml`: what clap
/// would have said, for a command line it could not parse.
fn base_dir_from(args: &[std::ffi::OsString]) -> PathBuf {
    for (i, a) in args.iter().enumerate() {
        let a = a.to_string_lossy();
        if let Some(v) = a.strip_prefix("--base-dir=") {
            return PathBuf::from(v);
        }
        if a == "--base-dir" {
            if let Some(v) = args.get(i + 1) {
                return PathBuf::from(v);
            }
        }
    }
    std::env::var_os("SAGEMAKER_BASE_DIR").map_or_else(|| DEFAULT_BASE_DIR.into(), PathBuf::from)
}

fn finish_ok(paths: &Paths) -> u8 {
    write_verdict(paths, "success", "");
    0
}

/// Ends the process with `code` now, skipping the C++ static destructors and the allocator's
/// teardown: about 0.1 s after a job (SageMaker bills it) in which nothing of ours happens.
/// Everything the job promised is on disk by then (written to temporary names, synced,
/// renamed) and every thread that wrote it has finished.
pub fn exit_now(code: u8) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit only ends the process.
    unsafe { libc::_exit(code.into()) }
}

/// Writes `output/failure` or `output/success`; failing to is logged, never fatal on its own.
fn write_verdict(paths: &Paths, name: &str, text: &str) {
    let path = paths.output_dir().join(name);
    let result = std::fs::create_dir_all(paths.output_dir())
        .map_err(anyhow::Error::from)
        .and_then(|()| write_atomic(&path, text.as_bytes()));
    if let Err(e) = result {
        tracing::error!("cannot write {}: {e:#}", path.display());
    }
}
