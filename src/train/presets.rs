//! The paper's per-task settings (DePT's released runs, METHOD.md §6) as presets.
//!
//! `--preset dept/rte` or `--preset ept/rte`: the task, method, both learning
//! rates, s and r, the step count and the batch size (32 in DePT's repository,
//! 16 in EPT's paper). Explicit flags override any of them.

use crate::error::{Error, Result};

/// One preset's values.
#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    pub method: &'static str,
    pub task: &'static str,
    pub lr_prompt: f64,
    pub lr_low_rank: f64,
    pub s: usize,
    pub r: usize,
    pub max_steps: u64,
    pub batch_size: usize,
    pub m: usize,
}

/// DePT's released settings: task, prompt lr, low-rank lr, s, r, steps.
const DEPT_SETTINGS: [(&str, f64, f64, usize, usize, u64); 13] = [
    ("cola", 0.3, 5e-4, 80, 15, 40_000),
    ("mrpc", 0.3, 5e-3, 60, 30, 10_000),
    ("rte", 0.4, 1e-4, 60, 30, 30_000),
    ("sst2", 0.3, 5e-4, 60, 30, 30_000),
    ("stsb", 0.3, 1e-4, 60, 30, 30_000),
    ("qnli", 0.4, 5e-3, 60, 30, 100_000),
    ("qqp", 0.4, 5e-3, 60, 30, 100_000),
    ("mnli", 0.3, 1e-4, 60, 30, 250_000),
    ("boolq", 0.3, 5e-3, 40, 45, 30_000),
    ("cb", 0.4, 1e-4, 60, 30, 30_000),
    ("multirc", 0.3, 5e-3, 60, 30, 30_000),
    ("wic", 0.3, 1e-3, 60, 30, 20_000),
    ("wsc", 0.3, 1e-4, 60, 30, 20_000),
];

/// Every preset name, `method/task`.
pub fn names() -> Vec<String> {
    let mut out = Vec::new();
    for method in ["dept", "ept"] {
        for (task, ..) in DEPT_SETTINGS {
            out.push(format!("{method}/{task}"));
        }
    }
    out
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest of `candidates` to `name`.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates.into_iter().min_by_key(|c| distance(name, c))
}

/// Looks up `method/task`.
pub fn preset(name: &str) -> Result<Preset> {
    let (method, task) = name.split_once('/').unwrap_or(("", name));
    let found = DEPT_SETTINGS.iter().find(|(t, ..)| *t == task);
    match (method, found) {
        ("dept" | "ept", Some(&(task, lr_prompt, lr_low_rank, s, r, max_steps))) => Ok(Preset {
            method: if method == "dept" { "dept" } else { "ept" },
            task,
            lr_prompt,
            lr_low_rank,
            s,
            r,
            max_steps,
            batch_size: if method == "dept" { 32 } else { 16 },
            m: if task == "multirc" { 348 } else { 256 },
        }),
        _ => {
            let all = names();
            let hint = closest(name, all.iter().map(String::as_str)).unwrap_or("dept/rte");
            Err(Error::invalid(format!(
                "unknown preset `{name}`: did you mean `{hint}`?"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_suggestions() {
        let p = preset("dept/rte").unwrap();
        assert_eq!(
            (p.lr_prompt, p.lr_low_rank, p.s, p.r, p.max_steps),
            (0.4, 1e-4, 60, 30, 30_000)
        );
        assert_eq!(preset("ept/multirc").unwrap().m, 348);
        assert_eq!(preset("ept/boolq").unwrap().r, 45);
        let e = preset("dept/rtee").unwrap_err().to_string();
        assert!(e.contains("dept/rte"), "{e}");
        assert_eq!(names().len(), 26);
    }
}
