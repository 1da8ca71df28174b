//! Helpers of the training tests: a prepared SciFact per test binary, tiny model configs
//! (seconds per run on 2 cores), running `grdr train` directly or under grdr-launch, and
//! reading checkpoints back.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_grdr")
}

pub fn launcher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("launcher").join("grdr-launch")
}

pub fn scifact_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GRDR_SCIFACT") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/scifact")
}

/// SciFact prepared once per test binary (kept in a temp dir for the process's life).
pub fn dataset() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("scifact");
        let o = Command::new(bin())
            .args(["prepare", "beir", "--input", scifact_dir().to_str().unwrap(), "--output", out.to_str().unwrap()])
            .env("CI", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "prepare: {}", String::from_utf8_lossy(&o.stderr));
        (dir, out)
    })
    .1
}

/// A tiny dual encoder (BERT from scratch with the MiniLM tokenizer) on SciFact.
pub fn tiny_dual(data: &Path) -> String {
    format!(
        r#"[data]
path = "{}"
query_max_len = 16
doc_max_len = 32
hard_negatives = 1

[model]
kind = "dual"
init = "scratch"
arch = "bert"
tokenizer = "minilm"
d_model = 32
num_layers = 1
num_heads = 2
d_ff = 64

[train]
batch_size = 8
max_steps = 6
lr = 1e-3
warmup_steps = 2
threads = 1

[eval]
at_end = false

[log]
interval = 1
progress = false
"#,
        data.display()
    )
}

/// A tiny GR model (T5 from scratch with the T5 tokenizer) on SciFact with atomic docids
/// written into `dir`; indexing and retrieval examples half and half.
pub fn tiny_generative(data: &Path, dir: &Path) -> String {
    let docids = dir.join("atomic.parquet");
    if !docids.exists() {
        ok(&Command::new(bin())
            .args(["docids", "--data", data.to_str().unwrap(), "--scheme", "atomic"])
            .args(["--output", docids.to_str().unwrap()])
            .output()
            .unwrap());
    }
    tiny_dual(data)
        .replace("kind = \"dual\"", "kind = \"generative\"")
        .replace("arch = \"bert\"", "arch = \"t5\"")
        .replace("tokenizer = \"minilm\"", "tokenizer = \"t5-tokenizer\"")
        .replace("hard_negatives = 1", "retrieval_fraction = 0.5")
        .replace("[train]", &format!("[docids]\npath = \"{}\"\n\n[train]", docids.display()))
}

/// [`tiny_generative`] on title docids with NP decoding: D from the model's encoder,
/// re-encoded every `refresh` epochs (ASYNC; 0 = BASE), at most 3 entries per token type.
pub fn tiny_np(data: &Path, dir: &Path, refresh: f64) -> String {
    let titles = dir.join("title.parquet");
    if !titles.exists() {
        ok(&Command::new(bin())
            .args(["docids", "--data", data.to_str().unwrap(), "--scheme", "title"])
            .args(["--output", titles.to_str().unwrap()])
            .output()
            .unwrap());
    }
    tiny_generative(data, dir)
        .replace(&dir.join("atomic.parquet").display().to_string(), &titles.display().to_string())
        .replace(
            "kind = \"generative\"",
            &format!("kind = \"generative\"\ndecoder = \"np\"\nnp_clusters = 3\nnp_refresh_epochs = {refresh}"),
        )
}

pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `grdr train` in this process's world of one.
pub fn train(config: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(bin())
        .args(["train", "--config", config.to_str().unwrap(), "--output", out.to_str().unwrap()])
        .args(extra)
        .env("CI", "1")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap()
}

/// `grdr train` on `ranks` ranks through launcher/grdr-launch.
pub fn train_ranks(ranks: usize, config: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(launcher())
        .args(["-n", &ranks.to_string(), "--", bin(), "train", "--config", config.to_str().unwrap()])
        .args(["--output", out.to_str().unwrap()])
        .args(extra)
        .env("CI", "1")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap()
}

pub fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The tensors of `RUNDIR/checkpoints/step-N/model.safetensors`.
pub fn params(run: &Path, step: u64) -> Vec<(String, tch::Tensor)> {
    let mut v =
        grdr::model::safetensors::read_all(&run.join(format!("checkpoints/step-{step}/model.safetensors"))).unwrap();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// (‖a − b‖₂ / ‖b‖₂ over all parameters together, max |a − b| over all elements).
///
/// Why global: AdamW divides by √v, so a parameter whose exact gradient is 0 (BERT's key
/// bias: softmax ignores it; embedding rows no batch touched) moves by float noise scaled up
/// to ~lr — in any two runs that sum gradients in a different order, 1 process or N. Such
/// tensors are tiny, so the model-wide relative distance stays at rounding level while a
/// per-tensor ratio would flag them.
pub fn param_distance(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let (mut diff2, mut norm2, mut max_abs) = (0f64, 0f64, 0f64);
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        let d = (ta - tb).to_kind(tch::Kind::Double);
        diff2 += d.square().sum(tch::Kind::Double).double_value(&[]);
        norm2 += tb.to_kind(tch::Kind::Double).square().sum(tch::Kind::Double).double_value(&[]);
        max_abs = max_abs.max(d.abs().max().double_value(&[]));
    }
    ((diff2 / norm2.max(1e-30)).sqrt(), max_abs)
}

/// (step, loss, last_loss) of every metrics.jsonl record.
pub fn losses(run: &Path) -> Vec<(u64, f64, f64)> {
    grdr::train::metrics_log::read(&run.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| (r.step, r.loss, r.last_loss))
        .collect()
}
