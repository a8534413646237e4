//! Evaluation metrics, computed the way DePT computes them (its `src/metrics.py`, which wraps
//! scikit-learn, SciPy and T5's SQuAD code), so our numbers are comparable with its tables.
//!
//! All scores are percentages (×100). Predictions and targets are compared as strings after
//! stripping surrounding whitespace, exactly like DePT's post-processor. Reference values come
//! from scikit-learn / SciPy via `tests/fixtures/metrics.json`.

use std::collections::{BTreeMap, HashMap};

use crate::data::format::Example;
use crate::data::tasks::Task;
use crate::error::{Error, Result};

/// Declared with the tasks (each [`Task`] lists its metrics), so that this module reads the
/// data layer and never the other way round.
pub use crate::data::tasks::Metric;

/// Scores `predictions` (decoded model outputs, one per example) for `task`. Returns every metric
/// of `task.metrics()` under its key. Errors when the lengths differ or nothing is given.
pub fn score(
    task: Task,
    predictions: &[String],
    examples: &[Example],
) -> Result<BTreeMap<String, f64>> {
    if predictions.len() != examples.len() {
        return Err(Error::invalid(format!(
            "{task}: {} predictions for {} examples",
            predictions.len(),
            examples.len()
        )));
    }
    if examples.is_empty() {
        return Err(Error::invalid(format!("{task}: no examples to score")));
    }
    let preds: Vec<&str> = predictions.iter().map(|p| p.trim()).collect();
    let targets: Vec<&str> = examples.iter().map(|e| e.target.trim()).collect();
    let mut out = BTreeMap::new();
    for &metric in task.metrics() {
        let value = match metric {
            Metric::Accuracy => accuracy(&preds, &targets),
            Metric::F1 => f1_with_invalid(&preds, &targets)?,
            Metric::MacroF1 => {
                let labels = task.labels().unwrap_or(&[]);
                macro_f1(&preds, &targets, labels)
            }
            Metric::Matthews => matthews_corrcoef(&preds, &targets),
            Metric::Pearson | Metric::Spearman => {
                let x: Vec<f64> = targets.iter().map(|t| string_to_float(t)).collect();
                let y: Vec<f64> = preds.iter().map(|p| string_to_float(p)).collect();
                if metric == Metric::Pearson {
                    pearson(&x, &y)
                } else {
                    spearman(&x, &y)
                }
            }
            Metric::GroupExactMatch => {
                let groups: Vec<u64> = examples
                    .iter()
                    .enumerate()
                    .map(|(i, e)| e.group.unwrap_or(u64::MAX - i as u64))
                    .collect();
                group_exact_match(&preds, &targets, &groups)
            }
            Metric::SquadEm | Metric::SquadF1 => {
                let answers: Vec<Vec<String>> = examples
                    .iter()
                    .map(|e| {
                        if e.answers.is_empty() {
                            vec![e.target.clone()]
                        } else {
                            e.answers.clone()
                        }
                    })
                    .collect();
                let (em, f1) = squad_em_f1(&preds, &answers);
                if metric == Metric::SquadEm { em } else { f1 }
            }
        };
        out.insert(metric.key().to_string(), value);
    }
    Ok(out)
}

/// The value of `task`'s selection metric in a map returned by [`score`] (what picks the best
/// checkpoint on validation).
pub fn selection_score(task: Task, scores: &BTreeMap<String, f64>) -> Option<f64> {
    scores.get(task.selection_metric().key()).copied()
}

/// Percentage of exact string matches.
pub fn accuracy(preds: &[&str], targets: &[&str]) -> f64 {
    if preds.is_empty() {
        return f64::NAN;
    }
    let hits = preds.iter().zip(targets).filter(|(p, t)| p == t).count();
    100.0 * hits as f64 / preds.len() as f64
}

/// Binary F1 (×100) of the positive class; 0 when there are neither true nor predicted positives
/// (scikit-learn's `zero_division` default).
pub fn binary_f1(preds: &[bool], gold: &[bool]) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
    for (&p, &g) in preds.iter().zip(gold) {
        match (p, g) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            _ => {}
        }
    }
    let denom = 2 * tp + fp + fn_;
    if denom == 0 {
        0.0
    } else {
        100.0 * (2 * tp) as f64 / denom as f64
    }
}

/// DePT's `f1_score_with_invalid`: a prediction that is neither "0" nor "1" is replaced by the
/// opposite of its target, then binary F1 of class 1. Targets must be "0"/"1".
pub fn f1_with_invalid(preds: &[&str], targets: &[&str]) -> Result<f64> {
    let mut p = Vec::with_capacity(preds.len());
    let mut g = Vec::with_capacity(preds.len());
    for (i, (&pred, &target)) in preds.iter().zip(targets).enumerate() {
        let gold = match target {
            "1" => true,
            "0" => false,
            other => {
                return Err(Error::invalid(format!(
                    "F1: target {i} is `{other}`, expected \"0\" or \"1\""
                )));
            }
        };
        let pred = match pred {
            "1" => true,
            "0" => false,
            _ => !gold,
        };
        p.push(pred);
        g.push(gold);
    }
    Ok(binary_f1(&p, &g))
}

/// Macro-averaged F1 (×100) over `labels` (scikit-learn's `fbeta_score(beta=1, labels=...,
/// average="macro")`): predictions outside `labels` count against the true class only; a class
/// absent from both predictions and targets scores 0.
pub fn macro_f1(preds: &[&str], targets: &[&str], labels: &[&str]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let mut total = 0.0;
    for &label in labels {
        let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
        for (&p, &t) in preds.iter().zip(targets) {
            match (p == label, t == label) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fn_ += 1,
                _ => {}
            }
        }
        let denom = 2 * tp + fp + fn_;
        if denom > 0 {
            total += (2 * tp) as f64 / denom as f64;
        }
    }
    100.0 * total / labels.len() as f64
}

/// Matthews correlation coefficient (×100), multiclass form of scikit-learn: classes are every
/// distinct string among targets and predictions; 0 when undefined.
pub fn matthews_corrcoef(preds: &[&str], targets: &[&str]) -> f64 {
    let mut index: HashMap<&str, usize> = HashMap::new();
    for &s in targets.iter().chain(preds) {
        let next = index.len();
        index.entry(s).or_insert(next);
    }
    let k = index.len();
    let mut t_sum = vec![0i128; k];
    let mut p_sum = vec![0i128; k];
    let mut correct: i128 = 0;
    for (&p, &t) in preds.iter().zip(targets) {
        t_sum[index[t]] += 1;
        p_sum[index[p]] += 1;
        if p == t {
            correct += 1;
        }
    }
    let n = preds.len().min(targets.len()) as i128;
    let dot = |a: &[i128], b: &[i128]| a.iter().zip(b).map(|(x, y)| x * y).sum::<i128>();
    let cov_ytyp = correct * n - dot(&t_sum, &p_sum);
    let cov_ypyp = n * n - dot(&p_sum, &p_sum);
    let cov_ytyt = n * n - dot(&t_sum, &t_sum);
    if cov_ypyp == 0 || cov_ytyt == 0 {
        return 0.0;
    }
    100.0 * cov_ytyp as f64 / ((cov_ytyt as f64) * (cov_ypyp as f64)).sqrt()
}

/// Python's `float(s)` for a stripped string, or -1 when it does not parse (DePT's
/// `string_to_float` default). Accepts what Python accepts that matters here: signs, exponents,
/// `inf`/`nan` in any case, and underscores between digits.
pub fn string_to_float(s: &str) -> f64 {
    parse_python_float(s).unwrap_or(-1.0)
}

fn parse_python_float(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let cleaned;
    let s = if s.contains('_') {
        let b = s.as_bytes();
        for (i, &c) in b.iter().enumerate() {
            if c == b'_' {
                let ok = i > 0
                    && i + 1 < b.len()
                    && b[i - 1].is_ascii_digit()
                    && b[i + 1].is_ascii_digit();
                if !ok {
                    return None;
                }
            }
        }
        cleaned = s.replace('_', "");
        cleaned.as_str()
    } else {
        s
    };
    let lower = s.to_ascii_lowercase();
    let body = lower.trim_start_matches(['+', '-']);
    if body.len() + 1 < lower.len() {
        return None; // more than one sign
    }
    // Rust accepts exactly Python's spellings of infinity and NaN once lower-cased.
    lower.parse::<f64>().ok()
}

/// Pearson correlation (×100); NaN (constant input, fewer than two points, non-finite values) → 0,
/// as DePT guards it.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let r = pearson_raw(x, y);
    if r.is_nan() { 0.0 } else { 100.0 * r }
}

fn pearson_raw(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return f64::NAN;
    }
    let (x, y) = (&x[..n], &y[..n]);
    // SciPy returns NaN for constant input rather than a rounding-noise value.
    if x.iter().all(|&v| v == x[0]) || y.iter().all(|&v| v == y[0]) {
        return f64::NAN;
    }
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let xm: Vec<f64> = x.iter().map(|v| v - mx).collect();
    let ym: Vec<f64> = y.iter().map(|v| v - my).collect();
    let nx = xm.iter().map(|v| v * v).sum::<f64>().sqrt();
    let ny = ym.iter().map(|v| v * v).sum::<f64>().sqrt();
    let r: f64 = xm.iter().zip(&ym).map(|(a, b)| (a / nx) * (b / ny)).sum();
    if r.is_nan() { r } else { r.clamp(-1.0, 1.0) }
}

/// Ranks 1..n with ties given their average rank (SciPy's `rankdata(method="average")`).
pub fn average_ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = avg;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman correlation (×100): Pearson of average ranks; NaN (constant input or a NaN value,
/// which SciPy propagates) → 0.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    if x.iter().chain(y).any(|v| v.is_nan()) {
        return 0.0;
    }
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Mean over groups (×100) of "every prediction in the group equals its target" (T5's
/// `mean_group_metric(exact_match)`, MultiRC's EM with groups = questions).
pub fn group_exact_match(preds: &[&str], targets: &[&str], groups: &[u64]) -> f64 {
    let mut all_right: HashMap<u64, bool> = HashMap::new();
    for ((p, t), g) in preds.iter().zip(targets).zip(groups) {
        let e = all_right.entry(*g).or_insert(true);
        *e &= p == t;
    }
    if all_right.is_empty() {
        return f64::NAN;
    }
    let right = all_right.values().filter(|&&b| b).count();
    100.0 * right as f64 / all_right.len() as f64
}

/// Python's `\w` for a `str` pattern: `str.isalnum()` (letters and numbers, not marks) or `_`.
pub(crate) fn is_word_char(c: char) -> bool {
    c == '_' || crate::data::format::is_letter_or_number(c) && !crate::data::format::is_mark(c)
}

/// SQuAD answer normalisation (T5's `normalize_squad`): lower-case, delete ASCII punctuation,
/// replace the words a/an/the by a space, collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lowered = s.to_lowercase();
    let no_punct: String = lowered
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    let chars: Vec<char> = no_punct.chars().collect();
    let mut out = String::with_capacity(no_punct.len());
    let mut i = 0;
    while i < chars.len() {
        let at_boundary = i == 0 || !is_word_char(chars[i - 1]);
        if at_boundary {
            let mut matched = 0;
            for article in ["the", "an", "a"] {
                let n = article.len();
                if i + n <= chars.len()
                    && chars[i..i + n].iter().copied().eq(article.chars())
                    && (i + n == chars.len() || !is_word_char(chars[i + n]))
                {
                    matched = n;
                    break;
                }
            }
            if matched > 0 {
                out.push(' ');
                i += matched;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Token-overlap F1 of two normalised answers (0 when they share no token).
fn token_f1(pred: &str, gold: &str) -> f64 {
    let p: Vec<&str> = pred.split_whitespace().collect();
    let g: Vec<&str> = gold.split_whitespace().collect();
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &g {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0i64;
    for t in &p {
        if let Some(c) = counts.get_mut(t)
            && *c > 0
        {
            *c -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / p.len() as f64;
    let recall = same as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// SQuAD EM and F1 (×100), each the max over the example's gold answers, averaged over examples.
pub fn squad_em_f1(preds: &[&str], answers: &[Vec<String>]) -> (f64, f64) {
    let n = preds.len().min(answers.len());
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let (mut em, mut f1) = (0.0, 0.0);
    for (p, golds) in preds.iter().zip(answers) {
        let p = normalize_answer(p);
        let (mut best_em, mut best_f1) = (0.0f64, 0.0f64);
        for g in golds {
            let g = normalize_answer(g);
            best_em = best_em.max(if p == g { 1.0 } else { 0.0 });
            best_f1 = best_f1.max(token_f1(&p, &g));
        }
        em += best_em;
        f1 += best_f1;
    }
    (100.0 * em / n as f64, 100.0 * f1 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(normalize_answer("The  Denver Broncos!"), "denver broncos");
        assert_eq!(normalize_answer("an apple, a day"), "apple day");
        assert_eq!(normalize_answer("theater"), "theater");
        assert_eq!(normalize_answer("a_b"), "ab"); // `_` is in string.punctuation
        assert_eq!(normalize_answer("ça a"), "ça");
        // A combining mark is not a word character to Python's `\b`: the article goes.
        assert_eq!(normalize_answer("a\u{301} b"), "\u{301} b");
    }

    #[test]
    fn python_float() {
        assert_eq!(string_to_float(" 3.8 "), 3.8);
        assert_eq!(string_to_float("1_0"), 10.0);
        assert_eq!(string_to_float("1__0"), -1.0);
        assert_eq!(string_to_float("abc"), -1.0);
        assert_eq!(string_to_float("+-1"), -1.0);
        assert!(string_to_float("NaN").is_nan());
        assert_eq!(string_to_float("-Infinity"), f64::NEG_INFINITY);
        assert_eq!(string_to_float("1e2"), 100.0);
    }

    #[test]
    fn ranks() {
        assert_eq!(
            average_ranks(&[3.0, 1.0, 3.0, 2.0]),
            vec![3.5, 1.0, 3.5, 2.0]
        );
    }
}
