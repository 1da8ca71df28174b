//! grdr: distributed training and evaluation of generative (GR) and dense (DR) retrieval
//! models on libtorch. See docs/ARCHITECTURE.md for the data flow.
pub mod analysis;
pub mod assets;
pub mod atomic;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod cpu;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod eval;
pub mod model;
pub mod panic_guard;
pub mod paper;
pub mod parallel;
pub mod progress;
pub mod report;
pub mod rng;
pub mod search;
pub mod sweep;
pub mod train;

pub use error::{Error, Result};

/// The grdr version recorded in manifests and run directories.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
