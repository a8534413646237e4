//! DePT's train / validation / test splits (METHOD.md §5), which reproduce EPT's Table 4.
//!
//! The GLUE and SuperGLUE test sets are unlabelled, so DePT carves its test sets out of the
//! published data:
//! - small sets: the published validation set, shuffled, first ⌊n/2⌋ → validation, rest → test;
//!   train unchanged;
//! - large sets (QQP, QNLI, SST-2, ReCoRD, SQuAD): train shuffled, first 1,000 → validation, rest →
//!   train (in shuffled order); published validation → test;
//! - MNLI: validation = validation_mismatched, test = validation_matched.
//!
//! Shuffles are `torch.randperm(n, generator=manual_seed(42))` ([`randperm`]); the seed is fixed
//! at 42 in DePT whatever the training seed, so the splits never move between runs.

use std::fmt;
use std::str::FromStr;

use crate::data::randperm::randperm;
use crate::data::tasks::{SplitRule, Task};
use crate::error::{Error, Result};

/// DePT's shuffle seed (`AutoTask.get(..., seed=42)`), independent of the training seed.
pub const SPLIT_SEED: u64 = 42;

/// Validation rows taken from train for the large sets.
pub const LARGE_VALIDATION_SIZE: usize = 1000;

/// One of the three splits the pipeline uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Split> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "validation" | "valid" | "val" | "dev" => Ok(Split::Validation),
            "test" => Ok(Split::Test),
            other => Err(Error::invalid(format!(
                "unknown split `{other}`: expected train, validation or test"
            ))),
        }
    }
}

/// Where a split's rows come from: a published split and which of its rows, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitPlan {
    /// Name of the published split to read (`train`, `validation`, `validation_matched`, ...).
    pub source: &'static str,
    /// Row indices into that split, in the order DePT presents them; `None` = all rows in file
    /// order.
    pub indices: Option<Vec<usize>>,
}

impl SplitPlan {
    /// Number of rows this plan yields from a published split of `source_len` rows.
    pub fn len(&self, source_len: usize) -> usize {
        self.indices.as_ref().map_or(source_len, Vec::len)
    }

    pub fn is_empty(&self, source_len: usize) -> bool {
        self.len(source_len) == 0
    }

    /// Applies the plan to the published split's rows.
    pub fn select<T: Clone>(&self, rows: &[T]) -> Vec<T> {
        match &self.indices {
            None => rows.to_vec(),
            Some(idx) => idx.iter().map(|&i| rows[i].clone()).collect(),
        }
    }

    /// Like [`select`](Self::select) but consumes the rows (no clones).
    pub fn take<T>(&self, rows: Vec<T>) -> Vec<T> {
        match &self.indices {
            None => rows,
            Some(idx) => {
                let mut slots: Vec<Option<T>> = rows.into_iter().map(Some).collect();
                idx.iter()
                    .filter_map(|&i| slots.get_mut(i).and_then(Option::take))
                    .collect()
            }
        }
    }
}

/// The published split that `split` of `task` is drawn from.
pub fn source_split(task: Task, split: Split) -> &'static str {
    match (task.split_rule(), split) {
        (SplitRule::Mnli, Split::Train) => "train",
        (SplitRule::Mnli, Split::Validation) => "validation_mismatched",
        (SplitRule::Mnli, Split::Test) => "validation_matched",
        (SplitRule::HalveValidation, Split::Train) => "train",
        (SplitRule::HalveValidation, _) => "validation",
        (SplitRule::TrainHoldout, Split::Test) => "validation",
        (SplitRule::TrainHoldout, _) => "train",
    }
}

/// Plans `split` of `task`, given the number of rows of its published source split
/// (`source_len`, the length of [`source_split`]'s rows).
pub fn plan(task: Task, split: Split, source_len: usize) -> Result<SplitPlan> {
    let source = source_split(task, split);
    let indices = match (task.split_rule(), split) {
        (SplitRule::Mnli, _)
        | (SplitRule::HalveValidation, Split::Train)
        | (SplitRule::TrainHoldout, Split::Test) => None,
        (SplitRule::HalveValidation, _) => {
            let perm = randperm(source_len, SPLIT_SEED)?;
            let half = source_len / 2;
            Some(if split == Split::Validation {
                perm[..half].to_vec()
            } else {
                perm[half..].to_vec()
            })
        }
        (SplitRule::TrainHoldout, _) => {
            if source_len <= LARGE_VALIDATION_SIZE {
                return Err(Error::invalid(format!(
                    "{task}: the train split has {source_len} rows; DePT's split needs more than {LARGE_VALIDATION_SIZE} (1,000 become validation)"
                )));
            }
            let perm = randperm(source_len, SPLIT_SEED)?;
            Some(if split == Split::Validation {
                perm[..LARGE_VALIDATION_SIZE].to_vec()
            } else {
                perm[LARGE_VALIDATION_SIZE..].to_vec()
            })
        }
    };
    Ok(SplitPlan { source, indices })
}

/// (train, validation, test) sizes for `task`, given the sizes of its published splits as
/// `(name, rows)` pairs (as in [`Task::published_sizes`]).
pub fn split_sizes(task: Task, published: &[(&str, usize)]) -> Result<[usize; 3]> {
    let mut out = [0; 3];
    for (k, split) in Split::ALL.into_iter().enumerate() {
        let source = source_split(task, split);
        let n = published
            .iter()
            .find(|(name, _)| *name == source)
            .map(|&(_, n)| n)
            .ok_or_else(|| {
                Error::invalid(format!("{task}: size of the `{source}` split is not given"))
            })?;
        out[k] = match (task.split_rule(), split) {
            (SplitRule::HalveValidation, Split::Validation) => n / 2,
            (SplitRule::HalveValidation, Split::Test) => n - n / 2,
            (SplitRule::TrainHoldout, Split::Validation) => LARGE_VALIDATION_SIZE.min(n),
            (SplitRule::TrainHoldout, Split::Train) => n.saturating_sub(LARGE_VALIDATION_SIZE),
            _ => n,
        };
    }
    Ok(out)
}

/// EPT's Table 4 (train, validation, test) for the 13 tasks it lists, plus ReCoRD and SQuAD under
/// the same rules.
pub fn expected_sizes(task: Task) -> [usize; 3] {
    match task {
        Task::Mnli => [392_702, 9_832, 9_815],
        Task::Qqp => [362_846, 1_000, 40_430],
        Task::Qnli => [103_743, 1_000, 5_463],
        Task::Sst2 => [66_349, 1_000, 872],
        Task::Cola => [8_551, 521, 522],
        Task::Mrpc => [3_668, 204, 204],
        Task::Stsb => [5_749, 750, 750],
        Task::Rte => [2_490, 138, 139],
        Task::MultiRc => [27_243, 2_424, 2_424],
        Task::Wic => [5_428, 319, 319],
        Task::Wsc => [554, 52, 52],
        Task::BoolQ => [9_427, 1_635, 1_635],
        Task::Cb => [250, 28, 28],
        Task::Record => [99_730, 1_000, 10_000],
        Task::Squad => [86_599, 1_000, 10_570],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Table 4 from the published sizes, both by arithmetic and by building the index lists.
    #[test]
    fn table4_exact() {
        for task in Task::ALL {
            let published = task.published_sizes();
            assert_eq!(
                split_sizes(task, published).unwrap(),
                expected_sizes(task),
                "{task}"
            );
            let mut built = [0; 3];
            let mut seen: Vec<Vec<usize>> = vec![];
            for (k, split) in Split::ALL.into_iter().enumerate() {
                let source = source_split(task, split);
                let n = published.iter().find(|(s, _)| *s == source).unwrap().1;
                let p = plan(task, split, n).unwrap();
                // A synthetic table of the real size (row i holds i), split by the plan.
                let table: Vec<u32> = (0..n as u32).collect();
                let rows = p.take(table);
                assert_eq!(rows.len(), p.len(n), "{task}");
                built[k] = rows.len();
                if let Some(idx) = &p.indices {
                    assert!(idx.iter().all(|&i| i < n));
                    seen.push(idx.clone());
                }
            }
            assert_eq!(built, expected_sizes(task), "{task}");
            // Validation and test (or validation and train) drawn from one split are disjoint and
            // together cover it.
            if seen.len() == 2 {
                let mut all: Vec<usize> = seen.concat();
                let n = all.len();
                all.sort_unstable();
                all.dedup();
                assert_eq!(all.len(), n, "{task}: overlap");
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "{task}: not a cover");
            }
        }
    }

    #[test]
    fn plans_select_rows() {
        let rows: Vec<u32> = (0..10).collect();
        let p = plan(Task::Cb, Split::Validation, 10).unwrap();
        let v = p.select(&rows);
        assert_eq!(v.len(), 5);
        assert_eq!(p.take(rows.clone()), v);
        let t = plan(Task::Cb, Split::Test, 10).unwrap().select(&rows);
        assert_eq!(t.len(), 5);
        assert!(v.iter().all(|x| !t.contains(x)));
        assert!(plan(Task::Qqp, Split::Train, 999).is_err());
        assert_eq!("dev".parse::<Split>().unwrap(), Split::Validation);
    }
}
