//! Embeds an rpath to the libtorch that torch-sys linked against, so `grdr` runs without
//! LD_LIBRARY_PATH (torch-sys exports its lib dir to dependants as DEP_TCH_LIBTORCH_LIB).
//!
//! `GRDR_LINK_CUDA=1` (with a CUDA libtorch, `launcher/setup --gpu`) also links
//! `libtorch_cuda` unconditionally: nothing in the binary names one of its symbols, so the
//! linker's default `--as-needed` would drop it and `tch::Cuda::is_available()` would be
//! false at run time (tch-rs issues #907, #980). Off by default: loading the CUDA
//! libraries costs every CPU process (each test binary) start-up time and memory.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        if std::env::var("GRDR_LINK_CUDA").is_ok_and(|v| v == "1") {
            let cuda = std::path::Path::new(&lib).join("libtorch_cuda.so");
            if !cuda.exists() {
                panic!("GRDR_LINK_CUDA=1 but {} is missing: run launcher/setup --gpu", cuda.display());
            }
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=GRDR_LINK_CUDA");
}
