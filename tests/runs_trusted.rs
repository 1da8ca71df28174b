//! Runs a researcher can trust: a refused resume leaves the run as it was, `--overwrite`
//! never loses the old run to a new one that fails, a resume logs each step once, a damaged
//! checkpoint is never evaluated, metrics past the run's depth are not reported, and misuse
//! exits 2 with one line naming the flag or key — never a panic (101) — and leaves no run
//! directory behind.
mod train_common;

use std::path::Path;
use std::process::{Command, Output};

use train_common::*;

fn grdr(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("CI", "1").env("OMP_NUM_THREADS", "1").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code 2 and an error line that names `what`.
fn usage_error(o: &Output, what: &str) {
    assert_eq!(o.status.code(), Some(2), "expected exit 2 naming {what}, got {}:\n{}", o.status, stderr(o));
    assert!(stderr(o).contains(what), "the error should name {what}:\n{}", stderr(o));
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn refused_resume_leaves_the_run_config_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "run.toml", &tiny_dual(dataset()).replace("max_steps = 6", "max_steps = 2"));
    let run = dir.path().join("run");
    ok(&train(&cfg, &run, &[]));
    let before = read(&run.join("config.toml"));
    let other = write_config(dir.path(), "other.toml", &read(&cfg).replace("d_model = 32", "d_model = 48"));
    let o = train(&other, &run, &["--resume"]);
    usage_error(&o, "[model]");
    assert_eq!(read(&run.join("config.toml")), before, "a refused --resume must not rewrite config.toml");
    // The run is still usable: resume without --config continues it.
    ok(&grdr(&["train", "--output", run.to_str().unwrap(), "--resume", "--set", "train.max_steps=3"]));
}

#[test]
fn failed_overwrite_keeps_the_old_run() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_dual(dataset()).replace("max_steps = 6", "max_steps = 2");
    let cfg = write_config(dir.path(), "run.toml", &text);
    let run = dir.path().join("run");
    ok(&train(&cfg, &run, &[]));
    let old_metrics = read(&run.join("metrics.jsonl"));
    // A replacement whose model cannot be built (BERT positions < doc_max_len) fails after
    // its config parsed: the old run, train.json included, must survive.
    let bad = write_config(dir.path(), "bad.toml", &text.replace("doc_max_len = 32", "doc_max_len = 600"));
    let o = train(&bad, &run, &["--overwrite"]);
    usage_error(&o, "data.doc_max_len");
    assert_eq!(read(&run.join("metrics.jsonl")), old_metrics);
    assert!(run.join("checkpoints/step-2").is_dir() && run.join("train.json").is_file());
    // A replacement that fails at its first step (after moving the old run aside) gives it back.
    // (A temperature below f32's range makes the first loss non-finite: the run stops there.)
    let nan = write_config(dir.path(), "nan.toml", &text.replace("lr = 1e-3", "lr = 1e-3\ntemperature = 1e-40"));
    let o = train(&nan, &run, &["--overwrite"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(read(&run.join("metrics.jsonl")), old_metrics, "{}", stderr(&o));
    assert!(run.join("checkpoints/step-2").is_dir() && run.join("train.json").is_file());
    let left: Vec<_> = std::fs::read_dir(&run).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().starts_with(".replaced-")), "{left:?}");
    // A successful replacement removes what it replaced.
    ok(&train(&cfg, &run, &["--overwrite"]));
    let left: Vec<_> = std::fs::read_dir(&run).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().starts_with(".replaced-")), "{left:?}");
}

#[test]
fn resume_without_a_checkpoint_logs_each_step_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "run.toml", &tiny_dual(dataset()).replace("max_steps = 6", "max_steps = 3"));
    let run = dir.path().join("run");
    // A point killed before any checkpoint: its log has steps the new attempt redoes.
    std::fs::create_dir_all(&run).unwrap();
    let stale: String = (1..=5)
        .map(|s| {
            format!(
                "{{\"step\":{s},\"epoch\":0.0,\"loss\":9.0,\"last_loss\":9.0,\"lr\":0.0,\"grad_norm\":null,\
                 \"samples_per_s\":0.0,\"tokens_per_s\":0.0,\"rss_mib\":0.0}}\n"
            )
        })
        .collect();
    std::fs::write(run.join("metrics.jsonl"), stale).unwrap();
    ok(&train(&cfg, &run, &["--resume"]));
    let steps: Vec<u64> = losses(&run).iter().map(|l| l.0).collect();
    assert_eq!(steps, [1, 2, 3]);
}

#[test]
fn damaged_checkpoints_are_refused_and_another_can_be_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_dual(dataset())
        .replace("max_steps = 6", "max_steps = 2\ncheckpoint_every = 1\nkeep_checkpoints = 2")
        .replace("at_end = false", "at_end = false\nk = 10");
    let cfg = write_config(dir.path(), "run.toml", &text);
    let run = dir.path().join("run");
    ok(&train(&cfg, &run, &[]));
    let model = run.join("checkpoints/step-2/model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let at = bytes.len() / 2;
    for b in &mut bytes[at..at + 4000] {
        *b ^= 0x5a;
    }
    std::fs::write(&model, bytes).unwrap();
    let out = dir.path().join("eval");
    let o = grdr(&["eval", "--run", run.to_str().unwrap(), "--output", out.to_str().unwrap(), "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("step-2/model.safetensors"), "{}", stderr(&o));
    assert!(!out.exists(), "no output for a refused evaluation");
    let o = grdr(&[
        "eval",
        "--run",
        run.to_str().unwrap(),
        "--checkpoint",
        "step-1",
        "--output",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let metrics: serde_json::Value = serde_json::from_str(&read(&out.join("metrics.json"))).unwrap();
    // A top-10 run reports no recall past 10 (R@100 and R@1000 would only repeat R@10).
    assert!(metrics.get("R@10").is_some() && metrics.get("R@100").is_none() && metrics.get("R@1000").is_none());
    let o =
        grdr(&["eval", "--run", run.to_str().unwrap(), "--checkpoint", "step-9", "--output", "x", "--device", "cpu"]);
    usage_error(&o, "step-9");
}

#[test]
fn docids_never_replace_a_file_silently() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ids.parquet");
    std::fs::write(&out, "a run points at me").unwrap();
    let o = grdr(&[
        "docids",
        "--data",
        dataset().to_str().unwrap(),
        "--scheme",
        "atomic",
        "--output",
        out.to_str().unwrap(),
    ]);
    usage_error(&o, "--overwrite");
    assert_eq!(read(&out), "a run points at me");
}

/// Each misuse: exit 2, one line naming the flag or key, no panic, no run directory.
#[test]
fn misuse_exits_2_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset().to_str().unwrap();
    let text = tiny_dual(dataset());
    let run = dir.path().join("never");
    let train_with = |name: &str, from: &str, to: &str| -> Output {
        assert!(text.contains(from), "{from}");
        let cfg = write_config(dir.path(), name, &text.replace(from, to));
        train(&cfg, &run, &[])
    };
    let no_gpu = tch::Cuda::device_count() == 0;
    let cases: Vec<(Output, &str)> = vec![
        (train_with("threads.toml", "threads = 1", "threads = 0"), "train.threads"),
        (train_with("len.toml", "doc_max_len = 32", "doc_max_len = 600"), "data.doc_max_len"),
        (train_with("pdim.toml", "d_ff = 64", "d_ff = 64\ndim = 0"), "model.dim"),
        (train_with("cdim.toml", "kind = \"dual\"", "kind = \"colbert\"\ncolbert_dim = 0"), "model.colbert_dim"),
        (
            train_with("qat.toml", "kind = \"dual\"", "kind = \"colbert\"\nquery_augment_token = 99999999"),
            "model.query_augment_token",
        ),
        (train(&dir.path().join("missing.toml"), &run, &[]), "missing.toml"),
        (grdr(&["eval", "--run", "/nonexistent", "--output", "x"]), "--run"),
        (grdr(&["sweep", "status", "/nonexistent"]), "/nonexistent"),
        (grdr(&["eval", "--model", "minilm", "--data", data, "--output", "x", "--k", "0"]), "--k"),
        (grdr(&["eval", "--model", "minilm", "--data", data, "--output", "x", "--batch-size", "0"]), "--batch-size"),
        (grdr(&["eval", "--model", "minilm", "--data", data, "--output", "x", "--query-block", "0"]), "--query-block"),
        (grdr(&["eval", "--model", "minilm", "--data", data, "--output", "x", "--threads", "0"]), "--threads"),
        (grdr(&["eval", "--model", "minilm", "--data", data, "--output", "x", "--rerank-add-gold"]), "--rerank"),
        (grdr(&["eval", "--model", "minilm", "--data", data, "--output", "x", "--beam", "5"]), "--beam"),
        (
            grdr(&["eval", "--model", "minilm", "--data", data, "--output", "x", "--doc-max-len", "600"]),
            "--doc-max-len",
        ),
        (
            grdr(&["encode", "--model", "minilm", "--data", data, "--what", "docs", "--output", "x", "--threads", "0"]),
            "--threads",
        ),
    ];
    for (o, what) in &cases {
        usage_error(o, what);
    }
    // ColBERTv1's pairwise loss needs a hard negative and takes no negative count.
    let pairwise = text.replace("threads = 1", "threads = 1\nloss = \"pairwise\"");
    let no_negative =
        write_config(dir.path(), "pw0.toml", &pairwise.replace("hard_negatives = 1", "hard_negatives = 0"));
    usage_error(&train(&no_negative, &run, &[]), "train.loss");
    let counted =
        write_config(dir.path(), "pwk.toml", &pairwise.replace("threads = 1", "threads = 1\nnum_negatives = 2"));
    usage_error(&train(&counted, &run, &[]), "train.num_negatives");
    // A negative bank: a dual encoder's, without batch hard negatives, a count only when
    // sampled, and no more negatives than the corpus has other documents.
    let bank = text.replace("hard_negatives = 1", "hard_negatives = 0");
    let with = |name: &str, base: &str, keys: &str| {
        train(&write_config(dir.path(), name, &base.replace("threads = 1", &format!("threads = 1\n{keys}"))), &run, &[])
    };
    usage_error(&with("bk1.toml", &text, "negative_bank = \"full\""), "train.negative_bank");
    usage_error(&with("bk2.toml", &bank, "negative_bank = \"sampled\""), "train.num_negatives");
    usage_error(&with("bk3.toml", &bank, "negative_bank = \"full\"\nnum_negatives = 5"), "train.num_negatives");
    usage_error(&with("bk4.toml", &bank, "negative_bank = \"sampled\"\nnum_negatives = 5183"), "train.num_negatives");
    let colbert = bank.replace("kind = \"dual\"", "kind = \"colbert\"");
    usage_error(&with("bk5.toml", &colbert, "negative_bank = \"full\""), "train.negative_bank");
    usage_error(&with("bk6.toml", &bank, "negative_bank = \"hard\""), "train.num_negatives");
    usage_error(&with("bk7.toml", &bank, "negative_bank = \"hard\"\nnum_negatives = 5183"), "train.num_negatives");
    // The corpus softmax runs through GradCache's chunks and takes every document.
    usage_error(&with("bk8.toml", &bank, "negative_bank = \"corpus\""), "train.grad_cache_chunk");
    usage_error(
        &with("bk9.toml", &bank, "negative_bank = \"corpus\"\ngrad_cache_chunk = 8\nnum_negatives = 5"),
        "train.num_negatives",
    );
    // GradCache: chunks of at least one row, for dual encoders only.
    usage_error(&with("gc1.toml", &text, "grad_cache_chunk = 0"), "train.grad_cache_chunk");
    usage_error(&with("gc2.toml", &colbert, "grad_cache_chunk = 4"), "train.grad_cache_chunk");
    // Token alignment belongs to ColBERT (the tiny config is a dual encoder), and only
    // the three directions parse.
    usage_error(&train_with("al.toml", "d_ff = 64", "d_ff = 64\nalignment = \"d2q-soft\""), "model.alignment");
    usage_error(
        &train_with("aln.toml", "d_ff = 64", "d_ff = 64\nalignment_normalize = true"),
        "model.alignment_normalize",
    );
    // PAWA is a GR decoder, of a positive rank.
    usage_error(&train_with("pawa.toml", "d_ff = 64", "d_ff = 64\ndecoder = \"pawa\""), "model.decoder");
    usage_error(&train_with("pawar.toml", "d_ff = 64", "d_ff = 64\npawa_rank = 0"), "model.pawa_rank");
    // … of docid tokens: title docids are text.
    let title = dir.path().join("title.parquet");
    ok(&grdr(&["docids", "--data", data, "--scheme", "title", "--output", title.to_str().unwrap()]));
    let gr = tiny_generative(dataset(), dir.path());
    let atomic = format!("path = \"{}\"", dir.path().join("atomic.parquet").display());
    assert!(gr.contains(&atomic));
    let gr = gr
        .replace(&atomic, &format!("path = \"{}\"", title.display()))
        .replace("kind = \"generative\"", "kind = \"generative\"\ndecoder = \"pawa\"");
    usage_error(&train(&write_config(dir.path(), "pawat.toml", &gr), &run, &[]), "model.decoder");
    // NP decoding takes text docids (not atomic), at least one cluster; ASYNC's refresh
    // interval belongs to it and is a number of epochs ≥ 0.
    let np = tiny_generative(dataset(), dir.path())
        .replace("kind = \"generative\"", "kind = \"generative\"\ndecoder = \"np\"");
    usage_error(&train(&write_config(dir.path(), "npa.toml", &np), &run, &[]), "model.decoder");
    usage_error(&train_with("npk.toml", "d_ff = 64", "d_ff = 64\nnp_clusters = 0"), "model.np_clusters");
    usage_error(&train_with("npr.toml", "d_ff = 64", "d_ff = 64\nnp_refresh_epochs = 1.0"), "model.np_refresh_epochs");
    let np_neg = np.replace("decoder = \"np\"", "decoder = \"np\"\nnp_refresh_epochs = -1");
    usage_error(&train(&write_config(dir.path(), "npn.toml", &np_neg), &run, &[]), "model.np_refresh_epochs");
    // bf16 on a CPU without native bf16 (tests/cpu_bf16.rs runs it where there is).
    if !grdr::cpu::this().has_bf16() {
        let bf16 = train_with("bf16.toml", "threads = 1", "threads = 1\nprecision = \"bf16\"\ndevice = \"cpu\"");
        usage_error(&bf16, "train.precision");
        let eval =
            ["eval", "--model", "minilm", "--data", data, "--output", "x", "--precision", "bf16", "--device", "cpu"];
        usage_error(&grdr(&eval), "--precision");
    }
    if no_gpu {
        usage_error(&train_with("cuda.toml", "threads = 1", "threads = 1\ndevice = \"cuda\""), "train.device");
        usage_error(
            &grdr(&["eval", "--model", "minilm", "--data", data, "--output", "x", "--device", "cuda"]),
            "--device",
        );
    }
    assert!(!run.exists(), "a failed command leaves no run directory");
    assert!(!Path::new("x").exists());
}

#[test]
fn eval_run_refuses_flags_the_run_config_fixes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "run.toml", &tiny_dual(dataset()).replace("max_steps = 6", "max_steps = 1"));
    let run = dir.path().join("run");
    ok(&train(&cfg, &run, &[]));
    let r = run.to_str().unwrap();
    for (flag, value) in
        [("--kind", "colbert"), ("--colbert-dim", "8"), ("--query-augment-token", "5"), ("--beam", "4")]
    {
        usage_error(&grdr(&["eval", "--run", r, "--output", "x", flag, value]), flag);
    }
}

/// Off a terminal (a batch job's log) a long loop still says how far it is.
#[test]
fn progress_is_logged_without_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bm25");
    let o = Command::new(bin())
        .args(["bm25", "--data", dataset().to_str().unwrap(), "--output", out.to_str().unwrap()])
        .env_remove("CI")
        .output()
        .unwrap();
    ok(&o);
    let log = stderr(&o);
    assert!(log.contains("progress:") && log.contains("bm25 index"), "{log}");
}

/// The README's command lines work as written once launcher/ is on PATH: `grdr` is the
/// checkout's build, and grdr-launch resolves a bare `grdr` too. (GRDR_BIN points both at
/// this test's binary: a build inside `cargo test` would wait on cargo's own lock.)
#[test]
fn readme_grdr_lines_work_with_launcher_on_path() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = format!("{}:{}", root.join("launcher").display(), std::env::var("PATH").unwrap_or_default());
    let o =
        Command::new("bash").args(["-c", "grdr --version"]).env("PATH", &path).env("GRDR_BIN", bin()).output().unwrap();
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("grdr "));
    let o = Command::new("bash")
        .args(["-c", "grdr-launch -n 2 -- grdr --version"])
        .env("PATH", &path)
        .env("GRDR_BIN", bin())
        .output()
        .unwrap();
    ok(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).matches("grdr ").count(), 2, "one line per rank");
}

/// A dataset file changed after `grdr prepare` is refused: a size change on every open, a
/// flipped byte with --verify (exit 3, the file named).
#[test]
fn damaged_datasets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ds = dir.path().join("ds");
    std::fs::create_dir(&ds).unwrap();
    for e in std::fs::read_dir(dataset()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ds.join(e.file_name())).unwrap();
    }
    let docs = ds.join("docs.parquet");
    let mut bytes = std::fs::read(&docs).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0xff;
    std::fs::write(&docs, &bytes).unwrap();
    let d = ds.to_str().unwrap();
    let out = dir.path().join("eval");
    let o = grdr(&["eval", "--model", "minilm", "--data", d, "--output", out.to_str().unwrap(), "--verify"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("docs.parquet") && stderr(&o).contains("sha256"), "{}", stderr(&o));
    assert!(!out.exists());
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&docs, &bytes).unwrap();
    let o = grdr(&["bm25", "--data", d, "--output", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("docs.parquet") && stderr(&o).contains("bytes"), "{}", stderr(&o));
}

/// A config error points at the line of the user's file, also when --set overrides apply.
#[test]
fn config_errors_name_the_line_of_the_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_dual(dataset()).replace("[train]\n", "[train]\nbatchsize = 8\n");
    let line = text.lines().position(|l| l.starts_with("batchsize")).unwrap() + 1;
    let cfg = write_config(dir.path(), "typo.toml", &text);
    for extra in [&[][..], &["--set", "train.max_steps=2"][..]] {
        let o = train(&cfg, &dir.path().join("run"), extra);
        usage_error(&o, "typo.toml");
        assert!(stderr(&o).contains(&format!("line {line}")), "line {line} of the file: {}", stderr(&o));
        assert!(stderr(&o).contains("batchsize"), "{}", stderr(&o));
    }
}

/// SIGTERM after the last step (during the end-of-run evaluation, minutes for ColBERT) takes
/// its default action: the process ends, instead of a flag nobody polls any more swallowing it.
#[test]
fn sigterm_during_the_final_evaluation_ends_the_run() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let text = tiny_dual(dataset())
        .replace("max_steps = 6", "max_steps = 1")
        // One document per forward pass: an evaluation long enough to be signalled in.
        .replace("at_end = false", "at_end = true\ndoc_max_len = 512\nbatch_size = 1");
    let cfg = write_config(dir.path(), "run.toml", &text);
    let mut child = Command::new(bin())
        .args(["train", "--config", cfg.to_str().unwrap(), "--output", dir.path().join("run").to_str().unwrap()])
        .env("CI", "1")
        .env("OMP_NUM_THREADS", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("(final)") {
            // The last checkpoint is written; a moment later the run is in its export and
            // evaluation (seconds, one document per forward pass).
            std::thread::sleep(std::time::Duration::from_millis(300));
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            break;
        }
    }
    // Keep reading: a closed pipe would make the child's next log line fail instead.
    let drain = std::thread::spawn(move || lines.for_each(drop));
    let status = child.wait().unwrap();
    drain.join().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}");
}

/// `grdr info` says when an artefact the set-up registered is gone (e.g. the reference
/// Python of `launcher/setup --reference` never made), instead of naming it as if present.
#[test]
fn info_marks_missing_artefacts() {
    let dir = tempfile::tempdir().unwrap();
    let real = grdr::assets::resolve("minilm").unwrap();
    let assets = serde_json::json!({"minilm": real, "python": dir.path().join("pyref/bin/python")});
    std::fs::write(dir.path().join("assets.json"), assets.to_string()).unwrap();
    let o = Command::new(bin()).arg("info").env("GRDR_CACHE", dir.path()).output().unwrap();
    ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    let line = |name: &str| out.lines().find(|l| l.starts_with(&format!("artefact {name}:"))).unwrap().to_string();
    assert!(line("python").ends_with("(missing)"), "{out}");
    assert!(!line("minilm").contains("missing"), "{out}");
}
