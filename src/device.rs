//! Which device a rank computes on: the one parser behind `train.device`, `grdr eval
//! --device` and `grdr encode --device`, so `cuda` means the same everywhere.
use tch::Device;

use crate::error::{Error, Result};

/// Parses `cpu`, `cuda` (this rank's local GPU), `cuda:N` or `auto` (the local GPU when
/// libtorch sees one, else the CPU). `field` names the flag or config key in errors. Asking
/// for a GPU that libtorch cannot use is a usage error (exit 2), not a libtorch crash later.
pub fn parse_device(spec: &str, local_rank: usize, field: &str) -> Result<Device> {
    let gpus = if spec == "cpu" { 0 } else { tch::Cuda::device_count().max(0) as usize };
    let cuda = |i: usize| -> Result<Device> {
        if gpus == 0 {
            return Err(Error::usage(field, format!("`{spec}`: libtorch sees no usable GPU (use cpu or auto)")));
        }
        if i >= gpus {
            return Err(Error::usage(field, format!("`{spec}`: GPU {i} asked for, libtorch sees {gpus}")));
        }
        Ok(Device::Cuda(i))
    };
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" if gpus == 0 => Ok(Device::Cpu),
        "auto" | "cuda" => cuda(local_rank),
        s => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(i) => cuda(i),
            None => Err(Error::usage(field, format!("`{s}`: expected cpu, cuda, cuda:N or auto"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_auto_without_a_gpu() {
        assert_eq!(parse_device("cpu", 3, "--device").unwrap(), Device::Cpu);
        if tch::Cuda::device_count() == 0 {
            assert_eq!(parse_device("auto", 0, "--device").unwrap(), Device::Cpu);
            let e = parse_device("cuda", 0, "train.device").unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains("train.device"), "{e}");
        }
        assert_eq!(parse_device("gpu", 0, "--device").unwrap_err().exit_code(), 2);
    }
}
