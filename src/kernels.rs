//! The small parts of a training step, in plain Rust on host memory.
//!
//! At the notebook's batch of 32 a step is a few tiny operations around two matrix products;
//! sent through libtorch one by one, each costs a few microseconds of dispatch while its
//! arithmetic costs less. On the CPU these run here instead, in single loops the compiler
//! vectorises, and only the matrix products go to libtorch (see `step.rs`).

/// Copies the rows `idx` of a row-major matrix (pixel bytes, or floats with `scale` 1) into
/// `out` as floats times `scale`.
pub fn gather_scaled<T: Copy + Into<f32>>(
    src: &[T],
    width: usize,
    idx: &[i64],
    scale: f32,
    out: &mut [f32],
) {
    for (row, &i) in out.chunks_exact_mut(width).zip(idx) {
        let from = &src[i as usize * width..][..width];
        for (o, &s) in row.iter_mut().zip(from) {
            *o = s.into() * scale;
        }
    }
}

/// Softmax cross-entropy over `logits` (rows of `classes`), in place: `logits` becomes the
/// gradient of the mean loss over a batch of `batch` rows with respect to the logits (`batch`
/// exceeds the rows here when several ranks share a batch). Returns the summed loss and the
/// number of rows whose largest logit (the first, on ties) is the label. With `smoothing` ε
/// the target is `(1-ε)·onehot + ε/classes`; at 0 the arithmetic is exactly the plain loss's.
pub fn softmax_xent_grad(
    logits: &mut [f32],
    classes: usize,
    labels: &[i64],
    batch: usize,
    smoothing: f32,
) -> (f32, i64) {
    let inv_n = 1.0 / batch as f32;
    let spread = smoothing / classes as f32;
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
        if smoothing > 0.0 {
            let mean_shifted: f32 = row.iter().map(|&z| z - max).sum::<f32>() * spread;
            loss += log_sum - ((1.0 - smoothing) * (row[y] - max) + mean_shifted);
            for z in row.iter_mut() {
                *z = ((*z - max - log_sum).exp() - spread) * inv_n;
            }
            row[y] -= (1.0 - smoothing) * inv_n;
        } else {
            loss += log_sum - (row[y] - max);
            for z in row.iter_mut() {
                *z = (*z - max - log_sum).exp() * inv_n;
            }
            row[y] -= inv_n;
        }
    }
    (loss, correct)
}

/// A small layer's forward pass, `out = x · wᵀ + b`: `x` is rows × `k`, `w` is `b.len()` × `k`
/// (a weight matrix as stored), `out` is rows × `b.len()`.
pub fn linear(x: &[f32], w: &[f32], b: &[f32], k: usize, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(k).zip(out.chunks_exact_mut(b.len())) {
        for ((o, wr), &bias) in or.iter_mut().zip(w.chunks_exact(k)).zip(b) {
            *o = bias + dot(xr, wr);
        }
    }
}

/// A small layer's weight gradient, `out = dᵀ · x`: `d` is rows × n (the gradient at the
/// layer's output), `x` rows × `k` (its input), `out` n × `k`.
pub fn weight_grad(d: &[f32], x: &[f32], k: usize, out: &mut [f32]) {
    let n = out.len() / k;
    out.fill(0.0);
    for (dr, xr) in d.chunks_exact(n).zip(x.chunks_exact(k)) {
        for (orow, &dj) in out.chunks_exact_mut(k).zip(dr) {
            axpy(dj, xr, orow);
        }
    }
}

/// A small layer's input gradient, `out = d · w`: `d` is rows × n, `w` n × `k`, `out` rows × `k`.
pub fn input_grad(d: &[f32], w: &[f32], k: usize, out: &mut [f32]) {
    let n = w.len() / k;
    for (orow, dr) in out.chunks_exact_mut(k).zip(d.chunks_exact(n)) {
        orow.fill(0.0);
        for (&dj, wr) in dr.iter().zip(w.chunks_exact(k)) {
            axpy(dj, wr, orow);
        }
    }
}

/// `y += a · x`.
#[inline(always)]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// A dot product in eight interleaved partial sums, so that it vectorises (a single running
/// sum is a chain the compiler may not reorder); a fixed order, so the same bits every time.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 8;
    let mut acc = [0f32; L];
    let (a8, b8) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..L {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
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
                // SAFETY: the CPU supports the features the function is compiled for.
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
        let (loss, correct) = softmax_xent_grad(&mut z, 3, &[2, 1], 2, 0.0);
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

    /// The small-layer kernels against the plain formulas, on shapes with vector tails.
    #[test]
    fn small_layer_products_match_the_definitions() {
        let (rows, k, n) = (3, 19, 5);
        let val = |i: usize, s: f32| ((i as f32 + 1.0) * s).sin();
        let x: Vec<f32> = (0..rows * k).map(|i| val(i, 0.7)).collect();
        let w: Vec<f32> = (0..n * k).map(|i| val(i, 1.3)).collect();
        let b: Vec<f32> = (0..n).map(|i| val(i, 2.1)).collect();
        let d: Vec<f32> = (0..rows * n).map(|i| val(i, 0.4)).collect();
        let close = |got: &[f32], want: &dyn Fn(usize) -> f32| {
            for (i, &g) in got.iter().enumerate() {
                assert!((g - want(i)).abs() < 1e-5, "element {i}: {g} vs {}", want(i));
            }
        };
        let mut out = vec![f32::NAN; rows * n];
        linear(&x, &w, &b, k, &mut out);
        close(&out, &|i| {
            b[i % n] + (0..k).map(|j| x[i / n * k + j] * w[i % n * k + j]).sum::<f32>()
        });
        let mut gw = vec![f32::NAN; n * k];
        weight_grad(&d, &x, k, &mut gw);
        close(&gw, &|i| (0..rows).map(|r| d[r * n + i / k] * x[r * k + i % k]).sum::<f32>());
        let mut gx = vec![f32::NAN; rows * k];
        input_grad(&d, &w, k, &mut gx);
        close(&gx, &|i| (0..n).map(|j| d[i / k * n + j] * w[j * k + i % k]).sum::<f32>());
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
