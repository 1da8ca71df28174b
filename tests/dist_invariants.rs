//! N ranks × batch B ≡ 1 rank × batch N·B. Same loss and the
//! same (DDP-averaged) gradients, ≤ 1e-5 relative, for
//!   (a) single-vector InfoNCE with cross-rank (and hard) negatives,
//!   (b) ColBERT MaxSim contrastive loss over the padded token gather,
//!   (c) GR token NLL with uneven token counts per rank (global normalisation);
//! and identical parameters on every rank, equal to the one-process run, after 5 AdamW
//! steps with gradient accumulation and global-norm clipping (DR and GR).
//! The one-process reference runs in this test process (a world of one, no MPI); the
//! N-rank runs go through launcher/grdr-launch (see dist_common).
mod dist_common;

use grdr::dist::gather::{
    all_gather_padded_with_grad, all_gather_with_grad, global_count, global_mean_share, global_value_of_shares,
};
use grdr::dist::{self, Backend, Comm, Ddp, DdpOptions, LocalComm, World};
use grdr::model::colbert::{Alignment, LateInteraction};
use grdr::train::loss;
use tch::{nn, nn::Module, nn::OptimizerConfig, Device, Kind, Tensor};

const TOL: f64 = 1e-5;
const CPU: Device = Device::Cpu;

// ---------------------------------------------------------------------------------------
// Tiny models built with tch::nn (the real encoders live in src/model and know nothing of
// distribution either).

/// Dense encoder: features (B, F) → embedding (B, D).
fn mlp(p: &nn::Path) -> impl Module {
    nn::seq().add(nn::linear(p / "l1", 12, 16, Default::default())).add_fn(|x| x.tanh()).add(nn::linear(
        p / "l2",
        16,
        8,
        Default::default(),
    ))
}

/// Token encoder: ids (B, L) → unit-norm token embeddings (B, L, 6), ColBERT style.
fn token_encoder(p: &nn::Path) -> impl Module {
    nn::seq()
        .add(nn::embedding(p / "emb", 40, 10, Default::default()))
        .add(nn::linear(p / "proj", 10, 6, Default::default()))
        .add_fn(|x| x / x.norm_scalaropt_dim(2, [-1].as_slice(), true))
}

/// Toy generative model: ids (B, T) → logits (B, T, V) over a 30-token vocabulary.
fn lm(p: &nn::Path) -> impl Module {
    nn::seq().add(nn::embedding(p / "emb", 30, 8, Default::default())).add_fn(|x| x.tanh()).add(nn::linear(
        p / "head",
        8,
        30,
        Default::default(),
    ))
}

/// Parameters are initialised from a rank-dependent seed; DDP's broadcast must make every
/// rank equal to rank 0, whose seed is the one-process run's.
fn init_seed(world: World) -> i64 {
    1000 + world.rank as i64
}

/// This rank's rows of a global batch split by `sizes` (one entry per rank, or one entry
/// for a world of one that takes everything).
fn my_rows(world: World, sizes: &[i64]) -> (i64, i64) {
    if world.size == 1 {
        return (0, sizes.iter().sum());
    }
    assert_eq!(sizes.len(), world.size);
    (sizes[..world.rank].iter().sum(), sizes[world.rank])
}

fn named_grads(ddp: &Ddp, names: &[String]) -> Vec<(String, Tensor)> {
    names.iter().zip(ddp.parameters()).map(|(n, p)| (format!("grad.{n}"), p.grad().copy())).collect()
}

fn named_params(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> =
        vs.variables().into_iter().map(|(n, t)| (format!("param.{n}"), t.detach().copy())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn sorted_names(vs: &nn::VarStore) -> Vec<String> {
    let mut n: Vec<String> = vs.variables().into_keys().collect();
    n.sort();
    n
}

fn scalar(name: &str, v: f64) -> (String, Tensor) {
    (name.to_string(), Tensor::from(v))
}

// ---------------------------------------------------------------------------------------
// (a) InfoNCE with cross-rank negatives: 4 queries per rank, each with its positive and
// one hard negative (group 2); every other document of the job is a negative.

const DR_B: i64 = 4;
const DR_GROUP: i64 = 2;
const DR_TAU: f64 = 0.1;

fn dr_data(world: World, seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let global = DR_B * 2; // the job's batch: 2 ranks × 4, or 1 rank × 8
    let xq = Tensor::randn([global, 12], (Kind::Float, CPU));
    let xd = Tensor::randn([global * DR_GROUP, 12], (Kind::Float, CPU));
    let (start, len) = my_rows(world, &[DR_B, DR_B]);
    (xq.narrow(0, start, len), xd.narrow(0, start * DR_GROUP, len * DR_GROUP))
}

/// The global InfoNCE loss of one (micro-)batch, with this rank's gradient path.
fn dr_loss(comm: &dyn Comm, enc: &impl Module, xq: &Tensor, xd: &Tensor) -> Tensor {
    let q = all_gather_with_grad(comm, &enc.forward(xq)).unwrap(); // (2B, D)
    let d = all_gather_with_grad(comm, &enc.forward(xd)).unwrap(); // (2B·group, D)
    loss::info_nce(&q, &d, DR_GROUP, DR_TAU)
}

fn scenario_infonce(comm: &dyn Comm) -> Vec<(String, Tensor)> {
    let world = comm.world();
    tch::manual_seed(init_seed(world));
    let vs = nn::VarStore::new(CPU);
    let enc = mlp(&vs.root());
    let mut ddp = Ddp::from_var_store(comm, &vs, DdpOptions::default()).unwrap();
    let (xq, xd) = dr_data(world, 7);
    let l = dr_loss(comm, &enc, &xq, &xd);
    (&l * world.backward_scale()).backward();
    ddp.sync_gradients().unwrap();
    let mut out = vec![scalar("loss", l.double_value(&[]))];
    out.extend(named_grads(&ddp, &sorted_names(&vs)));
    out
}

// ---------------------------------------------------------------------------------------
// (b) ColBERT MaxSim: token counts differ per rank (rank 0's sequences are short, rank 1
// holds the longest), so the gather pads to the job's longest sequence.

const CB_B: i64 = 3;
const CB_GROUP: i64 = 2;

/// Ids (rows, max_len) with lengths `lens` (pad id 0 beyond), and the mask.
fn ids_with_lengths(lens: &[i64], vocab: i64) -> (Tensor, Tensor) {
    let max_len = *lens.iter().max().unwrap();
    let ids = Tensor::randint_low(1, vocab, [lens.len() as i64, max_len], (Kind::Int64, CPU));
    let pos = Tensor::arange(max_len, (Kind::Int64, CPU)).unsqueeze(0);
    let mask = pos.lt_tensor(&Tensor::from_slice(lens).unsqueeze(1));
    (ids.where_self(&mask, &ids.zeros_like()), mask)
}

/// This rank's rows, trimmed to its own longest sequence (as a real batcher would).
fn local_rows(ids: &Tensor, mask: &Tensor, start: i64, len: i64) -> (Tensor, Tensor) {
    let (ids, mask) = (ids.narrow(0, start, len), mask.narrow(0, start, len));
    let longest = mask.to_kind(Kind::Int64).sum_dim_intlist([1].as_slice(), false, Kind::Int64).max().int64_value(&[]);
    (ids.narrow(1, 0, longest), mask.narrow(1, 0, longest))
}

fn scenario_colbert(comm: &dyn Comm) -> Vec<(String, Tensor)> {
    let world = comm.world();
    tch::manual_seed(init_seed(world));
    let vs = nn::VarStore::new(CPU);
    let enc = token_encoder(&vs.root());
    let mut ddp = Ddp::from_var_store(comm, &vs, DdpOptions::default()).unwrap();

    tch::manual_seed(11);
    let q_lens = [2i64, 3, 2, 4, 5, 3]; // rank 0: ≤ 3 tokens, rank 1: up to 5
    let d_lens = [3i64, 4, 2, 4, 3, 2, 7, 5, 6, 3, 4, 2];
    let (q_ids, q_mask) = ids_with_lengths(&q_lens, 40);
    let (d_ids, d_mask) = ids_with_lengths(&d_lens, 40);
    let (start, len) = my_rows(world, &[CB_B, CB_B]);
    let (q_ids, q_mask) = local_rows(&q_ids, &q_mask, start, len);
    let (d_ids, d_mask) = local_rows(&d_ids, &d_mask, start * CB_GROUP, len * CB_GROUP);

    let (q, qm) = all_gather_padded_with_grad(comm, &enc.forward(&q_ids), &q_mask).unwrap();
    let (d, dm) = all_gather_padded_with_grad(comm, &enc.forward(&d_ids), &d_mask).unwrap();
    // Every alignment (trained q←d included), its loss named; the gradients are the sum's.
    let scores = [
        LateInteraction { alignment: Alignment::QueryToDoc, normalized: false },
        LateInteraction { alignment: Alignment::DocToQuerySoft, normalized: true },
        LateInteraction { alignment: Alignment::DocToQueryMax, normalized: false },
    ];
    let losses: Vec<Tensor> =
        scores.iter().map(|&s| loss::colbert_info_nce(&q, &qm, &d, &dm, s, CB_GROUP, 0.2)).collect();
    (Tensor::stack(&losses, 0).sum(Kind::Float) * world.backward_scale()).backward();
    ddp.sync_gradients().unwrap();
    let mut out: Vec<(String, Tensor)> = scores
        .iter()
        .zip(&losses)
        .map(|(s, l)| scalar(&format!("loss {}", s.describe()), l.double_value(&[])))
        .collect();
    out.extend(named_grads(&ddp, &sorted_names(&vs)));
    out
}

// ---------------------------------------------------------------------------------------
// (c) GR token NLL, normalised by the job's token count: rank 0 holds 3 sequences, rank 1
// holds 5, of different lengths.

const GR_SPLIT: [i64; 2] = [3, 5];

/// (inputs, targets, mask) of this rank's share of global batch `seed`.
fn gr_data(world: World, seed: i64) -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(seed);
    let lens: Vec<i64> = (0..8).map(|i| 2 + (i * 5 + seed) % 6).collect();
    let (inputs, mask) = ids_with_lengths(&lens, 30);
    let targets = Tensor::randint_low(0, 30, inputs.size().as_slice(), (Kind::Int64, CPU));
    let targets = targets.where_self(&mask, &targets.full_like(-100));
    let (start, len) = my_rows(world, &GR_SPLIT);
    (inputs.narrow(0, start, len), targets.narrow(0, start, len), mask.narrow(0, start, len))
}

fn scenario_gr_nll(comm: &dyn Comm) -> Vec<(String, Tensor)> {
    let world = comm.world();
    tch::manual_seed(init_seed(world));
    let vs = nn::VarStore::new(CPU);
    let model = lm(&vs.root());
    let mut ddp = Ddp::from_var_store(comm, &vs, DdpOptions::default()).unwrap();
    let (inputs, targets, mask) = gr_data(world, 5);
    let tokens = global_count(comm, loss::token_count(&mask)).unwrap();
    let share = global_mean_share(world, &loss::token_nll_sum(&model.forward(&inputs), &targets, &mask), tokens);
    share.backward();
    ddp.sync_gradients().unwrap();
    let mut out = vec![scalar("loss", global_value_of_shares(comm, &share).unwrap()), scalar("tokens", tokens as f64)];
    out.extend(named_grads(&ddp, &sorted_names(&vs)));
    out
}

// ---------------------------------------------------------------------------------------
// (d) 5 AdamW steps, 2 accumulation micro-batches each, clipping at a norm the gradients
// exceed, tiny buckets (several all-reduces per sync).

const STEPS: i64 = 5;
const ACCUM: i64 = 2;
const MAX_NORM: f64 = 0.5;
const TINY_BUCKETS: DdpOptions = DdpOptions { bucket_bytes: 512 };

fn train_steps(comm: &dyn Comm, gr: bool) -> Vec<(String, Tensor)> {
    let world = comm.world();
    tch::manual_seed(init_seed(world));
    let vs = nn::VarStore::new(CPU);
    let (dr_model, gr_model) = (mlp(&(vs.root() / "dr")), lm(&(vs.root() / "gr")));
    // Only one model trains per scenario: freeze the other one's parameters out of DDP.
    let mut named: Vec<(String, Tensor)> =
        vs.variables().into_iter().filter(|(n, _)| n.starts_with(if gr { "gr." } else { "dr." })).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<String> = named.iter().map(|(n, _)| n.clone()).collect();
    let mut ddp = Ddp::new(comm, named, TINY_BUCKETS).unwrap();
    assert!(ddp.num_buckets() > 1, "the test wants several buckets");
    let mut opt = nn::AdamW::default().build(&vs, 1e-2).unwrap();

    let mut out = Vec::new();
    for step in 0..STEPS {
        opt.zero_grad();
        let before = ddp.stats();
        let collectives_before = comm.collectives_issued();
        let mut step_loss = 0.0;
        if gr {
            // Global normalisation over the whole step: count tokens of every micro-batch first.
            let batches: Vec<_> = (0..ACCUM).map(|k| gr_data(world, 100 + step * ACCUM + k)).collect();
            let local_tokens: i64 = batches.iter().map(|(_, _, m)| loss::token_count(m)).sum();
            let tokens = global_count(comm, local_tokens).unwrap();
            for (inputs, targets, mask) in &batches {
                let sum = loss::token_nll_sum(&gr_model.forward(inputs), targets, mask);
                let share = global_mean_share(world, &sum, tokens);
                share.backward();
                step_loss += global_value_of_shares(comm, &share).unwrap();
            }
        } else {
            for k in 0..ACCUM {
                let (xq, xd) = dr_data(world, 100 + step * ACCUM + k);
                let l = dr_loss(comm, &dr_model, &xq, &xd);
                (&l * (world.backward_scale() / ACCUM as f64)).backward();
                step_loss += l.double_value(&[]) / ACCUM as f64;
            }
        }
        // No gradient communication happened during the micro-steps.
        assert_eq!(ddp.stats(), before);
        ddp.sync_gradients().unwrap();
        assert_eq!(
            ddp.stats().bucket_all_reduces - before.bucket_all_reduces,
            if world.size > 1 { ddp.num_buckets() as u64 } else { 0 }
        );
        if world.size > 1 {
            assert!(comm.collectives_issued() > collectives_before);
        }
        let norm = ddp.clip_grad_norm(MAX_NORM).unwrap();
        opt.step();
        out.push(scalar(&format!("step{step}.loss"), step_loss));
        out.push(scalar(&format!("step{step}.grad_norm"), norm));
    }
    ddp.check_consistency().unwrap();
    out.extend(named_params(&vs).into_iter().filter(|(n, _)| names.iter().any(|k| n == &format!("param.{k}"))));
    out
}

// ---------------------------------------------------------------------------------------
// Plumbing: one worker runs the scenario named by the environment on every rank.

const SCENARIO_ENV: &str = "GRDR_TEST_SCENARIO";

/// libtorch's RNG is global to the process and the tests of this file run on parallel
/// threads: the in-process reference runs hold this lock from seeding to the last draw.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn scenario(name: &str, comm: &dyn Comm) -> Vec<(String, Tensor)> {
    match name {
        "infonce" => scenario_infonce(comm),
        "colbert" => scenario_colbert(comm),
        "gr_nll" => scenario_gr_nll(comm),
        "dr_steps" => train_steps(comm, false),
        "gr_steps" => train_steps(comm, true),
        other => panic!("unknown scenario {other}"),
    }
}

#[test]
#[ignore = "worker: started by the multi-rank tests through launcher/grdr-launch"]
fn worker_invariants() {
    let out = dist_common::worker_out();
    tch::set_num_threads(1);
    let comm = dist::init(Backend::Auto, CPU).unwrap();
    let name = std::env::var(SCENARIO_ENV).unwrap();
    let results = scenario(&name, comm.as_ref());
    dist_common::save(&out.join(format!("rank{}.safetensors", comm.world().rank)), &results);
}

/// Runs `name` on `ranks` ranks and in this process (world of one); checks every rank
/// holds the same results and that they equal the one-process ones.
fn check(name: &str, ranks: usize) -> f64 {
    let reference = {
        let _rng = RNG.lock().unwrap_or_else(|p| p.into_inner());
        let mut r = scenario(name, &LocalComm);
        r.sort_by(|a, b| a.0.cmp(&b.0));
        r
    };
    let dir = tempfile::tempdir().unwrap();
    dist_common::run_worker(ranks, "worker_invariants", dir.path(), &[(SCENARIO_ENV, name)]);
    let rank0 = dist_common::load(&dir.path().join("rank0.safetensors"));
    for r in 1..ranks {
        let other = dist_common::load(&dir.path().join(format!("rank{r}.safetensors")));
        dist_common::assert_close(&format!("{name}: rank {r} vs rank 0"), &other, &rank0, 1e-12);
    }
    dist_common::assert_close(&format!("{name}: {ranks} ranks vs 1 process"), &rank0, &reference, TOL)
}

#[test]
fn infonce_cross_rank_negatives_two_ranks_equal_one_process() {
    check("infonce", 2);
}

#[test]
fn infonce_one_mpi_rank_equals_one_process() {
    check("infonce", 1);
}

#[test]
fn colbert_maxsim_padded_gather_two_ranks_equal_one_process() {
    check("colbert", 2);
}

#[test]
fn gr_token_nll_uneven_tokens_two_ranks_equal_one_process() {
    check("gr_nll", 2);
}

#[test]
fn five_adamw_steps_dr_two_ranks_equal_one_process() {
    check("dr_steps", 2);
}

#[test]
fn five_adamw_steps_gr_two_ranks_equal_one_process() {
    check("gr_steps", 2);
}

#[test]
fn clipping_is_exercised_by_the_step_tests() {
    // The clip threshold must bite, or the step tests would not test clipping.
    let r = {
        let _rng = RNG.lock().unwrap_or_else(|p| p.into_inner());
        train_steps(&LocalComm, false)
    };
    let norms: Vec<f64> =
        r.iter().filter(|(n, _)| n.ends_with("grad_norm")).map(|(_, t)| t.double_value(&[])).collect();
    assert!(norms.iter().any(|&n| n > MAX_NORM), "grad norms {norms:?} never exceed {MAX_NORM}");
}
