//! Where one T5-small-shaped encoder layer's training time goes: each part
//! of the layer timed forward + backward (gradient to its input) on the
//! autodiff device, at batch 16 × 228 positions.
//!
//!     cargo bench --bench layer_ops
//!
//! Prints milliseconds (median of 11); no assertions.

use std::time::Instant;

use burn::tensor::activation::relu;
use burn::tensor::{Distribution, Tensor};
use ept::model::fused;

fn median_ms(mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..11)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

fn main() {
    ept::runtime::tune_allocator();
    let device = ept::runtime::cpu_device(true);
    let (b, t, d, h, dk, ff) = (16, 228, 512, 8, 64, 2048);
    let n = Distribution::Normal(0.0, 1.0);
    let x: Tensor<3> = Tensor::random([b, t, d], n, &device);
    let w_dd: Tensor<2> = Tensor::random([d, d], n, &device);
    let w_up: Tensor<2> = Tensor::random([d, ff], n, &device);
    let w_down: Tensor<2> = Tensor::random([ff, d], n, &device);
    let norm_w: Tensor<1> = Tensor::ones([d], &device);
    let bias: Tensor<4> = Tensor::random([1, h, t, t], n, &device);
    let q4: Tensor<4> = Tensor::random([b, h, t, dk], n, &device);
    let s4: Tensor<4> = Tensor::random([b, h, t, t], n, &device);
    let up: Tensor<3> = Tensor::random([b, t, ff], n, &device);

    let time = |what: &str, f: &dyn Fn() -> Tensor<1>| {
        let ms = median_ms(|| {
            let _ = f().backward();
        });
        println!("{what:40} {ms:8.2} ms");
    };
    time("rms_norm", &|| {
        let x = x.clone().require_grad();
        fused::rms_norm(x, norm_w.clone(), 1e-6).sum()
    });
    type Dense = fn(Tensor<3>, Tensor<2>) -> Tensor<3>;
    let burn_linear: Dense = |x, w| burn::tensor::module::linear(x, w, None);
    let versions: [(&str, Dense); 2] = [
        ("frozen_linear", fused::frozen_linear),
        ("burn's linear", burn_linear),
    ];
    for (name, dense) in versions {
        for (input, w, shape) in [
            (&x, &w_dd, "512->512"),
            (&x, &w_up, "512->2048"),
            (&up, &w_down, "2048->512"),
        ] {
            time(&format!("{shape}, {name}"), &|| {
                dense(input.clone().require_grad(), w.clone()).sum()
            });
        }
    }
    time("relu [b,t,2048]", &|| relu(up.clone().require_grad()).sum());
    time("split heads + q kT", &|| {
        let x = x.clone().require_grad();
        let q = x.clone().reshape([b, t, h, dk]).swap_dims(1, 2);
        let k = x.reshape([b, t, h, dk]).swap_dims(1, 2);
        q.matmul(k.swap_dims(2, 3)).sum()
    });
    time("softmax_with_bias", &|| {
        fused::softmax_with_bias(s4.clone().require_grad(), bias.clone()).sum()
    });
    time("p v + merge heads", &|| {
        let p = s4.clone().require_grad();
        let v = q4.clone().require_grad();
        p.matmul(v).swap_dims(1, 2).reshape([b, t, h * dk]).sum()
    });
    type Attention = fn(Tensor<3>, Tensor<3>, Tensor<3>, Tensor<4>, usize) -> Tensor<3>;
    let versions: [(&str, Attention); 2] = [
        ("attention, fused kernel", fused::attention),
        ("attention, composed", fused::attention_reference),
    ];
    for (what, attention) in versions {
        time(what, &|| {
            let [q, k, v] = [0, 1, 2].map(|_| x.clone().require_grad());
            attention(q, k, v, bias.clone(), h).sum()
        });
    }
    time("residual add", &|| {
        (x.clone().require_grad() + x.clone()).sum()
    });

    let config = ept::bench::Shape::T5Small.config();
    let model = ept::model::T5::random(config, 7, ept::io::weights::FloatType::F32, &device);
    let mask: Tensor<2> = Tensor::ones([b, t], &device);
    time("encoder block 0", &|| {
        let e = &model.encoder[0];
        let bias = e.attn.position_bias(t, t, 0, true, &model.config);
        let h = x.clone().require_grad();
        let h = h.clone() + e.attn.forward(e.attn_norm.forward(h), None, &bias);
        (h.clone() + e.ff.forward(e.ff_norm.forward(h))).sum()
    });
    time("encoder, 6 blocks", &|| {
        model.encode_embeds(x.clone().require_grad(), &mask).sum()
    });
}
