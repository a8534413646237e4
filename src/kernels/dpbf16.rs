//! bf16 matrix products on AVX512-BF16 dot products, with f32 accumulation:
//! the packed-weight kernel for CPUs that have AVX512-BF16 but no AMX tiles
//! (AMD Zen 4 and later, Intel Cooper Lake).
//!
//! Why: without it, bf16-mixed precision on such a CPU rounds the operands
//! and multiplies them in f32 — f32 speed, while PyTorch's bf16 autocast runs
//! oneDNN's bf16 kernels. One `vdpbf16ps` multiplies 16 pairs of bf16 values
//! and adds each pair's two products to an f32 lane: twice the multiply-adds
//! of an f32 FMA of the same width.
//!
//! The right-hand matrix is [`PackedB`]'s AMX tile order, which is already
//! what the instruction reads: one 64-byte row of a block holds, for 16
//! columns, the pair `B[2p][c], B[2p+1][c]` of one depth pair `p`. The
//! left-hand rows are bf16 (`a16`, rows of `k_pad` elements, as for AMX); a
//! pair `A[i][2p], A[i][2p+1]` is one 32-bit word, broadcast to all 16 lanes.
//! A micro-tile of [`ROWS`] rows × 32 columns keeps 16 accumulators in
//! registers over the whole depth.

use super::common::SendPtr;
use super::packed::PackedB;

/// Rows of `A` per micro-tile.
const ROWS: usize = 8;
/// Columns of the result per micro-tile: two groups of 16 (one register each).
const COLS: usize = 32;
/// Columns per group: f32 lanes of a 512-bit register.
const LANES: usize = 16;

/// Whether this CPU runs AVX512-BF16 (and AVX512F).
pub fn detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[rows, cols] = A[rows]·B[:, cols]` for `rows` starting at a multiple
/// of [`ROWS`] and `cols` at a multiple of 32 (ending at or before `b`'s
/// padded width), written into the row-major `m × b.n()` result (the part
/// inside it).
///
/// # Safety
/// [`detected`] holds; `a16` holds every row the micro-tiles read (`rows`
/// rounded up to [`ROWS`]) at stride `b.k_pad`; no other thread writes these
/// elements of `out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn rectangle(
    a16: &[u16],
    b: &PackedB,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    out: &SendPtr,
) {
    use std::arch::x86_64::*;
    let (n, k_pad) = (b.n(), b.k_pad());
    let pairs = k_pad / 2;
    assert!(
        rows.end.next_multiple_of(ROWS) * k_pad <= a16.len(),
        "dpbf16: A rows"
    );
    let mut tile = [0f32; ROWS * COLS];
    for col0 in cols.step_by(COLS) {
        let group = col0 / LANES;
        for row0 in rows.clone().step_by(ROWS) {
            let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
            for p in 0..pairs {
                // SAFETY: p < k_pad/2 and both groups lie inside the padded width.
                let (b0, b1) = unsafe {
                    let at = |g: usize| b.pair_row(g, p).as_ptr() as *const __m512i;
                    (
                        as_bf16_pairs(_mm512_loadu_si512(at(group))),
                        as_bf16_pairs(_mm512_loadu_si512(at(group + 1))),
                    )
                };
                for (r, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: row row0 + r < a16.len() / k_pad (asserted above:
                    // row0 + r < rows.end rounded up to ROWS).
                    let word = unsafe {
                        (a16.as_ptr().add((row0 + r) * k_pad + 2 * p) as *const i32)
                            .read_unaligned()
                    };
                    let a = as_bf16_pairs(_mm512_set1_epi32(word));
                    acc[0] = _mm512_dpbf16_ps(acc[0], a, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], a, b1);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                // SAFETY: tile has ROWS × COLS elements.
                unsafe {
                    _mm512_storeu_ps(tile.as_mut_ptr().add(r * COLS), acc[0]);
                    _mm512_storeu_ps(tile.as_mut_ptr().add(r * COLS + LANES), acc[1]);
                }
            }
            let valid = [
                ROWS.min(rows.end.saturating_sub(row0)),
                COLS.min(n.saturating_sub(col0)),
            ];
            // SAFETY: rows row0.. below m and columns col0.. below n of the
            // m × n result; this task's own rectangle.
            unsafe { out.write_block(&tile, COLS, [row0, col0], valid, n) };
        }
    }
}

/// The same 512 bits read as 32 bf16 values (16 pairs).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn as_bf16_pairs(x: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m512bh {
    // SAFETY: both are plain 64-byte vectors; every bit pattern is a valid bf16 vector.
    unsafe { std::mem::transmute::<std::arch::x86_64::__m512i, std::arch::x86_64::__m512bh>(x) }
}

/// Not x86-64: never called ([`detected`] is false).
#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn rectangle(
    _a16: &[u16],
    _b: &PackedB,
    _rows: std::ops::Range<usize>,
    _cols: std::ops::Range<usize>,
    _out: &SendPtr,
) {
    unreachable!("AVX512-BF16 is x86-64 only")
}
