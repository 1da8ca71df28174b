//! bf16 autocast on CUDA. tch's `autocast` enables libtorch's autocast with CUDA's default
//! dtype, fp16; grdr trains in bf16 (no loss scaling needed), so the CUDA autocast dtype is
//! set through libtorch's C++ API, which tch does not wrap (symbol of libtorch 2.11).
//! Exercised on an H200 (docs/BENCHMARKS.md, DR and GR training in bf16); CI has no GPU, so
//! no test runs it there. CPU runs never call it.

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
