//! The machine's limit for this network: the matrix products one training step needs
//! (forward through both layers, the weight gradients, the gradient into the hidden layer),
//! timed through libtorch at a given thread count, and from them the GEMM-bound epoch time.
//! Prints one JSON line.
//!
//! `cargo bench --bench gemm -- [threads] [batch] [steps]` (defaults 2, 32, 4000).

use std::time::Instant;

use tch::{Device, Kind, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| !a.starts_with("--")).collect();
    let arg = |i: usize, d: i64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (threads, batch, steps) = (arg(1, 2), arg(2, 32), arg(3, 4000));
    tch::set_num_threads(threads as i32);
    let f = (Kind::Float, Device::Cpu);
    let (d, h, c) = (784i64, 128i64, 10i64);
    let x = Tensor::rand([batch, d], f);
    let (w1, b1, w2, b2) = (
        Tensor::rand([h, d], f),
        Tensor::rand([h], f),
        Tensor::rand([c, h], f),
        Tensor::rand([c], f),
    );
    let (hid, logits, dh) =
        (Tensor::zeros([batch, h], f), Tensor::zeros([batch, c], f), Tensor::zeros([batch, h], f));
    let (gw1, gw2) = (Tensor::zeros([h, d], f), Tensor::zeros([c, h], f));
    let (w1t, w2t, logits_t, dh_t) = (w1.tr(), w2.tr(), logits.tr(), dh.tr());
    let step = || {
        let _ = b1.addmm_out(&hid, &x, &w1t);
        let _ = b2.addmm_out(&logits, &hid, &w2t);
        let _ = logits_t.mm_out(&gw2, &hid);
        let _ = logits.mm_out(&dh, &w2);
        let _ = dh_t.mm_out(&gw1, &x);
    };
    for _ in 0..steps / 10 {
        step();
    }
    let start = Instant::now();
    for _ in 0..steps {
        step();
    }
    let per_step = start.elapsed().as_secs_f64() / steps as f64;
    let flop_per_step = 2.0 * batch as f64 * (2.0 * (d * h) as f64 + 3.0 * (h * c) as f64);
    let steps_per_epoch = (60_000f64 / batch as f64).ceil();
    println!(
        "{{\"threads\": {threads}, \"batch\": {batch}, \"gemm_seconds_per_step\": {per_step:.9}, \
         \"gflops\": {:.2}, \"flop_per_epoch\": {:.4e}, \"gemm_bound_epoch_seconds\": {:.6}}}",
        flop_per_step / per_step * 1e-9,
        flop_per_step * steps_per_epoch,
        per_step * steps_per_epoch
    );
}
