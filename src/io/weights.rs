//! Memory-mapped safetensors checkpoints, single-file or sharded.
//!
//! Hugging Face writes either `model.safetensors` or a set of shards listed in
//! `model.safetensors.index.json`. [`WeightFile`] hides the difference: a
//! tensor is looked up by name, its shape checked against what the
//! architecture expects, and its bytes converted to the compute dtype. Errors
//! name the file, the tensor and both shapes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::{Dtype as StDtype, SafeTensors};

use crate::error::{Error, Result};

/// One memory-mapped safetensors file.
struct Shard {
    path: PathBuf,
    mmap: memmap2::Mmap,
}

/// The weights of a checkpoint, possibly spread over several shards.
pub struct WeightFile {
    shards: Vec<Shard>,
    /// Tensor name -> (shard index, shape, dtype name).
    index: BTreeMap<String, (usize, Vec<usize>, StDtype)>,
    /// What the user pointed at (the folder or index file), for error messages.
    origin: PathBuf,
}

/// The floating-point types a backbone can be computed in (names as PyTorch
/// Lightning's `precision`: `bf16` is "bf16-true", every tensor in bf16).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FloatType {
    F32,
    Bf16,
    /// Mixed precision, as PyTorch's bf16 autocast: the dense layers' weights
    /// in bf16 and their inputs rounded to bf16, sums in f32; everything else
    /// (norms, softmax, residual stream, embeddings, head) in f32. On CPUs
    /// with AMX the dense layers run on its bf16 tiles (`kernels/amx.rs`).
    Bf16Mixed,
}

impl FloatType {
    /// The dtype the backbone's tensors are held in.
    pub fn dtype(self) -> DType {
        match self {
            FloatType::F32 | FloatType::Bf16Mixed => DType::F32,
            FloatType::Bf16 => DType::BF16,
        }
    }

    /// The name `parse` reads and run files store (`f32`, `bf16`, `bf16-mixed`).
    pub fn name(self) -> &'static str {
        match self {
            FloatType::F32 => "f32",
            FloatType::Bf16 => "bf16",
            FloatType::Bf16Mixed => "bf16-mixed",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "float" => Ok(FloatType::F32),
            "bf16" | "bfloat16" | "bf16-true" => Ok(FloatType::Bf16),
            "bf16-mixed" => Ok(FloatType::Bf16Mixed),
            other => Err(Error::invalid(format!(
                "unsupported dtype `{other}`: expected f32, bf16 or bf16-mixed (T5 overflows in f16)"
            ))),
        }
    }
}

fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is opened read-only; a concurrent writer truncating it is
    // the same hazard every mmap-based loader (PyTorch's included) accepts.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

fn dtype_name(dtype: StDtype) -> String {
    format!("{dtype:?}")
}

impl WeightFile {
    /// Opens `model.safetensors` or the sharded index in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() {
            Self::open_files(std::slice::from_ref(&single), single.clone())
        } else if index.is_file() {
            Self::open_index(&index)
        } else {
            Err(Error::NotFound {
                path: single,
                hint: "expected model.safetensors or model.safetensors.index.json \
                       (PyTorch .bin checkpoints are not read: convert them with save_pretrained(safe_serialization=True))"
                    .into(),
            })
        }
    }

    /// Opens a sharded checkpoint from its `model.safetensors.index.json`.
    pub fn open_index(index_path: &Path) -> Result<Self> {
        let text = crate::error::read_to_string(index_path)?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: index_path.into(),
            line: Some(e.line()),
            msg: e.to_string(),
        })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                Error::field(
                    index_path,
                    "weight_map",
                    "expected an object of tensor name -> shard file",
                )
            })?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut files: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        files.sort();
        files.dedup();
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        Self::open_files(&paths, index_path.to_path_buf())
    }

    fn open_files(paths: &[PathBuf], origin: PathBuf) -> Result<Self> {
        let mut shards = Vec::new();
        let mut index = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let mmap = map_file(path)?;
            let st = SafeTensors::deserialize(&mmap)
                .map_err(|e| Error::data(path, format!("not a valid safetensors file: {e}")))?;
            for (name, view) in st.tensors() {
                index.insert(name, (i, view.shape().to_vec(), view.dtype()));
            }
            shards.push(Shard {
                path: path.clone(),
                mmap,
            });
        }
        Ok(WeightFile {
            shards,
            index,
            origin,
        })
    }

    /// Where the weights came from (for messages and `ept inspect`).
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The shard files read.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The dtype most tensors are stored in (for `inspect` and the default compute dtype).
    pub fn storage_dtype(&self) -> String {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (_, _, dt) in self.index.values() {
            *counts.entry(dtype_name(*dt)).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(d, _)| d)
            .unwrap_or_default()
    }

    /// The first of `names` that the checkpoint holds.
    pub fn first_present<'a>(&self, names: &[&'a str]) -> Option<&'a str> {
        names.iter().copied().find(|n| self.contains(n))
    }

    /// Reads tensor `name`, checks it has `shape`, converts to f32.
    pub fn read_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (shard_idx, found, dtype) =
            self.index.get(name).ok_or_else(|| Error::MissingTensor {
                path: self.origin.clone(),
                name: name.into(),
            })?;
        let shard = &self.shards[*shard_idx];
        if found != shape {
            return Err(Error::TensorShape {
                path: shard.path.clone(),
                name: name.into(),
                expected: shape.to_vec(),
                found: found.clone(),
            });
        }
        let st = SafeTensors::deserialize(&shard.mmap)
            .map_err(|e| Error::data(&shard.path, format!("not a valid safetensors file: {e}")))?;
        let view = st
            .tensor(name)
            .map_err(|e| Error::data(&shard.path, e.to_string()))?;
        let bytes = view.data();
        let out: Vec<f32> = match dtype {
            StDtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            StDtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            StDtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::Dtype {
                    path: shard.path.clone(),
                    name: name.into(),
                    dtype: dtype_name(*other),
                });
            }
        };
        // Read once at load: the copy is what stays resident.
        self.release(name);
        Ok(out)
    }

    /// Tensor `name`'s dtype, shape and bytes as stored, or None when absent.
    pub fn raw(&self, name: &str) -> Result<Option<crate::io::bnb4::RawTensor>> {
        let Some((shard_idx, shape, dtype)) = self.index.get(name) else {
            return Ok(None);
        };
        let shard = &self.shards[*shard_idx];
        let st = SafeTensors::deserialize(&shard.mmap)
            .map_err(|e| Error::data(&shard.path, format!("not a valid safetensors file: {e}")))?;
        let view = st
            .tensor(name)
            .map_err(|e| Error::data(&shard.path, e.to_string()))?;
        let raw = crate::io::bnb4::RawTensor {
            dtype: dtype_name(*dtype),
            shape: shape.clone(),
            bytes: view.data().to_vec(),
        };
        self.release(name);
        Ok(Some(raw))
    }

    /// Tensor `name` as bitsandbytes' 4-bit weight of PyTorch shape `shape`
    /// when the file holds it quantized (its `quant_state` beside it), else None.
    pub fn quant4(&self, name: &str, shape: &[usize]) -> Result<Option<crate::io::bnb4::Quant4>> {
        let path = self.shard_path(name);
        crate::io::bnb4::Quant4::from_parts(name, shape, &path, |n| self.raw(n))
    }

    /// Drops tensor `name`'s pages from this process's resident memory (the
    /// OS page cache keeps them; a later read faults them back in). Why: a
    /// pass that reads a large checkpoint once, tensor by tensor (`ept
    /// quantize`), would otherwise count the whole memory-mapped file in its
    /// resident set by the end, though it keeps only what it made of each.
    pub fn release(&self, name: &str) {
        const PAGE: usize = 4096;
        let Some((i, ..)) = self.index.get(name) else {
            return;
        };
        let shard = &self.shards[*i];
        let Ok(st) = SafeTensors::deserialize(&shard.mmap) else {
            return;
        };
        let Ok(view) = st.tensor(name) else {
            return;
        };
        let data = view.data();
        let start = data.as_ptr() as usize - shard.mmap.as_ptr() as usize;
        let aligned = start / PAGE * PAGE;
        let len = start + data.len() - aligned;
        // SAFETY: the mapping is read-only and backed by the file: dropping
        // its pages loses nothing, the next read of them refaults from the
        // file. A failure (another page size) only leaves the pages resident.
        let _ = unsafe {
            shard
                .mmap
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, aligned, len)
        };
    }

    /// Whether the file holds bitsandbytes 4-bit weights.
    pub fn is_quantized(&self) -> bool {
        self.index
            .keys()
            .any(|n| n.contains(".quant_state.bitsandbytes__"))
    }

    /// The stored dtype of tensor `name` (`F32`, `BF16`, ...), if present.
    pub fn dtype_of(&self, name: &str) -> Option<String> {
        self.index.get(name).map(|(_, _, d)| dtype_name(*d))
    }

    /// The shard holding `name` (the origin when absent), for messages.
    fn shard_path(&self, name: &str) -> PathBuf {
        self.index.get(name).map_or_else(
            || self.origin.clone(),
            |(i, _, _)| self.shards[*i].path.clone(),
        )
    }

    /// Reads tensor `name` of shape `shape` into a tensor of `dtype` on `device`.
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        dtype: FloatType,
        device: &Device,
    ) -> Result<Tensor<D>> {
        let values = self.read_f32(name, &shape)?;
        Ok(tensor_from_f32(values, shape, dtype, device))
    }
}

/// Builds a tensor of `dtype` from f32 values.
pub fn tensor_from_f32<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    dtype: FloatType,
    device: &Device,
) -> Tensor<D> {
    let data = TensorData::new(values, shape);
    let t = Tensor::<D>::from_data(data, (device, DType::F32));
    match dtype {
        FloatType::F32 | FloatType::Bf16Mixed => t,
        FloatType::Bf16 => t.cast(DType::BF16),
    }
}
