//! T5's multi-head attention as one fused operation with its own backward,
//! on the head-at-a-time kernel of [`super::attention_kernel`]; also the
//! Flex views of the additive bias that [`mod@super::cross_attention`] shares.

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
use burn::tensor::{DType, Shape, Tensor};

use super::attention_kernel;
use super::common::{contiguous_f32, enabled, flex_f32, flex_tensor, forward_strides, strided_f32};
use super::softmax::softmax_with_bias;

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
        let out = <Dispatch as AttentionOps>::multi_head_attention(
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

/// The fused multi-head attention, per backend (a burn backend extension).
/// [`AttentionOps::multi_head_attention_backward`] is the backward pass the
/// `Autodiff` implementation calls on the inner backend.
#[backend_extension(Flex, Autodiff)]
pub trait AttentionOps: Backend {
    /// Multi-head attention; see [`attention`].
    fn multi_head_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self>;

    /// [`AttentionOps::multi_head_attention`] and its probabilities `[b, h, t_q, t_k]`.
    fn multi_head_attention_with_probs(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        heads: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients of [`AttentionOps::multi_head_attention`] with respect to `q`, `k`, `v`,
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
}

impl AttentionOps for Flex {
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
pub(super) fn expanded_bias(bias: FlexTensor, full: Shape) -> FlexTensor {
    let bias = forward_strides(Flex::float_expand(bias, full));
    match bias.layout().strides()[3] {
        1 => bias,
        _ => bias.to_contiguous(),
    }
}

/// The kernels' view of a bias made by [`expanded_bias`].
pub(super) fn bias_of(bias: &FlexTensor) -> attention_kernel::Bias<'_> {
    let (values, s) = strided_f32(bias);
    attention_kernel::Bias {
        values,
        strides: [s[0], s[1], s[2], 1],
    }
}

/// [`AttentionOps::multi_head_attention`] on Flex, with the probabilities when `keep_probs`.
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

/// The backward step of [`AttentionOps::multi_head_attention`] under autodiff; keeps the
/// queries, keys, values and probabilities, and the bias's shape to sum its
/// gradient back to.
#[derive(Debug)]
struct AttentionStep {
    heads: usize,
    bias_shape: Shape,
}

impl<B: Backend + AttentionOps> Backward<B, 4> for AttentionStep {
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

impl<B: Backend + AttentionOps, C: CheckpointStrategy> AttentionOps for Autodiff<B, C> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::common::testing::{max_abs_diff, random};
    use burn::tensor::{Device, TensorData};

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
}
