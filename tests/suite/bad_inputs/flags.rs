//! Flags: numbers out of range, unknown names and values, on every command.

use super::*;

pub(super) fn cases(m: &str, d: &str, runs: &str, out: &str) -> Vec<Case> {
    // Only what a run needs, so that each case's flag is given once.
    let train = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--model",
            m,
            "--train-file",
            d,
            "--validation-file",
            d,
            "--runs-dir",
            runs,
            "--name",
            "flags",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let train_case = |name, extra: &[&str], expect: &[&'static str]| Case {
        name,
        args: train(extra),
        expect: expect.to_vec(),
    };
    let eval = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["eval", "--model", m, "--data", d]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let eval_case = |name, extra: &[&str], expect: &[&'static str]| Case {
        name,
        args: eval(extra),
        expect: expect.to_vec(),
    };
    vec![
        eval_case(
            "eval batch 0",
            &["--batch-size", "0"],
            &["--batch-size", "'0'", "≥ 1"],
        ),
        eval_case(
            "eval batch -3",
            &["--batch-size", "-3"],
            &["--batch-size", "-3"],
        ),
        eval_case("eval limit 0", &["--limit", "0"], &["--limit", "≥ 1"]),
        eval_case(
            "eval source len 0",
            &["--max-source-len", "0"],
            &["--max-source-len", "≥ 1"],
        ),
        eval_case(
            "eval dtype f16",
            &["--dtype", "f16"],
            &["f16", "expected f32, bf16 or bf16-mixed"],
        ),
        eval_case(
            "eval quantize int8",
            &["--quantize", "int8"],
            &["--quantize", "int8", "nf4 or fp4"],
        ),
        eval_case(
            "eval device tpu",
            &["--device", "tpu"],
            &["--device tpu", "expected auto, cpu, cuda"],
        ),
        eval_case("eval device cuda:x", &["--device", "cuda:x"], &["cuda:x"]),
        case(
            "eval split dev",
            &["eval", "--model", m, "--task", "rte", "--split", "devtest"],
            &["devtest", "train, validation or test"],
        ),
        eval_case("eval unknown flag", &["--bogus"], &["--bogus"]),
        eval_case(
            "eval scoring vote",
            &["--task", "toy-sst2", "--scoring", "vote"],
            &["vote", "generate or rank"],
        ),
        case(
            "predict batch 0",
            &["predict", "--model", m, "--data", d, "--batch-size", "0"],
            &["--batch-size", "≥ 1"],
        ),
        case(
            "generate 0 tokens",
            &[
                "generate",
                "--model",
                m,
                "--text",
                "a",
                "--max-new-tokens",
                "0",
            ],
            &["--max-new-tokens", "≥ 1"],
        ),
        train_case("train lr 0", &["--lr-prompt", "0"], &["--lr-prompt", "> 0"]),
        train_case(
            "train lr nan",
            &["--lr-prompt", "nan"],
            &["--lr-prompt", "finite"],
        ),
        train_case(
            "train low-rank lr -1",
            &["--lr-low-rank", "-1"],
            &["--lr-low-rank", "-1"],
        ),
        train_case(
            "train steps 0",
            &["--max-steps", "0"],
            &["--max-steps", "≥ 1"],
        ),
        train_case(
            "train batch 0",
            &["--batch-size", "0"],
            &["--batch-size", "≥ 1"],
        ),
        train_case(
            "train grad accum 0",
            &["--grad-accum", "0"],
            &["--grad-accum", "≥ 1"],
        ),
        train_case(
            "train weight decay < 0",
            &["--weight-decay", "-0.1"],
            &["--weight-decay", "≥ 0"],
        ),
        train_case(
            "train clip inf",
            &["--max-grad-norm", "inf"],
            &["--max-grad-norm", "finite"],
        ),
        train_case("train l 0", &["--l", "0"], &["--l", "≥ 1"]),
        train_case(
            "train experts 0",
            &["--num-experts", "0"],
            &["--num-experts", "≥ 1"],
        ),
        train_case("train m 0", &["--m", "0"], &["--m", "≥ 1"]),
        train_case(
            "train few-shot 0",
            &["--few-shot", "0"],
            &["--few-shot", "≥ 1"],
        ),
        train_case(
            "train token budget 0",
            &["--max-batch-tokens", "0"],
            &["--max-batch-tokens", "≥ 1"],
        ),
        train_case(
            "train method magic",
            &["--method", "magic"],
            &["magic", "pt, dept or ept"],
        ),
        train_case(
            "train fusion",
            &["--method", "ept", "--fusion", "sideways"],
            &["sideways", "cross-attention"],
        ),
        train_case(
            "train schedule",
            &["--schedule", "weird"],
            &["weird", "linear, constant or cosine"],
        ),
        train_case(
            "train scoring",
            &["--scoring", "vote"],
            &["vote", "generate or rank"],
        ),
        train_case(
            "train init",
            &["--init", "bogus"],
            &["--init", "bogus", "vocab, random or text:"],
        ),
        train_case("train preset", &["--preset", "ept/notatask"], &["notatask"]),
        case(
            "train unknown task",
            &["train", "--task", "notatask", "--runs-dir", runs],
            &["notatask"],
        ),
        case(
            "bench steps 0",
            &["bench", "--steps", "0"],
            &["--steps", "≥ 1"],
        ),
        case(
            "bench batch 0",
            &["bench", "--batch", "0"],
            &["--batch", "≥ 1"],
        ),
        case(
            "bench shape",
            &["bench", "--shape", "t5-huge"],
            &["t5-huge", "expected one of"],
        ),
        case(
            "bench lr nan",
            &["bench", "--task", "sst2", "--lr", "NaN"],
            &["--lr", "finite"],
        ),
        case(
            "pretrain fraction 1.5",
            &["pretrain", "--out", out, "--supervised-fraction", "1.5"],
            &["--supervised-fraction", "0 to 1"],
        ),
        case(
            "pretrain steps 0",
            &["pretrain", "--out", out, "--steps", "0"],
            &["--steps", "≥ 1"],
        ),
        case(
            "pretrain arch",
            &["pretrain", "--out", out, "--arch", "gpt"],
            &["gpt"],
        ),
        case(
            "budget m 0",
            &[
                "budget", "--l", "100", "--s", "60", "--d", "768", "--m", "0",
            ],
            &["--m", "≥ 1"],
        ),
        case(
            "tasks limit 0",
            &["tasks", "show", "toy-sst2", "--limit", "0"],
            &["--limit", "≥ 1"],
        ),
        case(
            "quantize type",
            &[
                "quantize",
                "--model",
                m,
                "--out",
                out,
                "--quant-type",
                "int4",
            ],
            &["int4", "nf4 or fp4"],
        ),
    ]
}
