//! GLUE's original TSV files (`RTE/train.tsv`, `MNLI/dev_matched.tsv`, ...). Columns are renamed
//! to the HF data set's names so the same formatter serves both; labels may stay spelled out
//! ("entailment"), which the formatter maps to class indices. Like the HF loader, fields are split
//! on tabs with no quote processing (`csv.QUOTE_NONE`).

use std::path::Path;

use serde_json::{Map, Value};

use crate::data::format::Row;
use crate::data::tasks::Task;
use crate::error::{Error, Result};

/// TSV header name → HF column name, per task.
fn renames(task: Task) -> &'static [(&'static str, &'static str)] {
    match task {
        Task::Mnli => &[
            ("sentence1", "premise"),
            ("sentence2", "hypothesis"),
            ("gold_label", "label"),
        ],
        Task::Mrpc => &[
            ("#1 String", "sentence1"),
            ("#2 String", "sentence2"),
            ("Quality", "label"),
        ],
        Task::Stsb => &[("score", "label")],
        Task::Qqp => &[("is_duplicate", "label")],
        Task::Rte | Task::Qnli | Task::Sst2 => &[],
        _ => &[],
    }
}

/// Reads a GLUE TSV file for `task`. CoLA's train/dev files have no header: their columns are
/// (source, label, original label, sentence).
pub fn read(path: &Path, task: Task) -> Result<Vec<Row>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut lines = Vec::new();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let text = std::str::from_utf8(line).map_err(|e| {
            Error::data(
                path,
                format!(
                    "line {}: not valid UTF-8 (byte {} of the line)",
                    n + 1,
                    e.valid_up_to() + 1
                ),
            )
        })?;
        let text = text.strip_suffix('\r').unwrap_or(text);
        if !text.trim().is_empty() {
            lines.push((n + 1, text));
        }
    }
    let Some(&(_, first)) = lines.first() else {
        return Err(Error::data(
            path,
            "empty file: expected a tab-separated header and rows",
        ));
    };
    let headerless =
        task == Task::Cola && first.split('\t').count() == 4 && !first.starts_with("index");
    let header: Vec<String> = if headerless {
        ["source", "label", "original_label", "sentence"]
            .map(String::from)
            .to_vec()
    } else {
        first
            .split('\t')
            .map(|h| {
                renames(task)
                    .iter()
                    .find(|(from, _)| *from == h)
                    .map_or(h, |&(_, to)| to)
                    .to_string()
            })
            .collect()
    };
    let body = if headerless { &lines[..] } else { &lines[1..] };
    let mut rows = Vec::with_capacity(body.len());
    for &(line_no, line) in body {
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != header.len() {
            return Err(Error::data(
                path,
                format!(
                    "line {line_no}: {} tab-separated fields, the header has {} ({})",
                    fields.len(),
                    header.len(),
                    header.join(", ")
                ),
            ));
        }
        let mut row = Map::new();
        for (h, f) in header.iter().zip(fields) {
            row.insert(h.clone(), Value::String(f.to_string()));
        }
        rows.push(row);
    }
    Ok(rows)
}
