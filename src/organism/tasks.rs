//! Toy tasks in GLUE's shapes over the synthetic [language](super::language), with labels computed
//! from meanings, plus auxiliary tasks for supervised mixing during pretraining.
//!
//! `toy-sst2`, `toy-mnli`, `toy-qqp` and `toy-stsb` have the columns and DePT's text-to-text format
//! of their GLUE namesakes (METHOD.md §5), so the project's readers and formatter handle them
//! unchanged. `aux-subject` and `aux-negation` are different on purpose: a model pretrained with
//! them mixed in has never been trained on the four evaluation tasks, so what prompt tuning
//! achieves on those is the prompt's doing.
//!
//! Generation is seeded and deterministic. Labels are balanced by construction (example `i` is
//! generated for class `i mod k`, then the split is shuffled). Splits come from separate random
//! streams and no source text appears twice across (or within) the splits.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::language::{Clause, Conj, Predicate, Sentence, Style};
use crate::data::format::{Example, stsb_target};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// The toy tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ToyTask {
    /// `sentence` → "0" negative / "1" positive.
    Sst2,
    /// `premise`, `hypothesis` → "0" entailment / "1" neutral / "2" contradiction.
    Mnli,
    /// `question1`, `question2` → "1" same meaning / "0" not.
    Qqp,
    /// `sentence1`, `sentence2` → similarity 0.0–5.0 from meaning overlap.
    Stsb,
    /// `sentence` → its logical subject (the agent, also in the passive): "anna", "the cat".
    AuxSubject,
    /// `sentence` → "1" if it is negated ("not", "never"), else "0": digits, so that pretraining
    /// teaches the decoder to answer with the label digits DePT's format uses.
    AuxNegation,
    /// `sentence` (one clause of any family with two poles) → "1" if it asserts the family's
    /// first pole, else "0": the composition of negation with a pole ("is not small" = big,
    /// "does not hate" = likes). For sentiment-bearing families the first pole is the positive
    /// one, so this is where the model meets polarity; `toy-sst2` asks for the sentiment of
    /// one- *and two-clause* sentences (with "and"/"but" and neutral clauses), without a task
    /// prefix, in another format.
    AuxTruth,
    /// `sentence` (one clause of any family with two poles) → "1" if its predicate word is from
    /// the family's first pole, else "0", whatever the negation ("is not small" → "0"): the
    /// lexical half of `AuxTruth`, a lookup with a full learning signal. Without it the
    /// composition is learned very slowly: with negation in a third of the clauses, the pole
    /// word alone predicts truth only 65 % of the time, the XOR-like remainder not at all.
    AuxPole,
}

/// A row's label as the HF data set would store it.
#[derive(Clone, Debug, PartialEq)]
pub enum Label {
    /// Class id (int64 in parquet).
    Class(i64),
    /// STS-B score (float32 in parquet).
    Score(f32),
    /// Free text (auxiliary tasks).
    Text(String),
}

/// One generated row: HF-style text columns and the label.
#[derive(Clone, Debug, PartialEq)]
pub struct ToyRow {
    pub task: ToyTask,
    /// `(column, text)` in the HF column order, e.g. `[("premise", …), ("hypothesis", …)]`.
    pub columns: Vec<(&'static str, String)>,
    pub label: Label,
}

impl ToyRow {
    /// DePT's text-to-text form: `column: value` pieces joined by spaces (auxiliary tasks put the
    /// task name first), target the label as text (STS-B rounded as DePT does).
    pub fn example(&self) -> Example {
        let mut pieces: Vec<String> = Vec::new();
        if self.task.glue().is_none() {
            pieces.push(self.task.name().to_string());
        }
        pieces.extend(self.columns.iter().map(|(c, v)| format!("{c}: {v}")));
        let target = match &self.label {
            Label::Class(c) => c.to_string(),
            Label::Score(s) => stsb_target(*s as f64),
            Label::Text(t) => t.clone(),
        };
        Example {
            source: pieces.join(" "),
            answers: vec![target.clone()],
            target,
            group: None,
        }
    }
}

impl ToyTask {
    pub const ALL: [ToyTask; 8] = [
        ToyTask::Sst2,
        ToyTask::Mnli,
        ToyTask::Qqp,
        ToyTask::Stsb,
        ToyTask::AuxSubject,
        ToyTask::AuxNegation,
        ToyTask::AuxTruth,
        ToyTask::AuxPole,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ToyTask::Sst2 => "toy-sst2",
            ToyTask::Mnli => "toy-mnli",
            ToyTask::Qqp => "toy-qqp",
            ToyTask::Stsb => "toy-stsb",
            ToyTask::AuxSubject => "aux-subject",
            ToyTask::AuxNegation => "aux-negation",
            ToyTask::AuxTruth => "aux-truth",
            ToyTask::AuxPole => "aux-pole",
        }
    }

    pub fn parse(name: &str) -> Option<ToyTask> {
        ToyTask::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The GLUE task with the same columns and format, if any.
    pub fn glue(self) -> Option<crate::data::Task> {
        use crate::data::Task;
        match self {
            ToyTask::Sst2 => Some(Task::Sst2),
            ToyTask::Mnli => Some(Task::Mnli),
            ToyTask::Qqp => Some(Task::Qqp),
            ToyTask::Stsb => Some(Task::Stsb),
            ToyTask::AuxSubject | ToyTask::AuxNegation | ToyTask::AuxTruth | ToyTask::AuxPole => {
                None
            }
        }
    }

    /// How many strata labels are balanced over: classes, or for STS-B the number of meaning
    /// fields changed between the two sentences (0–5), which spreads scores over the range.
    fn strata(self) -> usize {
        match self {
            ToyTask::Sst2
            | ToyTask::Qqp
            | ToyTask::AuxNegation
            | ToyTask::AuxTruth
            | ToyTask::AuxPole => 2,
            ToyTask::Mnli => 3,
            ToyTask::Stsb => 6,
            ToyTask::AuxSubject => 1,
        }
    }

    fn index(self) -> u64 {
        ToyTask::ALL.iter().position(|&t| t == self).unwrap() as u64
    }
}

/// Entailment relation of a hypothesis clause to premise clauses: 0 entailment, 1 neutral,
/// 2 contradiction (MNLI's ids). A premise clause about the same topic (same subject, predicate
/// family and object, with a compatible colour) decides: opposite truth contradicts; same truth
/// entails unless the hypothesis is intense and the premise is not. No such clause: neutral.
pub fn relation(premise: &[Clause], hypothesis: &Clause) -> i64 {
    for c in premise {
        if c.topic() != hypothesis.topic() || !colour_within(c, hypothesis) {
            continue;
        }
        if c.truth() != hypothesis.truth() {
            return 2;
        }
        return if hypothesis.intense && !c.intense {
            1
        } else {
            0
        };
    }
    1
}

/// Whether `h`'s object is `p`'s object: same colour, or `h` names no colour.
fn colour_within(p: &Clause, h: &Clause) -> bool {
    match (p.predicate, h.predicate) {
        (Predicate::Verb { colour: a, .. }, Predicate::Verb { colour: b, .. }) => {
            b.is_none() || a == b
        }
        _ => true,
    }
}

/// Whether two clauses mean the same: same topic, colour, truth and intensity.
pub fn same_meaning(a: &Clause, b: &Clause) -> bool {
    a.topic() == b.topic()
        && colour(a) == colour(b)
        && a.truth() == b.truth()
        && a.intense == b.intense
}

fn colour(c: &Clause) -> Option<u8> {
    match c.predicate {
        Predicate::Verb { colour, .. } => colour,
        Predicate::Adjective { .. } => None,
    }
}

/// Meaning overlap on a 0–5 scale: subject 1.5, predicate family 1.5, object (with colour; two
/// adjective clauses agree here) 1.0, truth 0.5, intensity 0.5. Paraphrases score 5.0.
pub fn similarity(a: &Clause, b: &Clause) -> f32 {
    let family = |c: &Clause| match c.predicate {
        Predicate::Verb { family, .. } => (0, family),
        Predicate::Adjective { family } => (1, family),
    };
    let object = |c: &Clause| match c.predicate {
        Predicate::Verb { object, colour, .. } => Some((object, colour)),
        Predicate::Adjective { .. } => None,
    };
    let mut s = 0.0;
    s += if a.subject == b.subject { 1.5 } else { 0.0 };
    s += if family(a) == family(b) { 1.5 } else { 0.0 };
    s += if object(a) == object(b) { 1.0 } else { 0.0 };
    s += if a.truth() == b.truth() { 0.5 } else { 0.0 };
    s += if a.intense == b.intense { 0.5 } else { 0.0 };
    s
}

/// Whether a clause is well formed (what [`Clause::random`] guarantees), after edits.
fn valid(c: &Clause) -> bool {
    let one_pole_ok = c.has_antonym() || c.positive;
    let verb_ok = match c.predicate {
        Predicate::Verb { object, colour, .. } => {
            c.subject.is_agent() && object != c.subject && !(object.is_name() && colour.is_some())
        }
        Predicate::Adjective { .. } => true,
    };
    one_pole_ok && verb_ok && !(c.intense && c.negated)
}

fn coin(rng: &mut Rng) -> bool {
    rng.below(2) == 1
}

fn styles(rng: &mut Rng) -> [Style; 2] {
    [Style::random(rng), Style::random(rng)]
}

/// Flips what a clause asserts, by negation or (where there is one) the antonym.
fn flip_truth(c: &mut Clause, rng: &mut Rng) {
    if c.has_antonym() && coin(rng) {
        c.positive = !c.positive;
    } else {
        c.negated = !c.negated;
    }
    if c.negated {
        c.intense = false;
    }
}

/// Removes the object's colour: the hypothesis then names a less specific object.
fn drop_colour(c: &mut Clause) {
    if let Predicate::Verb { colour, .. } = &mut c.predicate {
        *colour = None;
    }
}

/// A clause that differs from `a` in one random aspect (a hard non-paraphrase). May be invalid
/// or, rarely, still mean the same; callers check.
fn perturb(a: &Clause, rng: &mut Rng) -> Clause {
    let mut b = *a;
    match rng.below(5) {
        0 => {
            // Swap the roles: "anna likes ben" vs "ben likes anna".
            if let Predicate::Verb { object, .. } = &mut b.predicate {
                std::mem::swap(object, &mut b.subject);
                drop_colour(&mut b);
            } else {
                b.subject = Clause::random(rng, None).subject;
            }
        }
        1 => flip_truth(&mut b, rng),
        2 => b.subject = Clause::random(rng, None).subject,
        3 => {
            let other = Clause::random(rng, None);
            if std::mem::discriminant(&other.predicate) == std::mem::discriminant(&a.predicate) {
                b.predicate = other.predicate;
                b.positive = other.positive || !b.has_antonym();
            }
        }
        _ => {
            b.intense = !b.intense;
            if b.intense && b.negated {
                b = b.dual().unwrap_or(b);
            }
        }
    }
    b
}

/// One candidate row of `task` for stratum `want`; `None` when the attempt missed (the caller
/// draws again from the same stream).
fn candidate(task: ToyTask, want: usize, rng: &mut Rng) -> Option<ToyRow> {
    let row = |columns: Vec<(&'static str, String)>, label| {
        Some(ToyRow {
            task,
            columns,
            label,
        })
    };
    match task {
        ToyTask::Sst2 => {
            let positive = want == 1;
            let mut main = Clause::random(rng, Some(true));
            if (main.sentiment() > 0) != positive {
                main.positive = !main.positive;
            }
            let r = rng.next_f64();
            let sentence = if r < 0.6 {
                Sentence::single(main)
            } else if r < 0.8 {
                Sentence {
                    clauses: vec![main, Clause::random(rng, Some(false))],
                    conj: Conj::And,
                }
            } else {
                let mut first = Clause::random(rng, Some(true));
                if (first.sentiment() > 0) == positive {
                    first.positive = !first.positive;
                }
                Sentence {
                    clauses: vec![first, main],
                    conj: Conj::But,
                }
            };
            let label = i64::from(sentence.sentiment() > 0);
            let text = sentence.realise(&styles(rng), coin(rng));
            row(vec![("sentence", text)], Label::Class(label))
        }
        ToyTask::Mnli => {
            let mut premise = vec![Clause::random(rng, None)];
            if coin(rng) {
                let second = Clause::random(rng, None);
                if second.topic() == premise[0].topic() {
                    return None;
                }
                premise.push(second);
            }
            let p = premise[rng.below(premise.len() as u64) as usize];
            let mut h = p;
            match want {
                0 => {
                    if coin(rng) {
                        h = h.dual().unwrap_or(h);
                    }
                    if coin(rng) {
                        h.intense = false;
                    }
                }
                2 => flip_truth(&mut h, rng),
                _ => {
                    if coin(rng) && !p.intense {
                        // Same topic and truth, but stronger: not entailed.
                        h = if p.negated { p.dual()? } else { p };
                        h.intense = true;
                    } else {
                        // Something else about someone the premise mentions.
                        h = Clause::random(rng, None);
                        h.subject = p.subject;
                    }
                }
            }
            if coin(rng) {
                drop_colour(&mut h);
            }
            let label = relation(&premise, &h);
            if label != want as i64 || !valid(&h) {
                return None;
            }
            let premise = Sentence {
                clauses: premise,
                conj: Conj::And,
            };
            let premise_text = premise.realise(&styles(rng), coin(rng));
            let hypothesis = Sentence::single(h).realise(&styles(rng), false);
            row(
                vec![("premise", premise_text), ("hypothesis", hypothesis)],
                Label::Class(label),
            )
        }
        ToyTask::Qqp => {
            let a = Clause::random(rng, None);
            let b = if want == 1 {
                if coin(rng) { a.dual().unwrap_or(a) } else { a }
            } else {
                perturb(&a, rng)
            };
            let label = i64::from(same_meaning(&a, &b));
            let (q1, q2) = (
                a.question(Style::random(rng)),
                b.question(Style::random(rng)),
            );
            if label != want as i64 || !valid(&b) || q1 == q2 {
                return None;
            }
            row(
                vec![("question1", q1), ("question2", q2)],
                Label::Class(label),
            )
        }
        ToyTask::Stsb => {
            let a = Clause::random(rng, None);
            let mut b = a;
            // Change `want` distinct aspects: subject, family, object, truth, intensity.
            for aspect in rng.sample_distinct(5, want) {
                match aspect {
                    0 => b.subject = Clause::random(rng, None).subject,
                    1 => {
                        let other = Clause::random(rng, None);
                        match (&mut b.predicate, other.predicate) {
                            (Predicate::Verb { family, .. }, Predicate::Verb { family: f, .. })
                            | (
                                Predicate::Adjective { family },
                                Predicate::Adjective { family: f },
                            ) => {
                                *family = f;
                            }
                            _ => return None,
                        }
                        b.positive = b.positive || !b.has_antonym();
                    }
                    2 => match (&mut b.predicate, Clause::random(rng, None).predicate) {
                        (
                            Predicate::Verb { object, colour, .. },
                            Predicate::Verb {
                                object: o,
                                colour: c,
                                ..
                            },
                        ) => (*object, *colour) = (o, c),
                        _ => return None,
                    },
                    3 => flip_truth(&mut b, rng),
                    _ => {
                        b.intense = !b.intense;
                        if b.intense && b.negated {
                            b = b.dual()?;
                        }
                    }
                }
            }
            let score = similarity(&a, &b);
            // A changed aspect must change the meaning (a new family may be the old one).
            if !valid(&b) || (want > 0 && score == 5.0) {
                return None;
            }
            let [sa, sb] = styles(rng);
            let s1 = Sentence::single(a).realise(&[sa], false);
            let s2 = Sentence::single(b).realise(&[sb], false);
            if s1 == s2 {
                return None;
            }
            row(
                vec![("sentence1", s1), ("sentence2", s2)],
                Label::Score(score),
            )
        }
        ToyTask::AuxSubject => {
            let c = Clause::random(rng, None);
            let text = Sentence::single(c).realise(&[Style::random(rng)], false);
            row(
                vec![("sentence", text)],
                Label::Text(c.subject.phrase(None)),
            )
        }
        ToyTask::AuxTruth => {
            let mut c = Clause::random(rng, None);
            if !c.has_antonym() {
                return None;
            }
            if c.truth() != (want == 1) {
                c.positive = !c.positive;
            }
            let text = Sentence::single(c).realise(&[Style::random(rng)], false);
            let label = if c.truth() { "1" } else { "0" };
            row(vec![("sentence", text)], Label::Text(label.into()))
        }
        ToyTask::AuxPole => {
            let mut c = Clause::random(rng, None);
            if !c.has_antonym() {
                return None;
            }
            c.positive = want == 1;
            let text = Sentence::single(c).realise(&[Style::random(rng)], false);
            row(vec![("sentence", text)], Label::Text(want.to_string()))
        }
        ToyTask::AuxNegation => {
            let mut c = Clause::random(rng, None);
            c.negated = want == 1;
            if c.negated {
                c.intense = false;
            }
            let text = Sentence::single(c).realise(&[Style::random(rng)], false);
            let label = if c.negated { "1" } else { "0" };
            row(vec![("sentence", text)], Label::Text(label.into()))
        }
    }
}

/// The random stream for `(task, seed, stream)`: distinct streams never share a state.
fn stream(task: ToyTask, seed: u64, stream: u64) -> Rng {
    let mut mix = Rng::new(seed);
    let salt = mix.next_u64() ^ ((task.index() << 8) | stream).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Rng::new(salt)
}

/// `n` rows from `rng`, stratum `i mod k` for row `i`, skipping sources in `seen` (and adding
/// the new ones), then shuffled so the strata do not cycle.
fn rows_from(task: ToyTask, n: usize, rng: &mut Rng, seen: &mut HashSet<String>) -> Vec<ToyRow> {
    const MAX_TRIES: usize = 100_000;
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let want = i % task.strata();
        let mut tries = 0;
        let row = loop {
            tries += 1;
            assert!(
                tries <= MAX_TRIES,
                "{}: cannot find a new example of stratum {want} after {MAX_TRIES} draws; the language is too small for {n} rows",
                task.name()
            );
            if let Some(r) = candidate(task, want, rng)
                && seen.insert(r.example().source)
            {
                break r;
            }
        };
        rows.push(row);
    }
    rng.shuffle(&mut rows);
    rows
}

/// `n` distinct rows of `task` for `seed`.
pub fn generate_rows(task: ToyTask, n: usize, seed: u64) -> Vec<ToyRow> {
    rows_from(task, n, &mut stream(task, seed, 0), &mut HashSet::new())
}

/// `n` distinct examples of `task` for `seed`, in DePT's text-to-text format.
pub fn generate(task: ToyTask, n: usize, seed: u64) -> Vec<Example> {
    generate_rows(task, n, seed)
        .iter()
        .map(ToyRow::example)
        .collect()
}

/// Split sizes of the built-in toy tasks (`ept train --task toy-sst2`): train,
/// validation, test.
pub const BUILTIN_SIZES: [usize; 3] = [2000, 200, 500];
/// The data seed of the built-in toy tasks: the task is fixed; `--seed` varies only training.
pub const BUILTIN_SEED: u64 = 0;

/// The built-in splits of `task` in DePT's text-to-text format (train, validation, test).
pub fn builtin_splits(task: ToyTask) -> [Vec<Example>; 3] {
    let [a, b, c] = BUILTIN_SIZES;
    let s = generate_splits(task, a, b, c, BUILTIN_SEED);
    let ex = |rows: &[ToyRow]| rows.iter().map(ToyRow::example).collect();
    [ex(&s.train), ex(&s.validation), ex(&s.test)]
}

/// The task whose metrics apply and the three splits of a built-in toy task,
/// when `name` names one; an auxiliary (pretraining) task is an error.
pub fn builtin_task(name: &str) -> Result<Option<(crate::data::Task, [Vec<Example>; 3])>> {
    let Some(toy) = ToyTask::parse(name) else {
        return Ok(None);
    };
    let task = toy.glue().ok_or_else(|| {
        Error::invalid(format!(
            "task `{name}` is one the organism was pretrained on; prompt tuning and evaluation take toy-sst2, toy-mnli, toy-qqp or toy-stsb"
        ))
    })?;
    Ok(Some((task, builtin_splits(toy))))
}

/// One split of [`builtin_task`].
pub fn builtin_split(
    name: &str,
    split: crate::data::splits::Split,
) -> Result<Option<(crate::data::Task, Vec<Example>)>> {
    use crate::data::splits::Split;
    Ok(
        builtin_task(name)?.map(|(task, [train, validation, test])| {
            let examples = match split {
                Split::Train => train,
                Split::Validation => validation,
                Split::Test => test,
            };
            (task, examples)
        }),
    )
}

/// The three splits of a toy task.
#[derive(Clone, Debug, PartialEq)]
pub struct Splits {
    pub train: Vec<ToyRow>,
    pub validation: Vec<ToyRow>,
    pub test: Vec<ToyRow>,
}

impl Splits {
    /// `(name, rows)` for each split, in the order train, validation, test.
    pub fn named(&self) -> [(&'static str, &[ToyRow]); 3] {
        [
            ("train", &self.train),
            ("validation", &self.validation),
            ("test", &self.test),
        ]
    }
}

/// Train, validation and test sets of the given sizes, each from its own stream, with no source
/// repeated anywhere. Test and validation are drawn first, so they do not change when only the
/// training size does.
pub fn generate_splits(
    task: ToyTask,
    train: usize,
    validation: usize,
    test: usize,
    seed: u64,
) -> Splits {
    let mut seen = HashSet::new();
    let test = rows_from(task, test, &mut stream(task, seed, 3), &mut seen);
    let validation = rows_from(task, validation, &mut stream(task, seed, 2), &mut seen);
    let train = rows_from(task, train, &mut stream(task, seed, 1), &mut seen);
    Splits {
        train,
        validation,
        test,
    }
}

/// Writes `{"source": …, "target": …}` lines (the `--train-file` format).
pub fn write_jsonl(path: &Path, examples: &[Example]) -> Result<()> {
    let mut out = String::new();
    for e in examples {
        let line = serde_json::json!({ "source": e.source, "target": e.target });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    crate::error::write_atomic(path, out.as_bytes())
}

/// The commit hash of the written hub snapshot: fixed, so paths are stable across runs.
pub const SNAPSHOT: &str = "0e970e970e970e970e970e970e970e970e970e97";
/// The data set's repository folder in a hub cache.
pub const REPO_FOLDER: &str = "datasets--ept--toy";

/// Writes the splits in the Hugging Face hub cache layout,
/// `root/datasets--ept--toy/snapshots/<SNAPSHOT>/<task>/<split>-00000-of-00001.parquet`, with
/// `refs/main` naming the snapshot. Columns are the GLUE data set's: the text columns (string),
/// `label` (int64; float32 for STS-B; string for the auxiliary tasks) and `idx` (int32). Returns
/// the task's folder, which the project's readers take as a data folder.
pub fn write_hub_parquet(root: &Path, task: ToyTask, splits: &Splits) -> Result<PathBuf> {
    let repo = root.join(REPO_FOLDER);
    let dir = repo.join("snapshots").join(SNAPSHOT).join(task.name());
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    for (split, rows) in splits.named() {
        let path = dir.join(format!("{split}-00000-of-00001.parquet"));
        write_parquet(&path, rows)?;
    }
    crate::error::write_atomic(repo.join("refs").join("main"), SNAPSHOT.as_bytes())?;
    Ok(dir)
}

fn write_parquet(path: &Path, rows: &[ToyRow]) -> Result<()> {
    let bad = |e: &dyn std::fmt::Display| Error::data(path, format!("cannot write parquet: {e}"));
    let Some(first) = rows.first() else {
        return Err(Error::data(path, "cannot write an empty split"));
    };
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (c, (name, _)) in first.columns.iter().enumerate() {
        fields.push(Field::new(*name, DataType::Utf8, false));
        let values: Vec<&str> = rows.iter().map(|r| r.columns[c].1.as_str()).collect();
        arrays.push(Arc::new(StringArray::from(values)));
    }
    let (label_type, labels): (DataType, ArrayRef) = match &first.label {
        Label::Class(_) => (
            DataType::Int64,
            Arc::new(Int64Array::from_iter_values(rows.iter().map(
                |r| match r.label {
                    Label::Class(c) => c,
                    _ => unreachable!("one label kind per task"),
                },
            ))),
        ),
        Label::Score(_) => (
            DataType::Float32,
            Arc::new(Float32Array::from_iter_values(rows.iter().map(
                |r| match r.label {
                    Label::Score(s) => s,
                    _ => unreachable!("one label kind per task"),
                },
            ))),
        ),
        Label::Text(_) => (
            DataType::Utf8,
            Arc::new(StringArray::from_iter_values(rows.iter().map(
                |r| match &r.label {
                    Label::Text(t) => t.as_str(),
                    _ => unreachable!("one label kind per task"),
                },
            ))),
        ),
    };
    fields.push(Field::new("label", label_type, false));
    arrays.push(labels);
    fields.push(Field::new("idx", DataType::Int32, false));
    arrays.push(Arc::new(Int32Array::from_iter_values(0..rows.len() as i32)));
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| bad(&e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, schema, Some(props)).map_err(|e| bad(&e))?;
    writer.write(&batch).map_err(|e| bad(&e))?;
    writer.close().map_err(|e| bad(&e))?;
    crate::error::write_atomic(path, &bytes)
}
