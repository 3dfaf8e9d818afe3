//! Memory: what a configuration will need, and what the host can give, checked before the model
//! is allocated. Every hyperparameter may be in range while their product is not: three hidden
//! layers of 65,536 units are 8.6 billion parameters, and an allocation that large aborts the
//! process with no failure reason. Refusing it up front turns that into a `ClientError` that
//! says what to lower.

use anyhow::Result;

use crate::config::TrainConfig;
use crate::error::user;
use crate::model;

/// Float32 copies of the parameters alive at once: the weights, their gradients, Adam's two
/// moments, the best epoch's weights (early stopping) and the copies a checkpoint makes.
const PARAMETER_COPIES: u64 = 8;
/// Float32 values kept per unit and sample in a step: the layer's output, its ReLU mask and
/// its gradient.
const ACTIVATION_COPIES: u64 = 3;
/// Head-room for libtorch, the allocator and everything not counted.
const SLACK: u64 = 256 << 20;

/// What a job will allocate, in bytes, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub parameters: u64,
    /// Parameters, gradients, optimizer state and checkpoint copies.
    pub state: u64,
    /// One training step's (or evaluation batch's, whichever is larger) activations.
    pub activations: u64,
    /// The training data's copy for the device (bytes and labels).
    pub data: u64,
}

impl Need {
    pub fn total(&self) -> u64 {
        self.state.saturating_add(self.activations).saturating_add(self.data).saturating_add(SLACK)
    }
}

/// Estimates what training `cfg` on `samples` samples of `features` values needs.
pub fn estimate(cfg: &TrainConfig, samples: usize, features: usize) -> Need {
    let sizes = model::layer_sizes(features, &cfg.hidden_units, cfg.num_classes);
    let parameters = model::param_count_checked(&sizes).map_or(u64::MAX, |p| p as u64);
    let units: u64 = sizes[1..].iter().map(|&w| w as u64).sum();
    let rows = (cfg.batch_size as u64).max(crate::train::EVAL_BATCH as u64);
    let f32s = |n: u64, copies: u64| n.saturating_mul(copies).saturating_mul(4);
    Need {
        parameters,
        state: f32s(parameters, PARAMETER_COPIES),
        activations: f32s(rows.saturating_mul(units), ACTIVATION_COPIES),
        data: (samples as u64).saturating_mul(features as u64 + 8),
    }
}

/// What this process may still allocate, and what limits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    pub bytes: u64,
    /// The limit in words, e.g. "the cgroup's memory limit of 24.0 GiB, 1.1 GiB in use".
    pub limit: String,
}

/// The memory left to this process: the tightest of the cgroup's limit, physical memory and
/// the address-space limit (`ulimit -v`), less what is already in use.
pub fn room() -> Option<Room> {
    let rss = read_statm(1);
    let mut limits: Vec<(u64, u64, &str)> = Vec::new();
    if let Some(total) = meminfo_total() {
        limits.push((total, rss, "physical memory"));
    }
    if let Some(cg) = cgroup_limit() {
        limits.push((cg, cgroup_usage().unwrap_or(rss), "the cgroup's memory limit"));
    }
    if let Some(asl) = address_space_limit() {
        limits.push((asl, read_statm(0), "the address-space limit (ulimit -v)"));
    }
    let (limit, used, what) =
        limits.into_iter().min_by_key(|(limit, used, _)| limit.saturating_sub(*used))?;
    Some(Room {
        bytes: limit.saturating_sub(used),
        limit: format!("{what} of {}, {} in use", gib(limit), gib(used)),
    })
}

/// Refuses a configuration that cannot fit in `room`.
pub fn check(cfg: &TrainConfig, need: &Need, room: &Room) -> Result<()> {
    if need.total() <= room.bytes {
        return Ok(());
    }
    Err(user(format!(
        "hyperparameters hidden_units={:?} and batch_size={} need about {} of memory ({} \
         parameters: {} for weights, gradients, optimizer state and checkpoints; {} of \
         activations; {} of training data), but only {} is free ({}); lower hidden_units or \
         batch_size",
        cfg.hidden_units,
        cfg.batch_size,
        gib(need.total()),
        need.parameters,
        gib(need.state),
        gib(need.activations),
        gib(need.data),
        gib(room.bytes),
        room.limit
    )))
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Field `i` of `/proc/self/statm` (0: virtual size, 1: resident), in bytes.
fn read_statm(i: usize) -> u64 {
    let text = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = text.split_whitespace().nth(i).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn meminfo_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// cgroup v2's `memory.max`, else v1's `memory.limit_in_bytes`; `None` when unlimited.
fn cgroup_limit() -> Option<u64> {
    ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| t.trim().parse::<u64>().ok())
        // v1 writes "unlimited" as a number near 2^63.
        .filter(|&v| v < 1 << 60)
}

fn cgroup_usage() -> Option<u64> {
    ["/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| t.trim().parse().ok())
}

fn address_space_limit() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } == 0;
    (ok && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(hidden: &[usize], batch: usize) -> TrainConfig {
        TrainConfig { hidden_units: hidden.to_vec(), batch_size: batch, ..Default::default() }
    }

    #[test]
    fn the_notebook_fits_and_three_huge_layers_do_not() {
        let room = Room { bytes: 24 << 30, limit: "physical memory of 24.0 GiB".into() };
        let small = estimate(&cfg(&[128], 32), 60_000, 784);
        assert_eq!(small.parameters, 101_770);
        assert!(small.total() < 1 << 30, "{small:?}");
        check(&cfg(&[128], 32), &small, &room).unwrap();
        let huge = cfg(&[65536, 65536, 65536], 32);
        let need = estimate(&huge, 60_000, 784);
        assert_eq!(need.parameters, 8_642_166_794);
        let e = check(&huge, &need, &room).unwrap_err();
        assert!(crate::error::is_user_error(&e));
        let e = e.to_string();
        assert!(e.contains("8642166794 parameters") && e.contains("lower hidden_units"), "{e}");
        assert!(e.contains("only 24.0 GiB is free (physical memory of 24.0 GiB)"), "{e}");
        // Wide layers with a huge batch: the activations alone are 48 GiB.
        let wide = cfg(&[65536], 65536);
        let need = estimate(&wide, 60_000, 784);
        assert!(need.activations > 48 << 30, "{need:?}");
        assert!(check(&wide, &need, &room).is_err());
    }

    #[test]
    fn this_process_has_some_room() {
        let room = room().expect("/proc/meminfo is readable");
        assert!(room.bytes > 0 && !room.limit.is_empty(), "{room:?}");
    }
}
