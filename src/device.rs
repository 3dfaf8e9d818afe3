//! Where training runs: the GPU when there is one (and the user allows it), else the CPU, with
//! a thread count that suits the machine.
//!
//! rustc links with `--as-needed`, which drops `libtorch_cuda.so` from the binary because no
//! symbol of it is referenced: CUDA would then be silently unavailable. Instead of linking it
//! unconditionally (which loads 2 GB of CUDA libraries on every CPU host), we load it at run
//! time, only when an NVIDIA driver is present. The same binary serves the `cpu` image, which
//! does not ship the CUDA libraries at all.

use std::ffi::CStr;

use anyhow::Result;
use tch::Device;

use crate::config::DeviceChoice;
use crate::error::user;

/// The device and thread count chosen for a job, and why.
#[derive(Debug, Clone)]
pub struct Placement {
    pub device: Device,
    pub threads: usize,
    /// A human-readable account of the choice, for the log.
    pub reason: String,
}

impl Placement {
    pub fn name(&self) -> String {
        match self.device {
            Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".into(),
        }
    }
}

/// Whether the host has an NVIDIA driver loaded.
fn nvidia_driver_present() -> bool {
    std::path::Path::new("/proc/driver/nvidia/version").exists()
}

/// Loads libtorch's CUDA backend so that libtorch registers it; `Err` says why not.
fn load_cuda_backend() -> std::result::Result<(), String> {
    // SAFETY: dlopen/dlerror with valid NUL-terminated strings; the handle is deliberately kept
    // open for the life of the process.
    unsafe {
        let handle = libc::dlopen(c"libtorch_cuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        if handle.is_null() {
            let err = libc::dlerror();
            let msg = if err.is_null() {
                "unknown error".to_string()
            } else {
                CStr::from_ptr(err).to_string_lossy().into_owned()
            };
            return Err(msg);
        }
    }
    Ok(())
}

/// Threads to use: the configured number, else `OMP_NUM_THREADS`, else one per core, the cores
/// split between the `sharing` processes of a job that run on this machine.
fn thread_count(configured: usize, sharing: usize) -> Result<usize> {
    if configured > 0 {
        return Ok(configured);
    }
    Ok(env_threads()?.unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / sharing.max(1)).max(1)
    }))
}

/// The most threads the environment may ask for: the `threads` hyperparameter's limit.
pub const MAX_THREADS: usize = 1024;

/// `OMP_NUM_THREADS` as a thread count, if it is one. Past [`MAX_THREADS`] it is refused, as the
/// hyperparameter would be: libgomp would try to start that many threads, and a million of
/// them overflow the stack rather than fail.
pub fn env_threads() -> Result<Option<usize>> {
    let Ok(v) = std::env::var("OMP_NUM_THREADS") else { return Ok(None) };
    match v.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_THREADS as u64).contains(&n) => Ok(Some(n as usize)),
        Ok(_) => Err(user(format!(
            "environment variable OMP_NUM_THREADS={} is out of range (allowed: 1 to \
             {MAX_THREADS}, as the threads hyperparameter)",
            crate::error::clip(v.trim(), 40)
        ))),
        // libgomp's list for nested levels ("4,2"), or nothing at all: we choose by cores.
        Err(_) if v.trim().is_empty() || v.split(',').all(|n| n.trim().parse::<u64>().is_ok()) => {
            Ok(None)
        }
        // A typo would otherwise silently pick a thread count the user did not ask for.
        Err(_) => Err(user(format!(
            "environment variable OMP_NUM_THREADS={} is not a whole number (allowed: 1 to \
             {MAX_THREADS}, or libgomp's comma-separated list)",
            crate::error::quote(v.trim())
        ))),
    }
}

/// Picks the device and sets libtorch's thread pools; `sharing` processes of the job share
/// this machine's cores.
pub fn place(choice: DeviceChoice, threads: usize, sharing: usize) -> Result<Placement> {
    let threads = thread_count(threads, sharing)?;
    tch::set_num_threads(threads as i32);
    let cuda = match choice {
        DeviceChoice::Cpu => Err("device=cpu was asked for".to_string()),
        _ if !nvidia_driver_present() => Err("no NVIDIA driver on this host".to_string()),
        _ => load_cuda_backend()
            .map_err(|e| format!("cannot load libtorch's CUDA backend: {e}"))
            .and_then(|()| {
                if tch::Cuda::is_available() {
                    Ok(())
                } else {
                    Err("libtorch sees no usable CUDA device".to_string())
                }
            }),
    };
    match (choice, cuda) {
        (_, Ok(())) => Ok(Placement {
            device: Device::Cuda(0),
            threads,
            reason: format!("CUDA available ({} device(s))", tch::Cuda::device_count()),
        }),
        (DeviceChoice::Cuda, Err(why)) => {
            Err(user(format!("hyperparameter \"device\" is cuda, but CUDA is unusable: {why}")))
        }
        (_, Err(why)) => Ok(Placement { device: Device::Cpu, threads, reason: why }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_threads_win() {
        assert_eq!(thread_count(3, 1).unwrap(), 3);
        assert!(thread_count(0, 1).unwrap() >= 1);
    }

    #[test]
    fn cpu_choice_gives_the_cpu() {
        let p = place(DeviceChoice::Cpu, 1, 1).unwrap();
        assert_eq!(p.device, Device::Cpu);
        assert_eq!(p.name(), "cpu");
    }

    #[test]
    fn cuda_choice_without_a_gpu_is_a_clear_user_error() {
        if nvidia_driver_present() {
            return; // this host has a GPU: the choice is valid here.
        }
        let err = place(DeviceChoice::Cuda, 1, 1).unwrap_err();
        assert!(crate::error::is_user_error(&err));
        assert!(err.to_string().contains("no NVIDIA driver"), "{err}");
    }
}
