//! Dense f32 products on the gemm crate, written into fresh buffers that are
//! never zeroed.
//!
//! Why: burn's CPU product allocates its output zero-filled — a single-threaded
//! `memset` of the whole result (30 MB for a T5-small feed-forward layer at
//! 16 × 228 positions) while the other cores wait — before the gemm crate
//! overwrites every element. Here the product writes straight into
//! uninitialised memory; `cargo bench --bench layer_ops` times the frozen
//! layers both ways.

/// A matrix operand: its elements and the (row, column) strides between them.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    pub values: &'a [f32],
    pub strides: [usize; 2],
}

impl<'a> Operand<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub fn rows(values: &'a [f32], cols: usize) -> Self {
        Operand {
            values,
            strides: [cols, 1],
        }
    }

    /// The same elements read as the transposed matrix.
    pub fn transposed(self) -> Self {
        let [r, c] = self.strides;
        Operand {
            values: self.values,
            strides: [c, r],
        }
    }

    /// Whether a `[rows, cols]` matrix with these strides lies inside `values`.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1) * self.strides[0] + (cols - 1) * self.strides[1] < self.values.len()
    }
}

/// Below this many multiply-adds a product runs on the calling thread (burn's threshold).
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// `a (m×k) · b (k×n)` into a new row-major `m×n` buffer, on all of rayon's
/// threads when the product is large enough to share.
pub fn product(m: usize, n: usize, k: usize, a: Operand, b: Operand) -> Vec<f32> {
    assert!(
        a.fits(m, k) && b.fits(k, n),
        "matmul: operands smaller than their shapes"
    );
    let parallelism = if m * n * k >= PARALLEL_WORK {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let mut out = Vec::with_capacity(m * n);
    // SAFETY: the operands hold their shapes (checked above); `out` has room
    // for m×n elements, which the product writes, every one, before `set_len`
    // (with `read_dst` false the destination is only written).
    unsafe {
        product_raw(
            [m, n, k],
            out.as_mut_ptr(),
            n,
            a.values.as_ptr(),
            a.strides,
            b.values.as_ptr(),
            b.strides,
            parallelism,
        );
        out.set_len(m * n);
    }
    out
}

/// `dst (m×n) = a (m×k) · b (k×n)`, each operand given by a pointer and its
/// (row, column) element strides, the destination by its row stride.
///
/// # Safety
/// Every element the strides address must be inside its allocation; `dst`
/// must not overlap `a` or `b` nor be touched by another thread meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn product_raw(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_rs: usize,
    a: *const f32,
    [a_rs, a_cs]: [usize; 2],
    b: *const f32,
    [b_rs, b_cs]: [usize; 2],
    parallelism: gemm::Parallelism,
) {
    // SAFETY: forwarded from the caller. With `read_dst` false, gemm
    // computes dst = 1·(a·b) without reading dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_is_the_definition_for_every_layout() {
        let (m, n, k) = (37, 29, 70);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 53 % 97) as f32) / 48.0 - 1.0)
            .collect();
        let want: Vec<f64> = (0..m * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                (0..k)
                    .map(|l| a[i * k + l] as f64 * b[l * n + j] as f64)
                    .sum()
            })
            .collect();
        // b as given, and b stored transposed then read back through strides.
        let b_t: Vec<f32> = (0..n * k).map(|jl| b[(jl % k) * n + jl / k]).collect();
        for (what, b_op) in [
            ("row-major", Operand::rows(&b, n)),
            ("transposed view", Operand::rows(&b_t, k).transposed()),
        ] {
            let got = product(m, n, k, Operand::rows(&a, k), b_op);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (*g as f64 - w).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-4, "{what}: off by {worst}");
        }
    }

    #[test]
    #[should_panic(expected = "smaller than their shapes")]
    fn product_refuses_operands_shorter_than_their_shape() {
        let a = vec![0f32; 6];
        product(3, 2, 3, Operand::rows(&a, 3), Operand::rows(&a[..5], 2));
    }
}
