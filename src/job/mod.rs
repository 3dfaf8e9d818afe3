//! One training job, end to end, as a short sequence of named stages: read the contract's
//! files, load the data, place the work, join the other hosts, restore or start the state,
//! train, score the test set, write the model and the report. This is where files, the clock
//! and logging meet the pure core (`train`).
//!
//! `channels` finds and loads the data, `hosts` is what a multi-host job adds, `hooks` is what
//! happens as each epoch ends.

mod channels;
mod hooks;
mod hosts;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tracing::info;

use crate::artifacts::{self, DataRecord, ModelCard};
use crate::augment::Augment;
use crate::checkpoint::{self, Checkpointer};
use crate::config::TrainConfig;
use crate::contract::{JobFiles, Paths};
use crate::data::Dataset;
use crate::device::{self, Placement};
use crate::distributed::{Group, Layout, Parallel, Topology};
use crate::error::Stopped;
use crate::metrics::{self, EpochMetrics, Metrics};
use crate::s3::ChannelArg;
use crate::state::{DeviceData, Score, TrainState};
use crate::train::{self, Outcome};
use crate::{budget, report};
pub use channels::{default_sources, resolve_channels, Data, Source, CHANNELS, DEFAULT_DATA_DIR};
use hooks::{Final, JobHooks};

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

/// Refuses, before anything is allocated for training, a configuration that cannot fit in the
/// host's memory. On a GPU the parameters live in device memory, which libtorch checks itself.
fn check_memory(cfg: &TrainConfig, data: &Data, dev: tch::Device) -> Result<()> {
    if dev != tch::Device::Cpu {
        return Ok(());
    }
    let copies = [Some(&data.train), data.validation.as_ref(), data.test.as_ref()]
        .into_iter()
        .flatten()
        .map(|d| {
            // Table features are four bytes each, pixels one.
            let value_bytes = match d.values {
                crate::data::Values::Floats(_) => 4,
                crate::data::Values::Bytes(_) => 1,
            };
            budget::copy_bytes(d.len(), d.features(), value_bytes)
        })
        .fold(0u64, u64::saturating_add);
    let need = budget::estimate(cfg, data.train.features(), copies);
    let Some(room) = budget::room() else { return Ok(()) };
    info!(
        needs = %budget::size(need.growth()),
        state = %budget::size(need.state),
        activations = %budget::size(need.activations),
        data = %budget::size(need.data),
        free = %budget::size(room.free()),
        limit = %room.describe(),
        "memory check"
    );
    budget::check(cfg, &need, &room)
}

/// Runs the job described under `paths` and `opts`.
pub fn run(paths: &Paths, opts: &Options, stop: &AtomicBool) -> Result<Summary> {
    before_training(stop, "starting")?;
    let files = JobFiles::read(paths)?;
    let mut cfg = resolve_config(paths, &files)?;
    let topology = Topology::new(&files.resources, cfg.distributed_port);
    let sharded = topology.world() > 1 && hosts::train_is_sharded(paths, &files, &cfg)?;
    let mut data = channels::load(paths, &files, opts, &cfg, stop)?;
    check_augmentation(&cfg, &data.train)?;
    check_picture_keys(&cfg, &data.train)?;
    before_training(stop, "loading the data")?;
    let group = join_group(&topology, &cfg, stop)?;
    let parallel = match &group {
        Some(g) if sharded => {
            Some(Parallel { group: g, layout: hosts::shard_layout(g, &mut data.train)? })
        }
        Some(g) => Some(Parallel { group: g, layout: Layout::Replicated }),
        None => None,
    };
    prepare(&mut cfg, &mut data, parallel.as_ref())?;
    let cfg = cfg;
    let placement = place(&cfg, &topology, &data)?;
    let trained = train_stage(paths, &files, &cfg, &data, parallel.as_ref(), &placement, stop)?;
    if let Some(g) = &group {
        if let Some(worker) = hosts::finish(g, &topology, &trained.outcome.model)? {
            return Ok(worker);
        }
    }
    let mut trained = trained;
    let finished = score_test(&trained.outcome.model, data.test.as_ref(), placement.device, stop)
        .and_then(|test| {
            write_results(paths, &cfg, &data, &trained, test, &placement, stop).map(|()| test)
        });
    match finished {
        Ok(test) => Ok(Summary::Trained { test, model_dir: paths.model_dir() }),
        Err(e) => match e.downcast::<Stopped>() {
            Ok(Stopped(stage)) => Err(trained.stopped(&stage)),
            Err(e) => Err(e),
        },
    }
}

/// Ends the job before training began when a stop was requested: `Stopped` naming `stage`.
fn before_training(stop: &AtomicBool, stage: &str) -> Result<()> {
    match stop.load(Ordering::Relaxed) {
        true => Err(Stopped(format!(
            " before training began, while {stage}; nothing was written, and running the job \
             again starts it"
        ))
        .into()),
        false => Ok(()),
    }
}

/// Ends a stage after training early when a stop was requested: `Stopped` naming `stage`.
fn unless_stopped(stop: &AtomicBool, stage: &str) -> Result<()> {
    match stop.load(Ordering::Relaxed) {
        true => Err(Stopped(stage.to_string()).into()),
        false => Ok(()),
    }
}

/// Parses the hyperparameters and logs what the job will run with.
fn resolve_config(paths: &Paths, files: &JobFiles) -> Result<TrainConfig> {
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
    Ok(cfg)
}

/// Augmentation moves pixels: it needs images, and images it can move.
fn check_augmentation(cfg: &TrainConfig, train: &Dataset) -> Result<()> {
    match train.input.image() {
        Some(shape) => Augment::new(cfg, shape).map(drop),
        None if cfg.augment_shift > 0 || cfg.augment_flip => Err(crate::error::user(format!(
            "hyperparameters \"augment_shift\" ({}) and \"augment_flip\" ({}) move pixels, \
             but channel \"train\" holds a table ({}): set augment_shift to 0 and augment_flip \
             to false",
            cfg.augment_shift,
            cfg.augment_flip,
            train.input.describe()
        ))),
        None => Ok(()),
    }
}

/// `image_size` and `image_channels` shape pictures as they are decoded: other data is refused
/// rather than silently kept at its own shape.
fn check_picture_keys(cfg: &TrainConfig, train: &Dataset) -> Result<()> {
    let set: Vec<&str> = [("image_size", cfg.image_size.is_some())]
        .into_iter()
        .chain([("image_channels", cfg.image_channels.is_some())])
        .filter_map(|(k, on)| on.then_some(k))
        .collect();
    if set.is_empty() || train.format == crate::data::Format::Images {
        return Ok(());
    }
    Err(crate::error::user(format!(
        "hyperparameter {} shapes pictures (ContentType application/x-image), but channel          \"train\" is {} ({}): remove it, or send the images as PNG or JPEG files",
        set.iter().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(" and "),
        train.format,
        train.input.describe()
    )))
}

/// Settles the classes and standardizes table features, from every host's data when the
/// training data is sharded over the hosts.
fn prepare(cfg: &mut TrainConfig, data: &mut Data, parallel: Option<&Parallel>) -> Result<()> {
    let (max_label, moments) = match parallel {
        Some(Parallel { group, layout: Layout::Sharded(_) }) => hosts::combine_stats(group, data)?,
        _ => (data.max_label(), data.moments()),
    };
    data.resolve_classes(cfg, max_label)?;
    data.standardize(moments.as_ref());
    Ok(())
}

/// Picks the device and threads, and refuses a configuration the host's memory cannot take.
fn place(cfg: &TrainConfig, topology: &Topology, data: &Data) -> Result<Placement> {
    let placement = device::place(cfg.device, cfg.threads, topology.local_processes())?;
    info!(device = %placement.name(), threads = placement.threads, reason = %placement.reason, "device");
    check_memory(cfg, data, placement.device)?;
    Ok(placement)
}

/// Joins the other hosts of a multi-host job; `None` on a single host.
fn join_group(topology: &Topology, cfg: &TrainConfig, stop: &AtomicBool) -> Result<Option<Group>> {
    match topology.world() {
        1 => Ok(None),
        _ => Group::join(topology, Duration::from_secs(cfg.distributed_timeout), stop).map(Some),
    }
}

/// What training produced, with the epochs' metrics and its wall time.
struct Trained {
    outcome: Outcome,
    epochs: Vec<EpochMetrics>,
    seconds: f64,
    checkpointer: Checkpointer,
    /// The finished state's checkpoint (the first host's).
    last: Option<Final>,
}

impl Trained {
    /// The job's end after a stop `while` some stage after training: the finished state's
    /// checkpoint written (if it was only prepared), and the reason saying where it is.
    fn stopped(&mut self, stage: &str) -> anyhow::Error {
        let saved = match self.last.take().map(|f| f.write(&mut self.checkpointer)) {
            Some(Ok(path)) => format!(
                "checkpoint {} holds the finished training; running the job again resumes from \
                 it and writes the model",
                path.display()
            ),
            Some(Err(e)) => format!("the final checkpoint could not be written: {e:#}"),
            None => "no checkpoint holds it".to_string(),
        };
        Stopped(format!(" after training finished, while {stage}; model/ and output/data/ are left empty; {saved}"))
            .into()
    }
}

/// Restores or starts the training state, and trains to the end (or to a stop).
fn train_stage(
    paths: &Paths,
    files: &JobFiles,
    cfg: &TrainConfig,
    data: &Data,
    parallel: Option<&Parallel>,
    placement: &Placement,
    stop: &AtomicBool,
) -> Result<Trained> {
    let dev = placement.device;
    // What checkpoints record and check: the data (with shards, all hosts' together) and how
    // many samples an epoch visits.
    let epoch_samples = train::epoch_len(data.train.len(), cfg.batch_size, parallel);
    let train_data = DeviceData::new(&data.train, dev);
    let validation_data = data.validation.as_ref().map(|d| DeviceData::new(d, dev));
    let (shared_dir, checkpoint_dir) = checkpoint_folders(paths, files)?;
    let steps = train::steps_per_epoch(epoch_samples as i64, cfg.batch_size);
    let checkpointer =
        Checkpointer::new(&checkpoint_dir, cfg, &data.train.fingerprint, epoch_samples, steps)?;
    let leader = files.resources.is_leader();
    let (mut state, metrics, restored) = start_state(
        &checkpointer,
        (&shared_dir, &checkpoint_dir),
        cfg,
        &data.train,
        epoch_samples,
        dev,
        leader,
        parallel,
    )?;
    if matches!(parallel, Some(Parallel { layout: Layout::Sharded(_), .. })) {
        // Each rank's order is its own shard's, derived from the seed as the epoch begins.
        state.order = None;
    }
    let started = Instant::now();
    // A run resumed from its finished checkpoint trains no epoch, and keeps that one.
    let last = restored.filter(|_| state.finished(cfg)).map(Final::Written);
    let mut hooks = JobHooks {
        cfg,
        leader,
        stop,
        checkpointer,
        metrics,
        epoch_started: Instant::now(),
        stopped_at: None,
        last,
    };
    let outcome = match train::resume(
        cfg,
        &train_data,
        validation_data.as_ref(),
        state,
        parallel,
        &mut hooks,
    ) {
        Err(e) if e.is::<Stopped>() => {
            return Err(Stopped(hooks.stopped_at.unwrap_or_default()).into());
        }
        other => other?,
    };
    if let Some(es) = outcome.early_stop {
        info!(
            after = es.stopped_after_epoch,
            best = es.best_epoch,
            "early stopping: kept the best epoch's weights"
        );
    }
    Ok(Trained {
        outcome,
        epochs: hooks.metrics,
        seconds: started.elapsed().as_secs_f64(),
        checkpointer: hooks.checkpointer,
        last: hooks.last,
    })
}

/// The checkpoint folder SageMaker syncs (`checkpointconfig.json`'s `LocalPath`, else
/// `checkpoints/`), and this job's own folder in it, named after `TRAINING_JOB_NAME` when set.
fn checkpoint_folders(paths: &Paths, files: &JobFiles) -> Result<(PathBuf, PathBuf)> {
    let shared = files
        .checkpoint
        .as_ref()
        .and_then(|c| c.local_path.clone())
        .unwrap_or_else(|| paths.checkpoints_dir());
    let name = match std::env::var("TRAINING_JOB_NAME") {
        Ok(name) if !name.is_empty() => {
            crate::s3::location::check_job_name(&name)
                .map_err(|e| crate::error::user(format!("TRAINING_JOB_NAME: {e}")))?;
            Some(name)
        }
        _ => None,
    };
    let own = checkpoint::job_folder(&shared, name.as_deref());
    Ok((shared, own))
}

/// The state training starts from: the first host's newest usable checkpoint (its path too), or
/// a fresh model; in a multi-host job every rank takes the first host's.
#[allow(clippy::too_many_arguments)]
fn start_state(
    checkpointer: &Checkpointer,
    (shared_dir, checkpoint_dir): (&std::path::Path, &std::path::Path),
    cfg: &TrainConfig,
    train_set: &Dataset,
    epoch_samples: usize,
    dev: tch::Device,
    leader: bool,
    parallel: Option<&Parallel>,
) -> Result<(TrainState, Vec<EpochMetrics>, Option<PathBuf>)> {
    // Only the first host reads and writes checkpoints; the others start from what it sends.
    let mine = if !leader {
        None
    } else if cfg.start_fresh {
        info!(dir = %checkpoint_dir.display(), "start_fresh: not resuming from existing checkpoints");
        Some((TrainState::new(cfg, train_set.features(), dev), Vec::new(), None))
    } else {
        let (fp, features) = (&train_set.fingerprint, train_set.features());
        let mut restored =
            checkpoint::load_latest(checkpoint_dir, cfg, fp, epoch_samples, features, dev)?;
        if restored.is_none() && shared_dir != checkpoint_dir {
            restored = checkpoint::load_earlier_job(
                shared_dir,
                checkpoint_dir,
                cfg,
                fp,
                epoch_samples,
                features,
                dev,
            )?;
        }
        Some(match restored {
            Some(r) => (r.state, r.metrics, Some(r.path)),
            None => (TrainState::new(cfg, train_set.features(), dev), Vec::new(), None),
        })
    };
    match parallel {
        Some(p) => {
            let mine = mine.map(|(state, metrics, _)| (state, metrics));
            hosts::share_start(p.group, checkpointer, mine, cfg, train_set, epoch_samples, dev)
                .map(|(state, metrics)| (state, metrics, None))
        }
        None => Ok(mine.expect("a single host is the leader")),
    }
}

/// Scores the test set, if there is one, and prints its metric line.
fn score_test(
    model: &crate::model::Mlp,
    test: Option<&Dataset>,
    dev: tch::Device,
    stop: &AtomicBool,
) -> Result<Option<Score>> {
    const STAGE: &str = "scoring the test set";
    let Some(test) = test else { return Ok(None) };
    unless_stopped(stop, STAGE)?;
    let score = train::evaluate_unless(model, &DeviceData::new(test, dev), &|| {
        stop.load(Ordering::Relaxed)
    })
    .ok_or_else(|| Stopped(STAGE.into()))?;
    println!("{}", metrics::test_line(&score));
    info!(loss = format!("{:.4}", score.loss), accuracy = format!("{:.4}", score.accuracy), "test");
    Ok(Some(score))
}

/// Writes the model folder, then `output/data/` (the evaluation and the pictures).
fn write_results(
    paths: &Paths,
    cfg: &TrainConfig,
    data: &Data,
    trained: &Trained,
    test: Option<Score>,
    placement: &Placement,
    stop: &AtomicBool,
) -> Result<()> {
    let mut records = BTreeMap::new();
    for (name, set) in [
        ("train", Some(&data.train)),
        ("validation", data.validation.as_ref()),
        ("test", data.test.as_ref()),
    ] {
        if let Some(d) = set {
            let record = DataRecord {
                source: d.source.clone(),
                samples: d.len(),
                fingerprint: d.fingerprint.clone(),
            };
            records.insert(name.to_string(), record);
        }
    }
    let model = &trained.outcome.model;
    let card = ModelCard::new(
        cfg,
        model,
        &data.train.input,
        data.scaling.as_ref(),
        records,
        placement.name(),
    );
    let metrics = Metrics {
        epochs: trained.epochs.clone(),
        test,
        early_stop: trained.outcome.early_stop.map(Into::into),
        data_load_seconds: data.load_seconds,
        train_seconds: trained.seconds,
    };
    let model_dir = paths.model_dir();
    unless_stopped(stop, "writing the model")?;
    artifacts::write_model_dir(&model_dir, model, &card, &metrics)?;
    info!(dir = %model_dir.display(), "model written");
    let report = report::Inputs {
        model,
        device: placement.device,
        class_names: &cfg.class_names,
        train: &data.train,
        validation: data.validation.as_ref(),
        test: data.test.as_ref().zip(test),
        metrics: &metrics,
        stop,
    };
    let written = report::write(&paths.output_data_dir(), &report)?;
    info!(dir = %paths.output_data_dir().display(), files = written.len(), "output data written");
    Ok(())
}
