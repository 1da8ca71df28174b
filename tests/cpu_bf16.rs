//! bf16 on the CPU. On a CPU with AVX512-BF16 or AMX, `train.precision = "bf16"` trains under
//! CPU autocast (the losses follow the f32 run's to bf16 rounding, the parameters stay f32)
//! and `grdr eval --precision bf16` evaluates the result close to f32; on a CPU without, both
//! are refused as usage errors naming the key. Either way this file asserts one of the two.
mod train_common;

use std::path::Path;

use train_common::*;

fn metrics(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap()
}

fn eval(run: &Path, out: &Path, precision: &str) -> std::process::Output {
    std::process::Command::new(bin())
        .args(["eval", "--run", run.to_str().unwrap(), "--data", dataset().to_str().unwrap(), "--split", "test"])
        .args(["--device", "cpu", "--precision", precision, "--output", out.to_str().unwrap()])
        .env("CI", "1")
        .output()
        .unwrap()
}

#[test]
fn bf16_trains_and_evaluates_where_the_cpu_has_it_and_is_refused_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let f32_cfg = write_config(dir.path(), "f32.toml", &tiny_dual(dataset()).replace("max_steps = 6", "max_steps = 4"));
    let bf16_cfg = write_config(
        dir.path(),
        "bf16.toml",
        &tiny_dual(dataset()).replace("max_steps = 6", "max_steps = 4\nprecision = \"bf16\"\ndevice = \"cpu\""),
    );
    let (f32_run, bf16_run) = (dir.path().join("f32"), dir.path().join("bf16"));
    ok(&train(&f32_cfg, &f32_run, &[]));
    let o = train(&bf16_cfg, &bf16_run, &[]);
    if !grdr::cpu::this().has_bf16() {
        assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stderr).contains("train.precision"));
        assert_eq!(eval(&f32_run, &dir.path().join("e"), "bf16").status.code(), Some(2));
        return;
    }
    ok(&o);
    // Same data, same initial weights: losses differ by bf16 rounding only.
    let (a, b) = (losses(&f32_run), losses(&bf16_run));
    assert_eq!(a.len(), b.len());
    for ((s, la, _), (_, lb, _)) in a.iter().zip(&b) {
        assert!((la - lb).abs() / la.abs() < 0.02, "step {s}: f32 loss {la}, bf16 {lb}");
    }
    assert!(a.iter().zip(&b).any(|(x, y)| x.1 != y.1), "bf16 changed nothing: autocast was not on");
    // The parameters stay f32.
    assert!(params(&bf16_run, 4).iter().all(|(_, t)| t.kind() == tch::Kind::Float));

    // Evaluation of the f32 model in bf16: the metrics stay close.
    let (ef, eb) = (dir.path().join("eval-f32"), dir.path().join("eval-bf16"));
    ok(&eval(&f32_run, &ef, "fp32"));
    ok(&eval(&f32_run, &eb, "bf16"));
    let (mf, mb) = (metrics(&ef), metrics(&eb));
    for m in ["nDCG@10", "R@100"] {
        let (x, y) = (mf[m].as_f64().unwrap(), mb[m].as_f64().unwrap());
        assert!((x - y).abs() < 0.02, "{m}: fp32 {x}, bf16 {y}");
    }
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(eb.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["precision"], "bf16", "{info}");
}
