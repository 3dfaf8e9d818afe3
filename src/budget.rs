//! Memory: what a configuration will need, and what the host can give, checked before the model
//! is allocated. Every hyperparameter may be in range while their product is not: three hidden
//! layers of 65,536 units are 8.6 billion parameters, and an allocation that large aborts the
//! process with no failure reason. Refusing it up front turns that into a `ClientError` that
//! lists every part and says what would help.
//!
//! What the process already holds at the check (the program, libtorch, the loaded data) is
//! measured, not assumed: its resident memory, or its address space under `ulimit -v`. Only
//! what training will add on top of that is estimated.

use std::path::{Path, PathBuf};

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
/// Float32 values kept per input feature and sample: the batch being trained on and the next,
/// loaded ahead.
const INPUT_COPIES: u64 = 2;
/// What grows after the check and is not counted in the parts: libtorch's allocator and thread
/// pools, the scoring's outputs, the metrics and the pictures. On the bundled Fashion-MNIST
/// (hidden_units 128 to 1024,1024, batch_size 32 to 4096, 1 and 2 threads, with and without
/// validation_split) a job's peak resident memory exceeded its resident memory at the check
/// plus the counted parts by at most 16 MiB: this is twice that. The resident memory at the
/// check also counts libtorch's mapped code in full (about 80 MiB), which under a limit the
/// kernel partly reclaims.
pub const MARGIN: u64 = 32 << 20;

/// What a job will add to what the process holds at the check, in bytes, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub parameters: u64,
    /// Parameters, gradients, optimizer state and checkpoint copies.
    pub state: u64,
    /// One training step's (or evaluation batch's, whichever is larger) activations and
    /// inputs.
    pub activations: u64,
    /// The part of `activations` that the hidden layers make (the rest is the output layer's).
    pub hidden_activations: u64,
    /// Rows a step or an evaluation batch holds at once.
    pub rows: u64,
    /// The datasets' copies for the device (values and labels).
    pub data: u64,
}

impl Need {
    /// Everything the job will add, with the margin.
    pub fn growth(&self) -> u64 {
        [self.state, self.activations, self.data, MARGIN]
            .iter()
            .fold(0, |a, &b| a.saturating_add(b))
    }
}

/// The bytes of a dataset's copy for the device: `samples` rows of `features` values of
/// `value_bytes` each, and a 64-bit label per row.
pub fn copy_bytes(samples: usize, features: usize, value_bytes: u64) -> u64 {
    (samples as u64).saturating_mul((features as u64).saturating_mul(value_bytes).saturating_add(8))
}

/// Estimates what training `cfg` on inputs of `features` values adds, `data` being the bytes
/// of the datasets' copies ([`copy_bytes`]).
pub fn estimate(cfg: &TrainConfig, features: usize, data: u64) -> Need {
    let sizes = model::layer_sizes(features, &cfg.hidden_units, cfg.num_classes);
    let parameters = model::param_count_checked(&sizes).map_or(u64::MAX, |p| p as u64);
    let units: u64 = sizes[1..].iter().map(|&w| w as u64).sum();
    let per_row =
        units.saturating_mul(ACTIVATION_COPIES).saturating_add(features as u64 * INPUT_COPIES);
    let hidden: u64 = cfg.hidden_units.iter().map(|&w| w as u64).sum();
    let rows = (cfg.batch_size as u64).max(crate::train::EVAL_BATCH as u64);
    let f32s = |n: u64, copies: u64| n.saturating_mul(copies).saturating_mul(4);
    Need {
        parameters,
        state: f32s(parameters, PARAMETER_COPIES),
        activations: f32s(rows.saturating_mul(per_row), 1),
        hidden_activations: f32s(rows.saturating_mul(hidden), ACTIVATION_COPIES),
        rows,
        data,
    }
}

/// The tightest memory limit on this process, and what already counts against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    /// The limit in bytes.
    pub limit: u64,
    /// This process's use: its resident memory (its address space, for `ulimit -v`).
    pub own: u64,
    /// Other use counted against the same limit: the cgroup's other processes and kernel
    /// memory, its reclaimable file cache left out.
    pub others: u64,
    pub kind: Limit,
}

/// Which limit a [`Room`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Physical,
    Cgroup,
    AddressSpace,
}

impl Limit {
    fn name(self) -> &'static str {
        match self {
            Limit::Physical => "physical memory",
            Limit::Cgroup => "the cgroup's memory limit",
            Limit::AddressSpace => "the address-space limit (ulimit -v)",
        }
    }

    /// How to give the job more of it.
    fn more(self) -> &'static str {
        match self {
            Limit::Physical => "an instance type with more memory",
            Limit::Cgroup => "a higher memory limit, e.g. docker run --memory",
            Limit::AddressSpace => "a higher ulimit -v",
        }
    }
}

impl Room {
    /// What the job may still add.
    pub fn free(&self) -> u64 {
        self.limit.saturating_sub(self.own).saturating_sub(self.others)
    }

    /// The limit and its use in words, e.g. "the cgroup's memory limit of 300.0 MiB, of which
    /// this process uses 180.2 MiB".
    pub fn describe(&self) -> String {
        let others = match self.others {
            0 => String::new(),
            n => format!(" and other processes {}", size(n)),
        };
        format!(
            "{} of {}, of which this process uses {}{others}",
            self.kind.name(),
            size(self.limit),
            size(self.own)
        )
    }
}

/// The memory left to this process: the tightest of the cgroup's limit, physical memory and
/// the address-space limit (`ulimit -v`), less what already counts against it.
pub fn room() -> Option<Room> {
    let rss = proc_status("VmRSS:").unwrap_or(0);
    let mut rooms = Vec::new();
    if let Some(total) = meminfo_total() {
        rooms.push(Room { limit: total, own: rss, others: 0, kind: Limit::Physical });
    }
    if let Some((limit, used)) = cgroup_limit() {
        let others = used.saturating_sub(rss);
        rooms.push(Room { limit, own: rss, others, kind: Limit::Cgroup });
    }
    if let Some(limit) = address_space_limit() {
        let own = proc_status("VmSize:").unwrap_or(0);
        rooms.push(Room { limit, own, others: 0, kind: Limit::AddressSpace });
    }
    rooms.into_iter().min_by_key(Room::free)
}

/// Refuses a configuration that cannot fit in `room`, naming every part and what would help.
pub fn check(cfg: &TrainConfig, need: &Need, room: &Room) -> Result<()> {
    let free = room.free();
    if need.growth() <= free {
        return Ok(());
    }
    Err(user(format!(
        "hyperparameters hidden_units={:?} and batch_size={} need about {} of memory beyond \
         what this process holds (the program, libtorch and the loaded data): {} for the \
         weights, gradients, optimizer state and checkpoint copies of {} parameters, {} of \
         activations and inputs for {} rows at a time, {} for the data's copies for training and \
         scoring, {} of head-room for libtorch; but {}, which leaves {}: {}",
        cfg.hidden_units,
        cfg.batch_size,
        size(need.growth()),
        size(need.state),
        need.parameters,
        size(need.activations),
        need.rows,
        size(need.data),
        size(MARGIN),
        room.describe(),
        size(free),
        remedies(cfg, need, need.growth() - free, room.kind)
    )))
}

/// What would close a `short`fall: the changes whose parts alone cover it, else those that
/// shrink it noticeably when together they cover it; and more memory.
fn remedies(cfg: &TrainConfig, need: &Need, short: u64, kind: Limit) -> String {
    let eval_rows = crate::train::EVAL_BATCH as u64;
    // Below the evaluation batch, a smaller batch_size leaves the rows a step holds as they are.
    let batch_saving = match cfg.batch_size as u64 {
        b if b > eval_rows => need.activations - need.activations / b * eval_rows,
        _ => 0,
    };
    let changes = [
        ("lower hidden_units", need.state.saturating_add(need.hidden_activations)),
        ("lower batch_size", batch_saving),
        ("train on fewer samples", need.data),
    ];
    let alone: Vec<&str> =
        changes.iter().filter(|(_, saved)| *saved >= short).map(|(what, _)| *what).collect();
    let together = changes.iter().fold(0u64, |a, (_, saved)| a.saturating_add(*saved));
    let more = format!("give the job more memory ({})", kind.more());
    if !alone.is_empty() {
        return format!("{}, or {more}", alone.join(" or "));
    }
    let partial: Vec<&str> =
        changes.iter().filter(|(_, saved)| *saved >= short / 10).map(|(what, _)| *what).collect();
    match together >= short && !partial.is_empty() {
        true => format!("{} together, or {more}", partial.join(" and ")),
        false => more,
    }
}

/// A size in MiB (GiB from 10 GiB on), precise enough to compare the parts.
pub fn size(bytes: u64) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    match mib >= 10_240.0 {
        true => format!("{:.1} GiB", mib / 1024.0),
        false => format!("{mib:.1} MiB"),
    }
}

/// A field of `/proc/self/status` given in kB (`VmRSS:`, `VmSize:`), in bytes.
fn proc_status(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

fn meminfo_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The tightest memory limit of the cgroups this process is in (its own and their parents'),
/// with that cgroup's use less its reclaimable file cache; `None` when nothing is limited.
fn cgroup_limit() -> Option<(u64, u64)> {
    let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    cgroup_dirs(&proc_cgroup, Path::new("/sys/fs/cgroup"))
        .iter()
        .filter_map(|dir| cgroup_use(dir))
        .min_by_key(|(limit, used)| limit.saturating_sub(*used))
}

/// The memory cgroup folders of a process whose `/proc/<pid>/cgroup` is `proc_cgroup`, its own
/// first, then its parents': cgroup v2's unified line (`0::/path`) under `root`, v1's memory
/// line under `root/memory`. In a container the mount's root is the container's own cgroup and
/// the path as the host names it does not exist, so the walk up reaches it.
fn cgroup_dirs(proc_cgroup: &str, root: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let base = match controllers {
            "" => root.to_path_buf(),
            c if c.split(',').any(|c| c == "memory") => root.join("memory"),
            _ => continue,
        };
        for up in Path::new(path.trim_start_matches('/')).ancestors() {
            let dir = base.join(up);
            if dir.is_dir() && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// One cgroup folder's memory limit (v2's `memory.max`, v1's `memory.limit_in_bytes`) and its
/// use without the inactive file cache, which the kernel reclaims before it runs out;
/// `None` when the folder sets no limit.
fn cgroup_use(dir: &Path) -> Option<(u64, u64)> {
    let number = |name: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(name)).ok()?.trim().parse().ok()
    };
    let (limit, usage, inactive) = match number("memory.max") {
        Some(limit) => (limit, number("memory.current"), stat_field(dir, "inactive_file")),
        None => (
            number("memory.limit_in_bytes")?,
            number("memory.usage_in_bytes"),
            stat_field(dir, "total_inactive_file"),
        ),
    };
    // v2 writes "max" (not a number); v1 writes "unlimited" as a number near 2^63.
    if limit >= 1 << 60 {
        return None;
    }
    let used = usage.unwrap_or(0).saturating_sub(inactive.unwrap_or(0));
    Some((limit, used))
}

/// A field of a cgroup's `memory.stat`, in bytes.
fn stat_field(dir: &Path, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
    text.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(' ')?.trim().parse().ok())
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

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn physical(limit: u64, own: u64) -> Room {
        Room { limit, own, others: 0, kind: Limit::Physical }
    }

    fn fashion_mnist() -> u64 {
        copy_bytes(60_000, 784, 1) + copy_bytes(10_000, 784, 1)
    }

    #[test]
    fn the_notebook_fits_and_three_huge_layers_do_not() {
        let room = physical(24 * GIB, 200 * MIB);
        let small = estimate(&cfg(&[128], 32), 784, fashion_mnist());
        assert_eq!(small.parameters, 101_770);
        assert!(small.growth() < 200 * MIB, "{small:?}");
        check(&cfg(&[128], 32), &small, &room).unwrap();
        let huge = cfg(&[65536, 65536, 65536], 32);
        let need = estimate(&huge, 784, fashion_mnist());
        assert_eq!(need.parameters, 8_642_166_794);
        let e = check(&huge, &need, &room).unwrap_err();
        assert!(crate::error::is_user_error(&e));
        let e = e.to_string();
        assert!(
            e.contains("8642166794 parameters") && e.contains("257.6 GiB for the weights"),
            "{e}"
        );
        assert!(
            e.contains("physical memory of 24.0 GiB, of which this process uses 200.0 MiB"),
            "{e}"
        );
        // A batch below the evaluation batch's 2,000 rows changes nothing: not suggested.
        assert!(e.ends_with(": lower hidden_units, or give the job more memory (an instance type with more memory)"), "{e}");
        // Wide layers with a huge batch: the activations alone are 48 GiB.
        let wide = cfg(&[65536], 65536);
        let need = estimate(&wide, 784, fashion_mnist());
        assert!(need.activations > 48 * GIB, "{need:?}");
        let e = check(&wide, &need, &room).unwrap_err().to_string();
        assert!(e.contains(": lower hidden_units or lower batch_size, or give"), "{e}");
    }

    /// A small model under a limit that the process itself nearly fills: only more memory
    /// helps, and every part is there in MiB.
    #[test]
    fn a_tiny_model_is_told_to_get_memory_not_smaller_layers() {
        let tiny = cfg(&[16], 32);
        let need = estimate(&tiny, 784, fashion_mnist());
        let room = Room { limit: 300 * MIB, own: 250 * MIB, others: 10 * MIB, kind: Limit::Cgroup };
        let e = check(&tiny, &need, &room).unwrap_err().to_string();
        assert!(e.contains("0.4 MiB for the weights"), "{e}");
        assert!(e.contains("of activations and inputs for 2000 rows"), "{e}");
        assert!(e.contains("52.9 MiB for the data's copies"), "{e}");
        assert!(e.contains("32.0 MiB of head-room"), "{e}");
        assert!(
            e.contains("the cgroup's memory limit of 300.0 MiB, of which this process uses 250.0 MiB and other processes 10.0 MiB, which leaves 40.0 MiB"),
            "{e}"
        );
        assert!(
            e.ends_with(
                ": give the job more memory (a higher memory limit, e.g. docker run --memory)"
            ),
            "{e}"
        );
        // With room for all but the data's copies, fewer samples is what helps.
        let room = Room { limit: 300 * MIB, own: 220 * MIB, others: 0, kind: Limit::Cgroup };
        let e = check(&tiny, &need, &room).unwrap_err().to_string();
        assert!(e.ends_with(": train on fewer samples, or give the job more memory (a higher memory limit, e.g. docker run --memory)"), "{e}");
    }

    #[test]
    fn cgroup_folders_are_found_from_the_processes_own_line_up_to_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("memory/jobs/one")).unwrap();
        let v1 = "4:memory:/jobs/one\n3:cpu,cpuacct:/jobs/one\n0::/\n";
        let dirs = cgroup_dirs(v1, r);
        assert_eq!(
            dirs,
            [r.join("memory/jobs/one"), r.join("memory/jobs"), r.join("memory"), r.to_path_buf()]
        );
        // In a container the host's path is absent; the mount's root is the container's.
        let dirs = cgroup_dirs("4:memory:/docker/abc\n", r);
        assert_eq!(dirs, [r.join("memory")]);
        std::fs::create_dir_all(r.join("job.slice")).unwrap();
        assert_eq!(cgroup_dirs("0::/job.slice\n", r), [r.join("job.slice"), r.to_path_buf()]);
    }

    #[test]
    fn a_cgroup_limit_counts_its_use_without_the_reclaimable_cache() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("memory.max"), "314572800\n").unwrap();
        std::fs::write(d.join("memory.current"), "209715200\n").unwrap();
        std::fs::write(d.join("memory.stat"), "anon 1\ninactive_file 104857600\nactive_file 3\n")
            .unwrap();
        assert_eq!(cgroup_use(d), Some((300 * MIB, 100 * MIB)));
        std::fs::write(d.join("memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_use(d), None);
        let v1 = tempfile::tempdir().unwrap();
        let d = v1.path();
        std::fs::write(d.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        assert_eq!(cgroup_use(d), None);
        std::fs::write(d.join("memory.limit_in_bytes"), "314572800\n").unwrap();
        std::fs::write(d.join("memory.usage_in_bytes"), "209715200\n").unwrap();
        std::fs::write(d.join("memory.stat"), "inactive_file 5\ntotal_inactive_file 52428800\n")
            .unwrap();
        assert_eq!(cgroup_use(d), Some((300 * MIB, 150 * MIB)));
    }

    #[test]
    fn this_process_has_some_room() {
        let room = room().expect("/proc/meminfo is readable");
        assert!(room.free() > 0 && room.own > 0, "{room:?}");
        assert!(room.describe().contains("of which this process uses"), "{room:?}");
    }

    #[test]
    fn sizes_are_in_mib_below_ten_gib() {
        assert_eq!(size(300 * MIB), "300.0 MiB");
        assert_eq!(size(MIB / 10), "0.1 MiB");
        assert_eq!(size(10 * GIB), "10.0 GiB");
    }
}
