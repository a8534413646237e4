//! `ept eval`: the loss of a model on a data set.

use std::path::PathBuf;

use clap::Args;
use ept::Result;
use ept::data::load_user_file;
use ept::evaluate::{corpus_loss, tokenize_pairs};
use ept::prompt::{NoPrompt, PromptInput, checkpoint};

use super::ModelArgs;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A JSON-lines file of {"source": ..., "target": ...}.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// A prompt checkpoint (docs/FORMAT.md) to prepend; without it, the bare model.
    #[arg(long)]
    prompt: Option<PathBuf>,
    /// Truncate sources to this many tokens (`</s>` included).
    #[arg(long)]
    max_source_len: Option<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let pairs = load_user_file(&args.data)?;
    let backbone = args.model.load(false)?;
    let loaded = match &args.prompt {
        Some(path) => {
            let (prompt, _) = checkpoint::load(path, backbone.model.device())?;
            checkpoint::check_fits(path, &prompt, backbone.model.d_model())?;
            Some(prompt)
        }
        None => None,
    };
    let prompt: &dyn PromptInput = match &loaded {
        Some(p) => p,
        None => &NoPrompt,
    };
    let max_len = match (args.max_source_len, prompt.max_input_len()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let examples = tokenize_pairs(&backbone.tokenizer, &pairs, max_len)?;
    let report = corpus_loss(&backbone.model, prompt, &examples, args.batch_size);
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serialises")
        );
    } else {
        println!(
            "loss {:.6} over {} target tokens in {} examples ({})",
            report.loss,
            report.tokens,
            report.examples,
            args.data.display()
        );
    }
    Ok(())
}
