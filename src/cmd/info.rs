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
        println!("cache: {}", crate::assets::cache_dir().display());
        match crate::assets::registry() {
            Ok(reg) => {
                for (name, path) in reg {
                    println!("artefact {name}: {}", path.display());
                }
            }
            Err(e) => println!("artefacts: {e}"),
        }
        Ok(())
    }
}
