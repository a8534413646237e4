//! The 15 tasks of EPT's evaluation (DePT's, in turn ATTEMPT's): names, where their data lives on
//! the Hugging Face hub, label sets, metrics, and how DePT splits them.
//!
//! Everything here is a fact about the task, kept in one table so `ept tasks` and `ept tasks show`
//! can print it and the rest of the data layer can look it up.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// One of the 15 benchmark tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Task {
    Mnli,
    Qqp,
    Qnli,
    Sst2,
    Cola,
    Stsb,
    Mrpc,
    Rte,
    MultiRc,
    BoolQ,
    Wic,
    Wsc,
    Cb,
    Record,
    Squad,
}

/// The benchmark a task belongs to (decides which hub repository holds it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Benchmark {
    Glue,
    SuperGlue,
    Squad,
}

/// How DePT turns the published splits into train / validation / test (METHOD.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitRule {
    /// Published validation set shuffled and halved into validation and test; train unchanged.
    HalveValidation,
    /// 1,000 shuffled train rows become validation; published validation becomes test.
    TrainHoldout,
    /// MNLI: validation = validation_mismatched, test = validation_matched.
    Mnli,
}

/// What the model has to produce for a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// One of a fixed set of labels, written as a numeric string ("0", "1", ...).
    Classification,
    /// A similarity score written with one decimal (STS-B).
    Regression,
    /// Free text scored SQuAD-style against gold answers (ReCoRD, SQuAD).
    Extractive,
}

/// One reported metric (computed by [`crate::metrics::score`]). `key()` is the name used in
/// result files (DePT's keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Exact string match of prediction and target.
    Accuracy,
    /// Binary F1 of class "1"; a prediction other than "0"/"1" counts as the opposite of the gold
    /// label (DePT's `f1_score_with_invalid`, used for MRPC, QQP and MultiRC).
    F1,
    /// Unweighted mean of the per-class F1 over the task's classes (CB's `f1_multiclass`); an
    /// invalid prediction is a miss for the true class and a false alarm for no class.
    MacroF1,
    /// Matthews correlation; invalid predictions form an extra class (sklearn's behaviour).
    Matthews,
    /// Pearson correlation of the parsed scores (unparsable prediction → -1; NaN → 0).
    Pearson,
    /// Spearman correlation (average ranks for ties; NaN → 0).
    Spearman,
    /// MultiRC exact match: share of questions whose answer options are all predicted right.
    GroupExactMatch,
    /// SQuAD exact match after normalisation, max over gold answers.
    SquadEm,
    /// SQuAD token F1 after normalisation, max over gold answers.
    SquadF1,
}

impl Metric {
    /// The key in result maps, as DePT names it.
    pub fn key(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::F1 | Metric::SquadF1 => "f1",
            Metric::MacroF1 => "f1_multiclass",
            Metric::Matthews => "matthews_correlation",
            Metric::Pearson => "pearson",
            Metric::Spearman => "spearmanr",
            Metric::GroupExactMatch | Metric::SquadEm => "em",
        }
    }

    /// One-line description for `ept tasks show`.
    pub fn description(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy (exact string match)",
            Metric::F1 => "binary F1 of class 1; invalid predictions count as wrong",
            Metric::MacroF1 => "macro-averaged F1 over the classes",
            Metric::Matthews => "Matthews correlation coefficient",
            Metric::Pearson => "Pearson correlation (unparsable prediction = -1)",
            Metric::Spearman => "Spearman rank correlation (unparsable prediction = -1)",
            Metric::GroupExactMatch => "exact match per question (all answer options right)",
            Metric::SquadEm => "SQuAD exact match (normalised, max over gold answers)",
            Metric::SquadF1 => "SQuAD token F1 (normalised, max over gold answers)",
        }
    }
}

const BINARY: &[&str] = &["0", "1"];
const TERNARY: &[&str] = &["0", "1", "2"];
/// STS-B's 26 targets: DePT's `str(np.round(x, 1))` for x in `np.arange(0, 5.2, 0.2)`.
const STSB_LABELS: &[&str] = &[
    "0.0", "0.2", "0.4", "0.6", "0.8", "1.0", "1.2", "1.4", "1.6", "1.8", "2.0", "2.2", "2.4",
    "2.6", "2.8", "3.0", "3.2", "3.4", "3.6", "3.8", "4.0", "4.2", "4.4", "4.6", "4.8", "5.0",
];

impl Task {
    /// All tasks, in the order of METHOD.md's tables.
    pub const ALL: [Task; 15] = [
        Task::Mnli,
        Task::Qqp,
        Task::Qnli,
        Task::Sst2,
        Task::Cola,
        Task::Stsb,
        Task::Mrpc,
        Task::Rte,
        Task::MultiRc,
        Task::BoolQ,
        Task::Wic,
        Task::Wsc,
        Task::Cb,
        Task::Record,
        Task::Squad,
    ];

    /// Canonical short name, as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Task::Mnli => "mnli",
            Task::Qqp => "qqp",
            Task::Qnli => "qnli",
            Task::Sst2 => "sst2",
            Task::Cola => "cola",
            Task::Stsb => "stsb",
            Task::Mrpc => "mrpc",
            Task::Rte => "rte",
            Task::MultiRc => "multirc",
            Task::BoolQ => "boolq",
            Task::Wic => "wic",
            Task::Wsc => "wsc",
            Task::Cb => "cb",
            Task::Record => "record",
            Task::Squad => "squad",
        }
    }

    /// DePT's name for the task (its `--task_name`), for reading its configs and logs.
    pub fn dept_name(self) -> &'static str {
        match self {
            Task::MultiRc => "superglue-multirc",
            Task::BoolQ => "superglue-boolq",
            Task::Wic => "superglue-wic",
            Task::Wsc => "superglue-wsc.fixed",
            Task::Cb => "superglue-cb",
            Task::Record => "superglue-record",
            other => other.name(),
        }
    }

    /// Human-readable name.
    pub fn display_name(self) -> &'static str {
        match self {
            Task::Mnli => "MNLI",
            Task::Qqp => "QQP",
            Task::Qnli => "QNLI",
            Task::Sst2 => "SST-2",
            Task::Cola => "CoLA",
            Task::Stsb => "STS-B",
            Task::Mrpc => "MRPC",
            Task::Rte => "RTE",
            Task::MultiRc => "MultiRC",
            Task::BoolQ => "BoolQ",
            Task::Wic => "WiC",
            Task::Wsc => "WSC",
            Task::Cb => "CB",
            Task::Record => "ReCoRD",
            Task::Squad => "SQuAD",
        }
    }

    /// Parses a task name. Case-insensitive; accepts the canonical names, the display names, and
    /// DePT's names (`superglue-boolq`, `superglue-wsc.fixed`, ...), so users can paste either.
    pub fn parse(name: &str) -> Result<Task> {
        let key: String = name
            .trim()
            .to_ascii_lowercase()
            .chars()
            .filter(|c| !matches!(c, '-' | '_'))
            .collect();
        let key = key.strip_prefix("superglue").unwrap_or(&key);
        let key = key.strip_prefix("glue").unwrap_or(key);
        let task = match key {
            "mnli" | "multinli" => Task::Mnli,
            "qqp" => Task::Qqp,
            "qnli" => Task::Qnli,
            "sst2" | "sst" => Task::Sst2,
            "cola" => Task::Cola,
            "stsb" | "sts" => Task::Stsb,
            "mrpc" => Task::Mrpc,
            "rte" => Task::Rte,
            "multirc" => Task::MultiRc,
            "boolq" => Task::BoolQ,
            "wic" => Task::Wic,
            "wsc" | "wsc.fixed" | "wscfixed" => Task::Wsc,
            "cb" => Task::Cb,
            "record" => Task::Record,
            "squad" | "squadv1" | "squad1" | "squad1.1" => Task::Squad,
            _ => {
                let names: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
                return Err(Error::invalid(format!(
                    "unknown task `{name}`: expected one of {}",
                    names.join(", ")
                )));
            }
        };
        Ok(task)
    }

    pub fn benchmark(self) -> Benchmark {
        match self {
            Task::Mnli
            | Task::Qqp
            | Task::Qnli
            | Task::Sst2
            | Task::Cola
            | Task::Stsb
            | Task::Mrpc
            | Task::Rte => Benchmark::Glue,
            Task::Squad => Benchmark::Squad,
            _ => Benchmark::SuperGlue,
        }
    }

    /// Hub repositories holding the task, newest name first (the hub renamed `glue` to
    /// `nyu-mll/glue`, `super_glue` to `aps/super_glue`, `squad` to `rajpurkar/squad`; caches made
    /// before the rename keep the old folder names).
    pub fn hub_repos(self) -> &'static [&'static str] {
        match self.benchmark() {
            Benchmark::Glue => &["nyu-mll/glue", "glue"],
            Benchmark::SuperGlue => &["aps/super_glue", "super_glue"],
            Benchmark::Squad => &["rajpurkar/squad", "squad"],
        }
    }

    /// The configuration (subset) name within the hub repository.
    pub fn hub_config(self) -> &'static str {
        match self {
            Task::Wsc => "wsc.fixed",
            Task::Squad => "plain_text",
            other => other.name(),
        }
    }

    pub fn kind(self) -> TaskKind {
        match self {
            Task::Stsb => TaskKind::Regression,
            Task::Record | Task::Squad => TaskKind::Extractive,
            _ => TaskKind::Classification,
        }
    }

    /// The target strings a classifier may produce (DePT's `labels_list`); STS-B's 26 rounded
    /// scores; `None` for the free-text tasks.
    pub fn labels(self) -> Option<&'static [&'static str]> {
        match self {
            Task::Mnli | Task::Cb => Some(TERNARY),
            Task::Stsb => Some(STSB_LABELS),
            Task::Record | Task::Squad => None,
            _ => Some(BINARY),
        }
    }

    /// What each class index means (the `ClassLabel` names of the HF data set). Also accepted as
    /// label values in the GLUE TSV files and SuperGLUE JSONL files, which spell labels out.
    pub fn label_names(self) -> Option<&'static [&'static str]> {
        Some(match self {
            Task::Mnli => &["entailment", "neutral", "contradiction"],
            Task::Qqp => &["not_duplicate", "duplicate"],
            Task::Qnli | Task::Rte => &["entailment", "not_entailment"],
            Task::Sst2 => &["negative", "positive"],
            Task::Cola => &["unacceptable", "acceptable"],
            Task::Mrpc => &["not_equivalent", "equivalent"],
            Task::MultiRc | Task::BoolQ | Task::Wic | Task::Wsc => &["False", "True"],
            Task::Cb => &["entailment", "contradiction", "neutral"],
            Task::Stsb | Task::Record | Task::Squad => return None,
        })
    }

    /// Number of classes for classification tasks.
    pub fn num_classes(self) -> Option<usize> {
        match self.kind() {
            TaskKind::Classification => self.labels().map(|l| l.len()),
            _ => None,
        }
    }

    /// Metrics reported for the task (DePT's `TASK_TO_METRICS`), selection metric first.
    pub fn metrics(self) -> &'static [Metric] {
        use Metric::*;
        match self {
            Task::Mrpc | Task::Qqp => &[Accuracy, F1],
            Task::Cola => &[Matthews],
            Task::Stsb => &[Pearson, Spearman],
            Task::Cb => &[MacroF1, Accuracy],
            Task::MultiRc => &[F1, GroupExactMatch],
            Task::Record => &[SquadF1, SquadEm],
            Task::Squad => &[SquadEm, SquadF1],
            _ => &[Accuracy],
        }
    }

    /// The metric that picks the best checkpoint on validation (DePT: the first of
    /// `TASK_TO_METRICS`): accuracy for MRPC/QQP, macro-F1 for CB, F1 for MultiRC and ReCoRD,
    /// EM for SQuAD.
    pub fn selection_metric(self) -> Metric {
        self.metrics()[0]
    }

    pub fn split_rule(self) -> SplitRule {
        match self {
            Task::Mnli => SplitRule::Mnli,
            Task::Qqp | Task::Qnli | Task::Sst2 | Task::Record | Task::Squad => {
                SplitRule::TrainHoldout
            }
            _ => SplitRule::HalveValidation,
        }
    }

    /// Sizes of the published splits this pipeline reads, as `(split name, rows)`. ReCoRD counts
    /// rows of the HF data set (one per query), before one-row-per-answer expansion.
    pub fn published_sizes(self) -> &'static [(&'static str, usize)] {
        match self {
            Task::Mnli => &[
                ("train", 392_702),
                ("validation_matched", 9_815),
                ("validation_mismatched", 9_832),
            ],
            Task::Qqp => &[("train", 363_846), ("validation", 40_430)],
            Task::Qnli => &[("train", 104_743), ("validation", 5_463)],
            Task::Sst2 => &[("train", 67_349), ("validation", 872)],
            Task::Cola => &[("train", 8_551), ("validation", 1_043)],
            Task::Stsb => &[("train", 5_749), ("validation", 1_500)],
            Task::Mrpc => &[("train", 3_668), ("validation", 408)],
            Task::Rte => &[("train", 2_490), ("validation", 277)],
            Task::MultiRc => &[("train", 27_243), ("validation", 4_848)],
            Task::BoolQ => &[("train", 9_427), ("validation", 3_270)],
            Task::Wic => &[("train", 5_428), ("validation", 638)],
            Task::Wsc => &[("train", 554), ("validation", 104)],
            Task::Cb => &[("train", 250), ("validation", 56)],
            Task::Record => &[("train", 100_730), ("validation", 10_000)],
            Task::Squad => &[("train", 87_599), ("validation", 10_570)],
        }
    }

    /// Columns (HF names) the formatter reads; used to name what is missing in an error.
    pub fn required_columns(self) -> &'static [&'static str] {
        match self {
            Task::Mnli | Task::Cb => &["premise", "hypothesis", "label"],
            Task::Qqp => &["question1", "question2", "label"],
            Task::Qnli => &["question", "sentence", "label"],
            Task::Sst2 | Task::Cola => &["sentence", "label"],
            Task::Stsb | Task::Mrpc | Task::Rte => &["sentence1", "sentence2", "label"],
            Task::MultiRc => &["paragraph", "question", "answer", "idx", "label"],
            Task::BoolQ => &["question", "passage", "label"],
            Task::Wic => &["sentence1", "sentence2", "word", "label"],
            Task::Wsc => &[
                "text",
                "span1_index",
                "span2_index",
                "span1_text",
                "span2_text",
                "label",
            ],
            Task::Record => &["passage", "query", "entities", "answers"],
            Task::Squad => &["question", "context", "answers"],
        }
    }

    /// Maximum source length in tokens (METHOD.md §1: 256, MultiRC 348).
    pub fn max_source_tokens(self) -> usize {
        match self {
            Task::MultiRc => 348,
            _ => 256,
        }
    }

    /// The source template, for `ept tasks show`.
    pub fn template(self) -> &'static str {
        match self {
            Task::Mnli | Task::Cb => "premise: {premise} hypothesis: {hypothesis}",
            Task::Qqp => "question1: {question1} question2: {question2}",
            Task::Qnli => "question: {question} sentence: {sentence}",
            Task::Sst2 | Task::Cola => "sentence: {sentence}",
            Task::Stsb | Task::Mrpc | Task::Rte => "sentence1: {sentence1} sentence2: {sentence2}",
            Task::MultiRc => "question: {question} answer: {answer} paragraph: {paragraph}",
            Task::BoolQ => "question: {question} passage: {passage}",
            Task::Wic => "sentence1: {sentence1} sentence2: {sentence2} word: {word}",
            Task::Wsc => "text: {text with * span1 * and # span2 #}",
            Task::Record => "record query: {query} entities: {e1, e2, ...} passage: {passage}",
            Task::Squad => "question: {question} context: {context}",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Task {
    type Err = Error;
    fn from_str(s: &str) -> Result<Task> {
        Task::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in Task::ALL {
            assert_eq!(Task::parse(t.name()).unwrap(), t);
            assert_eq!(Task::parse(t.dept_name()).unwrap(), t);
            assert_eq!(Task::parse(t.display_name()).unwrap(), t);
        }
        assert_eq!(Task::parse("SST-2").unwrap(), Task::Sst2);
        assert_eq!(Task::parse("wsc.fixed").unwrap(), Task::Wsc);
        let err = Task::parse("copa").unwrap_err().to_string();
        assert!(
            err.contains("unknown task `copa`") && err.contains("mnli"),
            "{err}"
        );
    }

    #[test]
    fn label_tables_agree() {
        for t in Task::ALL {
            if let (Some(l), Some(n)) = (t.labels(), t.label_names()) {
                assert_eq!(l.len(), n.len(), "{t}");
            }
            assert!(!t.metrics().is_empty());
        }
        assert_eq!(Task::Stsb.labels().unwrap().len(), 26);
        assert_eq!(Task::Cb.selection_metric(), Metric::MacroF1);
    }
}
