//! What the CPU is: its model and the instruction-set flags that decide which kernels are
//! fast on it (AVX2, AVX-512, AVX512-BF16, AMX). The products' backend choice
//! (`model::gemm`), CPU bf16, `grdr info` and the benchmark scripts all name the CPU this way,
//! because speed measured on one CPU family does not transfer to another.
use std::sync::OnceLock;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuInfo {
    /// `model name` of /proc/cpuinfo (e.g. "AMD EPYC 9B45", "Intel(R) Xeon(R) Processor").
    pub model: String,
    /// `vendor_id` (GenuineIntel, AuthenticAMD, …).
    pub vendor: String,
    pub avx2: bool,
    pub avx512f: bool,
    /// bf16 dot products in AVX-512 (Cooper Lake, Zen 4 and later).
    pub avx512_bf16: bool,
    /// AMX tiles with bf16 (Sapphire Rapids and later).
    pub amx_bf16: bool,
}

impl CpuInfo {
    /// Parses /proc/cpuinfo's text (its first processor).
    pub fn parse(cpuinfo: &str) -> CpuInfo {
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let flags = field("flags");
        let has = |f: &str| flags.split_whitespace().any(|x| x == f);
        CpuInfo {
            model: field("model name"),
            vendor: field("vendor_id"),
            avx2: has("avx2"),
            avx512f: has("avx512f"),
            avx512_bf16: has("avx512_bf16"),
            amx_bf16: has("amx_bf16"),
        }
    }

    /// Whether bf16 arithmetic runs natively (oneDNN's bf16 kernels need AVX512-BF16 or
    /// AMX; without them bf16 is emulated and slower than f32).
    pub fn has_bf16(&self) -> bool {
        self.avx512_bf16 || self.amx_bf16
    }

    /// The flags that matter, as benchmark tables print them: `avx2 avx512f avx512_bf16 amx`.
    pub fn flag_list(&self) -> String {
        let pairs =
            [("avx2", self.avx2), ("avx512f", self.avx512f), ("avx512_bf16", self.avx512_bf16), ("amx", self.amx_bf16)];
        let on: Vec<&str> = pairs.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect();
        if on.is_empty() {
            "none of avx2/avx512f/avx512_bf16/amx".into()
        } else {
            on.join(" ")
        }
    }

    /// One line: `Intel(R) Xeon(R) Processor (GenuineIntel; avx2 avx512f avx512_bf16 amx)`.
    pub fn describe(&self) -> String {
        format!("{} ({}; {})", self.model, self.vendor, self.flag_list())
    }
}

/// This machine's CPU (read once).
pub fn this() -> &'static CpuInfo {
    static CPU: OnceLock<CpuInfo> = OnceLock::new();
    CPU.get_or_init(|| CpuInfo::parse(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_vendor_and_flags() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B45\n\
                    flags\t\t: fpu avx2 avx512f avx512_bf16 sha_ni\n\nprocessor\t: 1\n";
        let cpu = CpuInfo::parse(text);
        assert_eq!((cpu.model.as_str(), cpu.vendor.as_str()), ("AMD EPYC 9B45", "AuthenticAMD"));
        assert!(cpu.avx2 && cpu.avx512f && cpu.avx512_bf16 && !cpu.amx_bf16 && cpu.has_bf16());
        assert_eq!(cpu.flag_list(), "avx2 avx512f avx512_bf16");
        assert!(!CpuInfo::parse("").has_bf16());
    }
}
