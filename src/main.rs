//! The `train` binary: everything lives in the library (see `lib.rs` for the map).

/// Runs before any shared library's initialiser (libtorch's take about 0.4 s), so that a stop
/// in those first moments is noted rather than lost: see `early.rs`.
#[used]
#[link_section = ".preinit_array"]
static EARLY_SIGNALS: extern "C" fn() = preinit;

extern "C" fn preinit() {
    smtrain::early::install();
    smtrain::early::no_file_size_signal();
}

fn main() {
    smtrain::cli::exit_now(smtrain::cli::main())
}
