//! The "model organism": a synthetic language, toy tasks in GLUE's shapes and a pretraining
//! corpus, all seeded and deterministic, so a tiny T5 can be pretrained and then prompt-tuned
//! offline, with learning that is real (labels follow from meanings) and checkable.
//!
//! - [`language`]: meanings ([`language::Clause`]) and their surface forms;
//! - [`tasks`]: `toy-sst2`, `toy-mnli`, `toy-qqp`, `toy-stsb` and the auxiliary pretraining tasks,
//!   with JSONL and hub-layout parquet writers;
//! - [`corpus`]: documents for pretraining and T5's span corruption.

pub mod corpus;
pub mod language;
pub mod tasks;
pub mod tokenizer;

pub use corpus::{corpus, random_spans_noise_mask, span_corrupt};
pub use language::vocabulary;
pub use tasks::{
    BUILTIN_SIZES, Label, Splits, ToyRow, ToyTask, builtin_split, builtin_splits, builtin_task,
    generate, generate_rows, generate_splits, write_hub_parquet, write_jsonl,
};
