//! Files only the binary reads: train TOML, sweep files, `args.json`.

use super::runs::make_run;
use super::*;

/// Runs the binary; a panic (exit 101, "panicked" on stderr), a signal or no
/// answer within 60 s is a failure (a panic here, which `fuzz` records).
fn run_ept(args: &[&std::ffi::OsStr]) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ept"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no answer within 60 s (a mutant that trains? the fast-fail flags did not hold)"
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut stderr = String::new();
    use std::io::Read;
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let code = status.code();
    if code.is_none() || stderr.contains("panicked") || !matches!(code, Some(0 | 2)) {
        panic!("exit {status}; stderr: {}", short(stderr.trim()));
    }
    if code == Some(0) {
        Outcome::Valid
    } else {
        Outcome::Refused
    }
}

#[test]
fn train_config_toml() {
    let made = temp_dir("fuzz-config-made");
    let data = fixtures().join("data.jsonl");
    std::fs::write(
        made.join("fixture.toml"),
        format!(
            "model = {:?}\ntrain_file = {data:?}\nvalidation-file = {data:?}\n\
             method = \"ept\"\nl = 10\ns = 6\nm = 64\nlr_low_rank = 0.01\nmax_steps = 6\n\
             warmup_steps = 2\nbatch_size = 3\neval_every = 3\nfusion = \"literal\"\n",
            fixtures().join("t5/gated-untied").display()
        ),
    )
    .unwrap();
    let ex = repo().join("examples");
    let seeds = [
        seed(&made, &["fixture.toml"]),
        seed(&ex, &["toy-sst2.toml", "toy-sst2-llama.toml"]),
    ];
    let runs = made.join("runs");
    // Every key of the file is read and type-checked; then `--max-steps 0`
    // (the command line wins over the file) stops the run before any data or
    // model is read, and `--device bogus` before any weights are.
    fuzz("train-config", &seeds, false, |_, path| {
        run_ept(&[
            "train".as_ref(),
            "--config".as_ref(),
            path.as_os_str(),
            "--max-steps".as_ref(),
            "0".as_ref(),
            "--device".as_ref(),
            "bogus".as_ref(),
            "--runs-dir".as_ref(),
            runs.as_os_str(),
            "--quiet".as_ref(),
        ])
    });
    let _ = std::fs::remove_dir_all(&made);
}

#[test]
fn sweep_file_toml() {
    let made = temp_dir("fuzz-sweep-made");
    // Settings that fail fast in every run: no steps, no such data or model.
    std::fs::write(
        made.join("sweep.toml"),
        "name = \"fz\"\n[base]\nmodel = \"/nonexistent/model\"\n\
         train_file = \"/nonexistent/train.jsonl\"\nmax_steps = 0\nl = 10\n\
         [grid]\nmethod = [\"pt\", \"ept\"]\nseed = [1, 2]\nlr_prompt = [0.3, 0.1]\n",
    )
    .unwrap();
    let runs = made.join("runs");
    let ex = repo().join("examples");
    // `--device bogus` fails every run of a valid mutant before its weights are read.
    fuzz(
        "sweep-file",
        &[
            seed(&made, &["sweep.toml"]),
            seed(&ex, &["organism-fusion.toml", "organism-methods.toml"]),
        ],
        false,
        |_, path| {
            run_ept(&[
                "sweep".as_ref(),
                path.as_os_str(),
                "--runs-dir".as_ref(),
                runs.as_os_str(),
                "--device".as_ref(),
                "bogus".as_ref(),
            ])
        },
    );
    let _ = std::fs::remove_dir_all(&made);
}

#[test]
fn resume_args_json() {
    let made = temp_dir("fuzz-resume-made");
    let run = make_run(&made);
    // The saved settings made to fail fast once read: no steps to take.
    let args_path = run.join("args.json");
    let mut args: Value = serde_json::from_slice(&std::fs::read(&args_path).unwrap()).unwrap();
    args["max_steps"] = Value::from(0);
    std::fs::write(&args_path, serde_json::to_vec_pretty(&args).unwrap()).unwrap();
    fuzz(
        "resume-args",
        &[seed(&run, &["args.json"])],
        false,
        |dir, _| {
            run_ept(&[
                "train".as_ref(),
                "--resume".as_ref(),
                dir.as_os_str(),
                "--quiet".as_ref(),
            ])
        },
    );
    let _ = std::fs::remove_dir_all(&made);
}
