//! `randperm` against torch: `tests/fixtures/randperm.json` was written by
//! `scripts/make_data_fixtures.py` from `torch.randperm` itself.
use ept::data::randperm::{checksum, randperm};
use serde_json::Value;

#[test]
fn randperm_matches_torch() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/randperm.json"
    ))
    .unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() > 50);
    for case in cases {
        let n = case["n"].as_u64().unwrap() as usize;
        let seed = case["seed"].as_u64().unwrap();
        let perm = randperm(n, seed).unwrap();
        let head: Vec<usize> = case["head"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            &perm[..head.len()],
            &head[..],
            "{} seed {seed}",
            case["name"]
        );
        assert_eq!(
            checksum(&perm),
            case["checksum"].as_u64().unwrap(),
            "{} seed {seed}",
            case["name"]
        );
    }
}
