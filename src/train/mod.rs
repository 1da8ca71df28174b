//! Training: the step loop (trainer.rs, a later issue), losses, optimizer and schedule,
//! checkpoints. See docs/ARCHITECTURE.md.
pub mod bank;
pub mod checkpoint;
pub mod corpus_softmax;
pub mod evaluate;
pub mod export;
pub mod grad_cache;
pub mod loss;
pub mod metrics_log;
pub mod objective;
pub mod optim;
pub mod run_dir;
pub mod schedule;
pub mod signal;
pub mod tensorboard;
pub mod tfevents;
pub mod trainer;
