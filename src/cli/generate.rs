//! `ept generate`: greedy continuation of a text.

use clap::Args;
use ept::Result;
use ept::evaluate::generate_ids;
use ept::prompt::NoPrompt;

use super::ModelArgs;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The input text.
    #[arg(long)]
    text: String,
    #[arg(long, allow_negative_numbers = true, value_parser = super::checks::count::<usize>, default_value_t = 20)]
    max_new_tokens: usize,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let backbone = args.model.load(false)?;
    let ids = backbone.tokenizer.encode(&args.text, None)?;
    let out = generate_ids(
        backbone.model.as_ref(),
        &NoPrompt,
        &[ids],
        1,
        args.max_new_tokens,
    );
    println!("{}", backbone.tokenizer.decode(&out[0])?);
    Ok(())
}
