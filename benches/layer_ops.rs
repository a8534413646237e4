//! Where one T5-small-shaped encoder layer's training time goes: each part of
//! the layer timed forward + backward (gradient to its inputs) on the
//! autodiff device at 16 × 228 positions (batch 16 × 128 tokens after a
//! 100-row prompt), ept's kernel beside burn's composition of the same thing;
//! then a whole block and the six-layer encoder. `scripts/layer_ops_pytorch.py`
//! prints the same rows for PyTorch.
//!
//!     cargo bench --bench layer_ops
//!
//! Prints milliseconds (median of 11); no assertions.

mod common;

use burn::tensor::{Distribution, Tensor};
use ept::kernels;

type Dense = fn(Tensor<3>, Tensor<2>) -> Tensor<3>;
type Attention = fn(Tensor<3>, Tensor<3>, Tensor<3>, Tensor<4>, usize) -> Tensor<3>;
type CrossAttention = fn(Tensor<3>, Tensor<3>, Tensor<2>, Tensor<2>, Tensor<4>, usize) -> Tensor<3>;
type Unary = fn(Tensor<3>) -> Tensor<3>;
type Binary = fn(Tensor<3>, Tensor<3>) -> Tensor<3>;

fn main() {
    ept::runtime::tune_allocator();
    let device = ept::runtime::cpu_device(true);
    let (b, t, d, h, ff) = (16, 228, 512, 8, 2048);
    let n = Distribution::Normal(0.0, 1.0);
    let x: Tensor<3> = Tensor::random([b, t, d], n, &device);
    let up: Tensor<3> = Tensor::random([b, t, ff], n, &device);
    let w_dd: Tensor<2> = Tensor::random([d, d], n, &device);
    let w_up: Tensor<2> = Tensor::random([d, ff], n, &device);
    let w_down: Tensor<2> = Tensor::random([ff, d], n, &device);
    let norm_w: Tensor<1> = Tensor::ones([d], &device);
    let bias: Tensor<4> = Tensor::random([1, h, t, t], n, &device);

    let time = |what: &str, f: &dyn Fn() -> Tensor<1>| {
        let ms = common::median_ms(11, || {
            let _ = f().backward();
        });
        println!("{what:44} {ms:8.2} ms");
    };
    for (what, plain) in [("ept kernel", false), ("burn ops", true)] {
        let f = if plain {
            kernels::rms_norm_reference
        } else {
            kernels::rms_norm
        };
        time(&format!("rms_norm, {what}"), &|| {
            f(x.clone().require_grad(), norm_w.clone(), 1e-6).sum()
        });
    }
    let burn_linear: Dense = |x, w| burn::tensor::module::linear(x, w, None);
    for (input, w, shape) in [
        (&x, &w_dd, "512->512"),
        (&x, &w_up, "512->2048"),
        (&up, &w_down, "2048->512"),
    ] {
        let versions: [(&str, Dense); 2] = [
            ("ept kernel", kernels::frozen_linear),
            ("burn ops", burn_linear),
        ];
        for (what, dense) in versions {
            time(&format!("dense {shape}, {what}"), &|| {
                dense(input.clone().require_grad(), w.clone()).sum()
            });
        }
    }
    let versions: [(&str, Attention); 2] = [
        ("ept kernel", kernels::attention),
        ("burn ops", kernels::attention_reference),
    ];
    for (what, attention) in versions {
        time(&format!("attention, {what}"), &|| {
            let [q, k, v] = [0, 1, 2].map(|_| x.clone().require_grad());
            attention(q, k, v, bias.clone(), h).sum()
        });
    }
    // The decoder's cross-attention: 4 target positions over the encoder
    // output, the key and value projections included.
    let q_dec: Tensor<3> = Tensor::random([b, 4, d], n, &device);
    let mask_bias: Tensor<4> = Tensor::zeros([b, 1, 1, t], &device);
    let versions: [(&str, CrossAttention); 2] = [
        ("ept kernel", kernels::cross_attention),
        ("burn ops", kernels::cross_attention_reference),
    ];
    for (what, cross) in versions {
        time(&format!("cross-attention 4 x 228, {what}"), &|| {
            let (q, enc) = (q_dec.clone().require_grad(), x.clone().require_grad());
            cross(q, enc, w_dd.clone(), w_dd.clone(), mask_bias.clone(), h).sum()
        });
    }
    let versions: [(&str, Unary); 2] = [
        ("ept kernel", kernels::relu),
        ("burn ops", burn::tensor::activation::relu),
    ];
    for (what, relu) in versions {
        // Scaled first, as after a product: a buffer of its own.
        time(&format!("relu [b,t,2048], {what}"), &|| {
            relu(up.clone().require_grad() * 1.0).sum()
        });
    }
    let burn_add: Binary = |a, b| a + b;
    let versions: [(&str, Binary); 2] = [
        ("ept kernel", kernels::residual_add),
        ("burn ops", burn_add),
    ];
    for (what, add) in versions {
        time(&format!("residual add, {what}"), &|| {
            add(x.clone().require_grad(), x.clone().require_grad() * 1.0).sum()
        });
    }

    let config = ept::bench::Shape::T5Small.t5_config().expect("a T5 shape");
    let model = ept::model::T5::random(config, 7, ept::io::weights::FloatType::F32, &device);
    let mask: Tensor<2> = Tensor::ones([b, t], &device);
    time("encoder block", &|| {
        let e = &model.encoder[0];
        let bias = e.attn.position_bias(t, t, 0, true, &model.config);
        let h = x.clone().require_grad();
        let attn = e.attn.forward(e.attn_norm.forward(h.clone()), None, &bias);
        let h = kernels::residual_add(h, attn);
        let ff = e.ff.forward(e.ff_norm.forward(h.clone()));
        kernels::residual_add(h, ff).sum()
    });
    time("encoder, 6 blocks", &|| {
        model.encode_embeds(x.clone().require_grad(), &mask).sum()
    });
}
