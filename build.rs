//! Two jobs: give the `train` binary a run path to libtorch, so it starts without
//! `LD_LIBRARY_PATH`; and compile the small C++ shim (src/native) that reaches ATen kernels tch
//! does not bind.
//!
//! `$ORIGIN/lib` serves the Docker image (libraries copied beside the binary); the absolute
//! libtorch folder serves builds on the host. torch-sys hands us that folder through its
//! `links = "tch"` metadata.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/native");
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys exports its libtorch folder"),
    );
    // Binaries and tests alike (tests link libtorch too and must run without LD_LIBRARY_PATH).
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/lib:{}", lib.display());

    let root = lib.parent().expect("libtorch/lib has a parent");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .file("src/native/fused.cpp")
        .compile("smtrain_native");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
