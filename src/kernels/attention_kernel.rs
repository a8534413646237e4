//! Multi-head attention, forward and backward, one head at a time.
//!
//! Why: composed from tensor operations, T5's attention splits the heads with
//! a transpose, multiplies 128 small `[t, 64]` matrices in batched products
//! (each output allocated zero-filled on one thread), keeps four full
//! `[b, heads, t_q, t_k]` tensors alive per layer (scores, probabilities and,
//! backward, their two gradients), and merges the heads with another
//! transpose. Here each (example, head) pair is one task: its scores,
//! softmax and weighted sum stay in the core's cache, the heads are read and
//! written in place in the `[b, t, heads·d_kv]` layout of the projections
//! around them, and only the probabilities are kept for the backward pass
//! (as the composed version keeps them). `cargo bench --bench layer_ops`
//! times both, forward and backward, on the T5-small shape (16 × 228
//! positions): 98 ms composed, 49 ms here (2026-11-28, 2 vCPUs).
//!
//! Shapes: `q` is `[b, t_q, h·d]`, `k` and `v` are `[b, t_k, h·d]`, the
//! additive `bias` (position bias and masks, f32) is given by strides over
//! `[b, h, t_q, t_k]` (0 where it broadcasts), the output `[b, t_q, h·d]`.
//! T5 does not scale its scores.

use rayon::prelude::*;

use super::common::SendPtr;
use super::matmul::product_raw;

/// The shape of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub q_len: usize,
    pub k_len: usize,
    pub d_kv: usize,
}

impl Dims {
    fn inner(&self) -> usize {
        self.heads * self.d_kv
    }
    fn pairs(&self) -> usize {
        self.batch * self.heads
    }
    fn probs_len(&self) -> usize {
        self.pairs() * self.q_len * self.k_len
    }
}

/// The additive bias: its values and the element strides of its four
/// dimensions `[b, h, t_q, t_k]` (0 where it broadcasts; the last must be 1).
#[derive(Clone, Copy, Debug)]
pub struct Bias<'a> {
    pub values: &'a [f32],
    pub strides: [usize; 4],
}

impl Bias<'_> {
    /// The `k_len` values added to row `row` of head `head` of example `b`.
    pub(super) fn row(&self, b: usize, head: usize, row: usize, k_len: usize) -> &[f32] {
        let [sb, sh, sr, _] = self.strides;
        let start = b * sb + head * sh + row * sr;
        &self.values[start..start + k_len]
    }
}

/// `dst (m×n) = a (m×k) · b (k×n)` on the calling thread; see [`product_raw`].
///
/// # Safety
/// As [`product_raw`].
pub(super) unsafe fn product(
    mnk: [usize; 3],
    dst: *mut f32,
    dst_rs: usize,
    a: *const f32,
    a_strides: [usize; 2],
    b: *const f32,
    b_strides: [usize; 2],
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        product_raw(
            mnk,
            dst,
            dst_rs,
            a,
            a_strides,
            b,
            b_strides,
            gemm::Parallelism::None,
        )
    }
}

/// One (example, head) pair's place in the buffers.
#[derive(Clone, Copy)]
struct Pair {
    /// The pair's number, `b·heads + h`: its block's place.
    index: usize,
    /// Example and head.
    b: usize,
    h: usize,
    /// Offsets of the head's first element in `q` (and the output) and in `k`, `v`.
    q_off: usize,
    k_off: usize,
}

/// Runs `task` for every (example, head) pair on rayon's threads, with a
/// pointer to the pair's `t_q × t_k` block: in `kept` when the caller keeps
/// the blocks, else in a per-thread scratch block.
fn for_each_pair(dims: Dims, kept: Option<SendPtr>, task: impl Fn(Pair, *mut f32) + Sync) {
    let (inner, block) = (dims.inner(), dims.q_len * dims.k_len);
    let scratch_len = if kept.is_some() { 0 } else { block };
    (0..dims.pairs()).into_par_iter().for_each_init(
        || vec![0f32; scratch_len],
        |scratch, index| {
            let (b, h) = (index / dims.heads, index % dims.heads);
            let pair = Pair {
                index,
                b,
                h,
                q_off: b * dims.q_len * inner + h * dims.d_kv,
                k_off: b * dims.k_len * inner + h * dims.d_kv,
            };
            let block_ptr = match kept {
                Some(ptr) => ptr.at(index * block),
                None => scratch.as_mut_ptr(),
            };
            task(pair, block_ptr)
        },
    );
}

/// The forward pass: the output `[b, t_q, h·d]`, and the probabilities
/// `[b, h, t_q, t_k]` when `keep_probs` (for the backward pass; else they
/// live in a per-thread scratch block and an empty vector is returned).
pub fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Bias,
    dims: Dims,
    keep_probs: bool,
) -> (Vec<f32>, Vec<f32>) {
    let Dims {
        q_len, k_len, d_kv, ..
    } = dims;
    let inner = dims.inner();
    check_lengths(q, k, v, dims);
    let (out_len, block) = (dims.batch * q_len * inner, q_len * k_len);
    if block == 0 {
        return (vec![0.0; out_len], Vec::new());
    }
    // Filled by the products below, every element: not zeroed first.
    let mut out = Vec::with_capacity(out_len);
    let probs_len = if keep_probs { dims.probs_len() } else { 0 };
    let mut probs = Vec::with_capacity(probs_len);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let probs_ptr = keep_probs.then_some(SendPtr(probs.as_mut_ptr()));
    for_each_pair(
        dims,
        probs_ptr,
        |Pair {
             b, h, q_off, k_off, ..
         },
         p_ptr| {
            // SAFETY: the operands lie inside q, k, v (rows of `inner`
            // elements, this head's `d_kv` columns); p is this task's own
            // block, and the output columns of (b, h) are written by this
            // task only.
            unsafe {
                // S = Q·Kᵀ
                product(
                    [q_len, k_len, d_kv],
                    p_ptr,
                    k_len,
                    q[q_off..].as_ptr(),
                    [inner, 1],
                    k[k_off..].as_ptr(),
                    [1, inner],
                );
                // The product wrote the whole block (this task's own).
                let p = std::slice::from_raw_parts_mut(p_ptr, block);
                // P = softmax(S + bias), row by row
                for (row, p_row) in p.chunks_exact_mut(k_len).enumerate() {
                    super::softmax::softmax_row_in_place(p_row, bias.row(b, h, row, k_len));
                }
                // O = P·V, into this head's columns
                product(
                    [q_len, d_kv, k_len],
                    out_ptr.at(q_off),
                    inner,
                    p.as_ptr(),
                    [k_len, 1],
                    v[k_off..].as_ptr(),
                    [inner, 1],
                );
            }
        },
    );
    // SAFETY: the tasks wrote every element of both (all heads' columns of
    // every output row, every probability block).
    unsafe {
        out.set_len(out_len);
        probs.set_len(probs_len);
    }
    (out, probs)
}

/// The gradients of [`forward`] with respect to `q`, `k`, `v` (each in its
/// input's layout) and, when `bias_grad` is set, the gradient of the scores
/// `[b, h, t_q, t_k]` (the bias's, before summing over where it broadcasts).
pub struct Gradients {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub scores: Option<Vec<f32>>,
}

/// The backward pass from the output gradient `grad` (`[b, t_q, h·d]`) and
/// the forward pass's probabilities.
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    grad: &[f32],
    dims: Dims,
    bias_grad: bool,
) -> Gradients {
    let Dims {
        q_len, k_len, d_kv, ..
    } = dims;
    let inner = dims.inner();
    check_lengths(q, k, v, dims);
    assert_eq!(probs.len(), dims.probs_len(), "attention: probabilities");
    assert_eq!(grad.len(), q.len(), "attention: output gradient");
    let block = q_len * k_len;
    if block == 0 {
        return Gradients {
            q: vec![0.0; q.len()],
            k: vec![0.0; k.len()],
            v: vec![0.0; v.len()],
            scores: bias_grad.then(Vec::new),
        };
    }
    // Filled by the products below, every element: not zeroed first.
    let mut dq = Vec::with_capacity(q.len());
    let mut dk = Vec::with_capacity(k.len());
    let mut dv = Vec::with_capacity(v.len());
    let mut scores = bias_grad.then(|| Vec::with_capacity(dims.probs_len()));
    let (dq_ptr, dk_ptr, dv_ptr) = (
        SendPtr(dq.as_mut_ptr()),
        SendPtr(dk.as_mut_ptr()),
        SendPtr(dv.as_mut_ptr()),
    );
    let ds_ptr = scores.as_mut().map(|s| SendPtr(s.as_mut_ptr()));
    // dS goes to the caller's buffer when the bias wants it, else to scratch.
    for_each_pair(
        dims,
        ds_ptr,
        |Pair {
             index,
             q_off,
             k_off,
             ..
         },
         ds_ptr| {
            let p = &probs[index * block..(index + 1) * block];
            // SAFETY: as in `forward`: operands inside their buffers, each
            // task writing only its own head's columns and its own block.
            unsafe {
                // dV = Pᵀ·dO
                product(
                    [k_len, d_kv, q_len],
                    dv_ptr.at(k_off),
                    inner,
                    p.as_ptr(),
                    [1, k_len],
                    grad[q_off..].as_ptr(),
                    [inner, 1],
                );
                // dP = dO·Vᵀ
                product(
                    [q_len, k_len, d_kv],
                    ds_ptr,
                    k_len,
                    grad[q_off..].as_ptr(),
                    [inner, 1],
                    v[k_off..].as_ptr(),
                    [1, inner],
                );
                // The product wrote the whole block (this task's own).
                let ds = std::slice::from_raw_parts_mut(ds_ptr, block);
                // dS = P ⊙ (dP − Σ_j dP⊙P), row by row
                for (ds_row, p_row) in ds.chunks_exact_mut(k_len).zip(p.chunks_exact(k_len)) {
                    super::softmax::softmax_backward_row(ds_row, p_row);
                }
                // dQ = dS·K
                product(
                    [q_len, d_kv, k_len],
                    dq_ptr.at(q_off),
                    inner,
                    ds.as_ptr(),
                    [k_len, 1],
                    k[k_off..].as_ptr(),
                    [inner, 1],
                );
                // dK = dSᵀ·Q
                product(
                    [k_len, d_kv, q_len],
                    dk_ptr.at(k_off),
                    inner,
                    ds.as_ptr(),
                    [1, k_len],
                    q[q_off..].as_ptr(),
                    [inner, 1],
                );
            }
        },
    );
    // SAFETY: the tasks wrote every element (all heads' columns of every
    // row, every block of the scores gradient).
    unsafe {
        dq.set_len(q.len());
        dk.set_len(k.len());
        dv.set_len(v.len());
        if let Some(s) = scores.as_mut() {
            s.set_len(dims.probs_len());
        }
    }
    Gradients {
        q: dq,
        k: dk,
        v: dv,
        scores,
    }
}

fn check_lengths(q: &[f32], k: &[f32], v: &[f32], dims: Dims) {
    let inner = dims.inner();
    assert_eq!(q.len(), dims.batch * dims.q_len * inner, "attention: q");
    assert_eq!(k.len(), dims.batch * dims.k_len * inner, "attention: k");
    assert_eq!(v.len(), k.len(), "attention: v");
}
