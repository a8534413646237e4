//! bf16 matrix products on packed frozen weights, with f32 accumulation: on
//! Intel AMX tiles, else on AVX512-BF16 dot products ([`super::dpbf16`]).
//!
//! Why: a frozen weight never changes, so it can be converted to bf16 and laid
//! out for the hardware once, at load. On CPUs with AMX (Sapphire Rapids and
//! later) one `tdpbf16ps` instruction multiplies a 16×32 bf16 tile by a 32×16
//! one into 16×16 f32 accumulators: many times the f32 throughput of AVX-512
//! FMAs. CPUs with AVX512-BF16 but no AMX (AMD Zen 4, Intel Cooper Lake) read
//! the same packed weight with `vdpbf16ps`, twice the multiply-adds of an f32
//! FMA. The activations are rounded to bf16 as they enter a product and the
//! sums stay in f32 — what PyTorch's bf16 autocast does for a linear layer.
//!
//! [`PackedB`] ([`super::packed`]) holds the right-hand matrix of `A·B` in
//! the tile layout (pairs of rows interleaved, the "VNNI" layout both
//! instructions read); [`matmul`] multiplies a row-major f32 `A` by it. The AMX instructions are
//! written as inline assembly (stable Rust has no AMX intrinsics) and used
//! only after [`kernel`] has checked the CPU and asked Linux for permission
//! to use the tile registers.

use std::arch::asm;
use std::mem::MaybeUninit;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::common::SendPtr;
use super::dpbf16;
use super::packed::{BLOCK, TILE_K, TILE_ROWS};
pub use super::packed::{PackedB, PackedLinear, round_bf16, to_bf16};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// The hardware kernel that multiplies by a [`PackedB`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Intel AMX tiles (`tdpbf16ps`).
    Amx,
    /// AVX-512 dot products of bf16 pairs (`vdpbf16ps`).
    Avx512Bf16,
}

/// Whether a packed kernel is used: the CPU has one ([`kernel`]) and they
/// are not turned off ([`set_enabled`]).
pub fn available() -> bool {
    ENABLED.load(Ordering::Relaxed) && detected()
}

/// Turns the packed kernels off (or back on) for the whole process; off, the
/// bf16 products take the portable path with the same rounding. For
/// benchmarks and for checking one path against the other.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether this CPU has a packed kernel ([`kernel`]).
pub fn detected() -> bool {
    kernel().is_some()
}

/// The packed kernel this process uses, chosen once: AMX when the CPU and
/// kernel allow it, else AVX512-BF16, else none (the portable path).
/// `EPT_BF16_KERNEL=amx|avx512bf16|portable` asks for one (a kernel this CPU
/// lacks gives none; `auto` or unset, the best); `EPT_NO_AMX=1`, the older
/// spelling, means `portable`.
pub fn kernel() -> Option<Kernel> {
    static KERNEL: OnceLock<Option<Kernel>> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        if std::env::var_os("EPT_NO_AMX").is_some_and(|v| v != "0") {
            return None;
        }
        let asked = std::env::var("EPT_BF16_KERNEL").unwrap_or_default();
        match asked.as_str() {
            "portable" => None,
            "amx" => amx_detected().then_some(Kernel::Amx),
            "avx512bf16" => dpbf16::detected().then_some(Kernel::Avx512Bf16),
            other => {
                if !other.is_empty() && other != "auto" {
                    log::warn!(
                        "EPT_BF16_KERNEL={other}: expected amx, avx512bf16, portable or auto; \
                         using the best this CPU has"
                    );
                }
                if amx_detected() {
                    Some(Kernel::Amx)
                } else {
                    dpbf16::detected().then_some(Kernel::Avx512Bf16)
                }
            }
        }
    })
}

/// The path bf16-mixed products take in this process, for reports:
/// `amx`, `avx512bf16` or `portable`.
pub fn path_name() -> &'static str {
    match kernel().filter(|_| available()) {
        Some(Kernel::Amx) => "amx",
        Some(Kernel::Avx512Bf16) => "avx512bf16",
        None => "portable",
    }
}

/// Checks CPUID (leaf 7: AMX-TILE and AMX-BF16) and asks Linux for the tile
/// data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_detected() -> bool {
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    let amx_bf16 = leaf7.edx & (1 << 22) != 0;
    let amx_tile = leaf7.edx & (1 << 24) != 0;
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments; it grants the
    // permission to the whole process or fails.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    rc == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn amx_detected() -> bool {
    false
}

/// `A·B` for a row-major f32 `A` (`m × k`): the row-major `m × n` result.
///
/// `A` is rounded to bf16; products are summed in f32. Panics if the shapes
/// disagree or the CPU has no packed kernel ([`kernel`]; callers check [`available`]).
pub fn matmul(a: &[f32], m: usize, b: &PackedB) -> Vec<f32> {
    let kernel = kernel().expect("no packed bf16 kernel on this CPU");
    // SAFETY: `kernel` is what this CPU has.
    unsafe { matmul_on(kernel, a, m, b) }
}

/// [`matmul`] on a given kernel.
///
/// # Safety
/// The CPU has `kernel` (for AMX, with the tile permission granted).
unsafe fn matmul_on(kernel: Kernel, a: &[f32], m: usize, b: &PackedB) -> Vec<f32> {
    let (k, n) = (b.k, b.n);
    assert_eq!(a.len(), m * k, "A is not m × k");
    // Every element is written once below: no zero fill first.
    let mut out = Vec::<f32>::with_capacity(m * n);
    let m_pad = m.div_ceil(BLOCK) * BLOCK;
    // A in bf16, rows padded with zeros to k_pad columns and to a multiple
    // of 32 rows; each element written once, in parallel (no serial zero
    // fill of the whole buffer first).
    let a16_len = m_pad * b.k_pad;
    let mut a16 = Vec::<u16>::with_capacity(a16_len);
    a16.spare_capacity_mut()[..a16_len]
        .par_chunks_mut(b.k_pad)
        .enumerate()
        .for_each(|(i, dst)| round_row(a.get(i * k..(i + 1) * k).unwrap_or(&[]), dst));
    // SAFETY: every row of the m_pad × k_pad buffer was written just above.
    unsafe { a16.set_len(a16_len) };
    // Tasks are (rows, columns) rectangles of the result, small enough that
    // their share of A and of B (256 × k bf16 each) stays in the core's L2
    // while every 32 × 32 block of the rectangle is computed.
    let row_chunks = m.div_ceil(ROW_CHUNK);
    let col_chunks = b.n_pad.div_ceil(COL_CHUNK);
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..row_chunks * col_chunks)
        .into_par_iter()
        .for_each(|task| {
            let (rc, cc) = (task / col_chunks, task % col_chunks);
            let rows = rc * ROW_CHUNK..(m.min((rc + 1) * ROW_CHUNK));
            let cols = cc * COL_CHUNK..(b.n_pad.min((cc + 1) * COL_CHUNK));
            // SAFETY: the CPU has `kernel`; every load reads inside `a16`
            // (rows padded to 32, stride k_pad) or a whole block of `b.data`
            // (ROW_CHUNK and COL_CHUNK are multiples of both kernels' tiles);
            // the tasks write disjoint rectangles of `out`, each element once.
            unsafe {
                match kernel {
                    Kernel::Amx => rectangle(&a16, b, rows, cols, &out_ptr),
                    Kernel::Avx512Bf16 => dpbf16::rectangle(&a16, b, rows, cols, &out_ptr),
                }
            }
        });
    // SAFETY: the tasks above wrote all m × n elements.
    unsafe { out.set_len(m * n) };
    out
}

/// Rows of `A` per task.
const ROW_CHUNK: usize = 256;
/// Columns of `B` per task.
const COL_CHUNK: usize = 256;

/// One row of `A` to bf16, zeros after it to the end of `dst`: [`to_bf16`]
/// written without branches, so that the compiler vectorises it.
fn round_row(src: &[f32], dst: &mut [MaybeUninit<u16>]) {
    for (d, s) in dst.iter_mut().zip(src) {
        let bits = s.to_bits();
        let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
        d.write(if s.is_nan() { 0x7fc0 } else { rounded });
    }
    for d in dst.iter_mut().skip(src.len()) {
        d.write(0);
    }
}

#[repr(C, align(64))]
struct TileConfig([u8; 64]);

/// Every tile 16 rows × 64 bytes: tmm0–3 accumulators, tmm4–5 A, tmm6–7 B.
fn tile_config() -> TileConfig {
    let mut cfg = [0u8; 64];
    cfg[0] = 1; // palette 1
    for t in 0..8 {
        cfg[16 + 2 * t] = 64; // bytes per row
        cfg[48 + t] = TILE_ROWS as u8;
    }
    TileConfig(cfg)
}

/// `out[rows, cols] = A[rows]·B[:, cols]`, 32 × 32 at a time: 2 × 2
/// accumulator tiles over the whole depth, then stored and copied out (the
/// part inside `m × n`).
#[inline(never)]
unsafe fn rectangle(
    a16: &[u16],
    b: &PackedB,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    out: &SendPtr,
) {
    let n = b.n;
    let k_blocks = b.k_pad / TILE_K;
    let a_stride = b.k_pad * 2;
    let b_stride = TILE_K * 2;
    let mut c = [0f32; BLOCK * BLOCK];
    let cfg = tile_config();
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack));
        for row0 in rows.clone().step_by(BLOCK) {
            let a_block = a16.as_ptr().add(row0 * b.k_pad);
            let valid_rows = BLOCK.min(rows.end - row0);
            for col0 in cols.clone().step_by(BLOCK) {
                let nb = col0 / TILE_ROWS;
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
                for kb in 0..k_blocks {
                    let a0 = a_block.add(kb * TILE_K);
                    let a1 = a0.add(TILE_ROWS * b.k_pad);
                    let b0 = b.data.as_ptr().add(b.block(nb, kb));
                    let b1 = b.data.as_ptr().add(b.block(nb + 1, kb));
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}*1]",
                        "tileloadd tmm5, [{a1} + {sa}*1]",
                        "tileloadd tmm6, [{b0} + {sb}*1]",
                        "tileloadd tmm7, [{b1} + {sb}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a0,
                        a1 = in(reg) a1,
                        b0 = in(reg) b0,
                        b1 = in(reg) b1,
                        sa = in(reg) a_stride,
                        sb = in(reg) b_stride,
                        options(nostack, readonly)
                    );
                }
                let cp = c.as_mut_ptr();
                asm!(
                    "tilestored [{c0} + {s}*1], tmm0",
                    "tilestored [{c1} + {s}*1], tmm1",
                    "tilestored [{c2} + {s}*1], tmm2",
                    "tilestored [{c3} + {s}*1], tmm3",
                    c0 = in(reg) cp,
                    c1 = in(reg) cp.add(TILE_ROWS),
                    c2 = in(reg) cp.add(TILE_ROWS * BLOCK),
                    c3 = in(reg) cp.add(TILE_ROWS * BLOCK + TILE_ROWS),
                    s = in(reg) BLOCK * 4,
                    options(nostack)
                );
                let valid_cols = BLOCK.min(n.saturating_sub(col0));
                out.write_block(&c, BLOCK, [row0, col0], [valid_rows, valid_cols], n);
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use half::bf16;

    /// [`matmul`]'s arithmetic without AMX: `A` rounded to bf16, products of the
    /// stored bf16 `B` summed in f32 (in another order). The reference of the tests.
    fn matmul_reference(a: &[f32], m: usize, b: &PackedB, out: &mut [f32]) {
        let (k, n) = (b.k, b.n);
        let bt: Vec<f32> = (0..n * k).map(|idx| b.get(idx % k, idx / k)).collect();
        out.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            let a_row: Vec<f32> = a[i * k..(i + 1) * k]
                .iter()
                .map(|&v| bf16::from_bits(to_bf16(v)).to_f32())
                .collect();
            for (j, o) in row.iter_mut().enumerate() {
                *o = a_row
                    .iter()
                    .zip(&bt[j * k..(j + 1) * k])
                    .map(|(x, y)| x * y)
                    .sum();
            }
        });
        debug_assert_eq!(out.len(), m * n);
    }

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| rng.normal() as f32).collect()
    }

    /// [`round_row`] into a fresh buffer of `len` elements.
    fn rounded(values: &[f32], len: usize) -> Vec<u16> {
        let mut out = Vec::with_capacity(len);
        round_row(values, &mut out.spare_capacity_mut()[..len]);
        // SAFETY: round_row wrote all `len` elements.
        unsafe { out.set_len(len) };
        out
    }

    #[test]
    fn the_vectorised_rounding_is_half_s() {
        let mut values = random(4096, 4);
        values.iter_mut().step_by(3).for_each(|v| *v *= 1e30);
        values.extend([
            0.0,
            -0.0,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE / 3.0,
            1.0 + f32::EPSILON * 64.0, // a tie: rounds to even
            1.0 + f32::EPSILON * 192.0,
        ]);
        // Three more places than values: the padding must be zeros.
        let got = rounded(&values, values.len() + 3);
        for (v, g) in values.iter().zip(&got) {
            assert_eq!(*g, to_bf16(*v), "{v:e}");
        }
        assert_eq!(got[values.len()..], [0, 0, 0]);
        assert!(bf16::from_bits(rounded(&[f32::NAN], 1)[0]).is_nan());
    }

    /// The packed kernels this CPU has, each tested on its own.
    fn kernels_here() -> Vec<Kernel> {
        let mut kernels = Vec::new();
        if amx_detected() {
            kernels.push(Kernel::Amx);
        }
        if dpbf16::detected() {
            kernels.push(Kernel::Avx512Bf16);
        }
        if kernels.is_empty() {
            eprintln!(
                "skipped: this CPU has neither AMX nor AVX512-BF16 (the portable path is tested elsewhere)"
            );
        }
        kernels
    }

    #[test]
    fn packed_kernels_match_the_bf16_reference() {
        // Ragged shapes: every padding path (m, k, n not multiples of 32),
        // and more than one task's rectangle (m, n > 256).
        for kernel in kernels_here() {
            for &(m, k, n) in &[
                (1, 1, 1),
                (33, 70, 45),
                (64, 512, 96),
                (100, 200, 300),
                (300, 64, 40),
                (521, 40, 600),
            ] {
                let a = random(m * k, 2);
                let w = random(k * n, 3);
                let b = PackedB::from_fn(k, n, |i, j| w[i * n + j]);
                // SAFETY: kernels_here lists only what this CPU has.
                let got = unsafe { matmul_on(kernel, &a, m, &b) };
                let mut want = vec![0f32; m * n];
                matmul_reference(&a, m, &b, &mut want);
                for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                    // Same products, summed in another order.
                    let tol = 1e-5 * (k as f32).sqrt() * (1.0 + w.abs());
                    assert!(
                        (g - w).abs() <= tol,
                        "{kernel:?} {m}×{k}×{n} [{idx}]: {g} vs {w}"
                    );
                }
            }
        }
    }
}
