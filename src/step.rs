//! One optimizer step, two ways.
//!
//! [`TensorStep`] runs every part of the step as libtorch operations on the training device:
//! on a GPU, the data, the model and the step all stay there, with no host round trip.
//! [`HostStep`] is the CPU's fast path: the matrix products go to libtorch (MKL), and the small
//! parts around them (batch gather and scaling, ReLU, dropout, softmax cross-entropy, bias
//! gradients, the Adam update) run as plain Rust loops over preallocated buffers, because at a
//! batch of 32 libtorch's per-operation dispatch costs more than their arithmetic. Both compute
//! the same thing; a test holds them together.

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use crate::config::TrainConfig;
use crate::kernels;
use crate::model::{self, dense_views, Dense};
use crate::train::{DeviceData, TrainState};

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
}

/// The step for the data's device: [`HostStep`] on the CPU, [`TensorStep`] elsewhere.
pub fn for_device<'a>(
    cfg: &'a TrainConfig,
    data: &'a DeviceData,
    state: &TrainState,
) -> Box<dyn Step + 'a> {
    if data.labels.device() == Device::Cpu {
        Box::new(HostStep::new(cfg, data, state))
    } else {
        Box::new(TensorStep::new(cfg, data, state))
    }
}

fn mask_seed(cfg: &TrainConfig, epoch: usize, state: &TrainState, layer: usize) -> [u64; 4] {
    [cfg.seed, epoch as u64, state.step as u64, layer as u64]
}

/// Every part of the step as libtorch operations, on any device.
pub struct TensorStep<'a> {
    cfg: &'a TrainConfig,
    data: &'a DeviceData,
    grad_flat: Tensor,
    grads: Vec<Dense>,
}

impl<'a> TensorStep<'a> {
    pub fn new(cfg: &'a TrainConfig, data: &'a DeviceData, state: &TrainState) -> Self {
        let grad_flat = Tensor::zeros_like(&state.model.flat);
        let grads = dense_views(&grad_flat, state.model.sizes());
        Self { cfg, data, grad_flat, grads }
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
        let (x, y) = self.data.batch(&order.narrow(0, start, len));
        let masks = sizes[1..sizes.len() - 1]
            .iter()
            .enumerate()
            .map(|(i, &width)| {
                (self.cfg.dropout > 0.0).then(|| {
                    let seed = mask_seed(self.cfg, epoch, state, i);
                    model::dropout_mask(self.cfg.dropout, len as usize, width, seed, device)
                })
            })
            .collect();
        let (logits, tape) = state.model.forward_train(&x, masks);
        let (dlogits, l, c) = model::cross_entropy_grad(&logits, &y);
        state.model.backward(&tape, dlogits, &self.grads);
        state.optimizer.step(&state.model.flat, &self.grad_flat, lr)?;
        let _ = state.loss_sum.g_add_(&l);
        let _ = state.correct.g_add_(&c);
        Ok(())
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

/// The CPU fast path: libtorch for the matrix products, Rust loops for the rest.
pub struct HostStep<'a> {
    cfg: &'a TrainConfig,
    sizes: Vec<usize>,
    images: &'a [u8],
    labels: &'a [i64],
    params: HostBuf,
    grad_flat: HostBuf,
    grads: Vec<Dense>,
    bias_grads: Vec<HostBuf>,
    /// Transposed views of the weights (they follow in-place updates).
    weights_t: Vec<Tensor>,
    /// Buffers for the full batch and, when the epoch ends on a shorter one, for that.
    buffers: Vec<Buffers>,
}

impl<'a> HostStep<'a> {
    pub fn new(cfg: &'a TrainConfig, data: &'a DeviceData, state: &TrainState) -> Self {
        let sizes = state.model.sizes().to_vec();
        let grad_flat = Tensor::zeros_like(&state.model.flat);
        let grads = dense_views(&grad_flat, &sizes);
        let bias_grads = grads.iter().map(|g| HostBuf::new(g.bias.shallow_clone())).collect();
        let weights_t = state.model.layers.iter().map(|l| l.weight.tr()).collect();
        // SAFETY: the dataset's tensors are contiguous CPU tensors of these types that `data`
        // keeps alive and nothing writes while we train.
        let (images, labels) = unsafe { (&*host::<u8>(&data.images), &*host::<i64>(&data.labels)) };
        Self {
            cfg,
            sizes,
            images,
            labels,
            params: HostBuf::new(state.model.flat.shallow_clone()),
            grad_flat: HostBuf::new(grad_flat),
            grads,
            bias_grads,
            weights_t,
            buffers: Vec::new(),
        }
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
        let rows = len as usize;
        let pos = match self.buffers.iter().position(|b| b.rows == rows) {
            Some(pos) => pos,
            None => {
                self.buffers.push(Buffers::new(&self.sizes, rows));
                self.buffers.len() - 1
            }
        };
        let b = &mut self.buffers[pos];
        let sizes = &self.sizes;
        let last = sizes.len() - 2;
        let layers = &state.model.layers;
        // SAFETY (every `slice`/`host` below): each buffer is a contiguous CPU tensor of the
        // stated type, each slice ends before libtorch touches that storage again, and
        // libtorch's CPU operations have finished when they return.
        let idx = unsafe { &host::<i64>(order)[start as usize..][..rows] };
        unsafe { kernels::gather_scaled(self.images, sizes[0], idx, 1.0 / 255.0, b.x.slice()) };
        for (dst, &i) in b.labels.iter_mut().zip(idx) {
            *dst = self.labels[i as usize];
        }
        if self.cfg.dropout > 0.0 {
            for (i, mask) in b.masks.iter_mut().enumerate() {
                let seed = mask_seed(self.cfg, epoch, state, i);
                *mask = model::dropout_values(self.cfg.dropout, rows, sizes[i + 1], seed);
            }
        }
        let mask = |i: usize| (self.cfg.dropout > 0.0).then(|| b.masks[i].as_slice());

        // Forward.
        for (i, layer) in layers.iter().enumerate().take(last) {
            let _ =
                layer.bias.addmm_out(&b.hidden[i].tensor, &b.input(i).tensor, &self.weights_t[i]);
            unsafe { kernels::relu_dropout(b.hidden[i].slice(), mask(i)) };
        }
        let _ = layers[last].bias.addmm_out(
            &b.logits.tensor,
            &b.input(last).tensor,
            &self.weights_t[last],
        );
        let (loss, correct) =
            unsafe { kernels::softmax_xent_grad(b.logits.slice(), sizes[last + 1], &b.labels) };
        unsafe {
            host::<f32>(&state.loss_sum)[0] += loss;
            host::<i64>(&state.correct)[0] += correct;
        }

        // Backward: the logits now hold their gradient.
        for i in (0..=last).rev() {
            let (delta, delta_t) =
                if i == last { (&b.logits, &b.logits_t) } else { (&b.deltas[i], &b.deltas_t[i]) };
            unsafe {
                kernels::column_sums(delta.slice(), sizes[i + 1], self.bias_grads[i].slice())
            };
            let _ = delta_t.mm_out(&self.grads[i].weight, &b.input(i).tensor);
            if i > 0 {
                let _ = delta.tensor.mm_out(&b.deltas[i - 1].tensor, &layers[i].weight);
                unsafe {
                    kernels::relu_dropout_backward(
                        b.deltas[i - 1].slice(),
                        b.hidden[i - 1].slice(),
                        mask(i - 1),
                    )
                };
            }
        }
        unsafe {
            state.optimizer.step_host(
                &state.model.flat,
                self.params.slice(),
                self.grad_flat.slice(),
                lr,
            )
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
        for (dropout, hidden) in [(0.0, vec![8]), (0.3, vec![8, 6])] {
            let cfg = TrainConfig {
                num_classes: 4,
                hidden_units: hidden,
                dropout,
                batch_size: 16,
                ..TrainConfig::default()
            };
            let mut a = TrainState::new(&cfg, 16, Device::Cpu);
            let mut b = TrainState::new(&cfg, 16, Device::Cpu);
            let order = Tensor::from_slice(&crate::train::epoch_order(1, 0, 64));
            let mut host_step = HostStep::new(&cfg, &data, &a);
            let mut tensor_step = TensorStep::new(&cfg, &data, &b);
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
