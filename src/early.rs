//! SIGTERM, SIGINT and SIGHUP before `main`: handled from the first moment the program's own
//! code runs.
//!
//! The dynamic loader runs every shared library's initialisers before `main`, and libtorch's
//! take about 0.4 s. A signal in that time would kill a process on a host without a word, and
//! in a container, where `train` is PID 1, the kernel drops a signal that PID 1 has no handler
//! for, so `docker stop` would let the job train to the end. [`install`] runs from the
//! executable's `.preinit_array`, which the loader calls before any library's initialiser; it
//! only notes the signal. Training takes the note over with its own handlers ([`take`]); the
//! other commands put the default action back and, if a signal came, die of it as before.
//!
//! Before that first instruction come the kernel's exec and the loader's mapping of libtorch
//! (about 20 ms). The image's entry point, `smtrain-init`, covers them: it blocks the signals
//! and execs `train`, and [`install`] unblocks them once the handler exists.

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that came before the program's own handlers existed; 0 for none.
static EARLY: AtomicI32 = AtomicI32::new(0);

/// The signals a stop arrives as. SIGHUP (a closed terminal or SSH session, a supervisor's
/// reload) would otherwise kill the process without a reason; as a stop it leaves a checkpoint
/// and a `Stopped:` line like SIGTERM.
pub const STOPS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Signals whose default action would end a job without a word, though nothing means them as a
/// stop: training ignores them (and logs each, see `cli`).
pub const IGNORED: [libc::c_int; 2] = [libc::SIGUSR1, libc::SIGUSR2];

extern "C" fn note(sig: libc::c_int) {
    EARLY.store(sig, Ordering::Relaxed);
}

/// Installs the note-taking handler for the stops and ignores [`IGNORED`], then unblocks the
/// stops: the image's
/// entry point (`smtrain-init`) blocks them across exec, so that one sent before this moment
/// waits, pending, instead of being dropped (PID 1) or killing the process (elsewhere). Called
/// before libraries are initialised, so it uses nothing but `sigaction` and `sigprocmask`.
pub fn install() {
    for sig in IGNORED {
        // SAFETY: sets a disposition; no memory is involved.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    for sig in STOPS {
        // SAFETY: a zeroed sigaction with an async-signal-safe handler (one atomic store);
        // sigaction needs no initialised library state.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = note as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
    // SAFETY: a signal set on the stack; changing the mask needs no library state. A pending
    // stop is delivered to the handler above as the mask changes.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in STOPS {
            libc::sigaddset(&mut set, sig);
        }
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// The signal that came before the caller's own handlers, which must be installed by now; the
/// note-taking handler stays chained behind them (signal-hook calls it) and is harmless.
pub fn take() -> Option<i32> {
    match EARLY.swap(0, Ordering::Relaxed) {
        0 => None,
        sig => Some(sig),
    }
}

/// For commands that do not stop gracefully: the default actions back, and a signal that came
/// early delivered again now, with its default action.
pub fn release() {
    for sig in STOPS.into_iter().chain(IGNORED) {
        // SAFETY: restores the default disposition; no memory is involved.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    if let Some(sig) = take() {
        // SAFETY: raising a signal with its default action ends the process, as it would have.
        unsafe { libc::raise(sig) };
    }
}

/// Ignores SIGXFSZ: under a file size limit (`ulimit -f`, RLIMIT_FSIZE) a write past it then
/// fails with EFBIG, which the job reports and cleans up after, instead of killing the process
/// without a word and leaving half a file.
pub fn no_file_size_signal() {
    // SAFETY: sets a disposition; no memory is involved.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}
