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
}

/// Turns the shim's returned message (NULL on success) into a `Result`, freeing it.
fn check(msg: *mut c_char, op: &str) -> Result<()> {
    if msg.is_null() {
        return Ok(());
    }
    // SAFETY: the shim returns a NUL-terminated string from strdup, which we own.
    let text = unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned();
    unsafe { libc::free(msg as *mut c_void) };
    Err(anyhow!("{op}: {text}"))
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
