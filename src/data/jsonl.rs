//! The user's own task: a JSON-lines file of `{"source": ..., "target": ...}` objects.

use std::path::Path;

use super::TextPair;
use crate::error::{Error, Result};

/// Reads every line of `path` as a [`TextPair`]; blank lines are skipped.
/// Errors name the file and line (`file:line: ...`).
pub fn read_pairs(path: &Path) -> Result<Vec<TextPair>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let line = std::str::from_utf8(raw)
            .map_err(|_| Error::data(path, format!("line {line_no}: not valid UTF-8")))?
            .trim();
        if line.is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::Json {
            path: path.into(),
            line: Some(line_no),
            msg: e.to_string(),
        })?;
        let field = |name: &str| -> Result<String> {
            match value.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(Error::data(
                    path,
                    format!("line {line_no}: field `{name}` must be a string, found {other}"),
                )),
                None => Err(Error::data(
                    path,
                    format!("line {line_no}: missing field `{name}` (expected {{\"source\": ..., \"target\": ...}})"),
                )),
            }
        };
        out.push(TextPair {
            source: field("source")?,
            target: field("target")?,
        });
    }
    if out.is_empty() {
        return Err(Error::data(path, "empty file: expected JSON lines of {\"source\", \"target\"}"));
    }
    Ok(out)
}
