//! Products with few rows, as decoding runs them (docs/BENCHMARKS.md,
//! "Validation scoring"): a dense weight as a transposed view of PyTorch's
//! `[out, in]` layout against a row-major copy, and the LM head through
//! `kernels::few_rows_matmul` (the row-dot kernel) against burn's product.
//!
//!     cargo bench --bench few_rows
//!
//! Prints milliseconds per product (median of 21) and GFLOP/s; no assertions.

mod common;

use burn::tensor::{Distribution, Tensor};

fn report(what: &str, [m, k, n]: [usize; 3], ms: f64) {
    let gflops = 2.0 * (m * k * n) as f64 / ms / 1e6;
    println!("{what:44} [{m}, {k}] x [{k}, {n}]  {ms:8.2} ms  {gflops:6.1} GFLOP/s");
}

fn main() {
    let device = ept::runtime::cpu_device(false);
    let normal = Distribution::Normal(0.0, 1.0);
    for [m, k, n] in [
        [32, 512, 512],
        [32, 512, 2048],
        [32, 2048, 512],
        [1024, 512, 512],
    ] {
        let x: Tensor<2> = Tensor::random([m, k], normal, &device);
        let view = Tensor::<2>::random([n, k], normal, &device).transpose();
        let copy = Tensor::<2>::from_data(view.to_data(), &device);
        for (what, w) in [
            ("dense, transposed view", view),
            ("dense, row-major copy", copy),
        ] {
            let ms = common::median_ms(21, || {
                let _ = x.clone().matmul(w.clone()).into_data();
            });
            report(what, [m, k, n], ms);
        }
    }
    let head = Tensor::<2>::random([32128, 512], normal, &device).transpose();
    for m in [32, 64, 128] {
        let x: Tensor<3> = Tensor::random([m, 1, 512], normal, &device);
        for (what, fused) in [
            ("head, few_rows_matmul", true),
            ("head, burn's product", false),
        ] {
            ept::kernels::set_enabled(fused);
            let ms = common::median_ms(21, || {
                let _ = ept::kernels::few_rows_matmul(x.clone(), head.clone()).into_data();
            });
            report(what, [m, 512, 32128], ms);
        }
    }
}
