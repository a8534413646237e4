//! The pretraining corpus (short documents in the synthetic language) and T5's span corruption.
//!
//! Span corruption follows T5's `random_spans_noise_mask` and
//! `noise_span_to_unique_sentinel` / `nonnoise_span_to_unique_sentinel`
//! (google-research/text-to-text-transfer-transformer, `t5/data/preprocessors.py`): the number of
//! noise tokens and spans is fixed by the length, spans alternate non-noise / noise starting with
//! non-noise (so the sequence always ends in noise, as in T5 without `random_roll`), and each
//! noise span becomes one sentinel in the input while the target lists every sentinel followed by
//! the tokens it hides. The EOS token is not part of this: append it afterwards, as T5 does.

use super::language::{Clause, Conj, Entity, Predicate, Sentence, Style};
use crate::rng::Rng;

/// `n_docs` documents of 2–5 sentences each. A document keeps returning to a small cast of
/// entities, so the model sees the same names in several relations (a little discourse), and
/// mixes every surface form: active and passive, negation, "and"/"but" sentences, questions.
pub fn corpus(n_docs: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng::new(seed ^ 0xC0FF_EE00_C0FF_EE00);
    (0..n_docs).map(|_| document(&mut rng)).collect()
}

/// The share of a document's sentiment-bearing clauses that follow its mood.
const P_MOOD: f64 = 0.85;

fn document(rng: &mut Rng) -> String {
    let cast: Vec<Entity> = (0..3).map(|_| Clause::random(rng, None).subject).collect();
    // A document has a mood: most of its sentiment-bearing clauses are positive, or most are
    // negative. This is what makes polarity *predictable from context*, so that span corruption
    // teaches the model to represent it (through negation too: "is not sad" fits a happy
    // document), as real text teaches real models.
    let mood = rng.below(2) == 0;
    let n = 2 + rng.below(4) as usize;
    let mut sentences = Vec::with_capacity(n);
    for _ in 0..n {
        let r = rng.next_f64();
        let clauses = if (0.65..0.9).contains(&r) { 2 } else { 1 };
        let cs: Vec<Clause> = (0..clauses)
            .map(|_| {
                let mut c = cast_clause(&cast, rng);
                if c.affective() && c.has_antonym() && rng.next_f64() < P_MOOD {
                    c.positive = mood != c.negated;
                }
                c
            })
            .collect();
        let styles = [Style::random(rng), Style::random(rng)];
        sentences.push(if r >= 0.9 {
            cs[0].question(styles[0])
        } else {
            let conj = if r < 0.8 { Conj::And } else { Conj::But };
            Sentence { clauses: cs, conj }.realise(&styles, rng.below(2) == 1)
        });
    }
    sentences.join(" ")
}

/// A random clause whose subject and object are, where they fit, taken from the cast.
fn cast_clause(cast: &[Entity], rng: &mut Rng) -> Clause {
    let mut c = Clause::random(rng, None);
    let pick = |rng: &mut Rng| cast[rng.below(cast.len() as u64) as usize];
    let subject = pick(rng);
    let is_verb = matches!(c.predicate, Predicate::Verb { .. });
    if rng.next_f64() < 0.7 && (subject.is_agent() || !is_verb) {
        c.subject = subject;
    }
    if let Predicate::Verb { object, .. } = &mut c.predicate {
        let o = pick(rng);
        if rng.next_f64() < 0.5 && o != c.subject {
            *object = o;
        }
        if *object == c.subject {
            // The random object was the new subject: fall back to a fresh clause.
            return Clause::random(rng, None);
        }
    }
    c.recolour(rng);
    c
}

/// T5's noise mask for `length` tokens: `round(length · noise_density)` noise tokens (at least 1,
/// at most `length − 1`) in `round(noise / mean_span_length)` spans (at least 1), span lengths a
/// uniformly random composition, non-noise first. Sequences shorter than 2 are treated as
/// length 2 and truncated, as in T5 (so a 1-token sequence is never masked). Rounding is T5's
/// `tf.round` on float32 (half to even).
pub fn random_spans_noise_mask(
    length: usize,
    noise_density: f64,
    mean_span_length: f64,
    rng: &mut Rng,
) -> Vec<bool> {
    if length == 0 {
        return vec![];
    }
    let padded = length.max(2);
    let noise = ((padded as f32) * noise_density as f32).round_ties_even() as usize;
    let noise = noise.clamp(1, padded - 1);
    let spans = ((noise as f32) / mean_span_length as f32).round_ties_even() as usize;
    let spans = spans.max(1);
    let noise_lengths = random_segmentation(noise, spans, rng);
    let nonnoise_lengths = random_segmentation(padded - noise, spans, rng);
    let mut mask = Vec::with_capacity(padded);
    for (keep, drop) in nonnoise_lengths.into_iter().zip(noise_lengths) {
        mask.extend(std::iter::repeat_n(false, keep));
        mask.extend(std::iter::repeat_n(true, drop));
    }
    mask.truncate(length);
    mask
}

/// Splits `items` into `segments` lengths summing to `items`, every composition equally likely
/// (T5's `_random_segmentation`: shuffle `segments − 1` segment starts among the `items − 1`
/// positions after the first). With more segments than items, the last ones are empty, as there.
fn random_segmentation(items: usize, segments: usize, rng: &mut Rng) -> Vec<usize> {
    let mut starts: Vec<bool> = (0..items.saturating_sub(1))
        .map(|i| i + 1 < segments)
        .collect();
    rng.shuffle(&mut starts);
    let mut lengths = vec![0usize; segments];
    let mut segment = 0;
    lengths[0] = usize::from(items > 0);
    for s in starts {
        segment += usize::from(s);
        lengths[segment] += 1;
    }
    lengths
}

/// Replaces each run of masked tokens with the next sentinel (T5's
/// `noise_span_to_unique_sentinel`).
fn spans_to_sentinels(ids: &[u32], mask: &[bool], sentinel_ids: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(ids.len());
    let mut next = 0;
    for (i, (&id, &masked)) in ids.iter().zip(mask).enumerate() {
        if !masked {
            out.push(id);
        } else if i == 0 || !mask[i - 1] {
            let sentinel = sentinel_ids.get(next).unwrap_or_else(|| {
                panic!(
                    "span corruption needs more than {} sentinels",
                    sentinel_ids.len()
                )
            });
            out.push(*sentinel);
            next += 1;
        }
    }
    out
}

/// T5 span corruption of `ids` (without EOS). `sentinel_ids[k]` is the id of `<extra_id_k>`.
/// Returns `(input, target)`: the input keeps the unmasked tokens with the `k`-th masked span
/// replaced by `<extra_id_k>`; the target is `<extra_id_k>` followed by the `k`-th span's tokens,
/// for each span in order (T5 puts no extra sentinel at the end). Panics if there are more spans
/// than sentinels (T5's 100 suffice for 2,000 tokens at the defaults).
pub fn span_corrupt(
    ids: &[u32],
    sentinel_ids: &[u32],
    noise_density: f64,
    mean_span_length: f64,
    rng: &mut Rng,
) -> (Vec<u32>, Vec<u32>) {
    let mask = random_spans_noise_mask(ids.len(), noise_density, mean_span_length, rng);
    let inverse: Vec<bool> = mask.iter().map(|m| !m).collect();
    (
        spans_to_sentinels(ids, &mask, sentinel_ids),
        spans_to_sentinels(ids, &inverse, sentinel_ids),
    )
}
