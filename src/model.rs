//! The network: Flatten → [Dense(h, ReLU) → Dropout]… → Dense(classes), softmax
//! cross-entropy, as in the original notebook (one hidden layer of 128 by default).
//!
//! All parameters live in one flat tensor, and each layer's weight and bias are views into it.
//! The gradients live in a second flat tensor with the same layout. That lets the optimizer
//! update everything with a handful of whole-buffer operations, lets checkpoints and all-reduce
//! treat the model as one buffer, and lets the backward pass write straight into place. The
//! forward and backward passes are written out by hand: for a dense network they are a few
//! matrix products, and doing them explicitly skips autograd's per-step bookkeeping.

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// One dense layer: views into a flat buffer. `weight` is (out, in), as in PyTorch.
#[derive(Debug)]
pub struct Dense {
    pub weight: Tensor,
    pub bias: Tensor,
}

/// Layer widths from input to output: `[784, 128, 10]` for the notebook's model.
pub fn layer_sizes(input: usize, hidden: &[usize], classes: usize) -> Vec<usize> {
    let mut sizes = Vec::with_capacity(hidden.len() + 2);
    sizes.push(input);
    sizes.extend_from_slice(hidden);
    sizes.push(classes);
    sizes
}

/// How many numbers the parameters of a network with these widths take.
pub fn param_count(sizes: &[usize]) -> usize {
    sizes.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
}

/// [`param_count`] for sizes read from a file: `None` on overflow or fewer than two layers.
pub fn param_count_checked(sizes: &[usize]) -> Option<usize> {
    if sizes.len() < 2 || sizes.contains(&0) {
        return None;
    }
    sizes
        .windows(2)
        .try_fold(0usize, |n, w| n.checked_add(w[0].checked_mul(w[1])?.checked_add(w[1])?))
}

/// Cuts a flat buffer into per-layer weight and bias views.
pub fn dense_views(flat: &Tensor, sizes: &[usize]) -> Vec<Dense> {
    let mut offset = 0i64;
    sizes
        .windows(2)
        .map(|w| {
            let (fan_in, fan_out) = (w[0] as i64, w[1] as i64);
            let weight = flat.narrow(0, offset, fan_in * fan_out).view([fan_out, fan_in]);
            offset += fan_in * fan_out;
            let bias = flat.narrow(0, offset, fan_out);
            offset += fan_out;
            Dense { weight, bias }
        })
        .collect()
}

/// Tensor names in the safetensors file, PyTorch `nn.Sequential` style.
pub fn tensor_names(layers: usize) -> Vec<(String, String)> {
    (0..layers).map(|i| (format!("layers.{i}.weight"), format!("layers.{i}.bias"))).collect()
}

/// The multi-layer perceptron.
#[derive(Debug)]
pub struct Mlp {
    sizes: Vec<usize>,
    /// Every parameter, in layer order: weight then bias.
    pub flat: Tensor,
    pub layers: Vec<Dense>,
}

/// What the forward pass keeps for the backward pass.
pub struct Tape {
    /// The input of each layer (the batch, then each hidden layer's output after dropout).
    inputs: Vec<Tensor>,
    /// Each hidden layer's ReLU output, before dropout.
    relu_out: Vec<Tensor>,
    masks: Vec<Option<Tensor>>,
}

impl Mlp {
    /// Glorot-uniform weights and zero biases (Keras' `Dense` defaults), from a seeded generator
    /// so that the same seed gives the same model on every device.
    pub fn glorot(sizes: &[usize], seed: u64, device: Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut values = Vec::with_capacity(param_count(sizes));
        for w in sizes.windows(2) {
            let limit = (6.0 / (w[0] + w[1]) as f64).sqrt() as f32;
            values.extend((0..w[0] * w[1]).map(|_| rng.gen_range(-limit..limit)));
            values.extend(std::iter::repeat_n(0f32, w[1]));
        }
        Self::from_flat(sizes, Tensor::from_slice(&values).to_device(device))
    }

    pub fn from_flat(sizes: &[usize], flat: Tensor) -> Self {
        assert_eq!(flat.numel(), param_count(sizes), "flat buffer does not fit the layer sizes");
        let layers = dense_views(&flat, sizes);
        Self { sizes: sizes.to_vec(), flat, layers }
    }

    /// Rebuilds a model from named tensors (as read from safetensors), checking every shape.
    pub fn from_named(sizes: &[usize], named: &[(String, Tensor)], device: Device) -> Result<Self> {
        // Every shape is checked before the model is allocated: the sizes come from a file.
        let layers = sizes.len().saturating_sub(1);
        let find = |name: &str| {
            named
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .with_context(|| format!("tensor {name} is missing"))
        };
        for (i, (wname, bname)) in tensor_names(layers).iter().enumerate() {
            let (inputs, outputs) = (sizes[i] as i64, sizes[i + 1] as i64);
            for (name, want) in [(wname, vec![outputs, inputs]), (bname, vec![outputs])] {
                let src = find(name)?;
                if src.size() != want || src.kind() != Kind::Float {
                    bail!(
                        "tensor {name} has shape {:?} ({:?}), expected {want:?} (Float)",
                        src.size(),
                        src.kind(),
                    );
                }
            }
        }
        if named.len() != 2 * layers {
            bail!("file holds {} tensors, expected {}", named.len(), 2 * layers);
        }
        let flat = Tensor::zeros([param_count(sizes) as i64], (Kind::Float, device));
        let model = Self::from_flat(sizes, flat);
        for ((wname, bname), layer) in tensor_names(layers).iter().zip(&model.layers) {
            for (name, dst) in [(wname, &layer.weight), (bname, &layer.bias)] {
                dst.shallow_clone().copy_(find(name)?);
            }
        }
        Ok(model)
    }

    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// Named parameter views, for saving.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        tensor_names(self.layers.len())
            .into_iter()
            .zip(&self.layers)
            .flat_map(|((w, b), l)| [(w, l.weight.shallow_clone()), (b, l.bias.shallow_clone())])
            .collect()
    }

    /// Logits for a float batch `(n, features)`, without dropout.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let last = self.layers.len() - 1;
        let mut h = x.shallow_clone();
        for (i, l) in self.layers.iter().enumerate() {
            h = l.bias.addmm(&h, &l.weight.tr());
            if i < last {
                h = h.relu_();
            }
        }
        h
    }

    /// The forward pass for training: logits and what backward needs. `masks[i]` is the
    /// already-scaled dropout mask of hidden layer `i`, if dropout is on.
    pub fn forward_train(&self, x: &Tensor, masks: Vec<Option<Tensor>>) -> (Tensor, Tape) {
        let last = self.layers.len() - 1;
        let mut tape = Tape { inputs: vec![x.shallow_clone()], relu_out: Vec::new(), masks };
        let mut h = x.shallow_clone();
        for (i, l) in self.layers.iter().enumerate() {
            h = l.bias.addmm(&h, &l.weight.tr());
            if i < last {
                h = h.relu_();
                tape.relu_out.push(h.shallow_clone());
                if let Some(mask) = &tape.masks[i] {
                    h = &h * mask;
                }
                tape.inputs.push(h.shallow_clone());
            }
        }
        (h, tape)
    }

    /// Back-propagates the gradient of the loss with respect to the logits, writing every
    /// parameter's gradient into `grads` (views laid out like `self.layers`).
    pub fn backward(&self, tape: &Tape, dlogits: Tensor, grads: &[Dense]) {
        let mut delta = dlogits;
        for i in (0..self.layers.len()).rev() {
            let g = &grads[i];
            let _ = delta.tr().mm_out(&g.weight, &tape.inputs[i]);
            let _ = delta.sum_intlist_out(&g.bias, [0i64].as_slice(), false, Kind::Float);
            if i == 0 {
                break;
            }
            // Through the previous hidden layer: its weights, its dropout, its ReLU.
            let mut d = delta.mm(&self.layers[i].weight);
            if let Some(mask) = &tape.masks[i - 1] {
                d *= mask;
            }
            delta = tape.relu_out[i - 1].threshold_backward(&d, 0.0);
        }
    }
}

/// Mean softmax cross-entropy's gradient with respect to the logits, plus the summed loss and
/// the number of correct predictions (both left on the device so no step waits for them).
/// With `smoothing` ε the target is `(1-ε)·onehot + ε/classes` (PyTorch's `label_smoothing`).
pub fn cross_entropy_grad(
    logits: &Tensor,
    labels: &Tensor,
    smoothing: f64,
) -> (Tensor, Tensor, Tensor) {
    let (n, classes) = (logits.size()[0], logits.size()[1]);
    let log_probs = logits.log_softmax(1, Kind::Float);
    let picked = log_probs.gather(1, &labels.unsqueeze(1), false);
    let correct = logits.argmax(1, false).eq_tensor(labels).sum(Kind::Int64);
    let mut grad = log_probs.exp();
    let loss_sum = if smoothing > 0.0 {
        let spread = smoothing / classes as f64;
        let _ = grad.g_sub_scalar_(spread);
        -(picked.sum(Kind::Float) * (1.0 - smoothing) + log_probs.sum(Kind::Float) * spread)
    } else {
        -picked.sum(Kind::Float)
    };
    let minus_one = Tensor::full([n, 1], smoothing - 1.0, (Kind::Float, logits.device()));
    let _ = grad.scatter_add_(1, &labels.unsqueeze(1), &minus_one);
    let _ = grad.g_mul_scalar_(1.0 / n as f64);
    (grad, loss_sum, correct)
}

/// Summed cross-entropy and correct predictions of logits against labels.
pub fn loss_and_correct(logits: &Tensor, labels: &Tensor) -> (Tensor, Tensor) {
    let log_probs = logits.log_softmax(1, Kind::Float);
    let loss_sum = -log_probs.gather(1, &labels.unsqueeze(1), false).sum(Kind::Float);
    let correct = logits.argmax(1, false).eq_tensor(labels).sum(Kind::Int64);
    (loss_sum, correct)
}

/// A dropout mask for one layer, row-major `rows × cols`: 0 with probability `p`, else
/// `1/(1-p)`, from a generator seeded per (seed, epoch, step, layer) so that a resumed run draws
/// the same masks on any device.
pub fn dropout_values(p: f64, rows: usize, cols: usize, seed: [u64; 4]) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed));
    let keep = (1.0 / (1.0 - p)) as f32;
    (0..rows * cols).map(|_| if rng.gen::<f64>() < p { 0.0 } else { keep }).collect()
}

/// [`dropout_values`] as a tensor on `device`.
pub fn dropout_mask(p: f64, rows: usize, cols: usize, seed: [u64; 4], device: Device) -> Tensor {
    let values = dropout_values(p, rows, cols, seed);
    Tensor::from_slice(&values).view([rows as i64, cols as i64]).to_device(device)
}

/// Mixes several numbers into one seed (splitmix64 steps).
pub fn mix(parts: [u64; 4]) -> u64 {
    parts.iter().fold(0x9E37_79B9_7F4A_7C15u64, |acc, &p| {
        let mut z = acc ^ p.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notebook_model_has_101770_parameters() {
        let sizes = layer_sizes(784, &[128], 10);
        assert_eq!(param_count(&sizes), 101_770);
        let m = Mlp::glorot(&sizes, 1, Device::Cpu);
        assert_eq!(m.layers[0].weight.size(), [128, 784]);
        assert_eq!(m.layers[1].bias.size(), [10]);
        let out = m.forward(&Tensor::zeros([5, 784], (Kind::Float, Device::Cpu)));
        assert_eq!(out.size(), [5, 10]);
    }

    #[test]
    fn glorot_init_is_bounded_seeded_and_biases_are_zero() {
        let sizes = layer_sizes(784, &[128], 10);
        let a = Mlp::glorot(&sizes, 7, Device::Cpu);
        let b = Mlp::glorot(&sizes, 7, Device::Cpu);
        let c = Mlp::glorot(&sizes, 8, Device::Cpu);
        assert!(a.flat.equal(&b.flat));
        assert!(!a.flat.equal(&c.flat));
        let limit = (6.0f64 / (784.0 + 128.0)).sqrt();
        assert!(a.layers[0].weight.abs().max().double_value(&[]) <= limit);
        assert!(a.layers[0].weight.abs().max().double_value(&[]) > 0.9 * limit);
        assert_eq!(a.layers[0].bias.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    /// The hand-written backward pass must agree with libtorch's autograd.
    #[test]
    fn backward_matches_autograd() {
        tch::manual_seed(0);
        let sizes = layer_sizes(12, &[9, 7], 4);
        let model = Mlp::glorot(&sizes, 3, Device::Cpu);
        let x = Tensor::rand([6, 12], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 3, 1, 2, 3, 0]);
        let masks = [
            Some(dropout_mask(0.3, 6, 9, [1, 2, 3, 4], Device::Cpu)),
            Some(dropout_mask(0.5, 6, 7, [5, 6, 7, 8], Device::Cpu)),
        ];
        let (logits, tape) = model.forward_train(
            &x,
            masks.iter().map(|m| m.as_ref().map(Tensor::shallow_clone)).collect(),
        );
        let (dlogits, loss_sum, _) = cross_entropy_grad(&logits, &y, 0.0);
        let grad_flat = Tensor::zeros([param_count(&sizes) as i64], (Kind::Float, Device::Cpu));
        model.backward(&tape, dlogits, &dense_views(&grad_flat, &sizes));

        // The same computation through autograd.
        let leaf = model.flat.detach().copy().set_requires_grad(true);
        let views = dense_views(&leaf, &sizes);
        let mut h = x.shallow_clone();
        for (i, l) in views.iter().enumerate() {
            h = l.bias.addmm(&h, &l.weight.tr());
            if i < views.len() - 1 {
                h = h.relu() * masks[i].as_ref().unwrap();
            }
        }
        let loss = h.cross_entropy_for_logits(&y);
        assert!((loss.double_value(&[]) * 6.0 - loss_sum.double_value(&[])).abs() < 1e-4);
        loss.backward();
        let diff = (leaf.grad() - &grad_flat).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "max gradient difference {diff}");
    }

    /// Label smoothing as PyTorch defines it, on both the libtorch and the fast path.
    #[test]
    fn label_smoothing_matches_libtorch_and_the_fast_path() {
        tch::manual_seed(1);
        let logits = Tensor::randn([5, 4], (Kind::Float, Device::Cpu)) * 3.0;
        let labels = [0i64, 3, 1, 2, 3];
        let y = Tensor::from_slice(&labels);
        let (grad, loss_sum, _) = cross_entropy_grad(&logits, &y, 0.2);
        let leaf = logits.detach().copy().set_requires_grad(true);
        let loss = leaf.cross_entropy_loss::<Tensor>(&y, None, tch::Reduction::Mean, -100, 0.2);
        loss.backward();
        assert!((loss.double_value(&[]) * 5.0 - loss_sum.double_value(&[])).abs() < 1e-5);
        assert!((leaf.grad() - &grad).abs().max().double_value(&[]) < 1e-6);

        let mut z = Vec::<f32>::try_from(logits.flatten(0, -1)).unwrap();
        let (host_loss, _) = crate::kernels::softmax_xent_grad(&mut z, 4, &labels, 5, 0.2);
        assert!((host_loss as f64 - loss_sum.double_value(&[])).abs() < 1e-4);
        let host_grad = Tensor::from_slice(&z).view([5, 4]);
        assert!((host_grad - &grad).abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn from_named_checks_shapes() {
        let sizes = layer_sizes(4, &[3], 2);
        let m = Mlp::glorot(&sizes, 1, Device::Cpu);
        let back = Mlp::from_named(&sizes, &m.named(), Device::Cpu).unwrap();
        assert!(back.flat.equal(&m.flat));
        let err = Mlp::from_named(&layer_sizes(5, &[3], 2), &m.named(), Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("layers.0.weight has shape [3, 4]"), "{err}");
    }

    #[test]
    fn dropout_masks_are_seeded_and_scaled() {
        let a = dropout_mask(0.25, 50, 40, [1, 2, 3, 4], Device::Cpu);
        let b = dropout_mask(0.25, 50, 40, [1, 2, 3, 4], Device::Cpu);
        assert!(a.equal(&b));
        let kept = a.gt(0.0).sum(Kind::Int64).int64_value(&[]) as f64 / 2000.0;
        assert!((kept - 0.75).abs() < 0.05, "kept {kept}");
        assert!((a.max().double_value(&[]) - 1.0 / 0.75).abs() < 1e-6);
    }
}
