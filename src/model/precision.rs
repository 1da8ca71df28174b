//! bf16 autocast on CUDA. tch's `autocast` enables libtorch's autocast with CUDA's default
//! dtype, fp16; grdr trains in bf16 (no loss scaling needed), so the CUDA autocast dtype is
//! set through libtorch's C++ API, which tch does not wrap (symbol of libtorch 2.11).
//! Exercised on an H200 (docs/BENCHMARKS.md, DR and GR training in bf16); CI has no GPU, so
//! no test runs it there. CPU bf16 is CPU autocast (below), on CPUs with native bf16.

extern "C" {
    /// `at::autocast::set_autocast_dtype(c10::DeviceType, c10::ScalarType)`.
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_set_autocast_dtype(device_type: i8, scalar_type: i8);
}

/// c10::DeviceType::CUDA and c10::ScalarType::BFloat16.
const CUDA: i8 = 1;
const BFLOAT16: i8 = 15;

/// Makes `tch::autocast(true, …)` on CUDA compute in bf16.
pub fn use_bf16_autocast() {
    // SAFETY: plain enum arguments (int8 underlying types); sets a global in libtorch.
    unsafe { at_set_autocast_dtype(CUDA, BFLOAT16) }
}

extern "C" {
    /// `at::autocast::set_autocast_enabled(c10::DeviceType, bool)`.
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn at_set_autocast_enabled(device_type: i8, enabled: bool);
    /// `at::autocast::is_autocast_enabled(c10::DeviceType)`.
    #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
    fn at_is_autocast_enabled(device_type: i8) -> bool;
}

/// c10::DeviceType::CPU.
const CPU: i8 = 0;

/// Whether CPU autocast is on (on this thread: libtorch keeps it thread-local).
pub fn cpu_autocast_enabled() -> bool {
    // SAFETY: reads a thread-local flag of libtorch.
    unsafe { at_is_autocast_enabled(CPU) }
}

/// Runs `f` under libtorch's CPU autocast in bf16 (its default CPU dtype) when `enabled`:
/// products (`linear`, `matmul`, …) compute in bf16 through oneDNN's bf16/AMX kernels,
/// other ops follow libtorch's CPU autocast lists exactly as `torch.autocast("cpu")` does,
/// and parameters and optimizer state stay f32. The
/// region's bf16 copies of the weights are cached until the outermost region ends, as
/// PyTorch's `torch.autocast("cpu")` does. `tch::autocast` only knows CUDA.
pub fn cpu_autocast<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    if !enabled {
        return f();
    }
    // SAFETY: thread-local autocast state of libtorch, restored below; nesting counts as
    // in `tch::autocast`.
    let prev = unsafe {
        let prev = at_is_autocast_enabled(CPU);
        at_set_autocast_enabled(CPU, true);
        torch_sys::at_autocast_increment_nesting();
        prev
    };
    let out = f();
    unsafe {
        if torch_sys::at_autocast_decrement_nesting() == 0 {
            torch_sys::at_autocast_clear_cache();
        }
        at_set_autocast_enabled(CPU, prev);
    }
    out
}

/// Runs `f` with bf16 autocast on `device` when `enabled` (CUDA: `tch::autocast` after
/// [`use_bf16_autocast`]; CPU: [`cpu_autocast`]).
pub fn bf16_autocast<T>(device: tch::Device, enabled: bool, f: impl FnOnce() -> T) -> T {
    if device.is_cuda() {
        tch::autocast(enabled, f)
    } else {
        cpu_autocast(enabled, f)
    }
}

/// Refuses bf16 on a CPU without native bf16 (there it is emulated: slower than f32 and
/// no cheaper). `field` names the config key or flag.
pub fn check_cpu_bf16(field: &str) -> crate::error::Result<()> {
    let cpu = crate::cpu::this();
    if cpu.has_bf16() {
        Ok(())
    } else {
        Err(crate::error::Error::usage(
            field,
            format!(
                "bf16 on the CPU needs AVX512-BF16 or AMX, which this CPU lacks ({}); use fp32, or a CUDA device",
                cpu.describe()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gemm::Gemm;
    use tch::{Device, Kind, Tensor};

    /// Under CPU autocast products compute in bf16 (and go through `linear`, the op autocast
    /// lowers), and the state is restored afterwards.
    #[test]
    fn cpu_autocast_lowers_products_only_inside_the_region() {
        let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([3, 8], (Kind::Float, Device::Cpu));
        let (kind, gemm) = cpu_autocast(true, || {
            let y = Gemm::fastest_for(&x).matmul_t(&x, &w, None);
            (y.kind(), Gemm::fastest_for(&x))
        });
        assert_eq!((kind, gemm), (Kind::BFloat16, Gemm::Linear));
        assert!(!cpu_autocast_enabled());
        assert_eq!(x.linear(&w, None::<Tensor>).kind(), Kind::Float);
        let exact = x.linear(&w, None::<Tensor>);
        let low = cpu_autocast(true, || x.linear(&w, None::<Tensor>)).to_kind(Kind::Float);
        let rel = f64::try_from((&low - &exact).abs().max()).unwrap() / f64::try_from(exact.abs().max()).unwrap();
        assert!(rel < 2e-2, "bf16 product off by {rel}");
    }
}
