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

use super::bank::Bank;
use super::checkpoint::{self, TrainState};
use super::corpus_softmax::CorpusSide;
use super::metrics_log::{self, MetricsLog, Record};
use super::objective::{generative_loss, pair_forward_backward, LossSettings, PairStep};
use super::optim::{AdamW, AdamWConfig};
use super::run_dir;
use super::schedule::Schedule;
use super::signal;
use super::tensorboard::TbLog;
use crate::config::{DecoderKind, IndexView, ModelKind, NegativeBank, Precision, RunConfig};
use crate::data::batch::{Batcher, DocStore};
use crate::data::docid::DocidTable;
use crate::data::examples::{training_pairs, Sampler, Source, Targets};
use crate::data::shard::{self, tag, RowGroup, SplitMix64};
use crate::data::text::TextTokenizer;
use crate::data::Dataset;
use crate::dist::describe::WorldInfo;
use crate::dist::{self, Comm, Ddp, DdpOptions, ReduceOp};
use crate::error::{Error, Result};
use crate::eval::run_eval::EvalSummary;
use crate::model::precision::bf16_autocast;
use crate::model::task::{Net, Task};

/// How a run ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Finished {
        steps: u64,
        /// Rank 0's end-of-run evaluation (none on other ranks or with `eval.at_end = false`).
        eval: Option<EvalSummary>,
    },
    /// Stopped by SIGTERM/SIGUSR1 after checkpointing `step` (exit with
    /// [`signal::PREEMPTED_EXIT_CODE`]).
    Preempted { step: u64, signal: i32 },
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
    /// Recompute the dataset's checksums before training (sizes are always checked).
    pub verify: bool,
}

/// Runs the job: joins the world, trains, and on any error ends every rank.
pub fn train(cfg: &RunConfig, opts: &RunOptions) -> Result<Outcome> {
    let _threads = cfg.train.threads.map(|n| crate::parallel::IntraOpThreads::set(n as i32));
    let backend: dist::Backend = cfg.dist.backend.parse()?;
    // The local rank is known before MPI starts only from the launcher's environment.
    let local_rank = ["OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(0);
    let device = crate::device::parse_device(&cfg.train.device, local_rank, "train.device")?;
    let comm = dist::init(backend, device)?;
    let result = run(&*comm, cfg, opts, device);
    if result.is_err() && comm.world().is_coordinator() {
        // A replacement that failed before its first checkpoint gives the old run back.
        run_dir::restore_replaced(&opts.run_dir);
    }
    dist::exit_on_error(&*comm, result)
}

/// The run, phase by phase (every rank; rank 0 alone writes).
fn run(comm: &dyn Comm, cfg: &RunConfig, opts: &RunOptions, device: Device) -> Result<Outcome> {
    // Preemption is honoured from start-up to the last step; afterwards (export, evaluation)
    // signals take their default action again.
    let handlers = signal::install();
    let resume = check_run_dir(comm, cfg, opts)?;
    let mut inputs = Inputs::load(comm, cfg, opts.verify)?;
    let mut trainee = Trainee::build(comm, cfg, &mut inputs, resume.checkpoint.as_deref(), device)?;
    let plan = Plan::new(cfg, comm.world().size, &trainee.sampler, &resume, device)?;
    // Config, data, device and model are known good: only now is the run directory
    // written (an overwritten run is moved aside until this one has a checkpoint).
    let world = dist::describe::describe(comm, device)?;
    claim_run_dir(comm, cfg, opts, &world)?;
    log_start(comm, cfg, &trainee, &plan, &resume);
    let t_loop = Instant::now();
    if let Some(preempted) = step_loop(comm, cfg, &opts.run_dir, &mut trainee, &inputs, &plan, &resume)? {
        return Ok(preempted);
    }
    let train_seconds = t_loop.elapsed().as_secs_f64();
    drop(handlers);
    finish(comm, cfg, &opts.run_dir, &trainee, &inputs, &plan, train_seconds, device)
}

// ---- 1. Run directory and resume point ------------------------------------------------------

/// Where the run continues from: the newest checkpoint and its verified state, if resuming.
struct Resume {
    checkpoint: Option<PathBuf>,
    state: Option<TrainState>,
}

impl Resume {
    fn start_step(&self) -> u64 {
        self.state.as_ref().map_or(0, |s| s.step)
    }
}

/// Refuses a run directory this invocation may not use and verifies the checkpoint it would
/// resume from. Writes nothing: a refused `--resume` leaves the run as it was.
fn check_run_dir(comm: &dyn Comm, cfg: &RunConfig, opts: &RunOptions) -> Result<Resume> {
    let run_dir = opts.run_dir.as_path();
    if comm.world().is_coordinator() {
        run_dir::check(run_dir, opts.resume, opts.overwrite)?;
    }
    comm.barrier()?;
    let checkpoint = if opts.resume { checkpoint::latest(run_dir) } else { None };
    let state = match &checkpoint {
        Some(ckpt) => {
            let state = checkpoint::verify(ckpt)?;
            check_resumable(cfg, &state, ckpt, comm.world().size)?;
            Some(state)
        }
        None => None,
    };
    Ok(Resume { checkpoint, state })
}

/// Rank 0 makes the run directory this run's: an `--overwrite`n run moves aside (kept until
/// this run's first checkpoint), and the resolved config and the world it runs on
/// (`world.json`) are written.
fn claim_run_dir(comm: &dyn Comm, cfg: &RunConfig, opts: &RunOptions, world: &WorldInfo) -> Result<()> {
    if comm.world().is_coordinator() {
        let run_dir = opts.run_dir.as_path();
        if opts.overwrite && !opts.resume {
            run_dir::move_aside(run_dir)?;
        }
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, "cannot create the run directory", e))?;
        cfg.write(&run_dir.join("config.toml"))?;
        crate::atomic::write_json(&run_dir.join("world.json"), world)?;
    }
    comm.barrier()
}

// ---- 2. Data: the row-group plan (rank 0 reads the footer), examples, docids -----------------

struct Inputs {
    ds: Dataset,
    groups: Vec<RowGroup>,
    /// (query_idx, doc_idx) training pairs of `data.train_split` (moved into the sampler).
    pairs: Vec<(u32, u32)>,
    /// Every query's text, by query_idx (moved into the batcher).
    queries: Vec<String>,
    docids: Option<DocidTable>,
}

impl Inputs {
    fn load(comm: &dyn Comm, cfg: &RunConfig, verify: bool) -> Result<Inputs> {
        let ds = Dataset::open(&cfg.data.path).map_err(|e| match e {
            Error::Usage { message, .. } => Error::usage("data.path", message),
            other => other,
        })?;
        if verify {
            ds.verify()?;
        }
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
        Ok(Inputs { ds, groups, pairs, queries, docids })
    }
}

// ---- 3. Model, optimizer, DDP (rank 0's initial values broadcast to every rank), batches -----

struct Trainee<'c> {
    task: Task,
    /// DR's negative bank (`train.negative_bank`), its vectors in the task's VarStore.
    bank: Option<Bank>,
    /// `negative_bank = "corpus"`: this rank's shard of the corpus, the document side of
    /// every micro-batch.
    corpus: Option<CorpusSide>,
    optimizer: AdamW,
    ddp: Ddp<'c>,
    sampler: Sampler,
    batcher: Batcher,
}

impl<'c> Trainee<'c> {
    fn build(
        comm: &'c dyn Comm,
        cfg: &RunConfig,
        inputs: &mut Inputs,
        checkpoint: Option<&Path>,
        device: Device,
    ) -> Result<Trainee<'c>> {
        let t = &cfg.train;
        tch::manual_seed(t.seed as i64);
        let task = Task::build(&cfg.model, device, inputs.docids.as_ref())?;
        // Before a checkpoint is loaded: the checkpoint holds the bank it had.
        let bank = match t.negative_bank {
            NegativeBank::None | NegativeBank::Corpus => None,
            mode => {
                let n_docs = inputs.groups.iter().map(|g| g.rows as usize).sum();
                Some(Bank::new(&task, n_docs, &inputs.pairs, mode, t.num_negatives, t.bank_refresh_steps)?)
            }
        };
        let eval_doc_len = cfg.eval.doc_max_len.unwrap_or(cfg.data.doc_max_len);
        task.check_lengths(&[
            ("data.query_max_len", cfg.data.query_max_len),
            ("data.doc_max_len", cfg.data.doc_max_len),
            ("eval.doc_max_len", eval_doc_len),
        ])?;
        let mut optimizer = AdamW::new(
            task.named_parameters(),
            AdamWConfig { beta1: t.beta1, beta2: t.beta2, eps: t.eps, weight_decay: t.weight_decay },
        );
        if let Some(ckpt) = checkpoint {
            checkpoint::load_model(ckpt, &task.vs)?;
            optimizer.load(&ckpt.join(checkpoint::OPTIMIZER_FILE))?;
        }
        let ddp = Ddp::new(comm, task.named_parameters(), DdpOptions { bucket_bytes: cfg.dist.bucket_mb << 20 })?;
        // The batcher and sampler own these from here on (no second copy at start-up).
        let pairs = std::mem::take(&mut inputs.pairs);
        let source = match cfg.model.kind {
            ModelKind::Dual | ModelKind::Colbert => {
                let hard = mine_hard_negatives(comm, &inputs.ds, &pairs, cfg)?;
                Source::Pairs { pairs, hard, hard_negatives: cfg.data.hard_negatives }
            }
            ModelKind::Generative => Source::Generative {
                pairs,
                doc_groups: inputs.groups.clone(),
                window: cfg.data.shuffle_window_row_groups,
                retrieval_fraction: cfg.data.retrieval_fraction,
                targets: Targets { rows_by_doc: inputs.docids.as_ref().expect("generative has docids").rows_by_doc() },
            },
        };
        let sampler = Sampler::new(source, t.seed);
        let tokenizer = |max_len| TextTokenizer::from_path(&task.tokenizer_json, max_len);
        let mut batcher = Batcher {
            docs: DocStore::new(&inputs.ds.docs_path(), inputs.groups.clone(), cfg.data.doc_cache_row_groups),
            queries: std::mem::take(&mut inputs.queries),
            query_tok: tokenizer(cfg.data.query_max_len)?,
            doc_tok: tokenizer(cfg.data.doc_max_len)?,
            span_tok: match cfg.data.index_view {
                IndexView::Span => Some(tokenizer(1 << 20)?),
                IndexView::First => None,
            },
            targets: inputs.docids.as_ref().map(|d| task.targets(d)).transpose()?.unwrap_or_default(),
            device,
            seed: t.seed,
        };
        let corpus = match t.negative_bank {
            NegativeBank::Corpus => {
                let n_docs = inputs.groups.iter().map(|g| g.rows as usize).sum();
                Some(CorpusSide::new(comm, &mut batcher, n_docs)?)
            }
            _ => None,
        };
        Ok(Trainee { task, bank, corpus, optimizer, ddp, sampler, batcher })
    }
}

// ---- 4. Length of the run and the schedule ---------------------------------------------------

struct Plan {
    /// Examples per optimizer step over all ranks: ranks × batch × accumulation.
    global_batch: usize,
    /// Epoch examples one step consumes.
    per_step: u64,
    /// Steps of the whole run.
    total: u64,
    /// The first step this invocation runs (the resumed step, else 0).
    start: u64,
    schedule: Schedule,
    losses: LossSettings,
    /// bf16 autocast (CUDA, or a CPU with native bf16).
    autocast: bool,
    device: Device,
    /// NP decoding's refresh interval in epochs (0: BASE, once at step 0).
    np_refresh: Option<f64>,
}

impl Plan {
    fn new(cfg: &RunConfig, world_size: usize, sampler: &Sampler, resume: &Resume, device: Device) -> Result<Plan> {
        let t = &cfg.train;
        let global_batch = world_size * t.batch_size * t.grad_accum;
        let per_step = sampler.epoch_examples_per_batch(global_batch).max(1);
        let total = if t.max_steps > 0 {
            t.max_steps
        } else {
            ((t.epochs * sampler.epoch_len() as f64) / per_step as f64).ceil().max(1.0) as u64
        };
        let warmup = t.warmup_steps.unwrap_or((total as f64 * 0.1).round() as u64);
        // bf16 is autocast: on CUDA, and on CPUs with native bf16 (AVX512-BF16, AMX); on
        // others it is refused, since training in f32 while the config says bf16 would
        // record a precision never used.
        let autocast = t.precision == Precision::Bf16;
        if autocast && device.is_cuda() {
            crate::model::precision::use_bf16_autocast();
        } else if autocast {
            crate::model::precision::check_cpu_bf16("train.precision")?;
        }
        Ok(Plan {
            global_batch,
            per_step,
            total,
            start: resume.start_step(),
            schedule: Schedule { peak: t.lr, warmup, total, decay: t.decay, min_ratio: t.min_lr_ratio },
            losses: LossSettings {
                temperature: t.temperature,
                num_negatives: t.num_negatives,
                seed: t.seed,
                length_sorted: t.length_sorted,
                loss: t.loss,
                grad_cache_chunk: t.grad_cache_chunk,
            },
            autocast,
            device,
            np_refresh: (cfg.model.decoder == DecoderKind::Np).then_some(cfg.model.np_refresh_epochs),
        })
    }

    fn epoch(&self, done: u64, sampler: &Sampler) -> f64 {
        (done * self.per_step) as f64 / sampler.epoch_len() as f64
    }

    /// Whether NP's D is (re)computed before `step`: at step 0, and with ASYNC whenever the
    /// epoch count crosses a multiple of `np_refresh_epochs`.
    fn np_refresh_due(&self, step: u64, sampler: &Sampler) -> bool {
        match self.np_refresh {
            None => false,
            Some(_) if step == 0 => true,
            Some(r) if r > 0.0 => (self.epoch(step, sampler) / r).floor() > (self.epoch(step - 1, sampler) / r).floor(),
            Some(_) => false,
        }
    }
}

fn log_start(comm: &dyn Comm, cfg: &RunConfig, trainee: &Trainee, plan: &Plan, resume: &Resume) {
    let world = comm.world();
    if !world.is_coordinator() {
        return;
    }
    let t = &cfg.train;
    let (decayed, plain) = trainee.optimizer.group_sizes();
    tracing::info!(
        "{:?}: {} ranks × batch {} × accum {} = {} examples/step, {} steps (warm-up {}), \
         epoch = {} examples; {} parameters ({decayed} tensors decayed, {plain} not); device {:?}{}",
        cfg.model.kind,
        world.size,
        t.batch_size,
        t.grad_accum,
        plan.global_batch,
        plan.total,
        plan.schedule.warmup,
        trainee.sampler.epoch_len(),
        trainee.ddp.parameters().iter().map(|p| p.numel()).sum::<usize>(),
        trainee.batcher.device,
        resume.checkpoint.as_ref().map(|p| format!("; resumed from {}", p.display())).unwrap_or_default(),
    );
}

// ---- 5. The step loop ------------------------------------------------------------------------

/// What the ranks agree on after a step's backward passes, in one small all-reduce: the
/// global loss, tokens, whether any rank saw a non-finite loss, whether any was signalled.
struct StepAgreement {
    /// Σ over ranks of each rank's finite loss part: the global loss of the step.
    loss: f64,
    tokens: u64,
    non_finite_ranks: u64,
    stop_requested: bool,
}

impl StepAgreement {
    fn reduce(comm: &dyn Comm, local_loss: f64, tokens: i64, stop: Option<i32>) -> Result<StepAgreement> {
        let finite = local_loss.is_finite();
        let mut v = [
            if finite { local_loss } else { 0.0 },
            tokens as f64,
            if finite { 0.0 } else { 1.0 },
            if stop.is_some() { 1.0 } else { 0.0 },
        ];
        comm.all_reduce_f64(&mut v, ReduceOp::Sum)?;
        Ok(StepAgreement { loss: v[0], tokens: v[1] as u64, non_finite_ranks: v[2] as u64, stop_requested: v[3] > 0.0 })
    }
}

/// Runs steps `plan.start..plan.total`. Returns the preemption outcome when the ranks agreed
/// to stop, else `None` after the last step.
fn step_loop(
    comm: &dyn Comm,
    cfg: &RunConfig,
    run_dir: &Path,
    trainee: &mut Trainee,
    inputs: &Inputs,
    plan: &Plan,
    resume: &Resume,
) -> Result<Option<Outcome>> {
    let world = comm.world();
    let lead = world.is_coordinator();
    let t = &cfg.train;
    let mut log = if lead { Some(MetricsLog::open(run_dir, resume.state.as_ref().map(|s| s.step))?) } else { None };
    let mut tb = match &log {
        Some(log) if cfg.log.tensorboard => Some(TbLog::open(run_dir, &cfg.to_toml(), &log.kept)?),
        _ => None,
    };
    let bar =
        if lead && cfg.log.progress { crate::progress::bar(plan.total, "train") } else { crate::progress::bar(0, "") };
    bar.set_position(plan.start);
    let mut acc = Interval::default();
    if let Some(s) = &resume.state {
        acc.loss_sum = s.interval_loss_sum;
        acc.steps = s.interval_steps;
    }
    for step in plan.start..plan.total {
        // 5a. NP decoding: D from the model's encoder, at the start (BASE) and every
        //     `np_refresh_epochs` (ASYNC); a resumed run has the D of its checkpoint.
        if let (true, Some(docids)) = (plan.np_refresh_due(step, &trainee.sampler), &inputs.docids) {
            let t0 = Instant::now();
            trainee.task.refresh_np(docids);
            trainee.batcher.targets = trainee.task.targets(docids)?;
            if lead {
                bar.suspend(|| tracing::info!("NP: D re-encoded at step {step} in {:.1}s", t0.elapsed().as_secs_f64()));
            }
        }

        // 5a'. DR's negative bank: every document re-encoded at step 0 and every
        //      `bank_refresh_steps`; a resumed run has the bank of its checkpoint.
        if let Some(bank) = trainee.bank.as_ref().filter(|b| b.due(step)) {
            let t0 = Instant::now();
            bank.refresh(comm, &trainee.task, &mut trainee.batcher)?;
            if lead {
                bar.suspend(|| {
                    tracing::info!("negative bank: re-encoded at step {step} in {:.1}s", t0.elapsed().as_secs_f64())
                });
            }
        }

        // 5b. This step's randomness (dropout) and learning rate.
        tch::manual_seed(SplitMix64::torch_seed(&[t.seed, tag::TORCH, world.rank as u64, step]));
        let lr = plan.schedule.lr(step);

        // 5c. Forward and backward over this rank's micro-batches of the global batch.
        let (local_loss, tokens) = forward_backward(comm, cfg, trainee, plan, step)?;

        // 5d. One small all-reduce: the global loss, tokens, non-finite flags, preemption.
        //     The loss is the step's only device→host copy.
        let stop = signal::received();
        let agreed = StepAgreement::reduce(comm, local_loss, tokens, stop)?;
        if agreed.non_finite_ranks > 0 {
            let flags = comm.all_gather_bytes(&[u8::from(!local_loss.is_finite())])?;
            let ranks: Vec<usize> = (0..flags.len()).filter(|&r| flags[r][0] == 1).collect();
            return Err(Error::dist(
                world.rank,
                format!("non-finite loss at step {} on rank(s) {ranks:?}; stopped before the optimizer step", step + 1),
            ));
        }

        // 5e. Gradients: average over ranks, clip by the global norm, update.
        let grad_norm = optimizer_step(cfg, trainee, step, lr)?;
        let done = step + 1;
        acc.add(agreed.loss, plan.global_batch as u64, agreed.tokens);
        bar.inc(1);

        // 5f. Log (rank 0), one line per interval.
        let epoch = plan.epoch(done, &trainee.sampler);
        if done % cfg.log.interval == 0 || done == plan.total {
            let record = acc.record(done, epoch, agreed.loss, lr, grad_norm);
            if let Some(log) = log.as_mut() {
                log.write(&record)?;
                if let Some(tb) = tb.as_mut() {
                    tb.write(&record)?;
                }
                bar.suspend(|| tracing::info!("{}", metrics_log::format_line(&record, plan.total)));
            }
            acc = Interval::default();
        }

        // 5g. Checkpoint on schedule, at the end, or when asked to stop (every rank finished
        //     this step: the agreement above made them stop at the same one).
        let due = t.checkpoint_every > 0 && done % t.checkpoint_every == 0;
        if due || agreed.stop_requested || done == plan.total {
            let reason = match (agreed.stop_requested, stop) {
                (true, Some(s)) => format!("preempted ({})", signal::name(s)),
                (true, None) => "preempted (another rank was signalled)".to_string(),
                _ if done == plan.total => "final".into(),
                _ => "interval".into(),
            };
            let saved = save_checkpoint(comm, cfg, run_dir, trainee, plan, &acc, done, epoch, &reason)?;
            if let Some(path) = saved {
                bar.suspend(|| tracing::info!("checkpoint {} ({reason})", path.display()));
            }
            if agreed.stop_requested {
                bar.finish_and_clear();
                return Ok(Some(Outcome::Preempted { step: done, signal: stop.unwrap_or(libc::SIGTERM) }));
            }
        }
    }
    bar.finish_and_clear();
    Ok(None)
}

/// Forward and backward, micro-batch by micro-batch (no communication but the gathers
/// inside the loss; gradients are reduced once, after). Returns (this rank's part of the
/// global loss, tokens it processed).
fn forward_backward(
    comm: &dyn Comm,
    cfg: &RunConfig,
    trainee: &mut Trainee,
    plan: &Plan,
    step: u64,
) -> Result<(f64, i64)> {
    let world = comm.world();
    let t = &cfg.train;
    let micro = trainee.sampler.rank_batches(step, world.rank, world.size, t.batch_size, t.grad_accum);
    let task = &trainee.task;
    let mut loss_sum = Tensor::zeros([], (tch::Kind::Double, trainee.batcher.device)); // Σ of this rank's loss parts
    let mut tokens = 0i64;
    match &task.net {
        Net::Generative { .. } => {
            let batches: Vec<_> = micro
                .iter()
                .enumerate()
                .map(|(a, ex)| {
                    let slot0 = (world.rank * t.batch_size + a * world.size * t.batch_size) as u64;
                    trainee.batcher.generative(ex, step, slot0)
                })
                .collect::<Result<_>>()?;
            // GR's loss is normalised by the token count of the whole global batch.
            let local: i64 = batches.iter().map(|b| b.target_tokens).sum();
            let global_tokens = dist::gather::global_count(comm, local)?;
            for b in &batches {
                tokens += b.tokens + b.target_tokens;
                let (share, part) = bf16_autocast(plan.device, plan.autocast, || {
                    generative_loss(task, comm, b, global_tokens, plan.losses)
                })?;
                share.backward();
                loss_sum += part.to_kind(tch::Kind::Double);
            }
        }
        Net::Dual(_) | Net::Colbert(_) => {
            for (a, ex) in micro.iter().enumerate() {
                let b = trainee.batcher.pairs(ex)?;
                tokens += b.tokens;
                // Every rank holds the global loss; each back-propagates its own slice,
                // scaled so DDP's mean of gradients is the global gradient.
                let scale = world.backward_scale() / t.grad_accum as f64;
                let p = PairStep {
                    comm,
                    batch: &b,
                    settings: plan.losses,
                    bank: trainee.bank.as_ref(),
                    corpus: trainee.corpus.as_ref(),
                    step,
                    micro: a as u64,
                    device: plan.device,
                    autocast: plan.autocast,
                };
                let loss = pair_forward_backward(task, &p, scale)?;
                loss_sum += loss.to_kind(tch::Kind::Double) / (t.grad_accum * world.size) as f64;
                // detached
            }
        }
    }
    Ok((loss_sum.double_value(&[]), tokens))
}

/// Averages gradients over ranks, clips them by the global norm and updates the parameters.
/// Returns the gradient norm before clipping (NaN on steps that neither clip nor log).
fn optimizer_step(cfg: &RunConfig, trainee: &mut Trainee, step: u64, lr: f64) -> Result<f64> {
    let t = &cfg.train;
    trainee.ddp.sync_gradients()?;
    let grad_norm = if t.max_grad_norm > 0.0 {
        trainee.ddp.clip_grad_norm(t.max_grad_norm)?
    } else if (step + 1).is_multiple_of(cfg.log.interval) {
        super::optim::grad_norm(trainee.ddp.parameters())
    } else {
        f64::NAN
    };
    trainee.optimizer.step(lr);
    trainee.optimizer.zero_grad();
    Ok(grad_norm)
}

/// Checks that every rank holds the same parameters, then rank 0 writes `step-N/`. Returns
/// the checkpoint's path on rank 0.
#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    comm: &dyn Comm,
    cfg: &RunConfig,
    run_dir: &Path,
    trainee: &Trainee,
    plan: &Plan,
    acc: &Interval,
    done: u64,
    epoch: f64,
    reason: &str,
) -> Result<Option<PathBuf>> {
    let world = comm.world();
    trainee.ddp.check_consistency()?;
    let mut saved = None;
    if world.is_coordinator() {
        let t = &cfg.train;
        let state = TrainState {
            format: checkpoint::FORMAT.into(),
            grdr_version: crate::VERSION.into(),
            step: done,
            epoch,
            examples_seen: done * plan.per_step,
            rng: "torch re-seeded per step from SplitMix64(seed, 7, rank, step); data draws keyed by (seed, step)"
                .into(),
            seed: t.seed,
            world_size: world.size,
            global_batch: plan.global_batch,
            reason: reason.to_string(),
            interval_loss_sum: acc.loss_sum,
            interval_steps: acc.steps,
            files: Default::default(),
        };
        let task = &trainee.task;
        saved =
            Some(checkpoint::save(run_dir, &task.vs, &trainee.optimizer, &cfg.to_toml(), state, t.keep_checkpoints)?);
        // This run can now be resumed: the run it replaced is no longer needed.
        run_dir::discard_replaced(run_dir)?;
    }
    comm.barrier()?;
    Ok(saved)
}

// ---- 6. Export (rank 0) and evaluation (all ranks, sharded) -----------------------------------

#[allow(clippy::too_many_arguments)]
fn finish(
    comm: &dyn Comm,
    cfg: &RunConfig,
    run_dir: &Path,
    trainee: &Trainee,
    inputs: &Inputs,
    plan: &Plan,
    train_seconds: f64,
    device: Device,
) -> Result<Outcome> {
    let world = comm.world();
    if world.is_coordinator() {
        super::export::export(&trainee.task, cfg, &run_dir.join("model"))?;
        // Trained parameters (the model-size axis of a sweep is read against this).
        let parameters: usize = trainee.ddp.parameters().iter().map(|p| p.numel()).sum();
        crate::atomic::write_json(
            &run_dir.join("train.json"),
            &serde_json::json!({"steps": plan.total, "resumed_at": plan.start, "world_size": world.size,
                "global_batch": plan.global_batch, "parameters": parameters, "train_seconds": train_seconds,
                "grdr_version": crate::VERSION}),
        )?;
    }
    comm.barrier()?;
    let eval = if cfg.eval.at_end {
        let out = run_dir.join("eval");
        super::evaluate::evaluate(comm, &trainee.task, &inputs.ds, inputs.docids.as_ref(), cfg, device, &out)?
    } else {
        None
    };
    if world.is_coordinator() && eval.is_some() {
        log_eval_to_tensorboard(run_dir, plan.total)?;
    }
    Ok(Outcome::Finished { steps: plan.total, eval })
}

/// The numbers of `RUNDIR/eval/metrics.json` as `eval/<name>` scalars at the last step.
fn log_eval_to_tensorboard(run_dir: &Path, step: u64) -> Result<()> {
    let Some(mut tb) = TbLog::reopen(run_dir)? else { return Ok(()) };
    let path = run_dir.join("eval").join("metrics.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, "cannot read", e))?;
    let metrics: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| Error::input(&path, crate::error::Location::File, "metrics", e.to_string()))?;
    let numbers: Vec<(String, f64)> = metrics.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect();
    tb.write_eval(step, &numbers)
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
            wall_time: super::tensorboard::unix_time(),
        }
    }
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
