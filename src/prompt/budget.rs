//! The parameter budget `l·d = s·d + (m+d)·r` (METHOD.md §1): a long prompt of
//! l rows costs as much as a short prompt of s rows plus A (m×r) and B (r×d).

use crate::error::{Error, Result};

/// A solved budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Budget {
    pub l: usize,
    pub s: usize,
    pub r: usize,
    pub m: usize,
    pub d: usize,
}

impl Budget {
    /// Solves for the one of `l`, `s`, `r` that is `None` (r rounded down, l rounded up).
    pub fn solve(
        l: Option<i64>,
        s: Option<i64>,
        r: Option<i64>,
        m: usize,
        d: usize,
    ) -> Result<Self> {
        if d == 0 || m == 0 {
            return Err(Error::invalid("budget: d and m must be positive"));
        }
        for (name, v) in [("l", l), ("s", s), ("r", r)] {
            if let Some(v) = v
                && v < 0
            {
                return Err(Error::invalid(format!(
                    "budget: {name} = {v}: must be >= 0"
                )));
            }
        }
        let (d64, m64) = (d as i64, m as i64);
        let (l, s, r) = match (l, s, r) {
            (Some(l), Some(s), None) => {
                if s > l {
                    return Err(Error::invalid(format!(
                        "budget: s = {s} exceeds l = {l}: the short prompt must be shorter"
                    )));
                }
                (l, s, (l - s) * d64 / (m64 + d64))
            }
            (Some(l), None, Some(r)) => {
                let low_rank = (m64 + d64) * r;
                if low_rank > l * d64 {
                    return Err(Error::invalid(format!(
                        "budget: rank r = {r} costs {low_rank} parameters, more than l·d = {}: no short prompt fits",
                        l * d64
                    )));
                }
                (l, (l * d64 - low_rank) / d64, r)
            }
            (None, Some(s), Some(r)) => (s + ((m64 + d64) * r + d64 - 1) / d64, s, r),
            (Some(l), Some(s), Some(r)) => {
                if s > l {
                    return Err(Error::invalid(format!("budget: s = {s} exceeds l = {l}")));
                }
                if s * d64 + (m64 + d64) * r > l * d64 {
                    return Err(Error::invalid(format!(
                        "budget: s = {s}, r = {r} cost {} parameters, more than l·d = {}",
                        s * d64 + (m64 + d64) * r,
                        l * d64
                    )));
                }
                (l, s, r)
            }
            _ => return Err(Error::invalid("budget: give at least two of --l, --s, --r")),
        };
        Ok(Budget {
            l: l as usize,
            s: s as usize,
            r: r as usize,
            m,
            d,
        })
    }

    pub fn prompt_params(&self) -> usize {
        self.s * self.d
    }
    pub fn a_params(&self) -> usize {
        self.m * self.r
    }
    pub fn b_params(&self) -> usize {
        self.r * self.d
    }
    /// What the paper counts: P_s + A + B.
    pub fn core_params(&self) -> usize {
        self.prompt_params() + self.a_params() + self.b_params()
    }
    /// The long prompt's size, l·d.
    pub fn target_params(&self) -> usize {
        self.l * self.d
    }
}

/// Parameters of EPT's auxiliary networks (discarded after training):
/// N_e experts d→h→d with biases, and the gate d→N_e with bias.
pub fn auxiliary_params(d: usize, h: usize, num_experts: usize) -> (usize, usize) {
    let experts = num_experts * (d * h + h + h * d + d);
    let gate = d * num_experts + num_experts;
    (experts, gate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t5_base_budget_matches_the_paper() {
        let b = Budget::solve(Some(100), Some(60), None, 256, 768).unwrap();
        assert_eq!(b.r, 30);
        assert_eq!(
            (b.prompt_params(), b.a_params(), b.b_params()),
            (46_080, 7_680, 23_040)
        );
        assert_eq!(b.core_params(), 76_800);
        let b = Budget::solve(Some(100), Some(40), None, 256, 768).unwrap();
        assert_eq!(b.r, 45);
        let b = Budget::solve(Some(100), None, Some(30), 256, 768).unwrap();
        assert_eq!(b.s, 60);
        let b = Budget::solve(None, Some(60), Some(30), 256, 768).unwrap();
        assert_eq!(b.l, 100);
        assert_eq!(auxiliary_params(768, 256, 4), (4 * 394_240, 3_076));
    }

    #[test]
    fn impossible_budgets_are_errors() {
        assert!(Budget::solve(Some(10), Some(20), None, 256, 768).is_err());
        assert!(Budget::solve(Some(10), None, Some(-1), 256, 768).is_err());
        assert!(Budget::solve(Some(10), None, Some(100), 256, 768).is_err());
        assert!(Budget::solve(Some(10), None, None, 256, 768).is_err());
    }
}
