//! The image's entry point in front of `train`: blocks SIGTERM, SIGINT and SIGHUP, then becomes
//! the program its arguments name (exec: the same process, still PID 1).
//!
//! In a container `train` is PID 1, and the kernel drops a signal that PID 1 has no handler
//! for. `train` handles SIGTERM, SIGINT and SIGHUP from its own first instruction (its
//! `.preinit_array`, before libtorch's initialisers), but the kernel's exec and the dynamic
//! loader's mapping of libtorch come before that instruction: about 20 ms. A blocked signal is
//! never dropped: it stays pending across exec until `train`, its handler installed, unblocks
//! it. This program blocks the signals before `main` and does nothing else. The image links it
//! statically (`make docker-init`): a dynamic one would first have the loader open, map and
//! relocate libc, which takes milliseconds when the image's files are not yet in the page cache,
//! as on a container's first start. What is left is the kernel's exec and the C library's start,
//! microseconds in memory.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStringExt;

#[used]
#[link_section = ".preinit_array"]
static BLOCK_STOPS: extern "C" fn() = block_stops;

extern "C" fn block_stops() {
    // SAFETY: builds a signal set on the stack and changes this thread's mask; both are plain
    // system calls that need no initialised library state.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let Some(program) = args.first().cloned() else {
        eprintln!("usage: smtrain-init PROGRAM [ARGUMENT...]: runs PROGRAM with SIGTERM, SIGINT and SIGHUP blocked until it unblocks them");
        std::process::exit(2);
    };
    let Ok(argv) =
        args.into_iter().map(|a| CString::new(a.into_vec())).collect::<Result<Vec<_>, _>>()
    else {
        eprintln!("smtrain-init: an argument holds a NUL byte");
        std::process::exit(2);
    };
    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    pointers.push(std::ptr::null());
    // Not std's Command: it empties the signal mask before exec, which is what this avoids.
    // SAFETY: NUL-terminated strings that outlive the call, in a NULL-terminated array.
    unsafe { libc::execvp(argv[0].as_ptr(), pointers.as_ptr()) };
    let err = std::io::Error::last_os_error();
    eprintln!("smtrain-init: cannot run {}: {err}", program.to_string_lossy());
    std::process::exit(127);
}
