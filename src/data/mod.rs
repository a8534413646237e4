//! Data: file readers, task formatting, splits and batching.

pub mod jsonl;

/// One text-to-text example.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TextPair {
    pub source: String,
    pub target: String,
}
