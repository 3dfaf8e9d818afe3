//! Two jobs: give the `train` binary a run path to libtorch, so it starts without
//! `LD_LIBRARY_PATH`; and compile the small C++ shim (src/native) that reaches what tch does not
//! bind: ATen's fused Adam, libtorch's intra-op thread pool, and c10d's TCPStore and ProcessGroupGloo for multi-host training.
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
    // The wheel ships c10d's headers but not gloo's, which ProcessGroupGloo.hpp includes. The
    // shim only holds gloo objects through shared_ptr, so Debian's libgloo-dev headers serve.
    let gloo = std::env::var_os("SMTRAIN_GLOO_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    println!("cargo:rerun-if-env-changed=SMTRAIN_GLOO_INCLUDE");
    if !gloo.join("gloo/context.h").is_file() {
        panic!(
            "gloo headers not found in {} (needed to compile src/native/dist.cpp): install \
             Debian's libgloo-dev (`make setup` does), or set SMTRAIN_GLOO_INCLUDE",
            gloo.display()
        );
    }
    let mut build = cc::Build::new();
    // libtorch's and gloo's headers are included as system headers: their own warnings are not
    // ours, while the shim's code builds with -Wall -Wextra as errors. (A system folder passed
    // again would change the system headers' order; gcc searches /usr/include anyway.)
    let mut headers = vec![root.join("include"), root.join("include/torch/csrc/api/include")];
    if gloo != std::path::Path::new("/usr/include") {
        headers.push(gloo.clone());
    }
    for dir in &headers {
        build.flag("-isystem").flag(dir.to_str().expect("header folders are UTF-8"));
    }
    build
        .cpp(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        // Without it ProcessGroupGloo.hpp declares nothing.
        .define("USE_C10D_GLOO", "1")
        // parallel.cpp's at::parallel_for is an inline `omp parallel` region.
        .flag("-fopenmp")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .file("src/native/fused.cpp")
        .file("src/native/dist.cpp")
        .file("src/native/parallel.cpp")
        .compile("smtrain_native");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    // The OpenMP runtime the wheel ships and libtorch_cpu.so uses, by its exact file name:
    // `-lgomp` would link the system compiler's, and two OpenMP runtimes mean two thread pools.
    println!("cargo:rustc-link-lib=dylib:+verbatim=libgomp.so.1");
}
