//! Products with frozen weights: the dense layers in f32 ([`frozen_linear`],
//! on [`super::matmul`], straight into unzeroed buffers) and in bf16-mixed
//! precision ([`bf16_linear`], on [`super::amx`]'s packed weights), and the
//! LM head's few-rows product ([`few_rows_matmul`], on [`super::rowdot`]).
//! Gradients reach the input only; the backward passes keep the (frozen,
//! shared) weight, never the layer's input.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension,
};
use burn::tensor::{DType, Device, FloatDType, Shape, Tensor};
use rayon::prelude::*;

use super::amx;
use super::common::{contiguous_f32, enabled, flex_f32, flex_tensor, forward_strides, strided_f32};
use super::packed::{PackedB, PackedLinear, round_bf16};
use super::{matmul, quant4, rowdot};
use crate::io::bnb4::Quant4;

/// `x·W` in bf16-mixed precision: `x` rounded to bf16, products summed in f32,
/// as PyTorch's bf16 autocast computes a linear layer. `weight` is `[in, out]`,
/// already rounded to bf16; `packed` is the same weight laid out for AMX tiles
/// (None where the CPU has none). The backward pass rounds the incoming
/// gradient to bf16 the same way. Gradients reach `x` only: the weight is frozen.
pub fn bf16_linear(
    x: Tensor<3>,
    weight: Tensor<2>,
    packed: Option<Arc<PackedLinear>>,
) -> Tensor<3> {
    // The backward pass computes no weight gradient: a trainable weight
    // (full-parameter training) must not come here.
    assert!(
        !weight.is_require_grad(),
        "bf16_linear: the weight is frozen in bf16-mixed precision"
    );
    let on_flex = weight.device().inner() == Device::flex();
    if flex_f32(&x) && on_flex && matches!(weight.dtype(), DType::F32 | DType::BF16) {
        let out =
            <Dispatch as LinearOps>::bf16_linear(x.into_dispatch(), weight.into_dispatch(), packed);
        Tensor::from_dispatch(out)
    } else {
        bf16_linear_reference(x, weight)
    }
}

/// [`bf16_linear`]'s forward pass from plain tensor operations (other backends).
///
/// With a bf16 weight off the CPU backend (a GPU), the product itself runs in
/// bf16, as under PyTorch's autocast: bf16 operands, f32 accumulation inside
/// the kernel, the result rounded to bf16 and returned in `x`'s dtype. Else
/// the rounded operands are multiplied in `x`'s dtype.
pub fn bf16_linear_reference(x: Tensor<3>, weight: Tensor<2>) -> Tensor<3> {
    let dtype = x.dtype();
    if weight.dtype() == DType::BF16 && weight.device().inner() != Device::flex() {
        return burn::tensor::module::linear(x.cast(DType::BF16), weight, None).cast(dtype);
    }
    burn::tensor::module::linear(x.cast(DType::BF16).cast(dtype), weight.cast(dtype), None)
}

/// `x·w` over the last dimension of `x` for a frozen weight `w` `[in, out]`
/// (gradients reach `x` only): for f32 on Flex on [`matmul::product`], which
/// writes into unzeroed buffers, the backward reading `w` transposed in
/// place; else (other backends and dtypes, a trainable weight) burn's `linear`.
pub fn frozen_linear(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    if enabled() && !w.is_require_grad() && flex_f32(&x) && flex_f32(&w) {
        let out = <Dispatch as LinearOps>::frozen_linear(x.into_dispatch(), w.into_dispatch());
        Tensor::from_dispatch(out)
    } else {
        burn::tensor::module::linear(x, w, None)
    }
}

/// `x·w` over the last dimension of `x` when `x` has few rows and `w` is the
/// transpose of a row-major, frozen weight (the tied or untied LM head,
/// `[d, vocab]`): the head's product in decoding and in prompt tuning (a few
/// target tokens per example), on the row-dot kernel of [`rowdot`] for f32 on
/// Flex, else burn's product. Gradients reach `x` only; a trainable `w`
/// (full-parameter pretraining) takes burn's product.
pub fn few_rows_matmul(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    /// Above this many rows the gemm crate is the faster of the two.
    const MAX_ROWS: usize = 128;
    let [b, t, k] = x.dims();
    let n = w.dims()[1];
    let frozen = !w.is_require_grad();
    if enabled() && frozen && flex_f32(&x) && flex_f32(&w) && b * t <= MAX_ROWS {
        let a = x.reshape([b * t, k]);
        let out = <Dispatch as LinearOps>::few_rows_matmul(a.into_dispatch(), w.into_dispatch());
        Tensor::<2>::from_dispatch(out).reshape([b, t, n])
    } else {
        burn::tensor::module::linear(x, w, None)
    }
}

/// The fused products with frozen weights, per backend (a burn backend
/// extension). The `*_backward` methods are the backward passes the
/// `Autodiff` implementation calls on the inner backend.
#[backend_extension(Flex, Autodiff)]
pub trait LinearOps: Backend {
    /// `bf16(x)·W` with f32 sums; `x` is `[.., in]`, `weight` `[in, out]`.
    fn bf16_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        packed: Option<Arc<PackedLinear>>,
    ) -> FloatTensor<Self>;

    /// Gradient of [`LinearOps::bf16_linear`] with respect to `x`: `bf16(grad)·Wᵀ`.
    fn bf16_linear_backward(
        grad: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        packed: Option<Arc<PackedLinear>>,
    ) -> FloatTensor<Self>;

    /// `x·w` over the last dimension of `x`, `w` `[in, out]` frozen; see [`frozen_linear`].
    fn frozen_linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Gradient of [`LinearOps::frozen_linear`] with respect to `x`: `grad·wᵀ`.
    fn frozen_linear_backward(grad: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `a·w` for `a` `[m, k]` with few rows and `w` `[k, n]` the transpose of
    /// a row-major `[n, k]` weight (the tied head); see [`few_rows_matmul`].
    fn few_rows_matmul(a: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `x·dequant(W)ᵀ` for a 4-bit weight; see [`super::quant4::quant4_linear`].
    fn quant4_linear(x: FloatTensor<Self>, w: Arc<Quant4>, bf16: bool) -> FloatTensor<Self>;

    /// Gradient of [`LinearOps::quant4_linear`] with respect to `x`: `grad·dequant(W)`.
    fn quant4_linear_backward(
        grad: FloatTensor<Self>,
        w: Arc<Quant4>,
        bf16: bool,
    ) -> FloatTensor<Self>;
}

impl LinearOps for Flex {
    fn bf16_linear(
        x: FlexTensor,
        weight: FlexTensor,
        packed: Option<Arc<PackedLinear>>,
    ) -> FlexTensor {
        bf16_product(x, weight, packed.as_ref().map(|p| &p.forward), false)
    }

    fn bf16_linear_backward(
        grad: FlexTensor,
        weight: FlexTensor,
        packed: Option<Arc<PackedLinear>>,
    ) -> FlexTensor {
        bf16_product(grad, weight, packed.as_ref().map(|p| &p.backward), true)
    }

    fn frozen_linear(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        dense_product(x, w, false)
    }

    fn frozen_linear_backward(grad: FlexTensor, w: FlexTensor) -> FlexTensor {
        dense_product(grad, w, true)
    }

    fn few_rows_matmul(a: FlexTensor, w: FlexTensor) -> FlexTensor {
        let ([m, k], n) = (
            [a.shape().as_slice()[0], a.shape().as_slice()[1]],
            w.shape().as_slice()[1],
        );
        let w_rows = Flex::float_transpose(w.clone());
        if let Some(rows) = w_rows.as_slice::<f32>() {
            let a_values = contiguous_f32(&a);
            if let Some(out) = rowdot::rows_times_transposed(&a_values, m, rows, n, k) {
                return flex_tensor(out, Shape::from(vec![m, n]));
            }
        }
        Flex::float_matmul(a, w)
    }

    fn quant4_linear(x: FlexTensor, w: Arc<Quant4>, bf16: bool) -> FlexTensor {
        quant4::product(x, &w, bf16, false)
    }

    fn quant4_linear_backward(grad: FlexTensor, w: Arc<Quant4>, bf16: bool) -> FlexTensor {
        quant4::product(grad, &w, bf16, true)
    }
}

/// `a·w` (or `a·wᵀ` when `transposed`) over the last dimension of `a`, `w`
/// a matrix read through its strides (a transposed view costs no copy).
fn dense_product(a: FlexTensor, w: FlexTensor, transposed: bool) -> FlexTensor {
    let shape = a.shape();
    let mut out_dims = shape.as_slice().to_vec();
    let k = *out_dims.last().unwrap_or(&1);
    let m = shape.num_elements() / k.max(1);
    let w = forward_strides(w);
    let (values, strides) = strided_f32(&w);
    let [w_rows, w_cols] = [w.shape().as_slice()[0], w.shape().as_slice()[1]];
    let w_op = matmul::Operand {
        values,
        strides: [strides[0], strides[1]],
    };
    let (w_op, n) = match transposed {
        false => (w_op, w_cols),
        true => (w_op.transposed(), w_rows),
    };
    let a_values = contiguous_f32(&a);
    let out = matmul::product(m, n, k, matmul::Operand::rows(&a_values, k), w_op);
    *out_dims.last_mut().unwrap() = n;
    flex_tensor(out, Shape::from(out_dims))
}

/// `bf16(a)·W` (or `·Wᵀ` when `transposed`) over the last dimension of `a`:
/// on AMX tiles when the weight is packed and the CPU has them, else rounded
/// operands through burn's f32 matrix product (the same arithmetic, summed in
/// another order).
fn bf16_product(
    a: FlexTensor,
    weight: FlexTensor,
    packed: Option<&PackedB>,
    transposed: bool,
) -> FlexTensor {
    let shape = a.shape();
    let dims = shape.as_slice();
    let k = *dims.last().unwrap_or(&1);
    let m = shape.num_elements() / k.max(1);
    let values = contiguous_f32(&a);
    let mut out_dims = dims.to_vec();
    match packed {
        Some(b) if amx::available() => {
            let out = amx::matmul(&values, m, b);
            *out_dims.last_mut().unwrap() = b.n();
            flex_tensor(out, Shape::from(out_dims))
        }
        // A bf16 weight kept unpacked (beside 4-bit layers): packed for this product.
        None if amx::available() && weight.dtype() == DType::BF16 => {
            let w = Flex::float_cast(weight, FloatDType::F32);
            let w_values = contiguous_f32(&w);
            let [d_in, d_out] = [w.shape().as_slice()[0], w.shape().as_slice()[1]];
            let b = if transposed {
                PackedB::from_fn(d_out, d_in, |i, j| w_values[j * d_out + i])
            } else {
                PackedB::from_fn(d_in, d_out, |i, j| w_values[i * d_out + j])
            };
            let out = amx::matmul(&values, m, &b);
            *out_dims.last_mut().unwrap() = b.n();
            flex_tensor(out, Shape::from(out_dims))
        }
        _ => {
            let rounded: Vec<f32> = values.par_iter().map(|&v| round_bf16(v)).collect();
            let a2 = flex_tensor(rounded, Shape::from(vec![m, k]));
            // A bf16 weight (kept beside its AMX copy) is exact in f32.
            let weight = Flex::float_cast(weight, FloatDType::F32);
            let w = if transposed {
                Flex::float_transpose(weight)
            } else {
                weight
            };
            let out = Flex::float_matmul(a2, w);
            let n = out.shape().as_slice()[1];
            *out_dims.last_mut().unwrap() = n;
            Flex::float_reshape(out, Shape::from(out_dims))
        }
    }
}

/// The backward step of [`LinearOps::bf16_linear`] under autodiff; keeps the
/// (frozen, shared) weight only, never the layer's input.
#[derive(Debug)]
struct Bf16LinearStep;

impl<B: Backend + LinearOps> Backward<B, 1> for Bf16LinearStep {
    type State = (FloatTensor<B>, Option<Arc<PackedLinear>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [x_node] = ops.parents;
        let (w, packed) = ops.state;
        if let Some(node) = x_node {
            grads.register::<B>(node.id, B::bf16_linear_backward(grad, w, packed));
        }
    }
}

/// The backward step of [`LinearOps::frozen_linear`] and
/// [`LinearOps::few_rows_matmul`] under autodiff: the input gradient `grad·wᵀ`
/// ([`LinearOps::frozen_linear_backward`]); keeps the (frozen, shared) weight
/// only, never the layer's input.
#[derive(Debug)]
struct FrozenLinearStep;

impl<B: Backend + LinearOps> Backward<B, 1> for FrozenLinearStep {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [x_node] = ops.parents;
        if let Some(node) = x_node {
            grads.register::<B>(node.id, B::frozen_linear_backward(grad, ops.state));
        }
    }
}

/// `product(x, w)` under autodiff for a frozen weight `w`: the gradient
/// reaches `x` only ([`FrozenLinearStep`], which keeps `w`).
fn frozen_weight_product<B: Backend + LinearOps, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    w: FloatTensor<Autodiff<B, C>>,
    product: fn(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    let prep = FrozenLinearStep
        .prepare::<C>([x.node()])
        .compute_bound()
        .stateful();
    let (x, w) = (x.into_primitive(), w.into_primitive());
    match prep {
        OpsKind::Tracked(prep) => {
            let out = product(x, w.clone());
            prep.finish(w, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(product(x, w)),
    }
}

impl<B: Backend + LinearOps, C: CheckpointStrategy> LinearOps for Autodiff<B, C> {
    fn bf16_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        packed: Option<Arc<PackedLinear>>,
    ) -> FloatTensor<Self> {
        let prep = Bf16LinearStep
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        let (x, w) = (x.into_primitive(), weight.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => {
                let out = B::bf16_linear(x, w.clone(), packed.clone());
                prep.finish((w, packed), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::bf16_linear(x, w, packed)),
        }
    }

    fn bf16_linear_backward(
        grad: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        packed: Option<Arc<PackedLinear>>,
    ) -> FloatTensor<Self> {
        let dx = B::bf16_linear_backward(grad.into_primitive(), weight.into_primitive(), packed);
        Self::from_inner(dx)
    }

    fn frozen_linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        frozen_weight_product::<B, C>(x, w, B::frozen_linear)
    }

    fn frozen_linear_backward(grad: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::frozen_linear_backward(
            grad.into_primitive(),
            w.into_primitive(),
        ))
    }

    fn few_rows_matmul(a: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        frozen_weight_product::<B, C>(a, w, B::few_rows_matmul)
    }

    fn quant4_linear(x: FloatTensor<Self>, w: Arc<Quant4>, bf16: bool) -> FloatTensor<Self> {
        let prep = quant4::Quant4Step
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        let x = x.into_primitive();
        match prep {
            OpsKind::Tracked(prep) => {
                let out = B::quant4_linear(x, w.clone(), bf16);
                prep.finish((w, bf16), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::quant4_linear(x, w, bf16)),
        }
    }

    fn quant4_linear_backward(
        grad: FloatTensor<Self>,
        w: Arc<Quant4>,
        bf16: bool,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::quant4_linear_backward(grad.into_primitive(), w, bf16))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::common::testing::{max_abs_diff, random};

    #[test]
    fn few_rows_matmul_is_the_head_product_on_and_off_autodiff() {
        // A head weight as T5 holds it: the transpose of a row-major [vocab, d].
        for device in [Device::flex(), Device::flex().autodiff()] {
            let shared = random([300, 40], 5, &device);
            for rows in [1, 3, 130] {
                let x = random([rows, 1, 40], 6, &device);
                let got = few_rows_matmul(x.clone(), shared.clone().transpose());
                let want = burn::tensor::module::linear(x, shared.clone().transpose(), None);
                assert_eq!(got.dims(), [rows, 1, 300]);
                let scale = want.clone().abs().max().into_scalar::<f32>();
                let d = max_abs_diff(got, want);
                assert!(d < 1e-5 * scale, "{rows} rows on {device:?}: off by {d}");
            }
        }
        // Under autodiff, the input gradient is burn's.
        let device = Device::flex().autodiff();
        let shared = random([300, 40], 5, &device);
        let up = random([3, 2, 300], 7, &device);
        let grad_of = |fused: bool| {
            let x = random([3, 2, 40], 6, &device).require_grad();
            let out = if fused {
                few_rows_matmul(x.clone(), shared.clone().transpose())
            } else {
                burn::tensor::module::linear(x.clone(), shared.clone().transpose(), None)
            };
            let grads = (out * up.clone()).sum().backward();
            x.grad(&grads).unwrap()
        };
        let d = max_abs_diff(grad_of(true), grad_of(false));
        assert!(d < 1e-5, "input gradients differ by {d}");
    }

    #[test]
    fn frozen_linear_is_burns_linear_in_values_and_input_gradients() {
        let device = Device::flex().autodiff();
        // A row-major [in, out] weight (Linear's layout) and a transposed view
        // of a row-major [out, in] one (the tied head's), past the gemm
        // crate's tiles and below its threshold for threads.
        let stored = random([70, 33], 11, &device);
        let viewed = random([33, 70], 12, &device).transpose();
        for (what, w) in [("row-major", stored), ("transposed view", viewed)] {
            for rows in [1, 5, 300] {
                let up = random([rows, 2, 33], 13, &device);
                let run = |fused: bool| {
                    let x = random([rows, 2, 70], 14, &device).require_grad();
                    let out = if fused {
                        frozen_linear(x.clone(), w.clone())
                    } else {
                        burn::tensor::module::linear(x.clone(), w.clone(), None)
                    };
                    let grads = (out.clone() * up.clone()).sum().backward();
                    (out, x.grad(&grads).unwrap())
                };
                let ((o1, g1), (o2, g2)) = (run(true), run(false));
                assert_eq!(o1.dims(), [rows, 2, 33]);
                // Relative to the largest value: the sums run in another order.
                let scale = |t: &Tensor<3>| t.clone().abs().max().into_scalar::<f32>();
                let (s_out, s_grad) = (scale(&o2), scale(&g2));
                let (d_out, d_grad) = (max_abs_diff(o1, o2), max_abs_diff(g1, g2));
                assert!(
                    d_out < 1e-5 * s_out,
                    "{what}, {rows}: outputs off by {d_out}"
                );
                assert!(
                    d_grad < 1e-5 * s_grad,
                    "{what}, {rows}: gradients off by {d_grad}"
                );
            }
        }
    }

    /// `bf16_linear` on the AMX tiles (where the CPU has them) and on the
    /// portable path, against plain f32 products of the rounded operands:
    /// `round(x)·W` forward, `round(dy)·Wᵀ` backward.
    #[test]
    fn bf16_linear_is_the_product_of_rounded_operands_in_values_and_gradients() {
        let device = Device::flex();
        let (b, t, d_in, d_out) = (3, 11, 96, 40);
        let round = |x: Tensor<3>| x.cast(DType::BF16).cast(DType::F32);
        let x = random([b, t, d_in], 1, &device);
        let w = (random([d_in, d_out], 2, &device) / (d_in as f64).sqrt())
            .cast(DType::BF16)
            .cast(DType::F32);
        let up = random([b, t, d_out], 3, &device);
        let want_out = round(x.clone()).matmul(w.clone().unsqueeze::<3>());
        let want_dx = round(up.clone()).matmul(w.clone().transpose().unsqueeze::<3>());
        let w_t = crate::tensors::to_f32_vec(w.clone());
        let packed = Arc::new(PackedLinear::from_transposed(&w_t, d_in, d_out));
        let ad = device.clone().autodiff();
        let mut paths = vec![("portable", None, DType::F32)];
        if amx::detected() {
            // AMX tiles or AVX512-BF16, whichever this CPU has (amx::kernel),
            // packed once or, for a weight held in bf16, per product.
            paths.push(("packed", Some(packed), DType::F32));
            paths.push(("packed per product", None, DType::BF16));
        } else {
            eprintln!("no AMX nor AVX512-BF16 on this CPU: the portable path only");
        }
        for (name, packed, w_dtype) in paths {
            let xa = Tensor::<3>::from_data(x.to_data(), &ad).require_grad();
            let wa = Tensor::<2>::from_data(w.to_data(), &ad).cast(w_dtype);
            let out = bf16_linear(xa.clone(), wa, packed);
            let grads = (out.clone() * Tensor::from_data(up.to_data(), &ad))
                .sum()
                .backward();
            let dx = xa.grad(&grads).unwrap();
            let out = Tensor::<3>::from_data(out.to_data(), &device);
            let d_out_max = max_abs_diff(out, want_out.clone());
            let d_dx_max = max_abs_diff(dx, want_dx.clone());
            assert!(d_out_max < 1e-5, "{name}: output differs by {d_out_max}");
            assert!(
                d_dx_max < 1e-5,
                "{name}: input gradient differs by {d_dx_max}"
            );
        }
        // The plain-op fallback of other backends: the same forward values.
        let plain = bf16_linear_reference(x, w);
        let d = max_abs_diff(plain, want_out);
        assert!(d < 1e-5, "reference forward differs by {d}");
    }
}
