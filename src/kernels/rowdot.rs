//! Products of a few rows with a wide weight stored row by row: `A·Wᵀ` for
//! `A` `[m, k]` with m small and `W` `[n, k]` row-major.
//!
//! Why: the language-model head during decoding. Greedy generation feeds one
//! token per example, so each step multiplies a batch of rows (32) by the
//! head's `[d, vocab]` weight (the shared embedding, transposed: 32128 × 512
//! for T5). The gemm crate takes that transposed view as a column-major right
//! operand and reaches under 60 GFLOP/s on it (18 ms per step at T5-small
//! shape, `cargo bench --bench few_rows`). Here each task keeps four rows of
//! `W` in L1 and dots them with every row of `A` (in L2), so `W` streams from
//! memory once, with sixteen AVX-512 accumulators per 4 × 4 tile (11.7 ms).
//! Prompt tuning's training step has the same shape at the head: a few
//! target tokens per example ([`super::linear::few_rows_matmul`]).
//!
//! [`rows_times_transposed`] uses AVX-512 where the CPU has it and returns
//! `None` elsewhere (the caller then takes burn's product); the sums run in
//! another order than gemm's, so results differ from it by rounding only
//! (tests: 1e-5 relative).

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::common::SendPtr;

/// Rows of `W` per rayon task (a multiple of the tile's four).
const ROWS_PER_TASK: usize = 256;

/// `out[i, j] = Σ_p a[i, p] · w[j, p]` for `a` `[m, k]` and `w` `[n, k]`, both
/// row-major; `out` is `[m, n]` row-major. `None` without AVX-512.
pub fn rows_times_transposed(
    a: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
) -> Option<Vec<f32>> {
    assert_eq!(a.len(), m * k, "rows_times_transposed: a is not [m, k]");
    assert_eq!(w.len(), n * k, "rows_times_transposed: w is not [n, k]");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let mut out = vec![0f32; m * n];
        let out_ptr = SendPtr(out.as_mut_ptr());
        w.par_chunks(ROWS_PER_TASK * k.max(1))
            .enumerate()
            .for_each(|(t, w_rows)| {
                let j0 = t * ROWS_PER_TASK;
                let rows = w_rows.len() / k.max(1);
                // SAFETY: AVX-512F is present (checked above); each task writes
                // only the columns j0..j0 + rows of `out`, disjoint across tasks,
                // and `out` outlives the parallel loop.
                unsafe { avx512::block(a, m, w_rows, rows, k, out_ptr, n, j0) };
            });
        return Some(out);
    }
    let _ = (a, m, w, n, k);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::SendPtr;
    use std::arch::x86_64::*;

    /// Columns `j0 .. j0 + rows` of `out` (`[m, n]`): `a` (`[m, k]`) times the
    /// transpose of `w_rows` (`[rows, k]`).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        a: &[f32],
        m: usize,
        w_rows: &[f32],
        rows: usize,
        k: usize,
        out: SendPtr,
        n: usize,
        j0: usize,
    ) {
        let mut j = 0;
        while j < rows {
            let nj = (rows - j).min(4);
            let mut i = 0;
            while i < m {
                let mi = (m - i).min(4);
                // SAFETY: i + mi ≤ m and j + nj ≤ rows bound every access.
                unsafe {
                    match (mi, nj) {
                        (4, 4) => tile::<4, 4>(a, i, w_rows, j, k, out, n, j0),
                        _ => small_tile(a, i, mi, w_rows, j, nj, k, out, n, j0),
                    }
                }
                i += mi;
            }
            j += nj;
        }
    }

    /// The mask of the first `r` lanes of a 16-lane vector.
    #[inline(always)]
    fn tail_mask(r: usize) -> __mmask16 {
        ((1u32 << r) - 1) as __mmask16
    }

    /// An `MI × NJ` tile: rows `i..i+MI` of `a` against rows `j..j+NJ` of `w_rows`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const MI: usize, const NJ: usize>(
        a: &[f32],
        i: usize,
        w_rows: &[f32],
        j: usize,
        k: usize,
        out: SendPtr,
        n: usize,
        j0: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); NJ]; MI];
        let (ap, wp) = (a.as_ptr(), w_rows.as_ptr());
        let full = k / 16 * 16;
        let mut p = 0;
        // SAFETY (all loads): rows i..i+MI of a and j..j+NJ of w_rows exist,
        // and p + 16 ≤ k in the loop, the tail mask covers p..k after it.
        while p < full {
            let mut wv = [_mm512_setzero_ps(); NJ];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = unsafe { _mm512_loadu_ps(wp.add((j + c) * k + p)) };
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av = unsafe { _mm512_loadu_ps(ap.add((i + r) * k + p)) };
                for (c, s) in row.iter_mut().enumerate() {
                    *s = _mm512_fmadd_ps(av, wv[c], *s);
                }
            }
            p += 16;
        }
        if p < k {
            let mask = tail_mask(k - p);
            let mut wv = [_mm512_setzero_ps(); NJ];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = unsafe { _mm512_maskz_loadu_ps(mask, wp.add((j + c) * k + p)) };
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av = unsafe { _mm512_maskz_loadu_ps(mask, ap.add((i + r) * k + p)) };
                for (c, s) in row.iter_mut().enumerate() {
                    *s = _mm512_fmadd_ps(av, wv[c], *s);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, s) in row.iter().enumerate() {
                // SAFETY: (i + r, j0 + j + c) is inside [m, n]; no other task
                // writes column j0 + j + c.
                unsafe { *out.0.add((i + r) * n + j0 + j + c) = _mm512_reduce_add_ps(*s) };
            }
        }
    }

    /// Edge tiles (fewer than four rows of `a` or of `w`), one output at a time.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn small_tile(
        a: &[f32],
        i: usize,
        mi: usize,
        w_rows: &[f32],
        j: usize,
        nj: usize,
        k: usize,
        out: SendPtr,
        n: usize,
        j0: usize,
    ) {
        for r in i..i + mi {
            for c in j..j + nj {
                // SAFETY: as in `tile`, for one row of each.
                unsafe { tile::<1, 1>(a, r, w_rows, c, k, out, n, j0) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn reference(a: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| a[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum();
            }
        }
        out
    }

    #[test]
    fn rows_times_transposed_matches_the_definition_on_ragged_shapes() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            assert!(rows_times_transposed(&[1.0], 1, &[1.0], 1, 1).is_none());
            return;
        }
        let mut rng = Rng::new(3);
        // Tiles full and partial in every direction, k below, at and past 16,
        // and several rayon tasks (n > 256).
        for (m, n, k) in [
            (1, 1, 1),
            (3, 5, 7),
            (4, 4, 16),
            (5, 9, 33),
            (32, 600, 64),
            (7, 1030, 512),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.normal() as f32).collect();
            let got = rows_times_transposed(&a, m, &w, n, k).unwrap();
            let want = reference(&a, m, &w, n, k);
            for (x, y) in got.iter().zip(&want) {
                let tol = 1e-5 * (k as f64).sqrt() * (1.0 + y.abs());
                assert!((*x as f64 - y).abs() < tol, "[{m}, {n}, {k}]: {x} vs {y}");
            }
        }
    }
}
