//! Resume: a run killed (-9) at a random moment and resumed ends with tensors
//! bit-identical to an uninterrupted run; a crash in the middle of writing a
//! checkpoint never leaves a corrupt `last/`; a write that fails part-way
//! leaves `last/` and `best/` as they were; a run folder is trained in by one
//! process at a time, and a dead process's lock blocks nothing.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{fixtures, model_dir, temp_dir};

fn args(runs: &Path, name: &str) -> Vec<String> {
    let data = fixtures().join("data.jsonl").display().to_string();
    [
        "train",
        "--model",
        model_dir("gated-untied").to_str().unwrap(),
        "--train-file",
        &data,
        "--validation-file",
        &data,
        "--method",
        "ept",
        "--l",
        "10",
        "--s",
        "6",
        "--m",
        "64",
        "--lr-low-rank",
        "0.01",
        "--max-steps",
        "24",
        "--warmup-steps",
        "3",
        "--batch-size",
        "2",
        "--eval-every",
        "6",
        "--save-every",
        "2",
        "--seed",
        "5",
        "--runs-dir",
        runs.to_str().unwrap(),
        "--name",
        name,
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn ept() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ept"))
}

/// Every tensor of a prompt file as raw f32 bits.
fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    v.sort();
    v
}

fn step_losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

fn assert_same_run(a: &Path, b: &Path) {
    for f in [
        "last/prompt.safetensors",
        "best/prompt.safetensors",
        "last/optimizer.safetensors",
    ] {
        assert_eq!(tensors(&a.join(f)), tensors(&b.join(f)), "{f} differs");
    }
    assert_eq!(step_losses(a), step_losses(b));
}

#[test]
fn killed_and_resumed_equals_uninterrupted() {
    let runs = temp_dir("resume");
    let out = ept().args(args(&runs, "whole")).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let whole = runs.join("whole");

    // Kill after a pseudo-random number of step lines, several times over.
    for (k, kill_after) in [3usize, 8, 13, 19].into_iter().enumerate() {
        let name = format!("killed{k}");
        let mut child = ept()
            .args(args(&runs, &name))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for _ in 0..kill_after {
            lines.next().unwrap().unwrap();
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let dir = runs.join(&name);
        // The dead run's lock file stays, stale: the kernel dropped its lock.
        assert!(dir.join(".lock").is_file());
        let out = ept()
            .args(["train", "--resume", dir.to_str().unwrap(), "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "resume {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same_run(&whole, &dir);
        assert!(!dir.join(".lock").exists());
    }
}

#[test]
fn crash_while_writing_a_checkpoint_leaves_a_usable_last() {
    let runs = temp_dir("resume-crash");
    let out = ept().args(args(&runs, "whole")).output().unwrap();
    assert!(out.status.success());
    let dir = runs.join("crashed");
    let out = ept()
        .args(args(&runs, "crashed"))
        .env("EPT_TEST_CRASH_IN_CHECKPOINT", "10")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the hook must abort the run");
    // The aborted process left its lock file and its temporary folder.
    assert!(dir.join(".lock").is_file());
    assert!(!litter(&dir).is_empty());
    // The previous checkpoint (step 8) is intact and loads.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("last/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], 8);
    let device = ept::runtime::cpu_device(false);
    ept::prompt::checkpoint::load(&dir.join("last/prompt.safetensors"), &device).unwrap();
    let out = ept()
        .args(["train", "--resume", dir.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_run(&runs.join("whole"), &dir);
    // The stale lock did not block the resume, which removed the dead
    // process's temporary folder and, at its end, the lock file.
    assert!(litter(&dir).is_empty(), "{:?}", litter(&dir));
    assert!(!dir.join(".lock").exists());
}

/// Every file under `dir` (relative path -> bytes).
fn snapshot(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The files of `last/` and `best/` (the checkpoints a failed write must not touch).
fn checkpoints(
    dir: &Path,
    which: &[&str],
) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for w in which {
        for (p, bytes) in snapshot(&dir.join(w)) {
            out.insert(Path::new(w).join(p), bytes);
        }
    }
    assert!(!out.is_empty(), "no checkpoint in {}", dir.display());
    out
}

/// Temporary files or folders (`.NAME.tmp-PID`, `last.tmp-PID/`) left anywhere under `dir`.
fn litter(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.contains(".tmp-") || name == "last.old" {
                out.push(p.display().to_string());
            }
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// The run failed as a full disk makes it fail: exit 2, no panic, and one
/// `ept:` line naming `file` (besides any `ept: warning:`/`info:` log lines).
fn assert_write_failed(out: &std::process::Output, file: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("ept: "))
        .filter(|l| {
            !["ept: warning:", "ept: info:", "ept: debug:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains(file), "`{file}` not named: {err}");
    assert!(errors[0].contains("No space left on device"), "{err}");
    assert_eq!(err.lines().last(), Some(errors[0]), "{err}");
}

/// The steps whose validation replaced the best checkpoint (the run's own rule:
/// a higher selection value, ties to the lower loss).
fn best_updates(dir: &Path) -> Vec<usize> {
    let mut best: Option<(f64, f64)> = None;
    let mut steps = Vec::new();
    for l in std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let Some(val) = v.get("validation") else {
            continue;
        };
        let (sel, loss) = (
            val["selection"].as_f64().unwrap(),
            val["loss"].as_f64().unwrap(),
        );
        if best.is_none_or(|(s, l)| sel > s || (sel == s && loss < l)) {
            best = Some((sel, loss));
            steps.push(v["step"].as_u64().unwrap() as usize);
        }
    }
    steps
}

fn results_without_timings(dir: &Path) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    for t in ["wall_seconds", "steps_per_second"] {
        v.as_object_mut().unwrap().remove(t);
    }
    v
}

fn saved_step(dir: &Path) -> u64 {
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("last/state.json")).unwrap())
            .unwrap();
    state["step"].as_u64().unwrap()
}

/// A checkpoint or results write that fails part-way leaves the previous
/// `last/` and `best/` byte for byte, no temporary litter, one `ept:` line, and
/// a run that `--resume` finishes exactly as an uninterrupted one.
///
/// A real full disk or a removed permission cannot be staged here (the tests
/// run as root, which ignores file modes, and cannot mount a small file
/// system), so the `EPT_TEST_FAIL_WRITE` hook fails one write after half its
/// bytes are written, with the error a full disk gives (ENOSPC).
#[test]
fn a_failed_write_leaves_the_checkpoints_intact_and_the_run_resumable() {
    let runs = temp_dir("resume-fail");
    let out = ept().args(args(&runs, "whole")).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let whole = runs.join("whole");
    // `e`: the first validation after step 6 that writes a new best/; the run
    // below stops just before it with last/ at step e - 2 (saved every 2 steps).
    let updates = best_updates(&whole);
    assert_eq!(updates[0], 6);
    let e = *updates
        .get(1)
        .expect("the whole run improves on its first best");
    let fail = |hook: &str, resume: bool| {
        let mut cmd = ept();
        if resume {
            cmd.args([
                "train",
                "--resume",
                runs.join("f").to_str().unwrap(),
                "--json",
            ]);
        } else {
            cmd.args(args(&runs, "f"));
        }
        cmd.env("EPT_TEST_FAIL_WRITE", hook).output().unwrap()
    };
    let dir = runs.join("f");

    // The plain form counts every write: the first is args.json, and the new folder stays empty.
    let out = fail("1", false);
    assert_write_failed(&out, "args.json");
    assert!(snapshot(&dir).is_empty(), "{:?}", snapshot(&dir).keys());
    std::fs::remove_dir(&dir).unwrap();

    // metrics.jsonl: the append of step e - 1 fails; the earlier lines stay whole.
    let out = fail(&format!("metrics.jsonl:{}", e - 1), false);
    assert_write_failed(&out, "metrics.jsonl");
    assert_eq!(step_losses(&dir), step_losses(&whole)[..e - 2]);
    assert_eq!(saved_step(&dir), e as u64 - 2);
    assert!(litter(&dir).is_empty(), "{:?}", litter(&dir));
    assert!(!dir.join(".lock").exists());
    let before = checkpoints(&dir, &["last", "best"]);

    // best/: the write of step e's better prompt fails; last/ and best/ are as they were.
    let out = fail("best/prompt.safetensors:1", true);
    assert_write_failed(&out, "best/prompt.safetensors");
    assert_eq!(checkpoints(&dir, &["last", "best"]), before);
    assert!(litter(&dir).is_empty(), "{:?}", litter(&dir));

    // last/: step e's optimizer or state write fails (best/ was rightly replaced
    // at step e just before); last/ is still step e - 2's.
    let last_before = checkpoints(&dir, &["last"]);
    for (hook, file) in [
        ("optimizer.safetensors:1", "last/optimizer.safetensors"),
        ("state.json:1", "last/state.json"),
    ] {
        let out = fail(hook, true);
        assert_write_failed(&out, file);
        assert_eq!(checkpoints(&dir, &["last"]), last_before, "{hook}");
        assert!(litter(&dir).is_empty(), "{hook}: {:?}", litter(&dir));
    }

    // results.json: the run trains to the end, then the results write fails
    // without leaving a partial file.
    let out = fail("results.json:1", true);
    assert_write_failed(&out, "results.json");
    assert!(!dir.join("results.json").exists());
    assert_eq!(saved_step(&dir), 24);
    assert!(litter(&dir).is_empty(), "{:?}", litter(&dir));
    assert_same_run(&whole, &dir);

    // A plain resume finishes: the same tensors, losses and scores as the whole run.
    let out = ept()
        .args(["train", "--resume", dir.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_run(&whole, &dir);
    assert_eq!(
        results_without_timings(&dir),
        results_without_timings(&whole)
    );
    assert!(litter(&dir).is_empty(), "{:?}", litter(&dir));
    assert!(!dir.join(".lock").exists());
}

/// SIGSTOP / SIGKILL to a child.
fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// A second `ept train` on a run folder that another one is training in
/// refuses (with --overwrite and with --resume), exit 2, one line naming the
/// holder's pid, and leaves every file of the folder as it was.
#[test]
fn a_second_train_on_a_busy_run_folder_refuses() {
    let runs = temp_dir("resume-lock");
    let mut long = args(&runs, "busy");
    let i = long.iter().position(|a| a == "--max-steps").unwrap();
    long[i + 1] = "1000000".into();
    let mut child = ept()
        .args(&long)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..3 {
        lines.next().unwrap().unwrap();
    }
    let dir = runs.join("busy");
    let pid = child.id();
    assert_eq!(
        std::fs::read_to_string(dir.join(".lock")).unwrap().trim(),
        pid.to_string()
    );
    // Frozen, so that its folder holds still while the others try.
    signal(&child, libc::SIGSTOP);
    let before = snapshot(&dir);
    assert!(before.contains_key(Path::new("last/state.json")));
    let mut overwrite = args(&runs, "busy");
    overwrite.push("--overwrite".into());
    let resume: Vec<String> = ["train", "--resume", dir.to_str().unwrap(), "--json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for second in [overwrite, resume] {
        let out = ept().args(&second).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{second:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("ept: ")
                && err.contains("busy")
                && err.contains("in use by another ept train")
                && err.contains(&format!("pid {pid}")),
            "{err}"
        );
        assert_eq!(snapshot(&dir), before, "{second:?} touched the folder");
    }
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
}
