//! One optimizer step, two ways.
//!
//! [`TensorStep`] runs every part of the step as libtorch operations on the training device:
//! on a GPU, the data, the model and the step all stay there, with no host round trip.
//! [`HostStep`] is the CPU's fast path: the matrix products go to libtorch (MKL), and the small
//! parts around them (batch gather and scaling, ReLU, dropout, softmax cross-entropy, bias
//! gradients, the Adam update) run as plain Rust loops over preallocated buffers, because at a
//! batch of 32 libtorch's per-operation dispatch costs more than their arithmetic. Both compute
//! the same thing; a test holds them together.
//!
//! In a multi-host job ([`Exchange`]) each rank computes its rows of the global batch and the
//! ranks sum their gradients with one all-reduce before the optimizer, so every rank takes the
//! same step.

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use crate::augment::{Augment, Move};
use crate::config::TrainConfig;
use crate::distributed::{self, Group};
use crate::kernels;
use crate::model::{self, dense_views, Dense};
use crate::state::{DeviceData, TrainState};

/// A mutable view of a CPU tensor's elements.
///
/// # Safety
/// `t` must be a contiguous CPU tensor of element type `T`, and no other live reference may
/// point into its storage while the slice is in use.
#[allow(clippy::mut_from_ref)]
unsafe fn host<T>(t: &Tensor) -> &mut [T] {
    debug_assert_eq!(t.device(), Device::Cpu);
    debug_assert!(t.is_contiguous());
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, t.numel())
}

/// A CPU float matrix with its element pointer looked up once: each lookup is a call into
/// libtorch, and the fast path would otherwise make dozens per step.
struct HostBuf {
    tensor: Tensor,
    ptr: *mut f32,
    len: usize,
}

impl HostBuf {
    fn new(tensor: Tensor) -> Self {
        assert!(
            tensor.device() == Device::Cpu
                && tensor.kind() == Kind::Float
                && tensor.is_contiguous()
        );
        let (ptr, len) = (tensor.data_ptr() as *mut f32, tensor.numel());
        Self { tensor, ptr, len }
    }

    /// # Safety
    /// No other reference into this buffer may be live while the slice is used, and no libtorch
    /// operation may be writing it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.ptr, self.len)
    }
}

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
        let augment = Augment::new(cfg, data.shape.0, data.shape.1)?;
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

/// Preallocated activations for one batch size.
struct Buffers {
    rows: usize,
    x: HostBuf,
    /// Each hidden layer's output (after ReLU and dropout).
    hidden: Vec<HostBuf>,
    /// Gradients at each hidden layer's output, and their transposed views.
    deltas: Vec<HostBuf>,
    deltas_t: Vec<Tensor>,
    /// The logits, which become their own gradient; and its transposed view.
    logits: HostBuf,
    logits_t: Tensor,
    labels: Vec<i64>,
    masks: Vec<Vec<f32>>,
}

impl Buffers {
    fn new(sizes: &[usize], rows: usize) -> Self {
        let mat = |cols: usize| {
            HostBuf::new(Tensor::zeros([rows as i64, cols as i64], (Kind::Float, Device::Cpu)))
        };
        let widths = &sizes[1..sizes.len() - 1];
        let deltas: Vec<HostBuf> = widths.iter().map(|&w| mat(w)).collect();
        let logits = mat(sizes[sizes.len() - 1]);
        Self {
            rows,
            x: mat(sizes[0]),
            hidden: widths.iter().map(|&w| mat(w)).collect(),
            deltas_t: deltas.iter().map(|d| d.tensor.tr()).collect(),
            deltas,
            logits_t: logits.tensor.tr(),
            logits,
            labels: vec![0; rows],
            masks: vec![Vec::new(); widths.len()],
        }
    }

    /// The input of layer `i`: the batch, or the previous hidden layer's output.
    fn input(&self, i: usize) -> &HostBuf {
        if i == 0 {
            &self.x
        } else {
            &self.hidden[i - 1]
        }
    }
}

/// The most multiply-adds a layer's product may take for [`HostStep`] to compute it in Rust:
/// below this, a call into libtorch (dispatch, then MKL waking its threads) costs more than the
/// arithmetic. The notebook's output layer at batch 32 is 41k; its first layer, 3.2M.
const SMALL_LAYER_MACS: usize = 1 << 17;

/// Whether layer `i` (`sizes[i]` → `sizes[i + 1]`) is small at `rows` rows.
fn small_layer(sizes: &[usize], i: usize, rows: usize) -> bool {
    rows * sizes[i] * sizes[i + 1] <= SMALL_LAYER_MACS
}

/// The CPU fast path: libtorch for the large matrix products, Rust loops for the rest.
pub struct HostStep<'a> {
    cfg: &'a TrainConfig,
    augment: Option<Augment>,
    sizes: Vec<usize>,
    images: &'a [u8],
    labels: &'a [i64],
    params: HostBuf,
    grad_flat: HostBuf,
    exchange: Option<Exchange<'a>>,
    bias_grads: Vec<HostBuf>,
    weight_grads: Vec<HostBuf>,
    /// Each layer's weights and biases, as views of the parameters (they follow in-place
    /// updates); and the weights' transposed views.
    weights: Vec<HostBuf>,
    biases: Vec<HostBuf>,
    weights_t: Vec<Tensor>,
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
        let augment = Augment::new(cfg, data.shape.0, data.shape.1)?;
        let sizes = state.model.sizes().to_vec();
        let (grad_flat, grads, exchange) = gradient_buffers(state, group);
        let views =
            |ts: Vec<&Tensor>| ts.into_iter().map(|t| HostBuf::new(t.shallow_clone())).collect();
        let layers = &state.model.layers;
        let bias_grads = views(grads.iter().map(|g| &g.bias).collect());
        let weight_grads = views(grads.iter().map(|g| &g.weight).collect());
        // SAFETY: the dataset's tensors are contiguous CPU tensors of these types that `data`
        // keeps alive and nothing writes while we train.
        let (images, labels) = unsafe { (&*host::<u8>(&data.images), &*host::<i64>(&data.labels)) };
        Ok(Self {
            cfg,
            augment,
            sizes,
            images,
            labels,
            params: HostBuf::new(state.model.flat.shallow_clone()),
            grad_flat: HostBuf::new(grad_flat),
            exchange,
            bias_grads,
            weight_grads,
            weights: views(layers.iter().map(|l| &l.weight).collect()),
            biases: views(layers.iter().map(|l| &l.bias).collect()),
            weights_t: layers.iter().map(|l| l.weight.tr()).collect(),
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
        // SAFETY: `order` is a contiguous CPU tensor of i64 that nothing writes meanwhile.
        let idx = unsafe { &host::<i64>(order)[start as usize..][lo..hi] };
        let (loss, correct) = if idx.is_empty() {
            // SAFETY: no other reference into the gradients is live.
            unsafe { self.grad_flat.slice().fill(0.0) };
            (0.0, 0)
        } else {
            self.forward_backward(state, idx, (lo, len), epoch)
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
        // SAFETY: each buffer is a contiguous CPU tensor of the stated type, each slice ends
        // before libtorch touches that storage again, and libtorch's CPU operations have
        // finished when they return. Every `slice` in this file relies on the same three facts.
        unsafe {
            host::<f32>(&state.loss_sum)[0] += loss;
            host::<i64>(&state.correct)[0] += correct;
            state.optimizer.step_host(
                &state.model.flat,
                self.params.slice(),
                self.grad_flat.slice(),
                lr,
            )
        }
    }

    fn stop_agreed(&mut self, local: bool) -> bool {
        self.exchange.as_mut().map_or(local, |x| x.stop_agreed(local))
    }
}

impl HostStep<'_> {
    /// Forward and backward over the samples `idx`, rows `first..` of a batch of `batch`:
    /// leaves the gradients of the batch's mean loss in `grad_flat` and returns these rows'
    /// summed loss and correct count.
    fn forward_backward(
        &mut self,
        state: &TrainState,
        idx: &[i64],
        (first, batch): (usize, usize),
        epoch: usize,
    ) -> (f32, i64) {
        let rows = idx.len();
        let pos = self.load_batch(state, idx, (first, batch), epoch);
        let b = &self.buffers[pos];
        let last = self.sizes.len() - 2;
        let mask = |i: usize| (self.cfg.dropout > 0.0).then(|| b.masks[i].as_slice());
        for i in 0..=last {
            let out = if i == last { &b.logits } else { &b.hidden[i] };
            self.layer_forward(i, b.input(i), out, rows);
            if i < last {
                // SAFETY: as in `step`.
                unsafe { kernels::relu_dropout(out.slice(), mask(i)) };
            }
        }
        let (classes, smoothing) = (self.sizes[last + 1], self.cfg.label_smoothing as f32);
        // SAFETY: as in `step`.
        let (loss, correct) = unsafe {
            kernels::softmax_xent_grad(b.logits.slice(), classes, &b.labels, batch, smoothing)
        };

        // Backward: the logits now hold their gradient.
        for i in (0..=last).rev() {
            let (delta, delta_t) =
                if i == last { (&b.logits, &b.logits_t) } else { (&b.deltas[i], &b.deltas_t[i]) };
            self.layer_gradients(i, delta, delta_t, b.input(i), rows);
            if i > 0 {
                let dx = &b.deltas[i - 1];
                self.layer_input_gradient(i, delta, dx, rows);
                // SAFETY: as in `step`; `dx` and the hidden layer are different buffers.
                unsafe {
                    kernels::relu_dropout_backward(dx.slice(), b.hidden[i - 1].slice(), mask(i - 1))
                };
            }
        }
        (loss, correct)
    }

    /// Fills the buffers for `idx.len()` rows (made on first use) with the batch's inputs,
    /// labels and dropout masks; returns their position in `buffers`.
    fn load_batch(
        &mut self,
        state: &TrainState,
        idx: &[i64],
        (first, batch): (usize, usize),
        epoch: usize,
    ) -> usize {
        let rows = idx.len();
        let pos = match self.buffers.iter().position(|b| b.rows == rows) {
            Some(pos) => pos,
            None => {
                self.buffers.push(Buffers::new(&self.sizes, rows));
                self.buffers.len() - 1
            }
        };
        let (b, sizes) = (&mut self.buffers[pos], &self.sizes);
        let scale = 1.0 / 255.0;
        // SAFETY: as in `step`.
        let x = unsafe { b.x.slice() };
        match &self.augment {
            None => kernels::gather_scaled(self.images, sizes[0], idx, scale, x),
            Some(aug) => {
                let moves =
                    batch_moves(aug, self.cfg, (epoch, state.step), (first, first + rows), batch);
                for ((out, &i), m) in x.chunks_exact_mut(sizes[0]).zip(idx).zip(moves) {
                    aug.apply(&self.images[i as usize * sizes[0]..][..sizes[0]], m, scale, out);
                }
            }
        }
        for (dst, &i) in b.labels.iter_mut().zip(idx) {
            *dst = self.labels[i as usize];
        }
        if self.cfg.dropout > 0.0 {
            for (i, mask) in b.masks.iter_mut().enumerate() {
                let seed = mask_seed(self.cfg, epoch, state, i);
                let width = sizes[i + 1];
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
    fn layer_forward(&self, i: usize, x: &HostBuf, out: &HostBuf, rows: usize) {
        let (k, bias) = (self.sizes[i], &self.biases[i]);
        if small_layer(&self.sizes, i, rows) {
            let w = &self.weights[i];
            // SAFETY: as in `step`; the four buffers are distinct.
            unsafe { kernels::linear(x.slice(), w.slice(), bias.slice(), k, out.slice()) };
            return;
        }
        // Bias rows written here and the product added onto them (MKL with beta 1) cost less
        // than addmm's own broadcast copy.
        // SAFETY: as in `step`; the bias and output buffers are distinct.
        let bias = unsafe { bias.slice() };
        // SAFETY: as in `step`; the slice ends before addmm_out below touches the storage.
        for row in unsafe { out.slice() }.chunks_exact_mut(self.sizes[i + 1]) {
            row.copy_from_slice(bias);
        }
        let _ = out.tensor.addmm_out(&out.tensor, &x.tensor, &self.weights_t[i]);
    }

    /// Layer `i`'s weight and bias gradients, from `delta` (the gradient at its output) and
    /// its input `x`.
    fn layer_gradients(
        &self,
        i: usize,
        delta: &HostBuf,
        delta_t: &Tensor,
        x: &HostBuf,
        rows: usize,
    ) {
        let (k, n) = (self.sizes[i], self.sizes[i + 1]);
        let gw = &self.weight_grads[i];
        // SAFETY: as in `step`; delta and the bias gradient are distinct buffers.
        unsafe { kernels::column_sums(delta.slice(), n, self.bias_grads[i].slice()) };
        if small_layer(&self.sizes, i, rows) {
            // SAFETY: as in `step`; the three buffers are distinct.
            unsafe { kernels::weight_grad(delta.slice(), x.slice(), k, gw.slice()) };
        } else {
            // Zeroed here and accumulated onto (beta 1): MKL zeroes for beta 0 more slowly
            // than memset.
            // SAFETY: as in `step`; the slice ends before addmm_out touches the storage.
            unsafe { gw.slice().fill(0.0) };
            let _ = gw.tensor.addmm_out(&gw.tensor, delta_t, &x.tensor);
        }
    }

    /// The gradient at layer `i`'s input, `dx = delta · w` (before the previous layer's
    /// activation is undone).
    fn layer_input_gradient(&self, i: usize, delta: &HostBuf, dx: &HostBuf, rows: usize) {
        let w = &self.weights[i];
        if small_layer(&self.sizes, i, rows) {
            // SAFETY: as in `step`.
            unsafe { kernels::input_grad(delta.slice(), w.slice(), self.sizes[i], dx.slice()) };
        } else {
            let _ = delta.tensor.mm_out(&dx.tensor, &w.tensor);
        }
    }
}

#[cfg(test)]
mod tests {
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
