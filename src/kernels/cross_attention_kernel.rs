//! The decoder's cross-attention with the key and value projections
//! absorbed into the queries, forward and backward.
//!
//! Why: in prompt tuning for classification the decoder reads a few target
//! tokens (`t_q`, 1–4 for GLUE labels) against a long encoder output (`t_k`,
//! a few hundred positions). Computed as written, every decoder layer first
//! projects the whole encoder output to keys and values, `enc·W_k` and
//! `enc·W_v` (`4·t_k·d·inner` flops per example), and the backward pass
//! multiplies their gradients back (as many again) — for T5-small at 16 × 228
//! encoder positions, 46 of a training step's ≈ 350 GFLOP, to feed an
//! attention with 4 queries. Per head the same numbers come out of
//!
//! ```text
//! U_h = Q_h·W_k,hᵀ            [t_q, d]       S_h = U_h·encᵀ + bias   [t_q, t_k]
//! P_h = softmax(S_h)                          Z_h = P_h·enc           [t_q, d]
//! O_h = Z_h·W_v,h             [t_q, d_kv]
//! ```
//!
//! since `Q_h·K_hᵀ = Q_h·(enc·W_k,h)ᵀ` and `P_h·V_h = (P_h·enc)·W_v,h`: about
//! `t_q / d_kv` of the work forward and `2·t_q / d_kv` backward, and no
//! `[b, t_k, inner]` keys or values stored. The backward pass, from `dO`:
//!
//! ```text
//! dZ_h = dO_h·W_v,hᵀ   dP_h = dZ_h·encᵀ   dS_h = P_h ⊙ (dP_h − Σ dP_h⊙P_h)
//! dU_h = dS_h·enc      dQ_h = dU_h·W_k,h
//! d enc = Σ_h P_hᵀ·dZ_h + dS_hᵀ·U_h          (one product over all heads)
//! ```
//!
//! `cargo bench --bench layer_ops` (4 target positions over 16 × 228, forward
//! and backward, projections included): 15.4 ms here, 55.8 ms projecting the
//! keys and values; PyTorch's sdpa with the projections 108.1 ms
//! (`scripts/layer_ops_pytorch.py`; 2026-11-28, 2 vCPUs).
//!
//! Each example is one rayon task; within it the heads' rows are stacked
//! (`[heads·t_q, ·]`) so that the products against `enc` are one each.
//! Shapes: `q` `[b, t_q, h·d_kv]`, `enc` `[b, t_k, d]`, `W_k`, `W_v`
//! `[d, h·d_kv]` (the layers' transposed weights, read through strides), the
//! additive `bias` (the encoder's padding mask) by strides over
//! `[b, h, t_q, t_k]`. T5 does not scale its scores.

use rayon::prelude::*;

use super::attention_kernel::{Bias, product};
use super::common::SendPtr;

/// The shape of one cross-attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub q_len: usize,
    pub k_len: usize,
    pub d_kv: usize,
    pub d_model: usize,
}

impl Dims {
    fn inner(&self) -> usize {
        self.heads * self.d_kv
    }
    /// Rows of one example's stacked heads, `heads·t_q`.
    fn rows(&self) -> usize {
        self.heads * self.q_len
    }
    /// Length of the probabilities, `[b, h, t_q, t_k]`.
    pub fn probs_len(&self) -> usize {
        self.batch * self.rows() * self.k_len
    }
    /// Length of the absorbed queries `U`, `[b, h, t_q, d]`.
    pub fn u_len(&self) -> usize {
        self.batch * self.rows() * self.d_model
    }
}

/// A projection weight `[d, h·d_kv]`: its values and (row, column) strides.
#[derive(Clone, Copy, Debug)]
pub struct Weight<'a> {
    pub values: &'a [f32],
    pub strides: [usize; 2],
}

impl Weight<'_> {
    /// The pointer to head `h`'s first column.
    fn head(&self, h: usize, d_kv: usize) -> *const f32 {
        self.values[h * d_kv * self.strides[1]..].as_ptr()
    }
    /// Strides of the head's `[d, d_kv]` block, or of its transpose.
    fn strides(&self, transposed: bool) -> [usize; 2] {
        let [r, c] = self.strides;
        if transposed { [c, r] } else { [r, c] }
    }
    fn check(&self, dims: Dims, what: &str) {
        let [r, c] = self.strides;
        let last = (dims.d_model - 1) * r + (dims.inner() - 1) * c;
        assert!(
            dims.d_model == 0 || dims.inner() == 0 || last < self.values.len(),
            "cross attention: {what} shorter than [d, inner]"
        );
    }
}

/// What the forward pass keeps for the backward pass.
pub struct Saved {
    /// `[b, h, t_q, t_k]`.
    pub probs: Vec<f32>,
    /// The absorbed queries `U`, `[b, h, t_q, d]`.
    pub u: Vec<f32>,
}

/// Runs `task(example, scratch)` for every example on rayon's threads, with
/// a per-thread scratch buffer of `scratch_len` floats.
fn for_each_example(dims: Dims, scratch_len: usize, task: impl Fn(usize, &mut [f32]) + Sync) {
    (0..dims.batch)
        .into_par_iter()
        .for_each_init(|| vec![0f32; scratch_len], |scratch, e| task(e, scratch));
}

/// The forward pass: the output `[b, t_q, h·d_kv]`, and what the backward
/// pass needs when `keep` (else computed in scratch and dropped).
pub fn forward(
    q: &[f32],
    enc: &[f32],
    w_k: Weight,
    w_v: Weight,
    bias: Bias,
    dims: Dims,
    keep: bool,
) -> (Vec<f32>, Option<Saved>) {
    let Dims {
        q_len,
        k_len,
        d_model: d,
        ..
    } = dims;
    let (inner, rows) = (dims.inner(), dims.rows());
    check_lengths(q, enc, dims);
    w_k.check(dims, "W_k");
    w_v.check(dims, "W_v");
    let out_len = dims.batch * q_len * inner;
    if k_len == 0 || d == 0 {
        let saved = Saved {
            probs: vec![0.0; dims.probs_len()],
            u: vec![0.0; dims.u_len()],
        };
        return (vec![0.0; out_len], keep.then_some(saved));
    }
    // Written by the products below, every element: not zeroed first.
    let mut out = Vec::with_capacity(out_len);
    let (probs_len, u_len) = match keep {
        true => (dims.probs_len(), dims.u_len()),
        false => (0, 0),
    };
    let mut probs = Vec::with_capacity(probs_len);
    let mut u = Vec::with_capacity(u_len);
    let (out_ptr, probs_ptr, u_ptr) = (
        SendPtr(out.as_mut_ptr()),
        SendPtr(probs.as_mut_ptr()),
        SendPtr(u.as_mut_ptr()),
    );
    // Scratch: Z, and U and P when they are not kept.
    let (p_block, u_block) = (rows * k_len, rows * d);
    let scratch_len = u_block + if keep { 0 } else { u_block + p_block };
    for_each_example(dims, scratch_len, |e, scratch| {
        let (z, rest) = scratch.split_at_mut(u_block);
        let (u_e, p_e) = match keep {
            true => (u_ptr.at(e * u_block), probs_ptr.at(e * p_block)),
            false => {
                let (u_s, p_s) = rest.split_at_mut(u_block);
                (u_s.as_mut_ptr(), p_s.as_mut_ptr())
            }
        };
        let q_e = &q[e * q_len * inner..];
        let enc_e = enc[e * k_len * d..].as_ptr();
        // SAFETY: the operands lie inside q, enc and the weights (checked
        // lengths); u_e and p_e are this example's own blocks (or this
        // thread's scratch); the output rows of example e are written by this
        // task only.
        unsafe {
            // U_h = Q_h·W_k,hᵀ, the heads stacked
            heads_times_weight_t(u_e, q_e, w_k, dims);
            // S = U·encᵀ, all heads in one product
            product([rows, k_len, d], p_e, k_len, u_e, [d, 1], enc_e, [1, d]);
            let p = std::slice::from_raw_parts_mut(p_e, p_block);
            // P = softmax(S + bias), row by row
            for (r, p_row) in p.chunks_exact_mut(k_len).enumerate() {
                let (h, t) = (r / q_len, r % q_len);
                super::softmax::softmax_row_in_place(p_row, bias.row(e, h, t, k_len));
            }
            // Z = P·enc
            product(
                [rows, d, k_len],
                z.as_mut_ptr(),
                d,
                p_e,
                [k_len, 1],
                enc_e,
                [d, 1],
            );
            // O_h = Z_h·W_v,h, into the head's columns
            stacked_times_weight(out_ptr.at(e * q_len * inner), z, w_v, dims);
        }
    });
    // SAFETY: the tasks wrote every element of the three (every example's
    // output rows, probability and U blocks).
    unsafe {
        out.set_len(out_len);
        probs.set_len(probs_len);
        u.set_len(u_len);
    }
    (out, keep.then_some(Saved { probs, u }))
}

/// The gradients of [`forward`] with respect to `q` and `enc`, from the
/// output gradient `grad` (`[b, t_q, h·d_kv]`) and what the forward pass kept
/// ([`Saved`]'s probabilities and `U`).
pub fn backward(
    enc: &[f32],
    w_k: Weight,
    w_v: Weight,
    probs: &[f32],
    u: &[f32],
    grad: &[f32],
    dims: Dims,
) -> (Vec<f32>, Vec<f32>) {
    let Dims {
        q_len,
        k_len,
        d_model: d,
        ..
    } = dims;
    let (inner, rows) = (dims.inner(), dims.rows());
    check_lengths(grad, enc, dims);
    w_k.check(dims, "W_k");
    w_v.check(dims, "W_v");
    assert_eq!(
        probs.len(),
        dims.probs_len(),
        "cross attention: probabilities"
    );
    assert_eq!(u.len(), dims.u_len(), "cross attention: U");
    if k_len == 0 || d == 0 {
        return (vec![0.0; grad.len()], vec![0.0; enc.len()]);
    }
    // Written by the products below, every element: not zeroed first.
    let mut dq = Vec::with_capacity(grad.len());
    let mut denc = Vec::with_capacity(enc.len());
    let (dq_ptr, denc_ptr) = (SendPtr(dq.as_mut_ptr()), SendPtr(denc.as_mut_ptr()));
    let (p_block, u_block) = (rows * k_len, rows * d);
    // Scratch: [dZ; U] (2·rows × d), [P; dS] (2·rows × t_k), dU (rows × d).
    let scratch_len = 2 * u_block + 2 * p_block + u_block;
    for_each_example(dims, scratch_len, |e, scratch| {
        let (zu, rest) = scratch.split_at_mut(2 * u_block);
        let (pds, du) = rest.split_at_mut(2 * p_block);
        let g_e = &grad[e * q_len * inner..];
        let enc_e = enc[e * k_len * d..].as_ptr();
        zu[u_block..].copy_from_slice(&u[e * u_block..(e + 1) * u_block]);
        let (p, ds) = pds.split_at_mut(p_block);
        p.copy_from_slice(&probs[e * p_block..(e + 1) * p_block]);
        // SAFETY: as in `forward`: operands inside their buffers (checked
        // lengths), the scratch this thread's own, the rows of dq and denc
        // of example e written by this task only.
        unsafe {
            // dZ_h = dO_h·W_v,hᵀ, the heads stacked
            heads_times_weight_t(zu.as_mut_ptr(), g_e, w_v, dims);
            // dP = dZ·encᵀ
            product(
                [rows, k_len, d],
                ds.as_mut_ptr(),
                k_len,
                zu.as_ptr(),
                [d, 1],
                enc_e,
                [1, d],
            );
        }
        // dS = P ⊙ (dP − Σ dP⊙P), row by row
        for (ds_row, p_row) in ds.chunks_exact_mut(k_len).zip(p.chunks_exact(k_len)) {
            super::softmax::softmax_backward_row(ds_row, p_row);
        }
        // SAFETY: as above.
        unsafe {
            // dU = dS·enc
            product(
                [rows, d, k_len],
                du.as_mut_ptr(),
                d,
                ds.as_ptr(),
                [k_len, 1],
                enc_e,
                [d, 1],
            );
            // d enc = [P; dS]ᵀ·[dZ; U]: both terms, all heads, one product
            product(
                [k_len, d, 2 * rows],
                denc_ptr.at(e * k_len * d),
                d,
                pds.as_ptr(),
                [1, k_len],
                zu.as_ptr(),
                [d, 1],
            );
            // dQ_h = dU_h·W_k,h, into the head's columns
            stacked_times_weight(dq_ptr.at(e * q_len * inner), du, w_k, dims);
        }
    });
    // SAFETY: the tasks wrote every element of both.
    unsafe {
        dq.set_len(grad.len());
        denc.set_len(enc.len());
    }
    (dq, denc)
}

/// `X_h·W_hᵀ` for every head of one example, the heads stacked into `dst`
/// (`[heads·t_q, d]`): `x` is the example's rows of `h·d_kv` (its queries, or
/// the output's gradient), `W_h` the head's `d_kv` columns of `w`.
///
/// # Safety
/// `x` holds `t_q` rows of `h·d_kv` and `dst` room for `heads·t_q·d` floats
/// that no other thread touches; `w` passed [`Weight::check`].
unsafe fn heads_times_weight_t(dst: *mut f32, x: &[f32], w: Weight, dims: Dims) {
    let (t_q, d, d_kv) = (dims.q_len, dims.d_model, dims.d_kv);
    for h in 0..dims.heads {
        // SAFETY: forwarded from the caller.
        unsafe {
            product(
                [t_q, d, d_kv],
                dst.add(h * t_q * d),
                d,
                x[h * d_kv..].as_ptr(),
                [dims.inner(), 1],
                w.head(h, d_kv),
                w.strides(true),
            )
        };
    }
}

/// `Y_h·W_h` for every head of one example, from the heads stacked in `y`
/// (`[heads·t_q, d]`) into each head's columns of `dst`'s rows of `h·d_kv`.
///
/// # Safety
/// `y` holds `heads·t_q·d` floats, `dst` `t_q` rows of `h·d_kv` that no other
/// thread touches; `w` passed [`Weight::check`].
unsafe fn stacked_times_weight(dst: *mut f32, y: &[f32], w: Weight, dims: Dims) {
    let (t_q, d, d_kv) = (dims.q_len, dims.d_model, dims.d_kv);
    for h in 0..dims.heads {
        // SAFETY: forwarded from the caller.
        unsafe {
            product(
                [t_q, d_kv, d],
                dst.add(h * d_kv),
                dims.inner(),
                y[h * t_q * d..].as_ptr(),
                [d, 1],
                w.head(h, d_kv),
                w.strides(false),
            )
        };
    }
}

fn check_lengths(q: &[f32], enc: &[f32], dims: Dims) {
    assert_eq!(
        q.len(),
        dims.batch * dims.q_len * dims.inner(),
        "cross attention: q"
    );
    assert_eq!(
        enc.len(),
        dims.batch * dims.k_len * dims.d_model,
        "cross attention: enc"
    );
}
