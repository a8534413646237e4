//! DePT's text-to-text formatting: one data-set row (HF column names) → source and target text.
//!
//! The source is the task's `field: value` pieces joined by single spaces; the target is the label
//! as a numeric string (METHOD.md §5). The details below follow DePT's `src/tasks.py` (itself from
//! ATTEMPT and T5), because a model tuned on one spelling of the input is measurably worse on
//! another: WSC's `* … *` / `# … #` span markers, ReCoRD's `@highlight` joining, MultiRC's markup
//! stripping, SQuAD's punctuation padding, STS-B's rounding.

use std::path::Path;

use serde_json::{Map, Value};

use crate::data::tasks::{Task, TaskKind};
use crate::error::{Error, Result};

/// A row as the readers produce it: column name → value (nested structs as objects, sequences
/// as arrays).
pub type Row = Map<String, Value>;

/// One formatted example.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Encoder input text (before tokenisation and truncation).
    pub source: String,
    /// Decoder target text.
    pub target: String,
    /// Gold answers for scoring: all answers for ReCoRD and SQuAD, otherwise `[target]`.
    pub answers: Vec<String>,
    /// MultiRC: the question the answer option belongs to (for per-question exact match).
    pub group: Option<u64>,
}

impl Example {
    fn simple(source: String, target: String) -> Example {
        Example {
            answers: vec![target.clone()],
            source,
            target,
            group: None,
        }
    }
}

/// Why a row is being formatted: the only difference is ReCoRD, where DePT trains on one row per
/// gold answer, while scoring needs one row per query with all its answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// ReCoRD rows expand to one example per gold answer (DePT's training data).
    Train,
    /// One example per row; ReCoRD's target is its first gold answer, all kept in `answers`.
    Eval,
}

/// Where a row came from, so errors can name the file and row.
#[derive(Clone, Copy, Debug)]
pub struct RowSource<'a> {
    pub path: &'a Path,
    /// 0-based row number within the file (printed 1-based).
    pub row: usize,
}

impl RowSource<'_> {
    fn err(&self, field: &str, msg: impl std::fmt::Display) -> Error {
        Error::field(self.path, field, format!("row {}: {msg}", self.row + 1))
    }
}

/// Formats one HF-style row of `task`. Most tasks yield exactly one example; ReCoRD may yield
/// several (see [`Purpose`]). Errors name the file, row and field.
pub fn format_row(
    task: Task,
    row: &Row,
    purpose: Purpose,
    at: RowSource<'_>,
) -> Result<Vec<Example>> {
    let f = Fields { row, at, task };
    let one = |parts: &[(&str, &str)]| -> Result<Vec<Example>> {
        let mut pieces = Vec::with_capacity(parts.len());
        for &(prefix, column) in parts {
            pieces.push((prefix, f.text(column)?));
        }
        let target = f.class_target()?;
        Ok(vec![Example::simple(join(&pieces), target)])
    };
    match task {
        Task::Mnli | Task::Cb => one(&[("premise:", "premise"), ("hypothesis:", "hypothesis")]),
        Task::Qqp => one(&[("question1:", "question1"), ("question2:", "question2")]),
        Task::Qnli => one(&[("question:", "question"), ("sentence:", "sentence")]),
        Task::Sst2 | Task::Cola => one(&[("sentence:", "sentence")]),
        Task::Mrpc | Task::Rte => one(&[("sentence1:", "sentence1"), ("sentence2:", "sentence2")]),
        Task::BoolQ => one(&[("question:", "question"), ("passage:", "passage")]),
        Task::Wic => one(&[
            ("sentence1:", "sentence1"),
            ("sentence2:", "sentence2"),
            ("word:", "word"),
        ]),
        Task::Stsb => {
            let source = join(&[
                ("sentence1:", f.text("sentence1")?),
                ("sentence2:", f.text("sentence2")?),
            ]);
            let score = f.number("label")?;
            if score < 0.0 {
                return Err(at.err("label", format!("score {score} is negative: the split is unlabelled (GLUE test sets have no labels)")));
            }
            Ok(vec![Example::simple(source, stsb_target(score))])
        }
        Task::MultiRc => {
            let source = join(&[
                ("question:", remove_markup(&f.text("question")?)),
                ("answer:", remove_markup(&f.text("answer")?)),
                ("paragraph:", remove_markup(&f.text("paragraph")?)),
            ]);
            let target = f.class_target()?;
            let idx = f.get("idx")?;
            let part = |name: &str| -> Result<u64> {
                idx.get(name).and_then(Value::as_u64).ok_or_else(|| {
                    at.err(
                        "idx",
                        format!(
                            "expected an object with a non-negative integer `{name}`, found {}",
                            brief(idx)
                        ),
                    )
                })
            };
            // Question ids are only unique together with their paragraph.
            let group = (part("paragraph")? << 32) | (part("question")? & 0xffff_ffff);
            Ok(vec![Example {
                answers: vec![target.clone()],
                source,
                target,
                group: Some(group),
            }])
        }
        Task::Wsc => {
            let text = f.text("text")?;
            let span1 = f.text("span1_text")?;
            let span2 = f.text("span2_text")?;
            let i1 = f.index("span1_index")?;
            let i2 = f.index("span2_index")?;
            let marked = wsc_mark(&text, &span1, i1, &span2, i2);
            let target = f.class_target()?;
            Ok(vec![Example::simple(join(&[("text:", marked)]), target)])
        }
        Task::Record => {
            let passage = record_passage(&f.text("passage")?);
            let query = f.text("query")?;
            let entities = f.strings("entities")?;
            let answers = f.strings("answers")?;
            let source = format!(
                "record query: {query} entities: {} passage: {passage}",
                entities.join(", ")
            );
            if answers.is_empty() {
                // Unlabelled (test) rows: DePT keeps them with target "<unk>".
                return Ok(vec![Example {
                    source,
                    target: "<unk>".into(),
                    answers: vec![],
                    group: None,
                }]);
            }
            let mk = |target: &String| Example {
                source: source.clone(),
                target: target.clone(),
                answers: answers.clone(),
                group: None,
            };
            Ok(match purpose {
                Purpose::Train => answers.iter().map(mk).collect(),
                Purpose::Eval => vec![mk(&answers[0])],
            })
        }
        Task::Squad => {
            let question = pad_punctuation(&f.text("question")?);
            let context = pad_punctuation(&f.text("context")?);
            let answers_value = f.get("answers")?;
            let texts = answers_value
                .get("text")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    at.err(
                        "answers",
                        format!(
                            "expected an object with a list `text`, found {}",
                            brief(answers_value)
                        ),
                    )
                })?;
            let mut answers = Vec::with_capacity(texts.len());
            for t in texts {
                let s = t.as_str().ok_or_else(|| {
                    at.err(
                        "answers.text",
                        format!("expected strings, found {}", brief(t)),
                    )
                })?;
                answers.push(pad_punctuation(s));
            }
            let Some(first) = answers.first().cloned() else {
                return Err(at.err(
                    "answers.text",
                    "is empty: every SQuAD row needs at least one answer",
                ));
            };
            Ok(vec![Example {
                source: join(&[("question:", question), ("context:", context)]),
                target: first,
                answers,
                group: None,
            }])
        }
    }
}

/// Formats a user-supplied row `{"source": ..., "target": ...}` (optionally `"answers": [...]`
/// and an integer `"group"`), the format of `--train-file`-style JSONL.
pub fn format_user_row(row: &Row, at: RowSource<'_>) -> Result<Example> {
    let f = Fields {
        row,
        at,
        task: Task::Squad,
    };
    let source = f.text("source")?;
    let target = match f.get("target")? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => {
            return Err(at.err(
                "target",
                format!("expected a string, found {}", brief(other)),
            ));
        }
    };
    let answers = if row.contains_key("answers") {
        f.strings("answers")?
    } else {
        vec![target.clone()]
    };
    let group = match row.get("group") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            at.err(
                "group",
                format!("expected a non-negative integer, found {}", brief(v)),
            )
        })?),
    };
    Ok(Example {
        source,
        target,
        answers,
        group,
    })
}

/// Joins `prefix value` pieces with single spaces (DePT's `' '.join(sources)`).
fn join<S: AsRef<str>>(pieces: &[(&str, S)]) -> String {
    let mut out = String::new();
    for (prefix, value) in pieces {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(prefix);
        out.push(' ');
        out.push_str(value.as_ref());
    }
    out
}

/// STS-B target text: DePT's `str(np.round((label * 5) / 5, decimals=1))`. The label is first
/// narrowed to f32, the type the HF data set stores, so scores read from TSV or JSON round the
/// same way as those read from the hub's files.
pub fn stsb_target(score: f64) -> String {
    let x = (score as f32) as f64;
    let scaled = (x * 5.0) / 5.0;
    let rounded = (scaled * 10.0).round_ties_even() / 10.0;
    // Rust's `{:?}` prints the shortest round-trip form with a `.0` for whole numbers, as Python.
    format!("{rounded:?}")
}

/// MultiRC markup: `<br>` → space, `<b>`/`</b>` removed.
pub fn remove_markup(text: &str) -> String {
    text.replace("<br>", " ")
        .replace("<b>", "")
        .replace("</b>", "")
}

/// ReCoRD passage: `@highlight` lines become sentences. A highlight after sentence-final
/// punctuation (`. ? ! " '`) is joined with a space, otherwise with `. `.
pub fn record_passage(passage: &str) -> String {
    const MARK: &str = "\n@highlight\n";
    let mut out = String::with_capacity(passage.len());
    let mut rest = passage;
    while let Some(pos) = rest.find(MARK) {
        let before = &rest[..pos];
        out.push_str(before);
        let ends_sentence = before
            .chars()
            .next_back()
            .is_some_and(|c| matches!(c, '.' | '?' | '!' | '"' | '\''));
        out.push_str(if ends_sentence { " " } else { ". " });
        rest = &rest[pos + MARK.len()..];
    }
    out.push_str(rest);
    out
}

/// T5's `_pad_punctuation`: spaces around every character that is not a letter, number, mark,
/// underscore or whitespace, then whitespace runs collapsed to one space. (It also splits
/// accented letters written with combining marks' neighbours, as DePT's does.)
pub fn pad_punctuation(text: &str) -> String {
    let mut padded = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c == '_' || c.is_whitespace() || is_letter_or_number(c) || is_mark(c) {
            padded.push(c);
        } else {
            padded.push(' ');
            padded.push(c);
            padded.push(' ');
        }
    }
    // `re.sub(r'\s+', ' ', text)`: collapse, but keep leading / trailing single spaces.
    let mut out = String::with_capacity(padded.len());
    let mut in_space = false;
    for c in padded.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out
}

/// Unicode marks (`\p{M}`: Mn, Mc, Me), which DePT's `pad_punctuation` leaves alone. Rust's std
/// has no general-category lookup, so the ranges are tabulated here (from the `regex` module that
/// DePT uses; `scripts/make_data_fixtures.py` checks a sample against it).
pub(crate) fn is_mark(c: char) -> bool {
    let cp = c as u32;
    MARKS
        .binary_search_by(|&(lo, hi)| {
            if hi < cp {
                std::cmp::Ordering::Less
            } else if lo > cp {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Letters and numbers as DePT's regex sees them (`\p{L}`, `\p{N}`). Rust's `is_alphanumeric`
/// also counts the enclosed Latin letters (Ⓐ, 🅐, ...), which are symbols (So) to the regex.
pub(crate) fn is_letter_or_number(c: char) -> bool {
    c.is_alphanumeric()
        && !matches!(c as u32, 0x24B6..=0x24E9 | 0x1F130..=0x1F149 | 0x1F150..=0x1F169 | 0x1F170..=0x1F189)
}

#[rustfmt::skip]
static MARKS: &[(u32, u32)] = &[
    (0x0300, 0x036F), (0x0483, 0x0489), (0x0591, 0x05BD), (0x05BF, 0x05BF), (0x05C1, 0x05C2), (0x05C4, 0x05C5),
    (0x05C7, 0x05C7), (0x0610, 0x061A), (0x064B, 0x065F), (0x0670, 0x0670), (0x06D6, 0x06DC), (0x06DF, 0x06E4),
    (0x06E7, 0x06E8), (0x06EA, 0x06ED), (0x0711, 0x0711), (0x0730, 0x074A), (0x07A6, 0x07B0), (0x07EB, 0x07F3),
    (0x07FD, 0x07FD), (0x0816, 0x0819), (0x081B, 0x0823), (0x0825, 0x0827), (0x0829, 0x082D), (0x0859, 0x085B),
    (0x0897, 0x089F), (0x08CA, 0x08E1), (0x08E3, 0x0903), (0x093A, 0x093C), (0x093E, 0x094F), (0x0951, 0x0957),
    (0x0962, 0x0963), (0x0981, 0x0983), (0x09BC, 0x09BC), (0x09BE, 0x09C4), (0x09C7, 0x09C8), (0x09CB, 0x09CD),
    (0x09D7, 0x09D7), (0x09E2, 0x09E3), (0x09FE, 0x09FE), (0x0A01, 0x0A03), (0x0A3C, 0x0A3C), (0x0A3E, 0x0A42),
    (0x0A47, 0x0A48), (0x0A4B, 0x0A4D), (0x0A51, 0x0A51), (0x0A70, 0x0A71), (0x0A75, 0x0A75), (0x0A81, 0x0A83),
    (0x0ABC, 0x0ABC), (0x0ABE, 0x0AC5), (0x0AC7, 0x0AC9), (0x0ACB, 0x0ACD), (0x0AE2, 0x0AE3), (0x0AFA, 0x0AFF),
    (0x0B01, 0x0B03), (0x0B3C, 0x0B3C), (0x0B3E, 0x0B44), (0x0B47, 0x0B48), (0x0B4B, 0x0B4D), (0x0B55, 0x0B57),
    (0x0B62, 0x0B63), (0x0B82, 0x0B82), (0x0BBE, 0x0BC2), (0x0BC6, 0x0BC8), (0x0BCA, 0x0BCD), (0x0BD7, 0x0BD7),
    (0x0C00, 0x0C04), (0x0C3C, 0x0C3C), (0x0C3E, 0x0C44), (0x0C46, 0x0C48), (0x0C4A, 0x0C4D), (0x0C55, 0x0C56),
    (0x0C62, 0x0C63), (0x0C81, 0x0C83), (0x0CBC, 0x0CBC), (0x0CBE, 0x0CC4), (0x0CC6, 0x0CC8), (0x0CCA, 0x0CCD),
    (0x0CD5, 0x0CD6), (0x0CE2, 0x0CE3), (0x0CF3, 0x0CF3), (0x0D00, 0x0D03), (0x0D3B, 0x0D3C), (0x0D3E, 0x0D44),
    (0x0D46, 0x0D48), (0x0D4A, 0x0D4D), (0x0D57, 0x0D57), (0x0D62, 0x0D63), (0x0D81, 0x0D83), (0x0DCA, 0x0DCA),
    (0x0DCF, 0x0DD4), (0x0DD6, 0x0DD6), (0x0DD8, 0x0DDF), (0x0DF2, 0x0DF3), (0x0E31, 0x0E31), (0x0E34, 0x0E3A),
    (0x0E47, 0x0E4E), (0x0EB1, 0x0EB1), (0x0EB4, 0x0EBC), (0x0EC8, 0x0ECE), (0x0F18, 0x0F19), (0x0F35, 0x0F35),
    (0x0F37, 0x0F37), (0x0F39, 0x0F39), (0x0F3E, 0x0F3F), (0x0F71, 0x0F84), (0x0F86, 0x0F87), (0x0F8D, 0x0F97),
    (0x0F99, 0x0FBC), (0x0FC6, 0x0FC6), (0x102B, 0x103E), (0x1056, 0x1059), (0x105E, 0x1060), (0x1062, 0x1064),
    (0x1067, 0x106D), (0x1071, 0x1074), (0x1082, 0x108D), (0x108F, 0x108F), (0x109A, 0x109D), (0x135D, 0x135F),
    (0x1712, 0x1715), (0x1732, 0x1734), (0x1752, 0x1753), (0x1772, 0x1773), (0x17B4, 0x17D3), (0x17DD, 0x17DD),
    (0x180B, 0x180D), (0x180F, 0x180F), (0x1885, 0x1886), (0x18A9, 0x18A9), (0x1920, 0x192B), (0x1930, 0x193B),
    (0x1A17, 0x1A1B), (0x1A55, 0x1A5E), (0x1A60, 0x1A7C), (0x1A7F, 0x1A7F), (0x1AB0, 0x1ADD), (0x1AE0, 0x1AEB),
    (0x1B00, 0x1B04), (0x1B34, 0x1B44), (0x1B6B, 0x1B73), (0x1B80, 0x1B82), (0x1BA1, 0x1BAD), (0x1BE6, 0x1BF3),
    (0x1C24, 0x1C37), (0x1CD0, 0x1CD2), (0x1CD4, 0x1CE8), (0x1CED, 0x1CED), (0x1CF4, 0x1CF4), (0x1CF7, 0x1CF9),
    (0x1DC0, 0x1DFF), (0x20D0, 0x20F0), (0x2CEF, 0x2CF1), (0x2D7F, 0x2D7F), (0x2DE0, 0x2DFF), (0x302A, 0x302F),
    (0x3099, 0x309A), (0xA66F, 0xA672), (0xA674, 0xA67D), (0xA69E, 0xA69F), (0xA6F0, 0xA6F1), (0xA802, 0xA802),
    (0xA806, 0xA806), (0xA80B, 0xA80B), (0xA823, 0xA827), (0xA82C, 0xA82C), (0xA880, 0xA881), (0xA8B4, 0xA8C5),
    (0xA8E0, 0xA8F1), (0xA8FF, 0xA8FF), (0xA926, 0xA92D), (0xA947, 0xA953), (0xA980, 0xA983), (0xA9B3, 0xA9C0),
    (0xA9E5, 0xA9E5), (0xAA29, 0xAA36), (0xAA43, 0xAA43), (0xAA4C, 0xAA4D), (0xAA7B, 0xAA7D), (0xAAB0, 0xAAB0),
    (0xAAB2, 0xAAB4), (0xAAB7, 0xAAB8), (0xAABE, 0xAABF), (0xAAC1, 0xAAC1), (0xAAEB, 0xAAEF), (0xAAF5, 0xAAF6),
    (0xABE3, 0xABEA), (0xABEC, 0xABED), (0xFB1E, 0xFB1E), (0xFE00, 0xFE0F), (0xFE20, 0xFE2F), (0x101FD, 0x101FD),
    (0x102E0, 0x102E0), (0x10376, 0x1037A), (0x10A01, 0x10A03), (0x10A05, 0x10A06), (0x10A0C, 0x10A0F), (0x10A38, 0x10A3A),
    (0x10A3F, 0x10A3F), (0x10AE5, 0x10AE6), (0x10D24, 0x10D27), (0x10D69, 0x10D6D), (0x10EAB, 0x10EAC), (0x10EFA, 0x10EFF),
    (0x10F46, 0x10F50), (0x10F82, 0x10F85), (0x11000, 0x11002), (0x11038, 0x11046), (0x11070, 0x11070), (0x11073, 0x11074),
    (0x1107F, 0x11082), (0x110B0, 0x110BA), (0x110C2, 0x110C2), (0x11100, 0x11102), (0x11127, 0x11134), (0x11145, 0x11146),
    (0x11173, 0x11173), (0x11180, 0x11182), (0x111B3, 0x111C0), (0x111C9, 0x111CC), (0x111CE, 0x111CF), (0x1122C, 0x11237),
    (0x1123E, 0x1123E), (0x11241, 0x11241), (0x112DF, 0x112EA), (0x11300, 0x11303), (0x1133B, 0x1133C), (0x1133E, 0x11344),
    (0x11347, 0x11348), (0x1134B, 0x1134D), (0x11357, 0x11357), (0x11362, 0x11363), (0x11366, 0x1136C), (0x11370, 0x11374),
    (0x113B8, 0x113C0), (0x113C2, 0x113C2), (0x113C5, 0x113C5), (0x113C7, 0x113CA), (0x113CC, 0x113D0), (0x113D2, 0x113D2),
    (0x113E1, 0x113E2), (0x11435, 0x11446), (0x1145E, 0x1145E), (0x114B0, 0x114C3), (0x115AF, 0x115B5), (0x115B8, 0x115C0),
    (0x115DC, 0x115DD), (0x11630, 0x11640), (0x116AB, 0x116B7), (0x1171D, 0x1172B), (0x1182C, 0x1183A), (0x11930, 0x11935),
    (0x11937, 0x11938), (0x1193B, 0x1193E), (0x11940, 0x11940), (0x11942, 0x11943), (0x119D1, 0x119D7), (0x119DA, 0x119E0),
    (0x119E4, 0x119E4), (0x11A01, 0x11A0A), (0x11A33, 0x11A39), (0x11A3B, 0x11A3E), (0x11A47, 0x11A47), (0x11A51, 0x11A5B),
    (0x11A8A, 0x11A99), (0x11B60, 0x11B67), (0x11C2F, 0x11C36), (0x11C38, 0x11C3F), (0x11C92, 0x11CA7), (0x11CA9, 0x11CB6),
    (0x11D31, 0x11D36), (0x11D3A, 0x11D3A), (0x11D3C, 0x11D3D), (0x11D3F, 0x11D45), (0x11D47, 0x11D47), (0x11D8A, 0x11D8E),
    (0x11D90, 0x11D91), (0x11D93, 0x11D97), (0x11EF3, 0x11EF6), (0x11F00, 0x11F01), (0x11F03, 0x11F03), (0x11F34, 0x11F3A),
    (0x11F3E, 0x11F42), (0x11F5A, 0x11F5A), (0x13440, 0x13440), (0x13447, 0x13455), (0x1611E, 0x1612F), (0x16AF0, 0x16AF4),
    (0x16B30, 0x16B36), (0x16F4F, 0x16F4F), (0x16F51, 0x16F87), (0x16F8F, 0x16F92), (0x16FE4, 0x16FE4), (0x16FF0, 0x16FF1),
    (0x1BC9D, 0x1BC9E), (0x1CF00, 0x1CF2D), (0x1CF30, 0x1CF46), (0x1D165, 0x1D169), (0x1D16D, 0x1D172), (0x1D17B, 0x1D182),
    (0x1D185, 0x1D18B), (0x1D1AA, 0x1D1AD), (0x1D242, 0x1D244), (0x1DA00, 0x1DA36), (0x1DA3B, 0x1DA6C), (0x1DA75, 0x1DA75),
    (0x1DA84, 0x1DA84), (0x1DA9B, 0x1DA9F), (0x1DAA1, 0x1DAAF), (0x1E000, 0x1E006), (0x1E008, 0x1E018), (0x1E01B, 0x1E021),
    (0x1E023, 0x1E024), (0x1E026, 0x1E02A), (0x1E08F, 0x1E08F), (0x1E130, 0x1E136), (0x1E2AE, 0x1E2AE), (0x1E2EC, 0x1E2EF),
    (0x1E4EC, 0x1E4EF), (0x1E5EE, 0x1E5EF), (0x1E6E3, 0x1E6E3), (0x1E6E6, 0x1E6E6), (0x1E6EE, 0x1E6EF), (0x1E6F5, 0x1E6F5),
    (0x1E8D0, 0x1E8D6), (0x1E944, 0x1E94A), (0xE0100, 0xE01EF),
];

/// WSC (T5's preprocessor): wraps span 1 (the noun) in `* … *` and span 2 (the pronoun) in
/// `# … #`. A span is found where DePT's regex `^((?:\S+\s){N})(span)` finds it: after exactly N
/// words, each followed by one whitespace character. Span 2's index shifts by the two marker words
/// when span 1 precedes it. A span not found there is left unmarked, as the regex leaves it.
pub fn wsc_mark(text: &str, span1: &str, index1: usize, span2: &str, index2: usize) -> String {
    let text = mark_span(text, span1, index1, '*');
    // Saturating: the indices are a file's, any integer.
    let index2 = index2.saturating_add(if index1 < index2 { 2 } else { 0 });
    mark_span(&text, span2, index2, '#')
}

fn mark_span(text: &str, span: &str, words: usize, mark: char) -> String {
    let mut pos = 0;
    let bytes_of = |s: &str| s.chars().next().map_or(0, char::len_utf8);
    for _ in 0..words {
        let start = pos;
        while let Some(c) = text[pos..].chars().next().filter(|c| !c.is_whitespace()) {
            pos += c.len_utf8();
        }
        if pos == start {
            return text.to_string();
        }
        match text[pos..].chars().next() {
            Some(c) if c.is_whitespace() => pos += bytes_of(&text[pos..]),
            _ => return text.to_string(),
        }
    }
    if span.is_empty() || !text[pos..].starts_with(span) {
        return text.to_string();
    }
    let end = pos + span.len();
    format!("{}{mark} {} {mark}{}", &text[..pos], span, &text[end..])
}

/// Typed access to a row's columns with errors that name file, row and column.
struct Fields<'a> {
    row: &'a Row,
    at: RowSource<'a>,
    task: Task,
}

impl Fields<'_> {
    fn get(&self, name: &str) -> Result<&Value> {
        self.row.get(name).ok_or_else(|| {
            let found: Vec<&str> = self.row.keys().map(String::as_str).collect();
            self.at.err(
                name,
                format!(
                    "missing column for task {} (columns found: {}; expected: {})",
                    self.task,
                    found.join(", "),
                    self.task.required_columns().join(", ")
                ),
            )
        })
    }

    fn text(&self, name: &str) -> Result<String> {
        match self.get(name)? {
            Value::String(s) => Ok(s.clone()),
            other => Err(self
                .at
                .err(name, format!("expected a string, found {}", brief(other)))),
        }
    }

    fn number(&self, name: &str) -> Result<f64> {
        match self.get(name)? {
            Value::Number(n) => n
                .as_f64()
                .ok_or_else(|| self.at.err(name, "number out of range")),
            Value::String(s) => s.trim().parse::<f64>().map_err(|_| {
                self.at
                    .err(name, format!("expected a number, found \"{s}\""))
            }),
            other => Err(self
                .at
                .err(name, format!("expected a number, found {}", brief(other)))),
        }
    }

    fn index(&self, name: &str) -> Result<usize> {
        let v = self.get(name)?;
        v.as_u64().map(|u| u as usize).ok_or_else(|| {
            self.at.err(
                name,
                format!("expected a non-negative integer, found {}", brief(v)),
            )
        })
    }

    fn strings(&self, name: &str) -> Result<Vec<String>> {
        let v = self.get(name)?;
        let items = match v {
            Value::Array(items) => items,
            Value::Null => return Ok(vec![]),
            other => {
                return Err(self.at.err(
                    name,
                    format!("expected a list of strings, found {}", brief(other)),
                ));
            }
        };
        items
            .iter()
            .map(|item| {
                item.as_str().map(str::to_string).ok_or_else(|| {
                    self.at.err(
                        name,
                        format!(
                            "expected a list of strings, found an element {}",
                            brief(item)
                        ),
                    )
                })
            })
            .collect()
    }

    /// The `label` column as the class-index string DePT trains on ("0", "1", ...). Accepts an
    /// integer, a boolean (SuperGLUE JSONL), a numeric string, or a label name (GLUE TSV,
    /// SuperGLUE JSONL). -1 marks an unlabelled test split and is refused.
    fn class_target(&self) -> Result<String> {
        debug_assert_eq!(self.task.kind(), TaskKind::Classification);
        let n = self.task.num_classes().unwrap_or(2);
        let names = self.task.label_names().unwrap_or(&[]);
        let v = self.get("label")?;
        let index: i64 = match v {
            Value::Bool(b) => i64::from(*b),
            Value::Number(num) => match num.as_i64() {
                Some(i) => i,
                None => match num.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => f as i64,
                    _ => return Err(self.label_err(&v.to_string(), n, names)),
                },
            },
            Value::String(s) => {
                let t = s.trim();
                if let Ok(i) = t.parse::<i64>() {
                    i
                } else if let Some(i) = names.iter().position(|name| name.eq_ignore_ascii_case(t)) {
                    i as i64
                } else {
                    return Err(self.label_err(&format!("\"{s}\""), n, names));
                }
            }
            other => return Err(self.label_err(&brief(other), n, names)),
        };
        if index == -1 {
            return Err(self.at.err(
                "label",
                "is -1: this split is unlabelled (GLUE/SuperGLUE test sets have no labels); use train or validation",
            ));
        }
        if index < 0 || index as usize >= n {
            return Err(self.label_err(&index.to_string(), n, names));
        }
        Ok(index.to_string())
    }

    fn label_err(&self, found: &str, n: usize, names: &[&str]) -> Error {
        self.at.err(
            "label",
            format!(
                "label {found} out of range for task {}: expected an integer in 0..={} or one of {}",
                self.task,
                n - 1,
                names.join(", ")
            ),
        )
    }
}

/// A short rendering of a JSON value for error messages.
fn brief(v: &Value) -> String {
    let kind = match v {
        Value::Null => return "null".into(),
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    let mut s = v.to_string();
    if s.len() > 60 {
        let mut cut = 57;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    format!("{kind} {s}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Row {
        v.as_object().unwrap().clone()
    }
    fn at() -> RowSource<'static> {
        RowSource {
            path: Path::new("t.jsonl"),
            row: 0,
        }
    }

    fn one(task: Task, v: Value) -> Example {
        let mut ex = format_row(task, &row(v), Purpose::Train, at()).unwrap();
        assert_eq!(ex.len(), 1);
        ex.remove(0)
    }

    #[test]
    fn glue_templates() {
        let ex = one(
            Task::Rte,
            json!({"sentence1": "A b.", "sentence2": "C d.", "label": 1, "idx": 0}),
        );
        assert_eq!(ex.source, "sentence1: A b. sentence2: C d.");
        assert_eq!(ex.target, "1");
        assert_eq!(ex.answers, vec!["1"]);
        let ex = one(
            Task::Mnli,
            json!({"premise": "P", "hypothesis": "H", "label": "contradiction"}),
        );
        assert_eq!(
            (ex.source.as_str(), ex.target.as_str()),
            ("premise: P hypothesis: H", "2")
        );
        let ex = one(
            Task::Wic,
            json!({"sentence1": "x", "sentence2": "y", "word": "w", "label": true}),
        );
        assert_eq!(ex.source, "sentence1: x sentence2: y word: w");
        assert_eq!(ex.target, "1");
    }

    #[test]
    fn stsb_rounding() {
        assert_eq!(stsb_target(3.8), "3.8");
        assert_eq!(stsb_target(5.0), "5.0");
        assert_eq!(stsb_target(0.0), "0.0");
        assert_eq!(stsb_target(2.75), "2.8");
        assert_eq!(stsb_target(2.25), "2.2"); // ties to even, like numpy
        assert_eq!(stsb_target(3.6670000553131104), "3.7");
        assert_eq!(stsb_target(1.05), "1.0"); // f32(1.05) < 1.05
    }

    #[test]
    fn wsc_marks() {
        let s = wsc_mark("This is a test sentence .", "test", 3, "This", 0);
        assert_eq!(s, "# This # is a * test * sentence .");
        let s = wsc_mark(
            "Mark told Pete many lies about himself.",
            "Mark",
            0,
            "himself",
            6,
        );
        assert_eq!(s, "* Mark * told Pete many lies about # himself #.");
        // A span that is not where the index says stays unmarked; span 2's index still shifts
        // by two (DePT shifts whether or not span 1 was found).
        assert_eq!(wsc_mark("a b c", "z", 1, "c", 2), "a b c");
        assert_eq!(wsc_mark("a b c", "z", 3, "c", 2), "a b # c #");
    }

    #[test]
    fn record_highlights() {
        let p = "Main text.\n@highlight\nFirst point\n@highlight\nSecond point";
        assert_eq!(record_passage(p), "Main text. First point. Second point");
        let r = row(
            json!({"passage": p, "query": "Q @placeholder", "entities": ["A", "B"], "answers": ["A", "B"]}),
        );
        let train = format_row(Task::Record, &r, Purpose::Train, at()).unwrap();
        assert_eq!(train.len(), 2);
        assert_eq!(train[1].target, "B");
        assert_eq!(
            train[0].source,
            "record query: Q @placeholder entities: A, B passage: Main text. First point. Second point"
        );
        let eval = format_row(Task::Record, &r, Purpose::Eval, at()).unwrap();
        assert_eq!(eval.len(), 1);
        assert_eq!(eval[0].answers, vec!["A", "B"]);
    }

    #[test]
    fn squad_padding() {
        assert_eq!(pad_punctuation("Hello, world!"), "Hello , world ! ");
        assert_eq!(pad_punctuation("it's 3.5"), "it ' s 3 . 5");
        // Marks stay attached; enclosed letters are symbols to DePT's regex.
        assert_eq!(
            pad_punctuation("Re\u{301}sume\u{301} \u{924}\u{93f}"),
            "Re\u{301}sume\u{301} \u{924}\u{93f}"
        );
        assert_eq!(pad_punctuation("\u{24b6}b"), " \u{24b6} b");
        let ex = one(
            Task::Squad,
            json!({"id": "1", "title": "t", "context": "In 1990, X.", "question": "When?", "answers": {"text": ["1990", "in 1990"], "answer_start": [3, 0]}}),
        );
        assert_eq!(ex.source, "question: When ?  context: In 1990 , X . ");
        assert_eq!(ex.target, "1990");
        assert_eq!(ex.answers, vec!["1990", "in 1990"]);
    }

    #[test]
    fn multirc_markup_and_group() {
        let ex = one(
            Task::MultiRc,
            json!({"paragraph": "<b>Sent 1: </b>A.<br>B.", "question": "Q?", "answer": "Yes", "idx": {"paragraph": 2, "question": 5, "answer": 0}, "label": 0}),
        );
        assert_eq!(
            ex.source,
            "question: Q? answer: Yes paragraph: Sent 1: A. B."
        );
        assert_eq!(ex.group, Some((2 << 32) | 5));
    }

    #[test]
    fn bad_rows() {
        let e = format_row(
            Task::Cb,
            &row(json!({"premise": "p", "hypothesis": "h", "label": 3})),
            Purpose::Train,
            at(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("t.jsonl") && e.contains("`label`") && e.contains("0..=2"),
            "{e}"
        );
        let e = format_row(
            Task::Rte,
            &row(json!({"sentence1": "p", "label": 0})),
            Purpose::Train,
            at(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`sentence2`") && e.contains("columns found: label, sentence1"),
            "{e}"
        );
        let e = format_row(
            Task::Rte,
            &row(json!({"sentence1": "p", "sentence2": "q", "label": -1})),
            Purpose::Train,
            at(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unlabelled"), "{e}");
        let e = format_row(
            Task::Rte,
            &row(json!({"sentence1": 5, "sentence2": "q", "label": 0})),
            Purpose::Train,
            at(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("expected a string"), "{e}");
    }
}
