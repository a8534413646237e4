//! torch's and bitsandbytes' CPU arithmetic that the bytes of a 4-bit file
//! depend on, reproduced in their order and rounding: torch's f32 sum (the
//! double quantization's offset is a mean) and bitsandbytes' 8-bit
//! blockwise quantization of the scales.

/// `max` as CUDA's `fmaxf` and bitsandbytes' kernels: a NaN operand is ignored.
pub(super) fn max_nan(a: f32, b: f32) -> f32 {
    if b.is_nan() || a >= b { a } else { b }
}

/// Lanes of torch's `Vectorized<float>` in its CPU sum kernel.
const LANES: usize = 8;

/// torch's CPU sum of a contiguous f32 vector, in its order and rounding
/// (`aten/src/ATen/native/cpu/SumKernel.cpp`: `vectorized_inner_sum` over
/// 8-lane vectors, `row_sum` with 4 interleaved accumulators, each a
/// 4-level cascade of `multi_row_sum`; the tail elements first, then the
/// lanes). Why: `nested_offset` is `absmax.mean()`, and a last-bit
/// difference there changes the bytes bitsandbytes writes (checked on 300
/// random lengths against torch 2.15, all equal).
pub(super) fn torch_sum(a: &[f32]) -> f32 {
    let n = a.len();
    if n < LANES {
        return row_sum(n, [0f32; 1], |i| [a[i]])[0];
    }
    let vectors = n / LANES;
    let lanes = row_sum(vectors, [0f32; LANES], |i| {
        std::array::from_fn(|l| a[i * LANES + l])
    });
    let mut total = 0f32;
    for &x in &a[vectors * LANES..] {
        total += x;
    }
    for x in lanes {
        total += x;
    }
    total
}

/// torch's `row_sum`: `size` items in 4 interleaved accumulators, folded into the first.
fn row_sum<const L: usize>(
    size: usize,
    zero: [f32; L],
    item: impl Fn(usize) -> [f32; L],
) -> [f32; L] {
    const ILP: usize = 4;
    let add = |a: &mut [f32; L], b: [f32; L]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
    let rows = size / ILP;
    let mut partial = multi_row_sum::<L, ILP>(rows, zero, |i, k| item(i * ILP + k));
    for i in rows * ILP..size {
        add(&mut partial[0], item(i));
    }
    for k in 1..ILP {
        let p = partial[k];
        add(&mut partial[0], p);
    }
    partial[0]
}

/// torch's `multi_row_sum`: `N` column sums over `size` rows, each a
/// cascade of 4 levels whose lower level is flushed upwards every
/// `2^level_power` rows (the sum's accuracy without pairwise recursion).
fn multi_row_sum<const L: usize, const N: usize>(
    size: usize,
    zero: [f32; L],
    item: impl Fn(usize, usize) -> [f32; L],
) -> [[f32; L]; N] {
    const LEVELS: usize = 4;
    let add = |a: &mut [f32; L], b: [f32; L]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
    let ceil_log2 = if size <= 1 {
        0
    } else {
        usize::BITS - (size - 1).leading_zeros()
    } as usize;
    let level_power = (ceil_log2 / LEVELS).max(4);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[zero; N]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for (k, a) in acc[0].iter_mut().enumerate() {
                add(a, item(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (low, high) = acc.split_at_mut(j);
            for (lo, hi) in low[j - 1].iter_mut().zip(high[0].iter_mut()) {
                add(hi, *lo);
                *lo = zero;
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for (k, a) in acc[0].iter_mut().enumerate() {
            add(a, item(i, k));
        }
        i += 1;
    }
    let (first, rest) = acc.split_at_mut(1);
    for upper in rest.iter() {
        for (a, u) in first[0].iter_mut().zip(upper) {
            add(a, *u);
        }
    }
    acc[0]
}

/// bitsandbytes' CPU `quantize_blockwise` (8-bit): per block its max |x|, then
/// each `x / max` placed on a 65,536-point grid of [-1, 1] whose points map
/// to their nearest code (`build_quantize_lut`, `norm_to_lut_index`).
pub(super) fn quantize_blockwise_8bit(
    values: &[f32],
    code: &[f32; 256],
    blocksize: usize,
) -> (Vec<u8>, Vec<f32>) {
    const LUT: usize = 65536;
    let mids: Vec<f32> = (0..255).map(|i| 0.5 * (code[i] + code[i + 1])).collect();
    let mut lut = vec![0u8; LUT];
    let mut idx = 0usize;
    for (i, slot) in lut.iter_mut().enumerate() {
        let v = -1.0f32 + (2.0f32 * i as f32) / (LUT - 1) as f32;
        while idx < 255 && mids[idx] < v {
            idx += 1;
        }
        *slot = idx as u8;
    }
    let mut q = vec![0u8; values.len()];
    let mut scales = Vec::with_capacity(values.len().div_ceil(blocksize));
    for (block, out) in values.chunks(blocksize).zip(q.chunks_mut(blocksize)) {
        let m = block.iter().fold(0f32, |m, &v| max_nan(m, v.abs()));
        scales.push(m);
        if m == 0.0 {
            continue;
        }
        let inv = 1.0f32 / m;
        for (o, &v) in out.iter_mut().zip(block) {
            let x = (v * inv).clamp(-1.0, 1.0);
            // bitsandbytes' build fuses the last multiply and add (one fma,
            // one rounding) before truncating.
            let i = ((x + 1.0) * 0.5).mul_add((LUT - 1) as f32, 0.5) as usize;
            *o = lut[i.min(LUT - 1)];
        }
    }
    (q, scales)
}
