//! Benchmarks of the distributed core, run by `scripts/bench-dist` under
//! launcher/grdr-launch (every function here is an ignored worker; `cargo test` alone
//! runs nothing). Rank 0 appends one JSON object per measurement to
//! `$GRDR_TEST_OUT/results.jsonl`.
//!
//! - `bench_allreduce`: MPI all-reduce (f32, sum) of 1–256 MB buffers: algorithm
//!   bandwidth (bytes / time) and bus bandwidth (× 2(n−1)/n), for the raw all-reduce into
//!   a second buffer and for the in-place form (which adds a copy back).
//! - `bench_bucketing`: DDP gradient sync of an all-MiniLM-L6-v2-shaped parameter set
//!   (22.7 M f32, 101 tensors) at several bucket sizes, against one all-reduce of a
//!   single flat buffer of the same size (the cost of flatten/unflatten and per-bucket
//!   latency).
//! - `bench_dr_step`: one DR training step — MiniLM-shaped BERT (random init) encodes
//!   queries and documents, cross-rank gather, InfoNCE, backward, DDP sync, clipping,
//!   AdamW — in samples/s; run at 1 and 2 ranks for the data-parallel efficiency.
mod dist_common;

use std::io::Write;
use std::time::Instant;

use grdr::dist::gather::all_gather_with_grad;
use grdr::dist::{self, Backend, Comm, Ddp, DdpOptions, ReduceOp};
use grdr::model::bert::{BertConfig, BertModel};
use grdr::train::loss;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

fn record(comm: &dyn Comm, value: serde_json::Value) {
    if comm.world().rank != 0 {
        return;
    }
    let out = dist_common::worker_out();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(out.join("results.jsonl")).unwrap();
    writeln!(f, "{value}").unwrap();
    eprintln!("{value}");
}

fn setup() -> Box<dyn Comm> {
    dist_common::worker_out();
    let threads: i32 = std::env::var("GRDR_BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    tch::set_num_threads(threads);
    dist::init(Backend::Auto, Device::Cpu).unwrap()
}

/// Median seconds of `iters` runs of `f`, each started together on every rank.
fn time_median(comm: &dyn Comm, iters: usize, mut f: impl FnMut()) -> f64 {
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        comm.barrier().unwrap();
        let t0 = Instant::now();
        f();
        // The slowest rank defines the time of a collective step.
        let mut t = [t0.elapsed().as_secs_f64()];
        comm.all_reduce_f64(&mut t, ReduceOp::Max).unwrap();
        times.push(t[0]);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

#[test]
#[ignore = "benchmark worker: scripts/bench-dist"]
fn bench_allreduce() {
    let comm = setup();
    let n = comm.world().size as f64;
    let sizes: Vec<usize> = std::env::var("GRDR_BENCH_SIZES_MB")
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|_| vec![1, 4, 16, 64, 256]);
    for mb in sizes {
        let numel = (mb << 20) as i64 / 4;
        let src = Tensor::ones([numel], (Kind::Float, Device::Cpu));
        let mut dst = src.empty_like();
        let iters = (512 / mb).clamp(5, 50);
        for _ in 0..2 {
            comm.all_reduce_into(&src, &mut dst, ReduceOp::Sum).unwrap();
        }
        let raw = time_median(comm.as_ref(), iters, || comm.all_reduce_into(&src, &mut dst, ReduceOp::Sum).unwrap());
        let mut inplace = src.copy();
        let inp = time_median(comm.as_ref(), iters, || comm.all_reduce_(&mut inplace, ReduceOp::Sum).unwrap());
        let bytes = (mb << 20) as f64;
        record(
            comm.as_ref(),
            serde_json::json!({
                "bench": "allreduce", "ranks": comm.world().size, "mb": mb, "iters": iters,
                "chunk_mb": std::env::var("GRDR_MPI_CHUNK_MB").unwrap_or_else(|_| dist::mpi::DEFAULT_CHUNK_MB.to_string()),
                "raw_s": raw, "raw_algbw_gbs": bytes / raw / 1e9, "raw_busbw_gbs": bytes / raw / 1e9 * 2.0 * (n - 1.0) / n,
                "inplace_s": inp, "inplace_algbw_gbs": bytes / inp / 1e9,
            }),
        );
    }
}

/// all-MiniLM-L6-v2's shape: 6 layers, hidden 384, 12 heads, intermediate 1536.
fn minilm_config() -> BertConfig {
    BertConfig::from_json(&serde_json::json!({
        "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
        "intermediate_size": 1536, "hidden_act": "gelu", "max_position_embeddings": 512,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0
    }))
    .unwrap()
}

#[test]
#[ignore = "benchmark worker: scripts/bench-dist"]
fn bench_bucketing() {
    let comm = setup();
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = BertModel::new(&vs.root(), minilm_config()).unwrap();
    // Give every parameter a gradient.
    let params: Vec<Tensor> = vs.trainable_variables();
    let total: Tensor = params.iter().map(|p| p.sum(Kind::Float)).fold(Tensor::from(0f32), |a, b| a + b);
    total.backward();
    let numel: i64 = params.iter().map(|p| p.numel() as i64).sum();
    let flat = Tensor::ones([numel], (Kind::Float, Device::Cpu));
    let mut flat_out = flat.empty_like();
    let iters = 10;
    comm.all_reduce_into(&flat, &mut flat_out, ReduceOp::Mean).unwrap();
    let one = time_median(comm.as_ref(), iters, || comm.all_reduce_into(&flat, &mut flat_out, ReduceOp::Mean).unwrap());
    record(
        comm.as_ref(),
        serde_json::json!({"bench": "bucketing", "ranks": comm.world().size, "params": numel,
        "tensors": params.len(), "bucket_mb": "one flat all-reduce", "buckets": 1, "s": one, "overhead": 0.0}),
    );
    for mb in [1usize, 5, 25, 100] {
        let mut ddp = Ddp::from_var_store(comm.as_ref(), &vs, DdpOptions { bucket_bytes: mb << 20 }).unwrap();
        ddp.sync_gradients().unwrap();
        let s = time_median(comm.as_ref(), iters, || ddp.sync_gradients().unwrap());
        record(
            comm.as_ref(),
            serde_json::json!({"bench": "bucketing", "ranks": comm.world().size, "params": numel,
            "tensors": params.len(), "bucket_mb": mb, "buckets": ddp.num_buckets(), "s": s, "overhead": s / one - 1.0}),
        );
    }
}

#[test]
#[ignore = "benchmark worker: scripts/bench-dist"]
fn bench_dr_step() {
    let comm = setup();
    let world = comm.world();
    let (batch, q_len, d_len): (i64, i64, i64) = (8, 32, 128); // per rank; 1 positive per query
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let bert = BertModel::new(&vs.root(), minilm_config()).unwrap();
    let mut ddp = Ddp::from_var_store(comm.as_ref(), &vs, DdpOptions::default()).unwrap();
    let mut opt = nn::AdamW::default().build(&vs, 2e-5).unwrap();
    let encode = |ids: &Tensor| {
        let mask = ids.ones_like();
        let h = bert.forward(ids, &mask, true); // (B, L, D)
        let pooled = h.mean_dim([1].as_slice(), false, Kind::Float);
        &pooled / pooled.norm_scalaropt_dim(2, [-1].as_slice(), true)
    };
    let mut sync_times = Vec::new();
    let mut step = |seed: i64| {
        tch::manual_seed(seed * 100 + world.rank as i64);
        let q_ids = Tensor::randint_low(1000, 30000, [batch, q_len], (Kind::Int64, Device::Cpu));
        let d_ids = Tensor::randint_low(1000, 30000, [batch, d_len], (Kind::Int64, Device::Cpu));
        opt.zero_grad();
        let q = all_gather_with_grad(comm.as_ref(), &encode(&q_ids)).unwrap();
        let d = all_gather_with_grad(comm.as_ref(), &encode(&d_ids)).unwrap();
        let l = loss::info_nce(&q, &d, 1, 0.05);
        (&l * world.backward_scale()).backward();
        let t_sync = Instant::now();
        ddp.sync_gradients().unwrap();
        sync_times.push(t_sync.elapsed().as_secs_f64());
        ddp.clip_grad_norm(1.0).unwrap();
        opt.step();
    };
    for s in 0..2 {
        step(s);
    }
    let steps = 6;
    let mut s = 2;
    let t = time_median(comm.as_ref(), steps, || {
        step(s);
        s += 1;
    });
    sync_times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let sync_s = sync_times[sync_times.len() / 2];
    let samples_per_s = (batch * world.size as i64) as f64 / t;
    record(
        comm.as_ref(),
        serde_json::json!({"bench": "dr_step", "ranks": world.size, "threads": tch::get_num_threads(),
        "batch_per_rank": batch, "q_len": q_len, "d_len": d_len, "step_s": t, "sync_s": sync_s, "samples_per_s": samples_per_s}),
    );
}

/// NCCL at world size 1 on this rank's GPU (`scripts/bench-dist --gpu`): all-reduce time
/// per buffer size under both orderings with libtorch (default stream vs. synchronising
/// around each call), measured over a chain of matmul → all-reduce → matmul as a training
/// step has it. Fails without CUDA/NCCL.
#[test]
#[ignore = "benchmark worker: scripts/bench-dist --gpu"]
fn bench_nccl() {
    use grdr::dist::nccl::{nccl_available, nccl_version, NcclComm, StreamOrdering};
    let out = dist_common::worker_out();
    nccl_available().expect("bench_nccl needs CUDA and a loadable NCCL (run it through scripts/bench-dist --gpu)");
    let mut comm = NcclComm::new(Box::new(dist::LocalComm)).unwrap();
    let device = comm.device();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(out.join("results.jsonl")).unwrap();
    for ordering in [StreamOrdering::DefaultStream, StreamOrdering::Synchronize] {
        comm.set_ordering(ordering);
        for mb in [1usize, 4, 16, 64, 256] {
            let numel = (mb << 20) as i64 / 4;
            let mut buf = Tensor::ones([numel], (Kind::Float, device));
            let w = Tensor::randn([1024, 1024], (Kind::Float, device));
            let iters = 20;
            let run = |buf: &mut Tensor| {
                let _ = w.matmul(&w); // work in flight before the collective
                comm.all_reduce_(buf, ReduceOp::Sum).unwrap();
                let _ = w.matmul(&w);
            };
            for _ in 0..3 {
                run(&mut buf);
            }
            comm.synchronize();
            let t0 = Instant::now();
            for _ in 0..iters {
                run(&mut buf);
            }
            comm.synchronize();
            let per = t0.elapsed().as_secs_f64() / iters as f64;
            let v = serde_json::json!({"bench": "nccl", "ranks": 1, "nccl_version": nccl_version(), "ordering": format!("{ordering:?}"),
                "mb": mb, "step_with_allreduce_s": per, "device": format!("{device:?}")});
            writeln!(f, "{v}").unwrap();
            eprintln!("{v}");
        }
    }
}
