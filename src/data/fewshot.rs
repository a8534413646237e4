//! Few-shot sampling from the train split: k examples per class for classification, k examples in
//! all for regression (STS-B) and the free-text tasks.
//!
//! The draw is seeded with the same torch-compatible [`randperm`] as the splits, so a `(k, seed)`
//! pair names one subset on every machine. (DePT's own k-shot option shuffles with
//! `datasets.shuffle`, NumPy's generator, and splits k evenly over the classes; we take k per
//! class, which is what the few-shot literature reports.)

use crate::data::format::Example;
use crate::data::randperm::randperm;
use crate::data::tasks::{Task, TaskKind};
use crate::error::{Error, Result};

/// The chosen subset: indices into the train examples, in draw order, plus any class that had
/// fewer than k examples (so the caller can warn).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FewShot {
    pub indices: Vec<usize>,
    /// `(label, available)` for each class with fewer than k examples.
    pub short_classes: Vec<(String, usize)>,
}

/// Draws a few-shot subset of `train` for `task`. Classification: walking a seeded permutation,
/// keep an example while its class has fewer than `k`; other tasks: the first `k` of the
/// permutation.
pub fn sample(task: Task, train: &[Example], k: usize, seed: u64) -> Result<FewShot> {
    if k == 0 {
        return Err(Error::invalid("few-shot: k must be at least 1"));
    }
    let perm = randperm(train.len(), seed)?;
    if task.kind() != TaskKind::Classification {
        return Ok(FewShot {
            indices: perm.into_iter().take(k).collect(),
            short_classes: vec![],
        });
    }
    let labels = task.labels().unwrap_or(&[]);
    let mut counts = vec![0usize; labels.len()];
    let mut indices = Vec::with_capacity(k * labels.len());
    for i in perm {
        let Some(c) = labels.iter().position(|l| *l == train[i].target) else {
            return Err(Error::invalid(format!(
                "few-shot: train example {i} of {task} has target `{}`, not one of {}",
                train[i].target,
                labels.join(", ")
            )));
        };
        if counts[c] < k {
            counts[c] += 1;
            indices.push(i);
            if counts.iter().all(|&n| n >= k) {
                break;
            }
        }
    }
    let short_classes = labels
        .iter()
        .zip(&counts)
        .filter(|&(_, &n)| n < k)
        .map(|(l, &n)| (l.to_string(), n))
        .collect();
    Ok(FewShot {
        indices,
        short_classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(target: &str) -> Example {
        Example {
            source: String::new(),
            target: target.into(),
            answers: vec![target.into()],
            group: None,
        }
    }

    #[test]
    fn k_per_class() {
        let train: Vec<Example> = (0..100)
            .map(|i| ex(if i % 4 == 0 { "1" } else { "0" }))
            .collect();
        let s = sample(Task::Rte, &train, 8, 42).unwrap();
        assert_eq!(s.indices.len(), 16);
        let ones = s
            .indices
            .iter()
            .filter(|&&i| train[i].target == "1")
            .count();
        assert_eq!(ones, 8);
        assert_eq!(s, sample(Task::Rte, &train, 8, 42).unwrap());
        assert_ne!(s.indices, sample(Task::Rte, &train, 8, 1).unwrap().indices);
        let short = sample(Task::Rte, &train, 30, 42).unwrap();
        assert_eq!(short.short_classes, vec![("1".to_string(), 25)]);
    }

    #[test]
    fn k_total_for_regression() {
        let train: Vec<Example> = (0..50).map(|_| ex("2.4")).collect();
        assert_eq!(
            sample(Task::Stsb, &train, 10, 42).unwrap().indices.len(),
            10
        );
        assert!(sample(Task::Stsb, &train, 0, 42).is_err());
        assert!(sample(Task::Rte, &train, 2, 42).is_err());
    }
}
