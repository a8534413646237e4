//! Fused CPU kernels for the backbones' steps, each with its own backward.
//!
//! Why: burn composes T5's RMS norm from six tensor operations, the attention
//! softmax (with its additive position bias and mask) from six more, and T5
//! v1.1's gated-GELU activation from nine. On the CPU backend each is a pass
//! over memory, run on the calling thread, and under autodiff each is a graph
//! node that keeps its inputs alive for the backward pass. Here each becomes
//! one pass forward and one backward, parallel over rows, keeping only what
//! the backward needs (the input rows for the norm, the probabilities for the
//! softmax). The products go the same way: multi-head attention one head at a
//! time, and the frozen dense layers straight into unzeroed buffers; ReLU and
//! the residual additions run in parallel, in place when their buffer is theirs.
//!
//! Each operation is a burn backend extension (`*Ops`) implemented for the
//! Flex CPU backend, plus an `Autodiff` implementation that records the
//! backward step. The public functions use them for f32 tensors on Flex and
//! fall back to the plain tensor operations everywhere else (other backends,
//! other dtypes, or after [`set_enabled`]`(false)`); tests check that the two
//! agree to 1e-5 in values and gradients.
//!
//! One file per operation, the entry point, its backend extension and its
//! backward step together:
//!
//! - `norm.rs`: [`rms_norm`], T5's RMS norm;
//! - `softmax.rs`: [`softmax_with_bias`], and the row kernels the attention
//!   kernels share;
//! - `activation.rs`: [`gated_gelu`] (T5 v1.1) and [`gated_silu`] (SwiGLU), gated activations;
//! - `elementwise.rs`: [`relu`] and [`residual_add`], in place where they can be;
//! - `linear.rs`: the products with frozen weights, [`frozen_linear`],
//!   [`bf16_linear`] and [`few_rows_matmul`];
//! - `attention.rs`: [`attention()`], multi-head attention, on
//!   `attention_kernel.rs` (one task per example and head);
//! - `cross_attention.rs`: [`cross_attention()`], the decoder's cross-attention
//!   with the key and value projections absorbed, on `cross_attention_kernel.rs`;
//! - `quant4.rs`: [`quant4_linear`], products with 4-bit (NF4/FP4) weights
//!   decoded per call;
//! - `matmul.rs`: dense f32 products into unzeroed buffers (the gemm crate);
//! - `rowdot.rs`: a few rows times a wide row-major weight (the LM head);
//! - `amx.rs`, `dpbf16.rs`: bf16 products on packed frozen weights, on AMX
//!   tiles or AVX512-BF16 dot products; `packed.rs`: the tile layout they read;
//! - `common.rs`: what they share: the on/off switch ([`set_enabled`]), the
//!   Flex tensor helpers, the pointer parallel tasks write through, the tests'
//!   helpers.

pub mod activation;
pub mod amx;
pub mod attention;
pub mod attention_kernel;
mod common;
pub mod cross_attention;
pub mod cross_attention_kernel;
pub mod dpbf16;
pub mod elementwise;
pub mod linear;
pub mod matmul;
pub mod norm;
pub mod packed;
pub mod quant4;
pub mod rowdot;
pub mod softmax;

pub use activation::{gated_gelu, gated_gelu_reference, gated_silu, gated_silu_reference};
pub use attention::{attention, attention_reference};
pub use common::{enabled, kernels_name, set_enabled};
pub use cross_attention::{cross_attention, cross_attention_reference};
pub use elementwise::{relu, residual_add};
pub use linear::{bf16_linear, bf16_linear_reference, few_rows_matmul, frozen_linear};
pub use norm::{rms_norm, rms_norm_reference};
pub use quant4::{quant4_linear, quant4_linear_reference};
pub use softmax::{softmax_with_bias, softmax_with_bias_reference};
