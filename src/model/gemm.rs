//! How the models multiply activations by weight matrices: libtorch's `linear`, or oneDNN's
//! inner product where that is faster (CPU, f32). Every linear layer of BERT and T5 goes
//! through [`Gemm`], in training (both products have gradients) and in inference.
use tch::{nn, Device, Kind, Tensor};

/// oneDNN spends ~50 µs a call before it multiplies (1 thread, this project's CPU): below
/// 64 rows MKL is faster, unless the output is vocabulary-wide, where oneDNN wins at any row
/// count (24 × 256 · 256 × 32,261: 3.8 ms against 7.3; `scripts/bench-eval`'s beam search).
const ONEDNN_MIN_ROWS: i64 = 64;
const ONEDNN_MIN_OUT: i64 = 4096;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Gemm {
    /// `linear` (on the CPU: MKL's sgemm; on CUDA: cuBLAS, under autocast too).
    #[default]
    Linear,
    /// oneDNN's inner product (`mkldnn_linear`, differentiable) where it applies (CPU, f32),
    /// else `linear`. On the AVX-512 AMD CPUs measured in docs/BENCHMARKS.md, MKL takes its
    /// AVX2 path and oneDNN runs the same products 1.5–2× faster, forward and backward.
    /// The same sums in another order: results equal `linear`'s up to f32 rounding.
    OneDnn,
}

impl Gemm {
    /// The faster choice for activations of `kind` on `device`.
    pub fn fastest(device: Device, kind: Kind) -> Gemm {
        if device == Device::Cpu && kind == Kind::Float && tch::utils::has_mkldnn() {
            Gemm::OneDnn
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
        if self == Gemm::OneDnn && xs.device() == Device::Cpu && xs.kind() == Kind::Float && w.kind() == Kind::Float {
            let mut shape = xs.size();
            let d_in = *shape.last().expect("at least one dimension");
            let rows = xs.numel() as i64 / d_in.max(1);
            if rows < ONEDNN_MIN_ROWS && w.size()[0] < ONEDNN_MIN_OUT {
                return xs.linear(w, b);
            }
            let out = xs
                .reshape([-1, d_in])
                .f_to_mkldnn(None)
                .and_then(|x| x.f_mkldnn_linear(w, b))
                .and_then(|y| y.f_to_dense(None, false));
            if let Ok(out) = out {
                *shape.last_mut().unwrap() = w.size()[0];
                return out.view(shape.as_slice());
            }
        }
        xs.linear(w, b)
    }
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
        // Few rows go to `linear` itself: bit-identical.
        let few = x.narrow(1, 0, 2); // 14 rows
        assert!(Gemm::OneDnn.matmul_t(&few, &w, Some(&b)).equal(&few.linear(&w, Some(&b))));
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
