//! Embeds an rpath to the libtorch that torch-sys linked against, so `grdr` runs without
//! LD_LIBRARY_PATH (torch-sys exports its lib dir to dependants as DEP_TCH_LIBTORCH_LIB).
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
