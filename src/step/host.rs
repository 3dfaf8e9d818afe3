//! The CPU fast path, [`HostStep`]: the large matrix products go to libtorch (MKL); the small
//! parts around them (batch gather and scaling, ReLU, dropout, softmax cross-entropy, bias
//! gradients, the Adam update) run as plain Rust loops over preallocated buffers, because at a
//! batch of 32 libtorch's per-operation dispatch costs more than their arithmetic.
//!
//! Every buffer is a [`HostTensor`], so each access is a borrow-checked slice; the few places
//! that wrap storage shared with the training state say why that is sound.

use std::ops::Range;

use anyhow::Result;
use tch::Tensor;

use super::{batch_moves, gradient_buffers, mask_seed, Exchange, Step};
use crate::augment::Augment;
use crate::config::TrainConfig;
use crate::distributed::Group;
use crate::host::{Element, HostTensor};
use crate::kernels;
use crate::model;
use crate::state::{DeviceData, TrainState};

/// A flat buffer of every layer's weights and biases (the parameters, or their gradients). Each
/// layer's parts are slices split from the one flat slice, so the borrow checker sees every
/// access; libtorch reads (and, for gradients, writes) the weight matrices through views made
/// once, lent out through `self` like the slices.
struct Layers {
    flat: HostTensor<f32>,
    /// Each layer's weight and bias as ranges of `flat`, laid out as [`model::dense_views`].
    spans: Vec<(Range<usize>, Range<usize>)>,
    weights: Vec<Tensor>,
    weights_t: Vec<Tensor>,
}

impl Layers {
    /// # Safety
    /// As [`HostTensor::new`] for `flat`.
    unsafe fn new(flat: Tensor, sizes: &[usize]) -> Self {
        let views = model::dense_views(&flat, sizes);
        let mut spans = Vec::with_capacity(views.len());
        let mut at = 0;
        for w in sizes.windows(2) {
            let (weights, biases) = (w[0] * w[1], w[1]);
            spans.push((at..at + weights, at + weights..at + weights + biases));
            at += weights + biases;
        }
        Self {
            weights_t: views.iter().map(|d| d.weight.tr()).collect(),
            weights: views.into_iter().map(|d| d.weight).collect(),
            // SAFETY: passed on from the caller.
            flat: unsafe { HostTensor::new(flat) },
            spans,
        }
    }

    fn weight(&self, i: usize) -> &[f32] {
        &self.flat.as_slice()[self.spans[i].0.clone()]
    }

    fn bias(&self, i: usize) -> &[f32] {
        &self.flat.as_slice()[self.spans[i].1.clone()]
    }

    /// Layer `i`'s weight and bias, to write.
    fn layer_mut(&mut self, i: usize) -> (&mut [f32], &mut [f32]) {
        let (w, b) = self.spans[i].clone();
        self.flat.as_mut_slice()[w.start..b.end].split_at_mut(w.len())
    }

    /// Layer `i`'s weight matrix (`out × in`) and its transpose, for libtorch to read.
    fn matrices(&self, i: usize) -> (&Tensor, &Tensor) {
        (&self.weights[i], &self.weights_t[i])
    }

    /// Layer `i`'s weight matrix, for libtorch to write: no slice of `self` is live.
    fn matrix_mut(&mut self, i: usize) -> &Tensor {
        &self.weights[i]
    }
}

/// A [`HostTensor`] over a tensor the caller hands over at every step (the epoch's order, the
/// running sums), remade only when it is another tensor. The one it keeps holds the old
/// storage alive, so a new tensor never has the same address.
struct Cached<T: Element>(Option<HostTensor<T>>);

impl<T: Element> Cached<T> {
    /// # Safety
    /// As [`HostTensor::new`] for `t`.
    unsafe fn get(&mut self, t: &Tensor) -> &mut HostTensor<T> {
        match &mut self.0 {
            Some(h) if h.wraps(t) => {}
            // SAFETY: passed on from the caller.
            _ => self.0 = Some(unsafe { HostTensor::new(t.shallow_clone()) }),
        }
        self.0.as_mut().expect("set above")
    }
}

/// Preallocated activations for one batch size.
struct Buffers {
    rows: usize,
    x: HostTensor<f32>,
    /// Each hidden layer's output (after ReLU and dropout).
    hidden: Vec<HostTensor<f32>>,
    /// Gradients at each hidden layer's output.
    deltas: Vec<HostTensor<f32>>,
    /// The logits, which become their own gradient.
    logits: HostTensor<f32>,
    labels: Vec<i64>,
    masks: Vec<Vec<f32>>,
}

impl Buffers {
    fn new(sizes: &[usize], rows: usize) -> Self {
        let mat = |cols: usize| HostTensor::zeros(&[rows as i64, cols as i64]);
        let widths = &sizes[1..sizes.len() - 1];
        Self {
            rows,
            x: mat(sizes[0]),
            hidden: widths.iter().map(|&w| mat(w)).collect(),
            deltas: widths.iter().map(|&w| mat(w)).collect(),
            logits: mat(sizes[sizes.len() - 1]),
            labels: vec![0; rows],
            masks: vec![Vec::new(); widths.len()],
        }
    }
}

/// The most multiply-adds a layer's product may take for [`HostStep`] to compute it in Rust:
/// below this, a call into libtorch (dispatch, then MKL waking its threads) costs more than the
/// arithmetic. The notebook's output layer at batch 32 is 41k; its first layer, 3.2M.
const SMALL_LAYER_MACS: usize = 1 << 17;

/// Whether layer `i` (`sizes[i]` → `sizes[i + 1]`) is small at `rows` rows.
pub(super) fn small_layer(sizes: &[usize], i: usize, rows: usize) -> bool {
    rows * sizes[i] * sizes[i + 1] <= SMALL_LAYER_MACS
}

/// The training rows as host slices: image bytes, or table floats.
enum Rows {
    Bytes(HostTensor<u8>),
    Floats(HostTensor<f32>),
}

impl Rows {
    /// SAFETY: the caller guarantees `data` is never written while this lives (see
    /// [`HostTensor::new`]).
    unsafe fn new(data: &Tensor) -> Self {
        // SAFETY: as the caller guarantees.
        unsafe {
            if data.kind() == tch::Kind::Float {
                Rows::Floats(HostTensor::new(data.shallow_clone()))
            } else {
                Rows::Bytes(HostTensor::new(data.shallow_clone()))
            }
        }
    }
}

/// The CPU fast path: libtorch for the large matrix products, Rust loops for the rest.
pub struct HostStep<'a> {
    cfg: &'a TrainConfig,
    augment: Option<Augment>,
    sizes: Vec<usize>,
    images: Rows,
    labels: HostTensor<i64>,
    /// The model's parameters and this step's gradients (which `exchange` shares).
    params: Layers,
    grads: Layers,
    exchange: Option<Exchange<'a>>,
    order: Cached<i64>,
    loss_sum: Cached<f32>,
    correct: Cached<i64>,
    /// Buffers for the full batch and, when the epoch ends on a shorter one, for that.
    buffers: Vec<Buffers>,
}

impl<'a> HostStep<'a> {
    pub fn new(
        cfg: &'a TrainConfig,
        data: &'a DeviceData,
        state: &TrainState,
        group: Option<&'a Group>,
    ) -> Result<Self> {
        // Tables are never augmented (the job refuses the keys for them).
        let augment = match data.shape {
            Some(shape) => Augment::new(cfg, shape)?,
            None => None,
        };
        let sizes = state.model.sizes().to_vec();
        let (grad_flat, _, exchange) = gradient_buffers(state, group);
        // SAFETY: the dataset is never written once loaded. The parameters are
        // otherwise only touched between steps (evaluation, checkpoints), and by the optimizer
        // through the slices lent here. The gradients are otherwise only touched by the
        // all-reduce, which `step` runs while no slice of them is live.
        let (images, labels, params, grads) = unsafe {
            (
                Rows::new(&data.images),
                HostTensor::new(data.labels.shallow_clone()),
                Layers::new(state.model.flat.shallow_clone(), &sizes),
                Layers::new(grad_flat, &sizes),
            )
        };
        Ok(Self {
            cfg,
            augment,
            sizes,
            images,
            labels,
            params,
            grads,
            exchange,
            order: Cached(None),
            loss_sum: Cached(None),
            correct: Cached(None),
            buffers: Vec::new(),
        })
    }
}

impl Step for HostStep<'_> {
    fn step(
        &mut self,
        state: &mut TrainState,
        order: &Tensor,
        start: i64,
        len: i64,
        epoch: usize,
        lr: f64,
    ) -> Result<()> {
        let len = len as usize;
        let (lo, hi) = self.exchange.as_ref().map_or((0, len), |x| x.rows(len));
        // SAFETY: the epoch's order is made once per epoch and never written.
        let order = unsafe { self.order.get(order) };
        let idx = order.as_slice()[start as usize..][lo..hi].to_vec();
        let (loss, correct) = if idx.is_empty() {
            self.grads.flat.as_mut_slice().fill(0.0);
            (0.0, 0)
        } else {
            self.forward_backward(state, &idx, (lo, len), epoch)
        };
        let (loss, correct) = match &mut self.exchange {
            Some(x) => {
                let (l, c) = x.all_reduce(|tail| {
                    let _ = tail.get(0).fill_(loss as f64);
                    let _ = tail.get(1).fill_(correct as f64);
                })?;
                (l.double_value(&[]) as f32, c.int64_value(&[]))
            }
            None => (loss, correct),
        };
        // SAFETY: the training loop reads and resets the sums only between steps.
        unsafe {
            self.loss_sum.get(&state.loss_sum).as_mut_slice()[0] += loss;
            self.correct.get(&state.correct).as_mut_slice()[0] += correct;
        }
        let params = &state.model.flat;
        state.optimizer.step_host(
            params,
            self.params.flat.as_mut_slice(),
            self.grads.flat.as_slice(),
            lr,
        )
    }

    fn stop_agreed(&mut self, local: bool) -> bool {
        self.exchange.as_mut().map_or(local, |x| x.stop_agreed(local))
    }
}

impl HostStep<'_> {
    /// Forward and backward over the samples `idx`, rows `first..` of a batch of `batch`:
    /// leaves the gradients of the batch's mean loss in `grads` and returns these rows' summed
    /// loss and correct count.
    fn forward_backward(
        &mut self,
        state: &TrainState,
        idx: &[i64],
        (first, batch): (usize, usize),
        epoch: usize,
    ) -> (f32, i64) {
        let mut buffers = std::mem::take(&mut self.buffers);
        let pos = self.load_batch(&mut buffers, state, idx, (first, batch), epoch);
        let result = self.pass(&mut buffers[pos], idx.len(), batch);
        self.buffers = buffers;
        result
    }

    /// The forward and backward pass over the loaded buffers `b`.
    fn pass(&mut self, b: &mut Buffers, rows: usize, batch: usize) -> (f32, i64) {
        let last = self.sizes.len() - 2;
        let dropout = self.cfg.dropout > 0.0;
        for i in 0..=last {
            let (before, after) = b.hidden.split_at_mut(i);
            let input = if i == 0 { &b.x } else { &before[i - 1] };
            let out = if i == last { &mut b.logits } else { &mut after[0] };
            self.layer_forward(i, input, out, rows);
            if i < last {
                kernels::relu_dropout(out.as_mut_slice(), dropout.then(|| b.masks[i].as_slice()));
            }
        }
        let (classes, smoothing) = (self.sizes[last + 1], self.cfg.label_smoothing as f32);
        let logits = b.logits.as_mut_slice();
        let (loss, correct) =
            kernels::softmax_xent_grad(logits, classes, &b.labels, batch, smoothing);

        // Backward: the logits now hold their gradient.
        for i in (0..=last).rev() {
            let (lower, upper) = b.deltas.split_at_mut(i);
            let delta = if i == last { &b.logits } else { &upper[0] };
            let input = if i == 0 { &b.x } else { &b.hidden[i - 1] };
            self.layer_gradients(i, delta, input, rows);
            if i > 0 {
                let dx = &mut lower[i - 1];
                self.layer_input_gradient(i, delta, dx, rows);
                let mask = dropout.then(|| b.masks[i - 1].as_slice());
                kernels::relu_dropout_backward(dx.as_mut_slice(), b.hidden[i - 1].as_slice(), mask);
            }
        }
        (loss, correct)
    }

    /// Fills the buffers for `idx.len()` rows (made on first use) with the batch's inputs,
    /// labels and dropout masks; returns their position in `buffers`.
    fn load_batch(
        &self,
        buffers: &mut Vec<Buffers>,
        state: &TrainState,
        idx: &[i64],
        (first, batch): (usize, usize),
        epoch: usize,
    ) -> usize {
        let rows = idx.len();
        let pos = buffers.iter().position(|b| b.rows == rows).unwrap_or_else(|| {
            buffers.push(Buffers::new(&self.sizes, rows));
            buffers.len() - 1
        });
        let (b, width) = (&mut buffers[pos], self.sizes[0]);
        let x = b.x.as_mut_slice();
        match (&self.images, &self.augment) {
            (Rows::Floats(rows), _) => kernels::gather_scaled(rows.as_slice(), width, idx, 1.0, x),
            (Rows::Bytes(pixels), None) => {
                kernels::gather_scaled(pixels.as_slice(), width, idx, 1.0 / 255.0, x)
            }
            (Rows::Bytes(pixels), Some(aug)) => {
                let images = pixels.as_slice();
                let rows = (first, first + rows);
                let moves = batch_moves(aug, self.cfg, (epoch, state.step), rows, batch);
                for ((out, &i), m) in x.chunks_exact_mut(width).zip(idx).zip(moves) {
                    aug.apply(&images[i as usize * width..][..width], m, 1.0 / 255.0, out);
                }
            }
        }
        let labels = self.labels.as_slice();
        for (dst, &i) in b.labels.iter_mut().zip(idx) {
            *dst = labels[i as usize];
        }
        if self.cfg.dropout > 0.0 {
            for (i, mask) in b.masks.iter_mut().enumerate() {
                let seed = mask_seed(self.cfg, epoch, state, i);
                let width = self.sizes[i + 1];
                // The whole batch's mask, so that a rank's rows get what one process would.
                *mask = model::dropout_values(self.cfg.dropout, batch, width, seed);
                if rows != batch {
                    *mask = mask[first * width..(first + rows) * width].to_vec();
                }
            }
        }
        pos
    }

    /// Layer `i`'s output before its activation, `out = x · wᵀ + b`.
    fn layer_forward(&self, i: usize, x: &HostTensor<f32>, out: &mut HostTensor<f32>, rows: usize) {
        let (k, bias) = (self.sizes[i], self.params.bias(i));
        if small_layer(&self.sizes, i, rows) {
            let w = self.params.weight(i);
            kernels::linear(x.as_slice(), w, bias, k, out.as_mut_slice());
            return;
        }
        // Bias rows written here and the product added onto them (MKL with beta 1) cost less
        // than addmm's own broadcast copy.
        for row in out.as_mut_slice().chunks_exact_mut(self.sizes[i + 1]) {
            row.copy_from_slice(bias);
        }
        let o = out.tensor_mut();
        let _ = o.addmm_out(o, x.tensor(), self.params.matrices(i).1);
    }

    /// Layer `i`'s weight and bias gradients, from `delta` (the gradient at its output) and
    /// its input `x`.
    fn layer_gradients(
        &mut self,
        i: usize,
        delta: &HostTensor<f32>,
        x: &HostTensor<f32>,
        rows: usize,
    ) {
        let (k, n) = (self.sizes[i], self.sizes[i + 1]);
        let small = small_layer(&self.sizes, i, rows);
        let (gw, gb) = self.grads.layer_mut(i);
        kernels::column_sums(delta.as_slice(), n, gb);
        if small {
            kernels::weight_grad(delta.as_slice(), x.as_slice(), k, gw);
        } else {
            // Zeroed here and accumulated onto (beta 1): MKL zeroes for beta 0 more slowly
            // than memset.
            gw.fill(0.0);
            let g = self.grads.matrix_mut(i);
            let _ = g.addmm_out(g, delta.transposed(), x.tensor());
        }
    }

    /// The gradient at layer `i`'s input, `dx = delta · w` (before the previous layer's
    /// activation is undone).
    fn layer_input_gradient(
        &self,
        i: usize,
        delta: &HostTensor<f32>,
        dx: &mut HostTensor<f32>,
        rows: usize,
    ) {
        if small_layer(&self.sizes, i, rows) {
            let (w, k) = (self.params.weight(i), self.sizes[i]);
            kernels::input_grad(delta.as_slice(), w, k, dx.as_mut_slice());
        } else {
            let _ = delta.tensor().mm_out(dx.tensor_mut(), self.params.matrices(i).0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::tests::toy;
    use tch::Device;

    /// With augmentation on, each row of a loaded batch is its own sample's image, moved, beside
    /// that sample's label.
    #[test]
    fn augmented_rows_keep_their_labels() {
        let ds = toy(64, 3);
        let data = DeviceData::new(&ds, Device::Cpu);
        let cfg = TrainConfig {
            num_classes: 4,
            hidden_units: vec![8],
            augment_shift: 1,
            augment_flip: true,
            ..TrainConfig::default()
        };
        let state = TrainState::new(&cfg, 16, Device::Cpu);
        let step = HostStep::new(&cfg, &data, &state, None).unwrap();
        let idx: Vec<i64> = vec![5, 0, 63, 17, 17, 2];
        let mut buffers = Vec::new();
        let pos = step.load_batch(&mut buffers, &state, &idx, (0, idx.len()), 3);
        let b = &buffers[pos];
        let aug = Augment::new(&cfg, crate::data::Shape::new(4, 4, 1)).unwrap().unwrap();
        let moves = aug.moves(cfg.seed, 3, state.step, idx.len());
        assert!(moves.iter().any(|m| *m != Default::default()), "some row is moved");
        let mut want = vec![0f32; 16];
        for (r, &i) in idx.iter().enumerate() {
            aug.apply(
                &ds.images().unwrap().0[i as usize * 16..][..16],
                moves[r],
                1.0 / 255.0,
                &mut want,
            );
            assert_eq!(&b.x.as_slice()[r * 16..][..16], &want[..], "row {r}");
            assert_eq!(b.labels[r], ds.labels[i as usize] as i64, "row {r}");
        }
    }
}
