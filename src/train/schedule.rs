//! Learning-rate schedules as multipliers of each group's base rate,
//! matching transformers' `get_*_schedule_with_warmup` lambdas.

/// The shape of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Linear warm-up, then linear decay to 0 at the last step (DePT's).
    Linear,
    /// Linear warm-up, then constant.
    Constant,
    /// Linear warm-up, then half a cosine down to 0.
    Cosine,
}

impl Schedule {
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "linear" => Ok(Schedule::Linear),
            "constant" => Ok(Schedule::Constant),
            "cosine" => Ok(Schedule::Cosine),
            other => Err(crate::Error::invalid(format!(
                "unknown schedule `{other}`: expected linear, constant or cosine"
            ))),
        }
    }

    /// Multiplier for the update at 0-based `step` of `total`.
    pub fn factor(self, step: u64, warmup: u64, total: u64) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let span = total.saturating_sub(warmup).max(1) as f64;
        let progress = (step - warmup) as f64 / span;
        match self {
            Schedule::Linear => ((total.saturating_sub(step)) as f64 / span).max(0.0),
            Schedule::Constant => 1.0,
            Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_warmup_then_decay() {
        let s = Schedule::Linear;
        assert_eq!(s.factor(0, 500, 30_000), 0.0);
        assert_eq!(s.factor(250, 500, 30_000), 0.5);
        assert_eq!(s.factor(500, 500, 30_000), 1.0);
        assert!((s.factor(15_250, 500, 30_000) - 0.5).abs() < 1e-12);
        assert_eq!(s.factor(30_000, 500, 30_000), 0.0);
        assert_eq!(Schedule::Constant.factor(10_000, 500, 30_000), 1.0);
        assert!((Schedule::Cosine.factor(15_250, 500, 30_000) - 0.5).abs() < 1e-12);
    }
}
