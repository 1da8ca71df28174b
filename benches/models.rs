//! Throughput of our models for scripts/bench-models.py. Not run by `cargo test`:
//! the script runs `cargo test --bench models -- --ignored --nocapture` with GRDR_BENCH set to
//! a JSON spec and reads one JSON line per case from stdout ("BENCH {...}").
use std::time::Instant;

use grdr::model::generative::token_nll;
use grdr::model::{BertConfig, BertModel, T5Config, T5ForConditionalGeneration};
use tch::{nn, Device, Kind, Tensor};

fn secs<F: FnMut()>(warmup: usize, steps: usize, mut f: F) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let t0 = Instant::now();
    for _ in 0..steps {
        f();
    }
    t0.elapsed().as_secs_f64() / steps as f64
}

fn zero_grads(vs: &nn::VarStore) {
    for v in vs.trainable_variables() {
        let mut g = v.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

#[test]
#[ignore]
fn bench_models() {
    let spec: serde_json::Value = serde_json::from_str(&std::env::var("GRDR_BENCH").expect("GRDR_BENCH spec")).unwrap();
    tch::set_num_threads(spec["threads"].as_i64().unwrap() as i32);
    let (warmup, steps) = (spec["warmup"].as_u64().unwrap() as usize, spec["steps"].as_u64().unwrap() as usize);
    tch::manual_seed(0);
    for case in spec["cases"].as_array().unwrap() {
        let (b, l) = (case["batch"].as_i64().unwrap(), case["seq_len"].as_i64().unwrap());
        let vs = nn::VarStore::new(Device::Cpu);
        let (sec, tokens) = match case["model"].as_str().unwrap() {
            "t5" => {
                let cfg = T5Config::from_json(&case["config"]).unwrap();
                let v = cfg.vocab_size;
                let m = T5ForConditionalGeneration::new(&vs.root(), cfg).unwrap();
                let t = case["target_len"].as_i64().unwrap();
                let ids = Tensor::randint_low(2, v, [b, l], (Kind::Int64, Device::Cpu));
                let labels = Tensor::randint_low(2, v, [b, t], (Kind::Int64, Device::Cpu));
                let mask = ids.ones_like();
                let dec = m.shift_right(&labels);
                let s = secs(warmup, steps, || {
                    zero_grads(&vs);
                    let logits = m.forward(&ids, &mask, &dec, true, false).logits;
                    let (sum, n) = token_nll(&logits, &labels);
                    (sum / n as f64).backward();
                });
                (s, b * (l + t))
            }
            "bert" => {
                let cfg = BertConfig::from_json(&case["config"]).unwrap();
                let v = cfg.vocab_size;
                let m = BertModel::new(&vs.root(), cfg).unwrap();
                let ids = Tensor::randint_low(1000.min(v - 1), v, [b, l], (Kind::Int64, Device::Cpu));
                let mask = ids.ones_like();
                let s = if case["forward_only"].as_bool().unwrap_or(false) {
                    secs(warmup, steps, || {
                        let _ = tch::no_grad(|| m.forward(&ids, &mask, false));
                    })
                } else {
                    secs(warmup, steps, || {
                        zero_grads(&vs);
                        m.forward(&ids, &mask, true).square().mean(Kind::Float).backward();
                    })
                };
                (s, b * l)
            }
            other => panic!("unknown model {other}"),
        };
        let out = serde_json::json!({"name": case["name"], "impl": "grdr", "sec_per_step": sec, "tokens_per_sec": tokens as f64 / sec});
        println!("BENCH {out}");
    }
}
