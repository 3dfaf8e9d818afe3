//! The one door to the C++ shim in `src/native/`: what tch does not bind (ATen's fused Adam,
//! libtorch's intra-op thread pool, c10d's TCPStore and ProcessGroupGloo), behind safe types.
//!
//! Every shim function returns NULL on success or a message from strdup that the caller owns
//! ([`take_message`] reads and frees it); no C++ exception crosses the boundary (each one ends in
//! `catch (...)`). All of this crate's FFI declarations are the one `extern` block below.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::time::Duration;

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

    fn smtrain_store_new(
        host: *const c_char,
        port: c_int,
        is_server: c_int,
        world: c_int,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn smtrain_store_set(
        store: *mut c_void,
        key: *const c_char,
        value: *const c_char,
    ) -> *mut c_char;
    fn smtrain_store_check(
        store: *mut c_void,
        key: *const c_char,
        present: *mut c_int,
    ) -> *mut c_char;
    fn smtrain_store_get(
        store: *mut c_void,
        key: *const c_char,
        value: *mut *mut c_char,
    ) -> *mut c_char;
    fn smtrain_store_free(store: *mut c_void);
    fn smtrain_group_new(
        store: *mut c_void,
        rank: c_int,
        world: c_int,
        interface: *const c_char,
        hostname: *const c_char,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn smtrain_group_allreduce_sum(group: *mut c_void, t: *const c_void) -> *mut c_char;
    fn smtrain_group_broadcast(group: *mut c_void, t: *const c_void, root: c_int) -> *mut c_char;
    fn smtrain_group_free(group: *mut c_void);
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
fn take_message(msg: *mut c_char) -> Option<String> {
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

/// The shim's message (NULL on success) as a `Result` with the bare message.
fn status(msg: *mut c_char) -> std::result::Result<(), String> {
    take_message(msg).map_or(Ok(()), Err)
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// A c10d TCPStore (under a key prefix): the multi-host rendezvous. Owned; freed on drop.
pub struct Store(*mut c_void);

// SAFETY: the handle is only used through `&self` methods, and c10d's TCPStore serialises its
// own socket traffic, so moving it to another thread is sound.
unsafe impl Send for Store {}

impl Store {
    /// Listens on `port` (`is_server`), or connects to `host:port`, waiting up to `timeout`.
    pub fn new(
        host: &CStr,
        port: u16,
        is_server: bool,
        world: usize,
        timeout: Duration,
    ) -> std::result::Result<Self, String> {
        let mut out = std::ptr::null_mut();
        // SAFETY: `host` is NUL-terminated and lives for the call; `out` receives a new handle
        // only on success.
        status(unsafe {
            smtrain_store_new(
                host.as_ptr(),
                c_int::from(port),
                c_int::from(is_server),
                world as c_int,
                millis(timeout),
                &mut out,
            )
        })?;
        Ok(Self(out))
    }

    pub fn set(&self, key: &CStr, value: &CStr) -> std::result::Result<(), String> {
        // SAFETY: the handle is live (we own it) and both strings outlive the call.
        status(unsafe { smtrain_store_set(self.0, key.as_ptr(), value.as_ptr()) })
    }

    /// Whether `key` has been set (by any host).
    pub fn contains(&self, key: &CStr) -> std::result::Result<bool, String> {
        let mut present: c_int = 0;
        // SAFETY: the handle is live, `key` outlives the call and `present` is a valid out slot.
        status(unsafe { smtrain_store_check(self.0, key.as_ptr(), &mut present) })?;
        Ok(present != 0)
    }

    /// `key`'s value, waiting for it up to the store's timeout.
    pub fn get(&self, key: &CStr) -> std::result::Result<String, String> {
        let mut value = std::ptr::null_mut();
        // SAFETY: the handle is live, `key` outlives the call and `value` receives a malloc'd
        // string only on success, which take_message frees.
        status(unsafe { smtrain_store_get(self.0, key.as_ptr(), &mut value) })?;
        Ok(take_message(value).unwrap_or_default())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: the handle came from smtrain_store_new and is freed once, here.
        unsafe { smtrain_store_free(self.0) }
    }
}

/// A Gloo process group over a [`Store`] (which it keeps alive on the C++ side). Owned.
pub struct ProcessGroup(*mut c_void);

// SAFETY: as for `Store`: used through `&self` from one thread at a time, and
// ProcessGroupGloo is itself thread-safe.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins rank `rank` of `world`; `timeout` bounds every later exchange.
    pub fn new(
        store: &Store,
        (rank, world): (usize, usize),
        interface: &CStr,
        hostname: &CStr,
        timeout: Duration,
    ) -> std::result::Result<Self, String> {
        let mut out = std::ptr::null_mut();
        // SAFETY: the store handle is live, the strings outlive the call, and `out` receives a
        // new handle only on success.
        status(unsafe {
            smtrain_group_new(
                store.0,
                rank as c_int,
                world as c_int,
                interface.as_ptr(),
                hostname.as_ptr(),
                millis(timeout),
                &mut out,
            )
        })?;
        Ok(Self(out))
    }

    /// Sums `t` over all ranks, in place.
    pub fn all_reduce_sum(&self, t: &Tensor) -> std::result::Result<(), String> {
        // SAFETY: the handle and the tensor (an at::Tensor handle) are live for the call.
        status(unsafe { smtrain_group_allreduce_sum(self.0, t.as_ptr() as *const c_void) })
    }

    /// Overwrites `t` with rank `root`'s.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> std::result::Result<(), String> {
        // SAFETY: the handle and the tensor are live for the call.
        status(unsafe {
            smtrain_group_broadcast(self.0, t.as_ptr() as *const c_void, root as c_int)
        })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the handle came from smtrain_group_new and is freed once, here.
        unsafe { smtrain_group_free(self.0) }
    }
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
