//! `grdr sweep`: a grid of training runs from one sweep file, run locally one after another
//! or as Slurm job arrays, with nested corpus subsamples for corpus-size sweeps.
//!
//! ```text
//! configs/sweeps/X.toml ──spec.rs──▶ SweepSpec ──grid.rs──▶ points (product of axes, zips)
//!   ──resolve.rs──▶ RunConfig per point (base ← [set] ← --set ← axis values, RunConfig::load)
//!   ──setup.rs──▶ SWEEPDIR (layout.rs; subsample.rs writes data/docs-N)
//!   ──local.rs──▶ grdr-launch … grdr train --resume, one point at a time
//!   ──slurm.rs──▶ sbatch arrays from slurm/templates (template.rs, profile.rs) + report job
//! status.rs: state.json merged with sacct/squeue, the `grdr sweep status` table
//! ```
pub mod grid;
pub mod launch;
pub mod layout;
pub mod local;
pub mod profile;
pub mod resolve;
pub mod setup;
pub mod slurm;
pub mod spec;
pub mod status;
pub mod subsample;
pub mod template;
