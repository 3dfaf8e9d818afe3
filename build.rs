//! Gives the `train` binary a run path to libtorch, so it starts without `LD_LIBRARY_PATH`.
//!
//! `$ORIGIN/lib` serves the Docker image (libraries copied beside the binary); the absolute
//! libtorch folder serves builds on the host. torch-sys hands us that folder through its
//! `links = "tch"` metadata.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let mut rpath = String::from("$ORIGIN/lib");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        rpath.push(':');
        rpath.push_str(&lib);
    }
    // Binaries and tests alike (tests link libtorch too and must run without LD_LIBRARY_PATH).
    println!("cargo:rustc-link-arg=-Wl,-rpath,{rpath}");
}
