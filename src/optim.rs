//! Optimizers over one flat parameter buffer and one flat gradient buffer.
//!
//! We own the update instead of using `tch::nn::Optimizer` so that every piece of state (moments,
//! step count) is a tensor we can name, save in a checkpoint and restore bit-exactly, and so that
//! one update touches the whole model in a few operations instead of a loop over tensors.
//! The formulas are PyTorch's (which match Keras' up to where epsilon sits in Adam).

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use crate::config::{OptimizerKind, TrainConfig};
use crate::{kernels, native};

/// RMSprop's moving-average factor, Keras' default `rho`.
pub const RMSPROP_RHO: f64 = 0.9;

/// Floats per cache line: the unit in which the CPU Adam update is shared between threads.
const LINE: usize = 16;
/// The fewest parameters worth another thread for the CPU Adam update: below this, waking a
/// thread costs more than it saves.
const ADAM_GRAIN: usize = 16 * 1024;

/// The Adam update's four buffers, shared by the threads of one update; each thread touches
/// only its own range.
struct AdamBuffers {
    p: *mut f32,
    g: *const f32,
    m: *mut f32,
    v: *mut f32,
}

// SAFETY: see `AdamBuffers`: concurrent users write disjoint ranges.
unsafe impl Sync for AdamBuffers {}

impl AdamBuffers {
    /// Elements `lo..hi` of each buffer.
    ///
    /// # Safety
    /// The range must lie within every buffer and no other live slice may overlap it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn range(&self, lo: usize, hi: usize) -> (&mut [f32], &[f32], &mut [f32], &mut [f32]) {
        let part = |ptr: *mut f32| std::slice::from_raw_parts_mut(ptr.add(lo), hi - lo);
        let g = std::slice::from_raw_parts(self.g.add(lo), hi - lo);
        (part(self.p), g, part(self.m), part(self.v))
    }
}

pub struct Optimizer {
    kind: OptimizerKind,
    beta1: f64,
    beta2: f64,
    eps: f64,
    momentum: f64,
    weight_decay: f64,
    /// First moment (Adam/AdamW) or momentum buffer (SGD, RMSprop).
    first: Tensor,
    /// Second moment (Adam/AdamW, RMSprop).
    second: Tensor,
    steps: u64,
    /// `steps` as a float scalar on the device, as ATen's fused Adam reads it.
    step_tensor: Tensor,
    /// Element pointers of `first` and `second` for the CPU fast path, looked up once.
    host_state: Option<(*mut f32, *mut f32)>,
}

impl Optimizer {
    pub fn new(cfg: &TrainConfig, numel: usize, device: Device) -> Self {
        let zeros = || Tensor::zeros([numel as i64], (Kind::Float, device));
        Self {
            kind: cfg.optimizer,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.epsilon,
            momentum: cfg.momentum,
            weight_decay: cfg.weight_decay,
            first: zeros(),
            second: zeros(),
            steps: 0,
            step_tensor: Tensor::zeros([], (Kind::Float, device)),
            host_state: None,
        }
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The optimizer's state tensors by name (for checkpoints).
    pub fn state(&self) -> [(&'static str, &Tensor); 2] {
        [("optimizer.first", &self.first), ("optimizer.second", &self.second)]
    }

    /// Restores state saved by [`Optimizer::state`] and the step count.
    pub fn restore(&mut self, first: &Tensor, second: &Tensor, steps: u64) {
        self.first.copy_(first);
        self.second.copy_(second);
        self.steps = steps;
        let _ = self.step_tensor.fill_(steps as f64);
    }

    /// [`Optimizer::step`] for CPU training, given the parameters and gradients as slices (the
    /// fast path keeps them at hand). Adam and AdamW run as one Rust loop over the buffers, its
    /// range split between libtorch's threads: ATen's fused CPU kernel measured several times
    /// slower here (bench/step.rs).
    ///
    /// # Panics
    /// If `params`, `grads` and the optimizer's state differ in length, or the state is not on
    /// the CPU: the caller's bug.
    pub fn step_host(
        &mut self,
        params_tensor: &Tensor,
        params: &mut [f32],
        grads: &[f32],
        lr: f64,
    ) -> Result<()> {
        let (l2, decay) = match self.kind {
            OptimizerKind::Adam => (self.weight_decay, 1.0),
            OptimizerKind::AdamW => (0.0, 1.0 - lr * self.weight_decay),
            _ => {
                let g = Tensor::from_slice(grads);
                return self.step(params_tensor, &g, lr);
            }
        };
        self.steps += 1;
        let adam = kernels::Adam {
            lr: lr as f32,
            beta1: self.beta1 as f32,
            beta2: self.beta2 as f32,
            eps: self.eps as f32,
            l2: l2 as f32,
            decay: decay as f32,
            step: self.steps,
        };
        let n = params.len();
        assert_eq!(grads.len(), n, "Adam: gradients and parameters differ in length");
        let (first, second) = self.host_state.get_or_insert_with(|| {
            for t in [&self.first, &self.second] {
                assert!(t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous());
                assert_eq!(t.numel(), n, "Adam: state and parameters differ in length");
            }
            (self.first.data_ptr() as *mut f32, self.second.data_ptr() as *mut f32)
        });
        let bufs = AdamBuffers { p: params.as_mut_ptr(), g: grads.as_ptr(), m: *first, v: *second };
        // Each thread updates its own whole cache lines; the arithmetic is elementwise, so how
        // the buffer is split changes no bit of the result.
        native::parallel_for(n.div_ceil(LINE), ADAM_GRAIN / LINE, |begin, end| {
            let (lo, hi) = (begin * LINE, (end * LINE).min(n));
            // SAFETY: the ranges are disjoint and within the `n` elements of each buffer (checked
            // above); `params` and `grads` are borrowed for the call, and the moments belong to
            // `self`, which is borrowed mutably.
            let (p, g, m, v) = unsafe { bufs.range(lo, hi) };
            adam.update(p, g, m, v);
        })
    }

    /// One update of `params` from `grads` at learning rate `lr`.
    pub fn step(&mut self, params: &Tensor, grads: &Tensor, lr: f64) -> Result<()> {
        self.steps += 1;
        if matches!(self.kind, OptimizerKind::Adam | OptimizerKind::AdamW) {
            let args = native::AdamArgs {
                lr,
                beta1: self.beta1,
                beta2: self.beta2,
                weight_decay: self.weight_decay,
                eps: self.eps,
                decoupled: self.kind == OptimizerKind::AdamW,
            };
            return native::fused_adam(
                params,
                grads,
                &self.first,
                &self.second,
                &self.step_tensor,
                args,
            );
        }
        let mut p = params.shallow_clone();
        let wd = self.weight_decay;
        // L2 regularisation adds to the gradient; AdamW decays the weights directly.
        let g = if wd > 0.0 && self.kind != OptimizerKind::AdamW {
            grads + &p * wd
        } else {
            grads.shallow_clone()
        };
        match self.kind {
            OptimizerKind::Adam | OptimizerKind::AdamW => {
                unreachable!("handled by the fused kernel")
            }
            OptimizerKind::Sgd => {
                if self.momentum > 0.0 {
                    let _ = self.first.g_mul_scalar_(self.momentum);
                    let _ = self.first.g_add_(&g);
                    let _ = p.g_sub_(&(&self.first * lr));
                } else {
                    let _ = p.g_sub_(&(&g * lr));
                }
            }
            OptimizerKind::RmsProp => {
                let _ = self.second.g_mul_scalar_(RMSPROP_RHO);
                let _ = self.second.addcmul_(&(&g * (1.0 - RMSPROP_RHO)), &g);
                let mut denom = self.second.sqrt();
                let _ = denom.g_add_scalar_(self.eps);
                if self.momentum > 0.0 {
                    let _ = self.first.g_mul_scalar_(self.momentum);
                    let _ = self.first.addcdiv_(&g, &denom);
                    let _ = p.g_sub_(&(&self.first * lr));
                } else {
                    let _ = p.addcdiv_(&(&g * -lr), &denom);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::{self, OptimizerConfig};

    /// Runs our optimizer and tch's (libtorch's own) on the same problem and compares weights.
    fn compare(kind: OptimizerKind, momentum: f64, wd: f64, reference: impl OptimizerConfig) {
        let cfg = TrainConfig {
            optimizer: kind,
            momentum,
            weight_decay: wd,
            epsilon: 1e-8,
            ..TrainConfig::default()
        };
        let init = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.1]);
        let target = Tensor::from_slice(&[1.0f32, 1.0, -1.0, 0.0]);
        let ours = init.copy();
        let mut opt = Optimizer::new(&cfg, 4, Device::Cpu);
        let vs = nn::VarStore::new(Device::Cpu);
        let theirs = vs.root().var_copy("w", &init);
        let mut ref_opt = reference.build(&vs, 0.01).unwrap();
        for _ in 0..20 {
            let grad = (&ours - &target) * 2.0;
            opt.step(&ours, &grad, 0.01).unwrap();
            let loss = (&theirs - &target).square().sum(Kind::Float);
            ref_opt.backward_step(&loss);
        }
        let diff = (&ours - &theirs).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{kind:?}: differs from libtorch by {diff}");
        assert_eq!(opt.steps(), 20);
    }

    #[test]
    fn adam_matches_libtorch() {
        compare(OptimizerKind::Adam, 0.0, 0.0, nn::Adam::default());
        compare(OptimizerKind::Adam, 0.0, 0.01, nn::Adam { wd: 0.01, ..Default::default() });
    }

    /// The CPU update, split between threads, gives exactly the bits of one serial pass.
    #[test]
    fn threaded_host_adam_is_bit_identical_to_one_pass() {
        tch::set_num_threads(2);
        for (kind, l2, decay) in
            [(OptimizerKind::Adam, 0.01, 1.0), (OptimizerKind::AdamW, 0.0, 1.0 - 0.01 * 0.01)]
        {
            let cfg = TrainConfig { optimizer: kind, weight_decay: 0.01, ..TrainConfig::default() };
            let n = 3 * ADAM_GRAIN + 5;
            let mut p: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 0.1).collect();
            let (mut q, mut m, mut v) = (p.clone(), vec![0f32; n], vec![0f32; n]);
            let mut opt = Optimizer::new(&cfg, n, Device::Cpu);
            for step in 1..=3 {
                let t = Tensor::from_slice(&p);
                opt.step_host(&t, &mut p, &g, 0.01).unwrap();
                let adam = kernels::Adam {
                    lr: 0.01,
                    beta1: cfg.beta1 as f32,
                    beta2: cfg.beta2 as f32,
                    eps: cfg.epsilon as f32,
                    l2,
                    decay: decay as f32,
                    step,
                };
                adam.update(&mut q, &g, &mut m, &mut v);
                assert!(p == q, "{kind:?} step {step}: the threaded update differs");
            }
        }
    }

    #[test]
    fn adamw_matches_libtorch() {
        compare(OptimizerKind::AdamW, 0.0, 0.01, nn::AdamW { wd: 0.01, ..Default::default() });
    }

    #[test]
    fn sgd_matches_libtorch() {
        compare(OptimizerKind::Sgd, 0.0, 0.0, nn::Sgd::default());
        compare(
            OptimizerKind::Sgd,
            0.9,
            0.001,
            nn::Sgd { momentum: 0.9, wd: 0.001, ..Default::default() },
        );
    }

    #[test]
    fn rmsprop_matches_libtorch() {
        let rms = |momentum| nn::RmsProp {
            alpha: RMSPROP_RHO,
            eps: 1e-8,
            momentum,
            ..Default::default()
        };
        compare(OptimizerKind::RmsProp, 0.0, 0.0, rms(0.0));
        compare(OptimizerKind::RmsProp, 0.5, 0.0, rms(0.5));
    }
}
