//! `grdr info`: what this installation links and finds, for bug reports and set-up checks.
use clap::Args;

use crate::error::Result;

#[derive(Debug, Args)]
pub struct InfoArgs {}

impl InfoArgs {
    pub fn run(&self) -> Result<()> {
        println!("grdr {}", crate::VERSION);
        println!("cuda available: {} (devices: {})", tch::Cuda::is_available(), tch::Cuda::device_count());
        println!("torch threads: {}", tch::get_num_threads());
        println!("cpu: {}", crate::cpu::this().describe());
        println!("cpu products (f32): {}", crate::model::gemm_choice::choice().describe());
        println!(
            "cpu bf16: {}",
            if crate::cpu::this().has_bf16() {
                "native (train.precision / --precision bf16 run on it)"
            } else {
                "not native (bf16 refused on this CPU)"
            }
        );
        println!("cache: {}", crate::assets::cache_dir().display());
        match crate::assets::registry() {
            Ok(reg) => {
                for (name, path) in reg {
                    // The registry is written by the set-up; say when what it names is gone
                    // (e.g. the reference venv of `launcher/setup --reference` never made).
                    let state = if path.exists() { "" } else { " (missing)" };
                    println!("artefact {name}: {}{state}", path.display());
                }
            }
            Err(e) => println!("artefacts: {e}"),
        }
        Ok(())
    }
}
