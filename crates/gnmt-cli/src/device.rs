//! `--device`: where models compute. `cpu` (the default), `cuda` (this process's GPU: the
//! first, or in a job of several processes the one its local rank numbers) or `cuda:N`, or
//! `auto` (that GPU when there is one, else the CPU). GPUs need a program built with the `cuda`
//! feature (`bench/gpu/build.sh`); on them the model runs on the reference kernels (composite
//! candle operations: cuBLAS products and candle's CUDA kernels) until the fused operations
//! have CUDA versions.

use std::fmt;
use std::str::FromStr;

use candle::Device;

/// A device as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceArg {
    #[default]
    Cpu,
    /// `cuda`: GPU number local rank (0 outside a job).
    LocalGpu,
    Cuda(usize),
    Auto,
}

impl FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("unknown device {s:?}: cpu, cuda, cuda:N (a GPU's number) or auto");
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::LocalGpu),
            "auto" => Ok(Self::Auto),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n.parse().map(Self::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::LocalGpu => f.write_str("cuda"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl DeviceArg {
    /// Opens the device: a GPU that cannot be opened is an error naming it, except for
    /// `auto`, which then takes the CPU.
    pub fn open(self) -> anyhow::Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::LocalGpu => cuda(gnmt_dist::world().local_rank()),
            Self::Cuda(n) => cuda(n),
            Self::Auto => Ok(cuda(gnmt_dist::world().local_rank()).unwrap_or(Device::Cpu)),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda(n: usize) -> anyhow::Result<Device> {
    use anyhow::Context;
    Device::new_cuda(n).with_context(|| format!("--device cuda:{n}: cannot open the GPU"))
}

#[cfg(not(feature = "cuda"))]
fn cuda(n: usize) -> anyhow::Result<Device> {
    anyhow::bail!(
        "--device cuda:{n}: this program was built without CUDA; build it with `--features cuda` \
         (bench/gpu/build.sh does, with a CUDA toolkit from PyPI)"
    )
}

/// The name of `device` in messages.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle::DeviceLocation::Cpu => "cpu".into(),
        candle::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for (s, d) in [
            ("cpu", DeviceArg::Cpu),
            ("cuda", DeviceArg::LocalGpu),
            ("cuda:3", DeviceArg::Cuda(3)),
            ("auto", DeviceArg::Auto),
        ] {
            assert_eq!(s.parse::<DeviceArg>(), Ok(d));
        }
        assert_eq!(DeviceArg::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let e = bad.parse::<DeviceArg>().unwrap_err();
            assert!(e.contains("cpu, cuda, cuda:N"), "{bad}: {e}");
        }
    }

    #[test]
    fn auto_takes_the_cpu_without_a_gpu_and_cpu_is_the_cpu() {
        assert!(DeviceArg::Cpu.open().unwrap().is_cpu());
        if cfg!(not(feature = "cuda")) {
            assert!(DeviceArg::Auto.open().unwrap().is_cpu());
            let e = DeviceArg::Cuda(0).open().unwrap_err().to_string();
            assert!(e.contains("built without CUDA"), "{e}");
        }
    }
}
