//! Bit-exact reimplementation of `torch.randperm(n, generator=torch.Generator().manual_seed(seed))`
//! on the CPU.
//!
//! DePT (and so EPT's Table 4) carves its validation and test sets with this exact call, so the
//! split of every data set depends on reproducing it bit for bit. PyTorch's CPU kernel is a
//! Fisher–Yates pass (`i` from 0 to n−2, swap `i` with `i + (r mod (n−i))`, `r` the next 32-bit
//! output of a Mersenne Twister seeded the standard way). PyTorch switches to a different
//! algorithm only for `n ≥ u32::MAX / 20` (about 214 million), far beyond any data set here; we
//! refuse such sizes instead of silently diverging. Verified against torch by
//! `tests/fixtures/randperm.json` (written by `scripts/make_data_fixtures.py`).

use crate::error::{Error, Result};

/// The 32-bit Mersenne Twister (MT19937) exactly as PyTorch's `CPUGeneratorImpl` runs it.
#[derive(Clone)]
pub struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    const N: usize = 624;
    const M: usize = 397;

    /// Seeds the generator the standard way (`init_genrand`); like PyTorch's `manual_seed`, only
    /// the low 32 bits of the seed are used.
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed as u32;
        for i in 1..Self::N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 {
            state,
            index: Self::N,
        }
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..Self::N {
            let y = (self.state[i] & UPPER) | (self.state[(i + 1) % Self::N] & LOWER);
            let mut v = self.state[(i + Self::M) % Self::N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= MATRIX_A;
            }
            self.state[i] = v;
        }
        self.index = 0;
    }

    /// The next tempered 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= Self::N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }
}

/// Largest `n` for which PyTorch uses the Fisher–Yates pass reproduced here (its kernel switches
/// algorithm at `n >= u32::MAX / 20`).
pub const MAX_N: usize = (u32::MAX / 20) as usize - 1;

/// `torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()`.
///
/// Errors (rather than returning a permutation torch would not produce) when `n > MAX_N`.
pub fn randperm(n: usize, seed: u64) -> Result<Vec<usize>> {
    if n > MAX_N {
        return Err(Error::invalid(format!(
            "randperm: n = {n} is above {MAX_N}, where PyTorch switches to another algorithm"
        )));
    }
    let mut perm: Vec<usize> = (0..n).collect();
    let mut rng = Mt19937::new(seed);
    for i in 0..n.saturating_sub(1) {
        let z = rng.next_u32() as usize % (n - i);
        perm.swap(i, i + z);
    }
    Ok(perm)
}

/// Order-sensitive checksum used by the fixture: `Σ (i+1)·perm[i] mod 2^61`.
pub fn checksum(perm: &[usize]) -> u64 {
    const MOD: u128 = 1 << 61;
    let mut acc: u128 = 0;
    for (i, &p) in perm.iter().enumerate() {
        acc = (acc + (i as u128 + 1) * p as u128) % MOD;
    }
    acc as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference value of the C++ standard: the 10000th output of `std::mt19937` seeded with
    /// the default seed 5489 is 4123659995.
    #[test]
    fn mt19937_matches_std() {
        let mut rng = Mt19937::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = rng.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn small_cases() {
        assert!(randperm(0, 42).unwrap().is_empty());
        assert_eq!(randperm(1, 42).unwrap(), vec![0]);
        let p = randperm(1000, 7).unwrap();
        let mut s = p.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn too_large_is_an_error() {
        assert!(randperm(MAX_N + 1, 42).is_err());
    }
}
