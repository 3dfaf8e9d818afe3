//! Where one training step's time goes: the notebook's model at a given batch size, on the real
//! Fashion-MNIST, one libtorch thread, phase by phase. Times are this thread's CPU time, so other
//! load on the machine disturbs them less than wall time.
//!
//! `cargo bench --bench step -- [batch] [steps]` (defaults 32 and 3000).

use smtrain::config::TrainConfig;
use smtrain::data::load_pair;
use smtrain::model::{self, dense_views, Mlp};
use smtrain::optim::Optimizer;
use smtrain::state::{DeviceData, TrainState};
use smtrain::step::{HostStep, Step};
use smtrain::train::epoch_order;
use tch::{Device, Kind, Tensor};

fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| !a.starts_with("--")).collect();
    let batch: i64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32);
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3000);
    tch::set_num_threads(1);
    let dir = std::path::Path::new("/usr/share/datasets/fashion-mnist");
    let ds =
        load_pair(&dir.join("train-images-idx3-ubyte.gz"), &dir.join("train-labels-idx1-ubyte.gz"))
            .unwrap();
    let data = DeviceData::new(&ds, Device::Cpu);
    let cfg = TrainConfig { batch_size: batch as usize, ..TrainConfig::default() };
    let sizes = model::layer_sizes(784, &cfg.hidden_units, 10);
    let m = Mlp::glorot(&sizes, 1, Device::Cpu);
    let grad_flat = Tensor::zeros_like(&m.flat);
    let grads = dense_views(&grad_flat, &sizes);
    let mut opt = Optimizer::new(&cfg, model::param_count(&sizes), Device::Cpu);
    let order = Tensor::from_slice(&epoch_order(1, 0, ds.len()));
    let n = ds.len() as i64;
    let mut t = [0f64; 5];
    let names = ["gather", "forward", "loss+grad", "backward", "optimizer"];
    let total_start = cpu_seconds();
    for step in 0..steps {
        let start = (step as i64 * batch) % (n - batch);
        let t0 = cpu_seconds();
        let idx = order.narrow(0, start, batch);
        let x = data.images.index_select(0, &idx).to_kind(Kind::Float) * (1.0 / 255.0);
        let y = data.labels.index_select(0, &idx);
        let t1 = cpu_seconds();
        let (logits, tape) = m.forward_train(&x, vec![None]);
        let t2 = cpu_seconds();
        let (dlogits, _l, _c) = model::cross_entropy_grad(&logits, &y, 0.0);
        let t3 = cpu_seconds();
        m.backward(&tape, dlogits, &grads);
        let t4 = cpu_seconds();
        opt.step(&m.flat, &grad_flat, 0.001).unwrap();
        let t5 = cpu_seconds();
        for (i, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4].iter().enumerate() {
            t[i] += d;
        }
    }
    let total = cpu_seconds() - total_start;

    // The CPU fast path, as training runs it.
    let mut state = TrainState::new(&cfg, 784, Device::Cpu);
    let mut host = HostStep::new(&cfg, &data, &state, None).unwrap();
    let t0 = cpu_seconds();
    for step in 0..steps {
        let start = (step as i64 * batch) % (n - batch);
        host.step(&mut state, &order, start, batch, 0, 0.001).unwrap();
    }
    let host_total = cpu_seconds() - t0;
    println!(
        "fast path (HostStep): {:.1} us/step, {:.3} s/epoch (CPU time)",
        host_total / steps as f64 * 1e6,
        host_total / steps as f64 * (n as f64 / batch as f64)
    );
    let per_epoch = |s: f64| s / steps as f64 * (n as f64 / batch as f64);
    println!(
        "batch {batch}, {steps} steps, 1 thread: {:.1} us/step, {:.3} s/epoch (CPU time)",
        total / steps as f64 * 1e6,
        per_epoch(total)
    );
    // A yardstick for the machine's state: one plain in-place add over the parameter buffer.
    let mut a = Tensor::zeros_like(&m.flat);
    let t0 = cpu_seconds();
    for _ in 0..steps {
        let _ = a.g_add_(&grad_flat);
    }
    println!(
        "  (one add_ over the {} parameters: {:.1} us)",
        m.flat.numel(),
        (cpu_seconds() - t0) / steps as f64 * 1e6
    );
    let adam = smtrain::kernels::Adam {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-7,
        l2: 0.0,
        decay: 1.0,
        step: 10,
    };
    let np = m.flat.numel();
    let (mut p, g, mut m1, mut v1) =
        (vec![0.1f32; np], vec![0.01f32; np], vec![0f32; np], vec![0f32; np]);
    let t0 = cpu_seconds();
    for _ in 0..steps {
        adam.update(&mut p, &g, &mut m1, &mut v1);
    }
    println!("  (the Adam loop alone: {:.1} us)", (cpu_seconds() - t0) / steps as f64 * 1e6);
    let xb = Tensor::rand([batch, 784], (Kind::Float, Device::Cpu));
    let hb = Tensor::zeros([batch, 128], (Kind::Float, Device::Cpu));
    let w1t = m.layers[0].weight.tr();
    let t0 = cpu_seconds();
    for _ in 0..steps {
        let _ = m.layers[0].bias.addmm_out(&hb, &xb, &w1t);
    }
    let fwd = (cpu_seconds() - t0) / steps as f64;
    let t0 = cpu_seconds();
    let hbt = hb.tr();
    for _ in 0..steps {
        let _ = hbt.mm_out(&grads[0].weight, &xb);
    }
    let bwd = (cpu_seconds() - t0) / steps as f64;
    let flop = 2.0 * batch as f64 * 784.0 * 128.0;
    println!("  (layer-1 GEMMs: forward addmm {:.1} us = {:.1} GFLOP/s, weight-gradient mm {:.1} us = {:.1} GFLOP/s)", fwd * 1e6, flop / fwd * 1e-9, bwd * 1e6, flop / bwd * 1e-9);
    let mut tiny = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    let t0 = cpu_seconds();
    for _ in 0..steps {
        let _ = tiny.g_add_scalar_(1.0);
    }
    println!(
        "  (one op on a 1-element tensor: {:.2} us)",
        (cpu_seconds() - t0) / steps as f64 * 1e6
    );
    for (name, s) in names.iter().zip(t) {
        println!(
            "  {name:<10} {:>8.1} us/step  {:>5.1}%",
            s / steps as f64 * 1e6,
            100.0 * s / total
        );
    }
}
