//! The training loop and evaluation: pure functions of tensors and a [`TrainConfig`].
//!
//! No files, no clock, no logging of results: the caller sees each finished epoch through a
//! callback and decides what to print or save. Everything random (initial weights, shuffle
//! order, dropout masks, augmentation) comes from generators seeded by (seed, epoch, step), so
//! the same seed and data give bit-identical weights on the CPU.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use crate::config::TrainConfig;
use crate::distributed::{self, Layout, Parallel};
use crate::error::Stopped;
use crate::model::{self, Mlp};
use crate::state::{Best, DeviceData, EarlyStop, EpochStats, Score, TrainState};
use crate::step;

/// Batch size for evaluation: large enough to amortise per-call overhead, small enough to keep
/// memory flat.
pub const EVAL_BATCH: i64 = 2000;

/// What the training loop asks of its caller: whether to stop, and what to do after each epoch
/// and before stopping (print, checkpoint). The loop itself does no I/O.
pub trait Hooks {
    fn stop_requested(&self) -> bool;
    /// After each finished epoch; `state` has already moved on to the next epoch.
    fn epoch_done(&mut self, stats: &EpochStats, state: &TrainState) -> Result<()>;
    /// At a step boundary, after a stop was requested and before training returns [`Stopped`].
    fn stopping(&mut self, state: &TrainState) -> Result<()>;
}

/// Hooks for callers that only want to see epochs: a stop flag and a callback.
pub struct Observe<'a, F: FnMut(&EpochStats)> {
    pub stop: &'a AtomicBool,
    pub on_epoch: F,
}

impl<F: FnMut(&EpochStats)> Hooks for Observe<'_, F> {
    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    fn epoch_done(&mut self, stats: &EpochStats, _: &TrainState) -> Result<()> {
        (self.on_epoch)(stats);
        Ok(())
    }
    fn stopping(&mut self, _: &TrainState) -> Result<()> {
        Ok(())
    }
}

/// The trained model and how training went.
pub struct Outcome {
    pub model: Mlp,
    pub epochs: Vec<EpochStats>,
    /// Set when early stopping ended the run; the model holds the best epoch's weights.
    pub early_stop: Option<EarlyStop>,
}

/// Evaluates `model` on all of `data`, in fixed-size batches.
pub fn evaluate(model: &Mlp, data: &DeviceData) -> Score {
    evaluate_unless(model, data, &|| false).expect("never stopped")
}

/// [`evaluate`], giving up (`None`) as soon as `stop` says so between batches: a large set
/// takes seconds, and a stopped job has only a few before SIGKILL.
pub fn evaluate_unless(model: &Mlp, data: &DeviceData, stop: &dyn Fn() -> bool) -> Option<Score> {
    tch::no_grad(|| {
        let n = data.len();
        let device = data.labels.device();
        let mut loss = Tensor::zeros([], (Kind::Float, device));
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        let mut start = 0;
        while start < n {
            if stop() {
                return None;
            }
            let len = EVAL_BATCH.min(n - start);
            let (x, y) = data.slice(start, len);
            let (l, c) = model::loss_and_correct(&model.forward(&x), &y);
            let _ = loss.g_add_(&l);
            let _ = correct.g_add_(&c);
            start += len;
        }
        Some(Score {
            loss: loss.double_value(&[]) / n as f64,
            accuracy: correct.int64_value(&[]) as f64 / n as f64,
        })
    })
}

/// Scores the validation set, giving up (`None`) between batches once a stop is requested.
/// Ranks of a multi-host job hold the same validation set and agree on the stop before each
/// batch, so that they give up together, where one alone would leave the others waiting in
/// the next exchange.
fn validate(
    model: &Mlp,
    data: &DeviceData,
    parallel: Option<&Parallel>,
    hooks: &impl Hooks,
) -> Result<Option<Score>> {
    let Some(group) = parallel.map(|p| p.group) else {
        return Ok(evaluate_unless(model, data, &|| hooks.stop_requested()));
    };
    let failed = std::cell::RefCell::new(None);
    let agreed = || {
        let vote = Tensor::from_slice(&[f32::from(u8::from(hooks.stop_requested()))]);
        match group.all_reduce_sum(&vote) {
            Ok(()) => vote.double_value(&[0]) > 0.0,
            Err(e) => {
                failed.replace(Some(e));
                true
            }
        }
    };
    let score = evaluate_unless(model, data, &agreed);
    match failed.into_inner() {
        Some(e) => Err(e),
        None => Ok(score),
    }
}

/// The order in which an epoch visits the training samples.
pub fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<i64> {
    let mut order: Vec<i64> = (0..n as i64).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(model::mix([seed, epoch as u64, 0x5_u64, 0])));
    order
}

/// Samples one epoch visits: the dataset; or, with shards on several hosts, whole global
/// batches covering all shards (a shard that runs out starts its order again).
pub fn epoch_len(n: usize, batch: usize, parallel: Option<&Parallel>) -> usize {
    match parallel.map(|p| &p.layout) {
        Some(Layout::Sharded(sizes)) => sizes.iter().sum::<usize>().div_ceil(batch) * batch,
        _ => n,
    }
}

/// A sharded epoch's order as rank `rank` sees it: in every global batch, this rank's rows
/// ([`distributed::share`]) hold its own shard's samples in its own shuffled order, continued
/// cyclically; the other ranks' rows are never read here (zeros).
pub fn sharded_order(
    seed: u64,
    epoch: usize,
    rank: usize,
    sizes: &[usize],
    batch: usize,
) -> Vec<i64> {
    let n = sizes[rank];
    let local = epoch_order(model::mix([seed, rank as u64, 0x5d, 0]), epoch, n);
    let (lo, hi) = distributed::share(batch, rank, sizes.len());
    let steps = sizes.iter().sum::<usize>().div_ceil(batch);
    let mut order = vec![0i64; steps * batch];
    let mut next = local.iter().cycle();
    for s in 0..steps {
        for slot in &mut order[s * batch + lo..s * batch + hi] {
            *slot = *next.next().expect("a shard is never empty");
        }
    }
    order
}

/// Steps in one epoch of `n` samples.
pub fn steps_per_epoch(n: i64, batch: usize) -> usize {
    (n as usize).div_ceil(batch)
}

/// Trains a fresh model, seeing each finished epoch through `on_epoch`; `stop` is checked
/// between steps and ends training with [`Stopped`].
pub fn train(
    cfg: &TrainConfig,
    train: &DeviceData,
    validation: Option<&DeviceData>,
    stop: &AtomicBool,
    on_epoch: impl FnMut(&EpochStats),
) -> Result<Outcome> {
    let state = TrainState::new(cfg, train.images.size()[1] as usize, train.labels.device());
    resume(cfg, train, validation, state, None, &mut Observe { stop, on_epoch })
}

/// Continues training from `state` (fresh or restored from a checkpoint) to the end. With a
/// `group`, this process is one rank of a multi-host job: every rank must hold the same data
/// and start from the same state, and each takes its share of every batch.
pub fn resume(
    cfg: &TrainConfig,
    train: &DeviceData,
    validation: Option<&DeviceData>,
    mut state: TrainState,
    parallel: Option<&Parallel>,
    hooks: &mut impl Hooks,
) -> Result<Outcome> {
    let device = train.labels.device();
    let n = epoch_len(train.len() as usize, cfg.batch_size, parallel) as i64;
    let batch = cfg.batch_size as i64;
    let steps = steps_per_epoch(n, cfg.batch_size);
    let mut stepper = step::for_device(cfg, train, &state, parallel.map(|p| p.group))?;
    while !state.finished(cfg) {
        let epoch = state.epoch;
        let lr = cfg.learning_rate_at(epoch);
        if state.order.is_none() {
            let order = match parallel {
                Some(Parallel { group, layout: Layout::Sharded(sizes) }) => Tensor::from_slice(
                    &sharded_order(cfg.seed, epoch, group.rank(), sizes, cfg.batch_size),
                ),
                _ => Tensor::from_slice(&epoch_order(cfg.seed, epoch, n as usize)),
            };
            // With the same data everywhere, every rank visits it in rank 0's order.
            if let Some(Parallel { group, layout: Layout::Replicated }) = parallel {
                group.broadcast(&order, 0)?;
            }
            state.order = Some(order.to_device(device));
        }
        let order = state.order.as_ref().expect("set above").shallow_clone();
        while state.step < steps {
            if stepper.stop_agreed(hooks.stop_requested()) {
                hooks.stopping(&state)?;
                return Err(Stopped::default().into());
            }
            let start = state.step as i64 * batch;
            stepper.step(&mut state, &order, start, batch.min(n - start), epoch, lr)?;
            state.step += 1;
            // On the CPU reading the running sum costs microseconds; a GPU is checked as the
            // epoch ends, without a synchronisation every step.
            if device == tch::Device::Cpu {
                finite(state.loss_sum.double_value(&[]), epoch, Some(state.step))?;
            }
        }
        finite(state.loss_sum.double_value(&[]), epoch, None)?;
        let validation = match validation {
            Some(v) => match validate(&state.model, v, parallel, &*hooks)? {
                Some(score) => Some(score),
                None => {
                    hooks.stopping(&state)?;
                    return Err(Stopped::default().into());
                }
            },
            None => None,
        };
        let stats = EpochStats {
            epoch: epoch + 1,
            learning_rate: lr,
            train: Score {
                loss: state.loss_sum.double_value(&[]) / n as f64,
                accuracy: state.correct.int64_value(&[]) as f64 / n as f64,
            },
            validation,
            samples: n as usize,
        };
        track_best(cfg, &mut state, &stats);
        state.history.push(stats.clone());
        state.epoch += 1;
        state.step = 0;
        state.order = None;
        let _ = state.loss_sum.zero_();
        let _ = state.correct.zero_();
        hooks.epoch_done(&stats, &state)?;
    }
    // With early stopping, keep the weights of the best validation epoch (what users deploy).
    if let Some(best) = &state.best {
        state.model.flat.shallow_clone().copy_(&best.params);
    }
    Ok(Outcome { model: state.model, epochs: state.history, early_stop: state.early_stop })
}

/// Fails training once the loss is NaN or infinite: every later step would keep it so, and a
/// model of NaNs must not pass for a result. `step` is 1-based, where known.
fn finite(loss_sum: f64, epoch: usize, step: Option<usize>) -> Result<()> {
    if loss_sum.is_finite() {
        return Ok(());
    }
    let at = match step {
        Some(s) => format!("epoch {} step {s}", epoch + 1),
        None => format!("epoch {}", epoch + 1),
    };
    Err(crate::error::user(format!(
        "training diverged: the loss became {loss_sum} at {at}; the learning rate is most likely \
         too high for this optimizer (lower learning_rate, or check lr_schedule), or beta1, \
         beta2, epsilon, momentum or weight_decay make it unstable"
    )))
}

/// Early stopping's bookkeeping after an epoch: remember the best, decide whether to stop.
fn track_best(cfg: &TrainConfig, state: &mut TrainState, stats: &EpochStats) {
    let (Some(v), true) = (stats.validation, cfg.early_stopping_patience > 0) else {
        return;
    };
    if state.best.as_ref().is_none_or(|b| v.loss < b.loss) {
        state.best =
            Some(Best { loss: v.loss, epoch: stats.epoch, params: state.model.flat.copy() });
    }
    let best_epoch = state.best.as_ref().map_or(0, |b| b.epoch);
    if stats.epoch - best_epoch >= cfg.early_stopping_patience && stats.epoch < cfg.epochs {
        state.early_stop = Some(EarlyStop { stopped_after_epoch: stats.epoch, best_epoch });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::{Dataset, Format, Input, Values};
    use tch::Device;

    /// A learnable toy problem: the label is which quarter of the image is brightest.
    pub fn toy(n: usize, seed: u64) -> Dataset {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (rows, cols) = (4, 4);
        let mut images = Vec::with_capacity(n * 16);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let label = rng.gen_range(0..4u8);
            for r in 0..rows {
                for c in 0..cols {
                    let quarter = (r / 2) * 2 + c / 2;
                    let base = if quarter == label as usize { 160 } else { 40 };
                    images.push(base + rng.gen_range(0..60u8));
                }
            }
            labels.push(label);
        }
        Dataset {
            values: Values::Bytes(images),
            labels,
            input: Input::Image(crate::data::Shape::new(rows, cols, 1)),
            format: Format::Idx,
            fingerprint: String::new(),
            source: "toy".into(),
            classes: None,
        }
    }

    fn cfg() -> TrainConfig {
        TrainConfig {
            epochs: 3,
            num_classes: 4,
            hidden_units: vec![8],
            learning_rate: 0.01,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn learns_a_toy_problem_and_reports_every_epoch() {
        let data = DeviceData::new(&toy(512, 1), Device::Cpu);
        let val = DeviceData::new(&toy(128, 2), Device::Cpu);
        let mut seen = Vec::new();
        let out = train(&cfg(), &data, Some(&val), &AtomicBool::new(false), |s| seen.push(s.epoch))
            .unwrap();
        assert_eq!(seen, [1, 2, 3]);
        let last = out.epochs.last().unwrap();
        assert!(last.train.loss < out.epochs[0].train.loss);
        assert!(last.validation.unwrap().accuracy > 0.9, "{last:?}");
        assert_eq!(evaluate(&out.model, &val), last.validation.unwrap());
    }

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() {
        let data = DeviceData::new(&toy(256, 1), Device::Cpu);
        let stop = AtomicBool::new(false);
        let mut c = cfg();
        c.dropout = 0.2;
        let a = train(&c, &data, None, &stop, |_| {}).unwrap();
        let b = train(&c, &data, None, &stop, |_| {}).unwrap();
        assert!(a.model.flat.equal(&b.model.flat));
        c.seed += 1;
        let d = train(&c, &data, None, &stop, |_| {}).unwrap();
        assert!(!a.model.flat.equal(&d.model.flat));
    }

    #[test]
    fn every_optimizer_and_schedule_learns() {
        use crate::config::{LrSchedule, OptimizerKind};
        let data = DeviceData::new(&toy(512, 1), Device::Cpu);
        for (opt, lr, sched) in [
            (OptimizerKind::AdamW, 0.01, LrSchedule::Cosine),
            (OptimizerKind::Sgd, 0.1, LrSchedule::Step),
            (OptimizerKind::RmsProp, 0.005, LrSchedule::Exponential),
        ] {
            let c = TrainConfig {
                optimizer: opt,
                learning_rate: lr,
                lr_schedule: sched,
                lr_decay: 0.5,
                momentum: 0.5,
                ..cfg()
            };
            let out = train(&c, &data, None, &AtomicBool::new(false), |_| {}).unwrap();
            let acc = evaluate(&out.model, &data).accuracy;
            assert!(acc > 0.9, "{opt:?}: accuracy {acc}");
            assert!(out.epochs[2].learning_rate < lr);
        }
    }

    #[test]
    fn early_stopping_keeps_the_best_epoch() {
        let data = DeviceData::new(&toy(256, 1), Device::Cpu);
        // Validation labels are shuffled nonsense, so validation loss soon stops improving.
        let mut bad = toy(128, 2);
        bad.labels.reverse();
        let val = DeviceData::new(&bad, Device::Cpu);
        let c =
            TrainConfig { epochs: 30, early_stopping_patience: 2, learning_rate: 0.05, ..cfg() };
        let out = train(&c, &data, Some(&val), &AtomicBool::new(false), |_| {}).unwrap();
        let es = out.early_stop.expect("should stop early");
        assert_eq!(out.epochs.len(), es.stopped_after_epoch);
        assert_eq!(es.stopped_after_epoch, es.best_epoch + 2);
        let best = out.epochs[es.best_epoch - 1].validation.unwrap();
        assert_eq!(evaluate(&out.model, &val), best);
    }

    #[test]
    fn a_diverging_run_fails_naming_epoch_and_step() {
        use crate::config::OptimizerKind;
        let data = DeviceData::new(&toy(256, 1), Device::Cpu);
        let c = TrainConfig { optimizer: OptimizerKind::Sgd, learning_rate: 1e30, ..cfg() };
        let err = train(&c, &data, None, &AtomicBool::new(false), |_| {}).err().expect("diverges");
        let msg = format!("{err:#}");
        assert!(crate::error::is_user_error(&err), "{msg}");
        assert!(msg.starts_with("training diverged: the loss became "), "{msg}");
        assert!(msg.contains(" at epoch 1 step ") && msg.contains("learning_rate"), "{msg}");
    }

    #[test]
    fn a_set_stop_flag_ends_training() {
        let data = DeviceData::new(&toy(64, 1), Device::Cpu);
        let err = train(&cfg(), &data, None, &AtomicBool::new(true), |_| {}).err().unwrap();
        assert!(err.is::<Stopped>());
    }

    #[test]
    fn a_sharded_order_fills_only_this_ranks_rows_with_its_whole_shard() {
        let (sizes, batch) = ([50, 49, 50], 10);
        // 149 samples: 15 global batches of 10; each rank fills 4, 3 or 3 rows of each.
        for rank in 0..3 {
            let order = sharded_order(7, 2, rank, &sizes, batch);
            assert_eq!(order.len(), 150);
            let (lo, hi) = distributed::share(batch, rank, 3);
            let mine: Vec<i64> =
                order.chunks(batch).flat_map(|b| b[lo..hi].iter().copied()).collect();
            let mut seen = mine.clone();
            seen.sort();
            seen.dedup();
            // Rank 0 takes 60 rows from 50 samples: all of them, 10 twice; the others 45 of
            // their 50 or 49, none twice.
            let want = if rank == 0 { 50 } else { 45 };
            assert_eq!(seen.len(), want, "rank {rank}");
            assert!(mine.iter().all(|&i| (i as usize) < sizes[rank]));
            assert_eq!(order, sharded_order(7, 2, rank, &sizes, batch));
            assert_ne!(order, sharded_order(7, 3, rank, &sizes, batch));
        }
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(1, 0, 100);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(1, 0, 100));
        assert_ne!(a, epoch_order(1, 1, 100));
    }
}
