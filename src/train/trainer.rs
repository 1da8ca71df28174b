//! `grdr train`: the whole data-parallel run, top to bottom in commented phases (nanoGPT's
//! train.py is the model). Every rank runs this; rank 0 (the coordinator) alone writes the
//! run directory and logs.
//!
//! Exactness, by construction:
//! - data: the global batch of step s is a pure function of (seed, s) (`data::examples`),
//!   rank r takes its slice, gathers restore the global batch in rank order — so N ranks
//!   × B compute what 1 rank × N·B computes;
//! - randomness: torch's generator is re-seeded from (seed, rank, step) at every step, and
//!   every other draw is keyed SplitMix64 — nothing to save, a resumed step draws the same;
//! - resume: a checkpoint holds parameters, AdamW moments and the step; the schedule, the
//!   data position and the RNG all follow from the step.
use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{Device, Tensor};

use super::checkpoint::{self, TrainState};
use super::metrics_log::{self, MetricsLog, Record};
use super::optim::{AdamW, AdamWConfig};
use super::schedule::Schedule;
use super::signal;
use super::task::{LossSettings, Net, Task};
use crate::config::{ModelKind, Precision, RunConfig};
use crate::data::batch::{Batcher, DocStore};
use crate::data::docid::DocidTable;
use crate::data::examples::{training_pairs, Sampler, Source, Targets};
use crate::data::shard::{self, tag, SplitMix64};
use crate::data::Dataset;
use crate::dist::{self, Comm, Ddp, DdpOptions, ReduceOp};
use crate::error::{Error, Result};
use crate::model::text::TextTokenizer;

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished {
        steps: u64,
        metrics: Option<serde_json::Value>,
    },
    /// Stopped by SIGTERM/SIGUSR1 after checkpointing `step` (exit with
    /// [`signal::PREEMPTED_EXIT_CODE`]).
    Preempted {
        step: u64,
        signal: i32,
    },
}

/// Options of one invocation (not part of the config: they say how, not what, to run).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub run_dir: PathBuf,
    /// Continue from the newest checkpoint in `run_dir` (a fresh start when there is none,
    /// so a requeued job can always pass it).
    pub resume: bool,
    /// Replace an existing run directory's checkpoints and logs.
    pub overwrite: bool,
}

/// The device this rank trains on.
pub fn pick_device(spec: &str, local_rank: usize) -> Result<Device> {
    Ok(match spec {
        "cpu" => Device::Cpu,
        "auto" if !tch::Cuda::is_available() => Device::Cpu,
        "auto" | "cuda" => Device::Cuda(local_rank),
        s => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(i) => Device::Cuda(i),
            None => return Err(Error::usage("train.device", format!("`{s}`"))),
        },
    })
}

/// Runs the job: joins the world, trains, and on any error ends every rank.
pub fn train(cfg: &RunConfig, opts: &RunOptions) -> Result<Outcome> {
    signal::install();
    if let Some(n) = cfg.train.threads {
        tch::set_num_threads(n as i32);
    }
    let backend: dist::Backend = cfg.dist.backend.parse()?;
    // The local rank is known before MPI starts only from the launcher's environment.
    let local_rank = ["OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(0);
    let device = pick_device(&cfg.train.device, local_rank)?;
    let comm = dist::init(backend, device)?;
    let result = run(&*comm, cfg, opts, device);
    dist::exit_on_error(&*comm, result)
}

fn run(comm: &dyn Comm, cfg: &RunConfig, opts: &RunOptions, device: Device) -> Result<Outcome> {
    let world = comm.world();
    let lead = world.is_coordinator();
    let t = &cfg.train;
    let run_dir = opts.run_dir.as_path();

    // ---- 1. Run directory and resume point ------------------------------------------------
    let resume_from = if opts.resume { checkpoint::latest(run_dir) } else { None };
    if lead {
        prepare_run_dir(run_dir, opts)?;
        cfg.write(&run_dir.join("config.toml"))?;
    }
    comm.barrier()?;
    let resumed: Option<TrainState> = match &resume_from {
        Some(ckpt) => Some(checkpoint::verify(ckpt)?),
        None => None,
    };
    if let Some(state) = &resumed {
        check_resumable(cfg, state, resume_from.as_deref().expect("resumed"), world.size)?;
    }

    // ---- 2. Data: the row-group plan (rank 0 reads the footer), examples, negatives -------
    let ds = Dataset::open(&cfg.data.path).map_err(|e| match e {
        Error::Usage { message, .. } => Error::usage("data.path", message),
        other => other,
    })?;
    let groups = shard::plan_row_groups(comm, &ds.docs_path())?;
    let n_docs: u64 = groups.iter().map(|g| g.rows).sum();
    let pairs = training_pairs(&ds, &cfg.data.train_split)?;
    let queries: Vec<String> = ds.queries()?.into_iter().map(|q| q.text).collect();
    let docids = match &cfg.docids.path {
        Some(p) => {
            let table = DocidTable::read(p)?;
            if table.meta.n_docs as u64 != n_docs {
                return Err(Error::usage(
                    "docids.path",
                    format!("{} docs in the docid file, {n_docs} in the dataset", table.meta.n_docs),
                ));
            }
            Some(table)
        }
        None => None,
    };

    // ---- 3. Model, optimizer, DDP (rank 0's initial values broadcast to every rank) -------
    tch::manual_seed(t.seed as i64);
    let task = Task::build(&cfg.model, device, docids.as_ref())?;
    let mut optimizer = AdamW::new(
        task.named_parameters(),
        AdamWConfig { beta1: t.beta1, beta2: t.beta2, eps: t.eps, weight_decay: t.weight_decay },
    );
    if let Some(ckpt) = &resume_from {
        checkpoint::load_model(ckpt, &task.vs)?;
        optimizer.load(&ckpt.join(checkpoint::OPTIMIZER_FILE))?;
    }
    let mut ddp = Ddp::new(comm, task.named_parameters(), DdpOptions { bucket_bytes: cfg.dist.bucket_mb << 20 })?;

    let source = match cfg.model.kind {
        ModelKind::Dual | ModelKind::Colbert => {
            let hard = mine_hard_negatives(comm, &ds, &pairs, cfg)?;
            Source::Pairs { pairs, hard, hard_negatives: cfg.data.hard_negatives }
        }
        ModelKind::Generative => Source::Generative {
            pairs,
            doc_groups: groups.clone(),
            window: cfg.data.shuffle_window_row_groups,
            retrieval_fraction: cfg.data.retrieval_fraction,
            targets: Targets { rows_by_doc: docids.as_ref().expect("generative has docids").rows_by_doc() },
        },
    };
    let mut sampler = Sampler::new(source, t.seed);
    let mut batcher = Batcher {
        docs: DocStore::new(&ds.docs_path(), groups.clone(), cfg.data.doc_cache_row_groups),
        queries,
        query_tok: TextTokenizer::from_path(&task.tokenizer_json, cfg.data.query_max_len)?,
        doc_tok: TextTokenizer::from_path(&task.tokenizer_json, cfg.data.doc_max_len)?,
        span_tok: match cfg.data.index_view {
            crate::config::IndexView::Span => Some(TextTokenizer::from_path(&task.tokenizer_json, 1 << 20)?),
            crate::config::IndexView::First => None,
        },
        targets: docids.as_ref().map(|d| task.targets(d)).transpose()?.unwrap_or_default(),
        device,
        seed: t.seed,
    };

    // ---- 4. Length of the run and the schedule --------------------------------------------
    let global_batch = world.size * t.batch_size * t.grad_accum;
    let per_step = sampler.epoch_examples_per_batch(global_batch).max(1);
    let total = if t.max_steps > 0 {
        t.max_steps
    } else {
        ((t.epochs * sampler.epoch_len() as f64) / per_step as f64).ceil().max(1.0) as u64
    };
    let warmup = t.warmup_steps.unwrap_or((total as f64 * 0.1).round() as u64);
    let schedule = Schedule { peak: t.lr, warmup, total, decay: t.decay, min_ratio: t.min_lr_ratio };
    let losses = LossSettings { temperature: t.temperature, num_negatives: t.num_negatives, seed: t.seed };
    let start = resumed.as_ref().map_or(0, |s| s.step);
    let autocast = t.precision == Precision::Bf16 && device.is_cuda();
    if autocast {
        super::precision::use_bf16_autocast();
    }
    let (decayed, plain) = optimizer.group_sizes();
    if lead {
        tracing::info!(
            "{}: {} ranks × batch {} × accum {} = {global_batch} examples/step, {total} steps (warm-up {warmup}), \
             epoch = {} examples; {} parameters ({decayed} tensors decayed, {plain} not); device {device:?}{}",
            format!("{:?}", cfg.model.kind),
            world.size,
            t.batch_size,
            t.grad_accum,
            sampler.epoch_len(),
            ddp.parameters().iter().map(|p| p.numel()).sum::<usize>(),
            resume_from.as_ref().map(|p| format!("; resumed from {}", p.display())).unwrap_or_default(),
        );
    }
    let mut log = if lead { Some(MetricsLog::open(run_dir, resumed.as_ref().map(|s| s.step))?) } else { None };
    let bar = if lead && cfg.log.progress { crate::progress::bar(total, "train") } else { crate::progress::bar(0, "") };
    bar.set_position(start);
    let mut acc = Interval::default();
    if let Some(s) = &resumed {
        acc.loss_sum = s.interval_loss_sum;
        acc.steps = s.interval_steps;
    }
    let t_run = Instant::now();

    // ---- 5. The loop ------------------------------------------------------------------------
    for step in start..total {
        // 5a. This step's randomness (dropout) and learning rate.
        tch::manual_seed((SplitMix64::keyed(&[t.seed, tag::TORCH, world.rank as u64, step]).next_u64() >> 1) as i64);
        let lr = schedule.lr(step);

        // 5b. This rank's micro-batches of the global batch of `step`.
        let micro = sampler.rank_batches(step, world.rank, world.size, t.batch_size, t.grad_accum);

        // 5c. Forward and backward, micro-batch by micro-batch (no communication but the
        //     gathers inside the loss; gradients are reduced once, in 5e).
        let mut loss_sum = Tensor::zeros([], (tch::Kind::Double, device)); // Σ of this rank's loss parts
        let mut tokens = 0i64;
        match &task.net {
            Net::Generative { .. } => {
                let batches: Vec<_> = micro
                    .iter()
                    .enumerate()
                    .map(|(a, ex)| {
                        batcher.generative(ex, step, (world.rank * t.batch_size + a * world.size * t.batch_size) as u64)
                    })
                    .collect::<Result<_>>()?;
                // GR's loss is normalised by the token count of the whole global batch.
                let local: i64 = batches.iter().map(|b| b.target_tokens).sum();
                let global_tokens = dist::gather::global_count(comm, local)?;
                for b in &batches {
                    tokens += b.tokens + b.target_tokens;
                    let (share, part) = tch::autocast(autocast, || task.generative_loss(comm, b, global_tokens))?;
                    share.backward();
                    loss_sum += part.to_kind(tch::Kind::Double);
                }
            }
            Net::Dual(_) | Net::Colbert(_) => {
                for (a, ex) in micro.iter().enumerate() {
                    let b = batcher.pairs(ex)?;
                    tokens += b.tokens;
                    let loss = tch::autocast(autocast, || task.pair_loss(comm, &b, losses, step, a as u64))?;
                    // Every rank holds the global loss; each back-propagates its own slice,
                    // scaled so DDP's mean of gradients is the global gradient.
                    (&loss * (world.backward_scale() / t.grad_accum as f64)).backward();
                    loss_sum += loss.detach().to_kind(tch::Kind::Double) / (t.grad_accum * world.size) as f64;
                }
            }
        }

        // 5d. One small all-reduce: the global loss, tokens, non-finite flags, preemption.
        //     The loss is the step's only device→host copy.
        let local_loss = loss_sum.double_value(&[]);
        let stop = signal::received();
        let mut agree = [
            if local_loss.is_finite() { local_loss } else { 0.0 },
            tokens as f64,
            if local_loss.is_finite() { 0.0 } else { 1.0 },
            if stop.is_some() { 1.0 } else { 0.0 },
        ];
        comm.all_reduce_f64(&mut agree, ReduceOp::Sum)?;
        if agree[2] > 0.0 {
            let flags = comm.all_gather_bytes(&[u8::from(!local_loss.is_finite())])?;
            let ranks: Vec<usize> = (0..flags.len()).filter(|&r| flags[r][0] == 1).collect();
            return Err(Error::dist(
                world.rank,
                format!("non-finite loss at step {} on rank(s) {ranks:?}; stopped before the optimizer step", step + 1),
            ));
        }
        let loss = agree[0];

        // 5e. Gradients: average over ranks, clip by the global norm, update.
        ddp.sync_gradients()?;
        let grad_norm = if t.max_grad_norm > 0.0 {
            ddp.clip_grad_norm(t.max_grad_norm)?
        } else if (step + 1) % cfg.log.interval == 0 {
            super::optim::grad_norm(ddp.parameters())
        } else {
            f64::NAN
        };
        optimizer.step(lr);
        optimizer.zero_grad();
        let done = step + 1;
        acc.add(loss, global_batch as u64, agree[1] as u64);
        bar.inc(1);

        // 5f. Log (rank 0), one line per interval.
        let epoch = (done * per_step) as f64 / sampler.epoch_len() as f64;
        if done % cfg.log.interval == 0 || done == total {
            let record = acc.record(done, epoch, loss, lr, grad_norm);
            if let Some(log) = log.as_mut() {
                log.write(&record)?;
                bar.suspend(|| tracing::info!("{}", metrics_log::format_line(&record, total)));
            }
            acc = Interval::default();
        }

        // 5g. Checkpoint on schedule, at the end, or when asked to stop (every rank finished
        //     this step: the agreement above made them stop at the same one).
        let preempt = agree[3] > 0.0;
        let due = t.checkpoint_every > 0 && done % t.checkpoint_every == 0;
        if due || preempt || done == total {
            let reason = match (preempt, stop) {
                (true, Some(s)) => format!("preempted ({})", signal::name(s)),
                (true, None) => "preempted (another rank was signalled)".to_string(),
                _ if done == total => "final".into(),
                _ => "interval".into(),
            };
            ddp.check_consistency()?;
            if lead {
                let state = TrainState {
                    format: checkpoint::FORMAT.into(),
                    grdr_version: crate::VERSION.into(),
                    step: done,
                    epoch,
                    examples_seen: done * per_step,
                    rng: "torch re-seeded per step from SplitMix64(seed, 7, rank, step); data draws keyed by (seed, step)".into(),
                    seed: t.seed,
                    world_size: world.size,
                    global_batch,
                    reason: reason.clone(),
                    interval_loss_sum: acc.loss_sum,
                    interval_steps: acc.steps,
                    files: Default::default(),
                };
                let path = checkpoint::save(run_dir, &task.vs, &optimizer, &cfg.to_toml(), state, t.keep_checkpoints)?;
                bar.suspend(|| tracing::info!("checkpoint {} ({reason})", path.display()));
            }
            comm.barrier()?;
            if preempt {
                bar.finish_and_clear();
                return Ok(Outcome::Preempted { step: done, signal: stop.unwrap_or(libc::SIGTERM) });
            }
        }
    }
    bar.finish_and_clear();
    let train_secs = t_run.elapsed().as_secs_f64();

    // ---- 6. Export (rank 0) and evaluation (all ranks, sharded) ----------------------------
    if lead {
        super::export::export(&task, cfg, &run_dir.join("model"))?;
        crate::atomic::write_json(
            &run_dir.join("train.json"),
            &serde_json::json!({"steps": total, "resumed_at": start, "world_size": world.size,
                "global_batch": global_batch, "train_seconds": train_secs, "grdr_version": crate::VERSION}),
        )?;
    }
    comm.barrier()?;
    let metrics = if cfg.eval.at_end {
        super::evaluate::evaluate(comm, &task, &ds, docids.as_ref(), cfg, device, &run_dir.join("eval"))?
    } else {
        None
    };
    Ok(Outcome::Finished { steps: total, metrics })
}

/// Loss and throughput since the last log line.
#[derive(Debug)]
struct Interval {
    loss_sum: f64,
    steps: u64,
    samples: u64,
    tokens: u64,
    start: Instant,
}

impl Default for Interval {
    fn default() -> Self {
        Interval { loss_sum: 0.0, steps: 0, samples: 0, tokens: 0, start: Instant::now() }
    }
}

impl Interval {
    fn add(&mut self, loss: f64, samples: u64, tokens: u64) {
        self.loss_sum += loss;
        self.steps += 1;
        self.samples += samples;
        self.tokens += tokens;
    }

    fn record(&self, step: u64, epoch: f64, last_loss: f64, lr: f64, grad_norm: f64) -> Record {
        // Wall time since the previous log line (the first interval includes start-up).
        let secs = self.start.elapsed().as_secs_f64();
        let per = |n: u64| if secs > 0.0 { n as f64 / secs } else { f64::NAN };
        Record {
            step,
            epoch,
            loss: self.loss_sum / self.steps.max(1) as f64,
            last_loss,
            lr,
            grad_norm,
            samples_per_s: per(self.samples),
            tokens_per_s: per(self.tokens),
            rss_mib: metrics_log::rss_mib(),
        }
    }
}

fn prepare_run_dir(run_dir: &Path, opts: &RunOptions) -> Result<()> {
    let used = checkpoint::dir(run_dir).exists() || run_dir.join("metrics.jsonl").exists();
    if used && !opts.resume {
        if !opts.overwrite {
            return Err(Error::usage(
                "--output",
                format!(
                    "{} holds a run (pass --resume to continue it or --overwrite to replace it)",
                    run_dir.display()
                ),
            ));
        }
        for p in ["checkpoints", "model", "eval"] {
            let _ = std::fs::remove_dir_all(run_dir.join(p));
        }
        let _ = std::fs::remove_file(run_dir.join("metrics.jsonl"));
    }
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, "cannot create the run directory", e))
}

/// A checkpoint continues only the run it came from: same data, model, docids, optimizer
/// settings and global batch (the length of the run, logging and evaluation may change).
fn check_resumable(cfg: &RunConfig, state: &TrainState, ckpt: &Path, world_size: usize) -> Result<()> {
    let path = ckpt.join(checkpoint::CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, "cannot read", e))?;
    let saved = RunConfig::from_toml(&text, &path.display().to_string(), &[])?;
    let mut same = cfg.clone();
    same.train.max_steps = saved.train.max_steps;
    same.train.epochs = saved.train.epochs;
    same.train.checkpoint_every = saved.train.checkpoint_every;
    same.train.keep_checkpoints = saved.train.keep_checkpoints;
    same.train.threads = saved.train.threads;
    same.train.device = saved.train.device.clone();
    same.train.batch_size = saved.train.batch_size;
    same.log = saved.log.clone();
    same.eval = saved.eval.clone();
    same.dist = saved.dist.clone();
    for (name, a, b) in [
        ("data", toml::to_string(&same.data), toml::to_string(&saved.data)),
        ("model", toml::to_string(&same.model), toml::to_string(&saved.model)),
        ("docids", toml::to_string(&same.docids), toml::to_string(&saved.docids)),
        ("train", toml::to_string(&same.train), toml::to_string(&saved.train)),
    ] {
        if a.ok() != b.ok() {
            return Err(Error::usage(
                format!("[{name}]"),
                format!("differs from the config of checkpoint {} (resume the run it belongs to)", ckpt.display()),
            ));
        }
    }
    let global = world_size * cfg.train.batch_size * cfg.train.grad_accum;
    if global != state.global_batch {
        return Err(Error::usage(
            "train.batch_size",
            format!(
                "global batch {global} (ranks × batch × accum), the checkpoint was trained with {}",
                state.global_batch
            ),
        ));
    }
    Ok(())
}

/// BM25 hard negatives per training query: the coordinator searches (top
/// `hard_negative_depth`, positives removed) and broadcasts the lists.
fn mine_hard_negatives(
    comm: &dyn Comm,
    ds: &Dataset,
    pairs: &[(u32, u32)],
    cfg: &RunConfig,
) -> Result<std::collections::HashMap<u32, Vec<u32>>> {
    use std::collections::{BTreeMap, HashMap, HashSet};
    if cfg.data.hard_negatives == 0 {
        return Ok(HashMap::new());
    }
    let mut bytes = Vec::new();
    if comm.world().is_coordinator() {
        let docs = ds.docs()?;
        let queries = ds.queries()?;
        let mut positives: BTreeMap<u32, HashSet<u32>> = BTreeMap::new();
        for &(q, d) in pairs {
            positives.entry(q).or_default().insert(d);
        }
        let t0 = Instant::now();
        let index = crate::search::bm25::Bm25Index::build(&docs)?;
        let qs: Vec<u32> = positives.keys().copied().collect();
        let texts: Vec<&str> = qs.iter().map(|&q| queries[q as usize].text.as_str()).collect();
        let depth = cfg.data.hard_negative_depth + positives.values().map(|p| p.len()).max().unwrap_or(0);
        let hits = index.search_all(&texts, depth)?;
        let mined: BTreeMap<u32, Vec<u32>> = qs
            .iter()
            .zip(hits)
            .map(|(q, hs)| {
                let pos = &positives[q];
                let list = hs
                    .iter()
                    .map(|h| h.doc_idx as u32)
                    .filter(|d| !pos.contains(d))
                    .take(cfg.data.hard_negative_depth)
                    .collect();
                (*q, list)
            })
            .collect();
        tracing::info!("BM25 hard negatives for {} queries in {:.1}s", mined.len(), t0.elapsed().as_secs_f64());
        bytes = serde_json::to_vec(&mined).expect("serialises");
    }
    comm.broadcast_bytes(&mut bytes, 0)?;
    let mined: BTreeMap<u32, Vec<u32>> =
        serde_json::from_slice(&bytes).map_err(|e| Error::dist(comm.world().rank, format!("hard negatives: {e}")))?;
    Ok(mined.into_iter().collect())
}
