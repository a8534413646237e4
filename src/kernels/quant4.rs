//! Products with 4-bit frozen weights (bitsandbytes' NF4/FP4, [`Quant4`]):
//! `y = x·dequant(W)ᵀ` forward and `dx = dy·dequant(W)` backward, never a
//! weight gradient, as QLoRA computes them.
//!
//! Why per call: the weight stays 4-bit in memory (0.52 bytes a parameter
//! with double quantization) and is decoded into the operand the product
//! reads each time it is used — the AMX tile layout in bf16, or an f32
//! matrix — then dropped. The backward pass keeps the shared 4-bit weight
//! (an `Arc`), never a decoded copy, so a training step holds at most one
//! layer's decoded weight at a time, not the model in bf16. Decoding costs
//! one pass over `in × out` values per product, small beside the product's
//! `rows × in × out` multiply-adds at training batch sizes.

use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::{DType, Shape, Tensor, TensorData};
use rayon::prelude::*;

use super::common::{contiguous_f32, flex_f32, flex_tensor};
use super::linear::LinearOps;
use super::packed::{PackedB, round_bf16, to_bf16};
use super::{amx, matmul};
use crate::io::bnb4::Quant4;

/// `x·dequant(W)ᵀ` over the last dimension of `x` (`[.., in]` → `[.., out]`),
/// `W` `[out, in]` in 4 bits. `bf16`: the operands are rounded to bf16 and
/// summed in f32 (bf16-mixed, bitsandbytes' `compute_dtype=bfloat16`); else
/// the decoded weights multiply in `x`'s dtype. Gradients reach `x` only.
pub fn quant4_linear(x: Tensor<3>, w: Arc<Quant4>, bf16: bool) -> Tensor<3> {
    if flex_f32(&x) {
        let out = <burn::backend::Dispatch as LinearOps>::quant4_linear(x.into_dispatch(), w, bf16);
        Tensor::from_dispatch(out)
    } else {
        quant4_linear_reference(x, &w, bf16)
    }
}

/// [`quant4_linear`] from plain tensor operations, for other backends and
/// dtypes: the weight decoded into a tensor of `x`'s device for this call.
/// Under autodiff burn's product keeps that tensor until the backward pass.
pub fn quant4_linear_reference(x: Tensor<3>, w: &Quant4, bf16: bool) -> Tensor<3> {
    let [d_out, d_in] = [w.shape[0], w.shape[1]];
    let decoded = Tensor::<2>::from_data(
        TensorData::new(w.dequantize(), [d_out, d_in]),
        (&x.device(), DType::F32),
    );
    if bf16 {
        super::bf16_linear_reference(x, decoded.cast(DType::BF16).transpose())
    } else {
        let dtype = x.dtype();
        burn::tensor::module::linear(x, decoded.cast(dtype).transpose(), None)
    }
}

/// `a·dequant(W)ᵀ` (forward) or `a·dequant(W)` (`transposed`, the backward
/// pass) over the last dimension of `a`, on the Flex backend.
pub(super) fn product(a: FlexTensor, w: &Quant4, bf16: bool, transposed: bool) -> FlexTensor {
    let shape = a.shape();
    let dims = shape.as_slice();
    let k = *dims.last().unwrap_or(&1);
    let m = shape.num_elements() / k.max(1);
    let [d_out, d_in] = [w.shape[0], w.shape[1]];
    let n = if transposed { d_in } else { d_out };
    assert_eq!(
        k,
        if transposed { d_out } else { d_in },
        "quant4 product: width mismatch"
    );
    let a_values = contiguous_f32(&a);
    // The layer decoded in order (bf16-rounded for bf16 products), then read
    // as the product needs it; dropped when the product returns.
    let out = if bf16 && amx::available() {
        let bits = bf16_bits(w);
        // B[i][j]: the forward product reads Wᵀ, the backward W.
        let b = if transposed {
            PackedB::from_bf16_bits(k, n, |i, j| bits[i * d_in + j])
        } else {
            PackedB::from_bf16_bits(k, n, |i, j| bits[j * d_in + i])
        };
        amx::matmul(&a_values, m, &b)
    } else {
        let decoded = w.dequantize_with(|x| if bf16 { round_bf16(x) } else { x });
        let rounded;
        let a_op: &[f32] = if bf16 {
            rounded = a_values
                .par_iter()
                .map(|&v| round_bf16(v))
                .collect::<Vec<f32>>();
            &rounded
        } else {
            &a_values
        };
        let w_op = matmul::Operand::rows(&decoded, d_in);
        let w_op = if transposed { w_op } else { w_op.transposed() };
        matmul::product(m, n, k, matmul::Operand::rows(a_op, k), w_op)
    };
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().unwrap() = n;
    flex_tensor(out, Shape::from(out_dims))
}

/// Every weight of `w`, row-major, as the bits of its bf16 value (decoded
/// to the stored dtype, then rounded to bf16, as bitsandbytes' bf16 compute):
/// per block of `blocksize`, its 16 possible values once, then one lookup
/// per weight.
fn bf16_bits(w: &Quant4) -> Vec<u16> {
    let (code, scales) = (w.quant_type.code(), w.absmax.decode());
    let bs = w.blocksize;
    let mut out = vec![0u16; w.numel()];
    out.par_chunks_mut(bs).enumerate().for_each(|(b, chunk)| {
        let table: [u16; 16] = std::array::from_fn(|q| to_bf16(w.dtype.round(code[q] * scales[b])));
        let bytes = &w.packed[b * bs / 2..];
        for (pair, byte) in chunk.chunks_mut(2).zip(bytes) {
            pair[0] = table[(byte >> 4) as usize];
            if let Some(second) = pair.get_mut(1) {
                *second = table[(byte & 0x0f) as usize];
            }
        }
    });
    out
}

/// The backward step of [`LinearOps::quant4_linear`] under autodiff: keeps
/// the shared 4-bit weight, never the input nor a decoded copy.
#[derive(Debug)]
pub(super) struct Quant4Step;

impl<B: Backend + LinearOps> burn::backend::autodiff::ops::Backward<B, 1> for Quant4Step {
    type State = (Arc<Quant4>, bool);

    fn backward(
        self,
        ops: burn::backend::autodiff::ops::Ops<Self::State, 1>,
        grads: &mut burn::backend::autodiff::grads::Gradients,
        _: &mut burn::backend::autodiff::checkpoint::base::Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let [x_node] = ops.parents;
        let (w, bf16) = ops.state;
        if let Some(node) = x_node {
            grads.register::<B>(node.id, B::quant4_linear_backward(grad, w, bf16));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::bnb4::{QuantType, StoredDtype};
    use crate::kernels::common::testing::{max_abs_diff, random};
    use burn::tensor::Device;

    /// The 4-bit product equals the dense product on the decoded weight, in
    /// values and input gradients, in f32 and bf16-mixed.
    #[test]
    fn quant4_linear_is_the_product_with_the_decoded_weight() {
        let (d_in, d_out) = (96, 40);
        let device = Device::flex();
        let w = random([d_out, d_in], 21, &device);
        let values = crate::tensors::to_f32_vec(w);
        let q = Arc::new(Quant4::quantize(
            &values,
            &[d_out, d_in],
            QuantType::Nf4,
            true,
            64,
            StoredDtype::F32,
        ));
        let decoded =
            Tensor::<2>::from_data(TensorData::new(q.dequantize(), [d_out, d_in]), &device);
        let ad = device.clone().autodiff();
        for bf16 in [false, true] {
            let x = random([3, 7, d_in], 22, &ad).require_grad();
            let up = random([3, 7, d_out], 23, &ad);
            let out = quant4_linear(x.clone(), q.clone(), bf16);
            let grads = (out.clone() * up.clone()).sum().backward();
            let dx = x.grad(&grads).unwrap();
            let round = |t: Tensor<3>| {
                if bf16 {
                    t.cast(DType::BF16).cast(DType::F32)
                } else {
                    t
                }
            };
            let w_t = Tensor::<2>::from_data(decoded.to_data(), &device);
            let w_t = if bf16 {
                w_t.cast(DType::BF16).cast(DType::F32)
            } else {
                w_t
            };
            let x0 = Tensor::<3>::from_data(x.to_data(), &device);
            let up0 = Tensor::<3>::from_data(up.to_data(), &device);
            let want = round(x0).matmul(w_t.clone().transpose().unsqueeze::<3>());
            let want_dx = round(up0).matmul(w_t.unsqueeze::<3>());
            let out = Tensor::<3>::from_data(out.to_data(), &device);
            let (d, dd) = (max_abs_diff(out, want), max_abs_diff(dx, want_dx));
            assert!(d < 1e-4, "bf16={bf16}: output off by {d}");
            assert!(dd < 1e-4, "bf16={bf16}: input gradient off by {dd}");
        }
    }
}
