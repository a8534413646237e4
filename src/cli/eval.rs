//! `ept eval`: the loss of a model (with a prompt) on a data set, and a task's metrics.

use std::path::PathBuf;

use clap::Args;
use ept::Result;
use ept::data::readers::Caches;
use ept::data::{Example, Purpose, Task, load_split, load_user_file};
use ept::evaluate::{Scoring, corpus_loss, predict, tokenize_pairs};
use ept::prompt::{NoPrompt, PromptInput, SoftPrompt, checkpoint};

use super::ModelArgs;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A JSON-lines file of {"source": ..., "target": ...}; or, with --task, the task's data folder.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Score a task (GLUE/SuperGLUE/SQuAD) with its metrics besides the loss.
    #[arg(long)]
    task: Option<String>,
    /// The task's split: train, validation or test (DePT's splits).
    #[arg(long, default_value = "test")]
    split: String,
    /// How task predictions are made: generate (greedy, DePT's way) or rank (label ranking).
    #[arg(long, default_value = "generate")]
    scoring: String,
    /// A prompt checkpoint (docs/FORMAT.md) to prepend; without it, the bare model.
    #[arg(long)]
    prompt: Option<PathBuf>,
    /// Examples per batch.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>, default_value_t = 16)]
    batch_size: usize,
    /// Truncate sources to this many tokens (`</s>` included); a prompt's m applies anyway.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    max_source_len: Option<usize>,
    /// Evaluate only the first N examples.
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>)]
    limit: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Loads `--prompt` onto the model's device, checking it fits.
pub fn load_prompt(
    path: Option<&PathBuf>,
    backbone: &ept::model::Backbone,
) -> Result<Option<SoftPrompt>> {
    let Some(path) = path else { return Ok(None) };
    let (prompt, _) = checkpoint::load(path, backbone.model.device())?;
    checkpoint::check_fits(path, &prompt, backbone.model.hidden_size())?;
    Ok(Some(prompt))
}

pub fn run(args: EvalArgs) -> Result<()> {
    let split: ept::data::splits::Split = args.split.parse()?;
    let toy = match &args.task {
        Some(name) => ept::organism::builtin_split(name, split)?,
        None => None,
    };
    let task = match &toy {
        Some((task, _)) => Some(*task),
        None => args.task.as_deref().map(Task::parse).transpose()?,
    };
    let mut examples: Vec<Example> = match (toy, task, &args.data) {
        (Some((_, examples)), ..) => examples,
        (None, Some(task), dir) => {
            load_split(
                task,
                split,
                dir.as_deref(),
                &Caches::from_env(),
                Purpose::Eval,
            )?
            .examples
        }
        (None, None, Some(file)) => load_user_file(file)?,
        (None, None, None) => {
            return Err(ept::Error::invalid(
                "give --data FILE.jsonl, or --task TASK [--data DIR]",
            ));
        }
    };
    if let Some(n) = args.limit {
        examples.truncate(n);
    }
    let backbone = args.model.load(false)?;
    let loaded = load_prompt(args.prompt.as_ref(), &backbone)?;
    let prompt: &dyn PromptInput = match &loaded {
        Some(p) => p,
        None => &NoPrompt,
    };
    let max_len = match (args.max_source_len, prompt.max_input_len()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let tokenized = tokenize_pairs(&backbone.tokenizer, &examples, max_len)?;
    let report = corpus_loss(backbone.model.as_ref(), prompt, &tokenized, args.batch_size);
    let mut out = serde_json::to_value(&report).expect("report serialises");
    if let Some(task) = task {
        let scoring = Scoring::parse(&args.scoring)?;
        let preds = predict(
            backbone.model.as_ref(),
            &backbone.tokenizer,
            prompt,
            &tokenized,
            scoring,
            task.labels(),
            args.batch_size,
        )?;
        let scores = ept::metrics::score(task, &preds, &examples)?;
        out["task"] = task.name().into();
        out["split"] = args.split.clone().into();
        out["scoring"] = args.scoring.clone().into();
        out["metrics"] = serde_json::to_value(&scores).expect("scores serialise");
    }
    if args.json {
        println!("{out}");
    } else {
        println!(
            "loss {:.6} over {} target tokens in {} examples",
            report.loss, report.tokens, report.examples
        );
        if let Some(metrics) = out.get("metrics").and_then(|m| m.as_object()) {
            for (k, v) in metrics {
                println!("{k:>12} {:.2}", v.as_f64().unwrap_or(f64::NAN));
            }
        }
    }
    Ok(())
}
