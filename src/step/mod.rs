//! One optimizer step, two ways.
//!
//! [`TensorStep`] runs every part of the step as libtorch operations on the training device:
//! on a GPU, the data, the model and the step all stay there, with no host round trip.
//! [`HostStep`] (`host.rs`) is the CPU's fast path: libtorch for the large matrix products,
//! Rust loops for the small parts around them. Both compute the same thing; a test holds them
//! together.
//!
//! In a multi-host job ([`Exchange`]) each rank computes its rows of the global batch and the
//! ranks sum their gradients with one all-reduce before the optimizer, so every rank takes the
//! same step.

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use crate::augment::{Augment, Move};
use crate::config::TrainConfig;
use crate::distributed::{self, Group};
use crate::model::{self, dense_views, Dense};

mod host;

use crate::state::{DeviceData, TrainState};
pub use host::HostStep;

/// Takes one training step on rows `start..start+len` of the epoch's `order`.
pub trait Step {
    fn step(
        &mut self,
        state: &mut TrainState,
        order: &Tensor,
        start: i64,
        len: i64,
        epoch: usize,
        lr: f64,
    ) -> Result<()>;

    /// Whether to stop before the next step, given whether this process was asked to. Ranks
    /// must stop at the same step: a multi-host step sends the wish with its next all-reduce
    /// and answers with what all ranks sent with the previous one.
    fn stop_agreed(&mut self, local: bool) -> bool {
        local
    }
}

/// The step for the data's device: [`HostStep`] on the CPU, [`TensorStep`] elsewhere; with a
/// `group`, this rank's share of each step.
pub fn for_device<'a>(
    cfg: &'a TrainConfig,
    data: &'a DeviceData,
    state: &TrainState,
    group: Option<&'a Group>,
) -> Result<Box<dyn Step + 'a>> {
    Ok(if data.labels.device() == Device::Cpu {
        Box::new(HostStep::new(cfg, data, state, group)?)
    } else {
        Box::new(TensorStep::new(cfg, data, state, group)?)
    })
}

/// What follows the gradients in the exchanged buffer: the step's summed loss, its correct
/// count, and the ranks' stop votes.
const TAIL: i64 = 3;

/// Where a step leaves its gradients: one buffer holding them and the [`TAIL`], so that a
/// multi-host step exchanges everything with one all-reduce (with a `group`, the returned
/// [`Exchange`] does); the gradients as a flat view of it, and as each layer's views.
fn gradient_buffers<'a>(
    state: &TrainState,
    group: Option<&'a Group>,
) -> (Tensor, Vec<Dense>, Option<Exchange<'a>>) {
    let params = &state.model.flat;
    let n = params.numel() as i64;
    let buf = Tensor::zeros([n + TAIL], (Kind::Float, params.device()));
    let grad_flat = buf.narrow(0, 0, n);
    let grads = dense_views(&grad_flat, state.model.sizes());
    (grad_flat, grads, group.map(|g| Exchange::new(g, &buf)))
}

/// A multi-host step's side of the bargain: which rows of each batch are this rank's, and the
/// all-reduce.
pub struct Exchange<'a> {
    group: &'a Group,
    buf: Tensor,
    wants_stop: bool,
    agreed_stop: bool,
}

impl<'a> Exchange<'a> {
    fn new(group: &'a Group, buf: &Tensor) -> Self {
        Self { group, buf: buf.shallow_clone(), wants_stop: false, agreed_stop: false }
    }

    /// This rank's rows `lo..hi` of a batch of `len`.
    fn rows(&self, len: usize) -> (usize, usize) {
        distributed::share(len, self.group.rank(), self.group.world())
    }

    /// Sums the buffer over the ranks after `tail` (loss, correct) is written into it; returns
    /// the batch's summed loss and correct count.
    fn all_reduce(&mut self, write_tail: impl FnOnce(&Tensor)) -> Result<(Tensor, Tensor)> {
        let n = self.buf.numel() as i64 - TAIL;
        let tail = self.buf.narrow(0, n, TAIL);
        write_tail(&tail);
        let _ = tail.get(2).fill_(if self.wants_stop { 1.0 } else { 0.0 });
        if self.buf.device() == Device::Cpu {
            self.group.all_reduce_sum(&self.buf)?;
        } else {
            // Gloo is the CPU backend: a GPU buffer goes through host memory (NCCL would not).
            let host = self.buf.to_device(Device::Cpu);
            self.group.all_reduce_sum(&host)?;
            self.buf.copy_(&host);
        }
        self.agreed_stop = tail.double_value(&[2]) > 0.0;
        Ok((tail.get(0), tail.get(1).to_kind(Kind::Int64)))
    }

    fn stop_agreed(&mut self, local: bool) -> bool {
        self.wants_stop = local;
        self.agreed_stop
    }
}

fn mask_seed(cfg: &TrainConfig, epoch: usize, state: &TrainState, layer: usize) -> [u64; 4] {
    [cfg.seed, epoch as u64, state.step as u64, layer as u64]
}

/// The moves of rows `lo..hi` of this step's batch of `len`: drawn for the whole batch, so that
/// a rank's rows get what one process would.
fn batch_moves(
    aug: &Augment,
    cfg: &TrainConfig,
    (epoch, step): (usize, usize),
    (lo, hi): (usize, usize),
    len: usize,
) -> Vec<Move> {
    let mut moves = aug.moves(cfg.seed, epoch, step, len);
    moves.truncate(hi);
    moves.drain(..lo);
    moves
}

/// Every part of the step as libtorch operations, on any device.
pub struct TensorStep<'a> {
    cfg: &'a TrainConfig,
    data: &'a DeviceData,
    augment: Option<Augment>,
    grad_flat: Tensor,
    grads: Vec<Dense>,
    exchange: Option<Exchange<'a>>,
}

impl<'a> TensorStep<'a> {
    pub fn new(
        cfg: &'a TrainConfig,
        data: &'a DeviceData,
        state: &TrainState,
        group: Option<&'a Group>,
    ) -> Result<Self> {
        let (grad_flat, grads, exchange) = gradient_buffers(state, group);
        // Tables are never augmented (the job refuses the keys for them).
        let augment = match data.shape {
            Some(shape) => Augment::new(cfg, shape)?,
            None => None,
        };
        Ok(Self { cfg, data, augment, grad_flat, grads, exchange })
    }

    /// This step's rows of the batch, moved by the augmentation when it is on.
    fn inputs(
        &self,
        idx: &Tensor,
        (epoch, step): (usize, usize),
        rows: (usize, usize),
        len: usize,
    ) -> (Tensor, Tensor) {
        let (x, y) = self.data.batch(idx);
        let Some(aug) = &self.augment else {
            return (x, y);
        };
        let moves = batch_moves(aug, self.cfg, (epoch, step), rows, len);
        let shape = x.size();
        let source = Tensor::from_slice(&aug.source_index(&moves)).view([shape[0], shape[1]]);
        let device = x.device();
        let zero = Tensor::zeros([shape[0], 1], (Kind::Float, device));
        let x = Tensor::cat(&[x, zero], 1).gather(1, &source.to_device(device), false);
        (x, y)
    }
}

impl Step for TensorStep<'_> {
    fn step(
        &mut self,
        state: &mut TrainState,
        order: &Tensor,
        start: i64,
        len: i64,
        epoch: usize,
        lr: f64,
    ) -> Result<()> {
        let device = self.data.labels.device();
        let sizes = state.model.sizes().to_vec();
        let (lo, hi) = self.exchange.as_ref().map_or((0, len as usize), |x| x.rows(len as usize));
        let (l, c) = if hi > lo {
            let rows = (hi - lo) as i64;
            let idx = order.narrow(0, start + lo as i64, rows);
            let (x, y) = self.inputs(&idx, (epoch, state.step), (lo, hi), len as usize);
            let masks = sizes[1..sizes.len() - 1]
                .iter()
                .enumerate()
                .map(|(i, &width)| {
                    (self.cfg.dropout > 0.0).then(|| {
                        let seed = mask_seed(self.cfg, epoch, state, i);
                        model::dropout_mask(self.cfg.dropout, len as usize, width, seed, device)
                            .narrow(0, lo as i64, rows)
                    })
                })
                .collect();
            let (logits, tape) = state.model.forward_train(&x, masks);
            let (dlogits, l, c) = model::cross_entropy_grad(&logits, &y, self.cfg.label_smoothing);
            // The gradient of the whole batch's mean, of which these rows are a part.
            let dlogits = if rows == len { dlogits } else { dlogits * (rows as f64 / len as f64) };
            state.model.backward(&tape, dlogits, &self.grads);
            (l, c)
        } else {
            let _ = self.grad_flat.zero_();
            (Tensor::zeros([], (Kind::Float, device)), Tensor::zeros([], (Kind::Int64, device)))
        };
        let (l, c) = match &mut self.exchange {
            Some(x) => x.all_reduce(|tail| {
                tail.get(0).copy_(&l);
                tail.get(1).copy_(&c);
            })?,
            None => (l, c),
        };
        state.optimizer.step(&state.model.flat, &self.grad_flat, lr)?;
        let _ = state.loss_sum.g_add_(&l);
        let _ = state.correct.g_add_(&c);
        Ok(())
    }

    fn stop_agreed(&mut self, local: bool) -> bool {
        self.exchange.as_mut().map_or(local, |x| x.stop_agreed(local))
    }
}

#[cfg(test)]
mod tests {
    use super::host::small_layer;
    use super::*;
    use crate::train::tests::toy;

    /// The fast path and the libtorch path take the same steps (up to float rounding).
    #[test]
    fn host_and_tensor_steps_agree() {
        let data = DeviceData::new(&toy(64, 1), Device::Cpu);
        // Small layers run as Rust loops, large ones through libtorch: 16 rows × 16 features ×
        // 600 units is above SMALL_LAYER_MACS, so the last two cases mix both.
        // The last two also shift, mirror and smooth the labels.
        let cases = [
            (0.0, vec![8], false),
            (0.3, vec![8, 6], false),
            (0.0, vec![600], false),
            (0.3, vec![600, 6], false),
            (0.0, vec![8], true),
            (0.3, vec![600, 6], true),
        ];
        assert!(!small_layer(&[16, 600], 0, 16) && small_layer(&[600, 6], 0, 16));
        for (dropout, hidden, extras) in cases {
            let cfg = TrainConfig {
                num_classes: 4,
                hidden_units: hidden,
                dropout,
                batch_size: 16,
                augment_shift: if extras { 1 } else { 0 },
                augment_flip: extras,
                label_smoothing: if extras { 0.1 } else { 0.0 },
                ..TrainConfig::default()
            };
            let mut a = TrainState::new(&cfg, 16, Device::Cpu);
            let mut b = TrainState::new(&cfg, 16, Device::Cpu);
            let order = Tensor::from_slice(&crate::train::epoch_order(1, 0, 64));
            let mut host_step = HostStep::new(&cfg, &data, &a, None).unwrap();
            let mut tensor_step = TensorStep::new(&cfg, &data, &b, None).unwrap();
            for s in 0..4 {
                // 64 = 3 full batches of 16 and one of 16; use a short one too.
                let len = if s == 3 { 10 } else { 16 };
                host_step.step(&mut a, &order, s * 16, len, 0, 0.01).unwrap();
                tensor_step.step(&mut b, &order, s * 16, len, 0, 0.01).unwrap();
                a.step += 1;
                b.step += 1;
            }
            let diff = (&a.model.flat - &b.model.flat).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "dropout {dropout}: weights differ by {diff}");
            let dl = (&a.loss_sum - &b.loss_sum).abs().double_value(&[]);
            assert!(dl < 1e-3, "loss sums differ by {dl}");
            assert!(a.correct.equal(&b.correct));
        }
    }
}
