//! The model organism's language, toy tasks and corpus: determinism, balance, disjoint splits,
//! labels that follow from meanings, T5 span corruption, and files the project's readers accept.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use ept::data::format::{Purpose, RowSource, format_row, format_user_row};
use ept::data::readers;
use ept::organism::language::{
    Clause, Entity, Sentence, Style, is_entity_word, vocabulary, word_polarity,
};
use ept::organism::tasks::{relation, same_meaning, similarity};
use ept::organism::{
    Label, ToyTask, corpus, generate, generate_rows, generate_splits, random_spans_noise_mask,
    span_corrupt, write_hub_parquet, write_jsonl,
};
use ept::rng::Rng;

fn tmp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ept-organism-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn same_seed_same_data() {
    for task in ToyTask::ALL {
        let a = generate(task, 60, 7);
        assert_eq!(a, generate(task, 60, 7), "{}", task.name());
        assert_ne!(a, generate(task, 60, 8), "{}", task.name());
        assert_eq!(
            generate_splits(task, 30, 12, 12, 3),
            generate_splits(task, 30, 12, 12, 3)
        );
    }
    assert_eq!(corpus(20, 1), corpus(20, 1));
    assert_ne!(corpus(20, 1), corpus(20, 2));
    // Evaluation splits do not depend on the training size.
    let small = generate_splits(ToyTask::Mnli, 10, 20, 20, 5);
    let large = generate_splits(ToyTask::Mnli, 200, 20, 20, 5);
    assert_eq!(
        (small.validation, small.test),
        (large.validation, large.test)
    );
}

#[test]
fn labels_are_balanced() {
    let count = |task, n| {
        let mut c: HashMap<String, usize> = HashMap::new();
        for e in generate(task, n, 11) {
            *c.entry(e.target).or_default() += 1;
        }
        c
    };
    for (task, classes) in [
        (ToyTask::Sst2, vec!["0", "1"]),
        (ToyTask::Qqp, vec!["0", "1"]),
        (ToyTask::Mnli, vec!["0", "1", "2"]),
        (ToyTask::AuxNegation, vec!["0", "1"]),
        (ToyTask::AuxTruth, vec!["0", "1"]),
        (ToyTask::AuxPole, vec!["0", "1"]),
    ] {
        let c = count(task, 600);
        assert_eq!(c.len(), classes.len(), "{}: {c:?}", task.name());
        for class in classes.iter() {
            assert_eq!(c[*class], 600 / classes.len(), "{}: {c:?}", task.name());
        }
    }
    // STS-B: scores spread over the range, every half point from 1.0 on present.
    let c = count(ToyTask::Stsb, 600);
    for s in ["1.0", "2.0", "3.0", "4.0", "4.5", "5.0"] {
        assert!(c.get(s).copied().unwrap_or(0) >= 10, "stsb {s}: {c:?}");
    }
    // aux-subject: many different subjects.
    assert!(count(ToyTask::AuxSubject, 600).len() > 40);
}

#[test]
fn splits_share_no_source() {
    for task in ToyTask::ALL {
        let s = generate_splits(task, 400, 100, 100, 42);
        let mut seen = HashSet::new();
        for (name, rows) in s.named() {
            for r in rows {
                let source = r.example().source;
                assert!(
                    seen.insert(source.clone()),
                    "{} {name}: repeated {source}",
                    task.name()
                );
            }
        }
        assert_eq!(seen.len(), 600);
    }
}

#[test]
fn negation_flips_sentiment() {
    let mut rng = Rng::new(5);
    for _ in 0..500 {
        let mut c = Clause::random(&mut rng, Some(true));
        c.intense = false;
        let mut flipped = c;
        flipped.negated = !c.negated;
        assert_eq!(
            Sentence::single(c).sentiment(),
            -Sentence::single(flipped).sentiment()
        );
        assert_ne!(Sentence::single(c).sentiment(), 0);
        // The dual ("likes" ↔ "does not hate") keeps the sentiment.
        let dual = c.dual().unwrap();
        assert_eq!(dual.sentiment(), c.sentiment());
        assert!(same_meaning(&c, &dual));
    }
}

/// Checks the labels of generated toy-sst2 text against the lexicon alone: in a one-clause
/// sentence the single polar word gives the label, reversed by "not"/"never".
#[test]
fn sst2_labels_follow_the_words() {
    let mut checked = [0usize; 2];
    for e in generate(ToyTask::Sst2, 1000, 3) {
        let words: Vec<&str> = e.source.split(' ').skip(1).collect();
        if words.contains(&"and") || words.contains(&"but") {
            continue;
        }
        let polar: Vec<i32> = words.iter().filter_map(|w| word_polarity(w)).collect();
        assert_eq!(polar.len(), 1, "{}", e.source);
        let negated = words.iter().any(|w| *w == "not" || *w == "never");
        let positive = (polar[0] > 0) != negated;
        assert_eq!(e.target, if positive { "1" } else { "0" }, "{}", e.source);
        checked[usize::from(negated)] += 1;
    }
    assert!(checked[0] > 100 && checked[1] > 100, "{checked:?}");
}

#[test]
fn paraphrases_and_relations() {
    let mut rng = Rng::new(9);
    for _ in 0..300 {
        let c = Clause::random(&mut rng, None);
        let plain = Style::default();
        let other = Style {
            passive: true,
            synonym: 1,
            negator: 1,
            intensifier: 1,
            framed: false,
        };
        assert_ne!(c.question(plain), c.question(other));
        assert_ne!(c.realise(plain), c.realise(other));
        assert!(same_meaning(&c, &c));
        assert_eq!(similarity(&c, &c), 5.0);
        assert_eq!(relation(&[c], &c), 0, "a clause entails itself");
        let mut neg = c;
        neg.negated = !c.negated;
        neg.intense = false;
        assert_eq!(
            relation(&[c], &neg),
            2,
            "{} / {}",
            c.realise(plain),
            neg.realise(plain)
        );
        assert!(!same_meaning(&c, &neg));
        let mut other_subject = c;
        other_subject.subject = Entity(c.subject.0 ^ 1);
        assert_eq!(relation(&[c], &other_subject), 1);
    }
    // Generated paraphrase pairs: same entities on both sides, different wording.
    for e in generate(ToyTask::Qqp, 300, 4) {
        let (q1, q2) = e.source.split_once(" question2: ").unwrap();
        assert_ne!(q1.trim_start_matches("question1: "), q2);
        if e.target == "1" {
            // Both sides mention the same entities and colours (the wording differs).
            fn entities(s: &str) -> Vec<&str> {
                let mut v: Vec<&str> = s.split(' ').filter(|w| is_entity_word(w)).collect();
                v.sort_unstable();
                v
            }
            assert_eq!(entities(q1), entities(q2), "{}", e.source);
        }
    }
}

#[test]
fn every_word_is_in_the_vocabulary() {
    let vocab: HashSet<&str> = vocabulary().into_iter().collect();
    assert!((200..=600).contains(&vocab.len()), "{}", vocab.len());
    let mut texts = corpus(300, 2);
    for task in ToyTask::ALL {
        for r in generate_rows(task, 200, 1) {
            texts.extend(r.columns.into_iter().map(|(_, v)| v));
        }
    }
    for t in &texts {
        for w in t.split(' ') {
            assert!(vocab.contains(w), "{w:?} in {t:?}");
        }
    }
}

/// Word-level ids for the corpus: vocabulary position + 3; sentinels counting down from 999.
fn ids(doc: &str, vocab: &[&str]) -> Vec<u32> {
    doc.split(' ')
        .map(|w| vocab.iter().position(|v| *v == w).unwrap() as u32 + 3)
        .collect()
}

#[test]
fn span_corruption_reconstructs() {
    let vocab = vocabulary();
    let sentinels: Vec<u32> = (0..100).map(|k| 999 - k).collect();
    let is_sentinel = |t: u32| t > 900;
    let mut rng = Rng::new(17);
    let (mut masked, mut total) = (0usize, 0usize);
    for doc in corpus(500, 8) {
        let original = ids(&doc, &vocab);
        let (input, target) = span_corrupt(&original, &sentinels, 0.15, 3.0, &mut rng);
        // Expand each sentinel of the input with what follows it in the target.
        let mut spans: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut current = None;
        for &t in &target {
            if is_sentinel(t) {
                current = Some(t);
                spans.insert(t, vec![]);
            } else {
                spans
                    .get_mut(&current.expect("target starts with a sentinel"))
                    .unwrap()
                    .push(t);
            }
        }
        let mut rebuilt = Vec::new();
        let mut order = Vec::new();
        for &t in &input {
            if is_sentinel(t) {
                order.push(t);
                rebuilt.extend(&spans[&t]);
            } else {
                rebuilt.push(t);
            }
        }
        assert_eq!(rebuilt, original);
        assert_eq!(
            order,
            sentinels[..order.len()].to_vec(),
            "sentinels in order from <extra_id_0>"
        );
        assert_eq!(spans.len(), order.len());
        assert!(spans.values().all(|s| !s.is_empty()));
        // T5 without random_roll: the sequence always ends in a masked span.
        assert!(is_sentinel(*input.last().unwrap()));
        masked += target.len() - order.len();
        total += original.len();
    }
    let fraction = masked as f64 / total as f64;
    assert!((fraction - 0.15).abs() < 0.01, "masked fraction {fraction}");

    // T5's counts: 20 tokens → round(3.0) = 3 noise tokens in round(1.0) = 1 span; a single
    // token is never masked; an empty sequence stays empty.
    let mask = random_spans_noise_mask(20, 0.15, 3.0, &mut rng);
    assert_eq!(mask.iter().filter(|m| **m).count(), 3);
    assert_eq!(mask[17..], [true, true, true]);
    assert_eq!(random_spans_noise_mask(1, 0.15, 3.0, &mut rng), vec![false]);
    assert_eq!(
        span_corrupt(&[5], &sentinels, 0.15, 3.0, &mut rng),
        (vec![5], vec![999])
    );
    assert_eq!(
        span_corrupt(&[], &sentinels, 0.15, 3.0, &mut rng),
        (vec![], vec![])
    );
    let mask = random_spans_noise_mask(100, 0.15, 3.0, &mut rng);
    assert_eq!(mask.iter().filter(|m| **m).count(), 15);
    let starts = (0..100)
        .filter(|&i| mask[i] && (i == 0 || !mask[i - 1]))
        .count();
    assert_eq!(starts, 5);
}

#[test]
fn hub_parquet_reads_back_through_the_project_readers() {
    let root = tmp_dir("hub");
    for task in ToyTask::ALL {
        let splits = generate_splits(task, 40, 10, 10, 1);
        let dir = write_hub_parquet(&root, task, &splits).unwrap();
        for (split, rows) in splits.named() {
            let files = match task.glue() {
                Some(glue) => readers::find_split_files(&dir, glue, split).unwrap(),
                None => vec![dir.join(format!("{split}-00000-of-00001.parquet"))],
            };
            assert_eq!(files.len(), 1);
            let read = readers::read_file(&files[0], None).unwrap();
            assert_eq!(read.len(), rows.len());
            for (i, (back, row)) in read.iter().zip(rows).enumerate() {
                for (column, value) in &row.columns {
                    assert_eq!(back[*column], *value);
                }
                assert_eq!(back["idx"], i);
                match &row.label {
                    Label::Class(c) => assert_eq!(back["label"], *c),
                    Label::Score(s) => assert_eq!(back["label"].as_f64().unwrap(), *s as f64),
                    Label::Text(t) => assert_eq!(back["label"], *t),
                }
                // The project's DePT formatter gives exactly our examples.
                if let Some(glue) = task.glue() {
                    let at = RowSource {
                        path: &files[0],
                        row: i,
                    };
                    let formatted = format_row(glue, back, Purpose::Eval, at).unwrap();
                    assert_eq!(formatted, vec![row.example()], "{}", task.name());
                }
            }
        }
    }
    let snapshot = std::fs::read_to_string(root.join("datasets--ept--toy/refs/main")).unwrap();
    assert!(
        root.join("datasets--ept--toy/snapshots")
            .join(&snapshot)
            .join("toy-sst2")
            .is_dir()
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn jsonl_reads_back() {
    let dir = tmp_dir("jsonl");
    let path = dir.join("train.jsonl");
    let examples = generate(ToyTask::Mnli, 30, 2);
    write_jsonl(&path, &examples).unwrap();
    let rows = readers::read_file(&path, None).unwrap();
    for (i, (row, e)) in rows.iter().zip(&examples).enumerate() {
        let at = RowSource {
            path: Path::new(&path),
            row: i,
        };
        assert_eq!(format_user_row(row, at).unwrap(), *e);
    }
    assert_eq!(rows.len(), 30);
    std::fs::remove_dir_all(&dir).unwrap();
}
