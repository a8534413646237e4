//! Metrics against scikit-learn / SciPy: `tests/fixtures/metrics.json` was written by
//! `scripts/make_data_fixtures.py`.
use ept::data::{Example, Task};
use ept::metrics::{score, selection_score};
use serde_json::Value;

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn metrics_match_sklearn_and_scipy() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/metrics.json"
    ))
    .unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let task = Task::parse(case["task"].as_str().unwrap()).unwrap();
        let preds = strings(&case["predictions"]);
        let targets = strings(&case["targets"]);
        let examples: Vec<Example> = targets
            .iter()
            .enumerate()
            .map(|(i, t)| Example {
                source: String::new(),
                target: t.clone(),
                answers: case
                    .get("answers")
                    .map(|a| strings(&a[i]))
                    .unwrap_or_else(|| vec![t.clone()]),
                group: case.get("groups").map(|g| g[i].as_u64().unwrap()),
            })
            .collect();
        let got = score(task, &preds, &examples).unwrap();
        assert!(selection_score(task, &got).is_some(), "{name}");
        let expected = case["expected"].as_object().unwrap();
        assert_eq!(got.len(), expected.len(), "{name}: {got:?}");
        for (key, want) in expected {
            let want = want.as_f64().unwrap();
            let have = got[key];
            assert!(
                (have - want).abs() < 1e-9,
                "{name}: {key} = {have}, sklearn/scipy say {want}"
            );
        }
    }
}

#[test]
fn score_rejects_mismatched_lengths() {
    let ex = Example {
        source: String::new(),
        target: "1".into(),
        answers: vec!["1".into()],
        group: None,
    };
    let err = score(Task::Rte, &[], &[ex]).unwrap_err().to_string();
    assert!(err.contains("0 predictions for 1 examples"), "{err}");
    assert!(score(Task::Rte, &[], &[]).is_err());
}
