//! The bf16 layout of a frozen weight that the packed kernels read: [`PackedB`],
//! the right-hand matrix of `A·B` in AMX tile order (pairs of rows
//! interleaved, the "VNNI" layout that both `tdpbf16ps` on AMX tiles and
//! `vdpbf16ps` on AVX512-BF16 read), packed once at load; [`PackedLinear`],
//! a dense layer's weight packed for both directions of training; and the
//! rounding to bf16 they share. The products are in [`super::amx`] and
//! [`super::dpbf16`].

use half::bf16;
use rayon::prelude::*;

/// Rows of a tile, and f32 columns of an accumulator tile.
pub(super) const TILE_ROWS: usize = 16;
/// bf16 elements in one tile row (64 bytes): the `k` depth of one tile product.
pub(super) const TILE_K: usize = 32;
/// Rows and columns of the output block one task computes (2×2 accumulator tiles).
pub(super) const BLOCK: usize = 32;

/// Rounds to the nearest bf16 (ties to even), as PyTorch's `.to(torch.bfloat16)`.
pub fn to_bf16(x: f32) -> u16 {
    bf16::from_f32(x).to_bits()
}

/// `x` rounded to the nearest bf16, widened back to f32.
pub fn round_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// The right-hand matrix `B` (`k × n`) of `A·B`, in bf16, in AMX tile order.
///
/// Blocks of 32 (`k`) × 16 (`n`) are stored one after another, 16 columns at a
/// time over the whole depth; inside a block, row `r` holds the pairs
/// `B[2r][c], B[2r+1][c]` for the 16 columns `c`. `k` and `n` are padded with
/// zeros to multiples of 32.
#[derive(Clone)]
pub struct PackedB {
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) k_pad: usize,
    pub(super) n_pad: usize,
    pub(super) data: Vec<u16>,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedB({}×{}, bf16)", self.k, self.n)
    }
}

impl PackedB {
    /// Packs `B[i][j] = value(i, j)` for `i < k`, `j < n`, rounded to bf16.
    pub fn from_fn(k: usize, n: usize, value: impl Fn(usize, usize) -> f32 + Sync) -> Self {
        let (k_pad, n_pad) = (k.div_ceil(BLOCK) * BLOCK, n.div_ceil(BLOCK) * BLOCK);
        let k_blocks = k_pad / TILE_K;
        let block_len = TILE_ROWS * TILE_K;
        let mut data = vec![0u16; k_pad * n_pad];
        // One chunk per 16 columns: all its k blocks.
        data.par_chunks_mut(k_blocks * block_len)
            .enumerate()
            .for_each(|(nb, chunk)| {
                for (idx, slot) in chunk.iter_mut().enumerate() {
                    let (kb, within) = (idx / block_len, idx % block_len);
                    let (r, col) = (within / TILE_K, within % TILE_K);
                    let (i, j) = (kb * TILE_K + 2 * r + col % 2, nb * TILE_ROWS + col / 2);
                    if i < k && j < n {
                        *slot = to_bf16(value(i, j));
                    }
                }
            });
        PackedB {
            k,
            n,
            k_pad,
            n_pad,
            data,
        }
    }

    /// Packs bf16 values given as bits, `B[i][j] = bits(i, j)`: [`PackedB::from_fn`]
    /// for values already rounded, walking the tile order without a division
    /// per element (the 4-bit products pack a layer on every call).
    pub fn from_bf16_bits(k: usize, n: usize, bits: impl Fn(usize, usize) -> u16 + Sync) -> Self {
        let (k_pad, n_pad) = (k.div_ceil(BLOCK) * BLOCK, n.div_ceil(BLOCK) * BLOCK);
        let k_blocks = k_pad / TILE_K;
        let block_len = TILE_ROWS * TILE_K;
        let mut data = vec![0u16; k_pad * n_pad];
        data.par_chunks_mut(k_blocks * block_len)
            .enumerate()
            .for_each(|(nb, chunk)| {
                let cols = (n.saturating_sub(nb * TILE_ROWS)).min(TILE_ROWS);
                for (kb, block) in chunk.chunks_mut(block_len).enumerate() {
                    for r in 0..TILE_K / 2 {
                        let i = kb * TILE_K + 2 * r;
                        let row = &mut block[r * TILE_K..(r + 1) * TILE_K];
                        for c in 0..cols {
                            let j = nb * TILE_ROWS + c;
                            if i < k {
                                row[2 * c] = bits(i, j);
                            }
                            if i + 1 < k {
                                row[2 * c + 1] = bits(i + 1, j);
                            }
                        }
                    }
                }
            });
        PackedB {
            k,
            n,
            k_pad,
            n_pad,
            data,
        }
    }

    /// Columns of `B`: the width of the result.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Rows of `B` padded with zeros to a multiple of 32: the row stride of
    /// the bf16 `A` the kernels read.
    pub(super) fn k_pad(&self) -> usize {
        self.k_pad
    }

    /// The 32 bf16 values of depth pair `p` for the 16 columns of group `g`
    /// (`16·g..16·g + 16`): `B[2p][c], B[2p+1][c]` for each column `c`.
    pub(super) fn pair_row(&self, g: usize, p: usize) -> &[u16] {
        let start = self.block(g, 2 * p / TILE_K) + (p % (TILE_K / 2)) * TILE_K;
        &self.data[start..start + TILE_K]
    }

    /// `B[i][j]` as stored (the bf16 value, widened to f32).
    #[cfg(test)]
    pub(super) fn get(&self, i: usize, j: usize) -> f32 {
        let (kb, r, pair) = (i / TILE_K, (i % TILE_K) / 2, i % 2);
        let (nb, c) = (j / TILE_ROWS, j % TILE_ROWS);
        let block = (nb * (self.k_pad / TILE_K) + kb) * TILE_ROWS * TILE_K;
        bf16::from_bits(self.data[block + r * TILE_K + 2 * c + pair]).to_f32()
    }

    /// Offset of the block holding rows `kb·32..` and columns `nb·16..`.
    pub(super) fn block(&self, nb: usize, kb: usize) -> usize {
        (nb * (self.k_pad / TILE_K) + kb) * TILE_ROWS * TILE_K
    }
}

/// A frozen dense layer's weight packed for both directions of training:
/// `y = x·Wᵀ` forward and `dx = dy·W` backward (`W` as PyTorch stores it, `[out, in]`).
#[derive(Debug)]
pub struct PackedLinear {
    /// `Wᵀ` (`in × out`).
    pub forward: PackedB,
    /// `W` (`out × in`).
    pub backward: PackedB,
}

impl PackedLinear {
    /// Packs a weight held `[in, out]` (row-major `w_t`, the transpose of PyTorch's layout).
    pub fn from_transposed(w_t: &[f32], d_in: usize, d_out: usize) -> Self {
        assert_eq!(w_t.len(), d_in * d_out, "weight is not in × out");
        PackedLinear {
            forward: PackedB::from_fn(d_in, d_out, |i, j| w_t[i * d_out + j]),
            backward: PackedB::from_fn(d_out, d_in, |i, j| w_t[j * d_out + i]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn packing_bits_is_packing_values() {
        let (k, n) = (70, 37);
        let mut rng = Rng::new(2);
        let w: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
        let a = PackedB::from_fn(k, n, |i, j| w[i * n + j]);
        let b = PackedB::from_bf16_bits(k, n, |i, j| to_bf16(w[i * n + j]));
        assert_eq!(a.data, b.data);
    }

    #[test]
    fn packing_keeps_every_element_rounded_to_bf16() {
        let (k, n) = (37, 21);
        let mut rng = Rng::new(1);
        let w: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
        let b = PackedB::from_fn(k, n, |i, j| w[i * n + j]);
        for i in 0..k {
            for j in 0..n {
                let want = bf16::from_f32(w[i * n + j]).to_f32();
                assert_eq!(b.get(i, j), want, "B[{i}][{j}]");
            }
        }
    }
}
