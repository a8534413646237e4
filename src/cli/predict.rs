//! `ept predict`: predictions as JSON lines, by generation or label ranking.

use std::path::PathBuf;

use clap::Args;
use ept::data::readers::Caches;
use ept::data::{Example, Purpose, Task, load_split, load_user_file};
use ept::evaluate::{Scoring, predict, tokenize_pairs};
use ept::prompt::{NoPrompt, PromptInput};
use ept::{Error, Result};

use super::ModelArgs;
use super::eval::load_prompt;

#[derive(Args)]
pub struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A prompt checkpoint (docs/FORMAT.md).
    #[arg(long)]
    prompt: Option<PathBuf>,
    /// A task (its labels allow --scoring rank).
    #[arg(long)]
    task: Option<String>,
    /// The task's data folder, or a JSONL file of {"source", ...}.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The task's split.
    #[arg(long, default_value = "test")]
    split: String,
    /// One input text instead of a data set (already in the task's format).
    #[arg(long)]
    input: Option<String>,
    /// generate (greedy) or rank (label ranking; needs --task).
    #[arg(long, default_value = "generate")]
    scoring: String,
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>, default_value_t = 16)]
    batch_size: usize,
    /// Write here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: PredictArgs) -> Result<()> {
    let task = args.task.as_deref().map(Task::parse).transpose()?;
    let examples: Vec<Example> = match (&args.input, task, &args.data) {
        (Some(text), _, _) => vec![Example {
            source: text.clone(),
            target: String::new(),
            answers: Vec::new(),
            group: None,
        }],
        (None, Some(task), dir) => {
            load_split(
                task,
                args.split.parse()?,
                dir.as_deref(),
                &Caches::from_env(),
                Purpose::Eval,
            )?
            .examples
        }
        (None, None, Some(file)) => load_user_file(file)?,
        _ => {
            return Err(Error::invalid(
                "give --input TEXT, --task TASK [--data DIR], or --data FILE.jsonl",
            ));
        }
    };
    let backbone = args.model.load(false)?;
    let loaded = load_prompt(args.prompt.as_ref(), &backbone)?;
    let prompt: &dyn PromptInput = match &loaded {
        Some(p) => p,
        None => &NoPrompt,
    };
    let tokenized = tokenize_pairs(&backbone.tokenizer, &examples, prompt.max_input_len())?;
    let scoring = Scoring::parse(&args.scoring)?;
    let labels = task.and_then(|t| t.labels());
    let preds = predict(
        backbone.model.as_ref(),
        &backbone.tokenizer,
        prompt,
        &tokenized,
        scoring,
        labels,
        args.batch_size,
    )?;
    let mut text = String::new();
    for (e, p) in examples.iter().zip(&preds) {
        let line = serde_json::json!({"source": e.source, "target": e.target, "prediction": p});
        text.push_str(&line.to_string());
        text.push('\n');
    }
    match &args.out {
        Some(path) => ept::error::write_atomic(path, text.as_bytes())?,
        None => print!("{text}"),
    }
    Ok(())
}
