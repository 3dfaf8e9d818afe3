//! Last words: a process that dies of a panic or an abort (an allocation that failed, a stack
//! overflow, a fatal libtorch error) still leaves `output/failure`, so SageMaker shows a reason
//! rather than only "exit code 134", and removes what it had written of the model and of
//! `output/data/`, so nothing half-made looks like a result.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;

use crate::contract::Paths;
use crate::error::FAILURE_REASON_LIMIT;

/// What the abort handler needs, made before any abort can happen: it may not allocate.
struct LastWords {
    failure: CString,
    line: Vec<u8>,
    results: Vec<CString>,
}

static LAST_WORDS: OnceLock<LastWords> = OnceLock::new();

/// The files a job writes as its result: the model folder's and `output/data/`'s.
pub fn result_files(paths: &Paths) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> =
        crate::artifacts::MODEL_DIR_FILES.iter().map(|n| paths.model_dir().join(n)).collect();
    files.extend(crate::report::FILES.iter().map(|n| paths.output_data_dir().join(n)));
    files
}

/// Installs the panic hook and the SIGABRT handler for a training job under `paths`. `exit`
/// ends the process with the given code after the failure file is written.
pub fn install(paths: &Paths, exit: fn(u8) -> !, code: u8) {
    let cstr = |p: &std::path::Path| CString::new(p.as_os_str().as_bytes()).ok();
    // The abort handler can only open the failure file, not make its folder.
    let _ = std::fs::create_dir_all(paths.output_dir());
    let results: Vec<CString> = result_files(paths).iter().filter_map(|p| cstr(p)).collect();
    if let Some(failure) = cstr(&paths.failure_file()) {
        let line = b"InternalError: the process aborted (SIGABRT): a memory allocation failed, \
                     the stack overflowed or libtorch hit a fatal error; the log's last lines \
                     say which\n"
            .to_vec();
        let _ = LAST_WORDS.set(LastWords { failure, line, results });
        // SAFETY: on_abort only makes async-signal-safe calls (open, write, close, unlink,
        // _exit) on data prepared above; the struct is zeroed before the fields are set.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_abort as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGABRT, &action, std::ptr::null_mut());
        }
    }
    let paths = paths.clone();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line()));
        let reason = anyhow::anyhow!("panic{}: {msg}", at.unwrap_or_default());
        let reason = crate::error::failure_line("InternalError", &reason);
        eprintln!("{reason}");
        for f in result_files(&paths) {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::create_dir_all(paths.output_dir());
        let _ =
            crate::artifacts::write_atomic(&paths.failure_file(), format!("{reason}\n").as_bytes());
        exit(code)
    }));
}

extern "C" fn on_abort(_: libc::c_int) {
    if let Some(w) = LAST_WORDS.get() {
        let line = &w.line[..w.line.len().min(FAILURE_REASON_LIMIT)];
        // SAFETY: async-signal-safe calls on NUL-terminated paths and a live buffer.
        unsafe {
            libc::write(2, line.as_ptr().cast(), line.len());
            for f in &w.results {
                libc::unlink(f.as_ptr());
            }
            let fd = libc::open(
                w.failure.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                0o644,
            );
            if fd >= 0 {
                libc::write(fd, line.as_ptr().cast(), line.len());
                libc::fsync(fd);
                libc::close(fd);
            }
        }
    }
    // SAFETY: ends the process without running anything else.
    unsafe { libc::_exit(crate::cli::EXIT_INTERNAL_ERROR.into()) }
}
