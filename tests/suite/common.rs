//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("t5").join(name)
}

/// `|a - b| <= tol * max(|b|, floor)`.
pub fn close(a: f64, b: f64, tol: f64, floor: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(floor)
}

/// A fresh temporary folder for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ept-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies every file of `src` into `dst`.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
}

/// Runs the `ept` binary with `args`, progress lines off (`RUST_LOG=warn`).
pub fn ept(args: &[&str]) -> std::process::Output {
    ept_env(args, &[])
}

/// [`ept`] with extra environment variables (`EPT_NO_AMX`, ...).
pub fn ept_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ept"))
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Runs `ept` that must refuse its input: exit 2, one `ept: ` line on stderr,
/// no panic. Returns that line, or what went wrong instead.
pub fn refusal(args: &[&str]) -> Result<String, String> {
    let out = ept(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = err.lines().collect();
    if err.contains("panicked") {
        Err(format!("panicked: {err}"))
    } else if out.status.code() != Some(2) {
        Err(format!("exit {:?}, stderr: {err}", out.status.code()))
    } else if lines.len() != 1 || !lines[0].starts_with("ept: ") {
        Err(format!("not one `ept: ` line: {err}"))
    } else {
        Ok(lines[0].to_string())
    }
}

/// [`refusal`] that fails the test when `ept` does not refuse.
pub fn error_of(args: &[&str]) -> String {
    refusal(args).unwrap_or_else(|why| panic!("{args:?}: {why}"))
}

/// Every example's loss sum, alone and in one padded batch, against the
/// reference sums `want`: alone within 1e-4 relative, the batch equal to
/// alone within 1e-5 (both relative to max(|ref|, `floor`)). Returns the sums alone.
pub fn check_example_losses(
    name: &str,
    model: &dyn ept::model::FrozenModel,
    examples: &[ept::model::batch::TokenizedExample],
    want: &[f64],
    floor: f64,
) -> Vec<f64> {
    use ept::evaluate::example_loss_sums;
    use ept::prompt::NoPrompt;
    let single = example_loss_sums(model, &NoPrompt, examples, 1);
    let batched = example_loss_sums(model, &NoPrompt, examples, examples.len());
    for (i, &w) in want.iter().enumerate() {
        assert!(
            close(single[i], w, 1e-4, floor),
            "{name} example {i}: loss sum {} vs transformers {w}",
            single[i]
        );
        assert!(
            close(batched[i], single[i], 1e-5, floor),
            "{name} example {i}: padded batch {} vs alone {}",
            batched[i],
            single[i]
        );
    }
    single
}
