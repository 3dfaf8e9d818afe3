//! The small parts of a training step, in plain Rust on host memory.
//!
//! At the notebook's batch of 32 a step is a few tiny operations around two matrix products;
//! sent through libtorch one by one, each costs a few microseconds of dispatch while its
//! arithmetic costs less. On the CPU these run here instead, in single loops the compiler
//! vectorises, and only the matrix products go to libtorch (see `step.rs`).

/// Copies the rows `idx` of a row-major `u8` matrix into `out` as floats times `scale`.
pub fn gather_scaled(src: &[u8], width: usize, idx: &[i64], scale: f32, out: &mut [f32]) {
    for (row, &i) in out.chunks_exact_mut(width).zip(idx) {
        let from = &src[i as usize * width..][..width];
        for (o, &s) in row.iter_mut().zip(from) {
            *o = s as f32 * scale;
        }
    }
}

/// Softmax cross-entropy over `logits` (rows of `classes`), in place: `logits` becomes the
/// gradient of the mean loss over a batch of `batch` rows with respect to the logits (`batch`
/// exceeds the rows here when several ranks share a batch). Returns the summed loss and the
/// number of rows whose largest logit (the first, on ties) is the label.
pub fn softmax_xent_grad(
    logits: &mut [f32],
    classes: usize,
    labels: &[i64],
    batch: usize,
) -> (f32, i64) {
    let inv_n = 1.0 / batch as f32;
    let (mut loss, mut correct) = (0f32, 0i64);
    for (row, &y) in logits.chunks_exact_mut(classes).zip(labels) {
        let y = y as usize;
        let (mut best, mut max) = (0usize, row[0]);
        for (j, &z) in row.iter().enumerate().skip(1) {
            if z > max {
                (best, max) = (j, z);
            }
        }
        correct += (best == y) as i64;
        let sum: f32 = row.iter().map(|&z| (z - max).exp()).sum();
        let log_sum = sum.ln();
        loss += log_sum - (row[y] - max);
        for z in row.iter_mut() {
            *z = (*z - max - log_sum).exp() * inv_n;
        }
        row[y] -= inv_n;
    }
    (loss, correct)
}

/// Sums the rows of a `rows × cols` matrix into `out`.
pub fn column_sums(m: &[f32], cols: usize, out: &mut [f32]) {
    out.fill(0.0);
    for row in m.chunks_exact(cols) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

/// ReLU in place, then dropout: `h = relu(h) * mask` (the mask already scaled by 1/(1-p)).
pub fn relu_dropout(h: &mut [f32], mask: Option<&[f32]>) {
    match mask {
        Some(mask) => {
            for (v, &k) in h.iter_mut().zip(mask) {
                *v = v.max(0.0) * k;
            }
        }
        None => {
            for v in h.iter_mut() {
                *v = v.max(0.0);
            }
        }
    }
}

/// Back through dropout and ReLU, in place: `d` becomes the gradient at the pre-activation,
/// given the layer's output `h` (after dropout; zero exactly where ReLU or the mask cut it).
pub fn relu_dropout_backward(d: &mut [f32], h: &[f32], mask: Option<&[f32]>) {
    match mask {
        Some(mask) => {
            for ((g, &a), &k) in d.iter_mut().zip(h).zip(mask) {
                *g = if a > 0.0 { *g * k } else { 0.0 };
            }
        }
        None => {
            for (g, &a) in d.iter_mut().zip(h) {
                if a <= 0.0 {
                    *g = 0.0;
                }
            }
        }
    }
}

/// Constants of one Adam/AdamW update.
#[derive(Debug, Clone, Copy)]
pub struct Adam {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// L2 weight decay added to the gradient (Adam).
    pub l2: f32,
    /// Multiplier applied to the weights first (AdamW: 1 - lr·wd; else 1).
    pub decay: f32,
    /// 1-based step number.
    pub step: u64,
}

impl Adam {
    /// One update of every parameter, in one pass: PyTorch's formula
    /// (`p -= lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps)`).
    pub fn update(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        assert!(p.len() == g.len() && p.len() == m.len() && p.len() == v.len());
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports the features the function is compiled for.
                return unsafe { self.update_avx512(p, g, m, v) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return unsafe { self.update_avx2(p, g, m, v) };
            }
        }
        self.update_portable(p, g, m, v)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn update_avx512(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        self.update_portable(p, g, m, v)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn update_avx2(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        self.update_portable(p, g, m, v)
    }

    /// The loop itself; inlined into each feature-specific copy above, so the same arithmetic
    /// (no fused multiply-adds: Rust does not contract) gives the same bits on every CPU.
    #[inline(always)]
    fn update_portable(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let bc1 = 1.0 - (self.beta1 as f64).powi(self.step as i32);
        let bc2 = 1.0 - (self.beta2 as f64).powi(self.step as i32);
        let step_size = (self.lr as f64 / bc1) as f32;
        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
        let (b1, b2, one_b1, one_b2) = (self.beta1, self.beta2, 1.0 - self.beta1, 1.0 - self.beta2);
        let (l2, decay, eps) = (self.l2, self.decay, self.eps);
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g + l2 * *p;
            let w = *p * decay;
            let mi = b1 * *m + one_b1 * g;
            let vi = b2 * *v + one_b2 * (g * g);
            *m = mi;
            *v = vi;
            *p = w - step_size * mi / (vi.sqrt() * inv_sqrt_bc2 + eps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_scales_the_chosen_rows() {
        let src = [0u8, 255, 10, 20, 30, 40];
        let mut out = [0f32; 4];
        gather_scaled(&src, 2, &[2, 0], 0.5, &mut out);
        assert_eq!(out, [15.0, 20.0, 0.0, 127.5]);
    }

    #[test]
    fn softmax_xent_matches_the_formula() {
        let mut z = [1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5];
        let (loss, correct) = softmax_xent_grad(&mut z, 3, &[2, 1], 2);
        let lse = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
        let want = (lse - 3.0) + 3f32.ln();
        assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
        // Row 1 is a three-way tie: the first index wins, as torch.argmax does.
        assert_eq!(correct, 1);
        let p2 = 3f32.exp() / (1f32.exp() + 2f32.exp() + 3f32.exp());
        assert!((z[2] - (p2 - 1.0) / 2.0).abs() < 1e-6);
        assert!((z[3] - (1.0 / 3.0) / 2.0).abs() < 1e-6);
        assert!(z.chunks(3).all(|r| r.iter().sum::<f32>().abs() < 1e-6));
    }

    #[test]
    fn relu_dropout_round_trip() {
        let mut h = [-1.0f32, 2.0, 3.0, 0.0];
        let mask = [2.0f32, 2.0, 0.0, 2.0];
        relu_dropout(&mut h, Some(&mask));
        assert_eq!(h, [0.0, 4.0, 0.0, 0.0]);
        let mut d = [1.0f32; 4];
        relu_dropout_backward(&mut d, &h, Some(&mask));
        assert_eq!(d, [0.0, 2.0, 0.0, 0.0]);
        let mut sums = [0f32; 2];
        column_sums(&[1.0, 2.0, 3.0, 4.0], 2, &mut sums);
        assert_eq!(sums, [4.0, 6.0]);
    }

    #[test]
    fn adam_dispatch_is_bit_identical_to_the_portable_loop() {
        let n = 1001;
        let p0: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 0.1).collect();
        let a =
            Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-7, l2: 0.01, decay: 1.0, step: 3 };
        let (mut p1, mut m1, mut v1) = (p0.clone(), vec![0.01f32; n], vec![0.02f32; n]);
        let (mut p2, mut m2, mut v2) = (p0.clone(), m1.clone(), v1.clone());
        a.update(&mut p1, &g, &mut m1, &mut v1);
        a.update_portable(&mut p2, &g, &mut m2, &mut v2);
        assert_eq!((p1, m1, v1), (p2, m2, v2));
    }
}
