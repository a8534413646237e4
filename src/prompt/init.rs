//! Initialisations: prompts from the vocabulary or text, the SVD decomposition
//! of EPT, DePT's Kaiming-uniform A, and PyTorch's `nn.Linear` default.
//!
//! Everything here works on plain `Vec<f32>` row-major matrices; the caller
//! turns them into tensors. Randomness comes from the seeded [`Rng`].

use crate::error::{Error, Result};
use crate::rng::Rng;

/// A row-major f32 matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// Lester et al.'s `from_sample_of_embeddings`: rows of the frozen embedding
/// for ids drawn uniformly without replacement from `[0, min(5000, vocab))`
/// (with replacement only when more rows than ids are asked for).
pub fn sample_vocab_ids(n: usize, vocab: usize, rng: &mut Rng) -> Vec<usize> {
    let pool = vocab.min(5000);
    if n <= pool {
        rng.sample_distinct(pool, n)
    } else {
        (0..n).map(|_| rng.below(pool as u64) as usize).collect()
    }
}

/// Ids for a prompt initialised from text: the text's ids repeated to fill `n`, truncated.
pub fn text_ids(text_ids: &[u32], n: usize) -> Result<Vec<usize>> {
    if text_ids.is_empty() {
        return Err(Error::invalid("prompt init text tokenizes to nothing"));
    }
    Ok(text_ids
        .iter()
        .cycle()
        .take(n)
        .map(|&i| i as usize)
        .collect())
}

/// N(0, 1) entries.
pub fn random_normal(rows: usize, cols: usize, rng: &mut Rng) -> Matrix {
    Matrix {
        rows,
        cols,
        data: (0..rows * cols).map(|_| rng.normal() as f32).collect(),
    }
}

/// Uniform in `[-bound, bound)`.
pub fn uniform(rows: usize, cols: usize, bound: f64, rng: &mut Rng) -> Matrix {
    Matrix {
        rows,
        cols,
        data: (0..rows * cols)
            .map(|_| rng.uniform(-bound, bound) as f32)
            .collect(),
    }
}

/// `nn.init.kaiming_uniform_(w, a=√5)` on a `[rows, cols]` tensor: fan-in is
/// `cols`, bound `1/√fan_in` (DePT's A, and `nn.Linear`'s weights).
pub fn kaiming_uniform_sqrt5(rows: usize, cols: usize, rng: &mut Rng) -> Matrix {
    uniform(rows, cols, 1.0 / (cols as f64).sqrt(), rng)
}

/// PyTorch's default `nn.Linear(d_in, d_out)` init: weight `[d_out, d_in]` and
/// bias `[1, d_out]`, both uniform in `±1/√d_in`.
pub fn linear_default(d_in: usize, d_out: usize, rng: &mut Rng) -> (Matrix, Matrix) {
    let w = kaiming_uniform_sqrt5(d_out, d_in, rng);
    let b = uniform(1, d_out, 1.0 / (d_in as f64).sqrt(), rng);
    (w, b)
}

/// How a long prompt of l rows is aligned to the m rows of A·B (METHOD.md §3 A).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Align {
    /// Rows past l are zero: A·B is a rank-r approximation of P, zero past row l.
    ZeroPad,
    /// P repeated to fill m rows.
    Tile,
}

/// How U S Vᵀ is split into A and B (METHOD.md §3 B).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// `A = U_r S_r^½`, `B = S_r^½ V_rᵀ`.
    Balanced,
    /// `A = U_r`, `B = S_r V_rᵀ`.
    Left,
}

/// EPT's decomposition: align P (l×d) to m rows, then a rank-r truncated SVD
/// gives A (m×r) and B (r×d) with A·B the best rank-r approximation.
pub fn svd_decompose(
    p: &Matrix,
    m: usize,
    r: usize,
    align: Align,
    split: Split,
) -> Result<(Matrix, Matrix)> {
    let d = p.cols;
    if r > m.min(d) {
        return Err(Error::invalid(format!(
            "rank r = {r} exceeds min(m, d) = {}",
            m.min(d)
        )));
    }
    let aligned = faer::Mat::<f64>::from_fn(m, d, |i, j| {
        let src = match align {
            Align::ZeroPad if i >= p.rows => return 0.0,
            Align::ZeroPad => i,
            Align::Tile => i % p.rows.max(1),
        };
        if p.rows == 0 {
            0.0
        } else {
            p.data[src * d + j] as f64
        }
    });
    let svd = aligned
        .thin_svd()
        .map_err(|e| Error::Numeric(format!("SVD of the aligned prompt failed: {e:?}")))?;
    let (u, s, v) = (svd.U(), svd.S().column_vector(), svd.V());
    let mut a = Matrix::zeros(m, r);
    let mut b = Matrix::zeros(r, d);
    for k in 0..r {
        let sk = s[k];
        let (fa, fb) = match split {
            Split::Balanced => (sk.sqrt(), sk.sqrt()),
            Split::Left => (1.0, sk),
        };
        for i in 0..m {
            a.data[i * r + k] = (u[(i, k)] * fa) as f32;
        }
        for j in 0..d {
            b.data[k * d + j] = (v[(j, k)] * fb) as f32;
        }
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matmul(a: &Matrix, b: &Matrix) -> Matrix {
        let mut out = Matrix::zeros(a.rows, b.cols);
        for i in 0..a.rows {
            for k in 0..a.cols {
                for j in 0..b.cols {
                    out.data[i * b.cols + j] += a.data[i * a.cols + k] * b.data[k * b.cols + j];
                }
            }
        }
        out
    }

    #[test]
    fn full_rank_svd_reconstructs_the_padded_prompt() {
        let mut rng = Rng::new(3);
        let p = random_normal(5, 8, &mut rng);
        let (a, b) = svd_decompose(&p, 7, 5, Align::ZeroPad, Split::Balanced).unwrap();
        let ab = matmul(&a, &b);
        for i in 0..7 {
            for j in 0..8 {
                let want = if i < 5 { p.data[i * 8 + j] } else { 0.0 };
                assert!((ab.data[i * 8 + j] - want).abs() < 1e-4, "({i},{j})");
            }
        }
        // Balanced: A's columns and B's rows carry the same norm.
        for k in 0..5 {
            let na: f32 = (0..7).map(|i| a.data[i * 5 + k].powi(2)).sum();
            let nb: f32 = (0..8).map(|j| b.data[k * 8 + j].powi(2)).sum();
            assert!((na - nb).abs() < 1e-3 * na.max(1.0));
        }
    }

    #[test]
    fn vocab_sampling_has_no_repeats() {
        let mut rng = Rng::new(1);
        let ids = sample_vocab_ids(100, 32128, &mut rng);
        let mut s = ids.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 100);
        assert!(ids.iter().all(|&i| i < 5000));
    }
}
