//! How the models multiply activations by weight matrices: libtorch's `linear` (MKL on the
//! CPU) or oneDNN's inner product, per product as measured on this CPU (`gemm_choice.rs`).
//! Every linear layer of BERT and T5 goes through [`Gemm`], in training (both products
//! have gradients) and in inference.
use tch::{nn, Device, Kind, Tensor};

use super::gemm_choice::{self, Backend, Pass};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Gemm {
    /// `linear` (on the CPU: MKL's sgemm; on CUDA: cuBLAS; under autocast, bf16).
    #[default]
    Linear,
    /// oneDNN's inner product (`mkldnn_linear`, differentiable) where it applies (CPU, f32),
    /// else `linear`. The same sums in another order: results equal `linear`'s up to f32
    /// rounding.
    OneDnn,
    /// Per product, the backend [`gemm_choice::choice`] picks for its pass and shape.
    Measured,
}

impl Gemm {
    /// The faster choice for activations of `kind` on `device`: measured per product for
    /// f32 on the CPU; `linear` on CUDA and under CPU bf16 autocast (where `linear` is the
    /// op autocast lowers to bf16, oneDNN's bf16/AMX kernels underneath).
    pub fn fastest(device: Device, kind: Kind) -> Gemm {
        if device == Device::Cpu
            && kind == Kind::Float
            && tch::utils::has_mkldnn()
            && !super::precision::cpu_autocast_enabled()
        {
            Gemm::Measured
        } else {
            Gemm::Linear
        }
    }

    /// [`Gemm::fastest`] for `xs`.
    pub fn fastest_for(xs: &Tensor) -> Gemm {
        Gemm::fastest(xs.device(), xs.kind())
    }

    /// `xs` (…, in) · weightᵀ (+ bias) → (…, out).
    pub fn apply(self, xs: &Tensor, layer: &nn::Linear) -> Tensor {
        self.matmul_t(xs, &layer.ws, layer.bs.as_ref())
    }

    /// `xs` (…, in) · `w`ᵀ (+ `b`) with `w` (out, in).
    pub fn matmul_t(self, xs: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let cpu_f32 = xs.device() == Device::Cpu && xs.kind() == Kind::Float && w.kind() == Kind::Float;
        let use_onednn = match self {
            Gemm::Linear => false,
            Gemm::OneDnn => cpu_f32,
            Gemm::Measured => {
                let mut shape = xs.size();
                let d_in = shape.pop().unwrap_or(1);
                let rows: i64 = shape.iter().product();
                // Activations carry a gradient exactly when this product will be
                // differentiated (weights ask for one even under `no_grad`).
                let pass = if xs.requires_grad() { Pass::Training } else { Pass::Forward };
                cpu_f32 && gemm_choice::pick(pass, rows, d_in, w.size()[0]) == Backend::Onednn
            }
        };
        if use_onednn {
            if let Some(out) = onednn_linear(xs, w, b) {
                return out;
            }
        }
        xs.linear(w, b)
    }
}

/// oneDNN's inner product of `xs` (…, in) and `w` (out, in); `None` where oneDNN refuses.
fn onednn_linear(xs: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Option<Tensor> {
    let mut shape = xs.size();
    let d_in = *shape.last()?;
    let out = xs
        .reshape([-1, d_in])
        .f_to_mkldnn(None)
        .and_then(|x| x.f_mkldnn_linear(w, b))
        .and_then(|y| y.f_to_dense(None, false))
        .ok()?;
    *shape.last_mut().unwrap() = w.size()[0];
    Some(out.view(shape.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        f64::try_from((a - b).abs().max()).unwrap()
    }

    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        max_abs_diff(a, b) / f64::try_from(b.abs().max()).unwrap()
    }

    #[test]
    fn onednn_products_equal_linear() {
        tch::manual_seed(4);
        let x = Tensor::randn([7, 13, 32], (Kind::Float, Device::Cpu)); // 91 rows: oneDNN's
        let w = Tensor::randn([48, 32], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([48], (Kind::Float, Device::Cpu));
        let want = x.linear(&w, Some(&b));
        let got = Gemm::OneDnn.matmul_t(&x, &w, Some(&b));
        assert_eq!(got.size(), [7, 13, 48]);
        assert!(rel(&got, &want) < 1e-5);
        // Whatever the measured choice, the product is `linear`'s up to rounding.
        assert!(rel(&Gemm::Measured.matmul_t(&x, &w, Some(&b)), &want) < 1e-5);
    }

    /// Training goes through oneDNN too: its gradients for input, weight and bias equal
    /// `linear`'s.
    #[test]
    fn onednn_gradients_equal_linear() {
        // Drawn once: tests run on parallel threads that share libtorch's generator, so
        // re-seeding per path would not give both paths the same inputs.
        tch::manual_seed(5);
        let x0 = Tensor::randn([5, 20, 32], (Kind::Float, Device::Cpu));
        let w0 = Tensor::randn([24, 32], (Kind::Float, Device::Cpu));
        let b0 = Tensor::randn([24], (Kind::Float, Device::Cpu));
        let grads = |gemm: Gemm| {
            let x = x0.copy().set_requires_grad(true);
            let w = w0.copy().set_requires_grad(true);
            let b = b0.copy().set_requires_grad(true);
            let y = gemm.matmul_t(&x, &w, Some(&b));
            (y.tanh() * Tensor::arange(24, (Kind::Float, Device::Cpu))).sum(Kind::Float).backward();
            [x.grad(), w.grad(), b.grad()]
        };
        let (want, got) = (grads(Gemm::Linear), grads(Gemm::OneDnn));
        for (g, w) in got.iter().zip(&want) {
            assert!(g.defined() && rel(g, w) < 1e-5, "{}", rel(g, w));
        }
    }
}
