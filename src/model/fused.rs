//! Fused CPU kernels for the backbone's steps, with their own backward.
//!
//! Why: burn composes T5's RMS norm from six tensor operations, the attention
//! softmax (with its additive position bias and mask) from six more, and T5
//! v1.1's gated-GELU activation from nine. On the CPU
//! backend each is a pass over memory, run on the calling thread, and under
//! autodiff each is a graph node that keeps its inputs alive for the backward
//! pass. Here each becomes one pass forward and one backward, parallel over rows,
//! keeping only what the backward needs (the input rows for the norm, the
//! probabilities for the softmax). The products go the same way: multi-head
//! attention one head at a time ([`attention`], kernel in
//! [`super::attention_kernel`]), and the frozen dense layers straight into
//! unzeroed buffers ([`frozen_linear`], on [`super::matmul`]); ReLU and the
//! residual additions run in parallel, in place when their buffer is theirs.
//!
//! The kernels are a burn backend extension ([`FusedOps`]) implemented for the
//! Flex CPU backend, plus an `Autodiff` implementation that records the backward
//! step. The public functions use them for f32 tensors on Flex
//! and fall back to the plain tensor operations everywhere else (other backends,
//! other dtypes, or after [`set_enabled`]`(false)`); tests check that the two
//! agree to 1e-5 in values and gradients.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, broadcast_shape};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension,
};
use burn::tensor::activation::softmax;
use burn::tensor::{DType, Device, FloatDType, Shape, Tensor, TensorData};
use rayon::prelude::*;

use super::amx::{self, PackedB, PackedLinear};
use super::attention_kernel;
use super::cross_attention_kernel;
use super::matmul;
use super::rowdot;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused kernels on or off for the whole process (on by default).
/// Off, every call takes the plain tensor operations: for benchmarks that
/// measure what the kernels buy, and for checking one against the other.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the fused kernels are on (see [`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// "fused" or "plain", as the benchmarks report [`enabled`].
pub fn kernels_name() -> &'static str {
    if enabled() { "fused" } else { "plain" }
}

/// The fused kernels apply to f32 tensors on the Flex CPU backend.
fn flex_f32<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F32 && t.device().inner() == Device::flex()
}

/// T5LayerNorm, `weight * x / sqrt(mean(x²) + eps)` over the last dimension.
pub fn rms_norm(x: Tensor<3>, weight: Tensor<1>, eps: f64) -> Tensor<3> {
    if enabled() && flex_f32(&x) && flex_f32(&weight) {
        let out = <Dispatch as FusedOps>::rms_norm(x.into_dispatch(), weight.into_dispatch(), eps);
        Tensor::from_dispatch(out)
    } else {
        rms_norm_reference(x, weight, eps)
    }
}

/// [`rms_norm`] from plain tensor operations, statistics in f32 whatever the dtype.
pub fn rms_norm_reference(x: Tensor<3>, weight: Tensor<1>, eps: f64) -> Tensor<3> {
    let dtype = x.dtype();
    let x32 = x.cast(DType::F32);
    let var = x32.clone().square().mean_dim(2);
    let normed = x32 * (var + eps).sqrt().recip();
    normed.cast(dtype) * weight.unsqueeze::<3>()
}

/// `softmax(scores + bias)` over the last dimension; `bias` broadcasts to `scores`.
pub fn softmax_with_bias(scores: Tensor<4>, bias: Tensor<4>) -> Tensor<4> {
    if enabled() && flex_f32(&scores) && flex_f32(&bias) {
        let out =
            <Dispatch as FusedOps>::softmax_with_bias(scores.into_dispatch(), bias.into_dispatch());
        Tensor::from_dispatch(out)
    } else {
        softmax_with_bias_reference(scores, bias)
    }
}

/// [`softmax_with_bias`] from plain tensor operations.
pub fn softmax_with_bias_reference(scores: Tensor<4>, bias: Tensor<4>) -> Tensor<4> {
    softmax(scores + bias, 3)
}

/// T5 v1.1's gated feed-forward activation, `gelu_new(gate) ⊙ linear`, where
/// `gelu_new` is the tanh approximation of GELU.
pub fn gated_gelu(gate: Tensor<3>, linear: Tensor<3>) -> Tensor<3> {
    if enabled() && flex_f32(&gate) && flex_f32(&linear) {
        let out = <Dispatch as FusedOps>::gated_gelu(gate.into_dispatch(), linear.into_dispatch());
        Tensor::from_dispatch(out)
    } else {
        gated_gelu_reference(gate, linear)
    }
}

/// [`gated_gelu`] from plain tensor operations.
pub fn gated_gelu_reference(gate: Tensor<3>, linear: Tensor<3>) -> Tensor<3> {
    burn::tensor::activation::gelu_approximate(gate) * linear
}

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
            <Dispatch as FusedOps>::bf16_linear(x.into_dispatch(), weight.into_dispatch(), packed);
        Tensor::from_dispatch(out)
    } else {
        bf16_linear_reference(x, weight)
    }
}

/// [`bf16_linear`]'s forward pass from plain tensor operations (other backends).
pub fn bf16_linear_reference(x: Tensor<3>, weight: Tensor<2>) -> Tensor<3> {
    let dtype = x.dtype();
    burn::tensor::module::linear(x.cast(DType::BF16).cast(dtype), weight.cast(dtype), None)
}

/// `max(x, 0)` elementwise (NaN kept, as burn and PyTorch keep it): for f32
/// on Flex, parallel and in place when `x` holds the only reference to its
/// buffer (the feed-forward layer's fresh product); else burn's `relu`, a
/// pass on the calling thread.
pub fn relu(x: Tensor<3>) -> Tensor<3> {
    if enabled() && flex_f32(&x) {
        Tensor::from_dispatch(<Dispatch as FusedOps>::fused_relu(x.into_dispatch()))
    } else {
        burn::tensor::activation::relu(x)
    }
}

/// `a + b` for two tensors of one shape (the residual connections): for f32
/// on Flex, parallel and in place in `b` when it holds the only reference to
/// its buffer (a sublayer's fresh output); else burn's addition.
pub fn residual_add(a: Tensor<3>, b: Tensor<3>) -> Tensor<3> {
    if enabled() && flex_f32(&a) && flex_f32(&b) && a.dims() == b.dims() {
        let out = <Dispatch as FusedOps>::residual_add(a.into_dispatch(), b.into_dispatch());
        Tensor::from_dispatch(out)
    } else {
        a + b
    }
}

/// `x·w` over the last dimension of `x` for a frozen weight `w` `[in, out]`
/// (gradients reach `x` only): for f32 on Flex on [`matmul::product`], which
/// writes into unzeroed buffers, the backward reading `w` transposed in
/// place; else (other backends and dtypes, a trainable weight) burn's `linear`.
pub fn frozen_linear(x: Tensor<3>, w: Tensor<2>) -> Tensor<3> {
    if enabled() && !w.is_require_grad() && flex_f32(&x) && flex_f32(&w) {
        let out = <Dispatch as FusedOps>::frozen_linear(x.into_dispatch(), w.into_dispatch());
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
        let out = <Dispatch as FusedOps>::few_rows_matmul(a.into_dispatch(), w.into_dispatch());
        Tensor::<2>::from_dispatch(out).reshape([b, t, n])
    } else {
        burn::tensor::module::linear(x, w, None)
    }
}

/// T5's multi-head attention, `softmax(q·kᵀ + bias)·v` per head with
/// unscaled scores. `q` is `[b, t_q, h·d]`, `k` and `v` `[b, t_k, h·d]` (the
/// projections' outputs, heads side by side), `bias` (f32) broadcasts to
/// `[b, h, t_q, t_k]`; returns `[b, t_q, h·d]`, heads side by side. On the
/// kernel of [`attention_kernel`] for f32 on Flex, else from tensor operations.
pub fn attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    bias: Tensor<4>,
    heads: usize,
) -> Tensor<3> {
    if enabled() && flex_f32(&q) && flex_f32(&k) && flex_f32(&v) && flex_f32(&bias) {
        let out = <Dispatch as FusedOps>::multi_head_attention(
            q.into_dispatch(),
            k.into_dispatch(),
            v.into_dispatch(),
            bias.into_dispatch(),
            heads,
        );
        Tensor::from_dispatch(out)
    } else {
        attention_reference(q, k, v, bias, heads)
    }
}

/// [`attention`] from tensor operations: heads split by a transpose, batched
/// products, [`softmax_with_bias`] in f32, heads merged by a transpose.
pub fn attention_reference(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    bias: Tensor<4>,
    heads: usize,
) -> Tensor<3> {
    let [b, q_len, inner] = q.dims();
    let split = |x: Tensor<3>| {
        let t = x.dims()[1];
        x.reshape([b, t, heads, inner / heads]).swap_dims(1, 2)
    };
    let dtype = q.dtype();
    let scores = split(q).matmul(split(k).swap_dims(2, 3)).cast(DType::F32);
    let weights = softmax_with_bias(scores, bias).cast(dtype);
    weights
        .matmul(split(v))
        .swap_dims(1, 2)
        .reshape([b, q_len, inner])
}

/// The decoder's cross-attention of the projected queries `q` `[b, t_q,
/// h·d]` over the encoder output `enc` `[b, t_k, d]`, with the frozen key and
/// value weights `w_k`, `w_v` (`[d, h·d]`, transposed as [`super::t5::Linear`]
/// keeps them): `attention(q, enc·w_k, enc·w_v, bias)`. For f32 on Flex with
/// frozen weights, on the kernel of [`cross_attention_kernel`], which folds
/// the projections into the queries (the cheaper order when `t_q` is much
/// smaller than `d_kv`; the caller decides); else composed.
pub fn cross_attention(
    q: Tensor<3>,
    enc: Tensor<3>,
    w_k: Tensor<2>,
    w_v: Tensor<2>,
    bias: Tensor<4>,
    heads: usize,
) -> Tensor<3> {
    let frozen = !w_k.is_require_grad() && !w_v.is_require_grad() && !bias.is_require_grad();
    let f32_flex = flex_f32(&q) && flex_f32(&enc) && flex_f32(&w_k) && flex_f32(&w_v);
    if enabled() && frozen && f32_flex && flex_f32(&bias) {
        let out = <Dispatch as FusedOps>::cross_attention(
            q.into_dispatch(),
            enc.into_dispatch(),
            w_k.into_dispatch(),
            w_v.into_dispatch(),
            bias.into_dispatch(),
            heads,
        );
        Tensor::from_dispatch(out)
    } else {
        cross_attention_reference(q, enc, w_k, w_v, bias, heads)
    }
}

/// [`cross_attention`] as written: keys and values projected, then [`attention`].
pub fn cross_attention_reference(
    q: Tensor<3>,
    enc: Tensor<3>,
    w_k: Tensor<2>,
    w_v: Tensor<2>,
    bias: Tensor<4>,
    heads: usize,
) -> Tensor<3> {
    let k = frozen_linear(enc.clone(), w_k);
    let v = frozen_linear(enc, w_v);
    attention(q, k, v, bias, heads)
}

/// The fused operations, per backend. The `*_backward` methods are the
/// backward passes the `Autodiff` implementation calls on the inner backend.
#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    /// `weight * x / sqrt(mean(x²) + eps)` over the last dimension of `x`.
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;

    /// Gradients of [`FusedOps::rms_norm`] with respect to `x` and `weight`.
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `softmax(scores + bias)` over the last dimension; `bias` broadcasts to `scores`.
    fn softmax_with_bias(scores: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Gradient of a softmax with respect to its input, from its output `probs`.
    fn softmax_backward(probs: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `gelu_new(gate) ⊙ linear`, elementwise (same shapes).
    fn gated_gelu(gate: FloatTensor<Self>, linear: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Gradients of [`FusedOps::gated_gelu`] with respect to `gate` and `linear`.
    fn gated_gelu_backward(
        gate: FloatTensor<Self>,
        linear: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `bf16(x)·W` with f32 sums; `x` is `[.., in]`, `weight` `[in, out]`.
    fn bf16_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        packed: Option<Arc<PackedLinear>>,
    ) -> FloatTensor<Self>;

    /// Gradient of [`FusedOps::bf16_linear`] with respect to `x`: `bf16(grad)·Wᵀ`.
    fn bf16_linear_backward(
        grad: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        packed: Option<Arc<PackedLinear>>,
    ) -> FloatTensor<Self>;

    /// `max(x, 0)` elementwise; see [`relu`].
    fn fused_relu(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Gradient of [`FusedOps::fused_relu`] from its output: `grad` where the output is positive.
    fn fused_relu_backward(out: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `a + b`, same shapes; see [`residual_add`].
    fn residual_add(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `x·w` over the last dimension of `x`, `w` `[in, out]` frozen; see [`frozen_linear`].
    fn frozen_linear(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Gradient of [`FusedOps::frozen_linear`] with respect to `x`: `grad·wᵀ`.
    fn frozen_linear_backward(grad: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `a·w` for `a` `[m, k]` with few rows and `w` `[k, n]` the transpose of
    /// a row-major `[n, k]` weight (the tied head); see [`few_rows_matmul`].
    fn few_rows_matmul(a: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Multi-head attention; see [`attention`].
    fn multi_head_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self>;

    /// [`FusedOps::multi_head_attention`] and its probabilities `[b, h, t_q, t_k]`.
    fn multi_head_attention_with_probs(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        heads: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients of [`FusedOps::multi_head_attention`] with respect to `q`, `k`, `v`,
    /// and to the scores `[b, h, t_q, t_k]` (the bias's, before summing over
    /// where it broadcasts) when `scores_grad` is set; an empty tensor otherwise.
    #[allow(clippy::too_many_arguments)]
    fn multi_head_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        heads: usize,
        scores_grad: bool,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );

    /// Cross-attention with the projections absorbed; see [`cross_attention`].
    fn cross_attention(
        q: FloatTensor<Self>,
        enc: FloatTensor<Self>,
        w_k: FloatTensor<Self>,
        w_v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self>;

    /// [`FusedOps::cross_attention`], its probabilities `[b, h, t_q, t_k]`
    /// and absorbed queries `[b, h, t_q, d]` (what the backward pass reads).
    fn cross_attention_with_saved(
        q: FloatTensor<Self>,
        enc: FloatTensor<Self>,
        w_k: FloatTensor<Self>,
        w_v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        heads: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients of [`FusedOps::cross_attention`] with respect to `q` and `enc`.
    #[allow(clippy::too_many_arguments)]
    fn cross_attention_backward(
        enc: FloatTensor<Self>,
        w_k: FloatTensor<Self>,
        w_v: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        u: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        heads: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// Rows per rayon task: enough work per task to pay for the scheduling.
fn rows_per_task(row_len: usize) -> usize {
    (16 * 1024 / row_len.max(1)).max(1)
}

/// The f32 elements of `t` in row-major order (copied only if `t` is a strided view).
fn contiguous_f32(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().unwrap().to_vec()),
    }
}

fn flex_tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

impl FusedOps for Flex {
    fn rms_norm(x: FlexTensor, weight: FlexTensor, eps: f64) -> FlexTensor {
        let shape = x.shape();
        let d = *shape.as_slice().last().unwrap_or(&1);
        let xs = contiguous_f32(&x);
        let w = contiguous_f32(&weight);
        let mut out = vec![0f32; xs.len()];
        let chunk = rows_per_task(d) * d;
        out.par_chunks_mut(chunk)
            .zip(xs.par_chunks(chunk))
            .for_each(|(out, xs)| {
                for (o, x) in out.chunks_exact_mut(d).zip(xs.chunks_exact(d)) {
                    let r = inv_rms(x, eps);
                    for ((o, &x), &w) in o.iter_mut().zip(x).zip(w.iter()) {
                        *o = w * (x * r);
                    }
                }
            });
        flex_tensor(out, shape)
    }

    fn rms_norm_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        eps: f64,
    ) -> (FlexTensor, FlexTensor) {
        let shape = x.shape();
        let d = *shape.as_slice().last().unwrap_or(&1);
        let xs = contiguous_f32(&x);
        let gs = contiguous_f32(&grad);
        let w = contiguous_f32(&weight);
        let mut dx = vec![0f32; xs.len()];
        let chunk = rows_per_task(d) * d;
        // Each task returns its rows' share of the weight gradient; the shares are summed.
        let dw = dx
            .par_chunks_mut(chunk)
            .zip(xs.par_chunks(chunk).zip(gs.par_chunks(chunk)))
            .map(|(dx, (xs, gs))| {
                let mut dw = vec![0f32; d];
                for ((dx, x), g) in dx
                    .chunks_exact_mut(d)
                    .zip(xs.chunks_exact(d))
                    .zip(gs.chunks_exact(d))
                {
                    let r = inv_rms(x, eps);
                    // y = w ⊙ x̂, x̂ = x·r, r = (mean(x²) + eps)^(-1/2):
                    // dx = r·(g⊙w) − x·r³·mean(g⊙w⊙x), dw = Σ_rows g⊙x̂.
                    let mut dot = 0f32;
                    for ((&g, &x), &w) in g.iter().zip(x).zip(w.iter()) {
                        dot += g * w * x;
                    }
                    let c = r * r * r * dot / d as f32;
                    for (((dx, &g), &x), (&w, dw)) in
                        dx.iter_mut().zip(g).zip(x).zip(w.iter().zip(dw.iter_mut()))
                    {
                        *dx = r * g * w - c * x;
                        *dw += g * x * r;
                    }
                }
                dw
            })
            .reduce(
                || vec![0f32; d],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        (flex_tensor(dx, shape), flex_tensor(dw, weight.shape()))
    }

    fn softmax_with_bias(scores: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let shape = scores.shape();
        let k = *shape.as_slice().last().unwrap_or(&1);
        let bias = Flex::float_expand(bias, shape.clone());
        let ss = contiguous_f32(&scores);
        let bs = contiguous_f32(&bias);
        let mut out = vec![0f32; ss.len()];
        let chunk = rows_per_task(k) * k;
        out.par_chunks_mut(chunk)
            .zip(ss.par_chunks(chunk).zip(bs.par_chunks(chunk)))
            .for_each(|(out, (ss, bs))| softmax_rows(out, ss, bs, k));
        flex_tensor(out, shape)
    }

    fn softmax_backward(probs: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let shape = probs.shape();
        let k = *shape.as_slice().last().unwrap_or(&1);
        let ps = contiguous_f32(&probs);
        let gs = contiguous_f32(&grad);
        let mut out = vec![0f32; ps.len()];
        let chunk = rows_per_task(k) * k;
        out.par_chunks_mut(chunk)
            .zip(ps.par_chunks(chunk).zip(gs.par_chunks(chunk)))
            .for_each(|(out, (ps, gs))| {
                for ((o, p), g) in out
                    .chunks_exact_mut(k)
                    .zip(ps.chunks_exact(k))
                    .zip(gs.chunks_exact(k))
                {
                    o.copy_from_slice(g);
                    softmax_backward_row(o, p);
                }
            });
        flex_tensor(out, shape)
    }

    fn gated_gelu(gate: FlexTensor, linear: FlexTensor) -> FlexTensor {
        let shape = gate.shape();
        let (a, l) = (contiguous_f32(&gate), contiguous_f32(&linear));
        let mut out = vec![0f32; a.len()];
        let chunk = 16 * 1024;
        out.par_chunks_mut(chunk)
            .zip(a.par_chunks(chunk).zip(l.par_chunks(chunk)))
            .for_each(|(out, (a, l))| {
                for ((o, &a), &l) in out.iter_mut().zip(a).zip(l) {
                    *o = gelu_new_and_slope(a).0 * l;
                }
            });
        flex_tensor(out, shape)
    }

    fn gated_gelu_backward(
        gate: FlexTensor,
        linear: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let shape = gate.shape();
        let (a, l, g) = (
            contiguous_f32(&gate),
            contiguous_f32(&linear),
            contiguous_f32(&grad),
        );
        let mut da = vec![0f32; a.len()];
        let mut dl = vec![0f32; a.len()];
        let chunk = 16 * 1024;
        da.par_chunks_mut(chunk)
            .zip(dl.par_chunks_mut(chunk))
            .zip(
                a.par_chunks(chunk)
                    .zip(l.par_chunks(chunk).zip(g.par_chunks(chunk))),
            )
            .for_each(|((da, dl), (a, (l, g)))| {
                for (((da, dl), &a), (&l, &g)) in
                    da.iter_mut().zip(dl.iter_mut()).zip(a).zip(l.iter().zip(g))
                {
                    // out = gelu(a)·l: d_a = g·l·gelu'(a), d_l = g·gelu(a).
                    let (value, slope) = gelu_new_and_slope(a);
                    *da = g * l * slope;
                    *dl = g * value;
                }
            });
        (flex_tensor(da, shape.clone()), flex_tensor(dl, shape))
    }
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

    fn fused_relu(x: FlexTensor) -> FlexTensor {
        map_f32(x, |v| if v.is_nan() || v > 0.0 { v } else { 0.0 })
    }

    fn fused_relu_backward(out: FlexTensor, grad: FlexTensor) -> FlexTensor {
        zip_f32(
            out,
            grad,
            |o, g| if o.is_nan() || o > 0.0 { g } else { 0.0 },
        )
    }

    fn residual_add(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        zip_f32(a, b, |a, b| a + b)
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

    fn multi_head_attention(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        bias: FlexTensor,
        heads: usize,
    ) -> FlexTensor {
        flex_attention(q, k, v, bias, heads, false).0
    }

    fn multi_head_attention_with_probs(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        bias: FlexTensor,
        heads: usize,
    ) -> (FlexTensor, FlexTensor) {
        let (out, probs) = flex_attention(q, k, v, bias, heads, true);
        (out, probs.expect("probabilities were asked for"))
    }

    fn multi_head_attention_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        probs: FlexTensor,
        grad: FlexTensor,
        heads: usize,
        scores_grad: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor, FlexTensor) {
        let dims = attention_dims(&q, &k, heads);
        let g = attention_kernel::backward(
            &contiguous_f32(&q),
            &contiguous_f32(&k),
            &contiguous_f32(&v),
            &contiguous_f32(&probs),
            &contiguous_f32(&grad),
            dims,
            scores_grad,
        );
        let scores_shape = match scores_grad {
            true => probs.shape(),
            false => Shape::from(vec![0]),
        };
        (
            flex_tensor(g.q, q.shape()),
            flex_tensor(g.k, k.shape()),
            flex_tensor(g.v, v.shape()),
            flex_tensor(g.scores.unwrap_or_default(), scores_shape),
        )
    }

    fn cross_attention(
        q: FlexTensor,
        enc: FlexTensor,
        w_k: FlexTensor,
        w_v: FlexTensor,
        bias: FlexTensor,
        heads: usize,
    ) -> FlexTensor {
        flex_cross_attention(q, enc, w_k, w_v, bias, heads, false).0
    }

    fn cross_attention_with_saved(
        q: FlexTensor,
        enc: FlexTensor,
        w_k: FlexTensor,
        w_v: FlexTensor,
        bias: FlexTensor,
        heads: usize,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (out, saved) = flex_cross_attention(q, enc, w_k, w_v, bias, heads, true);
        let (probs, u) = saved.expect("the saved tensors were asked for");
        (out, probs, u)
    }

    fn cross_attention_backward(
        enc: FlexTensor,
        w_k: FlexTensor,
        w_v: FlexTensor,
        probs: FlexTensor,
        u: FlexTensor,
        grad: FlexTensor,
        heads: usize,
    ) -> (FlexTensor, FlexTensor) {
        let dims = cross_attention_dims(&grad, &enc, heads);
        let (w_k, w_v) = (forward_strides(w_k), forward_strides(w_v));
        let (dq, denc) = cross_attention_kernel::backward(
            &contiguous_f32(&enc),
            weight_of(&w_k),
            weight_of(&w_v),
            &contiguous_f32(&probs),
            &contiguous_f32(&u),
            &contiguous_f32(&grad),
            dims,
        );
        (
            flex_tensor(dq, grad.shape()),
            flex_tensor(denc, enc.shape()),
        )
    }
}

/// Elements per rayon task of the elementwise kernels.
const ELEMENTWISE_CHUNK: usize = 16 * 1024;

/// The f32 elements of `t` to overwrite in place: some when `t` is
/// contiguous from the start of a buffer it alone holds.
fn exclusive_f32(t: &mut FlexTensor) -> Option<&mut [f32]> {
    let n = t.shape().num_elements();
    if !t.is_contiguous() || t.layout().start_offset() != 0 {
        return None;
    }
    t.try_storage_mut::<f32>().map(|v| &mut v[..n])
}

/// `f` of every element of `x`, in place when [`exclusive_f32`] allows, else
/// into a new buffer; in parallel.
fn map_f32(mut x: FlexTensor, f: impl Fn(f32) -> f32 + Sync) -> FlexTensor {
    if let Some(values) = exclusive_f32(&mut x) {
        values
            .par_chunks_mut(ELEMENTWISE_CHUNK)
            .for_each(|c| c.iter_mut().for_each(|v| *v = f(*v)));
        return x;
    }
    let out = contiguous_f32(&x).par_iter().map(|&v| f(v)).collect();
    flex_tensor(out, x.shape())
}

/// `f(a, b)` of every pair of elements (same shapes), in place in `b` when
/// [`exclusive_f32`] allows, else into a new buffer; in parallel.
fn zip_f32(a: FlexTensor, mut b: FlexTensor, f: impl Fn(f32, f32) -> f32 + Sync) -> FlexTensor {
    let a_values = contiguous_f32(&a);
    if let Some(values) = exclusive_f32(&mut b) {
        values
            .par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(a_values.par_chunks(ELEMENTWISE_CHUNK))
            .for_each(|(b, a)| b.iter_mut().zip(a).for_each(|(b, &a)| *b = f(a, *b)));
        return b;
    }
    let b_values = contiguous_f32(&b);
    let out = a_values
        .par_iter()
        .zip(b_values.par_iter())
        .map(|(&a, &b)| f(a, b))
        .collect();
    flex_tensor(out, b.shape())
}

/// `t` with no negative strides (copied row-major if it had any), so that
/// [`strided_f32`] can read it in place.
fn forward_strides(t: FlexTensor) -> FlexTensor {
    if t.layout().strides().iter().all(|&s| s >= 0) {
        t
    } else {
        t.to_contiguous()
    }
}

/// The f32 elements of `t` from its first one on, and its strides (which
/// [`forward_strides`] made non-negative).
fn strided_f32(t: &FlexTensor) -> (&[f32], Vec<usize>) {
    let strides = t.layout().strides().iter().map(|&s| s as usize).collect();
    (&t.storage::<f32>()[t.layout().start_offset()..], strides)
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

/// The shape of an attention call from `q` `[b, t_q, h·d]` and `k` `[b, t_k, h·d]`.
fn attention_dims(q: &FlexTensor, k: &FlexTensor, heads: usize) -> attention_kernel::Dims {
    let (qd, kd) = (q.shape(), k.shape());
    let (qd, kd) = (qd.as_slice(), kd.as_slice());
    attention_kernel::Dims {
        batch: qd[0],
        heads,
        q_len: qd[1],
        k_len: kd[1],
        d_kv: qd[2] / heads,
    }
}

/// `bias` broadcast to `full` (`[b, h, t_q, t_k]`) as a view: read through
/// its strides (0 where it broadcasts), copied only if its rows are not
/// contiguous.
fn expanded_bias(bias: FlexTensor, full: Shape) -> FlexTensor {
    let bias = forward_strides(Flex::float_expand(bias, full));
    match bias.layout().strides()[3] {
        1 => bias,
        _ => bias.to_contiguous(),
    }
}

/// The kernels' view of a bias made by [`expanded_bias`].
fn bias_of(bias: &FlexTensor) -> attention_kernel::Bias<'_> {
    let (values, s) = strided_f32(bias);
    attention_kernel::Bias {
        values,
        strides: [s[0], s[1], s[2], 1],
    }
}

/// The kernel's view of a projection weight with forward strides.
fn weight_of(w: &FlexTensor) -> cross_attention_kernel::Weight<'_> {
    let (values, s) = strided_f32(w);
    cross_attention_kernel::Weight {
        values,
        strides: [s[0], s[1]],
    }
}

/// The shape of a cross-attention call from `q` (or its output's gradient)
/// `[b, t_q, h·d_kv]` and `enc` `[b, t_k, d]`.
fn cross_attention_dims(
    q: &FlexTensor,
    enc: &FlexTensor,
    heads: usize,
) -> cross_attention_kernel::Dims {
    let (qd, ed) = (q.shape(), enc.shape());
    let (qd, ed) = (qd.as_slice(), ed.as_slice());
    cross_attention_kernel::Dims {
        batch: qd[0],
        heads,
        q_len: qd[1],
        k_len: ed[1],
        d_kv: qd[2] / heads,
        d_model: ed[2],
    }
}

/// [`FusedOps::cross_attention`] on Flex, with the probabilities and absorbed
/// queries when `keep`.
fn flex_cross_attention(
    q: FlexTensor,
    enc: FlexTensor,
    w_k: FlexTensor,
    w_v: FlexTensor,
    bias: FlexTensor,
    heads: usize,
    keep: bool,
) -> (FlexTensor, Option<(FlexTensor, FlexTensor)>) {
    let dims = cross_attention_dims(&q, &enc, heads);
    let bias = expanded_bias(
        bias,
        Shape::from(vec![dims.batch, heads, dims.q_len, dims.k_len]),
    );
    let (w_k, w_v) = (forward_strides(w_k), forward_strides(w_v));
    let (out, saved) = cross_attention_kernel::forward(
        &contiguous_f32(&q),
        &contiguous_f32(&enc),
        weight_of(&w_k),
        weight_of(&w_v),
        bias_of(&bias),
        dims,
        keep,
    );
    let saved = saved.map(|s| {
        let rows = [dims.batch, heads, dims.q_len];
        (
            flex_tensor(s.probs, Shape::from([&rows[..], &[dims.k_len]].concat())),
            flex_tensor(s.u, Shape::from([&rows[..], &[dims.d_model]].concat())),
        )
    });
    (flex_tensor(out, q.shape()), saved)
}

/// [`FusedOps::multi_head_attention`] on Flex, with the probabilities when `keep_probs`.
fn flex_attention(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    bias: FlexTensor,
    heads: usize,
    keep_probs: bool,
) -> (FlexTensor, Option<FlexTensor>) {
    let dims = attention_dims(&q, &k, heads);
    let full = Shape::from(vec![dims.batch, heads, dims.q_len, dims.k_len]);
    let bias = expanded_bias(bias, full.clone());
    let (out, probs) = attention_kernel::forward(
        &contiguous_f32(&q),
        &contiguous_f32(&k),
        &contiguous_f32(&v),
        bias_of(&bias),
        dims,
        keep_probs,
    );
    (
        flex_tensor(out, q.shape()),
        keep_probs.then(|| flex_tensor(probs, full)),
    )
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
        _ => {
            let rounded: Vec<f32> = values.par_iter().map(|&v| amx::round_bf16(v)).collect();
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

/// sqrt(2/π), the scale inside `gelu_new`'s tanh.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of `gelu_new`.
const GELU_CUBIC: f32 = 0.044_715;

/// `gelu_new(a)` and its derivative.
fn gelu_new_and_slope(a: f32) -> (f32, f32) {
    let t = (SQRT_2_OVER_PI * (a + GELU_CUBIC * a * a * a)).tanh();
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * a * a);
    (
        0.5 * a * (1.0 + t),
        0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * du,
    )
}

/// The gradient of a softmax row with respect to its input, in place of the
/// gradient `g` with respect to its output `p`: `g ← p ⊙ (g − Σ g⊙p)`.
pub(crate) fn softmax_backward_row(g: &mut [f32], p: &[f32]) {
    let dot: f32 = g.iter().zip(p).map(|(g, p)| g * p).sum();
    for (g, &p) in g.iter_mut().zip(p) {
        *g = p * (*g - dot);
    }
}

/// `softmax(s + b)` of every `k`-long row of `s` and `b` into `p`.
fn softmax_rows(p: &mut [f32], s: &[f32], b: &[f32], k: usize) {
    p.copy_from_slice(s);
    for (p, b) in p.chunks_exact_mut(k).zip(b.chunks_exact(k)) {
        softmax_row_in_place(p, b);
    }
}

/// `p ← softmax(p + b)` of one row, with AVX-512 where the CPU has it (the
/// same arithmetic, in wider vectors).
pub(crate) fn softmax_row_in_place(p: &mut [f32], b: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is present.
        return unsafe { softmax_row_avx512(p, b) };
    }
    softmax_row_body(p, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_row_avx512(p: &mut [f32], b: &[f32]) {
    softmax_row_body(p, b)
}

/// Lanes of the reductions below: sixteen partial results, so that the
/// compiler keeps them in one AVX-512 register (or four SSE ones).
const LANES: usize = 16;

#[inline(always)]
fn softmax_row_body(p: &mut [f32], b: &[f32]) {
    let k = p.len();
    let b = &b[..k];
    let whole = k / LANES * LANES;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for (p, b) in p[..whole]
        .chunks_exact_mut(LANES)
        .zip(b.chunks_exact(LANES))
    {
        for l in 0..LANES {
            p[l] += b[l];
            lanes[l] = lanes[l].max(p[l]);
        }
    }
    let mut max = lanes.iter().fold(f32::NEG_INFINITY, |a, &m| a.max(m));
    for i in whole..k {
        p[i] += b[i];
        max = max.max(p[i]);
    }
    for p in p.iter_mut() {
        *p = exp_fast(*p - max);
    }
    let mut lanes = [0f32; LANES];
    for p in p[..whole].chunks_exact(LANES) {
        for l in 0..LANES {
            lanes[l] += p[l];
        }
    }
    let sum = lanes.iter().sum::<f32>() + p[whole..].iter().sum::<f32>();
    let inv = 1.0 / sum;
    p.iter_mut().for_each(|p| *p *= inv);
}

/// `eˣ` to about 2e-7 relative, in plain arithmetic that vectorises (libm's
/// `expf` is a call per element: 4 % of a training step's time). `x` is
/// split as `k·ln 2 + r` with `|r| ≤ ln 2 / 2` (Cody–Waite, two-part ln 2),
/// `eʳ` is its degree-6 Taylor polynomial (error below `r⁷/7!` ≈ 1.2e-7), and
/// `2ᵏ` is built in the exponent bits. Below −87.3 (the smallest normal
/// result) it returns 0, like `expf` for masked scores (−1e30).
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    /// 1.5 · 2²³: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    const LO: f32 = -87.336_55;
    let xc = x.clamp(LO, 88.376_26);
    let k = (xc * LOG2_E + ROUND) - ROUND;
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    let poly = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((k as i32 + 127) as u32) << 23);
    if x < LO { 0.0 } else { poly * scale }
}

/// `(mean(x²) + eps)^(-1/2)` of one row, accumulated in f32 like the reference.
fn inv_rms(x: &[f32], eps: f64) -> f32 {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (ms + eps as f32).sqrt()
}

/// The backward step of [`FusedOps::rms_norm`] under autodiff; keeps `x` and `weight`.
#[derive(Debug)]
struct RmsNormStep {
    eps: f64,
}

impl<B: Backend + FusedOps> Backward<B, 2> for RmsNormStep {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [x_node, w_node] = ops.parents;
        let (x, w) = ops.state;
        let (dx, dw) = B::rms_norm_backward(x, w, grad, self.eps);
        if let Some(node) = x_node {
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = w_node {
            grads.register::<B>(node.id, dw);
        }
    }
}

/// The backward step of [`FusedOps::softmax_with_bias`] under autodiff; keeps the
/// probabilities, and the bias's shape to sum its gradient back to.
#[derive(Debug)]
struct SoftmaxWithBiasStep {
    bias_shape: Shape,
}

impl<B: Backend + FusedOps> Backward<B, 2> for SoftmaxWithBiasStep {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [scores_node, bias_node] = ops.parents;
        let ds = B::softmax_backward(ops.state, grad);
        if let Some(node) = bias_node {
            grads.register::<B>(node.id, broadcast_shape::<B>(ds.clone(), &self.bias_shape));
        }
        if let Some(node) = scores_node {
            grads.register::<B>(node.id, ds);
        }
    }
}

/// The backward step of [`FusedOps::gated_gelu`] under autodiff; keeps both inputs.
#[derive(Debug)]
struct GatedGeluStep;

impl<B: Backend + FusedOps> Backward<B, 2> for GatedGeluStep {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [gate_node, linear_node] = ops.parents;
        let (gate, linear) = ops.state;
        let (dgate, dlinear) = B::gated_gelu_backward(gate, linear, grad);
        if let Some(node) = gate_node {
            grads.register::<B>(node.id, dgate);
        }
        if let Some(node) = linear_node {
            grads.register::<B>(node.id, dlinear);
        }
    }
}

/// The backward step of [`FusedOps::bf16_linear`] under autodiff; keeps the
/// (frozen, shared) weight only, never the layer's input.
#[derive(Debug)]
struct Bf16LinearStep;

impl<B: Backend + FusedOps> Backward<B, 1> for Bf16LinearStep {
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

/// The backward step of [`FusedOps::fused_relu`] under autodiff; keeps the output.
#[derive(Debug)]
struct ReluStep;

impl<B: Backend + FusedOps> Backward<B, 1> for ReluStep {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [x_node] = ops.parents;
        if let Some(node) = x_node {
            grads.register::<B>(node.id, B::fused_relu_backward(ops.state, grad));
        }
    }
}

/// The backward step of [`FusedOps::residual_add`] under autodiff: the
/// gradient reaches both operands unchanged; keeps nothing.
#[derive(Debug)]
struct ResidualAddStep;

impl<B: Backend> Backward<B, 2> for ResidualAddStep {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        match ops.parents {
            [Some(a), Some(b)] => {
                grads.register::<B>(a.id, grad.clone());
                grads.register::<B>(b.id, grad);
            }
            [Some(node), None] | [None, Some(node)] => grads.register::<B>(node.id, grad),
            [None, None] => {}
        }
    }
}

/// The backward step of [`FusedOps::frozen_linear`] and
/// [`FusedOps::few_rows_matmul`] under autodiff: the input gradient `grad·wᵀ`
/// ([`FusedOps::frozen_linear_backward`]); keeps the (frozen, shared) weight
/// only, never the layer's input.
#[derive(Debug)]
struct FrozenLinearStep;

impl<B: Backend + FusedOps> Backward<B, 1> for FrozenLinearStep {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [x_node] = ops.parents;
        if let Some(node) = x_node {
            grads.register::<B>(node.id, B::frozen_linear_backward(grad, ops.state));
        }
    }
}

/// The backward step of [`FusedOps::multi_head_attention`] under autodiff; keeps the
/// queries, keys, values and probabilities, and the bias's shape to sum its
/// gradient back to.
#[derive(Debug)]
struct AttentionStep {
    heads: usize,
    bias_shape: Shape,
}

impl<B: Backend + FusedOps> Backward<B, 4> for AttentionStep {
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
    );

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [q_node, k_node, v_node, bias_node] = ops.parents;
        let (q, k, v, probs) = ops.state;
        let (dq, dk, dv, ds) =
            B::multi_head_attention_backward(q, k, v, probs, grad, self.heads, bias_node.is_some());
        if let Some(node) = bias_node {
            grads.register::<B>(node.id, broadcast_shape::<B>(ds, &self.bias_shape));
        }
        for (node, g) in [(q_node, dq), (k_node, dk), (v_node, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

/// The backward step of [`FusedOps::cross_attention`] under autodiff: the
/// gradient reaches the queries and the encoder output (the weights and the
/// mask are constants). Keeps the encoder output, the two weights, the
/// probabilities and the absorbed queries.
#[derive(Debug)]
struct CrossAttentionStep {
    heads: usize,
}

impl<B: Backend + FusedOps> Backward<B, 2> for CrossAttentionStep {
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
    );

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let [q_node, enc_node] = ops.parents;
        let (enc, w_k, w_v, probs, u) = ops.state;
        let (dq, denc) = B::cross_attention_backward(enc, w_k, w_v, probs, u, grad, self.heads);
        for (node, g) in [(q_node, dq), (enc_node, denc)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

/// `product(x, w)` under autodiff for a frozen weight `w`: the gradient
/// reaches `x` only ([`FrozenLinearStep`], which keeps `w`).
fn frozen_weight_product<B: Backend + FusedOps, C: CheckpointStrategy>(
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

impl<B: Backend + FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        let prep = RmsNormStep { eps }
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful();
        let (x, w) = (x.into_primitive(), weight.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => {
                let out = B::rms_norm(x.clone(), w.clone(), eps);
                prep.finish((x, w), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rms_norm(x, w, eps)),
        }
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // Second-order gradients are not needed anywhere: computed untracked.
        let (dx, dw) = B::rms_norm_backward(
            x.into_primitive(),
            weight.into_primitive(),
            grad.into_primitive(),
            eps,
        );
        (Self::from_inner(dx), Self::from_inner(dw))
    }

    fn softmax_with_bias(scores: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let bias_shape = bias.primitive().shape();
        let prep = SoftmaxWithBiasStep { bias_shape }
            .prepare::<C>([scores.node(), bias.node()])
            .compute_bound()
            .stateful();
        let probs = B::softmax_with_bias(scores.into_primitive(), bias.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => prep.finish(probs.clone(), probs),
            OpsKind::UnTracked(prep) => prep.finish(probs),
        }
    }

    fn softmax_backward(probs: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let ds = B::softmax_backward(probs.into_primitive(), grad.into_primitive());
        Self::from_inner(ds)
    }

    fn gated_gelu(gate: FloatTensor<Self>, linear: FloatTensor<Self>) -> FloatTensor<Self> {
        let prep = GatedGeluStep
            .prepare::<C>([gate.node(), linear.node()])
            .compute_bound()
            .stateful();
        let (a, l) = (gate.into_primitive(), linear.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => {
                let out = B::gated_gelu(a.clone(), l.clone());
                prep.finish((a, l), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gated_gelu(a, l)),
        }
    }

    fn gated_gelu_backward(
        gate: FloatTensor<Self>,
        linear: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (da, dl) = B::gated_gelu_backward(
            gate.into_primitive(),
            linear.into_primitive(),
            grad.into_primitive(),
        );
        (Self::from_inner(da), Self::from_inner(dl))
    }

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

    fn fused_relu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let prep = ReluStep.prepare::<C>([x.node()]).compute_bound().stateful();
        let out = B::fused_relu(x.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => prep.finish(out.clone(), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn fused_relu_backward(out: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::fused_relu_backward(
            out.into_primitive(),
            grad.into_primitive(),
        ))
    }

    fn residual_add(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let prep = ResidualAddStep
            .prepare::<C>([a.node(), b.node()])
            .compute_bound()
            .stateful();
        let out = B::residual_add(a.into_primitive(), b.into_primitive());
        match prep {
            OpsKind::Tracked(prep) => prep.finish((), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
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

    fn multi_head_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        let bias_shape = bias.primitive().shape();
        let prep = AttentionStep { heads, bias_shape }
            .prepare::<C>([q.node(), k.node(), v.node(), bias.node()])
            .compute_bound()
            .stateful();
        let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
        let bias = bias.into_primitive();
        match prep {
            OpsKind::Tracked(prep) => {
                let (out, probs) = B::multi_head_attention_with_probs(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    bias,
                    heads,
                );
                prep.finish((q, k, v, probs), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::multi_head_attention(q, k, v, bias, heads)),
        }
    }

    fn multi_head_attention_with_probs(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        heads: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, probs) = B::multi_head_attention_with_probs(
            q.into_primitive(),
            k.into_primitive(),
            v.into_primitive(),
            bias.into_primitive(),
            heads,
        );
        (Self::from_inner(out), Self::from_inner(probs))
    }

    fn multi_head_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        heads: usize,
        scores_grad: bool,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        let (dq, dk, dv, ds) = B::multi_head_attention_backward(
            q.into_primitive(),
            k.into_primitive(),
            v.into_primitive(),
            probs.into_primitive(),
            grad.into_primitive(),
            heads,
            scores_grad,
        );
        (
            Self::from_inner(dq),
            Self::from_inner(dk),
            Self::from_inner(dv),
            Self::from_inner(ds),
        )
    }

    fn cross_attention(
        q: FloatTensor<Self>,
        enc: FloatTensor<Self>,
        w_k: FloatTensor<Self>,
        w_v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self> {
        let prep = CrossAttentionStep { heads }
            .prepare::<C>([q.node(), enc.node()])
            .compute_bound()
            .stateful();
        let (q, enc) = (q.into_primitive(), enc.into_primitive());
        let (w_k, w_v, bias) = (
            w_k.into_primitive(),
            w_v.into_primitive(),
            bias.into_primitive(),
        );
        match prep {
            OpsKind::Tracked(prep) => {
                let (out, probs, u) = B::cross_attention_with_saved(
                    q,
                    enc.clone(),
                    w_k.clone(),
                    w_v.clone(),
                    bias,
                    heads,
                );
                prep.finish((enc, w_k, w_v, probs, u), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::cross_attention(q, enc, w_k, w_v, bias, heads))
            }
        }
    }

    fn cross_attention_with_saved(
        q: FloatTensor<Self>,
        enc: FloatTensor<Self>,
        w_k: FloatTensor<Self>,
        w_v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        heads: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (out, probs, u) = B::cross_attention_with_saved(
            q.into_primitive(),
            enc.into_primitive(),
            w_k.into_primitive(),
            w_v.into_primitive(),
            bias.into_primitive(),
            heads,
        );
        (
            Self::from_inner(out),
            Self::from_inner(probs),
            Self::from_inner(u),
        )
    }

    fn cross_attention_backward(
        enc: FloatTensor<Self>,
        w_k: FloatTensor<Self>,
        w_v: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        u: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        heads: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (dq, denc) = B::cross_attention_backward(
            enc.into_primitive(),
            w_k.into_primitive(),
            w_v.into_primitive(),
            probs.into_primitive(),
            u.into_primitive(),
            grad.into_primitive(),
            heads,
        );
        (Self::from_inner(dq), Self::from_inner(denc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
        let mut rng = Rng::new(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// Runs `f` with the fused kernels and with plain operations on the same
    /// inputs, backpropagates the same random upstream gradient through both,
    /// and returns the largest difference in output and in each input gradient.
    fn compare<const D: usize, const E: usize>(
        inputs: (Tensor<D>, Tensor<E>),
        f: impl Fn(Tensor<D>, Tensor<E>, bool) -> Tensor<D>,
    ) -> [f32; 3] {
        let device = Device::flex().autodiff();
        let upstream = random(inputs.0.dims(), 99, &inputs.0.device());
        let run = |fused: bool| {
            let a = Tensor::<D>::from_data(inputs.0.to_data(), &device).require_grad();
            let b = Tensor::<E>::from_data(inputs.1.to_data(), &device).require_grad();
            let out = f(a.clone(), b.clone(), fused);
            let up = Tensor::<D>::from_data(upstream.to_data(), &device);
            let grads = (out.clone() * up).sum().backward();
            let ga = a.grad(&grads).unwrap();
            let gb = b.grad(&grads).unwrap();
            (out, ga, gb)
        };
        let (o1, a1, b1) = run(true);
        let (o2, a2, b2) = run(false);
        [
            max_abs_diff(o1, o2),
            max_abs_diff(a1, a2),
            max_abs_diff(b1, b2),
        ]
    }

    #[test]
    fn exp_fast_is_exp_to_a_few_ulps_over_the_float_range() {
        let mut worst = 0f64;
        let mut x = -87.3f32;
        while x < 88.3 {
            let (got, want) = (exp_fast(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "relative error up to {worst}");
        for x in [-1e30f32, -100.0, f32::NEG_INFINITY] {
            assert_eq!(exp_fast(x), 0.0, "{x}");
        }
        assert_eq!(exp_fast(0.0), 1.0);
    }

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

    #[test]
    fn relu_and_residual_add_match_burn_in_place_or_not() {
        let device = Device::flex();
        let a = random([3, 5, 40_000], 41, &device);
        let b = random([3, 5, 40_000], 42, &device);
        // Scaled first: a fresh buffer, which the kernels overwrite in place.
        let diffs = compare((a.clone(), b.clone()), |a, b, fused| {
            let (a, b) = (a * 1.5, b * 0.5);
            match fused {
                true => relu(residual_add(a, b)),
                false => burn::tensor::activation::relu(a + b),
            }
        });
        assert_eq!(diffs, [0.0; 3], "relu(a + b): {diffs:?}");
        // Inputs still referenced elsewhere are left as they were.
        let before = a.to_data();
        let _ = relu(a.clone());
        let _ = residual_add(b.clone(), a.clone());
        assert_eq!(a.to_data(), before);
        // NaN passes through, as in burn and PyTorch.
        let nan = Tensor::<3>::from_data(
            TensorData::new(vec![f32::NAN, -1.0, 2.0], [1, 1, 3]),
            &device,
        );
        let out = crate::tensors::to_f32_vec(relu(nan));
        assert!(out[0].is_nan() && out[1] == 0.0 && out[2] == 2.0, "{out:?}");
    }

    #[test]
    fn fused_rms_norm_matches_plain_ops_in_values_and_gradients() {
        let device = Device::flex();
        let x = random([3, 7, 48], 1, &device) * 3.0;
        let w = random([48], 2, &device);
        let diffs = compare((x, w), |x, w, fused| {
            let w1: Tensor<1> = w.reshape([48]);
            if fused {
                rms_norm(x, w1, 1e-6)
            } else {
                rms_norm_reference(x, w1, 1e-6)
            }
        });
        for d in diffs {
            assert!(
                d < 1e-5,
                "fused and plain RMS norm differ by {d} ({diffs:?})"
            );
        }
    }

    #[test]
    fn fused_attention_matches_the_composed_one_in_values_and_gradients() {
        let device = Device::flex().autodiff();
        // (batch, heads, q_len, k_len, d_kv, bias shape): encoder self-attention
        // (full bias and mask, batch-broadcast position bias), cross-attention
        // (a per-example mask), one decoding step, and sizes past the gemm
        // crate's register tiles.
        let cases = [
            (2, 3, 5, 5, 4, [2, 3, 5, 5]),
            (2, 3, 5, 5, 4, [1, 3, 5, 5]),
            (2, 3, 4, 7, 4, [2, 1, 1, 7]),
            (3, 2, 1, 6, 8, [1, 2, 1, 6]),
            (2, 2, 37, 41, 16, [1, 2, 37, 41]),
        ];
        for (i, (b, h, tq, tk, d, bias_shape)) in cases.into_iter().enumerate() {
            let seed = 30 + 10 * i as u64;
            let q = random([b, tq, h * d], seed, &device);
            let k = random([b, tk, h * d], seed + 1, &device);
            let v = random([b, tk, h * d], seed + 2, &device);
            let mut bias = random(bias_shape, seed + 3, &device);
            if bias_shape[1] == 1 {
                // A padding mask: the last key of the second example is masked off.
                let mut m = vec![0f32; b * tk];
                m[2 * tk - 1] = -1e30;
                bias = Tensor::from_data(TensorData::new(m, bias_shape), &device);
            }
            let up = random([b, tq, h * d], seed + 4, &device);
            let run = |fused: bool| {
                let [q, k, v] = [&q, &k, &v].map(|t| t.clone().require_grad());
                let bias = bias.clone().require_grad();
                let args = (q.clone(), k.clone(), v.clone(), bias.clone(), h);
                let out = if fused {
                    attention(args.0, args.1, args.2, args.3, args.4)
                } else {
                    attention_reference(args.0, args.1, args.2, args.3, args.4)
                };
                let grads = (out.clone() * up.clone()).sum().backward();
                let g = |t: &Tensor<3>| t.grad(&grads).unwrap();
                (out, [g(&q), g(&k), g(&v)], bias.grad(&grads).unwrap())
            };
            let (o1, g1, b1) = run(true);
            let (o2, g2, b2) = run(false);
            let case = format!("case {i} ({b}, {h}, {tq}, {tk}, {d}, {bias_shape:?})");
            assert_eq!(o1.dims(), [b, tq, h * d], "{case}");
            let d = max_abs_diff(o1, o2);
            assert!(d < 1e-5, "{case}: outputs differ by {d}");
            for (name, (a, c)) in ["q", "k", "v"].iter().zip(g1.into_iter().zip(g2)) {
                let d = max_abs_diff(a, c);
                assert!(d < 1e-5, "{case}: gradients of {name} differ by {d}");
            }
            assert_eq!(b1.dims(), bias_shape, "{case}");
            let d = max_abs_diff(b1, b2);
            assert!(d < 1e-5, "{case}: bias gradients differ by {d}");
        }
        // Without autodiff (generation), the same values.
        let device = Device::flex();
        let [q, k, v] = [1u64, 2, 3].map(|s| random([2, 6, 8], s, &device));
        let bias = random([1, 2, 6, 6], 4, &device);
        let args = || (q.clone(), k.clone(), v.clone(), bias.clone());
        let (a, b, c, e) = args();
        let got = attention(a, b, c, e, 2);
        let (a, b, c, e) = args();
        let d = max_abs_diff(got, attention_reference(a, b, c, e, 2));
        assert!(d < 1e-5, "inference outputs differ by {d}");
    }

    #[test]
    fn absorbed_cross_attention_matches_projecting_keys_and_values() {
        let device = Device::flex().autodiff();
        // (batch, heads, t_q, t_k, d_kv, d_model, weights as a transposed
        // view): one and four target positions, a longer encoder output than
        // the gemm crate's register tiles, weights stored and viewed.
        let cases = [
            (2, 3, 1, 7, 4, 10, false),
            (3, 2, 4, 37, 8, 24, false),
            (2, 4, 3, 41, 16, 48, true),
        ];
        for (i, (b, h, tq, tk, dk, d, viewed)) in cases.into_iter().enumerate() {
            let seed = 200 + 10 * i as u64;
            let q = random([b, tq, h * dk], seed, &device);
            let enc = random([b, tk, d], seed + 1, &device);
            let weight = |s: u64| match viewed {
                false => random([d, h * dk], s, &device),
                true => random([h * dk, d], s, &device).transpose(),
            };
            let (w_k, w_v) = (weight(seed + 2), weight(seed + 3));
            // A padding mask: the last two positions of the last example off.
            let mut m = vec![0f32; b * tk];
            m[b * tk - 2..].fill(-1e30);
            let bias: Tensor<4> = Tensor::from_data(TensorData::new(m, [b, 1, 1, tk]), &device);
            let up = random([b, tq, h * dk], seed + 4, &device);
            let run = |absorbed: bool| {
                let (q, enc) = (q.clone().require_grad(), enc.clone().require_grad());
                let (wk, wv, bias) = (w_k.clone(), w_v.clone(), bias.clone());
                let out = if absorbed {
                    cross_attention(q.clone(), enc.clone(), wk, wv, bias, h)
                } else {
                    let k = burn::tensor::module::linear(enc.clone(), wk, None);
                    let v = burn::tensor::module::linear(enc.clone(), wv, None);
                    attention_reference(q.clone(), k, v, bias, h)
                };
                let grads = (out.clone() * up.clone()).sum().backward();
                (out, q.grad(&grads).unwrap(), enc.grad(&grads).unwrap())
            };
            let (o1, dq1, de1) = run(true);
            let (o2, dq2, de2) = run(false);
            let case = format!("case {i} ({b}, {h}, {tq}, {tk}, {dk}, {d}, {viewed})");
            assert_eq!(o1.dims(), [b, tq, h * dk], "{case}");
            let scale = max_abs_diff(o2.clone(), o2.clone() * 0.0).max(1.0);
            let diff = max_abs_diff(o1, o2);
            assert!(diff < 1e-5 * scale, "{case}: outputs differ by {diff}");
            for (name, a, c) in [("q", dq1, dq2), ("enc", de1, de2)] {
                let scale = max_abs_diff(c.clone(), c.clone() * 0.0).max(1.0);
                let diff = max_abs_diff(a, c);
                assert!(
                    diff < 1e-5 * scale,
                    "{case}: gradients of {name} differ by {diff}"
                );
            }
        }
        // Without autodiff (evaluation), the same values.
        let device = Device::flex();
        let q = random([2, 2, 8], 1, &device);
        let enc = random([2, 9, 6], 2, &device);
        let [w_k, w_v] = [3u64, 4].map(|s| random([6, 8], s, &device));
        let bias: Tensor<4> = Tensor::zeros([2, 1, 1, 9], &device);
        let got = cross_attention(
            q.clone(),
            enc.clone(),
            w_k.clone(),
            w_v.clone(),
            bias.clone(),
            2,
        );
        let want = cross_attention_reference(q, enc, w_k, w_v, bias, 2);
        let diff = max_abs_diff(got, want);
        assert!(diff < 1e-5, "inference outputs differ by {diff}");
    }

    #[test]
    fn fused_softmax_matches_plain_ops_for_every_bias_shape() {
        let device = Device::flex();
        // Full bias (encoder), per-head bias (decoder self-attention), per-example
        // mask (cross); rows shorter and longer than the kernel's 16 lanes.
        for k in [9, 37] {
            for (i, bias_shape) in [[2, 3, 5, k], [1, 3, 5, k], [2, 1, 1, k]]
                .into_iter()
                .enumerate()
            {
                let scores = random([2, 3, 5, k], 10 + i as u64, &device) * 4.0;
                let mut bias = random(bias_shape, 20 + i as u64, &device);
                if i == 2 {
                    // A padding mask: the last two keys of the second example are masked off.
                    let mut v = vec![0f32; 2 * k];
                    v[2 * k - 2] = -1e30;
                    v[2 * k - 1] = -1e30;
                    bias = Tensor::from_data(TensorData::new(v, bias_shape), &device);
                }
                let diffs = compare((scores, bias), |s, b, fused| {
                    if fused {
                        softmax_with_bias(s, b)
                    } else {
                        softmax_with_bias_reference(s, b)
                    }
                });
                for d in diffs {
                    assert!(
                        d < 1e-5,
                        "bias {bias_shape:?}: fused and plain differ by {d} ({diffs:?})"
                    );
                }
            }
        }
    }

    #[test]
    fn fused_gated_gelu_matches_plain_ops_in_values_and_gradients() {
        let device = Device::flex();
        let gate = random([2, 5, 64], 4, &device) * 3.0;
        let linear = random([2, 5, 64], 5, &device);
        let diffs = compare((gate, linear), |a, l, fused| {
            let l: Tensor<3> = l;
            if fused {
                gated_gelu(a, l)
            } else {
                gated_gelu_reference(a, l)
            }
        });
        for d in diffs {
            assert!(
                d < 1e-5,
                "fused and plain gated GELU differ by {d} ({diffs:?})"
            );
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
        let mut paths = vec![("portable", None)];
        if amx::detected() {
            // AMX tiles or AVX512-BF16, whichever this CPU has (amx::kernel).
            paths.push(("packed", Some(packed)));
        } else {
            eprintln!("no AMX nor AVX512-BF16 on this CPU: the portable path only");
        }
        for (name, packed) in paths {
            let xa = Tensor::<3>::from_data(x.to_data(), &ad).require_grad();
            let wa = Tensor::<2>::from_data(w.to_data(), &ad);
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

    #[test]
    fn the_fused_path_is_taken_only_for_f32_on_flex() {
        let device = Device::flex();
        let x = random([1, 2, 4], 3, &device);
        assert!(flex_f32(&x));
        assert!(flex_f32(&Tensor::<3>::from_data(
            x.to_data(),
            &device.clone().autodiff()
        )));
        assert!(!flex_f32(&x.cast(DType::BF16)));
    }
}
