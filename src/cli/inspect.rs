//! `ept inspect`: what a checkpoint is.

use clap::Args;
use ept::Result;

use super::ModelArgs;

#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let b = args.model.load(false)?;
    let c = &b.model.config;
    let ff = c.feed_forward(&b.dir.join("config.json"))?;
    let info = serde_json::json!({
        "folder": b.dir,
        "architecture": "t5",
        "feed_forward": c.feed_forward_proj,
        "gated": ff.gated,
        "d_model": c.d_model,
        "d_kv": c.d_kv,
        "num_heads": c.num_heads,
        "d_ff": c.d_ff,
        "encoder_layers": c.num_layers,
        "decoder_layers": c.decoder_layers(),
        "vocab_size": c.vocab_size,
        "tokenizer_vocab_size": b.tokenizer.vocab_size(),
        "relative_attention_num_buckets": c.relative_attention_num_buckets,
        "relative_attention_max_distance": c.relative_attention_max_distance,
        "tied_head": b.model.tied_head,
        "rescale_decoder_output": c.rescale_decoder_output(),
        "storage_dtype": b.storage_dtype,
        "compute_dtype": b.model.dtype.name(),
        "parameters": b.model.num_parameters(),
        "files": b.files,
    });
    if args.json {
        println!("{info}");
    } else {
        for (k, v) in info.as_object().expect("object") {
            println!("{k:>32}  {}", v.to_string().trim_matches('"'));
        }
    }
    Ok(())
}
