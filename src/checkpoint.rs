//! Checkpoints: everything needed to continue a run bit-exactly after SageMaker stops it (spot
//! interruption, `StopTrainingJob`, MaxRuntime) and starts it again with `/opt/ml/checkpoints`
//! restored.
//!
//! One safetensors file per checkpoint, `checkpoint-<position>.safetensors`, where the position
//! counts optimizer steps from the start of the run so names sort by progress. Tensors: the flat
//! parameters, the optimizer state, the epoch's running loss and accuracy sums, the epoch's
//! sample order, the best weights so far (early stopping). The metadata holds the epoch and
//! step, the metrics so far, the resolved hyperparameters, the training data's fingerprint and
//! a SHA-256 over the tensors' bytes. Random numbers (shuffles, dropout) are derived from
//! (seed, epoch, step), so that is their whole state.
//!
//! Files are written under a temporary name, synced and renamed. Older checkpoints are deleted
//! only after a newer one is complete (SageMaker mirrors deletions to S3). Nothing read back is
//! trusted: size, dtypes, shapes and the checksum are checked; a corrupt file is skipped in
//! favour of the previous one.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};
use tracing::{info, warn};

use crate::config::TrainConfig;
use crate::error::user;
use crate::metrics::EpochMetrics;
use crate::model::{self, Mlp};
use crate::optim::Optimizer;
use crate::state::{Best, EarlyStop, EpochStats, Score, TrainState};

pub const FORMAT_VERSION: u32 = 1;
const PREFIX: &str = "checkpoint-";
const SUFFIX: &str = ".safetensors";
const META_KEY: &str = "smtrain";

/// What a checkpoint says about itself, beside the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    format_version: u32,
    trainer_version: String,
    epoch: usize,
    step: usize,
    optimizer_steps: u64,
    config: serde_json::Value,
    train_fingerprint: String,
    train_samples: usize,
    metrics: Vec<EpochMetrics>,
    best: Option<(f64, usize)>,
    early_stop: Option<EarlyStop>,
    tensors_sha256: String,
}

/// A tensor's bytes on the host, ready for safetensors.
struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn to_host(t: &Tensor) -> HostTensor {
    let t = t.to_device(Device::Cpu).contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let (dtype, data) = match t.kind() {
        Kind::Int64 => {
            let v: Vec<i64> = Vec::try_from(t.flatten(0, -1)).expect("int64 tensor");
            (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
        _ => {
            let v: Vec<f32> =
                Vec::try_from(t.to_kind(Kind::Float).flatten(0, -1)).expect("float tensor");
            (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
    };
    HostTensor { dtype, shape, data }
}

/// SHA-256 over the tensors' names and bytes, in name order.
fn digest<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut sorted: Vec<_> = tensors.into_iter().collect();
    sorted.sort_by_key(|(n, _)| *n);
    let mut h = Sha256::new();
    for (name, data) in sorted {
        h.update(name.as_bytes());
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    format!("{:x}", h.finalize())
}

fn file_name(position: u64) -> String {
    format!("{PREFIX}{position:012}{SUFFIX}")
}

/// Checkpoint files in `dir`, newest first.
fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            name.starts_with(PREFIX) && name.ends_with(SUFFIX)
        })
        .collect();
    files.sort();
    files.reverse();
    Ok(files)
}

/// A checkpoint's bytes and its position (optimizer steps from the start of the run).
pub struct Encoded {
    position: u64,
    bytes: Vec<u8>,
}

/// Removes the partial checkpoints a killed run left in `dir` (`.checkpoint-….tmp`, this
/// trainer's temporary names), which SageMaker would otherwise sync to S3 for ever. `dir` is
/// this job's own folder: only a run of the same job writes such names there.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with(&format!(".{PREFIX}")) && name.ends_with(".tmp");
        if ours && entry.file_type().is_ok_and(|t| t.is_file()) {
            info!(file = %name, "removing a partial checkpoint an earlier run left");
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes checkpoints for one run and prunes old ones.
pub struct Checkpointer {
    dir: PathBuf,
    keep: usize,
    config: serde_json::Value,
    train_fingerprint: String,
    train_samples: usize,
    steps_per_epoch: usize,
    /// Checkpoints of an earlier run that `start_fresh` set aside: deleted once this run has a
    /// complete checkpoint of its own.
    superseded: Vec<PathBuf>,
}

impl Checkpointer {
    pub fn new(
        dir: &Path,
        cfg: &TrainConfig,
        fingerprint: &str,
        samples: usize,
        steps_per_epoch: usize,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        remove_stale_temps(dir);
        let superseded = if cfg.start_fresh { list(dir)? } else { Vec::new() };
        Ok(Self {
            dir: dir.to_path_buf(),
            keep: cfg.checkpoint_keep,
            config: serde_json::to_value(cfg)?,
            train_fingerprint: fingerprint.to_string(),
            train_samples: samples,
            steps_per_epoch,
            superseded,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A checkpoint of `state` (with the job's metrics so far) as the bytes of its file: what
    /// `save` writes, and what rank 0 of a multi-host job sends the others as their start.
    pub fn encode(&self, state: &TrainState, metrics: &[EpochMetrics]) -> Result<Vec<u8>> {
        let mut tensors: Vec<(&str, HostTensor)> = vec![
            ("params", to_host(&state.model.flat)),
            ("loss_sum", to_host(&state.loss_sum)),
            ("correct", to_host(&state.correct)),
        ];
        for (name, t) in state.optimizer.state() {
            tensors.push((name, to_host(t)));
        }
        // The order matters only mid-epoch; at step 0 (a stop right as an epoch begins) it is
        // derived again from the seed, as `read` expects.
        if let (Some(order), true) = (&state.order, state.step > 0) {
            tensors.push(("order", to_host(order)));
        }
        if let Some(best) = &state.best {
            tensors.push(("best_params", to_host(&best.params)));
        }
        let meta = Meta {
            format_version: FORMAT_VERSION,
            trainer_version: env!("CARGO_PKG_VERSION").into(),
            epoch: state.epoch,
            step: state.step,
            optimizer_steps: state.optimizer.steps(),
            config: self.config.clone(),
            train_fingerprint: self.train_fingerprint.clone(),
            train_samples: self.train_samples,
            metrics: metrics.to_vec(),
            best: state.best.as_ref().map(|b| (b.loss, b.epoch)),
            early_stop: state.early_stop,
            tensors_sha256: digest(tensors.iter().map(|(n, t)| (*n, t.data.as_slice()))),
        };
        let info = HashMap::from([(META_KEY.to_string(), serde_json::to_string(&meta)?)]);
        safetensors::tensor::serialize(tensors.iter().map(|(n, t)| (*n, t)), &Some(info))
            .map_err(|e| anyhow::anyhow!("serialising the training state: {e:?}"))
    }

    /// Writes a checkpoint of `state` (with the job's metrics so far) and prunes older ones.
    pub fn save(&mut self, state: &TrainState, metrics: &[EpochMetrics]) -> Result<PathBuf> {
        let bytes = self.encode(state, metrics)?;
        self.write(&Encoded { position: self.position(state), bytes })
    }

    /// `state`'s checkpoint, made now and written only if [`Self::write`] is called: the final
    /// state of a run that keeps no checkpoints, needed only if a stop comes before the end.
    pub fn prepare(&self, state: &TrainState, metrics: &[EpochMetrics]) -> Result<Encoded> {
        Ok(Encoded { position: self.position(state), bytes: self.encode(state, metrics)? })
    }

    fn position(&self, state: &TrainState) -> u64 {
        (state.epoch * self.steps_per_epoch + state.step) as u64
    }

    /// Writes an encoded checkpoint and prunes older ones.
    pub fn write(&mut self, encoded: &Encoded) -> Result<PathBuf> {
        let (position, bytes) = (encoded.position, &encoded.bytes);
        let path = self.dir.join(file_name(position));
        let tmp = self.dir.join(format!(".{}.{}.tmp", file_name(position), std::process::id()));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            std::io::Write::write_all(&mut f, bytes)?;
            f.sync_all()
        });
        if let Err(e) = written {
            // SageMaker would upload the part as it syncs the folder.
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("writing {}", tmp.display()));
        }
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).ok();
        info!(path = %path.display(), position, "checkpoint written");
        self.prune(&path)?;
        Ok(path)
    }

    /// Keeps the newest `keep` checkpoints (the one just written among them) and removes what a
    /// `start_fresh` run set aside.
    fn prune(&mut self, newest: &Path) -> Result<()> {
        for old in self.superseded.drain(..) {
            if old != newest {
                info!(path = %old.display(), "start_fresh: removing an earlier run's checkpoint");
                std::fs::remove_file(&old).ok();
            }
        }
        for old in
            list(&self.dir)?.into_iter().filter(|p| p != newest).skip(self.keep.saturating_sub(1))
        {
            std::fs::remove_file(&old).with_context(|| format!("removing {}", old.display()))?;
        }
        Ok(())
    }
}

/// A state restored from a checkpoint, with the job's metrics up to it.
pub struct Restored {
    pub state: TrainState,
    pub metrics: Vec<EpochMetrics>,
    pub path: PathBuf,
}

/// Resumes from the newest valid checkpoint in `dir`, if there is one.
///
/// A corrupt or truncated file is skipped (with a warning) for the one before it; if files
/// exist but none is valid, that is an error rather than a silent restart. A valid checkpoint
/// from another configuration or other training data is an error naming the difference.
pub fn load_latest(
    dir: &Path,
    cfg: &TrainConfig,
    fingerprint: &str,
    samples: usize,
    features: usize,
    device: Device,
) -> Result<Option<Restored>> {
    let restored = find_latest(dir, cfg, fingerprint, samples, features, device)?;
    if let Some(r) = &restored {
        let (epoch, step) = (r.state.epoch, r.state.step);
        info!(path = %r.path.display(), epoch, step, "resuming from checkpoint");
    }
    Ok(restored)
}

/// [`load_latest`]'s search, without deciding to resume.
fn find_latest(
    dir: &Path,
    cfg: &TrainConfig,
    fingerprint: &str,
    samples: usize,
    features: usize,
    device: Device,
) -> Result<Option<Restored>> {
    let files = list(dir)?;
    if files.is_empty() {
        return Ok(None);
    }
    let sizes = model::layer_sizes(features, &cfg.hidden_units, cfg.num_classes);
    let mut problems = Vec::new();
    for path in files {
        let steps = samples.div_ceil(cfg.batch_size);
        match read(&path, &sizes, samples, device)
            .and_then(|(meta, t)| check_position(&meta, steps).map(|()| (meta, t)))
        {
            Ok((meta, tensors)) => {
                let name = path.display().to_string();
                let mut restored = restore(&name, meta, tensors, cfg, fingerprint, &sizes, device)?;
                restored.path = path;
                return Ok(Some(restored));
            }
            Err(why) => {
                // Other layer sizes fail the shape checks first: name the keys, not tensors.
                if let Some(diffs) = other_settings(&path, cfg) {
                    return Err(other_hyperparameters(&path.display().to_string(), &diffs));
                }
                warn!(path = %path.display(), "skipping unusable checkpoint: {why:#}");
                problems.push(format!(
                    "{}: {why:#}",
                    path.file_name().unwrap_or_default().to_string_lossy()
                ));
            }
        }
    }
    Err(user(format!(
        "{}: no valid checkpoint to resume from ({}); set hyperparameter start_fresh=true to start over",
        dir.display(),
        problems.join("; ")
    )))
}

/// The most entries of a shared checkpoint folder looked at for an earlier job's checkpoints.
const MOST_JOBS: usize = 1000;

/// Where this job keeps its checkpoints under the checkpoint folder `root`: a sub-folder named
/// after the training job, when there is a name. SageMaker gives every trial of a tuning job
/// (and any jobs that share a `CheckpointConfig.S3Uri`) the same prefix, copies all of it into
/// each, and mirrors deletions back; a spot restart keeps the name, and so its folder.
pub fn job_folder(root: &Path, job_name: Option<&str>) -> PathBuf {
    match job_name {
        Some(name) => root.join(name),
        None => root.to_path_buf(),
    }
}

/// For a job with no checkpoint of its own under a shared `root`: the newest checkpoint an
/// earlier job left there (in its own folder, or in `root` itself), if exactly one job left
/// one that this job can continue (same hyperparameters that shape the result, same data).
/// Anything else there (another trial's checkpoints, damaged files, several candidates) is
/// another job's business: it is logged, never an error, and never touched.
pub fn load_earlier_job(
    root: &Path,
    own: &Path,
    cfg: &TrainConfig,
    fingerprint: &str,
    samples: usize,
    features: usize,
    device: Device,
) -> Result<Option<Restored>> {
    let mut folders = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.filter_map(|e| e.ok()).take(MOST_JOBS) {
            let path = entry.path();
            if path != own && entry.file_type().is_ok_and(|t| t.is_dir()) {
                folders.push(path);
            }
        }
    }
    let mut usable = Vec::new();
    for folder in folders {
        match find_latest(&folder, cfg, fingerprint, samples, features, device) {
            Ok(Some(restored)) => usable.push(restored),
            Ok(None) => {}
            Err(why) => {
                info!(folder = %folder.display(), "not resuming from another job's checkpoints: {why:#}")
            }
        }
    }
    match usable.len() {
        0 => Ok(None),
        1 => {
            let restored = usable.pop().expect("one");
            let (epoch, step) = (restored.state.epoch, restored.state.step);
            info!(
                path = %restored.path.display(), epoch, step,
                "resuming from checkpoint: an earlier job's, made with the same settings and data"
            );
            Ok(Some(restored))
        }
        _ => {
            let names: Vec<String> = usable.iter().map(|r| r.path.display().to_string()).collect();
            warn!(
                candidates = %names.join(", "),
                "several earlier jobs' checkpoints fit this job; starting fresh rather than guess"
            );
            Ok(None)
        }
    }
}

/// A training state that rank 0 of a multi-host job sent as bytes ([`Checkpointer::encode`]),
/// verified like a checkpoint file and checked against this host's configuration and data.
pub fn from_bytes(
    bytes: &[u8],
    origin: &str,
    cfg: &TrainConfig,
    fingerprint: &str,
    samples: usize,
    features: usize,
    device: Device,
) -> Result<Restored> {
    let sizes = model::layer_sizes(features, &cfg.hidden_units, cfg.num_classes);
    let len = bytes.len() as u64;
    anyhow::ensure!(len <= size_limit(&sizes, samples), "{origin}: {len} bytes, too many");
    let (meta, tensors) = parse(bytes, &sizes, samples, device)
        .and_then(|(meta, t)| {
            check_position(&meta, samples.div_ceil(cfg.batch_size)).map(|()| (meta, t))
        })
        .context(origin.to_string())?;
    restore(origin, meta, tensors, cfg, fingerprint, &sizes, device)
}

/// The metadata the checksum does not cover, checked against itself and an epoch of `steps`
/// steps: the optimizer has taken exactly the steps before the position (a bias correction
/// after 2^63 steps trains a NaN model), and there are no more epochs of metrics (and no best
/// epoch) than finished epochs (`metrics.json` copies them).
fn check_position(meta: &Meta, steps: usize) -> Result<()> {
    anyhow::ensure!(meta.step <= steps, "step {} of an epoch of {steps} steps", meta.step);
    let position = (meta.epoch as u64).checked_mul(steps as u64).map(|p| p + meta.step as u64);
    anyhow::ensure!(
        position == Some(meta.optimizer_steps),
        "optimizer_steps {} does not match epoch {} step {} of {steps}-step epochs",
        meta.optimizer_steps,
        meta.epoch,
        meta.step
    );
    anyhow::ensure!(
        meta.metrics.len() <= meta.epoch,
        "{} epochs of metrics after {} finished epochs",
        meta.metrics.len(),
        meta.epoch
    );
    if let Some((_, best)) = meta.best {
        anyhow::ensure!((1..=meta.epoch).contains(&best), "best epoch {best} of {}", meta.epoch);
    }
    Ok(())
}

/// The most bytes a checkpoint of this model can take: four parameter-sized buffers, the
/// order, and generous room for the header and metrics.
fn size_limit(sizes: &[usize], samples: usize) -> u64 {
    (4 * model::param_count(sizes) * 4 + samples * 8 + (64 << 20)) as u64
}

/// Reads and verifies one checkpoint file: size, format, dtypes, shapes, checksum.
fn read(
    path: &Path,
    sizes: &[usize],
    samples: usize,
    device: Device,
) -> Result<(Meta, HashMap<String, Tensor>)> {
    let limit = size_limit(sizes, samples);
    let len = std::fs::metadata(path)?.len();
    anyhow::ensure!(
        len <= limit,
        "{len} bytes, more than the {limit} a checkpoint of this model can take"
    );
    parse(&crate::files::read_limited(path, limit)?, sizes, samples, device)
}

/// Verifies a checkpoint's bytes: format, dtypes, shapes, checksum.
fn parse(
    bytes: &[u8],
    sizes: &[usize],
    samples: usize,
    device: Device,
) -> Result<(Meta, HashMap<String, Tensor>)> {
    let params = model::param_count(sizes);
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow::anyhow!("not a readable safetensors file: {e:?}"))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| anyhow::anyhow!("unreadable header: {e:?}"))?;
    let meta_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| anyhow::anyhow!("no {META_KEY} metadata"))?;
    let meta: Meta = serde_json::from_str(meta_json).context("metadata")?;
    anyhow::ensure!(
        meta.format_version == FORMAT_VERSION,
        "format_version {} (this trainer reads {FORMAT_VERSION})",
        meta.format_version
    );
    let p = params;
    let mut expected: Vec<(&str, Dtype, Vec<usize>)> = vec![
        ("params", Dtype::F32, vec![p]),
        ("optimizer.first", Dtype::F32, vec![p]),
        ("optimizer.second", Dtype::F32, vec![p]),
        ("loss_sum", Dtype::F32, vec![]),
        ("correct", Dtype::I64, vec![]),
    ];
    if meta.step > 0 {
        expected.push(("order", Dtype::I64, vec![samples]));
    }
    if meta.best.is_some() {
        expected.push(("best_params", Dtype::F32, vec![p]));
    }
    anyhow::ensure!(
        st.names().len() == expected.len(),
        "{} tensors, expected {}",
        st.names().len(),
        expected.len()
    );
    let mut raw = Vec::new();
    for (name, dtype, shape) in &expected {
        let view = st.tensor(name).map_err(|_| anyhow::anyhow!("tensor {name} is missing"))?;
        anyhow::ensure!(
            view.dtype() == *dtype && view.shape() == shape.as_slice(),
            "tensor {name} is {:?} {:?}, expected {dtype:?} {shape:?}",
            view.dtype(),
            view.shape()
        );
        raw.push((*name, view.data()));
    }
    anyhow::ensure!(
        digest(raw.iter().map(|(n, d)| (*n, *d))) == meta.tensors_sha256,
        "checksum mismatch: the tensors were altered or damaged"
    );
    let mut tensors = HashMap::new();
    for (name, data) in raw {
        let view = st.tensor(name).expect("checked above");
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let kind = if view.dtype() == Dtype::I64 { Kind::Int64 } else { Kind::Float };
        let t = Tensor::from_data_size(data, &shape, kind).to_device(device);
        tensors.insert(name.to_string(), t);
    }
    Ok((meta, tensors))
}

fn other_hyperparameters(name: &str, diffs: &[String]) -> anyhow::Error {
    user(format!(
        "{name}: this checkpoint was made with other hyperparameters: {}; use the same values, \
         or set start_fresh=true to start over",
        diffs.join(", ")
    ))
}

/// The result-shaping hyperparameters in which the checkpoint at `path` differs from `cfg`,
/// read from its header alone (other layer sizes make the file larger than this model's
/// limit); `None` when they agree or the header cannot be read.
fn other_settings(path: &Path, cfg: &TrainConfig) -> Option<Vec<String>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Regular files only, opened without blocking: a FIFO planted there must not hang the job.
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).ok()?;
    let mut file = file.metadata().ok()?.is_file().then_some(file)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    // The header holds the metrics of at most 100,000 epochs: far below this.
    let len = u64::from_le_bytes(len).min(64 << 20);
    let mut header = Vec::new();
    file.take(len).read_to_end(&mut header).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    let meta: Meta = serde_json::from_str(header["__metadata__"][META_KEY].as_str()?).ok()?;
    let diffs = cfg.result_differences(&meta.config);
    (!diffs.is_empty()).then_some(diffs)
}

/// Turns verified tensors into a training state, after checking that they were made with
/// this configuration and data; `name` says where they came from.
fn restore(
    name: &str,
    meta: Meta,
    mut t: HashMap<String, Tensor>,
    cfg: &TrainConfig,
    fingerprint: &str,
    sizes: &[usize],
    device: Device,
) -> Result<Restored> {
    let diffs = cfg.result_differences(&meta.config);
    if !diffs.is_empty() {
        return Err(other_hyperparameters(name, &diffs));
    }
    if meta.train_fingerprint != fingerprint {
        return Err(user(format!(
            "{name}: this checkpoint was trained on other data ({} samples, {}); set \
             start_fresh=true to start over",
            meta.train_samples, meta.train_fingerprint
        )));
    }
    if meta.epoch > cfg.epochs {
        return Err(user(format!(
            "{name}: the checkpoint is past epoch {}, beyond epochs={}",
            meta.epoch, cfg.epochs
        )));
    }
    let mut take = |n: &str| t.remove(n).expect("verified by read");
    let model = Mlp::from_flat(sizes, take("params"));
    let mut optimizer = Optimizer::new(cfg, model::param_count(sizes), device);
    optimizer.restore(&take("optimizer.first"), &take("optimizer.second"), meta.optimizer_steps);
    let order = (meta.step > 0).then(|| take("order"));
    let best = meta.best.map(|(loss, epoch)| Best { loss, epoch, params: take("best_params") });
    let history = meta
        .metrics
        .iter()
        .map(|m| EpochStats {
            epoch: m.epoch,
            learning_rate: m.learning_rate,
            train: Score { loss: m.train_loss, accuracy: m.train_accuracy },
            validation: m
                .validation_loss
                .zip(m.validation_accuracy)
                .map(|(loss, accuracy)| Score { loss, accuracy }),
            samples: meta.train_samples,
        })
        .collect();
    let state = TrainState {
        model,
        optimizer,
        epoch: meta.epoch,
        step: meta.step,
        order,
        loss_sum: take("loss_sum"),
        correct: take("correct"),
        history,
        best,
        early_stop: meta.early_stop,
    };
    Ok(Restored { state, metrics: meta.metrics, path: PathBuf::from(name) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::DeviceData;
    use crate::train::tests::toy;

    /// Rewrites the checkpoint at `path` with its metadata changed by `edit`; the tensors (and
    /// so the checksum) stay as they were.
    fn edit_meta(path: &Path, edit: impl Fn(&mut serde_json::Value)) {
        let bytes = std::fs::read(path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let mut meta: serde_json::Value =
            serde_json::from_str(&header.metadata().as_ref().unwrap()[META_KEY]).unwrap();
        edit(&mut meta);
        let info = HashMap::from([(META_KEY.to_string(), meta.to_string())]);
        let tensors: Vec<(String, HostTensor)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| {
                let t = HostTensor {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    data: v.data().to_vec(),
                };
                (n, t)
            })
            .collect();
        let out = safetensors::tensor::serialize(
            tensors.iter().map(|(n, t)| (n.as_str(), t)),
            &Some(info),
        )
        .unwrap();
        std::fs::write(path, out).unwrap();
    }

    /// Metadata outside the checksum that does not add up (an optimizer step count of 2^63-1,
    /// metrics for more epochs than ran) makes a checkpoint unusable, like damage.
    #[test]
    fn metadata_that_does_not_add_up_is_refused() {
        let cfg = TrainConfig { num_classes: 4, hidden_units: vec![8], ..TrainConfig::default() };
        let mut state = TrainState::new(&cfg, 16, Device::Cpu);
        state.epoch = 1;
        for _ in 0..2 {
            let params = state.model.flat.shallow_clone();
            state.optimizer.step(&params, &params.zeros_like(), 0.001).unwrap();
        }
        type Edit = fn(&mut serde_json::Value);
        let edits: [(&str, Edit); 2] = [
            ("optimizer_steps", |m| m["optimizer_steps"] = serde_json::json!(i64::MAX)),
            ("epochs of metrics", |m| {
                let one = m["metrics"][0].clone();
                m["metrics"] = serde_json::Value::Array(vec![one; 100]);
            }),
        ];
        for (needle, edit) in edits {
            let dir = tempfile::tempdir().unwrap();
            let mut ck = Checkpointer::new(dir.path(), &cfg, "fp", 64, 2).unwrap();
            let metric = crate::metrics::EpochMetrics {
                epoch: 1,
                learning_rate: 0.001,
                train_loss: 1.0,
                train_accuracy: 0.5,
                validation_loss: None,
                validation_accuracy: None,
                seconds: 1.0,
                samples_per_second: 64.0,
            };
            let path = ck.save(&state, &[metric]).unwrap();
            // 64 samples at the default batch size of 32: epochs of 2 steps.
            assert!(load_latest(dir.path(), &cfg, "fp", 64, 16, Device::Cpu).unwrap().is_some());
            edit_meta(&path, edit);
            let err = load_latest(dir.path(), &cfg, "fp", 64, 16, Device::Cpu).err().unwrap();
            let msg = format!("{err:#}");
            assert!(msg.contains("no valid checkpoint") && msg.contains(needle), "{msg}");
        }
    }

    /// A stop that lands as an epoch begins (its order drawn, no step taken) must still give a
    /// checkpoint that loads: a Docker test once caught exactly this.
    #[test]
    fn a_checkpoint_at_step_zero_of_an_epoch_loads() {
        let ds = toy(64, 1);
        let data = DeviceData::new(&ds, Device::Cpu);
        let cfg = TrainConfig { num_classes: 4, hidden_units: vec![8], ..TrainConfig::default() };
        let dir = tempfile::tempdir().unwrap();
        let mut state = TrainState::new(&cfg, 16, Device::Cpu);
        state.epoch = 1;
        // Epoch 1 of 2-step epochs begins after 2 optimizer steps.
        for _ in 0..2 {
            let params = state.model.flat.shallow_clone();
            state.optimizer.step(&params, &params.zeros_like(), 0.001).unwrap();
        }
        state.order = Some(Tensor::from_slice(&crate::train::epoch_order(cfg.seed, 1, 64)));
        let mut ck = Checkpointer::new(dir.path(), &cfg, "fp", data.len() as usize, 2).unwrap();
        ck.save(&state, &[]).unwrap();
        let back = load_latest(dir.path(), &cfg, "fp", 64, 16, Device::Cpu).unwrap().unwrap();
        assert_eq!((back.state.epoch, back.state.step), (1, 0));
        assert!(back.state.order.is_none());
        assert!(back.state.model.flat.equal(&state.model.flat));
    }

    /// The metrics so far and the best loss come back bit for bit, so that a resumed run's
    /// `metrics.json` and early-stopping decisions are an uninterrupted run's.
    #[test]
    fn a_checkpoint_keeps_every_f64_exactly() {
        let cfg = TrainConfig {
            num_classes: 4,
            hidden_units: vec![8],
            epochs: 2000,
            ..TrainConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let mut state = TrainState::new(&cfg, 16, Device::Cpu);
        // Values with all 17 significant digits in use, as a loss averaged over an epoch has.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 11) as f64 / (1u64 << 53) as f64 * 2.5
        };
        let metrics: Vec<EpochMetrics> = (1..=2000)
            .map(|epoch| EpochMetrics {
                epoch,
                learning_rate: next() / 1000.0,
                train_loss: next(),
                train_accuracy: next() / 2.5,
                validation_loss: Some(next()),
                validation_accuracy: Some(next() / 2.5),
                seconds: next(),
                samples_per_second: next() * 1e5,
            })
            .collect();
        state.epoch = metrics.len();
        // The metadata must add up: 2-step epochs, so two optimizer steps per epoch so far.
        let [(_, first), (_, second)] = state.optimizer.state();
        let (first, second) = (first.copy(), second.copy());
        state.optimizer.restore(&first, &second, 2 * metrics.len() as u64);
        state.best = Some(Best { loss: next(), epoch: 7, params: state.model.flat.copy() });
        let mut ck = Checkpointer::new(dir.path(), &cfg, "fp", 64, 2).unwrap();
        ck.save(&state, &metrics).unwrap();
        let back = load_latest(dir.path(), &cfg, "fp", 64, 16, Device::Cpu).unwrap().unwrap();
        let bits = |m: &[EpochMetrics]| -> Vec<u64> {
            m.iter()
                .flat_map(|e| {
                    [
                        e.learning_rate,
                        e.train_loss,
                        e.train_accuracy,
                        e.validation_loss.unwrap(),
                        e.validation_accuracy.unwrap(),
                        e.seconds,
                        e.samples_per_second,
                    ]
                })
                .map(f64::to_bits)
                .collect()
        };
        let (got, want) = (bits(&back.metrics), bits(&metrics));
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!((got.len(), differ), (want.len(), 0), "values that came back otherwise");
        let best = |s: &TrainState| s.best.as_ref().unwrap().loss.to_bits();
        assert_eq!(best(&back.state), best(&state));
    }
}
