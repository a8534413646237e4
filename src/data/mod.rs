//! Task data: reading the published data sets, DePT's text-to-text formatting, its splits, and
//! few-shot sampling.
pub mod batching;
pub mod fewshot;
pub mod format;
pub mod randperm;
pub mod readers;
pub mod splits;
pub mod tasks;

pub use format::{Example, Purpose, Row, RowSource, format_row};
pub use splits::Split;
pub use tasks::Task;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use tasks::SplitRule;

/// One split of a task, ready for training or evaluation.
#[derive(Clone, Debug)]
pub struct LoadedSplit {
    pub task: Task,
    pub split: Split,
    /// The published split it was drawn from (`train`, `validation`, `validation_matched`, ...).
    pub source_split: &'static str,
    /// The files read, shards in order.
    pub files: Vec<PathBuf>,
    /// Rows in the published split (before DePT's split rule).
    pub source_rows: usize,
    /// Formatted examples (ReCoRD with [`Purpose::Train`] has one per gold answer).
    pub examples: Vec<Example>,
}

/// Loads `split` of `task` by DePT's rules: finds the published split's files (under `data_dir`,
/// else in the Hugging Face caches, normally [`readers::Caches::from_env`]), reads them, applies
/// the seeded split, formats every row.
pub fn load_split(
    task: Task,
    split: Split,
    data_dir: Option<&Path>,
    caches: &readers::Caches,
    purpose: Purpose,
) -> Result<LoadedSplit> {
    let source = splits::source_split(task, split);
    let files = readers::locate_split(task, source, data_dir, caches)?;
    let table = readers::read_files(&files, Some(task))?;
    if table.is_empty() {
        return Err(Error::data(
            &files[0],
            format!("the `{source}` split of {task} has no rows"),
        ));
    }
    let plan = splits::plan(task, split, table.len())?;
    let chosen: Vec<usize> = match &plan.indices {
        Some(idx) => idx.clone(),
        None => (0..table.len()).collect(),
    };
    let mut examples = Vec::with_capacity(chosen.len());
    for i in chosen {
        let (path, row) = table.source_of(i);
        examples.extend(format_row(
            task,
            &table.rows[i],
            purpose,
            RowSource { path, row },
        )?);
    }
    Ok(LoadedSplit {
        task,
        split,
        source_split: source,
        source_rows: table.len(),
        files,
        examples,
    })
}

/// Reads a user's JSONL file of `{"source": ..., "target": ...}` rows (optional `answers`,
/// `group`), e.g. for training on a custom task.
pub fn load_user_file(path: &Path) -> Result<Vec<Example>> {
    let rows = readers::jsonl::read(path, None)?;
    rows.iter()
        .enumerate()
        .map(|(row, r)| format::format_user_row(r, RowSource { path, row }))
        .collect()
}

/// A multi-line description of `task` for `ept tasks show`: data source, template, labels,
/// metrics, split rule and sizes.
pub fn describe(task: Task) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{} ({})", task.display_name(), task.name());
    let _ = writeln!(
        s,
        "  data:       {} (config `{}`)",
        task.hub_repos()[0],
        task.hub_config()
    );
    let _ = writeln!(s, "  source:     {}", task.template());
    match (task.labels(), task.label_names()) {
        (Some(labels), Some(names)) => {
            let pairs: Vec<String> = labels
                .iter()
                .zip(names)
                .map(|(l, n)| format!("\"{l}\" = {n}"))
                .collect();
            let _ = writeln!(s, "  target:     {}", pairs.join(", "));
        }
        (Some(labels), None) => {
            let _ = writeln!(
                s,
                "  target:     score rounded to one decimal ({} values, {} .. {})",
                labels.len(),
                labels[0],
                labels[labels.len() - 1]
            );
        }
        _ => {
            let _ = writeln!(
                s,
                "  target:     answer text (scored against all gold answers)"
            );
        }
    }
    let metrics: Vec<String> = task
        .metrics()
        .iter()
        .map(|m| format!("{} ({})", m.key(), m.description()))
        .collect();
    let _ = writeln!(s, "  metrics:    {}", metrics.join("; "));
    let _ = writeln!(s, "  selection:  {}", task.selection_metric().key());
    let rule = match task.split_rule() {
        SplitRule::HalveValidation => {
            "published validation shuffled (torch.randperm, seed 42) and halved into validation/test"
        }
        SplitRule::TrainHoldout => {
            "1,000 shuffled train rows (torch.randperm, seed 42) become validation; published validation is test"
        }
        SplitRule::Mnli => "validation = validation_mismatched, test = validation_matched",
    };
    let _ = writeln!(s, "  splits:     {rule}");
    if let Ok([tr, va, te]) = splits::split_sizes(task, task.published_sizes()) {
        let _ = writeln!(s, "  sizes:      train {tr}, validation {va}, test {te}");
    }
    let _ = writeln!(s, "  max input:  {} tokens", task.max_source_tokens());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions() {
        for t in Task::ALL {
            let d = describe(t);
            assert!(d.contains("sizes:") && d.contains(t.template()), "{d}");
        }
        let d = describe(Task::Cb);
        assert!(
            d.contains("\"2\" = neutral") && d.contains("train 250, validation 28, test 28"),
            "{d}"
        );
    }
}
