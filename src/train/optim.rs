//! AdamW over a named parameter list, with weight-decay groups and a state that saves to
//! safetensors and restores bit-exactly (tch's `nn::AdamW` works per VarStore, applies one
//! decay to everything and cannot export its moments).
//!
//! Update (PyTorch `torch.optim.AdamW`, `amsgrad=False`), for step t = 1, 2, …:
//! ```text
//! p ← p·(1 − lr·wd)                    decayed parameters only
//! m ← β1·m + (1 − β1)·g
//! v ← β2·v + (1 − β2)·g²
//! p ← p − lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + ε)
//! ```
//! Decay groups follow the HF/BERT convention: no decay for biases and normalisation
//! weights, i.e. for every parameter with fewer than two dimensions.
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Location, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

struct Param {
    name: String,
    tensor: Tensor,
    decay: bool,
    /// First and second moments, f32 like the parameter, created zero.
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Param>,
    /// Optimizer steps taken (t of the bias corrections).
    step: u64,
}

/// Biases and norm weights (1-D) are not decayed.
pub fn decays(tensor: &Tensor) -> bool {
    tensor.dim() >= 2
}

impl AdamW {
    /// `named`: the trainable parameters (shallow handles), in a fixed order.
    pub fn new(named: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        let params = named
            .into_iter()
            .map(|(name, tensor)| {
                let exp_avg = tch::no_grad(|| tensor.zeros_like());
                let exp_avg_sq = tch::no_grad(|| tensor.zeros_like());
                Param { decay: decays(&tensor), name, tensor, exp_avg, exp_avg_sq }
            })
            .collect();
        AdamW { config, params, step: 0 }
    }

    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// (decayed, not decayed) parameter counts, for the start-of-run log line.
    pub fn group_sizes(&self) -> (usize, usize) {
        let decayed = self.params.iter().filter(|p| p.decay).count();
        (decayed, self.params.len() - decayed)
    }

    pub fn zero_grad(&mut self) {
        for p in &self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// One update at learning rate `lr`. Parameters without a gradient are left alone.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let mut w = p.tensor.shallow_clone();
                if p.decay && c.weight_decay != 0.0 {
                    let _ = w.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                let _ = p.exp_avg.lerp_(&g, 1.0 - c.beta1);
                let _ = p.exp_avg_sq.g_mul_scalar_(c.beta2);
                let _ = p.exp_avg_sq.addcmul_(&(&g * (1.0 - c.beta2)), &g);
                let denom = (p.exp_avg_sq.sqrt() / bias2_sqrt) + c.eps;
                let _ = w.addcdiv_(&(&p.exp_avg * (-lr / bias1)), &denom);
            }
        });
    }

    /// The moments as named tensors (`exp_avg.NAME`, `exp_avg_sq.NAME`) plus `step`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from_slice(&[self.step as i64]))];
        for p in &self.params {
            out.push((format!("exp_avg.{}", p.name), p.exp_avg.shallow_clone()));
            out.push((format!("exp_avg_sq.{}", p.name), p.exp_avg_sq.shallow_clone()));
        }
        out
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::model::safetensors::write(path, &self.state_tensors())
    }

    /// Restores moments and step from a file written by [`AdamW::save`] for the same
    /// parameters (names and shapes must match: anything else is a different model).
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let bad = |field: &str, m: String| Error::input(path, Location::File, field, m);
        let mut stored: std::collections::HashMap<String, Tensor> =
            crate::model::safetensors::read_all(path)?.into_iter().collect();
        let step = stored.remove("step").ok_or_else(|| bad("step", "missing".into()))?;
        self.step = step.int64_value(&[0]) as u64;
        for p in &mut self.params {
            for (key, slot) in [("exp_avg", &mut p.exp_avg), ("exp_avg_sq", &mut p.exp_avg_sq)] {
                let name = format!("{key}.{}", p.name);
                let t = stored
                    .remove(&name)
                    .ok_or_else(|| bad(&name, "missing (a checkpoint of another model?)".into()))?;
                if t.size() != slot.size() {
                    return Err(bad(&name, format!("shape {:?}, the model has {:?}", t.size(), slot.size())));
                }
                tch::no_grad(|| slot.copy_(&t.to_kind(slot.kind())));
            }
        }
        if let Some(extra) = stored.keys().next() {
            return Err(bad(extra, "not a parameter of this model".into()));
        }
        Ok(())
    }
}

/// Sum of squares of every gradient, as f64 (for a global norm when DDP does not clip).
pub fn grad_norm(params: &[Tensor]) -> f64 {
    tch::no_grad(|| {
        params
            .iter()
            .map(|p| p.grad())
            .filter(|g| g.defined())
            .map(|g| g.to_kind(Kind::Double).square().sum(Kind::Double).double_value(&[]))
            .sum::<f64>()
            .sqrt()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, nn::OptimizerConfig, Device};

    /// Without decay groups (everything decayed) our AdamW equals tch's (libtorch's) AdamW.
    #[test]
    fn matches_libtorch_adamw() {
        // Drawn once: tests on parallel threads share libtorch's generator, so re-seeding
        // per run would not give both runs the same start.
        tch::manual_seed(0);
        let w0 = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([5, 3], (Kind::Float, Device::Cpu));
        let run = |ours: bool| -> Tensor {
            let vs = nn::VarStore::new(Device::Cpu);
            let w = vs.root().var_copy("w", &w0);
            let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
            let mut mine = AdamW::new(vec![("w".into(), w.shallow_clone())], cfg);
            let mut theirs =
                nn::AdamW { beta1: 0.9, beta2: 0.999, wd: 0.1, eps: 1e-8, amsgrad: false }.build(&vs, 1e-2).unwrap();
            for _ in 0..5 {
                let loss = x.matmul(&w).tanh().sum(Kind::Float);
                if ours {
                    mine.zero_grad();
                    loss.backward();
                    mine.step(1e-2);
                } else {
                    theirs.zero_grad();
                    loss.backward();
                    theirs.step();
                }
            }
            w.detach().copy()
        };
        let (a, b) = (run(true), run(false));
        assert!(a.allclose(&b, 1e-6, 1e-7, false), "{a} vs {b}");
    }

    #[test]
    fn state_round_trips_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let w = Tensor::randn([4, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let b = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.01 };
        let mut opt = AdamW::new(vec![("w".into(), w.shallow_clone()), ("b".into(), b.shallow_clone())], cfg);
        assert_eq!(opt.group_sizes(), (1, 1));
        (w.sum(Kind::Float) * 2.0 + b.square().sum(Kind::Float) + b.sum(Kind::Float)).backward();
        opt.step(0.1);
        opt.save(&dir.path().join("o.safetensors")).unwrap();
        let mut other = AdamW::new(vec![("w".into(), w.shallow_clone()), ("b".into(), b.shallow_clone())], cfg);
        other.load(&dir.path().join("o.safetensors")).unwrap();
        assert_eq!(other.steps_taken(), 1);
        for ((_, x), (_, y)) in opt.state_tensors().iter().zip(other.state_tensors().iter()) {
            assert!(x.equal(y));
        }
    }
}
