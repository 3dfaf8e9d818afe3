//! Safe wrappers around the C++ shim in `src/native/` (ATen kernels that tch does not bind).

use std::ffi::{c_char, c_int, c_void, CStr};

use anyhow::{anyhow, Result};
use tch::Tensor;

extern "C" {
    fn smtrain_fused_adam(
        params: *const c_void,
        grads: *const c_void,
        exp_avg: *const c_void,
        exp_avg_sq: *const c_void,
        step: *const c_void,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        decoupled: c_int,
    ) -> *mut c_char;

    fn smtrain_parallel_for(
        n: i64,
        grain: i64,
        body: extern "C" fn(*mut c_void, i64, i64),
        ctx: *mut c_void,
    ) -> *mut c_char;
}

/// Turns the shim's returned message (NULL on success) into a `Result`, freeing it.
fn check(msg: *mut c_char, op: &str) -> Result<()> {
    match take_message(msg) {
        None => Ok(()),
        Some(text) => Err(anyhow!("{op}: {text}")),
    }
}

/// The one reader of the shims' error convention (`native/*.cpp` return NULL on success, else
/// a message from strdup that the caller owns): the message, freed; `None` for NULL.
pub(crate) fn take_message(msg: *mut c_char) -> Option<String> {
    if msg.is_null() {
        return None;
    }
    // SAFETY: the shim returns a NUL-terminated string from strdup, which we own.
    let text = unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned();
    // SAFETY: `msg` came from strdup (malloc) in the shim and is freed once, here.
    unsafe { libc::free(msg as *mut c_void) };
    Some(text)
}

/// Hyperparameters of one Adam step.
#[derive(Debug, Clone, Copy)]
pub struct AdamArgs {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
    /// AdamW: weight decay applied to the weights, not added to the gradient.
    pub decoupled: bool,
}

/// One fused Adam/AdamW step (ATen's `_fused_adam_`): increments `step` (a float scalar
/// tensor), then updates `params`, `exp_avg` and `exp_avg_sq` in place in a single pass.
pub fn fused_adam(
    params: &Tensor,
    grads: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    step: &Tensor,
    a: AdamArgs,
) -> Result<()> {
    let p = |t: &Tensor| t.as_ptr() as *const c_void;
    // SAFETY: all pointers are live tch tensors (at::Tensor handles) for the whole call.
    let msg = unsafe {
        smtrain_fused_adam(
            p(params),
            p(grads),
            p(exp_avg),
            p(exp_avg_sq),
            p(step),
            a.lr,
            a.beta1,
            a.beta2,
            a.weight_decay,
            a.eps,
            a.decoupled as c_int,
        )
    };
    check(msg, "fused Adam step")
}

/// Calls `body(begin, end)` over disjoint ranges covering `0..n`: when `n` exceeds `grain`, one
/// range per libtorch intra-op thread (as many as `tch::set_num_threads` allows), else the
/// whole range on this thread. Returns when every range is done.
pub fn parallel_for<F: Fn(usize, usize) + Sync>(n: usize, grain: usize, body: F) -> Result<()> {
    // Rust ≥ 1.81 aborts rather than unwinding out of an `extern "C"` function, so a panic in
    // `body` never crosses into C++.
    extern "C" fn trampoline<F: Fn(usize, usize) + Sync>(ctx: *mut c_void, begin: i64, end: i64) {
        // SAFETY: `ctx` is the `&F` passed below, alive until smtrain_parallel_for returns.
        let body = unsafe { &*(ctx as *const F) };
        body(begin as usize, end as usize);
    }
    // SAFETY: the trampoline matches the shim's signature and `body` outlives the call.
    let msg = unsafe {
        smtrain_parallel_for(
            n as i64,
            grain.max(1) as i64,
            trampoline::<F>,
            &body as *const F as *mut c_void,
        )
    };
    check(msg, "parallel loop")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    #[test]
    fn parallel_for_covers_every_index_once() {
        // Per thread in OpenMP: other tests' settings do not reach this one.
        tch::set_num_threads(2);
        for (n, grain, parts) in
            [(0, 1, 0), (1, 1, 1), (1000, 1000, 1), (1001, 1000, 2), (100_003, 4096, 2)]
        {
            let seen: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
            let ranges = Mutex::new(Vec::new());
            super::parallel_for(n, grain, |b, e| {
                ranges.lock().unwrap().push((b, e));
                for s in &seen[b..e] {
                    s.fetch_add(1, Ordering::Relaxed);
                }
            })
            .unwrap();
            assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1), "n {n}: {ranges:?}");
            // Split between the two threads, unless too small to be worth it.
            assert_eq!(ranges.lock().unwrap().len(), parts, "n {n}, grain {grain}");
        }
    }
}
