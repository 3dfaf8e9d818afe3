//! One training job, end to end: read the contract's files, resolve channels, load data, train,
//! evaluate, write artifacts. This is where files, the clock and logging meet the pure core.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tracing::info;

use crate::artifacts::{self, DataRecord, ModelCard};
use crate::checkpoint::{self, Checkpointer};
use crate::config::TrainConfig;
use crate::contract::{InputMode, JobFiles, Paths};
use crate::data::{self, Dataset};
use crate::distributed::{Group, Layout, Parallel, Topology};
use crate::error::{user, Stopped};
use crate::metrics::{self, EpochMetrics, Metrics};
use crate::report;
use crate::s3::{self, ChannelArg, Location, S3Uri};
use crate::train::{self, DeviceData, EpochStats, Hooks, Score, TrainState};
use crate::{budget, device};

/// Where Debian's `dataset-fashion-mnist` installs the real data (and where the image keeps it).
pub const DEFAULT_DATA_DIR: &str = "/usr/share/datasets/fashion-mnist";
/// The channels this trainer reads.
pub const CHANNELS: [&str; 3] = ["train", "validation", "test"];

/// Where one channel's data comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A folder searched for one images and one labels file (SageMaker's File mode layout).
    Dir(PathBuf),
    /// An explicit pair of files (the installed Fashion-MNIST).
    Pair { images: PathBuf, labels: PathBuf },
    /// An S3 prefix, downloaded into `input/data/<channel>/` before any data is loaded.
    S3(S3Uri),
}

/// What the command line adds to the contract's files.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--channel NAME=URI`: added to, or replacing, `inputdataconfig.json`'s channels.
    pub channels: Vec<ChannelArg>,
}

/// What a job did, for `main` and the tests.
#[derive(Debug)]
pub enum Summary {
    Trained {
        test: Option<Score>,
        model_dir: PathBuf,
    },
    /// Another than the first host of a multi-host job: it trained its share; the first host
    /// wrote the model.
    Worker {
        host: String,
        rank: usize,
        leader: String,
    },
}

/// Runs the job described under `paths` and `opts`.
pub fn run(paths: &Paths, opts: &Options, stop: &AtomicBool) -> Result<Summary> {
    let files = JobFiles::read(paths)?;
    let cfg = TrainConfig::from_hyperparameters(&files.hyperparameters)
        .with_context(|| paths.hyperparameters().display().to_string())?;
    device::env_threads()?;
    info!(config = %serde_json::to_string(&cfg)?, "resolved hyperparameters");
    let rc = &files.resources;
    info!(
        host = %rc.current_host,
        hosts = ?rc.hosts,
        instance_type = rc.current_instance_type.as_deref().unwrap_or("unknown"),
        "resource config"
    );
    let topology = Topology::new(rc, cfg.distributed_port);
    let leader = rc.is_leader();
    let sharded = topology.world() > 1 && train_is_sharded(paths, &files, &cfg)?;

    let sources = resolve_channels(paths, &files, &opts.channels)?;
    let sources = fetch_remote(paths, sources, stop)?;
    let load_start = Instant::now();
    let mut sets = load_channels(&sources, cfg.num_classes)?;
    let data_load_seconds = load_start.elapsed().as_secs_f64();
    let train_set = sets.remove("train").expect("train channel resolved");
    let split_used = !sets.contains_key("validation") && cfg.validation_split > 0.0;
    let (mut train_set, validation_set) = match sets.remove("validation") {
        Some(v) => (train_set, Some(v)),
        None if cfg.validation_split > 0.0 => {
            let (t, v) = train_set.split_tail(cfg.validation_split);
            (t, Some(v))
        }
        None => (train_set, None),
    };
    let test_set = sets.remove("test");
    check_shapes(&train_set, [("validation", &validation_set), ("test", &test_set)])?;
    check_sizes(&cfg, split_used, &train_set, validation_set.as_ref(), test_set.as_ref())?;
    info!(
        train = train_set.len(),
        validation = validation_set.as_ref().map_or(0, Dataset::len),
        test = test_set.as_ref().map_or(0, Dataset::len),
        image = %format!("{}x{}", train_set.rows, train_set.cols),
        seconds = format!("{data_load_seconds:.3}"),
        "data loaded"
    );

    let placement = device::place(cfg.device, cfg.threads, topology.local_processes())?;
    info!(device = %placement.name(), threads = placement.threads, reason = %placement.reason, "device");
    check_memory(&cfg, &train_set, placement.device)?;
    let group = match topology.world() {
        1 => None,
        _ => Some(Group::join(&topology, Duration::from_secs(cfg.distributed_timeout), stop)?),
    };
    let parallel = match &group {
        Some(g) if sharded => Some(Parallel { group: g, layout: shard_layout(g, &mut train_set)? }),
        Some(g) => Some(Parallel { group: g, layout: Layout::Replicated }),
        None => None,
    };
    // What checkpoints record and check: the data (with shards, all hosts' together) and how
    // many samples an epoch visits.
    let epoch_samples = train::epoch_len(train_set.len(), cfg.batch_size, parallel.as_ref());
    let dev = placement.device;
    let train_data = DeviceData::new(&train_set, dev);
    let validation_data = validation_set.as_ref().map(|d| DeviceData::new(d, dev));

    let checkpoint_dir = files
        .checkpoint
        .as_ref()
        .and_then(|c| c.local_path.clone())
        .unwrap_or_else(|| paths.checkpoints_dir());
    let steps = train::steps_per_epoch(epoch_samples as i64, cfg.batch_size);
    let checkpointer =
        Checkpointer::new(&checkpoint_dir, &cfg, &train_set.fingerprint, epoch_samples, steps)?;
    // Only the first host reads and writes checkpoints; the others start from what it sends.
    let start = if !leader {
        None
    } else if cfg.start_fresh {
        info!(dir = %checkpoint_dir.display(), "start_fresh: not resuming from existing checkpoints");
        Some((TrainState::new(&cfg, train_set.features(), dev), Vec::new()))
    } else {
        let restored = checkpoint::load_latest(
            &checkpoint_dir,
            &cfg,
            &train_set.fingerprint,
            epoch_samples,
            train_set.features(),
            dev,
        )?;
        Some(match restored {
            Some(r) => (r.state, r.metrics),
            None => (TrainState::new(&cfg, train_set.features(), dev), Vec::new()),
        })
    };
    let (mut state, metrics) = match &group {
        Some(g) => share_start(g, &checkpointer, start, &cfg, &train_set, epoch_samples, dev)?,
        None => start.expect("a single host is the leader"),
    };
    if sharded {
        // Each rank's order is its own shard's, derived from the seed as the epoch begins.
        state.order = None;
    }

    let train_start = Instant::now();
    let mut hooks = JobHooks {
        cfg: &cfg,
        leader,
        stop,
        checkpointer,
        metrics,
        last: Instant::now(),
        stopped_at: None,
    };
    let outcome = match train::resume(
        &cfg,
        &train_data,
        validation_data.as_ref(),
        state,
        parallel.as_ref(),
        &mut hooks,
    ) {
        Err(e) if e.is::<Stopped>() => {
            return Err(Stopped(hooks.stopped_at.unwrap_or_default()).into());
        }
        other => other?,
    };
    let epochs = hooks.metrics;
    let train_seconds = train_start.elapsed().as_secs_f64();
    if let Some(es) = outcome.early_stop {
        info!(
            after = es.stopped_after_epoch,
            best = es.best_epoch,
            "early stopping: kept the best epoch's weights"
        );
    }

    if let Some(g) = &group {
        let (count, mean) = g.all_reduce_stats();
        info!(
            all_reduces = count,
            mean_ms = format!("{:.3}", mean.as_secs_f64() * 1e3),
            "exchanges with the other hosts"
        );
        check_weights_agree(g, &outcome.model.flat)?;
        if !leader {
            info!(leader = %topology.master(), "this host's share is done; the first host writes the model");
            return Ok(Summary::Worker {
                host: topology.host().to_string(),
                rank: topology.rank,
                leader: topology.master().to_string(),
            });
        }
    }

    let test = test_set.as_ref().map(|t| {
        let score = train::evaluate(&outcome.model, &DeviceData::new(t, dev));
        println!("{}", metrics::test_line(&score));
        info!(
            loss = format!("{:.4}", score.loss),
            accuracy = format!("{:.4}", score.accuracy),
            "test"
        );
        score
    });

    let mut records = BTreeMap::new();
    for (name, set) in [
        ("train", Some(&train_set)),
        ("validation", validation_set.as_ref()),
        ("test", test_set.as_ref()),
    ] {
        if let Some(d) = set {
            records.insert(
                name.to_string(),
                DataRecord {
                    source: d.source.clone(),
                    samples: d.len(),
                    fingerprint: d.fingerprint.clone(),
                },
            );
        }
    }
    let card = ModelCard::new(
        &cfg,
        &outcome.model,
        [train_set.rows, train_set.cols],
        records,
        placement.name(),
    );
    let metrics = Metrics {
        epochs,
        test,
        early_stop: outcome.early_stop.map(Into::into),
        data_load_seconds,
        train_seconds,
    };
    let model_dir = paths.model_dir();
    artifacts::write_model_dir(&model_dir, &outcome.model, &card, &metrics)?;
    info!(dir = %model_dir.display(), "model written");
    let report = report::Inputs {
        model: &outcome.model,
        device: dev,
        class_names: &cfg.class_names,
        train: &train_set,
        validation: validation_set.as_ref(),
        test: test_set.as_ref().zip(test),
        metrics: &metrics,
    };
    let written = report::write(&paths.output_data_dir(), &report)?;
    info!(dir = %paths.output_data_dir().display(), files = written.len(), "output data written");
    Ok(Summary::Trained { test, model_dir })
}

/// Whether a multi-host job's train channel is sharded (ShardedByS3Key: each host its own
/// part). Validation and test data must be the same on every host: every host scores the
/// validation data to take the same early-stopping decisions, and the first host scores the test
/// data for everyone.
fn train_is_sharded(paths: &Paths, files: &JobFiles, cfg: &TrainConfig) -> Result<bool> {
    let config = paths.input_data_config();
    let mut sharded = false;
    for (name, spec) in files.input_data.iter().flatten() {
        if spec.distribution.as_deref() != Some("ShardedByS3Key") {
            continue;
        }
        if name != "train" {
            return Err(user(format!(
                "{}: channel \"{name}\" uses S3DistributionType ShardedByS3Key; in a multi-host \
                 job only \"train\" may be sharded (every host scores the same {name} data); use \
                 FullyReplicated",
                config.display()
            )));
        }
        sharded = true;
    }
    if sharded && cfg.validation_split > 0.0 {
        return Err(user(format!(
            "{}: hyperparameter validation_split={} would hold out a different part of each \
             host's train shard; with a sharded train channel, give a FullyReplicated \
             validation channel instead",
            config.display(),
            cfg.validation_split
        )));
    }
    Ok(sharded)
}

/// With a sharded train channel: every host's shard size, and one fingerprint of all shards in
/// rank order (what checkpoints check), set on `train`.
fn shard_layout(g: &Group, train: &mut Dataset) -> Result<Layout> {
    let mine = format!("{} {}", train.len(), train.fingerprint);
    let all = g.all_gather_bytes(mine.as_bytes())?;
    let mut sizes = Vec::new();
    let mut hash = blake3::Hasher::new();
    for (rank, bytes) in all.iter().enumerate() {
        let text = String::from_utf8_lossy(bytes);
        let size = text.split(' ').next().and_then(|n| n.parse().ok());
        let size = size.ok_or_else(|| {
            anyhow::anyhow!("{} sent an unreadable shard description", g.topology.describe(rank))
        })?;
        sizes.push(size);
        hash.update(bytes);
        hash.update(b"\n");
    }
    train.fingerprint = format!("shards:blake3:{}", hash.finalize().to_hex());
    info!(shards = ?sizes, fingerprint = %train.fingerprint, "train channel sharded over the hosts");
    Ok(Layout::Sharded(sizes))
}

/// Rank 0's starting state (fresh, or resumed from its checkpoints) on every rank: initial
/// weights, optimizer state and position all come from the first host, as in PyTorch DDP. A
/// rank whose configuration or data differ refuses it, and every rank fails saying so.
fn share_start(
    g: &Group,
    checkpointer: &Checkpointer,
    mine: Option<(TrainState, Vec<EpochMetrics>)>,
    cfg: &TrainConfig,
    train_set: &Dataset,
    epoch_samples: usize,
    dev: tch::Device,
) -> Result<(TrainState, Vec<EpochMetrics>)> {
    let bytes = match &mine {
        Some((state, metrics)) => checkpointer.encode(state, metrics)?,
        None => Vec::new(),
    };
    let bytes = g.broadcast_bytes(&bytes)?;
    let origin = g.topology.describe(0);
    let received = match mine {
        Some(start) => Ok(start),
        None => checkpoint::from_bytes(
            &bytes,
            &format!("the starting state sent by {origin}"),
            cfg,
            &train_set.fingerprint,
            epoch_samples,
            train_set.features(),
            dev,
        )
        .map(|r| (r.state, r.metrics)),
    };
    let refused = g.all_ok(received.is_ok())?;
    let start = received?;
    if !refused.is_empty() {
        let who: Vec<String> = refused.iter().map(|&r| g.topology.describe(r)).collect();
        return Err(user(format!(
            "{} refused the starting state sent by {origin}: other hyperparameters or other \
             training data there (that host's log names the difference)",
            who.join(", ")
        )));
    }
    info!(from = %origin, bytes = bytes.len(), "starting state shared");
    Ok(start)
}

/// Fails unless every rank ended with rank 0's exact weights: they must, and a silent
/// divergence would ship one host's model as everyone's.
fn check_weights_agree(g: &Group, params: &tch::Tensor) -> Result<()> {
    let mut bytes = vec![0u8; params.numel() * 4];
    params.to_device(tch::Device::Cpu).copy_data_u8(&mut bytes, params.numel());
    let mine = blake3::hash(&bytes);
    let first = g.broadcast_bytes(mine.as_bytes())?;
    let disagree = g.all_ok(first == mine.as_bytes())?;
    if !disagree.is_empty() {
        let who: Vec<String> = disagree.iter().map(|&r| g.topology.describe(r)).collect();
        anyhow::bail!(
            "the weights of {} differ from {}'s after training (blake3 here {mine})",
            who.join(", "),
            g.topology.describe(0)
        );
    }
    info!(weights_blake3 = %mine, "weights identical on every host");
    Ok(())
}

/// What the job does around the pure training loop: metric lines, logs and checkpoints.
struct JobHooks<'a> {
    cfg: &'a TrainConfig,
    /// The first host: the only one that prints metric lines and writes checkpoints.
    leader: bool,
    stop: &'a AtomicBool,
    checkpointer: Checkpointer,
    metrics: Vec<EpochMetrics>,
    last: Instant,
    /// Where training stood when a stop was requested, for the failure reason.
    stopped_at: Option<String>,
}

impl Hooks for JobHooks<'_> {
    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn epoch_done(&mut self, s: &EpochStats, state: &TrainState) -> Result<()> {
        let seconds = self.last.elapsed().as_secs_f64();
        let m = EpochMetrics {
            epoch: s.epoch,
            learning_rate: s.learning_rate,
            train_loss: s.train.loss,
            train_accuracy: s.train.accuracy,
            validation_loss: s.validation.map(|v| v.loss),
            validation_accuracy: s.validation.map(|v| v.accuracy),
            seconds,
            samples_per_second: s.samples as f64 / seconds.max(1e-9),
        };
        info!(
            epoch = %format!("{}/{}", s.epoch, self.cfg.epochs),
            train_loss = format!("{:.4}", m.train_loss),
            train_accuracy = format!("{:.4}", m.train_accuracy),
            seconds = format!("{seconds:.3}"),
            "epoch done"
        );
        if self.leader {
            println!("{}", metrics::epoch_line(&m));
        }
        self.metrics.push(m);
        let interval = self.cfg.checkpoint_interval;
        let due = interval > 0 && (s.epoch.is_multiple_of(interval) || state.finished(self.cfg));
        if self.leader && due {
            self.checkpointer.save(state, &self.metrics)?;
        }
        self.last = Instant::now();
        Ok(())
    }

    fn stopping(&mut self, state: &TrainState) -> Result<()> {
        if !self.leader {
            self.stopped_at = Some(format!(
                " at epoch {} step {}; the first host wrote the checkpoint",
                state.epoch + 1,
                state.step
            ));
            return Ok(());
        }
        let path = self.checkpointer.save(state, &self.metrics)?;
        self.stopped_at = Some(format!(
            " at epoch {} step {}; checkpoint {} written; running the job again resumes from it",
            state.epoch + 1,
            state.step,
            path.display()
        ));
        Ok(())
    }
}

/// Decides where each channel's data comes from: `inputdataconfig.json`'s channels, with the
/// command line's `--channel`s added or replacing those of the same name.
pub fn resolve_channels(
    paths: &Paths,
    files: &JobFiles,
    cli: &[ChannelArg],
) -> Result<BTreeMap<String, Source>> {
    let config_file = paths.input_data_config();
    let empty = Default::default();
    let channels = files.input_data.as_ref().unwrap_or(&empty);
    if channels.is_empty() && cli.is_empty() {
        refuse_unconfigured_data(paths)?;
        info!(
            dir = DEFAULT_DATA_DIR,
            "no channels configured: training on the installed Fashion-MNIST"
        );
        return Ok(default_sources(Path::new(DEFAULT_DATA_DIR)));
    }
    for (i, c) in cli.iter().enumerate() {
        if cli[..i].iter().any(|d| d.name == c.name) {
            return Err(user(format!("--channel {}: given more than once", c.name)));
        }
        if !CHANNELS.contains(&c.name.as_str()) {
            return Err(user(format!(
                "--channel {}: \"{}\" is not a channel this trainer reads (train, validation, \
                 test)",
                c.name, c.name
            )));
        }
    }
    let origin = match (channels.is_empty(), cli.is_empty()) {
        (false, true) => config_file.display().to_string(),
        (true, false) => "--channel".to_string(),
        _ => format!("{} and --channel", config_file.display()),
    };
    let mut names: Vec<&str> = channels.keys().map(String::as_str).collect();
    names.extend(cli.iter().map(|c| c.name.as_str()).filter(|n| !channels.contains_key(*n)));
    if !names.contains(&"train") {
        return Err(user(format!(
            "{origin}: channels {names:?} are configured but \"train\" is not (train is \
             required; validation and test are optional)"
        )));
    }
    let mut out = BTreeMap::new();
    for (name, spec) in channels {
        if !CHANNELS.contains(&name.as_str()) {
            return Err(user(format!(
                "{}: channel \"{name}\" is not one this trainer reads (train, validation, test)",
                config_file.display()
            )));
        }
        if cli.iter().any(|c| &c.name == name) {
            continue;
        }
        if spec.mode() == InputMode::Pipe {
            return Err(user(format!(
                "{}: channel \"{name}\" uses Pipe mode, which this trainer does not support yet; \
                 use File or FastFile",
                config_file.display()
            )));
        }
        if spec.record_wrapper.as_deref().is_some_and(|w| !w.eq_ignore_ascii_case("None")) {
            return Err(user(format!(
                "{}: channel \"{name}\" uses RecordWrapperType {}, which this trainer does not \
                 read; use None (plain IDX files)",
                config_file.display(),
                spec.record_wrapper.as_deref().unwrap_or_default()
            )));
        }
        info!(channel = %name, mode = ?spec.mode(), distribution = spec.distribution.as_deref().unwrap_or("-"), "channel");
        out.insert(name.clone(), Source::Dir(paths.channel_dir(name)));
    }
    for c in cli {
        let (source, from) = match &c.location {
            Location::S3(uri) => (Source::S3(uri.clone()), uri.to_string()),
            Location::Local(dir) => (Source::Dir(dir.clone()), dir.display().to_string()),
        };
        info!(channel = %c.name, %from, "channel from the command line");
        out.insert(c.name.clone(), source);
    }
    Ok(out)
}

/// With no channels configured the job trains on the installed Fashion-MNIST; data laid out
/// under `input/data/` would then be silently ignored, which is never what was meant.
fn refuse_unconfigured_data(paths: &Paths) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(paths.data_dir()) else { return Ok(()) };
    let mut found: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    found.sort();
    Err(user(format!(
        "{} configures no channels, but {} holds {}: declare the channels there (or pass \
         --channel), or remove that data to train on the installed Fashion-MNIST",
        paths.input_data_config().display(),
        paths.data_dir().display(),
        crate::error::clip(&found.join(", "), 200)
    )))
}

/// Downloads the channels that live in S3 into their `input/data/<channel>/` folders, all
/// listed before any is downloaded, and points their sources there.
fn fetch_remote(
    paths: &Paths,
    sources: BTreeMap<String, Source>,
    stop: &AtomicBool,
) -> Result<BTreeMap<String, Source>> {
    let remote: Vec<s3::ChannelDownload> = sources
        .iter()
        .filter_map(|(name, src)| match src {
            Source::S3(uri) => Some(s3::ChannelDownload {
                name: name.clone(),
                uri: uri.clone(),
                dir: paths.channel_dir(name),
            }),
            _ => None,
        })
        .collect();
    if remote.is_empty() {
        return Ok(sources);
    }
    s3::download_channels(&remote, stop)?;
    Ok(sources
        .into_iter()
        .map(|(name, src)| match src {
            Source::S3(_) => {
                let dir = paths.channel_dir(&name);
                (name, Source::Dir(dir))
            }
            other => (name, other),
        })
        .collect())
}

/// The installed Fashion-MNIST as train and test channels.
pub fn default_sources(dir: &Path) -> BTreeMap<String, Source> {
    let pair = |prefix: &str| Source::Pair {
        images: dir.join(format!("{prefix}-images-idx3-ubyte.gz")),
        labels: dir.join(format!("{prefix}-labels-idx1-ubyte.gz")),
    };
    BTreeMap::from([("train".to_string(), pair("train")), ("test".to_string(), pair("t10k"))])
}

/// Loads every channel, all at once: decompressing and hashing the files is most of the cost,
/// and it runs in parallel.
fn load_channels(
    sources: &BTreeMap<String, Source>,
    classes: usize,
) -> Result<BTreeMap<String, Dataset>> {
    std::thread::scope(|s| {
        let loads: Vec<_> = sources
            .iter()
            .map(|(name, src)| (name, s.spawn(move || load_source(name, src, classes))))
            .collect();
        loads
            .into_iter()
            .map(|(name, h)| Ok((name.clone(), h.join().expect("channel loader panicked")?)))
            .collect()
    })
}

fn load_source(name: &str, src: &Source, classes: usize) -> Result<Dataset> {
    match src {
        Source::Dir(dir) => data::load_channel(name, dir, classes),
        Source::Pair { images, labels } => {
            if !images.exists() {
                return Err(user(format!(
                    "channel \"{name}\": {} does not exist (install Debian's \
                     dataset-fashion-mnist, or configure channels)",
                    images.display()
                )));
            }
            data::load_pair(images, labels, classes)
        }
        Source::S3(uri) => {
            anyhow::bail!("channel \"{name}\": {uri} was not downloaded before loading")
        }
    }
}

/// Refuses data that leaves nothing to learn from or to score: a model trained on no samples
/// would be reported as a success with a loss of `null`.
fn check_sizes(
    cfg: &TrainConfig,
    split_used: bool,
    train: &Dataset,
    validation: Option<&Dataset>,
    test: Option<&Dataset>,
) -> Result<()> {
    let held_out = validation.map_or(0, Dataset::len);
    let split = |left: &str| {
        format!(
            "hyperparameter \"validation_split\" is {}: of {} training samples it holds out {} \
             and leaves {} {left}",
            cfg.validation_split,
            train.len() + held_out,
            held_out,
            train.len()
        )
    };
    if train.is_empty() {
        return Err(user(if split_used {
            split("to train on; lower it, or give a validation channel")
        } else {
            format!("channel \"train\" has no samples to train on ({})", train.source)
        }));
    }
    for (name, set) in [("validation", validation), ("test", test)] {
        if let Some(d) = set.filter(|d| d.is_empty()) {
            return Err(user(if name == "validation" && split_used {
                split("to train on, but none to validate on; raise it or give a validation channel")
            } else {
                format!("channel \"{name}\" has no samples to score ({})", d.source)
            }));
        }
    }
    if cfg.early_stopping_patience > 0 && validation.is_none() {
        return Err(user(format!(
            "hyperparameter \"early_stopping_patience\" is {}, but there is no validation data \
             to watch: add a validation channel or set validation_split",
            cfg.early_stopping_patience
        )));
    }
    Ok(())
}

/// Refuses, before anything is allocated for training, a configuration that cannot fit in the
/// host's memory. On a GPU the parameters live in device memory, which libtorch checks itself.
fn check_memory(cfg: &TrainConfig, train: &Dataset, dev: tch::Device) -> Result<()> {
    if dev != tch::Device::Cpu {
        return Ok(());
    }
    let need = budget::estimate(cfg, train.len(), train.features());
    match budget::room() {
        Some(room) => budget::check(cfg, &need, &room),
        None => Ok(()),
    }
}

fn check_shapes<'a>(
    train: &Dataset,
    others: impl IntoIterator<Item = (&'a str, &'a Option<Dataset>)>,
) -> Result<()> {
    for (name, set) in others {
        if let Some(d) = set {
            if (d.rows, d.cols) != (train.rows, train.cols) {
                return Err(user(format!(
                    "channel \"{name}\" has {}x{} images but \"train\" has {}x{} ({})",
                    d.rows, d.cols, train.rows, train.cols, d.source
                )));
            }
        }
    }
    Ok(())
}
