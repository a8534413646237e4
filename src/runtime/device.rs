//! `--device`: which compute device a command runs on.
//!
//! Every command that runs a model takes `--device auto|cpu|cuda[:N]|vulkan[:N]|cubecl-cpu`.
//! The model, the prompt, the optimizer state and the loss all live on that
//! device; nothing else in the crate asks which one it is (burn's `Device`
//! dispatches every tensor operation, and the fused CPU kernels step aside
//! off the CPU backend).
//!
//! - `cpu`: burn's Flex backend with ept's fused kernels (the fast CPU path);
//! - `cuda[:N]`: burn's CUDA backend (cargo feature `cuda`);
//! - `vulkan[:N]`: burn's wgpu backend on Vulkan (cargo feature `vulkan`);
//! - `cubecl-cpu`: cubecl's CPU runtime (cargo feature `cpu`): the GPU
//!   backends' kernels compiled for this CPU, so the GPU code path is tested
//!   on machines without a GPU. Slow: every new shape is compiled.
//! - `auto` (the default): the first CUDA GPU when the binary has `cuda` and
//!   the driver reports one, otherwise `cpu`.

use burn::tensor::Device;

use super::gpu_probe::{Gpu, cuda_gpus};
use crate::{Error, Result};

/// A parsed `--device`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
    Vulkan(usize),
    CubeclCpu,
}

const EXPECTED: &str = "expected auto, cpu, cuda, cuda:N, vulkan, vulkan:N or cubecl-cpu";

impl DeviceChoice {
    /// Parses `--device`; `None` (the flag absent) is `auto`.
    pub fn from_flag(flag: Option<&str>) -> Result<Self> {
        let Some(s) = flag else {
            return Ok(Self::Auto);
        };
        let bad = || Error::invalid(format!("--device {s}: {EXPECTED}"));
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => (k, Some(i.parse::<usize>().map_err(|_| bad())?)),
            None => (s, None),
        };
        Ok(match (kind, index) {
            ("auto", None) => Self::Auto,
            ("cpu", None) => Self::Cpu,
            ("cubecl-cpu", None) => Self::CubeclCpu,
            ("cuda", i) => Self::Cuda(i.unwrap_or(0)),
            ("vulkan", i) => Self::Vulkan(i.unwrap_or(0)),
            _ => return Err(bad()),
        })
    }

    /// The device, with autodiff when `train` is set, and a line saying which
    /// it is (logged at `info` as the command's first line about the device).
    pub fn open(&self, train: bool) -> Result<Device> {
        let (device, label) = self.resolve()?;
        log::info!("device: {label}");
        Ok(if train { device.autodiff() } else { device })
    }

    /// The device this choice names, or a one-line error naming the cargo
    /// feature the binary lacks or what is missing on the machine.
    pub fn resolve(&self) -> Result<(Device, String)> {
        match self {
            Self::Cpu => Ok((Device::flex(), cpu_label())),
            Self::Auto => match cuda_gpus() {
                Ok(gpus) if cfg!(feature = "cuda") && !gpus.is_empty() => Self::Cuda(0).resolve(),
                _ => Ok((Device::flex(), cpu_label())),
            },
            Self::Cuda(index) => {
                if !cfg!(feature = "cuda") {
                    return Err(missing_feature("cuda", "cuda"));
                }
                let gpus =
                    cuda_gpus().map_err(|why| Error::invalid(format!("--device cuda: {why}")))?;
                let gpu = gpus.get(*index).ok_or_else(|| {
                    Error::invalid(format!(
                        "--device cuda:{index}: the driver reports {} GPU(s){}",
                        gpus.len(),
                        if gpus.is_empty() {
                            String::new()
                        } else {
                            format!(", cuda:0 to cuda:{}", gpus.len() - 1)
                        }
                    ))
                })?;
                Ok((
                    cuda_device(*index),
                    format!("cuda:{index} ({})", gpu_label(gpu)),
                ))
            }
            Self::Vulkan(index) => {
                if !cfg!(feature = "vulkan") {
                    return Err(missing_feature("vulkan", "vulkan"));
                }
                Ok((vulkan_device(*index), format!("vulkan:{index}")))
            }
            Self::CubeclCpu => {
                if !cfg!(feature = "cpu") {
                    return Err(missing_feature("cubecl-cpu", "cpu"));
                }
                Ok((
                    cubecl_cpu_device(),
                    "cubecl-cpu (cubecl's CPU runtime: GPU kernels compiled for this CPU)".into(),
                ))
            }
        }
    }
}

fn missing_feature(device: &str, feature: &str) -> Error {
    Error::invalid(format!(
        "--device {device}: this ept was built without the `{feature}` cargo feature; \
         rebuild with `cargo build --release --features {feature}` (README, \"GPUs\")"
    ))
}

fn cpu_label() -> String {
    let threads = rayon::current_num_threads();
    let bf16 = if crate::kernels::amx::detected() {
        ", bf16 on AMX"
    } else if crate::kernels::dpbf16::detected() {
        ", bf16 on AVX512-BF16"
    } else {
        ""
    };
    format!("cpu (burn-flex and ept's fused kernels, {threads} threads{bf16})")
}

fn gpu_label(gpu: &Gpu) -> String {
    format!(
        "{}, {:.0} GiB",
        gpu.name,
        gpu.memory_bytes as f64 / (1u64 << 30) as f64
    )
}

#[cfg(feature = "cuda")]
fn cuda_device(index: usize) -> Device {
    Device::cuda(index)
}
#[cfg(not(feature = "cuda"))]
fn cuda_device(_: usize) -> Device {
    unreachable!("checked by the caller: the binary has no `cuda` feature")
}

#[cfg(feature = "vulkan")]
fn vulkan_device(index: usize) -> Device {
    Device::vulkan(burn::tensor::DeviceKind::DiscreteGpu(index))
}
#[cfg(not(feature = "vulkan"))]
fn vulkan_device(_: usize) -> Device {
    unreachable!("checked by the caller: the binary has no `vulkan` feature")
}

#[cfg(feature = "cpu")]
fn cubecl_cpu_device() -> Device {
    Device::cpu()
}
#[cfg(not(feature = "cpu"))]
fn cubecl_cpu_device() -> Device {
    unreachable!("checked by the caller: the binary has no `cpu` feature")
}

/// One row of `ept inspect --devices`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceEntry {
    /// What `--device` takes.
    pub name: String,
    /// Whether this binary can run on it now.
    pub usable: bool,
    /// What it is, or why it cannot be used.
    pub detail: String,
}

/// The devices this binary can use, and those it could with another build.
pub fn available_devices() -> Vec<DeviceEntry> {
    let mut rows = vec![DeviceEntry {
        name: "cpu".into(),
        usable: true,
        detail: cpu_label(),
    }];
    let cuda_built = cfg!(feature = "cuda");
    match cuda_gpus() {
        Ok(gpus) if !gpus.is_empty() => rows.extend(gpus.iter().map(|g| DeviceEntry {
            name: format!("cuda:{}", g.index),
            usable: cuda_built,
            detail: if cuda_built {
                gpu_label(g)
            } else {
                format!("{}; this ept lacks the `cuda` feature", gpu_label(g))
            },
        })),
        Ok(_) => rows.push(DeviceEntry {
            name: "cuda".into(),
            usable: false,
            detail: "no GPU reported by the NVIDIA driver".into(),
        }),
        Err(why) => rows.push(DeviceEntry {
            name: "cuda".into(),
            usable: false,
            detail: format!(
                "{why}{}",
                if cuda_built {
                    ""
                } else {
                    "; this ept lacks the `cuda` feature"
                }
            ),
        }),
    }
    rows.push(DeviceEntry {
        name: "vulkan".into(),
        usable: cfg!(feature = "vulkan"),
        detail: if cfg!(feature = "vulkan") {
            "burn's wgpu backend on Vulkan (adapter chosen when first used)".into()
        } else {
            "this ept lacks the `vulkan` feature".into()
        },
    });
    rows.push(DeviceEntry {
        name: "cubecl-cpu".into(),
        usable: cfg!(feature = "cpu"),
        detail: if cfg!(feature = "cpu") {
            "cubecl's CPU runtime: the GPU kernels compiled for this CPU (tests the GPU path; slow)"
                .into()
        } else {
            "this ept lacks the `cpu` feature".into()
        },
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_names_the_expected_ones() {
        let p = |s| DeviceChoice::from_flag(Some(s));
        assert_eq!(DeviceChoice::from_flag(None).unwrap(), DeviceChoice::Auto);
        assert_eq!(p("cpu").unwrap(), DeviceChoice::Cpu);
        assert_eq!(p("cuda").unwrap(), DeviceChoice::Cuda(0));
        assert_eq!(p("cuda:3").unwrap(), DeviceChoice::Cuda(3));
        assert_eq!(p("vulkan:1").unwrap(), DeviceChoice::Vulkan(1));
        assert_eq!(p("cubecl-cpu").unwrap(), DeviceChoice::CubeclCpu);
        for bad in ["gpu", "cuda:", "cuda:x", "cpu:1", "cuda:-1", ""] {
            let e = p(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("--device {bad}: expected auto")),
                "{e}"
            );
        }
    }

    #[test]
    fn the_cpu_always_resolves_and_is_listed_first() {
        let (device, label) = DeviceChoice::Cpu.resolve().unwrap();
        assert_eq!(device, Device::flex());
        assert!(label.starts_with("cpu ("), "{label}");
        assert_eq!(available_devices()[0].name, "cpu");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_names_it() {
        let e = DeviceChoice::Cuda(0).resolve().unwrap_err().to_string();
        assert!(e.contains("`cuda` cargo feature"), "{e}");
        // auto never fails: without the feature it is the CPU.
        assert_eq!(DeviceChoice::Auto.resolve().unwrap().0, Device::flex());
    }
}
