//! Small conversions between burn tensors and plain vectors.

use burn::tensor::{DType, Int, Tensor};

/// The values of a float tensor as f32, row-major.
pub fn to_f32_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("a float tensor converts to f32")
}

/// The values of an integer tensor as i64, row-major.
pub fn to_i64_vec<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
    t.into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("an int tensor converts to i64")
}

/// One f32 tensor to store: name, shape, row-major values.
pub type NamedF32 = (String, Vec<usize>, Vec<f32>);

/// The bytes of a safetensors file holding f32 `tensors` and `metadata`.
pub fn safetensors_f32(
    tensors: &[NamedF32],
    metadata: std::collections::HashMap<String, String>,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::serialize(views, Some(metadata))
}

/// Little-endian f32 bytes (a safetensors F32 view's data) as values.
pub fn f32_from_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
