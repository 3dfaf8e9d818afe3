//! The `train` binary: everything lives in the library (see `lib.rs` for the map).

fn main() {
    smtrain::cli::exit_now(smtrain::cli::main())
}
