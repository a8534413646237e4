//! Readers, layouts and formatting against `tests/fixtures/tables/` (synthetic tables written by
//! `scripts/make_data_fixtures.py`, whose `expected.json` holds DePT's formatting of each row
//! computed in Python with DePT's regexes).
use std::path::{Path, PathBuf};

use ept::data::readers::{
    self, Caches, datasets_cache_dir_with, find_split_files, hub_cache_dir_with, hub_snapshots,
    locate_split, read_files,
};
use ept::data::{Purpose, RowSource, Split, Task, format_row, load_split, load_user_file};
use serde_json::Value;

fn hub_only(hub: &Path) -> Caches {
    Caches {
        hub: Some(hub.to_path_buf()),
        datasets: None,
    }
}

fn tables() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tables")
}

/// Folders the expected cases live in (the `files` of a case are relative to one of them).
fn bases() -> Vec<PathBuf> {
    let t = tables();
    vec![
        t.join("hub/datasets--nyu-mll--glue/snapshots/0123abcd"),
        t.join("hub/datasets--aps--super_glue/snapshots/feed0001"),
        t.join("hub/datasets--rajpurkar--squad/snapshots/c0ffee"),
        t.join("cache/super_glue"),
        t.join("saved_boolq"),
        t.join("glue"),
        t.join("superglue"),
        t.join("squad_json"),
    ]
}

/// The published split a fixture file holds, from its path.
fn split_of(file: &str) -> &'static str {
    for s in [
        "validation_matched",
        "validation_mismatched",
        "validation",
        "train",
    ] {
        if file.contains(s) {
            return s;
        }
    }
    if file.contains("dev") || file.contains("val.") {
        return "validation";
    }
    panic!("no split in {file}")
}

#[test]
fn every_layout_reads_and_formats_like_dept() {
    let text = std::fs::read_to_string(tables().join("expected.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() >= 15);
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let task = Task::parse(case["task"].as_str().unwrap()).unwrap();
        let rel: Vec<&str> = case["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let base = bases()
            .into_iter()
            .find(|b| b.join(rel[0]).is_file())
            .unwrap_or_else(|| panic!("{name}: no base"));
        let want_files: Vec<PathBuf> = rel.iter().map(|r| base.join(r)).collect();
        let split = split_of(rel[0]);
        let files = find_split_files(&base, task, split).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(files, want_files, "{name}");
        let table = read_files(&files, Some(task)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(table.len() as u64, case["rows"].as_u64().unwrap(), "{name}");
        let purpose = if case["purpose"] == "eval" {
            Purpose::Eval
        } else {
            Purpose::Train
        };
        let mut got = vec![];
        for (i, row) in table.rows.iter().enumerate() {
            let (path, r) = table.source_of(i);
            got.extend(
                format_row(task, row, purpose, RowSource { path, row: r })
                    .unwrap_or_else(|e| panic!("{name}: {e}")),
            );
        }
        let want = case["examples"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.source, w["source"].as_str().unwrap(), "{name}: source");
            assert_eq!(g.target, w["target"].as_str().unwrap(), "{name}: target");
            let answers: Vec<&str> = w["answers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            assert_eq!(g.answers, answers, "{name}: answers");
            assert_eq!(g.group, w["group"].as_u64(), "{name}: group");
        }
    }
}

#[test]
fn hub_cache_lookup() {
    let hub = tables().join("hub");
    let snaps = hub_snapshots(&hub, Task::Rte);
    assert_eq!(
        snaps,
        vec![hub.join("datasets--nyu-mll--glue/snapshots/0123abcd")]
    );
    // refs/convert/parquet is followed too.
    assert_eq!(
        hub_snapshots(&hub, Task::Cb),
        vec![hub.join("datasets--aps--super_glue/snapshots/feed0001")]
    );
    assert!(hub_snapshots(&hub, Task::Qqp).len() == 1);
    let files = locate_split(Task::Rte, "train", None, &hub_only(&hub)).unwrap();
    assert_eq!(files.len(), 2);
    let e = locate_split(Task::Qqp, "train", None, &hub_only(&hub))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no `train` split of qqp") && e.contains("nyu-mll/glue"),
        "{e}"
    );
    let e = locate_split(Task::Rte, "train", None, &Caches::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no data folder"), "{e}");
}

#[test]
fn datasets_cache_lookup() {
    let caches = Caches {
        hub: Some(tables().join("hub")),
        datasets: Some(tables().join("cache")),
    };
    let files = locate_split(Task::MultiRc, "validation", None, &caches).unwrap();
    assert!(files[0].ends_with("multirc/1.0.3/abcdef0123/super_glue-validation.arrow"));
    let env = |k: &str| match k {
        "HF_HOME" => Some("/b".into()),
        _ => None,
    };
    assert_eq!(datasets_cache_dir_with(env), Some("/b/datasets".into()));
}

#[test]
fn hub_cache_dir_precedence() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.into())
    };
    assert_eq!(
        hub_cache_dir_with(env(&[
            ("HF_HUB_CACHE", "/a"),
            ("HF_HOME", "/b"),
            ("HOME", "/h")
        ])),
        Some("/a".into())
    );
    assert_eq!(
        hub_cache_dir_with(env(&[("HF_HOME", "/b"), ("HOME", "/h")])),
        Some("/b/hub".into())
    );
    assert_eq!(
        hub_cache_dir_with(env(&[("HF_HUB_CACHE", ""), ("HOME", "/h")])),
        Some("/h/.cache/huggingface/hub".into())
    );
    assert_eq!(hub_cache_dir_with(env(&[])), None);
}

#[test]
fn load_split_applies_dept_rules() {
    let hub = tables().join("hub");
    let train = load_split(
        Task::Rte,
        Split::Train,
        None,
        &hub_only(&hub),
        Purpose::Train,
    )
    .unwrap();
    assert_eq!((train.examples.len(), train.source_split), (5, "train"));
    let val = load_split(
        Task::Rte,
        Split::Validation,
        None,
        &hub_only(&hub),
        Purpose::Eval,
    )
    .unwrap();
    let test = load_split(Task::Rte, Split::Test, None, &hub_only(&hub), Purpose::Eval).unwrap();
    assert_eq!(
        (val.examples.len(), test.examples.len(), val.source_rows),
        (3, 3, 6)
    );
    // torch.randperm(6, seed 42) = [0, 2, 5, 3, 1, 4]... whatever it is, the halves are disjoint.
    assert!(val.examples.iter().all(|v| !test.examples.contains(v)));
    let perm = ept::data::randperm::randperm(6, 42).unwrap();
    assert_eq!(
        val.examples[0].source,
        format!(
            "sentence1: Validation premise number {}. sentence2: Claim {}.",
            perm[0], perm[0]
        )
    );
    let mnli_val = load_split(
        Task::Mnli,
        Split::Validation,
        None,
        &hub_only(&hub),
        Purpose::Eval,
    )
    .unwrap();
    assert_eq!(
        (mnli_val.source_split, mnli_val.examples.len()),
        ("validation_mismatched", 3)
    );
    let mnli_test = load_split(
        Task::Mnli,
        Split::Test,
        None,
        &hub_only(&hub),
        Purpose::Eval,
    )
    .unwrap();
    assert_eq!(
        (mnli_test.source_split, mnli_test.examples.len()),
        ("validation_matched", 2)
    );
    // The same split from an explicit folder (GLUE TSV with spelled-out labels).
    let tsv = load_split(
        Task::Rte,
        Split::Validation,
        Some(&tables().join("glue")),
        &Caches::default(),
        Purpose::Eval,
    )
    .unwrap();
    assert_eq!(tsv.examples, val.examples);
    // Large-set rule refuses tables too small to hold 1,000 validation rows.
    let e = load_split(
        Task::Squad,
        Split::Train,
        None,
        &hub_only(&hub),
        Purpose::Train,
    );
    assert!(e.is_err());
}

#[test]
fn user_files() {
    let ex = load_user_file(&tables().join("user/train.jsonl")).unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!(
        (ex[0].source.as_str(), ex[0].target.as_str()),
        ("translate: hello", "bonjour")
    );
    assert_eq!(ex[0].answers, vec!["bonjour"]);
    assert_eq!(ex[1].answers, vec!["4", "four"]);
    assert_eq!(ex[1].group, Some(3));
}

fn err_of<T: std::fmt::Debug>(r: ept::error::Result<T>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn bad_inputs_give_one_clear_line() {
    let bad = tables().join("bad");
    let cases: Vec<(String, &[&str])> = vec![
        (
            err_of(readers::read_file(&bad.join("nonutf8.jsonl"), None)),
            &["nonutf8.jsonl", "line 2", "UTF-8"],
        ),
        (
            err_of(readers::read_file(&bad.join("empty.jsonl"), None)),
            &["empty.jsonl", "empty file"],
        ),
        (
            err_of(readers::read_file(&bad.join("empty.tsv"), Some(Task::Rte))),
            &["empty.tsv", "empty file"],
        ),
        (
            err_of(readers::read_file(&bad.join("empty.parquet"), None)),
            &["empty.parquet", "empty file"],
        ),
        (
            err_of(readers::read_file(&bad.join("badjson.jsonl"), None)),
            &["badjson.jsonl:2", "malformed JSON"],
        ),
        (
            err_of(readers::read_file(&bad.join("short.tsv"), Some(Task::Rte))),
            &[
                "short.tsv",
                "line 2",
                "2 tab-separated fields",
                "header has 4",
            ],
        ),
        (
            err_of(readers::read_file(&bad.join("notparquet.parquet"), None)),
            &["notparquet.parquet", "not a readable parquet"],
        ),
        (
            err_of(readers::read_file(&bad.join("notarrow.arrow"), None)),
            &["notarrow.arrow", "Arrow IPC"],
        ),
        (
            err_of(readers::read_file(&bad.join("nothing.jsonl"), None)),
            &["nothing.jsonl", "not found"],
        ),
        (
            err_of(readers::read_file(&bad.join("x.csv"), None)),
            &["x.csv", "expected .jsonl, .tsv, .parquet or .arrow"],
        ),
        (
            err_of(load_user_file(&bad.join("nosource.jsonl"))),
            &["nosource.jsonl", "`source`", "columns found: target, text"],
        ),
        (
            err_of(load_split(
                Task::Rte,
                Split::Test,
                Some(&bad.join("rte_badlabel")),
                &Caches::default(),
                Purpose::Eval,
            )),
            &[
                "validation-00000-of-00001.parquet",
                "`label`",
                "row 1",
                "label 7 out of range",
                "0..=1",
            ],
        ),
        (
            err_of(load_split(
                Task::Rte,
                Split::Test,
                Some(&bad.join("rte_nocol")),
                &Caches::default(),
                Purpose::Eval,
            )),
            &[
                "validation-00000-of-00001.parquet",
                "`sentence2`",
                "columns found: label, sentence1",
            ],
        ),
        (
            err_of(load_split(
                Task::Rte,
                Split::Validation,
                Some(&bad),
                &Caches::default(),
                Purpose::Eval,
            )),
            &["bad", "no `validation` split of rte", "the folder holds"],
        ),
    ];
    for (msg, needles) in cases {
        assert!(!msg.contains('\n'), "multi-line error: {msg}");
        for n in needles {
            assert!(msg.contains(n), "`{msg}` lacks `{n}`");
        }
    }
}
