//! The decoder's cross-attention with frozen key and value projections as
//! one fused operation with its own backward, on the kernel of
//! [`super::cross_attention_kernel`], which folds the projections into the
//! queries.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension,
};
use burn::tensor::{Shape, Tensor};

use super::attention::{attention, bias_of, expanded_bias};
use super::common::{contiguous_f32, enabled, flex_f32, flex_tensor, forward_strides, strided_f32};
use super::cross_attention_kernel;
use super::linear::frozen_linear;

/// The decoder's cross-attention of the projected queries `q` `[b, t_q,
/// h·d]` over the encoder output `enc` `[b, t_k, d]`, with the frozen key and
/// value weights `w_k`, `w_v` (`[d, h·d]`, transposed as
/// [`crate::model::t5::Linear`] keeps them): `attention(q, enc·w_k, enc·w_v,
/// bias)`. For f32 on Flex with
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
        let out = <Dispatch as CrossAttentionOps>::cross_attention(
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

/// The fused cross-attention, per backend (a burn backend extension).
/// [`CrossAttentionOps::cross_attention_backward`] is the backward pass the
/// `Autodiff` implementation calls on the inner backend.
#[backend_extension(Flex, Autodiff)]
pub trait CrossAttentionOps: Backend {
    /// Cross-attention with the projections absorbed; see [`cross_attention`].
    fn cross_attention(
        q: FloatTensor<Self>,
        enc: FloatTensor<Self>,
        w_k: FloatTensor<Self>,
        w_v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        heads: usize,
    ) -> FloatTensor<Self>;

    /// [`CrossAttentionOps::cross_attention`], its probabilities `[b, h, t_q, t_k]`
    /// and absorbed queries `[b, h, t_q, d]` (what the backward pass reads).
    fn cross_attention_with_saved(
        q: FloatTensor<Self>,
        enc: FloatTensor<Self>,
        w_k: FloatTensor<Self>,
        w_v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        heads: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients of [`CrossAttentionOps::cross_attention`] with respect to `q` and `enc`.
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

impl CrossAttentionOps for Flex {
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

/// [`CrossAttentionOps::cross_attention`] on Flex, with the probabilities and absorbed
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

/// The backward step of [`CrossAttentionOps::cross_attention`] under autodiff: the
/// gradient reaches the queries and the encoder output (the weights and the
/// mask are constants). Keeps the encoder output, the two weights, the
/// probabilities and the absorbed queries.
#[derive(Debug)]
struct CrossAttentionStep {
    heads: usize,
}

impl<B: Backend + CrossAttentionOps> Backward<B, 2> for CrossAttentionStep {
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

impl<B: Backend + CrossAttentionOps, C: CheckpointStrategy> CrossAttentionOps for Autodiff<B, C> {
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
    use crate::kernels::attention_reference;
    use crate::kernels::common::testing::{max_abs_diff, random};
    use burn::tensor::{Device, TensorData};

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
}
