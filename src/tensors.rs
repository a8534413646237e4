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
